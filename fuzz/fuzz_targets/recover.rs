//! Recovery from any damage to a real log never panics, never breaks a NOR rule, and never
//! delivers an event whose bytes differ from what was put.
//!
//! The input's first 8 bytes seed a workload that writes a valid log and checkpoints; the rest
//! is a list of damages (3 bytes each: a 16-bit offset, whose top two bits pick the log, the
//! checkpoint or the backup region, and a byte to store there). Random bytes alone would almost
//! never pass a CRC, so starting from a valid log reaches deep into replay.
//!
//! At most four bytes are damaged per input. A CRC guards against accidents, not forgery, and
//! the fuzzer can plant a matching CRC (it did, in `decode_record`); forging a put record takes
//! at least five changed bytes (one of content, four of CRC). Tampering is what encryption with
//! an AEAD is for (issue 8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate_core::{Channel, Config, Region};
use sluicegate_sim::model::event_bytes;
use sluicegate_sim::{CrashPolicy, SimStorage};

const CONFIG: Config = Config::new(24, 6, 4, 40, 512)
    .with_checkpoints(2, 0, 0)
    .with_checkpoint_step(8);
const LOG_BYTES: usize = 8 * 512;
const SLOT_BYTES: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((seed, damage)) = data.split_first_chunk::<8>() else {
        return;
    };
    let seed = u64::from_le_bytes(*seed);
    let mut sim: SimStorage<4, 256> = SimStorage::with_checkpoints(LOG_BYTES, SLOT_BYTES, 0xFF);
    let mut memory = vec![0u64; CONFIG.memory_words()];
    // A deterministic workload: puts in batches, some takes, some rollbacks.
    {
        let mut ch = Channel::open(&mut sim, &mut memory[..], CONFIG).unwrap();
        let mut id = 0u64;
        let mut buf = [0u8; 40];
        for step in 0..12u64 {
            let bits = seed.rotate_left(step as u32 * 5);
            let tx = ch.begin().unwrap();
            if bits & 3 == 0 {
                for _ in 0..(bits >> 2) % 6 {
                    if ch.take(tx, &mut buf).unwrap().is_none() {
                        break;
                    }
                }
            } else {
                for _ in 0..(bits >> 2) % 6 + 1 {
                    if ch.put(tx, &event_bytes(id, 40)).is_err() {
                        break;
                    }
                    id += 1;
                }
            }
            if bits & 16 == 0 {
                let _ = ch.commit(tx);
            } else {
                let _ = ch.rollback(tx);
            }
        }
    }
    sim.reboot(seed, CrashPolicy::Random);
    for chunk in damage.chunks_exact(3).take(4) {
        let raw = u16::from_le_bytes([chunk[0], chunk[1]]) as usize;
        let (region, size) = match raw >> 14 {
            0 | 1 => (Region::Log, LOG_BYTES),
            2 => (Region::Checkpoint, SLOT_BYTES),
            _ => (Region::Backup, SLOT_BYTES),
        };
        sim.overwrite(region, raw % size, &[chunk[2]]);
    }
    let Ok(mut ch) = Channel::open(&mut sim, &mut memory[..], CONFIG) else {
        return;
    };
    // Drain and write again: everything delivered must be an event exactly as it was put.
    let mut buf = [0u8; 40];
    for _ in 0..8 {
        let Ok(tx) = ch.begin() else { return };
        while let Ok(Some(n)) = ch.take(tx, &mut buf) {
            let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
            assert_eq!(
                &buf[..n],
                &event_bytes(id, 40)[..],
                "corrupt event delivered"
            );
        }
        let _ = ch.commit(tx);
        let Ok(tx) = ch.begin() else { return };
        let _ = ch.put(tx, &event_bytes(1 << 40, 40));
        let _ = ch.commit(tx);
    }
    assert!(
        ch.storage().violations().is_empty(),
        "{:?}",
        ch.storage().violations()
    );
});
