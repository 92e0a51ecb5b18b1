//! Typed readings on the core channel over simulated NOR flash, cut at random points: every
//! reading whose commit returned is taken back as the same value, every event taken decodes,
//! and none is taken twice (the typed layer adds nothing the channel's bytes do not carry).

use serde::{Deserialize, Serialize};
use sluicegate_core::{Channel, Config};
use sluicegate_sim::{CrashPolicy, SimStorage};
use sluicegate_typed::{Codec, InTxn};

/// The firmware example's reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Reading {
    seq: u32,
    at_ms: u32,
    sensor: u8,
    centi_celsius: i16,
}

fn reading(seq: u32) -> Reading {
    Reading {
        seq,
        at_ms: seq.wrapping_mul(7),
        sensor: (seq % 4) as u8,
        centi_celsius: (seq % 5000) as i16 - 1000,
    }
}

const CONFIG: Config = Config::new(64, 16, 2, 32, 512);
type Sim = SimStorage<4, 256>;

#[test]
fn typed_readings_survive_random_power_cuts() {
    let mut sim = Sim::new(16 * 512, 0xFF);
    let mut mem = vec![0u64; CONFIG.memory_words()];
    let mut codec: Codec<Reading, 32> = Codec::new();
    let (mut next, mut acked, mut delivered) = (0u32, Vec::new(), Vec::<u32>::new());
    // Taken by a transaction whose commit failed at a cut: it may have reached the medium.
    let mut in_doubt = Vec::new();
    let mut state: u64 = 0x5EED;
    let mut rand = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for boot in 0..300u64 {
        sim.cut_power_after(rand(400));
        let Ok(mut ch) = Channel::open(&mut sim, &mut mem[..], CONFIG) else {
            sim.reboot(boot, CrashPolicy::Random);
            continue;
        };
        // Bounded: each turn puts a batch or takes one, until the cut.
        for _ in 0..200 {
            if rand(3) > 0 {
                let Ok(txn) = ch.begin() else { break };
                let n = 1 + rand(8) as u32;
                let batch: Vec<u32> = (next..next + n).collect();
                next += n;
                let mut tx = InTxn::new(&mut ch, txn);
                if batch
                    .iter()
                    .any(|&s| codec.put(&mut tx, &reading(s)).is_err())
                {
                    let _ = ch.rollback(txn);
                    continue;
                }
                if ch.commit(txn).is_ok() {
                    acked.extend(batch);
                }
            } else {
                let Ok(txn) = ch.begin() else { break };
                let mut tx = InTxn::new(&mut ch, txn);
                let mut got = Vec::new();
                while got.len() < 16 {
                    match codec.take(&mut tx) {
                        Ok(Some(r)) => got.push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
                for r in &got {
                    assert_eq!(*r, reading(r.seq), "a reading came back changed");
                }
                if ch.commit(txn).is_ok() {
                    delivered.extend(got.iter().map(|r| r.seq));
                } else {
                    in_doubt.extend(got.iter().map(|r| r.seq));
                }
            }
        }
        drop(ch);
        sim.reboot(boot, CrashPolicy::Random);
    }
    // Drain what is left, with the power on.
    let mut ch = Channel::open(&mut sim, &mut mem[..], CONFIG).expect("open after the cuts");
    loop {
        let txn = ch.begin().unwrap();
        let mut tx = InTxn::new(&mut ch, txn);
        let mut got = Vec::new();
        while got.len() < 16 {
            match codec.take(&mut tx).expect("take") {
                Some(r) => got.push(r),
                None => break,
            }
        }
        ch.commit(txn).unwrap();
        if got.is_empty() {
            break;
        }
        for r in &got {
            assert_eq!(*r, reading(r.seq));
        }
        delivered.extend(got.iter().map(|r| r.seq));
    }
    assert_eq!(codec.undecodable(), 0, "every event taken was a reading");
    let mut sorted = delivered.clone();
    sorted.extend(&in_doubt);
    sorted.sort_unstable();
    sorted.dedup();
    for s in &acked {
        assert!(
            sorted.binary_search(s).is_ok(),
            "acknowledged reading {s} lost"
        );
    }
    // A reading taken for good is never taken again.
    let mut once = delivered.clone();
    once.sort_unstable();
    let before = once.len();
    once.dedup();
    assert_eq!(
        once.len(),
        before,
        "a reading was delivered after its take committed"
    );
    assert!(acked.len() > 500, "{} readings acknowledged", acked.len());
}
