//! `repair`: makes a damaged channel open again without losing an intact event.
//!
//! Every file it changes is first copied to `DIR/repair-<unix time>/` (a file it moves out of
//! the log goes there whole). In order:
//!
//! 1. the temporary directory of an interrupted backup is removed;
//! 2. files: a log or slot file of the wrong size (cut short, say) is copied, then padded with
//!    zeros (or cut) to its size, which keeps every record before the damage; a log file the
//!    layout would not place where it lies is moved out;
//! 3. records, found by the same scan as `verify`: a damaged record whose length no longer leads
//!    to the intact record after it gets its length rewritten (its CRC still fails), so replay
//!    steps over it and keeps reading the segment instead of stopping there; an intact record
//!    recovery refuses (unknown kind, pointers outside the log) gets its CRC spoilt, so replay
//!    steps over it the same way; a segment header in the wrong slot moves its file out;
//! 4. recovery is run (read-only); a checkpoint slot it refuses is moved out (recovery then
//!    uses the other one or replays the log), and a log holding more events than the capacity
//!    raises the capacity in `sluicegate.toml` (the slot files, sized by capacity, are moved out
//!    and made again). Repeated until recovery succeeds, at most 64 rounds.
//!
//! Damaged bytes stay where they were (replay skips them), so `verify` still reports them; the
//! events they held are gone either way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sluicegate_core::record::{RecordHeader, RECORD_HEADER_BYTES};
use sluicegate_core::walk::Geometry;
use sluicegate_core::{Channel, Error, Region, Storage};
use sluicegate_file::{
    format_file_text, recorded_geometry, segment_slot, DirRole, FileChannelConfig, SnapshotOptions,
    FORMAT_FILE,
};

use crate::fail::{io, Fail};
use crate::home::HomeArgs;
use crate::scan::{self, Fix};

struct Repair {
    dir: PathBuf,
    copies: Option<PathBuf>,
    copied: BTreeSet<PathBuf>,
    actions: Vec<String>,
    /// Events repair could not keep.
    lost: u64,
    /// Their ids (`CHANNEL:EVENT`, as sinks send them), for the report.
    lost_ids: Vec<String>,
}

impl Repair {
    fn copies_dir(&mut self) -> Result<PathBuf, Fail> {
        if let Some(d) = &self.copies {
            return Ok(d.clone());
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut d = self.dir.join(format!("repair-{stamp}"));
        let mut k = 1;
        while d.exists() {
            d = self.dir.join(format!("repair-{stamp}-{k}"));
            k += 1;
        }
        std::fs::create_dir(&d).map_err(|e| io(format!("cannot create {}", d.display()), e))?;
        self.copies = Some(d.clone());
        Ok(d)
    }

    /// A name for `path`'s copy that tells where it came from.
    fn copy_name(&mut self, path: &Path) -> Result<PathBuf, Fail> {
        let parent = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Never over an earlier copy: a file cut to size and later moved out keeps both.
        let dir = self.copies_dir()?;
        let mut to = dir.join(format!("{parent}--{name}"));
        let mut k = 2;
        while to.exists() {
            to = dir.join(format!("{parent}--{name}.{k}"));
            k += 1;
        }
        Ok(to)
    }

    /// Copies `path` aside once, before its first change.
    fn keep_copy(&mut self, path: &Path) -> Result<(), Fail> {
        if self.copied.contains(path) {
            return Ok(());
        }
        let to = self.copy_name(path)?;
        std::fs::copy(path, &to).map_err(|e| {
            io(
                format!("cannot copy {} to {}", path.display(), to.display()),
                e,
            )
        })?;
        self.copied.insert(path.to_path_buf());
        Ok(())
    }

    /// Moves `path` into the copies directory.
    fn move_out(&mut self, path: &Path, why: &str) -> Result<(), Fail> {
        let to = self.copy_name(path)?;
        rename_durably(path, &to)?;
        self.actions.push(format!(
            "moved {} out to {} ({why})",
            path.display(),
            to.display()
        ));
        Ok(())
    }
}

/// Renames `from` to `to` and syncs both directories.
fn rename_durably(from: &Path, to: &Path) -> Result<(), Fail> {
    use sluicegate_agent::home::{parent_of, sync_dir};
    std::fs::rename(from, to)
        .and_then(|()| sync_dir(parent_of(from)))
        .and_then(|()| sync_dir(parent_of(to)))
        .map_err(|e| {
            io(
                format!("cannot move {} to {}", from.display(), to.display()),
                e,
            )
        })
}

/// The valid segment header a log file starts with, if it starts with one.
fn file_header(path: &Path) -> Option<sluicegate_core::record::SegmentHeader> {
    use sluicegate_core::record::{SegmentCheck, SegmentHeader, SEGMENT_HEADER_BYTES};
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    read_at(path, 0, &mut b).ok()?;
    match SegmentHeader::decode(&b) {
        SegmentCheck::Valid(h) => Some(h),
        _ => None,
    }
}

/// The slot a log file's valid header puts it in (its segment's sequence number modulo the
/// log files), if it starts with one of the layout's segment size.
fn header_slot(path: &Path, layout: &sluicegate_file::Layout) -> Option<usize> {
    file_header(path)
        .filter(|h| h.segment_bytes == layout.segment_bytes)
        .map(|h| (h.seq % layout.segments as u64) as usize)
}

fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), Fail> {
    use std::os::unix::fs::FileExt;
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(buf, offset))
        .map_err(|e| io(format!("cannot read {}", path.display()), e))
}

/// `repair --acknowledge`: the operator has seen what repairs lost; `stats` stops showing it.
fn acknowledge_lost(home: &HomeArgs, json_out: bool) -> Result<ExitCode, Fail> {
    let path = home.dir.join(crate::home::LOST_FILE);
    let events = crate::home::lost_by_repair(&home.dir).map_or(0, |(n, _)| n);
    if path.exists() {
        std::fs::remove_file(&path)
            .and_then(|()| sluicegate_agent::home::sync_dir(&home.dir))
            .map_err(|e| io(format!("cannot remove {}", path.display()), e))?;
    }
    if json_out {
        println!("{}", json!({"acknowledged": events}));
    } else {
        println!("acknowledged {events} events lost by earlier repairs");
    }
    Ok(ExitCode::SUCCESS)
}

/// Step 1: format files. Rewrites a directory's format file (`sluicegate.dir`) that is missing or damaged (not a
/// format file at all), when the directory holds what its role puts there (the slot file, or
/// log files): the settings say what the directory is, and its files agree. A copy of a damaged
/// one is kept. A format file naming another version or role is left alone: that is a real
/// mismatch, not damage.
fn mend_markers(r: &mut Repair, config: &FileChannelConfig) -> Result<(), Fail> {
    let layout = config.layout();
    let mut dirs = vec![
        (layout.checkpoint_dir.clone(), DirRole::Checkpoint),
        (layout.backup_dir.clone(), DirRole::Backup),
    ];
    dirs.extend(layout.data_dirs.iter().map(|d| (d.clone(), DirRole::Data)));
    for (dir, role) in dirs {
        let holds_ours = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match role {
                    DirRole::Checkpoint => name == "checkpoint.slot",
                    DirRole::Backup => name == "backup.slot",
                    DirRole::Data => segment_slot(&name).is_some(),
                }
            })
        });
        if !holds_ours {
            continue;
        }
        let path = dir.join(FORMAT_FILE);
        let was = match std::fs::read(&path) {
            Ok(bytes) if bytes.starts_with(b"sluicegate directory\n") => continue,
            Ok(_) => {
                r.keep_copy(&path)?;
                "damaged"
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
            Err(e) => return Err(io(format!("cannot read {}", path.display()), e)),
        };
        let geometry = recorded_geometry(&layout).map(|(g, _)| g);
        crate::archive::write_file_durably(
            &path,
            format_file_text(role, geometry.as_ref()).as_bytes(),
        )?;
        r.actions.push(format!(
            "rewrote {} ({was}; the directory holds the channel's {} files)",
            path.display(),
            role.name()
        ));
    }
    Ok(())
}

/// Step 2: file sizes and stray log files.
fn mend_files(r: &mut Repair, config: &FileChannelConfig) -> Result<(), Fail> {
    let layout = config.layout();
    // With the geometry recorded (and checked against the settings), a log file outside the
    // layout is a stray, not a sign of edited settings.
    let recorded = recorded_geometry(&layout);
    let mut expect: Vec<(PathBuf, u64)> = vec![
        (
            layout.checkpoint_dir.join("checkpoint.slot"),
            layout.slot_bytes,
        ),
        (layout.backup_dir.join("backup.slot"), layout.slot_bytes),
    ];
    for (d, dir) in layout.data_dirs.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(slot) = segment_slot(&name) else {
                continue;
            };
            // A log file renamed (or moved to another data directory): if its header names a
            // slot whose file is missing, it goes back there, and its events with it.
            if let Some(home_slot) = header_slot(&p, &layout).filter(|&h| h != slot) {
                let there = layout.segment_path(home_slot);
                if !there.exists() {
                    let seq = file_header(&p).map_or(0, |h| h.seq);
                    rename_durably(&p, &there)?;
                    r.actions.push(format!(
                        "{} holds segment {} of slot {home_slot}, whose file was missing: renamed to {}",
                        p.display(),
                        seq,
                        there.display()
                    ));
                    continue;
                }
            }
            if slot >= layout.segments as usize || slot % layout.data_dirs.len() != d {
                if file_header(&p).is_some() && recorded.is_none() {
                    // Settings edited after creation, not damage: moving it out would drop
                    // its events. The way back is the settings the log was written with.
                    return Err(Fail::runtime(format!(
                        "{} is an intact log file in slot {slot}, which the settings ({} log files over {} data directories, this one number {}) do not place here: {} was edited after the channel was created; put log_files and data_dirs back as they were (log_files at least {}), or restore a backup into a new home to change them",
                        p.display(),
                        layout.segments,
                        layout.data_dirs.len(),
                        d + 1,
                        r.dir.join(crate::home::SETTINGS_FILE).display(),
                        slot + 1
                    )));
                }
                r.move_out(
                    &p,
                    "a log file the recorded layout does not place here, its own slot taken",
                )?;
            } else {
                expect.push((p, layout.segment_bytes as u64));
            }
        }
    }
    // First, before anything is resized: a log file whose own header gives another size says
    // the settings changed (or are missing), not the file; resizing would destroy the log.
    for (p, len) in &expect {
        if let Some(written) = file_header(p)
            .map(|h| h.segment_bytes)
            .filter(|&b| b as u64 != *len)
        {
            return Err(Fail::runtime(format!(
                "{} says its log files are {written} bytes, the settings {len} ({} missing or edited): put max_file_bytes = {written} back in it",
                p.display(),
                r.dir.join(crate::home::SETTINGS_FILE).display()
            )));
        }
    }
    for (p, len) in expect {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.len() == len {
            continue;
        }
        r.keep_copy(&p)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
            .map_err(|e| io(format!("cannot resize {}", p.display()), e))?;
        r.actions.push(format!(
            "{} was {} bytes, the layout says {len}: {} (kept a copy)",
            p.display(),
            meta.len(),
            if meta.len() < len {
                "padded with zeros"
            } else {
                "cut"
            }
        ));
    }
    Ok(())
}

/// Step 3: applies the scan's fixes. Returns how many it applied.
fn mend_records(r: &mut Repair, config: &FileChannelConfig) -> Result<usize, Fail> {
    let mut st = crate::inspect::snapshot(config, SnapshotOptions::default())?;
    let report = scan::scan(&mut st, |_, _| {})?;
    let paths: Vec<Option<PathBuf>> = (0..st.segments())
        .map(|s| st.segment_path(s).map(Path::to_path_buf))
        .collect();
    drop(st);
    let mut applied = 0;
    // Record fixes go through the file adapter (a header rewritten by its encoder, at the
    // offset the scan found); segments move out after, with nothing mapped.
    let mut storage: Option<sluicegate_file::FileStorage> = None;
    let geo = Geometry::new(
        config.log_files as u64,
        config.max_file_bytes as u64,
        <sluicegate_file::FileStorage as Storage>::WRITE_SIZE,
    );
    for f in &report.findings {
        let (slot, offset, next) = match f.fix {
            Some(Fix::Bridge { slot, offset, next }) => (slot, offset, Some(next)),
            Some(Fix::Spoil { slot, offset }) => (slot, offset, None),
            _ => continue,
        };
        let Some(path) = paths[slot].clone() else {
            continue;
        };
        r.keep_copy(&path)?;
        let st = match &mut storage {
            Some(st) => st,
            None => storage.insert(sluicegate_file::FileStorage::open(&config.layout())?),
        };
        let at = geo.segment_start(slot as u32) + offset;
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        st.read(Region::Log, at, &mut hb)?;
        let mut header = RecordHeader::decode(&hb);
        match next {
            Some(next) => {
                header.len = (next - offset - RECORD_HEADER_BYTES as u64) as u32;
                // The record must stay damaged: if the new length happens to make its CRC
                // match, spoil the CRC.
                let mut payload = vec![0u8; header.len as usize];
                st.read(Region::Log, at + RECORD_HEADER_BYTES as u64, &mut payload)?;
                let bind = report.segments[slot].binding().unwrap_or(0);
                if header.check(bind, &payload) {
                    header.crc ^= 1;
                }
                r.actions.push(format!(
                    "{} @ {offset}: damaged record ({}); its length now leads to the intact record at {next}, so replay steps over it",
                    path.display(),
                    f.what
                ));
            }
            None => {
                header.crc ^= 1;
                r.actions.push(format!(
                    "{} @ {offset}: {}; its CRC is spoilt so replay steps over it",
                    path.display(),
                    f.what
                ));
            }
        }
        st.write(Region::Log, at, &header.encode())?;
        applied += 1;
    }
    if let Some(mut st) = storage.take() {
        st.sync(Region::Log)?;
    }
    for f in &report.findings {
        if let Some(Fix::MoveSegment { slot }) = f.fix {
            if let Some(path) = paths[slot].clone() {
                r.move_out(&path, &f.what)?;
                applied += 1;
            }
        }
    }
    Ok(applied)
}

/// Step 4: one recovery. `Ok(true)` if it succeeded; `Ok(false)` if it changed something and
/// should run again.
fn mend_recovery(
    r: &mut Repair,
    home: &HomeArgs,
    config: &mut FileChannelConfig,
) -> Result<Option<String>, Fail> {
    let st = crate::inspect::snapshot(config, SnapshotOptions::default())?;
    let core_config = config
        .core_config()
        .map_err(|e| Fail::runtime(e.to_string()))?;
    let keys = config.keyring().map_err(|e| Fail::runtime(e.to_string()))?;
    let memory = vec![0u64; core_config.memory_words()];
    let layout = config.layout();
    let slot_file = |region: Region| match region {
        Region::Backup => layout.backup_dir.join("backup.slot"),
        _ => layout.checkpoint_dir.join("checkpoint.slot"),
    };
    let mut ids = Vec::new();
    let opened = Channel::open_with_keys(st, memory, core_config, keys).and_then(|mut core| {
        core.check_queued_events_each(&mut |id| ids.push(id))?;
        Ok(core)
    });
    match opened {
        Ok(core) if core.recovery().events_in_lost_segments > 0 => {
            // Queued events whose bytes are gone (a log file missing, cut short or damaged):
            // nothing can bring them back.
            // Remove them from the queue (a real open, which checkpoints the smaller queue),
            // keeping every other event, and say so.
            drop(core);
            for region in [Region::Checkpoint, Region::Backup] {
                let p = slot_file(region);
                if p.exists() {
                    r.keep_copy(&p)?;
                }
            }
            let open = FileChannelConfig {
                checkpoint_interval_ms: 0,
                ..config.clone()
            };
            let (channel, dropped) = sluicegate_file::FileChannel::open_dropping_lost(open)
                .map_err(|e| Fail::runtime(format!("cannot remove the lost events: {e}")))?;
            let first = channel.recovery().first_lost_slot as usize;
            let identity = channel.identity();
            r.lost_ids.extend(
                ids.iter()
                    .map(|&id| sluicegate_agent::sinks::id_text(identity, id)),
            );
            channel
                .close()
                .map_err(|e| Fail::runtime(format!("cannot close the channel: {e}")))?;
            let file = layout.segment_path(first);
            r.lost += dropped;
            r.actions.push(format!(
                "LOST {dropped} queued events: their log files are missing, cut short or damaged (the first: {}); removed from the queue, every other event kept",
                file.display()
            ));
            Ok(None)
        }
        Ok(core) => Ok(Some(format!(
            "recovery succeeds by {} with {} events",
            crate::inspect::path_name(core.recovery().path),
            core.len()
        ))),
        Err(Error::Corrupted { region, offset }) if region != Region::Log => {
            let p = slot_file(region);
            r.move_out(&p, &format!("recovery refuses this checkpoint slot (offset {offset})"))?;
            Ok(None)
        }
        Err(Error::UnsupportedFormat { found }) => {
            // A slot of another version is the likely cause; a segment's would be in the scan.
            let mut moved = false;
            for region in [Region::Checkpoint, Region::Backup] {
                let p = slot_file(region);
                let mut b = [0u8; sluicegate_core::checkpoint::STARTED_BYTES];
                if read_at(&p, 0, &mut b).is_ok()
                    && matches!(sluicegate_core::checkpoint::Started::decode(&b), Some(Err(_)))
                {
                    r.move_out(&p, &format!("a checkpoint of format version {found}"))?;
                    moved = true;
                }
            }
            if moved {
                Ok(None)
            } else {
                Err(Fail::runtime(format!(
                    "the log holds data of format version {found}: use a build that reads it"
                )))
            }
        }
        Err(Error::CapacityTooSmall { needed }) => {
            let capacity = u32::try_from(needed.saturating_mul(2).max(config.capacity as u64 * 2))
                .unwrap_or(u32::MAX);
            for region in [Region::Checkpoint, Region::Backup] {
                let p = slot_file(region);
                if p.exists() {
                    r.move_out(&p, "slot files are sized by capacity")?;
                }
            }
            r.actions.push(format!(
                "the log holds at least {needed} events, above the capacity {}: capacity raised to {capacity} in {}",
                config.capacity,
                home.dir.join(crate::home::SETTINGS_FILE).display()
            ));
            config.capacity = capacity;
            // The slot files must exist at their new size before the next read-only round.
            let create = FileChannelConfig {
                checkpoint_on_close: false,
                checkpoint_interval_ms: 0,
                ..config.clone()
            };
            crate::home::write_settings(&home.dir, config)?;
            let layout = create.layout();
            for p in [
                layout.checkpoint_dir.join("checkpoint.slot"),
                layout.backup_dir.join("backup.slot"),
            ] {
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(layout.slot_bytes).and_then(|()| f.sync_all()))
                    .map_err(|e| io(format!("cannot create {}", p.display()), e))?;
            }
            Ok(None)
        }
        Err(e) => Err(Fail::runtime(format!(
            "recovery still fails ({e}) and repair has no mend for it; the copies are in the repair directory"
        ))),
    }
}

/// `repair`.
pub fn repair(home: &HomeArgs, json_out: bool, acknowledge: bool) -> Result<ExitCode, Fail> {
    if acknowledge {
        return acknowledge_lost(home, json_out);
    }
    if !home.dir.is_dir() {
        return Err(Fail::runtime(format!(
            "{} does not exist",
            home.dir.display()
        )));
    }
    home.refuse_half_restored()?;
    let mut r = Repair {
        dir: home.dir.clone(),
        copies: None,
        copied: BTreeSet::new(),
        actions: Vec::new(),
        lost: 0,
        lost_ids: Vec::new(),
    };
    let mut config = home.config_with(true)?;
    // A channel someone owns is not repaired: its files are mapped by a live process. The
    // locks are held until repair ends, so no process opens the channel while files change.
    let _held = sluicegate_file::HeldDirs::hold(&config.all_dirs())
        .map_err(|e| Fail::from(e).context("stop it before a repair"))?;
    let settings_damaged = home.settings_damaged();
    if let Some(damaged) = &settings_damaged {
        // Rebuilt at the end from the geometry the directories record.
        r.move_out(damaged, "damaged: not TOML")?;
    }
    // Settings that contradict the geometry the directories record: refused, nothing changed.
    sluicegate_file::check_geometry(&config.layout())?;
    mend_markers(&mut r, &config)?;
    if !config.checkpoint_dir.join(FORMAT_FILE).exists() {
        return Err(Fail::runtime(format!(
            "{} holds no channel",
            home.dir.display()
        )));
    }
    if let Some(p) = crate::archive::clean_interrupted_backup(&home.dir)? {
        r.actions
            .push(format!("removed an interrupted backup: {}", p.display()));
    }
    // Bounded: each round mends at least one thing or ends.
    let mut outcome = None;
    for _ in 0..64 {
        mend_files(&mut r, &config)?;
        let fixed = mend_records(&mut r, &config)?;
        let recovered = mend_recovery(&mut r, home, &mut config)?;
        if recovered.is_some() && fixed == 0 {
            outcome = recovered;
            break;
        }
    }
    let Some(outcome) = outcome else {
        return Err(Fail::runtime("repair did not converge in 64 rounds"));
    };
    if home.settings_missing() && recorded_geometry(&config.layout()).is_some() {
        crate::home::write_settings(&home.dir, &config)?;
        r.actions.push(format!(
            "rebuilt {} (it was missing, empty or damaged) from the geometry the channel's directories record (max_file_bytes = {}, log_files = {}); every other setting is the default: check capacity and [encryption]",
            home.dir.join(crate::home::SETTINGS_FILE).display(),
            config.max_file_bytes,
            config.log_files
        ));
    }
    let changed = !r.actions.is_empty();
    r.actions.push(outcome);
    if r.lost > 0 {
        // A report beside the copies, so the loss outlives the terminal.
        let dir = r.copies_dir()?;
        let report = dir.join("LOST.txt");
        let text = format!(
            "repair of {} lost {} queued events\n{}\n\nthe lost events' ids (CHANNEL:EVENT, as sinks send them in sluicegate-id):\n{}\n",
            home.dir.display(),
            r.lost,
            r.actions.join("\n"),
            r.lost_ids.join("\n")
        );
        crate::archive::write_file_durably(&report, text.as_bytes())?;
        // Shown by `stats` until acknowledged.
        let lost_file = home.dir.join(crate::home::LOST_FILE);
        let mut record = std::fs::read_to_string(&lost_file).unwrap_or_default();
        record.push_str(&format!("{}\t{}\n", r.lost, report.display()));
        crate::archive::write_file_durably(&lost_file, record.as_bytes())?;
        r.actions.push(format!(
            "a report of what was lost is in {}",
            report.display()
        ));
    }
    let copies = r.copies.as_ref().map(|p| p.display().to_string());
    if json_out {
        println!(
            "{}",
            json!({"repaired": changed, "actions": r.actions, "copies": copies, "events_lost": r.lost})
        );
    } else {
        if !changed {
            println!("nothing to repair");
        }
        for a in &r.actions {
            println!("{a}");
        }
        if let Some(c) = copies {
            println!("copies of every file changed or moved are in {c}");
        }
    }
    if r.lost > 0 {
        // The channel opens again, but events were lost: not a success to a script.
        let message = format!(
            "repair lost {} queued events (the channel opens again)",
            r.lost
        );
        return Ok(crate::fail::Fail::runtime(message).exit(json_out));
    }
    Ok(ExitCode::SUCCESS)
}
