//! Directory ownership: the lock file that keeps a second process out, and the format file that
//! keeps a newer or foreign directory from being misread.
//!
//! **Invariant:** a directory is used only while its lock is held, and only if its format file
//! names this format version and the expected role (or the directory is new and empty).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::storage::{FileError, Layout};

/// The lock file in every directory.
pub const LOCK_FILE: &str = "sluicegate.lock";
/// The format file in every directory.
pub const FORMAT_FILE: &str = "sluicegate.dir";
/// The directory format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRole {
    /// Log segments.
    Data,
    /// The checkpoint slot.
    Checkpoint,
    /// The backup checkpoint slot.
    Backup,
}

impl DirRole {
    /// The role's name in the format file.
    pub fn name(self) -> &'static str {
        match self {
            DirRole::Data => "data",
            DirRole::Checkpoint => "checkpoint",
            DirRole::Backup => "backup",
        }
    }
}

/// A directory held by this process: the lock is released when this is dropped (the lock file
/// stays, so the next holder finds it).
#[derive(Debug)]
pub(crate) struct DirLock {
    /// `None` for a read-only command on a directory with no lock file that none can be made
    /// in (so no writer has ever held it), and for a directory this process holds through a
    /// [`HeldDirs`].
    _file: Option<File>,
}

/// Creates `dir` if missing (its parent must exist), takes its lock, and checks or writes its
/// format file.
pub(crate) fn claim(dir: &Path, role: DirRole) -> Result<DirLock, FileError> {
    if !dir.exists() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            if !parent.is_dir() {
                return Err(FileError::config(format!(
                    "the parent of {} does not exist (create it, or choose another directory)",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir(dir).map_err(|e| FileError::io("create directory", dir, e))?;
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    } else if !dir.is_dir() {
        return Err(FileError::config(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let lock = take_lock(dir)?;
    check_format(dir, role)?;
    Ok(lock)
}

/// Takes the lock of an existing directory and checks its format file, creating nothing but the
/// lock file: for the operator's read-only commands.
pub(crate) fn lock_existing(dir: &Path, role: DirRole) -> Result<DirLock, FileError> {
    if !dir.is_dir() {
        return Err(FileError::config(format!(
            "{} does not exist or is not a directory",
            dir.display()
        )));
    }
    let lock = take_read_lock(dir)?;
    let path = dir.join(FORMAT_FILE);
    if !path.exists() {
        return Err(FileError::config(format!(
            "{} has no {FORMAT_FILE}: not a Sluicegate {} directory (if it holds the channel's files, `sluicegate repair` rewrites it)",
            dir.display(),
            role.name()
        )));
    }
    check_format(dir, role)?;
    Ok(lock)
}

/// For a read-only command: the exclusive lock, when the lock file can be written; on a
/// read-only filesystem or for a user who may only read, a shared lock on the lock file opened
/// for reading, which a writer's exclusive lock excludes just the same (the holder is named);
/// and with no lock file at all where none can be made, no lock: no writer has ever held one.
fn take_read_lock(dir: &Path) -> Result<DirLock, FileError> {
    let err = match take_lock(dir) {
        Ok(lock) => return Ok(lock),
        Err(e) => e,
    };
    let read_only = err.io_kind().is_some_and(|k| {
        matches!(
            k,
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    });
    if !read_only {
        return Err(err);
    }
    let lock_path = dir.join(LOCK_FILE);
    let file = match File::open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirLock { _file: None }),
        Err(e) => return Err(FileError::io("open the lock file", &lock_path, e)),
    };
    if file.try_lock_shared().is_err() {
        let holder = lock_holder(&file);
        return Err(FileError::locked(
            format!(
                "{} is in use: process {holder} holds the lock {}",
                dir.display(),
                lock_path.display()
            ),
            holder.parse().unwrap_or(0),
        ));
    }
    Ok(DirLock { _file: Some(file) })
}

/// The directories this process holds through a [`HeldDirs`] (canonical paths): opens inside
/// the process use them without locking again (a second `flock` in the same process would
/// conflict with the first).
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn held_here(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    HELD.lock().is_ok_and(|held| held.contains(&dir))
}

/// The exclusive locks of a channel's directories, held by this process until dropped, for a
/// command that rewrites files across several steps (`repair`, `migrate`): no other process can
/// open the channel in between, while opens inside this process go through.
#[derive(Debug)]
pub struct HeldDirs {
    locks: Vec<(PathBuf, DirLock)>,
}

impl HeldDirs {
    /// Takes the exclusive lock of every directory of `dirs` that exists, or fails naming the
    /// process that holds one (nothing is then held).
    pub fn hold(dirs: &[PathBuf]) -> Result<Self, FileError> {
        let mut held = HeldDirs { locks: Vec::new() };
        for dir in dirs {
            if !dir.is_dir() || held_here(dir) {
                continue;
            }
            let lock = take_lock(dir)?;
            let canonical = dir
                .canonicalize()
                .map_err(|e| FileError::io("resolve", dir, e))?;
            if let Ok(mut list) = HELD.lock() {
                list.push(canonical.clone());
            }
            held.locks.push((canonical, lock));
        }
        Ok(held)
    }
}

impl Drop for HeldDirs {
    fn drop(&mut self) {
        if let Ok(mut list) = HELD.lock() {
            list.retain(|d| !self.locks.iter().any(|(h, _)| h == d));
        }
    }
}

/// Takes the exclusive lock of `dir`, or names the process holding it; a directory this
/// process holds through a [`HeldDirs`] is used as it is.
fn take_lock(dir: &Path) -> Result<DirLock, FileError> {
    if held_here(dir) {
        return Ok(DirLock { _file: None });
    }
    let lock_path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| FileError::io("open the lock file", &lock_path, e))?;
    if !lock_with_patience(&file) {
        let holder = lock_holder(&file);
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("process {holder}")
        };
        return Err(FileError::locked(
            format!(
                "{} is in use: {} holds the lock {}",
                dir.display(),
                who,
                lock_path.display()
            ),
            holder.parse().unwrap_or(0),
        ));
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(|e| FileError::io("write the lock file", &lock_path, e))?;
    Ok(DirLock { _file: Some(file) })
}

/// Tries the lock; if the lock file names this very process, or a process that no longer
/// exists, waits up to two seconds for it.
///
/// A `flock` belongs to the open file description, and a child this process forks (any thread's
/// `Command::spawn`) shares that description until it execs and its close-on-exec descriptors go.
/// So a channel closed and reopened in one process can, for that instant, find its own old lock
/// still held; and an owner killed while it spawned a command leaves the lock with that child
/// for the same instant. A live process's lock is reported at once.
fn lock_with_patience(file: &File) -> bool {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
    let start = std::time::Instant::now();
    loop {
        if file.try_lock().is_ok() {
            return true;
        }
        let holder = lock_holder(file);
        let ours = holder == std::process::id().to_string();
        if !(ours || gone(&holder)) || start.elapsed() >= PATIENCE {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// True if the lock file names a process that no longer exists (Linux's `/proc` tells): a
/// child it forked an instant before it died holds the lock until that child execs.
fn gone(holder: &str) -> bool {
    let proc = Path::new("/proc");
    !holder.is_empty()
        && holder.bytes().all(|b| b.is_ascii_digit())
        && proc.join("self").exists()
        && !proc.join(holder).exists()
}

/// The process id written in the lock file by its holder, or "" if it cannot be read.
fn lock_holder(mut file: &File) -> String {
    let mut holder = String::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_string(&mut holder).is_err() {
        holder.clear();
    }
    holder.trim().to_string()
}

/// The layout a channel's files were made with, which no setting may change without moving
/// every event (`sluicegate migrate`): recorded in every directory's format file.
///
/// Capacity is not in it (a larger one works at any restart, a smaller one that holds the
/// queue too), nor is encryption (the log names the key of every sealed segment, so turning it
/// off while sealed data remains is refused by the key check, and turning it on is supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The size of one log file (`max_file_bytes`).
    pub max_file_bytes: u32,
    /// The log files in the ring (`log_files`).
    pub log_files: u32,
    /// How many data directories the log files go round-robin over (`data_dirs`).
    pub data_dirs: u32,
}

impl Geometry {
    /// The geometry of `layout`.
    pub fn of(layout: &Layout) -> Self {
        Geometry {
            max_file_bytes: layout.segment_bytes,
            log_files: layout.segments,
            data_dirs: layout.data_dirs.len() as u32,
        }
    }

    /// Reads the geometry lines of a format file's text; `None` if it has none (a directory
    /// made before they were written) or they do not parse.
    pub fn parse(text: &str) -> Option<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Some(Geometry {
            max_file_bytes: field("max_file_bytes = ")?,
            log_files: field("log_files = ")?,
            data_dirs: field("data_dirs = ")?,
        })
    }

    /// The first setting in which `configured` differs from this (recorded) geometry: its
    /// name, the recorded value and the configured one.
    pub fn differs(&self, configured: &Geometry) -> Option<(&'static str, u32, u32)> {
        [
            (
                "max_file_bytes",
                self.max_file_bytes,
                configured.max_file_bytes,
            ),
            ("log_files", self.log_files, configured.log_files),
            ("data_dirs", self.data_dirs, configured.data_dirs),
        ]
        .into_iter()
        .find(|(_, on_disk, set)| on_disk != set)
    }
}

/// What a directory's format file holds for `role`, with the channel's geometry when known.
pub fn format_file_text(role: DirRole, geometry: Option<&Geometry>) -> String {
    let mut text = format!(
        "sluicegate directory\nformat = {FORMAT_VERSION}\nrole = {}\n",
        role.name()
    );
    if let Some(g) = geometry {
        text.push_str(&format!(
            "max_file_bytes = {}\nlog_files = {}\ndata_dirs = {}\n",
            g.max_file_bytes, g.log_files, g.data_dirs
        ));
    }
    text
}

/// The geometry recorded in the format files of `layout`'s directories (the checkpoint
/// directory's first, then the data directories', then the backup directory's), and the file
/// it came from; `None` if none records one.
pub fn recorded_geometry(layout: &Layout) -> Option<(Geometry, PathBuf)> {
    std::iter::once(&layout.checkpoint_dir)
        .chain(&layout.data_dirs)
        .chain(std::iter::once(&layout.backup_dir))
        .map(|d| d.join(FORMAT_FILE))
        .find_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            Geometry::parse(&String::from_utf8_lossy(&bytes)).map(|g| (g, path))
        })
}

/// Refuses a layout whose geometry differs from the one recorded in its directories, naming
/// the setting, the value on disk and the way back. Every open checks it; `repair` checks it
/// before it changes anything.
pub fn check_geometry(layout: &Layout) -> Result<(), FileError> {
    let Some((recorded, path)) = recorded_geometry(layout) else {
        return Ok(());
    };
    let Some((setting, on_disk, set)) = recorded.differs(&Geometry::of(layout)) else {
        return Ok(());
    };
    let (now, made, back) = if setting == "data_dirs" {
        (
            format!("data_dirs lists {set} directories"),
            format!("{on_disk} data directories"),
            "the data_dirs list as it was".to_string(),
        )
    } else {
        (
            format!("{setting} is {set}"),
            format!("{setting} = {on_disk}"),
            format!("{setting} = {on_disk}"),
        )
    };
    Err(FileError::config(format!(
        "{now} in the settings, but this channel was made with {made} (recorded in {}): put {back} back; `sluicegate migrate` changes it without losing an event",
        path.display()
    )))
}

/// Writes the geometry into every format file of `layout`'s directories that lacks it (a
/// directory made before it was recorded, or just made), through a synced temporary file and
/// a rename. Call with the directories' locks held, once an open has shown the layout fits the
/// files.
pub(crate) fn record_geometry(layout: &Layout) -> Result<(), FileError> {
    let geometry = Geometry::of(layout);
    let dirs = [
        (&layout.checkpoint_dir, DirRole::Checkpoint),
        (&layout.backup_dir, DirRole::Backup),
    ]
    .into_iter()
    .chain(layout.data_dirs.iter().map(|d| (d, DirRole::Data)));
    for (dir, role) in dirs {
        let path = dir.join(FORMAT_FILE);
        let text = std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
        if text.as_deref().ok().and_then(Geometry::parse).is_some() {
            continue;
        }
        let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(format_file_text(role, Some(&geometry)).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| FileError::io("write", &path, e))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Checks the directory's format file, or writes one into a directory that has none and holds
/// nothing but the lock file.
fn check_format(dir: &Path, role: DirRole) -> Result<(), FileError> {
    let path = dir.join(FORMAT_FILE);
    let expected = format_file_text(role, None);
    // Read as bytes: a damaged file (not even UTF-8) is "not a format file", not an I/O error.
    match std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned()) {
        Ok(found) => {
            let field = |key: &str| {
                found
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            };
            let version = field("format = ");
            if !found.starts_with("sluicegate directory\n") || version.is_none() {
                return Err(FileError::config(format!(
                    "{} is not a Sluicegate format file (damaged?); `sluicegate repair` rewrites it when the directory holds the channel's files",
                    path.display()
                )));
            }
            if version.as_deref() != Some(&FORMAT_VERSION.to_string()) {
                return Err(FileError::config(format!(
                    "{} has directory format {}; this build reads format {FORMAT_VERSION}",
                    dir.display(),
                    version.unwrap_or_default()
                )));
            }
            let found_role = field("role = ").unwrap_or_default();
            if found_role != role.name() {
                return Err(FileError::config(format!(
                    "{} is a {found_role} directory, not a {} directory",
                    dir.display(),
                    role.name()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A temporary format file is what a cut during this very step leaves.
            let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
            let foreign: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| FileError::io("list directory", dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n != LOCK_FILE) && *p != tmp)
                .collect();
            if let Some(first) = foreign.first() {
                return Err(FileError::config(format!(
                    "{} holds files but no {FORMAT_FILE} (for example {}): not a Sluicegate directory, refusing to use it (if they are the channel's, `sluicegate repair` rewrites it)",
                    dir.display(),
                    first.display()
                )));
            }
            // Written under a temporary name, synced, then renamed: a power cut leaves either
            // no format file or a whole one, never the empty or torn file that a cut between
            // creating it and syncing it leaves when the directory entry reached the disk
            // first (found by the power-cut filesystem, `host-tests/tests/power.rs`).
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                f.write_all(expected.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| FileError::io("write", &path, e))?;
            sync_dir(dir)
        }
        Err(e) => Err(FileError::io("read", &path, e)),
    }
}

/// The file in the checkpoint directory that holds the channel's identity.
pub const IDENTITY_FILE: &str = "sluicegate.id";

/// The channel's identity, a random 128-bit number kept in `dir/sluicegate.id` (32 hexadecimal
/// digits), made at the first open. A missing or unreadable file gets a new identity: that is
/// always safe, since a destination that drops duplicates by (identity, event id) then drops
/// nothing it should keep. Backups do not carry it, so a restored copy of a channel never
/// shares its original's identity. Call with the directory's lock held.
pub(crate) fn channel_identity(dir: &Path) -> Result<u128, FileError> {
    let path = dir.join(IDENTITY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() == 32 {
            if let Ok(id) = u128::from_str_radix(text, 16) {
                return Ok(id);
            }
        }
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        FileError::config(format!("no random numbers for the channel's identity: {e}"))
    })?;
    let id = u128::from_le_bytes(bytes);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{id:032x}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| FileError::io("write", &path, e))?;
    sync_dir(dir)?;
    Ok(id)
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of our own lock's descriptor (what a forked child holds until it execs) delays a
    /// reopen in this process instead of failing it.
    #[test]
    fn own_lock_held_by_a_forked_copy_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let first = take_lock(dir.path()).unwrap();
        let child_copy = first._file.as_ref().unwrap().try_clone().unwrap();
        drop(first);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(child_copy);
        });
        let second = take_lock(dir.path());
        releaser.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    /// While a `HeldDirs` holds a directory, another open file description (what another
    /// process would have) cannot lock it, an open inside this process goes through, and the
    /// lock is free again once the guard is dropped.
    #[test]
    fn held_dirs_keep_others_out_and_let_this_process_in() {
        let dir = tempfile::tempdir().unwrap();
        let held = HeldDirs::hold(&[dir.path().to_path_buf()]).unwrap();
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            other.try_lock().is_err(),
            "another process would get the lock"
        );
        assert!(
            claim(dir.path(), DirRole::Data).is_ok(),
            "this process is let in"
        );
        drop(held);
        assert!(other.try_lock().is_ok(), "released with the guard");
    }

    /// A lock held under another pid is refused at once, naming that pid.
    #[test]
    fn another_process_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = take_lock(dir.path()).unwrap();
        let mut f = first._file.as_ref().unwrap();
        f.set_len(0).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        writeln!(f, "1").unwrap();
        let err = take_lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains("process 1 holds the lock"), "{err}");
    }
}
