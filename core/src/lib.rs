//! # sluicegate-core
//!
//! The `no_std` core of Sluicegate, a durable, transactional event channel in the design of
//! Apache Flume's FileChannel: a write-ahead log of records, an in-memory queue of pointers into
//! that log, checkpoints of that queue in two slots (the older one is the backup), and recovery
//! from the newest usable checkpoint plus the log after it, or by replaying the whole log.
//!
//! The core touches media only through the [`Storage`] trait, whose rules are those of NOR flash
//! (write once per erase, explicit sync barrier), so the same code runs over memory-mapped files
//! on a server and over raw flash on a microcontroller. It allocates nothing: the caller gives
//! the queue's memory (see [`Config::memory_words`]).
//!
//! ```
//! # use sluicegate_core::{Channel, Config};
//! # fn demo<S: sluicegate_core::Storage>(storage: S) -> Result<(), sluicegate_core::Error<S::Error>> {
//! const CONFIG: Config = Config::new(64, 16, 4, 256, 4096);
//! let mut memory = [0u64; CONFIG.memory_words()];
//! let mut channel = Channel::open(storage, &mut memory[..], CONFIG)?;
//! let tx = channel.begin()?;
//! channel.put(tx, b"reading 1")?;
//! channel.commit(tx)?; // durable when this returns
//! let tx = channel.begin()?;
//! let mut buf = [0u8; 256];
//! if let Some(n) = channel.take(tx, &mut buf)? {
//!     assert_eq!(&buf[..n], b"reading 1");
//! }
//! channel.commit(tx)?; // the event is gone for good
//! # Ok(()) }
//! ```
//!
//! See ARCHITECTURE.md for the map of the code, docs/format.md for the bytes on media and
//! docs/guarantees.md for what is promised.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
pub mod checkpoint;
mod config;
mod error;
mod latch;
mod log;
mod mark;
mod memory;
mod queue;
pub mod record;
mod recovery;
pub mod seal;
mod sealed_write;
pub mod storage;
pub mod walk;

pub use channel::{Channel, EventId, PendingSync, Stats, SyncMark, Txn};
pub use config::{
    Config, MAX_MARK_BYTES, MAX_MARK_STREAMS, MAX_SEGMENTS, MAX_TRANSACTIONS, MIN_SEGMENTS,
};
pub use error::{ConfigError, Error};
pub use log::MAX_WRITE_SIZE;
pub use recovery::{Recovery, RecoveryPath};
pub use seal::{Algorithm, Key, KeyId, KeyProvider, NoKeys, StaticKeys, KEY_BYTES, SALT_BYTES};
pub use storage::{ErrorType, Region, SplitSync, Storage, StorageError, StorageErrorKind};
