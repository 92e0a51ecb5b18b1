//! Sinks: take batches from a channel and deliver them, committing a take only after the
//! destination acknowledged the whole batch.
//!
//! A [`Sink`] knows only its destination; [`run_sink`] is the loop every sink shares (Flume's
//! sink runner): take a batch, deliver it, commit on success, roll back and retry with backoff
//! on failure. The channel side is a [`TakeSide`]: the channel itself in the agent, or a
//! client connection for `sluicegate take --exec`.
//!
//! **Invariant:** a take is committed only after `Sink::finish` returned `Ok` for the batch,
//! and every event it reported refused for good is durably in the dead-letter file; on any
//! failure or on stop it is rolled back, so the events are delivered again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluicegate_core::{Error, EventId};
use sluicegate_file::{FileChannel, FileChannelError, Transaction};

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
///
/// A batch is sent in two halves, so the runner can do the channel's work for the batch before
/// and the batch after while the destination works on this one: [`Sink::start`] sends it
/// without waiting, [`Sink::finish`] waits for the acknowledgement. At most one batch is
/// started and not finished at a time.
pub trait Sink: Send {
    /// Sends `events` in order without waiting for the destination to acknowledge them. A
    /// sink that cannot split its work sends nothing here and everything in `finish` (the
    /// default). An error means the batch will be delivered again.
    fn start(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<(), String> {
        let _ = (events, stop);
        Ok(())
    }

    /// Waits until the destination acknowledged the batch `start` sent (or delivers it whole).
    /// `Ok(refused)` means the destination acknowledged every event except those in
    /// `refused`, which it refused for good (too large, not authorized); an error means some
    /// or none may have arrived, and the batch will be delivered again. `stop` is set when the
    /// agent is stopping: a long delivery should give up.
    fn finish(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String>;

    /// Forgets a batch that was started and will not be finished (its take rolled back): the
    /// next `start` must not mistake that batch's late acknowledgements for its own. A sink
    /// that fails in `start` or `finish` forgets the batch itself.
    fn abandon(&mut self) {}

    /// Delivers `events` in order: [`Sink::start`], then [`Sink::finish`].
    fn deliver(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        self.start(events, stop)?;
        self.finish(events, stop)
    }
}

/// The channel end of a sink: a take transaction, and with [`TakeSide::take_ahead`] a second
/// one begun while the first is being delivered.
pub trait TakeSide {
    /// Takes up to `max` events into the open transaction (the newest, if two are open), or a
    /// new one, waiting up to `wait` for the first.
    fn take(&mut self, max: u32, wait: Duration) -> Result<Vec<Taken>, String>;
    /// Commits the oldest open transaction (durably).
    fn commit(&mut self) -> Result<(), String>;
    /// Rolls every open transaction back, the newest first.
    fn rollback(&mut self) -> Result<(), String>;
    /// Takes up to `max` of the events after the open transaction's, without waiting, into a
    /// second transaction beside it: the next batch, ready when the open one is acknowledged.
    /// An empty result leaves no second transaction open. `None`: this side holds one
    /// transaction at a time (the default).
    fn take_ahead(&mut self, max: u32) -> Result<Option<Vec<Taken>>, String> {
        let _ = max;
        Ok(None)
    }
}

/// A channel in this process as a [`TakeSide`], with up to two transactions open.
pub struct LocalTakes<'a> {
    channel: &'a FileChannel,
    served: &'a Served,
    /// Open transactions, the oldest first, each with how many events it took.
    open: VecDeque<(Transaction<'a>, u64)>,
}

impl<'a> LocalTakes<'a> {
    /// Takes from `served`'s channel.
    pub fn new(served: &'a Served) -> Self {
        LocalTakes {
            channel: &served.channel,
            served,
            open: VecDeque::new(),
        }
    }

    /// Takes up to `max` events into `tx`, waiting up to `wait` for the first.
    fn fill(
        &self,
        tx: &mut Transaction<'a>,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Taken>, String> {
        ChannelCounters::add(&self.served.counters.take_attempts, 1);
        let mut events = Vec::new();
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
        Ok(events)
    }
}

impl TakeSide for LocalTakes<'_> {
    fn take(&mut self, max: u32, wait: Duration) -> Result<Vec<Taken>, String> {
        if self.open.is_empty() {
            let tx = self.channel.begin().map_err(|e| e.to_string())?;
            self.open.push_back((tx, 0));
        }
        let Some(mut newest) = self.open.pop_back() else {
            return Ok(Vec::new());
        };
        let events = self.fill(&mut newest.0, max, wait);
        newest.1 += events.as_ref().map_or(0, |e| e.len() as u64);
        self.open.push_back(newest);
        events
    }

    fn commit(&mut self) -> Result<(), String> {
        if let Some((tx, taken)) = self.open.pop_front() {
            tx.commit().map_err(|e| e.to_string())?;
            ChannelCounters::add(&self.served.counters.take_successes, taken);
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), String> {
        let mut first_error = Ok(());
        // Bounded by the open transactions (two at most).
        while let Some((tx, _)) = self.open.pop_back() {
            if let Err(e) = tx.rollback() {
                first_error = first_error.and(Err(e.to_string()));
            }
        }
        first_error
    }

    fn take_ahead(&mut self, max: u32) -> Result<Option<Vec<Taken>>, String> {
        let mut tx = match self.channel.begin() {
            Ok(tx) => tx,
            // Every slot in use (a small max_transactions): deliver one batch at a time.
            Err(FileChannelError::Channel(Error::TooManyTransactions)) => {
                return Ok(Some(Vec::new()))
            }
            Err(e) => return Err(e.to_string()),
        };
        let events = match self.fill(&mut tx, max, Duration::ZERO) {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.rollback();
                return Err(e);
            }
        };
        if events.is_empty() {
            tx.rollback().map_err(|e| e.to_string())?;
        } else {
            self.open.push_back((tx, events.len() as u64));
        }
        Ok(Some(events))
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
/// The channel's work overlaps the destination's: while a batch is with the destination, the
/// next one is taken (a second transaction, where the side allows it), and once a batch is
/// acknowledged the next one is started before the acknowledged one's commit is synced.
/// Nothing commits before its own acknowledgement, and a failed batch rolls back together
/// with the one taken after it, so the next try delivers both in their order.
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
    // Events the runner may still take once `counted` are delivered or on their way.
    let room = |counted: u64| -> u32 {
        match settings.limit {
            Some(l) => l.saturating_sub(counted).min(settings.batch as u64) as u32,
            None => settings.batch,
        }
    };
    // A batch started at the destination, its take open, with when its take began.
    let mut flight: Option<(Vec<Taken>, Instant)> = None;
    // Bounded by `stop`, the limit, or (with `until_empty`) the channel running dry.
    while !stop.load(Ordering::Relaxed) {
        let (events, started) = match flight.take() {
            Some(batch) => batch,
            None => {
                let want = room(outcome.delivered);
                if want == 0 {
                    break;
                }
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
                if let Err(why) = sink.start(&events, stop) {
                    let failed = Failed::new(&mut outcome, &mut backoff, settings, metrics);
                    failed.retry(side, stop, events.len(), &why)?;
                    continue;
                }
                (events, started)
            }
        };
        // The next batch, taken while the destination works on this one.
        let ahead = match room(outcome.delivered + events.len() as u64) {
            0 => Vec::new(),
            want => match side.take_ahead(want) {
                Ok(ahead) => ahead.unwrap_or_default(),
                Err(e) => {
                    sink.abandon();
                    channel_failure(side, settings, &mut backoff, stop, metrics, &e)?;
                    continue;
                }
            },
        };
        let delivered = sink
            .finish(&events, stop)
            .and_then(|refused| shelve(&events, &refused, dead_letter));
        let shelved = match delivered {
            Ok(shelved) => shelved,
            Err(why) => {
                let failed = Failed::new(&mut outcome, &mut backoff, settings, metrics);
                failed.retry(side, stop, events.len(), &why)?;
                continue;
            }
        };
        // Started before this batch's commit, so the destination works on it during the sync.
        let next_started = Instant::now();
        let next_events = ahead.len();
        let next = match ahead.is_empty() {
            true => Ok(None),
            false => sink.start(&ahead, stop).map(|()| Some(ahead)),
        };
        if let Err(e) = side.commit() {
            // Delivered but not committed: the batch will be delivered again, and the next
            // one, rolled back with it, is forgotten by the sink.
            if matches!(next, Ok(Some(_))) {
                sink.abandon();
            }
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
        match next {
            Ok(next) => flight = next.map(|ahead| (ahead, next_started)),
            Err(why) => {
                let failed = Failed::new(&mut outcome, &mut backoff, settings, metrics);
                failed.retry(side, stop, next_events, &why)?;
            }
        }
    }
    if flight.is_some() {
        // Stopped with a batch at the destination: it is delivered again after the restart.
        sink.abandon();
        side.rollback()?;
    }
    Ok(outcome)
}

/// A failed delivery, about to be rolled back and tried again.
struct Failed<'a> {
    outcome: &'a mut RunnerOutcome,
    backoff: &'a mut Duration,
    settings: RunnerSettings,
    metrics: Option<&'a Component>,
}

impl<'a> Failed<'a> {
    fn new(
        outcome: &'a mut RunnerOutcome,
        backoff: &'a mut Duration,
        settings: RunnerSettings,
        metrics: Option<&'a Component>,
    ) -> Self {
        Failed {
            outcome,
            backoff,
            settings,
            metrics,
        }
    }

    /// Rolls back every open take, counts the failure, and waits the backoff (unless
    /// stopping).
    fn retry(
        self,
        side: &mut dyn TakeSide,
        stop: &AtomicBool,
        events: usize,
        why: &str,
    ) -> Result<(), String> {
        side.rollback()?;
        self.outcome.failures += 1;
        if let Some(m) = self.metrics {
            m.errors.inc();
            m.retries.inc();
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        tracing::warn!(
            events,
            retry_in_ms = self.backoff.as_millis() as u64,
            "delivery failed, the batch is rolled back and will be retried: {why}"
        );
        sleep_unless(stop, *self.backoff);
        *self.backoff = (*self.backoff * 2).min(self.settings.max_backoff);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use sluicegate_file::FileChannelConfig;

    /// A destination that keeps what each call saw: the batch's events, and the channel's
    /// committed takes and take requests at that moment. Its `finish` fails on the calls
    /// listed in `fail`.
    struct Script {
        counters: Arc<ChannelCounters>,
        calls: Vec<(&'static str, Vec<u8>, u64, u64)>,
        finished: usize,
        fail: Vec<usize>,
        acknowledged: Vec<u8>,
    }

    impl Script {
        fn note(&mut self, what: &'static str, events: &[Taken]) {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let bodies = events.iter().map(|e| e.body[0]).collect();
            let (committed, asked) = (
                get(&self.counters.take_successes),
                get(&self.counters.take_attempts),
            );
            self.calls.push((what, bodies, committed, asked));
        }
    }

    impl Sink for Script {
        fn start(&mut self, events: &[Taken], _stop: &AtomicBool) -> Result<(), String> {
            self.note("start", events);
            Ok(())
        }

        fn finish(&mut self, events: &[Taken], _stop: &AtomicBool) -> Result<Vec<Refused>, String> {
            self.note("finish", events);
            self.finished += 1;
            if self.fail.contains(&self.finished) {
                return Err("refused by the script".into());
            }
            self.acknowledged.extend(events.iter().map(|e| e.body[0]));
            Ok(Vec::new())
        }
    }

    /// A channel holding the events `0..n`, one byte each.
    fn channel_of(dir: &std::path::Path, n: u8) -> Served {
        let config = FileChannelConfig {
            max_file_bytes: 1 << 20,
            max_event_bytes: 64,
            transaction_capacity: 16,
            minimum_required_space_bytes: 0,
            checkpoint_interval_ms: 0,
            ..FileChannelConfig::in_dir(dir)
        };
        let channel = FileChannel::open(config).unwrap();
        let mut tx = channel.begin().unwrap();
        for i in 0..n {
            tx.put(&[i]).unwrap();
        }
        tx.commit().unwrap();
        Served::new("t".into(), Arc::new(channel))
    }

    fn drain(served: &Served, sink: &mut Script) -> RunnerOutcome {
        let settings = RunnerSettings {
            batch: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            until_empty: true,
            limit: None,
            channel_errors_fatal: true,
        };
        let mut side = LocalTakes::new(served);
        run_sink(
            sink,
            &mut side,
            settings,
            &AtomicBool::new(false),
            None,
            None,
        )
        .unwrap()
    }

    fn script(served: &Served, fail: Vec<usize>) -> Script {
        Script {
            counters: Arc::clone(&served.counters),
            calls: Vec::new(),
            finished: 0,
            fail,
            acknowledged: Vec::new(),
        }
    }

    /// While a batch is with the destination the next one is already taken, and it is started
    /// before the acknowledged one's commit; no take commits before its batch's `finish`.
    #[test]
    fn the_next_batch_is_taken_during_a_delivery_and_nothing_commits_early() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel_of(tmp.path(), 7);
        let mut sink = script(&served, Vec::new());
        let outcome = drain(&served, &mut sink);
        assert_eq!(outcome.delivered, 7);
        assert_eq!(sink.acknowledged, (0..7).collect::<Vec<u8>>());
        // (call, batch, takes committed, take requests): batch 2 is taken (the second
        // request) before batch 1 is finished, and started before batch 1 commits; during the
        // last batch the take ahead finds nothing (the fourth request).
        let expected: Vec<(&str, Vec<u8>, u64, u64)> = vec![
            ("start", vec![0, 1, 2], 0, 1),
            ("finish", vec![0, 1, 2], 0, 2),
            ("start", vec![3, 4, 5], 0, 2),
            ("finish", vec![3, 4, 5], 3, 3),
            ("start", vec![6], 3, 3),
            ("finish", vec![6], 6, 4),
        ];
        assert_eq!(sink.calls, expected);
        assert!(served.channel.is_empty());
    }

    /// A failed delivery rolls back its batch and the one taken after it: the next tries
    /// deliver every event once, in order.
    #[test]
    fn a_failed_batch_rolls_back_with_the_one_taken_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel_of(tmp.path(), 10);
        let mut sink = script(&served, vec![2, 3]);
        let outcome = drain(&served, &mut sink);
        assert_eq!((outcome.delivered, outcome.failures), (10, 2));
        assert_eq!(sink.acknowledged, (0..10).collect::<Vec<u8>>());
        let finished: Vec<Vec<u8>> = sink
            .calls
            .iter()
            .filter(|c| c.0 == "finish")
            .map(|c| c.1.clone())
            .collect();
        let batches: [&[u8]; 6] = [
            &[0, 1, 2],
            &[3, 4, 5],
            &[3, 4, 5],
            &[3, 4, 5],
            &[6, 7, 8],
            &[9],
        ];
        assert_eq!(finished, batches.map(<[u8]>::to_vec).to_vec());
        assert!(served.channel.is_empty());
    }
}
