//! The FUSE side: every request becomes a call on the [`Volume`], under one lock, and every
//! sync is a numbered boundary where an armed power cut can fall.
//!
//! After a cut and until [`crate::PowerMount::power_cycle`] every request fails with `EIO`, so a
//! program that keeps running past the cut can make nothing more durable and is told no sync
//! succeeded. The kernel's write-back cache is never asked for (FUSE's default), so every write
//! reaches the volume before `write` returns; reads may be served from the kernel's page
//! cache, which the volume keeps coherent because it sees every write, and which a power
//! cycle drops by unmounting.

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::volume::{self, Attr, Kind, Volume};

/// How long the kernel may cache an attribute or an entry: every change passes through the
/// kernel, and a power cycle unmounts, so the caches cannot go stale.
const TTL: Duration = Duration::from_secs(1);

/// Where an armed power cut falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPoint {
    /// The sync it falls at: without `file`, counted from 1 since the last power cycle (file
    /// and directory syncs alike); with it, counted from 1 among that file's syncs from the
    /// moment the cut is armed.
    pub sync: u64,
    /// Whether that sync reaches the disk before the power goes (its caller never hears).
    pub applied: bool,
    /// Only syncs of files of this name count (for example `checkpoint.slot`), so a cut can
    /// be aimed at one protocol's steps.
    pub file: Option<&'static str>,
}

/// The volume and the power switch, shared by the FUSE session and the controller.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) cut_happened: Condvar,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) volume: Volume,
    /// The power is off: every request fails until the next power cycle.
    pub(crate) cut: bool,
    pub(crate) armed: Option<CutPoint>,
    /// Syncs since the last power cycle.
    pub(crate) syncs: u64,
    /// Syncs of the armed cut's file since it was armed.
    pub(crate) file_syncs: u64,
}

impl Shared {
    pub(crate) fn new(volume: Volume) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State {
                volume,
                cut: false,
                armed: None,
                syncs: 0,
                file_syncs: 0,
            }),
            cut_happened: Condvar::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The filesystem the kernel talks to.
pub(crate) struct PowerFs {
    pub(crate) shared: Arc<Shared>,
}

fn errno(e: volume::Errno) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: Attr, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Socket => FileType::Socket,
        },
        perm: a.mode,
        nlink: a.nlink,
        uid,
        gid,
        rdev: 0,
        blksize: volume::PAGE_BYTES as u32,
        flags: 0,
    }
}

/// Answers with an entry's attributes, or the error.
fn entry(reply: ReplyEntry, req: &Request, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(a, req.uid(), req.gid()), Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Answers that the request was done, or the error.
fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers an open (handles are not used: every request names its inode), or the error.
fn opened<T>(reply: ReplyOpen, r: Result<T, Errno>) {
    match r {
        Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
        Err(e) => reply.error(e),
    }
}

impl PowerFs {
    /// Runs `f` on the volume unless the power is off.
    fn with<T>(&self, f: impl FnOnce(&mut Volume) -> Result<T, volume::Errno>) -> Result<T, Errno> {
        let mut st = self.shared.lock();
        if st.cut {
            return Err(Errno::EIO);
        }
        f(&mut st.volume).map_err(errno)
    }

    /// A sync: counted, and where an armed cut falls.
    fn sync(
        &self,
        ino: u64,
        f: impl FnOnce(&mut Volume) -> Result<(), volume::Errno>,
    ) -> Result<(), Errno> {
        let mut st = self.shared.lock();
        if st.cut {
            return Err(Errno::EIO);
        }
        st.syncs += 1;
        let falls = match st.armed {
            Some(CutPoint {
                file: Some(name), ..
            }) => {
                if st.volume.name_of(ino).is_some_and(|n| n == name) {
                    st.file_syncs += 1;
                }
                st.armed.is_some_and(|p| p.sync == st.file_syncs)
            }
            Some(point) => point.sync == st.syncs,
            None => false,
        };
        match st.armed {
            Some(point) if falls => {
                if point.applied {
                    f(&mut st.volume).map_err(errno)?;
                }
                st.cut = true;
                st.armed = None;
                self.shared.cut_happened.notify_all();
                Err(Errno::EIO)
            }
            _ => f(&mut st.volume).map_err(errno),
        }
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, req, self.with(|v| v.lookup(parent.0, name)));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|v| v.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(a, req.uid(), req.gid())),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|v| {
            if let Some(m) = mode {
                v.set_mode(ino.0, (m & 0o7777) as u16)?;
            }
            if let Some(s) = size {
                v.set_size(ino.0, s)?;
            }
            v.attr(ino.0)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(a, req.uid(), req.gid())),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = (mode & !umask & 0o7777) as u16;
        entry(
            reply,
            req,
            self.with(|v| v.create(parent.0, name, Kind::Dir, mode)),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFSOCK => Kind::Socket,
            _ => {
                reply.error(Errno::EPERM);
                return;
            }
        };
        let mode = (mode & !umask & 0o7777) as u16;
        entry(
            reply,
            req,
            self.with(|v| v.create(parent.0, name, kind, mode)),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = (mode & !umask & 0o7777) as u16;
        match self.with(|v| v.create(parent.0, name, Kind::File, mode)) {
            Ok(a) => reply.created(
                &TTL,
                &file_attr(a, req.uid(), req.gid()),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|v| v.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|v| v.rmdir(parent.0, name)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let bits = flags.bits();
        if bits & !libc::RENAME_NOREPLACE != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = bits & libc::RENAME_NOREPLACE != 0;
        empty(
            reply,
            self.with(|v| v.rename(parent.0, name, newparent.0, newname, no_replace)),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            req,
            self.with(|v| v.link(ino.0, newparent.0, newname)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        opened(reply, self.with(|v| v.attr(ino.0)));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|v| v.read(ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|v| v.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // `fsync` and `fdatasync` both cover the data and a size change (see
        // `Volume::sync_file`); the volume keeps no other metadata.
        empty(reply, self.sync(ino.0, |v| v.sync_file(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        opened(reply, self.with(|v| v.entries(ino.0)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.with(|v| v.entries(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (OsStr::new(".").to_os_string(), ino.0, Kind::Dir),
            (OsStr::new("..").to_os_string(), ino.0, Kind::Dir),
        ];
        for (i, (name, child, kind)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
                Kind::Socket => FileType::Socket,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.sync(ino.0, |v| v.sync_dir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The backing filesystem's room, so a space check sees a real figure.
        let st = self.shared.lock();
        match statvfs(st.volume.backing()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|v| v.allocate(ino.0, offset, length, mode)),
        );
    }
}

/// `statvfs` of a directory.
fn statvfs(path: &std::path::Path) -> Result<libc::statvfs, volume::Errno> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(st)
}
