//! Power cuts under a real file channel: the kill tests' child runs on the power-cut
//! filesystem, the power goes at its syncs, and every disk state a cut can leave (unsynced
//! pages lost, kept, torn; unsynced directory entries lost or kept) is recovered and judged:
//! no acknowledged commit lost, no committed take delivered again, in-flight commits all or
//! nothing, FIFO order, no corrupt byte. Needs `/dev/fuse` and root (CI has both).
//!
//! `SLUICEGATE_POWER_ROUNDS` and `SLUICEGATE_POWER_FATES` set the random rounds and the fates
//! judged per cut (1,000 and 100 by default: 100,000 disk states judged); `cargo xtask power
//! --rounds N --fates F` runs them at any length.

use std::sync::Mutex;

use sluicegate_powerfs::TempMount;
use sluicegate_sim::power::{run_power_cuts, CutAt};

/// The tests here run one at a time, as the kill tests do: a child forked by one test shares,
/// until it execs, the directory lock the other test's judging channel holds, and the other
/// test's next child then finds its home "in use" (seen once here).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Removes the scratch space when the test ends, passed or failed.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Cuts at random syncs of children that run until the power goes, several fates judged per
/// cut, each round continuing on what the last cut left.
#[test]
fn power_cuts_at_random_syncs_lose_nothing_acknowledged() {
    let rounds = from_env("SLUICEGATE_POWER_ROUNDS", 1000);
    let fates = from_env("SLUICEGATE_POWER_FATES", 100);
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut m) = TempMount::new_or_skip() else {
        return;
    };
    let scratch = Scratch(scratch_dir(&m));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let outcome = run_power_cuts(
        exe,
        &mut m,
        &scratch.0,
        21,
        rounds,
        CutAt::RandomSync(300),
        fates,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{outcome:?}");
    assert_eq!(outcome.rounds, rounds);
    assert_eq!(outcome.cuts, rounds * fates);
    assert!(
        outcome.acknowledged > rounds,
        "the children did work: {outcome:?}"
    );
    assert!(outcome.cuts_at_sync > rounds / 2, "{outcome:?}");
    assert!(
        outcome.pages_lost > 0 && outcome.pages_torn > 0 && outcome.entry_ops_lost > 0,
        "the fates took something: {outcome:?}"
    );
}

/// A cut at every sync of a small workload (a child of 12 transactions on a new home, so the
/// open's own syncs are cut too), each with several fates.
#[test]
fn power_cuts_at_every_sync_of_a_small_workload_lose_nothing_acknowledged() {
    let fates = from_env("SLUICEGATE_POWER_FATES", 100).min(32);
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut m) = TempMount::new_or_skip() else {
        return;
    };
    let scratch = Scratch(scratch_dir(&m).with_extension("every"));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let outcome = run_power_cuts(
        exe,
        &mut m,
        &scratch.0,
        22,
        u64::MAX,
        CutAt::EverySync { steps: 12 },
        fates,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{outcome:?}");
    assert!(
        outcome.rounds >= 12,
        "a sync per commit at least: {outcome:?}"
    );
    assert!(
        outcome.cuts_at_sync >= outcome.rounds * 9 / 10,
        "the cuts fall where they are armed: {outcome:?}"
    );
}

/// Scratch space for the disk states judged off the mount: in memory when `/dev/shm` is there,
/// since each recovery syncs and a disk's syncs would set the pace.
fn scratch_dir(m: &TempMount) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(format!("sluicegate-power-{}", std::process::id()))
    } else {
        m.dir().join("scratch")
    }
}

/// Cuts aimed at the checkpoint's own steps: at a random one of the first 40 syncs of a
/// checkpoint slot file, several fates each, so a complete mark that reaches the disk before
/// its entries is found (the judge refuses a recovery whose newest checkpoint's complete mark
/// stood over damaged entries).
#[test]
fn power_cuts_at_checkpoint_syncs_lose_nothing_acknowledged() {
    let rounds = from_env("SLUICEGATE_POWER_CHECKPOINT_ROUNDS", 200);
    let fates = from_env("SLUICEGATE_POWER_FATES", 100).min(20);
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut m) = TempMount::new_or_skip() else {
        return;
    };
    let scratch = Scratch(scratch_dir(&m).with_extension("checkpoint"));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let outcome = run_power_cuts(
        exe,
        &mut m,
        &scratch.0,
        23,
        rounds,
        CutAt::CheckpointSync(40),
        fates,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{outcome:?}");
    assert!(
        outcome.cuts_at_sync > rounds * 9 / 10,
        "the cuts fall at checkpoint syncs: {outcome:?}"
    );
}
