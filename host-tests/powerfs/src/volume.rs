//! The volume: what a disk with a page cache in front of it holds, and what a power cut leaves.
//!
//! Every file's content has two versions. The durable one is in the backing directory, one file
//! per inode (`ino-N`). The visible one is the durable one overlaid with the file's dirty pages
//! (whole 4 KiB pages, kept in memory), its current size, and a truncation mark below which
//! clean bytes still come from the backing file. `fsync` and `fdatasync` of a file write its
//! dirty pages and its size into the backing file; nothing else does.
//!
//! The namespace has two versions too. The visible one is each directory's entries. The durable
//! one is a base plus an ordered log of entry operations (an entry added, an entry removed, a
//! rename), each marked covered once an `fsync` of its directory has run. A rename is one
//! operation, kept or lost whole: after a cut its file is under the old name or the new one,
//! and a file it replaced is either still there or gone with the rename done, which is the
//! atomicity every journaling filesystem gives and programs rely on. It is covered by a sync
//! of the directory it renames into.
//!
//! A power cut ([`Volume::power_cut`]) applies a [`Fate`] to everything not covered: dirty pages
//! and size changes kept or lost, whole or torn at 512-byte sectors, and uncovered entry
//! operations kept or lost, independently of the data. Inodes no durable entry reaches are
//! dropped with their backing files. The result becomes both versions at once.
//!
//! **Invariant:** a read sees exactly what was written (writes, truncations and allocations
//! apply at once); only [`Volume::power_cut`] can make the visible state differ from what the
//! program saw before it, and only by taking back what no sync covered.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;

/// The page size of the page cache: dirty data is kept, written back and lost in these units.
pub const PAGE_BYTES: u64 = 4096;
/// The sector size: a torn page keeps some of its sectors and loses the others.
pub const SECTOR_BYTES: usize = 512;
const SECTORS_PER_PAGE: usize = PAGE_BYTES as usize / SECTOR_BYTES;
const _: () = assert!(PAGE_BYTES as usize % SECTOR_BYTES == 0);

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// What a power cut does to data no `fsync` or `fdatasync` covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFate {
    /// Every dirty page and every size change is lost.
    Lost,
    /// Every dirty page and every size change reached the disk.
    Kept,
    /// Each dirty page is kept or lost on its own, in no order; each file's size change too.
    Pages,
    /// As [`DataFate::Pages`], and each kept page keeps only some of its 512-byte sectors.
    Sectors,
}

/// What a power cut does to entry operations (create, link, unlink, rename, mkdir, rmdir) no
/// `fsync` of their directory covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirFate {
    /// Every uncovered operation is lost.
    Lost,
    /// Every uncovered operation reached the disk.
    Kept,
    /// The uncovered operations up to a random point reached the disk, in order.
    Prefix,
    /// Each uncovered operation is kept or lost on its own.
    Each,
}

/// A power cut's fate: one for the data, one for the directories, chosen independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fate {
    /// What happens to unsynced data.
    pub data: DataFate,
    /// What happens to unsynced directory entries.
    pub dirs: DirFate,
}

impl Fate {
    /// Every combination, for callers that go through them all.
    pub const ALL: [Fate; 16] = {
        let data = [
            DataFate::Lost,
            DataFate::Kept,
            DataFate::Pages,
            DataFate::Sectors,
        ];
        let dirs = [DirFate::Lost, DirFate::Kept, DirFate::Prefix, DirFate::Each];
        let mut all = [Fate {
            data: DataFate::Lost,
            dirs: DirFate::Lost,
        }; 16];
        let mut i = 0;
        while i < 16 {
            all[i] = Fate {
                data: data[i / 4],
                dirs: dirs[i % 4],
            };
            i += 1;
        }
        all
    };

    /// A fate drawn at random, every combination equally likely.
    pub fn random(rng: &mut impl Rng) -> Fate {
        Fate::ALL[rng.random_range(0..Fate::ALL.len())]
    }
}

/// What kind of inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A Unix socket's name (bound by a server in the filesystem): no data, and a plain tree
    /// written by `materialize` leaves it out (no process listens on it after a cut).
    Socket,
}

/// An entry operation in the durable namespace's log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryOp {
    Add {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    Remove {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    /// `ino` moved from `from` in `from_dir` to `name` in `dir`, replacing what was there.
    Rename {
        from_dir: u64,
        from: OsString,
        dir: u64,
        name: OsString,
        ino: u64,
    },
}

impl EntryOp {
    fn dir(&self) -> u64 {
        match self {
            EntryOp::Add { dir, .. }
            | EntryOp::Remove { dir, .. }
            | EntryOp::Rename { dir, .. } => *dir,
        }
    }

    fn apply(&self, ns: &mut BTreeMap<u64, BTreeMap<OsString, u64>>) {
        match self {
            EntryOp::Add { dir, name, ino } => {
                ns.entry(*dir).or_default().insert(name.clone(), *ino);
            }
            EntryOp::Remove { dir, name, ino } => {
                let entries = ns.entry(*dir).or_default();
                if entries.get(name) == Some(ino) {
                    entries.remove(name);
                }
            }
            EntryOp::Rename {
                from_dir,
                from,
                dir,
                name,
                ino,
            } => {
                let source = ns.entry(*from_dir).or_default();
                if source.get(from) == Some(ino) {
                    source.remove(from);
                }
                ns.entry(*dir).or_default().insert(name.clone(), *ino);
            }
        }
    }
}

/// One inode's state.
#[derive(Debug)]
struct Inode {
    kind: Kind,
    mode: u16,
    /// Visible entries of a directory.
    entries: BTreeMap<OsString, u64>,
    /// Visible links to this inode.
    nlink: u32,
    /// Visible size of a file.
    size: u64,
    /// Size of the durable version in the backing file.
    durable_size: u64,
    /// Clean bytes at or past this offset read as zeros (a truncation since the last sync).
    zero_from: u64,
    /// Dirty pages: the visible content of every page written since the last sync.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// A size change no sync has covered (for the fate to keep or drop).
    size_dirty: bool,
    /// The backing file of a file's durable content, open for reads and writes.
    backing: Option<File>,
}

impl Inode {
    fn new(kind: Kind, mode: u16) -> Self {
        Inode {
            kind,
            mode,
            entries: BTreeMap::new(),
            nlink: 0,
            size: 0,
            durable_size: 0,
            zero_from: 0,
            dirty: BTreeMap::new(),
            size_dirty: false,
            backing: None,
        }
    }
}

/// The attributes the filesystem reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u16,
    /// Visible links.
    pub nlink: u32,
    /// Visible size in bytes (0 for a directory).
    pub size: u64,
}

/// What a volume has seen since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `fsync` or `fdatasync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Writes.
    pub writes: u64,
    /// Power cuts applied.
    pub cuts: u64,
    /// Dirty pages lost at the cuts.
    pub pages_lost: u64,
    /// Dirty pages kept whole at the cuts.
    pub pages_kept: u64,
    /// Dirty pages kept with only some of their sectors.
    pub pages_torn: u64,
    /// Uncovered entry operations lost at the cuts.
    pub entry_ops_lost: u64,
    /// Uncovered entry operations kept at the cuts.
    pub entry_ops_kept: u64,
}

impl Counters {
    /// What was counted since `before` (taken from the same volume earlier).
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            file_syncs: self.file_syncs - before.file_syncs,
            dir_syncs: self.dir_syncs - before.dir_syncs,
            writes: self.writes - before.writes,
            cuts: self.cuts - before.cuts,
            pages_lost: self.pages_lost - before.pages_lost,
            pages_kept: self.pages_kept - before.pages_kept,
            pages_torn: self.pages_torn - before.pages_torn,
            entry_ops_lost: self.entry_ops_lost - before.entry_ops_lost,
            entry_ops_kept: self.entry_ops_kept - before.entry_ops_kept,
        }
    }
}

/// An operation's failure, as an errno.
pub type Errno = i32;

/// The volume: inodes, both namespaces and the backing directory.
#[derive(Debug)]
pub struct Volume {
    backing: PathBuf,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    base: BTreeMap<u64, BTreeMap<OsString, u64>>,
    log: Vec<(EntryOp, bool)>,
    counters: Counters,
}

impl Volume {
    /// A volume whose durable file contents live in `backing` (which must be empty or absent):
    /// an empty root directory, durable.
    pub fn new(backing: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(backing)?;
        let mut inodes = BTreeMap::new();
        let mut root = Inode::new(Kind::Dir, 0o755);
        root.nlink = 2;
        inodes.insert(ROOT, root);
        let mut base = BTreeMap::new();
        base.insert(ROOT, BTreeMap::new());
        Ok(Volume {
            backing: backing.to_path_buf(),
            inodes,
            next_ino: ROOT + 1,
            base,
            log: Vec::new(),
            counters: Counters::default(),
        })
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// What the volume has seen.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Inode, Errno> {
        let i = self.inode(ino)?;
        if i.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(i)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        let i = self.inode_mut(ino)?;
        if i.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        Ok(i)
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.backing.join(format!("ino-{ino}"))
    }

    /// An inode's attributes.
    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let i = self.inode(ino)?;
        Ok(Attr {
            ino,
            kind: i.kind,
            mode: i.mode,
            nlink: i.nlink,
            size: if i.kind == Kind::File { i.size } else { 0 },
        })
    }

    /// The inode `name` names in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(dir)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    /// A name of `ino` in some directory (the first found), if it has one.
    pub fn name_of(&self, ino: u64) -> Option<&OsStr> {
        self.inodes.values().find_map(|d| {
            d.entries
                .iter()
                .find(|(_, &i)| i == ino)
                .map(|(n, _)| n.as_os_str())
        })
    }

    /// A directory's entries, in name order.
    pub fn entries(&self, dir: u64) -> Result<Vec<(OsString, u64, Kind)>, Errno> {
        let d = self.dir(dir)?;
        Ok(d.entries
            .iter()
            .map(|(n, &ino)| (n.clone(), ino, self.inodes[&ino].kind))
            .collect())
    }

    fn add_entry(&mut self, dir: u64, name: &OsStr, ino: u64) {
        self.inodes
            .get_mut(&dir)
            .expect("checked by the caller")
            .entries
            .insert(name.to_os_string(), ino);
        self.inodes
            .get_mut(&ino)
            .expect("checked by the caller")
            .nlink += 1;
        self.log.push((
            EntryOp::Add {
                dir,
                name: name.to_os_string(),
                ino,
            },
            false,
        ));
    }

    fn remove_entry(&mut self, dir: u64, name: &OsStr) -> Option<u64> {
        let ino = self
            .inodes
            .get_mut(&dir)
            .expect("checked by the caller")
            .entries
            .remove(name)?;
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlink = i.nlink.saturating_sub(1);
        }
        self.log.push((
            EntryOp::Remove {
                dir,
                name: name.to_os_string(),
                ino,
            },
            false,
        ));
        Some(ino)
    }

    /// Creates a file or directory `name` in `dir`.
    pub fn create(&mut self, dir: u64, name: &OsStr, kind: Kind, mode: u16) -> Result<Attr, Errno> {
        if self.dir(dir)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut inode = Inode::new(kind, mode);
        if kind == Kind::File {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(self.backing_path(ino))
                .map_err(errno)?;
            inode.backing = Some(f);
        }
        if kind == Kind::Dir {
            // Its own "." entry.
            inode.nlink = 1;
            self.inode_mut(dir)?.nlink += 1;
        }
        self.inodes.insert(ino, inode);
        self.add_entry(dir, name, ino);
        self.attr(ino)
    }

    /// Links `ino` as `name` in `dir`.
    pub fn link(&mut self, ino: u64, dir: u64, name: &OsStr) -> Result<Attr, Errno> {
        if self.inode(ino)?.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(dir)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.add_entry(dir, name, ino);
        self.attr(ino)
    }

    /// Removes the file `name` from `dir`.
    pub fn unlink(&mut self, dir: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir(dir)?.entries.get(name).ok_or(libc::ENOENT)?;
        if self.inode(ino)?.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(dir, name);
        Ok(())
    }

    /// Removes the empty directory `name` from `dir`.
    pub fn rmdir(&mut self, dir: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir(dir)?.entries.get(name).ok_or(libc::ENOENT)?;
        let d = self.dir(ino)?;
        if !d.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(dir, name);
        self.inode_mut(dir)?.nlink -= 1;
        Ok(())
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`, replacing a file there; with
    /// `no_replace`, fails if the target exists.
    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = *self.dir(dir)?.entries.get(name).ok_or(libc::ENOENT)?;
        let target = self.dir(new_dir)?.entries.get(new_name).copied();
        if target == Some(ino) {
            return Ok(());
        }
        let kind = self.inode(ino)?.kind;
        if let Some(t) = target {
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (kind, self.inode(t)?.kind) {
                (Kind::File | Kind::Socket, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File | Kind::Socket) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(t)?.entries.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
            let replaced = self
                .inodes
                .get_mut(&new_dir)
                .expect("checked above")
                .entries
                .remove(new_name);
            if let Some(r) = replaced.and_then(|r| self.inodes.get_mut(&r)) {
                r.nlink = r.nlink.saturating_sub(1);
            }
            if kind == Kind::Dir {
                self.inode_mut(new_dir)?.nlink -= 1;
            }
        }
        self.inode_mut(dir)?.entries.remove(name);
        self.inode_mut(new_dir)?
            .entries
            .insert(new_name.to_os_string(), ino);
        self.log.push((
            EntryOp::Rename {
                from_dir: dir,
                from: name.to_os_string(),
                dir: new_dir,
                name: new_name.to_os_string(),
                ino,
            },
            false,
        ));
        if kind == Kind::Dir && dir != new_dir {
            self.inode_mut(dir)?.nlink -= 1;
            self.inode_mut(new_dir)?.nlink += 1;
        }
        Ok(())
    }

    /// Sets a mode.
    pub fn set_mode(&mut self, ino: u64, mode: u16) -> Result<(), Errno> {
        self.inode_mut(ino)?.mode = mode;
        Ok(())
    }

    /// Reads the durable bytes of `ino` at `offset` into `buf` (zeros past the durable size).
    fn read_durable(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        buf.fill(0);
        let i = self.inode(ino)?;
        if offset >= i.durable_size {
            return Ok(());
        }
        let n = (i.durable_size - offset).min(buf.len() as u64) as usize;
        let f = i.backing.as_ref().ok_or(libc::EIO)?;
        f.read_exact_at(&mut buf[..n], offset).map_err(errno)
    }

    /// The visible content of page `page` of `ino`.
    fn visible_page(&self, ino: u64, page: u64) -> Result<Box<[u8]>, Errno> {
        let i = self.inode(ino)?;
        if let Some(p) = i.dirty.get(&page) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
        let start = page * PAGE_BYTES;
        self.read_durable(ino, start, &mut buf)?;
        // Clean bytes past a truncation or past the size read as zeros.
        let visible_end = i.zero_from.min(i.size);
        if visible_end < start + PAGE_BYTES {
            let from = visible_end.saturating_sub(start) as usize;
            buf[from..].fill(0);
        }
        Ok(buf)
    }

    /// Reads up to `len` visible bytes of `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let i = self.inode(ino)?;
        if i.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let end = (offset + u64::from(len)).min(i.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let page = at / PAGE_BYTES;
            let content = self.visible_page(ino, page)?;
            let from = (at - page * PAGE_BYTES) as usize;
            let to = ((end - page * PAGE_BYTES).min(PAGE_BYTES)) as usize;
            out.extend_from_slice(&content[from..to]);
            at = page * PAGE_BYTES + to as u64;
        }
        Ok(out)
    }

    /// Writes `data` into `ino` at `offset`: into the page cache, durable only after a sync.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.file_mut(ino)?;
        self.counters.writes += 1;
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let mut at = offset;
        while at < end {
            let page = at / PAGE_BYTES;
            let mut content = self.visible_page(ino, page)?;
            let from = (at - page * PAGE_BYTES) as usize;
            let to = ((end - page * PAGE_BYTES).min(PAGE_BYTES)) as usize;
            let src = (at - offset) as usize;
            content[from..to].copy_from_slice(&data[src..src + (to - from)]);
            self.inode_mut(ino)?.dirty.insert(page, content);
            at = page * PAGE_BYTES + to as u64;
        }
        let i = self.inode_mut(ino)?;
        if end > i.size {
            i.size = end;
            i.size_dirty = true;
        }
        Ok(())
    }

    /// Sets the size of `ino` (a truncation or an extension; the new bytes read as zeros).
    pub fn set_size(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let i = self.file_mut(ino)?;
        if size == i.size {
            return Ok(());
        }
        i.zero_from = i.zero_from.min(i.size).min(size);
        // Dirty bytes past the new size are gone; a later extension reads zeros there.
        i.dirty.retain(|&p, _| p * PAGE_BYTES < size);
        if let Some(last) = i.dirty.get_mut(&(size / PAGE_BYTES)) {
            last[(size % PAGE_BYTES) as usize..].fill(0);
        }
        i.size = size;
        i.size_dirty = true;
        Ok(())
    }

    /// `fallocate`: mode 0 extends the size; `FALLOC_FL_KEEP_SIZE` alone does nothing visible;
    /// punching a hole or zeroing a range writes zeros (dirty like any write).
    pub fn allocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let size = self.file_mut(ino)?.size;
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return Err(libc::EOPNOTSUPP);
        }
        if zero {
            let zero_end = if keep { end.min(size) } else { end };
            if zero_end > offset {
                // Bounded by the range, one page at a time.
                let chunk = vec![0u8; PAGE_BYTES as usize];
                let mut at = offset;
                while at < zero_end {
                    let n = (zero_end - at).min(PAGE_BYTES);
                    self.write(ino, at, &chunk[..n as usize])?;
                    at += n;
                }
            }
        } else if !keep && end > size {
            self.set_size(ino, end)?;
        }
        Ok(())
    }

    /// `fsync` or `fdatasync` of a file: its dirty pages and its size become durable. Both
    /// cover a size change, as on Linux (`fdatasync` writes the metadata a later read needs).
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.file_mut(ino)?;
        self.counters.file_syncs += 1;
        let mut counters = self.counters;
        self.settle_file(ino, true, &mut |_| PageFate::Whole, &mut counters)
    }

    /// `fsync` of a directory: every entry operation in it so far becomes durable.
    pub fn sync_dir(&mut self, dir: u64) -> Result<(), Errno> {
        self.dir(dir)?;
        self.counters.dir_syncs += 1;
        for (op, covered) in &mut self.log {
            if op.dir() == dir {
                *covered = true;
            }
        }
        // Fold the covered head of the log into the base, so the log stays short.
        let head = self.log.iter().take_while(|(_, c)| *c).count();
        for (op, _) in self.log.drain(..head) {
            op.apply(&mut self.base);
        }
        Ok(())
    }

    /// Writes what `keep_size` and `page_fate` keep of a file's dirty state into its backing
    /// file, and makes that the file's durable and visible state. A sync keeps all.
    fn settle_file(
        &mut self,
        ino: u64,
        keep_size: bool,
        page_fate: &mut dyn FnMut(&mut Counters) -> PageFate,
        counters: &mut Counters,
    ) -> Result<(), Errno> {
        let i = self.inodes.get(&ino).ok_or(libc::ENOENT)?;
        let mut sink = i.backing.as_ref().ok_or(libc::EIO)?;
        let new_size = apply_file(i, &mut sink, keep_size, page_fate, counters)?;
        self.counters = *counters;
        let i = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        i.dirty.clear();
        i.durable_size = new_size;
        i.zero_from = new_size;
        i.size = new_size;
        i.size_dirty = false;
        Ok(())
    }

    /// What `fate` keeps of one file's unsynced size change (drawn once per file) and pages
    /// (drawn once per page, in page order).
    fn page_fates(
        fate: DataFate,
        rng: &mut impl Rng,
    ) -> (bool, impl FnMut(&mut Counters) -> PageFate + '_) {
        let keep_size = match fate {
            DataFate::Lost => false,
            DataFate::Kept => true,
            DataFate::Pages | DataFate::Sectors => rng.random_bool(0.5),
        };
        let pages = move |c: &mut Counters| {
            let d = match fate {
                DataFate::Lost => PageFate::Lost,
                DataFate::Kept => PageFate::Whole,
                DataFate::Pages if rng.random_bool(0.5) => PageFate::Whole,
                DataFate::Pages => PageFate::Lost,
                DataFate::Sectors => match rng.random_range(0..3) {
                    0 => PageFate::Lost,
                    1 => PageFate::Whole,
                    // At least one sector kept and one lost.
                    _ => PageFate::Sectors(rng.random_range(1..(1u32 << SECTORS_PER_PAGE) - 1)),
                },
            };
            match d {
                PageFate::Lost => c.pages_lost += 1,
                PageFate::Whole => c.pages_kept += 1,
                PageFate::Sectors(_) => c.pages_torn += 1,
            }
            d
        };
        (keep_size, pages)
    }

    /// The durable namespace `fate` leaves, and the inodes it reaches from the root.
    fn namespace_after(
        &self,
        fate: DirFate,
        rng: &mut impl Rng,
        counters: &mut Counters,
    ) -> (BTreeMap<u64, BTreeMap<OsString, u64>>, BTreeSet<u64>) {
        let uncovered = self.log.iter().filter(|(_, c)| !*c).count();
        let prefix = rng.random_range(0..=uncovered);
        let mut ns = self.base.clone();
        let mut seen = 0;
        for (op, covered) in &self.log {
            let keep = *covered || {
                seen += 1;
                let keep = match fate {
                    DirFate::Lost => false,
                    DirFate::Kept => true,
                    DirFate::Prefix => seen <= prefix,
                    DirFate::Each => rng.random_bool(0.5),
                };
                if keep {
                    counters.entry_ops_kept += 1;
                } else {
                    counters.entry_ops_lost += 1;
                }
                keep
            };
            if keep {
                op.apply(&mut ns);
            }
        }
        let mut reached = BTreeSet::new();
        let mut stack = vec![ROOT];
        // Bounded by the inodes: each is walked once.
        while let Some(d) = stack.pop() {
            if !reached.insert(d) {
                continue;
            }
            if self.inodes.get(&d).is_some_and(|i| i.kind == Kind::Dir) {
                stack.extend(ns.get(&d).into_iter().flat_map(|e| e.values().copied()));
            }
        }
        ns.retain(|d, _| reached.contains(d));
        for entries in ns.values_mut() {
            entries.retain(|_, ino| reached.contains(ino));
        }
        (ns, reached)
    }

    /// Cuts the power: applies `fate` to everything no sync covered, drops inodes no durable
    /// entry reaches, and makes the result both the durable and the visible state.
    pub fn power_cut(&mut self, fate: Fate, rng: &mut impl Rng) -> Result<(), Errno> {
        let mut counters = self.counters;
        counters.cuts += 1;
        // Data first: every file's dirty pages and size.
        let files: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, i)| i.kind == Kind::File && (!i.dirty.is_empty() || i.size_dirty))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in files {
            let (keep_size, mut pages) = Self::page_fates(fate.data, rng);
            self.settle_file(ino, keep_size, &mut pages, &mut counters)?;
        }
        // Then the namespace: the base, the covered operations, and those the fate keeps.
        let (ns, reached) = self.namespace_after(fate.dirs, rng, &mut counters);
        self.counters = counters;
        self.log.clear();
        // Every inode the root does not reach is gone, with its backing file.
        let gone: Vec<u64> = self
            .inodes
            .keys()
            .copied()
            .filter(|ino| !reached.contains(ino))
            .collect();
        for ino in gone {
            self.inodes.remove(&ino);
            std::fs::remove_file(self.backing_path(ino))
                .or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(errno)?;
        }
        // The visible namespace and link counts from the durable one.
        for i in self.inodes.values_mut() {
            i.entries.clear();
            i.nlink = if i.kind == Kind::Dir { 1 } else { 0 };
        }
        for (&d, entries) in &ns {
            for &ino in entries.values() {
                let kind = self.inodes[&ino].kind;
                self.inodes.get_mut(&ino).expect("reached").nlink += 1;
                if kind == Kind::Dir {
                    self.inodes.get_mut(&d).expect("reached").nlink += 1;
                }
            }
            if let Some(i) = self.inodes.get_mut(&d) {
                i.entries = entries.clone();
            }
        }
        self.inodes.get_mut(&ROOT).expect("the root stays").nlink += 1;
        self.base = ns;
        Ok(())
    }

    /// What a power cut with `fate` would leave, written as a plain directory tree under `out`
    /// (which must not exist); the volume itself is not changed. Many fates of one moment can
    /// be judged this way without running the program up to that moment again. Returns what
    /// the cut would have counted.
    pub fn materialize(&self, fate: Fate, rng: &mut impl Rng, out: &Path) -> io::Result<Counters> {
        let mut counters = Counters {
            cuts: 1,
            ..Counters::default()
        };
        let (ns, _) = self.namespace_after(fate.dirs, rng, &mut counters);
        std::fs::create_dir(out)?;
        let mut stack = vec![(out.to_path_buf(), ROOT)];
        // Bounded by the inodes: a directory reached under two names is written once.
        let mut written = BTreeSet::new();
        while let Some((path, d)) = stack.pop() {
            if !written.insert(d) {
                continue;
            }
            for (name, &ino) in ns.get(&d).into_iter().flatten() {
                let p = path.join(name);
                let i = &self.inodes[&ino];
                match i.kind {
                    Kind::Dir => {
                        std::fs::create_dir(&p)?;
                        stack.push((p, ino));
                    }
                    Kind::Socket => {}
                    Kind::File => {
                        let mut content = vec![0u8; i.durable_size as usize];
                        self.read_durable(ino, 0, &mut content)
                            .map_err(io::Error::from_raw_os_error)?;
                        if !i.dirty.is_empty() || i.size_dirty {
                            let (keep_size, mut pages) = Self::page_fates(fate.data, rng);
                            apply_file(i, &mut content, keep_size, &mut pages, &mut counters)
                                .map_err(io::Error::from_raw_os_error)?;
                        }
                        std::fs::write(&p, &content)?;
                    }
                }
            }
        }
        Ok(counters)
    }
}

/// Where a file's content after a cut or a sync is written: its backing file, or a copy in
/// memory.
trait Sink {
    fn set_len(&mut self, len: u64) -> Result<(), Errno>;
    fn write_at(&mut self, data: &[u8], at: u64) -> Result<(), Errno>;
}

impl Sink for &File {
    fn set_len(&mut self, len: u64) -> Result<(), Errno> {
        File::set_len(self, len).map_err(errno)
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> Result<(), Errno> {
        self.write_all_at(data, at).map_err(errno)
    }
}

impl Sink for Vec<u8> {
    fn set_len(&mut self, len: u64) -> Result<(), Errno> {
        self.resize(usize::try_from(len).map_err(|_| libc::EFBIG)?, 0);
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> Result<(), Errno> {
        let at = at as usize;
        self[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Writes into `sink` (which holds the file's durable content) what `keep_size` and
/// `page_fate` keep of `i`'s dirty state; returns the size that results.
fn apply_file(
    i: &Inode,
    sink: &mut impl Sink,
    keep_size: bool,
    page_fate: &mut dyn FnMut(&mut Counters) -> PageFate,
    counters: &mut Counters,
) -> Result<u64, Errno> {
    let new_size = if keep_size { i.size } else { i.durable_size };
    if keep_size && i.zero_from < i.durable_size {
        // The truncation reached the disk first: the bytes past it are gone.
        sink.set_len(i.zero_from)?;
    }
    sink.set_len(new_size)?;
    for (&page, content) in &i.dirty {
        let start = page * PAGE_BYTES;
        if start >= new_size {
            continue;
        }
        let len = (new_size - start).min(PAGE_BYTES) as usize;
        match page_fate(counters) {
            PageFate::Lost => {}
            PageFate::Whole => sink.write_at(&content[..len], start)?,
            PageFate::Sectors(mask) => {
                for s in 0..SECTORS_PER_PAGE {
                    let from = s * SECTOR_BYTES;
                    if mask & (1 << s) != 0 && from < len {
                        let to = (from + SECTOR_BYTES).min(len);
                        sink.write_at(&content[from..to], start + from as u64)?;
                    }
                }
            }
        }
    }
    Ok(new_size)
}

/// An I/O error as an errno.
fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// What a cut does to one dirty page.
#[derive(Debug, Clone, Copy)]
enum PageFate {
    Lost,
    Whole,
    /// Kept only in the sectors whose bit is set.
    Sectors(u32),
}
