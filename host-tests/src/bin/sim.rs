//! The crash-simulation runner behind `cargo xtask sim`.
//!
//! ```text
//! sim [--seeds N] [--exhaustive N] [--first-seed S] [--word W] [--steps N] [--seed S --cut K]
//!     [--core | --flash | --flash-async] [--unstable-reads [--and-damaged-checkpoints]]
//!     [--jobs N]
//! ```
//!
//! Each run is made on two media unless one is chosen: `--core`, the core's simulated storage
//! (`SimStorage`: unsynced writes lost or kept at a cut), and `--flash`, the flash adapter over
//! simulated NOR parts (`SimNor`: torn programs, garbage erases, unstable reads).
//! `--flash-async` runs the flash adapter's async side (`AsyncFlashSim`) instead: its writes and
//! erases staged and made after each commit and open, on the same parts behind `Yielding`.
//! `--unstable-reads` makes bits an interrupted program left on the NOR parts read differently
//! from one read to the next. Every run then has checkpoint regions, which are not damaged on
//! purpose, since the checkpoint an open writes is what keeps the verdict on such bits;
//! `--and-damaged-checkpoints` keeps the usual scenarios (some without checkpoints, some with
//! damaged ones) and finds violations (see docs/guarantees.md, "On NOR flash").
//!
//! `--seeds N` runs N random seeds of several epochs, each ending in a power cut at a random
//! point; `--exhaustive N` runs N seeds with a cut at every mutation of their first epoch;
//! `--word W` picks the medium's write size (1, 4, 8, 16 or 32; default: all of them);
//! `--seed S [--cut K]` replays one failing run (the failure prints the command). It prints
//! the number of crash points and of violations, and exits non-zero on the first violation.
//! Each write size on each medium is an independent run of its seeds: `--jobs N` makes N of
//! them at once (default: the processors this process may use), and the first violation
//! stops the others.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sluicegate_sim::model::{
    exhaustive_on, run_on, AsyncFlashSim, FlashSim, Medium, Outcome, Scenario,
};
use sluicegate_sim::SimStorage;

const ERASE: usize = 256;
const WORDS: [usize; 5] = [1, 4, 8, 16, 32];

struct Args {
    seeds: u64,
    exhaustive: u64,
    first_seed: u64,
    word: Option<usize>,
    media: Vec<Media>,
    unstable_reads: bool,
    damage_with_unstable_reads: bool,
    steps: usize,
    replay: Option<(u64, Option<u64>)>,
    jobs: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 0,
        exhaustive: 0,
        first_seed: 0,
        word: None,
        media: vec![Media::Core, Media::Flash],
        unstable_reads: false,
        damage_with_unstable_reads: false,
        steps: 60,
        replay: None,
        jobs: std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut seed = None;
    let mut cut = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = value("--seeds")?,
            "--exhaustive" => a.exhaustive = value("--exhaustive")?,
            "--first-seed" => a.first_seed = value("--first-seed")?,
            "--steps" => a.steps = value("--steps")? as usize,
            "--word" => {
                let w = value("--word")? as usize;
                if !WORDS.contains(&w) {
                    return Err(format!("--word must be one of {WORDS:?}"));
                }
                a.word = Some(w);
            }
            "--core" => a.media = vec![Media::Core],
            "--flash" => a.media = vec![Media::Flash],
            "--flash-async" => a.media = vec![Media::FlashAsync],
            "--unstable-reads" => a.unstable_reads = true,
            "--and-damaged-checkpoints" => a.damage_with_unstable_reads = true,
            "--seed" => seed = Some(value("--seed")?),
            "--cut" => cut = Some(value("--cut")?),
            "--jobs" => {
                a.jobs = value("--jobs")? as usize;
                if a.jobs == 0 {
                    return Err("--jobs must be at least 1".into());
                }
            }
            "-h" | "--help" => {
                return Err("usage: sim [--seeds N] [--exhaustive N] [--first-seed S] [--word W] [--steps N] [--seed S --cut K] [--core | --flash | --flash-async] [--unstable-reads [--and-damaged-checkpoints]] [--jobs N]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    match (seed, cut) {
        (Some(s), k) => a.replay = Some((s, k)),
        (None, None) => {}
        (None, Some(_)) => return Err("--cut needs --seed".into()),
    }
    Ok(a)
}

/// Which simulated medium the channel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// The core's `SimStorage`.
    Core,
    /// The flash adapter over `SimNor` parts.
    Flash,
    /// The flash adapter's async side over `SimNor` parts behind `Yielding`.
    FlashAsync,
}

impl Media {
    fn name(self) -> &'static str {
        match self {
            Media::Core => "storage",
            Media::Flash => "flash",
            Media::FlashAsync => "flash-async",
        }
    }
}

/// Dispatches to the medium with write size `word`.
fn with_word(
    media: Media,
    word: usize,
    f: &mut dyn FnMut(&dyn Runner) -> Result<(), String>,
) -> Result<(), String> {
    match (media, word) {
        (Media::Core, 1) => f(&On::<SimStorage<1, ERASE>>::default()),
        (Media::Core, 4) => f(&On::<SimStorage<4, ERASE>>::default()),
        (Media::Core, 8) => f(&On::<SimStorage<8, ERASE>>::default()),
        (Media::Core, 16) => f(&On::<SimStorage<16, ERASE>>::default()),
        (Media::Core, 32) => f(&On::<SimStorage<32, ERASE>>::default()),
        (Media::Flash, 1) => f(&On::<FlashSim<1, ERASE>>::default()),
        (Media::Flash, 4) => f(&On::<FlashSim<4, ERASE>>::default()),
        (Media::Flash, 8) => f(&On::<FlashSim<8, ERASE>>::default()),
        (Media::Flash, 16) => f(&On::<FlashSim<16, ERASE>>::default()),
        (Media::Flash, 32) => f(&On::<FlashSim<32, ERASE>>::default()),
        (Media::FlashAsync, 1) => f(&On::<AsyncFlashSim<1, ERASE>>::default()),
        (Media::FlashAsync, 4) => f(&On::<AsyncFlashSim<4, ERASE>>::default()),
        (Media::FlashAsync, 8) => f(&On::<AsyncFlashSim<8, ERASE>>::default()),
        (Media::FlashAsync, 16) => f(&On::<AsyncFlashSim<16, ERASE>>::default()),
        (Media::FlashAsync, 32) => f(&On::<AsyncFlashSim<32, ERASE>>::default()),
        _ => Err(format!("unsupported word size {word}")),
    }
}

trait Runner {
    fn run(
        &self,
        s: &Scenario,
        seed: u64,
        cut: Option<u64>,
        epochs: usize,
    ) -> Result<Outcome, String>;
    fn exhaustive(&self, s: &Scenario, seed: u64) -> Result<(u64, Outcome), String>;
}

struct On<M>(std::marker::PhantomData<M>);

impl<M> Default for On<M> {
    fn default() -> Self {
        On(std::marker::PhantomData)
    }
}

impl<M: Medium> Runner for On<M> {
    fn run(
        &self,
        s: &Scenario,
        seed: u64,
        cut: Option<u64>,
        epochs: usize,
    ) -> Result<Outcome, String> {
        run_on::<M>(s, seed, cut, epochs)
    }
    fn exhaustive(&self, s: &Scenario, seed: u64) -> Result<(u64, Outcome), String> {
        exhaustive_on::<M>(s, seed)
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let words: Vec<usize> = args.word.map_or(WORDS.to_vec(), |w| vec![w]);
    let mut crash_points = 0u64;
    let mut total = Outcome::default();
    let result = (|| -> Result<(), String> {
        if let Some((seed, cut)) = args.replay {
            for (&w, &m) in words
                .iter()
                .flat_map(|w| args.media.iter().map(move |m| (w, m)))
            {
                let scenario = scenario(seed, &args);
                with_word(m, w, &mut |r| {
                    // Exhaustive runs have two epochs after their cut; random ones four.
                    let epochs = if cut.is_some() { 2 } else { 4 };
                    let o = r.run(&scenario, seed, cut, epochs)?;
                    println!("{} word {w}: seed {seed} cut {cut:?}: ok ({o:?})", m.name());
                    crash_points += o.crashes;
                    total += o;
                    Ok(())
                })?;
            }
            return Ok(());
        }
        let runs: Vec<(usize, Media)> = words
            .iter()
            .flat_map(|&w| args.media.iter().map(move |&m| (w, m)))
            .collect();
        // Each worker takes the next run until none is left or one has failed; results are
        // summed in the runs' order, and the first failure in that order is reported.
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; runs.len()]);
        std::thread::scope(|s| {
            for _ in 0..args.jobs.min(runs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (w, m) = runs[i];
                    let result = run_seeds(m, w, &args, started, &stop);
                    match &result {
                        // A run another's violation stopped early has no full count to show.
                        Ok(_) if stop.load(Ordering::Relaxed) => {}
                        Ok((points, _)) => println!(
                            "{:>7} word {w:>2} bytes: {points} crash points ({} exhaustive seeds, {} random seeds)",
                            m.name(),
                            args.exhaustive,
                            args.seeds
                        ),
                        Err(_) => stop.store(true, Ordering::Relaxed),
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut failure = None;
        for r in results.into_iter().flatten() {
            match r {
                Ok((points, o)) => {
                    crash_points += points;
                    total += o;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    })();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!(
                "sim: {} recoveries checked: {} commits, {} events delivered, {} log-full refusals; recovery dropped {} torn commits, skipped {} damaged records, ignored {} uncommitted puts; decay checks refused {} damaged events",
                total.recoveries, total.commits, total.delivered, total.log_full,
                total.torn_commits_dropped, total.corrupt_records_skipped, total.uncommitted_puts,
                total.decayed_events_refused
            );
            let [new, checkpoint, backup, replay] = total.paths;
            println!(
                "sim: {} checkpoints written; recoveries from: a new log {new}, the checkpoint {checkpoint}, the backup {backup}, a full replay {replay}; {} runs went on in the newest segment",
                total.checkpoints, total.segments_continued
            );
            println!("sim: {crash_points} crash points, 0 violations ({secs:.1} s)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sim: VIOLATION: {e}");
            println!(
                "sim: {crash_points} crash points before the violation, 1 violation ({secs:.1} s)"
            );
            ExitCode::FAILURE
        }
    }
}

/// What the seeds of one write size on one medium found: crash points and outcome, or the
/// first violation.
type RunResult = Result<(u64, Outcome), String>;

/// The seeds of one write size on one medium: crash points and outcome, or the first
/// violation. Stops early, with what it has, once `stop` is set by another run's violation.
fn run_seeds(m: Media, w: usize, args: &Args, started: Instant, stop: &AtomicBool) -> RunResult {
    let mut points = 0;
    let mut total = Outcome::default();
    let mut progress = Progress::new(m.name(), w, args.exhaustive + args.seeds, started);
    with_word(m, w, &mut |r| {
        for i in 0..args.exhaustive {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let seed = args.first_seed + i;
            let (n, o) = r.exhaustive(&scenario(seed, args), seed)?;
            points += n;
            total += o;
            progress.tick(i + 1, points);
        }
        for i in 0..args.seeds {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let seed = args.first_seed + 1_000_000 + i;
            let o = r.run(&scenario(seed, args), seed, None, 4)?;
            points += o.crashes;
            total += o;
            progress.tick(args.exhaustive + i + 1, points);
        }
        Ok(())
    })?;
    Ok((points, total))
}

/// Prints a line to stderr at most every ten seconds, so a run of minutes shows it is alive.
struct Progress {
    media: &'static str,
    word: usize,
    total: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(media: &'static str, word: usize, total: u64, started: Instant) -> Self {
        Progress {
            media,
            word,
            total,
            started,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: u64, points: u64) {
        if self.last.elapsed().as_secs() >= 10 && done < self.total {
            eprintln!(
                "  {} word {}: {done}/{} seeds, {points} crash points, {:.0} s",
                self.media,
                self.word,
                self.total,
                self.started.elapsed().as_secs_f64()
            );
            self.last = Instant::now();
        }
    }
}

/// The scenario for `seed`, with the medium options of the command line.
fn scenario(seed: u64, args: &Args) -> Scenario {
    let mut s = Scenario::varied(seed, args.steps);
    s.unstable_reads = args.unstable_reads;
    if args.unstable_reads && !args.damage_with_unstable_reads {
        // The checkpoint an open writes is what makes the verdict on a half-programmed tail
        // final: a channel without checkpoint regions has no such promise, and damage to that
        // checkpoint as well is a second fault, outside it (docs/guarantees.md, "On NOR flash").
        if s.slot_bytes == 0 {
            s = s.with_checkpoints(1 + (seed / 4 % 3) as u32);
        }
        s.damage_checkpoints = 0.0;
    }
    s
}
