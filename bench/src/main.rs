//! `sluicegate-bench` (run it as `cargo xtask bench`): Sluicegate against the disk's own
//! `fdatasync` ceiling and against queue-file, redb, SQLite and fjall, all with durable commits, in one
//! run on one directory; recovery of a full channel; the longest producer stall during a
//! checkpoint; RAM per queued event; and, on simulated NOR flash with a datasheet's timing,
//! Sluicegate's flash adapter against sequential-storage's queue. Prints a markdown table and
//! writes it, with a plot, where `--out` says (or into docs/ with `--docs`).

mod aead;
mod agent;
mod flash;
mod recovery;
mod report;
mod restarts;
mod scenarios;
mod steady;
mod systems;

use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use scenarios::{Cell, Measured};
use systems::{Kind, Result};

/// Counts live heap bytes, for RAM per queued event.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator with the caller's own layout
// and pointer; the counter is only arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        let p = unsafe { SystemAlloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { SystemAlloc.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence the system's) with `layout`.
        unsafe { SystemAlloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc` and `alloc`.
        let p = unsafe { SystemAlloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes live now.
pub fn heap_live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Parser, Debug)]
#[command(
    name = "sluicegate-bench",
    about = "Sluicegate's benchmarks (cargo xtask bench)"
)]
struct Args {
    /// The whole matrix: event sizes 100 B, 1 KiB and 16 KiB, recovery of 1,000,000 events,
    /// 2 s per measurement (about 11 minutes here). Without it, the quick mode: 1 KiB events,
    /// recovery of 100,000 events, 0.5 s per measurement (under 3 minutes).
    #[arg(long, conflicts_with = "smoke")]
    full: bool,
    /// A few seconds of everything with tiny sizes, checking every system returns what it was
    /// given: for CI, whose figures mean nothing on a shared machine.
    #[arg(long)]
    smoke: bool,
    /// Where the systems write (created; emptied before and after). Put it on the disk to
    /// measure.
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Where the table (`benchmarks.md`) and the plot (`throughput.png`) go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also write the results into docs/benchmarks.md (between its markers) and the plot to
    /// docs/benchmarks-throughput.png.
    #[arg(long)]
    docs: bool,
    /// Only these sections (comma-separated): server, sealing, recovery, flash, aead, agent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs SYSTEM for N put commits and N take commits of one 100-byte event each, and exits:
    /// run it under `strace -c` to count the syncs each commit costs (`cargo xtask bench
    /// --syncs`). SYSTEM `unsynced-control` is the ceiling without its sync.
    #[arg(long, value_names = ["SYSTEM", "N"], num_args = 2)]
    probe_syncs: Vec<String>,
}

/// The sizes of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    pub sizes: Vec<usize>,
    pub batches: Vec<usize>,
    pub threads: Vec<usize>,
    pub duration: Duration,
    pub max_bytes: u64,
    pub recovery_events: u64,
    pub stall_secs: f64,
    pub flash_readings: u64,
    /// The blocks the report cuts the interleaved sealing run's turns into, for its spread.
    pub sealing_blocks: usize,
    /// Short runs (open, put one line, commit, close) into one home with the defaults.
    pub restarts: u64,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        if args.smoke {
            Plan {
                mode: "smoke",
                sizes: vec![100],
                batches: vec![1, 100],
                threads: vec![1, 2],
                duration: Duration::from_millis(100),
                max_bytes: 4 << 20,
                recovery_events: 2_000,
                stall_secs: 0.6,
                flash_readings: 512,
                sealing_blocks: 2,
                restarts: 100,
            }
        } else if args.full {
            Plan {
                mode: "full",
                sizes: vec![100, 1024, 16384],
                batches: vec![1, 10, 100, 1000],
                threads: vec![1, 8],
                duration: Duration::from_secs(2),
                max_bytes: 512 << 20,
                recovery_events: 1_000_000,
                stall_secs: 3.0,
                flash_readings: 65_536,
                sealing_blocks: 8,
                restarts: 10_000,
            }
        } else {
            Plan {
                mode: "quick",
                sizes: vec![1024],
                batches: vec![1, 10, 100, 1000],
                threads: vec![1, 8],
                duration: Duration::from_millis(500),
                max_bytes: 64 << 20,
                recovery_events: 100_000,
                stall_secs: 1.0,
                flash_readings: 4_096,
                sealing_blocks: 8,
                restarts: 2_000,
            }
        }
    }

    fn cells(&self) -> Vec<Cell> {
        let mut v = Vec::new();
        for &size in &self.sizes {
            for &threads in &self.threads {
                for &batch in &self.batches {
                    v.push(Cell {
                        size,
                        batch,
                        threads,
                    });
                }
            }
        }
        v
    }
}

/// Progress on stderr: a bar on a terminal, one line per step otherwise (CI logs).
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Progress {
            bar,
            total,
            done: std::cell::Cell::new(0),
            started: Instant::now(),
        }
    }

    /// Starts the next step.
    pub fn step(&self, what: &str) {
        let n = self.done.get() + 1;
        self.done.set(n);
        match &self.bar {
            Some(b) => {
                b.set_position(n - 1);
                b.set_message(what.to_string());
            }
            None => eprintln!(
                "[{:>4.0}s {n}/{}] {what}",
                self.started.elapsed().as_secs_f64(),
                self.total
            ),
        }
    }

    /// Progress within a long step (shown on a terminal only).
    pub fn sub(&self, done: u64, of: u64) {
        if let Some(b) = &self.bar {
            if of > 0 && done.is_multiple_of((of / 100).max(1)) {
                let msg = b.message();
                let base = msg.split(" (").next().unwrap_or("").to_string();
                b.set_message(format!("{base} ({}%)", done * 100 / of));
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// One system in one cell.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub cell: Cell,
    pub kind: Kind,
    pub put: Measured,
    /// What the process wrote during the put run (every thread, the system's own included).
    pub put_io: scenarios::Written,
    pub take: Measured,
    pub both_put: Measured,
    pub both_take: Measured,
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Opens a new instance of `kind` in a fresh directory under `base`, and warms it up (untimed:
/// the first log file or page is created here). Returns it with its directory.
fn open_warm(base: &Path, kind: Kind, cell: Cell) -> Result<(PathBuf, Box<dyn systems::System>)> {
    let dir = base.join(format!(
        "{}-{}b-x{}-t{}",
        kind.name(),
        cell.size,
        cell.batch,
        cell.threads
    ));
    fresh_dir(&dir)?;
    let sys = kind.open(&dir, cell.threads)?;
    let warm = scenarios::bodies(cell, 3);
    let warm: Vec<&[u8]> = warm.iter().map(|b| &b[..]).collect();
    sys.put(&warm)?;
    let (got, _) = sys.take(cell.batch)?;
    if got != cell.batch {
        return Err(format!("{}: warm-up took {got} of {}", kind.name(), cell.batch).into());
    }
    Ok((dir, sys))
}

/// Removes a run's directory, and syncs its parent, so the file system commits the removal now
/// rather than during the next run.
fn remove_run_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The events a timed put run may queue: bounded by bytes, and below Sluicegate's capacity
/// (1,000,000) so no put waits for room.
pub fn max_events(plan: &Plan, cell: Cell) -> u64 {
    (plan.max_bytes / cell.size as u64).clamp(cell.batch as u64, 900_000)
}

fn run_cell(base: &Path, kind: Kind, cell: Cell, plan: &Plan) -> Result<CellResult> {
    let (dir, sys) = open_warm(base, kind, cell)?;
    let max_events = max_events(plan, cell);
    let before = scenarios::Written::now();
    let put = scenarios::put_only(&*sys, cell, plan.duration, max_events)?;
    let put_io = scenarios::Written::now().since(before);
    let take = scenarios::take_only(&*sys, cell, put.events)?;
    let (left, _) = sys.take(1)?;
    if left != 0 {
        return Err(format!("{}: an event was left after draining", kind.name()).into());
    }
    let (both_put, both_take) = scenarios::concurrent(&*sys, cell, plan.duration, max_events)?;
    drop(sys);
    remove_run_dir(&dir)?;
    Ok(CellResult {
        cell,
        kind,
        put,
        put_io,
        take,
        both_put,
        both_take,
    })
}

/// The sections `--only` names.
const SECTIONS: [&str; 8] = [
    "server", "steady", "sealing", "recovery", "restarts", "flash", "aead", "agent",
];

/// The cell the cost of encryption is measured in.
pub const SEALING_CELL: Cell = Cell {
    size: 1024,
    batch: 100,
    threads: 1,
};

/// The interleaved sealing run: each turn's plaintext and sealed commit times, in seconds, in
/// order.
#[derive(Debug, Clone, Default)]
pub struct SealingRun {
    pub turns: Vec<(f64, f64)>,
    /// The blocks the report cuts the turns into, for the spread.
    pub blocks: usize,
}

/// Plaintext and sealed channels side by side, in [`SEALING_CELL`], their put commits
/// interleaved: one on each in turn, the first of each turn alternating, each timed on its own.
/// Disk and machine noise that lasts longer than a commit or two falls on both alike, which
/// whole runs one after the other did not give (the same pair of runs moved by 30% and more
/// between tries). Runs until one system has spent `plan.duration` in commits, or each has
/// put the event bound.
fn sealing_interleaved(base: &Path, plan: &Plan, progress: &Progress) -> Result<SealingRun> {
    let cell = SEALING_CELL;
    progress.step("sealing: plaintext and sealed puts, commits interleaved");
    let (plain_dir, plain) = open_warm(base, Kind::Sluicegate, cell)?;
    let (sealed_dir, sealed) = open_warm(base, Kind::SluicegateSealed, cell)?;
    let owned = scenarios::bodies(cell, 0x5EA1);
    let batch: Vec<&[u8]> = owned.iter().map(|b| &b[..]).collect();
    let max = max_events(plan, cell);
    // (plaintext, sealed) commit times, one entry per turn.
    let mut turns: Vec<(Duration, Duration)> = Vec::new();
    let (mut spent_plain, mut spent_sealed) = (Duration::ZERO, Duration::ZERO);
    let mut events = 0u64;
    while spent_plain.max(spent_sealed) < plan.duration && events + cell.batch as u64 <= max {
        let time = |sys: &dyn systems::System, name: &str| -> Result<Duration> {
            let t0 = Instant::now();
            sys.put(&batch)
                .map_err(|e| format!("{name} in the sealing run: {e}"))?;
            Ok(t0.elapsed())
        };
        let (p, e) = if turns.len().is_multiple_of(2) {
            let p = time(&*plain, "sluicegate")?;
            (p, time(&*sealed, "sluicegate-sealed")?)
        } else {
            let e = time(&*sealed, "sluicegate-sealed")?;
            (time(&*plain, "sluicegate")?, e)
        };
        spent_plain += p;
        spent_sealed += e;
        events += cell.batch as u64;
        turns.push((p, e));
    }
    drop((plain, sealed));
    remove_run_dir(&plain_dir)?;
    remove_run_dir(&sealed_dir)?;
    Ok(SealingRun {
        turns: turns
            .into_iter()
            .map(|(p, e)| (p.as_secs_f64(), e.as_secs_f64()))
            .collect(),
        blocks: plan.sealing_blocks,
    })
}

/// `--probe-syncs`: n put commits and n take commits of one event, nothing else.
fn probe_syncs(dir: &Path, system: &str, n: u64) -> Result<()> {
    fresh_dir(dir)?;
    let sys: Box<dyn systems::System> = if system == "unsynced-control" {
        Box::new(systems::Ceiling::unsynced(dir)?)
    } else {
        Kind::parse(system)
            .ok_or_else(|| format!("unknown system {system:?}"))?
            .open(dir, 1)?
    };
    let body = [0x42u8; 100];
    for _ in 0..n {
        sys.put(&[&body[..]])?;
    }
    for _ in 0..n {
        let (got, _) = sys.take(1)?;
        if got != 1 {
            return Err("the probe's take found nothing".into());
        }
    }
    drop(sys);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicegate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !args.probe_syncs.is_empty() {
        let n: u64 = args.probe_syncs[1]
            .parse()
            .map_err(|_| format!("not a count: {:?}", args.probe_syncs[1]))?;
        return probe_syncs(&args.dir, &args.probe_syncs[0], n);
    }
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            return Err(format!("--only: unknown section {s:?} ({})", SECTIONS.join(", ")).into());
        }
    }
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let plan = Plan::new(args);
    let cells = plan.cells();
    let steps = if wants("server") {
        cells.len() * Kind::ALL.len()
    } else {
        0
    } + if wants("steady") {
        steady::CELLS.len()
    } else {
        0
    } + if wants("sealing") { 1 } else { 0 }
        + if wants("recovery") { 6 } else { 0 }
        + if wants("restarts") { 1 } else { 0 }
        + if wants("flash") { 4 } else { 0 }
        + if wants("aead") { 1 } else { 0 }
        + if wants("agent") { 5 } else { 0 };
    fresh_dir(&args.dir)?;
    let machine = report::Machine::read(&args.dir);
    eprintln!(
        "sluicegate-bench: {} mode, {} steps, writing in {} ({})",
        plan.mode,
        steps,
        args.dir.display(),
        machine.disk
    );
    let progress = Progress::new(steps as u64);
    let started = Instant::now();

    let mut server = Vec::new();
    if wants("server") {
        for &cell in &cells {
            for kind in Kind::ALL {
                progress.step(&format!(
                    "{}: {} B events, batch {}, {} thread(s)",
                    kind.name(),
                    cell.size,
                    cell.batch,
                    cell.threads
                ));
                server.push(
                    run_cell(&args.dir, kind, cell, &plan)
                        .map_err(|e| format!("{} in {cell:?}: {e}", kind.name()))?,
                );
            }
        }
    }
    let steady_results = if wants("steady") {
        steady::run(&args.dir, &plan, &progress)?
    } else {
        Vec::new()
    };
    let sealing = if wants("sealing") {
        Some(sealing_interleaved(&args.dir, &plan, &progress)?)
    } else {
        None
    };
    // A section that fails still leaves the others' figures printed, then fails the run.
    let mut failures = Vec::new();
    let recovery = if wants("recovery") {
        let dir = args.dir.join("recovery");
        fresh_dir(&dir)?;
        match recovery::run(&dir, plan.recovery_events, plan.stall_secs, &progress) {
            Ok(r) => Some(r),
            Err(e) => {
                failures.push(format!("recovery: {e}"));
                None
            }
        }
    } else {
        None
    };
    let restarts = if wants("restarts") {
        progress.step(&format!(
            "restarts: {} runs of one put into one home",
            plan.restarts
        ));
        let dir = args.dir.join("restarts");
        fresh_dir(&dir)?;
        let r = restarts::run(&dir, plan.restarts)?;
        if let Some(e) = &r.first_failure {
            failures.push(format!("restarts: {e}"));
        }
        std::fs::remove_dir_all(&dir)?;
        Some(r)
    } else {
        None
    };
    let mut flash_results = Vec::new();
    if wants("flash") {
        for compact in [false, true] {
            for batch in [1u64, 16] {
                progress.step(&format!(
                    "flash: sluicegate{}, {} readings, transactions of {batch}",
                    if compact { " compact" } else { "" },
                    plan.flash_readings
                ));
                flash_results.push(flash::sluicegate(plan.flash_readings, batch, compact)?);
            }
        }
        progress.step(&format!(
            "flash: sequential-storage, {} readings",
            plan.flash_readings
        ));
        flash_results.push(flash::sequential_storage(plan.flash_readings, false)?);
        progress.step(&format!(
            "flash: sequential-storage with caches, {} readings",
            plan.flash_readings
        ));
        flash_results.push(flash::sequential_storage(plan.flash_readings, true)?);
        for r in &flash_results {
            if r.violations > 0 {
                return Err(format!("{}: {} flash rule violations", r.name, r.violations).into());
            }
        }
    }
    let aead_results = if wants("aead") {
        progress.step("aead: XChaCha20-Poly1305, ChaCha20-Poly1305, AES-256-GCM");
        aead::run(plan.duration / 4)?
    } else {
        Vec::new()
    };
    let agent_results = if wants("agent") {
        match agent::run(&args.dir, &plan, &progress) {
            Ok(r) => Some(r),
            Err(e) => {
                failures.push(format!("agent: {e}"));
                None
            }
        }
    } else {
        None
    };
    progress.finish();
    std::fs::remove_dir_all(&args.dir)?;

    let elapsed = started.elapsed();
    let text = report::markdown(
        &plan,
        &machine,
        elapsed,
        &report::Results {
            server: &server,
            steady: &steady_results,
            sealing: sealing.as_ref(),
            recovery: recovery.as_ref(),
            restarts: restarts.as_ref(),
            flash: &flash_results,
            aead: &aead_results,
            agent: agent_results.as_ref(),
        },
    );
    print!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("benchmarks.md"), &text)?;
    let mut pngs = Vec::new();
    if !server.is_empty() {
        let png = args.out.join("throughput.png");
        report::plot(&server, &png)?;
        pngs.push(png);
    }
    if args.docs {
        report::into_docs(Path::new("docs/benchmarks.md"), &text)?;
        if let Some(png) = pngs.first() {
            std::fs::copy(png, "docs/benchmarks-throughput.png")?;
        }
        eprintln!("sluicegate-bench: wrote docs/benchmarks.md and docs/benchmarks-throughput.png");
    }
    eprintln!(
        "sluicegate-bench: {} mode done in {:.0} s; table and plot in {}",
        plan.mode,
        elapsed.as_secs_f64(),
        args.out.display()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
