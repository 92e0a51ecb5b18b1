//! The agent's configuration: a TOML file shaped like a Flume agent's properties.
//!
//! ```toml
//! [agent]
//! metrics_listen = "127.0.0.1:9464"   # Prometheus text on /metrics; omit to serve none
//!
//! [channels.events]
//! dir = "/var/lib/sluicegate/events"  # the channel's home; created if missing
//! # settings = { capacity = 100000, max_file_bytes = 16777216 }   # only when creating it
//!
//! [sources.ingest]
//! type = "http"
//! channel = "events"
//! listen = "127.0.0.1:8080"
//!
//! [sources.logs]
//! type = "tail"
//! channel = "events"
//! paths = ["/var/log/app/*.log"]
//! positions = "/var/lib/sluicegate/logs.positions"
//!
//! [sinks.out]
//! type = "exec"
//! channel = "events"
//! command = ["sh", "-c", "cat >> /srv/out.ndjson"]
//!
//! [sinks.telemetry]
//! type = "mqtt"
//! channel = "events"
//! broker = "127.0.0.1:1883"
//! topic = "site/telemetry"
//!
//! [sinks.kafka]
//! type = "kafka"
//! channel = "events"
//! brokers = "127.0.0.1:9092"
//! topic = "events"
//! key = "id"                          # "none" (default), "id", or "field:NAME"
//! dead_letter_dir = "/var/lib/sluicegate/dead-letter"
//! ```
//!
//! Unknown keys are refused, and [`AgentConfig::check`] refuses a source or sink naming a
//! missing channel, two components on one port, and a configuration with nothing to run, each
//! in one line naming the key at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluicegate_file::FileChannelConfig;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Settings of the agent itself.
    #[serde(default)]
    pub agent: AgentSection,
    /// The channels, by name.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelSection>,
    /// The sources, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSection>,
    /// The sinks, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSection>,
}

/// `[agent]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Where `/metrics` is served (a loopback address unless you mean otherwise).
    pub metrics_listen: Option<SocketAddr>,
    /// The log filter (`tracing`'s syntax: `info`, `sluicegate_agent=debug`...); the
    /// `SLUICEGATE_LOG` environment variable overrides it. Default `info`.
    pub log: Option<String>,
}

/// `[channels.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    /// The channel's home (as `sluicegate --dir`).
    pub dir: PathBuf,
    /// Settings used only when the home holds no channel yet; later the home's
    /// `sluicegate.toml` rules.
    pub settings: Option<toml::Table>,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSection {
    /// HTTP ingest of newline-delimited events.
    Http {
        /// The channel it puts into.
        channel: String,
        /// The address to listen on.
        listen: SocketAddr,
        /// The largest request body accepted, in bytes (default 64 MiB).
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: usize,
    },
    /// Follows files by glob.
    Tail {
        /// The channel it puts into.
        channel: String,
        /// Glob patterns of the files to follow.
        paths: Vec<String>,
        /// The positions file (default: `tail-NAME.positions` in the channel's home).
        positions: Option<PathBuf>,
        /// Lines per transaction (default 100).
        #[serde(default = "default_batch")]
        batch: u32,
        /// How often the files are looked at when nothing new was read, in ms (default 100).
        #[serde(default = "default_poll_ms")]
        poll_ms: u64,
        /// Start new files at their end instead of their beginning.
        #[serde(default)]
        from_end: bool,
    },
}

/// `[sinks.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSection {
    /// Runs a command per batch, events on its standard input, one per line.
    Exec {
        /// The channel it takes from.
        channel: String,
        /// The program and its arguments.
        command: Vec<String>,
        /// Events per batch (default 100).
        #[serde(default = "default_batch")]
        batch: u32,
        /// The first retry's delay in ms (default 100); it doubles up to `max_backoff_ms`.
        #[serde(default = "default_backoff_ms")]
        backoff_ms: u64,
        /// The longest delay between retries in ms (default 10,000).
        #[serde(default = "default_max_backoff_ms")]
        max_backoff_ms: u64,
        /// A batch's command is killed after this long and the batch retried (default 60,000).
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// Publishes each event with QoS 1 to an MQTT broker (MQTT 5); a batch commits once every
    /// publish of it has a successful PUBACK.
    Mqtt {
        /// The channel it takes from.
        channel: String,
        /// The broker, `HOST:PORT`.
        broker: String,
        /// The topic every event goes to.
        topic: String,
        /// The client id, which names the persistent session (default `sluicegate-NAME`).
        client_id: Option<String>,
        /// Events per batch (default 100).
        #[serde(default = "default_batch")]
        batch: u32,
        /// The first retry's delay in ms (default 100); it doubles up to `max_backoff_ms`.
        #[serde(default = "default_backoff_ms")]
        backoff_ms: u64,
        /// The longest delay between retries in ms (default 10,000).
        #[serde(default = "default_max_backoff_ms")]
        max_backoff_ms: u64,
        /// A batch whose PUBACKs have not all come after this long fails and is retried
        /// (default 10,000).
        #[serde(default = "default_ack_timeout_ms")]
        timeout_ms: u64,
        /// Where events the broker refuses for good are kept, with the reason (default: none,
        /// so a refused event fails its batch, which is retried).
        dead_letter_dir: Option<PathBuf>,
    },
    /// Produces each event to a Kafka topic with an idempotent producer; a batch commits once
    /// every message of it has a successful delivery report.
    Kafka {
        /// The channel it takes from.
        channel: String,
        /// `bootstrap.servers`: `HOST:PORT[,HOST:PORT...]`.
        brokers: String,
        /// The topic every event goes to.
        topic: String,
        /// The key: `none` (default), `id` (the event's id), or `field:NAME` (a top-level field
        /// of the event read as JSON).
        #[serde(default = "default_key")]
        key: String,
        /// librdkafka's partitioner (default: librdkafka's, `consistent_random`).
        partitioner: Option<String>,
        /// `none` (default), `gzip`, `snappy` or `lz4`.
        #[serde(default = "default_compression")]
        compression: String,
        /// The client id (default `sluicegate-NAME`).
        client_id: Option<String>,
        /// Events per batch (default 100).
        #[serde(default = "default_batch")]
        batch: u32,
        /// The first retry's delay in ms (default 100); it doubles up to `max_backoff_ms`.
        #[serde(default = "default_backoff_ms")]
        backoff_ms: u64,
        /// The longest delay between retries in ms (default 10,000).
        #[serde(default = "default_max_backoff_ms")]
        max_backoff_ms: u64,
        /// A batch whose delivery reports have not all come after this long fails and is
        /// retried (`message.timeout.ms`, default 30,000).
        #[serde(default = "default_kafka_timeout_ms")]
        timeout_ms: u64,
        /// More librdkafka producer properties (for example `sasl.username`), applied last.
        #[serde(default)]
        properties: BTreeMap<String, String>,
        /// Where events the broker refuses for good are kept, with the reason (default: none,
        /// so a refused event fails its batch, which is retried).
        dead_letter_dir: Option<PathBuf>,
    },
}

/// A Kafka sink's `key` setting, or why it is not one.
pub fn kafka_key(key: &str) -> Result<crate::sinks::kafka::KafkaKey, String> {
    use crate::sinks::kafka::KafkaKey;
    match key {
        "none" => Ok(KafkaKey::None),
        "id" => Ok(KafkaKey::Id),
        _ => match key.strip_prefix("field:") {
            Some(name) if !name.is_empty() => Ok(KafkaKey::Field(name.to_string())),
            _ => Err(format!(
                "{key:?} is not a key: give \"none\", \"id\" or \"field:NAME\""
            )),
        },
    }
}

/// A `HOST:PORT` split, or why not.
pub fn host_port(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("{broker:?} is not HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{broker:?}: {port:?} is not a port number"))?;
    if host.is_empty() {
        return Err(format!("{broker:?} has no host"));
    }
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

fn default_max_body_bytes() -> usize {
    64 << 20
}
fn default_batch() -> u32 {
    100
}
fn default_poll_ms() -> u64 {
    100
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_ack_timeout_ms() -> u64 {
    10_000
}
fn default_kafka_timeout_ms() -> u64 {
    30_000
}
fn default_key() -> String {
    "none".into()
}
fn default_compression() -> String {
    "none".into()
}

impl SourceSection {
    /// The channel it feeds.
    pub fn channel(&self) -> &str {
        match self {
            SourceSection::Http { channel, .. } | SourceSection::Tail { channel, .. } => channel,
        }
    }
}

impl SinkSection {
    /// The channel it drains.
    pub fn channel(&self) -> &str {
        match self {
            SinkSection::Exec { channel, .. }
            | SinkSection::Mqtt { channel, .. }
            | SinkSection::Kafka { channel, .. } => channel,
        }
    }

    /// The settings of a Kafka sink named `name` on a channel of identity `identity` (default
    /// settings for any other sink).
    pub fn kafka_settings(&self, name: &str, identity: u128) -> crate::sinks::kafka::KafkaSettings {
        use crate::sinks::kafka::{KafkaKey, KafkaSettings};
        let SinkSection::Kafka {
            brokers,
            topic,
            key,
            partitioner,
            compression,
            client_id,
            batch,
            timeout_ms,
            properties,
            ..
        } = self
        else {
            return KafkaSettings::default();
        };
        KafkaSettings {
            brokers: brokers.clone(),
            topic: topic.clone(),
            key: kafka_key(key).unwrap_or(KafkaKey::None),
            partitioner: partitioner.clone(),
            compression: compression.clone(),
            timeout: std::time::Duration::from_millis(*timeout_ms),
            client_id: client_id
                .clone()
                .unwrap_or_else(|| format!("sluicegate-{name}")),
            identity,
            batch: *batch as usize,
            properties: properties.clone(),
        }
    }

    /// Its dead-letter directory, if it has one.
    pub fn dead_letter_dir(&self) -> Option<&Path> {
        match self {
            SinkSection::Exec { .. } => None,
            SinkSection::Mqtt {
                dead_letter_dir, ..
            }
            | SinkSection::Kafka {
                dead_letter_dir, ..
            } => dead_letter_dir.as_deref(),
        }
    }

    /// How its runner paces itself: batch, backoff and longest backoff.
    pub fn pacing(&self) -> (u32, u64, u64) {
        match self {
            SinkSection::Exec {
                batch,
                backoff_ms,
                max_backoff_ms,
                ..
            }
            | SinkSection::Mqtt {
                batch,
                backoff_ms,
                max_backoff_ms,
                ..
            }
            | SinkSection::Kafka {
                batch,
                backoff_ms,
                max_backoff_ms,
                ..
            } => (*batch, *backoff_ms, *max_backoff_ms),
        }
    }
}

impl AgentConfig {
    /// Reads and checks a config file; relative paths in it are relative to the file.
    pub fn from_file(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base = crate::home::parent_of(path);
        Self::from_toml_str(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a config; relative paths are resolved against `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<AgentConfig, String> {
        let mut config: AgentConfig = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a caret; keep its first line.
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        for ch in config.channels.values_mut() {
            ch.dir = base.join(&ch.dir);
        }
        for source in config.sources.values_mut() {
            if let SourceSection::Tail {
                positions: Some(p), ..
            } = source
            {
                *p = base.join(&*p);
            }
        }
        for sink in config.sinks.values_mut() {
            if let SinkSection::Mqtt {
                dead_letter_dir: Some(d),
                ..
            }
            | SinkSection::Kafka {
                dead_letter_dir: Some(d),
                ..
            } = sink
            {
                *d = base.join(&*d);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Refuses what cannot run: a missing channel, a port used twice, nothing to do, bad
    /// numbers, channel settings that do not parse.
    pub fn check(&self) -> Result<(), String> {
        if self.channels.is_empty() {
            return Err("no [channels.NAME] section: the agent has nothing to own".into());
        }
        for (name, ch) in &self.channels {
            if let Some(settings) = &ch.settings {
                channel_settings(&ch.dir, settings)
                    .map_err(|e| format!("channels.{name}.settings: {e}"))?;
            }
        }
        let mut ports: BTreeMap<SocketAddr, String> = BTreeMap::new();
        if let Some(addr) = self.agent.metrics_listen {
            ports.insert(addr, "agent.metrics_listen".into());
        }
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            if !self.channels.contains_key(source.channel()) {
                return Err(format!(
                    "{key}.channel: no channel named {:?} (channels: {})",
                    source.channel(),
                    self.channel_names()
                ));
            }
            match source {
                SourceSection::Http { listen, .. } => {
                    if let Some(other) = ports.insert(*listen, format!("{key}.listen")) {
                        return Err(format!("{key}.listen: {listen} is also {other}"));
                    }
                }
                SourceSection::Tail {
                    paths,
                    batch,
                    poll_ms,
                    ..
                } => {
                    if paths.is_empty() {
                        return Err(format!("{key}.paths: give at least one glob"));
                    }
                    for p in paths {
                        glob::Pattern::new(p)
                            .map_err(|e| format!("{key}.paths: {p:?} is not a glob: {e}"))?;
                    }
                    if *batch == 0 || *poll_ms == 0 {
                        return Err(format!("{key}: batch and poll_ms must be at least 1"));
                    }
                }
            }
        }
        for (name, sink) in &self.sinks {
            let key = format!("sinks.{name}");
            if !self.channels.contains_key(sink.channel()) {
                return Err(format!(
                    "{key}.channel: no channel named {:?} (channels: {})",
                    sink.channel(),
                    self.channel_names()
                ));
            }
            let (batch, backoff_ms, max_backoff_ms) = sink.pacing();
            if batch == 0 || backoff_ms == 0 || max_backoff_ms < backoff_ms {
                return Err(format!(
                    "{key}: batch and backoff_ms must be at least 1, and max_backoff_ms at least backoff_ms"
                ));
            }
            match sink {
                SinkSection::Exec { command, .. } => {
                    if command.is_empty() {
                        return Err(format!("{key}.command: name a program"));
                    }
                }
                SinkSection::Mqtt {
                    broker,
                    topic,
                    timeout_ms,
                    ..
                } => {
                    host_port(broker).map_err(|e| format!("{key}.broker: {e}"))?;
                    if topic.is_empty() || topic.contains(['+', '#']) {
                        return Err(format!(
                            "{key}.topic: {topic:?} is not a topic to publish to (empty, or with a wildcard)"
                        ));
                    }
                    if *timeout_ms == 0 {
                        return Err(format!("{key}.timeout_ms must be at least 1"));
                    }
                }
                SinkSection::Kafka {
                    brokers,
                    topic,
                    key: message_key,
                    partitioner,
                    compression,
                    timeout_ms,
                    ..
                } => {
                    for b in brokers.split(',') {
                        host_port(b.trim()).map_err(|e| format!("{key}.brokers: {e}"))?;
                    }
                    if topic.is_empty()
                        || topic.len() > 249
                        || !topic
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    {
                        return Err(format!(
                            "{key}.topic: {topic:?} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
                        ));
                    }
                    kafka_key(message_key).map_err(|e| format!("{key}.key: {e}"))?;
                    const PARTITIONERS: [&str; 7] = [
                        "random",
                        "consistent",
                        "consistent_random",
                        "murmur2",
                        "murmur2_random",
                        "fnv1a",
                        "fnv1a_random",
                    ];
                    if let Some(p) = partitioner {
                        if !PARTITIONERS.contains(&p.as_str()) {
                            return Err(format!(
                                "{key}.partitioner: {p:?} is not one of {}",
                                PARTITIONERS.join(", ")
                            ));
                        }
                    }
                    if !["none", "gzip", "snappy", "lz4"].contains(&compression.as_str()) {
                        return Err(format!(
                            "{key}.compression: {compression:?} is not one of none, gzip, snappy, lz4"
                        ));
                    }
                    if *timeout_ms == 0 {
                        return Err(format!("{key}.timeout_ms must be at least 1"));
                    }
                    // librdkafka checks the whole configuration (`properties` included) when
                    // a producer is made; it connects only when it has something to send.
                    crate::sinks::kafka::check_producer(sink.kafka_settings(name, 0))
                        .map_err(|e| format!("{key}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    fn channel_names(&self) -> String {
        self.channels.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The settings of a channel created in `dir` from a `settings` table: the defaults for a home,
/// with the table's keys applied (directories relative to the home).
pub fn channel_settings(dir: &Path, settings: &toml::Table) -> Result<FileChannelConfig, String> {
    let defaults =
        toml::Table::try_from(FileChannelConfig::default()).map_err(|e| e.to_string())?;
    let mut merged = defaults;
    for (k, v) in settings {
        merged.insert(k.clone(), v.clone());
    }
    let text = toml::to_string(&merged).map_err(|e| e.to_string())?;
    let config = FileChannelConfig::from_toml_str(&text, dir).map_err(|e| e.to_string())?;
    config.core_config().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of bad configuration is refused with one line naming the key at fault.
    #[test]
    fn bad_configurations_are_refused_by_key() {
        let base = Path::new("/tmp");
        let ok = r#"
            [channels.c]
            dir = "h"
            [sources.s]
            type = "http"
            channel = "c"
            listen = "127.0.0.1:1"
            [sinks.k]
            type = "exec"
            channel = "c"
            command = ["true"]
        "#;
        let config = AgentConfig::from_toml_str(ok, base).unwrap();
        assert_eq!(config.channels["c"].dir, Path::new("/tmp/h"));
        let cases = [
            (ok.replace("command = [\"true\"]", "command = [\"true\"]\nbogus = 1"), "bogus"),
            (ok.replace("channel = \"c\"\n            command", "channel = \"x\"\n            command"), "sinks.k.channel"),
            (ok.replace("listen = \"127.0.0.1:1\"", "listen = \"127.0.0.1:1\"\n            [agent]\n            metrics_listen = \"127.0.0.1:1\""), "127.0.0.1:1"),
            (ok.replace("dir = \"h\"", "dir = \"h\"\n            settings = { capacity = 0 }"), "channels.c.settings"),
            ("[agent]\n".to_string(), "no [channels"),
        ];
        for (text, expect) in cases {
            let err = AgentConfig::from_toml_str(&text, base).unwrap_err();
            assert!(err.contains(expect), "{err:?} should name {expect:?}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
    }

    /// A Kafka sink's settings are checked by key, and relative dead-letter paths resolved.
    #[test]
    fn kafka_sink_settings_are_checked() {
        let base = Path::new("/tmp");
        let ok = r#"
            [channels.c]
            dir = "h"
            [sinks.k]
            type = "kafka"
            channel = "c"
            brokers = "127.0.0.1:9092,127.0.0.1:9093"
            topic = "events"
            key = "field:device"
            partitioner = "murmur2_random"
            compression = "lz4"
            dead_letter_dir = "dl"
        "#;
        let config = AgentConfig::from_toml_str(ok, base).unwrap();
        assert_eq!(
            config.sinks["k"].dead_letter_dir(),
            Some(Path::new("/tmp/dl"))
        );
        let cases = [
            (ok.replace("127.0.0.1:9093", "nohost"), "sinks.k.brokers"),
            (ok.replace("\"events\"", "\"a/b\""), "sinks.k.topic"),
            (ok.replace("field:device", "field:"), "sinks.k.key"),
            (ok.replace("field:device", "value"), "sinks.k.key"),
            (
                ok.replace("murmur2_random", "round_robin"),
                "sinks.k.partitioner",
            ),
            (ok.replace("lz4", "zstd"), "sinks.k.compression"),
            (ok.replace("compression", "compresion"), "compresion"),
        ];
        for (text, expect) in cases {
            let err = AgentConfig::from_toml_str(&text, base).unwrap_err();
            assert!(err.contains(expect), "{err:?} should name {expect:?}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
    }
}
