//! The one error type of the core, [`Error`], and configuration errors, [`ConfigError`].
//!
//! Corruption, a full channel, a bad argument and a logic bug are different variants so a caller
//! can react to each: retry later, fix the call, or report a bug. Storage failures keep the
//! adapter's own error inside [`Error::Storage`].

use core::fmt;

use crate::storage::{Region, StorageError};

/// Everything that can go wrong in a channel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error<E> {
    /// The storage adapter failed. After a failed write or sync of the log (or an erase that
    /// failed for another reason than lack of space) the channel is poisoned.
    Storage(E),
    /// An earlier write, erase or sync failed, so the state of unsynced data is unknown; the
    /// channel refuses to write until it is reopened (reopening replays the log and finds out).
    Poisoned,
    /// Data on the medium passed its checksum but contradicts the format, so it cannot be used.
    Corrupted {
        /// Where the bad structure lies.
        region: Region,
        /// Its offset in the region.
        offset: u64,
    },
    /// The medium holds a Sluicegate log of a format version this build does not read.
    UnsupportedFormat {
        /// The version found on the medium.
        found: u16,
    },
    /// The channel holds `capacity` events (queued, being taken, or put but not committed).
    ChannelFull,
    /// The log has no free segment for this record; nothing is overwritten. Taking events frees
    /// segments once nothing points into them.
    LogFull,
    /// The transaction already holds `transaction_capacity` events.
    TransactionFull,
    /// The event is larger than `max_event_bytes`.
    EventTooLarge {
        /// The event's length.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// The caller's buffer cannot hold the next event; nothing was taken.
    BufferTooSmall {
        /// The length of the event.
        needed: usize,
    },
    /// The transaction handle is stale or belongs to no open transaction.
    BadTransaction,
    /// The mark stream is not below the configured `marks`, or the mark is longer than
    /// `mark_bytes`.
    BadMark,
    /// A transaction holds puts or takes, never both.
    WrongTransactionKind,
    /// Every transaction slot is in use (`max_transactions`).
    TooManyTransactions,
    /// The log holds more events than the configured capacity can hold.
    CapacityTooSmall {
        /// The number of events the log holds (at least).
        needed: u64,
    },
    /// A checkpoint was asked for, but the storage has no checkpoint regions.
    CheckpointsDisabled,
    /// The log or a checkpoint is sealed with a key the key provider does not have. Nothing
    /// sealed with it can be read until the key is given back.
    KeyMissing {
        /// The id of the missing key.
        key: crate::seal::KeyId,
    },
    /// The key provider's key with this id does not open the log: another key was given the
    /// same id, or the segment's seal record was altered.
    WrongKey {
        /// The id of the key.
        key: crate::seal::KeyId,
    },
    /// A segment is sealed with an AEAD this build leaves out (AES-256-GCM without the
    /// core's `aes-gcm` feature), or the key provider asks for one.
    UnsupportedAlgorithm {
        /// The algorithm.
        algorithm: crate::seal::Algorithm,
    },
    /// The configuration does not fit the storage or the memory given.
    Config(ConfigError),
    /// An internal invariant does not hold: a bug in Sluicegate. Please report it.
    LogicBug(&'static str),
}

impl<E> Error<E> {
    /// True for the errors a caller may retry later without changing anything (full channel or
    /// full log).
    pub fn is_full(&self) -> bool {
        matches!(self, Error::ChannelFull | Error::LogFull)
    }
}

impl<E: StorageError> Error<E> {
    /// True if this error came from the storage adapter.
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Storage(_))
    }
}

impl<E> From<ConfigError> for Error<E> {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Storage(e) => write!(f, "storage error: {e:?}"),
            Error::Poisoned => f.write_str(
                "an earlier write or sync failed; the channel refuses writes until it is reopened",
            ),
            Error::Corrupted { region, offset } => {
                write!(
                    f,
                    "corrupt data in the {region:?} region at offset {offset}"
                )
            }
            Error::UnsupportedFormat { found } => write!(
                f,
                "the log has format version {found}; this build reads version {}",
                crate::record::FORMAT_VERSION
            ),
            Error::ChannelFull => f.write_str("the channel is full"),
            Error::LogFull => f.write_str("the log has no free segment"),
            Error::TransactionFull => f.write_str("the transaction is full"),
            Error::EventTooLarge { len, max } => {
                write!(
                    f,
                    "event of {len} bytes is larger than max_event_bytes ({max})"
                )
            }
            Error::BufferTooSmall { needed } => {
                write!(
                    f,
                    "the buffer is too small for the next event ({needed} bytes)"
                )
            }
            Error::BadTransaction => f.write_str("no open transaction has this handle"),
            Error::BadMark => f.write_str(
                "the mark's stream is not below the configured marks, or the mark is longer than mark_bytes",
            ),
            Error::WrongTransactionKind => {
                f.write_str("a transaction holds puts or takes, never both")
            }
            Error::TooManyTransactions => f.write_str("every transaction slot is in use"),
            Error::CapacityTooSmall { needed } => write!(
                f,
                "the log holds at least {needed} events, more than the configured capacity"
            ),
            Error::CheckpointsDisabled => {
                f.write_str("the storage has no checkpoint regions, so checkpoints are off")
            }
            Error::KeyMissing { key } => write!(
                f,
                "the log is sealed with key {key}, which the key provider does not have"
            ),
            Error::WrongKey { key } => write!(
                f,
                "key {key} does not open the log: a different key was given that id, or the log was altered"
            ),
            Error::UnsupportedAlgorithm { algorithm } => write!(
                f,
                "the log is sealed with {}, which this build leaves out (the core's `aes-gcm` feature)",
                algorithm.name()
            ),
            Error::Config(e) => write!(f, "bad configuration: {e}"),
            Error::LogicBug(what) => write!(f, "logic bug in sluicegate: {what}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// A configuration that cannot work, found by [`Config::try_new`](crate::Config::try_new) or
/// when a channel is opened on a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// `capacity` is 0.
    ZeroCapacity,
    /// `transaction_capacity` is 0.
    ZeroTransactionCapacity,
    /// `transaction_capacity` is larger than `capacity`.
    TransactionCapacityAboveCapacity,
    /// `max_transactions` is 0 or above [`MAX_TRANSACTIONS`](crate::config::MAX_TRANSACTIONS).
    BadMaxTransactions,
    /// `max_event_bytes` is 0 or above the record format's limit.
    BadMaxEventBytes,
    /// `segment_bytes` is not a multiple of the storage's erase size.
    SegmentNotErasable,
    /// A segment cannot hold its header and one record of the largest size.
    SegmentTooSmall,
    /// The log region holds fewer than [`MIN_SEGMENTS`](crate::config::MIN_SEGMENTS) segments.
    TooFewSegments,
    /// The log region holds more segments than [`Config::log_segments`](crate::Config::log_segments)
    /// (by default the most a pointer can address, 2^24 - 1).
    TooManySegments,
    /// `log_segments` is below [`MIN_SEGMENTS`](crate::config::MIN_SEGMENTS) or above
    /// [`MAX_SEGMENTS`](crate::config::MAX_SEGMENTS).
    BadLogSegments,
    /// The memory given to the channel is smaller than [`Config::memory_words`](crate::Config::memory_words).
    MemoryTooSmall {
        /// Words needed.
        needed: usize,
        /// Words given.
        given: usize,
    },
    /// `checkpoint_step_entries` is not a multiple of 8 of at least 8.
    BadCheckpointStep,
    /// Marks: more than `MAX_MARK_STREAMS` streams, more than `MAX_MARK_BYTES` bytes, streams
    /// with no bytes, or a commit record with a mark too long for a record or a segment.
    BadMarks,
    /// One checkpoint region is empty and the other is not: checkpoints need two slots.
    CheckpointSlotMissing,
    /// A checkpoint region cannot hold a checkpoint of `capacity` events, or is not a multiple
    /// of the erase size.
    CheckpointRegionTooSmall {
        /// Bytes a slot needs.
        needed: u64,
        /// Bytes the smaller region has.
        given: u64,
    },
    /// The key provider names an active key it does not have (or key id 0, which means
    /// "no key").
    ActiveKeyMissing {
        /// The active key's id.
        key: crate::seal::KeyId,
    },
    /// Compact records ([`Config::with_compact_records`](crate::Config::with_compact_records))
    /// in a build without the core's `compact` feature, with segments above 64 KiB, with marks,
    /// or with an active key.
    BadCompact,
    /// The log on the medium was written with compact records and the configuration asks for
    /// full ones, or the reverse.
    RecordFormatMismatch {
        /// True if the medium's log is compact.
        on_media_compact: bool,
    },
    /// The log on the medium was written with another segment size.
    SegmentSizeMismatch {
        /// The size recorded on the medium.
        on_media: u32,
        /// The configured size.
        configured: u32,
    },
}

impl ConfigError {
    /// A one-line description (usable in `const` panics).
    pub const fn message(&self) -> &'static str {
        match self {
            ConfigError::ZeroCapacity => "capacity must be at least 1",
            ConfigError::ZeroTransactionCapacity => "transaction_capacity must be at least 1",
            ConfigError::TransactionCapacityAboveCapacity => {
                "transaction_capacity must not exceed capacity"
            }
            ConfigError::BadMaxTransactions => "max_transactions must be between 1 and 254",
            ConfigError::BadMaxEventBytes => {
                "max_event_bytes must be between 1 and 16 MiB - 1 (the record format's limit)"
            }
            ConfigError::SegmentNotErasable => {
                "segment_bytes must be a multiple of the storage's erase size"
            }
            ConfigError::SegmentTooSmall => {
                "segment_bytes must hold a segment header and the largest record"
            }
            ConfigError::TooFewSegments => "the log region must hold at least 4 segments",
            ConfigError::TooManySegments => {
                "the log region holds more segments than Config::log_segments (2^24 - 1 unless set)"
            }
            ConfigError::BadLogSegments => "log_segments must be between 4 and 2^24 - 1",
            ConfigError::MemoryTooSmall { .. } => {
                "the memory given is smaller than Config::memory_words()"
            }
            ConfigError::SegmentSizeMismatch { .. } => {
                "the log on the medium was written with another segment_bytes"
            }
            ConfigError::BadCompact => {
                "compact records need the core's compact feature, segments of at most 64 KiB, no marks and no encryption"
            }
            ConfigError::RecordFormatMismatch { on_media_compact: true } => {
                "the log on the medium has compact records; open it with Config::with_compact_records"
            }
            ConfigError::RecordFormatMismatch { on_media_compact: false } => {
                "the log on the medium has full records; open it without Config::with_compact_records"
            }
            ConfigError::ActiveKeyMissing { .. } => {
                "the key provider's active key is not among its keys (or is id 0)"
            }
            ConfigError::BadCheckpointStep => {
                "checkpoint_step_entries must be a multiple of 8, at least 8"
            }
            ConfigError::BadMarks => {
                "marks: at most 1024 streams of 1 to 4096 bytes, and a commit with its mark must fit a segment"
            }
            ConfigError::CheckpointSlotMissing => {
                "the checkpoint and backup regions must both be empty or both be present"
            }
            ConfigError::CheckpointRegionTooSmall { .. } => {
                "a checkpoint region cannot hold a checkpoint of capacity events (or is not a multiple of the erase size)"
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MemoryTooSmall { needed, given } => {
                write!(
                    f,
                    "{} (needed {needed} words, given {given})",
                    self.message()
                )
            }
            ConfigError::SegmentSizeMismatch {
                on_media,
                configured,
            } => write!(
                f,
                "{} (medium: {on_media}, configured: {configured})",
                self.message()
            ),
            ConfigError::ActiveKeyMissing { key } => {
                write!(f, "{} (active key {key})", self.message())
            }
            ConfigError::CheckpointRegionTooSmall { needed, given } => {
                write!(
                    f,
                    "{} (needed {needed} bytes, given {given})",
                    self.message()
                )
            }
            other => f.write_str(other.message()),
        }
    }
}

impl core::error::Error for ConfigError {}
