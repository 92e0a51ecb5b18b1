//! The agent's costs: puts through an owner's socket against the same puts in process, HTTP
//! ingest of NDJSON bodies with durable commits, delivery through the exec sink, and delivery
//! through the MQTT sink to a local mosquitto against a raw `rumqttc` publisher, and through
//! the Kafka sink to a local tansu against a raw `rdkafka` producer.
//!
//! The socket comparison interleaves its two channels commit by commit (which goes first
//! alternates), so a noisy machine slows both alike; its target is judged on the median over
//! turns of the in-process commit time over the socket's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate_agent::metrics::{Metrics, Served};
use sluicegate_agent::owner::Owner;
use sluicegate_agent::sinks::exec::ExecSink;
use sluicegate_agent::sinks::{run_sink, LocalTakes, RunnerSettings};
use sluicegate_agent::Client;
use sluicegate_file::{FileChannel, FileChannelConfig};

use crate::{Plan, Progress, Result};

/// One socket-against-in-process comparison.
#[derive(Debug, Clone)]
pub struct SocketRun {
    /// Events per commit.
    pub batch: usize,
    /// Turns (one commit on each side).
    pub turns: usize,
    /// Events per second in process and through the socket, from total commit times.
    pub local_rate: f64,
    /// See `local_rate`.
    pub socket_rate: f64,
    /// The median over turns of in-process time over socket time.
    pub median_ratio: f64,
}

/// Everything the agent section measured.
#[derive(Debug, Clone)]
pub struct AgentResults {
    /// Event size in bytes.
    pub event_bytes: usize,
    /// Socket against in-process, per batch size.
    pub socket: Vec<SocketRun>,
    /// HTTP ingest: events per second acknowledged with 200, bodies of `http_body_events`.
    pub http_rate: f64,
    /// Events per body.
    pub http_body_events: usize,
    /// Concurrent HTTP clients.
    pub http_clients: usize,
    /// Exec sink delivery: events per second, per batch size.
    pub exec: Vec<(usize, f64)>,
    /// From a producer's put commit (through the socket) to a follower's receipt, in ms:
    /// median and p99 over `follow_events` events.
    pub follow_ms: (f64, f64),
    /// Events in the follower measurement.
    pub follow_events: usize,
    /// MQTT to a local mosquitto, per batch size: events per second through the sink (channel,
    /// take, publish, PUBACKs, commit) and from a raw `rumqttc` publisher with the same settings
    /// and no channel; empty without mosquitto.
    pub mqtt: Vec<(usize, f64, f64)>,
    /// Kafka to a local tansu, per batch size: events per second through the sink and from a
    /// raw `rdkafka` producer with the same settings and no channel; empty without tansu.
    pub kafka: Vec<(usize, f64, f64)>,
}

fn config(dir: &Path) -> FileChannelConfig {
    let _ = std::fs::create_dir_all(dir);
    FileChannelConfig {
        max_file_bytes: 16 << 20,
        log_files: 32,
        minimum_required_space_bytes: 0,
        ..FileChannelConfig::in_dir(dir)
    }
}

fn event(size: usize) -> Vec<u8> {
    // A JSON object, so the same event serves HTTP ingest.
    let mut e = b"{\"pad\":\"".to_vec();
    e.resize(size.saturating_sub(2), b'x');
    e.extend_from_slice(b"\"}");
    e
}

/// Runs the section.
pub fn run(base: &Path, plan: &Plan, progress: &Progress) -> Result<AgentResults> {
    let size = 1024;
    let mut socket = Vec::new();
    for batch in [1usize, 100] {
        progress.step(&format!(
            "agent: puts of {size} B in batches of {batch}, in process and through the socket, interleaved"
        ));
        socket.push(socket_vs_local(base, plan, size, batch)?);
    }
    progress.step("agent: HTTP ingest of NDJSON bodies");
    let (http_rate, http_body_events, http_clients) = http_ingest(base, plan, size)?;
    progress.step("agent: a follower's latency behind a producer, through the socket");
    let (follow_ms, follow_events) = follower_latency(base, plan)?;
    let mut exec = Vec::new();
    progress.step("agent: delivery through the exec sink");
    for batch in [100usize, 1000] {
        exec.push((batch, exec_delivery(base, plan, size, batch)?));
    }
    progress.step("agent: delivery through the MQTT sink, and a raw MQTT publisher");
    let mut mqtt = Vec::new();
    for batch in [100usize, 1000] {
        if let Some((sink, raw)) = mqtt_delivery(base, plan, size, batch)? {
            mqtt.push((batch, sink, raw));
        }
    }
    progress.step("agent: delivery through the Kafka sink, and a raw Kafka producer");
    let mut kafka = Vec::new();
    if let Some(program) = tansu_program() {
        for batch in [100usize, 1000] {
            let (sink, raw) = kafka_delivery(base, plan, &program, size, batch)?;
            kafka.push((batch, sink, raw));
        }
    }
    Ok(AgentResults {
        mqtt,
        kafka,
        event_bytes: size,
        socket,
        http_rate,
        http_body_events,
        http_clients,
        exec,
        follow_ms,
        follow_events,
    })
}

/// A producer puts one event at a time through the socket, stamped with when its commit
/// started; a follower on another connection waits in `take` and notes when each arrives.
fn follower_latency(base: &Path, plan: &Plan) -> Result<((f64, f64), usize)> {
    let dir = base.join("agent-follow");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let served = Served::new("bench".into(), Arc::new(FileChannel::open(config(&dir))?));
    let sock = dir.join("follow.sock");
    let owner = Owner::start(served, &sock)?;
    let events = (plan.duration.as_millis() as usize).clamp(50, 1000);
    let epoch = Instant::now();
    let follower = {
        let sock = sock.clone();
        std::thread::spawn(move || -> std::result::Result<Vec<f64>, String> {
            let mut c = Client::connect(&sock).map_err(|e| e.to_string())?;
            let mut lat = Vec::with_capacity(events);
            // Bounded by `events` (and each wait by 10 s).
            while lat.len() < events {
                let got = c.take(100, 10_000).map_err(|e| e.to_string())?;
                let now = epoch.elapsed().as_secs_f64();
                if got.is_empty() {
                    return Err("the follower waited 10 s for an event".into());
                }
                for e in &got {
                    let sent: f64 = std::str::from_utf8(e)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .ok_or("an event that is not a time")?;
                    lat.push((now - sent) * 1e3);
                }
                c.commit().map_err(|e| e.to_string())?;
            }
            Ok(lat)
        })
    };
    let mut producer = Client::connect(&sock)?;
    for _ in 0..events {
        let stamp = format!("{:.9}", epoch.elapsed().as_secs_f64());
        producer.put_batch(&[stamp.as_bytes()])?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut lat = follower
        .join()
        .map_err(|_| "the follower panicked")?
        .map_err(|e| format!("follower: {e}"))?;
    drop(producer);
    let channel = Arc::clone(&owner.served().channel);
    owner.stop(Duration::from_secs(1));
    if let Ok(channel) = Arc::try_unwrap(channel) {
        channel.close()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    Ok(((at(0.5), at(0.99)), lat.len()))
}

fn socket_vs_local(base: &Path, plan: &Plan, size: usize, batch: usize) -> Result<SocketRun> {
    let dir = base.join(format!("agent-socket-{batch}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let local = FileChannel::open(config(&dir.join("local")))?;
    let served = Served::new(
        "bench".into(),
        Arc::new(FileChannel::open(config(&dir.join("served")))?),
    );
    let sock = dir.join("served.sock");
    let owner = Owner::start(served, &sock)?;
    let mut client = Client::connect(&sock)?;
    let e = event(size);
    let events: Vec<&[u8]> = vec![&e[..]; batch];
    let mut local_times = Vec::new();
    let mut socket_times = Vec::new();
    let budget = plan.duration * 2;
    let started = Instant::now();
    let mut turn = 0usize;
    // Nothing is taken, so each channel's log must hold every turn: stop at half of it (a
    // full run's budget would fill it).
    let log_bytes = {
        let c = config(&dir.join("local"));
        c.max_file_bytes as usize * c.log_files as usize
    };
    let room_for = |turns: usize| turns * batch * (size + 64) < log_bytes / 2;
    // Bounded by the time budget (at least 20 turns, so the median means something) and the
    // log's room.
    while (started.elapsed() < budget || turn < 20) && room_for(turn + 1) {
        for side in 0..2 {
            let local_first = turn.is_multiple_of(2);
            let t = Instant::now();
            if (side == 0) == local_first {
                let mut tx = local.begin()?;
                for ev in &events {
                    tx.put(ev)?;
                }
                tx.commit()?;
                local_times.push(t.elapsed().as_secs_f64());
            } else {
                client.put_batch(&events)?;
                socket_times.push(t.elapsed().as_secs_f64());
            }
        }
        turn += 1;
    }
    drop(client);
    owner.stop(Duration::from_secs(1));
    local.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut ratios: Vec<f64> = local_times
        .iter()
        .zip(&socket_times)
        .map(|(l, s)| l / s)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let total = |v: &[f64]| v.iter().sum::<f64>();
    Ok(SocketRun {
        batch,
        turns: turn,
        local_rate: (turn * batch) as f64 / total(&local_times),
        socket_rate: (turn * batch) as f64 / total(&socket_times),
        median_ratio: ratios[ratios.len() / 2],
    })
}

/// One keep-alive HTTP/1.1 client: posts `body` until `stop`, counting acknowledged events.
fn http_client(
    port: u16,
    body: &[u8],
    events: u64,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // Bounded by `stop`.
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(&request)?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let mut length = 0usize;
        // Bounded by the reply's header lines.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err("the server closed the connection".into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut reply = vec![0u8; length];
        reader.read_exact(&mut reply)?;
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!(
                "ingest answered {status:?}: {}",
                String::from_utf8_lossy(&reply)
            )
            .into());
        }
        acked.fetch_add(events, Ordering::Relaxed);
    }
    Ok(())
}

fn http_ingest(base: &Path, plan: &Plan, size: usize) -> Result<(f64, usize, usize)> {
    let dir = base.join("agent-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let served = Served::new("bench".into(), Arc::new(FileChannel::open(config(&dir))?));
    let metrics = Metrics::new(vec![served.clone()]);
    let router = sluicegate_agent::sources::http::router(
        served.clone(),
        metrics.component("source", "bench", "bench"),
        64 << 20,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let (quit_tx, mut quit_rx) = tokio::sync::watch::channel(false);
    let server = runtime.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = quit_rx.wait_for(|q| *q).await;
            })
            .await
    });
    let body_events = 100usize;
    let e = event(size);
    let mut body = Vec::with_capacity(body_events * (size + 1));
    for _ in 0..body_events {
        body.extend_from_slice(&e);
        body.push(b'\n');
    }
    let clients = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, acked, body) = (Arc::clone(&stop), Arc::clone(&acked), body.clone());
            std::thread::spawn(move || {
                http_client(port, &body, body_events as u64, &stop, &acked)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // Nothing is taken, so the run ends at half the log's room if the time budget has not
    // ended it first (a full run's budget would fill the log).
    let c = config(&dir);
    let room = (c.max_file_bytes as u64 * c.log_files as u64 / 2) / (size as u64 + 64);
    // Bounded by the time budget.
    while started.elapsed() < plan.duration * 2 && acked.load(Ordering::Relaxed) < room {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            failure = Some(e);
        }
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = quit_tx.send(true);
    let _ = runtime.block_on(server);
    drop(runtime);
    drop(metrics);
    if let Ok(channel) = Arc::try_unwrap(served.channel) {
        channel.close()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failure {
        return Err(format!("HTTP ingest: {e}").into());
    }
    Ok((rate, body_events, clients))
}

fn exec_delivery(base: &Path, plan: &Plan, size: usize, batch: usize) -> Result<f64> {
    let dir = base.join("agent-exec");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let served = Served::new("bench".into(), Arc::new(FileChannel::open(config(&dir))?));
    let n = (plan.max_bytes / size as u64 / 4).clamp(1_000, 100_000) as usize;
    fill(&served, n, &event(size))?;
    let mut sink = ExecSink::shell("cat > /dev/null", Duration::from_secs(60));
    let started = Instant::now();
    let outcome = drain(&served, &mut sink, batch, None)?;
    let rate = outcome.delivered as f64 / started.elapsed().as_secs_f64();
    if outcome.delivered != n as u64 {
        return Err(format!("the exec sink delivered {} of {n}", outcome.delivered).into());
    }
    if let Ok(channel) = Arc::try_unwrap(served.channel) {
        channel.close()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

/// Puts `n` copies of `e` into the channel, 1,000 per commit.
fn fill(served: &Served, n: usize, e: &[u8]) -> Result<()> {
    let mut put = 0;
    // Bounded by `n`.
    while put < n {
        let mut tx = served.channel.begin()?;
        for _ in 0..1000.min(n - put) {
            tx.put(e)?;
            put += 1;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Drains the channel through `sink` in batches of `batch`, as the agent's runner does.
fn drain(
    served: &Served,
    sink: &mut dyn sluicegate_agent::sinks::Sink,
    batch: usize,
    limit: Option<u64>,
) -> Result<sluicegate_agent::sinks::RunnerOutcome> {
    let settings = RunnerSettings {
        batch: batch as u32,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        until_empty: true,
        limit,
        channel_errors_fatal: true,
    };
    let stop = AtomicBool::new(false);
    let mut side = LocalTakes::new(served);
    Ok(run_sink(sink, &mut side, settings, &stop, None, None)?)
}

/// Delivers one batch through `sink` (the `what` sink) untimed, which carries the client's
/// start, then drains the `n` events left; events per second of those. Every event must be
/// delivered, with no failure.
fn timed_drain(
    served: &Served,
    sink: &mut dyn sluicegate_agent::sinks::Sink,
    batch: usize,
    n: usize,
    what: &str,
) -> Result<f64> {
    let warm = drain(served, sink, batch, Some(batch as u64))?;
    if warm.delivered != batch as u64 || warm.failures > 0 {
        return Err(format!("the {what} sink's warm-up batch failed").into());
    }
    let started = Instant::now();
    let outcome = drain(served, sink, batch, None)?;
    let rate = outcome.delivered as f64 / started.elapsed().as_secs_f64();
    if outcome.delivered != n as u64 || outcome.failures > 0 {
        return Err(format!(
            "the {what} sink delivered {} of {n} with {} failures",
            outcome.delivered, outcome.failures
        )
        .into());
    }
    Ok(rate)
}

/// A broker on a loopback port for a sink measurement; killed when dropped.
struct Broker(std::process::Child);

impl Broker {
    /// Runs `command` (output discarded) and waits up to 10 s for `port` to accept.
    fn start(mut command: std::process::Command, port: u16, name: &str) -> Result<Broker> {
        let broker = Broker(
            command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                return Err(format!("{name} did not start").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Events per second through the MQTT sink and from a raw publisher, to a mosquitto this starts
/// on a free loopback port; `None` if mosquitto is not installed.
fn mqtt_delivery(
    base: &Path,
    plan: &Plan,
    size: usize,
    batch: usize,
) -> Result<Option<(f64, f64)>> {
    let Some(program) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return Ok(None);
    };
    let dir = base.join("agent-mqtt");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
    )?;
    let mut command = std::process::Command::new(program);
    command.arg("-c").arg(&conf);
    let _broker = Broker::start(command, port, "mosquitto")?;
    let n = (plan.max_bytes / size as u64 / 8).clamp(2_000, 50_000) as usize;
    let n = n - n % batch;
    let e = event(size);
    // Raw, sink, raw: the raw figure is the mean of the two around the sink's.
    let raw1 = raw_publish(port, n, batch, &e)?;
    let served = Served::new(
        "bench".into(),
        Arc::new(FileChannel::open(config(&dir.join("ch")))?),
    );
    fill(&served, n + batch, &e)?;
    let mut sink =
        sluicegate_agent::sinks::mqtt::MqttSink::new(sluicegate_agent::sinks::mqtt::MqttSettings {
            host: "127.0.0.1".into(),
            port,
            topic: "bench/sink".into(),
            client_id: "sluicegate-bench-sink".into(),
            timeout: Duration::from_secs(60),
            identity: served.channel.identity(),
            batch,
        });
    let sink_rate = timed_drain(&served, &mut sink, batch, n, "MQTT")?;
    drop(sink);
    let raw2 = raw_publish(port, n, batch, &e)?;
    if let Ok(channel) = Arc::try_unwrap(served.channel) {
        channel.close()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some((sink_rate, (raw1 + raw2) / 2.0)))
}

/// A raw `rumqttc` publisher with the sink's settings (MQTT 5, QoS 1, persistent session):
/// `n` events in batches, each batch waiting for all its PUBACKs. Events per second.
fn raw_publish(port: u16, n: usize, batch: usize, e: &[u8]) -> Result<f64> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let mut options = MqttOptions::new("sluicegate-bench-raw", "127.0.0.1", port);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(24 * 3600))
        .set_keep_alive(Duration::from_secs(10))
        .set_network_options(network);
    let (client, mut connection) = Client::new(options, batch * 2 + 16);
    // PUBACKs counted by the connection's thread, which signals once a batch is all in (as
    // the sink's does): waking the publisher for each PUBACK would cost it, not the broker.
    let acks = Arc::new((
        std::sync::Mutex::new((0usize, false)),
        std::sync::Condvar::new(),
    ));
    let counted = Arc::clone(&acks);
    let want = Arc::new(std::sync::atomic::AtomicUsize::new(batch));
    let wanted = Arc::clone(&want);
    let driver = std::thread::spawn(move || {
        let (count, signal) = &*counted;
        for ev in connection.iter() {
            let mut count = count.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    count.0 += 1;
                    if count.0 >= wanted.load(std::sync::atomic::Ordering::Relaxed) {
                        signal.notify_all();
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    count.1 = true;
                    signal.notify_all();
                    break;
                }
            }
        }
    });
    // The first batch, untimed, carries the connection, as the sink's warm-up batch does.
    let mut started = Instant::now();
    let mut sent = 0;
    // Bounded by `n` and the warm-up batch.
    while sent < n + batch {
        if sent == batch {
            started = Instant::now();
        }
        want.store(sent + batch, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..batch {
            client
                .publish("bench/raw", QoS::AtLeastOnce, false, e.to_vec())
                .map_err(|e| format!("raw publish: {e}"))?;
        }
        let (count, signal) = &*acks;
        let until = Instant::now() + Duration::from_secs(60);
        let mut count = count.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by `until`.
        while count.0 < sent + batch {
            let left = until.saturating_duration_since(Instant::now());
            if count.1 || left.is_zero() {
                return Err("raw publish: the PUBACKs did not come".into());
            }
            count = signal
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(count);
        sent += batch;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = client.disconnect();
    let _ = driver.join();
    Ok(rate)
}

/// The tansu binary: `SLUICEGATE_TANSU`, or the copy `cargo xtask brokers` keeps in `~/.cache`.
fn tansu_program() -> Option<std::path::PathBuf> {
    std::env::var_os("SLUICEGATE_TANSU")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/sluicegate/bin/tansu-0.6.0-510f3e2"))
        })
        .filter(|p| p.exists())
}

/// Events per second through the Kafka sink and from a raw producer, to a tansu (in-memory
/// storage) this starts on a free loopback port: raw, sink, raw, the raw figure the mean.
fn kafka_delivery(
    base: &Path,
    plan: &Plan,
    program: &Path,
    size: usize,
    batch: usize,
) -> Result<(f64, f64)> {
    use sluicegate_agent::sinks::kafka::{KafkaKey, KafkaSettings, KafkaSink};
    let dir = base.join("agent-kafka");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = std::process::Command::new(program);
    command
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url]);
    let _broker = Broker::start(command, port, "tansu")?;
    for topic in ["sink", "raw"] {
        let status = std::process::Command::new(program)
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                "1",
                "--broker",
                &url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("tansu: cannot create topic {topic}").into());
        }
    }
    let n = (plan.max_bytes / size as u64 / 8).clamp(2_000, 50_000) as usize;
    let n = n - n % batch;
    let e = event(size);
    let served = Served::new(
        "bench".into(),
        Arc::new(FileChannel::open(config(&dir.join("ch")))?),
    );
    let settings = |topic: &str| KafkaSettings {
        brokers: format!("127.0.0.1:{port}"),
        topic: topic.into(),
        key: KafkaKey::None,
        partitioner: None,
        compression: "none".into(),
        timeout: Duration::from_secs(60),
        client_id: format!("sluicegate-bench-{topic}"),
        identity: served.channel.identity(),
        batch,
        properties: Default::default(),
    };
    let raw1 = raw_produce(&settings("raw"), n, &e)?;
    fill(&served, n + batch, &e)?;
    let mut sink = KafkaSink::new(settings("sink"))?;
    let sink_rate = timed_drain(&served, &mut sink, batch, n, "Kafka")?;
    drop(sink);
    let raw2 = raw_produce(&settings("raw"), n, &e)?;
    if let Ok(channel) = Arc::try_unwrap(served.channel) {
        channel.close()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((sink_rate, (raw1 + raw2) / 2.0))
}

/// Counts a raw producer's delivery reports and signals each, as the sink's own context does.
#[derive(Default)]
struct Counted {
    reports: std::sync::Mutex<usize>,
    arrived: std::sync::Condvar,
}

impl rdkafka::ClientContext for Counted {}

impl rdkafka::producer::ProducerContext for Counted {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        *self.reports.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.arrived.notify_all();
    }
}

/// A raw `rdkafka` producer with the sink's configuration (idempotent, `acks=all`) and the same
/// id header: `n` events in batches, each batch waiting for every delivery report on a signal
/// from the producer's thread, as the sink waits. Events per second.
fn raw_produce(
    settings: &sluicegate_agent::sinks::kafka::KafkaSettings,
    n: usize,
    e: &[u8],
) -> Result<f64> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<Counted> =
        sluicegate_agent::sinks::kafka::KafkaSink::client_config(settings)
            .create_with_context(Counted::default())?;
    let context = producer.context();
    // The first batch, untimed, carries the producer's start (its connections and producer
    // id, about half a second against tansu), as the sink's warm-up batch does.
    let mut started = Instant::now();
    let mut sent = 0;
    // Bounded by `n` and the warm-up batch.
    while sent < n + settings.batch {
        if sent == settings.batch {
            started = Instant::now();
        }
        for i in 0..settings.batch {
            let id = format!("{:032x}:{}", settings.identity, sent + i);
            let headers = OwnedHeaders::new().insert(Header {
                key: "sluicegate-id",
                value: Some(id.as_str()),
            });
            // Bounded: the queue holds two batches, and the producer's thread drains it.
            loop {
                let record = BaseRecord::<(), [u8]>::to(&settings.topic)
                    .payload(e)
                    .headers(headers.clone());
                match producer.send(record) {
                    Ok(()) => break,
                    Err((err, _)) => {
                        if err.rdkafka_error_code()
                            != Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        {
                            return Err(format!("raw produce: {err}").into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(60);
        let mut reports = context.reports.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by `until`.
        while *reports < sent + settings.batch {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("raw produce: no delivery reports within 60 s".into());
            }
            reports = context
                .arrived
                .wait_timeout(reports, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(reports);
        sent += settings.batch;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A sink-against-raw-client table: `rows` of (batch, sink rate, raw rate), or `missing`.
fn sink_table(o: &mut String, rows: &[(usize, f64, f64)], missing: &str, title: &str, raw: &str) {
    use std::fmt::Write as _;
    if rows.is_empty() {
        let _ = writeln!(o, "\n{missing}");
        return;
    }
    let _ = writeln!(
        o,
        "\n{title}\n\n| batch | sink | {raw} | sink ÷ raw |\n|--:|--:|--:|--:|"
    );
    for (batch, sink, raw) in rows {
        let _ = writeln!(
            o,
            "| {batch} | {sink:.0}/s | {raw:.0}/s | {:.2} ({}) |",
            sink / raw,
            if sink / raw >= 0.8 { "met" } else { "NOT met" }
        );
    }
}

/// The section's table and its targets.
pub fn table(o: &mut String, r: &AgentResults) {
    use std::fmt::Write as _;
    let _ = writeln!(o, "#### The agent\n");
    let _ = writeln!(
        o,
        "Puts of {} B events, one commit at a time, in process (`FileChannel`) and through an owner's Unix socket (`Client::put_batch`), commits interleaved:\n",
        r.event_bytes
    );
    let _ = writeln!(
        o,
        "| batch | turns | in process | through the socket | median of in-process time ÷ socket time |\n|--:|--:|--:|--:|--:|"
    );
    for s in &r.socket {
        let _ = writeln!(
            o,
            "| {} | {} | {:.0}/s | {:.0}/s | {:.2} |",
            s.batch, s.turns, s.local_rate, s.socket_rate, s.median_ratio
        );
    }
    let _ = writeln!(
        o,
        "\nHTTP ingest: {:.0} events/s acknowledged with 200 (bodies of {} NDJSON events of {} B, {} keep-alive clients on this machine, durable commits).\n",
        r.http_rate, r.http_body_events, r.event_bytes, r.http_clients
    );
    let _ = writeln!(
        o,
        "| exec sink batch | delivered (`cat > /dev/null`) |\n|--:|--:|"
    );
    for (batch, rate) in &r.exec {
        let _ = writeln!(o, "| {batch} | {rate:.0} events/s |");
    }
    let _ = writeln!(
        o,
        "\nA follower behind a producer, both through the socket: from the start of a one-event put commit to the follower's receipt, median {:.2} ms, p99 {:.2} ms ({} events, one every 2 ms).",
        r.follow_ms.0, r.follow_ms.1, r.follow_events
    );
    sink_table(
        o,
        &r.mqtt,
        "MQTT: not measured (mosquitto is not installed).",
        &format!("MQTT to a local mosquitto, {} B events, QoS 1 (MQTT 5): the sink (take, publish, every PUBACK, durable take commit) against a raw `rumqttc` publisher with the same settings and no channel (target: at least 0.8 of it):", r.event_bytes),
        "raw publisher",
    );
    sink_table(
        o,
        &r.kafka,
        "Kafka: not measured (tansu is not installed; `cargo xtask brokers` installs it).",
        &format!("Kafka to a local tansu (in-memory storage, one partition), {} B events, idempotent producer, `acks=all`: the sink (take, produce, every delivery report, durable take commit) against a raw `rdkafka` producer with the same settings and no channel (target: at least 0.8 of it):", r.event_bytes),
        "raw producer",
    );
    let b100 = r.socket.iter().find(|s| s.batch == 100);
    let _ = writeln!(
        o,
        "\nTargets: socket puts at batch 100 at least 0.7 of in process: {}; HTTP ingest at least 100,000 events/s: {}.\n",
        b100.map_or("not measured".into(), |s| format!(
            "{:.2} ({})",
            s.median_ratio,
            if s.median_ratio >= 0.7 { "met" } else { "NOT met" }
        )),
        if r.http_rate >= 100_000.0 {
            format!("{:.0} (met)", r.http_rate)
        } else {
            format!("{:.0} (NOT met)", r.http_rate)
        }
    );
}
