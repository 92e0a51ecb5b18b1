//! Short runs into one home, as a cron job or a hook feeding a channel with `sluicegate put`
//! while no consumer runs: open a file channel with the default settings, put one line, commit,
//! close; again and again, with every event left queued. In process: the CLI adds its own
//! start (about a millisecond here) to each run.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use sluicegate_file::{FileChannel, FileChannelConfig};

use crate::systems::Result;

#[derive(Debug, Clone, Default)]
pub struct RestartResults {
    pub runs: u64,
    /// Runs that put and committed their event.
    pub succeeded: u64,
    /// The error of the first run that failed, if one did.
    pub first_failure: Option<String>,
    /// Milliseconds per run (open, put, commit, close), sorted.
    pub run_ms: Vec<f64>,
    /// Bytes the home's files take on disk (allocated blocks) after the last run.
    pub home_bytes: u64,
    /// Log files in the home after the last run.
    pub log_files: usize,
    /// Events queued after the last run, read by one more open.
    pub queued: u64,
}

impl RestartResults {
    /// The `q` quantile of the run times, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.run_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.run_ms.len() - 1) as f64 * q).round() as usize;
        self.run_ms[i]
    }
}

/// `runs` short runs into a fresh home in `dir`.
pub fn run(dir: &Path, runs: u64) -> Result<RestartResults> {
    let config = FileChannelConfig::in_dir(dir);
    let mut r = RestartResults {
        runs,
        ..RestartResults::default()
    };
    for i in 0..runs {
        let started = Instant::now();
        let outcome = (|| {
            let ch = FileChannel::open(config.clone())?;
            let mut tx = ch.begin()?;
            tx.put(format!("line {i}").as_bytes())?;
            tx.commit()?;
            ch.close()
        })();
        match outcome {
            Ok(()) => {
                r.succeeded += 1;
                r.run_ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => {
                r.first_failure = Some(format!("run {i}: {e}"));
                break;
            }
        }
    }
    r.run_ms.sort_by(f64::total_cmp);
    let ch = FileChannel::open(config)?;
    r.queued = ch.len() as u64;
    ch.close()?;
    let (bytes, logs) = home_usage(dir)?;
    r.home_bytes = bytes;
    r.log_files = logs;
    Ok(r)
}

/// The bytes allocated to every file under `dir`, and the log files among them.
fn home_usage(dir: &Path) -> Result<(u64, usize)> {
    let (mut bytes, mut logs) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    // Bounded by the home's files.
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            bytes += meta.blocks() * 512;
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                logs += 1;
            }
        }
    }
    Ok((bytes, logs))
}
