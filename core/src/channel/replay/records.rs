//! Walking a segment's records and applying them: the checks every record passes, the proof a
//! commit with a damaged put needs, and the commit's pointers read from the very bytes checked.

use super::checks::text_len;
use super::*;

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Visits the records of a segment in order, from `(offset, index)`, until the segment
    /// ends, a record is damaged beyond repair, the write-order id reaches `limit`, or `visit`
    /// returns false. A damaged record is skipped (and reported to `visit`) when the record its
    /// length leads to is intact and has the next write-order id.
    pub(super) fn walk(
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
        while offset + geo.header_bytes() <= geo.segment_bytes && seg.base_wid + index < limit {
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
            let raw = read_record_header(&mut self.storage, geo.is_compact(), base + offset)
                .map_err(Error::Storage)?;
            let next = offset + geo.record_span(raw.len as u64);
            // The length of a damaged record is believed only within bounds.
            let plausible = walk::fits(&geo, seg, offset, &raw, None)
                && next + geo.header_bytes() <= geo.segment_bytes
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
        let h =
            read_record_header(&mut self.storage, geo.is_compact(), at).map_err(Error::Storage)?;
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
                    && payload_matches(&mut self.storage, &h, segment.binding(), at)
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
        // A mark is padded to whole pointers, so the same rule holds for marked commits. A
        // compact commit has no marks and at least a distance and a pointer (3 bytes); the rest
        // of its shape is checked as its pointers are read.
        let malformed_commit = kind.is_some_and(RecordKind::is_commit)
            && if geo.is_compact() {
                kind.is_some_and(RecordKind::is_marked) || text < 3
            } else {
                text < prefix || (text - prefix) % POINTER_BYTES as u64 != 0
            };
        if kind.is_none() || kind == Some(RecordKind::Seal) || malformed_commit {
            // Intact, yet not something this build writes: never guess what it meant.
            return Err(Error::Corrupted {
                region: Region::Log,
                offset: at,
            });
        }
        Ok(Some(h))
    }

    pub(super) fn replay_record(
        &mut self,
        seg: &SegmentHeader,
        offset: u64,
        index: u64,
        record: &RecordHeader,
        state: &mut Replay,
    ) -> Result<(), Error<S::Error>> {
        self.recovery.records_read += 1;
        state.next_txn_id = state.next_txn_id.max(record.txn.wrapping_add(1));
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
                    let Parts { queue: qmem, .. } = ch.carving.parts(ch.memory.as_mut());
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
                    let Parts { queue: qmem, .. } = ch.carving.parts(ch.memory.as_mut());
                    match ch.queue.mark(qmem, p, TAG_REPLAY, cursor) {
                        Some(i) => cursor = i + 1,
                        None => unmatched += 1,
                    }
                    Ok(())
                })?;
                let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
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
        let Parts {
            marks: table,
            pending_marks: pending,
            ..
        } = self.carving.parts(self.memory.as_mut());
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
    pub(super) fn acknowledged(
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
        let compact = self.geo.is_compact();
        self.walk(seg, next, state.limit, &mut |ch, at, at_index, rec| {
            let commit =
                |r: &&RecordHeader| RecordKind::from_u8(r.kind).is_some_and(RecordKind::is_commit);
            if let Some(r) = rec.filter(commit).filter(|_| compact) {
                // The distance back from the commit's own id, read from the bytes checked.
                let mut dec = compact::Decoder::new(ch.geo.align, ch.geo.segments);
                let mut distance = None;
                // A compact segment is plaintext (`walk::read_header` refuses one marked sealed).
                let integrity = ch.check_payload(
                    SegKeys::Plain {
                        salt: seg.crc_salt(),
                    },
                    r,
                    seg.seq,
                    base + at,
                    |_, c| {
                        for &b in c {
                            if distance.is_none() {
                                match dec.feed(b) {
                                    Ok(Some(compact::Item::Distance(d))) => distance = Some(d),
                                    Ok(_) => {}
                                    Err(_) => distance = Some(u64::MAX),
                                }
                            }
                        }
                    },
                )?;
                // A distance past the log's start is no proof (no writer makes one).
                let own = seg.base_wid + at_index;
                proven = integrity == Integrity::Intact
                    && distance.is_some_and(|d| d <= own && own - d > wid);
            } else if let Some(r) = rec.filter(commit) {
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
        let h =
            read_record_header(&mut self.storage, geo.is_compact(), at).map_err(Error::Storage)?;
        if h.kind != RecordKind::Put as u8
            || p.offset as u64 + geo.header_bytes() + h.len as u64 > geo.segment_bytes
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
        if self.geo.is_compact() {
            return self.for_each_compact_pointer(here, record, &mut f);
        }
        let geo: Geometry = self.geo;
        let keys = self.segment_keys(here.seq)?;
        let mut sealer = match keys {
            SegKeys::Sealed(seal) => Some(self.sealer_for(seal, here.seq, record)?),
            SegKeys::Plain { .. } => None,
            SegKeys::Broken => return Ok(false),
        };
        let text = text_len(keys, record) as usize;
        let prefix_at =
            geo.segment_start(geo.slot_of(here.seq)) + here.offset + RECORD_HEADER_BYTES as u64;
        let start = self.recovery.first_segment;
        let mut digest = record.digest(keys.binding(here.seq));
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
            let Parts {
                pending_marks: pending,
                ..
            } = self.carving.parts(self.memory.as_mut());
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
                    let Parts {
                        pending_marks: pending,
                        ..
                    } = self.carving.parts(self.memory.as_mut());
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
                let Parts {
                    pending_marks: pending,
                    ..
                } = self.carving.parts(self.memory.as_mut());
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

    /// [`Self::for_each_pointer`] in a compact log: the payload is read in pieces, fed to the
    /// CRC and to the decoder of `record::compact` at once. Bytes no writer makes (a broken
    /// integer, a slot outside the ring, a pointer outside the geometry) make a stable record
    /// corrupt.
    ///
    /// One copy serves the three callers (`f` is a trait object), so firmware carries it once.
    fn for_each_compact_pointer(
        &mut self,
        here: Position,
        record: &RecordHeader,
        f: &mut EachPointer<'_, Self, S::Error>,
    ) -> Result<bool, Error<S::Error>> {
        const PIECE: usize = 64;
        let geo: Geometry = self.geo;
        let keys = self.segment_keys(here.seq)?;
        if keys == SegKeys::Broken {
            return Ok(false);
        }
        let at = geo.segment_start(geo.slot_of(here.seq)) + here.offset + geo.header_bytes();
        let start = self.recovery.first_segment;
        let mut digest = record.digest(keys.binding(here.seq));
        let mut decoder = compact::Decoder::new(geo.align, geo.segments);
        let (mut malformed, mut out_of_bounds) = (false, false);
        let mut buf = [0u8; PIECE];
        let len = record.len as u64;
        let mut done = 0u64;
        // Bounded by the record's length, which replay checked against the writer's limit.
        while done < len {
            let n = (len - done).min(PIECE as u64) as usize;
            self.storage
                .read(Region::Log, at + done, &mut buf[..n])
                .map_err(Error::Storage)?;
            digest.update(&buf[..n]);
            for &b in &buf[..n] {
                match decoder.feed(b) {
                    _ if malformed => {}
                    Err(compact::Malformed) => malformed = true,
                    Ok(Some(compact::Item::Pointer(p))) if !geo.pointer_in_bounds(p) => {
                        out_of_bounds = true
                    }
                    Ok(Some(compact::Item::Pointer(p))) => {
                        let live = geo.seq_of_slot(p.slot, here.seq) >= start;
                        f(self, p, live)?;
                    }
                    Ok(_) => {}
                }
            }
            done += n as u64;
        }
        if digest.finalize() != record.crc {
            return Ok(false);
        }
        if malformed || out_of_bounds || decoder.finish().is_err() {
            return Err(Error::Corrupted {
                region: Region::Log,
                offset: at,
            });
        }
        Ok(true)
    }
}
