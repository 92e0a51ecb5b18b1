//! Power cuts on real files: the kill tests' child runs its random transactions on a file
//! channel inside the power-cut filesystem ([`sluicegate_powerfs`]), the power goes at a
//! chosen sync, and what the disk holds afterwards is judged by the same verdict as the kill
//! tests and the simulation ([`crate::model::judge`]).
//!
//! One round: a child starts on the mount; a cut is armed at its `k`th sync (that sync reaches
//! the disk or not, drawn per round); once the cut falls the child is killed. Then several
//! fates of that one moment are judged: each is written out as a plain directory tree
//! ([`PowerMount::materialize`]) and the channel recovered from it and read whole. The last
//! fate is applied to the mount itself ([`PowerMount::power_cycle`]), the channel recovered
//! there, through FUSE, and the next round's child continues on what it left, so recoveries of
//! recoveries are cut too.
//!
//! Unlike a SIGKILL, a cut here loses every write no `fsync`/`fdatasync` covered and every
//! create, rename and unlink no directory sync covered, in any combination the fate draws.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sluicegate_powerfs::{CutPoint, Fate, PowerMount};

use crate::kill::{read_all, replay, ROUNDS_PER_DIR};
use crate::model::judge;

/// What the power-cut rounds did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PowerOutcome {
    /// Rounds run (children started).
    pub rounds: u64,
    /// Disk states judged after a cut: one per fate of each round's moment.
    pub cuts: u64,
    /// Rounds whose cut fell at the armed sync (the rest: the child finished first, and the
    /// cut came after its clean close).
    pub cuts_at_sync: u64,
    /// Of those, cuts where the armed sync itself reached the disk.
    pub cuts_applied: u64,
    /// Commits the children acknowledged.
    pub acknowledged: u64,
    /// Rounds that ended with a commit in flight.
    pub in_flight_at_cut: u64,
    /// Uncovered pages lost, kept whole and torn, and entry operations lost and kept, over
    /// every fate judged.
    pub pages_lost: u64,
    /// See `pages_lost`.
    pub pages_kept: u64,
    /// See `pages_lost`.
    pub pages_torn: u64,
    /// See `pages_lost`.
    pub entry_ops_lost: u64,
    /// See `pages_lost`.
    pub entry_ops_kept: u64,
}

impl PowerOutcome {
    fn count(&mut self, c: sluicegate_powerfs::Counters) {
        self.cuts += c.cuts;
        self.pages_lost += c.pages_lost;
        self.pages_kept += c.pages_kept;
        self.pages_torn += c.pages_torn;
        self.entry_ops_lost += c.entry_ops_lost;
        self.entry_ops_kept += c.entry_ops_kept;
    }
}

/// How far into a child's run its cut falls.
#[derive(Debug, Clone, Copy)]
pub enum CutAt {
    /// A sync drawn at random from the first `n` of each round (every fourth round from the
    /// first 20: the child's open, recovering what the last cut left).
    RandomSync(u64),
    /// Every sync of a child that runs `steps` transactions: one round per sync, from the
    /// first to the last its dry run made, each on fresh directories.
    EverySync {
        /// Transactions each child runs.
        steps: u64,
    },
    /// A sync drawn at random from the first `n` syncs of the checkpoint slot files
    /// (`checkpoint.slot`, `backup.slot`, one drawn per round): a checkpoint's own steps.
    CheckpointSync(u64),
}

/// Runs power-cut rounds of the kill tests' child (`child_exe`) on `mount`, judging `fates`
/// fates of each cut (at least 1), with scratch space in `scratch`. Returns the first
/// violation, with the seed and round to replay it.
pub fn run_power_cuts(
    child_exe: &Path,
    mount: &mut PowerMount,
    scratch: &Path,
    seed: u64,
    rounds: u64,
    at: CutAt,
    fates: u64,
) -> Result<PowerOutcome, String> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut outcome = PowerOutcome::default();
    let mut model: VecDeque<u64> = VecDeque::new();
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let (points, steps, per_dir): (Vec<u64>, u64, u64) = match at {
        CutAt::RandomSync(n) | CutAt::CheckpointSync(n) => (
            // Every fourth cut of `RandomSync` falls among the child's first 20 syncs: in its
            // open, which recovers what the last cut left (a cut during a recovery).
            (0..rounds)
                .map(|r| {
                    let within = match at {
                        CutAt::RandomSync(_) if r % 4 == 1 => n.min(20),
                        _ => n,
                    };
                    rng.random_range(1..=within.max(1))
                })
                .collect(),
            u64::MAX,
            ROUNDS_PER_DIR,
        ),
        CutAt::EverySync { steps } => {
            let dir = fresh_dir(mount, "dry-run")?;
            let syncs = dry_run(child_exe, mount, &dir, rng.random(), steps)?;
            ((1..=syncs).take(rounds as usize).collect(), steps, 1)
        }
    };
    for (round, &k) in points.iter().enumerate() {
        let round = round as u64;
        let fail = |what: String| {
            format!("power cuts, seed {seed} round {round} (cut at sync {k}): {what}")
        };
        if round % per_dir == 0 {
            model.clear();
        }
        let dir = if round % per_dir == 0 {
            if round > 0 {
                // The last group's home goes, durably, so every cut's tree stays small.
                let last = mount.path().join(format!("dirs-{}", round / per_dir - 1));
                remove_tree(&last).map_err(fail)?;
                sync_root(mount).map_err(fail)?;
            }
            fresh_dir(mount, &format!("dirs-{}", round / per_dir)).map_err(fail)?
        } else {
            mount.path().join(format!("dirs-{}", round / per_dir))
        };
        let applied = rng.random_bool(0.5);
        let file = match at {
            CutAt::CheckpointSync(_) => Some(if rng.random_bool(0.5) {
                "checkpoint.slot"
            } else {
                "backup.slot"
            }),
            _ => None,
        };
        mount.arm(CutPoint {
            sync: if file.is_some() { k } else { mount.syncs() + k },
            applied,
            file,
        });
        let child_seed: u64 = rng.random();
        let first_id = (round + 1) * 1_000_000;
        let (report, at_sync) =
            run_child(child_exe, mount, &dir, child_seed, first_id, steps).map_err(fail)?;
        outcome.rounds += 1;
        if at_sync {
            outcome.cuts_at_sync += 1;
            outcome.cuts_applied += u64::from(applied);
        }
        let mut acknowledged = 0;
        let announced = replay(&report, &mut model, &mut acknowledged).map_err(fail)?;
        outcome.acknowledged += acknowledged;
        outcome.in_flight_at_cut += u64::from(announced.is_some());
        let name = dir.file_name().ok_or("no directory name")?.to_owned();
        // Every fate but the last, judged on a copy of the disk.
        for f in 1..fates.max(1) {
            let fate = Fate::random(&mut rng);
            let out = scratch.join(format!("cut-{f}"));
            remove_tree(&out).map_err(fail)?;
            let counted = mount
                .materialize(fate, &mut rng, &out)
                .map_err(|e| fail(format!("materialize {fate:?}: {e}")))?;
            outcome.count(counted);
            let seen = read_all(&out.join(&name)).map_err(|e| fail(format!("{fate:?}: {e}")))?;
            judge(&seen, &model, announced.as_ref()).map_err(|e| fail(format!("{fate:?}: {e}")))?;
            remove_tree(&out).map_err(fail)?;
        }
        // The last fate on the mount itself; the next round goes on from it.
        let fate = Fate::random(&mut rng);
        let before = mount.counters();
        mount
            .power_cycle(fate, &mut rng)
            .map_err(|e| fail(format!("power cycle: {e}")))?;
        outcome.count(mount.counters().since(before));
        let seen = read_all(&dir).map_err(|e| fail(format!("{fate:?} on the mount: {e}")))?;
        model = judge(&seen, &model, announced.as_ref())
            .map_err(|e| fail(format!("{fate:?} on the mount: {e}")))?;
    }
    Ok(outcome)
}

/// A new directory on the mount, made durable (its parent synced), as an operator's `mkdir`
/// followed by a sync would be: the channel's own durability starts inside it.
fn fresh_dir(mount: &PowerMount, name: &str) -> Result<std::path::PathBuf, String> {
    let dir = mount.path().join(name);
    remove_tree(&dir)?;
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    sync_root(mount)?;
    Ok(dir)
}

/// Makes the mount's top directory's entries durable.
fn sync_root(mount: &PowerMount) -> Result<(), String> {
    std::fs::File::open(mount.path())
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("sync {}: {e}", mount.path().display()))
}

fn remove_tree(p: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Runs a child of `steps` transactions to its end with no cut; the syncs it made.
fn dry_run(
    child_exe: &Path,
    mount: &PowerMount,
    dir: &Path,
    seed: u64,
    steps: u64,
) -> Result<u64, String> {
    let before = mount.syncs();
    let out = Command::new(child_exe)
        .arg(dir)
        .arg(seed.to_string())
        .arg("1000000")
        .arg(steps.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", child_exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the dry run failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    remove_tree(dir)?;
    Ok(mount.syncs() - before)
}

/// How long a child may run before its armed cut counts as never coming: far longer than any
/// round needs, so a slow machine runs longer, never red.
const CHILD_LIMIT: Duration = Duration::from_secs(600);

/// Starts a child on `dir`, waits for the armed cut (or the child's end), kills it and returns
/// its report and whether the cut fell at the armed sync.
fn run_child(
    child_exe: &Path,
    mount: &PowerMount,
    dir: &Path,
    seed: u64,
    first_id: u64,
    steps: u64,
) -> Result<(Vec<String>, bool), String> {
    let mut child = Command::new(child_exe)
        .arg(dir)
        .arg(seed.to_string())
        .arg(first_id.to_string())
        .arg(steps.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", child_exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // The report is read on a thread, so the child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Bounded by CHILD_LIMIT: poll for the cut or the child's end.
    let start = std::time::Instant::now();
    let at_sync = loop {
        if mount.wait_cut(Duration::from_millis(20)) {
            break true;
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            // The child ended first; a cut still follows (an armed sync it never reached).
            break mount.is_cut();
        }
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            return Err(format!("no cut and no end after {CHILD_LIMIT:?}"));
        }
    };
    mount.cut_now();
    let _ = child.kill();
    let status = child.wait().map_err(|e| e.to_string())?;
    let report = reader.join().map_err(|_| "the report reader panicked")?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    // Before the cut the child must not fail; after it, I/O errors are what it should see.
    if !at_sync && !status.success() && status.code().is_some() {
        return Err(format!("child failed before any cut: {status}: {stderr}"));
    }
    Ok((report, at_sync))
}
