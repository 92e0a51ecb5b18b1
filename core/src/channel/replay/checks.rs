//! The checks around replay: segment headers, the keys of sealed segments, record payloads
//! (CRC and tag), and the queued events whose bytes can no longer be read.

use super::*;

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
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
                    let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
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
    pub(super) fn queued(&mut self, i: usize) -> Pointer {
        let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
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
    pub(super) fn valid_header(
        &mut self,
        slot: u32,
    ) -> Result<Option<SegmentHeader>, Error<S::Error>> {
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
            HeaderRead::OtherFormat(_) => Err(crate::error::ConfigError::RecordFormatMismatch {
                on_media_compact: !geo.is_compact(),
            }
            .into()),
            HeaderRead::Misplaced(_) => Err(Error::Corrupted {
                region: Region::Log,
                offset: geo.segment_start(slot),
            }),
        }
    }

    /// Checks the key of every sealed segment from `start` to `newest` before anything is
    /// read: a missing key is [`Error::KeyMissing`]; a key that opens none of the segments
    /// naming it is [`Error::WrongKey`]. A seal record whose key opens other segments was
    /// altered, and only its segment is lost (counted in `authentication_failures`).
    pub(super) fn check_keys(&mut self, start: u64, newest: u64) -> Result<(), Error<S::Error>> {
        const TRACKED: usize = 8;
        let mut proven: [KeyId; TRACKED] = self.proven_keys;
        let mut failed: Option<u16> = None;
        for seq in start..=newest {
            match self.probe_seal(seq)? {
                Some((key, true)) => {
                    self.recovery.sealed_segments += 1;
                    if key != 0 && !proven.contains(&key) {
                        if let Some(free) = proven.iter_mut().find(|p| **p == 0) {
                            *free = key;
                        }
                    }
                }
                Some((key, false)) => failed = failed.or(Some(key)),
                None => {}
            }
        }
        self.proven_keys = proven;
        if let Some(key) = failed {
            if key == 0 || !proven.contains(&key) {
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
    pub(super) fn check_payload(
        &mut self,
        keys: SegKeys,
        h: &RecordHeader,
        seq: u64,
        at: u64,
        mut text: impl FnMut(u64, &[u8]),
    ) -> Result<Integrity, Error<S::Error>> {
        let payload = at + h.bytes() as u64;
        let mut digest = h.digest(keys.binding(seq));
        let mut pos = 0u64;
        let seal = match keys {
            SegKeys::Broken => return Ok(Integrity::Damaged),
            SegKeys::Plain { .. } => {
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
pub(super) fn text_len(keys: SegKeys, h: &RecordHeader) -> u64 {
    match keys {
        SegKeys::Sealed(_) => (h.len as u64).saturating_sub(TAG_BYTES as u64),
        _ => h.len as u64,
    }
}
