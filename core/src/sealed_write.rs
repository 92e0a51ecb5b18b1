//! Sealed records: what a sealed segment's records are read and written with ([`SegSeal`],
//! [`SegKeys`]), and [`SealedWrite`], the streaming writer that encrypts a record's body in
//! stack-sized chunks, feeding the CRC and the MAC as it goes, so no buffer the size of an event
//! is needed and plaintext never reaches the storage.
//!
//! **Invariant:** no byte of an event's plaintext is handed to the storage; what is staged on
//! the stack is wiped before the writer returns.

use crate::log::WordWriter;
use crate::record::{RecordHeader, RECORD_HEADER_BYTES};
use crate::seal::{
    nonce, Algorithm, Domain, Key, KeyId, Sealer, SealerCache, SALT_BYTES, TAG_BYTES,
};
use crate::storage::{Region, Storage};

/// The key, algorithm and salt of a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegSeal {
    pub key: KeyId,
    pub algorithm: Algorithm,
    pub salt: [u8; SALT_BYTES],
}

impl SegSeal {
    /// The seal of the record `header` in segment `seq` (whose key's bytes are `key`), with
    /// the header bound as associated data.
    #[inline]
    pub(crate) fn record_sealer(
        &self,
        sealers: &mut SealerCache,
        key: &Key,
        seq: u64,
        header: &RecordHeader,
    ) -> Sealer {
        let n = nonce(&self.salt, seq, header.wid_delta, Domain::Log);
        let mut s = sealers.sealer(self.algorithm, self.key, key, &n);
        s.ad(&header.encode()[4..]);
        s
    }
}

/// How the records of a segment are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegKeys {
    /// Plaintext, the records' CRCs binding `salt` (`SegmentHeader::crc_salt`).
    Plain { salt: u32 },
    /// Sealed (never salted: what lies in a sealed segment is ciphertext and tags that only the
    /// key's holder can make).
    Sealed(SegSeal),
    /// The segment's header or seal record is unreadable: none of its records can be trusted.
    Broken,
}

impl SegKeys {
    /// What the record CRCs of segment `seq` read this way bind (`SegmentHeader::binding`).
    pub(crate) fn binding(self, seq: u64) -> u64 {
        match self {
            SegKeys::Plain { salt } => crate::record::binding(seq, salt),
            _ => seq,
        }
    }
}

/// One sealed record to write: the body is encrypted in stack-sized chunks, each chunk fed to
/// the CRC and the MAC and handed to the storage, so no buffer the size of the event is needed
/// and plaintext never reaches the storage.
pub(crate) struct SealedWrite<'a> {
    pub(crate) key: &'a Key,
    pub(crate) seal: SegSeal,
    pub(crate) seq: u64,
    /// The header with the final length and no CRC yet.
    pub(crate) header: RecordHeader,
    pub(crate) align: u64,
    pub(crate) start: u64,
}

/// Hands a record's body, piece by piece, to a sink.
pub(crate) type Emit<'e> = &'e dyn Fn(&mut dyn FnMut(&[u8]));

/// A piece of a record's body at least this long is encrypted from where it lies rather than
/// staged: an event (a single piece) of 16 bytes or more, never a commit record's 8-byte
/// pointers. The model checker's events (8 to 40 bytes) and the firmware's readings (32 bytes)
/// run both paths under power cuts.
const DIRECT_SEAL_BYTES: usize = 16;

/// The plaintext staged and encrypted at a time: a stack buffer, small on firmware.
#[cfg(not(feature = "server"))]
const SEAL_CHUNK: usize = 256;
/// The plaintext staged and encrypted at a time: a stack buffer, small on firmware.
#[cfg(feature = "server")]
const SEAL_CHUNK: usize = 2048;

impl SealedWrite<'_> {
    /// Writes the record; returns its end offset and the plaintext bytes written.
    ///
    /// When a record header fills whole write words (`WRITE_SIZE` at most 16), the body goes
    /// first and the header, whose CRC covers the ciphertext, last: one encryption pass. A
    /// power cut between the two leaves a record without a header, which reads as torn. With
    /// larger words the header shares its word with the body, so the body is encrypted twice:
    /// once for the CRC, once to write it after the header.
    ///
    /// On servers, over a storage that gathers writes (`Storage::whole_records`), a record
    /// that fits [`SEAL_CHUNK`] with its header is assembled on the stack and handed to the
    /// storage as one write, header first, as a plaintext record is: the file adapter gathers a
    /// commit's records into one `pwrite` only when each continues the last.
    pub(crate) fn write<S: Storage>(
        &self,
        storage: &mut S,
        sealers: &mut SealerCache,
        emit: Emit<'_>,
    ) -> Result<(u64, u64), S::Error> {
        #[cfg(feature = "server")]
        if storage.whole_records() && self.whole_span() <= SEAL_CHUNK as u64 {
            return self.write_whole(storage, sealers, emit);
        }
        if RECORD_HEADER_BYTES as u64 % self.align == 0 {
            let body_at = self.start + RECORD_HEADER_BYTES as u64;
            let mut w = WordWriter::new(&mut *storage, Region::Log, self.align, body_at);
            let (crc, written, result) = self.pass(sealers, emit, &mut |b| w.push(b));
            result?;
            let end = w.finish()?;
            let mut header = self.header;
            header.crc = crc;
            // Whole words at an aligned offset: no staging needed.
            storage.write(Region::Log, self.start, &header.encode())?;
            Ok((end, written))
        } else {
            let (crc, _, _) = self.pass::<S::Error>(sealers, emit, &mut |_| Ok(()));
            let mut header = self.header;
            header.crc = crc;
            let mut w = WordWriter::new(storage, Region::Log, self.align, self.start);
            w.push(&header.encode())?;
            let (_, written, result) = self.pass(sealers, emit, &mut |b| w.push(b));
            result?;
            Ok((w.finish()?, written))
        }
    }

    /// Writes a record that fits [`SEAL_CHUNK`] with its header in one write: the ciphertext
    /// is assembled after room for the header, which goes in front once the CRC is known.
    /// Only ciphertext is staged, so there is nothing to wipe.
    #[cfg(feature = "server")]
    fn write_whole<S: Storage>(
        &self,
        storage: &mut S,
        sealers: &mut SealerCache,
        emit: Emit<'_>,
    ) -> Result<(u64, u64), S::Error> {
        let mut record = [0u8; SEAL_CHUNK];
        let mut fill = RECORD_HEADER_BYTES;
        let (crc, written, result) = self.pass::<S::Error>(sealers, emit, &mut |c| {
            // The header's length bounds the ciphertext; a longer one is refused whole, and
            // `SealedWrite::write`'s caller sees the length differ from the header's.
            if let Some(room) = record.get_mut(fill..fill + c.len()) {
                room.copy_from_slice(c);
            }
            fill += c.len();
            Ok(())
        });
        result?;
        let mut header = self.header;
        header.crc = crc;
        record[..RECORD_HEADER_BYTES].copy_from_slice(&header.encode());
        // The padding after the text is still zeros.
        let span = self.whole_span() as usize;
        storage.write(Region::Log, self.start, &record[..span])?;
        Ok((self.start + span as u64, written))
    }

    /// The record's bytes with its header, padded to whole words.
    #[cfg(feature = "server")]
    fn whole_span(&self) -> u64 {
        crate::record::align_up(
            RECORD_HEADER_BYTES as u64 + self.header.len as u64,
            self.align,
        )
    }

    /// Encrypts the body and appends the tag, handing each piece of ciphertext to `out`.
    /// Returns the record's CRC, the plaintext length and the first error `out` returned.
    fn pass<E>(
        &self,
        sealers: &mut SealerCache,
        emit: Emit<'_>,
        out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> (u32, u64, Result<(), E>) {
        let mut sealer = self
            .seal
            .record_sealer(sealers, self.key, self.seq, &self.header);
        let mut digest = self.header.digest(self.seq);
        let mut chunk = [0u8; SEAL_CHUNK];
        // `chunk[..fill]` waits to go out: plaintext to encrypt, or (`ready`) ciphertext.
        let mut fill = 0;
        let mut ready = false;
        // Plaintext staged in `chunk`, to wipe at the end.
        let mut staged = 0;
        let mut written = 0u64;
        let mut result = Ok(());
        // Hands ciphertext on: into the CRC, then to `out` (unless it failed before).
        macro_rules! ciphertext {
            ($c:expr) => {{
                let c: &[u8] = $c;
                digest.update(c);
                if result.is_ok() {
                    result = out(c);
                }
            }};
        }
        emit(&mut |mut b: &[u8]| {
            written += b.len() as u64;
            if fill == 0 && b.len() >= DIRECT_SEAL_BYTES {
                // A whole event: encrypted from where it lies into `chunk`, which so holds only
                // ciphertext. The last piece waits, so the tag can go out with it.
                let mut pieces = b.chunks(SEAL_CHUNK).peekable();
                while let Some(piece) = pieces.next() {
                    let c = &mut chunk[..piece.len()];
                    sealer.encrypt_to(piece, c);
                    if pieces.peek().is_some() {
                        ciphertext!(c);
                    } else {
                        (fill, ready) = (piece.len(), true);
                    }
                }
                return;
            }
            if ready {
                ciphertext!(&chunk[..fill]);
                (fill, ready) = (0, false);
            }
            while !b.is_empty() {
                let k = (SEAL_CHUNK - fill).min(b.len());
                chunk[fill..fill + k].copy_from_slice(&b[..k]);
                fill += k;
                staged = staged.max(fill);
                b = &b[k..];
                if fill == SEAL_CHUNK {
                    sealer.encrypt(&mut chunk);
                    ciphertext!(&chunk);
                    fill = 0;
                }
            }
        });
        if !ready {
            sealer.encrypt(&mut chunk[..fill]);
        }
        let tag = sealer.tag();
        if let Some(room) = chunk.get_mut(fill..fill + TAG_BYTES) {
            // The tag goes out in one write with the last of the text.
            room.copy_from_slice(&tag);
            ciphertext!(&chunk[..fill + TAG_BYTES]);
        } else {
            ciphertext!(&chunk[..fill]);
            ciphertext!(&tag);
        }
        // Wipe the plaintext staged, if any.
        chunk[..staged].fill(0);
        (digest.finalize(), written, result)
    }
}
