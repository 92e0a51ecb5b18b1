//! Puts into a settled channel. The matrix opens every system in a new directory, so a
//! Sluicegate put run makes its log files as it goes: each new file is written full of zeros
//! once, on a thread of its own, as many bytes as the events themselves. The ceiling zeroes its
//! file before its clock starts. A channel that has run for a while has released files to reuse
//! (a header of 4 KiB zeroed, a rename), which is where a server spends its life. This section
//! measures the ceiling, a new channel and a settled one in the same cells, one after another in
//! one run, so the cost of new files can be read as a ratio.

use std::path::Path;

use sluicegate_file::FileWaits;

use crate::scenarios::{self, Cell, Measured, Written};
use crate::systems::{sluicegate_config, Kind, Result, Sluicegate, System};
use crate::{fresh_dir, max_events, remove_run_dir, Plan, Progress};

/// The cells measured: one thread, where a new file's zeros are not hidden behind other
/// threads' work.
pub const CELLS: [Cell; 4] = [
    Cell {
        size: 1024,
        batch: 100,
        threads: 1,
    },
    Cell {
        size: 1024,
        batch: 1000,
        threads: 1,
    },
    Cell {
        size: 16384,
        batch: 100,
        threads: 1,
    },
    Cell {
        size: 16384,
        batch: 1000,
        threads: 1,
    },
];

/// One cell's three put runs.
#[derive(Debug, Clone, Default)]
pub struct SteadyResult {
    pub cell: Cell,
    pub ceiling: Measured,
    pub fresh: Measured,
    pub settled: Measured,
    pub fresh_io: Written,
    pub settled_io: Written,
    /// Log files the new channel made during its put run.
    pub fresh_made: u64,
    /// Log files the settled channel made, and reused, during its put run.
    pub settled_made: u64,
    pub settled_reused: u64,
    /// Log writes of each put run that waited for a file being made.
    pub fresh_waits: FileWaits,
    pub settled_waits: FileWaits,
    /// Bytes of events put and taken before the settled run.
    pub warm_bytes: u64,
}

/// The ceiling, a new channel and a settled one, for each of [`CELLS`].
pub fn run(base: &Path, plan: &Plan, progress: &Progress) -> Result<Vec<SteadyResult>> {
    let mut out = Vec::new();
    for cell in CELLS {
        let max = max_events(plan, cell);
        let owned = scenarios::bodies(cell, 0x57EA);
        let mut r = SteadyResult {
            cell,
            ..SteadyResult::default()
        };
        progress.step(&format!(
            "steady: {} B events, batch {}: the ceiling, a new channel, a settled one",
            cell.size, cell.batch
        ));
        let dir = base.join("steady-ceiling");
        fresh_dir(&dir)?;
        let ceiling = Kind::Ceiling.open(&dir, 1)?;
        r.ceiling = scenarios::put_only(&*ceiling, cell, plan.duration, max)?;
        drop(ceiling);
        remove_run_dir(&dir)?;

        let dir = base.join("steady-new");
        fresh_dir(&dir)?;
        let fresh = Sluicegate::open_plain(&dir, 1)?;
        // One batch put and taken first, as the matrix does: the first file is made then.
        warm(&fresh, &owned, 1)?;
        let (made0, _) = files(&fresh);
        let waits0 = waits(&fresh);
        let before = Written::now();
        r.fresh = scenarios::put_only(&fresh, cell, plan.duration, max)?;
        r.fresh_io = Written::now().since(before);
        r.fresh_made = files(&fresh).0 - made0;
        r.fresh_waits = since(waits(&fresh), waits0);
        drop(fresh);
        remove_run_dir(&dir)?;

        // Settled: more than the run can write put and taken, then a checkpoint, which releases
        // the files behind the log for reuse (up to `kept_log_files`, 16, are kept).
        let dir = base.join("steady-settled");
        fresh_dir(&dir)?;
        let settled = Sluicegate::open_plain(&dir, 1)?;
        let file_bytes = u64::from(sluicegate_config(&dir, 1).max_file_bytes);
        let run_bytes = max * cell.size as u64;
        r.warm_bytes = (run_bytes.div_ceil(file_bytes) + 1) * file_bytes;
        warm(&settled, &owned, r.warm_bytes)?;
        settled.channel().checkpoint()?;
        // A file the warm-up's last roll started making is written to its end on its thread:
        // wait for that, so its zeros do not fall into the run.
        quiet_writes();
        let (made0, reused0) = files(&settled);
        let waits0 = waits(&settled);
        let before = Written::now();
        r.settled = scenarios::put_only(&settled, cell, plan.duration, max)?;
        r.settled_io = Written::now().since(before);
        r.settled_waits = since(waits(&settled), waits0);
        let (made, reused) = files(&settled);
        (r.settled_made, r.settled_reused) = (made - made0, reused - reused0);
        drop(settled);
        remove_run_dir(&dir)?;
        out.push(r);
    }
    Ok(out)
}

/// Waits until the process has handed nothing to `write` calls for 200 ms (at most 10 s).
fn quiet_writes() {
    for _ in 0..50 {
        let before = Written::now();
        std::thread::sleep(std::time::Duration::from_millis(200));
        if Written::now().since(before).handed == 0 {
            return;
        }
    }
}

/// Log files made and reused so far.
fn files(s: &Sluicegate) -> (u64, u64) {
    let st = s.channel().stats();
    (st.files_created, st.files_recycled)
}

/// Log writes that have waited for a file being made so far.
fn waits(s: &Sluicegate) -> FileWaits {
    s.channel().stats().file_waits
}

/// The waits between two readings (the longest is left out: the reading before may hold the
/// warm-up's).
fn since(now: FileWaits, before: FileWaits) -> FileWaits {
    FileWaits {
        count: now.count - before.count,
        total_us: now.total_us - before.total_us,
        longest_us: 0,
    }
}

/// Puts at least `bytes` of events (one batch at least) in batches of `events`, then takes them
/// all.
fn warm(s: &Sluicegate, events: &[Vec<u8>], bytes: u64) -> Result<()> {
    let batch: Vec<&[u8]> = events.iter().map(|b| &b[..]).collect();
    let per_batch: u64 = batch.iter().map(|b| b.len() as u64).sum();
    let (mut put, mut queued) = (0u64, 0u64);
    // Bounded by `bytes`.
    while put < bytes {
        s.put(&batch)?;
        put += per_batch;
        queued += batch.len() as u64;
    }
    // Bounded by what was queued.
    while queued > 0 {
        let (got, _) = s.take(1000)?;
        if got == 0 {
            return Err(format!("the warm-up found {queued} events missing").into());
        }
        queued -= got as u64;
    }
    Ok(())
}
