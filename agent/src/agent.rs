//! [`run`]: one agent process, from a checked config to a clean stop.
//!
//! Start-up order, so that a bad configuration fails before anything starts: bind every port,
//! open every channel (recovering it), serve each channel's socket, then start sources, sinks
//! and `/metrics`. Stop order, on SIGINT or SIGTERM: sources stop taking requests (those in
//! flight finish their durable commit and reply), sinks stop (a batch being delivered is rolled
//! back), each channel's clients are handed over, and each channel closes with a checkpoint.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluicegate_file::{FileChannel, FileChannelConfig};

use crate::config::{channel_settings, host_port, AgentConfig, SinkSection, SourceSection};
use crate::dead_letter::DeadLetter;
use crate::metrics::{Metrics, Served};
use crate::owner::Owner;
use crate::session::HANDOVER_PATIENCE;
use crate::sinks::exec::ExecSink;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mqtt::{MqttSettings, MqttSink};
use crate::sinks::{run_sink, LocalTakes, RunnerSettings, Sink};
use crate::sources::tail::{assign_streams, run_tail, TailSettings};

/// Why the agent could not start, or stopped on a failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration cannot run.
    Config(String),
    /// A channel could not be opened or served.
    Channel {
        /// Its name.
        name: String,
        /// Why.
        why: String,
        /// The pid holding its home, if that is why.
        holder: Option<u32>,
    },
    /// A port could not be bound.
    Bind {
        /// The key naming it.
        key: String,
        /// Why.
        why: String,
    },
    /// A source, a sink or the runtime failed.
    Runtime(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Config(why) => write!(f, "{why}"),
            AgentError::Channel { name, why, .. } => write!(f, "channel {name}: {why}"),
            AgentError::Bind { key, why } => write!(f, "{key}: {why}"),
            AgentError::Runtime(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for AgentError {}

/// Sets up logging to stderr: `SLUICEGATE_LOG` if set, else `default` (for example `info`).
pub fn init_logging(default: &str) {
    let filter = std::env::var("SLUICEGATE_LOG").unwrap_or_else(|_| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The settings of channel `name`: the home's `sluicegate.toml`, or (for a new home) the
/// section's `settings` over the defaults. Returns them and whether the home is new.
fn channel_config(
    name: &str,
    dir: &Path,
    settings: Option<&toml::Table>,
) -> Result<(FileChannelConfig, bool), AgentError> {
    let fail = |why: String| AgentError::Channel {
        name: name.to_string(),
        why,
        holder: None,
    };
    match crate::home::load_settings(dir).map_err(|e| fail(e.to_string()))? {
        Some(on_disk) => {
            if let Some(settings) = settings {
                // The section's settings made the channel; they must still agree with it.
                let wanted = channel_settings(dir, settings).map_err(fail)?;
                let table = |c: &FileChannelConfig| toml::Table::try_from(c).unwrap_or_default();
                let (wanted_t, disk_t) = (table(&wanted), table(&on_disk));
                for key in settings.keys() {
                    if wanted_t.get(key) != disk_t.get(key) {
                        return Err(fail(format!(
                            "settings.{key} is {}, but the channel in {} has {} (in its {}): change it there, or not at all if it is fixed",
                            wanted_t.get(key).map_or("unset".into(), |v| v.to_string()),
                            dir.display(),
                            disk_t.get(key).map_or("unset".into(), |v| v.to_string()),
                            crate::home::SETTINGS_FILE
                        )));
                    }
                }
            }
            Ok((on_disk, false))
        }
        None => {
            let config = match settings {
                Some(s) => channel_settings(dir, s).map_err(fail)?,
                None => FileChannelConfig::in_dir(dir),
            };
            Ok((config, true))
        }
    }
}

fn open_channel(
    name: &str,
    dir: &Path,
    settings: Option<&toml::Table>,
) -> Result<Served, AgentError> {
    let (config, new) = channel_config(name, dir, settings)?;
    crate::home::create_dir_durably(dir).map_err(|e| AgentError::Channel {
        name: name.into(),
        why: format!("cannot create {}: {e}", dir.display()),
        holder: None,
    })?;
    tracing::info!(channel = name, dir = %dir.display(), "opening the channel (recovery)");
    let channel = FileChannel::open(config.clone()).map_err(|e| AgentError::Channel {
        name: name.into(),
        why: e.to_string(),
        holder: e.lock_holder(),
    })?;
    if new {
        crate::home::write_settings(dir, &config).map_err(|e| AgentError::Channel {
            name: name.into(),
            why: format!("cannot write its settings: {e}"),
            holder: None,
        })?;
    }
    let r = channel.recovery();
    tracing::info!(
        channel = name,
        events = r.events,
        path = ?r.path,
        ms = channel.open_duration().as_millis() as u64,
        "channel open"
    );
    Ok(Served::new(name.to_string(), Arc::new(channel)))
}

/// True if `program` names an executable file, directly (with a `/`) or through `PATH`.
fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| runnable(&d.join(program))))
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    config.check().map_err(AgentError::Config)?;
    for (name, sink) in &config.sinks {
        let SinkSection::Exec { command, .. } = sink else {
            continue;
        };
        if let Some(program) = command.first().filter(|p| !program_exists(p)) {
            return Err(AgentError::Config(format!(
                "sinks.{name}.command: no program {program:?} (not an executable file, nor found in PATH)"
            )));
        }
    }
    // Ports first: a port in use is a configuration error, found before any channel opens.
    let mut http_listeners = Vec::new();
    for (name, source) in &config.sources {
        if let SourceSection::Http { listen, .. } = source {
            let l = TcpListener::bind(listen).map_err(|e| AgentError::Bind {
                key: format!("sources.{name}.listen"),
                why: format!("cannot listen on {listen}: {e}"),
            })?;
            http_listeners.push((name.clone(), l));
        }
    }
    let metrics_listener = match config.agent.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| AgentError::Bind {
            key: "agent.metrics_listen".into(),
            why: format!("cannot listen on {addr}: {e}"),
        })?),
        None => None,
    };

    let mut served = Vec::new();
    for (name, ch) in &config.channels {
        served.push(open_channel(name, &ch.dir, ch.settings.as_ref())?);
    }
    let mut owners = Vec::new();
    for (s, (name, ch)) in served.iter().zip(&config.channels) {
        let socket = crate::home::socket_path(&ch.dir);
        let owner = Owner::start(s.clone(), &socket).map_err(|e| AgentError::Channel {
            name: name.clone(),
            why: e.to_string(),
            holder: None,
        })?;
        owners.push(owner);
    }
    let by_name = |name: &str| -> Served {
        // `check` made sure every named channel exists.
        served
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| served[0].clone())
    };
    // Mark streams for the tail sources, before anything starts: too few is a start-up error.
    let mut streams = std::collections::HashMap::new();
    for s in &served {
        let tails: Vec<String> = config
            .sources
            .iter()
            .filter(
                |(_, src)| matches!(src, SourceSection::Tail { channel, .. } if *channel == s.name),
            )
            .map(|(name, _)| name.clone())
            .collect();
        let assigned = assign_streams(&s.channel, &tails).map_err(|why| AgentError::Channel {
            name: s.name.clone(),
            why,
            holder: None,
        })?;
        streams.extend(assigned);
    }
    let metrics = Arc::new(Metrics::new(served.clone()));
    let stop = Arc::new(AtomicBool::new(false));

    let mut threads: Vec<(String, JoinHandle<Result<(), String>>)> = Vec::new();
    for (name, sink) in &config.sinks {
        let channel = sink.channel();
        let s = by_name(channel);
        let component = metrics.component("sink", name, channel);
        let mut deliver: Box<dyn Sink> = match sink {
            SinkSection::Exec {
                command,
                timeout_ms,
                ..
            } => Box::new(ExecSink::new(
                command.clone(),
                Duration::from_millis(*timeout_ms),
            )),
            SinkSection::Mqtt {
                broker,
                topic,
                client_id,
                timeout_ms,
                ..
            } => {
                // `check` accepted the broker's form.
                let (host, port) = host_port(broker).map_err(AgentError::Config)?;
                Box::new(MqttSink::new(MqttSettings {
                    host,
                    port,
                    topic: topic.clone(),
                    client_id: client_id
                        .clone()
                        .unwrap_or_else(|| format!("sluicegate-{name}")),
                    timeout: Duration::from_millis(*timeout_ms),
                    identity: s.channel.identity(),
                    batch: sink.pacing().0.min(s.channel.config().transaction_capacity) as usize,
                }))
            }
            SinkSection::Kafka { .. } => {
                let mut settings = sink.kafka_settings(name, s.channel.identity());
                settings.batch = settings
                    .batch
                    .min(s.channel.config().transaction_capacity as usize);
                Box::new(
                    KafkaSink::new(settings)
                        .map_err(|e| AgentError::Config(format!("sinks.{name}: {e}")))?,
                )
            }
        };
        let dead_letter = sink
            .dead_letter_dir()
            .map(|dir| DeadLetter::new(dir, name, channel, s.channel.identity()));
        let (batch, backoff_ms, max_backoff_ms) = sink.pacing();
        let settings = RunnerSettings {
            batch: batch.min(s.channel.config().transaction_capacity),
            backoff: Duration::from_millis(backoff_ms),
            max_backoff: Duration::from_millis(max_backoff_ms),
            until_empty: false,
            limit: None,
            channel_errors_fatal: false,
        };
        let stop = Arc::clone(&stop);
        let key = format!("sinks.{name}");
        let t = std::thread::Builder::new()
            .name(key.clone())
            .spawn(move || {
                let mut side = LocalTakes::new(&s);
                run_sink(
                    &mut *deliver,
                    &mut side,
                    settings,
                    &stop,
                    Some(&component),
                    dead_letter.as_ref(),
                )
                .map(drop)
            })
            .map_err(|e| AgentError::Runtime(format!("cannot start {key}: {e}")))?;
        threads.push((format!("sinks.{name}"), t));
    }
    for (name, source) in &config.sources {
        if let SourceSection::Tail {
            channel,
            paths,
            positions,
            batch,
            poll_ms,
            from_end,
        } = source
        {
            let s = by_name(channel);
            let home = &config.channels[channel].dir;
            let settings = TailSettings {
                name: name.clone(),
                stream: streams[name],
                paths: paths.clone(),
                positions: positions
                    .clone()
                    .unwrap_or_else(|| home.join(format!("tail-{name}.positions"))),
                batch: (*batch).min(s.channel.config().transaction_capacity),
                poll: Duration::from_millis(*poll_ms),
                from_end: *from_end,
            };
            let component = metrics.component("source", name, channel);
            let stop = Arc::clone(&stop);
            let key = format!("sources.{name}");
            let t = std::thread::Builder::new()
                .name(key.clone())
                .spawn(move || run_tail(&s, &settings, &stop, &component))
                .map_err(|e| AgentError::Runtime(format!("cannot start {key}: {e}")))?;
            threads.push((key, t));
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError::Runtime(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(serve_http(
        &config,
        http_listeners,
        metrics_listener,
        &by_name,
        &metrics,
        &stop,
        &threads,
    ));
    stop.store(true, Ordering::Relaxed);
    let mut failure = result.err();
    for (key, t) in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("{key} failed: {e}");
                failure.get_or_insert(AgentError::Runtime(format!("{key} failed: {e}")));
            }
            Err(_) => {
                failure.get_or_insert(AgentError::Runtime(format!("{key} panicked")));
            }
        }
    }
    drop(runtime);
    for owner in owners {
        owner.stop(HANDOVER_PATIENCE);
    }
    drop(metrics);
    for s in served {
        let name = s.name.clone();
        drop(s.counters);
        match Arc::try_unwrap(s.channel) {
            Ok(channel) => match channel.close() {
                Ok(()) => tracing::info!(channel = %name, "channel closed with a checkpoint"),
                Err(e) => {
                    tracing::error!(channel = %name, "closing failed: {e}");
                    failure.get_or_insert(AgentError::Runtime(format!(
                        "channel {name}: closing failed: {e}"
                    )));
                }
            },
            Err(_) => {
                tracing::warn!(channel = %name, "channel still in use at stop: closed without a checkpoint")
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Serves the HTTP sources and `/metrics` until a signal (or a source or sink thread ending
/// by failure), then shuts them down gracefully.
async fn serve_http(
    config: &AgentConfig,
    http_listeners: Vec<(String, TcpListener)>,
    metrics_listener: Option<TcpListener>,
    by_name: &dyn Fn(&str) -> Served,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
    threads: &[(String, JoinHandle<Result<(), String>>)],
) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (quit_tx, quit_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let listen = |l: TcpListener| -> Result<tokio::net::TcpListener, AgentError> {
        l.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(|e| AgentError::Runtime(format!("cannot serve a port: {e}")))
    };
    for (name, l) in http_listeners {
        let Some(SourceSection::Http {
            channel,
            max_body_bytes,
            ..
        }) = config.sources.get(&name)
        else {
            continue;
        };
        let router = crate::sources::http::router(
            by_name(channel),
            metrics.component("source", &name, channel),
            *max_body_bytes,
        );
        let addr = l.local_addr().ok();
        let l = listen(l)?;
        let mut quit = quit_rx.clone();
        tracing::info!(source = %name, addr = ?addr, "HTTP ingest listening");
        servers.push(tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(async move {
                    let _ = quit.wait_for(|q| *q).await;
                })
                .await
        }));
    }
    if let Some(l) = metrics_listener {
        let m = Arc::clone(metrics);
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = Arc::clone(&m);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        let addr = l.local_addr().ok();
        let l = listen(l)?;
        let mut quit = quit_rx.clone();
        tracing::info!(addr = ?addr, "metrics on /metrics");
        servers.push(tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(async move {
                    let _ = quit.wait_for(|q| *q).await;
                })
                .await
        }));
    }
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| AgentError::Runtime(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| AgentError::Runtime(format!("cannot handle SIGTERM: {e}")))?;
    tracing::info!(pid = std::process::id(), "agent ready");
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // Bounded by a signal or a component thread ending (which only happens on failure).
    loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = tick.tick() => {
                if let Some((key, _)) = threads.iter().find(|(_, t)| t.is_finished()) {
                    tracing::error!("{key} stopped: stopping the agent");
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = quit_tx.send(true);
    for s in servers {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("an HTTP server ended with an error: {e}"),
            Err(e) => tracing::warn!("an HTTP server task failed: {e}"),
        }
    }
    Ok(())
}
