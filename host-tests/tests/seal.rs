//! Encryption at rest: no plaintext on the medium, clear errors for a missing or wrong key,
//! tampering reported as corruption, plaintext and sealed segments side by side, and keys that
//! rotate. docs/guarantees.md ("Encryption at rest") states what these show.

use sluicegate_core::record::{RecordHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use sluicegate_core::seal::{Key, KeyId};
use sluicegate_core::{
    Channel, Config, ConfigError, Error, KeyProvider, Region, StaticKeys, Storage,
};
use sluicegate_sim::SimStorage;

type Sim = SimStorage<4, 256>;
type Sealed<'a, K> = Channel<&'a mut Sim, &'a mut [u64], K>;
type OpenError = Error<<&'static mut Sim as sluicegate_core::ErrorType>::Error>;

const CONFIG: Config = Config::new(16, 4, 3, 64, 512).with_checkpoint_step(8);
const KEY_1: (KeyId, Key) = (1, [0x11; 32]);
const KEY_2: (KeyId, Key) = (2, [0x22; 32]);
const OTHER_1: (KeyId, Key) = (1, [0x99; 32]);
const BOTH: [(KeyId, Key); 2] = [KEY_1, KEY_2];

fn sim() -> Sim {
    SimStorage::with_checkpoints(8 * 512, 512, 0xFF)
}

fn open<'a, K: KeyProvider>(
    sim: &'a mut Sim,
    mem: &'a mut [u64],
    keys: K,
) -> Result<Sealed<'a, K>, OpenError> {
    Channel::open_with_keys(sim, mem, CONFIG, keys)
}

fn put<K: KeyProvider>(ch: &mut Channel<&mut Sim, &mut [u64], K>, events: &[&[u8]]) {
    let tx = ch.begin().unwrap();
    for e in events {
        ch.put(tx, e).unwrap();
    }
    ch.commit(tx).unwrap();
}

fn take_all<K: KeyProvider>(ch: &mut Channel<&mut Sim, &mut [u64], K>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let tx = ch.begin().unwrap();
        let got = ch.take(tx, &mut buf).unwrap();
        ch.commit(tx).unwrap();
        match got {
            Some(n) => out.push(buf[..n].to_vec()),
            None => return out,
        }
    }
}

/// Every byte of every region.
fn medium(sim: &mut Sim) -> Vec<u8> {
    let mut all = Vec::new();
    for region in [Region::Log, Region::Checkpoint, Region::Backup] {
        let mut b = vec![0u8; sim.capacity(region) as usize];
        sim.read(region, 0, &mut b).unwrap();
        all.extend_from_slice(&b);
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sealed events round-trip, and neither their bytes nor the checkpoint's pointers appear on
/// the medium; the same run without a key writes both in the clear (the check can fail).
#[test]
fn nothing_in_the_clear() {
    for sealed in [false, true] {
        let mut s = sim();
        let mut mem = vec![0u64; CONFIG.memory_words()];
        let keys = StaticKeys::new(&BOTH, sealed.then_some(1));
        let mut ch = open(&mut s, &mut mem, keys).unwrap();
        put(&mut ch, &[b"SECRET-reading-0001", b"SECRET-reading-0002"]);
        put(&mut ch, &[b"SECRET-reading-0003"]);
        ch.checkpoint().unwrap();
        let stats = ch.stats();
        assert_eq!(ch.sealing_key(), sealed.then_some(1));
        drop(ch);
        let all = medium(&mut s);
        assert_eq!(
            contains(&all, b"SECRET-reading"),
            !sealed,
            "sealed: {sealed}"
        );
        // The checkpoint lists the first event at the segment's first record after the seal.
        let first = if sealed { 40 + 44 } else { 40 };
        let pointer = [first as u8, 0, 0, 0, 0, 0, 0, 0];
        let mut slot = vec![0u8; 448];
        s.read(Region::Checkpoint, 64, &mut slot).unwrap();
        let mut backup = vec![0u8; 448];
        s.read(Region::Backup, 64, &mut backup).unwrap();
        assert_eq!(
            contains(&slot, &pointer) || contains(&backup, &pointer),
            !sealed,
            "checkpoint entries in the clear, sealed: {sealed}"
        );
        let mut ch = open(
            &mut s,
            &mut mem,
            StaticKeys::new(&BOTH, sealed.then_some(1)),
        )
        .unwrap();
        assert_eq!(
            take_all(&mut ch),
            vec![
                b"SECRET-reading-0001".to_vec(),
                b"SECRET-reading-0002".to_vec(),
                b"SECRET-reading-0003".to_vec()
            ]
        );
        assert_eq!(stats.authentication_failures, 0);
    }
}

/// Without the key, or with another key under the same id, the channel does not open, and it
/// says why; an active key the provider does not have is a configuration error.
#[test]
fn missing_or_wrong_key_is_a_clear_error() {
    let mut s = sim();
    let mut mem = vec![0u64; CONFIG.memory_words()];
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&[KEY_1], Some(1))).unwrap();
    put(&mut ch, &[b"one", b"two"]);
    drop(ch);
    let e = Channel::open(&mut s, &mut mem[..], CONFIG).err();
    assert_eq!(e, Some(Error::KeyMissing { key: 1 }));
    assert!(e.unwrap().to_string().contains("sealed with key 1"));
    let e = open(&mut s, &mut mem, StaticKeys::new(&[KEY_2], Some(2))).err();
    assert_eq!(e, Some(Error::KeyMissing { key: 1 }));
    let e = open(&mut s, &mut mem, StaticKeys::new(&[OTHER_1], None)).err();
    assert_eq!(e, Some(Error::WrongKey { key: 1 }));
    let e = open(&mut s, &mut mem, StaticKeys::new(&[KEY_1], Some(3))).err();
    assert_eq!(
        e,
        Some(Error::Config(ConfigError::ActiveKeyMissing { key: 3 }))
    );
    let e = open(&mut s, &mut mem, StaticKeys::new(&[(0, [1; 32])], Some(0))).err();
    assert_eq!(
        e,
        Some(Error::Config(ConfigError::ActiveKeyMissing { key: 0 }))
    );
    // The right key still opens it, and nothing was lost by the refusals.
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&[KEY_1], None)).unwrap();
    assert_eq!(take_all(&mut ch), vec![b"one".to_vec(), b"two".to_vec()]);
}

/// Rewrites the payload byte at `at` (in the log) to `new`, and the record's CRC to match,
/// as an attacker who knows the format would: only the tag can tell.
fn forge(s: &mut Sim, record_at: usize, seq: u64, byte_at: usize, new: u8) {
    let mut hb = [0u8; RECORD_HEADER_BYTES];
    s.read(Region::Log, record_at as u64, &mut hb).unwrap();
    let h = RecordHeader::decode(&hb);
    let mut payload = vec![0u8; h.len as usize];
    s.read(
        Region::Log,
        (record_at + RECORD_HEADER_BYTES) as u64,
        &mut payload,
    )
    .unwrap();
    let mut forged = payload.clone();
    forged[byte_at] = new;
    let mut d = h.digest(seq);
    d.update(&forged);
    let crc = d.finalize().to_le_bytes();
    for (i, (a, b)) in hb[..4].iter().zip(crc).enumerate() {
        for bit in 0..8 {
            if (a ^ b) >> bit & 1 == 1 {
                s.flip_bit(Region::Log, record_at + i, bit);
            }
        }
    }
    let (a, b) = (payload[byte_at], new);
    for bit in 0..8 {
        if (a ^ b) >> bit & 1 == 1 {
            s.flip_bit(Region::Log, record_at + RECORD_HEADER_BYTES + byte_at, bit);
        }
    }
}

/// A ciphertext altered with its CRC fixed up is reported as corruption: never delivered,
/// counted as an authentication failure, and the events around it are unharmed, whether the
/// channel meets it on a take or during replay.
#[test]
fn tampered_ciphertext_is_corruption() {
    for during_replay in [false, true] {
        let mut s = sim();
        let mut mem = vec![0u64; CONFIG.memory_words()];
        let keys = StaticKeys::new(&[KEY_1], Some(1));
        let mut ch = open(&mut s, &mut mem, keys).unwrap();
        put(&mut ch, &[b"first event", b"second event", b"third event"]);
        if !during_replay {
            // The second put record: header, seal record, first put (16 + 11 + 16 -> 44).
            let second = SEGMENT_HEADER_BYTES + 44 + 44;
            forge(ch.storage_mut(), second, 0, 3, b'X');
            let got = take_all(&mut ch);
            assert_eq!(got, vec![b"first event".to_vec(), b"third event".to_vec()]);
            let st = ch.stats();
            assert_eq!(st.authentication_failures, 1);
            assert_eq!(st.corrupt_events_skipped, 1);
            continue;
        }
        // A later commit proves the first was acknowledged (replay drops a commit with a
        // damaged put whole when nothing shows it was acknowledged: it may have been in flight).
        put(&mut ch, &[b"fourth event"]);
        drop(ch);
        let second = SEGMENT_HEADER_BYTES + 44 + 44;
        forge(&mut s, second, 0, 3, b'X');
        let mut ch = open(&mut s, &mut mem, keys).unwrap();
        assert!(
            ch.recovery().authentication_failures >= 1,
            "{:?}",
            ch.recovery()
        );
        assert_eq!(ch.recovery().corrupt_events_dropped, 1);
        let got = take_all(&mut ch);
        let want = [&b"first event"[..], b"third event", b"fourth event"];
        assert_eq!(got, want.map(|e| e.to_vec()).to_vec());
    }
}

/// A log written in plaintext, then with encryption turned on, then with the key rotated,
/// reads back whole and in order; once only new-key data is needed, the old key can go.
#[test]
fn plaintext_then_sealed_then_rotated() {
    let mut s = sim();
    let mut mem = vec![0u64; CONFIG.memory_words()];
    let mut ch = Channel::open(&mut s, &mut mem[..], CONFIG).unwrap();
    put(&mut ch, &[b"plain 1", b"plain 2"]);
    ch.close().unwrap();
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&[KEY_1], Some(1))).unwrap();
    put(&mut ch, &[b"key1 a", b"key1 b"]);
    ch.close().unwrap();
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&BOTH, Some(2))).unwrap();
    put(&mut ch, &[b"key2 a"]);
    assert_eq!(ch.recovery().sealed_segments, 1);
    ch.close().unwrap();
    // Plaintext readers are refused now, with the key they lack.
    assert_eq!(
        Channel::open(&mut s, &mut mem[..], CONFIG).err(),
        Some(Error::KeyMissing { key: 1 })
    );
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&BOTH, Some(2))).unwrap();
    let got = take_all(&mut ch);
    let want: Vec<Vec<u8>> = [&b"plain 1"[..], b"plain 2", b"key1 a", b"key1 b", b"key2 a"]
        .iter()
        .map(|e| e.to_vec())
        .collect();
    assert_eq!(got, want);
    put(&mut ch, &[b"key2 b"]);
    ch.close().unwrap();
    // Nothing queued needs key 1 and the checkpoint resumes past its segments.
    let mut ch = open(&mut s, &mut mem, StaticKeys::new(&[KEY_2], Some(2))).unwrap();
    assert_eq!(take_all(&mut ch), vec![b"key2 b".to_vec()]);
}

/// A segment whose seal record was altered is lost alone when its key opens other segments;
/// the open reports it and the rest of the log is read.
#[test]
fn altered_seal_record_loses_only_its_segment() {
    let mut s = sim();
    let mut mem = vec![0u64; CONFIG.memory_words()];
    let keys = StaticKeys::new(&[KEY_1], Some(1));
    let big = [b'e'; 60];
    let mut ch = open(&mut s, &mut mem, keys).unwrap();
    // Enough to fill the first segment and go on into later ones.
    for _ in 0..4 {
        put(&mut ch, &[&big, &big]);
    }
    let segments = ch.stats().newest_segment;
    drop(ch);
    assert!(segments >= 2, "only {} segments", segments + 1);
    // The seal record's tag lies at payload bytes 12..28; its CRC is fixed up.
    forge(
        &mut s,
        512 * segments as usize + SEGMENT_HEADER_BYTES,
        segments,
        20,
        0,
    );
    let ch = open(&mut s, &mut mem, keys).unwrap();
    assert_eq!(ch.recovery().authentication_failures, 1);
}
