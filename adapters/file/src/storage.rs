//! [`FileStorage`]: the core's three regions over files.
//!
//! **Invariant:** every file is created at its full size (written with zeros, so later writes
//! change no file metadata) and never truncated while mapped; `sync` flushes exactly the files
//! written since the last sync of that region, and directories are synced after files are
//! created in them.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use sluicegate_core::{ErrorType, Region, SplitSync, Storage, StorageError, StorageErrorKind};

use crate::dirs::{claim, sync_dir, DirLock, DirRole};

/// Where a [`FileStorage`] keeps its files, and how big they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Holds `checkpoint.slot`.
    pub checkpoint_dir: PathBuf,
    /// Holds `backup.slot`; on another disk if you can.
    pub backup_dir: PathBuf,
    /// Log segments go round-robin over these (several disks work in parallel).
    pub data_dirs: Vec<PathBuf>,
    /// The size of one log segment file, a multiple of 4 KiB.
    pub segment_bytes: u32,
    /// How many segments the log's ring has (at least 4): the most log files there can be.
    /// Files are made as the log reaches them.
    pub segments: u32,
    /// Log files kept for reuse once the log no longer needs them: a file released while more
    /// than this many exist is deleted, so the log shrinks back after a backlog drains.
    pub kept_segments: u32,
    /// The size of each checkpoint slot file, a multiple of 4 KiB.
    pub slot_bytes: u64,
}

impl Layout {
    /// The file of log segment `slot`: segments go round-robin over the data directories.
    pub fn segment_path(&self, slot: usize) -> PathBuf {
        segment_path(&self.data_dirs, slot)
    }
}

/// The file of log segment `slot` among `data_dirs`: round-robin, the one rule every reader and
/// writer of log files follows.
fn segment_path(data_dirs: &[PathBuf], slot: usize) -> PathBuf {
    data_dirs[slot % data_dirs.len()].join(segment_name(slot))
}

/// What a [`FileError`] (or a [`FileChannelError`](crate::FileChannelError)) is, so callers
/// decide by kind, never by the message's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileErrorKind {
    /// Another process holds a directory's lock: its pid, if the lock file names it.
    Locked {
        /// The holder's pid.
        pid: Option<u32>,
    },
    /// Queued events cannot be read: their log file is missing, cut short or damaged.
    /// `sluicegate repair` removes them and reports them.
    Lost {
        /// How many.
        events: u64,
    },
    /// A log file is shorter than the layout says.
    CutShort {
        /// Its slot in the ring.
        slot: usize,
    },
    /// The directories, their format files or their files do not match this build, the
    /// configuration or each other.
    Layout,
    /// The media hold a format this build does not read, or data that passed its checksum
    /// but contradicts the format.
    Format,
    /// A device has no space left.
    NoSpace,
    /// An I/O failure.
    Io,
    /// A bad argument or setting.
    Config,
    /// A channel that is full (capacity or log space) after waiting `keep_alive_ms`, or below
    /// `minimum_required_space_bytes`.
    Full,
    /// Anything else (a transaction misused, a bug).
    Other,
}

impl FileErrorKind {
    /// The kind's name in JSON errors: `locked`, `lost`, `cut-short`, `layout`, `format`, `no-space`,
    /// `io`, `config`, `full` or `other`.
    pub fn name(self) -> &'static str {
        match self {
            FileErrorKind::Locked { .. } => "locked",
            FileErrorKind::Lost { .. } => "lost",
            FileErrorKind::CutShort { .. } => "cut-short",
            FileErrorKind::Layout => "layout",
            FileErrorKind::Format => "format",
            FileErrorKind::NoSpace => "no-space",
            FileErrorKind::Io => "io",
            FileErrorKind::Config => "config",
            FileErrorKind::Full => "full",
            FileErrorKind::Other => "other",
        }
    }
}

/// An error of the file adapter: what failed, on which path.
#[derive(Debug)]
pub struct FileError {
    kind: StorageErrorKind,
    what: String,
    source: Option<std::io::Error>,
    /// What it is, for callers.
    detail: FileErrorKind,
}

impl FileError {
    pub(crate) fn io(doing: &str, path: &Path, e: std::io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(28) => StorageErrorKind::NoSpace, // ENOSPC
            _ => StorageErrorKind::Io,
        };
        FileError {
            kind,
            what: format!("cannot {doing} {}: {e}", path.display()),
            source: Some(e),
            detail: if kind == StorageErrorKind::NoSpace {
                FileErrorKind::NoSpace
            } else {
                FileErrorKind::Io
            },
        }
    }

    /// The kind of the I/O error behind this one, if there is one.
    pub(crate) fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.source.as_ref().map(std::io::Error::kind)
    }

    pub(crate) fn config(what: String) -> Self {
        FileError {
            kind: StorageErrorKind::Other,
            what,
            source: None,
            detail: FileErrorKind::Layout,
        }
    }

    /// A directory whose lock another process holds (`holder` is its pid, 0 if unknown).
    pub(crate) fn locked(what: String, holder: u32) -> Self {
        FileError {
            detail: FileErrorKind::Locked {
                pid: (holder != 0).then_some(holder),
            },
            ..FileError::config(what)
        }
    }

    /// The log file of `slot` is shorter than the layout says: cut short (a copy or a disk
    /// that failed part way) or made with a smaller `max_file_bytes`.
    pub(crate) fn cut_short(what: String, slot: usize) -> Self {
        FileError {
            detail: FileErrorKind::CutShort { slot },
            ..FileError::config(what)
        }
    }

    /// `events` queued events cannot be read.
    pub(crate) fn lost(what: String, events: u64) -> Self {
        FileError {
            detail: FileErrorKind::Lost { events },
            ..FileError::config(what)
        }
    }

    /// What the error is.
    pub fn detail(&self) -> FileErrorKind {
        self.detail
    }

    /// True if the error is a directory lock held by another process: the channel is open
    /// elsewhere. Callers decide by this, never by the message's words.
    pub fn is_locked(&self) -> bool {
        matches!(self.detail, FileErrorKind::Locked { .. })
    }

    /// The pid of the process holding a directory's lock, if that is the error and the lock
    /// file names it.
    pub fn lock_holder(&self) -> Option<u32> {
        match self.detail {
            FileErrorKind::Locked { pid } => pid,
            _ => None,
        }
    }

    /// The error every log sync returns after a gathered write failed: the bytes it held are
    /// lost, so nothing written since may be reported durable.
    fn earlier(failed: &(StorageErrorKind, String)) -> Self {
        FileError {
            kind: failed.0,
            what: format!(
                "an earlier log write failed, so the log cannot be synced: {}",
                failed.1
            ),
            source: None,
            detail: if failed.0 == StorageErrorKind::NoSpace {
                FileErrorKind::NoSpace
            } else {
                FileErrorKind::Io
            },
        }
    }

    pub(crate) fn bounds(region: Region, offset: u64, len: usize) -> Self {
        FileError {
            kind: StorageErrorKind::OutOfBounds,
            what: format!("{region:?}: {len} bytes at {offset} are outside the region"),
            source: None,
            detail: FileErrorKind::Other,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl StorageError for FileError {
    fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

/// One preallocated, mapped file.
struct Mapped {
    path: PathBuf,
    /// Shared with sync tickets, which `fdatasync` it without the channel's lock.
    file: Arc<File>,
    map: Mmap,
    /// Writes (and erases) issued to the file, and how many of them a sync has covered.
    writes: u64,
    synced: u64,
    /// True from creation until the first write: the file is all zeros, durably.
    fresh: bool,
}

impl Mapped {
    /// Opens an existing file of `len` bytes. A file of another size is refused: it belongs to
    /// another layout.
    fn open(path: PathBuf, len: u64) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FileError::io("open", &path, e))?;
        let found = file
            .metadata()
            .map_err(|e| FileError::io("stat", &path, e))?
            .len();
        if found != len {
            return Err(FileError::config(format!(
                "{} is {found} bytes, the layout says {len}: it was written with another configuration",
                path.display()
            )));
        }
        // SAFETY: the file is ours: the directory lock keeps other Sluicegate processes out, and
        // this process never truncates it while mapped (its size is fixed at creation and
        // checked above). The map is read-only and we write through the file descriptor, which
        // the page cache makes visible through the map at once. If another program truncates
        // the file anyway, reading the cut part raises SIGBUS and the process dies; it cannot
        // read wrong bytes silently, and a restart replays what is durable.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FileError::io("map", &path, e))?;
        Ok(Mapped {
            path,
            file: Arc::new(file),
            map,
            writes: 0,
            synced: 0,
            fresh: false,
        })
    }

    /// Creates `path` at `len` bytes of zeros, atomically: the zeros go to a temporary file
    /// that is synced and then renamed, and the directory is synced, so a crash or a full disk
    /// never leaves a short file under the real name. The temporary file is removed on failure.
    fn create(path: PathBuf, len: u64) -> Result<Self, FileError> {
        Mapped::reserve(path, len)?.fill()
    }

    /// The first half of [`Mapped::create`], quick: the temporary file, with its `len` bytes
    /// allocated (`fallocate`) where the filesystem can, so that a full disk fails here and
    /// not in [`Reserved::fill`], which may run on another thread.
    fn reserve(path: PathBuf, len: u64) -> Result<Reserved, FileError> {
        let tmp = tmp_path(&path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| FileError::io("create", &tmp, e))?;
        crate::crash::point("file-created");
        if let Err(e) = allocate(&file, len) {
            let _ = std::fs::remove_file(&tmp);
            return Err(FileError::io("allocate", &tmp, e));
        }
        Ok(Reserved {
            path,
            tmp,
            file,
            len,
        })
    }

    /// Opens a checkpoint slot file, creating it if it does not exist. A slot file shorter than
    /// `len` is grown with zeros (erased bytes) and synced first: the layout asks for more room
    /// than when it was created (marks were turned on, or came with a newer version). What it
    /// holds stays where it is, so its checkpoint stays valid.
    fn open_slot(path: PathBuf, len: u64) -> Result<Self, FileError> {
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.len() < len {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| FileError::io("open", &path, e))?;
                write_zeros(&file, &path, meta.len(), len)?;
                file.sync_all()
                    .map_err(|e| FileError::io("sync", &path, e))?;
            }
        }
        Mapped::open_or_create(path, len)
    }

    /// Opens `path`, creating it if it does not exist.
    fn open_or_create(path: PathBuf, len: u64) -> Result<Self, FileError> {
        if path.exists() {
            Mapped::open(path, len)
        } else {
            Mapped::create(path, len)
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.count_write();
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FileError::io("write", &self.path, e))
    }

    /// Counts a write, made now or gathered to be made before the next sync.
    fn count_write(&mut self) {
        self.writes += 1;
        self.fresh = false;
    }

    /// Makes `from..to` zeros. With `unwritten`, by `fallocate` (`FALLOC_FL_ZERO_RANGE`) where
    /// the filesystem can: fast, and the blocks stay allocated, but they become unwritten
    /// extents, which the first `fdatasync` after a write into each converts (a journal commit
    /// on ext4). So only a tail cleared for a run that goes on in this file is erased that way;
    /// the first erase block of a segment reused by the ring (all the core erases of it) gets
    /// written zeros, and a new file is written full of zeros.
    fn erase(&mut self, from: u64, to: u64, unwritten: bool) -> Result<(), FileError> {
        if self.fresh {
            // Created full of zeros and synced: already erased, durably.
            return Ok(());
        }
        self.writes += 1;
        if unwritten
            && zero_range(&self.file, from, to.saturating_sub(from))
                .map_err(|e| FileError::io("zero a range of", &self.path, e))?
        {
            return Ok(());
        }
        write_zeros(&self.file, &self.path, from, to)
    }

    fn is_dirty(&self) -> bool {
        self.writes > self.synced
    }

    /// Syncs the file if anything was written since its last sync; returns the syncs issued.
    fn sync(&mut self) -> Result<u64, FileError> {
        if !self.is_dirty() {
            return Ok(0);
        }
        let upto = self.writes;
        self.file
            .sync_data()
            .map_err(|e| FileError::io("sync", &self.path, e))?;
        self.synced = upto;
        Ok(1)
    }
}

/// A segment file's temporary file, its length allocated: [`Reserved::fill`] makes it the file.
struct Reserved {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    len: u64,
}

impl Reserved {
    /// Writes the zeros (so the log's syncs in the file write only data: an allocated but
    /// unwritten extent would cost a journal commit at each), syncs, renames the file into
    /// place, syncs the directory, and maps it.
    fn fill(self) -> Result<Mapped, FileError> {
        let Reserved {
            path,
            tmp,
            file,
            len,
        } = self;
        let result = (|| {
            write_zeros_paced(&file, &tmp, 0, len / 2)?;
            crate::crash::point("file-half-created");
            write_zeros_paced(&file, &tmp, len / 2, len)?;
            file.sync_all()
                .map_err(|e| FileError::io("sync", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| FileError::io("rename", &tmp, e))?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut m = Mapped::open(path, len)?;
        m.fresh = true;
        Ok(m)
    }
}

/// [`write_zeros`] a mebibyte at a time, each written out to the disk (`sync_file_range`)
/// before the next: a file made while the log writes never holds more than a mebibyte of dirty
/// pages, so a sync of the log never waits behind the flush of a whole file of zeros (the
/// 160 ms commits the benchmark's large cells showed while a 128 MiB file was made beside
/// them). The final `fsync` still makes it durable; this only spreads the writing.
fn write_zeros_paced(file: &File, path: &Path, from: u64, to: u64) -> Result<(), FileError> {
    use std::os::fd::AsRawFd;
    const CHUNK: u64 = 1 << 20;
    let mut at = from;
    // Bounded by the range's length.
    while at < to {
        let end = (at + CHUNK).min(to);
        write_zeros(file, path, at, end)?;
        if let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(at),
            libc::off64_t::try_from(end - at),
        ) {
            // SAFETY: `file` is an open descriptor for the whole call; the call reads no
            // memory. A failure (a filesystem without it) only loses the pacing: the final
            // fsync reports real write errors.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    off,
                    n,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        at = end;
    }
    Ok(())
}

/// Allocates `len` bytes of `file` (`fallocate`, mode 0), so that writing them later never
/// needs space. Where the filesystem cannot, nothing is allocated and the zeros' writes find
/// out about space instead.
fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    fallocate(file, 0, 0, len).map(|_| ())
}

/// Zeroes `len` bytes of `file` from `offset` without writing them, keeping their blocks
/// allocated (`fallocate` with `FALLOC_FL_ZERO_RANGE`: ext4 and XFS mark the extents unwritten),
/// so that a later write there never needs space. Returns false where the filesystem cannot
/// (tmpfs, for one), and the caller writes the zeros.
fn zero_range(file: &File, offset: u64, len: u64) -> std::io::Result<bool> {
    fallocate(file, libc::FALLOC_FL_ZERO_RANGE, offset, len)
}

/// `fallocate(mode)` over `offset..offset + len`: true if done (or nothing to do), false
/// where the filesystem or the range does not allow it, an error otherwise (a full disk).
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(true);
    }
    let (Ok(at), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(false);
    };
    // SAFETY: `file` is an open descriptor for the whole call; fallocate reads no memory.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, at, n) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(e),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<(), FileError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    // Bounded by the range's length.
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)
            .map_err(|e| FileError::io("write zeros to", path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// What a sync of the log must cover, taken under the channel's lock so that it can be carried
/// out without it: the files written so far, and how many writes of each it covers. See
/// `SplitSync::begin_log_sync`.
#[derive(Debug, Default)]
pub struct LogSyncTicket {
    files: Vec<(usize, Arc<File>, PathBuf, u64)>,
    /// Why the ticket cannot succeed: a gathered write failed.
    failed: Option<(StorageErrorKind, String)>,
}

impl LogSyncTicket {
    /// Syncs (`fdatasync`) every file the ticket names. Safe to run while other threads write
    /// to the same files: it covers at least every write issued before the ticket was taken.
    pub fn sync(&self) -> Result<(), FileError> {
        if let Some(failed) = &self.failed {
            return Err(FileError::earlier(failed));
        }
        for (_, file, path, _) in &self.files {
            file.sync_data()
                .map_err(|e| FileError::io("sync", path, e))?;
        }
        crate::crash::point("synced");
        Ok(())
    }

    /// How many files the ticket syncs.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

/// Log writes above this size go straight to the file, and gathered writes are made before
/// they would span more than this.
const GATHER_BYTES: usize = 64 << 10;

/// Log writes to one run of one segment file, waiting to be made in one `pwrite`.
///
/// The core hands a record to the storage in ordered pieces (a plaintext or small sealed
/// record from its header on; a large sealed one body first, then its header in front), so
/// gathering them makes a commit of 100 records a few system calls instead of hundreds. The
/// run has no holes: a write joins it only if it continues the run (starts at its end) or
/// leads it (ends at its start: a large sealed record's header, after its body); any other
/// write makes the gathered bytes first. The buffer is allocated once, at its full size, and
/// the run never outgrows it.
///
/// Reads see the gathered bytes without making them (the map, overlaid with the run), so a
/// read writes nothing. Gathered bytes are made before an erase or sync of the log, before a
/// log write that does not join the run, before a sync ticket is taken, and when the storage
/// is dropped, so a sync covers every write made before it, as [`Storage`] requires. Until
/// then they are as durable as any unsynced write: not at all.
#[derive(Default)]
struct Gather {
    /// The segment, or `None` when nothing is gathered.
    slot: Option<usize>,
    /// The file offset of `bytes[0]`.
    at: u64,
    bytes: Vec<u8>,
}

impl Gather {
    /// Where the run ends in its file.
    fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }

    /// True if a write of `len` bytes at `at` in segment `slot` joins the run.
    fn joins(&self, slot: usize, at: u64, len: usize) -> bool {
        let room = self.bytes.len() + len <= GATHER_BYTES;
        self.slot == Some(slot) && room && (at == self.end() || at + len as u64 == self.at)
    }

    /// Adds a write that [`Gather::joins`] the run (or starts it).
    fn add(&mut self, slot: usize, at: u64, data: &[u8]) {
        if self.slot.is_none() {
            self.slot = Some(slot);
            self.at = at;
            // The run spans at most GATHER_BYTES, so this is the only allocation.
            self.bytes.reserve_exact(GATHER_BYTES);
        }
        if at == self.end() {
            self.bytes.extend_from_slice(data);
        } else {
            self.bytes.splice(0..0, data.iter().copied());
            self.at = at;
        }
    }

    /// Copies the gathered bytes of segment `slot` that fall in `[at, at + buf.len())` over
    /// `buf`.
    fn overlay(&self, slot: usize, at: u64, buf: &mut [u8]) {
        if self.slot != Some(slot) {
            return;
        }
        let from = at.max(self.at);
        let to = (at + buf.len() as u64).min(self.end());
        if from < to {
            let (b, g) = ((from - at) as usize, (from - self.at) as usize);
            let n = (to - from) as usize;
            buf[b..b + n].copy_from_slice(&self.bytes[g..g + n]);
        }
    }
}

/// The core's storage over directories of files. See the crate docs for the layout.
pub struct FileStorage {
    /// One entry per segment of the ring; `None` while the segment has no file. Boxed, so a
    /// ring of 1,024 costs 8 KiB of pointers, not 72 KiB of maps that mostly do not exist.
    segments: Vec<Option<Box<Mapped>>>,
    data_dirs: Vec<PathBuf>,
    checkpoint: Mapped,
    backup: Mapped,
    segment_bytes: u64,
    fsyncs: u64,
    files_created: u64,
    gather: Gather,
    /// Set when a gathered write failed: every later log sync fails with it (the writes it
    /// held are lost; the PostgreSQL fsync lesson, docs/guarantees.md).
    write_failed: Option<(StorageErrorKind, String)>,
    /// The segment file being made off the caller's thread, if one is (see
    /// [`Storage::prepare`]).
    making: Option<Making>,
    /// Segments whose files the core released ([`Storage::release`]) and that are kept to be
    /// reused for another segment in the same directory, oldest release first.
    spares: Vec<usize>,
    /// At most this many files are kept when the core releases one (`Layout::kept_segments`).
    kept: usize,
    files_recycled: u64,
    files_deleted: u64,
    waits: FileWaits,
    _locks: Vec<DirLock>,
}

/// Log writes that found their segment's file not ready and waited while it was made (on its
/// thread, or on the writer's own when nothing started it): how many, and for how long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileWaits {
    /// Waits.
    pub count: u64,
    /// Their total, in microseconds.
    pub total_us: u64,
    /// The longest, in microseconds.
    pub longest_us: u64,
}

impl FileWaits {
    fn add(&mut self, since: std::time::Instant) {
        let us = since.elapsed().as_micros() as u64;
        self.count += 1;
        self.total_us += us;
        self.longest_us = self.longest_us.max(us);
    }
}

/// A segment file being made on a thread of its own: its slot, and the thread, which writes
/// the zeros, syncs, renames and maps it (`Reserved::fill`), or gives a spare file its new
/// name (`Recycled::rename`).
struct Making {
    slot: usize,
    recycled: bool,
    thread: std::thread::JoinHandle<Result<Mapped, FileError>>,
}

/// A spare segment file on its way to a new name: see [`Recycled::rename`].
struct Recycled {
    mapped: Mapped,
    to: PathBuf,
}

impl Recycled {
    /// Zeroes the file's first page (its old segment header) and syncs it, renames the file
    /// to its new segment's name and syncs the directory. A cut before the rename is durable
    /// leaves a released file under its old name; after it, a file whose header reads as
    /// erased: never a header under a name its sequence number does not give (which an open
    /// refuses as corruption). The rest of the file keeps an earlier lap's records, which
    /// fail their CRCs by the segment binding, as in a segment reused in place.
    fn rename(self) -> Result<Mapped, FileError> {
        let Recycled { mut mapped, to } = self;
        write_zeros(&mapped.file, &mapped.path, 0, 4096)?;
        mapped
            .file
            .sync_data()
            .map_err(|e| FileError::io("sync", &mapped.path, e))?;
        crate::crash::point("file-recycle-zeroed");
        std::fs::rename(&mapped.path, &to).map_err(|e| FileError::io("rename", &mapped.path, e))?;
        sync_dir(to.parent().unwrap_or(Path::new(".")))?;
        crate::crash::point("file-recycled");
        mapped.path = to;
        mapped.synced = mapped.writes;
        mapped.fresh = false;
        Ok(mapped)
    }
}

impl Drop for FileStorage {
    /// Makes the gathered writes, so a storage dropped without a sync leaves what it was given
    /// in the page cache, as it did before writes were gathered. (Not durable: nothing
    /// unsynced is.)
    fn drop(&mut self) {
        let _ = self.flush_gathered();
        // A file being made is finished (or removed, if that fails) before the directory
        // locks go, so no other open finds it half made under its temporary name.
        let _ = self.finish_making();
    }
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage")
            .field("segments", &self.segments.len())
            .field("segment_bytes", &self.segment_bytes)
            .finish()
    }
}

impl FileStorage {
    /// Erases `from..to` of `region` (see [`Mapped::erase`] for `unwritten`), after making the
    /// gathered log writes.
    fn erase_range(
        &mut self,
        region: Region,
        from: u64,
        to: u64,
        unwritten: bool,
    ) -> Result<(), FileError> {
        if region == Region::Log {
            self.flush_gathered()?;
        }
        let len = to.saturating_sub(from) as usize;
        for (seg, at, range) in self.pieces(region, from, len)? {
            let end = at + range.len() as u64;
            match seg {
                None => self.slot_file(region).erase(at, end, false)?,
                // A segment is erased when the log first rolls into it, before any write to
                // it: its file is made here if missing, and fails for space here, where a full
                // disk is not sticky.
                Some(s) => {
                    self.claim(s);
                    self.segment(s)?.erase(at, end, unwritten)?
                }
            }
        }
        Ok(())
    }

    /// Opens (creating what is missing) the directories of `layout`: checks the layout, locks
    /// every directory, checks their format files, removes temporary files a crash left, checks
    /// that every segment file present belongs to this layout, and maps every file. Segment
    /// files are created as the log first reaches them.
    pub fn open(layout: &Layout) -> Result<Self, FileError> {
        validate(layout)?;
        // Before any directory is made or locked: settings that contradict the recorded
        // geometry change nothing.
        crate::dirs::check_geometry(layout)?;
        let mut locks = Vec::new();
        locks.push(claim(&layout.checkpoint_dir, DirRole::Checkpoint)?);
        locks.push(claim(&layout.backup_dir, DirRole::Backup)?);
        for dir in &layout.data_dirs {
            locks.push(claim(dir, DirRole::Data)?);
        }
        let found = scan_data_dirs(layout, true)?;
        let mut segments = Vec::with_capacity(layout.segments as usize);
        for (slot, present) in found.into_iter().enumerate() {
            segments.push(match present {
                Some(path) => {
                    let len = std::fs::metadata(&path)
                        .map_err(|e| FileError::io("stat", &path, e))?
                        .len();
                    if len < layout.segment_bytes as u64 {
                        return Err(FileError::cut_short(
                            format!(
                                "{} is cut short ({len} of {} bytes)",
                                path.display(),
                                layout.segment_bytes
                            ),
                            slot,
                        ));
                    }
                    Some(Box::new(Mapped::open(path, layout.segment_bytes as u64)?))
                }
                None => None,
            });
        }
        let slot_bytes = layout.slot_bytes;
        let checkpoint =
            Mapped::open_slot(layout.checkpoint_dir.join("checkpoint.slot"), slot_bytes)?;
        let backup = Mapped::open_slot(layout.backup_dir.join("backup.slot"), slot_bytes)?;
        Ok(FileStorage {
            segments,
            data_dirs: layout.data_dirs.clone(),
            checkpoint,
            backup,
            segment_bytes: layout.segment_bytes as u64,
            fsyncs: 0,
            files_created: 0,
            gather: Gather::default(),
            write_failed: None,
            making: None,
            spares: Vec::new(),
            kept: layout.kept_segments as usize,
            files_recycled: 0,
            files_deleted: 0,
            waits: FileWaits::default(),
            _locks: locks,
        })
    }

    /// Segment files given to another segment instead of making a new one.
    pub fn files_recycled(&self) -> u64 {
        self.files_recycled
    }

    /// Log writes that waited for their segment's file to be made.
    pub fn file_waits(&self) -> FileWaits {
        self.waits
    }

    /// Segment files deleted once released, beyond the kept ones.
    pub fn files_deleted(&self) -> u64 {
        self.files_deleted
    }

    /// The log files there are now (one being made included).
    pub fn log_files(&self) -> usize {
        self.segments.iter().filter(|m| m.is_some()).count() + usize::from(self.making.is_some())
    }

    /// The log is about to use segment `slot` again: its file is no longer a spare.
    fn claim(&mut self, slot: usize) {
        if !self.spares.is_empty() {
            self.spares.retain(|&s| s != slot);
        }
    }

    /// A spare file in the directory of segment `slot`, taken out of the spares and out of
    /// its old segment, on its way to `slot`'s name.
    fn take_spare(&mut self, slot: usize) -> Option<Recycled> {
        let dirs = self.data_dirs.len();
        let at = self
            .spares
            .iter()
            .position(|&s| s != slot && s % dirs == slot % dirs)?;
        let from = self.spares.remove(at);
        let mapped = *self.segments[from].take()?;
        Some(Recycled {
            mapped,
            to: self.segment_path(slot),
        })
    }

    /// `fdatasync` calls issued so far, by [`Storage::sync`] and by settled
    /// [`LogSyncTicket`]s: what group commit saves.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Segment files this storage has created.
    pub fn files_created(&self) -> u64 {
        self.files_created
    }

    /// The data directories, in the order segments go round them.
    pub fn data_dirs(&self) -> &[PathBuf] {
        &self.data_dirs
    }

    /// What a sync of the log must cover now, for a sync run without the channel's lock
    /// (group commit, [`SplitSync`]; the core's `Channel::begin_sync` takes it). Gathered
    /// writes are made first; if that fails (or failed before), the ticket's sync fails.
    fn log_sync_ticket(&mut self) -> LogSyncTicket {
        let _ = self.flush_gathered();
        let failed = self.write_failed.clone();
        let files = self
            .segments
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
            .filter(|(_, m)| m.is_dirty())
            .map(|(i, m)| (i, Arc::clone(&m.file), m.path.clone(), m.writes))
            .collect();
        LogSyncTicket { files, failed }
    }

    /// Makes the gathered log writes. A failure is remembered: the bytes are lost, so every
    /// later log sync fails too.
    fn flush_gathered(&mut self) -> Result<(), FileError> {
        let Some(slot) = self.gather.slot.take() else {
            return Ok(());
        };
        let at = self.gather.at;
        let result = match self.segments[slot].as_ref() {
            Some(m) => m
                .file
                .write_all_at(&self.gather.bytes, at)
                .map_err(|e| FileError::io("write", &m.path, e)),
            None => Err(FileError::config("a gathered segment vanished".into())),
        };
        self.gather.bytes.clear();
        if let Err(e) = &result {
            self.write_failed
                .get_or_insert_with(|| (e.kind(), e.to_string()));
        }
        result
    }

    /// A log write to segment `slot` at file offset `at`: gathered when it joins the run of the
    /// writes gathered before it (see [`Gather`]), made at once when it is large.
    fn write_log(&mut self, slot: usize, at: u64, data: &[u8]) -> Result<(), FileError> {
        self.segment(slot)?.count_write();
        if !self.gather.joins(slot, at, data.len()) {
            self.flush_gathered()?;
        }
        if data.len() >= GATHER_BYTES {
            let m = self.segment(slot)?;
            return m
                .file
                .write_all_at(data, at)
                .map_err(|e| FileError::io("write", &m.path, e));
        }
        self.gather.add(slot, at, data);
        Ok(())
    }

    /// Records that `ticket` was synced successfully, so `Storage::sync` does not sync those
    /// writes again.
    fn settle(&mut self, ticket: &LogSyncTicket) {
        for (i, _, _, upto) in &ticket.files {
            if let Some(m) = self.segments[*i].as_mut() {
                m.synced = m.synced.max(*upto);
            }
            self.fsyncs += 1;
        }
    }

    /// The path of segment `slot`.
    fn segment_path(&self, slot: usize) -> PathBuf {
        segment_path(&self.data_dirs, slot)
    }

    /// The mapped file of segment `slot`, created now if the log has not reached it before
    /// (or waited for, if it is being made).
    fn segment(&mut self, slot: usize) -> Result<&mut Mapped, FileError> {
        if self.segments[slot].is_none() && self.making.as_ref().is_some_and(|m| m.slot == slot) {
            self.finish_making()?;
        }
        if self.segments[slot].is_none() {
            let since = std::time::Instant::now();
            let m = match self.take_spare(slot) {
                Some(spare) => {
                    self.files_recycled += 1;
                    spare.rename()?
                }
                None => {
                    self.files_created += 1;
                    Mapped::create(self.segment_path(slot), self.segment_bytes)?
                }
            };
            self.waits.add(since);
            self.segments[slot] = Some(Box::new(m));
        }
        self.segments[slot]
            .as_deref_mut()
            .ok_or_else(|| FileError::config("segment vanished".into()))
    }

    /// Waits for the file being made, if one is, and puts it in its place.
    fn finish_making(&mut self) -> Result<(), FileError> {
        let Some(making) = self.making.take() else {
            return Ok(());
        };
        let busy = !making.thread.is_finished();
        let since = std::time::Instant::now();
        let made = making.thread.join().unwrap_or_else(|_| {
            Err(FileError::config(
                "the thread making a log file panicked".into(),
            ))
        })?;
        if busy {
            self.waits.add(since);
        }
        if making.recycled {
            self.files_recycled += 1;
        } else {
            self.files_created += 1;
        }
        self.segments[making.slot] = Some(Box::new(made));
        Ok(())
    }

    /// Starts making segment `slot`'s file on a thread of its own, once its length is
    /// allocated here (so a full disk fails the caller now). The file made before is put in
    /// place first; its failure is returned, and this one is not started.
    fn start_making(&mut self, slot: usize) -> Result<(), FileError> {
        self.claim(slot);
        if self.segments[slot].is_some() || self.making.as_ref().is_some_and(|m| m.slot == slot) {
            return Ok(());
        }
        self.finish_making()?;
        let builder = std::thread::Builder::new().name("sluicegate-mkfile".into());
        let (recycled, thread) = match self.take_spare(slot) {
            Some(spare) => (true, builder.spawn(move || spare.rename())),
            None => {
                let reserved = Mapped::reserve(self.segment_path(slot), self.segment_bytes)?;
                (false, builder.spawn(move || reserved.fill()))
            }
        };
        let thread = thread
            .map_err(|e| FileError::io("start a thread to make", &self.segment_path(slot), e))?;
        self.making = Some(Making {
            slot,
            recycled,
            thread,
        });
        Ok(())
    }

    /// The file of a checkpoint slot region.
    fn slot_file(&mut self, region: Region) -> &mut Mapped {
        match region {
            Region::Checkpoint => &mut self.checkpoint,
            _ => &mut self.backup,
        }
    }

    /// Splits `[offset, offset + len)` of `region` into per-file pieces, after checking bounds.
    /// Allocates nothing: it runs on every read and write.
    fn pieces(&self, region: Region, offset: u64, len: usize) -> Result<Pieces, FileError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.capacity(region))
            .ok_or_else(|| FileError::bounds(region, offset, len))?;
        // A slot file is one piece: treat it as a single segment as long as the region.
        let (log, segment_bytes) = match region {
            Region::Log => (true, self.segment_bytes),
            _ => (false, end.max(1)),
        };
        Ok(Pieces {
            log,
            segment_bytes,
            start: offset,
            at: offset,
            end,
        })
    }
}

/// The pieces of an access, one per file it touches: the segment (`None` for a slot file), the
/// offset in the file, and the range of the caller's buffer.
struct Pieces {
    log: bool,
    segment_bytes: u64,
    start: u64,
    at: u64,
    end: u64,
}

impl Iterator for Pieces {
    type Item = (Option<usize>, u64, std::ops::Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        // Each piece moves into the next segment file, so the iteration is bounded.
        let within = self.at % self.segment_bytes;
        let n = (self.segment_bytes - within).min(self.end - self.at);
        let from = (self.at - self.start) as usize;
        let seg = self.log.then_some((self.at / self.segment_bytes) as usize);
        self.at += n;
        Some((seg, within, from..from + n as usize))
    }
}

/// The file name of log segment `slot`: `log-NNNNNN.seg`.
pub fn segment_name(slot: usize) -> String {
    format!("log-{slot:06}.seg")
}

/// The segment slot a file name stands for, if it is a log segment's name.
pub fn segment_slot(name: &str) -> Option<usize> {
    name.strip_prefix("log-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

/// Lists the data directories: removes temporary files a crash left behind (if `remove_tmp`),
/// and refuses segment files the layout does not place there (another segment count or another
/// list of data directories would misread the log). Returns the path of each segment present.
pub(crate) fn scan_data_dirs(
    layout: &Layout,
    remove_tmp: bool,
) -> Result<Vec<Option<PathBuf>>, FileError> {
    let mut found = vec![None; layout.segments as usize];
    let dirs = layout.data_dirs.len();
    for (d, dir) in layout.data_dirs.iter().enumerate() {
        let mut removed = false;
        let entries = std::fs::read_dir(dir).map_err(|e| FileError::io("list", dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| FileError::io("list", dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                if !remove_tmp {
                    continue;
                }
                std::fs::remove_file(&path).map_err(|e| FileError::io("remove", &path, e))?;
                removed = true;
                continue;
            }
            let Some(slot) = segment_slot(name) else {
                continue;
            };
            if slot >= layout.segments as usize || slot % dirs != d {
                return Err(FileError::config(format!(
                    "{} does not belong to this layout ({} segments over {} data directories, this one number {}): the log was written with another configuration, or it is a stray copy (`sluicegate repair` moves it back to its slot, or out)",
                    path.display(),
                    layout.segments,
                    dirs,
                    d + 1
                )));
            }
            found[slot] = Some(path);
        }
        if removed {
            sync_dir(dir)?;
        }
    }
    Ok(found)
}

pub(crate) fn validate(layout: &Layout) -> Result<(), FileError> {
    let mut seen: Vec<&PathBuf> = Vec::new();
    for dir in std::iter::once(&layout.checkpoint_dir)
        .chain(std::iter::once(&layout.backup_dir))
        .chain(&layout.data_dirs)
    {
        if seen.contains(&dir) {
            return Err(FileError::config(format!(
                "{} is named twice: the checkpoint, backup and data directories must all differ",
                dir.display()
            )));
        }
        seen.push(dir);
    }
    if layout.data_dirs.is_empty() {
        return Err(FileError::config(
            "at least one data directory is needed".into(),
        ));
    }
    if layout.segments < 4 {
        return Err(FileError::config(format!(
            "the log needs at least 4 segments, the layout has {}",
            layout.segments
        )));
    }
    let erase = FileStorage::ERASE_SIZE as u64;
    if !(layout.segment_bytes as u64).is_multiple_of(erase) || layout.segment_bytes == 0 {
        return Err(FileError::config(format!(
            "segment_bytes ({}) must be a positive multiple of {erase}",
            layout.segment_bytes
        )));
    }
    if !layout.slot_bytes.is_multiple_of(erase) {
        return Err(FileError::config(format!(
            "slot_bytes ({}) must be a multiple of {erase}",
            layout.slot_bytes
        )));
    }
    Ok(())
}

impl ErrorType for FileStorage {
    type Error = FileError;
}

impl Storage for FileStorage {
    const READ_SIZE: usize = 1;
    /// Files have no write unit; 8 keeps records 8-byte aligned for little padding.
    const WRITE_SIZE: usize = 8;
    /// A page: erasing writes zeros, a page at a time.
    const ERASE_SIZE: usize = 4096;

    fn capacity(&self, region: Region) -> u64 {
        match region {
            Region::Log => self.segment_bytes * self.segments.len() as u64,
            Region::Checkpoint => self.checkpoint.map.len() as u64,
            Region::Backup => self.backup.map.len() as u64,
        }
    }

    /// Reads through the maps, with the gathered log writes laid over them: a read makes
    /// nothing.
    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        for (seg, at, range) in self.pieces(region, offset, buf.len())? {
            let at = at as usize;
            let map = match seg {
                None => &self.slot_file(region).map,
                Some(s) => match &self.segments[s] {
                    Some(m) => &m.map,
                    // A segment the log has never reached reads as erased.
                    None => {
                        buf[range].fill(0);
                        continue;
                    }
                },
            };
            buf[range.clone()].copy_from_slice(&map[at..at + range.len()]);
            if let Some(s) = seg {
                self.gather.overlay(s, at as u64, &mut buf[range]);
            }
        }
        Ok(())
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), FileError> {
        for (seg, at, range) in self.pieces(region, offset, data.len())? {
            match seg {
                None => self.slot_file(region).write(at, &data[range])?,
                Some(s) => self.write_log(s, at, &data[range])?,
            }
        }
        crate::crash::point(match region {
            Region::Log => "log-written",
            _ => "slot-written",
        });
        Ok(())
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), FileError> {
        self.erase_range(region, from, to, false)
    }

    /// The tail of the segment a run goes on in: zeroed without writing where the filesystem
    /// can (see `Mapped::erase`).
    fn erase_tail(&mut self, region: Region, from: u64, to: u64) -> Result<(), FileError> {
        self.erase_range(region, from, to, true)
    }

    /// Makes the file of the segment at `from` (the one after a put's roll), so that take
    /// commits find it made when a full disk refuses new files: puts fail for space first.
    /// Its length is allocated now; its zeros are written, and it is synced and renamed, on a
    /// thread of its own, while the log fills the segment before it.
    fn prepare(&mut self, region: Region, from: u64, _to: u64) -> Result<(), FileError> {
        if region == Region::Log {
            let slot = (from / self.segment_bytes) as usize;
            if slot < self.segments.len() {
                self.start_making(slot)?;
            }
        }
        Ok(())
    }

    /// Keeps the released segment's file as a spare while at most `kept_segments` files
    /// exist, to be renamed for a later segment (no new file, no zeros written); deletes it
    /// otherwise. A deletion needs no directory sync: a file a cut brings back is a released
    /// segment, which the core reads as it would a reused slot.
    fn release(&mut self, region: Region, from: u64, _to: u64) -> Result<(), FileError> {
        let slot = (from / self.segment_bytes) as usize;
        if region != Region::Log
            || self.segments.get(slot).is_none_or(|m| m.is_none())
            || self.spares.contains(&slot)
        {
            return Ok(());
        }
        if self.gather.slot == Some(slot) {
            self.flush_gathered()?;
        }
        if self.log_files() <= self.kept {
            self.spares.push(slot);
            return Ok(());
        }
        if let Some(m) = self.segments[slot].take() {
            let path = m.path.clone();
            drop(m);
            std::fs::remove_file(&path).map_err(|e| FileError::io("remove", &path, e))?;
            crate::crash::point("file-removed");
            self.files_deleted += 1;
        }
        Ok(())
    }

    /// Log writes are gathered while each continues the last or leads it.
    fn whole_records(&self) -> bool {
        true
    }

    /// Files can be written over, and read back what was made durable: a run goes on in the
    /// newest segment file instead of starting one of its own, and a reused segment file is
    /// made ready by one block's write, its old records left to fail their CRCs.
    fn rewritable(&self) -> bool {
        true
    }

    /// From the operating system; without one (practically never on a server), the clock.
    fn salt(&mut self) -> u32 {
        let mut salt = [0u8; 4];
        if getrandom::fill(&mut salt).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
            return now ^ std::process::id().rotate_left(16);
        }
        u32::from_le_bytes(salt)
    }

    fn sync(&mut self, region: Region) -> Result<(), FileError> {
        let synced = match region {
            Region::Log => {
                self.flush_gathered()?;
                if let Some(failed) = &self.write_failed {
                    return Err(FileError::earlier(failed));
                }
                let mut n = 0;
                for m in self.segments.iter_mut().flatten() {
                    n += m.sync()?;
                }
                n
            }
            Region::Checkpoint => self.checkpoint.sync()?,
            Region::Backup => self.backup.sync()?,
        };
        self.fsyncs += synced;
        crate::crash::point("synced");
        Ok(())
    }
}

/// Group commit: the ticket names the segment files written since their last sync, with how
/// many writes of each it covers; running it `fdatasync`s them from the caller's thread.
impl SplitSync for FileStorage {
    type Ticket = LogSyncTicket;

    fn begin_log_sync(&mut self) -> LogSyncTicket {
        self.log_sync_ticket()
    }

    fn run_log_sync(ticket: &LogSyncTicket) -> Result<(), FileError> {
        ticket.sync()
    }

    fn settle_log_sync(&mut self, ticket: &LogSyncTicket) {
        self.settle(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gathered write that fails when it is made loses its bytes, so that sync fails, and so
    /// does every later log sync and sync ticket, even once writes work again.
    #[test]
    fn a_failed_gathered_write_fails_every_later_sync() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout {
            checkpoint_dir: root.path().join("checkpoint"),
            backup_dir: root.path().join("backup"),
            data_dirs: vec![root.path().join("data")],
            segment_bytes: 64 * 1024,
            segments: 4,
            kept_segments: 4,
            slot_bytes: 16 * 1024,
        };
        let mut s = FileStorage::open(&layout).unwrap();
        s.write(Region::Log, 8, &[1; 8]).unwrap();
        s.sync(Region::Log).unwrap();
        // Swap the segment's descriptor for a read-only one: the next pwrite fails.
        let m = s.segments[0].as_mut().unwrap();
        let writable = Arc::clone(&m.file);
        m.file = Arc::new(File::open(&m.path).unwrap());
        s.write(Region::Log, 16, &[2; 8]).unwrap();
        let err = s.sync(Region::Log).unwrap_err().to_string();
        assert!(err.contains("cannot write"), "{err}");
        s.segments[0].as_mut().unwrap().file = writable;
        s.write(Region::Log, 24, &[3; 8]).unwrap();
        let err = s.sync(Region::Log).unwrap_err().to_string();
        assert!(err.contains("an earlier log write failed"), "{err}");
        assert!(FileStorage::run_log_sync(&s.begin_log_sync()).is_err());
    }

    fn small_layout(root: &Path) -> Layout {
        Layout {
            checkpoint_dir: root.join("checkpoint"),
            backup_dir: root.join("backup"),
            data_dirs: vec![root.join("data")],
            segment_bytes: 1 << 20,
            segments: 4,
            kept_segments: 4,
            slot_bytes: 16 * 1024,
        }
    }

    /// `prepare` leaves the next segment's file being made on a thread, with its length
    /// allocated; the log reaching that segment waits for it (its writes land in the file made,
    /// and read back), and a storage dropped while a file is being made finishes it: whole,
    /// under its name, no temporary file left.
    #[test]
    fn the_next_file_is_made_on_a_thread_and_waited_for() {
        let root = tempfile::tempdir().unwrap();
        let layout = small_layout(root.path());
        let mut s = FileStorage::open(&layout).unwrap();
        s.write(Region::Log, 8, &[1; 8]).unwrap();
        assert_eq!(s.file_waits().count, 1, "the first file was made in place");
        s.prepare(Region::Log, 1 << 20, 2 << 20).unwrap();
        assert!(s.making.as_ref().is_some_and(|m| m.slot == 1));
        // A second notice for the same segment starts nothing new.
        s.prepare(Region::Log, 1 << 20, 2 << 20).unwrap();
        s.write(Region::Log, (1 << 20) + 64, &[7; 8]).unwrap();
        s.sync(Region::Log).unwrap();
        assert!(s.making.is_none(), "the write waited for the file");
        // Counted only if the thread had not finished when the write came.
        assert!(s.file_waits().count <= 2, "{:?}", s.file_waits());
        let mut back = [0u8; 8];
        s.read(Region::Log, (1 << 20) + 64, &mut back).unwrap();
        assert_eq!(back, [7; 8]);
        assert_eq!(s.files_created(), 2);

        s.prepare(Region::Log, 2 << 20, 3 << 20).unwrap();
        drop(s);
        let data = root.path().join("data");
        let file = data.join("log-000002.seg");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let mut s = FileStorage::open(&layout).unwrap();
        s.read(Region::Log, (1 << 20) + 64, &mut back).unwrap();
        assert_eq!(back, [7; 8], "durable in the file made on the thread");
        assert!(
            s.segments[2].is_some(),
            "the file made at the drop is a segment"
        );
    }
}
