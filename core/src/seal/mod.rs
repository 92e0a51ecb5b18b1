//! Encryption at rest: keys, nonces and the streaming AEADs that seal records and checkpoints.
//!
//! Two AEADs, both built here from RustCrypto primitives so that a record of any size is sealed
//! and opened in bounded chunks, without a buffer the size of the event ([`Algorithm`]):
//!
//! - XChaCha20-Poly1305 (ChaCha20-Poly1305 with a 24-byte nonce, as in draft-irtf-cfrg-xchacha),
//!   from `chacha20` and `poly1305`: the algorithm of every checkpoint, and of log segments on
//!   firmware. A unit test checks it byte for byte against RustCrypto's `chacha20poly1305`.
//! - AES-256-GCM under a key of its own for every segment (feature `aes-gcm`, for servers with
//!   AES instructions, where it is several times as fast). Of a record's 24-byte nonce, the
//!   first 16 bytes (salt and segment number) choose the key and the last 8 (index and domain)
//!   the IV: the segment's AES key is bytes 32..64 of XChaCha20's keystream block 0 under the
//!   channel key and the nonce `salt | number | 0 (8)` (bytes XChaCha20-Poly1305 never uses: its
//!   Poly1305 key is bytes 0..32 and its text starts at block 1), and the record's 96-bit IV is
//!   `index (4, LE) | domain (1) | 0 (7)`. A segment's records have distinct indexes, so no IV
//!   repeats under a key, and a segment holds far fewer records than GCM's 2^32 limit per key.
//!   [`SealerCache`] keeps the keys of the last segments used, so a record costs no key
//!   derivation, and makes the tag masks of records sealed in index order 16 at a time. A unit
//!   test checks the result byte for byte against RustCrypto's `aes-gcm`.
//!
//! A nonce is never chosen, it is derived (see [`nonce`]): the 8-byte salt of the segment or
//! checkpoint, its sequence number, the record's index in the segment, and a domain byte that
//! keeps log and checkpoint nonces apart. Within one salt the triple (sequence number, index,
//! domain) never repeats, because sequence numbers only grow; the salt, drawn fresh for every
//! segment and checkpoint, covers what sequence numbers cannot: a segment header a power cut or
//! bit rot destroyed, and a log restored from an older backup, whose numbers are then used again.
//!
//! **Invariant:** plaintext never reaches the storage: a sealed record is encrypted in a stack
//! buffer before it is handed to `Storage::write`.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::XChaCha20;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::{Block, Poly1305};

/// The AEAD a log segment is sealed with, as its seal record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Algorithm {
    /// XChaCha20-Poly1305: fast everywhere without special instructions. Id 0.
    #[default]
    XChaCha20Poly1305 = 0,
    /// AES-256-GCM under a key per segment. Id 1. Needs the core's `aes-gcm` feature.
    Aes256Gcm = 1,
}

impl Algorithm {
    /// The algorithm with this id on media.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Algorithm::XChaCha20Poly1305),
            1 => Some(Algorithm::Aes256Gcm),
            _ => None,
        }
    }

    /// True if this build can seal and open with it.
    pub const fn supported(self) -> bool {
        match self {
            Algorithm::XChaCha20Poly1305 => true,
            Algorithm::Aes256Gcm => cfg!(feature = "aes-gcm"),
        }
    }

    /// Its usual name.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::XChaCha20Poly1305 => "XChaCha20-Poly1305",
            Algorithm::Aes256Gcm => "AES-256-GCM",
        }
    }
}

/// The id of a key, as recorded in segments and checkpoints. 0 means "no key": plaintext.
pub type KeyId = u16;
/// The bytes of a key.
pub const KEY_BYTES: usize = 32;
/// The bytes of an authentication tag.
pub const TAG_BYTES: usize = 16;
/// The bytes of a salt.
pub const SALT_BYTES: usize = 8;
/// A 256-bit key.
pub type Key = [u8; KEY_BYTES];

/// Where the channel's keys come from.
///
/// A server reads them from a key file or a keystore (`sluicegate-file`'s `Keyring`); firmware
/// compiles them in ([`StaticKeys`]). New segments and checkpoints are sealed with the
/// [`active`](KeyProvider::active) key; older ones name their key by id and stay readable while
/// the provider still has it.
pub trait KeyProvider {
    /// The key new segments and checkpoints are sealed with, or `None` to write plaintext.
    fn active(&self) -> Option<KeyId>;
    /// The key with this id, if the provider has it.
    fn key(&self, id: KeyId) -> Option<&Key>;
    /// A salt for a new segment or checkpoint. Random where the platform has an entropy source;
    /// see [`StaticKeys`] for what a fixed salt gives up.
    fn fresh_salt(&mut self) -> [u8; SALT_BYTES];
    /// The AEAD new log segments are sealed with (checkpoints always use XChaCha20-Poly1305).
    fn algorithm(&self) -> Algorithm {
        Algorithm::XChaCha20Poly1305
    }
}

/// No keys: the channel writes plaintext and refuses to open a sealed log.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

impl KeyProvider for NoKeys {
    fn active(&self) -> Option<KeyId> {
        None
    }
    fn key(&self, _: KeyId) -> Option<&Key> {
        None
    }
    fn fresh_salt(&mut self) -> [u8; SALT_BYTES] {
        [0; SALT_BYTES]
    }
}

/// Keys compiled into firmware.
///
/// Without an entropy source ([`StaticKeys::with_entropy`]) the salt is fixed, and nonces stay
/// unique only as long as segment sequence numbers do: true across power cuts on flash (a
/// segment's header is programmed before anything in it), but not if the flash is written back
/// from an older image, or if bit rot destroys the newest segment's header. Give it the
/// device's TRNG where there is one.
#[derive(Debug, Clone, Copy)]
pub struct StaticKeys<'k> {
    keys: &'k [(KeyId, Key)],
    active: Option<KeyId>,
    entropy: Option<fn() -> [u8; SALT_BYTES]>,
    algorithm: Algorithm,
}

impl<'k> StaticKeys<'k> {
    /// Keys by id; `active` seals new data (it must be one of `keys`, which
    /// [`Channel::open_with_keys`](crate::Channel::open_with_keys) checks).
    pub const fn new(keys: &'k [(KeyId, Key)], active: Option<KeyId>) -> Self {
        StaticKeys {
            keys,
            active,
            entropy: None,
            algorithm: Algorithm::XChaCha20Poly1305,
        }
    }

    /// The same, with an entropy source for salts (a TRNG).
    pub const fn with_entropy(
        keys: &'k [(KeyId, Key)],
        active: Option<KeyId>,
        entropy: fn() -> [u8; SALT_BYTES],
    ) -> Self {
        StaticKeys {
            keys,
            active,
            entropy: Some(entropy),
            algorithm: Algorithm::XChaCha20Poly1305,
        }
    }

    /// The same, sealing new log segments with `algorithm` (XChaCha20-Poly1305 unless told).
    pub const fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }
}

impl KeyProvider for StaticKeys<'_> {
    fn active(&self) -> Option<KeyId> {
        self.active
    }
    fn key(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }
    fn fresh_salt(&mut self) -> [u8; SALT_BYTES] {
        self.entropy.map_or([0; SALT_BYTES], |f| f())
    }
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// What a nonce seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// A log record: the number is the segment's sequence number, the index the record's.
    Log = 0,
    /// A checkpoint's entries: the number is the checkpoint's.
    Checkpoint = 1,
}

/// The 24-byte nonce: `salt (8) | number (8, LE) | index (4, LE) | domain (1) | 0 (3)`.
///
/// XChaCha20 derives a subkey from the first 16 bytes (salt and number), so each segment and
/// each checkpoint is sealed under its own subkey, and the last 8 bytes (index and domain)
/// are the nonce under it.
pub fn nonce(salt: &[u8; SALT_BYTES], number: u64, index: u32, domain: Domain) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[0..8].copy_from_slice(salt);
    n[8..16].copy_from_slice(&number.to_le_bytes());
    n[16..20].copy_from_slice(&index.to_le_bytes());
    n[20] = domain as u8;
    n
}

/// The first 16 bytes of a nonce (salt and number): what chooses a segment's AES-GCM key.
#[cfg(feature = "aes-gcm")]
fn nonce_prefix(nonce: &[u8; 24]) -> &[u8; 16] {
    let (prefix, _) = nonce.split_first_chunk().unwrap_or((&[0; 16], &[]));
    prefix
}

/// The AES-256-GCM key of one segment, expanded, with its GHASH key.
#[cfg(feature = "aes-gcm")]
#[derive(Clone)]
pub struct GcmKey {
    aes: aes::Aes256,
    ghash: ghash::GHash,
}

#[cfg(feature = "aes-gcm")]
impl GcmKey {
    /// The key of the segment whose nonces start with `prefix` (salt and number), under `key`.
    pub fn derive(key: &Key, prefix: &[u8; 16]) -> Self {
        use aes::cipher::BlockCipherEncrypt;
        let mut n = [0u8; 24];
        n[..16].copy_from_slice(prefix);
        let mut block0 = [0u8; 64];
        XChaCha20::new(&(*key).into(), &n.into()).apply_keystream(&mut block0);
        let mut segment_key = [0u8; 32];
        segment_key.copy_from_slice(&block0[32..]);
        block0.fill(0);
        let aes = aes::Aes256::new(&segment_key.into());
        segment_key.fill(0);
        let mut h = ghash::Block::default();
        aes.encrypt_block(&mut h);
        GcmKey {
            aes,
            ghash: ghash::GHash::new(&h),
        }
    }
}

/// The AES-GCM keys of the segments used last (the one written and the one read), so that
/// records are sealed and opened without deriving their segment's key again, and the tag masks
/// of the records that come next. Empty, and free, without the `aes-gcm` feature.
#[derive(Default)]
pub struct SealerCache {
    #[cfg(feature = "aes-gcm")]
    keys: [Option<(KeyId, [u8; 16], GcmKey)>; 2],
    #[cfg(feature = "aes-gcm")]
    next: usize,
    #[cfg(feature = "aes-gcm")]
    masks: Masks,
}

/// Tag masks made ahead. A record's mask is the AES encryption of its J0 (its IV and the
/// counter 1), one block: made alone, it took about 65 ns of a sealed 1 KiB put on the
/// benchmark server (perf), mostly the set-up of a call into the block cipher (the VAES backend
/// spreads the round keys over its registers at every call), which a batch pays once. Records are
/// mostly sealed and opened in index order, so when one follows the record used just before, the
/// masks of the next [`MASK_BATCH`] are made in one call. They are a function of the key and the
/// IV only, like the keystream: nothing about the nonces changes.
#[cfg(feature = "aes-gcm")]
#[derive(Default)]
struct Masks {
    /// The `keys` slot and the IV's last 4 bytes (domain, zeros) the masks were made for, and
    /// the index of the first.
    of: Option<(usize, [u8; 4], u32)>,
    /// How many of `masks` are made.
    len: usize,
    masks: [[u8; 16]; MASK_BATCH],
    /// The `keys` slot, IV tail and index of the record used last.
    last: Option<(usize, [u8; 4], u32)>,
}

/// The tag masks made in one call.
#[cfg(feature = "aes-gcm")]
const MASK_BATCH: usize = 16;

#[cfg(feature = "aes-gcm")]
impl Masks {
    /// The mask of the record with `nonce` under the key in `keys` slot `slot`.
    fn get(&mut self, slot: usize, key: &GcmKey, nonce: &[u8; 24]) -> [u8; 16] {
        use aes::cipher::BlockCipherEncrypt;
        let index = nonce_index(nonce);
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&nonce[20..24]);
        let previous = self.last.replace((slot, tail, index));
        if let Some((s, t, from)) = self.of {
            let at = index.wrapping_sub(from) as usize;
            if s == slot && t == tail && at < self.len {
                return self.masks[at];
            }
        }
        let sequential = previous == Some((slot, tail, index.wrapping_sub(1)));
        // Never past the last index.
        let n = if sequential {
            1 + (MASK_BATCH - 1).min((u32::MAX - index) as usize)
        } else {
            1
        };
        let mut blocks = [aes::Block::default(); MASK_BATCH];
        for (i, b) in blocks[..n].iter_mut().enumerate() {
            *b = j0(nonce, index + i as u32).into();
        }
        key.aes.encrypt_blocks(&mut blocks[..n]);
        for (m, b) in self.masks.iter_mut().zip(&blocks[..n]) {
            *m = (*b).into();
        }
        self.of = Some((slot, tail, index));
        self.len = n;
        self.masks[0]
    }

    /// Forgets the masks made under the key in `keys` slot `slot` (about to be replaced).
    fn forget(&mut self, slot: usize) {
        if self.of.is_some_and(|(s, _, _)| s == slot) {
            self.of = None;
        }
        if self.last.is_some_and(|(s, _, _)| s == slot) {
            self.last = None;
        }
    }
}

/// The record index in a nonce (see [`nonce`]).
#[cfg(feature = "aes-gcm")]
fn nonce_index(nonce: &[u8; 24]) -> u32 {
    u32::from_le_bytes([nonce[16], nonce[17], nonce[18], nonce[19]])
}

/// GCM's J0 for the record with `nonce`, but index `index`: the 96-bit IV (index, domain,
/// zeros) and the counter 1.
#[cfg(feature = "aes-gcm")]
fn j0(nonce: &[u8; 24], index: u32) -> [u8; 16] {
    let mut j0 = [0u8; 16];
    j0[..4].copy_from_slice(&index.to_le_bytes());
    j0[4..8].copy_from_slice(&nonce[20..24]);
    j0[15] = 1;
    j0
}

impl SealerCache {
    /// Starts a seal with `algorithm`, key `key_id` (whose bytes are `key`) and `nonce`, as
    /// [`Sealer::with`] does.
    #[inline]
    pub fn sealer(
        &mut self,
        algorithm: Algorithm,
        key_id: KeyId,
        key: &Key,
        nonce: &[u8; 24],
    ) -> Sealer {
        #[cfg(feature = "aes-gcm")]
        if algorithm == Algorithm::Aes256Gcm {
            let prefix = nonce_prefix(nonce);
            let found = self.keys.iter().position(|k| {
                k.as_ref()
                    .is_some_and(|(id, p, _)| *id == key_id && p == prefix)
            });
            let slot = found.unwrap_or_else(|| {
                let slot = self.next;
                self.masks.forget(slot);
                self.keys[slot] = Some((key_id, *prefix, GcmKey::derive(key, prefix)));
                self.next = (self.next + 1) % self.keys.len();
                slot
            });
            if let Some((_, _, k)) = &self.keys[slot] {
                let mask = self.masks.get(slot, k, nonce);
                return Sealer::gcm(k, nonce, mask);
            }
        }
        let _ = key_id;
        Sealer::with(algorithm, key, nonce)
    }
}

/// The keystream of a seal.
#[allow(clippy::large_enum_variant)] // no allocator to box with; a seal lives for one record
enum Stream {
    XChaCha(XChaCha20),
    #[cfg(feature = "aes-gcm")]
    Gcm(ctr::Ctr32BE<aes::Aes256>),
}

/// The authenticator of a seal.
#[allow(clippy::large_enum_variant)] // no allocator to box with; a seal lives for one record
enum Mac {
    Poly(Poly1305),
    /// GHASH, and the block its result is masked with (the encrypted counter block J0).
    #[cfg(feature = "aes-gcm")]
    Ghash(ghash::GHash, [u8; 16]),
}

impl Mac {
    fn update(&mut self, blocks: &[Block]) {
        match self {
            Mac::Poly(m) => m.update(blocks),
            #[cfg(feature = "aes-gcm")]
            Mac::Ghash(m, _) => m.update(blocks),
        }
    }
}

/// A streaming seal or open with an [`Algorithm`]: associated data first, then the text in
/// chunks of any size, then the tag. Encrypting and decrypting produce exactly what the
/// algorithm's one-shot construction produces.
pub struct Sealer {
    stream: Stream,
    mac: Mac,
    block: [u8; 16],
    fill: usize,
    ad_len: u64,
    text_len: u64,
    in_text: bool,
}

impl Sealer {
    /// Starts an XChaCha20-Poly1305 seal with `key` and `nonce`.
    pub fn new(key: &Key, nonce: &[u8; 24]) -> Self {
        Self::with(Algorithm::XChaCha20Poly1305, key, nonce)
    }

    /// Starts a seal with `algorithm`, `key` and `nonce`. `algorithm` must be
    /// [`supported`](Algorithm::supported); callers check it when they meet it on media.
    /// Where many records of a segment are sealed, [`SealerCache::sealer`] is cheaper.
    pub fn with(algorithm: Algorithm, key: &Key, nonce: &[u8; 24]) -> Self {
        #[cfg(feature = "aes-gcm")]
        if algorithm == Algorithm::Aes256Gcm {
            use aes::cipher::BlockCipherEncrypt;
            let k = GcmKey::derive(key, nonce_prefix(nonce));
            let mut mask = aes::Block::from(j0(nonce, nonce_index(nonce)));
            k.aes.encrypt_block(&mut mask);
            return Sealer::gcm(&k, nonce, mask.into());
        }
        let _ = algorithm;
        let mut cipher = XChaCha20::new(&(*key).into(), &(*nonce).into());
        let mut mac_key = [0u8; 32];
        cipher.apply_keystream(&mut mac_key);
        let mac = Poly1305::new(&mac_key.into());
        mac_key.fill(0);
        // The text's keystream starts at block 1.
        cipher.seek(64u64);
        Sealer::start(Stream::XChaCha(cipher), Mac::Poly(mac))
    }

    /// Starts an AES-256-GCM seal under the segment key `key`, with the IV the last 8 bytes
    /// of `nonce` make, and `mask`, the encryption of its J0 (see [`Masks`]).
    #[cfg(feature = "aes-gcm")]
    #[inline]
    fn gcm(key: &GcmKey, nonce: &[u8; 24], mask: [u8; 16]) -> Self {
        use aes::cipher::InnerIvInit;
        // J0 (the IV and the counter 1) made the mask; the text's keystream starts at 2.
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&nonce[16..]);
        block[15] = 2;
        let ctr = ctr::Ctr32BE::<aes::Aes256>::from_core(ctr::CtrCore::inner_iv_init(
            key.aes.clone(),
            &block.into(),
        ));
        Sealer::start(Stream::Gcm(ctr), Mac::Ghash(key.ghash.clone(), mask))
    }

    #[inline]
    fn start(stream: Stream, mac: Mac) -> Self {
        Sealer {
            stream,
            mac,
            block: [0; 16],
            fill: 0,
            ad_len: 0,
            text_len: 0,
            in_text: false,
        }
    }

    /// Authenticates `bytes` as associated data. Only before the first text.
    pub fn ad(&mut self, bytes: &[u8]) {
        debug_assert!(!self.in_text, "associated data after text");
        self.absorb(bytes);
        self.ad_len += bytes.len() as u64;
    }

    /// Encrypts `buf` in place and authenticates the ciphertext.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        self.start_text();
        self.keystream(buf);
        self.absorb(buf);
        self.text_len += buf.len() as u64;
    }

    /// Encrypts `text` into `out` and authenticates the ciphertext: the plaintext is read where
    /// it lies, never copied. Only as many bytes as the shorter of the two holds.
    pub fn encrypt_to(&mut self, text: &[u8], out: &mut [u8]) {
        self.start_text();
        let n = text.len().min(out.len());
        let (text, out) = (&text[..n], &mut out[..n]);
        match &mut self.stream {
            Stream::XChaCha(c) => c.apply_keystream_b2b(text, out),
            #[cfg(feature = "aes-gcm")]
            Stream::Gcm(c) => c.apply_keystream_b2b(text, out),
        }
        self.absorb(out);
        self.text_len += out.len() as u64;
    }

    /// Authenticates ciphertext without decrypting it (to check a tag before using anything).
    pub fn authenticate(&mut self, ciphertext: &[u8]) {
        self.start_text();
        self.absorb(ciphertext);
        self.text_len += ciphertext.len() as u64;
    }

    /// Authenticates the ciphertext in `buf`, then decrypts it in place. The plaintext must
    /// not be used before [`Sealer::verify`] succeeds.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.authenticate(buf);
        self.keystream(buf);
    }

    /// Decrypts `buf`, the ciphertext at byte `pos` of the text, without authenticating it
    /// (for text whose tag was checked in an earlier pass).
    pub fn decrypt_at(&mut self, pos: u64, buf: &mut [u8]) {
        match &mut self.stream {
            // Block 0 went to the Poly1305 key.
            Stream::XChaCha(c) => c.seek(64 + pos),
            // The stream starts at the text (J0 made the tag's mask apart).
            #[cfg(feature = "aes-gcm")]
            Stream::Gcm(c) => c.seek(pos),
        }
        self.keystream(buf);
    }

    /// The tag over everything authenticated.
    #[inline]
    pub fn tag(self) -> [u8; TAG_BYTES] {
        match self.close() {
            Mac::Poly(m) => m.finalize().into(),
            #[cfg(feature = "aes-gcm")]
            Mac::Ghash(m, mask) => {
                let mut t: [u8; 16] = m.finalize().into();
                for (t, m) in t.iter_mut().zip(mask) {
                    *t ^= m;
                }
                t
            }
        }
    }

    /// True if `tag` is the tag over everything authenticated (compared in constant time).
    pub fn verify(self, tag: &[u8; TAG_BYTES]) -> bool {
        let ours = self.tag();
        let diff = ours.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        core::hint::black_box(diff) == 0
    }

    fn keystream(&mut self, buf: &mut [u8]) {
        match &mut self.stream {
            Stream::XChaCha(c) => c.apply_keystream(buf),
            #[cfg(feature = "aes-gcm")]
            Stream::Gcm(c) => c.apply_keystream(buf),
        }
    }

    fn start_text(&mut self) {
        if !self.in_text {
            self.pad();
            self.in_text = true;
        }
    }

    /// Pads the text and appends the lengths block: byte counts, little-endian, for Poly1305
    /// (RFC 8439); bit counts, big-endian, for GHASH (NIST SP 800-38D).
    #[inline]
    fn close(mut self) -> Mac {
        self.start_text();
        self.pad();
        let mut lengths = [0u8; 16];
        match self.mac {
            Mac::Poly(_) => {
                lengths[..8].copy_from_slice(&self.ad_len.to_le_bytes());
                lengths[8..].copy_from_slice(&self.text_len.to_le_bytes());
            }
            #[cfg(feature = "aes-gcm")]
            #[allow(clippy::big_endian_bytes)] // GHASH's own encoding; never on media
            Mac::Ghash(..) => {
                lengths[..8].copy_from_slice(&(self.ad_len * 8).to_be_bytes());
                lengths[8..].copy_from_slice(&(self.text_len * 8).to_be_bytes());
            }
        }
        self.mac.update(&[Block::from(lengths)]);
        self.mac
    }

    /// Feeds the MAC, whole 16-byte blocks at a time.
    fn absorb(&mut self, mut bytes: &[u8]) {
        if self.fill > 0 {
            let n = (16 - self.fill).min(bytes.len());
            self.block[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill < 16 {
                return;
            }
            self.mac.update(&[Block::from(self.block)]);
            self.fill = 0;
        }
        let (blocks, rest) = Block::slice_as_chunks(bytes);
        self.mac.update(blocks);
        self.block[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    /// Pads a partial block with zeros (both constructions pad the data and the text apart).
    fn pad(&mut self) {
        if self.fill > 0 {
            self.block[self.fill..].fill(0);
            self.mac.update(&[Block::from(self.block)]);
            self.fill = 0;
        }
    }
}

#[cfg(test)]
mod tests;
