//! The AEADs checked against RustCrypto's one-shot implementations, and the key providers.

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

/// The one-shot reference for `algorithm`: RustCrypto's XChaCha20-Poly1305, or its
/// AES-256-GCM under the segment key (XChaCha20 keystream bytes 32..64 under the nonce's
/// first 16 bytes and 8 zeros) with the IV the nonce's last 8 bytes and 4 zeros make.
fn reference(
    algorithm: Algorithm,
    key: &Key,
    n: &[u8; 24],
    ad: &[u8],
    text: &mut [u8],
) -> [u8; TAG_BYTES] {
    let tag = match algorithm {
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(&(*key).into())
            .encrypt_inout_detached(&(*n).into(), ad, text.into())
            .unwrap(),
        Algorithm::Aes256Gcm => {
            let mut block0 = [0u8; 64];
            let mut prefix = [0u8; 24];
            prefix[..16].copy_from_slice(&n[..16]);
            XChaCha20::new(&(*key).into(), &prefix.into()).apply_keystream(&mut block0);
            let segment_key: [u8; 32] = block0[32..].try_into().unwrap();
            let mut iv = [0u8; 12];
            iv[..8].copy_from_slice(&n[16..]);
            aes_gcm::Aes256Gcm::new(&segment_key.into())
                .encrypt_inout_detached(&iv.into(), ad, text.into())
                .unwrap()
        }
    };
    tag.into()
}

/// The streaming seal equals the one-shot construction for every split of the associated
/// data and the text, and opens what it sealed, with both algorithms.
#[test]
fn matches_the_one_shot_construction() {
    let key: Key = bytes(32, 7).try_into().unwrap();
    for algorithm in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
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
            let expected_tag = reference(algorithm, &key, &n, &ad, &mut expected);
            for split in [1usize, 7, 16, 250, 4096] {
                let what = std::format!("{algorithm:?}, ad {ad_len} text {text_len} split {split}");
                let mut s = Sealer::with(algorithm, &key, &n);
                for piece in ad.chunks(split) {
                    s.ad(piece);
                }
                let mut out = text.clone();
                for piece in out.chunks_mut(split) {
                    s.encrypt(piece);
                }
                assert_eq!(out, expected, "ciphertext, {what}");
                assert_eq!(s.tag(), expected_tag, "tag, {what}");
                let mut o = Sealer::with(algorithm, &key, &n);
                o.ad(&ad);
                for piece in out.chunks_mut(split) {
                    o.decrypt(piece);
                }
                assert_eq!(out, text, "{what}");
                assert!(o.verify(&expected_tag), "{what}");
            }
        }
    }
}

/// The two algorithms seal the same text under the same key and nonce differently, and
/// neither opens the other's.
#[test]
fn the_algorithms_do_not_open_each_other() {
    let key = [5u8; 32];
    let n = nonce(&[7; 8], 3, 1, Domain::Log);
    let seal = |algorithm| {
        let mut text = *b"the same event";
        let mut s = Sealer::with(algorithm, &key, &n);
        s.ad(b"header");
        s.encrypt(&mut text);
        (text, s.tag())
    };
    let (x_text, x_tag) = seal(Algorithm::XChaCha20Poly1305);
    let (g_text, g_tag) = seal(Algorithm::Aes256Gcm);
    assert_ne!(x_text, g_text);
    for (algorithm, text, tag) in [
        (Algorithm::Aes256Gcm, x_text, x_tag),
        (Algorithm::XChaCha20Poly1305, g_text, g_tag),
    ] {
        let mut o = Sealer::with(algorithm, &key, &n);
        o.ad(b"header");
        o.authenticate(&text);
        assert!(!o.verify(&tag), "{algorithm:?} opened the other's seal");
    }
    assert_eq!(Algorithm::from_id(0), Some(Algorithm::XChaCha20Poly1305));
    assert_eq!(Algorithm::from_id(1), Some(Algorithm::Aes256Gcm));
    assert_eq!(Algorithm::from_id(2), None);
}

/// A flipped bit in the associated data, the ciphertext or the tag fails the check, as does
/// another key, salt, number, index or domain.
#[test]
fn any_change_fails_the_tag() {
    for algorithm in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
        any_change_fails_the_tag_with(algorithm);
    }
}

fn any_change_fails_the_tag_with(algorithm: Algorithm) {
    let key = [9u8; 32];
    let salt = [3u8; 8];
    let seal = |key: &Key, n: &[u8; 24], ad: &[u8], text: &mut [u8]| {
        let mut s = Sealer::with(algorithm, key, n);
        s.ad(ad);
        s.encrypt(text);
        s.tag()
    };
    let n = nonce(&salt, 5, 2, Domain::Log);
    let mut ct = *b"twenty bytes of text";
    let tag = seal(&key, &n, b"header", &mut ct);
    let opens = |key: &Key, n: &[u8; 24], ad: &[u8], ct: &[u8], tag: &[u8; 16]| {
        let mut s = Sealer::with(algorithm, key, n);
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

/// The cache seals exactly as a fresh seal does, across segments, salts and keys that
/// come and go from it (a key id or salt it has not seen is never served a cached key).
#[test]
fn the_cache_seals_as_a_fresh_seal_does() {
    let keys = [(1u16, [1u8; 32]), (2u16, [2u8; 32])];
    let mut cache = SealerCache::default();
    let text = bytes(100, 3);
    for round in 0..40u64 {
        let (id, key) = keys[(round / 3 % 2) as usize];
        let salt = [(round / 5) as u8; 8];
        let n = nonce(&salt, round % 4, round as u32 % 7, Domain::Log);
        for algorithm in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
            let mut a = text.clone();
            let mut s = cache.sealer(algorithm, id, &key, &n);
            s.ad(b"h");
            s.encrypt(&mut a);
            let mut b = text.clone();
            let mut f = Sealer::with(algorithm, &key, &n);
            f.ad(b"h");
            f.encrypt(&mut b);
            assert_eq!(a, b, "round {round} {algorithm:?}");
            assert_eq!(s.tag(), f.tag(), "round {round} {algorithm:?}");
        }
    }
}

/// Records sealed in index order take their tag masks from batches made ahead; a jump, a
/// step back, another segment, key or domain, or the last index does not, and every seal
/// equals a fresh one.
#[test]
fn masks_made_ahead_seal_as_a_fresh_seal_does() {
    let keys = [(1u16, [1u8; 32]), (2u16, [2u8; 32])];
    let mut cache = SealerCache::default();
    let text = bytes(40, 9);
    let mut steps: Vec<(usize, u64, u32, Domain)> = Vec::new();
    steps.extend((0..40).map(|i| (0, 7, i, Domain::Log)));
    steps.extend([(0, 7, 39, Domain::Log), (0, 7, 17, Domain::Log)]);
    steps.extend((100..120).map(|i| (0, 7, i, Domain::Log)));
    steps.extend((120..125).map(|i| (1, 7, i, Domain::Log)));
    steps.extend((125..130).map(|i| (0, 8, i, Domain::Log)));
    steps.extend((130..135).map(|i| (0, 8, i, Domain::Checkpoint)));
    steps.extend((u32::MAX - 20..=u32::MAX).map(|i| (1, 9, i, Domain::Log)));
    for (key, seq, index, domain) in steps {
        let (id, key) = keys[key];
        let n = nonce(&[4; 8], seq, index, domain);
        let mut a = text.clone();
        let mut s = cache.sealer(Algorithm::Aes256Gcm, id, &key, &n);
        s.encrypt(&mut a);
        let mut b = text.clone();
        let mut f = Sealer::with(Algorithm::Aes256Gcm, &key, &n);
        f.encrypt(&mut b);
        assert_eq!(a, b, "{id} {seq} {index} {domain:?}");
        assert_eq!(s.tag(), f.tag(), "{id} {seq} {index} {domain:?}");
    }
}

/// Encrypting from one buffer into another gives what encrypting in place gives, in any
/// split, mixed with in-place pieces, with both algorithms.
#[test]
fn encrypt_to_matches_encrypting_in_place() {
    let key = [8u8; 32];
    let n = nonce(&[2; 8], 5, 9, Domain::Log);
    let text = bytes(1000, 4);
    for algorithm in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
        let mut expected = text.clone();
        let mut s = Sealer::with(algorithm, &key, &n);
        s.ad(b"header");
        s.encrypt(&mut expected);
        let expected_tag = s.tag();
        for split in [1usize, 15, 16, 100, 1000] {
            let mut s = Sealer::with(algorithm, &key, &n);
            s.ad(b"header");
            let mut out = std::vec![0u8; text.len()];
            for (i, (piece, o)) in text.chunks(split).zip(out.chunks_mut(split)).enumerate() {
                if i % 3 == 2 {
                    o.copy_from_slice(piece);
                    s.encrypt(o);
                } else {
                    s.encrypt_to(piece, o);
                }
            }
            assert_eq!(out, expected, "{algorithm:?} split {split}");
            assert_eq!(s.tag(), expected_tag, "{algorithm:?} split {split}");
        }
    }
}

/// Decrypting at an offset gives the same plaintext as decrypting from the start.
#[test]
fn decrypt_at_seeks() {
    let key = [1u8; 32];
    let n = nonce(&[0; 8], 1, 1, Domain::Checkpoint);
    let text = bytes(300, 5);
    for algorithm in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
        let mut ct = text.clone();
        let mut s = Sealer::with(algorithm, &key, &n);
        s.encrypt(&mut ct);
        let mut o = Sealer::with(algorithm, &key, &n);
        let mut part = ct[136..200].to_vec();
        o.decrypt_at(136, &mut part);
        assert_eq!(part, text[136..200], "{algorithm:?}");
    }
}
