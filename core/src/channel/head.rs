//! The log's head: the segment being written, where its next record goes, the write-order ids
//! given and made durable, the segment this run opens next, and the oldest segment anything
//! may still point into (which bounds the room ahead). Its state is private: the log writer
//! (`append`) moves it as records and segments are written, the sync as they become durable,
//! and everyone else only reads it.

use super::replay::Tail;
use crate::checkpoint::ReplayFrom;
use crate::log::Geometry;
use crate::record::Pointer;
use crate::sealed_write::{SegKeys, SegSeal};

#[derive(Debug, Clone, Copy)]
pub(super) struct LogHead {
    /// The sequence number of the segment being written (the newest on the medium before this
    /// run opens its first).
    seq: u64,
    /// Records written in the segment so far: the next one's write-order id less the
    /// segment's first (what a record header carries).
    in_segment: u32,
    /// Where the next record goes, inside the segment being written (a segment's length fits
    /// 32 bits, as its header records it).
    offset: u32,
    next_wid: u64,
    /// Every record with a smaller write-order id is durable: the mark at the last sync.
    synced_wid: u64,
    /// The sequence number the next new segment gets.
    roll_to: u64,
    /// True until this run has written: opened its first segment, or cleared the newest
    /// segment's tail to go on there.
    restart_pending: bool,
    /// True if this run's first write goes on in the newest segment at `offset`, once the
    /// previous run's tail beyond it is cleared (`Storage::rewritable`).
    resumable: bool,
    /// The salt of the segment being written, which every record's CRC binds
    /// (`SegmentHeader::crc_salt`).
    salt: u32,
    /// The key and salt of the segment being written, if it is sealed.
    seal: Option<SegSeal>,
    /// A lower bound of the oldest segment a queued event, a pending put or a checkpoint
    /// points into: the segments from the head up to it cannot be reused.
    oldest_pinned: u64,
    /// True when something may have let go of a segment since `oldest_pinned` was computed
    /// (a scan of the queue, done only when space runs short).
    pins_stale: bool,
}

impl LogHead {
    /// The head replay leaves: `newest` is the newest segment on the medium (0 if none), and
    /// this run's first write opens segment `roll_to` with write-order id `next_wid`, or, with
    /// a `tail`, goes on in the newest segment there.
    ///
    /// Opening writes nothing. Without a tail, the run's first write opens a new segment
    /// (flagged OPENED), never appending after the previous run's tail, which may end in a
    /// torn write: a word is never programmed twice. A run that writes nothing costs no
    /// segment, so a device that loses power over and over while idle never fills its log.
    pub(super) fn after_replay(
        newest: u64,
        roll_to: u64,
        next_wid: u64,
        tail: Option<Tail>,
    ) -> Self {
        let tail = tail.filter(|t| t.wid == next_wid);
        LogHead {
            seq: newest,
            in_segment: tail.map_or(0, |t| t.records as u32),
            offset: tail.map_or(0, |t| t.offset as u32),
            next_wid,
            synced_wid: 0,
            roll_to,
            restart_pending: true,
            resumable: tail.is_some(),
            salt: tail.map_or(0, |t| t.salt),
            seal: None,
            oldest_pinned: 0,
            pins_stale: true,
        }
    }

    /// The sequence number of the newest segment.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// The write-order id the next record gets.
    pub(super) fn next_wid(&self) -> u64 {
        self.next_wid
    }

    /// Every record with a smaller write-order id is durable.
    pub(super) fn synced_wid(&self) -> u64 {
        self.synced_wid
    }

    /// True until this run has written: opened its first segment, or gone on in the newest.
    pub(super) fn restart_pending(&self) -> bool {
        self.restart_pending
    }

    /// The sequence number the next new segment gets.
    pub(super) fn next_segment(&self) -> u64 {
        self.roll_to
    }

    /// The seal of the segment being written.
    pub(super) fn seal(&self) -> Option<SegSeal> {
        self.seal
    }

    /// What the record CRCs of the segment being written bind (`SegmentHeader::binding`).
    pub(super) fn binding(&self) -> u64 {
        crate::record::binding(self.seq, self.salt)
    }

    /// How segment `seq` is to be read, if it is the one this run is writing (`None`
    /// otherwise: its header and seal record must be read).
    pub(super) fn writing(&self, seq: u64) -> Option<SegKeys> {
        (seq == self.seq && !self.restart_pending).then_some(match self.seal {
            Some(seal) => SegKeys::Sealed(seal),
            None => SegKeys::Plain { salt: self.salt },
        })
    }

    /// True if a record of `span` bytes needs a new segment first.
    pub(super) fn must_roll(&self, span: u64, geo: &Geometry) -> bool {
        (self.restart_pending && !self.resumable) || self.offset as u64 + span > geo.segment_bytes
    }

    /// Where this run goes on in the newest segment, if its first write is still to come and
    /// it may: the tail from there on must be cleared first.
    pub(super) fn tail_to_clear(&self) -> Option<u64> {
        (self.restart_pending && self.resumable).then_some(self.offset as u64)
    }

    /// The tail was cleared and synced: this run writes on from the head, and every record
    /// before it is durable.
    pub(super) fn resumed(&mut self) {
        self.restart_pending = false;
        self.resumable = false;
        self.synced_wid = self.next_wid;
    }

    /// Where the next record goes.
    pub(super) fn next_pointer(&self, geo: &Geometry) -> Pointer {
        Pointer {
            slot: geo.slot_of(self.seq),
            offset: self.offset,
        }
    }

    /// The next record's write-order id, relative to its segment's first.
    pub(super) fn wid_delta(&self) -> u32 {
        self.in_segment
    }

    /// Where a checkpoint taken now replays from: the next record, or the start of the segment
    /// this run opens first if it has written nothing and goes on in no segment.
    pub(super) fn replay_from(&self, geo: &Geometry) -> ReplayFrom {
        let (seq, offset) = if self.restart_pending && !self.resumable {
            (self.roll_to, geo.first_record() as u32)
        } else {
            (self.seq, self.offset)
        };
        ReplayFrom {
            seq,
            offset,
            wid: self.next_wid,
        }
    }

    /// A record of `span` bytes was written at [`LogHead::next_pointer`].
    pub(super) fn wrote(&mut self, span: u64) {
        self.offset += span as u32;
        self.next_wid += 1;
        self.in_segment += 1;
    }

    /// Segment `seq`, whose records' CRCs bind `salt`, was opened (its header written after the
    /// erase was synced): records go after its header, and every record before it is durable.
    pub(super) fn opened(&mut self, seq: u64, salt: u32, geo: &Geometry) {
        self.synced_wid = self.next_wid;
        self.restart_pending = false;
        self.resumable = false;
        self.roll_to = seq + 1;
        self.seq = seq;
        self.salt = salt;
        self.in_segment = 0;
        self.offset = geo.first_record() as u32;
        self.seal = None;
    }

    /// The segment being written is sealed with `seal` (its seal record was written).
    pub(super) fn sealed(&mut self, seal: SegSeal) {
        self.seal = Some(seal);
    }

    /// Segments after the newest that hold nothing anyone needs.
    pub(super) fn free_ahead(&self, geo: &Geometry) -> u64 {
        (self.oldest_pinned + geo.segments)
            .saturating_sub(self.seq + 1)
            .min(geo.segments - 1)
    }

    /// The oldest pinned segment, as last computed.
    pub(super) fn oldest_pinned(&self) -> u64 {
        self.oldest_pinned
    }

    /// True if the pins must be computed again before space is judged short.
    pub(super) fn pins_stale(&self) -> bool {
        self.pins_stale
    }

    /// The oldest segment anything points into is `seq` (just computed).
    pub(super) fn pinned_from(&mut self, seq: u64) {
        self.oldest_pinned = seq;
        self.pins_stale = false;
    }

    /// The segments to hand back to the storage: those older than the oldest pinned one,
    /// except any whose slot the log has rolled into again or made ready for its next segment
    /// (`Storage::prepare`): segment `seq`'s slot is next used by segment `seq + segments`,
    /// and the log uses slots up to the one of `roll_to` (made ready for the segment after the
    /// one being written), with one more kept back. At most a ring's worth; segments handed
    /// back before are in it again (a release is idempotent), which costs no state.
    pub(super) fn releasable(&self, geo: &Geometry) -> core::ops::Range<u64> {
        let floor = (self.roll_to + 2).saturating_sub(geo.segments);
        floor..self.oldest_pinned.max(floor)
    }

    /// Something that pinned a segment let go of it.
    pub(super) fn loosened(&mut self) {
        self.pins_stale = true;
    }

    /// A sync covered every record before write-order id `mark`.
    pub(super) fn synced(&mut self, mark: u64) {
        self.synced_wid = self.synced_wid.max(mark);
    }
}
