//! `stats`, `verify` and `dump`: read-only commands. They open a [`SnapshotStorage`], which
//! locks the channel like an open does but writes nothing to disk, and run the core's recovery
//! on it exactly as an open would.

use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::json;
use sluicegate_core::record::Pointer;
use sluicegate_core::{Channel, Recovery, RecoveryPath, Stats};
use sluicegate_file::{FileChannelConfig, SnapshotOptions, SnapshotStorage};

use crate::fail::Fail;
use crate::home::HomeArgs;
use crate::scan::{self, Severity};

type Core = Channel<SnapshotStorage, Vec<u64>, sluicegate_file::Keyring>;

pub fn path_name(p: RecoveryPath) -> &'static str {
    p.name()
}

/// Opens a snapshot of the channel (locking it) with the given options.
pub fn snapshot(
    config: &FileChannelConfig,
    options: SnapshotOptions,
) -> Result<SnapshotStorage, Fail> {
    config
        .core_config()
        .map_err(|e| Fail::runtime(format!("bad channel settings: {e}")))?;
    Ok(SnapshotStorage::open(&config.layout(), options)?)
}

/// Runs the core's recovery on the snapshot, as an open would.
pub fn recover(config: &FileChannelConfig, st: SnapshotStorage) -> Result<Core, Fail> {
    let core_config = config
        .core_config()
        .map_err(|e| Fail::runtime(e.to_string()))?;
    let keys = config.keyring().map_err(|e| Fail::runtime(e.to_string()))?;
    let memory = vec![0u64; core_config.memory_words()];
    Channel::open_with_keys(st, memory, core_config, keys)
        .map_err(|e| {
            Fail::runtime(format!(
                "recovery fails: {e}; `sluicegate verify` says where, `sluicegate repair` mends what it can"
            ))
        })
}

pub fn recovery_json(r: &Recovery) -> serde_json::Value {
    json!({
        "path": path_name(r.path),
        "segments_replayed": r.segments_replayed,
        "records_read": r.records_read,
        "puts": r.puts,
        "put_commits": r.put_commits,
        "take_commits": r.take_commits,
        "events_committed": r.events_committed,
        "events_taken": r.events_taken,
        "uncommitted_puts": r.uncommitted_puts,
        "torn_commits_dropped": r.torn_commits_dropped,
        "corrupt_events_dropped": r.corrupt_events_dropped,
        "corrupt_records_skipped": r.corrupt_records_skipped,
        "records_lost": r.records_lost,
        "events_in_lost_segments": r.events_in_lost_segments,
        "unmatched_takes": r.unmatched_takes,
        "events": r.events,
        "checkpoint": r.checkpoint,
        "checkpoint_events": r.checkpoint_events,
        "newest_checkpoint_damaged": r.newest_checkpoint_damaged,
    })
}

/// `stats` of a channel whose owner is running: the owner's live figures.
fn live_stats(home: &HomeArgs, json_out: bool) -> Option<Result<ExitCode, Fail>> {
    let socket = sluicegate_agent::home::socket_path(&home.dir);
    // An owner handing the home over answers `Leaving`: ask the next one (bounded).
    let mut tries = 0;
    let f = loop {
        let mut client = sluicegate_agent::Client::connect(&socket).ok()?;
        match client.stats() {
            Ok(f) => break f,
            Err(e) if e.is_retryable() && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Some(Err(Fail::runtime(format!("the channel's owner: {e}")))),
        }
    };
    let mut f = f;
    if let Some(v) = lost_json(home) {
        f["lost_by_repair"] = v;
    }
    if json_out {
        println!("{f}");
        return Some(Ok(ExitCode::SUCCESS));
    }
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    println!(
        "owner       process {} (live figures; `sluicegate stats` reads the files when no owner runs)",
        n("owner_pid")
    );
    println!(
        "depth       {} events ({} being taken, {} put and not committed)",
        n("depth"),
        n("in_flight_takes"),
        n("pending_puts")
    );
    println!(
        "capacity    {} events ({:.2}% full)",
        n("capacity"),
        f["fill_ratio"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!(
        "segments    {} in the ring: {} pinned, {} free",
        n("segments"),
        n("segments_pinned"),
        n("segments_free")
    );
    match f["checkpoint_age_ms"].as_u64() {
        Some(ms) => println!(
            "checkpoint  {} this run, the newest {:.0} s ago",
            n("checkpoints"),
            ms as f64 / 1e3
        ),
        None => println!("checkpoint  none since the owner opened the channel"),
    }
    println!(
        "traffic     puts {} of {} attempted, takes {} ({} take requests), {} commits in {} group syncs ({:.1} per sync, {} fsyncs)",
        n("put_successes"),
        n("put_attempts"),
        n("take_successes"),
        n("take_attempts"),
        n("commits_acknowledged"),
        n("group_syncs"),
        f["commits_per_fsync"].as_f64().unwrap_or(0.0),
        n("fsyncs")
    );
    let r = &f["recovery"];
    println!(
        "recovery    {} with {} events; dropped: {} torn commits, {} corrupt events, {} records lost",
        r["path"].as_str().unwrap_or("?"),
        r["events"].as_u64().unwrap_or(0),
        r["torn_commits_dropped"].as_u64().unwrap_or(0),
        r["corrupt_events_dropped"].as_u64().unwrap_or(0),
        r["records_lost"].as_u64().unwrap_or(0)
    );
    print_repaired(home);
    Some(Ok(ExitCode::SUCCESS))
}

/// Events lost by repairs and not yet acknowledged, as JSON, if any.
fn lost_json(home: &HomeArgs) -> Option<serde_json::Value> {
    let (events, reports) = crate::home::lost_by_repair(&home.dir)?;
    Some(json!({"events": events, "reports": reports}))
}

/// The `REPAIRED` line of `stats`: events lost by repairs, until acknowledged.
fn print_repaired(home: &HomeArgs) {
    if let Some((events, reports)) = crate::home::lost_by_repair(&home.dir) {
        println!(
            "REPAIRED    {events} queued events were lost to damage and removed by repair (report: {}); `sluicegate repair --acknowledge` clears this line",
            reports.join(", ")
        );
    }
}

/// `stats`.
pub fn stats(home: &HomeArgs, json_out: bool) -> Result<ExitCode, Fail> {
    if let Some(result) = live_stats(home, json_out) {
        return result;
    }
    let config = home.existing()?;
    let mut st = snapshot(&config, SnapshotOptions::default())?;
    let slots = scan::slots(&mut st)?;
    let newest = slots.iter().find(|s| s.newest).cloned();
    let age = newest
        .as_ref()
        .and_then(|s| s.file.as_ref())
        .and_then(|f| std::fs::metadata(f).ok()?.modified().ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs_f64());
    let spinner = crate::progress::spinner("recovering (read-only)");
    let core = recover(&config, st);
    spinner.finish_and_clear();
    let mut core = core?;
    let r = *core.recovery();
    let s: Stats = core.stats();
    let fill = s.depth as f64 / s.capacity.max(1) as f64;
    if json_out {
        println!(
            "{}",
            json!({
                "depth": s.depth,
                "capacity": s.capacity,
                "fill": fill,
                "segments": s.segments,
                "segments_pinned": s.segments_pinned,
                "segments_pinned_by_events": s.segments_pinned_by_events,
                "segments_free": s.segments_free,
                "newest_segment": s.newest_segment,
                "checkpoint": newest.as_ref().and_then(|n| n.ckpt_seq),
                "checkpoint_slot": newest.as_ref().map(|n| n.region),
                "checkpoint_age_seconds": age,
                "recovery": path_name(r.path),
                "replay": recovery_json(&r),
                "lost_by_repair": lost_json(home),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("depth       {} events", s.depth);
    println!(
        "capacity    {} events ({:.2}% full)",
        s.capacity,
        fill * 100.0
    );
    println!(
        "segments    {} in the ring: {} pinned ({} by queued events), {} free",
        s.segments, s.segments_pinned, s.segments_pinned_by_events, s.segments_free
    );
    match (&newest, age) {
        (Some(n), Some(age)) => println!(
            "checkpoint  #{} in the {} slot, written {age:.0} s ago",
            n.ckpt_seq.unwrap_or(0),
            n.region
        ),
        _ => println!("checkpoint  none"),
    }
    println!(
        "recovery    {}: {} segments replayed, {} records read ({} put commits, {} take commits), {} events from the checkpoint",
        path_name(r.path),
        r.segments_replayed,
        r.records_read,
        r.put_commits,
        r.take_commits,
        r.checkpoint_events
    );
    println!(
        "            dropped: {} torn commits, {} corrupt events, {} corrupt records skipped, {} records lost; {} uncommitted puts ignored",
        r.torn_commits_dropped,
        r.corrupt_events_dropped,
        r.corrupt_records_skipped,
        r.records_lost,
        r.uncommitted_puts
    );
    if let Some(lost) = lost_line(&config, &r) {
        println!("LOST        {lost}");
    }
    if r.newest_checkpoint_damaged {
        println!(
            "WARNING     the newest checkpoint's entries are damaged under a complete mark (an older one was used, nothing lost): the disk damaged them, or wrote out of order"
        );
    }
    print_repaired(home);
    Ok(ExitCode::SUCCESS)
}

/// What recovery says about queued events that cannot be read, if any, in words.
fn lost_line(config: &FileChannelConfig, r: &Recovery) -> Option<String> {
    if r.events_in_lost_segments == 0 {
        return None;
    }
    let file = config.layout().segment_path(r.first_lost_slot as usize);
    Some(format!(
        "{} queued events are in log files that are missing, cut short or damaged (the first: {}), and cannot be read; `sluicegate repair` removes them from the queue and keeps the rest",
        r.events_in_lost_segments,
        file.display()
    ))
}

/// Recovers on the snapshot, reads every queued event's record, writes a checkpoint into its
/// memory, and returns the queue (as pointers), the recovery report and the snapshot.
fn queue_after_recovery(
    config: &FileChannelConfig,
    st: SnapshotStorage,
) -> Result<(Vec<Pointer>, Recovery, SnapshotStorage), Fail> {
    let mut core = recover(config, st)?;
    core.check_queued_events()
        .map_err(|e| Fail::runtime(format!("reading the queued events fails: {e}")))?;
    core.checkpoint()
        .map_err(|e| Fail::runtime(format!("checkpoint in memory failed: {e}")))?;
    let r = *core.recovery();
    let (mut st, _) = core.into_parts();
    let slots = scan::slots(&mut st)?;
    let queue = match slots.iter().find(|s| s.newest) {
        Some(s) => scan::slot_entries(&mut st, s)?,
        None => Vec::new(),
    };
    Ok((queue, r, st))
}

/// `verify`: exit 0 clean, 1 corrupt.
pub fn verify(home: &HomeArgs, json_out: bool) -> Result<ExitCode, Fail> {
    let config = home.existing()?;
    let mut st = snapshot(&config, SnapshotOptions::default())?;
    let total = (st.segments() as u64) * st.segment_bytes();
    let bar = crate::progress::bytes("verifying", total);
    let mut report = scan::scan(&mut st, |r, _| bar.inc(16 + r.len as u64))?;
    bar.finish_and_clear();
    // The queue recovery rebuilds from the checkpoint must be the one full replay rebuilds.
    let mut agreement = serde_json::Value::Null;
    st.reset(SnapshotOptions::default());
    match queue_after_recovery(&config, st) {
        Err(f) => report.findings.push(scan::Finding {
            severity: Severity::Corruption,
            file: config.checkpoint_dir.display().to_string(),
            offset: 0,
            what: f.message,
            fix: None,
        }),
        Ok((with_ckpt, r1, mut st)) => {
            if let Some(lost) = lost_line(&config, &r1) {
                report.findings.push(scan::Finding {
                    severity: Severity::Corruption,
                    file: config.checkpoint_dir.display().to_string(),
                    offset: 0,
                    what: lost,
                    fix: None,
                });
            }
            st.reset(SnapshotOptions {
                hide_checkpoints: true,
            });
            match queue_after_recovery(&config, st) {
                Err(f) => report.findings.push(scan::Finding {
                    severity: Severity::Corruption,
                    file: "(log)".into(),
                    offset: 0,
                    what: format!("full replay without checkpoints: {}", f.message),
                    fix: None,
                }),
                Ok((replayed, _, _)) => {
                    agreement = json!({"recovery": path_name(r1.path), "events": with_ckpt.len(),
                                       "events_by_full_replay": replayed.len(),
                                       "agree": with_ckpt == replayed});
                    if with_ckpt != replayed {
                        let first = with_ckpt
                            .iter()
                            .zip(&replayed)
                            .position(|(a, b)| a != b)
                            .unwrap_or(with_ckpt.len().min(replayed.len()));
                        report.findings.push(scan::Finding {
                            severity: Severity::Corruption,
                            file: config.checkpoint_dir.display().to_string(),
                            offset: 0,
                            what: format!(
                                "recovery by {} rebuilds {} events, full replay of the log {}: they differ from position {first}",
                                path_name(r1.path),
                                with_ckpt.len(),
                                replayed.len()
                            ),
                            fix: None,
                        });
                    }
                }
            }
        }
    }
    let corrupt = report.corruptions();
    if json_out {
        println!(
            "{}",
            json!({
                "clean": corrupt == 0,
                "corruptions": corrupt,
                "warnings": report.findings.len() - corrupt,
                "records": report.records,
                "segments_in_log": report.segments.iter().filter(|s| s.in_log).count(),
                "slots": report.slots,
                "queue": agreement,
                "findings": report.findings,
            })
        );
    } else {
        println!(
            "{} records in {} segments; checkpoint slot {}, backup slot {}",
            report.records,
            report.segments.iter().filter(|s| s.in_log).count(),
            slot_word(&report, 0),
            slot_word(&report, 1)
        );
        if let Some(events) = agreement.get("events") {
            println!(
                "recovery ({}) and full replay agree on {} queued events: {}",
                agreement["recovery"].as_str().unwrap_or(""),
                events,
                if agreement["agree"] == true {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        for f in &report.findings {
            let tag = match f.severity {
                Severity::Corruption => "CORRUPT",
                Severity::Warning => "warning",
            };
            println!("{tag}: {} @ {}: {}", f.file, f.offset, f.what);
        }
        println!(
            "{}",
            if corrupt == 0 {
                "clean".to_string()
            } else {
                format!("{corrupt} corruption(s) found; `sluicegate repair` mends what it can")
            }
        );
    }
    Ok(if corrupt == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn slot_word(report: &scan::Scan, i: usize) -> String {
    report
        .slots
        .get(i)
        .map(|s| match s.ckpt_seq {
            Some(n) if s.state == "valid" => format!("valid (#{n})"),
            _ => s.state.to_string(),
        })
        .unwrap_or_default()
}

/// `dump`.
pub fn dump(home: &HomeArgs, json_out: bool) -> Result<ExitCode, Fail> {
    let config = home.existing()?;
    let mut st = snapshot(&config, SnapshotOptions::default())?;
    let stdout = std::io::stdout();
    let mut failed = None;
    let report = scan::scan(&mut st, |r, _| {
        use std::io::Write;
        let line = if json_out {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["type"] = "record".into();
            v.to_string()
        } else {
            let mut l = format!(
                "segment {} (slot {}) @{}: {} len {} wid {} txn {}",
                r.seq, r.slot, r.offset, r.kind, r.len, r.wid, r.txn
            );
            if let Some(b) = &r.body {
                l.push_str(&format!(" \"{b}\""));
            }
            if let Some(w) = r.synced_wid {
                let ptrs: Vec<String> = r.pointers.iter().map(scan::pointer_text).collect();
                l.push_str(&format!(" synced_wid {w} [{}]", ptrs.join(" ")));
            }
            l
        };
        if failed.is_none() {
            if let Err(e) = writeln!(stdout.lock(), "{line}") {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(crate::fail::io("cannot write stdout", e));
    }
    let mut entries = Vec::new();
    for s in &report.slots {
        entries.push(if s.state == "valid" {
            scan::slot_entries(&mut st, s)?
        } else {
            Vec::new()
        });
    }
    let ptr = scan::pointer_text;
    if json_out {
        for s in &report.segments {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["type"] = "segment".into();
            println!("{v}");
        }
        for (s, e) in report.slots.iter().zip(&entries) {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["type"] = "slot".into();
            v["queue"] = e.iter().map(ptr).collect::<Vec<_>>().into();
            println!("{v}");
        }
        for f in &report.findings {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            v["type"] = "finding".into();
            println!("{v}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for s in report.segments.iter().filter(|s| s.header != "absent") {
        println!(
            "segment slot {}: header {}{}{}; {} records ({} puts, {} put commits, {} take commits), end @{}{}",
            s.slot,
            s.header,
            s.seq.map(|q| format!(", seq {q}")).unwrap_or_default(),
            s.base_wid.map(|w| format!(", base wid {w}")).unwrap_or_default(),
            s.records,
            s.puts,
            s.put_commits,
            s.take_commits,
            s.end,
            if s.opened_by_a_run { ", first of a run" } else { "" }
        );
    }
    for (s, e) in report.slots.iter().zip(&entries) {
        print!("{} slot: {}", s.region, s.state);
        if let (Some(q), Some(seq), Some(off)) = (s.ckpt_seq, s.replay_seq, s.replay_offset) {
            print!(" #{q}, replay from segment {seq} @{off}");
        }
        if s.newest {
            print!(" (newest)");
        }
        println!();
        if !e.is_empty() {
            println!(
                "  queue ({} events): {}",
                e.len(),
                e.iter().map(ptr).collect::<Vec<_>>().join(" ")
            );
        }
    }
    for f in &report.findings {
        println!("{:?}: {} @ {}: {}", f.severity, f.file, f.offset, f.what);
    }
    Ok(ExitCode::SUCCESS)
}
