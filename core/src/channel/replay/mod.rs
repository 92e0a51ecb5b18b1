//! Recovery at open, filling in its report (`crate::Recovery`): it loads the newest usable
//! checkpoint (or none), checks the keys of sealed segments, replays the log from the
//! checkpoint's position (or all of it), and checks that the queued events' bytes can still be
//! read.
//!
//! Replay reads every segment header, finds the newest segment, walks back to the oldest
//! segment of the unbroken run that ends there, and replays records in write order from the
//! checkpoint's position (the oldest segment's start without one):
//!
//! - `Put`: counted, nothing else (a put counts only once a commit lists it);
//! - `PutCommit`: its pointers join the queue's tail. If a put it lists did not survive, replay
//!   looks for proof that the commit was acknowledged (a later record of the same run whose
//!   durable mark is past it, or a later segment of the same run, whose opening synced): with
//!   proof only the damaged events are dropped (media decay); without it the commit was in
//!   flight at the power cut and is dropped whole;
//! - `TakeCommit`: its pointers leave the queue.
//!
//! A record that fails its checks ends its segment, unless the record right after it is valid
//! and has the next write-order id, in which case only that record is skipped. The segment a run
//! opened at its start bounds the previous run: records with a write-order id at or past its
//! `base_wid` were never acknowledged and are ignored, whatever later reads of them return.
//! Over a storage that can be rewritten, a run goes on in the newest segment instead when its
//! walk was clean; replay returns where (`Tail`), and the run clears what lies beyond before
//! it writes there (docs/format.md, "Opening the channel").
//!
//! **Invariant:** replay needs no memory beyond the queue and a fixed stack buffer, and every
//! loop in it is bounded by the geometry of the log.
//!
//! The parts: this file finds the run of segments and drives the replay; `slots` loads a
//! checkpoint; `records` walks and applies records; `checks` checks headers, keys, payloads and
//! the queued events' bytes.

use crate::channel::Channel;
use crate::checkpoint::{
    Complete, Found, ReplayFrom, SlotLayout, Started, COMPLETE_BYTES, SLOTS, STARTED_BYTES,
};
use crate::error::Error;
use crate::log::{payload_matches, read_record_header, stream_payload, Geometry};
use crate::mark::{self, padded};
use crate::memory::Parts;
use crate::queue::Queue;
use crate::queue::TAG_REPLAY;
use crate::record::{
    compact, decode_mark_prefix, Pointer, RecordHeader, RecordKind, SegmentHeader,
    COMMIT_PREFIX_BYTES, CRC32C, MARK_PREFIX_BYTES, POINTER_BYTES, RECORD_HEADER_BYTES,
    SEGMENT_FLAG_OPENED, SEGMENT_FLAG_SEALED,
};
use crate::recovery::RecoveryPath;
use crate::seal::{KeyId, KeyProvider, Sealer, TAG_BYTES};
use crate::sealed_write::SegKeys;
use crate::storage::{Region, Storage};
use crate::walk::{self, HeaderRead};

mod checks;
mod records;
mod slots;

/// What replay leaves for the channel to go on from.
pub(crate) struct Replayed {
    /// The newest segment on the medium, if any.
    pub newest: Option<u64>,
    /// The sequence number this run's first segment gets.
    pub roll_to: u64,
    /// True if the log held segments past the checkpoint used (or no checkpoint was used), so
    /// replay read a tail the previous run may have left torn.
    pub read_tail: bool,
    /// The write-order id the next record gets: past every id the log or the checkpoint used.
    pub next_wid: u64,
    /// The id the next transaction gets: past every id the log or the checkpoint used.
    pub next_txn_id: u32,
    /// Where this run may continue writing in the newest segment, if it may (see
    /// [`Storage::rewritable`]).
    pub tail: Option<Tail>,
}

/// The end of a clean walk of the newest segment: a run may go on writing there, after it has
/// cleared what lies beyond (`Channel::clear_tail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The offset of the first byte after the last intact record.
    pub offset: u64,
    /// The write-order id the next record gets, less the segment's `base_wid`.
    pub records: u64,
    /// The write-order id the next record gets.
    pub wid: u64,
    /// The salt the segment's record CRCs bind ([`crate::record::SegmentHeader::crc_salt`]).
    pub salt: u32,
}

/// How closely [`Channel::lost_events`] reads the queued events' records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The highest record of each run of queued events in one segment, and the whole run only
    /// if that one is damaged: what every open can afford.
    Runs,
    /// Every queued record, in full.
    Every,
}

/// What streaming a record's payload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Integrity {
    Intact,
    /// The CRC fails: torn or decayed.
    Damaged,
    /// The CRC holds but the tag does not: altered on purpose.
    Forged,
}

/// Where a record lies in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    seq: u64,
    offset: u64,
}

/// Replay's working state.
struct Replay {
    /// The first place where something was found damaged in the current run; puts at or after
    /// it are re-checked before a commit that lists them is applied.
    suspect: Option<Position>,
    /// Where the last segment's walk stopped early, if it did.
    last_break: Option<Position>,
    /// Write-order ids at or past this one in the current segment were never acknowledged.
    limit: u64,
    /// The segment after the current one belongs to the same run: its opening synced everything
    /// before it.
    run_continues: bool,
    /// Past every transaction id seen so far (the checkpoint's, then each record's).
    next_txn_id: u32,
}

/// What a replay of the log's segments found.
struct Walked {
    /// The write-order id after the last record read (`None` if no segment was read).
    next_wid: Option<u64>,
    /// The transaction id after the last one seen.
    next_txn_id: u32,
    /// The newest segment's tail, if its walk was clean.
    tail: Option<Tail>,
}

/// Where a walk over a segment ended.
struct WalkEnd {
    /// Write-order ids used in the segment (records read, skipped ones included).
    records: u64,
    /// The offset of the record that stopped the walk, if one did before the segment's end.
    broke_at: Option<u64>,
}

/// Pointers handled per read of a commit record's payload.
const POINTERS_PER_CHUNK: usize = 32;

/// What a walk hands its visitor at each record: its offset, its index in the segment, and its
/// header, or `None` for a damaged record that was skipped. The visitor returns false to stop.
type Visit<'v, T, E> =
    dyn FnMut(&mut T, u64, u64, Option<&RecordHeader>) -> Result<bool, Error<E>> + 'v;

/// What a compact commit's pointers are handed to: the channel, the pointer, and whether it
/// points into a replayed segment.
type EachPointer<'v, T, E> = dyn FnMut(&mut T, Pointer, bool) -> Result<(), Error<E>> + 'v;

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Rebuilds the queue: from the newest usable checkpoint plus the log after it, else by
    /// replaying the whole retained log.
    pub(crate) fn replay(&mut self) -> Result<Replayed, Error<S::Error>> {
        let geo = self.geo;
        let mut newest: Option<u64> = None;
        for slot in 0..geo.segments as u32 {
            if let Some(h) = self.valid_header(slot)? {
                newest = Some(newest.map_or(h.seq, |n: u64| n.max(h.seq)));
            }
        }
        // Walk back over the unbroken run of segments that ends at the newest one.
        let mut start = newest.unwrap_or(0);
        if let Some(newest) = newest {
            while start > 0 && newest - start + 1 < geo.segments {
                match self.valid_header(geo.slot_of(start - 1))? {
                    Some(h) if h.seq == start - 1 => start -= 1,
                    _ => break,
                }
            }
        }
        self.recovery.first_segment = start;
        let loaded = if self.ckpt.enabled() {
            self.load_checkpoint(newest, start)?
        } else {
            None
        };
        let (from, next_txn_id) = match loaded {
            Some((from, next_txn_id)) => (Some(from), next_txn_id),
            None => (None, 0),
        };
        let Some(newest) = newest else {
            // No log at all: a new channel, or a checkpoint of an empty log.
            if from.is_none() {
                self.recovery.path = RecoveryPath::New;
            }
            self.lost_events(None, Check::Runs, false, &mut |_| {})?;
            return Ok(Replayed {
                newest: None,
                roll_to: from.map_or(0, |f| f.seq),
                read_tail: false,
                next_wid: from.map_or(0, |f| f.wid),
                next_txn_id,
                tail: None,
            });
        };
        let from = match from {
            Some(from) => from,
            None => {
                self.recovery.path = RecoveryPath::FullReplay;
                ReplayFrom {
                    seq: start,
                    offset: geo.first_record() as u32,
                    wid: 0,
                }
            }
        };
        let read_tail = from.seq <= newest;
        let (mut next_wid, mut next_txn_id) = (from.wid, next_txn_id);
        let mut tail = None;
        // Keys are checked for the segments replay reads, then for older ones that queued
        // events still point into; segments nothing needs may name a key already retired.
        if read_tail {
            self.check_keys(from.seq.max(start), newest)?;
            let walked = self.replay_segments(from, newest, next_txn_id)?;
            next_wid = next_wid.max(walked.next_wid.unwrap_or(0));
            next_txn_id = walked.next_txn_id;
            // Only a plaintext run over a storage that can be rewritten goes on in a segment
            // another run wrote (a sealed segment's nonces must never repeat).
            if self.storage.rewritable() && self.sealing.is_none() {
                tail = walked.tail;
            }
        }
        let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
        let mut oldest = from.seq.min(newest + 1);
        self.queue.for_each(qmem, |p| {
            oldest = oldest.min(geo.seq_of_slot(p.slot, newest))
        });
        if oldest < from.seq.min(newest + 1) {
            self.check_keys(oldest.max(start), from.seq.min(newest + 1) - 1)?;
        }
        self.lost_events(Some(newest), Check::Runs, false, &mut |_| {})?;
        let r = &mut self.recovery;
        r.last_segment = newest;
        r.events = self.queue.len() as u64;
        r.uncommitted_puts = r
            .puts
            .saturating_sub(r.events_committed + r.corrupt_events_dropped);
        Ok(Replayed {
            newest: Some(newest),
            roll_to: (newest + 1).max(from.seq),
            read_tail,
            next_wid,
            next_txn_id,
            tail,
        })
    }

    /// Replays segments `from.seq..=newest`, the first from `from`'s offset, with transaction
    /// ids from `next_txn_id` on. The newest segment's tail is returned if its walk was clean:
    /// it reached the newest segment and stopped at a record that is not there, with no damage
    /// seen since the run that wrote it began, in a plaintext segment.
    fn replay_segments(
        &mut self,
        from: ReplayFrom,
        newest: u64,
        next_txn_id: u32,
    ) -> Result<Walked, Error<S::Error>> {
        let geo = self.geo;
        let mut state = Replay {
            suspect: None,
            last_break: None,
            limit: u64::MAX,
            run_continues: false,
            next_txn_id,
        };
        let mut next_wid: Option<u64> = None;
        let mut tail = None;
        let mut current = self.valid_header(geo.slot_of(from.seq))?;
        for seq in from.seq..=newest {
            let Some(header) = current.filter(|h| h.seq == seq) else {
                break;
            };
            let following = if seq < newest {
                self.valid_header(geo.slot_of(seq + 1))?
                    .filter(|h| h.seq == seq + 1)
            } else {
                None
            };
            if header.flags & SEGMENT_FLAG_OPENED != 0 {
                // A new run: nothing it wrote can depend on damage seen in earlier runs.
                state.suspect = None;
            }
            if let Some(expected) = next_wid {
                if header.base_wid > expected {
                    // Records the previous segment held are unreadable: media damage.
                    self.recovery.records_lost += header.base_wid - expected;
                    let at = state.last_break.unwrap_or(Position { seq, offset: 0 });
                    state.suspect.get_or_insert(at);
                }
            }
            state.limit = following.map_or(u64::MAX, |h| h.base_wid);
            state.run_continues = following.is_some_and(|h| h.flags & SEGMENT_FLAG_OPENED == 0);
            let first = if seq == from.seq && from.wid >= header.base_wid {
                (from.offset as u64, from.wid - header.base_wid)
            } else {
                (geo.first_record(), 0)
            };
            let end = self.walk(
                &header,
                first,
                state.limit,
                &mut |ch, offset, index, rec| {
                    match rec {
                        Some(rec) => ch.replay_record(&header, offset, index, rec, &mut state)?,
                        None => {
                            ch.recovery.corrupt_records_skipped += 1;
                            state.suspect.get_or_insert(Position { seq, offset });
                        }
                    }
                    Ok(true)
                },
            )?;
            next_wid = Some(header.base_wid + end.records);
            state.last_break = end.broke_at.map(|offset| Position { seq, offset });
            if seq == newest && state.suspect.is_none() && header.flags & SEGMENT_FLAG_SEALED == 0 {
                tail = end.broke_at.map(|offset| Tail {
                    offset,
                    records: end.records,
                    wid: header.base_wid + end.records,
                    salt: header.crc_salt(),
                });
            }
            self.recovery.segments_replayed += 1;
            current = following;
        }
        Ok(Walked {
            next_wid,
            next_txn_id: state.next_txn_id,
            tail,
        })
    }
}
