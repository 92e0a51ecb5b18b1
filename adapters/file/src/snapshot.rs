//! [`SnapshotStorage`]: a read-only view of a file channel's directories, for the operator's
//! inspection commands (stats, verify, dump, savepoint planning).
//!
//! It locks the directories like [`FileStorage`](crate::FileStorage) does, so it never reads a
//! channel another process is writing, but it creates, removes and changes nothing: files are
//! opened read-only, missing files read as erased, and whatever the core writes (a recovery's
//! checkpoint, say) lands in pages held in memory and is forgotten when the snapshot is dropped.
//! So a recovery can run on it exactly as an open would, and report what it found, without
//! touching the disk.
//!
//! **Invariant:** nothing a [`SnapshotStorage`] does changes a byte on disk (lock files aside,
//! which are created if missing).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluicegate_core::{ErrorType, Region, Storage};

use crate::dirs::{lock_existing, DirLock, DirRole};
use crate::storage::{FileError, FileStorage, Layout};

const PAGE: u64 = 4096;

/// Where the snapshot reads from, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Read both checkpoint slots as erased, so a recovery replays the whole log (`verify`
    /// compares the two).
    pub hide_checkpoints: bool,
}

/// One file of the snapshot, if present, with its size.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    file: Option<File>,
    /// The file's length: a checkpoint slot written before marks were on is shorter than the
    /// layout, and reads as erased (zeros) past its end, as the writer grows it. A log file cut
    /// short reads the same way, so a recovery counts the queued events in its missing part.
    len: u64,
}

/// A read-only view of a channel's files; writes stay in memory. See the module docs.
#[derive(Debug)]
pub struct SnapshotStorage {
    segments: Vec<Part>,
    checkpoint: Part,
    backup: Part,
    segment_bytes: u64,
    slot_bytes: u64,
    hide_checkpoints: bool,
    /// Pages the core wrote, by region and page number.
    overlay: BTreeMap<(u8, u64), Box<[u8]>>,
    _locks: Vec<DirLock>,
}

fn region_id(r: Region) -> u8 {
    match r {
        Region::Log => 0,
        Region::Checkpoint => 1,
        Region::Backup => 2,
    }
}

fn open_part(path: PathBuf, len: u64) -> Result<Part, FileError> {
    if !path.exists() {
        return Ok(Part {
            path,
            file: None,
            len: 0,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| FileError::io("open", &path, e))?;
    let found = file
        .metadata()
        .map_err(|e| FileError::io("stat", &path, e))?
        .len();
    if found > len {
        return Err(FileError::config(format!(
            "{} is {found} bytes, the layout says {len}: it was written with another configuration, or damaged (`sluicegate repair` mends it)",
            path.display()
        )));
    }
    Ok(Part {
        path,
        file: Some(file),
        len: found,
    })
}

impl SnapshotStorage {
    /// Locks the existing directories of `layout` and opens every file in them read-only.
    /// A directory that does not exist, or is not a Sluicegate directory of the right role, is
    /// an error; so is a file longer than the layout says (a shorter one reads as zeros past
    /// its end).
    pub fn open(layout: &Layout, options: SnapshotOptions) -> Result<Self, FileError> {
        crate::storage::validate(layout)?;
        crate::dirs::check_geometry(layout)?;
        let mut locks = vec![
            lock_existing(&layout.checkpoint_dir, DirRole::Checkpoint)?,
            lock_existing(&layout.backup_dir, DirRole::Backup)?,
        ];
        for dir in &layout.data_dirs {
            locks.push(lock_existing(dir, DirRole::Data)?);
        }
        crate::storage::scan_data_dirs(layout, false)?;
        let segments = (0..layout.segments as usize)
            .map(|slot| open_part(layout.segment_path(slot), layout.segment_bytes as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SnapshotStorage {
            segments,
            checkpoint: open_part(
                layout.checkpoint_dir.join("checkpoint.slot"),
                layout.slot_bytes,
            )?,
            backup: open_part(layout.backup_dir.join("backup.slot"), layout.slot_bytes)?,
            segment_bytes: layout.segment_bytes as u64,
            slot_bytes: layout.slot_bytes,
            hide_checkpoints: options.hide_checkpoints,
            overlay: BTreeMap::new(),
            _locks: locks,
        })
    }

    /// Forgets everything written to the snapshot and reads with new options.
    pub fn reset(&mut self, options: SnapshotOptions) {
        self.overlay.clear();
        self.hide_checkpoints = options.hide_checkpoints;
    }

    /// The file behind segment `slot`, if it exists.
    pub fn segment_path(&self, slot: usize) -> Option<&Path> {
        let p = &self.segments[slot];
        p.file.as_ref().map(|_| p.path.as_path())
    }

    /// The file behind a checkpoint slot region, if it exists.
    pub fn slot_path(&self, region: Region) -> Option<&Path> {
        let p = match region {
            Region::Checkpoint => &self.checkpoint,
            Region::Backup => &self.backup,
            Region::Log => return None,
        };
        p.file.as_ref().map(|_| p.path.as_path())
    }

    /// The size of one log segment.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// How many segments the ring has.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Reads from the files only, ignoring the overlay (what is on disk).
    fn read_disk(&self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        let mut done = 0usize;
        // Each turn moves into the next file, so the loop is bounded by the buffer's length.
        while done < buf.len() {
            let at = offset + done as u64;
            let (part, within, room) = match region {
                Region::Log => {
                    let slot = (at / self.segment_bytes) as usize;
                    let within = at % self.segment_bytes;
                    (&self.segments[slot], within, self.segment_bytes - within)
                }
                Region::Checkpoint | Region::Backup => {
                    if self.hide_checkpoints {
                        buf[done..].fill(0);
                        return Ok(());
                    }
                    let p = if region == Region::Checkpoint {
                        &self.checkpoint
                    } else {
                        &self.backup
                    };
                    (p, at, self.slot_bytes - at)
                }
            };
            let n = (buf.len() - done).min(room as usize);
            let stored = part.len.saturating_sub(within).min(n as u64) as usize;
            if let Some(f) = &part.file {
                f.read_exact_at(&mut buf[done..done + stored], within)
                    .map_err(|e| FileError::io("read", &part.path, e))?;
            }
            buf[done + stored..done + n].fill(0);
            done += n;
        }
        Ok(())
    }

    fn check_bounds(&self, region: Region, offset: u64, len: usize) -> Result<(), FileError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.capacity(region) => Ok(()),
            _ => Err(FileError::bounds(region, offset, len)),
        }
    }

    /// The page `page` of `region` as the core sees it, copied into the overlay.
    fn page_mut(&mut self, region: Region, page: u64) -> Result<&mut [u8], FileError> {
        let key = (region_id(region), page);
        if !self.overlay.contains_key(&key) {
            let start = page * PAGE;
            let len = PAGE.min(self.capacity(region) - start) as usize;
            let mut buf = vec![0u8; len].into_boxed_slice();
            self.read_disk(region, start, &mut buf)?;
            self.overlay.insert(key, buf);
        }
        Ok(self
            .overlay
            .get_mut(&key)
            .map(|b| &mut b[..])
            .unwrap_or(&mut []))
    }
}

impl ErrorType for SnapshotStorage {
    type Error = FileError;
}

impl Storage for SnapshotStorage {
    // The geometry of the files it views: recovery must lay out records exactly as it does there.
    const READ_SIZE: usize = <FileStorage as Storage>::READ_SIZE;
    const WRITE_SIZE: usize = <FileStorage as Storage>::WRITE_SIZE;
    const ERASE_SIZE: usize = <FileStorage as Storage>::ERASE_SIZE;

    fn capacity(&self, region: Region) -> u64 {
        match region {
            Region::Log => self.segment_bytes * self.segments.len() as u64,
            _ => self.slot_bytes,
        }
    }

    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        self.check_bounds(region, offset, buf.len())?;
        self.read_disk(region, offset, buf)?;
        if self.overlay.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        for page in offset / PAGE..end.div_ceil(PAGE) {
            if let Some(p) = self.overlay.get(&(region_id(region), page)) {
                let (from, to) = ((page * PAGE).max(offset), ((page + 1) * PAGE).min(end));
                buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                    &p[(from - page * PAGE) as usize..(to - page * PAGE) as usize],
                );
            }
        }
        Ok(())
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.check_bounds(region, offset, data.len())?;
        let end = offset + data.len() as u64;
        for page in offset / PAGE..end.div_ceil(PAGE) {
            let (from, to) = ((page * PAGE).max(offset), ((page + 1) * PAGE).min(end));
            let p = self.page_mut(region, page)?;
            p[(from - page * PAGE) as usize..(to - page * PAGE) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        }
        Ok(())
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), FileError> {
        self.check_bounds(region, from, to.saturating_sub(from) as usize)?;
        for page in from / PAGE..to.div_ceil(PAGE) {
            self.page_mut(region, page)?.fill(0);
        }
        Ok(())
    }

    fn sync(&mut self, _region: Region) -> Result<(), FileError> {
        Ok(())
    }
}
