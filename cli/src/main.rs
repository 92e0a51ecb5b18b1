//! `sluicegate`: the operator program for file channels. See `sluicegate --help` and the
//! README's session.
//!
//! Exit codes: 0 success; 1 a failure at run time (and, for `verify`, corruption found); 2 bad
//! usage (unknown flags, bad values), found before anything changed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod archive;
mod fail;
mod home;
mod inspect;
mod keys;
mod load;
mod migrate;
mod pipe;
mod progress;
mod repair;
mod scan;

use home::{CreateArgs, HomeArgs};

#[derive(Parser)]
#[command(
    name = "sluicegate",
    version,
    about = "Operate Sluicegate file channels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A batch size: 1 or more.
fn batch() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

#[derive(Subcommand)]
enum Command {
    /// Put each line of stdin as an event; commit every --batch lines and at the end.
    Put {
        #[command(flatten)]
        home: HomeArgs,
        /// Lines per transaction [default: 100, or the channel's transaction_capacity if
        /// smaller].
        #[arg(long, value_parser = batch())]
        batch: Option<u32>,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Write events to stdout, one per line, committing each batch once stdout accepted it;
    /// or, with --exec, run a command per batch and commit only when it exits 0.
    ///
    /// `take | cmd` commits a batch when the pipe accepts it, whether or not `cmd` ever reads
    /// it (`take | head -1` loses the rest of the batch). `take --exec 'cmd'` is the safe form.
    Take {
        #[command(flatten)]
        home: HomeArgs,
        /// Events per transaction [default: 100, or the channel's transaction_capacity if
        /// smaller].
        #[arg(long, value_parser = batch())]
        batch: Option<u32>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// When the channel is empty, wait for more instead of stopping. The channel is
        /// released while waiting, so a producer can open it, and a producer holding it makes
        /// the follower wait rather than fail.
        #[arg(long)]
        follow: bool,
        /// Run this shell command once per batch, the events on its stdin one per line; the
        /// batch commits only if it exits 0, else it is rolled back and retried with backoff.
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
    },
    /// Run an agent: own the channels of a TOML config and run its sources and sinks, until
    /// SIGINT or SIGTERM.
    Agent {
        /// The agent's config (see docs/operations.md, "The agent").
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Bridge a gateway's serial uplink to MQTT: publish each reading of a batch with QoS 1,
    /// and acknowledge the batch back over the line once the broker acknowledged all of it;
    /// until SIGINT or SIGTERM.
    Bridge {
        /// The gateway's line: a TCP socket (`HOST:PORT`), as QEMU serves a board's UART.
        #[arg(long, value_name = "HOST:PORT")]
        serial: String,
        /// The broker.
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: String,
        /// The topic every reading is published to.
        #[arg(long, default_value = "sluicegate/readings")]
        topic: String,
        /// The MQTT client id (names the broker's session for the bridge).
        #[arg(long, default_value = "sluicegate-bridge")]
        client_id: String,
        /// How long a batch may wait for its PUBACKs before the gateway is left to send it
        /// again, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Depth, capacity, segments, checkpoint age and how the channel recovers (read-only).
    Stats {
        #[command(flatten)]
        home: HomeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Scan every record, the checkpoint and the backup offline; exit 1 if anything is corrupt.
    Verify {
        #[command(flatten)]
        home: HomeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make a damaged channel open again without losing intact events; keeps a copy of every
    /// file it changes.
    Repair {
        #[command(flatten)]
        home: HomeArgs,
        #[arg(long)]
        json: bool,
        /// Only acknowledge the events earlier repairs lost (`stats` stops showing them).
        #[arg(long)]
        acknowledge: bool,
    },
    /// Write a checkpoint now.
    Checkpoint {
        #[command(flatten)]
        home: HomeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Copy the whole channel to a new directory, atomically.
    Backup {
        #[command(flatten)]
        home: HomeArgs,
        /// The backup directory to create (it must not exist).
        #[arg(long, value_name = "DEST")]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Change what the channel's directories record as fixed (the log file size, the number
    /// of log files, the data directories) by copying every event, in order, into a new
    /// layout; the old directories are kept whole beside the new ones.
    Migrate {
        #[command(flatten)]
        home: HomeArgs,
        #[command(flatten)]
        to: migrate::MigrateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup or a savepoint into DIR.
    Restore {
        /// The backup or savepoint directory.
        #[arg(long, value_name = "SRC")]
        from: PathBuf,
        #[command(flatten)]
        home: HomeArgs,
        /// Replace a channel already in DIR.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained savepoint: the checkpoint, the log files still needed, and
    /// metadata.
    Savepoint {
        #[command(flatten)]
        home: HomeArgs,
        /// The savepoint directory to create (it must not exist).
        #[arg(long, value_name = "DEST")]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print segments, records and checkpoint slots in readable form (read-only).
    Dump {
        #[command(flatten)]
        home: HomeArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run producer and consumer threads through a file channel, then reopen it and show what
    /// recovery did.
    Load(load::LoadArgs),
    /// Make key files for encryption at rest (list them in the `[encryption]` section of sluicegate.toml).
    #[command(subcommand)]
    Key(keys::KeyCommand),
}

/// `agent`: runs until SIGINT or SIGTERM; a bad config is one line and exit 2.
fn agent(path: &std::path::Path) -> Result<ExitCode, fail::Fail> {
    let config = sluicegate_agent::AgentConfig::from_file(path).map_err(fail::Fail::usage)?;
    sluicegate_agent::agent::init_logging(config.agent.log.as_deref().unwrap_or("info"));
    match sluicegate_agent::run(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(
            e @ (sluicegate_agent::AgentError::Config(_)
            | sluicegate_agent::AgentError::Bind { .. }),
        ) => Err(fail::Fail::usage(e.to_string())),
        Err(e) => Err(fail::Fail::runtime(e.to_string())),
    }
}

fn bridge(
    serial: &str,
    mqtt: &str,
    topic: String,
    client_id: String,
    timeout_ms: u64,
) -> Result<ExitCode, fail::Fail> {
    let (host, port) = mqtt
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| fail::Fail::usage(format!("--mqtt: expected HOST:PORT, got {mqtt:?}")))?;
    if !serial.contains(':') {
        return Err(fail::Fail::usage(format!(
            "--serial: expected HOST:PORT, got {serial:?}"
        )));
    }
    sluicegate_agent::agent::init_logging("info");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook_flag(signal, &stop);
    }
    let settings = sluicegate_agent::sinks::mqtt::MqttSettings {
        host,
        port,
        topic,
        client_id,
        timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
        identity: 0,
        batch: sluicegate_uplink::MAX_BATCH,
    };
    let stats = sluicegate_agent::bridge::run(serial, settings, &stop);
    eprintln!(
        "bridge: {} batches read, {} acknowledged, {} not acknowledged by the broker, {} readings published, {} frames dropped, {} connections",
        stats.batches, stats.acknowledged, stats.failed, stats.readings, stats.frames_dropped, stats.connects
    );
    Ok(ExitCode::SUCCESS)
}

/// Sets `flag` when `signal` arrives.
fn signal_hook_flag(signal: i32, flag: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    let _ = FLAG.set(std::sync::Arc::clone(flag));
    extern "C" fn on_signal(_: i32) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`dump | head`).
    // For `take` that means the batch being written is not committed, and is delivered again.
    // The agent and `take --exec` write to commands that may exit without reading: there a
    // broken pipe is the command's answer, not a reason to die, so they keep Rust's default.
    let writes_to_commands = matches!(
        std::env::args().nth(1).as_deref(),
        Some("agent") | Some("take")
    ) && (std::env::args().nth(1).as_deref() == Some("agent")
        || std::env::args().any(|a| a == "--exec" || a.starts_with("--exec=")));
    if !writes_to_commands {
        // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a
        // valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("sluicegate: internal error{at} (please report it)");
    }));
    let json_errors = std::env::args().skip(1).any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Put {
            home,
            batch,
            create,
        } => pipe::put(&home, batch, &create),
        Command::Take {
            home,
            batch,
            limit,
            follow,
            exec,
        } => pipe::take(
            &home,
            batch,
            limit,
            follow,
            exec.map_or(pipe::Delivery::Stdout, pipe::Delivery::Exec),
        ),
        Command::Agent { config } => agent(&config),
        Command::Bridge {
            serial,
            mqtt,
            topic,
            client_id,
            timeout_ms,
        } => bridge(&serial, &mqtt, topic, client_id, timeout_ms),
        Command::Stats { home, json } => inspect::stats(&home, json),
        Command::Verify { home, json } => inspect::verify(&home, json),
        Command::Dump { home, json } => inspect::dump(&home, json),
        Command::Checkpoint { home, json } => pipe::checkpoint(&home, json),
        Command::Repair {
            home,
            json,
            acknowledge,
        } => repair::repair(&home, json, acknowledge),
        Command::Backup { home, to, json } => archive::backup(&home, &to, json),
        Command::Savepoint { home, to, json } => archive::savepoint(&home, &to, json),
        Command::Restore {
            from,
            home,
            force,
            json,
        } => archive::restore(&from, &home, force, json),
        Command::Migrate { home, to, json } => migrate::migrate(&home, &to, json),
        Command::Key(command) => keys::run(&command),
        Command::Load(args) => load::load(&args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(fail::Fail::runtime),
    };
    match result {
        Ok(code) => code,
        Err(f) => f.exit(json_errors),
    }
}
