//! Reading events for takes: the put record's header and CRC checked before a byte is
//! delivered, sealed records opened with their segment's key (remembered for the last few
//! segments).

use super::*;

/// Why an event could not be read for a take.
pub(super) enum ReadFail<E> {
    Storage(E),
    /// The segment's key is missing or wrong.
    Key(Error<E>),
    Corrupt,
    TooSmall(usize),
    TooLarge(usize),
}

/// Segments whose keys are remembered for reads.
const SEAL_CACHE: usize = 4;

/// How the segments read last are to be read (sealed or salted), so that a run of takes reads
/// each segment's header and seal record once. The oldest entry gives way.
pub(super) struct SegKeysCache {
    entries: [Option<(u64, SegKeys)>; SEAL_CACHE],
    next: usize,
}

impl SegKeysCache {
    pub(super) fn new() -> Self {
        SegKeysCache {
            entries: [None; SEAL_CACHE],
            next: 0,
        }
    }

    fn get(&self, seq: u64) -> Option<SegKeys> {
        self.entries
            .iter()
            .flatten()
            .find(|(s, _)| *s == seq)
            .map(|(_, keys)| *keys)
    }

    fn insert(&mut self, seq: u64, keys: SegKeys) {
        self.entries[self.next] = Some((seq, keys));
        self.next = (self.next + 1) % SEAL_CACHE;
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Reads the event at `ptr` into `buf`, checking kind, bounds and CRC. A length that cannot
    /// be delivered is reported only once the CRC shows the length is genuine, so a corrupt
    /// header can never wedge the queue.
    pub(super) fn read_event(
        &mut self,
        ptr: Pointer,
        buf: &mut [u8],
    ) -> Result<usize, ReadFail<S::Error>> {
        let seq = self.geo.seq_of_slot(ptr.slot, self.head.seq());
        let keys = match self.segment_keys(seq) {
            Ok(k) => k,
            Err(Error::Storage(e)) => return Err(ReadFail::Storage(e)),
            Err(e) => return Err(ReadFail::Key(e)),
        };
        let bind = keys.binding(seq);
        match keys {
            SegKeys::Plain { .. } => {}
            SegKeys::Broken => return Err(ReadFail::Corrupt),
            SegKeys::Sealed(seal) => return self.read_sealed_event(ptr, seq, seal, buf),
        }
        let offset = self.geo.record_offset(ptr);
        let header = read_record_header(&mut self.storage, self.geo.is_compact(), offset)
            .map_err(ReadFail::Storage)?;
        let len = header.len as usize;
        let room = self.geo.segment_bytes - ptr.offset as u64 - self.geo.header_bytes();
        if header.kind != RecordKind::Put as u8 || len as u64 > room {
            return Err(ReadFail::Corrupt);
        }
        let payload = offset + self.geo.header_bytes();
        if len > buf.len() || len > self.config.max_event_bytes() as usize {
            if !payload_matches(&mut self.storage, &header, bind, offset)
                .map_err(ReadFail::Storage)?
            {
                return Err(ReadFail::Corrupt);
            }
            return Err(if len > self.config.max_event_bytes() as usize {
                ReadFail::TooLarge(len)
            } else {
                ReadFail::TooSmall(len)
            });
        }
        self.storage
            .read(Region::Log, payload, &mut buf[..len])
            .map_err(ReadFail::Storage)?;
        if !header.check(bind, &buf[..len]) {
            return Err(ReadFail::Corrupt);
        }
        Ok(len)
    }

    /// [`Channel::read_event`] in a sealed segment: the CRC, then the tag, then the plaintext.
    /// Nothing decrypted reaches the caller unless the tag matches.
    fn read_sealed_event(
        &mut self,
        ptr: Pointer,
        seq: u64,
        seal: SegSeal,
        buf: &mut [u8],
    ) -> Result<usize, ReadFail<S::Error>> {
        let offset = self.geo.record_offset(ptr);
        let header =
            read_record_header(&mut self.storage, false, offset).map_err(ReadFail::Storage)?;
        let len = header.len as usize;
        let room = self.geo.segment_bytes - ptr.offset as u64 - RECORD_HEADER_BYTES as u64;
        if header.kind != RecordKind::Put as u8 || len as u64 > room || len < TAG_BYTES {
            return Err(ReadFail::Corrupt);
        }
        let Some(key) = self.keys.key(seal.key).copied() else {
            return Err(ReadFail::Key(Error::KeyMissing { key: seal.key }));
        };
        let text = len - TAG_BYTES;
        let payload = offset + RECORD_HEADER_BYTES as u64;
        let mut sealer = seal.record_sealer(&mut self.sealers, &key, seq, &header);
        let mut digest = header.digest(seq);
        let mut tag = [0u8; TAG_BYTES];
        if text > buf.len() || text > self.config.max_event_bytes() as usize {
            // Report the length only once the record proves genuine.
            stream_payload(&mut self.storage, payload, text as u64, |c| {
                digest.update(c);
                sealer.authenticate(c);
            })
            .map_err(ReadFail::Storage)?;
        } else {
            self.storage
                .read(Region::Log, payload, &mut buf[..text])
                .map_err(ReadFail::Storage)?;
            digest.update(&buf[..text]);
            sealer.decrypt(&mut buf[..text]);
        }
        self.storage
            .read(Region::Log, payload + text as u64, &mut tag)
            .map_err(ReadFail::Storage)?;
        digest.update(&tag);
        if digest.finalize() != header.crc {
            let n = text.min(buf.len());
            buf[..n].fill(0);
            return Err(ReadFail::Corrupt);
        }
        if !sealer.verify(&tag) {
            let n = text.min(buf.len());
            buf[..n].fill(0);
            self.stats.authentication_failures += 1;
            return Err(ReadFail::Corrupt);
        }
        if text > self.config.max_event_bytes() as usize {
            return Err(ReadFail::TooLarge(text));
        }
        if text > buf.len() {
            return Err(ReadFail::TooSmall(text));
        }
        Ok(text)
    }

    /// How to read the records of segment `seq`: plaintext (with the salt their CRCs bind),
    /// sealed with a key and salt, or not at all. A sealed segment's seal record is checked
    /// against its key the first time.
    pub(crate) fn segment_keys(&mut self, seq: u64) -> Result<SegKeys, Error<S::Error>> {
        if let Some(keys) = self.head.writing(seq) {
            return Ok(keys);
        }
        if let Some(keys) = self.seg_keys.get(seq) {
            return Ok(keys);
        }
        let keys = self.read_segment_keys(seq)?;
        self.seg_keys.insert(seq, keys);
        Ok(keys)
    }

    pub(crate) fn read_segment_keys(&mut self, seq: u64) -> Result<SegKeys, Error<S::Error>> {
        let geo = self.geo;
        let slot = geo.slot_of(seq);
        let header =
            match read_segment_header(&mut self.storage, &geo, slot).map_err(Error::Storage)? {
                SegmentCheck::Valid(h) if h.seq == seq => h,
                _ => return Ok(SegKeys::Broken),
            };
        if header.flags & SEGMENT_FLAG_SEALED == 0 {
            return Ok(SegKeys::Plain {
                salt: header.crc_salt(),
            });
        }
        let at = geo.segment_start(slot) + geo.first_record();
        let record = read_record_header(&mut self.storage, false, at).map_err(Error::Storage)?;
        let mut payload = [0u8; SEAL_PAYLOAD_BYTES];
        self.storage
            .read(Region::Log, at + RECORD_HEADER_BYTES as u64, &mut payload)
            .map_err(Error::Storage)?;
        let seal = match SealRecord::decode(&payload) {
            Some(seal)
                if record.kind == RecordKind::Seal as u8
                    && record.len as usize == SEAL_PAYLOAD_BYTES
                    && record.wid_delta == 0
                    && record.check(header.binding(), &payload) =>
            {
                seal
            }
            _ => return Ok(SegKeys::Broken),
        };
        if !seal.algorithm.supported() {
            return Err(Error::UnsupportedAlgorithm {
                algorithm: seal.algorithm,
            });
        }
        let key = self
            .keys
            .key(seal.key)
            .ok_or(Error::KeyMissing { key: seal.key })?;
        if !SealRecord::verify(key, &seal, &header, &record) {
            if seal.key != 0 && self.proven_keys.contains(&seal.key) {
                // The key opens other segments: this seal record was altered.
                self.recovery.authentication_failures += 1;
                return Ok(SegKeys::Broken);
            }
            return Err(Error::WrongKey { key: seal.key });
        }
        Ok(SegKeys::Sealed(SegSeal {
            key: seal.key,
            algorithm: seal.algorithm,
            salt: seal.salt,
        }))
    }
}
