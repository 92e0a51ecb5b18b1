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

use memmap2::Mmap;
use sluicegate_core::{ErrorType, Region, Storage, StorageError, StorageErrorKind};

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
    /// How many segment files the log has (at least 4).
    pub segments: u32,
    /// The size of each checkpoint slot file, a multiple of 4 KiB.
    pub slot_bytes: u64,
}

/// An error of the file adapter: what failed, on which path.
#[derive(Debug)]
pub struct FileError {
    kind: StorageErrorKind,
    what: String,
    source: Option<std::io::Error>,
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
        }
    }

    pub(crate) fn config(what: String) -> Self {
        FileError {
            kind: StorageErrorKind::Other,
            what,
            source: None,
        }
    }

    fn bounds(region: Region, offset: u64, len: usize) -> Self {
        FileError {
            kind: StorageErrorKind::OutOfBounds,
            what: format!("{region:?}: {len} bytes at {offset} are outside the region"),
            source: None,
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
    file: File,
    map: Mmap,
    dirty: bool,
}

impl Mapped {
    /// Opens `path`, creating it full of zeros at `len` bytes if it does not exist. An existing
    /// file of another size is refused: it belongs to another layout.
    fn open(path: PathBuf, len: u64) -> Result<(Self, bool), FileError> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| FileError::io("open", &path, e))?;
        if created {
            write_zeros(&file, &path, 0, len)?;
            file.sync_all()
                .map_err(|e| FileError::io("sync", &path, e))?;
        }
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
        Ok((
            Mapped {
                path,
                file,
                map,
                dirty: false,
            },
            created,
        ))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.dirty = true;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FileError::io("write", &self.path, e))
    }

    fn sync(&mut self) -> Result<(), FileError> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| FileError::io("sync", &self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }
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

/// The core's storage over directories of files. See the crate docs for the layout.
pub struct FileStorage {
    segments: Vec<Mapped>,
    checkpoint: Mapped,
    backup: Mapped,
    segment_bytes: u64,
    _locks: Vec<DirLock>,
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
    /// Opens (creating what is missing) the directories of `layout`: checks the layout, locks
    /// every directory, checks their format files, and maps every file.
    pub fn open(layout: &Layout) -> Result<Self, FileError> {
        validate(layout)?;
        let mut locks = Vec::new();
        locks.push(claim(&layout.checkpoint_dir, DirRole::Checkpoint)?);
        locks.push(claim(&layout.backup_dir, DirRole::Backup)?);
        for dir in &layout.data_dirs {
            locks.push(claim(dir, DirRole::Data)?);
        }
        let mut created_in: Vec<&Path> = Vec::new();
        let mut segments = Vec::with_capacity(layout.segments as usize);
        for slot in 0..layout.segments as usize {
            let dir = &layout.data_dirs[slot % layout.data_dirs.len()];
            let (m, created) = Mapped::open(
                dir.join(format!("log-{slot:06}.seg")),
                layout.segment_bytes as u64,
            )?;
            if created {
                created_in.push(dir);
            }
            segments.push(m);
        }
        let (checkpoint, c1) = Mapped::open(
            layout.checkpoint_dir.join("checkpoint.slot"),
            layout.slot_bytes,
        )?;
        let (backup, c2) = Mapped::open(layout.backup_dir.join("backup.slot"), layout.slot_bytes)?;
        if c1 {
            created_in.push(&layout.checkpoint_dir);
        }
        if c2 {
            created_in.push(&layout.backup_dir);
        }
        created_in.sort();
        created_in.dedup();
        for dir in created_in {
            sync_dir(dir)?;
        }
        Ok(FileStorage {
            segments,
            checkpoint,
            backup,
            segment_bytes: layout.segment_bytes as u64,
            _locks: locks,
        })
    }

    /// The file of a checkpoint slot region.
    fn slot_file(&mut self, region: Region) -> &mut Mapped {
        match region {
            Region::Checkpoint => &mut self.checkpoint,
            _ => &mut self.backup,
        }
    }

    /// Calls `f(file, offset in file, range of the buffer)` for each piece of `[offset,
    /// offset + len)` in `region`, after checking bounds.
    fn pieces(
        &mut self,
        region: Region,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&mut Mapped, u64, std::ops::Range<usize>) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.capacity(region))
            .ok_or_else(|| FileError::bounds(region, offset, len))?;
        if region != Region::Log {
            return f(self.slot_file(region), offset, 0..len);
        }
        let mut at = offset;
        // Bounded: every turn moves into the next segment file.
        while at < end {
            let seg = (at / self.segment_bytes) as usize;
            let within = at % self.segment_bytes;
            let n = (self.segment_bytes - within).min(end - at);
            let from = (at - offset) as usize;
            f(&mut self.segments[seg], within, from..from + n as usize)?;
            at += n;
        }
        Ok(())
    }
}

fn validate(layout: &Layout) -> Result<(), FileError> {
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

    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        let len = buf.len();
        self.pieces(region, offset, len, |m, at, range| {
            let at = at as usize;
            buf[range.clone()].copy_from_slice(&m.map[at..at + range.len()]);
            Ok(())
        })
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.pieces(region, offset, data.len(), |m, at, range| {
            m.write(at, &data[range])
        })
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), FileError> {
        let len = to.saturating_sub(from) as usize;
        self.pieces(region, from, len, |m, at, range| {
            m.dirty = true;
            write_zeros(&m.file, &m.path, at, at + range.len() as u64)
        })
    }

    fn sync(&mut self, region: Region) -> Result<(), FileError> {
        match region {
            Region::Log => self.segments.iter_mut().try_for_each(Mapped::sync),
            Region::Checkpoint => self.checkpoint.sync(),
            Region::Backup => self.backup.sync(),
        }
    }
}
