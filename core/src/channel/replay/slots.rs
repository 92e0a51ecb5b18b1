//! Loading a checkpoint: reading and checking both slots, choosing the newest usable one, and
//! putting its entries in the queue and its marks in the stream table.

use super::*;

/// What reading a checkpoint slot found.
enum SlotRead {
    Valid(Found),
    /// A started mark, but no matching complete mark or entries that check out.
    Incomplete(u64),
    /// A started mark and its complete mark, over entries that fail their CRC.
    Damaged(u64),
    Invalid,
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Loads the newest usable checkpoint into the queue and returns where replay resumes and
    /// the id the next transaction gets, or `None` if no checkpoint can be used (replay then
    /// starts at the oldest segment).
    pub(super) fn load_checkpoint(
        &mut self,
        newest: Option<u64>,
        start: u64,
    ) -> Result<Option<(ReplayFrom, u32)>, Error<S::Error>> {
        let mut found = [None, None];
        let mut newest_started = 0;
        let mut newest_damaged = 0;
        for (i, region) in SLOTS.into_iter().enumerate() {
            match self.read_slot(region)? {
                SlotRead::Valid(f) => {
                    newest_started = newest_started.max(f.started.ckpt_seq);
                    found[i] = Some(f);
                }
                SlotRead::Incomplete(seq) => newest_started = newest_started.max(seq),
                SlotRead::Damaged(seq) => {
                    newest_started = newest_started.max(seq);
                    newest_damaged = newest_damaged.max(seq);
                }
                SlotRead::Invalid => {}
            }
        }
        // A damaged checkpoint older than the one used is the slot the next checkpoint was
        // erasing: its erase need not reach the medium in order. One newer than any valid
        // checkpoint had its complete mark durable before its entries.
        let newest_valid = found.iter().flatten().map(|f| f.started.ckpt_seq).max();
        self.recovery.newest_checkpoint_damaged = newest_damaged > newest_valid.unwrap_or(0);
        self.ckpt.numbered_after(newest_started);
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
                    self.queue = Queue::new(&self.config);
                    let Parts { marks: table, .. } = self.carving.parts(self.memory.as_mut());
                    table.fill(0);
                    continue;
                }
                Err(e) => return Err(e),
            }
            // The other slot stays valid only if it is older (a newer one failed to load).
            let mut valid = [None, None];
            for (j, other) in found.iter().enumerate() {
                valid[j] = other
                    .filter(|o| j == i || o.started.ckpt_seq < f.started.ckpt_seq)
                    .map(|o| (o.started.ckpt_seq, o.started.from));
            }
            self.ckpt.found(valid);
            let r = &mut self.recovery;
            r.path = if f.started.ckpt_seq == newest_started {
                RecoveryPath::Checkpoint
            } else {
                RecoveryPath::Backup
            };
            r.checkpoint = f.started.ckpt_seq;
            r.checkpoint_events = f.entries;
            return Ok(Some((f.started.from, f.started.next_txn)));
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
                && from.offset as u64 >= self.geo.first_record()
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
            return Ok(SlotRead::Damaged(started.ckpt_seq));
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
        let Parts { marks: table, .. } = self.carving.parts(self.memory.as_mut());
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
                    let Parts { marks: table, .. } = self.carving.parts(self.memory.as_mut());
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
                let Parts { marks: table, .. } = self.carving.parts(self.memory.as_mut());
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
                let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
                if !self.queue.push_back(qmem, p) {
                    return Err(Error::CapacityTooSmall { needed: f.entries });
                }
            }
            done += n as u64;
        }
        Ok(())
    }
}
