//! # sluicegate-agent
//!
//! The body around the engine: a process that owns file channels and moves events in and out
//! of them with the channel's guarantee carried end to end, in the shape of a Flume agent.
//!
//! - [`owner`]: serves one open [`FileChannel`](sluicegate_file::FileChannel) to client
//!   processes on a Unix socket in the channel's home ([`protocol`]), and hands the home over
//!   cleanly when it stops.
//! - [`client`] and [`session`]: the client side, and the rule every CLI process follows on a
//!   home: use the owner if one serves it, else open the channel and become the owner.
//! - [`config`]: the agent's TOML (channels, sources, sinks, each named).
//! - [`sources`]: HTTP ingest (NDJSON) and file tailing. [`sinks`]: the [`sinks::Sink`] trait
//!   and its sinks (exec, MQTT, Kafka), whose takes commit only when the destination
//!   acknowledged; [`dead_letter`]: where events a destination refused for good are kept.
//! - [`metrics`]: Flume's channel counters and per-source and per-sink figures, in Prometheus's
//!   text format and as JSON for `sluicegate stats`.
//! - [`agent`]: starts all of that from a config, stops it on SIGINT or SIGTERM.
//!
//! **Architecture invariant:** nothing in the agent acknowledges an event to its sender before
//! the channel's commit of it is durable, and no take is committed before the destination
//! acknowledged it.

#![deny(missing_docs)]

pub mod agent;
pub mod bridge;
pub mod client;
pub mod config;
pub mod dead_letter;
pub mod home;
pub mod metrics;
pub mod owner;
pub mod protocol;
pub mod session;
pub mod sinks;
pub mod sources;

pub use agent::{run, AgentError};
pub use client::{Client, ClientError};
pub use config::AgentConfig;
pub use session::Session;
