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
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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
#[derive(Debug)]
enum Note {
    /// A publish went out with this packet id.
    Sent(u16),
    /// The broker acknowledged a packet id, successfully or not.
    Acked(u16, PubAckReason),
    /// The connection failed.
    Down(String),
}

/// The notes of the batch being delivered, in the order the connection's thread saw them.
#[derive(Debug, Default)]
struct Inbox {
    notes: Vec<Note>,
    /// PUBACKs among them.
    acks: usize,
    /// PUBACKs the batch waits for: the thread signals when they are all in, or on a failure.
    want: usize,
    /// The connection's thread ended.
    gone: bool,
}

/// What the connection's thread and the sink share. The thread signals once per batch (or
/// failure), not once per packet: a wake-up for each of a batch's publishes and PUBACKs cost
/// about 5 µs an event on this machine, a quarter of a raw publisher's time.
type Shared = Arc<(Mutex<Inbox>, Condvar)>;

/// A live client and the thread that drives its connection.
struct Link {
    client: Client,
    shared: Shared,
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
    /// When the started batch must have all its PUBACKs.
    deadline: Instant,
}

impl MqttSink {
    /// A sink that connects on its first delivery.
    pub fn new(settings: MqttSettings) -> Self {
        MqttSink {
            settings,
            link: None,
            deadline: Instant::now(),
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
        let shared = Shared::default();
        let inbox = Arc::clone(&shared);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("sluicegate-mqtt".into())
            .spawn(move || {
                for notification in connection.iter() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let (note, failed) = match notification {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => (Note::Sent(pkid), false),
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            (Note::Acked(ack.pkid, ack.reason), false)
                        }
                        Ok(_) => continue,
                        Err(e) => (Note::Down(e.to_string()), true),
                    };
                    let (lock, signal) = &*inbox;
                    let mut inbox = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let acked = matches!(note, Note::Acked(..));
                    inbox.notes.push(note);
                    inbox.acks += usize::from(acked);
                    if failed || (acked && inbox.acks >= inbox.want) {
                        signal.notify_all();
                    }
                    drop(inbox);
                    if failed {
                        // The next turn reconnects; do not spin while the broker is away.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                let (lock, signal) = &*inbox;
                lock.lock().unwrap_or_else(PoisonError::into_inner).gone = true;
                signal.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!("mqtt: cannot start the connection thread: {e}");
            shared.0.lock().unwrap_or_else(PoisonError::into_inner).gone = true;
        }
        Link {
            client,
            shared,
            stop,
        }
    }

    /// Queues a publish of every event of the batch.
    fn publish(&mut self, events: &[Taken]) -> Result<(), String> {
        if self.link.is_none() {
            self.link = Some(self.connect());
        }
        let Some(link) = self.link.as_ref() else {
            return Err("no connection".into());
        };
        // Reports from before this batch (a connection refused while idle) do not concern it.
        {
            let mut inbox = link.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
            let gone = inbox.gone;
            *inbox = Inbox {
                want: events.len(),
                gone,
                ..Inbox::default()
            };
        }
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
        self.deadline = Instant::now() + s.timeout;
        Ok(())
    }

    /// Waits for a PUBACK of every publish of the batch; the events refused for good.
    fn acknowledgements(
        &mut self,
        events: &[Taken],
        stop: &AtomicBool,
    ) -> Result<Vec<Refused>, String> {
        let Some(link) = self.link.as_ref() else {
            return Err("no connection".into());
        };
        let s = &self.settings;
        let deadline = self.deadline;
        // Packet id to the event's index: publishes go out in the order they were queued.
        let mut waiting: HashMap<u16, usize> = HashMap::new();
        let mut sent = 0usize;
        let mut acked = 0usize;
        let mut refused = Vec::new();
        let (lock, signal) = &*link.shared;
        let mut inbox = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the deadline and `stop`.
        while acked < events.len() {
            for note in std::mem::take(&mut inbox.notes) {
                match note {
                    Note::Sent(pkid) => {
                        waiting.insert(pkid, sent);
                        sent += 1;
                    }
                    Note::Acked(pkid, reason) => {
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
                            other => {
                                return Err(format!("the broker refused a publish: {other:?}"))
                            }
                        }
                        acked += 1;
                    }
                    Note::Down(why) => {
                        return Err(format!("the connection to the broker failed: {why}"))
                    }
                }
            }
            if acked == events.len() {
                break;
            }
            // A PUBACK the map did not know counted towards the signal: wait for one more.
            inbox.want = inbox.acks + (events.len() - acked);
            if inbox.gone {
                return Err("the connection's thread ended".into());
            }
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
            inbox = signal
                .wait_timeout(inbox, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(refused)
    }
}

impl Sink for MqttSink {
    fn start(&mut self, events: &[Taken], _stop: &AtomicBool) -> Result<(), String> {
        let result = self.publish(events);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn finish(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        let result = self.acknowledgements(events, stop);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn abandon(&mut self) {
        // A fresh client for the next try: nothing of this batch stays queued in it, and no
        // late PUBACK of it is counted for the next one.
        self.link = None;
    }
}
