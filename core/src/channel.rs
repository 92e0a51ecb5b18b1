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

use crate::checkpoint::{Checkpoints, SlotLayout};
use crate::config::{Config, MAX_SEGMENTS, MIN_SEGMENTS, TXN_WORDS};
use crate::error::{ConfigError, Error};
use crate::latch::Latched;
use crate::log::{payload_matches, read_record_header, Geometry, WordWriter, MAX_WRITE_SIZE};
use crate::log::{read_segment_header, stream_payload};
use crate::mark;
use crate::queue::Queue;
use crate::record::{
    align_up, mark_prefix, Pointer, RecordHeader, RecordKind, SealRecord, SegmentCheck,
    SegmentHeader, COMMIT_PREFIX_BYTES, MARK_PREFIX_BYTES, POINTER_BYTES, RECORD_HEADER_BYTES,
    SEAL_PAYLOAD_BYTES, SEGMENT_FLAG_OPENED, SEGMENT_FLAG_SEALED,
};
use crate::recovery::Recovery;
use crate::seal::{KeyId, KeyProvider, NoKeys, SealerCache, TAG_BYTES};
use crate::sealed_write::{SealedWrite, SegKeys, SegSeal};
use crate::storage::{Region, Storage};

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

const STATE_FREE: u8 = 0;
const STATE_OPEN: u8 = 1;
const STATE_WRITTEN: u8 = 2;
const KIND_NONE: u8 = 0;
const KIND_PUT: u8 = 1;
const KIND_TAKE: u8 = 2;

/// One transaction slot, as kept in `TXN_WORDS` words of channel memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    generation: u32,
    state: u8,
    kind: u8,
    count: u32,
    id: u32,
    /// The write-order id of the slot's commit record once written.
    commit_wid: u64,
}

impl Slot {
    fn load(words: &[u64], s: usize) -> Self {
        let w = &words[s * TXN_WORDS..(s + 1) * TXN_WORDS];
        Slot {
            generation: w[0] as u32,
            state: (w[0] >> 32) as u8,
            kind: (w[0] >> 40) as u8,
            count: w[1] as u32,
            id: (w[1] >> 32) as u32,
            commit_wid: w[2],
        }
    }

    fn store(&self, words: &mut [u64], s: usize) {
        let w = &mut words[s * TXN_WORDS..(s + 1) * TXN_WORDS];
        w[0] = self.generation as u64 | (self.state as u64) << 32 | (self.kind as u64) << 40;
        w[1] = self.count as u64 | (self.id as u64) << 32;
        w[2] = self.commit_wid;
    }
}

/// The kind of write, for the log's space reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteClass {
    /// Adds data (a put): must leave a segment for commit records and one for a restart.
    Produce,
    /// A commit record: may use the commit reserve, never the restart spare. `adds` is true
    /// for a put's commit, which like a put has the storage prepare the segment after a new
    /// one ([`Storage::prepare`]).
    Commit { adds: bool },
}

impl WriteClass {
    /// True for the writes that add data, whose rolls the storage is told of in advance.
    fn adds_data(self) -> bool {
        matches!(
            self,
            WriteClass::Produce | WriteClass::Commit { adds: true }
        )
    }
}

/// What a record's payload is made of.
enum Body<'a> {
    Event(&'a [u8]),
    /// A put commit: the durable mark, the slot's mark if `marked`, then the pending-put
    /// pointers of the transaction slot.
    Pending {
        synced_wid: u64,
        slot: usize,
        count: usize,
        marked: bool,
    },
    /// A take commit: the durable mark, the slot's mark if `marked`, then the queue entries
    /// tagged by the transaction.
    Taken {
        synced_wid: u64,
        tag: u8,
        marked: bool,
    },
}

/// Why an event could not be read for a take.
enum ReadFail<E> {
    Storage(E),
    /// The segment's key is missing or wrong.
    Key(Error<E>),
    Corrupt,
    TooSmall(usize),
    TooLarge(usize),
}

/// Segments whose keys are remembered for reads.
const SEAL_CACHE: usize = 4;

/// A durable, transactional FIFO of events over a [`Storage`].
///
/// `M` is the caller's memory, [`Config::memory_words`] `u64` words: a `&mut [u64]` (a static
/// array on firmware) or a `Vec<u64>` on a server. `K` gives the keys when the log is
/// encrypted ([`Channel::open_with_keys`]); the default, [`NoKeys`], writes plaintext.
pub struct Channel<S: Storage, M, K = NoKeys> {
    /// The storage, with the first failed log write or sync latched (`crate::latch`).
    pub(crate) storage: Latched<S>,
    pub(crate) memory: M,
    pub(crate) config: Config,
    pub(crate) geo: Geometry,
    pub(crate) queue: Queue,
    /// The sequence number of the segment being written.
    pub(crate) seq: u64,
    pub(crate) seg_base_wid: u64,
    /// Where the next record goes, inside the segment being written.
    pub(crate) write_offset: u64,
    pub(crate) next_wid: u64,
    /// Every record with a smaller write-order id is durable: the mark at the last sync.
    synced_wid: u64,
    pub(crate) next_txn_id: u32,
    generation: u32,
    pending_puts: u64,
    /// A lower bound of the oldest segment anything points into.
    min_pinned: u64,
    pub(crate) pins_dirty: bool,
    /// True until this run has opened its first segment.
    pub(crate) restart_pending: bool,
    /// The sequence number the next new segment gets.
    pub(crate) roll_to: u64,
    pub(crate) stats: Stats,
    pub(crate) recovery: Recovery,
    pub(crate) ckpt: Checkpoints,
    pub(crate) keys: K,
    /// The key this run seals with (the provider's active key when the channel opened).
    pub(crate) sealing: Option<KeyId>,
    /// The key and salt of the segment being written, if it is sealed.
    write_seal: Option<SegSeal>,
    seal_cache: [Option<(u64, SegKeys)>; SEAL_CACHE],
    seal_cache_next: usize,
    /// The AES-GCM keys of the segments sealed and opened last.
    pub(crate) sealers: SealerCache,
    /// Keys that opened at least one segment at open: a seal record that fails one of these
    /// was altered, not sealed with another key.
    pub(crate) proven_keys: [Option<KeyId>; 8],
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
        let given = memory.as_ref().len();
        if given < config.memory_words() {
            return Err(ConfigError::MemoryTooSmall {
                needed: config.memory_words(),
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
        if segments > MAX_SEGMENTS {
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
        let geo = Geometry::new(segments, segment_bytes, S::WRITE_SIZE);
        let (tag, seal) = match sealing {
            Some(_) => (TAG_BYTES as u64, geo.record_span(SEAL_PAYLOAD_BYTES as u64)),
            None => (0, 0),
        };
        if geo.first_record + seal + geo.record_span(config.max_payload_bytes() + tag)
            > segment_bytes
        {
            return Err(ConfigError::SegmentTooSmall.into());
        }
        let checkpoints = checkpoint_slots_usable(&storage, &config, &geo, sealing.is_some())?;
        let mut channel = Channel {
            storage: Latched::new(storage),
            memory,
            config,
            geo,
            queue: Queue::new(config.capacity() as usize),
            seq: 0,
            seg_base_wid: 0,
            write_offset: 0,
            next_wid: 0,
            synced_wid: 0,
            next_txn_id: 0,
            generation: 0,
            pending_puts: 0,
            min_pinned: 0,
            pins_dirty: true,
            // Opening writes nothing. This run's first write opens a new segment (flagged
            // OPENED), never appending after the previous run's tail, which may end in a torn
            // write; a word is never programmed twice. A run that writes nothing costs no
            // segment, so a device that loses power over and over while idle never fills its log.
            restart_pending: true,
            roll_to: 0,
            stats: Stats::default(),
            recovery: Recovery::default(),
            ckpt: Checkpoints::new(),
            keys,
            sealing,
            write_seal: None,
            seal_cache: [None; SEAL_CACHE],
            seal_cache_next: 0,
            sealers: SealerCache::default(),
            proven_keys: [None; 8],
        };
        channel.ckpt.enabled = checkpoints;
        // Transaction slots start free whatever the memory held before.
        let (_, _, txns) = split(channel.memory.as_mut(), &config);
        txns.fill(0);
        // So do marks: the table is rebuilt by replay.
        let (table, pending) = mark::split_marks(channel.memory.as_mut(), &config);
        table.fill(0);
        pending.fill(0);
        let replayed = channel.replay()?;
        channel.seq = replayed.newest.unwrap_or(0);
        channel.roll_to = replayed.roll_to;
        channel.refresh_pins();
        if channel.ckpt.enabled && replayed.read_tail {
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
        let (qmem, _, _) = crate::channel::split(self.memory.as_mut(), &self.config);
        if self.queue.tagged(qmem) > 0 {
            return Err(Error::BadTransaction);
        }
        let newest =
            (self.recovery.path != crate::RecoveryPath::New).then_some(self.recovery.last_segment);
        let lost = self.lost_events(newest, crate::recovery::Check::Every, remove, on_lost)?;
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
        let (qmem, _, txns) = split(self.memory.as_mut(), &self.config);
        let open = (0..self.config.max_transactions() as usize)
            .filter(|&s| Slot::load(txns, s).state != STATE_FREE)
            .count() as u16;
        let mut stats = self.stats;
        stats.depth = self.queue.len() as u64;
        stats.in_flight_takes = self.queue.tagged(qmem) as u64;
        stats.pending_puts = self.pending_puts;
        stats.capacity = self.config.capacity();
        stats.open_transactions = open;
        stats.segments = self.geo.segments;
        stats.segments_pinned = self.seq - self.min_pinned + 1;
        stats.newest_segment = self.seq;
        stats.segments_free = self.free_ahead();
        stats.segments_pinned_by_events = self.seq - self.oldest_event_seq() + 1;
        stats.checkpoint_in_progress = self.ckpt.in_progress.is_some();
        stats
    }

    /// Begins a transaction. It becomes a put or a take transaction with its first operation.
    pub fn begin(&mut self) -> Result<Txn, Error<S::Error>> {
        let (_, _, txns) = split(self.memory.as_mut(), &self.config);
        for s in 0..self.config.max_transactions() as usize {
            let slot = Slot::load(txns, s);
            if slot.state == STATE_FREE {
                self.generation = self.generation.wrapping_add(1);
                let fresh = Slot {
                    generation: self.generation,
                    state: STATE_OPEN,
                    kind: KIND_NONE,
                    count: 0,
                    id: self.next_txn_id,
                    commit_wid: 0,
                };
                self.next_txn_id = self.next_txn_id.wrapping_add(1);
                fresh.store(txns, s);
                let ew = self.config.mark_entry_words();
                if ew > 0 {
                    let (_, pending) = mark::split_marks(self.memory.as_mut(), &self.config);
                    mark::clear(mark::entry_mut(pending, ew, s));
                }
                return Ok(Txn {
                    slot: s as u8,
                    generation: self.generation,
                });
            }
        }
        Err(Error::TooManyTransactions)
    }

    /// Puts an event in a put transaction. The event is written to the log now and becomes
    /// visible when the transaction commits.
    pub fn put(&mut self, txn: Txn, event: &[u8]) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        let mut slot = self.open_slot(txn)?;
        if slot.kind == KIND_TAKE {
            return Err(Error::WrongTransactionKind);
        }
        if slot.count >= self.config.transaction_capacity() {
            return Err(Error::TransactionFull);
        }
        if event.len() > self.config.max_event_bytes() as usize {
            return Err(Error::EventTooLarge {
                len: event.len(),
                max: self.config.max_event_bytes(),
            });
        }
        if self.queue.len() as u64 + self.pending_puts >= self.config.capacity() as u64 {
            return Err(Error::ChannelFull);
        }
        let ptr = self.append(
            RecordKind::Put,
            slot.id,
            Body::Event(event),
            event.len() as u32,
            WriteClass::Produce,
        )?;
        let (_, pool, txns) = split(self.memory.as_mut(), &self.config);
        let cap = self.config.transaction_capacity() as usize;
        pool[txn.slot as usize * cap + slot.count as usize] = ptr.to_word();
        slot.count += 1;
        slot.kind = KIND_PUT;
        slot.store(txns, txn.slot as usize);
        self.pending_puts += 1;
        self.stats.puts += 1;
        Ok(())
    }

    /// Takes the next available event into `buf` and returns its length, or `None` if no event
    /// is available. The event leaves the channel when the transaction commits; a rollback (or a
    /// crash before the commit) makes it available again in its place.
    ///
    /// An event whose record fails its checks is never delivered: it is counted in
    /// [`Stats::corrupt_events_skipped`] and leaves the queue with this transaction.
    ///
    /// A transaction that already holds its capacity gets [`Error::TransactionFull`] without a
    /// look at the queue, even when no event is left: a caller that drains the channel in one
    /// transaction as large as the channel must stop at the capacity, not wait for `None`.
    pub fn take(&mut self, txn: Txn, buf: &mut [u8]) -> Result<Option<usize>, Error<S::Error>> {
        Ok(self.take_with_id(txn, buf)?.map(|(n, _)| n))
    }

    /// As [`Channel::take`], and also returns the event's [`EventId`]: the same for the same
    /// event however often it is delivered (after a rollback or a crash), and different for
    /// every event the channel ever holds.
    pub fn take_with_id(
        &mut self,
        txn: Txn,
        buf: &mut [u8],
    ) -> Result<Option<(usize, EventId)>, Error<S::Error>> {
        let mut slot = self.open_slot(txn)?;
        if slot.kind == KIND_PUT {
            return Err(Error::WrongTransactionKind);
        }
        let tag = txn.slot + 1;
        // Bounded: every turn tags one more queue entry, and there are `len` of them.
        loop {
            if slot.count >= self.config.transaction_capacity() {
                return Err(Error::TransactionFull);
            }
            let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
            let Some((index, ptr)) = self.queue.take_next(qmem, tag) else {
                return Ok(None);
            };
            let result = self.read_event(ptr, buf);
            let (qmem, _, txns) = split(self.memory.as_mut(), &self.config);
            match result {
                Ok(n) => {
                    slot.count += 1;
                    slot.kind = KIND_TAKE;
                    slot.store(txns, txn.slot as usize);
                    self.stats.takes += 1;
                    let seq = self.geo.seq_of_slot(ptr.slot, self.seq);
                    return Ok(Some((n, EventId::new(seq, ptr.offset))));
                }
                Err(ReadFail::Corrupt) => {
                    slot.count += 1;
                    slot.kind = KIND_TAKE;
                    slot.store(txns, txn.slot as usize);
                    self.stats.corrupt_events_skipped += 1;
                }
                Err(fail) => {
                    self.queue.untag_at(qmem, index);
                    return Err(match fail {
                        ReadFail::Storage(e) => Error::Storage(e),
                        ReadFail::Key(e) => e,
                        ReadFail::TooSmall(needed) => Error::BufferTooSmall { needed },
                        ReadFail::TooLarge(len) => Error::EventTooLarge {
                            len,
                            max: self.config.max_event_bytes(),
                        },
                        ReadFail::Corrupt => Error::LogicBug("corrupt handled above"),
                    });
                }
            }
        }
    }

    /// Attaches a mark to an open transaction: `bytes` become stream `stream`'s mark when the
    /// transaction commits, in the same record group as its events, and never if it rolls back
    /// or a crash cuts the commit. A later call replaces the transaction's mark. A transaction
    /// with a mark and no event commits the mark alone. See [`Config::with_marks`].
    pub fn set_mark(&mut self, txn: Txn, stream: u16, bytes: &[u8]) -> Result<(), Error<S::Error>> {
        self.open_slot(txn)?;
        if stream >= self.config.marks() || bytes.len() > self.config.mark_bytes() as usize {
            return Err(Error::BadMark);
        }
        let ew = self.config.mark_entry_words();
        let (_, pending) = mark::split_marks(self.memory.as_mut(), &self.config);
        mark::store(
            mark::entry_mut(pending, ew, txn.slot as usize),
            stream,
            bytes,
        );
        Ok(())
    }

    /// Copies stream `stream`'s newest committed mark into `buf` and returns its length, or
    /// `None` if the stream has none (or `buf` is too short: a mark is at most
    /// [`Config::mark_bytes`] long).
    pub fn mark(&self, stream: u16, buf: &mut [u8]) -> Option<usize> {
        if stream >= self.config.marks() {
            return None;
        }
        let ew = self.config.mark_entry_words();
        let (table, _) = mark::split_marks_ref(self.memory.as_ref(), &self.config);
        mark::load(mark::entry(table, ew, stream as usize), buf)
    }

    /// The length of the mark waiting in transaction slot `s`, if any.
    fn pending_mark(&self, s: usize) -> Option<u16> {
        let ew = self.config.mark_entry_words();
        if ew == 0 {
            return None;
        }
        let (_, pending) = mark::split_marks_ref(self.memory.as_ref(), &self.config);
        mark::head(mark::entry(pending, ew, s)).map(|(_, len)| len)
    }

    /// Commits: writes the commit record, syncs, and applies the transaction. When it returns
    /// `Ok` the transaction is durable. A transaction with no operation writes nothing.
    ///
    /// If it fails with [`Error::LogFull`] the transaction stays open: roll it back or retry.
    pub fn commit(&mut self, txn: Txn) -> Result<(), Error<S::Error>> {
        if self.write_commit(txn)? {
            self.sync()?;
            // The commit is durable: a checkpoint that fails now must not make it look failed.
            // Checkpoint failures are counted in `Stats::checkpoint_failures`; the log is intact.
            let _ = self.checkpoint_work(None);
        }
        Ok(())
    }

    /// The first half of a commit, for group commit: writes the commit record without syncing.
    /// Returns false if the transaction was empty and is already finished. The transaction takes
    /// effect at the next [`Channel::sync`], whoever calls it.
    pub fn write_commit(&mut self, txn: Txn) -> Result<bool, Error<S::Error>> {
        let mut slot = self.open_slot(txn)?;
        let marked = self.pending_mark(txn.slot as usize);
        let (_, _, txns) = split(self.memory.as_mut(), &self.config);
        if slot.count == 0 && marked.is_none() {
            Slot::store(&free_slot(), txns, txn.slot as usize);
            return Ok(false);
        }
        self.check_writable()?;
        // The mark rides in the commit record itself, so it takes effect exactly with it.
        let mark_len = marked.map_or(0, |len| MARK_PREFIX_BYTES as u64 + padded(len));
        let len = COMMIT_PREFIX_BYTES as u64 + mark_len + slot.count as u64 * POINTER_BYTES as u64;
        let synced_wid = self.synced_wid;
        let (kind, body) = if slot.kind != KIND_TAKE {
            let pending = Body::Pending {
                synced_wid,
                slot: txn.slot as usize,
                count: slot.count as usize,
                marked: marked.is_some(),
            };
            let kind = match marked {
                Some(_) => RecordKind::MarkedPutCommit,
                None => RecordKind::PutCommit,
            };
            (kind, pending)
        } else {
            let taken = Body::Taken {
                synced_wid,
                tag: txn.slot + 1,
                marked: marked.is_some(),
            };
            let kind = match marked {
                Some(_) => RecordKind::MarkedTakeCommit,
                None => RecordKind::TakeCommit,
            };
            (kind, taken)
        };
        let wid = self.next_wid;
        let class = WriteClass::Commit {
            adds: slot.kind == KIND_PUT,
        };
        self.append(kind, slot.id, body, len as u32, class)?;
        let (_, _, txns) = split(self.memory.as_mut(), &self.config);
        slot.state = STATE_WRITTEN;
        slot.commit_wid = wid;
        slot.store(txns, txn.slot as usize);
        self.stats.commits += 1;
        Ok(true)
    }

    /// True if `txn` is no longer open or waiting for a sync: it committed, rolled back, or the
    /// handle is stale.
    pub fn is_finished(&self, txn: Txn) -> bool {
        let (_, _, txns) = split_ref(self.memory.as_ref(), &self.config);
        let slot = Slot::load(txns, txn.slot as usize);
        slot.generation != txn.generation || slot.state == STATE_FREE
    }

    /// The durability barrier: syncs the log, then applies every commit written before it, in
    /// log order. Does nothing if no commit is waiting.
    pub fn sync(&mut self) -> Result<(), Error<S::Error>> {
        let (_, _, txns) = split(self.memory.as_mut(), &self.config);
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
        SyncMark(self.next_wid)
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
        self.synced_wid = self.synced_wid.max(mark.0);
        // Apply in commit-record order, which is the order replay uses; a commit written after
        // the mark waits for the next sync. Bounded by `max` turns.
        for _ in 0..max {
            let (_, _, txns) = split(self.memory.as_mut(), &self.config);
            let next = (0..max)
                .map(|s| (s, Slot::load(txns, s)))
                .filter(|(_, slot)| slot.state == STATE_WRITTEN && slot.commit_wid < mark.0)
                .min_by_key(|(_, slot)| slot.commit_wid);
            let Some((s, slot)) = next else { break };
            self.apply(s, slot)?;
            self.ckpt.commits_since = self.ckpt.commits_since.saturating_add(1);
        }
        Ok(())
    }

    /// Rolls back an open transaction. Nothing is written: puts no commit lists are ignored by
    /// replay, and taken events become available again in their original places.
    pub fn rollback(&mut self, txn: Txn) -> Result<(), Error<S::Error>> {
        let slot = self.open_slot(txn)?;
        let (qmem, _, txns) = split(self.memory.as_mut(), &self.config);
        match slot.kind {
            KIND_PUT => {
                self.pending_puts -= slot.count as u64;
                self.pins_dirty = true;
            }
            KIND_TAKE => self.queue.untag_all(qmem, txn.slot + 1),
            _ => {}
        }
        free_slot().store(txns, txn.slot as usize);
        self.stats.rollbacks += 1;
        Ok(())
    }

    fn apply(&mut self, s: usize, slot: Slot) -> Result<(), Error<S::Error>> {
        let ew = self.config.mark_entry_words();
        if ew > 0 {
            let (table, pending) = mark::split_marks(self.memory.as_mut(), &self.config);
            let e = mark::entry_mut(pending, ew, s);
            if let Some((stream, _)) = mark::head(e) {
                mark::copy(e, mark::entry_mut(table, ew, stream as usize));
                mark::clear(e);
            }
        }
        let (qmem, pool, txns) = split(self.memory.as_mut(), &self.config);
        let cap = self.config.transaction_capacity() as usize;
        if slot.kind == KIND_PUT {
            for &w in &pool[s * cap..s * cap + slot.count as usize] {
                if !self.queue.push_back(qmem, Pointer::from_word(w)) {
                    return Err(Error::LogicBug("queue overflow despite reserved capacity"));
                }
            }
            self.pending_puts -= slot.count as u64;
        } else {
            let mut watch = self
                .ckpt
                .in_progress
                .as_ref()
                .map(|ip| (ip.cursor, ip.remaining));
            let removed = self.queue.remove_tagged(qmem, s as u8 + 1, watch.as_mut());
            if let (Some(ip), Some((cursor, remaining))) = (self.ckpt.in_progress.as_mut(), watch) {
                ip.cursor = cursor;
                ip.remaining = remaining;
            }
            if removed != slot.count as usize {
                return Err(Error::LogicBug("take commit removed a different count"));
            }
            self.pins_dirty = true;
        }
        free_slot().store(txns, s);
        Ok(())
    }

    fn open_slot(&mut self, txn: Txn) -> Result<Slot, Error<S::Error>> {
        if txn.slot as usize >= self.config.max_transactions() as usize {
            return Err(Error::BadTransaction);
        }
        let (_, _, txns) = split(self.memory.as_mut(), &self.config);
        let slot = Slot::load(txns, txn.slot as usize);
        if slot.generation != txn.generation || slot.state != STATE_OPEN {
            return Err(Error::BadTransaction);
        }
        Ok(slot)
    }

    pub(crate) fn check_writable(&self) -> Result<(), Error<S::Error>> {
        if self.storage.latched() {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Reads the event at `ptr` into `buf`, checking kind, bounds and CRC. A length that cannot
    /// be delivered is reported only once the CRC shows the length is genuine, so a corrupt
    /// header can never wedge the queue.
    fn read_event(&mut self, ptr: Pointer, buf: &mut [u8]) -> Result<usize, ReadFail<S::Error>> {
        let seq = self.geo.seq_of_slot(ptr.slot, self.seq);
        let keys = match self.segment_keys(seq) {
            Ok(k) => k,
            Err(Error::Storage(e)) => return Err(ReadFail::Storage(e)),
            Err(e) => return Err(ReadFail::Key(e)),
        };
        match keys {
            SegKeys::Plain => {}
            SegKeys::Broken => return Err(ReadFail::Corrupt),
            SegKeys::Sealed(seal) => return self.read_sealed_event(ptr, seq, seal, buf),
        }
        let offset = self.geo.record_offset(ptr);
        let header = read_record_header(&mut self.storage, offset).map_err(ReadFail::Storage)?;
        let len = header.len as usize;
        let room = self.geo.segment_bytes - ptr.offset as u64 - RECORD_HEADER_BYTES as u64;
        if header.kind != RecordKind::Put as u8 || len as u64 > room {
            return Err(ReadFail::Corrupt);
        }
        let payload = offset + RECORD_HEADER_BYTES as u64;
        if len > buf.len() || len > self.config.max_event_bytes() as usize {
            if !payload_matches(&mut self.storage, &header, seq, offset)
                .map_err(ReadFail::Storage)?
            {
                return Err(ReadFail::Corrupt);
            }
            return Err(if len > self.config.max_event_bytes() as usize {
                ReadFail::TooLarge(len)
            } else {
                ReadFail::TooSmall(len)
            });
        }
        self.storage
            .read(Region::Log, payload, &mut buf[..len])
            .map_err(ReadFail::Storage)?;
        if !header.check(seq, &buf[..len]) {
            return Err(ReadFail::Corrupt);
        }
        Ok(len)
    }

    /// [`Channel::read_event`] in a sealed segment: the CRC, then the tag, then the plaintext.
    /// Nothing decrypted reaches the caller unless the tag matches.
    fn read_sealed_event(
        &mut self,
        ptr: Pointer,
        seq: u64,
        seal: SegSeal,
        buf: &mut [u8],
    ) -> Result<usize, ReadFail<S::Error>> {
        let offset = self.geo.record_offset(ptr);
        let header = read_record_header(&mut self.storage, offset).map_err(ReadFail::Storage)?;
        let len = header.len as usize;
        let room = self.geo.segment_bytes - ptr.offset as u64 - RECORD_HEADER_BYTES as u64;
        if header.kind != RecordKind::Put as u8 || len as u64 > room || len < TAG_BYTES {
            return Err(ReadFail::Corrupt);
        }
        let Some(key) = self.keys.key(seal.key).copied() else {
            return Err(ReadFail::Key(Error::KeyMissing { key: seal.key }));
        };
        let text = len - TAG_BYTES;
        let payload = offset + RECORD_HEADER_BYTES as u64;
        let mut sealer = seal.record_sealer(&mut self.sealers, &key, seq, &header);
        let mut digest = header.digest(seq);
        let mut tag = [0u8; TAG_BYTES];
        if text > buf.len() || text > self.config.max_event_bytes() as usize {
            // Report the length only once the record proves genuine.
            stream_payload(&mut self.storage, payload, text as u64, |c| {
                digest.update(c);
                sealer.authenticate(c);
            })
            .map_err(ReadFail::Storage)?;
        } else {
            self.storage
                .read(Region::Log, payload, &mut buf[..text])
                .map_err(ReadFail::Storage)?;
            digest.update(&buf[..text]);
            sealer.decrypt(&mut buf[..text]);
        }
        self.storage
            .read(Region::Log, payload + text as u64, &mut tag)
            .map_err(ReadFail::Storage)?;
        digest.update(&tag);
        if digest.finalize() != header.crc {
            let n = text.min(buf.len());
            buf[..n].fill(0);
            return Err(ReadFail::Corrupt);
        }
        if !sealer.verify(&tag) {
            let n = text.min(buf.len());
            buf[..n].fill(0);
            self.stats.authentication_failures += 1;
            return Err(ReadFail::Corrupt);
        }
        if text > self.config.max_event_bytes() as usize {
            return Err(ReadFail::TooLarge(text));
        }
        if text > buf.len() {
            return Err(ReadFail::TooSmall(text));
        }
        Ok(text)
    }

    /// How to read the records of segment `seq`: plaintext, sealed with a key and salt, or not
    /// at all. A sealed segment's seal record is checked against its key the first time.
    pub(crate) fn segment_keys(&mut self, seq: u64) -> Result<SegKeys, Error<S::Error>> {
        if seq == self.seq && !self.restart_pending {
            return Ok(self.write_seal.map_or(SegKeys::Plain, SegKeys::Sealed));
        }
        if let Some((_, keys)) = self.seal_cache.iter().flatten().find(|(s, _)| *s == seq) {
            return Ok(*keys);
        }
        let keys = self.read_segment_keys(seq)?;
        self.seal_cache[self.seal_cache_next] = Some((seq, keys));
        self.seal_cache_next = (self.seal_cache_next + 1) % SEAL_CACHE;
        Ok(keys)
    }

    pub(crate) fn read_segment_keys(&mut self, seq: u64) -> Result<SegKeys, Error<S::Error>> {
        let geo = self.geo;
        let slot = geo.slot_of(seq);
        let header =
            match read_segment_header(&mut self.storage, &geo, slot).map_err(Error::Storage)? {
                SegmentCheck::Valid(h) if h.seq == seq => h,
                _ => return Ok(SegKeys::Broken),
            };
        if header.flags & SEGMENT_FLAG_SEALED == 0 {
            return Ok(SegKeys::Plain);
        }
        let at = geo.segment_start(slot) + geo.first_record;
        let record = read_record_header(&mut self.storage, at).map_err(Error::Storage)?;
        let mut payload = [0u8; SEAL_PAYLOAD_BYTES];
        self.storage
            .read(Region::Log, at + RECORD_HEADER_BYTES as u64, &mut payload)
            .map_err(Error::Storage)?;
        let seal = match SealRecord::decode(&payload) {
            Some(seal)
                if record.kind == RecordKind::Seal as u8
                    && record.len as usize == SEAL_PAYLOAD_BYTES
                    && record.wid_delta == 0
                    && record.check(seq, &payload) =>
            {
                seal
            }
            _ => return Ok(SegKeys::Broken),
        };
        if !seal.algorithm.supported() {
            return Err(Error::UnsupportedAlgorithm {
                algorithm: seal.algorithm,
            });
        }
        let key = self
            .keys
            .key(seal.key)
            .ok_or(Error::KeyMissing { key: seal.key })?;
        if !SealRecord::verify(key, &seal, &header, &record) {
            if self.proven_keys.contains(&Some(seal.key)) {
                // The key opens other segments: this seal record was altered.
                self.recovery.authentication_failures += 1;
                return Ok(SegKeys::Broken);
            }
            return Err(Error::WrongKey { key: seal.key });
        }
        Ok(SegKeys::Sealed(SegSeal {
            key: seal.key,
            algorithm: seal.algorithm,
            salt: seal.salt,
        }))
    }

    /// Appends one record to the log, rolling to a new segment if it does not fit. `len` is
    /// the plaintext length of the body; a sealed record carries a tag after it.
    fn append(
        &mut self,
        kind: RecordKind,
        txn_id: u32,
        body: Body<'_>,
        len: u32,
        class: WriteClass,
    ) -> Result<Pointer, Error<S::Error>> {
        self.check_writable()?;
        let tag = if self.sealing.is_some() {
            TAG_BYTES as u32
        } else {
            0
        };
        let record_len = len + tag;
        let span = self.geo.record_span(record_len as u64);
        // Pair assertion with replay's checks: what we write, replay must accept.
        if len as u64 > self.config.max_payload_bytes() {
            return Err(Error::LogicBug("record longer than the configured maximum"));
        }
        self.make_room(span, class)?;
        let ptr = Pointer {
            slot: self.geo.slot_of(self.seq),
            offset: self.write_offset as u32,
        };
        let wid_delta = (self.next_wid - self.seg_base_wid) as u32;
        let (qmem, pool, _) = split_ref(self.memory.as_ref(), &self.config);
        let (_, pending_marks) = mark::split_marks_ref(self.memory.as_ref(), &self.config);
        let mark_words = self.config.mark_entry_words();
        let cap = self.config.transaction_capacity() as usize;
        let queue = self.queue;
        let emit = |sink: &mut dyn FnMut(&[u8])| match body {
            Body::Event(bytes) => sink(bytes),
            Body::Pending {
                synced_wid,
                slot,
                count,
                marked,
            } => {
                sink(&synced_wid.to_le_bytes());
                if marked {
                    emit_mark(mark::entry(pending_marks, mark_words, slot), sink);
                }
                for &w in &pool[slot * cap..slot * cap + count] {
                    sink(&Pointer::from_word(w).encode());
                }
            }
            Body::Taken {
                synced_wid,
                tag,
                marked,
            } => {
                sink(&synced_wid.to_le_bytes());
                if marked {
                    emit_mark(
                        mark::entry(pending_marks, mark_words, tag as usize - 1),
                        sink,
                    );
                }
                queue.for_each_tagged(qmem, tag, |p| sink(&p.encode()))
            }
        };
        let start = self.geo.record_offset(ptr);
        let outcome = match self.write_seal {
            Some(seal) if tag > 0 => {
                let Some(key) = self.keys.key(seal.key) else {
                    return Err(Error::LogicBug("the sealing key vanished"));
                };
                let header = RecordHeader {
                    crc: 0,
                    kind: kind as u8,
                    len: record_len,
                    wid_delta,
                    txn: txn_id,
                };
                let sealed = SealedWrite {
                    key,
                    seal,
                    seq: self.seq,
                    header,
                    align: self.geo.align,
                    start,
                };
                sealed.write(&mut self.storage, &mut self.sealers, &emit)
            }
            None if tag == 0 => {
                let header = RecordHeader::seal(self.seq, kind, wid_delta, txn_id, len, |d| {
                    emit(&mut |b| d.update(b))
                });
                let mut writer =
                    WordWriter::new(&mut self.storage, Region::Log, self.geo.align, start);
                let mut result = writer.push(&header.encode());
                let mut written = 0u64;
                emit(&mut |b| {
                    written += b.len() as u64;
                    if result.is_ok() {
                        result = writer.push(b);
                    }
                });
                result
                    .and_then(|()| writer.finish())
                    .map(|end| (end, written))
            }
            _ => return Err(Error::LogicBug("segment sealing differs from the run's")),
        };
        match outcome {
            // The latch saw the failure.
            Err(e) => Err(Error::Storage(e)),
            Ok((end, written)) if end != start + span || written != len as u64 => {
                self.storage.latch();
                Err(Error::LogicBug("record length differs from its header"))
            }
            Ok(_) => {
                self.write_offset += span;
                self.next_wid += 1;
                self.ckpt.bytes_since += span;
                Ok(ptr)
            }
        }
    }

    /// Makes sure a record of `span` bytes can be written, keeping the reserve: a put must leave
    /// one free segment for commit records and one for the segment the next run starts; a commit
    /// may use the first but never the second, except to start this run's own segment.
    fn make_room(&mut self, span: u64, class: WriteClass) -> Result<(), Error<S::Error>> {
        let roll = self.restart_pending || self.write_offset + span > self.geo.segment_bytes;
        let needed = match (class, roll, self.restart_pending) {
            (WriteClass::Produce, false, _) => 2,
            (WriteClass::Produce, true, _) => 3,
            (WriteClass::Commit { .. }, false, _) => 0,
            (WriteClass::Commit { .. }, true, false) => 2,
            (WriteClass::Commit { .. }, true, true) => 1,
        };
        if needed > 0 && self.free_ahead() < needed {
            self.refresh_pins();
            if self.free_ahead() < needed && self.checkpoints_pin_the_log() {
                // The older checkpoint's replay position holds the log, not an event: moving
                // both checkpoints to the present frees it. A stall, but only under pressure.
                self.checkpoint()?;
                self.checkpoint()?;
                self.refresh_pins();
            }
            if self.free_ahead() < needed {
                return Err(Error::LogFull);
            }
        }
        if roll {
            if class.adds_data() {
                // Written not to panic (`segments` is never 0), so that with an adapter whose
                // `prepare` does nothing (flash) the whole step compiles away.
                let slot = (self.roll_to + 1)
                    .checked_rem(self.geo.segments)
                    .unwrap_or(0);
                let next = slot.wrapping_mul(self.geo.segment_bytes);
                let end = next.wrapping_add(self.geo.segment_bytes);
                // Lack of space fails this write and latches nothing (`crate::latch`).
                self.storage
                    .prepare(Region::Log, next, end)
                    .map_err(Error::Storage)?;
            }
            let flags = if self.restart_pending {
                SEGMENT_FLAG_OPENED
            } else {
                0
            };
            self.open_segment(self.roll_to, flags)?;
        }
        Ok(())
    }

    /// Segments after the newest one that hold nothing anyone needs.
    fn free_ahead(&self) -> u64 {
        (self.min_pinned + self.geo.segments)
            .saturating_sub(self.seq + 1)
            .min(self.geo.segments - 1)
    }

    /// Recomputes the oldest segment that a queued event or a pending put points into. A scan
    /// of the queue, done only when space runs short and something may have been freed.
    fn refresh_pins(&mut self) {
        if !self.pins_dirty {
            return;
        }
        // A checkpoint replays from its position, so the log from there on stays.
        let replay = self.ckpt.oldest_replay_seq().unwrap_or(self.seq);
        let min = self.oldest_event_seq().min(replay);
        self.min_pinned = min;
        self.pins_dirty = false;
    }

    /// True if a checkpoint, not an event, is what keeps the oldest segments from being reused.
    fn checkpoints_pin_the_log(&self) -> bool {
        self.ckpt.enabled
            && self
                .ckpt
                .oldest_replay_seq()
                .is_some_and(|seq| seq < self.oldest_event_seq())
    }

    /// The oldest segment a queued event or a pending put points into (the newest if none).
    fn oldest_event_seq(&self) -> u64 {
        let (qmem, pool, txns) = split_ref(self.memory.as_ref(), &self.config);
        let (geo, newest) = (self.geo, self.seq);
        let mut min = newest;
        self.queue
            .for_each(qmem, |p| min = min.min(geo.seq_of_slot(p.slot, newest)));
        let cap = self.config.transaction_capacity() as usize;
        for s in 0..self.config.max_transactions() as usize {
            let slot = Slot::load(txns, s);
            if slot.state != STATE_FREE && slot.kind == KIND_PUT {
                for &w in &pool[s * cap..s * cap + slot.count as usize] {
                    min = min.min(geo.seq_of_slot(Pointer::from_word(w).slot, newest));
                }
            }
        }
        min
    }

    /// Erases the slot for segment `seq` and writes its header. The header's erase block is
    /// erased and synced first, so a power cut during the rest of the erase can never leave the
    /// old header in front of half-erased records.
    pub(crate) fn open_segment(&mut self, seq: u64, flags: u16) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        let start = self.geo.segment_start(self.geo.slot_of(seq));
        let first_block = S::ERASE_SIZE as u64;
        let end = start + self.geo.segment_bytes;
        let header = SegmentHeader {
            flags,
            segment_bytes: self.geo.segment_bytes as u32,
            seq,
            base_wid: self.next_wid,
            max_payload: (self.config.max_payload_bytes()
                + if self.sealing.is_some() {
                    TAG_BYTES as u64
                } else {
                    0
                }) as u32,
        };
        let header = SegmentHeader {
            flags: if self.sealing.is_some() {
                header.flags | SEGMENT_FLAG_SEALED
            } else {
                header.flags
            },
            ..header
        };
        let storage = &mut self.storage;
        if let Err(e) = storage.erase(Region::Log, start, start + first_block) {
            // The slot is free and nothing has been written after this erase, so a partial
            // erase leaves what a power cut during it would, which replay handles. When the
            // cause is a full disk (an adapter creating the segment's file), the write that
            // needed the segment fails and the channel stays usable once space is freed (the
            // latch lets a failed erase for lack of space pass); any other failure is latched.
            return Err(Error::Storage(e));
        }
        let result = storage
            .sync(Region::Log)
            .and_then(|()| {
                if end > start + first_block {
                    storage.erase(Region::Log, start + first_block, end)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                let mut w = WordWriter::new(&mut *storage, Region::Log, self.geo.align, start);
                w.push(&header.encode())?;
                w.finish().map(|_| ())
            });
        if let Err(e) = result {
            // Latched (unless an erase failed for lack of space: the segment is still free).
            return Err(Error::Storage(e));
        }
        self.stats.syncs += 1;
        self.synced_wid = self.next_wid;
        self.stats.segments_opened += 1;
        self.restart_pending = false;
        self.roll_to = seq + 1;
        self.seq = seq;
        self.seg_base_wid = self.next_wid;
        self.write_offset = self.geo.first_record;
        self.write_seal = None;
        if let Some(key_id) = self.sealing {
            self.write_seal_record(key_id, &header)?;
        }
        Ok(())
    }

    /// Writes the seal record that opens a sealed segment, with a fresh salt.
    fn write_seal_record(
        &mut self,
        key_id: KeyId,
        segment: &SegmentHeader,
    ) -> Result<(), Error<S::Error>> {
        let Some(key) = self.keys.key(key_id).copied() else {
            return Err(Error::LogicBug("the sealing key vanished"));
        };
        let seal = SegSeal {
            key: key_id,
            algorithm: self.keys.algorithm(),
            salt: self.keys.fresh_salt(),
        };
        let mut record = RecordHeader {
            crc: 0,
            kind: RecordKind::Seal as u8,
            len: SEAL_PAYLOAD_BYTES as u32,
            wid_delta: 0,
            txn: 0,
        };
        let mut payload = SealRecord {
            key: key_id,
            algorithm: seal.algorithm,
            salt: seal.salt,
            tag: [0; TAG_BYTES],
        };
        payload.tag = payload.tag_for(&key, segment, &record);
        let payload = payload.encode();
        let mut digest = record.digest(segment.seq);
        digest.update(&payload);
        record.crc = digest.finalize();
        let start = self.geo.segment_start(self.geo.slot_of(segment.seq)) + self.write_offset;
        let mut w = WordWriter::new(&mut self.storage, Region::Log, self.geo.align, start);
        let written = w
            .push(&record.encode())
            .and_then(|()| w.push(&payload))
            .and_then(|()| w.finish());
        if let Err(e) = written {
            // Latched.
            return Err(Error::Storage(e));
        }
        self.write_offset += self.geo.record_span(SEAL_PAYLOAD_BYTES as u64);
        self.next_wid += 1;
        self.write_seal = Some(seal);
        Ok(())
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

fn free_slot() -> Slot {
    Slot {
        generation: 0,
        state: STATE_FREE,
        kind: KIND_NONE,
        count: 0,
        id: 0,
        commit_wid: 0,
    }
}

/// A mark's length padded to whole words, as commit records and checkpoints store it.
pub(crate) const fn padded(len: u16) -> u64 {
    (len as u64).next_multiple_of(8)
}

/// Hands a mark entry to `sink` as a commit record carries it: the prefix, then the bytes
/// padded with zeros to whole words.
pub(crate) fn emit_mark(e: &[u64], sink: &mut dyn FnMut(&[u8])) {
    let Some((stream, len)) = mark::head(e) else {
        return;
    };
    sink(&mark_prefix(stream, len));
    let mut left = padded(len) as usize;
    mark::for_each_piece(e, |piece| {
        let mut b = [0u8; 8];
        b[..piece.len()].copy_from_slice(piece);
        sink(&b);
        left -= 8;
    });
    debug_assert_eq!(left, 0);
}

/// Splits the caller's memory into the queue ring, the pending-put pool and the slot table.
pub(crate) fn split<'m>(
    mem: &'m mut [u64],
    config: &Config,
) -> (&'m mut [u64], &'m mut [u64], &'m mut [u64]) {
    let q = config.capacity() as usize;
    let p = config.max_transactions() as usize * config.transaction_capacity() as usize;
    let t = config.max_transactions() as usize * TXN_WORDS;
    let (queue, rest) = mem.split_at_mut(q);
    let (pool, rest) = rest.split_at_mut(p);
    (queue, pool, &mut rest[..t])
}

pub(crate) fn split_ref<'m>(mem: &'m [u64], config: &Config) -> (&'m [u64], &'m [u64], &'m [u64]) {
    let q = config.capacity() as usize;
    let p = config.max_transactions() as usize * config.transaction_capacity() as usize;
    let t = config.max_transactions() as usize * TXN_WORDS;
    (&mem[..q], &mem[q..q + p], &mem[q + p..q + p + t])
}
