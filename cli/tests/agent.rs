//! `sluicegate agent`, run as a real child process: configuration errors, a clean session, and
//! SIGKILLs during HTTP ingest, file tailing, exec delivery and MQTT delivery, each judged end
//! to end by what the destination holds (a file the exec sink appends to; for MQTT, what
//! `mosquitto_sub` received from a real mosquitto the test starts).
//!
//! `SLUICEGATE_AGENT_KILLS=N` sets the kills of each kill test (default 200 for HTTP ingest,
//! 150 for tailing, 120 for MQTT).

mod common;
use common::{eventually, free_port, mosquitto_program, Mosquitto, Subscriber};

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluicegate_powerfs::{CutPoint, Fate, PowerMount, TempMount};

fn sg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluicegate"))
}

fn kills(default: u32) -> u32 {
    std::env::var("SLUICEGATE_AGENT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator, so a failing run can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

/// One HTTP/1.1 request; the status and body, or `None` if the connection failed.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// An agent child process, killed if a failing test leaves it running.
struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A temporary agent setup: its config, home and destination file.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    home: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new(body: impl Fn(&Path) -> String) -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let config = root.join("agent.toml");
        std::fs::write(&config, body(&root)).expect("config");
        Setup {
            home: root.join("home"),
            out: root.join("out.ndjson"),
            _tmp: tmp,
            root,
            config,
        }
    }

    fn spawn(&self) -> Agent {
        Agent(
            sg().args(["agent", "--config", &self.config.display().to_string()])
                .env("SLUICEGATE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn agent"),
        )
    }

    /// As [`Setup::spawn`], with the agent's warnings appended to `agent.log` beside the config
    /// instead of a pipe, so a kill loop keeps every run's and [`Setup::log`] can show them.
    fn spawn_logged(&self) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("agent.log"))
            .expect("agent log");
        Agent(
            sg().args(["agent", "--config", &self.config.display().to_string()])
                .env("SLUICEGATE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn agent"),
        )
    }

    /// The last lines the agents started by [`Setup::spawn_logged`] logged.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lines the destination holds.
    fn delivered(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Live figures from the running owner.
    fn stats(&self) -> Option<Value> {
        let out = sg()
            .args(["stats", "--dir", &self.home.display().to_string(), "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

/// Lines in a file (0 if it does not exist yet).
fn lines_in(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// How far senders may run ahead of the destination. A backlog larger than the log ring pins
/// all of it (see docs/guarantees.md, "The agent"; restarts go on in the newest segment, but a
/// kill inside a write makes the next run open one); holding senders back keeps the backlog
/// small however slow the machine is, so a slow machine makes these tests longer, never red.
const MAX_LAG: usize = 2_000;

/// Waits while more than `MAX_LAG` of `sent` have not reached `out`, unless `stop` is set.
fn hold_back(sent: usize, out: &Path, stop: &AtomicBool) {
    while sent > lines_in(out) + MAX_LAG && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The channel part of every config: small files, no free-space floor.
fn channel_toml(root: &Path) -> String {
    format!(
        "[channels.c]\ndir = \"{}\"\nsettings = {{ max_file_bytes = 1048576, max_event_bytes = 262144, transaction_capacity = 1000, log_files = 64, minimum_required_space_bytes = 0, checkpoint_interval_ms = 1000 }}\n",
        root.join("home").display()
    )
}

fn exec_sink_toml(root: &Path, batch: u32) -> String {
    format!(
        "[sinks.out]\ntype = \"exec\"\nchannel = \"c\"\nbatch = {batch}\nbackoff_ms = 20\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\n",
        root.join("out.ndjson").display()
    )
}

/// Waits until `port` accepts connections or the child exits; panics with its stderr if it
/// exits. Generous: a loaded machine only makes this slower.
fn wait_ready(s: &Setup, child: &mut Child, port: u16) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!(
                "the agent exited ({status}) before it was ready: {err}{}",
                s.log()
            );
        }
        assert!(Instant::now() < until, "the agent never listened on {port}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait agent")
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    err
}

/// Makes a config's text from the temporary root.
type ConfigText = Box<dyn Fn(&Path) -> String>;

/// Bad configurations are one line and exit 2, before any channel is created.
#[test]
fn bad_configurations_fail_before_anything_starts() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let cases: [(&str, ConfigText); 6] = [
        (
            "no program",
            Box::new(|r: &Path| {
                format!(
                    "{}{}",
                    channel_toml(r),
                    exec_sink_toml(r, 10)
                        .replace("[\"sh\", \"-c\"", "[\"no-such-program-here\", \"-c\"")
                )
            }),
        ),
        (
            "unknown field",
            Box::new(|r: &Path| format!("{}colour = \"blue\"\n", channel_toml(r))),
        ),
        (
            "no channel named",
            Box::new(|r: &Path| {
                format!(
                    "{}{}",
                    channel_toml(r),
                    exec_sink_toml(r, 10).replace("channel = \"c\"", "channel = \"nope\"")
                )
            }),
        ),
        (
            "cannot listen",
            Box::new(move |r: &Path| {
                format!(
                    "{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{busy_port}\"\n",
                    channel_toml(r)
                )
            }),
        ),
        ("line 1", Box::new(|_: &Path| "[channels.c\n".to_string())),
        (
            "no.such.property",
            Box::new(|r: &Path| {
                format!(
                    "{}{}properties = {{ \"no.such.property\" = \"1\" }}\n",
                    channel_toml(r),
                    kafka_sink_toml(9, "t", 10, 1000)
                )
            }),
        ),
    ];
    for (needle, body) in cases {
        let s = Setup::new(body);
        let out = sg()
            .args(["agent", "--config", &s.config.display().to_string()])
            .output()
            .expect("run agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{needle}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{needle}: {err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert!(!s.home.exists(), "{needle}: the home was created");
    }
    drop(busy);
}

/// The README's session: ingest over HTTP, delivery through the exec sink, `/metrics`, live
/// `stats`, and a SIGTERM that checkpoints so the next open replays nothing.
#[test]
fn an_agent_session_ingests_delivers_reports_and_stops_cleanly() {
    let (port, mport) = (free_port(), free_port());
    let s = Setup::new(|r| {
        format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            channel_toml(r),
            exec_sink_toml(r, 50)
        )
    });
    let mut agent = s.spawn();
    wait_ready(&s, &mut agent, port);
    let body: String = (0..120).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let (status, reply) = http(port, "POST", "/", body.as_bytes()).expect("post");
    assert_eq!((status, reply.as_str()), (200, "{\"accepted\":120}"));
    let (status, reply) = http(port, "POST", "/events", b"{\"n\":120}\nnot json\n").expect("post");
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("line 2"), "{reply}");
    let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(2 << 20));
    assert_eq!(
        http(port, "POST", "/", big.as_bytes()).expect("post").0,
        413
    );
    eventually("delivery of 120 events", || s.delivered().len() >= 120);
    let want: Vec<String> = (0..120).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(s.delivered(), want);
    eventually("the take commit", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    let live = s.stats().expect("live stats");
    assert_eq!(live["put_successes"], 120, "{live}");
    assert_eq!(live["take_successes"], 120, "{live}");
    assert_eq!(live["owner_pid"], agent.id(), "{live}");
    // The first log file is made in place by the open, before any put: one wait at most.
    assert!(
        live["file_waits"].as_u64().is_some_and(|n| n <= 1),
        "{live}"
    );
    let (status, metrics) = http(mport, "GET", "/metrics", b"").expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "sluicegate_channel_put_successes_total{channel=\"c\"} 120",
        "sluicegate_channel_take_successes_total{channel=\"c\"} 120",
        "sluicegate_channel_size{channel=\"c\"} 0",
        "sluicegate_component_events_total{kind=\"source\",name=\"in\",channel=\"c\"} 120",
        "sluicegate_component_events_total{kind=\"sink\",name=\"out\",channel=\"c\"} 120",
        "sluicegate_component_rejected_total{kind=\"source\",name=\"in\",channel=\"c\"} 2",
        "sluicegate_channel_fsyncs_total",
        "sluicegate_channel_file_waits_total{channel=\"c\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    // OTLP/HTTP logs in JSON: each record one event, the request one transaction.
    let otlp = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},"scopeLogs":[{"scope":{"name":"s"},"logRecords":[{"body":{"stringValue":"a"}},{"body":{"stringValue":"b"}}]}]}]}"#;
    let (status, reply) = http(port, "POST", "/v1/logs", otlp.as_bytes()).expect("otlp");
    assert_eq!((status, reply.as_str()), (200, "{}"));
    let (status, _) = http(port, "POST", "/v1/logs", b"{\"resourceLogs\":7}").expect("otlp");
    assert_eq!(status, 400);
    eventually("delivery of the log records", || s.delivered().len() >= 122);
    let records: Vec<Value> = s.delivered()[120..]
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON event"))
        .collect();
    assert_eq!(records[0]["log"]["body"]["stringValue"], "a");
    assert_eq!(records[1]["log"]["body"]["stringValue"], "b");
    assert_eq!(
        records[1]["resource"]["attributes"][0]["value"]["stringValue"],
        "web"
    );
    // The command's output shows before it exits and the take commits; a stop in between
    // would kill it and roll the batch back (delivered again at the next start, by design).
    eventually("the take commit of the log records", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    let status = sigterm(&mut agent);
    let err = stderr_of(&mut agent);
    assert!(status.success(), "{status}: {err}");
    let after = sg()
        .args(["stats", "--dir", &s.home.display().to_string(), "--json"])
        .output()
        .expect("stats");
    let after: Value = serde_json::from_slice(&after.stdout).expect("json");
    assert_eq!(after["recovery"], "checkpoint", "{after}");
    assert_eq!(after["replay"]["records_read"], 0, "{after}");
    assert_eq!(after["depth"], 0);
}

/// What a kill test's checks need to know.
#[derive(Default)]
struct Ledger {
    /// Every event ever sent (acknowledged or not).
    sent: HashSet<String>,
    /// Events whose sender got an acknowledgement.
    acknowledged: HashSet<String>,
}

/// Checks the destination against the ledger: every acknowledged event arrived, nothing
/// arrived that was never sent, and duplicates are no more than the batches in flight at the
/// kills could hold.
fn judge(delivered: &[String], ledger: &Ledger, kills: u32, batch_in_flight: u32) {
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for d in delivered {
        assert!(
            ledger.sent.contains(d.as_str()),
            "{d} arrived but was never sent"
        );
        *counts.entry(d).or_default() += 1;
    }
    let missing: Vec<_> = ledger
        .acknowledged
        .iter()
        .filter(|a| !counts.contains_key(a.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never delivered, among them {:?}",
        missing.len(),
        ledger.acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= kills * batch_in_flight,
        "{duplicates} duplicates after {kills} kills with batches of {batch_in_flight}"
    );
    eprintln!(
        "{} acknowledged, {} delivered, {duplicates} duplicates, {kills} kills",
        ledger.acknowledged.len(),
        delivered.len()
    );
}

/// SIGKILL the agent again and again while clients post NDJSON and the exec sink delivers;
/// every event acknowledged with 200 arrives at least once, duplicates are bounded by the
/// batches in flight, and nothing unsent arrives.
#[test]
fn sigkill_during_http_ingest_and_exec_delivery_loses_nothing_acknowledged() {
    let port = free_port();
    let sink_batch = 25;
    let s = Setup::new(|r| {
        format!(
            "{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            channel_toml(r),
            exec_sink_toml(r, sink_batch)
        )
    });
    let rounds = kills(200);
    let ledger = kill_during_http_ingest(&s, port, rounds, Death::Kill { window_ms: 150 }, &s.out);
    // A kill can leave one sink batch delivered but not committed.
    judge(&s.delivered(), &ledger, rounds, sink_batch);
}

/// The agent's power cut again and again (its home on the power-cut filesystem, a random
/// fate each time: unsynced pages and directory entries lost, kept, torn) while clients post
/// NDJSON and the exec sink delivers to a file off that filesystem; every event acknowledged
/// with 200 arrives at least once, duplicates are bounded by the batches in flight, and
/// nothing unsent arrives. `SLUICEGATE_AGENT_POWER_CUTS=N` sets the cuts (100 by default).
#[test]
fn power_cuts_during_http_ingest_and_exec_delivery_lose_nothing_acknowledged() {
    let Some(mut m) = TempMount::new_or_skip() else {
        return;
    };
    let mnt = m.path().to_path_buf();
    let port = free_port();
    let sink_batch = 25;
    let mut s = Setup::new(|r| {
        format!(
            "{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            channel_toml(&mnt),
            exec_sink_toml(r, sink_batch)
        )
    });
    s.home = mnt.join("home");
    let rounds = std::env::var("SLUICEGATE_AGENT_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let out = s.out.clone();
    let ledger = kill_during_http_ingest(&s, port, rounds, Death::Power(&mut m), &out);
    let cuts = m.counters().cuts;
    assert_eq!(cuts, u64::from(rounds));
    // A cut can leave one sink batch delivered but its take not durable.
    judge(&s.delivered(), &ledger, rounds, sink_batch);
}

/// Applies a fate drawn from `rng` and mounts again.
fn power_cycle(m: &mut PowerMount, rng: &mut Lcg) {
    let fate = Fate::ALL[rng.next(Fate::ALL.len() as u64) as usize];
    let mut fates = rand_pcg::Pcg64Mcg::new(u128::from(rng.next(u64::MAX)));
    m.power_cycle(fate, &mut fates)
        .unwrap_or_else(|e| panic!("power cycle: {e}"));
}

/// Waits until `port` accepts connections (true), or the power was cut and the agent exited
/// before it was ready (false); an exit with the power on is a failure, as in [`wait_ready`].
fn ready_or_cut(s: &Setup, child: &mut Child, port: u16, m: &PowerMount) -> bool {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            if m.is_cut() {
                return false;
            }
            panic!(
                "the agent exited ({status}) before it was ready, with the power on: {}{}",
                stderr_of(child),
                s.log()
            );
        }
        assert!(Instant::now() < until, "the agent never listened on {port}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How each round's agent dies.
enum Death<'a> {
    /// SIGKILL from 10 to `10 + window_ms` ms after it is ready.
    Kill { window_ms: u64 },
    /// Its power cut at a random one of its first 300 syncs, its start among them (home on
    /// the power-cut filesystem), then SIGKILL and a random fate, before the next round
    /// starts on what the cut left.
    Power(&'a mut PowerMount),
}

/// Kills the agent of `s` `rounds` times as `death` says (for SIGKILL, each from 10 to
/// `10 + window_ms` ms after it is ready), while two clients post 10-event NDJSON bodies to its HTTP source on `port` (senders
/// held to `MAX_LAG` lines ahead of `delivered`, the destination's file); then a last run, not killed, takes one more body, drains the channel
/// and stops on SIGTERM. Returns what was sent and acknowledged.
fn kill_during_http_ingest(
    s: &Setup,
    port: u16,
    rounds: u32,
    mut death: Death<'_>,
    delivered: &Path,
) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Lcg(0x5eed_1234);
    for round in 0..rounds {
        if let Death::Power(m) = &mut death {
            // The power goes at one of the next 300 syncs, the agent's own start among them
            // (opening the channel, its settings), then ingest commits, take commits and
            // checkpoints; or after a minute if the agent makes fewer.
            // Every fourth round aims at the start: one of the first 20 syncs.
            let within = if round % 4 == 0 { 20 } else { 300 };
            m.arm(CutPoint {
                sync: m.syncs() + 1 + rng.next(within),
                applied: rng.next(2) == 0,
                file: None,
            });
        }
        let mut agent = s.spawn_logged();
        let started = match &death {
            Death::Power(m) => ready_or_cut(s, &mut agent, port, m),
            Death::Kill { .. } => {
                wait_ready(s, &mut agent, port);
                true
            }
        };
        if !started {
            // Cut while it started: nothing was posted; the next round recovers.
            eprintln!("round {round}: the power went while the agent started");
            agent.kill().expect("kill");
            agent.wait().expect("wait");
            if let Death::Power(m) = &mut death {
                power_cycle(m, &mut rng);
            }
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let posters: Vec<_> = (0..2)
            .map(|t| {
                let (stop, ledger) = (Arc::clone(&stop), Arc::clone(&ledger));
                let out = delivered.to_path_buf();
                std::thread::spawn(move || {
                    let mut req = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let sent = ledger.lock().unwrap().sent.len();
                        hold_back(sent, &out, &stop);
                        let ids: Vec<String> = (0..10)
                            .map(|i| format!("{{\"id\":\"r{round}-t{t}-q{req}-{i}\"}}"))
                            .collect();
                        req += 1;
                        ledger.lock().unwrap().sent.extend(ids.iter().cloned());
                        let body = ids.join("\n") + "\n";
                        match http(port, "POST", "/", body.as_bytes()) {
                            Some((200, _)) => {
                                ledger.lock().unwrap().acknowledged.extend(ids);
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                })
            })
            .collect();
        match &mut death {
            Death::Kill { window_ms } => {
                std::thread::sleep(Duration::from_millis(10 + rng.next(*window_ms)));
            }
            Death::Power(m) => {
                if !m.wait_cut(Duration::from_secs(60)) {
                    m.cut_now();
                }
            }
        }
        agent.kill().expect("kill");
        agent.wait().expect("wait");
        stop.store(true, Ordering::Relaxed);
        for p in posters {
            p.join().expect("poster");
        }
        if let Death::Power(m) = &mut death {
            power_cycle(m, &mut rng);
        }
    }
    // A last run, not killed: one more acknowledged body, then a full drain.
    let mut agent = s.spawn_logged();
    wait_ready(s, &mut agent, port);
    let last: Vec<String> = (0..10)
        .map(|i| format!("{{\"id\":\"last-{i}\"}}"))
        .collect();
    {
        let mut l = ledger.lock().unwrap();
        l.sent.extend(last.iter().cloned());
    }
    // A backlog left by the kills can fill the log for a while: 429 says try again, and the
    // sink's takes make room.
    eventually("the last body to be acknowledged", || {
        let body = last.join("\n") + "\n";
        match http(port, "POST", "/", body.as_bytes()) {
            Some((200, _)) => true,
            Some((429 | 503, _)) => false,
            other => {
                let _ = agent.kill();
                let _ = agent.wait();
                panic!(
                    "the last body got {other:?}; the agent logged:\n{}",
                    s.log()
                )
            }
        }
    });
    ledger.lock().unwrap().acknowledged.extend(last);
    eventually("the channel to drain", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    let status = sigterm(&mut agent);
    assert!(status.success(), "{}", s.log());
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    ledger
}

/// The batches an exec sink wrote with [`run_stamped_sink_toml`]: the agent's process id, then
/// the lines, in the order they were written.
fn stamped_batches(out: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut batches: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("#run ") {
            // A command that starts after its agent was killed is adopted by init: each such
            // batch is the last of its own (unknown) run.
            Some("1") => batches.push((format!("orphan-{}", batches.len()), Vec::new())),
            Some(pid) => batches.push((pid.to_string(), Vec::new())),
            // A command whose agent was killed before it wrote the batch reads nothing.
            None if line.is_empty() => {}
            None => match batches.last_mut() {
                Some((_, lines)) => lines.push(line.to_string()),
                None => panic!("a line before any batch header: {line}"),
            },
        }
    }
    batches
}

/// An exec sink that writes each batch as one write, after a header naming the agent process
/// that delivered it (`$PPID` of the command), so a test can tell which run delivered what.
fn run_stamped_sink_toml(root: &Path, batch: u32) -> String {
    format!(
        "[sinks.out]\ntype = \"exec\"\nchannel = \"c\"\nbatch = {batch}\nbackoff_ms = 20\ncommand = [\"sh\", \"-c\", \"b=$(cat); printf '#run %s\\\\n%s\\\\n' \\\"$PPID\\\" \\\"$b\\\" >> {}\"]\n",
        root.join("out.ndjson").display()
    )
}

/// The only duplicates an exactly-once source allows behind an exec sink: a batch the sink
/// delivered and could not commit before a kill, which the next run delivers again as its
/// first batch. Every repeated line must be in the first batch of a run, with its previous
/// copy in the last batch of an earlier run. Returns the number of repeats.
fn only_sink_repeats(batches: &[(String, Vec<String>)], log: &str) -> usize {
    let first_of = |pid: &str| batches.iter().position(|(p, _)| p == pid);
    let last_of = |pid: &str| batches.iter().rposition(|(p, _)| p == pid);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut repeats = 0;
    for (i, (pid, lines)) in batches.iter().enumerate() {
        for line in lines {
            if let Some(&before) = seen.get(line.as_str()) {
                let earlier_pid = batches[before].0.as_str();
                // A killed run's command may finish writing after the next run's first batch,
                // so either order is a redelivery.
                let redelivered = earlier_pid != pid
                    && ((last_of(earlier_pid) == Some(before) && first_of(pid) == Some(i))
                        || (first_of(earlier_pid) == Some(before) && last_of(pid) == Some(i)));
                assert!(
                    redelivered,
                    "{line} was delivered twice, not as a sink batch redelivered after a kill: batch {before} of run {earlier_pid}, then batch {i} of run {pid}: the tail source repeated it. The agents logged:\n{log}"
                );
                repeats += 1;
            }
            seen.insert(line, i);
        }
    }
    repeats
}

/// SIGKILL the agent again and again while a writer appends to log files that rotate (renamed
/// away, a new file under the old name): every line written arrives, nothing unwritten
/// arrives, and the tail source puts every line exactly once: the only repeats are sink
/// batches redelivered after a kill.
#[test]
fn sigkill_during_file_tailing_loses_no_line_and_repeats_none() {
    let mport = free_port();
    let (tail_batch, sink_batch) = (20, 20);
    let s = Setup::new(|r| {
        std::fs::create_dir_all(r.join("logs")).expect("logs");
        format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.logs]\ntype = \"tail\"\nchannel = \"c\"\npaths = [\"{}/logs/app.log*\"]\nbatch = {tail_batch}\npoll_ms = 10\n{}",
            channel_toml(r),
            r.display(),
            run_stamped_sink_toml(r, sink_batch)
        )
    });
    let logs = s.root.join("logs");
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop, logs) = (Arc::clone(&written), Arc::clone(&stop), logs.clone());
        let out = s.out.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut rotations = 0;
            let path = logs.join("app.log");
            let mut file = std::fs::File::create(&path).expect("log");
            while !stop.load(Ordering::Relaxed) {
                hold_back(n as usize, &out, &stop);
                for _ in 0..7 {
                    let line = format!("line-{n}");
                    writeln!(file, "{line}").expect("write");
                    written.lock().unwrap().push(line);
                    n += 1;
                }
                if n % 301 < 7 {
                    rotations += 1;
                    std::fs::rename(&path, logs.join(format!("app.log.{rotations}")))
                        .expect("rotate");
                    file = std::fs::File::create(&path).expect("new log");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let rounds = kills(150);
    let mut rng = Lcg(0x7a11);
    for _ in 0..rounds {
        let mut agent = s.spawn_logged();
        wait_ready(&s, &mut agent, mport);
        std::thread::sleep(Duration::from_millis(10 + rng.next(150)));
        agent.kill().expect("kill");
        agent.wait().expect("wait");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let written = written.lock().unwrap().clone();
    let mut agent = s.spawn_logged();
    wait_ready(&s, &mut agent, mport);
    let want: HashSet<&str> = written.iter().map(String::as_str).collect();
    // Until every line arrived, or the channel is empty and nothing new arrived for 5 s (then
    // `judge` names what is missing).
    let mut seen = (0, Instant::now());
    eventually("every written line to arrive", || {
        let got = s.delivered();
        if got.len() != seen.0 {
            seen = (got.len(), Instant::now());
        }
        let got: HashSet<&str> = got.iter().map(String::as_str).collect();
        let idle =
            seen.1.elapsed() > Duration::from_secs(5) && s.stats().is_some_and(|v| v["depth"] == 0);
        idle || want.iter().all(|w| got.contains(w))
    });
    eventually("the channel to drain", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    let status = sigterm(&mut agent);
    assert!(status.success(), "{}", s.log());
    let ledger = Ledger {
        sent: written.iter().cloned().collect(),
        acknowledged: written.iter().cloned().collect(),
    };
    let batches = stamped_batches(&s.out);
    let delivered: Vec<String> = batches.iter().flat_map(|(_, l)| l.clone()).collect();
    judge(&delivered, &ledger, rounds, sink_batch);
    let repeats = only_sink_repeats(&batches, &s.log());
    eprintln!("{repeats} lines repeated, all of them sink batches redelivered after a kill");
}

/// An independent reader of what arrived on `topic`: `ID|PAYLOAD` lines in `out`, over MQTT 5
/// with a session that never expires.
fn subscriber(port: u16, topic: &str, out: &Path) -> Subscriber {
    let extra = ["-V", "mqttv5", "-x", "4294967295", "-F", "%P|%p"];
    Subscriber::start(port, topic, "sluicegate-test-reader", &extra, out)
}

/// What a subscriber wrote: `(id, payload)` per message, in arrival order.
fn received(out: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (props, payload) = l.split_once('|')?;
            let id = props.strip_prefix("sluicegate-id:")?;
            Some((id.to_string(), payload.to_string()))
        })
        .collect()
}

/// What [`through_an_outage`] sent and saw.
struct Outage {
    /// Every event acknowledged to the HTTP source, in order.
    sent: Vec<String>,
    /// The channel's depth at the end of the outage.
    depth: u64,
    /// How long the destination was away.
    length: Duration,
}

/// Posts 300 events to the HTTP source of the agent of `s` on `port` and waits until
/// `received` (the payloads the destination holds) has them; takes the destination away
/// (`reach(false)`) and posts 100 events every 200 ms for the outage (`var` in ms, 30 s by
/// default); checks that the sink committed nothing meanwhile (the channel holds at least 100);
/// brings it back (`reach(true)`), and waits until every event arrived and the channel drained.
fn through_an_outage(
    s: &Setup,
    port: u16,
    var: &str,
    received: &dyn Fn() -> HashSet<String>,
    reach: &mut dyn FnMut(bool),
) -> Outage {
    let mut sent = Vec::new();
    let mut post = |from: usize, to: usize| {
        let body: String = (from..to).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let (status, reply) = http(port, "POST", "/", body.as_bytes()).expect("post");
        assert_eq!(status, 200, "{reply}");
        sent.extend((from..to).map(|i| format!("{{\"n\":{i}}}")));
    };
    post(0, 300);
    eventually("300 events at the destination", || received().len() >= 300);
    let length = Duration::from_millis(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000),
    );
    reach(false);
    let until = Instant::now() + length;
    let mut n = 300;
    while Instant::now() < until {
        post(n, n + 100);
        n += 100;
        std::thread::sleep(Duration::from_millis(200).min(length));
    }
    let depth = s.stats().expect("stats")["depth"].as_u64().expect("depth");
    assert!(
        depth >= 100,
        "with the destination away the sink must commit nothing: depth {depth}"
    );
    reach(true);
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let got = received();
        let missing = sent.iter().filter(|e| !got.contains(*e)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{missing} of {} events never reached the destination; channel: {:?}; the agent logged:\n{}",
            sent.len(),
            s.stats().map(|v| v["depth"].clone()),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually("the channel to drain", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    Outage {
        sent,
        depth,
        length,
    }
}

/// The MQTT sink against a real mosquitto, read back by `mosquitto_sub`: every event arrives
/// with its `sluicegate-id`; with the broker stopped (30 s; `SLUICEGATE_MQTT_OUTAGE_MS`), the
/// sink commits nothing and the events wait in the channel; once the broker is back, every
/// event acknowledged to the HTTP source arrives, a repeat only ever with its first id, and
/// the channel drains.
#[test]
fn mqtt_sink_delivers_with_ids_and_waits_out_a_broker_outage() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(&program, &tmp.path().join("broker"));
    let bport = broker.port;
    let out = tmp.path().join("received");
    let _reader = subscriber(bport, "site/telemetry", &out);
    let s = Setup::new(|r| {
        format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n[sinks.mqtt]\ntype = \"mqtt\"\nchannel = \"c\"\nbroker = \"127.0.0.1:{bport}\"\ntopic = \"site/telemetry\"\nbatch = 50\nbackoff_ms = 50\nmax_backoff_ms = 500\ntimeout_ms = 2000\n",
            channel_toml(r),
        )
    });
    let mut agent = s.spawn_logged();
    wait_ready(&s, &mut agent, port);
    let got = || received(&out).into_iter().map(|(_, p)| p).collect();
    let Outage {
        sent,
        depth,
        length: outage,
    } = through_an_outage(
        &s,
        port,
        "SLUICEGATE_MQTT_OUTAGE_MS",
        &got,
        &mut |up| match up {
            false => broker.stop(),
            true => broker.resume(&program),
        },
    );
    let got = received(&out);
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let sent_set: HashSet<&str> = sent.iter().map(String::as_str).collect();
    for (id, payload) in &got {
        assert!(
            sent_set.contains(payload.as_str()),
            "{payload} was never sent"
        );
        let first = ids.entry(payload.as_str()).or_insert(id.as_str());
        assert_eq!(*first, id.as_str(), "{payload} came again with another id");
    }
    let distinct: HashSet<&str> = ids.values().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "two events share an id");
    let status = sigterm(&mut agent);
    assert!(status.success(), "{}", s.log());
    eprintln!(
        "{} events sent, {} messages received ({} repeats), {} ms outage with depth {depth}",
        sent.len(),
        got.len(),
        got.len() - ids.len(),
        outage.as_millis()
    );
}

/// [`judge`] on `(id, payload)` messages a broker holds, and each repeated message carries
/// its first id.
fn judge_with_ids(got: &[(String, String)], ledger: &Ledger, kills: u32, batch: u32) {
    let mut first_id: HashMap<&str, &str> = HashMap::new();
    for (id, payload) in got {
        let first = first_id.entry(payload.as_str()).or_insert(id.as_str());
        assert_eq!(*first, id.as_str(), "{payload} came again with another id");
    }
    let payloads: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    judge(&payloads, ledger, kills, batch);
}

/// The two runs of a dead-letter test, whose HTTP source posts `body` (three events, some or all
/// of which the destination refuses for good) to sink `sink`: first with no `dead_letter_dir`,
/// where the batch fails again and again, the log says to set it (and names `refusal`) and all
/// three events stay in the channel; then, after a SIGTERM, with `dead_letter_dir =
/// "dead-letter"`, until the channel drains. Returns the setup, the running agent, the lines of
/// the sink's dead-letter file and its `dead_lettered_total` line from `/metrics`.
fn refused_then_dead_lettered<F: Fn(&Path) -> String + 'static>(
    config: impl Fn(&'static str) -> F,
    port: u16,
    mport: u16,
    body: &str,
    sink: &str,
    refusal: &str,
) -> (Setup, Agent, Vec<Value>, String) {
    let s = Setup::new(config(""));
    let mut agent = s.spawn_logged();
    wait_ready(&s, &mut agent, port);
    let (status, reply) = http(port, "POST", "/", body.as_bytes()).expect("post");
    assert_eq!(status, 200, "{reply}");
    eventually("the refusal to be logged", || {
        s.log().contains("set dead_letter_dir")
    });
    assert!(s.log().contains(refusal), "{}", s.log());
    let depth = s.stats().expect("stats")["depth"].as_u64();
    assert_eq!(depth, Some(3), "without a dead-letter file nothing leaves");
    assert!(sigterm(&mut agent).success(), "{}", s.log());

    std::fs::write(
        &s.config,
        config("dead_letter_dir = \"dead-letter\"\n")(&s.root),
    )
    .expect("config");
    let mut agent = s.spawn_logged();
    wait_ready(&s, &mut agent, port);
    eventually("the channel to drain", || {
        s.stats().is_some_and(|v| v["depth"] == 0)
    });
    let lines: Vec<Value> =
        std::fs::read_to_string(s.root.join(format!("dead-letter/{sink}.jsonl")))
            .expect("dead-letter file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
    let metrics = http(mport, "GET", "/metrics", b"").expect("metrics").1;
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("sluicegate_component_dead_lettered_total") && l.contains(sink))
        .unwrap_or_default()
        .to_string();
    (s, agent, lines, counted)
}

/// A broker that refuses the sink's publishes (mosquitto's ACL allows only `ok/#`, and answers
/// a PUBACK `NotAuthorized`, reason 0x87): without `dead_letter_dir` the batch fails again and
/// again, loudly, and the events stay in the channel; with it, every event lands in the
/// dead-letter file with the broker's reason and its id, is counted, and the channel drains.
#[test]
fn mqtt_sink_dead_letters_what_the_broker_refuses() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("broker");
    std::fs::create_dir_all(&dir).expect("broker dir");
    std::fs::write(dir.join("acl"), "topic readwrite ok/#\n").expect("acl");
    let broker = Mosquitto::start_with(
        &program,
        &dir,
        // mosquitto 2.0.11 with `max_queued_messages 0` (no limit) drops the connection right
        // after a PUBACK that refuses (docs/operations.md): this broker keeps a limit.
        &format!(
            "acl_file {}\nmax_queued_messages 1000\n",
            dir.join("acl").display()
        ),
    );
    let bport = broker.port;
    let config = move |dead_letter: &'static str| {
        move |r: &Path| {
            format!(
                "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n[sinks.mqtt]\ntype = \"mqtt\"\nchannel = \"c\"\nbroker = \"127.0.0.1:{bport}\"\ntopic = \"denied/telemetry\"\nbatch = 10\nbackoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 5000\n{dead_letter}",
                channel_toml(r),
            )
        }
    };
    let body = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    let (s, mut agent, lines, counted) =
        refused_then_dead_lettered(config, port, mport, body, "mqtt", "NotAuthorized");
    let bodies: Vec<&str> = lines.iter().filter_map(|l| l["body"].as_str()).collect();
    assert_eq!(bodies, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"], "{lines:?}");
    for line in &lines {
        assert_eq!(line["sink"], "mqtt");
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("NotAuthorized"), "{reason}");
        assert!(line["id"].as_str().is_some_and(|i| i.contains(':')));
    }
    assert!(counted.ends_with(" 3"), "{counted}");
    assert!(sigterm(&mut agent).success(), "{}", s.log());
}

/// SIGKILL the agent again and again (120 times; `SLUICEGATE_AGENT_KILLS`) while clients post
/// NDJSON and the MQTT sink publishes to a real mosquitto: every event acknowledged with 200
/// reaches the subscriber, nothing unsent does, repeats stay within two sink batches per kill
/// (the batch whose commit was being synced and the next, already sent; see `run_sink`),
/// and a repeated message always carries its first id.
#[test]
fn sigkill_during_mqtt_delivery_loses_nothing_acknowledged() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let port = free_port();
    let sink_batch = 25;
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(&program, &tmp.path().join("broker"));
    let bport = broker.port;
    let out = tmp.path().join("received");
    let _reader = subscriber(bport, "kill/test", &out);
    let s = Setup::new(|r| {
        format!(
            "{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n[sinks.mqtt]\ntype = \"mqtt\"\nchannel = \"c\"\nbroker = \"127.0.0.1:{bport}\"\ntopic = \"kill/test\"\nbatch = {sink_batch}\nbackoff_ms = 20\nmax_backoff_ms = 500\ntimeout_ms = 60000\n",
            channel_toml(r),
        )
    });
    // A PUBACK timeout of a minute: a loaded machine makes a batch slower, not a failure that
    // would deliver it again within a run (only a kill may).
    let rounds = kills(120);
    let ledger = kill_during_http_ingest(&s, port, rounds, Death::Kill { window_ms: 150 }, &out);
    // The channel drained: every acknowledged event was PUBACKed; wait for the subscriber.
    eventually("every acknowledged event at the subscriber", || {
        let got: HashSet<String> = received(&out).into_iter().map(|(_, p)| p).collect();
        ledger.acknowledged.iter().all(|a| got.contains(a))
    });
    judge_with_ids(&received(&out), &ledger, rounds, 2 * sink_batch);
}

/// Where the tansu binary is: `SLUICEGATE_TANSU` (set by `cargo xtask ci`), the copy `cargo
/// xtask brokers` keeps in `~/.cache`, or `tansu` on the PATH; `None` (with a loud message)
/// where there is none, unless `SLUICEGATE_TANSU` names it (then it must run).
fn tansu_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICEGATE_TANSU") {
        return Some(PathBuf::from(p));
    }
    let cached = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/sluicegate/bin/tansu-0.6.0-510f3e2"))
        .filter(|p| p.exists());
    let on_path = || {
        Command::new("tansu")
            .arg("--help")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("tansu"))
    };
    let found = cached.or_else(on_path);
    if found.is_none() {
        eprintln!(
            "\n*** SKIPPED: tansu (a Kafka-compatible broker) is not installed (`cargo xtask brokers` installs it) ***\n"
        );
    }
    found
}

/// A tansu broker on a loopback port with in-memory storage, advertising `advertised` (a
/// [`Gate`] in front of it); stopped when dropped.
struct Tansu {
    port: u16,
    program: PathBuf,
    child: Child,
}

impl Tansu {
    fn start(program: &Path, dir: &Path, advertised: u16) -> Tansu {
        std::fs::create_dir_all(dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let port = free_port();
        let child = Command::new(program)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu");
        eventually("tansu to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Tansu {
            port,
            program: program.to_path_buf(),
            child,
        }
    }

    fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(&self.program)
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
            ])
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "cannot create topic {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder the test can shut: while shut, its port refuses connections and every
/// connection through it is cut, as when the broker's host goes away; the broker keeps its
/// data (tansu here stores only in memory, so stopping the broker itself would lose it).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gate {
    fn at(port: u16, to: u16) -> Gate {
        let open = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, d, l) = (Arc::clone(&open), Arc::clone(&done), Arc::clone(&links));
        let thread = std::thread::spawn(move || {
            // Bounded by `done`.
            while !d.load(Ordering::Relaxed) {
                if !o.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let listener = TcpListener::bind(("127.0.0.1", port)).expect("gate bind");
                listener.set_nonblocking(true).expect("nonblocking");
                while o.load(Ordering::Relaxed) && !d.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut held = l.lock().expect("links");
                    for (a, b) in [(&client, &server), (&server, &client)] {
                        let (mut from, mut into) = (a.try_clone().unwrap(), b.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut into);
                            let _ = into.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    held.push(client);
                    held.push(server);
                }
            }
        });
        Gate {
            port,
            open,
            done,
            links,
            thread: Some(thread),
        }
    }

    /// Cuts every connection and refuses new ones.
    fn shut(&self) {
        self.open.store(false, Ordering::Relaxed);
        for s in self.links.lock().expect("links").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shut();
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a Kafka test starts: a tansu behind a gate, one topic, and (unless `read` is false)
/// a reader of it appending to `out`; `None` (loudly) where tansu is not installed.
struct KafkaRig {
    gate: Gate,
    out: PathBuf,
    _reader: Option<KafkaReader>,
    _broker: Tansu,
    _tmp: tempfile::TempDir,
}

impl KafkaRig {
    fn start(topic: &str, partitions: u32, read: bool) -> Option<KafkaRig> {
        let program = tansu_program()?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let gate_port = free_port();
        let broker = Tansu::start(&program, &tmp.path().join("broker"), gate_port);
        let gate = Gate::at(gate_port, broker.port);
        broker.create_topic(topic, partitions);
        let out = tmp.path().join("received");
        let reader = read.then(|| KafkaReader::start(gate_port, topic, partitions as i32, &out));
        Some(KafkaRig {
            gate,
            out,
            _reader: reader,
            _broker: broker,
            _tmp: tmp,
        })
    }
}

/// One message read back: partition, the `sluicegate-id` header, the payload.
type Message = (i32, String, String);

/// An rdkafka consumer (no group: it assigns itself every partition from the start) appending
/// `PARTITION|ID|PAYLOAD` lines to a file until dropped: an independent reader of what
/// arrived.
struct KafkaReader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaReader {
    fn start(bootstrap: u16, topic: &str, partitions: i32, out: &Path) -> KafkaReader {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{bootstrap}"))
            .set("group.id", "sluicegate-test-reader")
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .expect("consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let mut file = std::fs::File::create(out).expect("reader output");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // Bounded by `stop`.
            while !stopped.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "sluicegate-id"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
                writeln!(file, "{}|{id}|{payload}", m.partition()).expect("reader write");
            }
        });
        KafkaReader {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`KafkaReader`] wrote, in arrival order.
fn kafka_received(out: &Path) -> Vec<Message> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '|');
            let partition = parts.next()?.parse().ok()?;
            Some((
                partition,
                parts.next()?.to_string(),
                parts.next()?.to_string(),
            ))
        })
        .collect()
}

/// The event-id half of a `CHANNEL:EVENT` id.
fn event_of(id: &str) -> u128 {
    id.rsplit_once(':')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or_else(|| panic!("{id:?} is not CHANNEL:EVENT"))
}

fn kafka_sink_toml(bootstrap: u16, topic: &str, batch: u32, timeout_ms: u64) -> String {
    format!(
        "[sinks.kafka]\ntype = \"kafka\"\nchannel = \"c\"\nbrokers = \"127.0.0.1:{bootstrap}\"\ntopic = \"{topic}\"\nkey = \"id\"\nbatch = {batch}\nbackoff_ms = 50\nmax_backoff_ms = 1000\ntimeout_ms = {timeout_ms}\n"
    )
}

/// The Kafka sink against a real broker (tansu), read back by an rdkafka consumer: every event
/// arrives with its `sluicegate-id`, each partition in channel order; with the broker cut off
/// (30 s; `SLUICEGATE_KAFKA_OUTAGE_MS`) the sink commits nothing and the events wait in the
/// channel; once it is back, every event acknowledged to the HTTP source arrives, a repeat
/// only ever with its first id, and the channel drains.
#[test]
fn kafka_sink_delivers_in_order_with_ids_and_waits_out_a_broker_outage() {
    let Some(rig) = KafkaRig::start("events", 3, true) else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let (gate, out, bport) = (&rig.gate, rig.out.clone(), rig.gate.port);
    let s = Setup::new(|r| {
        format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            channel_toml(r),
            kafka_sink_toml(bport, "events", 50, 3000),
        )
    });
    let mut agent = s.spawn_logged();
    wait_ready(&s, &mut agent, port);
    let got = || kafka_received(&out).into_iter().map(|m| m.2).collect();
    let Outage {
        sent,
        depth,
        length: outage,
    } = through_an_outage(
        &s,
        port,
        "SLUICEGATE_KAFKA_OUTAGE_MS",
        &got,
        &mut |up| match up {
            false => gate.shut(),
            true => gate.reopen(),
        },
    );
    let got = kafka_received(&out);
    let sent_set: HashSet<&str> = sent.iter().map(String::as_str).collect();
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let mut last: HashMap<i32, u128> = HashMap::new();
    for (partition, id, payload) in &got {
        assert!(
            sent_set.contains(payload.as_str()),
            "{payload} was never sent"
        );
        if let Some(first) = ids.get(payload.as_str()) {
            assert_eq!(*first, id.as_str(), "{payload} came again with another id");
            continue;
        }
        ids.insert(payload, id);
        // In order per partition: each event's first arrival comes after every earlier
        // event's of its partition (in the channel's order, which its id follows).
        let event = event_of(id);
        let seen = last.entry(*partition).or_default();
        assert!(
            event > *seen,
            "{payload} (event {event}) first arrived in partition {partition} after event {seen}"
        );
        *seen = event;
    }
    let distinct: HashSet<&str> = ids.values().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "two events share an id");
    assert!(
        last.len() > 1,
        "key = \"id\" spreads events over partitions"
    );
    let status = sigterm(&mut agent);
    assert!(status.success(), "{}", s.log());
    eprintln!(
        "{} events sent, {} messages received ({} repeats) over {} partitions, {} ms outage with depth {depth}",
        sent.len(),
        got.len(),
        got.len() - ids.len(),
        last.len(),
        outage.as_millis()
    );
}

/// SIGKILL the agent again and again (120 times; `SLUICEGATE_AGENT_KILLS`) while clients post
/// NDJSON and the Kafka sink produces to a real broker (tansu): every event acknowledged with
/// 200 reaches the reader, nothing unsent does, repeats stay within two sink batches per kill
/// (the batch whose commit was being synced and the next, already sent; see `run_sink`),
/// and a repeated message always carries its first id.
#[test]
fn sigkill_during_kafka_delivery_loses_nothing_acknowledged() {
    let Some(rig) = KafkaRig::start("kills", 2, true) else {
        return;
    };
    let port = free_port();
    let sink_batch = 25;
    let (out, bport) = (rig.out.clone(), rig.gate.port);
    let s = Setup::new(|r| {
        format!(
            "{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            channel_toml(r),
            // A minute for delivery reports: a loaded machine makes a batch slower, not a
            // failure that would deliver it again within a run (only a kill may).
            kafka_sink_toml(bport, "kills", sink_batch, 60_000),
        )
    });
    let rounds = kills(120);
    // A producer needs the broker's metadata and a producer id before its first batch (about
    // 0.4 s here): kills come up to 2 s after the agent is ready, so most land during delivery.
    let ledger = kill_during_http_ingest(&s, port, rounds, Death::Kill { window_ms: 2000 }, &out);
    eventually("every acknowledged event at the reader", || {
        let got: HashSet<String> = kafka_received(&out).into_iter().map(|m| m.2).collect();
        ledger.acknowledged.iter().all(|a| got.contains(a))
    });
    let got: Vec<(String, String)> = kafka_received(&out)
        .into_iter()
        .map(|(_, id, payload)| (id, payload))
        .collect();
    judge_with_ids(&got, &ledger, rounds, 2 * sink_batch);
}

/// An event Kafka refuses for good (larger than the producer's `message.max.bytes`): without
/// `dead_letter_dir` its batch fails again and again, loudly, and nothing is lost; with it,
/// the event lands in the dead-letter file with its reason and id, is counted, and the events
/// after it are delivered.
#[test]
fn kafka_sink_dead_letters_a_refused_event_and_delivers_the_rest() {
    let Some(rig) = KafkaRig::start("dl", 1, true) else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let (out, bport) = (rig.out.clone(), rig.gate.port);
    let config = |dead_letter: &'static str| {
        move |r: &Path| {
            format!(
                "[agent]\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}[sources.in]\ntype = \"http\"\nchannel = \"c\"\nlisten = \"127.0.0.1:{port}\"\n{}properties = {{ \"message.max.bytes\" = \"2000\" }}\n{dead_letter}",
                channel_toml(r),
                kafka_sink_toml(bport, "dl", 10, 5000),
            )
        }
    };
    let big = format!("{{\"big\":\"{}\"}}", "x".repeat(5000));
    let body = format!("{{\"n\":1}}\n{big}\n{{\"n\":2}}\n");
    let (s, mut agent, lines, counted) =
        refused_then_dead_lettered(config, port, mport, &body, "kafka", "");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["body"], big.as_str());
    assert_eq!(lines[0]["sink"], "kafka");
    let reason = lines[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("too large"), "{reason}");
    assert!(lines[0]["id"].as_str().is_some_and(|i| i.contains(':')));
    eventually("both small events at the reader", || {
        let got: HashSet<String> = kafka_received(&out).into_iter().map(|m| m.2).collect();
        got.contains("{\"n\":1}") && got.contains("{\"n\":2}")
    });
    assert!(
        kafka_received(&out).iter().all(|m| m.2 != big),
        "the refused event reached the broker"
    );
    assert!(counted.ends_with(" 1"), "{counted}");
    assert!(sigterm(&mut agent).success(), "{}", s.log());
}

/// What the only Kafka broker here does with transactions, the ground an exactly-once Kafka
/// sink would stand on (docs/guarantees.md, "Exactly once into Kafka"): tansu commits, aborts
/// and fences a transactional producer, but a `read_committed` consumer still reads the records
/// of an aborted transaction and of one a new producer fenced. When this test fails, tansu
/// has changed, and the exactly-once mode can be built and tested here.
#[test]
fn tansu_runs_transactions_but_read_committed_shows_aborted_records() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let Some(rig) = KafkaRig::start("txn", 1, false) else {
        return;
    };
    let bootstrap = format!("127.0.0.1:{}", rig.gate.port);
    let producer = || -> BaseProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "sluicegate-probe")
            .create()
            .expect("producer")
    };
    let t = Duration::from_secs(30);
    let p = producer();
    p.init_transactions(t).expect("init_transactions");
    for (payload, commit) in [
        ("committed-1", true),
        ("aborted-2", false),
        ("committed-3", true),
    ] {
        p.begin_transaction().expect("begin");
        p.send(
            BaseRecord::<(), str>::to("txn")
                .payload(payload)
                .partition(0),
        )
        .expect("send");
        p.flush(t).expect("flush");
        if commit {
            p.commit_transaction(t).expect("commit");
        } else {
            p.abort_transaction(t).expect("abort");
        }
    }
    // A transaction left open, as a crash leaves it, then fenced by the next producer.
    p.begin_transaction().expect("begin");
    p.send(
        BaseRecord::<(), str>::to("txn")
            .payload("fenced-4")
            .partition(0),
    )
    .expect("send");
    p.flush(t).expect("flush");
    std::mem::forget(p);
    producer()
        .init_transactions(t)
        .expect("fencing init_transactions");
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "sluicegate-probe-reader")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("txn", 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    // Bounded by the partition's end and a minute.
    while Instant::now() < until {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                seen.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if seen.len() >= 4 => break,
            _ => {}
        }
    }
    eprintln!("tansu, read_committed: {seen:?}");
    assert_eq!(
        seen,
        ["committed-1", "aborted-2", "committed-3", "fenced-4"],
        "tansu's read_committed changed: see docs/guarantees.md, \"Exactly once into Kafka\""
    );
}
