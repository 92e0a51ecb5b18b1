//! Figures: Flume's channel counters and per-source and per-sink counters, in Prometheus's text
//! format (`/metrics`) and as one JSON object per channel (`sluicegate stats` on a live owner).
//!
//! The channel's own figures (depth, fsyncs, checkpoints...) are read from the channel when
//! scraped, so they can never drift from it; the agent's counters are atomics the owner,
//! sources and sinks add to.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use sluicegate_file::{FileChannel, FileStats};

/// Flume's channel counters, counted in events, as the agent sees them.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Events offered to `put`.
    pub put_attempts: AtomicU64,
    /// Events whose put transaction committed.
    pub put_successes: AtomicU64,
    /// Take requests made (each may take several events, or none).
    pub take_attempts: AtomicU64,
    /// Events whose take transaction committed.
    pub take_successes: AtomicU64,
}

impl ChannelCounters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A channel the process serves: its name, the open channel and its counters.
#[derive(Debug, Clone)]
pub struct Served {
    /// The channel's name (the agent config's key, or the home's path for the CLI).
    pub name: String,
    /// The open channel.
    pub channel: Arc<FileChannel>,
    /// The agent's counters of it.
    pub counters: Arc<ChannelCounters>,
}

impl Served {
    /// Serves `channel` under `name` with fresh counters.
    pub fn new(name: String, channel: Arc<FileChannel>) -> Self {
        Served {
            name,
            channel,
            counters: Arc::default(),
        }
    }

    /// The channel's figures as one JSON object (what `sluicegate stats` prints from a live
    /// owner).
    pub fn figures(&self) -> serde_json::Value {
        let s = self.channel.stats();
        let c = &self.counters;
        let r = self.channel.recovery();
        let ch = &s.channel;
        json!({
            "channel": self.name,
            "owner_pid": std::process::id(),
            "depth": ch.depth,
            "capacity": ch.capacity,
            "fill_ratio": fill_ratio(ch.depth, ch.capacity),
            "in_flight_takes": ch.in_flight_takes,
            "pending_puts": ch.pending_puts,
            "open_transactions": ch.open_transactions,
            "segments": ch.segments,
            "segments_pinned": ch.segments_pinned,
            "segments_free": ch.segments_free,
            "log_files": s.log_files,
            "files_recycled": s.files_recycled,
            "files_deleted": s.files_deleted,
            "file_waits": s.file_waits.count,
            "file_wait_us": s.file_waits.total_us,
            "file_wait_longest_us": s.file_waits.longest_us,
            "checkpoints": ch.checkpoints,
            "checkpoint_failures": ch.checkpoint_failures + s.background_checkpoint_failures,
            "checkpoint_age_ms": s.checkpoint_age_ms,
            "fsyncs": s.fsyncs,
            "group_syncs": s.group_syncs,
            "commits_acknowledged": s.commits_acknowledged,
            "commits_per_fsync": commits_per_fsync(s.commits_acknowledged, s.group_syncs),
            "puts_refused_for_space": s.puts_refused_for_space,
            "corrupt_events_skipped": ch.corrupt_events_skipped,
            "put_attempts": ChannelCounters::get(&c.put_attempts),
            "put_successes": ChannelCounters::get(&c.put_successes),
            "take_attempts": ChannelCounters::get(&c.take_attempts),
            "take_successes": ChannelCounters::get(&c.take_successes),
            "recovery": {
                "path": r.path.name(),
                "events": r.events,
                "records_lost": r.records_lost,
                "torn_commits_dropped": r.torn_commits_dropped,
                "corrupt_events_dropped": r.corrupt_events_dropped,
                "open_ms": self.channel.open_duration().as_secs_f64() * 1e3,
            },
        })
    }
}

fn fill_ratio(depth: u64, capacity: u32) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        depth as f64 / capacity as f64
    }
}

fn commits_per_fsync(commits: u64, syncs: u64) -> f64 {
    if syncs == 0 {
        0.0
    } else {
        commits as f64 / syncs as f64
    }
}

/// Reads every served channel's figures when scraped.
#[derive(Debug)]
struct ChannelCollector {
    channels: Vec<Served>,
}

/// How a gauge of every channel is read, from the channel and one snapshot of its figures.
type Reader = fn(&Served, &FileStats) -> f64;
/// How a counter of every channel is read.
type CountReader = fn(&Served, &FileStats) -> u64;

const CHANNEL_COUNTERS: [(&str, &str, CountReader); 11] = [
    ("put_attempts", "Events offered to put", |s, _st| {
        ChannelCounters::get(&s.counters.put_attempts)
    }),
    (
        "put_successes",
        "Events whose put transaction committed",
        |s, _st| ChannelCounters::get(&s.counters.put_successes),
    ),
    ("take_attempts", "Take requests", |s, _st| {
        ChannelCounters::get(&s.counters.take_attempts)
    }),
    (
        "take_successes",
        "Events whose take transaction committed",
        |s, _st| ChannelCounters::get(&s.counters.take_successes),
    ),
    (
        "checkpoints",
        "Checkpoints completed since open",
        |_s, st| st.channel.checkpoints,
    ),
    (
        "fsyncs",
        "fdatasync calls on the channel's files",
        |_s, st| st.fsyncs,
    ),
    ("group_syncs", "Group syncs of the log", |_s, st| {
        st.group_syncs
    }),
    ("commits", "Commits acknowledged", |_s, st| {
        st.commits_acknowledged
    }),
    (
        "corrupt_events_skipped",
        "Queued events that failed their checks when read",
        |_s, st| st.channel.corrupt_events_skipped,
    ),
    (
        "file_waits",
        "Log writes that waited for a log file being made",
        |_s, st| st.file_waits.count,
    ),
    (
        "file_wait_microseconds",
        "Time log writes spent waiting for log files being made",
        |_s, st| st.file_waits.total_us,
    ),
];

const CHANNEL_GAUGES: [(&str, &str, Reader); 7] = [
    ("size", "Committed events queued", |_s, st| {
        st.channel.depth as f64
    }),
    ("capacity", "The most events the channel holds", |_s, st| {
        st.channel.capacity as f64
    }),
    ("fill_ratio", "size / capacity", |_s, st| {
        let ch = st.channel;
        fill_ratio(ch.depth, ch.capacity)
    }),
    (
        "in_flight_takes",
        "Events taken by open transactions",
        |_s, st| st.channel.in_flight_takes as f64,
    ),
    (
        "checkpoint_age_seconds",
        "Seconds since the newest checkpoint (-1: none since open)",
        |_s, st| st.checkpoint_age_ms.map_or(-1.0, |ms| ms as f64 / 1e3),
    ),
    (
        "log_files",
        "Log files on disk now (grows under a backlog, shrinks to kept_log_files after)",
        |_s, st| st.log_files as f64,
    ),
    (
        "commits_per_fsync",
        "Commits acknowledged per group sync",
        |_s, st| commits_per_fsync(st.commits_acknowledged, st.group_syncs),
    ),
];

impl Collector for ChannelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshots: Vec<FileStats> = self.channels.iter().map(|s| s.channel.stats()).collect();
        for (name, help, read) in CHANNEL_COUNTERS {
            let full = format!("sluicegate_channel_{name}");
            let mut family = encoder.encode_descriptor(
                &full,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (served, st) in self.channels.iter().zip(&snapshots) {
                let labels = [("channel", served.name.as_str())];
                let sample = family.encode_family(&labels)?;
                ConstCounter::new(read(served, st)).encode(sample)?;
            }
        }
        for (name, help, read) in CHANNEL_GAUGES {
            let full = format!("sluicegate_channel_{name}");
            let mut family = encoder.encode_descriptor(
                &full,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (served, st) in self.channels.iter().zip(&snapshots) {
                let labels = [("channel", served.name.as_str())];
                let sample = family.encode_family(&labels)?;
                ConstGauge::new(read(served, st)).encode(sample)?;
            }
        }
        Ok(())
    }
}

/// The labels of a source's or a sink's figures.
pub type ComponentLabels = Vec<(String, String)>;

/// Per-source and per-sink counters, shared by every component of the agent.
#[derive(Debug)]
pub struct ComponentMetrics {
    events: Family<ComponentLabels, Counter>,
    batches: Family<ComponentLabels, Counter>,
    errors: Family<ComponentLabels, Counter>,
    retries: Family<ComponentLabels, Counter>,
    rejected: Family<ComponentLabels, Counter>,
    dead_lettered: Family<ComponentLabels, Counter>,
    latency: Family<ComponentLabels, Histogram>,
}

/// One source's or sink's handles on its counters.
#[derive(Debug, Clone)]
pub struct Component {
    /// Events it acknowledged (a source: committed into the channel; a sink: delivered and
    /// committed out of it).
    pub events: Counter,
    /// Batches it completed.
    pub batches: Counter,
    /// Failures (a refused request, a failed delivery).
    pub errors: Counter,
    /// Deliveries tried again after a failure.
    pub retries: Counter,
    /// Requests refused to the sender (full, too large, bad input).
    pub rejected: Counter,
    /// Events a sink's destination refused for good, kept in its dead-letter file.
    pub dead_lettered: Counter,
    /// Seconds from a batch's start to its durable commit (a source) or to the destination's
    /// acknowledgement and the take's commit (a sink).
    pub latency: Histogram,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    components: ComponentMetrics,
}

impl Metrics {
    /// Figures for `channels`, and empty families for components to join.
    pub fn new(channels: Vec<Served>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ChannelCollector { channels }));
        let components = ComponentMetrics {
            events: Family::default(),
            batches: Family::default(),
            errors: Family::default(),
            retries: Family::default(),
            rejected: Family::default(),
            dead_lettered: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ])
            }),
        };
        let c = &components;
        for (name, help, family) in [
            ("events", "Events a source or sink acknowledged", &c.events),
            ("batches", "Batches a source or sink completed", &c.batches),
            ("errors", "Failures of a source or sink", &c.errors),
            ("retries", "Deliveries tried again", &c.retries),
            ("rejected", "Requests refused to a sender", &c.rejected),
            (
                "dead_lettered",
                "Events a destination refused for good, kept in the dead-letter file",
                &c.dead_lettered,
            ),
        ] {
            registry.register(format!("sluicegate_component_{name}"), help, family.clone());
        }
        registry.register(
            "sluicegate_component_latency_seconds",
            "From a batch's start to its acknowledgement",
            c.latency.clone(),
        );
        Metrics {
            registry,
            components,
        }
    }

    /// The handles of one source or sink.
    pub fn component(&self, kind: &str, name: &str, channel: &str) -> Component {
        let labels: ComponentLabels = vec![
            ("kind".into(), kind.into()),
            ("name".into(), name.into()),
            ("channel".into(), channel.into()),
        ];
        let c = &self.components;
        Component {
            events: c.events.get_or_create(&labels).clone(),
            batches: c.batches.get_or_create(&labels).clone(),
            errors: c.errors.get_or_create(&labels).clone(),
            retries: c.retries.get_or_create(&labels).clone(),
            rejected: c.rejected.get_or_create(&labels).clone(),
            dead_lettered: c.dead_lettered.get_or_create(&labels).clone(),
            latency: c.latency.get_or_create(&labels).clone(),
        }
    }

    /// Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and every name here is valid.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}
