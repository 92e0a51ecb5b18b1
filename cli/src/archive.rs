//! `backup`, `savepoint` and `restore`.
//!
//! A backup or savepoint is a directory:
//!
//! ```text
//! DEST/
//!   sluicegate-backup.json   manifest: kind, format, time, settings, event count, and each
//!                            file's size and CRC-32C
//!   checkpoint.slot          the checkpoint slot (a savepoint: the newest checkpoint)
//!   backup.slot              the backup slot (backups only)
//!   segments/log-NNNNNN.seg  log files (a savepoint: only those the queue still needs)
//! ```
//!
//! It is written under a temporary name beside DEST (`.NAME.partial`) holding an `IN-PROGRESS`
//! marker; the channel home records that name (`sluicegate.backup-in-progress`) until the end.
//! Every file is copied and synced, the manifest written, every file read back and checked
//! against it (count, sizes, checksums), the marker removed, and the directory renamed to DEST
//! in one step. An interrupted backup leaves only the temporary directory, which the next backup
//! or `repair` removes, and which `restore` refuses. Segments are stored by number, not by data
//! directory, so a backup restores into any list of data directories.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluicegate_core::record::CRC32C;
use sluicegate_file::{
    segment_name, segment_slot, FileChannel, FileChannelConfig, SnapshotOptions, SnapshotStorage,
};

use crate::fail::{io, Fail};
use crate::home::{self, HomeArgs, BACKUP_JOURNAL, RESTORING_FILE, SETTINGS_FILE};
use sluicegate_agent::home::{parent_of, sync_dir};

/// The manifest's name.
pub const MANIFEST: &str = "sluicegate-backup.json";
/// Present in a backup directory until it is complete.
pub const IN_PROGRESS: &str = "IN-PROGRESS";
/// Names the backup a home was restored from.
pub const RESTORED_FILE: &str = "sluicegate.restored";
/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub crc32c: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// "backup" or "savepoint".
    pub kind: String,
    pub format: u32,
    pub log_format: u16,
    pub created_unix_seconds: u64,
    pub created_utc: String,
    /// Where it was taken from.
    pub source: String,
    /// Committed events queued when it was taken.
    pub events: u64,
    pub capacity: u32,
    pub transaction_capacity: u32,
    pub max_file_bytes: u32,
    pub log_files: u32,
    pub max_event_bytes: u32,
    pub max_transactions: u16,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// An id for the backup's content: the CRC of its file list.
    pub fn id(&self) -> String {
        let text = serde_json::to_string(&self.files).unwrap_or_default();
        format!("{:08x}", CRC32C.checksum(text.as_bytes()))
    }
}

/// Writes `bytes` to `path` durably: a temporary file, synced, renamed, directory synced.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    sluicegate_agent::home::write_file_durably(path, bytes)
        .map_err(|e| io(format!("cannot write {}", path.display()), e))
}

/// Reads `from` to its end, computing its size and CRC-32C, writing it to `to` (then synced) if
/// given, and advancing `bar`.
fn stream(
    from: &Path,
    mut to: Option<&mut File>,
    bar: Option<&indicatif::ProgressBar>,
) -> std::io::Result<(u64, u32)> {
    let mut src = File::open(from)?;
    let mut digest = CRC32C.digest();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    // Bounded by the file's length.
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        if let Some(dst) = to.as_deref_mut() {
            dst.write_all(&buf[..n])?;
        }
        total += n as u64;
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    if let Some(dst) = to {
        dst.sync_all()?;
    }
    Ok((total, digest.finalize()))
}

/// Copies `from` to `to` (created), syncing it, and returns its size and CRC-32C.
fn copy_file(from: &Path, to: &Path, bar: &indicatif::ProgressBar) -> Result<FileEntry, Fail> {
    let (bytes, crc32c) = File::create(to)
        .and_then(|mut dst| stream(from, Some(&mut dst), Some(bar)))
        .map_err(|e| {
            io(
                format!("cannot copy {} to {}", from.display(), to.display()),
                e,
            )
        })?;
    Ok(FileEntry {
        path: String::new(),
        bytes,
        crc32c,
    })
}

/// The size and CRC-32C of a file.
fn checksum(path: &Path, bar: Option<&indicatif::ProgressBar>) -> std::io::Result<(u64, u32)> {
    stream(path, None, bar)
}

/// Checks a backup directory against its manifest: complete (no marker), the same files, sizes
/// and checksums. Returns the manifest.
pub fn check_backup(dir: &Path) -> Result<Manifest, String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist or is not a directory",
            dir.display()
        ));
    }
    if dir.join(IN_PROGRESS).exists() {
        return Err(format!(
            "{} is an incomplete backup ({IN_PROGRESS} marker present): it was interrupted and is never restored",
            dir.display()
        ));
    }
    let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| {
        format!(
            "{} is not a complete backup: cannot read {MANIFEST}: {e}",
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{}: damaged manifest: {e}", dir.display()))?;
    if m.format != MANIFEST_FORMAT {
        return Err(format!(
            "{}: manifest format {}, this build reads {MANIFEST_FORMAT}",
            dir.display(),
            m.format
        ));
    }
    let mut present = Vec::new();
    list_files(dir, dir, &mut present)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    present.retain(|p| p != MANIFEST);
    let mut listed: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    present.sort();
    listed.sort();
    if present != listed {
        return Err(format!(
            "{}: holds {} files, the manifest lists {} (first difference: {:?})",
            dir.display(),
            present.len(),
            listed.len(),
            present
                .iter()
                .zip(&listed)
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.clone())
                .or_else(|| present.get(listed.len()).cloned())
                .or_else(|| listed.get(present.len()).cloned())
        ));
    }
    let total = m.files.iter().map(|f| f.bytes).sum();
    let bar = crate::progress::bytes("checking", total);
    for f in &m.files {
        let (bytes, crc) = checksum(&dir.join(&f.path), Some(&bar))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(&f.path).display()))?;
        if bytes != f.bytes || crc != f.crc32c {
            return Err(format!(
                "{}: {} is {bytes} bytes with CRC {crc:08x}; the manifest says {} bytes, CRC {:08x}: the backup is damaged",
                dir.display(),
                f.path,
                f.bytes,
                f.crc32c
            ));
        }
    }
    bar.finish_and_clear();
    Ok(m)
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            list_files(root, &p, out)?;
        } else {
            out.push(
                p.strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok(())
}

/// Removes the temporary directory of a backup this home started and never finished: the one
/// its journal names (a `.NAME.partial` directory). The journal is made durable before that
/// directory is created, and removed only after it is renamed to its destination, so whatever
/// the journal names is this home's own, with or without its `IN-PROGRESS` marker: a power
/// cut can keep the new directory's entry and lose the marker inside it, and a cut after the
/// marker's removal leaves the copy without one (both found by the power-cut tests, where the
/// next backup to the same place then failed for good). Returns what was removed.
pub fn clean_interrupted_backup(home: &Path) -> Result<Option<PathBuf>, Fail> {
    let journal = home.join(BACKUP_JOURNAL);
    let Ok(text) = std::fs::read_to_string(&journal) else {
        return Ok(None);
    };
    let tmp = PathBuf::from(text.trim());
    let partial = tmp
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"));
    let mut removed = None;
    if partial && tmp.is_dir() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| io(format!("cannot remove {}", tmp.display()), e))?;
        removed = Some(tmp);
    }
    std::fs::remove_file(&journal)
        .map_err(|e| io(format!("cannot remove {}", journal.display()), e))?;
    Ok(removed)
}

fn partial_name(dest: &Path) -> Result<PathBuf, Fail> {
    let name = dest
        .file_name()
        .ok_or_else(|| Fail::usage(format!("{} has no directory name", dest.display())))?;
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(".partial");
    Ok(dest.with_file_name(n))
}

fn utc(secs: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), so no date crate is needed.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What to copy into a backup or savepoint: (source file, name in the backup).
struct Plan {
    files: Vec<(PathBuf, String)>,
    events: u64,
}

fn write_archive(
    home: &HomeArgs,
    config: &FileChannelConfig,
    dest: &Path,
    kind: &str,
    plan: Plan,
) -> Result<Manifest, Fail> {
    let tmp = partial_name(dest)?;
    write_file_durably(
        &home.dir.join(BACKUP_JOURNAL),
        tmp.display().to_string().as_bytes(),
    )?;
    std::fs::create_dir(&tmp).map_err(|e| io(format!("cannot create {}", tmp.display()), e))?;
    std::fs::create_dir(tmp.join("segments"))
        .map_err(|e| io(format!("cannot create {}/segments", tmp.display()), e))?;
    write_file_durably(&tmp.join(IN_PROGRESS), b"a backup is being written here\n")?;
    let total = plan
        .files
        .iter()
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = crate::progress::bytes(kind, total);
    // For the tests only, and only in debug builds (release builds, what users run, have no
    // such hook): die as a crash would, in the middle of the copy.
    #[cfg(debug_assertions)]
    let abort_after: Option<usize> = std::env::var("SLUICEGATE_TEST_ABORT_BACKUP_AFTER_FILES")
        .ok()
        .and_then(|v| v.parse().ok());
    #[cfg(not(debug_assertions))]
    let abort_after: Option<usize> = None;
    let mut files = Vec::new();
    for (i, (from, name)) in plan.files.iter().enumerate() {
        if abort_after == Some(i) {
            std::process::abort();
        }
        let mut entry = copy_file(from, &tmp.join(name), &bar)?;
        entry.path = name.clone();
        files.push(entry);
    }
    bar.finish_and_clear();
    sync_dir(&tmp.join("segments")).map_err(|e| io("cannot sync", e))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let manifest = Manifest {
        kind: kind.into(),
        format: MANIFEST_FORMAT,
        log_format: sluicegate_core::record::FORMAT_VERSION,
        created_unix_seconds: now,
        created_utc: utc(now),
        source: home
            .dir
            .canonicalize()
            .unwrap_or(home.dir.clone())
            .display()
            .to_string(),
        events: plan.events,
        capacity: config.capacity,
        transaction_capacity: config.transaction_capacity,
        max_file_bytes: config.max_file_bytes,
        log_files: config.log_files,
        max_event_bytes: config.max_event_bytes,
        max_transactions: config.max_transactions,
        files,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| io("manifest", e))?;
    write_file_durably(&tmp.join(MANIFEST), text.as_bytes())?;
    // Read everything back before calling it a backup. The marker is left out of the check.
    std::fs::remove_file(tmp.join(IN_PROGRESS))
        .and_then(|()| sync_dir(&tmp))
        .map_err(|e| io("cannot remove the in-progress marker", e))?;
    if let Err(e) = check_backup(&tmp) {
        return Err(Fail::runtime(format!(
            "the copy does not match what was read, not completing the backup: {e}"
        )));
    }
    std::fs::rename(&tmp, dest)
        .and_then(|()| sync_dir(parent_of(dest)))
        .map_err(|e| {
            io(
                format!("cannot rename {} to {}", tmp.display(), dest.display()),
                e,
            )
        })?;
    let _ = std::fs::remove_file(home.dir.join(BACKUP_JOURNAL));
    Ok(manifest)
}

fn prepare_dest(home: &HomeArgs, dest: &Path) -> Result<Option<PathBuf>, Fail> {
    let cleaned = clean_interrupted_backup(&home.dir)?;
    if dest.exists() {
        return Err(Fail::runtime(format!(
            "{} already exists: choose a new directory",
            dest.display()
        )));
    }
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(Fail::runtime(format!(
            "the parent of {} does not exist",
            dest.display()
        )));
    }
    // A temporary directory of an interrupted backup to the same place goes too.
    let tmp = partial_name(dest)?;
    if tmp.join(IN_PROGRESS).exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| io(format!("cannot remove {}", tmp.display()), e))?;
        return Ok(Some(tmp));
    }
    if tmp.exists() {
        return Err(Fail::runtime(format!(
            "{} exists and is not an interrupted backup: remove it first",
            tmp.display()
        )));
    }
    Ok(cleaned)
}

fn report(json_out: bool, what: &str, dest: &Path, m: &Manifest, cleaned: Option<PathBuf>) {
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    if json_out {
        println!(
            "{}",
            json!({what: dest.display().to_string(), "id": m.id(), "events": m.events,
                   "files": m.files.len(), "bytes": bytes,
                   "cleaned_interrupted_backup": cleaned.map(|p| p.display().to_string())})
        );
    } else {
        if let Some(p) = cleaned {
            println!("removed an interrupted backup: {}", p.display());
        }
        println!(
            "{what} {} complete: {} events, {} files, {bytes} bytes, checked (id {})",
            dest.display(),
            m.events,
            m.files.len(),
            m.id()
        );
    }
}

/// Writes a backup or savepoint of `kind` to `dest`, holding `files` as `choose` picks them.
///
/// The channel is opened with no timed checkpoints and none at close, so nothing changes while
/// its files are copied, and stays open (and locked) until the copy is done; one checkpoint is
/// written first, so the copy restores fast.
fn archive(
    home: &HomeArgs,
    dest: &Path,
    json_out: bool,
    kind: &str,
    choose: impl FnOnce(&FileChannelConfig, &FileChannel) -> Vec<(PathBuf, String)>,
) -> Result<ExitCode, Fail> {
    let cleaned = prepare_dest(home, dest)?;
    let config = FileChannelConfig {
        checkpoint_on_close: false,
        checkpoint_interval_ms: 0,
        ..home.existing()?
    };
    let ch = home::open(config.clone())?;
    ch.checkpoint()?;
    let plan = Plan {
        files: choose(&config, &ch),
        events: ch.len() as u64,
    };
    let m = write_archive(home, &config, dest, kind, plan)?;
    ch.close()?;
    report(json_out, kind, dest, &m, cleaned);
    Ok(ExitCode::SUCCESS)
}

/// The log files of `slots` that exist, with their names in a backup.
fn segment_files(
    config: &FileChannelConfig,
    slots: impl Iterator<Item = usize>,
) -> Vec<(PathBuf, String)> {
    let layout = config.layout();
    slots
        .filter_map(|slot| {
            let p = layout.segment_path(slot);
            p.exists()
                .then(|| (p, format!("segments/{}", segment_name(slot))))
        })
        .collect()
}

/// `backup`: both slots and every log file.
pub fn backup(home: &HomeArgs, dest: &Path, json_out: bool) -> Result<ExitCode, Fail> {
    archive(home, dest, json_out, "backup", |config, _| {
        let layout = config.layout();
        let mut files = vec![
            (
                layout.checkpoint_dir.join("checkpoint.slot"),
                "checkpoint.slot".to_string(),
            ),
            (
                layout.backup_dir.join("backup.slot"),
                "backup.slot".to_string(),
            ),
        ];
        files.extend(segment_files(config, 0..config.log_files as usize));
        files
    })
}

/// `savepoint`: the newest checkpoint and the log files the queue still needs.
pub fn savepoint(home: &HomeArgs, dest: &Path, json_out: bool) -> Result<ExitCode, Fail> {
    archive(home, dest, json_out, "savepoint", |config, ch| {
        let stats = ch.stats().channel;
        let layout = config.layout();
        // The checkpoint just written is the newest; find its slot file.
        let a = layout.checkpoint_dir.join("checkpoint.slot");
        let b = layout.backup_dir.join("backup.slot");
        let newest = if slot_seq(&a) >= slot_seq(&b) { a } else { b };
        let mut files = vec![(newest, "checkpoint.slot".to_string())];
        let segments = config.log_files as u64;
        let newest_seq = stats.newest_segment;
        let keep = stats.segments_pinned_by_events.max(1).min(segments);
        let first = (newest_seq + 1).saturating_sub(keep);
        files.extend(segment_files(
            config,
            (first..=newest_seq).map(|s| (s % segments) as usize),
        ));
        files
    })
}

/// The checkpoint number in a slot file's started mark (0 if none is valid).
fn slot_seq(path: &Path) -> u64 {
    use sluicegate_core::checkpoint::{Started, STARTED_BYTES};
    let mut b = [0u8; STARTED_BYTES];
    match File::open(path).and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => match Started::decode(&b) {
            Some(Ok(s)) => s.ckpt_seq,
            _ => 0,
        },
        Err(_) => 0,
    }
}

/// Where each file of a backup goes in the channel `config` describes.
fn destination(config: &FileChannelConfig, name: &str) -> Option<PathBuf> {
    let layout = config.layout();
    match name {
        "checkpoint.slot" => Some(layout.checkpoint_dir.join(name)),
        "backup.slot" => Some(layout.backup_dir.join(name)),
        _ => {
            let slot = segment_slot(name.strip_prefix("segments/")?)?;
            Some(layout.segment_path(slot))
        }
    }
}

/// True if the channel in `config` holds exactly the files of `m`.
fn holds(config: &FileChannelConfig, m: &Manifest) -> bool {
    m.files.iter().all(|f| {
        destination(config, &f.path)
            .and_then(|p| checksum(&p, None).ok())
            .is_some_and(|(bytes, crc)| bytes == f.bytes && crc == f.crc32c)
    })
}

/// `restore`.
pub fn restore(src: &Path, home: &HomeArgs, force: bool, json_out: bool) -> Result<ExitCode, Fail> {
    let m = check_backup(src).map_err(|e| Fail::runtime(format!("refusing to restore: {e}")))?;
    let id = m.id();
    let mut config = home.config()?;
    if !home.dir.join(SETTINGS_FILE).exists() || force {
        config = FileChannelConfig {
            capacity: m.capacity,
            transaction_capacity: m.transaction_capacity,
            max_file_bytes: m.max_file_bytes,
            log_files: m.log_files,
            max_event_bytes: m.max_event_bytes,
            max_transactions: m.max_transactions,
            ..config
        };
    }
    let marker = home.dir.join(RESTORING_FILE);
    let resuming = std::fs::read_to_string(&marker)
        .ok()
        .map(|s| s.trim().to_string());
    let restored_from = std::fs::read_to_string(home.dir.join(RESTORED_FILE))
        .ok()
        .map(|s| s.trim().to_string());
    let occupied = home.has_channel(&config);
    let non_empty = std::fs::read_dir(&home.dir).is_ok_and(|mut d| d.next().is_some());
    if resuming.is_none() && (occupied || non_empty) {
        if restored_from.as_deref() == Some(&id) && holds(&config, &m) {
            if json_out {
                println!(
                    "{}",
                    json!({"restored": home.dir.display().to_string(), "id": id, "already": true, "events": m.events})
                );
            } else {
                println!(
                    "{} already holds {} {id}, unchanged: nothing to do",
                    home.dir.display(),
                    m.kind
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !force {
            return Err(Fail::runtime(format!(
                "{} is not empty{}: refusing to restore into it (use --force to replace it)",
                home.dir.display(),
                if occupied {
                    " (it holds a channel)"
                } else {
                    ""
                }
            )));
        }
    }
    if let Some(other) = resuming.as_deref().filter(|r| *r != id) {
        if !force {
            return Err(Fail::runtime(format!(
                "{} holds an unfinished restore of another backup ({other}): use --force to replace it",
                home.dir.display()
            )));
        }
    }
    // Nothing may be using the channel there, and that is found out before the marker is
    // written: a refused restore must leave the home as it was, usable by its owner.
    if occupied || resuming.is_some() {
        let socket = sluicegate_agent::home::socket_path(&home.dir);
        if let Ok(figures) = sluicegate_agent::Client::connect(&socket)
            .and_then(|mut c| c.stats().map_err(|e| std::io::Error::other(e.to_string())))
        {
            return Err(Fail::runtime(format!(
                "{} is in use: process {} owns it and holds its {} (stop it first)",
                home.dir.display(),
                figures["owner_pid"],
                sluicegate_file::LOCK_FILE
            )));
        }
        // The channel there may have other settings, or be damaged: only a lock held by another
        // process stops a forced replace.
        let current = home.config()?;
        if let Err(e) = SnapshotStorage::open(&current.layout(), SnapshotOptions::default()) {
            if e.is_locked() {
                return Err(e.into());
            }
        }
    }
    sluicegate_agent::home::create_dir_durably(&home.dir)
        .map_err(|e| io(format!("cannot create {}", home.dir.display()), e))?;
    write_file_durably(&marker, id.as_bytes())?;
    // Clear what is there, then lay out an empty channel and copy the files over it.
    if occupied || resuming.is_some() {
        let current = home.config()?;
        let mut dirs = config.all_dirs();
        dirs.extend(current.all_dirs());
        for d in dirs {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .map_err(|e| io(format!("cannot clear {}", d.display()), e))?;
            }
        }
        let _ = std::fs::remove_file(home.dir.join(SETTINGS_FILE));
        let _ = std::fs::remove_file(home.dir.join(RESTORED_FILE));
    }
    let empty = FileChannelConfig {
        checkpoint_on_close: false,
        checkpoint_interval_ms: 0,
        ..config.clone()
    };
    sluicegate_file::FileChannel::open(empty)?.close()?;
    // From here to the end no other process may open the channel being written (the marker
    // keeps the CLI's commands out; the locks keep everything out).
    let _held = sluicegate_file::HeldDirs::hold(&config.all_dirs())
        .map_err(|e| Fail::from(e).context("the restore stops"))?;
    let total = m.files.iter().map(|f| f.bytes).sum();
    let bar = crate::progress::bytes("restoring", total);
    for f in &m.files {
        let to = destination(&config, &f.path).ok_or_else(|| {
            Fail::runtime(format!(
                "{}: unknown file {} in the manifest",
                src.display(),
                f.path
            ))
        })?;
        let copied = copy_file(&src.join(&f.path), &to, &bar)?;
        if copied.bytes != f.bytes || copied.crc32c != f.crc32c {
            return Err(Fail::runtime(format!(
                "{} changed while it was restored: run the restore again",
                src.join(&f.path).display()
            )));
        }
    }
    bar.finish_and_clear();
    for d in &config.data_dirs {
        sync_dir(d).map_err(|e| io(format!("cannot sync {}", d.display()), e))?;
    }
    home::write_settings(&home.dir, &config)?;
    write_file_durably(&home.dir.join(RESTORED_FILE), id.as_bytes())?;
    // The restored channel must recover to the event count the backup recorded.
    let st = crate::inspect::snapshot(&config, SnapshotOptions::default())?;
    let core = crate::inspect::recover(&config, st)?;
    let events = core.len() as u64;
    let path = crate::inspect::path_name(core.recovery().path);
    drop(core);
    if events != m.events {
        return Err(Fail::runtime(format!(
            "the restored channel recovers {events} events, the {} recorded {}: left unfinished ({RESTORING_FILE} stays)",
            m.kind, m.events
        )));
    }
    std::fs::remove_file(&marker)
        .and_then(|()| sync_dir(&home.dir))
        .map_err(|e| io(format!("cannot remove {}", marker.display()), e))?;
    if json_out {
        println!(
            "{}",
            json!({"restored": home.dir.display().to_string(), "id": id, "already": false,
                   "events": events, "recovery": path, "kind": m.kind})
        );
    } else {
        println!(
            "restored {} {id} ({} events, taken {}) into {}; it recovers by {path}",
            m.kind,
            events,
            m.created_utc,
            home.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
