//! The MQTT sink: publishes every event of a batch with QoS 1 to a broker over MQTT 5
//! (`rumqttc`), and counts the batch delivered only once the broker acknowledged each publish
//! with a successful PUBACK.
//!
//! Each event goes as one message, its bytes the payload unchanged, with the user property
//! `sluicegate-id` = `CHANNEL:EVENT` (the channel's identity in hexadecimal, the event's id in
//! decimal): the same each time the event is delivered, so a subscriber can drop the
//! duplicates a crash between the broker's PUBACK and the take's commit causes.
//!
//! A PUBACK that refuses a publish for good (not authorized, a topic name or payload format the
//! broker will not take) reports that event as refused, for the dead-letter file; any other
//! failure fails the batch.
//!
//! The client keeps a persistent session (clean start off, a session that outlives a
//! connection). Any failure (a connection lost or refused, a PUBACK that is not a success, no
//! PUBACK within the timeout) fails the batch, which the runner rolls back and delivers again,
//! and drops the client, so the next try starts from a fresh connection with nothing of the
//! failed batch still queued in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use rumqttc::{NetworkOptions, Outgoing};

use super::{Refused, Sink, Taken};

/// Where and how an MQTT sink publishes.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// The broker's host.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// The topic every event is published to.
    pub topic: String,
    /// The client id, which names the persistent session.
    pub client_id: String,
    /// How long a batch may wait for its PUBACKs (and a connection).
    pub timeout: Duration,
    /// The channel's identity, for the events' ids.
    pub identity: u128,
    /// The largest batch the sink is given.
    pub batch: usize,
}

/// What the connection's thread reports.
enum Note {
    /// A publish went out with this packet id.
    Sent(u16),
    /// The broker acknowledged a packet id, successfully or not.
    Acked(u16, PubAckReason),
    /// The connection failed.
    Down(String),
}

/// A live client and the thread that drives its connection.
struct Link {
    client: Client,
    notes: Receiver<Note>,
    stop: Arc<AtomicBool>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

/// Publishes batches to an MQTT broker.
pub struct MqttSink {
    settings: MqttSettings,
    link: Option<Link>,
}

impl MqttSink {
    /// A sink that connects on its first delivery.
    pub fn new(settings: MqttSettings) -> Self {
        MqttSink {
            settings,
            link: None,
        }
    }

    fn connect(&self) -> Link {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        // No Nagle delay: a batch waits on its PUBACKs, and a publish held back for the
        // previous one's acknowledgement costs a delayed-ACK period (40 ms on Linux).
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(24 * 3600))
            .set_keep_alive(Duration::from_secs(10))
            .set_connection_timeout(s.timeout.as_secs().max(1))
            .set_network_options(network);
        // Room for a whole batch: a publish never blocks while the broker is away, so the
        // timeout and a stop are always noticed.
        let (client, mut connection) = Client::new(options, s.batch * 2 + 16);
        let (tx, notes) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("sluicegate-mqtt".into())
            .spawn(move || {
                for notification in connection.iter() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let note = match notification {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Sent(pkid),
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            Note::Acked(ack.pkid, ack.reason)
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Note::Down(e.to_string()));
                            // The next turn reconnects; do not spin while the broker is away.
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                    };
                    if tx.send(note).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("mqtt: cannot start the connection thread: {e}");
        }
        Link {
            client,
            notes,
            stop,
        }
    }

    /// Publishes the batch and waits for a PUBACK of every publish; the events refused for
    /// good.
    fn publish(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        if self.link.is_none() {
            self.link = Some(self.connect());
        }
        let Some(link) = self.link.as_ref() else {
            return Err("no connection".into());
        };
        // Reports from before this batch (a connection refused while idle) do not concern it.
        while link.notes.try_recv().is_ok() {}
        let s = &self.settings;
        for e in events {
            let mut properties = PublishProperties::default();
            if let Some(id) = e.id {
                properties.user_properties.push((
                    "sluicegate-id".into(),
                    super::id_text(self.settings.identity, id),
                ));
            }
            link.client
                .try_publish_with_properties(
                    s.topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    e.body.clone(),
                    properties,
                )
                .map_err(|e| format!("cannot publish: {e}"))?;
        }
        let deadline = Instant::now() + s.timeout;
        // Packet id to the event's index: publishes go out in the order they were queued.
        let mut waiting: HashMap<u16, usize> = HashMap::new();
        let mut sent = 0usize;
        let mut acked = 0usize;
        let mut refused = Vec::new();
        // Bounded by the deadline and `stop`.
        while acked < events.len() {
            if stop.load(Ordering::Relaxed) {
                return Err("the agent is stopping".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} of {} publishes acknowledged within {} ms",
                    acked,
                    events.len(),
                    s.timeout.as_millis()
                ));
            }
            match link
                .notes
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(Note::Sent(pkid)) => {
                    waiting.insert(pkid, sent);
                    sent += 1;
                }
                Ok(Note::Acked(pkid, reason)) => {
                    let Some(index) = waiting.remove(&pkid) else {
                        continue;
                    };
                    match reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {}
                        PubAckReason::NotAuthorized
                        | PubAckReason::TopicNameInvalid
                        | PubAckReason::PayloadFormatInvalid => refused.push(Refused {
                            index,
                            reason: format!("the MQTT broker refused the publish: {reason:?}"),
                        }),
                        other => return Err(format!("the broker refused a publish: {other:?}")),
                    }
                    acked += 1;
                }
                Ok(Note::Down(why)) => {
                    return Err(format!("the connection to the broker failed: {why}"))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the connection's thread ended".into())
                }
            }
        }
        Ok(refused)
    }
}

impl Sink for MqttSink {
    fn deliver(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        let result = self.publish(events, stop);
        if result.is_err() {
            // A fresh client for the next try: nothing of this batch stays queued in it.
            self.link = None;
        }
        result
    }
}
