//! `sluicegate bridge` between a gateway's serial line and a real mosquitto: a stand-in for the
//! firmware speaks the uplink's frames over a TCP socket (as QEMU serves a board's UART),
//! resends a batch until it is acknowledged, and an independent `mosquitto_sub` records what
//! the broker received. Through damaged frames, a broker stopped for a while and a bridge
//! restarted, every acknowledged batch's readings reached the broker.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, mosquitto_program, sg, Mosquitto, Subscriber};
use sluicegate_uplink::{encode, Decoder, Down, Reading, Up, MAX_FRAME};

const TOPIC: &str = "gw/readings";

fn bridge(serial: u16, mqtt: u16) -> Child {
    sg().args([
        "bridge",
        "--serial",
        &format!("127.0.0.1:{serial}"),
        "--mqtt",
        &format!("127.0.0.1:{mqtt}"),
        "--topic",
        TOPIC,
        "--timeout-ms",
        "1000",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the bridge")
}

/// The stand-in gateway's end of the line.
struct Line {
    listener: TcpListener,
    stream: Option<TcpStream>,
    decoder: Decoder,
}

impl Line {
    /// Waits for the bridge to connect (again).
    fn accept(&mut self) {
        let (s, _) = self.listener.accept().expect("the bridge connects");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        self.stream = Some(s);
        self.decoder = Decoder::new();
    }

    /// Sends `frame` (possibly damaged), then waits up to `wait` for the acknowledgement of
    /// batch `seq`; false if none came.
    fn send(&mut self, frame: &[u8], seq: u32, wait: Duration) -> bool {
        let s = self.stream.as_mut().expect("connected");
        if s.write_all(frame).is_err() {
            return false;
        }
        let until = Instant::now() + wait;
        let mut buf = [0u8; 64];
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Some(Down::Ack { seq: acked }) = self.decoder.push::<Down>(b) {
                            if acked == seq {
                                return true;
                            }
                        }
                    }
                }
                Err(_) => {}
            }
        }
        false
    }
}

#[test]
fn every_acknowledged_batch_reaches_the_broker_through_damage_an_outage_and_a_restart() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&program, &root.path().join("broker"));
    let out = root.path().join("received.txt");
    let _sub = Subscriber::start(broker.port, TOPIC, "sluicegate-bridge-reader", &[], &out);
    let serial = free_port();
    let mut line = Line {
        listener: TcpListener::bind(("127.0.0.1", serial)).unwrap(),
        stream: None,
        decoder: Decoder::new(),
    };
    let mut bridge_child = bridge(serial, broker.port);
    line.accept();

    let mut acked_readings: Vec<u32> = Vec::new();
    let (mut sends, mut unacked, mut damaged_sent) = (0u32, 0u32, 0u32);
    let mut frame_buf = [0u8; MAX_FRAME];
    let mut batch_seq = 0u32;
    let mut outage_started = None;
    let mut outage_length = Duration::ZERO;
    for batch in 0..120u32 {
        let mut readings = heapless::Vec::new();
        for i in 0..16 {
            let seq = batch * 16 + i;
            let _ = readings.push(Reading {
                seq,
                at_ms: seq * 3,
                sensor: (seq % 4) as u8,
                centi_celsius: (seq % 3000) as i16 - 500,
            });
        }
        if batch == 40 {
            broker.stop();
            outage_started = Some(Instant::now());
        }
        if batch == 80 {
            // The bridge restarts: the line drops and is connected again.
            let _ = bridge_child.kill();
            let _ = bridge_child.wait();
            bridge_child = bridge(serial, broker.port);
            line.accept();
        }
        // Bounded: the gateway resends until acknowledged (the broker comes back below).
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(
                Instant::now() < deadline,
                "batch {batch} never acknowledged"
            );
            batch_seq += 1;
            let message = Up::Batch {
                seq: batch_seq,
                boot: 1,
                readings: readings.clone(),
            };
            let mut frame = encode(&message, &mut frame_buf).unwrap().to_vec();
            // One send in seven goes out with a byte changed on the line.
            if sends % 7 == 3 {
                let at = frame.len() / 2;
                frame[at] ^= 0x10;
                if frame[at] == 0 {
                    frame[at] = 0x33;
                }
                damaged_sent += 1;
            }
            sends += 1;
            if line.send(&frame, batch_seq, Duration::from_millis(1500)) {
                acked_readings.extend(readings.iter().map(|r| r.seq));
                break;
            }
            unacked += 1;
            if let Some(t) = outage_started {
                if unacked >= 3 {
                    // The broker has been away for three timeouts: bring it back.
                    broker.resume(&program);
                    outage_length = t.elapsed();
                    outage_started = None;
                }
            }
        }
    }
    let parse = || -> HashMap<u32, usize> {
        let mut seen = HashMap::new();
        for l in std::fs::read_to_string(&out).unwrap_or_default().lines() {
            if let Some(seq) = l.split(',').next().and_then(|s| s.parse().ok()) {
                *seen.entry(seq).or_insert(0) += 1;
            }
        }
        seen
    };
    eventually("every acknowledged reading at the subscriber", || {
        let seen = parse();
        acked_readings.iter().all(|s| seen.contains_key(s))
    });
    let seen = parse();
    let duplicates: usize = seen.values().map(|&n| n - 1).sum();
    let _ = bridge_child.kill();
    let _ = bridge_child.wait();
    eprintln!(
        "{} readings acknowledged in 120 batches; {sends} sends ({damaged_sent} damaged on the line, {unacked} not acknowledged); broker away {:.1} s; {} readings at the subscriber, {duplicates} duplicates",
        acked_readings.len(),
        outage_length.as_secs_f64(),
        seen.len()
    );
    assert_eq!(acked_readings.len(), 120 * 16);
    assert!(damaged_sent > 0 && unacked >= damaged_sent);
    // Nothing the gateway never sent arrived.
    assert!(seen.keys().all(|s| *s < 120 * 16));
}

/// Bad addresses are one-line usage errors (exit 2), before anything connects.
#[test]
fn bad_addresses_are_one_line_usage_errors() {
    for (serial, mqtt, says) in [
        ("127.0.0.1:9", "localhost", "--mqtt: expected HOST:PORT"),
        (
            "127.0.0.1:9",
            "localhost:port",
            "--mqtt: expected HOST:PORT",
        ),
        ("serial", "127.0.0.1:1883", "--serial: expected HOST:PORT"),
    ] {
        let out = sg()
            .args(["bridge", "--serial", serial, "--mqtt", mqtt])
            .output()
            .expect("run the bridge");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
