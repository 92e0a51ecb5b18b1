//! The log writer: appending a record (plaintext through the word writer, sealed through
//! `SealedWrite`), the space reserve and the segment pins (kept by the head), opening a new
//! segment (its erase, header and seal record), and clearing the tail of the newest segment
//! for a run that goes on there.

use super::*;

/// The kind of write, for the log's space reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteClass {
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
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
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

/// What a record's payload is read from: the transaction slots' pending pointers, the queue,
/// the pending marks, and for a compact commit the log's shape and the record's write-order id.
pub(super) struct EmitParts<'m> {
    queue: Queue,
    qmem: &'m [u64],
    pool: &'m [u64],
    pending_marks: &'m [u64],
    mark_words: usize,
    cap: usize,
    /// `Some((align, segments, wid))` in a compact log.
    compact: Option<(u64, u64, u64)>,
}

/// Hands the payload of `body` to `sink` as the log stores it: full (the durable mark, a mark,
/// 8-byte pointers) or compact (`record::compact`).
#[inline(never)]
fn emit_body(body: Body<'_>, p: &EmitParts<'_>, sink: &mut dyn FnMut(&[u8])) {
    let (synced_wid, marked) = match body {
        Body::Event(bytes) => return sink(bytes),
        Body::Pending {
            synced_wid, marked, ..
        }
        | Body::Taken {
            synced_wid, marked, ..
        } => (synced_wid, marked),
    };
    // Tested against the feature here too, so that a build without it leaves the encoder out.
    if let Some((align, segments, wid)) = p.compact.filter(|_| cfg!(feature = "compact")) {
        compact::varint(wid.saturating_sub(synced_wid), sink);
        let mut e = compact::Encoder::new(align, segments);
        match body {
            Body::Pending { slot, count, .. } => {
                for &w in &p.pool[slot * p.cap..slot * p.cap + count] {
                    e.pointer(Pointer::from_word(w), sink);
                }
            }
            Body::Taken { tag, .. } => p.queue.for_each_tagged(p.qmem, tag, |q| e.pointer(q, sink)),
            Body::Event(_) => {}
        }
        return;
    }
    sink(&synced_wid.to_le_bytes());
    match body {
        Body::Pending { slot, count, .. } => {
            if marked {
                emit_mark(mark::entry(p.pending_marks, p.mark_words, slot), sink);
            }
            for &w in &p.pool[slot * p.cap..slot * p.cap + count] {
                sink(&Pointer::from_word(w).encode());
            }
        }
        Body::Taken { tag, .. } => {
            if marked {
                emit_mark(
                    mark::entry(p.pending_marks, p.mark_words, tag as usize - 1),
                    sink,
                );
            }
            p.queue.for_each_tagged(p.qmem, tag, |q| sink(&q.encode()))
        }
        Body::Event(_) => {}
    }
}

/// The parts [`emit_body`] reads, for a record with write-order id `wid` (free of the channel,
/// so that the storage can be written while they are read).
fn emit_parts<'m>(
    carving: &Carving,
    memory: &'m [u64],
    queue: Queue,
    config: &Config,
    geo: &Geometry,
    wid: u64,
) -> EmitParts<'m> {
    let PartsRef {
        queue: qmem,
        pool,
        pending_marks,
        ..
    } = carving.parts_ref(memory);
    EmitParts {
        queue,
        qmem,
        pool,
        pending_marks,
        mark_words: config.mark_entry_words(),
        cap: config.transaction_capacity() as usize,
        compact: geo.is_compact().then_some((geo.align, geo.segments, wid)),
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Appends one record to the log, rolling to a new segment if it does not fit. `len` is
    /// the plaintext length of the body; a sealed record carries a tag after it.
    pub(super) fn append(
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
        let compact = self.geo.is_compact();
        let wid = self.head.next_wid();
        let len = match body {
            Body::Pending { .. } | Body::Taken { .. } if compact => self.compact_len(body, wid),
            _ => len,
        };
        let record_len = len + tag;
        let span = self.geo.record_span(record_len as u64);
        // Pair assertion with replay's checks: what we write, replay must accept.
        if len as u64 > self.config.max_payload_bytes() {
            return Err(Error::LogicBug("record longer than the configured maximum"));
        }
        self.make_room(span, class)?;
        let ptr = self.head.next_pointer(&self.geo);
        let wid_delta = self.head.wid_delta();
        // Only a sealed segment's seal record takes an id as the segment opens.
        if compact && self.head.next_wid() != wid {
            return Err(Error::LogicBug("a new segment took a write-order id"));
        }
        if compact && wid_delta > COMPACT_MAX_INDEX {
            return Err(Error::LogicBug(
                "a compact segment holds more records than its index",
            ));
        }
        let parts = emit_parts(
            &self.carving,
            self.memory.as_ref(),
            self.queue,
            &self.config,
            &self.geo,
            wid,
        );
        let emit = |sink: &mut dyn FnMut(&[u8])| emit_body(body, &parts, sink);
        let start = self.geo.record_offset(ptr);
        let (seq, bind) = (self.head.seq(), self.head.binding());
        let outcome = match self.head.seal() {
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
                    compact: false,
                };
                let sealed = SealedWrite {
                    key,
                    seal,
                    seq,
                    header,
                    align: self.geo.align,
                    start,
                };
                sealed.write(&mut self.storage, &mut self.sealers, &emit)
            }
            None if tag == 0 => {
                let header =
                    RecordHeader::seal_as(compact, bind, kind, wid_delta, txn_id, len, |d| {
                        emit(&mut |b| d.update(b))
                    });
                let mut writer =
                    WordWriter::new(&mut self.storage, Region::Log, self.geo.align, start);
                let mut result = writer.push(&header.encode()[..header.bytes()]);
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
                self.head.wrote(span);
                self.ckpt.logged(span);
                Ok(ptr)
            }
        }
    }

    /// The payload length of a compact commit with write-order id `wid`, which depends on its
    /// pointers: counted as [`emit_body`] will write them.
    fn compact_len(&self, body: Body<'_>, wid: u64) -> u32 {
        let parts = emit_parts(
            &self.carving,
            self.memory.as_ref(),
            self.queue,
            &self.config,
            &self.geo,
            wid,
        );
        let mut n = 0u32;
        emit_body(body, &parts, &mut |b| n += b.len() as u32);
        n
    }

    /// Makes sure a record of `span` bytes can be written, keeping the reserve: a put must leave
    /// one free segment for commit records and one for the segment the next run starts; a commit
    /// may use the first but never the second, except to start this run's own segment.
    fn make_room(&mut self, span: u64, class: WriteClass) -> Result<(), Error<S::Error>> {
        let roll = self.head.must_roll(span, &self.geo);
        let needed = match (class, roll, self.head.restart_pending()) {
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
                let slot = (self.head.next_segment() + 1)
                    .checked_rem(self.geo.segments)
                    .unwrap_or(0);
                let next = slot.wrapping_mul(self.geo.segment_bytes);
                let end = next.wrapping_add(self.geo.segment_bytes);
                // Lack of space fails this write and latches nothing (`crate::latch`).
                self.storage
                    .prepare(Region::Log, next, end)
                    .map_err(Error::Storage)?;
            }
            let flags = if self.head.restart_pending() {
                SEGMENT_FLAG_OPENED
            } else {
                0
            };
            self.open_segment(self.head.next_segment(), flags)?;
        } else if let Some(at) = self
            .head
            .tail_to_clear()
            // Only replay over a rewritable storage leaves a tail to clear; asking again lets
            // the whole step compile away over one that never is (flash).
            .filter(|_| self.storage.rewritable())
        {
            self.clear_tail(at)?;
        }
        Ok(())
    }

    /// Makes the newest segment ready for this run to go on at `at`, where the last intact
    /// record ends (only over a storage that can be rewritten, `Storage::rewritable`): writes
    /// zeros over the rest of the erase block, from one record header past `at`, erases every
    /// whole block after it, and syncs. The previous run may have left torn or lost records
    /// beyond `at` whose successors are intact, with the very write-order ids this run is
    /// about to use; once this sync returns none is left to be taken for this run's. The
    /// record header at `at` is left as it is until this run's first record replaces it: a
    /// cut before the sync can then only destroy what lies after it, so a later replay judges
    /// the record at `at` exactly as the open's did.
    fn clear_tail(&mut self, at: u64) -> Result<(), Error<S::Error>> {
        static ZEROS: [u8; 256] = [0; 256];
        self.check_writable()?;
        let geo = self.geo;
        let start = geo.segment_start(geo.slot_of(self.head.seq()));
        let from = at + geo.record_span(0);
        let block_end = align_up(from, S::ERASE_SIZE as u64).min(geo.segment_bytes);
        let mut pos = from;
        // Bounded by one erase block.
        while pos < block_end {
            let n = (block_end - pos).min(ZEROS.len() as u64);
            if let Err(e) = self
                .storage
                .write(Region::Log, start + pos, &ZEROS[..n as usize])
            {
                // Latched.
                return Err(Error::Storage(e));
            }
            pos += n;
        }
        let storage = &mut self.storage;
        let erased = if block_end < geo.segment_bytes {
            storage.erase_tail(Region::Log, start + block_end, start + geo.segment_bytes)
        } else {
            Ok(())
        };
        if let Err(e) = erased.and_then(|()| storage.sync(Region::Log)) {
            // A failed erase for lack of space is not latched; the next write clears again.
            return Err(Error::Storage(e));
        }
        self.stats.syncs += 1;
        self.stats.segments_continued += 1;
        self.head.resumed();
        Ok(())
    }

    /// Segments after the newest one that hold nothing anyone needs.
    pub(super) fn free_ahead(&self) -> u64 {
        self.head.free_ahead(&self.geo)
    }

    /// Recomputes the oldest segment that a queued event or a pending put points into. A scan
    /// of the queue, done only when space runs short and something may have been freed.
    pub(super) fn refresh_pins(&mut self) {
        if !self.head.pins_stale() {
            return;
        }
        // A checkpoint replays from its position, so the log from there on stays.
        let replay = self.ckpt.oldest_replay_seq().unwrap_or(self.head.seq());
        let oldest = self.oldest_event_seq().min(replay);
        self.head.pinned_from(oldest);
    }

    /// Hands the storage back every segment nothing needs any more ([`Storage::release`]), so
    /// that a log on files shrinks back once a backlog is drained: only over a rewritable
    /// storage (files; on flash the ring is the partition and the step compiles away). Called
    /// when a checkpoint completes, which is what lets go of segments; costs a scan of the
    /// queue when something let go, and a call per free segment (the file adapter answers one
    /// it released before at once). A segment the storage failed to release stays as it was,
    /// as a ring's slot would.
    pub(super) fn release_freed(&mut self) {
        if !self.storage.rewritable() {
            return;
        }
        self.refresh_pins();
        let geo = self.geo;
        // Bounded by the ring's length (`LogHead::releasable`).
        for seq in self.head.releasable(&geo) {
            let start = geo.segment_start(geo.slot_of(seq));
            let _ = self
                .storage
                .release(Region::Log, start, start + geo.segment_bytes);
        }
    }

    /// True if a checkpoint, not an event, is what keeps the oldest segments from being reused.
    fn checkpoints_pin_the_log(&self) -> bool {
        self.ckpt.enabled()
            && self
                .ckpt
                .oldest_replay_seq()
                .is_some_and(|seq| seq < self.oldest_event_seq())
    }

    /// The oldest segment a queued event or a pending put points into (the newest if none).
    pub(super) fn oldest_event_seq(&self) -> u64 {
        let PartsRef {
            queue: qmem,
            pool,
            txns,
            ..
        } = self.carving.parts_ref(self.memory.as_ref());
        let (geo, newest) = (self.geo, self.head.seq());
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
    ///
    /// Over a rewritable storage (files) the rest is not erased: the segment is salted, and
    /// what earlier laps left in the slot fails every CRC of this segment
    /// (`SegmentHeader::binding`), so a recycled log file is made ready by one block's write.
    pub(crate) fn open_segment(&mut self, seq: u64, flags: u16) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        let start = self.geo.segment_start(self.geo.slot_of(seq));
        let first_block = S::ERASE_SIZE as u64;
        let reused = self.storage.rewritable();
        // Sealed segments hold only ciphertext and tags no one without the key can make.
        let salted = reused && self.sealing.is_none();
        let end = if reused {
            start + first_block
        } else {
            start + self.geo.segment_bytes
        };
        let header = SegmentHeader {
            flags,
            segment_bytes: self.geo.segment_bytes as u32,
            seq,
            base_wid: self.head.next_wid(),
            max_payload: (self.config.max_payload_bytes()
                + if self.sealing.is_some() {
                    TAG_BYTES as u64
                } else {
                    0
                }) as u32,
            salt: if salted { self.storage.salt() } else { 0 },
        };
        let header = SegmentHeader {
            flags: header.flags
                | if self.sealing.is_some() {
                    SEGMENT_FLAG_SEALED
                } else {
                    0
                }
                | if reused { SEGMENT_FLAG_UNERASED } else { 0 }
                | if self.geo.is_compact() {
                    SEGMENT_FLAG_COMPACT
                } else {
                    0
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
        self.stats.segments_opened += 1;
        self.head.opened(seq, header.crc_salt(), &self.geo);
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
            compact: false,
        };
        let mut payload = SealRecord {
            key: key_id,
            algorithm: seal.algorithm,
            salt: seal.salt,
            tag: [0; TAG_BYTES],
        };
        payload.tag = payload.tag_for(&key, segment, &record);
        let payload = payload.encode();
        let mut digest = record.digest(segment.binding());
        digest.update(&payload);
        record.crc = digest.finalize();
        let start = self.geo.record_offset(self.head.next_pointer(&self.geo));
        let mut w = WordWriter::new(&mut self.storage, Region::Log, self.geo.align, start);
        let written = w
            .push(&record.encode())
            .and_then(|()| w.push(&payload))
            .and_then(|()| w.finish());
        if let Err(e) = written {
            // Latched.
            return Err(Error::Storage(e));
        }
        self.head
            .wrote(self.geo.record_span(SEAL_PAYLOAD_BYTES as u64));
        self.head.sealed(seal);
        Ok(())
    }
}
