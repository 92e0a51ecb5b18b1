//! Encryption at rest: keys, nonces and the streaming AEAD that seals records and checkpoints.
//!
//! The AEAD is XChaCha20-Poly1305 (ChaCha20-Poly1305 with a 24-byte nonce, as in
//! draft-irtf-cfrg-xchacha), built here from RustCrypto's `chacha20` and `poly1305` so that a
//! record of any size is sealed and opened in bounded chunks, without a buffer the size of the
//! event. A unit test checks it byte for byte against RustCrypto's one-shot `chacha20poly1305`.
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
}

impl<'k> StaticKeys<'k> {
    /// Keys by id; `active` seals new data (it must be one of `keys`, which
    /// [`Channel::open_with_keys`](crate::Channel::open_with_keys) checks).
    pub const fn new(keys: &'k [(KeyId, Key)], active: Option<KeyId>) -> Self {
        StaticKeys {
            keys,
            active,
            entropy: None,
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
        }
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

/// A streaming XChaCha20-Poly1305 seal or open: associated data first, then the text in chunks
/// of any size, then the tag. Encrypting and decrypting produce exactly what RFC 8439's
/// construction (with the XChaCha nonce) produces in one shot.
pub struct Sealer {
    cipher: XChaCha20,
    mac: Poly1305,
    block: [u8; 16],
    fill: usize,
    ad_len: u64,
    text_len: u64,
    in_text: bool,
}

impl Sealer {
    /// Starts a seal with `key` and `nonce`.
    pub fn new(key: &Key, nonce: &[u8; 24]) -> Self {
        let mut cipher = XChaCha20::new(&(*key).into(), &(*nonce).into());
        let mut mac_key = [0u8; 32];
        cipher.apply_keystream(&mut mac_key);
        let mac = Poly1305::new(&mac_key.into());
        mac_key.fill(0);
        // The text's keystream starts at block 1.
        cipher.seek(64u64);
        Sealer {
            cipher,
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
        self.cipher.apply_keystream(buf);
        self.absorb(buf);
        self.text_len += buf.len() as u64;
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
        self.cipher.apply_keystream(buf);
    }

    /// Decrypts `buf`, the ciphertext at byte `pos` of the text, without authenticating it
    /// (for text whose tag was checked in an earlier pass).
    pub fn decrypt_at(&mut self, pos: u64, buf: &mut [u8]) {
        self.cipher.seek(64 + pos);
        self.cipher.apply_keystream(buf);
    }

    /// The tag over everything authenticated.
    pub fn tag(self) -> [u8; TAG_BYTES] {
        let mac = self.close();
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&mac.finalize());
        t
    }

    /// True if `tag` is the tag over everything authenticated (compared in constant time).
    pub fn verify(self, tag: &[u8; TAG_BYTES]) -> bool {
        self.close().verify(&(*tag).into()).is_ok()
    }

    fn start_text(&mut self) {
        if !self.in_text {
            self.pad();
            self.in_text = true;
        }
    }

    fn close(mut self) -> Poly1305 {
        self.start_text();
        self.pad();
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&self.ad_len.to_le_bytes());
        lengths[8..].copy_from_slice(&self.text_len.to_le_bytes());
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

    /// Pads a partial block with zeros (the construction pads the data and the text apart).
    fn pad(&mut self) {
        if self.fill > 0 {
            self.block[self.fill..].fill(0);
            self.mac.update(&[Block::from(self.block)]);
            self.fill = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
    use std::vec::Vec;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The streaming seal equals RustCrypto's one-shot XChaCha20-Poly1305 for every split of
    /// the associated data and the text, and opens what it sealed.
    #[test]
    fn matches_the_one_shot_construction() {
        let key: Key = bytes(32, 7).try_into().unwrap();
        let reference = XChaCha20Poly1305::new(&key.into());
        for (ad_len, text_len) in [
            (0, 0),
            (12, 0),
            (0, 1),
            (12, 5),
            (17, 64),
            (40, 1031),
            (3, 4096),
        ] {
            let n = nonce(&[1, 2, 3, 4, 5, 6, 7, 8], 99, text_len as u32, Domain::Log);
            let ad = bytes(ad_len, 1);
            let text = bytes(text_len, 2);
            let mut expected = text.clone();
            let expected_tag = reference
                .encrypt_inout_detached(&n.into(), &ad, expected.as_mut_slice().into())
                .unwrap();
            for split in [1usize, 7, 16, 250, 4096] {
                let mut s = Sealer::new(&key, &n);
                for piece in ad.chunks(split) {
                    s.ad(piece);
                }
                let mut out = text.clone();
                for piece in out.chunks_mut(split) {
                    s.encrypt(piece);
                }
                assert_eq!(
                    out, expected,
                    "ciphertext, ad {ad_len} text {text_len} split {split}"
                );
                assert_eq!(s.tag()[..], expected_tag[..], "tag, split {split}");
                let mut o = Sealer::new(&key, &n);
                o.ad(&ad);
                for piece in out.chunks_mut(split) {
                    o.decrypt(piece);
                }
                assert_eq!(out, text);
                let mut tag = [0u8; TAG_BYTES];
                tag.copy_from_slice(&expected_tag);
                assert!(o.verify(&tag));
            }
        }
    }

    /// A flipped bit in the associated data, the ciphertext or the tag fails the check, as does
    /// another key, salt, number, index or domain.
    #[test]
    fn any_change_fails_the_tag() {
        let key = [9u8; 32];
        let salt = [3u8; 8];
        let seal = |key: &Key, n: &[u8; 24], ad: &[u8], text: &mut [u8]| {
            let mut s = Sealer::new(key, n);
            s.ad(ad);
            s.encrypt(text);
            s.tag()
        };
        let n = nonce(&salt, 5, 2, Domain::Log);
        let mut ct = *b"twenty bytes of text";
        let tag = seal(&key, &n, b"header", &mut ct);
        let opens = |key: &Key, n: &[u8; 24], ad: &[u8], ct: &[u8], tag: &[u8; 16]| {
            let mut s = Sealer::new(key, n);
            s.ad(ad);
            s.authenticate(ct);
            s.verify(tag)
        };
        assert!(opens(&key, &n, b"header", &ct, &tag));
        for bit in 0..ct.len() * 8 {
            let mut c = ct;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(!opens(&key, &n, b"header", &c, &tag));
        }
        for bit in 0..128 {
            let mut t = tag;
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(!opens(&key, &n, b"header", &ct, &t));
        }
        assert!(!opens(&key, &n, b"heades", &ct, &tag));
        assert!(!opens(&[8u8; 32], &n, b"header", &ct, &tag));
        for other in [
            nonce(&[4u8; 8], 5, 2, Domain::Log),
            nonce(&salt, 6, 2, Domain::Log),
            nonce(&salt, 5, 3, Domain::Log),
            nonce(&salt, 5, 2, Domain::Checkpoint),
        ] {
            assert!(!opens(&key, &other, b"header", &ct, &tag));
        }
    }

    /// Decrypting at an offset gives the same plaintext as decrypting from the start.
    #[test]
    fn decrypt_at_seeks() {
        let key = [1u8; 32];
        let n = nonce(&[0; 8], 1, 1, Domain::Checkpoint);
        let text = bytes(300, 5);
        let mut ct = text.clone();
        let mut s = Sealer::new(&key, &n);
        s.encrypt(&mut ct);
        let mut o = Sealer::new(&key, &n);
        let mut part = ct[136..200].to_vec();
        o.decrypt_at(136, &mut part);
        assert_eq!(part, text[136..200]);
    }
}
