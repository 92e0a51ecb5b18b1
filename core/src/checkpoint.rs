//! Checkpoints: a snapshot of the queue, so that restart replays only the log written after it.
//!
//! Two slots, the [`Region::Checkpoint`] and [`Region::Backup`] regions, are written in turn: a
//! new checkpoint always goes into the slot that does not hold the newest valid one, so the only
//! valid checkpoint is never overwritten, and the previous checkpoint is the backup (which a
//! server can keep on another disk). A slot is written under a marker protocol:
//!
//! 1. erase the slot;
//! 2. write the *started* mark: the replay position `P` (the log position where the checkpoint
//!    began) and the room for the entries;
//! 3. write the entries (the queue's pointers as of `P`), a bounded chunk per step, while the
//!    channel keeps working;
//! 4. sync the slot;
//! 5. write the *complete* mark: the number of entries written and their CRC;
//! 6. sync the slot.
//!
//! A slot is valid only if both marks and the entries check out. The entries are those that
//! existed at `P`, in queue order, less any consumed while the checkpoint was being written:
//! replay from `P` applies every commit after `P`, and a take commit whose events are already
//! missing from the snapshot changes nothing.
//!
//! In-flight transactions need no saving: a put commit lists all of its puts, so a put begun
//! before `P` and committed after it is rebuilt from the commit alone; a take begun before `P`
//! leaves its events in the queue (and so in the snapshot) until a take commit after `P`
//! removes them; a rollback writes nothing to replay.
//!
//! **Invariant:** a slot is erased only when the other slot holds the newest valid checkpoint
//! (or no valid checkpoint exists at all).

use crate::channel::Channel;
use crate::error::Error;
use crate::log::WordWriter;
use crate::mark;
use crate::memory::PartsRef;
use crate::record::{
    align_up, u32_at, u64_at, Pointer, CRC32C, FORMAT_VERSION, MARK_PREFIX_BYTES, POINTER_BYTES,
};
use crate::seal::{nonce, Domain, Key, KeyId, KeyProvider, Sealer, SALT_BYTES, TAG_BYTES};
use crate::storage::{Region, Storage};

/// The magic of a checkpoint's started mark: `SGCK`.
pub const STARTED_MAGIC: [u8; 4] = *b"SGCK";
/// The magic of a checkpoint's complete mark: `SGOK`.
pub const COMPLETE_MAGIC: [u8; 4] = *b"SGOK";
/// The size of the started mark.
pub const STARTED_BYTES: usize = 64;
/// The size of the complete mark.
pub const COMPLETE_BYTES: usize = 32;

/// The two checkpoint slots, in the order they are first used.
pub const SLOTS: [Region; 2] = [Region::Checkpoint, Region::Backup];

/// The log position a checkpoint's snapshot corresponds to: replay resumes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplayFrom {
    /// The segment's sequence number (the segment may not exist yet).
    pub seq: u64,
    /// The offset of the next record in that segment.
    pub offset: u32,
    /// The write-order id of the next record.
    pub wid: u64,
}

/// The started mark: written first, after the slot's erase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Started {
    /// The checkpoint's number: grows by one per checkpoint.
    pub ckpt_seq: u64,
    /// Where replay resumes.
    pub from: ReplayFrom,
    /// The next transaction id at `from`.
    pub next_txn: u32,
    /// The log's segment size, to refuse a checkpoint of another log.
    pub segment_bytes: u32,
    /// Room for entries: the queue's length at `from`.
    pub max_entries: u64,
    /// The key the entries are sealed with, or 0 for plaintext entries.
    pub key: KeyId,
    /// The salt of the entries' nonce (zero when `key` is 0).
    pub salt: [u8; SALT_BYTES],
}

impl Started {
    /// True if the entries are sealed.
    pub fn sealed(&self) -> bool {
        self.key != 0
    }

    /// The seal of this checkpoint's entries: the nonce binds its number and salt, and the
    /// associated data is the whole started mark.
    pub(crate) fn sealer(&self, key: &Key) -> Sealer {
        let mut s = Sealer::new(
            key,
            &nonce(&self.salt, self.ckpt_seq, 0, Domain::Checkpoint),
        );
        s.ad(&self.encode());
        s
    }

    /// The seal of this checkpoint's marks: as the entries', with nonce index 1.
    pub(crate) fn marks_sealer(&self, key: &Key) -> Sealer {
        let mut s = Sealer::new(
            key,
            &nonce(&self.salt, self.ckpt_seq, 1, Domain::Checkpoint),
        );
        s.ad(&self.encode());
        s
    }
}

impl Started {
    /// Encodes the mark with its CRC.
    pub fn encode(&self) -> [u8; STARTED_BYTES] {
        let mut b = [0u8; STARTED_BYTES];
        b[4..8].copy_from_slice(&STARTED_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.ckpt_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.from.seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.from.wid.to_le_bytes());
        b[40..44].copy_from_slice(&self.from.offset.to_le_bytes());
        b[44..48].copy_from_slice(&self.next_txn.to_le_bytes());
        b[48..56].copy_from_slice(&self.max_entries.to_le_bytes());
        b[10..12].copy_from_slice(&self.key.to_le_bytes());
        b[56..64].copy_from_slice(&self.salt);
        let crc = CRC32C.checksum(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a mark; `Err(version)` for an intact mark of another format version.
    pub fn decode(b: &[u8; STARTED_BYTES]) -> Option<Result<Self, u16>> {
        let crc = u32_at(b, 0);
        if crc != CRC32C.checksum(&b[4..]) || b[4..8] != STARTED_MAGIC {
            return None;
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let key = u16::from_le_bytes([b[10], b[11]]);
        if version != FORMAT_VERSION || (key == 0 && b[56..64] != [0; 8]) {
            return Some(Err(version));
        }
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(&b[56..64]);
        Some(Ok(Started {
            segment_bytes: u32_at(b, 12),
            ckpt_seq: u64_at(b, 16),
            from: ReplayFrom {
                seq: u64_at(b, 24),
                wid: u64_at(b, 32),
                offset: u32_at(b, 40),
            },
            next_txn: u32_at(b, 44),
            max_entries: u64_at(b, 48),
            key,
            salt,
        }))
    }
}

/// The complete mark: written last, after the entries are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Complete {
    /// Must equal the started mark's.
    pub ckpt_seq: u64,
    /// Entries written (at most the started mark's `max_entries`).
    pub entries: u64,
    /// CRC-32C of the marks' and then the entries' bytes as stored (ciphertext and tags, when
    /// sealed).
    pub entries_crc: u32,
    /// The length of the marks area, which lies after the complete mark (0: no marks).
    pub marks_bytes: u32,
}

impl Complete {
    /// Encodes the mark with its CRC.
    pub fn encode(&self) -> [u8; COMPLETE_BYTES] {
        let mut b = [0u8; COMPLETE_BYTES];
        b[4..8].copy_from_slice(&COMPLETE_MAGIC);
        b[8..16].copy_from_slice(&self.ckpt_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.entries.to_le_bytes());
        b[24..28].copy_from_slice(&self.entries_crc.to_le_bytes());
        b[28..32].copy_from_slice(&self.marks_bytes.to_le_bytes());
        let crc = CRC32C.checksum(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a mark.
    pub fn decode(b: &[u8; COMPLETE_BYTES]) -> Option<Self> {
        let crc = u32_at(b, 0);
        if crc != CRC32C.checksum(&b[4..]) || b[4..8] != COMPLETE_MAGIC {
            return None;
        }
        Some(Complete {
            ckpt_seq: u64_at(b, 8),
            entries: u64_at(b, 16),
            entries_crc: u32_at(b, 24),
            marks_bytes: u32_at(b, 28),
        })
    }
}

/// Where the parts of a slot lie, for a slot whose entries have room for `max_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    /// The offset of the first entry.
    pub entries_at: u64,
    /// The offset of the complete mark.
    pub complete_at: u64,
    /// The end of the slot's used bytes.
    pub end: u64,
}

impl SlotLayout {
    /// The layout for `max_entries` entries, with each part aligned to `align` (the storage's
    /// `WRITE_SIZE`). Sealed entries are followed by their tag.
    pub fn new(max_entries: u64, align: u64, sealed: bool) -> Self {
        let entries_at = align_up(STARTED_BYTES as u64, align);
        let tag = if sealed { TAG_BYTES as u64 } else { 0 };
        let complete_at = entries_at + align_up(max_entries * POINTER_BYTES as u64 + tag, align);
        SlotLayout {
            entries_at,
            complete_at,
            end: complete_at + align_up(COMPLETE_BYTES as u64, align),
        }
    }
}

/// A valid checkpoint found in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub region: Region,
    pub started: Started,
    pub entries: u64,
    pub marks_bytes: u32,
}

/// A checkpoint being written.
pub(crate) struct InProgress {
    pub region: Region,
    pub started: Started,
    /// The queue index of the next entry to write.
    pub cursor: usize,
    /// Entries that existed at `P` and are still to be written.
    pub remaining: usize,
    /// Entries written so far.
    pub written: u64,
    /// CRC of the entries written so far.
    pub crc: crate::record::CrcDigest,
    /// The seal of the entries, when sealed.
    pub sealer: Option<Sealer>,
    /// The length of the marks area written with the started mark.
    pub marks_bytes: u32,
}

/// The channel's checkpoint bookkeeping.
pub(crate) struct Checkpoints {
    /// False when the storage has no checkpoint regions.
    pub enabled: bool,
    /// The valid checkpoint in each slot (same order as [`SLOTS`]): its number and position.
    pub valid: [Option<(u64, ReplayFrom)>; 2],
    pub in_progress: Option<InProgress>,
    /// The number the next checkpoint gets.
    pub next_seq: u64,
    pub commits_since: u32,
    pub bytes_since: u64,
    pub last_ms: Option<u64>,
}

impl Checkpoints {
    pub const fn new() -> Self {
        Checkpoints {
            enabled: false,
            valid: [None, None],
            in_progress: None,
            next_seq: 1,
            commits_since: 0,
            bytes_since: 0,
            last_ms: None,
        }
    }

    /// The slot a new checkpoint goes to: one without a valid checkpoint, else the older one.
    pub fn target(&self) -> usize {
        match self.valid {
            [None, _] => 0,
            [_, None] => 1,
            [Some(a), Some(b)] => usize::from(a.0 > b.0),
        }
    }

    /// The oldest segment a valid or in-progress checkpoint replays from.
    pub fn oldest_replay_seq(&self) -> Option<u64> {
        let valid = self.valid.iter().flatten().map(|(_, from)| from.seq);
        let current = self.in_progress.iter().map(|ip| ip.started.from.seq);
        valid.chain(current).min()
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Writes a checkpoint now, to completion (finishing one already under way first), so that
    /// the next open replays only what comes after it.
    pub fn checkpoint(&mut self) -> Result<(), Error<S::Error>> {
        if !self.ckpt.enabled {
            return Err(Error::CheckpointsDisabled);
        }
        // Bounded: each step writes at least one entry or finishes.
        while self.ckpt.in_progress.is_some() {
            self.checkpoint_step()?;
        }
        self.checkpoint_start(None)?;
        while self.ckpt.in_progress.is_some() {
            self.checkpoint_step()?;
        }
        Ok(())
    }

    /// Lets time-based checkpoints happen: starts one if `checkpoint_interval_ms` has passed
    /// since the last (by the adapter's clock, `now_ms`), and advances one under way by a step.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), Error<S::Error>> {
        self.checkpoint_work(Some(now_ms))
    }

    /// True while a checkpoint is being written (cheaper than [`Channel::stats`], for an
    /// adapter's checkpoint thread deciding whether to call [`Channel::poll`] again soon).
    pub fn checkpoint_in_progress(&self) -> bool {
        self.ckpt.in_progress.is_some()
    }

    /// Checkpoints (if the storage has checkpoint regions) and gives back the storage and the
    /// memory, so the next open replays nothing.
    pub fn close(mut self) -> Result<(S, M), Error<S::Error>> {
        if self.ckpt.enabled {
            self.checkpoint()?;
        }
        Ok(self.into_parts())
    }

    /// Starts a checkpoint if the policy says one is due, and advances one under way by a step.
    pub(crate) fn checkpoint_work(&mut self, now_ms: Option<u64>) -> Result<(), Error<S::Error>> {
        if !self.ckpt.enabled {
            return Ok(());
        }
        if self.ckpt.in_progress.is_none() && self.checkpoint_due(now_ms) {
            self.checkpoint_start(now_ms)?;
        }
        if self.ckpt.in_progress.is_some() {
            self.checkpoint_step()?;
        }
        Ok(())
    }

    /// The bytes the present marks take in a checkpoint slot (with the tag, when sealed).
    fn marks_area_bytes(&self, sealed: bool) -> u32 {
        let ew = self.config.mark_entry_words();
        if ew == 0 {
            return 0;
        }
        let PartsRef { marks: table, .. } = self.carving.parts_ref(self.memory.as_ref());
        let body: usize = (0..self.config.marks() as usize)
            .filter_map(|i| mark::head(mark::entry(table, ew, i)))
            .map(|(_, len)| MARK_PREFIX_BYTES + (len as usize).next_multiple_of(8))
            .sum();
        match (body, sealed) {
            (0, _) => 0,
            (n, true) => (n + TAG_BYTES) as u32,
            (n, false) => n as u32,
        }
    }

    fn checkpoint_due(&mut self, now_ms: Option<u64>) -> bool {
        let c = &self.config;
        let by_commits = c.checkpoint_every_commits() > 0
            && self.ckpt.commits_since >= c.checkpoint_every_commits();
        let by_bytes = c.checkpoint_every_log_bytes() > 0
            && self.ckpt.bytes_since >= c.checkpoint_every_log_bytes();
        let by_time = match (now_ms, self.ckpt.last_ms) {
            (Some(now), Some(last)) if c.checkpoint_interval_ms() > 0 => {
                now.saturating_sub(last) >= c.checkpoint_interval_ms()
            }
            (Some(now), None) => {
                // The first time the clock is seen, it starts the interval.
                self.ckpt.last_ms = Some(now);
                false
            }
            _ => false,
        };
        by_commits || by_bytes || by_time
    }

    /// Steps 1 and 2: syncs the log and applies written commits, erases the target slot and
    /// writes the started mark.
    ///
    /// The log is synced even with no commit waiting: replay from this checkpoint never reads
    /// the records before its position, so they must all be durable, including puts of
    /// transactions still open, whose commits will come after it.
    fn checkpoint_start(&mut self, now_ms: Option<u64>) -> Result<(), Error<S::Error>> {
        self.sync_log()?;
        let slot = self.ckpt.target();
        let region = SLOTS[slot];
        let from = if self.restart_pending {
            ReplayFrom {
                seq: self.roll_to,
                offset: self.geo.first_record as u32,
                wid: self.next_wid,
            }
        } else {
            ReplayFrom {
                seq: self.seq,
                offset: self.write_offset as u32,
                wid: self.next_wid,
            }
        };
        let (key, salt) = match self.sealing {
            Some(id) => (id, self.keys.fresh_salt()),
            None => (0, [0; SALT_BYTES]),
        };
        let started = Started {
            ckpt_seq: self.ckpt.next_seq,
            from,
            next_txn: self.next_txn_id,
            segment_bytes: self.geo.segment_bytes as u32,
            max_entries: self.queue.len() as u64,
            key,
            salt,
        };
        let sealer = match self.sealing {
            Some(id) => match self.keys.key(id) {
                Some(k) => Some(started.sealer(k)),
                None => return Err(Error::LogicBug("the sealing key vanished")),
            },
            None => None,
        };
        let layout = SlotLayout::new(started.max_entries, self.geo.align, started.sealed());
        let marks_bytes = self.marks_area_bytes(started.sealed());
        let mut marks_sealer = match (self.sealing, marks_bytes) {
            (_, 0) | (None, _) => None,
            (Some(id), _) => match self.keys.key(id) {
                Some(k) => Some(started.marks_sealer(k)),
                None => return Err(Error::LogicBug("the sealing key vanished")),
            },
        };
        let erase_to = align_up(layout.end + marks_bytes as u64, S::ERASE_SIZE as u64);
        // The slot stops counting as valid before its erase begins.
        self.ckpt.valid[slot] = None;
        self.ckpt.next_seq += 1;
        self.ckpt.commits_since = 0;
        self.ckpt.bytes_since = 0;
        self.ckpt.last_ms = now_ms.or(self.ckpt.last_ms);
        let mut crc = CRC32C.digest();
        let ew = self.config.mark_entry_words();
        let PartsRef { marks: table, .. } = self.carving.parts_ref(self.memory.as_ref());
        let storage = &mut self.storage;
        let result = storage.erase(region, 0, erase_to).and_then(|()| {
            let mut w = WordWriter::new(&mut *storage, region, self.geo.align, 0);
            w.push(&started.encode())?;
            w.finish()?;
            if marks_bytes == 0 {
                return Ok(());
            }
            // The marks as of `from`, each as a marked commit carries it, padded to 8 bytes.
            let mut w = WordWriter::new(&mut *storage, region, self.geo.align, layout.end);
            let mut out = |bytes: &mut [u8]| {
                if let Some(s) = marks_sealer.as_mut() {
                    s.encrypt(bytes);
                }
                crc.update(bytes);
                w.push(bytes)
            };
            let mut result = Ok(());
            for i in 0..self.config.marks() as usize {
                // Pieces of at most 8 bytes: the prefix, then the padded words.
                crate::channel::emit_mark(mark::entry(table, ew, i), &mut |piece| {
                    let mut b = [0u8; 8];
                    b[..piece.len()].copy_from_slice(piece);
                    if result.is_ok() {
                        result = out(&mut b[..piece.len()]);
                    }
                });
            }
            result?;
            if let Some(s) = marks_sealer.take() {
                let tag = s.tag();
                crc.update(&tag);
                w.push(&tag)?;
            }
            w.finish().map(|_| ())
        });
        if let Err(e) = result {
            self.stats.checkpoint_failures += 1;
            return Err(Error::Storage(e));
        }
        self.ckpt.in_progress = Some(InProgress {
            region,
            started,
            cursor: 0,
            remaining: self.queue.len(),
            written: 0,
            crc,
            sealer,
            marks_bytes,
        });
        Ok(())
    }

    /// Step 3, one bounded chunk of entries; then steps 4 to 6 once every entry is written.
    /// Returns true when the checkpoint completed.
    fn checkpoint_step(&mut self) -> Result<bool, Error<S::Error>> {
        let Some(mut ip) = self.ckpt.in_progress.take() else {
            return Ok(false);
        };
        let layout = SlotLayout::new(ip.started.max_entries, self.geo.align, ip.started.sealed());
        let n = ip
            .remaining
            .min(self.config.checkpoint_step_entries() as usize);
        let result = (|| {
            let PartsRef { queue: qmem, .. } = self.carving.parts_ref(self.memory.as_ref());
            let at = layout.entries_at + ip.written * POINTER_BYTES as u64;
            let mut w = WordWriter::new(&mut self.storage, ip.region, self.geo.align, at);
            for k in 0..n {
                // An entry is the same 8-byte pointer form as in commit records.
                let mut bytes = Pointer::from_word(self.queue.get(qmem, ip.cursor + k)).encode();
                if let Some(sealer) = ip.sealer.as_mut() {
                    sealer.encrypt(&mut bytes);
                }
                ip.crc.update(&bytes);
                w.push(&bytes)?;
            }
            ip.cursor += n;
            ip.remaining -= n;
            ip.written += n as u64;
            if ip.remaining > 0 {
                w.finish()?;
                return Ok(false);
            }
            if let Some(sealer) = ip.sealer.take() {
                let tag = sealer.tag();
                ip.crc.update(&tag);
                w.push(&tag)?;
            }
            w.finish()?;
            let complete = Complete {
                ckpt_seq: ip.started.ckpt_seq,
                entries: ip.written,
                entries_crc: ip.crc.clone().finalize(),
                marks_bytes: ip.marks_bytes,
            };
            self.storage.sync(ip.region)?;
            let mut w = WordWriter::new(
                &mut self.storage,
                ip.region,
                self.geo.align,
                layout.complete_at,
            );
            w.push(&complete.encode())?;
            w.finish()?;
            self.storage.sync(ip.region)?;
            Ok(true)
        })();
        match result {
            Err(e) => {
                self.ckpt.in_progress = None;
                self.stats.checkpoint_failures += 1;
                Err(Error::Storage(e))
            }
            Ok(false) => {
                self.ckpt.in_progress = Some(ip);
                Ok(false)
            }
            Ok(true) => {
                let slot = usize::from(ip.region == SLOTS[1]);
                self.ckpt.valid[slot] = Some((ip.started.ckpt_seq, ip.started.from));
                self.ckpt.in_progress = None;
                self.pins_dirty = true;
                self.stats.checkpoints += 1;
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both marks survive a round trip and any flipped bit invalidates them.
    #[test]
    fn marks_round_trip_and_detect_flips() {
        let s = Started {
            ckpt_seq: 9,
            from: ReplayFrom {
                seq: 4,
                offset: 64,
                wid: 1000,
            },
            next_txn: 77,
            segment_bytes: 4096,
            max_entries: 12,
            key: 0,
            salt: [0; 8],
        };
        let b = s.encode();
        assert_eq!(Started::decode(&b), Some(Ok(s)));
        for bit in 0..STARTED_BYTES * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Started::decode(&c), None, "bit {bit}");
        }
        let c = Complete {
            ckpt_seq: 9,
            entries: 11,
            entries_crc: 0xdead_beef,
            marks_bytes: 48,
        };
        let b = c.encode();
        assert_eq!(Complete::decode(&b), Some(c));
        for bit in 0..COMPLETE_BYTES * 8 {
            let mut d = b;
            d[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Complete::decode(&d), None, "bit {bit}");
        }
    }

    /// The complete mark lies after the room for every entry, aligned.
    #[test]
    fn layout_leaves_room_for_entries() {
        let l = SlotLayout::new(3, 32, false);
        assert_eq!(l.entries_at, 64);
        assert_eq!(l.complete_at, 64 + 32);
        assert_eq!(l.end, 64 + 32 + 32);
        let sealed = SlotLayout::new(3, 32, true);
        assert_eq!(
            sealed.complete_at,
            64 + 64,
            "24 bytes of entries and a 16-byte tag"
        );
    }
}
