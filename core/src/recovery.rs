//! Recovery, and the report of what it found ([`Recovery`]): it loads the newest usable
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
//!
//! **Invariant:** replay needs no memory beyond the queue and a fixed stack buffer, and every
//! loop in it is bounded by the geometry of the log.

use crate::channel::{padded, split, Channel};
use crate::checkpoint::{
    Complete, Found, ReplayFrom, SlotLayout, Started, COMPLETE_BYTES, SLOTS, STARTED_BYTES,
};
use crate::error::Error;
use crate::log::{payload_matches, read_record_header, stream_payload, Geometry};
use crate::mark::{self, split_marks};
use crate::queue::Queue;
use crate::queue::TAG_REPLAY;
use crate::record::{
    decode_mark_prefix, Pointer, RecordHeader, RecordKind, SegmentHeader, COMMIT_PREFIX_BYTES,
    CRC32C, MARK_PREFIX_BYTES, POINTER_BYTES, RECORD_HEADER_BYTES, SEGMENT_FLAG_OPENED,
};
use crate::seal::{KeyProvider, Sealer, TAG_BYTES};
use crate::sealed_write::SegKeys;
use crate::storage::{Region, Storage};
use crate::walk::{self, HeaderRead};

/// How an open rebuilt the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RecoveryPath {
    /// The log was empty: a new channel.
    #[default]
    New,
    /// The newest checkpoint, then the log after it.
    Checkpoint,
    /// The newest checkpoint was bad or unfinished: the previous one (the backup), then the log
    /// after it.
    Backup,
    /// No checkpoint could be used: every retained segment of the log was replayed.
    FullReplay,
}

impl RecoveryPath {
    /// The path's short name, as reports print it: `new`, `checkpoint`, `backup`, `replay`.
    pub const fn name(self) -> &'static str {
        match self {
            RecoveryPath::New => "new",
            RecoveryPath::Checkpoint => "checkpoint",
            RecoveryPath::Backup => "backup",
            RecoveryPath::FullReplay => "replay",
        }
    }
}

/// What replay leaves for the channel to go on from.
pub(crate) struct Replayed {
    /// The newest segment on the medium, if any.
    pub newest: Option<u64>,
    /// The sequence number this run's first segment gets.
    pub roll_to: u64,
    /// True if the log held segments past the checkpoint used (or no checkpoint was used), so
    /// replay read a tail the previous run may have left torn.
    pub read_tail: bool,
}

/// What reading a checkpoint slot found.
enum SlotRead {
    Valid(Found),
    /// A started mark, but no matching complete mark or entries that check out.
    Incomplete(u64),
    Invalid,
}

/// What recovery found and did, with counters like Flume's replay report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Recovery {
    /// The path taken.
    pub path: RecoveryPath,
    /// Segments replayed.
    pub segments_replayed: u64,
    /// Valid records read.
    pub records_read: u64,
    /// `Put` records read.
    pub puts: u64,
    /// `PutCommit` records applied.
    pub put_commits: u64,
    /// `TakeCommit` records applied.
    pub take_commits: u64,
    /// Events added to the queue by put commits.
    pub events_committed: u64,
    /// Events removed from the queue by take commits.
    pub events_taken: u64,
    /// Put records no commit listed: rolled back, or still open at the crash.
    pub uncommitted_puts: u64,
    /// Put commits dropped because a put they list did not survive: they were in flight.
    pub torn_commits_dropped: u64,
    /// Events of acknowledged commits whose put record was damaged on the medium: lost to media
    /// decay, never delivered.
    pub corrupt_events_dropped: u64,
    /// Damaged records skipped in the middle of a segment (the next record was intact).
    pub corrupt_records_skipped: u64,
    /// Records lost between two segments: the write-order ids jump. Only media damage causes it.
    pub records_lost: u64,
    /// Pointers in take commits that matched no queued event (their puts were reclaimed).
    pub unmatched_takes: u64,
    /// Marks that replay applied (with their commits).
    pub marks_applied: u64,
    /// Marks loaded from the checkpoint used.
    pub checkpoint_marks: u64,
    /// Events in the queue after recovery.
    pub events: u64,
    /// The number of the checkpoint used (0 if none).
    pub checkpoint: u64,
    /// Events the checkpoint held.
    pub checkpoint_events: u64,
    /// The oldest segment still in the log, and the newest.
    pub first_segment: u64,
    /// See `first_segment`.
    pub last_segment: u64,
    /// True if the open wrote a checkpoint to make this recovery's verdict final (see
    /// [`Channel::open`](crate::Channel::open)).
    pub checkpointed: bool,
    /// Sealed records, seal records and checkpoints whose CRC held but whose authentication
    /// tag did not: altered on purpose. Each is treated as damaged.
    pub authentication_failures: u64,
    /// Segments of the log that are sealed (encrypted).
    pub sealed_segments: u64,
    /// Queued events whose bytes cannot be read: their segment is gone (its slot holds no valid
    /// segment header, or the header of another segment: a log file deleted, replaced, or
    /// damaged at its start), or their put record is damaged. An open reads the highest queued
    /// record of each run of queued events in a segment (so a log file cut short or zeroed from
    /// some point on is found), and the rest of a run only when that one is damaged;
    /// [`Channel::check_queued_events`](crate::Channel::check_queued_events) reads every one.
    /// See [`Channel::drop_lost_events`](crate::Channel::drop_lost_events).
    pub events_in_lost_segments: u64,
    /// The slot of the first such segment (meaningful when `events_in_lost_segments` > 0).
    pub first_lost_slot: u32,
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
        let from = if self.ckpt.enabled {
            self.load_checkpoint(newest, start)?
        } else {
            None
        };
        let Some(newest) = newest else {
            // No log at all: a new channel, or a checkpoint of an empty log.
            if from.is_none() {
                self.recovery.path = RecoveryPath::New;
            }
            self.lost_events(None, Check::Runs, false, &mut |_| {})?;
            self.next_wid = from.map_or(0, |f| f.wid);
            return Ok(Replayed {
                newest: None,
                roll_to: from.map_or(0, |f| f.seq),
                read_tail: false,
            });
        };
        let from = match from {
            Some(from) => from,
            None => {
                self.recovery.path = RecoveryPath::FullReplay;
                ReplayFrom {
                    seq: start,
                    offset: geo.first_record as u32,
                    wid: 0,
                }
            }
        };
        self.next_wid = from.wid;
        let read_tail = from.seq <= newest;
        // Keys are checked for the segments replay reads, then for older ones that queued
        // events still point into; segments nothing needs may name a key already retired.
        if read_tail {
            self.check_keys(from.seq.max(start), newest)?;
            self.replay_segments(from, newest)?;
        }
        let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
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
        })
    }

    /// Replays segments `from.seq..=newest`, the first from `from`'s offset.
    fn replay_segments(&mut self, from: ReplayFrom, newest: u64) -> Result<(), Error<S::Error>> {
        let geo = self.geo;
        let mut state = Replay {
            suspect: None,
            last_break: None,
            limit: u64::MAX,
            run_continues: false,
        };
        let mut next_wid: Option<u64> = None;
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
                (geo.first_record, 0)
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
            self.recovery.segments_replayed += 1;
            current = following;
        }
        if let Some(w) = next_wid {
            self.next_wid = self.next_wid.max(w);
        }
        Ok(())
    }

    /// Loads the newest usable checkpoint into the queue and returns where replay resumes, or
    /// `None` if no checkpoint can be used (replay then starts at the oldest segment).
    fn load_checkpoint(
        &mut self,
        newest: Option<u64>,
        start: u64,
    ) -> Result<Option<ReplayFrom>, Error<S::Error>> {
        let mut found = [None, None];
        let mut newest_started = 0;
        for (i, region) in SLOTS.into_iter().enumerate() {
            match self.read_slot(region)? {
                SlotRead::Valid(f) => {
                    newest_started = newest_started.max(f.started.ckpt_seq);
                    found[i] = Some(f);
                }
                SlotRead::Incomplete(seq) => newest_started = newest_started.max(seq),
                SlotRead::Invalid => {}
            }
        }
        self.ckpt.next_seq = newest_started + 1;
        // Newest first; an unusable one is left to be overwritten first.
        let mut order = [0usize, 1];
        if found[1].map(|f| f.started.ckpt_seq) > found[0].map(|f| f.started.ckpt_seq) {
            order = [1, 0];
        }
        for i in order {
            let Some(f) = found[i] else { continue };
            if !self.checkpoint_usable(&f.started.from, newest, start)? {
                continue;
            }
            match self.load_entries(&f).and_then(|()| self.load_marks(&f)) {
                Ok(()) => {}
                Err(Error::Corrupted { .. }) => {
                    self.queue = Queue::new(self.config.capacity() as usize);
                    let (table, _) = split_marks(self.memory.as_mut(), &self.config);
                    table.fill(0);
                    continue;
                }
                Err(e) => return Err(e),
            }
            for (j, other) in found.iter().enumerate() {
                self.ckpt.valid[j] = other
                    .filter(|o| j == i || o.started.ckpt_seq < f.started.ckpt_seq)
                    .map(|o| (o.started.ckpt_seq, o.started.from));
            }
            let r = &mut self.recovery;
            r.path = if f.started.ckpt_seq == newest_started {
                RecoveryPath::Checkpoint
            } else {
                RecoveryPath::Backup
            };
            r.checkpoint = f.started.ckpt_seq;
            r.checkpoint_events = f.entries;
            self.next_txn_id = f.started.next_txn;
            return Ok(Some(f.started.from));
        }
        Ok(None)
    }

    /// A checkpoint is usable if the log it resumes from is still there.
    fn checkpoint_usable(
        &mut self,
        from: &ReplayFrom,
        newest: Option<u64>,
        start: u64,
    ) -> Result<bool, Error<S::Error>> {
        let Some(newest) = newest else {
            return Ok(true);
        };
        if from.seq > newest {
            // Nothing was written after the checkpoint.
            return Ok(from.seq == newest + 1);
        }
        if from.seq < start {
            return Ok(false);
        }
        let header = self.valid_header(self.geo.slot_of(from.seq))?;
        Ok(header.is_some_and(|h| {
            h.seq == from.seq
                && h.base_wid <= from.wid
                && from.wid - h.base_wid <= u32::MAX as u64
                && from.offset as u64 >= self.geo.first_record
                && from.offset as u64 <= self.geo.segment_bytes
        }))
    }

    /// Reads and checks one checkpoint slot.
    fn read_slot(&mut self, region: Region) -> Result<SlotRead, Error<S::Error>> {
        let mut b = [0u8; STARTED_BYTES];
        self.storage
            .read(region, 0, &mut b)
            .map_err(Error::Storage)?;
        let started = match Started::decode(&b) {
            None => return Ok(SlotRead::Invalid),
            Some(Err(found)) => return Err(Error::UnsupportedFormat { found }),
            Some(Ok(s)) => s,
        };
        if started.segment_bytes as u64 != self.geo.segment_bytes {
            return Err(crate::error::ConfigError::SegmentSizeMismatch {
                on_media: started.segment_bytes,
                configured: self.geo.segment_bytes as u32,
            }
            .into());
        }
        let key = if started.sealed() {
            match self.keys.key(started.key) {
                Some(k) => Some(*k),
                // Unusable without its key; the other slot or the log may do without it.
                None => return Ok(SlotRead::Incomplete(started.ckpt_seq)),
            }
        } else {
            None
        };
        let room = self.storage.capacity(region);
        let layout = match started.max_entries.checked_mul(POINTER_BYTES as u64) {
            Some(bytes) if bytes <= room => {
                SlotLayout::new(started.max_entries, self.geo.align, started.sealed())
            }
            _ => return Ok(SlotRead::Invalid),
        };
        if layout.end > room {
            return Ok(SlotRead::Invalid);
        }
        let mut c = [0u8; COMPLETE_BYTES];
        self.storage
            .read(region, layout.complete_at, &mut c)
            .map_err(Error::Storage)?;
        let complete = match Complete::decode(&c) {
            Some(c) if c.ckpt_seq == started.ckpt_seq && c.entries <= started.max_entries => c,
            _ => return Ok(SlotRead::Incomplete(started.ckpt_seq)),
        };
        let marks_at = layout.end;
        if marks_at + complete.marks_bytes as u64 > room {
            return Ok(SlotRead::Invalid);
        }
        let mut digest = CRC32C.digest();
        let mut buf = [0u8; POINTERS_PER_CHUNK * POINTER_BYTES];
        // The marks area first: it was written with the started mark.
        let marks_text = match key {
            Some(_) if complete.marks_bytes > 0 => {
                (complete.marks_bytes as u64).checked_sub(TAG_BYTES as u64)
            }
            _ => Some(complete.marks_bytes as u64),
        };
        let Some(marks_text) = marks_text else {
            return Ok(SlotRead::Incomplete(started.ckpt_seq));
        };
        let mut marks_sealer = key.map(|k| started.marks_sealer(&k));
        let mut done = 0u64;
        // Bounded by the region's size, checked above.
        while done < complete.marks_bytes as u64 {
            let n = (complete.marks_bytes as u64 - done).min(buf.len() as u64) as usize;
            self.storage
                .read(region, marks_at + done, &mut buf[..n])
                .map_err(Error::Storage)?;
            digest.update(&buf[..n]);
            if let Some(s) = marks_sealer.as_mut() {
                let text = marks_text.saturating_sub(done).min(n as u64) as usize;
                s.authenticate(&buf[..text]);
            }
            done += n as u64;
        }
        if let (Some(s), true) = (marks_sealer, complete.marks_bytes > 0) {
            let mut tag = [0u8; TAG_BYTES];
            self.storage
                .read(region, marks_at + marks_text, &mut tag)
                .map_err(Error::Storage)?;
            if !s.verify(&tag) {
                self.recovery.authentication_failures += 1;
                return Ok(SlotRead::Incomplete(started.ckpt_seq));
            }
        }
        let mut sealer = key.map(|k| started.sealer(&k));
        let total = complete.entries * POINTER_BYTES as u64;
        let mut done = 0u64;
        // Bounded by `max_entries`, checked against the region's size above.
        while done < total {
            let n = (total - done).min(buf.len() as u64) as usize;
            self.storage
                .read(region, layout.entries_at + done, &mut buf[..n])
                .map_err(Error::Storage)?;
            digest.update(&buf[..n]);
            if let Some(s) = sealer.as_mut() {
                s.authenticate(&buf[..n]);
            }
            done += n as u64;
        }
        let mut tag = [0u8; TAG_BYTES];
        if sealer.is_some() {
            self.storage
                .read(region, layout.entries_at + total, &mut tag)
                .map_err(Error::Storage)?;
            digest.update(&tag);
        }
        if digest.finalize() != complete.entries_crc {
            return Ok(SlotRead::Incomplete(started.ckpt_seq));
        }
        if sealer.is_some_and(|s| !s.verify(&tag)) {
            self.recovery.authentication_failures += 1;
            return Ok(SlotRead::Incomplete(started.ckpt_seq));
        }
        Ok(SlotRead::Valid(Found {
            region,
            started,
            entries: complete.entries,
            marks_bytes: complete.marks_bytes,
        }))
    }

    /// Loads a valid checkpoint's marks into the stream table. A mark this configuration has no
    /// room for (fewer `marks`, smaller `mark_bytes`) is left out.
    fn load_marks(&mut self, f: &Found) -> Result<(), Error<S::Error>> {
        let ew = self.config.mark_entry_words();
        let (table, _) = split_marks(self.memory.as_mut(), &self.config);
        table.fill(0);
        if ew == 0 || f.marks_bytes == 0 {
            return Ok(());
        }
        let layout = SlotLayout::new(f.started.max_entries, self.geo.align, f.started.sealed());
        let mut sealer = match f.started.sealed() {
            true => match self.keys.key(f.started.key) {
                Some(k) => Some(f.started.marks_sealer(k)),
                None => return Err(Error::KeyMissing { key: f.started.key }),
            },
            false => None,
        };
        let text = match sealer {
            Some(_) => f.marks_bytes as u64 - TAG_BYTES as u64,
            None => f.marks_bytes as u64,
        };
        let mut at = 0u64;
        // Bounded by the area's length: every turn reads at least the 8-byte prefix.
        while at + MARK_PREFIX_BYTES as u64 <= text {
            let mut prefix = [0u8; MARK_PREFIX_BYTES];
            self.storage
                .read(f.region, layout.end + at, &mut prefix)
                .map_err(Error::Storage)?;
            if let Some(s) = sealer.as_mut() {
                // The tag was checked when the slot was read.
                s.decrypt(&mut prefix);
            }
            let Some((stream, len)) = decode_mark_prefix(&prefix) else {
                return Err(Error::Corrupted {
                    region: f.region,
                    offset: layout.end + at,
                });
            };
            at += MARK_PREFIX_BYTES as u64;
            let padded = (len as u64).next_multiple_of(8);
            if at + padded > text {
                return Err(Error::Corrupted {
                    region: f.region,
                    offset: layout.end + at,
                });
            }
            let fits = stream < self.config.marks() && len <= self.config.mark_bytes();
            let mut done = 0u64;
            while done < padded {
                let mut piece = [0u8; 8];
                self.storage
                    .read(f.region, layout.end + at + done, &mut piece)
                    .map_err(Error::Storage)?;
                if let Some(s) = sealer.as_mut() {
                    s.decrypt(&mut piece);
                }
                if fits {
                    let (table, _) = split_marks(self.memory.as_mut(), &self.config);
                    let e = mark::entry_mut(table, ew, stream as usize);
                    for (k, b) in piece.iter().enumerate() {
                        if done as usize + k < len as usize {
                            mark::set_byte(e, done as usize + k, *b);
                        }
                    }
                }
                done += 8;
            }
            if fits {
                let (table, _) = split_marks(self.memory.as_mut(), &self.config);
                mark::set_head(mark::entry_mut(table, ew, stream as usize), stream, len);
                self.recovery.checkpoint_marks += 1;
            }
            at += padded;
        }
        Ok(())
    }

    /// Puts a valid checkpoint's entries in the queue.
    fn load_entries(&mut self, f: &Found) -> Result<(), Error<S::Error>> {
        let layout = SlotLayout::new(f.started.max_entries, self.geo.align, f.started.sealed());
        let mut sealer = match f.started.sealed() {
            true => match self.keys.key(f.started.key) {
                Some(k) => Some(f.started.sealer(k)),
                None => return Err(Error::KeyMissing { key: f.started.key }),
            },
            false => None,
        };
        let mut buf = [0u8; POINTERS_PER_CHUNK * POINTER_BYTES];
        let mut done = 0u64;
        while done < f.entries {
            let n = (f.entries - done).min(POINTERS_PER_CHUNK as u64) as usize;
            let at = layout.entries_at + done * POINTER_BYTES as u64;
            self.storage
                .read(f.region, at, &mut buf[..n * POINTER_BYTES])
                .map_err(Error::Storage)?;
            if let Some(s) = sealer.as_mut() {
                // The tag was checked when the slot was read.
                s.decrypt_at(done * POINTER_BYTES as u64, &mut buf[..n * POINTER_BYTES]);
            }
            for raw in buf[..n * POINTER_BYTES].chunks_exact(POINTER_BYTES) {
                let p = Pointer::decode(raw);
                if !self.geo.pointer_in_bounds(p) {
                    return Err(Error::Corrupted {
                        region: f.region,
                        offset: at,
                    });
                }
                let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
                if !self.queue.push_back(qmem, p) {
                    return Err(Error::CapacityTooSmall { needed: f.entries });
                }
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Counts (or, with `remove`, removes) the queued events whose bytes cannot be read: their
    /// segment is gone (its slot holds no valid header, or the header of another segment than
    /// the one they were written to, the newest segment being `newest`, `None` when no slot
    /// holds one), or their put record is damaged (a log file cut short and padded, or zeroed,
    /// or decayed). Records the count and the first such slot in the recovery report; returns
    /// the count.
    ///
    /// `Check::Runs` (every open) reads one record per run of queued events in one segment, the
    /// run's highest: a file cut short, or damaged from some point on, loses its last records
    /// first, and only then are the run's other records read. `Check::Every` (repair, verify)
    /// reads every queued record in full; only it may remove. `on_lost` sees each lost event's
    /// id.
    pub(crate) fn lost_events(
        &mut self,
        newest: Option<u64>,
        check: Check,
        remove: bool,
        on_lost: &mut dyn FnMut(crate::EventId),
    ) -> Result<u64, Error<S::Error>> {
        debug_assert!(!remove || check == Check::Every);
        let len = self.queue.len();
        let mut lost = 0u64;
        let mut first = None;
        let mut kept = 0usize;
        // A few slot verdicts remembered: queued events come in runs per segment.
        // Each slot's live header (`None`: the segment is gone), for the last few slots.
        let mut seen: [(u32, Option<SegmentHeader>); 4] = [(u32::MAX, None); 4];
        let mut next = 0;
        let mut i = 0;
        // Bounded: every turn moves `i` past at least one entry.
        while i < len {
            let p = self.queued(i);
            let segment = match seen.iter().find(|(s, _)| *s == p.slot) {
                Some(&(_, h)) => h,
                None => {
                    let h = self.live_header(p.slot, newest)?;
                    seen[next] = (p.slot, h);
                    next = (next + 1) % seen.len();
                    h
                }
            };
            // The run of entries in this slot, and its highest record.
            let mut end = i + 1;
            let mut highest = p;
            while end < len {
                let q = self.queued(end);
                if q.slot != p.slot {
                    break;
                }
                if q.offset > highest.offset {
                    highest = q;
                }
                end += 1;
            }
            let newest_seq = newest.unwrap_or(0);
            let read_each = match &segment {
                None => false,
                Some(h) => check == Check::Every || !self.put_intact(h, highest)?,
            };
            for j in i..end {
                let q = self.queued(j);
                let gone = match &segment {
                    None => true,
                    Some(h) => read_each && !self.put_intact(h, q)?,
                };
                if gone {
                    lost += 1;
                    first.get_or_insert(q.slot);
                    on_lost(crate::EventId::new(
                        self.geo.seq_of_slot(q.slot, newest_seq),
                        q.offset,
                    ));
                } else if remove {
                    let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
                    self.queue.set(qmem, kept, q.to_word());
                    kept += 1;
                }
            }
            i = end;
        }
        if remove {
            self.queue.truncate(kept);
        }
        self.recovery.events_in_lost_segments = lost;
        self.recovery.first_lost_slot = first.unwrap_or(0);
        Ok(lost)
    }

    /// The queue's entry `i` (untagged: recovery and repair run before any take).
    fn queued(&mut self, i: usize) -> Pointer {
        let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
        Pointer::from_word(self.queue.get(qmem, i))
    }

    /// True if `p` points at an intact put record of `segment` ([`walk::read_record`]: bounds and
    /// the CRC of header and payload, streamed, so an event of any size costs no memory). Sealed
    /// records are checked the same way, without their key.
    fn put_intact(&mut self, segment: &SegmentHeader, p: Pointer) -> Result<bool, Error<S::Error>> {
        let geo = self.geo;
        let record = walk::read_record(&mut self.storage, &geo, segment, p.offset as u64, None)
            .map_err(Error::Storage)?;
        Ok(record.is_some_and(|h| h.kind == RecordKind::Put as u8))
    }

    /// The valid header in `slot` if it is the segment queued events in it were written to
    /// (the newest segment being `newest`); `None` if that segment is gone.
    fn live_header(
        &mut self,
        slot: u32,
        newest: Option<u64>,
    ) -> Result<Option<SegmentHeader>, Error<S::Error>> {
        Ok(match (self.valid_header(slot)?, newest) {
            (Some(h), Some(newest)) if h.seq == self.geo.seq_of_slot(slot, newest) => Some(h),
            _ => None,
        })
    }

    /// The header in `slot` if it is valid; errors for a format this build cannot read, a log of
    /// another segment size, and an intact header recovery refuses ([`walk::read_header`]).
    fn valid_header(&mut self, slot: u32) -> Result<Option<SegmentHeader>, Error<S::Error>> {
        let geo = self.geo;
        match walk::read_header(&mut self.storage, &geo, slot).map_err(Error::Storage)? {
            HeaderRead::Invalid => Ok(None),
            HeaderRead::Valid(h) => Ok(Some(h)),
            HeaderRead::Unsupported(found) => Err(Error::UnsupportedFormat { found }),
            HeaderRead::OtherSize(h) => Err(crate::error::ConfigError::SegmentSizeMismatch {
                on_media: h.segment_bytes,
                configured: geo.segment_bytes as u32,
            }
            .into()),
            HeaderRead::Misplaced(_) => Err(Error::Corrupted {
                region: Region::Log,
                offset: geo.segment_start(slot),
            }),
        }
    }

    /// Visits the records of a segment in order, from `(offset, index)`, until the segment
    /// ends, a record is damaged beyond repair, the write-order id reaches `limit`, or `visit`
    /// returns false. A damaged record is skipped (and reported to `visit`) when the record its
    /// length leads to is intact and has the next write-order id.
    fn walk(
        &mut self,
        seg: &SegmentHeader,
        from: (u64, u64),
        limit: u64,
        visit: &mut Visit<'_, Self, S::Error>,
    ) -> Result<WalkEnd, Error<S::Error>> {
        let geo = self.geo;
        let base = geo.segment_start(geo.slot_of(seg.seq));
        let (mut offset, mut index) = from;
        // Bounded: every turn advances `offset` by at least one record header.
        while offset + RECORD_HEADER_BYTES as u64 <= geo.segment_bytes
            && seg.base_wid + index < limit
        {
            if let Some(record) = self.valid_record(seg, offset, index)? {
                if !visit(self, offset, index, Some(&record))? {
                    return Ok(WalkEnd {
                        records: index + 1,
                        broke_at: None,
                    });
                }
                index += 1;
                offset += geo.record_span(record.len as u64);
                continue;
            }
            let raw =
                read_record_header(&mut self.storage, base + offset).map_err(Error::Storage)?;
            let next = offset + geo.record_span(raw.len as u64);
            // The length of a damaged record is believed only within bounds.
            let plausible = walk::fits(&geo, seg, offset, &raw, None)
                && next + RECORD_HEADER_BYTES as u64 <= geo.segment_bytes
                && seg.base_wid + index + 1 < limit;
            if plausible && self.valid_record(seg, next, index + 1)?.is_some() {
                if !visit(self, offset, index, None)? {
                    return Ok(WalkEnd {
                        records: index + 1,
                        broke_at: None,
                    });
                }
                index += 1;
                offset = next;
                continue;
            }
            return Ok(WalkEnd {
                records: index,
                broke_at: Some(offset),
            });
        }
        Ok(WalkEnd {
            records: index,
            broke_at: None,
        })
    }

    /// Reads the record at `offset` of a segment and returns its header if it is intact: known
    /// kind, length within the writer's limit and the segment, expected write-order id, CRC.
    fn valid_record(
        &mut self,
        segment: &SegmentHeader,
        offset: u64,
        index: u64,
    ) -> Result<Option<RecordHeader>, Error<S::Error>> {
        let geo = self.geo;
        let at = geo.segment_start(geo.slot_of(segment.seq)) + offset;
        let h = read_record_header(&mut self.storage, at).map_err(Error::Storage)?;
        if !walk::fits(&geo, segment, offset, &h, Some(index)) {
            return Ok(None);
        }
        let keys = self.segment_keys(segment.seq)?;
        let kind = RecordKind::from_u8(h.kind);
        let (text, integrity) = match keys {
            SegKeys::Broken => return Ok(None),
            SegKeys::Sealed(_) if index == 0 => {
                // The seal record, checked against its key when the segment's keys were read.
                let ok = kind == Some(RecordKind::Seal)
                    && payload_matches(&mut self.storage, &h, segment.seq, at)
                        .map_err(Error::Storage)?;
                return Ok(ok.then_some(h));
            }
            _ => (
                text_len(keys, &h),
                self.check_payload(keys, &h, segment.seq, at, |_, _| {})?,
            ),
        };
        if integrity != Integrity::Intact {
            return Ok(None);
        }
        let prefix = match kind {
            Some(k) if k.is_marked() => (COMMIT_PREFIX_BYTES + MARK_PREFIX_BYTES) as u64,
            _ => COMMIT_PREFIX_BYTES as u64,
        };
        // A mark is padded to whole pointers, so the same rule holds for marked commits.
        let malformed_commit = kind.is_some_and(RecordKind::is_commit)
            && (text < prefix || (text - prefix) % POINTER_BYTES as u64 != 0);
        if kind.is_none() || kind == Some(RecordKind::Seal) || malformed_commit {
            // Intact, yet not something this build writes: never guess what it meant.
            return Err(Error::Corrupted {
                region: Region::Log,
                offset: at,
            });
        }
        Ok(Some(h))
    }

    fn replay_record(
        &mut self,
        seg: &SegmentHeader,
        offset: u64,
        index: u64,
        record: &RecordHeader,
        state: &mut Replay,
    ) -> Result<(), Error<S::Error>> {
        self.recovery.records_read += 1;
        self.next_txn_id = self.next_txn_id.max(record.txn.wrapping_add(1));
        let here = Position {
            seq: seg.seq,
            offset,
        };
        match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Put) => self.recovery.puts += 1,
            Some(RecordKind::PutCommit | RecordKind::MarkedPutCommit) => {
                let suspect = state.suspect;
                let Some(damaged) = self.count_damaged_puts(here, record, suspect)? else {
                    self.unstable(here, state);
                    return Ok(());
                };
                if damaged > 0 && !self.acknowledged(seg, offset, index, record, state)? {
                    self.recovery.torn_commits_dropped += 1;
                    return Ok(());
                }
                let before = self.queue.len();
                let mut pushed = 0;
                let stable = self.for_each_pointer(here, record, |ch, p, live| {
                    if !live
                        || (damaged > 0
                            && ch.is_suspect(p, here, suspect)
                            && !ch.intact_put(p, here)?)
                    {
                        return Ok(());
                    }
                    let (qmem, _, _) = split(ch.memory.as_mut(), &ch.config);
                    if !ch.queue.push_back(qmem, p) {
                        return Err(Error::CapacityTooSmall {
                            needed: ch.queue.len() as u64 + 1,
                        });
                    }
                    pushed += 1;
                    Ok(())
                })?;
                if !stable {
                    self.queue.truncate(before);
                    self.unstable(here, state);
                    return Ok(());
                }
                self.recovery.put_commits += 1;
                self.recovery.corrupt_events_dropped += damaged;
                self.recovery.events_committed += pushed;
                self.apply_replayed_mark();
            }
            Some(RecordKind::Seal) => {}
            Some(RecordKind::TakeCommit | RecordKind::MarkedTakeCommit) => {
                let mut cursor = 0usize;
                let mut unmatched = 0;
                // No liveness filter here: a checkpoint may hold an event whose segment was
                // reclaimed after this take consumed it, and it must still leave the queue.
                let stable = self.for_each_pointer(here, record, |ch, p, _| {
                    let (qmem, _, _) = split(ch.memory.as_mut(), &ch.config);
                    match ch.queue.mark(qmem, p, TAG_REPLAY, cursor) {
                        Some(i) => cursor = i + 1,
                        None => unmatched += 1,
                    }
                    Ok(())
                })?;
                let (qmem, _, _) = split(self.memory.as_mut(), &self.config);
                if !stable {
                    self.queue.untag_all(qmem, TAG_REPLAY);
                    self.unstable(here, state);
                    return Ok(());
                }
                self.recovery.take_commits += 1;
                self.recovery.unmatched_takes += unmatched;
                self.recovery.events_taken +=
                    self.queue.remove_tagged(qmem, TAG_REPLAY, None) as u64;
                self.apply_replayed_mark();
            }
            None => {}
        }
        Ok(())
    }

    /// A marked commit whose mark prefix makes no sense: corrupt if the record's bytes are
    /// stable (an intact record this build would never write), else unstable (false), as
    /// [`Self::for_each_pointer`] reports.
    fn unstable_or_corrupt(
        &mut self,
        mut digest: crate::record::CrcDigest,
        sealed: bool,
        record: &RecordHeader,
        head_at: u64,
        text: usize,
    ) -> Result<bool, Error<S::Error>> {
        // The digest covers the text up to the end of the mark's prefix; read on from there.
        let rest = text - COMMIT_PREFIX_BYTES - MARK_PREFIX_BYTES;
        let tag = if sealed { TAG_BYTES } else { 0 };
        let from = head_at + MARK_PREFIX_BYTES as u64;
        stream_payload(&mut self.storage, from, (rest + tag) as u64, |c| {
            digest.update(c)
        })
        .map_err(Error::Storage)?;
        if digest.finalize() != record.crc {
            return Ok(false);
        }
        Err(Error::Corrupted {
            region: Region::Log,
            offset: head_at,
        })
    }

    /// Makes the mark [`Self::for_each_pointer`] left in the first pending entry (if the
    /// commit it read last carried one) its stream's.
    fn apply_replayed_mark(&mut self) {
        let ew = self.config.mark_entry_words();
        let (table, pending) = split_marks(self.memory.as_mut(), &self.config);
        let e = mark::entry_mut(pending, ew, 0);
        if let Some((stream, _)) = mark::head(e) {
            mark::copy(e, mark::entry_mut(table, ew, stream as usize));
            mark::clear(e);
            self.recovery.marks_applied += 1;
        }
    }

    /// True if the put at `p` lies where damage was seen in this run, so it must be re-checked.
    fn is_suspect(&self, p: Pointer, here: Position, suspect: Option<Position>) -> bool {
        let at = Position {
            seq: self.geo.seq_of_slot(p.slot, here.seq),
            offset: p.offset as u64,
        };
        suspect.is_some_and(|s| at >= s)
    }

    /// A commit record that passed its CRC check once and failed it when read again: the cells
    /// of a program interrupted by a power cut can read differently from one read to the next.
    /// It is skipped like a damaged record, and nothing it listed is applied.
    fn unstable(&mut self, here: Position, state: &mut Replay) {
        self.recovery.corrupt_records_skipped += 1;
        state.suspect.get_or_insert(here);
    }

    /// Counts the puts a commit lists that lie where damage was seen and are not intact, or
    /// `None` if the record read differently this time. A pointer at or after the commit
    /// itself makes the record corrupt.
    fn count_damaged_puts(
        &mut self,
        here: Position,
        record: &RecordHeader,
        suspect: Option<Position>,
    ) -> Result<Option<u64>, Error<S::Error>> {
        let mut damaged = 0;
        let mut forward = false;
        let stable = self.for_each_pointer(here, record, |ch, p, live| {
            let at = Position {
                seq: ch.geo.seq_of_slot(p.slot, here.seq),
                offset: p.offset as u64,
            };
            if at >= here {
                forward = true;
            } else if live && ch.is_suspect(p, here, suspect) && !ch.intact_put(p, here)? {
                damaged += 1;
            }
            Ok(())
        })?;
        if !stable {
            return Ok(None);
        }
        if forward {
            return Err(Error::Corrupted {
                region: Region::Log,
                offset: self.geo.segment_start(self.geo.slot_of(here.seq)) + here.offset,
            });
        }
        Ok(Some(damaged))
    }

    /// True if a commit with a damaged put was acknowledged, not in flight at the power cut: the
    /// same run went on into another segment (whose opening synced), or a later record of this
    /// segment carries a durable mark past the commit.
    fn acknowledged(
        &mut self,
        seg: &SegmentHeader,
        offset: u64,
        index: u64,
        record: &RecordHeader,
        state: &Replay,
    ) -> Result<bool, Error<S::Error>> {
        if state.run_continues {
            return Ok(true);
        }
        let wid = seg.base_wid + index;
        let base = self.geo.segment_start(self.geo.slot_of(seg.seq));
        let next = (offset + self.geo.record_span(record.len as u64), index + 1);
        let mut proven = false;
        self.walk(seg, next, state.limit, &mut |ch, at, _, rec| {
            let commit =
                |r: &&RecordHeader| RecordKind::from_u8(r.kind).is_some_and(RecordKind::is_commit);
            if let Some(r) = rec.filter(commit) {
                // The mark is used only if the bytes it was read with pass the checks again.
                let mut mark = [0u8; COMMIT_PREFIX_BYTES];
                let keys = ch.segment_keys(seg.seq)?;
                let integrity = ch.check_payload(keys, r, seg.seq, base + at, |pos, c| {
                    if pos < COMMIT_PREFIX_BYTES as u64 {
                        let n = c.len().min(COMMIT_PREFIX_BYTES - pos as usize);
                        mark[pos as usize..pos as usize + n].copy_from_slice(&c[..n]);
                    }
                })?;
                if let SegKeys::Sealed(seal) = keys {
                    ch.sealer_for(seal, seg.seq, r)?.decrypt_at(0, &mut mark);
                }
                proven = integrity == Integrity::Intact && u64::from_le_bytes(mark) > wid;
            }
            Ok(!proven)
        })?;
        Ok(proven)
    }

    /// True if the record at `p` is an intact put (`p` comes from a commit at `here`).
    fn intact_put(&mut self, p: Pointer, here: Position) -> Result<bool, Error<S::Error>> {
        let geo = self.geo;
        let seq = geo.seq_of_slot(p.slot, here.seq);
        let at = geo.record_offset(p);
        let h = read_record_header(&mut self.storage, at).map_err(Error::Storage)?;
        if h.kind != RecordKind::Put as u8
            || p.offset as u64 + RECORD_HEADER_BYTES as u64 + h.len as u64 > geo.segment_bytes
        {
            return Ok(false);
        }
        let keys = self.segment_keys(seq)?;
        Ok(self.check_payload(keys, &h, seq, at, |_, _| {})? == Integrity::Intact)
    }

    /// Calls `f` with each pointer of a commit record, and whether it points into a replayed
    /// segment (older ones were reclaimed). The record's CRC is checked again over the very
    /// bytes the pointers are read from: returns false if it fails this time (a record whose
    /// cells read differently from one read to the next), and then the caller must undo what
    /// `f` did. A pointer outside the log's geometry makes a stable record corrupt.
    fn for_each_pointer(
        &mut self,
        here: Position,
        record: &RecordHeader,
        mut f: impl FnMut(&mut Self, Pointer, bool) -> Result<(), Error<S::Error>>,
    ) -> Result<bool, Error<S::Error>> {
        let geo: Geometry = self.geo;
        let keys = self.segment_keys(here.seq)?;
        let mut sealer = match keys {
            SegKeys::Sealed(seal) => Some(self.sealer_for(seal, here.seq, record)?),
            SegKeys::Plain => None,
            SegKeys::Broken => return Ok(false),
        };
        let text = text_len(keys, record) as usize;
        let prefix_at =
            geo.segment_start(geo.slot_of(here.seq)) + here.offset + RECORD_HEADER_BYTES as u64;
        let start = self.recovery.first_segment;
        let mut digest = record.digest(here.seq);
        let mut prefix = [0u8; COMMIT_PREFIX_BYTES];
        self.storage
            .read(Region::Log, prefix_at, &mut prefix)
            .map_err(Error::Storage)?;
        digest.update(&prefix);
        if let Some(s) = sealer.as_mut() {
            s.decrypt(&mut prefix);
        }
        let mut pointers = prefix_at + COMMIT_PREFIX_BYTES as u64;
        let mut mark_len = 0;
        let marked = RecordKind::from_u8(record.kind).is_some_and(RecordKind::is_marked);
        let ew = self.config.mark_entry_words();
        if ew > 0 {
            let (_, pending) = split_marks(self.memory.as_mut(), &self.config);
            mark::clear(mark::entry_mut(pending, ew, 0));
        }
        if marked {
            let mut head = [0u8; MARK_PREFIX_BYTES];
            self.storage
                .read(Region::Log, pointers, &mut head)
                .map_err(Error::Storage)?;
            digest.update(&head);
            if let Some(s) = sealer.as_mut() {
                s.decrypt(&mut head);
            }
            let Some((stream, len)) = decode_mark_prefix(&head) else {
                return self.unstable_or_corrupt(digest, sealer.is_some(), record, pointers, text);
            };
            mark_len = MARK_PREFIX_BYTES + padded(len) as usize;
            if COMMIT_PREFIX_BYTES + mark_len > text {
                return self.unstable_or_corrupt(digest, sealer.is_some(), record, pointers, text);
            }
            // A mark this configuration has no room for is read past, not kept.
            let fits = stream < self.config.marks() && len <= self.config.mark_bytes();
            let mut done = 0;
            // Bounded by the record's length.
            while done < padded(len) as usize {
                let mut piece = [0u8; 8];
                let at = pointers + (MARK_PREFIX_BYTES + done) as u64;
                self.storage
                    .read(Region::Log, at, &mut piece)
                    .map_err(Error::Storage)?;
                digest.update(&piece);
                if let Some(s) = sealer.as_mut() {
                    s.decrypt(&mut piece);
                }
                if fits {
                    let (_, pending) = split_marks(self.memory.as_mut(), &self.config);
                    let e = mark::entry_mut(pending, ew, 0);
                    for (k, b) in piece.iter().enumerate() {
                        if done + k < len as usize {
                            mark::set_byte(e, done + k, *b);
                        }
                    }
                }
                done += 8;
            }
            if fits {
                let (_, pending) = split_marks(self.memory.as_mut(), &self.config);
                mark::set_head(mark::entry_mut(pending, ew, 0), stream, len);
            }
            pointers += mark_len as u64;
        }
        let count = (text - COMMIT_PREFIX_BYTES - mark_len) / POINTER_BYTES;
        let mut buf = [0u8; POINTERS_PER_CHUNK * POINTER_BYTES];
        let mut done = 0usize;
        let mut out_of_bounds = false;
        // Bounded by the record's length, which replay checked against the writer's limit.
        while done < count {
            let n = (count - done).min(POINTERS_PER_CHUNK);
            let chunk = &mut buf[..n * POINTER_BYTES];
            self.storage
                .read(Region::Log, pointers + (done * POINTER_BYTES) as u64, chunk)
                .map_err(Error::Storage)?;
            digest.update(chunk);
            if let Some(s) = sealer.as_mut() {
                s.decrypt(chunk);
            }
            for raw in chunk.chunks_exact(POINTER_BYTES) {
                let p = Pointer::decode(raw);
                if !geo.pointer_in_bounds(p) {
                    out_of_bounds = true;
                    continue;
                }
                let live = geo.seq_of_slot(p.slot, here.seq) >= start;
                f(self, p, live)?;
            }
            done += n;
        }
        if let Some(s) = sealer {
            let mut tag = [0u8; TAG_BYTES];
            let at = pointers + (count * POINTER_BYTES) as u64;
            debug_assert_eq!(at, prefix_at + text as u64);
            self.storage
                .read(Region::Log, at, &mut tag)
                .map_err(Error::Storage)?;
            digest.update(&tag);
            if digest.finalize() != record.crc || !s.verify(&tag) {
                return Ok(false);
            }
        } else if digest.finalize() != record.crc {
            return Ok(false);
        }
        if out_of_bounds {
            return Err(Error::Corrupted {
                region: Region::Log,
                offset: pointers,
            });
        }
        Ok(true)
    }

    /// Checks the key of every sealed segment from `start` to `newest` before anything is
    /// read: a missing key is [`Error::KeyMissing`]; a key that opens none of the segments
    /// naming it is [`Error::WrongKey`]. A seal record whose key opens other segments was
    /// altered, and only its segment is lost (counted in `authentication_failures`).
    fn check_keys(&mut self, start: u64, newest: u64) -> Result<(), Error<S::Error>> {
        const TRACKED: usize = 8;
        let mut proven: [Option<u16>; TRACKED] = self.proven_keys;
        let mut failed: Option<u16> = None;
        for seq in start..=newest {
            match self.probe_seal(seq)? {
                Some((key, true)) => {
                    self.recovery.sealed_segments += 1;
                    if !proven.contains(&Some(key)) {
                        if let Some(free) = proven.iter_mut().find(|p| p.is_none()) {
                            *free = Some(key);
                        }
                    }
                }
                Some((key, false)) => failed = failed.or(Some(key)),
                None => {}
            }
        }
        self.proven_keys = proven;
        if let Some(key) = failed {
            if !proven.contains(&Some(key)) {
                return Err(Error::WrongKey { key });
            }
        }
        Ok(())
    }

    /// The tag check of segment `seq`'s seal record: its key and whether the key opens it, or
    /// `None` for a plaintext or unreadable segment.
    fn probe_seal(&mut self, seq: u64) -> Result<Option<(u16, bool)>, Error<S::Error>> {
        match self.read_segment_keys(seq) {
            Ok(SegKeys::Sealed(seal)) => Ok(Some((seal.key, true))),
            Ok(_) => Ok(None),
            Err(Error::WrongKey { key }) => Ok(Some((key, false))),
            Err(e) => Err(e),
        }
    }

    /// The seal of the record `record` in segment `seq`, positioned at the start of its text.
    pub(crate) fn sealer_for(
        &mut self,
        seal: crate::sealed_write::SegSeal,
        seq: u64,
        record: &RecordHeader,
    ) -> Result<Sealer, Error<S::Error>> {
        let key = self
            .keys
            .key(seal.key)
            .ok_or(Error::KeyMissing { key: seal.key })?;
        Ok(seal.record_sealer(&mut self.sealers, key, seq, record))
    }

    /// Streams the payload of the record `h` at `at` (in segment `seq`, read with `keys`) once:
    /// the CRC always, the tag when the segment is sealed. `text` sees each piece of the text
    /// as stored (ciphertext when sealed) with its position in the text.
    fn check_payload(
        &mut self,
        keys: SegKeys,
        h: &RecordHeader,
        seq: u64,
        at: u64,
        mut text: impl FnMut(u64, &[u8]),
    ) -> Result<Integrity, Error<S::Error>> {
        let payload = at + RECORD_HEADER_BYTES as u64;
        let mut digest = h.digest(seq);
        let mut pos = 0u64;
        let seal = match keys {
            SegKeys::Broken => return Ok(Integrity::Damaged),
            SegKeys::Plain => {
                stream_payload(&mut self.storage, payload, h.len as u64, |c| {
                    digest.update(c);
                    text(pos, c);
                    pos += c.len() as u64;
                })
                .map_err(Error::Storage)?;
                return Ok(if digest.finalize() == h.crc {
                    Integrity::Intact
                } else {
                    Integrity::Damaged
                });
            }
            SegKeys::Sealed(seal) => seal,
        };
        if (h.len as usize) < TAG_BYTES {
            return Ok(Integrity::Damaged);
        }
        let len = text_len(keys, h);
        let mut sealer = self.sealer_for(seal, seq, h)?;
        stream_payload(&mut self.storage, payload, len, |c| {
            digest.update(c);
            sealer.authenticate(c);
            text(pos, c);
            pos += c.len() as u64;
        })
        .map_err(Error::Storage)?;
        let mut tag = [0u8; TAG_BYTES];
        self.storage
            .read(Region::Log, payload + len, &mut tag)
            .map_err(Error::Storage)?;
        digest.update(&tag);
        if digest.finalize() != h.crc {
            return Ok(Integrity::Damaged);
        }
        if !sealer.verify(&tag) {
            self.recovery.authentication_failures += 1;
            return Ok(Integrity::Forged);
        }
        Ok(Integrity::Intact)
    }
}

/// The length of a record's text: its payload less the tag, when sealed.
fn text_len(keys: SegKeys, h: &RecordHeader) -> u64 {
    match keys {
        SegKeys::Sealed(_) => (h.len as u64).saturating_sub(TAG_BYTES as u64),
        _ => h.len as u64,
    }
}
