//! `migrate`: the one way to change a channel's geometry (`max_file_bytes`, `log_files`, the data
//! directories), which the directories record and every open checks.
//!
//! Every queued event, in order, and every stream's mark are copied into a new channel built
//! beside the old one (each directory `D` gets a sibling `D.migrate-new`, so renames stay on
//! one filesystem); the old channel is read through a `SnapshotStorage`, so nothing of it
//! changes. Then, under a journal (`DIR/sluicegate.migrating`), each old directory is renamed to
//! `D.before-migrate-<unix time>` (kept whole: a copy of every byte) and each new one into its
//! place, and the new settings are written. A migrate cut short before the journal leaves the
//! old channel as it was (the next migrate clears the half-built copy); one cut short after it
//! is finished by running it again, and every other command refuses the home until then.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sluicegate_file::{FileChannel, FileChannelConfig, SnapshotOptions};

use crate::archive::write_file_durably;
use crate::fail::{io, Fail};
use crate::home::{HomeArgs, MIGRATING_FILE};

/// What may change.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MigrateArgs {
    /// The new size of one log file in bytes, a multiple of 4096.
    #[arg(long, value_parser = clap::value_parser!(u32).range(4096..))]
    pub file_bytes: Option<u32>,
    /// The new number of log files, at least 4.
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..))]
    pub log_files: Option<u32>,
    /// The new data directories (repeat it); each must not exist yet, or be one the channel
    /// uses now.
    #[arg(long = "to-data-dir", value_name = "PATH")]
    pub to_data_dirs: Vec<PathBuf>,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The directories a configuration's channel lives in (the second slot's only when it is not
/// inside the checkpoint directory).
fn channel_dirs(config: &FileChannelConfig) -> Vec<PathBuf> {
    let mut dirs = vec![config.checkpoint_dir.clone()];
    if config.use_dual_checkpoints {
        dirs.push(config.backup_checkpoint_dir.clone());
    }
    dirs.extend(config.data_dirs.iter().cloned());
    dirs
}

/// `migrate`: copy every event into a channel of the new geometry and swap it in.
pub fn migrate(home: &HomeArgs, args: &MigrateArgs, json_out: bool) -> Result<ExitCode, Fail> {
    let journal = home.dir.join(MIGRATING_FILE);
    if journal.exists() {
        let finished = finish(home, &journal)?;
        return report(json_out, &finished, None);
    }
    let old = home.existing()?;
    // Held until the swap is done: no process may add an event to the old channel after the
    // copy began.
    let _held = sluicegate_file::HeldDirs::hold(&old.all_dirs())
        .map_err(|e| Fail::from(e).context("stop it before a migrate"))?;
    let mut new = old.clone();
    if let Some(v) = args.file_bytes {
        crate::home::set_file_bytes(&mut new, v);
    }
    if let Some(v) = args.log_files {
        new.log_files = v;
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    if !args.to_data_dirs.is_empty() {
        new.data_dirs = args.to_data_dirs.iter().map(|d| cwd.join(d)).collect();
        for d in &new.data_dirs {
            if d.exists() && !old.data_dirs.contains(d) {
                return Err(Fail::usage(format!(
                    "--to-data-dir {}: it exists and the channel does not use it (choose a new directory)",
                    d.display()
                )));
            }
        }
    }
    new.core_config()
        .map_err(|e| Fail::usage(format!("the new settings do not work: {e}")))?;
    // The new settings as given: `layout` would read a default `log_files` as the one the
    // old directories record, and a migrate to the default would change nothing.
    if sluicegate_file::Geometry::of(&new.layout_as_set())
        == sluicegate_file::Geometry::of(&old.layout())
    {
        return Err(Fail::usage(
            "nothing to migrate: give --file-bytes, --log-files or --to-data-dir with a new value",
        ));
    }

    // Build the new channel beside the old one.
    let staged = |d: &Path| sibling(d, ".migrate-new");
    // It closes with a checkpoint, so the first open after the swap replays nothing.
    let building = FileChannelConfig {
        checkpoint_dir: staged(&new.checkpoint_dir),
        backup_checkpoint_dir: staged(&new.backup_checkpoint_dir),
        data_dirs: new.data_dirs.iter().map(|d| staged(d)).collect(),
        checkpoint_interval_ms: 0,
        checkpoint_on_close: true,
        minimum_required_space_bytes: 0,
        ..new.clone()
    };
    for d in channel_dirs(&building) {
        if d.exists() {
            // A migrate cut short before its journal: the old channel is whole.
            std::fs::remove_dir_all(&d)
                .map_err(|e| io(format!("cannot clear {}", d.display()), e))?;
        }
    }
    let copied = copy_events(&old, &building)?;

    // Swap, under a journal.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut moves = Vec::new();
    for d in channel_dirs(&old) {
        moves.push((d.clone(), sibling(&d, &format!(".before-migrate-{stamp}"))));
    }
    for d in channel_dirs(&new) {
        moves.push((staged(&d), d));
    }
    let settings = sluicegate_agent::home::settings_text(&home.dir, &new)
        .map_err(|e| Fail::runtime(format!("cannot write the new settings: {e}")))?;
    let settings_path = home.dir.join(crate::home::SETTINGS_FILE);
    if let Ok(before) = std::fs::read(&settings_path) {
        write_file_durably(
            &sibling(&settings_path, &format!(".before-migrate-{stamp}")),
            &before,
        )?;
    }
    let mut text = String::new();
    for (from, to) in &moves {
        text.push_str(&format!("move {}\t{}\n", from.display(), to.display()));
    }
    text.push_str("settings\n");
    text.push_str(&settings);
    write_file_durably(&journal, text.as_bytes())?;
    let finished = finish(home, &journal)?;
    report(json_out, &finished, Some(copied))
}

/// Carries out a journal's moves (each only if it is still to do) and writes its settings; then
/// removes the journal. Returns the directories the old channel was kept in.
fn finish(home: &HomeArgs, journal: &Path) -> Result<Vec<PathBuf>, Fail> {
    let text = std::fs::read_to_string(journal)
        .map_err(|e| io(format!("cannot read {}", journal.display()), e))?;
    let (moves, settings) = text
        .split_once("settings\n")
        .ok_or_else(|| Fail::runtime(format!("{} is damaged", journal.display())))?;
    let mut kept = Vec::new();
    for line in moves.lines() {
        let Some((from, to)) = line.strip_prefix("move ").and_then(|l| l.split_once('\t')) else {
            return Err(Fail::runtime(format!("{} is damaged", journal.display())));
        };
        let (from, to) = (PathBuf::from(from), PathBuf::from(to));
        if from.exists() && !to.exists() {
            std::fs::rename(&from, &to).map_err(|e| {
                io(
                    format!("cannot move {} to {}", from.display(), to.display()),
                    e,
                )
            })?;
            let parent = sluicegate_agent::home::parent_of(&to);
            sluicegate_agent::home::sync_dir(parent)
                .map_err(|e| io(format!("cannot sync {}", parent.display()), e))?;
        }
        if to.display().to_string().contains(".before-migrate-") {
            kept.push(to);
        }
    }
    write_file_durably(
        &home.dir.join(crate::home::SETTINGS_FILE),
        settings.as_bytes(),
    )?;
    std::fs::remove_file(journal)
        .and_then(|()| sluicegate_agent::home::sync_dir(&home.dir))
        .map_err(|e| io(format!("cannot remove {}", journal.display()), e))?;
    Ok(kept)
}

/// Copies every queued event of `old` (read-only: takes commit only in the snapshot's memory),
/// in order, and every stream's mark, into a new channel at `to`; checks the count. Returns
/// how many events it copied.
fn copy_events(old: &FileChannelConfig, to: &FileChannelConfig) -> Result<u64, Fail> {
    let st = crate::inspect::snapshot(old, SnapshotOptions::default())?;
    let mut src = crate::inspect::recover(old, st)?;
    let lost = src.recovery().events_in_lost_segments;
    if lost > 0 {
        return Err(Fail::runtime(format!(
            "{lost} queued events cannot be read: run `sluicegate repair` first"
        )));
    }
    let total = src.len() as u64;
    let dst = FileChannel::open(to.clone())?;
    let batch = to.transaction_capacity.min(old.transaction_capacity).max(1);
    let mut buf = vec![0u8; old.max_event_bytes as usize];
    let bar = crate::progress::spinner("migrating");
    let mut copied = 0u64;
    let fail = |e: sluicegate_core::Error<sluicegate_file::FileError>| {
        Fail::runtime(format!("reading the channel fails: {e}"))
    };
    // Bounded: every turn copies at least one event or ends.
    loop {
        let txn = src.begin().map_err(fail)?;
        let mut tx = dst.begin()?;
        let mut n = 0;
        while n < batch {
            match src.take(txn, &mut buf).map_err(fail)? {
                Some(len) => {
                    tx.put(&buf[..len])?;
                    n += 1;
                }
                None => break,
            }
        }
        let last = n < batch;
        if last {
            for stream in 0..old.marks.min(to.marks) {
                let mut mark = vec![0u8; old.mark_bytes as usize];
                if let Some(len) = src.mark(stream, &mut mark) {
                    tx.set_mark(stream, &mark[..len])?;
                }
            }
        }
        tx.commit()?;
        src.commit(txn).map_err(fail)?;
        copied += n as u64;
        if last {
            break;
        }
    }
    bar.finish_and_clear();
    let skipped = src.stats().corrupt_events_skipped;
    if copied + skipped != total || skipped > 0 || dst.len() as u64 != copied {
        return Err(Fail::runtime(format!(
            "the copy holds {} events of {total} ({skipped} failed their checks): the channel is left as it was",
            dst.len()
        )));
    }
    dst.close()?;
    Ok(copied)
}

fn report(json_out: bool, kept: &[PathBuf], copied: Option<u64>) -> Result<ExitCode, Fail> {
    let kept: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
    if json_out {
        println!(
            "{}",
            json!({"migrated": true, "events": copied, "kept": kept})
        );
    } else {
        if let Some(n) = copied {
            println!("copied {n} events into the new layout");
        } else {
            println!("finished an interrupted migrate");
        }
        println!(
            "the old channel's directories are kept whole: {} (remove them once you are satisfied)",
            kept.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
