//! The Kafka sink: produces every event of a batch to a Kafka topic with `rdkafka` (the bundled
//! librdkafka), and counts the batch delivered only once every message of it has a successful
//! delivery report and the producer has no fatal error.
//!
//! The producer is idempotent (`enable.idempotence=true`, so `acks=all` and ordered retries
//! within one producer session). Each message carries the header `sluicegate-id` =
//! `CHANNEL:EVENT` (the channel's identity in hexadecimal, the event's id in decimal), the same
//! each time the event is delivered, so a consumer can drop the duplicates a crash between the
//! broker's acknowledgement and the take's commit causes. Its key is none, the id, or a
//! top-level field of the event read as JSON.
//!
//! A delivery report that refuses a message for good (too large, not authorized on the topic,
//! a record the broker calls invalid) reports that event as refused, for the dead-letter file.
//! Any other failure (a timeout while the broker is away, a fatal producer error) fails the
//! batch, which the runner rolls back and delivers again; the producer is then dropped, its
//! queue purged, so the next try starts from a fresh producer with nothing of the failed batch
//! still queued in it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

use super::{Refused, Sink, Taken};

/// What a message's key is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KafkaKey {
    /// No key: the partitioner spreads the messages.
    #[default]
    None,
    /// The event's id, `CHANNEL:EVENT`: a redelivered event lands in the same partition.
    Id,
    /// A top-level field of the event read as a JSON object (a string as its text, any other
    /// value as its JSON); no key when the event is not JSON or lacks the field.
    Field(String),
}

/// Where and how a Kafka sink produces.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic every event goes to.
    pub topic: String,
    /// The messages' key.
    pub key: KafkaKey,
    /// librdkafka's `partitioner` (for example `murmur2_random`, librdkafka's default
    /// `consistent_random`).
    pub partitioner: Option<String>,
    /// `compression.type`: `none`, `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// How long a batch may wait for its delivery reports (`message.timeout.ms`).
    pub timeout: Duration,
    /// The client id.
    pub client_id: String,
    /// The channel's identity, for the events' ids.
    pub identity: u128,
    /// The largest batch the sink is given (librdkafka's `batch.num.messages` is set to it).
    pub batch: usize,
    /// Further librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
}

/// How long a wait for reports sleeps before it looks at the deadline and `stop` again.
const RECHECK: Duration = Duration::from_millis(50);

/// The delivery reports of the batch being delivered, by index, and how many are still to
/// come.
#[derive(Default)]
struct Batch {
    reports: Vec<Option<Result<(), KafkaError>>>,
    left: usize,
}

/// The reports of the current batch, and the signal that the last one came.
///
/// The producer's own thread (rdkafka's `ThreadedProducer`) serves delivery reports as they
/// arrive and files them here; the sink waits on the signal. (Polling the producer from the
/// sink's thread does not do: rdkafka's `poll` returns only at its timeout, so that timeout set
/// the pace of every batch: 20 ms per batch against a broker that answers in one or two.)
type Reports = Arc<(Mutex<Batch>, Condvar)>;

/// Files each delivery report under its message's index in the batch.
struct Reporter {
    reports: Reports,
}

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let (batch, done) = &*self.reports;
        let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
        let report = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        file(&mut batch, index, report);
        if batch.left == 0 {
            done.notify_all();
        }
    }
}

/// Files `report` as message `index`'s, unless it already has one.
fn file(batch: &mut Batch, index: usize, report: Result<(), KafkaError>) {
    if let Some(slot @ None) = batch.reports.get_mut(index) {
        *slot = Some(report);
        batch.left -= 1;
    }
}

/// The error codes a broker gives a message that no retry can deliver.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidTopic
    )
}

/// Whether librdkafka accepts the producer configuration of `settings` (it makes a producer,
/// which connects to nothing until it has a message, and drops it).
pub fn check_producer(settings: KafkaSettings) -> Result<(), String> {
    KafkaSink::client_config(&settings)
        .create::<BaseProducer>()
        .map(drop)
        .map_err(|e| format!("librdkafka refuses the producer's settings: {e}"))
}

/// Produces batches to Kafka.
pub struct KafkaSink {
    settings: KafkaSettings,
    reports: Reports,
    producer: Option<ThreadedProducer<Reporter>>,
    /// Events of the started batch refused when produced.
    refused: Vec<Refused>,
    /// When the started batch must have all its reports.
    deadline: Instant,
}

impl KafkaSink {
    /// A sink that creates its producer on its first delivery; a configuration librdkafka
    /// refuses is an error here, before anything runs.
    pub fn new(settings: KafkaSettings) -> Result<Self, String> {
        let mut sink = KafkaSink {
            settings,
            reports: Arc::default(),
            producer: None,
            refused: Vec::new(),
            deadline: Instant::now(),
        };
        sink.producer = Some(sink.create()?);
        Ok(sink)
    }

    /// The librdkafka configuration of the sink's producer.
    pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
        let s = settings;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &s.brokers)
            .set("client.id", &s.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &s.compression)
            .set(
                "message.timeout.ms",
                s.timeout.as_millis().max(1).to_string(),
            )
            .set("batch.num.messages", s.batch.max(1).to_string())
            .set("linger.ms", "1")
            .set(
                "queue.buffering.max.messages",
                (s.batch * 2 + 16).to_string(),
            );
        if let Some(p) = &s.partitioner {
            config.set("partitioner", p);
        }
        for (k, v) in &s.properties {
            config.set(k, v);
        }
        config
    }

    fn create(&self) -> Result<ThreadedProducer<Reporter>, String> {
        Self::client_config(&self.settings)
            .create_with_context(Reporter {
                reports: Arc::clone(&self.reports),
            })
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))
    }

    fn key(&self, event: &Taken, id: &Option<String>) -> Option<Vec<u8>> {
        match &self.settings.key {
            KafkaKey::None => None,
            KafkaKey::Id => id.as_ref().map(|i| i.clone().into_bytes()),
            KafkaKey::Field(name) => {
                let value: serde_json::Value = serde_json::from_slice(&event.body).ok()?;
                match value.get(name)? {
                    serde_json::Value::String(s) => Some(s.clone().into_bytes()),
                    other => Some(other.to_string().into_bytes()),
                }
            }
        }
    }

    /// Produces the batch into the producer's queue; the events refused at once are kept for
    /// [`KafkaSink::reports`].
    fn produce(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<(), String> {
        if self.producer.is_none() {
            self.producer = Some(self.create()?);
        }
        let Some(producer) = self.producer.as_ref() else {
            return Err("no producer".into());
        };
        if let Some((code, why)) = producer.client().fatal_error() {
            return Err(format!("the producer has a fatal error ({code:?}): {why}"));
        }
        *self
            .reports
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Batch {
            reports: vec![None; events.len()],
            left: events.len(),
        };
        self.refused.clear();
        let deadline = Instant::now() + self.settings.timeout + Duration::from_secs(5);
        self.deadline = deadline;
        for (index, event) in events.iter().enumerate() {
            let id = event
                .id
                .map(|id| super::id_text(self.settings.identity, id));
            let key = self.key(event, &id);
            let mut headers = OwnedHeaders::new();
            if let Some(id) = &id {
                headers = headers.insert(Header {
                    key: "sluicegate-id",
                    value: Some(id.as_str()),
                });
            }
            // Bounded by the deadline and `stop`: a full local queue drains as reports come.
            loop {
                let mut record = BaseRecord::with_opaque_to(&self.settings.topic, index)
                    .payload(&event.body)
                    .headers(headers.clone());
                if let Some(k) = &key {
                    record = record.key(k);
                }
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if stop.load(Ordering::Relaxed) {
                            return Err("the agent is stopping".into());
                        }
                        if Instant::now() >= deadline {
                            return Err("the producer's queue stayed full".into());
                        }
                        // The producer's thread drains the queue as reports come.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((KafkaError::MessageProduction(code), _)) if refused_for_good(code) => {
                        self.refused.push(Refused {
                            index,
                            reason: format!("Kafka refused the message: {code}"),
                        });
                        let mut batch = self
                            .reports
                            .0
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        file(&mut batch, index, Ok(()));
                        break;
                    }
                    Err((e, _)) => return Err(format!("cannot produce: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Waits for every delivery report of the produced batch; the events refused for good.
    fn reports(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        let Some(producer) = self.producer.as_ref() else {
            return Err("no producer".into());
        };
        let mut refused = std::mem::take(&mut self.refused);
        let deadline = self.deadline;
        let (batch, done) = &*self.reports;
        let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the deadline (message.timeout.ms makes librdkafka report every message
        // before it) and `stop`.
        while batch.left > 0 {
            if stop.load(Ordering::Relaxed) {
                return Err("the agent is stopping".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} of {} messages without a delivery report",
                    batch.left,
                    events.len()
                ));
            }
            batch = done
                .wait_timeout(batch, left.min(RECHECK))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        for (index, report) in batch.reports.iter().enumerate() {
            match report {
                Some(Err(KafkaError::MessageProduction(code))) if refused_for_good(*code) => {
                    refused.push(Refused {
                        index,
                        reason: format!("Kafka refused the message: {code}"),
                    });
                }
                Some(Err(e)) => return Err(format!("a delivery failed: {e}")),
                _ => {}
            }
        }
        drop(batch);
        if let Some((code, why)) = producer.client().fatal_error() {
            return Err(format!("the producer has a fatal error ({code:?}): {why}"));
        }
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }
}

impl Sink for KafkaSink {
    fn start(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<(), String> {
        let result = self.produce(events, stop);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn finish(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        let result = self.reports(events, stop);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn abandon(&mut self) {
        // A fresh producer for the next try: dropping this one purges what it still holds,
        // and no late report of the forgotten batch reaches the next one's.
        self.producer = None;
        self.refused.clear();
    }
}
