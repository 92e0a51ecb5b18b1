//! `sluicegate load`: producer and consumer threads through a file channel with live progress,
//! then a reopen that shows what recovery did and how long it took.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluicegate_file::{FileChannel, FileChannelConfig, FileChannelError};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The channel's directory (checkpoint, backup and data directories go inside), used when
    /// no --config is given.
    #[arg(long, default_value = "sluicegate-load")]
    pub dir: PathBuf,
    /// A TOML configuration file (see `FileChannelConfig`); replaces --dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long producers run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Producer threads.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Consumer threads.
    #[arg(long, default_value_t = 4)]
    pub consumers: u32,
    /// Events per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Bytes per event.
    #[arg(long, default_value_t = 256)]
    pub event_bytes: usize,
}

pub fn load(args: &LoadArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => FileChannelConfig::from_toml_file(path).map_err(|e| e.to_string())?,
        None => {
            sluicegate_agent::home::create_dir_durably(&args.dir)
                .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
            FileChannelConfig::in_dir(&args.dir)
        }
    };
    if args.event_bytes < 16 || args.event_bytes > config.max_event_bytes as usize {
        return Err(format!(
            "--event-bytes must be 16 to max_event_bytes ({})",
            config.max_event_bytes
        ));
    }
    if args.batch == 0 || args.batch > config.transaction_capacity {
        return Err(format!(
            "--batch must be 1 to transaction_capacity ({})",
            config.transaction_capacity
        ));
    }
    if args.producers == 0 || args.consumers == 0 {
        return Err("--producers and --consumers must be at least 1".into());
    }
    println!(
        "opening a file channel in {} (capacity {}, transaction capacity {}, log files of {} MiB)",
        config
            .checkpoint_dir
            .parent()
            .unwrap_or(&config.checkpoint_dir)
            .display(),
        config.capacity,
        config.transaction_capacity,
        config.max_file_bytes >> 20
    );
    let ch = FileChannel::open(config.clone()).map_err(|e| e.to_string())?;
    report_open("opened", &ch);

    let produced = AtomicU64::new(0);
    let consumed = AtomicU64::new(0);
    let producing = AtomicBool::new(true);
    // Producers still running: one whose last commit is in flight when `producing` turns false
    // counts its events after the commit returns, so "drained" must wait for it to stop.
    let active = AtomicUsize::new(args.producers as usize);
    let failure = std::sync::Mutex::new(None::<String>);
    let started = Instant::now();
    std::thread::scope(|s| {
        for p in 0..args.producers {
            let (ch, produced, producing, failure, active) =
                (&ch, &produced, &producing, &failure, &active);
            s.spawn(move || {
                let mut event = vec![0u8; args.event_bytes];
                let mut n = 0u64;
                while producing.load(Ordering::Relaxed) {
                    let r = (|| -> Result<(), FileChannelError> {
                        let mut tx = ch.begin()?;
                        for _ in 0..args.batch {
                            event[..4].copy_from_slice(&p.to_le_bytes());
                            event[4..12].copy_from_slice(&n.to_le_bytes());
                            n += 1;
                            tx.put(&event)?;
                        }
                        tx.commit()
                    })();
                    match r {
                        Ok(()) => {
                            produced.fetch_add(args.batch as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("producer {p}: {e}"));
                            producing.store(false, Ordering::Relaxed);
                        }
                    }
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
        for c in 0..args.consumers {
            let (ch, produced, consumed, producing, failure, active) =
                (&ch, &produced, &consumed, &producing, &failure, &active);
            s.spawn(move || {
                let mut buf = vec![0u8; args.event_bytes];
                loop {
                    let r = (|| -> Result<u64, FileChannelError> {
                        let mut tx = ch.begin()?;
                        let mut got = 0u64;
                        while got < args.batch as u64 {
                            match tx.take(&mut buf)? {
                                Some(_) => got += 1,
                                None => break,
                            }
                        }
                        tx.commit()?;
                        Ok(got)
                    })();
                    match r {
                        Ok(0) => {
                            if active.load(Ordering::SeqCst) == 0
                                && consumed.load(Ordering::SeqCst)
                                    >= produced.load(Ordering::SeqCst)
                            {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(n) => {
                            consumed.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("consumer {c}: {e}"));
                            producing.store(false, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
        // Progress, once a second, until the producers stop and the consumers drain.
        let mut last = (Instant::now(), 0u64, 0u64);
        let bytes = args.event_bytes as f64;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if producing.load(Ordering::Relaxed)
                && started.elapsed() >= Duration::from_secs(args.seconds)
            {
                producing.store(false, Ordering::Relaxed);
            }
            let stopped = active.load(Ordering::SeqCst) == 0;
            let (p, c) = (
                produced.load(Ordering::SeqCst),
                consumed.load(Ordering::SeqCst),
            );
            let drained = stopped && c >= p;
            let dt = last.0.elapsed().as_secs_f64();
            if dt >= 1.0 || drained {
                let stats = ch.stats();
                println!(
                    "{:>5.1} s  put {:>9.0}/s  take {:>9.0}/s  ({:.1} MB/s in)  depth {:>8}  fsyncs {:>6}  commits per fsync {:.1}  checkpoints {}",
                    started.elapsed().as_secs_f64(),
                    (p - last.1) as f64 / dt,
                    (c - last.2) as f64 / dt,
                    (p - last.1) as f64 * bytes / dt / 1e6,
                    stats.channel.depth,
                    stats.fsyncs,
                    stats.commits_acknowledged as f64 / stats.fsyncs.max(1) as f64,
                    stats.channel.checkpoints,
                );
                last = (Instant::now(), p, c);
            }
            if drained || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                // On a failure the threads stop on their own: producers at `producing`,
                // consumers at their own error or once what was put is drained.
                producing.store(false, Ordering::Relaxed);
                break;
            }
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let (p, c) = (produced.into_inner(), consumed.into_inner());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "done: {p} events put and {c} taken in {secs:.1} s ({:.0} events/s each way)",
        p as f64 / secs
    );
    let stats = ch.stats();
    println!(
        "      {} commits acknowledged with {} fdatasync calls; {} log files created; {} checkpoints",
        stats.commits_acknowledged, stats.fsyncs, stats.files_created, stats.channel.checkpoints
    );

    // Close with a checkpoint, reopen: recovery reads the checkpoint and nothing after it.
    let closing = Instant::now();
    ch.close().map_err(|e| e.to_string())?;
    println!(
        "closed (with a checkpoint) in {:.0} ms",
        closing.elapsed().as_secs_f64() * 1e3
    );
    // Closing without a checkpoint is what a crash leaves behind (the log is synced at every
    // commit either way).
    let as_if_crashing = FileChannelConfig {
        checkpoint_on_close: false,
        ..config.clone()
    };
    let ch = FileChannel::open(as_if_crashing.clone()).map_err(|e| e.to_string())?;
    report_open("reopened after a clean close", &ch);
    if !ch.is_empty() {
        return Err(format!("{} events left after draining", ch.len()));
    }
    // Put a batch and stop without a checkpoint: the next open replays the log's tail.
    {
        let mut tx = ch.begin().map_err(|e| e.to_string())?;
        for _ in 0..args.batch {
            tx.put(&vec![7u8; args.event_bytes])
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    drop(ch);
    let ch = FileChannel::open(config.clone()).map_err(|e| e.to_string())?;
    report_open("reopened as after a crash", &ch);
    let left = {
        let mut tx = ch.begin().map_err(|e| e.to_string())?;
        let mut left = 0;
        while tx.take_vec().map_err(|e| e.to_string())?.is_some() {
            left += 1;
        }
        tx.commit().map_err(|e| e.to_string())?;
        left
    };
    ch.close().map_err(|e| e.to_string())?;
    if left != args.batch {
        return Err(format!(
            "expected {} events after the reopen, found {left}",
            args.batch
        ));
    }
    println!("all {p} events put were taken; the channel is empty");
    Ok(())
}

fn report_open(what: &str, ch: &FileChannel) {
    let r = ch.recovery();
    println!(
        "{what} in {:.1} ms: recovery path {:?}, {} events from the checkpoint, {} records replayed, {} events queued",
        ch.open_duration().as_secs_f64() * 1e3,
        r.path,
        r.checkpoint_events,
        r.records_read,
        ch.len()
    );
}
