//! The channel: transactions of puts or takes over the log and the in-memory queue.
//!
//! A put writes a `Put` record at once and keeps a pointer to it in its transaction's slot. A
//! take tags the queue's first available entry and reads the event; nothing is written. A commit
//! writes one record that lists every pointer of the transaction (`PutCommit` or `TakeCommit`),
//! then syncs; only after the sync returns do the puts join the queue or the takes leave it. A
//! rollback writes nothing: a put that no commit lists is ignored by replay, and a take that no
//! commit lists never happened.
//!
//! **Invariant:** `commit` returns `Ok` only after the commit record and every put record it
//! lists are durable (one sync covers both, and replay refuses a commit whose puts did not
//! survive). **Invariant:** events become visible, and leave, in the order of their commit
//! records in the log, which is the order replay rebuilds.
//!
//! The parts: this file holds the type, opening and the sync that applies commits; `head` the
//! log's head (where the next record goes, what is durable, what is pinned); `txn` the
//! transactions over the slot table; `append` the log writer; `read` the reads for takes;
//! `group` group commit; `checkpointing` the checkpoint writer; `replay` recovery at open.
//! Every part that works on a `Channel` lives here, and no module outside imports it. The
//! state of each part is a type with private fields, changed only through its methods
//! (`LogHead`, `TxnCounters`, `SegKeysCache` here, `Checkpoints` and `Queue` beside).

use crate::checkpoint::{Checkpoints, SlotLayout};
use crate::config::{Config, MIN_SEGMENTS, TXN_WORDS};
use crate::error::{ConfigError, Error};
use crate::latch::Latched;
use crate::log::{payload_matches, read_record_header, Geometry, WordWriter, MAX_WRITE_SIZE};
use crate::log::{read_segment_header, stream_payload};
use crate::mark::{self, padded};
use crate::memory::{Carving, Parts, PartsRef};
use crate::queue::Queue;
use crate::record::{
    align_up, compact, mark_prefix, Pointer, RecordHeader, RecordKind, SealRecord, SegmentCheck,
    SegmentHeader, COMMIT_PREFIX_BYTES, COMPACT_MAX_INDEX, MARK_PREFIX_BYTES, POINTER_BYTES,
    RECORD_HEADER_BYTES, SEAL_PAYLOAD_BYTES, SEGMENT_FLAG_COMPACT, SEGMENT_FLAG_OPENED,
    SEGMENT_FLAG_SEALED, SEGMENT_FLAG_UNERASED,
};
use crate::recovery::Recovery;
use crate::seal::{KeyId, KeyProvider, NoKeys, SealerCache, TAG_BYTES};
use crate::sealed_write::{SealedWrite, SegKeys, SegSeal};
use crate::storage::{Region, Storage};

mod append;
mod checkpointing;
mod group;
mod head;
mod read;
mod replay;
mod txn;

pub use group::PendingSync;

pub(crate) use append::emit_mark;
use append::{Body, WriteClass};
use head::LogHead;
use read::{ReadFail, SegKeysCache};
use txn::{Slot, TxnCounters, KIND_PUT, STATE_FREE, STATE_WRITTEN};

/// A handle on an open transaction. It is only a number: the state lives in the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Txn {
    slot: u8,
    generation: u32,
}

/// An event's identity within its channel: the sequence number of the log segment its put
/// record is in, and the record's offset there. A put record is written once and never moves,
/// and segment numbers never repeat, so an event keeps its id across rollbacks, crashes and
/// redeliveries, and no two events of a channel share one. Ids grow in write order. A sink
/// sends it with each event so that a destination can drop the duplicates a crash between its
/// acknowledgement and the take's commit causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EventId {
    seq: u64,
    offset: u32,
}

impl EventId {
    pub(crate) const fn new(seq: u64, offset: u32) -> Self {
        EventId { seq, offset }
    }

    /// The sequence number of the segment holding the event's put record.
    pub const fn segment(self) -> u64 {
        self.seq
    }

    /// The put record's offset in its segment.
    pub const fn offset(self) -> u32 {
        self.offset
    }

    /// The id as one number, `segment × 2^32 + offset`.
    pub const fn get(self) -> u128 {
        (self.seq as u128) << 32 | self.offset as u128
    }
}

/// A position in the log: every record written before it. See [`Channel::sync_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncMark(u64);

/// A snapshot of the channel's state and counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Stats {
    /// Committed events in the queue, including those taken by open transactions.
    pub depth: u64,
    /// Events taken by transactions that have not committed.
    pub in_flight_takes: u64,
    /// Events put by transactions that have not committed.
    pub pending_puts: u64,
    /// The configured capacity.
    pub capacity: u32,
    /// Transactions open now.
    pub open_transactions: u16,
    /// Segments in the log ring.
    pub segments: u64,
    /// Segments that cannot be reused yet, from the oldest one an event points into to the one
    /// being written.
    pub segments_pinned: u64,
    /// Segments that can be reused now.
    pub segments_free: u64,
    /// Put records written.
    pub puts: u64,
    /// Events delivered by `take`.
    pub takes: u64,
    /// Commits that wrote a record.
    pub commits: u64,
    /// Rollbacks.
    pub rollbacks: u64,
    /// Sync barriers issued.
    pub syncs: u64,
    /// Queued events whose record failed its checks when read; they were never delivered, and
    /// leave the queue with the take transaction that met them.
    pub corrupt_events_skipped: u64,
    /// Segments opened (erased and given a header).
    pub segments_opened: u64,
    /// Runs that went on writing in the newest segment, after the last intact record, instead
    /// of opening a segment of their own (over a storage that can be rewritten; see
    /// `Storage::rewritable`).
    pub segments_continued: u64,
    /// The sequence number of the newest segment (the one being written). Segment `seq` lives
    /// in slot `seq % segments`, so this also tells how often each slot has been erased (see
    /// `sluicegate-flash`'s wear report).
    pub newest_segment: u64,
    /// Segments from the oldest one a queued event or a pending put points into, to the newest:
    /// what one old unconsumed event keeps from being reused.
    pub segments_pinned_by_events: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Checkpoints abandoned because the checkpoint region failed (the log is unaffected).
    pub checkpoint_failures: u64,
    /// True while a checkpoint is being written.
    pub checkpoint_in_progress: bool,
    /// Sealed records whose CRC held but whose authentication tag did not: the ciphertext was
    /// altered on purpose (a random error fails the CRC first). Such an event is never
    /// delivered; it is also counted in `corrupt_events_skipped`.
    pub authentication_failures: u64,
}

/// A durable, transactional FIFO of events over a [`Storage`].
///
/// `M` is the caller's memory, [`Config::memory_words`] `u64` words: a `&mut [u64]` (a static
/// array on firmware) or a `Vec<u64>` on a server. `K` gives the keys when the log is
/// encrypted ([`Channel::open_with_keys`]); the default, [`NoKeys`], writes plaintext.
pub struct Channel<S: Storage, M, K = NoKeys> {
    /// The storage, with the first failed log write or sync latched (`crate::latch`).
    storage: Latched<S>,
    memory: M,
    /// Where each part of `memory` lies, computed and checked against its length at open.
    carving: Carving,
    config: Config,
    geo: Geometry,
    queue: Queue,
    /// Where the log is being written, what of it is durable, and what of it is pinned.
    head: LogHead,
    /// Transaction ids and generations, and the puts open transactions hold.
    txn_counters: TxnCounters,
    stats: Stats,
    recovery: Recovery,
    ckpt: Checkpoints,
    keys: K,
    /// The key this run seals with (the provider's active key when the channel opened).
    sealing: Option<KeyId>,
    /// How the segments read last are sealed.
    seg_keys: SegKeysCache,
    /// The AES-GCM keys of the segments sealed and opened last.
    sealers: SealerCache,
    /// Keys that opened at least one segment at open: a seal record that fails one of these
    /// was altered, not sealed with another key. 0 (never a key's id) marks a free entry.
    proven_keys: [KeyId; 8],
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>> Channel<S, M, NoKeys> {
    /// Opens a plaintext channel: [`Channel::open_with_keys`] without keys. A log that holds
    /// sealed segments is refused with [`Error::KeyMissing`].
    pub fn open(storage: S, memory: M, config: Config) -> Result<Self, Error<S::Error>> {
        Self::open_with_keys(storage, memory, config, NoKeys)
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Opens a channel: checks the configuration against the storage and replays the log.
    /// [`Channel::recovery`] tells what replay did.
    ///
    /// With an active key in `keys`, every segment and checkpoint this run writes is sealed
    /// with it (see docs/guarantees.md). Segments and checkpoints already on the medium are
    /// read with the key they name, which `keys` must have: a missing key is
    /// [`Error::KeyMissing`], a key that does not match is [`Error::WrongKey`].
    ///
    /// Opening writes to the log never; the run's first write starts a new segment. With
    /// checkpoints on, an open that replayed log written after the last checkpoint then writes
    /// a checkpoint, so that the verdict on a record a power cut left half-programmed is final
    /// (`Recovery::checkpointed`); if that checkpoint fails, the open fails. An open that finds
    /// nothing after its checkpoint writes nothing at all.
    pub fn open_with_keys(
        storage: S,
        memory: M,
        config: Config,
        keys: K,
    ) -> Result<Self, Error<S::Error>> {
        const {
            assert!(
                S::READ_SIZE == 1,
                "the core reads single bytes; buffer in the adapter"
            );
            assert!(S::WRITE_SIZE >= 1 && S::WRITE_SIZE <= MAX_WRITE_SIZE);
            assert!(
                256 % S::WRITE_SIZE == 0,
                "WRITE_SIZE must be a power of two"
            );
            assert!(S::ERASE_SIZE >= S::WRITE_SIZE && S::ERASE_SIZE % S::WRITE_SIZE == 0);
        }
        // The one check of the caller's memory: every part is borrowed through this carving.
        let carving = Carving::new(&config);
        let given = memory.as_ref().len();
        if given < carving.words() {
            return Err(ConfigError::MemoryTooSmall {
                needed: carving.words(),
                given,
            }
            .into());
        }
        let segment_bytes = config.segment_bytes() as u64;
        if segment_bytes % S::ERASE_SIZE as u64 != 0 {
            return Err(ConfigError::SegmentNotErasable.into());
        }
        let segments = storage.capacity(Region::Log) / segment_bytes;
        if segments < MIN_SEGMENTS {
            return Err(ConfigError::TooFewSegments.into());
        }
        if segments > config.log_segments() as u64 {
            return Err(ConfigError::TooManySegments.into());
        }
        let sealing = keys.active();
        if let Some(id) = sealing {
            if id == 0 || keys.key(id).is_none() {
                return Err(ConfigError::ActiveKeyMissing { key: id }.into());
            }
            let algorithm = keys.algorithm();
            if !algorithm.supported() {
                return Err(Error::UnsupportedAlgorithm { algorithm });
            }
        }
        if config.compact() && sealing.is_some() {
            return Err(ConfigError::BadCompact.into());
        }
        let geo =
            Geometry::new(segments, segment_bytes, S::WRITE_SIZE).with_compact(config.compact());
        let (tag, seal) = match sealing {
            Some(_) => (TAG_BYTES as u64, geo.record_span(SEAL_PAYLOAD_BYTES as u64)),
            None => (0, 0),
        };
        if geo.first_record() + seal + geo.record_span(config.max_payload_bytes() + tag)
            > segment_bytes
        {
            return Err(ConfigError::SegmentTooSmall.into());
        }
        let checkpoints = checkpoint_slots_usable(&storage, &config, &geo, sealing.is_some())?;
        let mut channel = Channel {
            storage: Latched::new(storage),
            memory,
            carving,
            config,
            geo,
            queue: Queue::new(&config),
            // Replaced by the head replay finds.
            head: LogHead::after_replay(0, 0, 0, None),
            txn_counters: TxnCounters::after_replay(0),
            stats: Stats::default(),
            recovery: Recovery::default(),
            ckpt: Checkpoints::new(checkpoints),
            keys,
            sealing,
            seg_keys: SegKeysCache::new(),
            sealers: SealerCache::default(),
            proven_keys: [0; 8],
        };
        // Transaction slots start free whatever the memory held before.
        let Parts { txns, .. } = channel.carving.parts(channel.memory.as_mut());
        txns.fill(0);
        // So do marks: the table is rebuilt by replay.
        let Parts {
            marks: table,
            pending_marks: pending,
            ..
        } = channel.carving.parts(channel.memory.as_mut());
        table.fill(0);
        pending.fill(0);
        let replayed = channel.replay()?;
        channel.head = LogHead::after_replay(
            replayed.newest.unwrap_or(0),
            replayed.roll_to,
            replayed.next_wid,
            replayed.tail,
        );
        channel.txn_counters = TxnCounters::after_replay(replayed.next_txn_id);
        channel.refresh_pins();
        if channel.ckpt.enabled() && replayed.read_tail {
            // Make this recovery's verdict final before anyone sees it. The record in flight at
            // the cut may sit in cells a cut program left half-done, which can read differently
            // next time: a later replay could then judge it the other way. A checkpoint taken
            // now replays from the segment this run will open, so no later recovery that uses
            // it reads that tail again. It costs one checkpoint per open that follows a run
            // which wrote after its last checkpoint, and nothing per idle reboot after that.
            channel.checkpoint()?;
            channel.recovery.checkpointed = true;
        }
        #[cfg(feature = "defmt")]
        defmt::info!("sluicegate: opened: {}", channel.recovery);
        Ok(channel)
    }

    /// Removes from the queue every event whose bytes cannot be read: its segment is gone or
    /// its put record is damaged. Every queued record is read in full, so this finds more than
    /// an open's check ([`Recovery::events_in_lost_segments`]); a take would skip each such
    /// event as corrupt. For a repair tool, right after open and before any transaction (else
    /// [`Error::BadTransaction`]); a checkpoint afterwards makes the removal durable. Returns
    /// how many it removed, and leaves that count in the recovery report.
    pub fn drop_lost_events(&mut self) -> Result<u64, Error<S::Error>> {
        self.lost_events_checked(true, &mut |_| {})
    }

    /// Reads every queued event's record in full and counts those whose bytes cannot be read
    /// (as [`Channel::drop_lost_events`] would remove them), leaving the count in
    /// [`Recovery::events_in_lost_segments`]: for a verifying tool, right after open and before
    /// any transaction (else [`Error::BadTransaction`]).
    pub fn check_queued_events(&mut self) -> Result<u64, Error<S::Error>> {
        self.lost_events_checked(false, &mut |_| {})
    }

    /// As [`Channel::check_queued_events`], calling `f` with the id of each event whose bytes
    /// cannot be read, in queue order: what a repair's report lists.
    pub fn check_queued_events_each(
        &mut self,
        f: &mut dyn FnMut(EventId),
    ) -> Result<u64, Error<S::Error>> {
        self.lost_events_checked(false, f)
    }

    fn lost_events_checked(
        &mut self,
        remove: bool,
        on_lost: &mut dyn FnMut(EventId),
    ) -> Result<u64, Error<S::Error>> {
        let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
        if self.queue.tagged(qmem) > 0 {
            return Err(Error::BadTransaction);
        }
        let newest =
            (self.recovery.path != crate::RecoveryPath::New).then_some(self.recovery.last_segment);
        let lost = self.lost_events(newest, replay::Check::Every, remove, on_lost)?;
        self.recovery.events = self.queue.len() as u64;
        Ok(lost)
    }

    /// What the last open found and did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Checkpoints completed since open ([`Stats::checkpoints`]), without the scans of the
    /// whole queue that [`Channel::stats`] makes: cheap enough to ask after every checkpoint
    /// step.
    pub fn checkpoints_completed(&self) -> u64 {
        self.stats.checkpoints
    }

    /// Committed events in the queue, including those taken by transactions still open.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True if no committed event is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.len() == 0
    }

    /// Gives back the storage and the memory.
    pub fn into_parts(self) -> (S, M) {
        (self.storage.into_inner(), self.memory)
    }

    /// The key provider.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// The key this run seals new segments and checkpoints with (`None`: plaintext).
    pub fn sealing_key(&self) -> Option<KeyId> {
        self.sealing
    }

    /// Borrows the storage (for counters in tests and adapters).
    pub fn storage(&self) -> &S {
        self.storage.inner()
    }

    /// Borrows the storage mutably, for tests that damage the medium under an open channel and
    /// for adapters' housekeeping. Writing to the log region through it breaks the channel.
    pub fn storage_mut(&mut self) -> &mut S {
        self.storage.inner_mut()
    }

    /// A snapshot of the state and counters.
    pub fn stats(&mut self) -> Stats {
        self.refresh_pins();
        let Parts {
            queue: qmem, txns, ..
        } = self.carving.parts(self.memory.as_mut());
        let open = (0..self.config.max_transactions() as usize)
            .filter(|&s| Slot::load(txns, s).state != STATE_FREE)
            .count() as u16;
        let mut stats = self.stats;
        stats.depth = self.queue.len() as u64;
        stats.in_flight_takes = self.queue.tagged(qmem) as u64;
        stats.pending_puts = self.txn_counters.pending_puts();
        stats.capacity = self.config.capacity();
        stats.open_transactions = open;
        stats.segments = self.geo.segments;
        let newest = self.head.seq();
        stats.segments_pinned = newest - self.head.oldest_pinned() + 1;
        stats.newest_segment = newest;
        stats.segments_free = self.free_ahead();
        stats.segments_pinned_by_events = newest - self.oldest_event_seq() + 1;
        stats.checkpoint_in_progress = self.ckpt.in_progress();
        stats
    }

    /// The durability barrier: syncs the log, then applies every commit written before it, in
    /// log order. Does nothing if no commit is waiting.
    pub fn sync(&mut self) -> Result<(), Error<S::Error>> {
        let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
        let max = self.config.max_transactions() as usize;
        if !(0..max).any(|s| Slot::load(txns, s).state == STATE_WRITTEN) {
            return Ok(());
        }
        self.sync_log()
    }

    /// Syncs the log whatever is waiting, then applies written commits in log order.
    pub(crate) fn sync_log(&mut self) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        let mark = self.sync_mark();
        let outcome = self.storage.sync(Region::Log);
        self.settle_sync(mark, outcome)
    }

    /// The mark of every log write made so far: a commit written before now is durable once a
    /// sync that covers this mark has finished ([`Channel::sync`], or a [`crate::PendingSync`]
    /// of group commit begun after now).
    pub fn sync_mark(&self) -> SyncMark {
        SyncMark(self.head.next_wid())
    }

    /// Records a finished sync of everything before `mark` and applies the commits it covers.
    pub(crate) fn settle_sync(
        &mut self,
        mark: SyncMark,
        outcome: Result<(), S::Error>,
    ) -> Result<(), Error<S::Error>> {
        if let Err(e) = outcome {
            // A sync the adapter carried out itself never passed through the latch.
            self.storage.latch();
            return Err(Error::Storage(e));
        }
        let max = self.config.max_transactions() as usize;
        self.stats.syncs += 1;
        self.head.synced(mark.0);
        // Apply in commit-record order, which is the order replay uses; a commit written after
        // the mark waits for the next sync. Bounded by `max` turns.
        for _ in 0..max {
            let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
            let next = (0..max)
                .map(|s| (s, Slot::load(txns, s)))
                .filter(|(_, slot)| slot.state == STATE_WRITTEN && slot.commit_wid < mark.0)
                .min_by_key(|(_, slot)| slot.commit_wid);
            let Some((s, slot)) = next else { break };
            self.apply(s, slot)?;
            self.ckpt.committed();
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<(), Error<S::Error>> {
        if self.storage.latched() {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }
}

/// Checks the checkpoint regions: both empty (checkpoints off) or both able to hold a
/// checkpoint of `capacity` events. Returns whether checkpoints are on.
fn checkpoint_slots_usable<S: Storage, E>(
    storage: &S,
    config: &Config,
    geo: &Geometry,
    sealed: bool,
) -> Result<bool, Error<E>> {
    let sizes = [
        storage.capacity(Region::Checkpoint),
        storage.capacity(Region::Backup),
    ];
    match sizes {
        [0, 0] => return Ok(false),
        [0, _] | [_, 0] => return Err(ConfigError::CheckpointSlotMissing.into()),
        _ => {}
    }
    let erase = S::ERASE_SIZE as u64;
    let marks = match (config.max_mark_area_bytes(), sealed) {
        (0, _) => 0,
        (n, true) => n + TAG_BYTES as u64,
        (n, false) => n,
    };
    let needed = align_up(
        SlotLayout::new(config.capacity() as u64, geo.align, sealed).end + marks,
        erase,
    );
    let given = sizes[0].min(sizes[1]);
    if given < needed || sizes.iter().any(|s| s % erase != 0) {
        return Err(ConfigError::CheckpointRegionTooSmall { needed, given }.into());
    }
    Ok(true)
}
