//! Recovery of a full channel (from the checkpoint, from the backup, by full replay), the
//! longest producer stall while a checkpoint is written, and RAM per queued event.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluicegate_core::checkpoint::{SlotLayout, Started, STARTED_BYTES};
use sluicegate_core::RecoveryPath;
use sluicegate_file::{FileChannel, FileChannelConfig};

use crate::scenarios::{bodies, Cell, Measured};
use crate::systems::Result;
use crate::Progress;

#[derive(Debug, Clone, Default)]
pub struct RecoveryResults {
    pub events: u64,
    pub event_bytes: usize,
    pub fill_secs: f64,
    /// Heap bytes live with the channel full, less those live before it was opened.
    pub heap_bytes: u64,
    /// What the core asks for: `Config::memory_bytes`.
    pub core_memory_bytes: u64,
    pub capacity: u32,
    pub from_checkpoint: Opened,
    pub from_backup: Opened,
    pub full_replay: Opened,
    /// Bytes of log files read by the sequential read, and its rate.
    pub log_bytes: u64,
    pub sequential_read_bytes_per_sec: f64,
    /// Whether the page cache was dropped before the sequential read and the full replay.
    pub cold: bool,
    /// Stall: commit latencies of a batch-1 producer without checkpoints, and with a background
    /// checkpoint every `stall_interval_ms`.
    pub quiet: Measured,
    pub checkpointing: Measured,
    /// The lock probe's waits beside each (`producer`).
    pub quiet_probe: Measured,
    pub checkpointing_probe: Measured,
    pub checkpoints_during: u64,
    pub stall_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Opened {
    pub secs: f64,
    pub segments_replayed: u64,
    pub records_read: u64,
    pub events: u64,
}

fn config(dir: &Path, events: u64) -> FileChannelConfig {
    let mut c = FileChannelConfig::in_dir(dir);
    // Room for the stall measurement's puts on top of the queue (5,000 to 15,000 a second here;
    // the producer stops when the room runs out).
    c.capacity = (events + 30_000) as u32;
    c.transaction_capacity = 1_000;
    // One producer and the probe; as the throughput runs, two slots per thread and two more.
    c.max_transactions = 4;
    c.minimum_required_space_bytes = 0;
    c.checkpoint_interval_ms = 0;
    c
}

fn open(
    config: &FileChannelConfig,
    expect: RecoveryPath,
    events: u64,
) -> Result<(FileChannel, Opened)> {
    let ch = FileChannel::open(config.clone())?;
    let r = *ch.recovery();
    if r.path != expect || r.events != events {
        return Err(format!(
            "expected recovery by {expect:?} with {events} events, got {:?} with {}",
            r.path, r.events
        )
        .into());
    }
    let o = Opened {
        secs: ch.open_duration().as_secs_f64(),
        segments_replayed: r.segments_replayed,
        records_read: r.records_read,
        events: r.events,
    };
    Ok((ch, o))
}

fn slot_files(config: &FileChannelConfig) -> [PathBuf; 2] {
    [
        config.checkpoint_dir.join("checkpoint.slot"),
        config.backup_checkpoint_dir.join("backup.slot"),
    ]
}

/// Zeroes `len` bytes of a checkpoint slot at `at`.
fn zero(path: &Path, at: u64, len: usize) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&vec![0u8; len], at)?;
    f.sync_data()?;
    Ok(())
}

/// A slot's "started" mark (docs/format.md), if it holds a valid one.
fn started(path: &Path) -> Result<Option<Started>> {
    let mut b = [0u8; STARTED_BYTES];
    File::open(path)?.read_exact_at(&mut b, 0)?;
    Ok(Started::decode(&b).and_then(|r| r.ok()))
}

/// Makes the newest checkpoint look torn: its "started" mark stays, its "complete" mark goes,
/// as a crash in the middle of writing it would leave it. Recovery then knows it was the newest
/// and falls back to the other slot, the backup.
fn tear_newest(slots: &[PathBuf; 2]) -> Result<()> {
    let a = started(&slots[0])?;
    let b = started(&slots[1])?;
    let (path, s) = match (a, b) {
        (Some(a), Some(b)) if b.ckpt_seq > a.ckpt_seq => (&slots[1], b),
        (Some(a), _) => (&slots[0], a),
        (None, Some(b)) => (&slots[1], b),
        (None, None) => return Err("neither slot holds a checkpoint".into()),
    };
    let l = SlotLayout::new(s.max_entries, 8, s.sealed());
    zero(path, l.complete_at, (l.end - l.complete_at) as usize)
}

/// Zeroes a slot's "started" mark: no checkpoint at all.
fn wipe(path: &Path) -> Result<()> {
    zero(path, 0, 4096)
}

/// Drops the page cache, if this process may (root on Linux). Returns whether it did.
pub fn drop_caches() -> bool {
    // Dirty pages first, or dropping the cache keeps them.
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn log_files(config: &FileChannelConfig) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for d in &config.data_dirs {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "seg") {
                v.push(p);
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Reads every log file from start to end in 1 MiB reads; returns bytes and seconds.
fn sequential_read(files: &[PathBuf]) -> Result<(u64, f64)> {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut total = 0u64;
    for p in files {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// Commits of a batch-1 producer of `size`-byte events for `duration`, and beside it a probe
/// that takes the channel's lock (`len`) every 200 µs: the probe's waits are the stalls anyone
/// using the channel sees, without the producer's own `fdatasync` in them.
fn producer(
    ch: &FileChannel,
    room: u64,
    size: usize,
    duration: Duration,
) -> Result<(Measured, Measured)> {
    let body = bodies(
        Cell {
            size,
            batch: 1,
            threads: 1,
        },
        7,
    )
    .remove(0);
    // One commit first, untimed: after an open the first put may open a new log segment, and a
    // new log file is written full of zeros under the channel's lock (the throughput runs'
    // latencies show that cost); this measures the steady state.
    let mut tx = ch.begin()?;
    tx.put(&body)?;
    tx.commit()?;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (produced, probed) = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut m = Measured::default();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                std::hint::black_box(ch.len());
                m.latencies_us
                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                m.commits += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            m
        });
        // A fast disk fills the headroom above the queue before the time is up: the producer
        // then stops, one event short of a full channel (`room`, its capacity), which would
        // wait, then fail.
        let produced = (|| -> Result<Measured> {
            let mut m = Measured::default();
            while start.elapsed() < duration && (ch.len() as u64) + 1 < room {
                let t0 = Instant::now();
                let mut tx = ch.begin()?;
                tx.put(&body)?;
                tx.commit()?;
                m.latencies_us
                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                m.events += 1;
                m.commits += 1;
            }
            Ok(m)
        })();
        stop.store(true, Ordering::Relaxed);
        (produced, probe.join().unwrap())
    });
    let secs = start.elapsed().as_secs_f64();
    let mut produced = produced?;
    let mut probed = probed;
    for m in [&mut produced, &mut probed] {
        m.secs = secs;
        m.latencies_us.sort_unstable();
    }
    Ok((produced, probed))
}

/// Takes the oldest events until `events` are queued: the stall phases each start full.
fn drain_to(ch: &FileChannel, events: u64) -> Result<()> {
    while ch.len() as u64 > events {
        let n = (ch.len() as u64 - events).min(1_000);
        let mut tx = ch.begin()?;
        for _ in 0..n {
            if tx.take_vec()?.is_none() {
                break;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

pub fn run(
    dir: &Path,
    events: u64,
    stall_secs: f64,
    progress: &Progress,
) -> Result<RecoveryResults> {
    let size = 1024;
    let cfg = config(dir, events);
    let mut res = RecoveryResults {
        events,
        event_bytes: size,
        core_memory_bytes: cfg.core_config_for(&cfg.layout())?.memory_bytes() as u64,
        capacity: cfg.capacity,
        ..RecoveryResults::default()
    };

    progress.step(&format!(
        "recovery: filling a channel with {events} events of {size} B"
    ));
    let batch = 1_000usize;
    let owned = bodies(
        Cell {
            size,
            batch,
            threads: 1,
        },
        11,
    );
    let refs: Vec<&[u8]> = owned.iter().map(|b| &b[..]).collect();
    // Everything the harness itself holds is allocated before this.
    let heap_before = crate::heap_live();
    let ch = FileChannel::open(cfg.clone())?;
    let start = Instant::now();
    let mut put = 0u64;
    while put < events {
        let n = (events - put).min(batch as u64) as usize;
        let mut tx = ch.begin()?;
        for e in &refs[..n] {
            tx.put(e)?;
        }
        tx.commit()?;
        put += n as u64;
        progress.sub(put, events);
    }
    res.fill_secs = start.elapsed().as_secs_f64();
    res.heap_bytes = crate::heap_live().saturating_sub(heap_before) as u64;
    ch.close()?;

    progress.step("recovery: from the checkpoint");
    let (ch, o) = open(&cfg, RecoveryPath::Checkpoint, events)?;
    res.from_checkpoint = o;
    ch.close()?;

    progress.step("recovery: from the backup (the newest checkpoint torn)");
    let slots = slot_files(&cfg);
    tear_newest(&slots)?;
    let (ch, o) = open(&cfg, RecoveryPath::Backup, events)?;
    res.from_backup = o;
    ch.close()?;

    progress.step("recovery: sequential read of the log files, then a full replay");
    let files = log_files(&cfg)?;
    res.cold = drop_caches();
    let (bytes, secs) = sequential_read(&files)?;
    res.log_bytes = bytes;
    res.sequential_read_bytes_per_sec = bytes as f64 / secs;
    for s in &slots {
        wipe(s)?;
    }
    if res.cold {
        drop_caches();
    }
    let (ch, o) = open(&cfg, RecoveryPath::FullReplay, events)?;
    res.full_replay = o;

    progress.step("checkpoint stall: a batch-1 producer without checkpoints");
    let d = Duration::from_secs_f64(stall_secs);
    (res.quiet, res.quiet_probe) = producer(&ch, u64::from(cfg.capacity), size, d)?;
    drain_to(&ch, events)?;
    ch.close()?;
    res.stall_interval_ms = 250;
    progress.step(&format!(
        "checkpoint stall: the producer with a background checkpoint every {} ms",
        res.stall_interval_ms
    ));
    let mut c2 = cfg.clone();
    c2.checkpoint_interval_ms = res.stall_interval_ms;
    let ch = FileChannel::open(c2)?;
    let before = ch.stats().channel.checkpoints;
    (res.checkpointing, res.checkpointing_probe) = producer(&ch, u64::from(cfg.capacity), size, d)?;
    res.checkpoints_during = ch.stats().channel.checkpoints - before;
    drain_to(&ch, events)?;
    ch.close()?;
    Ok(res)
}
