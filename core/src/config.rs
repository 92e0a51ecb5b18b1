//! Channel configuration and the memory it needs.
//!
//! A [`Config`] is checked twice: on its own by [`Config::try_new`] (or at compile time by the
//! panicking [`Config::new`] in a `const`), and against the storage's geometry when a channel is
//! opened. The caller provides the channel's memory as a slice of `u64` words of
//! [`Config::memory_words`] length, so the core allocates nothing; the layout of that memory is
//! private to the core.

use crate::error::ConfigError;
use crate::record::{
    compact::MAX_VARINT, header_bytes, COMMIT_PREFIX_BYTES, COMPACT_MAX_SEGMENT_BYTES,
    MARK_PREFIX_BYTES, MAX_PAYLOAD_BYTES, POINTER_BYTES, SEGMENT_HEADER_BYTES,
};

/// The most transactions that can be open at once: a queued event carries its transaction's slot
/// in 8 bits, and one value is reserved for recovery.
pub const MAX_TRANSACTIONS: u16 = 254;
/// The fewest segments a log may have: one being written, one reserved for commit records, one
/// reserved for the segment a restart opens, and at least one for data.
pub const MIN_SEGMENTS: u64 = 4;
/// The most segments a log may have: a pointer holds the segment's slot in 24 bits.
pub const MAX_SEGMENTS: u64 = (1 << 24) - 1;
/// Words of channel memory per transaction slot, besides its pending-put pointers.
pub(crate) const TXN_WORDS: usize = 3;

/// The sizes and limits of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    capacity: u32,
    transaction_capacity: u32,
    max_transactions: u16,
    max_event_bytes: u32,
    segment_bytes: u32,
    checkpoint_every_commits: u32,
    checkpoint_every_log_bytes: u64,
    checkpoint_interval_ms: u64,
    checkpoint_step_entries: u32,
    marks: u16,
    mark_bytes: u16,
    log_segments: u32,
    compact: bool,
}

/// The most mark streams a channel may have.
pub const MAX_MARK_STREAMS: u16 = 1024;
/// The longest mark.
pub const MAX_MARK_BYTES: u16 = 4096;

/// Entries a checkpoint step writes by default: 32 KiB of pointers.
pub const DEFAULT_CHECKPOINT_STEP_ENTRIES: u32 = 4096;

impl Config {
    /// A configuration, checked; panics with the reason if it cannot work. Use it in a `const`
    /// so a bad configuration fails the build.
    ///
    /// - `capacity`: the most events the channel holds (queued, being taken, or put but not yet
    ///   committed), like Flume's `capacity`;
    /// - `transaction_capacity`: the most events one transaction puts or takes;
    /// - `max_transactions`: the most transactions open at once (1 to 254);
    /// - `max_event_bytes`: the largest event body, checked on put and on every read;
    /// - `segment_bytes`: the size of one log segment, a multiple of the storage's erase size.
    pub const fn new(
        capacity: u32,
        transaction_capacity: u32,
        max_transactions: u16,
        max_event_bytes: u32,
        segment_bytes: u32,
    ) -> Self {
        match Self::try_new(
            capacity,
            transaction_capacity,
            max_transactions,
            max_event_bytes,
            segment_bytes,
        ) {
            Ok(config) => config,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// As [`Config::new`], returning the reason instead of panicking.
    pub const fn try_new(
        capacity: u32,
        transaction_capacity: u32,
        max_transactions: u16,
        max_event_bytes: u32,
        segment_bytes: u32,
    ) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if transaction_capacity == 0 {
            return Err(ConfigError::ZeroTransactionCapacity);
        }
        if transaction_capacity > capacity {
            return Err(ConfigError::TransactionCapacityAboveCapacity);
        }
        if max_transactions == 0 || max_transactions > MAX_TRANSACTIONS {
            return Err(ConfigError::BadMaxTransactions);
        }
        if max_event_bytes == 0 || max_event_bytes > MAX_PAYLOAD_BYTES {
            return Err(ConfigError::BadMaxEventBytes);
        }
        let config = Config {
            capacity,
            transaction_capacity,
            max_transactions,
            max_event_bytes,
            segment_bytes,
            checkpoint_every_commits: 0,
            checkpoint_every_log_bytes: 0,
            checkpoint_interval_ms: 0,
            checkpoint_step_entries: DEFAULT_CHECKPOINT_STEP_ENTRIES,
            marks: 0,
            mark_bytes: 0,
            log_segments: MAX_SEGMENTS as u32,
            compact: false,
        };
        // A commit record lists one pointer per event of the transaction.
        if config.max_commit_payload_bytes() > MAX_PAYLOAD_BYTES as u64 {
            return Err(ConfigError::BadMaxEventBytes);
        }
        if (segment_bytes as u64) < SEGMENT_HEADER_BYTES as u64 * 2 + config.max_record_bytes() {
            return Err(ConfigError::SegmentTooSmall);
        }
        Ok(config)
    }

    /// Checkpoints start by themselves after `commits` commits or `log_bytes` bytes of log
    /// since the last one, whichever comes first (0 turns a trigger off), and after
    /// `interval_ms` milliseconds when the adapter calls [`Channel::poll`](crate::Channel::poll)
    /// with the time. All are off by default: checkpoints then happen only on demand and on close.
    pub const fn with_checkpoints(
        mut self,
        commits: u32,
        log_bytes: u64,
        interval_ms: u64,
    ) -> Self {
        self.checkpoint_every_commits = commits;
        self.checkpoint_every_log_bytes = log_bytes;
        self.checkpoint_interval_ms = interval_ms;
        self
    }

    /// How many queue entries a checkpoint writes per step (a multiple of 8, at least 8), which
    /// bounds how long a step holds up the channel. Panics otherwise; see
    /// [`Config::try_with_checkpoint_step`].
    pub const fn with_checkpoint_step(self, entries: u32) -> Self {
        match self.try_with_checkpoint_step(entries) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// As [`Config::with_checkpoint_step`], returning the reason instead of panicking.
    pub const fn try_with_checkpoint_step(mut self, entries: u32) -> Result<Self, ConfigError> {
        if entries < 8 || entries % 8 != 0 {
            return Err(ConfigError::BadCheckpointStep);
        }
        self.checkpoint_step_entries = entries;
        Ok(self)
    }

    /// Room for `streams` marks of at most `bytes` bytes each: a caller's progress (a file
    /// position, an offset upstream) committed in the same transaction as the events it
    /// describes, and kept by the channel across restarts. See
    /// [`Channel::set_mark`](crate::Channel::set_mark). Off (0 streams) by default. Panics if it
    /// cannot work; see [`Config::try_with_marks`].
    pub const fn with_marks(self, streams: u16, bytes: u16) -> Self {
        match self.try_with_marks(streams, bytes) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// As [`Config::with_marks`], returning the reason instead of panicking: at most
    /// [`MAX_MARK_STREAMS`] streams of at most [`MAX_MARK_BYTES`] bytes, and a commit record
    /// with a mark must still fit a record and a segment.
    pub const fn try_with_marks(mut self, streams: u16, bytes: u16) -> Result<Self, ConfigError> {
        if streams > MAX_MARK_STREAMS || bytes > MAX_MARK_BYTES || (streams > 0 && bytes == 0) {
            return Err(ConfigError::BadMarks);
        }
        if self.compact && streams > 0 {
            return Err(ConfigError::BadCompact);
        }
        self.marks = streams;
        self.mark_bytes = bytes;
        // A marked commit record carries the mark: it must still fit a record and a segment.
        if self.max_commit_payload_bytes() > MAX_PAYLOAD_BYTES as u64
            || (self.segment_bytes as u64)
                < SEGMENT_HEADER_BYTES as u64 * 2 + self.max_record_bytes()
        {
            return Err(ConfigError::BadMarks);
        }
        Ok(self)
    }

    /// Compact records (off by default): an 8-byte record header instead of 16, and commit
    /// records whose durable mark and pointers are variable-length integers, each pointer
    /// against the one before (docs/format.md, "Compact logs"). For small flash: a 32-byte
    /// event costs 40 bytes of log instead of 48, and a commit of 16 events about 28 instead of
    /// 152. Needs the core's `compact` feature, segments of at most 64 KiB
    /// ([`COMPACT_MAX_SEGMENT_BYTES`]), no marks and no encryption (a sealed open is refused).
    /// A log is compact in every segment or in none: an open whose configuration differs from
    /// the medium's is refused with [`ConfigError::RecordFormatMismatch`]. Panics if it cannot
    /// work; see [`Config::try_with_compact_records`].
    pub const fn with_compact_records(self) -> Self {
        match self.try_with_compact_records() {
            Ok(c) => c,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// As [`Config::with_compact_records`], returning the reason instead of panicking.
    pub const fn try_with_compact_records(mut self) -> Result<Self, ConfigError> {
        if !cfg!(feature = "compact")
            || self.segment_bytes > COMPACT_MAX_SEGMENT_BYTES
            || self.marks > 0
        {
            return Err(ConfigError::BadCompact);
        }
        self.compact = true;
        Ok(self)
    }

    /// True if the log's records are compact ([`Config::with_compact_records`]).
    pub const fn compact(&self) -> bool {
        self.compact
    }

    /// The most segments the log region will have (at least [`MIN_SEGMENTS`], at most
    /// [`MAX_SEGMENTS`], which is the default): a queue entry keeps its segment's slot in just
    /// enough bits for this many, so a smaller bound makes the queue smaller (see
    /// [`Config::memory_words`]). An open on a log region of more segments is refused with
    /// [`ConfigError::TooManySegments`]. Panics if out of range; see
    /// [`Config::try_with_log_segments`].
    pub const fn with_log_segments(self, segments: u32) -> Self {
        match self.try_with_log_segments(segments) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.message()),
        }
    }

    /// As [`Config::with_log_segments`], returning the reason instead of panicking.
    pub const fn try_with_log_segments(mut self, segments: u32) -> Result<Self, ConfigError> {
        if (segments as u64) < MIN_SEGMENTS || segments as u64 > MAX_SEGMENTS {
            return Err(ConfigError::BadLogSegments);
        }
        self.log_segments = segments;
        Ok(self)
    }

    /// The most segments the log region may have ([`Config::with_log_segments`]).
    pub const fn log_segments(&self) -> u32 {
        self.log_segments
    }

    /// The number of mark streams (0: marks are off).
    pub const fn marks(&self) -> u16 {
        self.marks
    }
    /// The longest mark in bytes.
    pub const fn mark_bytes(&self) -> u16 {
        self.mark_bytes
    }
    /// Words of memory one mark takes: a head word and the bytes.
    pub(crate) const fn mark_entry_words(&self) -> usize {
        if self.marks == 0 {
            0
        } else {
            1 + (self.mark_bytes as usize).div_ceil(8)
        }
    }
    /// The most bytes the marks take in a checkpoint slot (before the tag of a sealed one).
    pub(crate) const fn max_mark_area_bytes(&self) -> u64 {
        self.marks as u64 * (self.mark_entry_words() as u64 * 8)
    }

    /// Commits between automatic checkpoints (0: off).
    pub const fn checkpoint_every_commits(&self) -> u32 {
        self.checkpoint_every_commits
    }
    /// Log bytes between automatic checkpoints (0: off).
    pub const fn checkpoint_every_log_bytes(&self) -> u64 {
        self.checkpoint_every_log_bytes
    }
    /// Milliseconds between checkpoints started by [`Channel::poll`](crate::Channel::poll) (0: off).
    pub const fn checkpoint_interval_ms(&self) -> u64 {
        self.checkpoint_interval_ms
    }
    /// Queue entries a checkpoint writes per step.
    pub const fn checkpoint_step_entries(&self) -> u32 {
        self.checkpoint_step_entries
    }

    /// The most events the channel holds.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }
    /// The most events one transaction holds.
    pub const fn transaction_capacity(&self) -> u32 {
        self.transaction_capacity
    }
    /// The most transactions open at once.
    pub const fn max_transactions(&self) -> u16 {
        self.max_transactions
    }
    /// The largest event body in bytes.
    pub const fn max_event_bytes(&self) -> u32 {
        self.max_event_bytes
    }
    /// The size of one log segment in bytes.
    pub const fn segment_bytes(&self) -> u32 {
        self.segment_bytes
    }

    /// The largest commit record payload: the durable mark and one pointer per event of a full
    /// transaction.
    pub(crate) const fn max_commit_payload_bytes(&self) -> u64 {
        if self.compact {
            // The distance, then pointers of at most 7 bytes: a slot step below 2^25 (4) and an
            // offset below 2^16 words (3), or an offset step below 2^18 (3).
            return MAX_VARINT as u64 + self.transaction_capacity as u64 * 7;
        }
        let mark = if self.marks > 0 {
            MARK_PREFIX_BYTES as u64 + (self.mark_bytes as u64).next_multiple_of(8)
        } else {
            0
        };
        COMMIT_PREFIX_BYTES as u64 + mark + self.transaction_capacity as u64 * POINTER_BYTES as u64
    }

    /// The largest payload any record may carry; a longer length read from media is corrupt.
    pub(crate) const fn max_payload_bytes(&self) -> u64 {
        let commit = self.max_commit_payload_bytes();
        if commit > self.max_event_bytes as u64 {
            commit
        } else {
            self.max_event_bytes as u64
        }
    }

    /// The largest record before alignment padding.
    pub(crate) const fn max_record_bytes(&self) -> u64 {
        header_bytes(self.compact) as u64 + self.max_payload_bytes()
    }

    /// The number of `u64` words of memory a channel with this configuration needs: the queue,
    /// one entry per event of capacity, packed into as few bits as the configuration allows
    /// (the offset in a segment of `segment_bytes`, the slot of one of `log_segments`, and the
    /// transaction holding it, one of `max_transactions` or none: 5.5 bytes for 1,024
    /// segments of 128 MiB and 64 transactions, the file channel's defaults; 2.25 for 16
    /// segments of 4 KiB and 2 transactions, the firmware example's; at most 8); 8 bytes per
    /// event of each transaction slot (pointers of puts not yet committed); 24 bytes per
    /// transaction slot; and, with marks, one mark's room per stream and per transaction slot.
    pub const fn memory_words(&self) -> usize {
        crate::memory::Carving::new(self).words()
    }

    /// Bits of memory one queue entry takes (see [`Config::memory_words`]).
    pub const fn queue_entry_bits(&self) -> u32 {
        crate::queue::Packing::for_config(self).width()
    }

    /// [`Config::memory_words`] in bytes.
    pub const fn memory_bytes(&self) -> usize {
        self.memory_words() * 8
    }
}
