//! The gateway bridge (`sluicegate bridge`): reads batches of readings from a gateway's serial
//! line (here a TCP socket, as QEMU offers a board's UART), publishes every reading to an MQTT
//! broker with QoS 1 through the agent's MQTT sink, and acknowledges the batch back over the
//! line only once the broker acknowledged every reading of it. The gateway commits its take on
//! that acknowledgement and rolls it back when none comes in time, so a reading leaves the
//! gateway's channel only after the broker holds it.
//!
//! Each reading is published as the text `SEQ,AT_MS,SENSOR,CENTI_CELSIUS`. A batch the broker
//! does not acknowledge within the sink's timeout is not acknowledged to the gateway, which
//! sends it again. The line is reconnected whenever it drops.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluicegate_uplink::{encode, Decoder, Down, Up, MAX_FRAME};

use crate::sinks::mqtt::{MqttSettings, MqttSink};
use crate::sinks::{Sink, Taken};

/// What a bridge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Batches read from the line.
    pub batches: u64,
    /// Batches every reading of which the broker acknowledged, and the line was told.
    pub acknowledged: u64,
    /// Batches the broker did not acknowledge in time (the gateway sends them again).
    pub failed: u64,
    /// Readings published and acknowledged.
    pub readings: u64,
    /// Frames dropped as damaged or undecodable.
    pub frames_dropped: u64,
    /// Times the line was (re)connected.
    pub connects: u64,
}

/// The text a reading is published as.
pub fn reading_text(r: &sluicegate_uplink::Reading) -> String {
    format!("{},{},{},{}", r.seq, r.at_ms, r.sensor, r.centi_celsius)
}

/// Runs the bridge until `stop` is set: the line at `serial` (`HOST:PORT`), the broker as
/// `mqtt` says.
pub fn run(serial: &str, mqtt: MqttSettings, stop: &AtomicBool) -> BridgeStats {
    let mut sink = MqttSink::new(mqtt);
    let mut stats = BridgeStats::default();
    // Bounded by `stop`: each turn connects, or waits 100 ms before trying again.
    while !stop.load(Ordering::Relaxed) {
        let line = match TcpStream::connect(serial) {
            Ok(line) => line,
            Err(e) => {
                tracing::debug!("bridge: cannot reach the line at {serial}: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        stats.connects += 1;
        tracing::info!("bridge: line {serial} connected");
        if let Err(e) = serve(line, &mut sink, &mut stats, stop) {
            tracing::warn!("bridge: line {serial}: {e}; reconnecting");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stats
}

/// Serves one connection of the line until it drops or `stop` is set.
fn serve(
    mut line: TcpStream,
    sink: &mut MqttSink,
    stats: &mut BridgeStats,
    stop: &AtomicBool,
) -> Result<(), String> {
    line.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let _ = line.set_nodelay(true);
    let mut decoder = Decoder::new();
    // The decoder is new with each connection; the count covers the bridge's whole run.
    let dropped_before = stats.frames_dropped;
    let mut buf = [0u8; 512];
    let mut out = [0u8; MAX_FRAME];
    // Bounded by `stop` and by the line: each turn reads what arrived.
    while !stop.load(Ordering::Relaxed) {
        let n = match line.read(&mut buf) {
            Ok(0) => return Err("the line closed".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        };
        for &byte in &buf[..n] {
            let Some(Up::Batch {
                seq,
                boot,
                readings,
            }) = decoder.push::<Up>(byte)
            else {
                continue;
            };
            stats.batches += 1;
            let events: Vec<Taken> = readings
                .iter()
                .map(|r| Taken {
                    body: reading_text(r).into_bytes(),
                    id: None,
                })
                .collect();
            match sink.deliver(&events, stop) {
                Ok(refused) if refused.is_empty() => {
                    stats.acknowledged += 1;
                    stats.readings += events.len() as u64;
                    let frame = encode(&Down::Ack { seq }, &mut out)
                        .map_err(|_| "an acknowledgement does not fit a frame".to_string())?;
                    line.write_all(frame).map_err(|e| e.to_string())?;
                    tracing::debug!(
                        "bridge: batch {seq} of boot {boot} ({} readings) acknowledged",
                        events.len()
                    );
                }
                Ok(refused) => {
                    // A reading the broker refuses for good would be sent again forever; the
                    // gateway is told nothing and the operator is.
                    stats.failed += 1;
                    tracing::error!(
                        "bridge: the broker refused {} readings of batch {seq}: {}",
                        refused.len(),
                        refused[0].reason
                    );
                }
                Err(e) => {
                    stats.failed += 1;
                    tracing::warn!("bridge: batch {seq} not acknowledged by the broker: {e}");
                }
            }
        }
        let d = decoder.dropped();
        stats.frames_dropped = dropped_before
            + u64::from(d.damaged)
            + u64::from(d.too_long)
            + u64::from(d.undecodable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;

    /// Damaged frames on two connections of the line: the count covers both. No broker is
    /// needed: a frame that fails its checksum is never published.
    #[test]
    fn frames_dropped_count_every_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let serial = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let bridge = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mqtt = MqttSettings {
                    host: "127.0.0.1".into(),
                    // Nothing listens there, and nothing is published.
                    port: 1,
                    topic: "t".into(),
                    client_id: "bridge-test".into(),
                    timeout: Duration::from_millis(100),
                    identity: 0,
                    batch: 16,
                };
                run(&serial, mqtt, &stop)
            })
        };
        // Three damaged frames a connection: bytes that are no COBS frame of a checked message.
        for _ in 0..2 {
            let (mut line, _) = listener.accept().unwrap();
            line.write_all(&[1, 2, 3, 0, 9, 9, 0, 7, 0]).unwrap();
            // Closed here: the bridge reads what was sent, then the end, then connects again.
        }
        // The third connection comes only after the second was read to its end.
        let (_line, _) = listener.accept().unwrap();
        stop.store(true, Ordering::Relaxed);
        let stats = bridge.join().unwrap();
        assert_eq!(stats.frames_dropped, 6, "{stats:?}");
        assert_eq!(stats.batches, 0, "{stats:?}");
        assert!(stats.connects >= 3, "{stats:?}");
    }
}
