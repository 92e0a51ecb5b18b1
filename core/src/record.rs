//! The on-media format of the log: segment headers, record headers and pointers.
//!
//! Every structure here is little-endian with explicitly sized fields; docs/format.md draws each
//! one. A segment starts with a 32-byte [`SegmentHeader`]; records follow, each aligned to the
//! storage's write size, each a 16-byte header and a payload. The CRC-32C of a record covers its
//! header (after the CRC field) and its payload, so a torn or flipped byte anywhere is caught.
//!
//! **Invariant:** nothing decoded here is trusted before its CRC matches and every length in it
//! has been checked against a configured maximum.

/// How the CRC is computed in software: with the `server` feature, slicing by 16 (16 KiB of
/// tables, about 9 times as fast on a server); without it, a byte at a time (1 KiB of table, for
/// firmware). Both give the same checksums.
#[cfg(feature = "server")]
pub type CrcTable = crc::Table<16>;
/// How the CRC is computed in software: with the `server` feature, slicing by 16 (16 KiB of
/// tables, about 9 times as fast on a server); without it, a byte at a time (1 KiB of table, for
/// firmware). Both give the same checksums.
#[cfg(not(feature = "server"))]
pub type CrcTable = crc::Table<1>;

/// The processor's instruction (SSE 4.2, the ARMv8 CRC extension), found at run time by the
/// `crc32c` crate, which falls back to software elsewhere: `server` builds on x86-64 and aarch64.
#[cfg(all(
    feature = "server",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod engine {
    /// The CRC of the bytes so far.
    #[derive(Clone)]
    pub struct State(u32);

    impl State {
        pub const fn new() -> Self {
            State(0)
        }

        pub fn update(&mut self, bytes: &[u8]) {
            self.0 = crc32c::crc32c_append(self.0, bytes);
        }

        pub fn finalize(self) -> u32 {
            self.0
        }
    }
}

/// [`CrcTable`]: every other build, firmware among them.
#[cfg(not(all(
    feature = "server",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod engine {
    use super::CrcTable;
    use crc::{Crc, CRC_32_ISCSI};

    static SOFTWARE: Crc<u32, CrcTable> = Crc::<u32, CrcTable>::new(&CRC_32_ISCSI);

    /// The table CRC's running state.
    #[derive(Clone)]
    pub struct State(crc::Digest<'static, u32, CrcTable>);

    impl State {
        pub const fn new() -> Self {
            State(SOFTWARE.digest())
        }

        pub fn update(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }

        pub fn finalize(self) -> u32 {
            self.0.finalize()
        }
    }
}

/// CRC-32C (Castagnoli), the checksum of every structure on media: `CRC32C.checksum(bytes)`,
/// or `CRC32C.digest()` to feed it in pieces.
pub struct Crc32c;

/// CRC-32C, by the fastest means this build has; every means gives the same checksums.
pub static CRC32C: Crc32c = Crc32c;

impl Crc32c {
    /// A running CRC over nothing yet.
    pub const fn digest(&self) -> CrcDigest {
        CrcDigest(engine::State::new())
    }

    /// The CRC of `bytes`.
    pub fn checksum(&self, bytes: &[u8]) -> u32 {
        let mut digest = self.digest();
        digest.update(bytes);
        digest.finalize()
    }
}

/// A running CRC-32C: [`Crc32c::digest`], then [`update`](Self::update) with each piece in
/// order, then [`finalize`](Self::finalize). It holds only what its build's way of computing
/// uses (4 bytes with the processor's instruction), so firmware pays nothing for the server's.
#[derive(Clone)]
pub struct CrcDigest(engine::State);

impl CrcDigest {
    /// Feeds the next `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The CRC of everything fed.
    pub fn finalize(self) -> u32 {
        self.0.finalize()
    }
}

/// The log format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The magic at bytes 4..8 of every segment header: `SGLG`.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SGLG";
/// The size of a segment header on media.
pub const SEGMENT_HEADER_BYTES: usize = 40;
/// The size of a record header on media.
pub const RECORD_HEADER_BYTES: usize = 16;
/// The size of a record header in a compact segment ([`SEGMENT_FLAG_COMPACT`]).
pub const COMPACT_HEADER_BYTES: usize = 8;
/// The largest segment a compact log may have: a compact header's 16-bit length and 13-bit
/// index must hold any record and any record count a segment can.
pub const COMPACT_MAX_SEGMENT_BYTES: u32 = 1 << 16;
/// A compact header's index field: 13 bits. A segment of at most
/// [`COMPACT_MAX_SEGMENT_BYTES`] holds at most `(65,536 - 40) / 8` records, fewer than 2^13.
pub const COMPACT_MAX_INDEX: u32 = (1 << 13) - 1;
/// The size of a pointer inside a commit record.
pub const POINTER_BYTES: usize = 8;
/// The bytes in front of a commit record's pointers: the writer's durable mark, a `u64` below
/// which every write-order id was durable when the commit was written.
pub const COMMIT_PREFIX_BYTES: usize = 8;
/// The bytes in front of a mark's bytes, in a marked commit record and in a checkpoint: the
/// stream (`u16`), the mark's length (`u16`) and 4 zero bytes.
pub const MARK_PREFIX_BYTES: usize = 8;

/// Encodes the prefix of a mark.
pub const fn mark_prefix(stream: u16, len: u16) -> [u8; MARK_PREFIX_BYTES] {
    let s = stream.to_le_bytes();
    let l = len.to_le_bytes();
    [s[0], s[1], l[0], l[1], 0, 0, 0, 0]
}

/// Decodes the prefix of a mark: its stream and length, or `None` if the zero bytes are not.
pub const fn decode_mark_prefix(b: &[u8; MARK_PREFIX_BYTES]) -> Option<(u16, u16)> {
    if b[4] != 0 || b[5] != 0 || b[6] != 0 || b[7] != 0 {
        return None;
    }
    Some((
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    ))
}
/// The largest payload the 24-bit length field can carry.
pub const MAX_PAYLOAD_BYTES: u32 = (1 << 24) - 1;

/// Segment header flag: this is the first segment a channel wrote after it was opened. Replay
/// uses it to know that no transaction of an earlier run can continue past this point.
pub const SEGMENT_FLAG_OPENED: u16 = 1;
/// Segment header flag: the segment is sealed (encrypted and authenticated). Its first record
/// is a [`RecordKind::Seal`] record naming the key and the salt of every record after it.
pub const SEGMENT_FLAG_SEALED: u16 = 2;
/// Segment header flag: the segment's body was not erased when it was opened: past its records
/// may lie what an earlier lap left ([`crate::Storage::rewritable`], files). In a plaintext
/// segment the header's `salt` is then part of every record's CRC
/// ([`SegmentHeader::binding`]), so that neither a stale record nor a record image inside an
/// event body can pass for one of this segment's records.
pub const SEGMENT_FLAG_UNERASED: u16 = 4;
/// Segment header flag: the segment's records are compact: an 8-byte record header (no
/// transaction id, a 16-bit length, a 13-bit index) and commits whose durable mark and pointers
/// are variable-length integers (see [`compact`]). Only in plaintext logs of segments of at
/// most 64 KiB; a log is compact in all its segments or in none.
pub const SEGMENT_FLAG_COMPACT: u16 = 8;
const SEGMENT_FLAGS_KNOWN: u16 =
    SEGMENT_FLAG_OPENED | SEGMENT_FLAG_SEALED | SEGMENT_FLAG_UNERASED | SEGMENT_FLAG_COMPACT;
/// The payload of a seal record: key id (2), algorithm (1), zero (1), salt (8), tag (16).
pub const SEAL_PAYLOAD_BYTES: usize = 28;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum RecordKind {
    /// An event body, written when the event is put. It counts only once a commit lists it.
    Put = 1,
    /// Commits a put transaction: the payload is the durable mark, then a pointer to each of its
    /// put records, in put order. The events join the queue's tail in that order.
    PutCommit = 2,
    /// Commits a take transaction: the payload is the durable mark, then a pointer to each event
    /// it took. Those events leave the queue for good.
    TakeCommit = 3,
    /// The first record of a sealed segment, and only there: the id of the key and the salt
    /// every record of the segment is sealed with, and a tag over the segment header, which
    /// proves the key right before anything is decrypted. See [`SealRecord`].
    Seal = 4,
    /// A put commit that also carries a mark (see `Channel::set_mark`): the durable mark, the
    /// mark's prefix and bytes (padded to 8), then the pointers. The mark takes effect exactly
    /// when the commit does: one record, one CRC.
    MarkedPutCommit = 5,
    /// A take commit that also carries a mark, laid out as [`RecordKind::MarkedPutCommit`].
    MarkedTakeCommit = 6,
}

impl RecordKind {
    /// Decodes a kind byte; `None` for a value this version does not know.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::PutCommit),
            3 => Some(RecordKind::TakeCommit),
            4 => Some(RecordKind::Seal),
            5 => Some(RecordKind::MarkedPutCommit),
            6 => Some(RecordKind::MarkedTakeCommit),
            _ => None,
        }
    }

    /// True for the four kinds of commit record.
    pub const fn is_commit(self) -> bool {
        matches!(
            self,
            RecordKind::PutCommit
                | RecordKind::TakeCommit
                | RecordKind::MarkedPutCommit
                | RecordKind::MarkedTakeCommit
        )
    }

    /// True for a put commit, marked or not.
    pub const fn is_put_commit(self) -> bool {
        matches!(self, RecordKind::PutCommit | RecordKind::MarkedPutCommit)
    }

    /// True for a commit that carries a mark.
    pub const fn is_marked(self) -> bool {
        matches!(
            self,
            RecordKind::MarkedPutCommit | RecordKind::MarkedTakeCommit
        )
    }
}

/// The header at the start of each log segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SegmentHeader {
    /// [`SEGMENT_FLAG_OPENED`] or 0.
    pub flags: u16,
    /// The segment size the log was formatted with.
    pub segment_bytes: u32,
    /// The segment's sequence number: it grows by one per segment and never wraps. The segment
    /// lives in slot `seq % segment_count`.
    pub seq: u64,
    /// The write-order id of the segment's first record; record `i` of the segment has id
    /// `base_wid + i`.
    pub base_wid: u64,
    /// The largest record payload the writer of this segment could produce. Replay bounds every
    /// length it reads in the segment by it, so a corrupt length never causes a long read, and a
    /// later change of configuration never makes old records unreadable.
    pub max_payload: u32,
    /// A random number drawn when the segment was opened, bound into every record's CRC when
    /// the [`SEGMENT_FLAG_UNERASED`] flag is set in a plaintext segment (0 otherwise).
    pub salt: u32,
}

/// What the record CRCs of segment `seq` bind, given the salt they bind
/// ([`SegmentHeader::crc_salt`]): see [`SegmentHeader::binding`].
pub const fn binding(seq: u64, salt: u32) -> u64 {
    seq ^ ((salt as u64) << 32)
}

/// The result of decoding bytes where a segment header should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCheck {
    /// A valid header.
    Valid(SegmentHeader),
    /// Not a header: erased, torn, half-erased or never written.
    Invalid,
    /// A Sluicegate header with a correct CRC but a version or flags this build does not know.
    Unsupported(u16),
}

impl SegmentHeader {
    /// What every record's CRC in this segment binds before its own bytes: the sequence number,
    /// and in a salted segment the salt in its high 32 bits.
    ///
    /// A record left by an earlier lap of the ring was bound to another sequence number. Two
    /// numbers below 2^32 never give the same CRC to the same bytes: after the 8 bytes of the
    /// binding the CRC register differs by the difference's polynomial times x^32 modulo the
    /// CRC-32C polynomial, and a nonzero polynomial of degree below 32 is not a multiple of one
    /// of degree 32. The salt adds what no writer of an event body can know, so a record image
    /// inside an event of an earlier lap passes only by a 2^-32 chance.
    pub fn binding(&self) -> u64 {
        binding(self.seq, self.crc_salt())
    }

    /// The salt the records' CRCs bind: `salt` in a salted plaintext segment, 0 otherwise (a
    /// sealed segment is never salted: its bytes are ciphertext and tags only the key makes).
    pub fn crc_salt(&self) -> u32 {
        if self.flags & (SEGMENT_FLAG_UNERASED | SEGMENT_FLAG_SEALED) == SEGMENT_FLAG_UNERASED {
            self.salt
        } else {
            0
        }
    }

    /// Encodes the header with its CRC.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[4..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_wid.to_le_bytes());
        b[32..36].copy_from_slice(&self.max_payload.to_le_bytes());
        b[36..40].copy_from_slice(&self.salt.to_le_bytes());
        let crc = CRC32C.checksum(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header. The CRC and magic come first, so that garbage is never
    /// mistaken for a newer version.
    pub fn decode(b: &[u8; SEGMENT_HEADER_BYTES]) -> SegmentCheck {
        let crc = u32_at(b, 0);
        if crc != CRC32C.checksum(&b[4..]) || b[4..8] != SEGMENT_MAGIC {
            return SegmentCheck::Invalid;
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let flags = u16::from_le_bytes([b[10], b[11]]);
        if version != FORMAT_VERSION || flags & !SEGMENT_FLAGS_KNOWN != 0 {
            return SegmentCheck::Unsupported(version);
        }
        SegmentCheck::Valid(SegmentHeader {
            flags,
            segment_bytes: u32_at(b, 12),
            seq: u64_at(b, 16),
            base_wid: u64_at(b, 24),
            max_payload: u32_at(b, 32),
            salt: u32_at(b, 36),
        })
    }
}

/// The 16-byte header in front of every record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecordHeader {
    /// CRC-32C of header bytes 4..16 followed by the payload.
    pub crc: u32,
    /// The raw kind byte; see [`RecordKind`].
    pub kind: u8,
    /// The payload length in bytes (24 bits on media).
    pub len: u32,
    /// The record's write-order id minus its segment's `base_wid`.
    pub wid_delta: u32,
    /// The id of the transaction that wrote the record (0 in a compact segment, which does not
    /// store it).
    pub txn: u32,
    /// True for the 8-byte header of a compact segment ([`SEGMENT_FLAG_COMPACT`]).
    pub compact: bool,
}

impl RecordHeader {
    /// Builds a header whose CRC binds `bind` (the [`SegmentHeader::binding`] of the segment
    /// the record is written to) and covers the header and the payload, which `feed` hands to
    /// the digest.
    pub fn seal(
        bind: u64,
        kind: RecordKind,
        wid_delta: u32,
        txn: u32,
        len: u32,
        feed: impl FnOnce(&mut CrcDigest),
    ) -> Self {
        Self::seal_as(false, bind, kind, wid_delta, txn, len, feed)
    }

    /// [`RecordHeader::seal`] in the full or the compact form (which drops `txn`; the caller
    /// keeps `len` below 2^16 and `wid_delta` at most [`COMPACT_MAX_INDEX`]). Without the
    /// core's `compact` feature the header is always the full form: the flag and every test of
    /// it fold away, so a build that does not use compact logs does not carry their code.
    pub fn seal_as(
        compact: bool,
        bind: u64,
        kind: RecordKind,
        wid_delta: u32,
        txn: u32,
        len: u32,
        feed: impl FnOnce(&mut CrcDigest),
    ) -> Self {
        // Without the core's `compact` feature there is no compact form.
        let compact = compact && cfg!(feature = "compact");
        let mut h = RecordHeader {
            crc: 0,
            kind: kind as u8,
            len,
            wid_delta,
            txn: if compact { 0 } else { txn },
            compact,
        };
        let mut digest = h.digest(bind);
        feed(&mut digest);
        h.crc = digest.finalize();
        h
    }

    /// A CRC digest fed with `bind` (the segment's [`SegmentHeader::binding`]) and the header's
    /// covered bytes; feed it the payload and compare the result with `self.crc`.
    pub fn digest(&self, bind: u64) -> CrcDigest {
        let mut digest = CRC32C.digest();
        digest.update(&bind.to_le_bytes());
        digest.update(&self.encode()[4..self.bytes()]);
        digest
    }

    /// The header's size on media: [`RECORD_HEADER_BYTES`], or [`COMPACT_HEADER_BYTES`].
    pub const fn bytes(&self) -> usize {
        header_bytes(cfg!(feature = "compact") && self.compact)
    }

    /// Encodes the header; a compact one fills the first [`COMPACT_HEADER_BYTES`] (see
    /// [`RecordHeader::bytes`]). The length must fit 24 bits (checked by the caller against
    /// [`MAX_PAYLOAD_BYTES`]), or 16 bits in a compact segment.
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut b = [0u8; RECORD_HEADER_BYTES];
        b[0..4].copy_from_slice(&self.crc.to_le_bytes());
        if cfg!(feature = "compact") && self.compact {
            b[4..6].copy_from_slice(&(self.len as u16).to_le_bytes());
            let word = ((self.kind as u16) << 13) | (self.wid_delta as u16 & 0x1fff);
            b[6..8].copy_from_slice(&word.to_le_bytes());
            return b;
        }
        b[4] = self.kind;
        b[5..8].copy_from_slice(&self.len.to_le_bytes()[..3]);
        b[8..12].copy_from_slice(&self.wid_delta.to_le_bytes());
        b[12..16].copy_from_slice(&self.txn.to_le_bytes());
        b
    }

    /// Decodes the fields. Nothing is checked here: the CRC needs the payload, see
    /// [`RecordHeader::digest`].
    pub fn decode(b: &[u8; RECORD_HEADER_BYTES]) -> Self {
        RecordHeader {
            crc: u32_at(b, 0),
            kind: b[4],
            len: u32::from_le_bytes([b[5], b[6], b[7], 0]),
            wid_delta: u32_at(b, 8),
            txn: u32_at(b, 12),
            compact: false,
        }
    }

    /// Decodes a compact header (the first [`COMPACT_HEADER_BYTES`] of `b`): the length at
    /// bytes 4..6, then a word of the kind (3 bits) over the index (13 bits). Only with the
    /// core's `compact` feature.
    #[cfg(feature = "compact")]
    pub fn decode_compact(b: &[u8]) -> Self {
        let word = u16::from_le_bytes([b[6], b[7]]);
        RecordHeader {
            crc: u32_at(b, 0),
            kind: (word >> 13) as u8,
            len: u16::from_le_bytes([b[4], b[5]]) as u32,
            wid_delta: (word & 0x1fff) as u32,
            txn: 0,
            compact: true,
        }
    }

    /// Decodes a header of either form.
    pub fn decode_as(compact: bool, b: &[u8; RECORD_HEADER_BYTES]) -> Self {
        #[cfg(feature = "compact")]
        if compact {
            return Self::decode_compact(b);
        }
        let _ = compact;
        Self::decode(b)
    }

    /// True if `payload` completes this record in a segment whose binding is `bind`
    /// ([`SegmentHeader::binding`]): it has exactly the header's length, and the CRC matches.
    /// (A CRC can be forged, so it never vouches for the length by itself.)
    pub fn check(&self, bind: u64, payload: &[u8]) -> bool {
        if payload.len() != self.len as usize {
            return false;
        }
        let mut d = self.digest(bind);
        d.update(payload);
        d.finalize() == self.crc
    }
}

/// The payload of a [`RecordKind::Seal`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SealRecord {
    /// The key every record of the segment is sealed with (never 0).
    pub key: crate::seal::KeyId,
    /// The AEAD every record of the segment (this one included) is sealed with.
    pub algorithm: crate::seal::Algorithm,
    /// The segment's salt: the first 8 bytes of every nonce in it.
    pub salt: [u8; crate::seal::SALT_BYTES],
    /// The tag of an empty text under the segment's first nonce, over the segment header
    /// (after its CRC), this record's header (after its CRC), and the key id and salt.
    pub tag: [u8; crate::seal::TAG_BYTES],
}

impl SealRecord {
    /// Encodes the payload.
    pub fn encode(&self) -> [u8; SEAL_PAYLOAD_BYTES] {
        let mut b = [0u8; SEAL_PAYLOAD_BYTES];
        b[0..2].copy_from_slice(&self.key.to_le_bytes());
        b[2] = self.algorithm as u8;
        b[4..12].copy_from_slice(&self.salt);
        b[12..28].copy_from_slice(&self.tag);
        b
    }

    /// Decodes a payload whose CRC was checked; `None` if its reserved byte is not zero, it
    /// names key 0 or an algorithm id no build knows.
    pub fn decode(b: &[u8; SEAL_PAYLOAD_BYTES]) -> Option<Self> {
        let key = u16::from_le_bytes([b[0], b[1]]);
        let algorithm = crate::seal::Algorithm::from_id(b[2])?;
        if key == 0 || b[3] != 0 {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[4..12]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&b[12..28]);
        Some(SealRecord {
            key,
            algorithm,
            salt,
            tag,
        })
    }

    /// The tag this seal record (whose key's bytes are `key`; its own `tag` is ignored)
    /// carries in the segment whose header is `segment`, with the record header `record`.
    pub fn tag_for(
        &self,
        key: &crate::seal::Key,
        segment: &SegmentHeader,
        record: &RecordHeader,
    ) -> [u8; crate::seal::TAG_BYTES] {
        self.sealer(key, segment, record).tag()
    }

    /// True if `seal`'s tag is right for `key` (compared in constant time).
    pub fn verify(
        key: &crate::seal::Key,
        seal: &SealRecord,
        segment: &SegmentHeader,
        record: &RecordHeader,
    ) -> bool {
        seal.sealer(key, segment, record).verify(&seal.tag)
    }

    /// The seal of an empty text under the segment's first nonce, with the segment's algorithm.
    /// The associated data binds the key id and the salt; a nonzero algorithm id is bound too
    /// (and the algorithm itself changes every tag).
    fn sealer(
        &self,
        key: &crate::seal::Key,
        segment: &SegmentHeader,
        record: &RecordHeader,
    ) -> crate::seal::Sealer {
        use crate::seal::{nonce, Algorithm, Domain, Sealer};
        let n = nonce(&self.salt, segment.seq, 0, Domain::Log);
        let mut s = Sealer::with(self.algorithm, key, &n);
        s.ad(&segment.encode()[4..]);
        s.ad(&record.encode()[4..]);
        s.ad(&self.key.to_le_bytes());
        s.ad(&self.salt);
        if self.algorithm != Algorithm::XChaCha20Poly1305 {
            s.ad(&[self.algorithm as u8]);
        }
        s
    }
}

/// The size of a record header on media: compact or not.
pub const fn header_bytes(compact: bool) -> usize {
    if compact {
        COMPACT_HEADER_BYTES
    } else {
        RECORD_HEADER_BYTES
    }
}

/// The kind byte of a record header of either form that starts at `b[0]` (`b` holds at least
/// the header), for scans that look for records.
pub fn kind_at(compact: bool, b: &[u8]) -> u8 {
    if compact {
        b[7] >> 5
    } else {
        b[4]
    }
}

/// Where a record lives: a segment slot and a byte offset inside the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pointer {
    /// The segment's slot in the log ring (24 bits).
    pub slot: u32,
    /// The record's offset inside the segment.
    pub offset: u32,
}

impl Pointer {
    /// The 8-byte media form: offset then slot, little-endian.
    pub fn encode(&self) -> [u8; POINTER_BYTES] {
        let mut b = [0u8; POINTER_BYTES];
        b[0..4].copy_from_slice(&self.offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.slot.to_le_bytes());
        b
    }

    /// Decodes the media form; bounds are checked by the log, which knows the geometry.
    pub fn decode(b: &[u8]) -> Self {
        Pointer {
            offset: u32_at(b, 0),
            slot: u32_at(b, 4),
        }
    }

    /// The in-memory queue word (without a transaction tag).
    pub const fn to_word(self) -> u64 {
        ((self.slot as u64) << 32) | self.offset as u64
    }

    /// The pointer in a queue word, ignoring its tag.
    pub const fn from_word(w: u64) -> Self {
        Pointer {
            slot: ((w >> 32) & 0x00ff_ffff) as u32,
            offset: w as u32,
        }
    }
}

/// The payload of a commit in a compact segment ([`SEGMENT_FLAG_COMPACT`]): variable-length
/// integers (LEB128: 7 bits a byte, low bits first, the top bit set on every byte but the last),
/// with no count: the record's length ends the list.
///
/// ```text
/// distance                      the commit's write-order id minus the writer's durable mark
/// slot, offset / align          the first pointer
/// then, for each next pointer:
///   zigzag(offset delta / align) << 1          in the previous pointer's segment slot
///   (slots forward << 1) | 1, offset / align   in another slot (forward round the ring)
/// ```
///
/// A put commit's records lie one after another, so each next pointer is a byte; a take
/// commit's follow the queue, in order through the ring. Offsets are multiples of the write
/// size, so they are stored divided by it.
pub mod compact {
    use super::Pointer;

    /// The longest variable-length integer (a `u64`).
    pub const MAX_VARINT: usize = 10;

    /// Hands `v`'s variable-length form to `sink`.
    pub fn varint(mut v: u64, sink: &mut dyn FnMut(&[u8])) {
        let mut b = [0u8; MAX_VARINT];
        let mut n = 0;
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                b[n] = low;
                n += 1;
                break;
            }
            b[n] = low | 0x80;
            n += 1;
        }
        sink(&b[..n]);
    }

    pub(super) const fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    const fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    /// Encodes a commit's pointers, each against the one before.
    pub struct Encoder {
        prev: Option<Pointer>,
        align: u64,
        segments: u64,
    }

    impl Encoder {
        /// An encoder for a log of `segments` slots whose records are aligned to `align`.
        pub fn new(align: u64, segments: u64) -> Self {
            Encoder {
                prev: None,
                align,
                segments,
            }
        }

        /// Hands the next pointer's form to `sink`. `p.offset` is a multiple of the alignment
        /// and `p.slot` below the segment count, as every pointer the writer makes is.
        pub fn pointer(&mut self, p: Pointer, sink: &mut dyn FnMut(&[u8])) {
            let words = p.offset as u64 / self.align;
            match self.prev {
                None => {
                    varint(p.slot as u64, sink);
                    varint(words, sink);
                }
                Some(q) if q.slot == p.slot => {
                    let delta = words as i64 - (q.offset as u64 / self.align) as i64;
                    varint(zigzag(delta) << 1, sink);
                }
                Some(q) => {
                    let forward = (p.slot as u64 + self.segments - q.slot as u64) % self.segments;
                    varint((forward << 1) | 1, sink);
                    varint(words, sink);
                }
            }
            self.prev = Some(p);
        }
    }

    /// What a compact commit's payload yields, in order: the distance once, then pointers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Item {
        /// The commit's write-order id minus the writer's durable mark.
        Distance(u64),
        /// The next pointer.
        Pointer(Pointer),
    }

    /// Bytes that no writer makes: an over-long or unfinished integer, a slot outside the
    /// ring, an offset outside 32 bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Malformed;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Next {
        Distance,
        FirstSlot,
        Step,
        Offset,
    }

    /// Decodes a compact commit's payload a byte at a time, so that it can be read in pieces of
    /// any size while its CRC is checked.
    pub struct Decoder {
        next: Next,
        acc: u64,
        shift: u32,
        slot: u32,
        prev: Option<Pointer>,
        align: u64,
        segments: u64,
    }

    impl Decoder {
        /// A decoder for a log of `segments` slots whose records are aligned to `align`.
        pub fn new(align: u64, segments: u64) -> Self {
            Decoder {
                next: Next::Distance,
                acc: 0,
                shift: 0,
                slot: 0,
                prev: None,
                align,
                segments,
            }
        }

        /// Feeds one byte; an item when it completes one.
        pub fn feed(&mut self, byte: u8) -> Result<Option<Item>, Malformed> {
            let bits = (byte & 0x7f) as u64;
            // A tenth byte may only carry the top bit of a u64; a last byte of 0 after others
            // is an over-long form no writer makes.
            if self.shift == 63 && byte > 1 || self.shift > 0 && byte == 0 {
                return Err(Malformed);
            }
            self.acc |= bits << self.shift;
            if byte & 0x80 != 0 {
                self.shift += 7;
                return Ok(None);
            }
            let v = self.acc;
            self.acc = 0;
            self.shift = 0;
            match self.next {
                Next::Distance => {
                    self.next = Next::FirstSlot;
                    Ok(Some(Item::Distance(v)))
                }
                Next::FirstSlot => {
                    if v >= self.segments {
                        return Err(Malformed);
                    }
                    self.slot = v as u32;
                    self.next = Next::Offset;
                    Ok(None)
                }
                Next::Step if v & 1 == 0 => {
                    let Some(q) = self.prev else {
                        return Err(Malformed);
                    };
                    let words = (q.offset as u64 / self.align) as i64;
                    let words = words.checked_add(unzigzag(v >> 1)).ok_or(Malformed)?;
                    self.pointer(q.slot, words)
                }
                Next::Step => {
                    let (Some(q), forward) = (self.prev, v >> 1) else {
                        return Err(Malformed);
                    };
                    if forward == 0 || forward >= self.segments {
                        return Err(Malformed);
                    }
                    self.slot = ((q.slot as u64 + forward) % self.segments) as u32;
                    self.next = Next::Offset;
                    Ok(None)
                }
                Next::Offset => self.pointer(self.slot, v as i64),
            }
        }

        fn pointer(&mut self, slot: u32, words: i64) -> Result<Option<Item>, Malformed> {
            let offset = u64::try_from(words)
                .ok()
                .and_then(|w| w.checked_mul(self.align))
                .and_then(|o| u32::try_from(o).ok())
                .ok_or(Malformed)?;
            let p = Pointer { slot, offset };
            self.prev = Some(p);
            self.next = Next::Step;
            Ok(Some(Item::Pointer(p)))
        }

        /// Checks that the payload ended where an item did, after the distance and at least
        /// one pointer.
        pub fn finish(&self) -> Result<(), Malformed> {
            if self.next == Next::Step && self.shift == 0 {
                Ok(())
            } else {
                Err(Malformed)
            }
        }
    }
}

/// The little-endian `u32` at `b[i..i + 4]`.
pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The little-endian `u64` at `b[i..i + 8]`.
pub(crate) fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Rounds `n` up to a multiple of `align` (a power of two or any positive number).
pub const fn align_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crc::{Crc, CRC_32_ISCSI};
    use std::{vec, vec::Vec};

    /// The CRC this build uses (the processor's instruction, or slicing by 16, with `server`;
    /// a byte at a time without) gives the checksums of the plain byte-at-a-time and table-free
    /// algorithms, at every length and split, so servers and firmware read each other's media.
    /// 300 bytes cover every alignment and tail of the hardware path's 8-byte words; its
    /// 3-way interleaved blocks start at longer inputs, which the next test covers.
    #[test]
    fn every_crc_table_gives_the_same_checksums() {
        let bytes: [u8; 300] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        let bytewise = Crc::<u32, crc::Table<1>>::new(&CRC_32_ISCSI);
        let bitwise = Crc::<u32, crc::NoTable>::new(&CRC_32_ISCSI);
        for len in 0..bytes.len() {
            let data = &bytes[..len];
            let mut d = CRC32C.digest();
            let (a, b) = data.split_at(len / 3);
            d.update(a);
            d.update(b);
            let ours = d.finalize();
            assert_eq!(ours, bytewise.checksum(data), "length {len}");
            assert_eq!(ours, bitwise.checksum(data), "length {len}");
        }
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    }

    /// Long inputs, fed whole and in uneven pieces, agree with the software CRC: the hardware
    /// path's long blocks and the joins between them.
    #[test]
    fn long_inputs_agree_with_the_software_crc() {
        let bytes: [u8; 70_000] =
            core::array::from_fn(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8);
        let bytewise = Crc::<u32, crc::Table<1>>::new(&CRC_32_ISCSI);
        for len in [511, 4096, 4097, 16_384, 16_411, 65_536, 70_000] {
            let data = &bytes[..len];
            let want = bytewise.checksum(data);
            assert_eq!(CRC32C.checksum(data), want, "length {len}");
            let mut d = CRC32C.digest();
            for piece in data.chunks(1_000 + len % 7) {
                d.update(piece);
            }
            assert_eq!(d.finalize(), want, "length {len} in pieces");
        }
    }

    /// A segment header survives a round trip, and any single flipped bit makes it invalid.
    #[test]
    fn segment_header_round_trip_and_bit_flips() {
        let h = SegmentHeader {
            flags: SEGMENT_FLAG_OPENED,
            segment_bytes: 4096,
            seq: 77,
            base_wid: 1 << 40,
            max_payload: 1000,
            salt: 0,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), SegmentCheck::Valid(h));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                SegmentHeader::decode(&c),
                SegmentCheck::Invalid,
                "bit {bit}"
            );
        }
    }

    /// A header of a newer version is reported as unsupported, not as garbage.
    #[test]
    fn newer_version_is_unsupported() {
        let mut b = SegmentHeader {
            flags: 0,
            segment_bytes: 4096,
            seq: 1,
            base_wid: 0,
            max_payload: 1000,
            salt: 0,
        }
        .encode();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        let crc = CRC32C.checksum(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&b), SegmentCheck::Unsupported(2));
    }

    /// The record CRC covers header fields, payload and the segment's sequence number alike.
    #[test]
    fn record_crc_covers_header_payload_and_segment() {
        let payload = b"hello";
        let h = RecordHeader::seal(5, RecordKind::Put, 3, 9, 5, |d| d.update(payload));
        let enc = h.encode();
        assert!(RecordHeader::decode(&enc).check(5, payload));
        assert!(
            !RecordHeader::decode(&enc).check(6, payload),
            "stale lap of the ring"
        );
        for bit in 32..RECORD_HEADER_BYTES * 8 {
            let mut c = enc;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !RecordHeader::decode(&c).check(5, payload),
                "header bit {bit}"
            );
        }
        assert!(!RecordHeader::decode(&enc).check(5, b"hellp"));
    }

    /// A payload of another length than the header's is refused even when the CRC matches; the
    /// fuzzer found this header (length 16 MiB - 1, a planted CRC, a 28-byte payload).
    #[test]
    fn check_refuses_a_payload_of_the_wrong_length() {
        let input: [u8; 44] = [
            0x9d, 0x4c, 0x3b, 0xea, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x09,
        ];
        let mut hdr = [0u8; RECORD_HEADER_BYTES];
        hdr.copy_from_slice(&input[..RECORD_HEADER_BYTES]);
        let h = RecordHeader::decode(&hdr);
        let payload = &input[RECORD_HEADER_BYTES..];
        assert_eq!(h.len, (1 << 24) - 1);
        assert!(!h.check(payload.len() as u64, payload));
        // The same CRC over the same bytes, with the length it claims, still checks out.
        let mut d = h.digest(payload.len() as u64);
        d.update(payload);
        assert_eq!(d.finalize(), h.crc, "the fuzzer planted a matching CRC");
    }

    /// Pointers round-trip through media and queue forms.
    #[test]
    fn pointer_forms() {
        let p = Pointer {
            slot: 0x00ab_cdef,
            offset: 0x1234_5678,
        };
        assert_eq!(Pointer::decode(&p.encode()), p);
        assert_eq!(Pointer::from_word(p.to_word() | (7 << 56)), p);
    }

    /// A compact header round-trips every kind, the longest length and the largest index, and
    /// its CRC covers its fields: any flipped bit after the CRC fails the check.
    #[test]
    fn compact_header_round_trip_and_bit_flips() {
        for kind in [
            RecordKind::Put,
            RecordKind::PutCommit,
            RecordKind::TakeCommit,
        ] {
            for (len, index) in [(0, 0), (32, 5), (65_535, COMPACT_MAX_INDEX)] {
                let payload = [7u8; 40];
                let body = &payload[..(len as usize).min(40)];
                let h = RecordHeader::seal_as(true, 9, kind, index, 77, len, |d| d.update(body));
                let b = h.encode();
                assert_eq!(h.bytes(), COMPACT_HEADER_BYTES);
                let back = RecordHeader::decode_compact(&b);
                assert_eq!(back, h);
                assert_eq!(
                    (back.kind, back.len, back.wid_delta, back.txn),
                    (kind as u8, len, index, 0)
                );
                assert_eq!(kind_at(true, &b), kind as u8);
                for bit in 32..COMPACT_HEADER_BYTES * 8 {
                    let mut c = b;
                    c[bit / 8] ^= 1 << (bit % 8);
                    let d = RecordHeader::decode_compact(&c);
                    let mut digest = d.digest(9);
                    digest.update(body);
                    assert_ne!(digest.finalize(), d.crc, "bit {bit}");
                }
            }
        }
    }

    fn encode_commit(distance: u64, pointers: &[Pointer], align: u64, segments: u64) -> Vec<u8> {
        let mut out = Vec::new();
        compact::varint(distance, &mut |b| out.extend_from_slice(b));
        let mut e = compact::Encoder::new(align, segments);
        for &p in pointers {
            e.pointer(p, &mut |b| out.extend_from_slice(b));
        }
        out
    }

    fn decode_commit(
        bytes: &[u8],
        align: u64,
        segments: u64,
    ) -> Result<(u64, Vec<Pointer>), compact::Malformed> {
        let mut d = compact::Decoder::new(align, segments);
        let (mut distance, mut pointers) = (None, Vec::new());
        for &b in bytes {
            match d.feed(b)? {
                Some(compact::Item::Distance(x)) => distance = Some(x),
                Some(compact::Item::Pointer(p)) => pointers.push(p),
                None => {}
            }
        }
        d.finish()?;
        Ok((distance.ok_or(compact::Malformed)?, pointers))
    }

    /// Compact commits round-trip pointers forward, backward, across slots and round the
    /// ring, with distances up to `u64::MAX`; puts one after another cost a byte each.
    #[test]
    fn compact_commits_round_trip() {
        let p = |slot, offset| Pointer { slot, offset };
        let cases: &[(u64, Vec<Pointer>)] = &[
            (0, vec![p(0, 40)]),
            (
                2,
                vec![p(3, 40), p(3, 80), p(3, 120), p(4, 40), p(0, 44), p(0, 8)],
            ),
            (
                u64::MAX,
                vec![p(15, 65_532), p(15, 40), p(14, 40), p(15, 40)],
            ),
            (300, (0..16).map(|i| p(7, 40 + 40 * i)).collect()),
        ];
        for (distance, pointers) in cases {
            let bytes = encode_commit(*distance, pointers, 4, 16);
            assert_eq!(
                decode_commit(&bytes, 4, 16),
                Ok((*distance, pointers.clone()))
            );
        }
        // 16 puts of 40-byte records: 2 bytes of distance, 1 of slot, 1 of offset, 15 steps.
        assert_eq!(encode_commit(300, &cases[3].1, 4, 16).len(), 2 + 1 + 1 + 15);
        // Segments up to 2^24 - 1 and offsets up to 64 KiB at alignment 1.
        let far = [p(0xff_fffe, 65_535), p(0, 0), p(0xff_fffe, 1)];
        let bytes = encode_commit(1, &far, 1, 0xff_ffff);
        assert_eq!(decode_commit(&bytes, 1, 0xff_ffff), Ok((1, far.to_vec())));
    }

    /// What no writer makes is refused: a slot outside the ring, a zero slot step, a step to
    /// a negative offset, an over-long or unfinished integer, a payload without a pointer.
    #[test]
    fn compact_commits_refuse_what_no_writer_makes() {
        let bad: &[&[u8]] = &[
            &[0],              // no pointer
            &[0, 16, 10],      // slot 16 of 16
            &[0, 1],           // a slot without its offset
            &[0, 1, 10, 1, 3], // slot step 0
            &[0, 1, 10, 7],    // slot step 3 without its offset
            &[0, 1, 10, 0x80], // unfinished
            &[0x80, 0, 1, 10], // over-long distance
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 1, 10,
            ], // > u64
        ];
        for (i, b) in bad.iter().enumerate() {
            assert_eq!(
                decode_commit(b, 4, 16),
                Err(compact::Malformed),
                "case {i}: {b:?}"
            );
        }
        // A backward step of 2 words from word 2 lands at 0; of 3, before the segment.
        let mut b = vec![0, 1, 2];
        compact::varint(compact::zigzag(-2) << 1, &mut |x| b.extend_from_slice(x));
        assert_eq!(
            decode_commit(&b, 4, 16),
            Ok((
                0,
                vec![
                    Pointer { slot: 1, offset: 8 },
                    Pointer { slot: 1, offset: 0 }
                ]
            ))
        );
        let mut b = vec![0, 1, 2];
        compact::varint(compact::zigzag(-3) << 1, &mut |x| b.extend_from_slice(x));
        assert_eq!(decode_commit(&b, 4, 16), Err(compact::Malformed));
    }
}
