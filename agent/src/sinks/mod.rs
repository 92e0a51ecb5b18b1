//! Sinks: take batches from a channel and deliver them, committing a take only after the
//! destination acknowledged the whole batch.
//!
//! A [`Sink`] knows only its destination; [`run_sink`] is the loop every sink shares (Flume's
//! sink runner): take a batch, deliver it, commit on success, roll back and retry with backoff
//! on failure. The channel side is a [`TakeSide`]: the channel itself in the agent, or a
//! client connection for `sluicegate take --exec`.
//!
//! **Invariant:** a take is committed only after `Sink::deliver` returned `Ok` for the batch,
//! and every event it reported refused for good is durably in the dead-letter file; on any
//! failure or on stop it is rolled back, so the events are delivered again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluicegate_core::EventId;
use sluicegate_file::{FileChannel, Transaction};

use crate::dead_letter::DeadLetter;
use crate::metrics::{ChannelCounters, Component, Served};

pub mod exec;
pub mod kafka;
pub mod mqtt;

/// An event's id as the sinks send it and the dead-letter file keeps it: `CHANNEL:EVENT`, the
/// channel's identity in hexadecimal and the event's id in decimal.
pub fn id_text(identity: u128, id: EventId) -> String {
    format!("{identity:032x}:{}", id.get())
}

/// An event taken for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The event's bytes.
    pub body: Vec<u8>,
    /// Its id in its channel, the same each time it is delivered (`None` through a client
    /// connection, whose protocol does not carry ids yet).
    pub id: Option<EventId>,
}

/// An event the destination refused for good: sending it again cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its index in the batch.
    pub index: usize,
    /// The destination's reason.
    pub reason: String,
}

/// A destination.
pub trait Sink: Send {
    /// Delivers `events` in order. `Ok(refused)` means the destination acknowledged every event
    /// except those in `refused`, which it refused for good (too large, not authorized); an
    /// error means some or none may have arrived, and the batch will be delivered again.
    /// `stop` is set when the agent is stopping: a long delivery should give up.
    fn deliver(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String>;
}

/// The channel end of a sink: one take transaction at a time.
pub trait TakeSide {
    /// Takes up to `max` events into a new or the open transaction, waiting up to `wait` for
    /// the first.
    fn take(&mut self, max: u32, wait: Duration) -> Result<Vec<Taken>, String>;
    /// Commits the open transaction (durably).
    fn commit(&mut self) -> Result<(), String>;
    /// Rolls the open transaction back.
    fn rollback(&mut self) -> Result<(), String>;
}

/// A channel in this process as a [`TakeSide`].
pub struct LocalTakes<'a> {
    channel: &'a FileChannel,
    served: &'a Served,
    tx: Option<Transaction<'a>>,
    taken: u64,
}

impl<'a> LocalTakes<'a> {
    /// Takes from `served`'s channel.
    pub fn new(served: &'a Served) -> Self {
        LocalTakes {
            channel: &served.channel,
            served,
            tx: None,
            taken: 0,
        }
    }
}

impl TakeSide for LocalTakes<'_> {
    fn take(&mut self, max: u32, wait: Duration) -> Result<Vec<Taken>, String> {
        if self.tx.is_none() {
            self.tx = Some(self.channel.begin().map_err(|e| e.to_string())?);
            self.taken = 0;
        }
        ChannelCounters::add(&self.served.counters.take_attempts, 1);
        let mut events = Vec::new();
        let Some(tx) = self.tx.as_mut() else {
            return Ok(events);
        };
        // Bounded by `max`.
        while events.len() < max as usize {
            let wait = if events.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            match tx.take_vec_wait_with_id(wait).map_err(|e| e.to_string())? {
                Some((body, id)) => events.push(Taken { body, id: Some(id) }),
                None => break,
            }
        }
        self.taken += events.len() as u64;
        Ok(events)
    }

    fn commit(&mut self) -> Result<(), String> {
        if let Some(tx) = self.tx.take() {
            tx.commit().map_err(|e| e.to_string())?;
            ChannelCounters::add(&self.served.counters.take_successes, self.taken);
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), String> {
        match self.tx.take() {
            Some(tx) => tx.rollback().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// How a sink runner paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Events per take batch.
    pub batch: u32,
    /// The first retry's delay.
    pub backoff: Duration,
    /// The longest delay between retries.
    pub max_backoff: Duration,
    /// Stop once the channel is empty instead of waiting for more.
    pub until_empty: bool,
    /// Stop after delivering this many events.
    pub limit: Option<u64>,
    /// On a failure of the channel itself (a take or a commit refused, an I/O error), return
    /// it (the CLI) rather than roll back, wait and try again (the agent, which keeps serving
    /// and counts the error).
    pub channel_errors_fatal: bool,
}

/// What a runner did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunnerOutcome {
    /// Events delivered and committed.
    pub delivered: u64,
    /// Failed deliveries (each rolled back and tried again).
    pub failures: u64,
    /// Events the destination refused for good, kept in the dead-letter file.
    pub dead_lettered: u64,
}

/// Takes, delivers and commits until `stop` is set (or, with `until_empty`, the channel is
/// empty). Returns an error only when the channel itself fails.
///
/// Events the destination refused for good go to `dead_letter` before the take commits; with
/// no dead-letter file, a batch with a refused event fails and is retried like any failure,
/// so nothing is dropped (and the error says what to configure).
pub fn run_sink(
    sink: &mut dyn Sink,
    side: &mut dyn TakeSide,
    settings: RunnerSettings,
    stop: &AtomicBool,
    metrics: Option<&Component>,
    dead_letter: Option<&DeadLetter>,
) -> Result<RunnerOutcome, String> {
    let mut outcome = RunnerOutcome::default();
    let mut backoff = settings.backoff;
    // Bounded by `stop`, the limit, or (with `until_empty`) the channel running dry.
    while !stop.load(Ordering::Relaxed) {
        let want = match settings.limit {
            Some(l) if outcome.delivered >= l => break,
            Some(l) => (l - outcome.delivered).min(settings.batch as u64) as u32,
            None => settings.batch,
        };
        let started = Instant::now();
        let wait = if settings.until_empty {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        };
        let events = match side.take(want, wait) {
            Ok(events) => events,
            Err(e) => {
                channel_failure(side, settings, &mut backoff, stop, metrics, &e)?;
                continue;
            }
        };
        if events.is_empty() {
            side.rollback()?;
            if settings.until_empty {
                break;
            }
            continue;
        }
        let delivered = sink
            .deliver(&events, stop)
            .and_then(|refused| shelve(&events, &refused, dead_letter));
        match delivered {
            Ok(shelved) => {
                if let Err(e) = side.commit() {
                    // Delivered but not committed: the batch will be delivered again.
                    channel_failure(side, settings, &mut backoff, stop, metrics, &e)?;
                    continue;
                }
                let acknowledged = (events.len() - shelved) as u64;
                outcome.delivered += acknowledged;
                outcome.dead_lettered += shelved as u64;
                backoff = settings.backoff;
                if let Some(m) = metrics {
                    m.events.inc_by(acknowledged);
                    m.dead_lettered.inc_by(shelved as u64);
                    m.batches.inc();
                    m.latency.observe(started.elapsed().as_secs_f64());
                }
            }
            Err(why) => {
                side.rollback()?;
                outcome.failures += 1;
                if let Some(m) = metrics {
                    m.errors.inc();
                    m.retries.inc();
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tracing::warn!(
                    events = events.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "delivery failed, the batch is rolled back and will be retried: {why}"
                );
                sleep_unless(stop, backoff);
                backoff = (backoff * 2).min(settings.max_backoff);
            }
        }
    }
    Ok(outcome)
}

/// Puts the refused events of a batch in the dead-letter file; how many there were. Without a
/// dead-letter file, a refusal fails the batch.
fn shelve(
    events: &[Taken],
    refused: &[Refused],
    dead_letter: Option<&DeadLetter>,
) -> Result<usize, String> {
    if refused.is_empty() {
        return Ok(0);
    }
    let Some(dl) = dead_letter else {
        return Err(format!(
            "the destination refused {} event(s) for good (first: {}); set dead_letter_dir to keep them aside and deliver the rest",
            refused.len(),
            refused[0].reason
        ));
    };
    let mut kept = Vec::with_capacity(refused.len());
    for r in refused {
        let event = events
            .get(r.index)
            .ok_or_else(|| format!("the sink refused event {} of {}", r.index, events.len()))?;
        kept.push((event, r.reason.as_str()));
    }
    dl.record(&kept)?;
    tracing::warn!(
        events = refused.len(),
        file = %dl.path().display(),
        "the destination refused events for good; they are in the dead-letter file: {}",
        refused[0].reason
    );
    Ok(refused.len())
}

/// A take or commit the channel refused: fatal for the CLI; for the agent, roll back (the
/// batch is delivered again), count it, wait and go on.
fn channel_failure(
    side: &mut dyn TakeSide,
    settings: RunnerSettings,
    backoff: &mut Duration,
    stop: &AtomicBool,
    metrics: Option<&Component>,
    e: &str,
) -> Result<(), String> {
    let _ = side.rollback();
    if settings.channel_errors_fatal {
        return Err(e.to_string());
    }
    if let Some(m) = metrics {
        m.errors.inc();
    }
    tracing::error!(
        retry_in_ms = backoff.as_millis() as u64,
        "the channel refused the sink's take or commit (the batch is rolled back): {e}"
    );
    sleep_unless(stop, *backoff);
    *backoff = (*backoff * 2).min(settings.max_backoff);
    Ok(())
}

/// Sleeps `total`, waking early if `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    // Bounded by `until`.
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}
