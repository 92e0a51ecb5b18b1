//! Whole scenarios timed on the server: put-only, take-only (draining what put-only put) and
//! concurrent put and take, for one cell of the matrix (event size, batch, threads).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::systems::{Result, System};

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    pub size: usize,
    pub batch: usize,
    pub threads: usize,
}

/// What one timed run did.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub events: u64,
    pub commits: u64,
    pub secs: f64,
    /// Commit latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Measured {
    pub fn events_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.events as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn commits_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.commits as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The latency below which `p` (0 to 1) of the commits finished, in microseconds.
    pub fn percentile_us(&self, p: f64) -> Option<u32> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        Some(self.latencies_us[i - 1])
    }

    fn merge(parts: Vec<(u64, u64, Vec<u32>)>, secs: f64) -> Measured {
        let mut m = Measured {
            secs,
            ..Measured::default()
        };
        for (events, commits, lat) in parts {
            m.events += events;
            m.commits += commits;
            m.latencies_us.extend(lat);
        }
        m.latencies_us.sort_unstable();
        m
    }
}

/// Bytes the process has handed to `write`-like calls (`wchar` in `/proc/self/io`, zero where
/// it cannot be read): what the systems asked to write, every thread's, the zeros of new log
/// files included. (`write_bytes`, the pages sent to the disk, was tried and dropped: here it
/// gave the ceiling about 1 MB per 100-byte commit, which no reading of it explains.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub handed: u64,
}

impl Written {
    pub fn now() -> Written {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let handed = text
            .lines()
            .find_map(|l| l.strip_prefix("wchar:")?.trim().parse().ok())
            .unwrap_or(0);
        Written { handed }
    }

    pub fn since(self, before: Written) -> Written {
        Written {
            handed: self.handed.saturating_sub(before.handed),
        }
    }
}

/// Event bodies: distinct bytes per event so no layer can compress or deduplicate them.
pub fn bodies(cell: Cell, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..cell.batch)
        .map(|_| {
            (0..cell.size)
                .map(|_| {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

/// The error a thread of a run met, if one did (the run stops at the first).
fn first_failure(failed: Mutex<Option<crate::systems::Error>>) -> Result<()> {
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// `cell.threads` producers put batches until `duration` has passed or `max_events` are in.
pub fn put_only(
    sys: &dyn System,
    cell: Cell,
    duration: Duration,
    max_events: u64,
) -> Result<Measured> {
    let (reserved, failed, stop) = (AtomicU64::new(0), Mutex::new(None), AtomicBool::new(false));
    let run = Producing {
        start: Instant::now(),
        duration,
        max_events,
        reserved: &reserved,
        taken: None,
        failed: &failed,
        stop: &stop,
    };
    let parts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cell.threads)
            .map(|t| {
                let run = &run;
                s.spawn(move || produce(sys, cell, 0x9E37_79B9 + t as u64, run))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = run.start.elapsed().as_secs_f64();
    first_failure(failed)?;
    Ok(Measured::merge(parts, secs))
}

/// What the producers of a timed run share.
struct Producing<'a> {
    start: Instant,
    duration: Duration,
    max_events: u64,
    /// Events claimed so far, across producers.
    reserved: &'a AtomicU64,
    /// Events taken so far, when consumers run beside the producers: `max_events` then bounds
    /// the queue's depth (claimed but not taken), and a producer at the bound waits for the
    /// consumers instead of stopping, so the run lasts its whole duration.
    taken: Option<&'a AtomicU64>,
    /// The first error a thread met.
    failed: &'a Mutex<Option<crate::systems::Error>>,
    /// Set on the first error, so every thread stops.
    stop: &'a AtomicBool,
}

/// One producer: puts batches (bodies seeded by `seed`) until the run's time is up, its events
/// are all claimed, or a thread failed. Returns its events, commits and commit latencies.
fn produce(sys: &dyn System, cell: Cell, seed: u64, run: &Producing<'_>) -> (u64, u64, Vec<u32>) {
    let owned = bodies(cell, seed);
    let batch: Vec<&[u8]> = owned.iter().map(|b| &b[..]).collect();
    let (mut events, mut commits, mut lat) = (0u64, 0u64, Vec::new());
    while run.start.elapsed() < run.duration && !run.stop.load(Ordering::Relaxed) {
        let want = cell.batch as u64;
        match run.taken {
            None => {
                if run.reserved.fetch_add(want, Ordering::Relaxed) >= run.max_events {
                    break;
                }
            }
            Some(taken) => {
                let claimed =
                    run.reserved
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                            let depth = r.saturating_sub(taken.load(Ordering::Relaxed));
                            (depth + want <= run.max_events.max(want)).then_some(r + want)
                        });
                if claimed.is_err() {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
            }
        }
        let t0 = Instant::now();
        if let Err(e) = sys.put(&batch) {
            *run.failed.lock().unwrap() = Some(e);
            run.stop.store(true, Ordering::Relaxed);
            break;
        }
        lat.push(micros(t0.elapsed()));
        events += cell.batch as u64;
        commits += 1;
    }
    (events, commits, lat)
}

/// `cell.threads` consumers take batches until exactly `total` events are out. Every take must
/// deliver what it asked for and every event must be `cell.size` bytes: the queue holds them.
pub fn take_only(sys: &dyn System, cell: Cell, total: u64) -> Result<Measured> {
    let left = AtomicU64::new(total);
    let failed: Mutex<Option<crate::systems::Error>> = Mutex::new(None);
    let start = Instant::now();
    let parts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cell.threads)
            .map(|_| {
                let (left, failed) = (&left, &failed);
                s.spawn(move || {
                    let (mut events, mut commits, mut lat) = (0u64, 0u64, Vec::new());
                    let reserve = || {
                        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                            (l > 0).then(|| l - l.min(cell.batch as u64))
                        })
                    };
                    while let Ok(l) = reserve() {
                        let want = l.min(cell.batch as u64) as usize;
                        let t0 = Instant::now();
                        match sys.take(want) {
                            Ok((got, bytes)) if got == want && bytes == got * cell.size => {}
                            Ok((got, bytes)) => {
                                *failed.lock().unwrap() = Some(
                                    format!("asked for {want} events, got {got} of {bytes} bytes")
                                        .into(),
                                );
                                break;
                            }
                            Err(e) => {
                                *failed.lock().unwrap() = Some(e);
                                break;
                            }
                        }
                        lat.push(micros(t0.elapsed()));
                        events += want as u64;
                        commits += 1;
                    }
                    (events, commits, lat)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    first_failure(failed)?;
    Ok(Measured::merge(parts, secs))
}

/// `cell.threads` producers and as many consumers at once for `duration`; producers wait while
/// `max_events` are queued (put and not yet taken), so the run measures the system for its
/// whole duration rather than stopping at a count of events. Returns what the producers put
/// and what the consumers took.
pub fn concurrent(
    sys: &dyn System,
    cell: Cell,
    duration: Duration,
    max_events: u64,
) -> Result<(Measured, Measured)> {
    let (reserved, failed, stop) = (AtomicU64::new(0), Mutex::new(None), AtomicBool::new(false));
    let taken = AtomicU64::new(0);
    let run = Producing {
        start: Instant::now(),
        duration,
        max_events,
        reserved: &reserved,
        taken: Some(&taken),
        failed: &failed,
        stop: &stop,
    };
    let start = run.start;
    let (puts, takes): (Vec<_>, Vec<_>) = std::thread::scope(|s| {
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for t in 0..cell.threads {
            let (run, stop, failed, taken) = (&run, &stop, &failed, &taken);
            producers.push(s.spawn(move || produce(sys, cell, 0x5151 + t as u64, run)));
            consumers.push(s.spawn(move || {
                let (mut events, mut commits, mut lat) = (0u64, 0u64, Vec::new());
                while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match sys.take(cell.batch) {
                        Ok((0, _)) => std::thread::yield_now(),
                        Ok((got, _)) => {
                            lat.push(micros(t0.elapsed()));
                            taken.fetch_add(got as u64, Ordering::Relaxed);
                            events += got as u64;
                            commits += 1;
                        }
                        Err(e) => {
                            *failed.lock().unwrap() = Some(e);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                (events, commits, lat)
            }));
        }
        (
            producers.into_iter().map(|h| h.join().unwrap()).collect(),
            consumers.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    let secs = start.elapsed().as_secs_f64();
    first_failure(failed)?;
    Ok((Measured::merge(puts, secs), Measured::merge(takes, secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let m = Measured {
            latencies_us: (1..=1000).collect(),
            ..Measured::default()
        };
        assert_eq!(m.percentile_us(0.5), Some(500));
        assert_eq!(m.percentile_us(0.99), Some(990));
        assert_eq!(m.percentile_us(0.999), Some(999));
        assert_eq!(m.percentile_us(1.0), Some(1000));
        assert_eq!(Measured::default().percentile_us(0.5), None);
    }

    #[test]
    fn bodies_differ_from_event_to_event() {
        let b = bodies(
            Cell {
                size: 64,
                batch: 3,
                threads: 1,
            },
            1,
        );
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|e| e.len() == 64));
        assert_ne!(b[0], b[1]);
        assert_ne!(b[1], b[2]);
    }
}
