//! Real-process crash tests of the file channel: a child process runs random transactions on a
//! [`FileChannel`] and is killed with SIGKILL at a random moment; the parent reopens the
//! directories and checks the recovered queue with the same verdict as the simulation
//! ([`crate::model::judge`]).
//!
//! The child reports on standard output, one line per event, flushed at once:
//! - `ready`: the channel is open;
//! - `P id id ...` / `T id id ...`: a put or take commit is about to be made;
//! - `A`: that commit returned `Ok` (acknowledged); `R`: it failed and was rolled back.
//!
//! An announced commit without `A` or `R` was in flight at the kill: all or nothing.
//!
//! A SIGKILL loses no write already made (the page cache survives the process), so this checks
//! what a process crash can break: acknowledging before writing, state kept only in memory,
//! files half-created, checkpoints half-written. Power loss is the simulation's job.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sluicegate_file::{
    new_key_line, write_secret_file, AlgorithmChoice, EncryptionConfig, FileChannel,
    FileChannelConfig, FileChannelError, KeyConfig,
};

use crate::model::{decode_event, event_bytes, judge, InFlight};

/// The largest event the workload puts.
pub const MAX_EVENT: usize = 600;

/// The channel both processes open: small files so the log rolls and creates files often, a
/// checkpoint every few milliseconds so kills land in checkpoints, and capacity no more than
/// the transactions the parent can hold open to read the whole queue.
///
/// A directory holding [`KEY_FILE`] is a sealed run: its log and checkpoints are encrypted with
/// that key (see [`seal_dir`]), new log segments with the algorithm [`ALGORITHM_FILE`] names
/// (the file channel's default without it).
pub fn config(dir: &Path, checkpoint_interval_ms: u64) -> FileChannelConfig {
    let key_file = dir.join(KEY_FILE);
    let encryption = if key_file.exists() {
        let algorithm = match std::fs::read_to_string(dir.join(ALGORITHM_FILE)).as_deref() {
            Ok(XCHACHA) => AlgorithmChoice::XChaCha20Poly1305,
            Ok(GCM) => AlgorithmChoice::Aes256Gcm,
            _ => AlgorithmChoice::Auto,
        };
        EncryptionConfig {
            active_key: Some("kill".into()),
            keys: vec![KeyConfig {
                id: 7,
                alias: "kill".into(),
                key_file,
                password_file: None,
            }],
            algorithm,
        }
    } else {
        EncryptionConfig::default()
    };
    FileChannelConfig {
        encryption,
        capacity: 512,
        transaction_capacity: 16,
        max_transactions: 64,
        max_file_bytes: 64 * 1024,
        log_files: 16,
        // Fewer than the ring: released files beyond four are deleted, and later segments
        // take the kept ones' files by a rename, so kills land in both.
        kept_log_files: 4,
        max_event_bytes: MAX_EVENT as u32,
        minimum_required_space_bytes: 0,
        checkpoint_interval_ms,
        keep_alive_ms: 0,
        ..FileChannelConfig::in_dir(dir)
    }
}

/// The key file that makes a kill-test directory sealed.
pub const KEY_FILE: &str = "kill.key";

/// The file naming the algorithm a sealed kill-test directory's next run seals new log segments
/// with: `xchacha20-poly1305` or `aes-256-gcm`.
pub const ALGORITHM_FILE: &str = "kill.algorithm";
const XCHACHA: &str = "xchacha20-poly1305";
const GCM: &str = "aes-256-gcm";

/// Makes `dir` a sealed run's directory: a new random key in [`KEY_FILE`], unless one is there,
/// and the algorithm of the next run's new segments, drawn afresh every time: segments keep the
/// algorithm they were sealed with, so a directory's log ends up a mix of both, as when an
/// operator changes `encryption.algorithm` between restarts.
pub fn seal_dir(dir: &Path, rng: &mut impl Rng) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let algorithm = if rng.random_bool(0.5) { XCHACHA } else { GCM };
    let at = dir.join(ALGORITHM_FILE);
    std::fs::write(&at, algorithm).map_err(|e| format!("{}: {e}", at.display()))?;
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Ok(());
    }
    let line = new_key_line().map_err(|e| e.to_string())?;
    write_secret_file(&path, &line).map_err(|e| format!("{}: {e}", path.display()))
}

/// The child's side: random transactions until killed (or `steps` operations). Ids start at
/// `first_id`. Returns an error message if the channel misbehaves in a way the child can see.
pub fn child(dir: &Path, seed: u64, first_id: u64, steps: u64) -> Result<(), String> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let ch =
        FileChannel::open(config(dir, rng.random_range(1..8))).map_err(|e| format!("open: {e}"))?;
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    say("ready".into());
    let mut next_id = first_id;
    let mut buf = vec![0u8; MAX_EVENT];
    for _ in 0..steps {
        let take = rng.random_bool(0.45);
        let target = rng.random_range(1..=16);
        let mut tx = ch.begin().map_err(|e| format!("begin: {e}"))?;
        let mut ids = Vec::new();
        for _ in 0..target {
            if take {
                match tx.take(&mut buf) {
                    Ok(Some(n)) => match decode_event(&buf[..n], MAX_EVENT) {
                        Some(id) => ids.push(id),
                        None => {
                            return Err(format!("take delivered bytes never put: {:?}", &buf[..n]))
                        }
                    },
                    Ok(None) => break,
                    Err(e) => return Err(format!("take: {e}")),
                }
            } else {
                match tx.put(&event_bytes(next_id, MAX_EVENT)) {
                    Ok(()) => {
                        ids.push(next_id);
                        next_id += 1;
                    }
                    Err(FileChannelError::Full(_)) => break,
                    Err(e) => return Err(format!("put: {e}")),
                }
            }
        }
        if ids.is_empty() || rng.random_bool(0.15) {
            tx.rollback().map_err(|e| format!("rollback: {e}"))?;
            continue;
        }
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        say(format!(
            "{} {}",
            if take { "T" } else { "P" },
            list.join(" ")
        ));
        match tx.commit() {
            Ok(()) => say("A".into()),
            // A failed commit rolls the transaction back.
            Err(FileChannelError::Channel(e)) if e.is_full() => say("R".into()),
            Err(e) => return Err(format!("commit: {e}")),
        }
    }
    ch.close().map_err(|e| format!("close: {e}"))
}

/// What one round of the parent did.
#[derive(Debug, Default, Clone, Copy)]
pub struct KillOutcome {
    /// Children killed with SIGKILL (rounds where the child finished first are not counted).
    pub kills: u64,
    /// Recoveries checked.
    pub recoveries: u64,
    /// Commits acknowledged by children.
    pub acknowledged: u64,
    /// Kills that landed with a commit in flight.
    pub in_flight_at_kill: u64,
}

/// Rounds run on one set of directories before the next starts empty, so that kills also land
/// while log files are first created.
pub const ROUNDS_PER_DIR: u64 = 5;

/// How a round's child dies.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// SIGKILL from the parent this long after the child said `ready`.
    After(Duration),
    /// SIGKILL the child sends itself at the `n`th hit of a named crash point
    /// (`sluicegate_file::crash::POINTS`).
    AtPoint(&'static str, u64),
}

/// Steps a child told to die at a named point may run before the point counts as unreachable.
const POINT_STEPS: u64 = 60_000;

/// Runs `rounds` rounds under `root`: start the child, let it run a random while, SIGKILL it,
/// reopen, check. `child_exe` is the `crash-child` binary. Returns the first violation.
pub fn run_kills(
    child_exe: &Path,
    root: &Path,
    seed: u64,
    rounds: u64,
    sealed: bool,
    mut progress: impl FnMut(u64, &KillOutcome),
) -> Result<KillOutcome, String> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut outcome = KillOutcome::default();
    for round in 0..rounds {
        let fail = |what: String| {
            format!("seed {seed} round {round}: {what}\n  rerun: cargo xtask kill --seed {seed} --rounds {} (kill moments vary from run to run)", round + 1)
        };
        if round % ROUNDS_PER_DIR == 0 {
            model.clear();
        }
        let dir = &root.join(format!("dirs-{}", round / ROUNDS_PER_DIR));
        if sealed {
            seal_dir(dir, &mut rng).map_err(fail)?;
        }
        let child_seed: u64 = rng.random();
        // Half the kills come within 3 ms of the open, when the run's first log file is being
        // created and its first segment opened; the rest anywhere in 40 ms.
        let max_us = if rng.random_bool(0.5) { 3_000 } else { 40_000 };
        let death = Death::After(Duration::from_micros(rng.random_range(0..max_us)));
        let first_id = (round + 1) * 1_000_000;
        one_round(
            child_exe,
            dir,
            child_seed,
            first_id,
            death,
            &mut model,
            &mut outcome,
        )
        .map_err(fail)?;
        progress(round + 1, &outcome);
    }
    Ok(outcome)
}

/// The hits of each named crash point the deterministic rounds die at. The child runs until it
/// dies: its ring of sixteen files keeps four when they are released, so files keep being
/// deleted, renamed for new segments and made, and every hit comes.
pub const POINT_HITS: [u64; 5] = [1, 2, 3, 5, 7];

/// One round per named crash point and hit in [`POINT_HITS`], each on empty directories: the
/// child dies exactly there (random kills rarely land inside a window as short as a log file's
/// creation). A point the child never reaches is an error, so the list cannot rot.
pub fn run_crash_points(
    child_exe: &Path,
    root: &Path,
    seed: u64,
    sealed: bool,
    mut progress: impl FnMut(u64, &KillOutcome),
) -> Result<KillOutcome, String> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut outcome = KillOutcome::default();
    let mut round = 0;
    for point in sluicegate_file::crash::POINTS {
        for n in POINT_HITS {
            let child_seed: u64 = rng.random();
            let dir = &root.join(format!("point-{point}-{n}"));
            if sealed {
                seal_dir(dir, &mut rng)?;
            }
            let mut model = VecDeque::new();
            let death = Death::AtPoint(point, n);
            one_round(
                child_exe,
                dir,
                child_seed,
                1_000_000,
                death,
                &mut model,
                &mut outcome,
            )
            .map_err(|e| format!("crash point {point}:{n} (seed {seed}): {e}"))?;
            round += 1;
            progress(round, &outcome);
        }
    }
    Ok(outcome)
}

/// Starts a child on `dir`, kills it as `death` says, replays its report against `model`,
/// reopens `dir` and judges the recovery; `model` becomes what the recovered queue holds.
fn one_round(
    child_exe: &Path,
    dir: &Path,
    child_seed: u64,
    first_id: u64,
    death: Death,
    model: &mut VecDeque<u64>,
    outcome: &mut KillOutcome,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(child_exe);
    cmd.arg(dir)
        .arg(child_seed.to_string())
        .arg(first_id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Death::AtPoint(point, n) = death {
        cmd.arg(POINT_STEPS.to_string())
            .env("SLUICEGATE_CRASH_AT", format!("{point}:{n}"));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", child_exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let killed = match death {
        Death::After(wait) => {
            // Wait until the child has opened the channel, then let it run.
            match lines.next() {
                Some(Ok(l)) if l == "ready" => {}
                other => {
                    let _ = child.kill();
                    let out = child.wait_with_output().map_err(|e| e.to_string())?;
                    return Err(format!(
                        "child did not start: {other:?}; stderr: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            std::thread::sleep(wait);
            let finished_first = child.try_wait().map_err(|e| e.to_string())?.is_some();
            let _ = child.kill();
            !finished_first
        }
        // The child may die before it is ready (a point inside the open).
        Death::AtPoint(..) => true,
    };
    let mut report = Vec::new();
    for line in lines {
        report.push(line.map_err(|e| e.to_string())?);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let by_sigkill = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    match death {
        Death::After(_) if !killed && !status.success() => {
            return Err(format!("child failed: {status}: {stderr}"))
        }
        Death::AtPoint(..) if !by_sigkill => {
            return Err(format!(
                "the child was to die at the crash point but ended with {status}: {stderr}"
            ))
        }
        _ => {}
    }
    if killed {
        outcome.kills += 1;
    }
    let announced = replay(&report, model, &mut outcome.acknowledged)?;
    if announced.is_some() {
        outcome.in_flight_at_kill += 1;
    }
    // Recover and judge.
    let seen = read_all(dir)?;
    *model = judge(&seen, model, announced.as_ref())?;
    outcome.recoveries += 1;
    Ok(())
}

/// Replays a child's report against `model`: acknowledged puts join it, acknowledged takes
/// must come from its front. Counts acknowledgements into `acknowledged`; returns the commit
/// announced but neither acknowledged nor refused (in flight at the child's death).
pub(crate) fn replay(
    report: &[String],
    model: &mut VecDeque<u64>,
    acknowledged: &mut u64,
) -> Result<Option<InFlight>, String> {
    let mut announced: Option<InFlight> = None;
    for line in report {
        let mut words = line.split_whitespace();
        let word = words.next().unwrap_or_default();
        let ids: Result<Vec<u64>, String> = words
            .map(|w| w.parse().map_err(|_| format!("bad line {line:?}")))
            .collect();
        match word {
            "P" => announced = Some(InFlight::Put(ids?)),
            "T" => announced = Some(InFlight::Take(ids?)),
            "A" => {
                match announced.take() {
                    Some(InFlight::Put(ids)) => model.extend(ids),
                    Some(InFlight::Take(ids)) => {
                        let front: Vec<u64> = model.iter().take(ids.len()).copied().collect();
                        if front != ids {
                            return Err(format!(
                                "a take delivered {ids:?}, the model's front is {front:?}"
                            ));
                        }
                        model.drain(..ids.len());
                    }
                    None => return Err("acknowledgement of nothing".into()),
                }
                *acknowledged += 1;
            }
            "R" => announced = None,
            "ready" | "" => {}
            other => return Err(format!("unexpected report {other:?}")),
        }
    }
    Ok(announced)
}

/// Opens the channel and reads the whole queue without consuming it.
pub(crate) fn read_all(dir: &Path) -> Result<Vec<u64>, String> {
    let ch = FileChannel::open(FileChannelConfig {
        checkpoint_on_close: false,
        ..config(dir, 0)
    })
    .map_err(|e| format!("reopen after the kill: {e}"))?;
    if ch.recovery().newest_checkpoint_damaged {
        // Recovery used an older checkpoint and lost nothing, but neither a kill nor a power
        // cut can leave a complete mark over damaged entries unless a write reached the disk
        // before one it depended on.
        return Err(format!(
            "the newest checkpoint's complete mark stood over damaged entries: {:?}",
            ch.recovery()
        ));
    }
    let mut seen = Vec::new();
    let mut txns = Vec::new();
    let mut buf = vec![0u8; MAX_EVENT];
    'all: for _ in 0..64 {
        let mut tx = ch.begin().map_err(|e| format!("verify begin: {e}"))?;
        for _ in 0..16 {
            match tx.take(&mut buf).map_err(|e| format!("verify take: {e}"))? {
                Some(n) => match decode_event(&buf[..n], MAX_EVENT) {
                    Some(id) => seen.push(id),
                    None => {
                        return Err(format!("recovery delivered corrupt bytes {:?}", &buf[..n]))
                    }
                },
                None => {
                    txns.push(tx);
                    break 'all;
                }
            }
        }
        txns.push(tx);
    }
    let skipped = ch.stats().channel.corrupt_events_skipped;
    drop(txns);
    if skipped != 0 {
        return Err(format!(
            "{skipped} committed events were unreadable after recovery"
        ));
    }
    Ok(seen)
}
