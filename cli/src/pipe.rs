//! `put`, `take` and `checkpoint`: the commands that write to the channel.
//!
//! `put` and `take` reach the channel through a [`Session`]: the owner's socket if a process
//! owns the home, else the channel itself, served on the socket for the next process. So any
//! number of producers and consumers can run on one home at once, in any order.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use sluicegate_agent::sinks::exec::ExecSink;
use sluicegate_agent::sinks::{run_sink, RunnerSettings, TakeSide, Taken};
use sluicegate_agent::{ClientError, Session};
use sluicegate_file::FileChannelConfig;

use crate::fail::{io, Fail};
use crate::home::{self, CreateArgs, HomeArgs};

/// The batch size: the one given, which must fit a transaction, or 100 (or less, to fit).
fn check_batch(batch: Option<u32>, config: &FileChannelConfig) -> Result<u32, Fail> {
    match batch {
        Some(b) if b > config.transaction_capacity => Err(Fail::usage(format!(
            "--batch {b} is above the channel's transaction_capacity ({})",
            config.transaction_capacity
        ))),
        Some(b) => Ok(b),
        None => Ok(100.min(config.transaction_capacity).max(1)),
    }
}

/// How long a process waits for another one that holds the home without serving it yet (it
/// is opening the channel, or handing it over) before it gives up.
const ATTACH_PATIENCE: Duration = Duration::from_secs(30);
/// A put commits what it has read once no new line came for this long, so events reach a
/// consumer promptly while a slow producer runs.
const LINGER: Duration = Duration::from_millis(5);

/// Set by SIGINT and SIGTERM: finish the batch in hand, hand the home over, and exit.
static STOP: AtomicBool = AtomicBool::new(false);

fn watch_signals() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(signal, || STOP.store(true, Ordering::Relaxed))
        };
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Reaches the channel in the home: through its owner if one runs, else as the owner.
fn attach(home: &HomeArgs, config: &FileChannelConfig) -> Result<Session, Fail> {
    let mut spinner = None;
    let session = Session::attach(&home.dir, config, ATTACH_PATIENCE, &mut || {
        spinner = Some(crate::progress::spinner("recovering the channel"));
    });
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    session.map_err(|e| Fail::runtime(e.to_string()))
}

/// Attaches again after the owner left or died, or fails with the call's error.
fn reattach(session: &mut Session, why: &ClientError) -> Result<(), Fail> {
    session
        .reattach()
        .map_err(|e| Fail::runtime(format!("{why}; then: {e}")))
}

/// What the stdin reader hands over.
enum Input {
    Line(Vec<u8>),
    /// A line over max_event_bytes, skipped without being held (its number).
    TooLong {
        line: u64,
    },
    End,
    Failed(std::io::Error),
}

/// Reads stdin line by line on its own thread, never holding more than `max` bytes of a line.
fn read_lines(max: usize, depth: usize) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(depth);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut number = 0u64;
        // Bounded by the input.
        loop {
            number += 1;
            let mut line = Vec::new();
            let outcome = read_bounded_line(&mut input, &mut line, max);
            let msg = match outcome {
                Ok(LineRead::End) => Input::End,
                Ok(LineRead::Line) => Input::Line(line),
                Ok(LineRead::TooLong) => Input::TooLong { line: number },
                Err(e) => Input::Failed(e),
            };
            let last = matches!(msg, Input::End | Input::Failed(_));
            if tx.send(msg).is_err() || last {
                break;
            }
        }
    });
    rx
}

enum LineRead {
    Line,
    /// The line was longer than the limit; it was read to its end and dropped.
    TooLong,
    End,
}

/// Reads one line (without its newline) into `line`, keeping at most `max` bytes: a longer
/// line is consumed to its newline and dropped.
fn read_bounded_line(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut dropped = false;
    let mut any = false;
    // Bounded by the input: each turn consumes buffered bytes or ends.
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (dropped, any) {
                (true, _) => LineRead::TooLong,
                (false, true) => LineRead::Line,
                (false, false) => LineRead::End,
            });
        }
        any = true;
        let (part, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !dropped && line.len() + part.len() > max {
            dropped = true;
            line.clear();
            line.shrink_to_fit();
        } else if !dropped {
            line.extend_from_slice(part);
        }
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            return Ok(if dropped {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// `put`: one event per line of stdin, committed every `batch` lines and whenever the input
/// pauses.
pub fn put(home: &HomeArgs, batch: Option<u32>, create: &CreateArgs) -> Result<ExitCode, Fail> {
    let (config, new) = home.for_create(create)?;
    let batch = check_batch(batch, &config)?;
    config
        .core_config()
        .map_err(|e| Fail::usage(format!("bad channel settings: {e}")))?;
    sluicegate_agent::home::create_dir_durably(&home.dir)
        .map_err(|e| io(format!("cannot create {}", home.dir.display()), e))?;
    watch_signals();
    let mut session = attach(home, &config)?;
    if new && session.is_owner() {
        home.write_settings(&config)?;
    }
    let lines = read_lines(config.max_event_bytes as usize, 2 * batch as usize);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut total: u64 = 0;
    // The first few lines skipped for being over max_event_bytes, and how many in all.
    let mut skipped: Vec<u64> = Vec::new();
    let mut skipped_total: u64 = 0;
    let mut pending: Vec<Vec<u8>> = Vec::with_capacity(batch as usize);
    let mut ended = false;
    let mut failure = None;
    // Bounded by the input.
    while !ended {
        // Wait for a first line (looking at the stop flag now and then), then gather lines
        // until the batch is full or the input pauses.
        let mut wait = Duration::from_millis(100);
        while pending.len() < batch as usize {
            match lines.recv_timeout(wait) {
                Ok(Input::Line(l)) => {
                    pending.push(l);
                    wait = LINGER;
                }
                Ok(Input::TooLong { line }) => {
                    if skipped.len() < 5 {
                        skipped.push(line);
                    }
                    skipped_total += 1;
                }
                Ok(Input::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    ended = true;
                    break;
                }
                Ok(Input::Failed(e)) => {
                    failure = Some(io("cannot read stdin", e));
                    ended = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if pending.is_empty() => {
                    if stopping() {
                        ended = true;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        // Bounded: each failed try either attaches again (to a new owner) or fails.
        loop {
            match session.client().put_batch(&pending) {
                Ok(()) => break,
                Err(e) if e.is_retryable() => reattach(&mut session, &e)?,
                Err(e @ ClientError::Gone { .. }) => {
                    // The connection broke before the answer: if the owner died after its
                    // commit the batch is durable already, else it is not. Sending it again
                    // keeps it (at least once).
                    eprintln!(
                        "sluicegate: {e}: sending the batch again (twice in the channel if the owner died after committing it)"
                    );
                    reattach(&mut session, &e)?;
                }
                Err(e) => {
                    let first = total + 1;
                    return Err(Fail::runtime(format!(
                        "lines {first} to {}: {e}",
                        total + pending.len() as u64
                    )));
                }
            }
        }
        total += pending.len() as u64;
        pending.clear();
        writeln!(out, "committed {total}")
            .and_then(|()| out.flush())
            .map_err(|e| io("cannot write stdout", e))?;
    }
    session.close()?;
    if let Some(f) = failure {
        return Err(f);
    }
    if skipped_total > 0 {
        let named: Vec<String> = skipped.iter().map(u64::to_string).collect();
        return Err(Fail::runtime(format!(
            "line{} {}{} over max_event_bytes ({}): skipped; {total} other lines committed",
            if skipped_total > 1 { "s" } else { "" },
            named.join(", "),
            if skipped_total > skipped.len() as u64 {
                format!(" and {} more", skipped_total - skipped.len() as u64)
            } else {
                String::new()
            },
            config.max_event_bytes
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `take` delivers.
pub enum Delivery {
    /// To stdout: a batch commits once stdout accepted it (a pipe accepts bytes whether or not
    /// its reader ever handles them).
    Stdout,
    /// To a command per batch, committing only when it exits 0.
    Exec(String),
}

/// `take`: events to stdout or a command, a batch committed only after it was delivered.
pub fn take(
    home: &HomeArgs,
    batch: Option<u32>,
    limit: Option<u64>,
    follow: bool,
    delivery: Delivery,
) -> Result<ExitCode, Fail> {
    let config = home.existing()?;
    let batch = check_batch(batch, &config)?;
    watch_signals();
    let mut session = attach(home, &config)?;
    let skipped_before = skipped_events(&mut session);
    let mut side = SessionTakes {
        session: &mut session,
    };
    let outcome = match delivery {
        Delivery::Exec(command) => {
            // Failed deliveries and their retries are logged on stderr.
            sluicegate_agent::agent::init_logging("warn");
            let mut sink = ExecSink::shell(&command, Duration::from_secs(3600));
            let settings = RunnerSettings {
                batch,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                until_empty: !follow,
                limit,
                channel_errors_fatal: true,
            };
            run_sink(&mut sink, &mut side, settings, &STOP, None, None)
                .map(drop)
                .map_err(Fail::runtime)
        }
        Delivery::Stdout => to_stdout(&mut side, batch, limit, follow),
    };
    let skipped = skipped_events(&mut session).saturating_sub(skipped_before);
    session.close()?;
    outcome?;
    if skipped > 0 {
        // A damage no open can see (a record decayed inside the log) is still never silent.
        return Err(Fail::runtime(format!(
            "{skipped} queued events failed their checks when read and were skipped, never delivered (`sluicegate verify` names the damage)"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// The owner's count of queued events skipped because their record failed its checks
/// (`corrupt_events_skipped`; by any consumer), or 0 if it cannot tell.
fn skipped_events(session: &mut Session) -> u64 {
    session
        .client()
        .stats()
        .ok()
        .and_then(|v| v["corrupt_events_skipped"].as_u64())
        .unwrap_or(0)
}

fn to_stdout(
    side: &mut SessionTakes<'_>,
    batch: u32,
    limit: Option<u64>,
    follow: bool,
) -> Result<(), Fail> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut taken: u64 = 0;
    // Bounded by the limit, the channel running dry, a signal, or the reader going away.
    while !stopping() {
        if limit.is_some_and(|l| taken >= l) {
            break;
        }
        let want = limit.map_or(batch as u64, |l| (l - taken).min(batch as u64)) as u32;
        let wait = if follow {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let events = side.take(want, wait).map_err(Fail::runtime)?;
        if events.is_empty() {
            side.rollback().map_err(Fail::runtime)?;
            if !follow {
                break;
            }
            continue;
        }
        for event in &events {
            out.write_all(&event.body)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| io("cannot write stdout (the batch is not committed)", e))?;
        }
        out.flush()
            .map_err(|e| io("cannot write stdout (the batch is not committed)", e))?;
        side.commit().map_err(Fail::runtime)?;
        taken += events.len() as u64;
    }
    Ok(())
}

/// Takes through the session, attaching again when the owner leaves: a transaction the owner
/// never began is simply asked of the next one; one it rolled back is delivered again.
struct SessionTakes<'a> {
    session: &'a mut Session,
}

impl TakeSide for SessionTakes<'_> {
    fn take(&mut self, max: u32, wait: Duration) -> Result<Vec<Taken>, String> {
        let wait_ms = wait.as_millis().min(u32::MAX as u128) as u32;
        // Bounded: each failed try attaches again or fails.
        loop {
            match self.session.client().take(max, wait_ms) {
                Ok(events) => {
                    return Ok(events
                        .into_iter()
                        .map(|e| Taken {
                            body: e.into_vec(),
                            id: None,
                        })
                        .collect())
                }
                Err(e @ (ClientError::Leaving | ClientError::Gone { .. })) => {
                    self.session
                        .reattach()
                        .map_err(|a| format!("{e}; then: {a}"))?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        match self.session.client().commit() {
            Ok(()) => Ok(()),
            Err(e @ ClientError::Gone { .. }) => {
                // The owner died before answering: the take may be delivered again.
                eprintln!("sluicegate: {e}: the batch may be delivered again");
                self.session
                    .reattach()
                    .map_err(|a| format!("{e}; then: {a}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn rollback(&mut self) -> Result<(), String> {
        match self.session.client().rollback() {
            Ok(()) => Ok(()),
            // A broken connection rolled it back already.
            Err(e @ ClientError::Gone { .. }) => self
                .session
                .reattach()
                .map_err(|a| format!("{e}; then: {a}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `checkpoint`: open, write a whole checkpoint, close without another.
pub fn checkpoint(home: &HomeArgs, json: bool) -> Result<ExitCode, Fail> {
    let config = FileChannelConfig {
        checkpoint_on_close: false,
        checkpoint_interval_ms: 0,
        ..home.existing()?
    };
    let ch = home::open(config)?;
    let started = std::time::Instant::now();
    ch.checkpoint()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let stats = ch.stats();
    let events = ch.len();
    ch.close()?;
    if json {
        println!(
            "{}",
            json!({"checkpoint": "written", "events": events, "milliseconds": ms,
                   "checkpoints_this_open": stats.channel.checkpoints})
        );
    } else {
        println!("checkpoint written: {events} events, in {ms:.1} ms");
    }
    Ok(ExitCode::SUCCESS)
}
