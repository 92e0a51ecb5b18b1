//! Writing checkpoints (see `crate::checkpoint` for the slots and the marker protocol): the
//! triggers (`checkpoint`, `poll`, `close`), starting one in the slot that does not hold the
//! newest valid checkpoint, and writing its entries a bounded step at a time while the channel
//! keeps working.

use super::*;
use crate::checkpoint::{Complete, InProgress, Started, SLOTS};
use crate::record::CRC32C;
use crate::seal::SALT_BYTES;

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Writes a checkpoint now, to completion (finishing one already under way first), so that
    /// the next open replays only what comes after it.
    pub fn checkpoint(&mut self) -> Result<(), Error<S::Error>> {
        if !self.ckpt.enabled() {
            return Err(Error::CheckpointsDisabled);
        }
        // Bounded: each step writes at least one entry or finishes.
        while self.ckpt.in_progress() {
            self.checkpoint_step()?;
        }
        self.checkpoint_start(None)?;
        while self.ckpt.in_progress() {
            self.checkpoint_step()?;
        }
        Ok(())
    }

    /// Lets time-based checkpoints happen: starts one if `checkpoint_interval_ms` has passed
    /// since the last (by the adapter's clock, `now_ms`), and advances one under way by a step.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), Error<S::Error>> {
        self.checkpoint_work(Some(now_ms))
    }

    /// Starts a checkpoint now unless one is under way, whatever the policy says, and advances
    /// it by a step; [`Channel::poll`] advances it further. For an adapter with a policy of its
    /// own (the file adapter starts one after half its kept files' worth of log, so that
    /// segments are released as fast as the log fills them).
    pub fn poll_start(&mut self, now_ms: u64) -> Result<(), Error<S::Error>> {
        if !self.ckpt.enabled() {
            return Ok(());
        }
        if !self.ckpt.in_progress() {
            self.checkpoint_start(Some(now_ms))?;
        }
        self.checkpoint_step().map(drop)
    }

    /// Bytes of log written since the last checkpoint began (cheap: a counter).
    pub fn log_bytes_since_checkpoint(&self) -> u64 {
        self.ckpt.bytes_logged()
    }

    /// True while a checkpoint is being written (cheaper than [`Channel::stats`], for an
    /// adapter's checkpoint thread deciding whether to call [`Channel::poll`] again soon).
    pub fn checkpoint_in_progress(&self) -> bool {
        self.ckpt.in_progress()
    }

    /// Checkpoints (if the storage has checkpoint regions) and gives back the storage and the
    /// memory, so the next open replays nothing.
    pub fn close(mut self) -> Result<(S, M), Error<S::Error>> {
        if self.ckpt.enabled() {
            self.checkpoint()?;
        }
        Ok(self.into_parts())
    }

    /// Starts a checkpoint if the policy says one is due, and advances one under way by a step.
    pub(crate) fn checkpoint_work(&mut self, now_ms: Option<u64>) -> Result<(), Error<S::Error>> {
        if !self.ckpt.enabled() {
            return Ok(());
        }
        if !self.ckpt.in_progress() && self.ckpt.due(&self.config, now_ms) {
            self.checkpoint_start(now_ms)?;
        }
        if self.ckpt.in_progress() {
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

    /// Steps 1 and 2: syncs the log and applies written commits, erases the target slot and
    /// writes the started mark.
    ///
    /// The log is synced even with no commit waiting: replay from this checkpoint never reads
    /// the records before its position, so they must all be durable, including puts of
    /// transactions still open, whose commits will come after it.
    fn checkpoint_start(&mut self, now_ms: Option<u64>) -> Result<(), Error<S::Error>> {
        self.sync_log()?;
        let from = self.head.replay_from(&self.geo);
        let (key, salt) = match self.sealing {
            Some(id) => (id, self.keys.fresh_salt()),
            None => (0, [0; SALT_BYTES]),
        };
        // The slot stops counting as valid before its erase begins.
        let (slot, ckpt_seq) = self.ckpt.begin(now_ms);
        let region = SLOTS[slot];
        let started = Started {
            ckpt_seq,
            from,
            next_txn: self.txn_counters.next_id(),
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
        self.ckpt.resume(InProgress {
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
        let Some(mut ip) = self.ckpt.take() else {
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
                // Abandoned: not put back.
                self.stats.checkpoint_failures += 1;
                Err(Error::Storage(e))
            }
            Ok(false) => {
                self.ckpt.resume(ip);
                Ok(false)
            }
            Ok(true) => {
                self.ckpt.completed(&ip);
                self.head.loosened();
                self.stats.checkpoints += 1;
                self.release_freed();
                Ok(true)
            }
        }
    }
}
