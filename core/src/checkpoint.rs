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

use crate::config::Config;
use crate::record::{align_up, u32_at, u64_at, CRC32C, FORMAT_VERSION, POINTER_BYTES};
use crate::seal::{nonce, Domain, Key, KeyId, Sealer, SALT_BYTES, TAG_BYTES};
use crate::storage::Region;

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

/// The channel's checkpoint bookkeeping: which slots hold a valid checkpoint, the one being
/// written, the number the next one gets, and what the policy counts since the last. The
/// channel's checkpoint writer moves it through these methods only.
pub(crate) struct Checkpoints {
    /// False when the storage has no checkpoint regions.
    enabled: bool,
    /// The valid checkpoint in each slot (same order as [`SLOTS`]): its number and position.
    valid: [Option<(u64, ReplayFrom)>; 2],
    in_progress: Option<InProgress>,
    /// The number the next checkpoint gets.
    next_seq: u64,
    commits_since: u32,
    bytes_since: u64,
    last_ms: Option<u64>,
}

impl Checkpoints {
    /// No checkpoint known yet; `enabled` is false when the storage has no checkpoint regions.
    pub const fn new(enabled: bool) -> Self {
        Checkpoints {
            enabled,
            valid: [None, None],
            in_progress: None,
            next_seq: 1,
            commits_since: 0,
            bytes_since: 0,
            last_ms: None,
        }
    }

    /// False when the storage has no checkpoint regions.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True while a checkpoint is being written.
    pub fn in_progress(&self) -> bool {
        self.in_progress.is_some()
    }

    /// The highest number a started mark in either slot carries: the next checkpoint gets a
    /// higher one.
    pub fn numbered_after(&mut self, newest_started: u64) {
        self.next_seq = newest_started + 1;
    }

    /// The valid checkpoint in each slot (number and position), as replay found them.
    pub fn found(&mut self, valid: [Option<(u64, ReplayFrom)>; 2]) {
        self.valid = valid;
    }

    /// `bytes` more of log were written.
    pub fn logged(&mut self, bytes: u64) {
        self.bytes_since += bytes;
    }

    /// Bytes of log written since the last checkpoint began.
    pub fn bytes_logged(&self) -> u64 {
        self.bytes_since
    }

    /// One more commit was applied.
    pub fn committed(&mut self) {
        self.commits_since = self.commits_since.saturating_add(1);
    }

    /// True if the policy in `config` says a checkpoint is due (`now_ms`: the adapter's clock,
    /// if it has one; the first reading starts the interval).
    pub fn due(&mut self, config: &Config, now_ms: Option<u64>) -> bool {
        let by_commits = config.checkpoint_every_commits() > 0
            && self.commits_since >= config.checkpoint_every_commits();
        let by_bytes = config.checkpoint_every_log_bytes() > 0
            && self.bytes_since >= config.checkpoint_every_log_bytes();
        let by_time = match (now_ms, self.last_ms) {
            (Some(now), Some(last)) if config.checkpoint_interval_ms() > 0 => {
                now.saturating_sub(last) >= config.checkpoint_interval_ms()
            }
            (Some(now), None) => {
                self.last_ms = Some(now);
                false
            }
            _ => false,
        };
        by_commits || by_bytes || by_time
    }

    /// Begins a checkpoint: returns the slot it goes to (see [`Checkpoints::target`]) and its
    /// number. The slot stops counting as valid before its erase begins, and the policy's
    /// counts start again.
    pub fn begin(&mut self, now_ms: Option<u64>) -> (usize, u64) {
        let slot = self.target();
        let seq = self.next_seq;
        self.valid[slot] = None;
        self.next_seq += 1;
        self.commits_since = 0;
        self.bytes_since = 0;
        self.last_ms = now_ms.or(self.last_ms);
        (slot, seq)
    }

    /// The checkpoint being written, taken out for a step of writing; [`Checkpoints::resume`]
    /// puts it back if it is not complete. One that is not put back is abandoned.
    pub fn take(&mut self) -> Option<InProgress> {
        self.in_progress.take()
    }

    /// A checkpoint is being written (after [`Checkpoints::begin`], or between steps).
    pub fn resume(&mut self, ip: InProgress) {
        self.in_progress = Some(ip);
    }

    /// The checkpoint `ip` is complete: its slot holds a valid checkpoint.
    pub fn completed(&mut self, ip: &InProgress) {
        let slot = usize::from(ip.region == SLOTS[1]);
        self.valid[slot] = Some((ip.started.ckpt_seq, ip.started.from));
    }

    /// The queue entries the checkpoint under way has still to write: the index of the next
    /// and how many.
    pub fn entries_left(&self) -> Option<(usize, usize)> {
        self.in_progress
            .as_ref()
            .map(|ip| (ip.cursor, ip.remaining))
    }

    /// Moves the entries still to write (entries before them left the queue).
    pub fn entries_moved(&mut self, left: Option<(usize, usize)>) {
        if let (Some(ip), Some((cursor, remaining))) = (self.in_progress.as_mut(), left) {
            ip.cursor = cursor;
            ip.remaining = remaining;
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
