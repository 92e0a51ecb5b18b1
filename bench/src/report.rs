//! The markdown report, the plot, and the machine they ran on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::aead::{AeadResult, ALGORITHMS, SIZES};
use crate::flash::{FlashResult, READING};
use crate::recovery::RecoveryResults;
use crate::scenarios::{Cell, Measured};
use crate::systems::{Kind, Result};
use crate::{CellResult, Plan, SealingRun, SEALING_CELL};

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub disk: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Machine {
    pub fn read(dir: &Path) -> Machine {
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let memory = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / (1 << 20) as f64))
            .unwrap_or_else(|| "unknown".into());
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        // The mount holding the directory: the longest mount point it lies under.
        let disk = read("/proc/mounts")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1].len(), f[0], f[2], f[1]))
            })
            .max_by_key(|m| m.0)
            .map(|(_, dev, fs, at)| format!("{fs} on {dev}, mounted at {at}"))
            .unwrap_or_else(|| "unknown filesystem".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            disk,
        }
    }
}

/// Today's date (UTC) from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// 12345.6 -> "12.3k".
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn size(b: usize) -> String {
    if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn us(v: Option<u32>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000 => format!("{:.0} ms", v as f64 / 1e3),
        Some(v) if v >= 1_000 => format!("{:.1} ms", v as f64 / 1e3),
        Some(v) => format!("{v} µs"),
    }
}

fn find(server: &[CellResult], cell: Cell, kind: Kind) -> Option<&CellResult> {
    server.iter().find(|r| r.cell == cell && r.kind == kind)
}

fn cells_of(server: &[CellResult]) -> Vec<Cell> {
    let mut v: Vec<Cell> = Vec::new();
    for r in server {
        if !v.contains(&r.cell) {
            v.push(r.cell);
        }
    }
    v
}

/// The figure a scenario is judged by: events per second (put and taken together when both run
/// at once).
fn figure(r: &CellResult, scenario: usize) -> f64 {
    match scenario {
        0 => r.put.events_per_sec(),
        1 => r.take.events_per_sec(),
        _ => r.both_put.events_per_sec() + r.both_take.events_per_sec(),
    }
}

const SCENARIOS: [&str; 3] = ["put", "take", "put+take"];

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn best_peer(server: &[CellResult], cell: Cell, scenario: usize) -> Option<(Kind, f64)> {
    Kind::PEERS
        .into_iter()
        .filter_map(|k| find(server, cell, k).map(|r| (k, figure(r, scenario))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Everything a run measured; a section it skipped is empty.
pub struct Results<'a> {
    pub server: &'a [CellResult],
    pub steady: &'a [crate::steady::SteadyResult],
    pub sealing: Option<&'a SealingRun>,
    pub recovery: Option<&'a RecoveryResults>,
    pub restarts: Option<&'a crate::restarts::RestartResults>,
    pub flash: &'a [FlashResult],
    pub aead: &'a [AeadResult],
    pub agent: Option<&'a crate::agent::AgentResults>,
}

pub fn markdown(plan: &Plan, machine: &Machine, elapsed: Duration, r: &Results<'_>) -> String {
    let Results {
        server,
        steady,
        sealing,
        recovery,
        restarts,
        flash,
        aead,
        agent,
    } = *r;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### A {} run, {} ({:.0} s)\n",
        plan.mode,
        today(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "Machine: {}, {} cores seen, {} RAM, Linux {}; the systems wrote to {}.\n",
        machine.cpu, machine.cores, machine.memory, machine.kernel, machine.disk
    );
    if !server.is_empty() {
        server_tables(&mut o, plan, server);
        sealing_table(&mut o, server);
    }
    if !steady.is_empty() {
        steady_table(&mut o, plan, steady);
    }
    if let Some(run) = sealing {
        sealing_table_interleaved(&mut o, plan, run);
    }
    if let Some(r) = recovery {
        recovery_table(&mut o, r);
    }
    if let Some(r) = restarts {
        restarts_table(&mut o, r);
    }
    if !flash.is_empty() {
        flash_table(&mut o, flash);
    }
    if !aead.is_empty() {
        aead_table(&mut o, aead);
    }
    if let Some(a) = agent {
        crate::agent::table(&mut o, a);
    }
    targets(&mut o, server, sealing, recovery, flash);
    o
}

fn server_tables(o: &mut String, plan: &Plan, server: &[CellResult]) {
    let _ = writeln!(
        o,
        "#### Throughput, events per second\n\n\
         Each figure is one run of {:.1} s (put, and put+take with as many consumers as \
         producers) or the drain of everything the put run queued (take). A put run stops \
         early once it has queued the run's event bound; in put+take the bound is on the \
         queue's depth instead, and producers at it wait for the consumers, so every system \
         runs the whole time. `÷ ceiling` and \
         `÷ best peer` are Sluicegate's figure divided by the ceiling's and by the best peer's \
         in the same cell.\n",
        plan.duration.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| scenario | event | batch | threads | ceiling | sluicegate | ÷ ceiling | queue-file | redb | sqlite | fjall | ÷ best peer |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (s, name) in SCENARIOS.iter().enumerate() {
        for cell in cells_of(server) {
            let get = |k| find(server, cell, k).map(|r| figure(r, s));
            let fmt = |v: Option<f64>| v.map_or("-".into(), rate);
            let ours = get(Kind::Sluicegate).unwrap_or(0.0);
            let ceiling = get(Kind::Ceiling).unwrap_or(0.0);
            let best = best_peer(server, cell, s).map_or(0.0, |b| b.1);
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
                size(cell.size),
                cell.batch,
                cell.threads,
                fmt(get(Kind::Ceiling)),
                rate(ours),
                ratio(ours, ceiling),
                fmt(get(Kind::QueueFile)),
                fmt(get(Kind::Redb)),
                fmt(get(Kind::Sqlite)),
                fmt(get(Kind::Fjall)),
                ratio(ours, best)
            );
        }
    }
    per_system_table(
        o,
        server,
        "\n#### Put commit latency: p50 / p99 / p99.9\n\n\
         From the put runs above: the time from the start of a transaction to its commit \
         returning, durable.\n",
        |r| {
            let m: &Measured = &r.put;
            format!(
                "{} / {} / {}",
                us(m.percentile_us(0.5)),
                us(m.percentile_us(0.99)),
                us(m.percentile_us(0.999))
            )
        },
    );
    per_system_table(
        o,
        server,
        "\n#### Bytes written per event byte during the put runs\n\n\
         What each system handed to `write` calls during its put run (`wchar` in \
         `/proc/self/io`, every thread), divided by the event bytes put: records, commit \
         records, and the zeros of any log file it made. The ceiling writes exactly \
         Sluicegate's records and commit records into a file made before the run.\n",
        |r| {
            let bytes = (r.put.events * r.cell.size as u64).max(1) as f64;
            format!("{:.2}", r.put_io.handed as f64 / bytes)
        },
    );
    o.push('\n');
}

/// A table with one row per cell and one column per system, each entry `entry` of the
/// system's result in that cell ("-" where it did not run).
fn per_system_table(
    o: &mut String,
    server: &[CellResult],
    heading: &str,
    entry: impl Fn(&CellResult) -> String,
) {
    let _ = writeln!(o, "{heading}");
    let _ = writeln!(
        o,
        "| event | batch | threads | ceiling | sluicegate | queue-file | redb | sqlite | fjall |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for cell in cells_of(server) {
        let at = |k| find(server, cell, k).map_or("-".to_string(), &entry);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            size(cell.size),
            cell.batch,
            cell.threads,
            at(Kind::Ceiling),
            at(Kind::Sluicegate),
            at(Kind::QueueFile),
            at(Kind::Redb),
            at(Kind::Sqlite),
            at(Kind::Fjall)
        );
    }
}

/// Short runs into one home: how many succeeded, their times, and what the home takes.
fn steady_table(o: &mut String, plan: &Plan, rows: &[crate::steady::SteadyResult]) {
    let _ = writeln!(
        o,
        "#### Puts into a new channel and a settled one\n\n\
         One thread, {:.1} s per put run (or the run's event bound), one after another in one \
         run: the ceiling (its file zeroed before its clock starts), Sluicegate in a new \
         directory (as in the matrix: every log file the run reaches is made, written full of \
         zeros on its thread), and Sluicegate settled (the bytes shown put and taken first, then a \
         checkpoint, so released files wait to be reused). Handed: bytes given to `write` calls \
         per byte of event.\n",
        plan.duration.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| event | batch | ceiling put/s | new put/s (÷ ceiling) | settled put/s (÷ ceiling) | settled p50 / p99.9 | handed: new / settled | files made: new / settled; reused | warm-up |"
    );
    let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let cell = r.cell;
        let ceiling = r.ceiling.events_per_sec();
        let handed = |io: &crate::scenarios::Written, m: &crate::scenarios::Measured| {
            let bytes = (m.events * cell.size as u64) as f64;
            if bytes > 0.0 {
                format!("{:.2}", io.handed as f64 / bytes)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} ({}) | {} ({}) | {} / {} | {} / {} | {} / {}; {} | {:.0} MiB |",
            size(cell.size),
            cell.batch,
            rate(ceiling),
            rate(r.fresh.events_per_sec()),
            ratio(r.fresh.events_per_sec(), ceiling),
            rate(r.settled.events_per_sec()),
            ratio(r.settled.events_per_sec(), ceiling),
            us(r.settled.percentile_us(0.5)),
            us(r.settled.percentile_us(0.999)),
            handed(&r.fresh_io, &r.fresh),
            handed(&r.settled_io, &r.settled),
            r.fresh_made,
            r.settled_made,
            r.settled_reused,
            r.warm_bytes as f64 / (1u64 << 20) as f64
        );
    }
    let _ = writeln!(
        o,
        "\nCommit latency in the same runs, and the log writes that found their file not ready \
         and waited while it was made (`FileStats::file_waits`): how many, and their total \
         against the run's time.\n"
    );
    let _ = writeln!(
        o,
        "| event | batch | ceiling p50 / p99.9 | new p50 / p99.9 | new: waits, total (share of run) | settled p50 / p99.9 | settled: waits, total (share of run) |"
    );
    let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let waited = |w: &sluicegate_file::FileWaits, m: &crate::scenarios::Measured| {
            let run = m.secs;
            let share = if run > 0.0 {
                w.total_us as f64 / 1e6 / run
            } else {
                0.0
            };
            format!(
                "{}, {} ({:.0}%)",
                w.count,
                us(Some(w.total_us.min(u64::from(u32::MAX)) as u32)),
                share * 100.0
            )
        };
        let p = |m: &crate::scenarios::Measured| {
            format!(
                "{} / {}",
                us(m.percentile_us(0.5)),
                us(m.percentile_us(0.999))
            )
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            size(r.cell.size),
            r.cell.batch,
            p(&r.ceiling),
            p(&r.fresh),
            waited(&r.fresh_waits, &r.fresh),
            p(&r.settled),
            waited(&r.settled_waits, &r.settled),
        );
    }
    o.push('\n');
}

fn restarts_table(o: &mut String, r: &crate::restarts::RestartResults) {
    let _ = writeln!(
        o,
        "#### Short runs into one home\n\n\
         Open a file channel with the default settings, put one line, commit, close, {} times \
         in a row into one home, with every event left queued (in process; `sluicegate put` \
         adds its own start). Goals: every run succeeds, the home stays under 300 MB, and a \
         run takes under 20 ms at the median.\n",
        r.runs
    );
    let _ = writeln!(
        o,
        "| runs | succeeded | queued after | median ms | p99 ms | max ms | home on disk | log files |"
    );
    let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|--:|--:|");
    let _ = writeln!(
        o,
        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} MB | {} |",
        r.runs,
        r.succeeded,
        r.queued,
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.quantile_ms(1.0),
        r.home_bytes as f64 / 1e6,
        r.log_files
    );
    if let Some(e) = &r.first_failure {
        let _ = writeln!(o, "\nThe first run that failed: {e}");
    }
    o.push('\n');
}

/// The AEADs on this machine: MB/s of messages sealed, and AES-GCM's rate over XChaCha's.
fn aead_table(o: &mut String, aead: &[AeadResult]) {
    let _ = writeln!(
        o,
        "#### AEADs on this machine\n\n\
         Messages sealed in place, one nonce each, for a quarter of the run length per figure; MB/s \
         of message. The Cortex-M4 figures come from `cargo xtask firmware` (instructions per \
         byte, in QEMU).\n"
    );
    let _ = write!(o, "| message |");
    for a in ALGORITHMS {
        let _ = write!(o, " {a} |");
    }
    let _ = writeln!(o, " AES-GCM ÷ XChaCha |");
    let _ = writeln!(o, "|--:|--:|--:|--:|--:|");
    for size_ in SIZES {
        let get = |name: &str| {
            aead.iter()
                .find(|r| r.size == size_ && r.algorithm == name)
                .map_or(0.0, AeadResult::bytes_per_sec)
        };
        let _ = write!(o, "| {} |", size(size_));
        for a in ALGORITHMS {
            let _ = write!(o, " {:.0} |", get(a) / 1e6);
        }
        let _ = writeln!(
            o,
            " {} |",
            ratio(get("AES-256-GCM"), get("XChaCha20-Poly1305"))
        );
    }
    o.push('\n');
}

/// The cost of encryption at rest: Sluicegate sealed against plaintext in each cell.
fn sealing_table(o: &mut String, server: &[CellResult]) {
    let _ = writeln!(
        o,
        "#### Encryption at rest\n\n\
         `sluicegate-sealed` is the same channel with an active key and the default \
         `encryption.algorithm` (`auto`), which on this machine seals log records with {} \
         (checkpoints always with XChaCha20-Poly1305); `÷ plain` is its figure divided by \
         plaintext Sluicegate's in the same cell.\n",
        sluicegate_file::AlgorithmChoice::Auto.resolve().name()
    );
    let _ = writeln!(
        o,
        "| scenario | event | batch | threads | sluicegate | sluicegate-sealed | ÷ plain |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|");
    for (s, name) in SCENARIOS.iter().enumerate() {
        for cell in cells_of(server) {
            let get = |k| find(server, cell, k).map(|r| figure(r, s));
            let (Some(plain), Some(sealed)) = (get(Kind::Sluicegate), get(Kind::SluicegateSealed))
            else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                size(cell.size),
                cell.batch,
                cell.threads,
                rate(plain),
                rate(sealed),
                ratio(sealed, plain)
            );
        }
    }
    o.push('\n');
}

/// The median over turns of plaintext's commit time ÷ sealed's: sealed ÷ plaintext throughput
/// in a typical turn. The figure the encryption target is judged by.
fn median_turn(turns: &[(f64, f64)]) -> f64 {
    let mut r: Vec<f64> = turns.iter().map(|(p, e)| p / e.max(1e-12)).collect();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => 0.0,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

/// Sealed ÷ plaintext throughput over all of `turns`: total commit times inverted.
fn whole(turns: &[(f64, f64)]) -> f64 {
    let plain: f64 = turns.iter().map(|t| t.0).sum();
    let sealed: f64 = turns.iter().map(|t| t.1).sum();
    plain / sealed.max(1e-12)
}

/// The cost of encryption, from the interleaved run, block by block.
fn sealing_table_interleaved(o: &mut String, plan: &Plan, run: &SealingRun) {
    let c = SEALING_CELL;
    let per_event = |turns: &[(f64, f64)]| (turns.len() * c.batch) as f64;
    let _ = writeln!(
        o,
        "#### Encryption at rest, interleaved\n\n\
         A plaintext and a sealed channel side by side, each in its own fresh directory, put \
         {} events in batches of {} from {} thread, their commits interleaved: one commit on \
         each in turn, which goes first alternating, each commit timed on its own, until one \
         has spent {:.1} s in commits or each has put {} events ({} each here). Noise on the disk or the \
         machine that lasts longer than a commit falls on both alike, which it did not on whole \
         runs one after the other. The figure is the median over turns of sealed ÷ plaintext \
         (plaintext's commit time over sealed's). The whole run's ratio, of total commit times, \
         also counts the commits that created a log file (128 MiB written and synced, as long as \
         hundreds of ordinary commits, on either channel), whose placement a bounded run cuts \
         unevenly; in a long run both create nearly as many, which brings the ratio closer to \
         1, so the median is the stricter figure. The table cuts the run into blocks of equal \
         turns.\n",
        size(c.size),
        c.batch,
        c.threads,
        plan.duration.as_secs_f64(),
        rate(crate::max_events(plan, c) as f64),
        rate(per_event(&run.turns)),
    );
    let _ = writeln!(
        o,
        "| block | events | sluicegate | sluicegate-sealed | ÷ plain, whole block | ÷ plain, median turn |"
    );
    let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|");
    let row = |o: &mut String, name: &str, turns: &[(f64, f64)]| {
        let events = per_event(turns);
        let plain: f64 = turns.iter().map(|t| t.0).sum();
        let sealed: f64 = turns.iter().map(|t| t.1).sum();
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {:.2} | {:.2} |",
            rate(events),
            rate(events / plain.max(1e-12)),
            rate(events / sealed.max(1e-12)),
            whole(turns),
            median_turn(turns),
        );
    };
    let per_block = run.turns.len().div_ceil(run.blocks.max(1)).max(1);
    for (i, block) in run.turns.chunks(per_block).enumerate() {
        row(o, &(i + 1).to_string(), block);
    }
    row(o, "**all**", &run.turns);
    o.push('\n');
}

fn recovery_table(o: &mut String, r: &RecoveryResults) {
    let cache = if r.cold {
        "with the page cache dropped before the sequential read and before the full replay"
    } else {
        "with a warm page cache (this process may not drop it)"
    };
    let _ = writeln!(
        o,
        "#### Recovery of {} queued events of {}\n\n\
         Filled in {:.1} s (transactions of 1,000), closed, then opened three ways; the full \
         replay ran {cache}.\n",
        r.events,
        size(r.event_bytes),
        r.fill_secs
    );
    let _ = writeln!(
        o,
        "| open | time | segments replayed | records read | events |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|");
    for (name, x) in [
        ("from the checkpoint", r.from_checkpoint),
        (
            "from the backup (the newest checkpoint torn)",
            r.from_backup,
        ),
        ("full replay (both checkpoints wiped)", r.full_replay),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {:.3} s | {} | {} | {} |",
            x.secs, x.segments_replayed, x.records_read, x.events
        );
    }
    let record = crate::systems::put_commit_bytes(std::iter::once(r.event_bytes))
        - crate::systems::commit_bytes(1);
    let replay_rate = r.events as f64 * record as f64 / r.full_replay.secs.max(1e-9);
    let _ = writeln!(
        o,
        "\nFull replay read the log at {:.0} MB/s of records; a sequential read of the log files \
         ({:.0} MB in 1 MiB reads) ran at {:.0} MB/s: a ratio of {:.2}.\n",
        replay_rate / 1e6,
        r.log_bytes as f64 / 1e6,
        r.sequential_read_bytes_per_sec / 1e6,
        replay_rate / r.sequential_read_bytes_per_sec.max(1e-9)
    );
    let _ = writeln!(
        o,
        "RAM: the core's memory for this channel (capacity {} events, transactions of up to \
         1,000, 4 at a time) is {} bytes; the whole process's heap grew by {} bytes while the \
         channel was opened and filled: {:.2} bytes per queued event.\n",
        r.capacity,
        r.core_memory_bytes,
        r.heap_bytes,
        r.heap_bytes as f64 / r.events as f64
    );
    let _ = writeln!(
        o,
        "Checkpoint stall, with the {} events queued: a producer committing one {} event at a \
         time for {:.1} s, and a probe taking the channel's lock every 200 µs (its wait is the \
         stall any thread sees, without the producer's own `fdatasync`).\n",
        r.events,
        size(r.event_bytes),
        r.quiet.secs
    );
    let _ = writeln!(
        o,
        "| background checkpoints | checkpoints written | commits | commit p50 / p99 / p99.9 | longest commit | lock waits | lock wait p99.9 | longest lock wait |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for (name, m, p, n) in [
        ("off", &r.quiet, &r.quiet_probe, 0),
        (
            &*format!("every {} ms", r.stall_interval_ms),
            &r.checkpointing,
            &r.checkpointing_probe,
            r.checkpoints_during,
        ),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {n} | {} | {} / {} / {} | {} | {} | {} | {} |",
            m.commits,
            us(m.percentile_us(0.5)),
            us(m.percentile_us(0.99)),
            us(m.percentile_us(0.999)),
            us(m.percentile_us(1.0)),
            p.commits,
            us(p.percentile_us(0.999)),
            us(p.percentile_us(1.0))
        );
    }
    o.push('\n');
}

fn flash_table(o: &mut String, flash: &[FlashResult]) {
    let _ = writeln!(
        o,
        "#### Flash: {} readings of 32 B through 80 KiB of simulated NOR (W25Q32JV timing)\n",
        flash[0].readings
    );
    let _ = writeln!(
        o,
        "| system | programmed B per payload B | erases per payload MiB | reads / programs / erases per reading | modelled flash time per reading | RAM |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|");
    for r in flash {
        let (rd, pg, er) = r.ops_per_reading();
        let _ = writeln!(
            o,
            "| {} | {:.2} | {:.0} | {:.1} / {:.2} / {:.3} | {:.0} µs | {} B |",
            r.name,
            r.programmed_per_payload_byte(),
            r.erases_per_payload_mib(),
            rd,
            pg,
            er,
            r.busy_us_per_reading(),
            r.ram_bytes
        );
    }
    let _ = writeln!(
        o,
        "\nOperations per call (reads / programs / erases), checkpoints included in the commits \
         that started them:\n"
    );
    let _ = writeln!(o, "| system | put | take | commit |");
    let _ = writeln!(o, "|---|--:|--:|--:|");
    for r in flash {
        let f = |x: &crate::flash::Ops| {
            if x.calls == 0 {
                "-".to_string()
            } else {
                let (a, b, c) = x.per_call();
                format!("{a:.1} / {b:.2} / {c:.3}")
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            r.name,
            f(&r.put),
            f(&r.take),
            f(&r.commit)
        );
    }
    let _ = writeln!(
        o,
        "\nBytes programmed per reading of {READING} B, by the call that programmed them (for \
         Sluicegate, a put writes a record: header and body; a commit, a commit record; the \
         checkpoint slots are counted on their own, whichever call wrote them):\n"
    );
    let _ = writeln!(
        o,
        "| system | put | take | commit | checkpoints | total | blocks erased per 1,000 readings: log / checkpoints |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|");
    for r in flash {
        let [put, take, commit, slots] = r.bytes_per_reading();
        let per_1000 = |blocks: u64| blocks as f64 * 1000.0 / r.readings as f64;
        let _ = writeln!(
            o,
            "| {} | {put:.1} | {take:.1} | {commit:.1} | {slots:.1} | {:.1} | {:.1} / {:.1} |",
            r.name,
            r.total.bytes_written as f64 / r.readings as f64,
            per_1000(r.total.blocks_erased - r.slot_blocks_erased),
            per_1000(r.slot_blocks_erased)
        );
    }
    o.push('\n');
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

fn targets(
    o: &mut String,
    server: &[CellResult],
    sealing: Option<&SealingRun>,
    recovery: Option<&RecoveryResults>,
    flash: &[FlashResult],
) {
    let _ = writeln!(o, "#### Against the targets\n");
    let _ = writeln!(o, "| target | measured | |");
    let _ = writeln!(o, "|---|---|---|");
    let at = |batch, threads| Cell {
        size: 1024,
        batch,
        threads,
    };
    if let (Some(ours), Some(ceiling)) = (
        find(server, at(100, 1), Kind::Sluicegate),
        find(server, at(100, 1), Kind::Ceiling),
    ) {
        let a = figure(ours, 0);
        let c = figure(ceiling, 0);
        let _ = writeln!(
            o,
            "| put, 1 KiB, batch 100: ≥ 0.8 × ceiling | {:.2} × | {} |",
            a / c,
            verdict(a >= 0.8 * c)
        );
        if let Some((k, b)) = best_peer(server, at(100, 1), 0) {
            let _ = writeln!(
                o,
                "| put, 1 KiB, batch 100: ≥ 2 × best peer | {:.2} × {} | {} |",
                a / b,
                k.name(),
                verdict(a >= 2.0 * b)
            );
        }
    }
    if let Some(run) = sealing.filter(|r| !r.turns.is_empty()) {
        let r = median_turn(&run.turns);
        let _ = writeln!(
            o,
            "| put, 1 KiB, batch 100, sealed: ≥ 0.8 × plaintext | {r:.2} × (median of {} interleaved turns; whole run {:.2} ×) | {} |",
            run.turns.len(),
            whole(&run.turns),
            verdict(r >= 0.8)
        );
    } else if let (Some(plain), Some(sealed)) = (
        find(server, at(100, 1), Kind::Sluicegate),
        find(server, at(100, 1), Kind::SluicegateSealed),
    ) {
        let (p, e) = (figure(plain, 0), figure(sealed, 0));
        let _ = writeln!(
            o,
            "| put, 1 KiB, batch 100, sealed: ≥ 0.8 × plaintext | {:.2} × ({} against {} events/s) | {} |",
            e / p.max(1e-9),
            rate(e),
            rate(p),
            verdict(e >= 0.8 * p)
        );
    }
    if let (Some(one), Some(eight)) = (
        find(server, at(1, 1), Kind::Sluicegate),
        find(server, at(1, 8), Kind::Sluicegate),
    ) {
        let r = eight.put.commits_per_sec() / one.put.commits_per_sec().max(1e-9);
        let _ = writeln!(
            o,
            "| put, 1 KiB, batch 1: 8 producers ≥ 4 × the commits/s of 1 | {r:.2} × ({} against {} commits/s) | {} |",
            rate(eight.put.commits_per_sec()),
            rate(one.put.commits_per_sec()),
            verdict(r >= 4.0)
        );
    }
    if let Some(r) = recovery {
        let _ = writeln!(
            o,
            "| recovery from a checkpoint of 1,000,000 events < 0.5 s | {:.3} s for {} events | {} |",
            r.from_checkpoint.secs,
            r.events,
            if r.events >= 1_000_000 {
                verdict(r.from_checkpoint.secs < 0.5)
            } else {
                "not judged (quick mode)"
            }
        );
        let longest = r.checkpointing.percentile_us(1.0).unwrap_or(0);
        let quiet = r.quiet.percentile_us(1.0).unwrap_or(0);
        let lock = r.checkpointing_probe.percentile_us(1.0).unwrap_or(0);
        let _ = writeln!(
            o,
            "| longest producer stall during a checkpoint ≤ 10 ms | longest lock wait {} with {} checkpoints of {} events; longest commit {} (without checkpoints: {}) | lock wait {}, commit {} |",
            us(Some(lock)),
            r.checkpoints_during,
            r.events,
            us(Some(longest)),
            us(Some(quiet)),
            verdict(lock <= 10_000 && r.checkpoints_during > 0),
            verdict(longest <= 10_000 && r.checkpoints_during > 0)
        );
        let per = r.heap_bytes as f64 / r.events as f64;
        let _ = writeln!(
            o,
            "| RAM ≤ 8 bytes per queued event | {per:.2} bytes | {} |",
            verdict(per <= 8.0)
        );
    }
    // Sequential-storage's best figure of its two configurations, for each measure.
    let seq: Vec<&FlashResult> = flash
        .iter()
        .filter(|r| r.name.starts_with("sequential"))
        .collect();
    let ops = |r: &FlashResult| {
        let (a, b, c) = r.ops_per_reading();
        a + b + c
    };
    let seq_bytes = seq
        .iter()
        .map(|r| r.programmed_per_payload_byte() * READING as f64)
        .reduce(f64::min);
    let seq_ops = seq.iter().map(|r| ops(r)).reduce(f64::min);
    if let (Some(seq_bytes), Some(seq_ops)) = (seq_bytes, seq_ops) {
        for ours in flash.iter().filter(|r| r.batch > 0) {
            let bytes = ours.programmed_per_payload_byte() * READING as f64;
            if ours.batch == 1 {
                // One reading per transaction pays a commit record per reading: the goal
                // allows half as many bytes again.
                let _ = writeln!(
                    o,
                    "| flash ({}): at most 1.5 times sequential-storage's bytes programmed per reading (its better configuration) | {bytes:.1} against {:.1} B | {} |",
                    ours.name,
                    1.5 * seq_bytes,
                    verdict(bytes <= 1.5 * seq_bytes)
                );
            } else {
                let _ = writeln!(
                    o,
                    "| flash ({}): fewer bytes programmed and fewer operations per reading than sequential-storage (its better configuration for each) | {bytes:.1} against {seq_bytes:.1} B; {:.2} against {seq_ops:.2} operations | {} |",
                    ours.name,
                    ops(ours),
                    verdict(bytes < seq_bytes && ops(ours) < seq_ops)
                );
            }
        }
    }
    o.push('\n');
}

/// Replaces what lies between the results markers of the docs page.
pub fn into_docs(path: &Path, text: &str) -> Result<()> {
    const BEGIN: &str = "<!-- results:begin -->";
    const END: &str = "<!-- results:end -->";
    let page = std::fs::read_to_string(path)?;
    let (Some(b), Some(e)) = (page.find(BEGIN), page.find(END)) else {
        return Err(format!("{} has no {BEGIN} ... {END} markers", path.display()).into());
    };
    let new = format!(
        "{}{BEGIN}\n\n{text}\n![Put throughput against batch size](benchmarks-throughput.png)\n\n{}",
        &page[..b],
        &page[e..]
    );
    std::fs::write(path, new)?;
    Ok(())
}

/// Put throughput against batch size, one panel per thread count, for the largest event size
/// not above 1 KiB that was run (1 KiB in the quick and full modes).
pub fn plot(server: &[CellResult], png: &Path) -> Result<()> {
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        dejavu::sans::regular(),
    )
    .map_err(|_| "the embedded font did not load")?;
    let cells = cells_of(server);
    let size = cells
        .iter()
        .map(|c| c.size)
        .filter(|&s| s <= 1024)
        .max()
        .unwrap_or(cells[0].size);
    let mut threads: Vec<usize> = cells.iter().map(|c| c.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let root = BitMapBackend::new(png, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, threads.len()));
    let (lo, hi) = server
        .iter()
        .filter(|r| r.cell.size == size)
        .map(|r| r.put.events_per_sec())
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let colors = [BLACK, RED, BLUE, GREEN, MAGENTA];
    for (panel, &t) in panels.iter().zip(&threads) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("put, {} events, {t} thread(s)", size_label(size)),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0.8f64..1250f64).log_scale(),
                ((lo / 1.5).max(1.0)..hi * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("events per commit (batch)")
            .y_desc("events per second")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| rate(*v))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = server
                .iter()
                .filter(|r| r.kind == kind && r.cell.size == size && r.cell.threads == t)
                .map(|r| (r.cell.batch as f64, r.put.events_per_sec().max(1.0)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = colors[i % colors.len()];
            let width = if kind == Kind::Sluicegate { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
                .label(kind.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn size_label(b: usize) -> String {
    size(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_sizes_read_as_people_write_them() {
        assert_eq!(rate(950.0), "950");
        assert_eq!(rate(7_600.0), "7.6k");
        assert_eq!(rate(233_000.0), "233k");
        assert_eq!(rate(1_240_000.0), "1.24M");
        assert_eq!(size(100), "100 B");
        assert_eq!(size(16384), "16 KiB");
        assert_eq!(us(Some(132)), "132 µs");
        assert_eq!(us(Some(2_300)), "2.3 ms");
        assert_eq!(us(Some(94_000)), "94 ms");
    }

    /// The encryption target is judged on the median turn; the whole run's ratio is shown
    /// beside it.
    #[test]
    fn the_sealing_figure_is_the_median_turn() {
        // Turns where sealed takes 1.25 times as long, and one where plaintext created a file.
        let mut turns = vec![(0.001, 0.00125); 6];
        turns.push((0.1, 0.00125));
        assert!((median_turn(&turns) - 0.8).abs() < 1e-12);
        assert!((median_turn(&turns[..2]) - 0.8).abs() < 1e-12);
        assert!(whole(&turns) > 10.0);
        let run = SealingRun { turns, blocks: 3 };
        let mut o = String::new();
        targets(&mut o, &[], Some(&run), None, &[]);
        assert!(
            o.contains("| 0.80 × (median of 7 interleaved turns; whole run 12.11 ×) | met |"),
            "{o}"
        );
        let plan = Plan {
            mode: "smoke",
            sizes: vec![1024],
            batches: vec![100],
            threads: vec![1],
            duration: Duration::from_millis(100),
            max_bytes: 4 << 20,
            recovery_events: 0,
            stall_secs: 0.0,
            flash_readings: 0,
            sealing_blocks: 3,
            restarts: 0,
        };
        sealing_table_interleaved(&mut o, &plan, &run);
        // Blocks of three turns: the last holds the file's turn alone.
        assert!(o.contains("| 1 | 300 | 100k | 80k | 0.80 | 0.80 |"), "{o}");
        assert!(
            o.contains("| 3 | 100 | 1.0k | 80k | 80.00 | 80.00 |"),
            "{o}"
        );
        assert!(o.contains("| **all** | 700 |"), "{o}");
    }

    #[test]
    fn results_replace_only_what_lies_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("sg-bench-docs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = dir.join("benchmarks.md");
        std::fs::write(
            &page,
            "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\noutro\n",
        )
        .unwrap();
        into_docs(&page, "new table\n").unwrap();
        into_docs(&page, "newer table\n").unwrap();
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(text.starts_with("intro\n<!-- results:begin -->\n"));
        assert!(text.contains("newer table"));
        assert!(!text.contains("old") && !text.contains("new table"));
        assert!(text.ends_with("<!-- results:end -->\noutro\n"));
        std::fs::write(&page, "no markers").unwrap();
        assert!(into_docs(&page, "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
