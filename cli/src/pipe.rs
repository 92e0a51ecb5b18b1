//! `put`, `take` and `checkpoint`: the commands that open the channel for writing.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use sluicegate_file::{FileChannel, FileChannelConfig};

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

/// `put`: one event per line of stdin.
pub fn put(home: &HomeArgs, batch: Option<u32>, create: &CreateArgs) -> Result<ExitCode, Fail> {
    let (config, new) = home.for_create(create)?;
    let batch = check_batch(batch, &config)?;
    config
        .core_config()
        .map_err(|e| Fail::usage(format!("bad channel settings: {e}")))?;
    std::fs::create_dir_all(&home.dir)
        .map_err(|e| io(format!("cannot create {}", home.dir.display()), e))?;
    let ch = home::open(config.clone())?;
    if new {
        home.write_settings(&config)?;
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut line = Vec::new();
    let mut total: u64 = 0;
    // Bounded by the input: each turn reads one line or ends.
    loop {
        let mut tx = ch.begin()?;
        let mut n = 0u32;
        let mut ended = false;
        while n < batch {
            line.clear();
            let read = input
                .read_until(b'\n', &mut line)
                .map_err(|e| io("cannot read stdin", e))?;
            if read == 0 {
                ended = true;
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            tx.put(&line)
                .map_err(|e| Fail::runtime(format!("line {}: {e}", total + n as u64 + 1)))?;
            n += 1;
        }
        if n > 0 {
            tx.commit()?;
            total += n as u64;
            writeln!(out, "committed {total}")
                .and_then(|()| out.flush())
                .map_err(|e| io("cannot write stdout", e))?;
        }
        if ended {
            break;
        }
    }
    ch.close()?;
    Ok(ExitCode::SUCCESS)
}

/// `take`: events to stdout; a batch is committed only after stdout took it.
pub fn take(
    home: &HomeArgs,
    batch: Option<u32>,
    limit: Option<u64>,
    follow: bool,
) -> Result<ExitCode, Fail> {
    let config = home.existing()?;
    let batch = check_batch(batch, &config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut taken: u64 = 0;
    // With --follow, a producer holding the channel means wait, from the first open on.
    let mut ch = if follow {
        None
    } else {
        Some(home::open(config.clone())?)
    };
    let reopen = FileChannelConfig {
        checkpoint_on_close: false,
        ..config.clone()
    };
    // Bounded by the limit, the channel running dry, or (with --follow) the reader going away.
    loop {
        if limit.is_some_and(|l| taken >= l) {
            break;
        }
        let channel = match &ch {
            Some(c) => c,
            None => {
                // Waiting with --follow: reopen; a producer holding the channel means wait more.
                match FileChannel::open(reopen.clone()) {
                    Ok(c) => ch.insert(c),
                    Err(e) if e.to_string().contains("is in use") => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let want = limit.map_or(batch as u64, |l| (l - taken).min(batch as u64));
        let mut tx = channel.begin()?;
        let mut got = 0u64;
        while got < want {
            match tx.take_vec()? {
                Some(event) => {
                    out.write_all(&event)
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(|e| io("cannot write stdout (the batch is not committed)", e))?;
                    got += 1;
                }
                None => break,
            }
        }
        if got == 0 {
            tx.rollback()?;
            if !follow {
                break;
            }
            // Release the channel while waiting, so that a producer can open it. It closes
            // without a checkpoint: an idle wait writes nothing, and the next open checkpoints
            // the takes it replays.
            if let Some(c) = ch.take() {
                c.close()?;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        out.flush()
            .map_err(|e| io("cannot write stdout (the batch is not committed)", e))?;
        tx.commit()?;
        taken += got;
    }
    if let Some(c) = ch {
        c.close()?;
    }
    Ok(ExitCode::SUCCESS)
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
