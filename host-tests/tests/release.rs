//! Segments handed back to the storage once nothing needs them (`Storage::release`, files: the
//! elastic log). The simulated medium destroys a released range at once and durably, so a
//! segment released while an event, a pending transaction or a checkpoint still needed it
//! loses that event here, with or without a power cut.

use std::collections::BTreeSet;

use sluicegate_core::{Channel, Config, Region};
use sluicegate_sim::{CrashPolicy, SimStorage};

mod common;
use common::{peek_all, Chan, Sim};

/// 32 events, transactions of 4, 3 at once, events up to 64 bytes, 512-byte segments; a ring of
/// 8 segments.
const CONFIG: Config = Config::new(32, 4, 3, 64, 512).with_checkpoint_step(8);
const SEGMENTS: u64 = 8;
const SEGMENT_BYTES: u64 = 512;

fn file_sim_with_checkpoints() -> Sim {
    let mut sim = SimStorage::with_checkpoints((SEGMENTS * SEGMENT_BYTES) as usize, 512, 0x00);
    sim.set_rewritable(true);
    sim
}

fn memory() -> Vec<u64> {
    vec![0; CONFIG.memory_words()]
}

fn open<'a>(sim: &'a mut Sim, mem: &'a mut [u64]) -> Chan<'a> {
    Channel::open(sim, mem, CONFIG).expect("open")
}

fn event(i: u32) -> Vec<u8> {
    format!("event-{i:05}-padding-to-forty-bytes-long").into_bytes()
}

/// What the workload had acknowledged when it stopped, and the event whose outcome the stop
/// left open (the operation the cut interrupted).
#[derive(Default)]
struct Acked {
    queued: BTreeSet<Vec<u8>>,
    taken: BTreeSet<Vec<u8>>,
    open: Vec<Vec<u8>>,
}

/// The workload: a lap and a half of the ring of put-then-take churn with a checkpoint every
/// few transactions; then the oldest queued event is taken by a transaction that stays open
/// (it pins its segment) while the churn goes on for most of a lap more, with checkpoints.
/// Every step is a committed transaction of one event. Stops at the first error (a power
/// cut), returning what was acknowledged.
fn workload(ch: &mut Chan<'_>, acked: &mut Acked) -> Result<(), ()> {
    let mut next = 0u32;
    let mut buf = [0u8; 64];
    let step = |ch: &mut Chan<'_>, acked: &mut Acked, i: u32| -> Result<(), ()> {
        // One put, committed.
        let e = event(i);
        acked.open = vec![e.clone()];
        let tx = ch.begin().map_err(|_| ())?;
        ch.put(tx, &e).map_err(|_| ())?;
        ch.commit(tx).map_err(|_| ())?;
        acked.queued.insert(e);
        acked.open.clear();
        Ok(())
    };
    let take_one = |ch: &mut Chan<'_>, acked: &mut Acked, buf: &mut [u8; 64]| -> Result<(), ()> {
        let tx = ch.begin().map_err(|_| ())?;
        let n = ch.take(tx, buf).map_err(|_| ())?.ok_or(())?;
        let e = buf[..n].to_vec();
        acked.open = vec![e.clone()];
        ch.commit(tx).map_err(|_| ())?;
        acked.queued.remove(&e);
        acked.taken.insert(e);
        acked.open.clear();
        Ok(())
    };
    // Two events queued, then churn: each put is followed by a take of the oldest.
    for _ in 0..2 {
        step(ch, acked, next)?;
        next += 1;
    }
    for round in 0..60 {
        step(ch, acked, next)?;
        next += 1;
        take_one(ch, acked, &mut buf)?;
        if round % 5 == 4 {
            ch.checkpoint().map_err(|_| ())?;
        }
    }
    // The oldest queued event is taken and left in flight: an uncommitted take, which must be
    // delivered again after a restart, so its segment must stay.
    let pinned_tx = ch.begin().map_err(|_| ())?;
    let n = ch.take(pinned_tx, &mut buf).map_err(|_| ())?.ok_or(())?;
    let pinned = buf[..n].to_vec();
    for round in 0..20 {
        step(ch, acked, next)?;
        next += 1;
        // The churn takes what was put after the pinned event.
        take_one(ch, acked, &mut buf)?;
        if round % 5 == 4 {
            ch.checkpoint().map_err(|_| ())?;
        }
    }
    assert!(acked.queued.contains(&pinned));
    Ok(())
}

/// What the channel holds after a reopen agrees with what was acknowledged: every queued event
/// is there, no taken one came back, and nothing else but the interrupted one.
fn check(found: &[Vec<u8>], acked: &Acked, what: &str) {
    let found: BTreeSet<Vec<u8>> = found.iter().cloned().collect();
    for e in &acked.queued {
        assert!(
            found.contains(e) || acked.open.contains(e),
            "{what}: acknowledged event {} lost",
            String::from_utf8_lossy(e)
        );
    }
    for e in &found {
        assert!(
            !acked.taken.contains(e) || acked.open.contains(e),
            "{what}: taken event {} came back",
            String::from_utf8_lossy(e)
        );
        assert!(
            acked.queued.contains(e) || acked.open.contains(e),
            "{what}: {} was never acknowledged",
            String::from_utf8_lossy(e)
        );
    }
}

/// Without a cut: checkpoints release segments as the churn frees them, but never the one an
/// uncommitted take pins, nor one the log has rolled into again; after a restart the in-flight
/// event is delivered again and nothing else is lost or repeated.
#[test]
fn checkpoints_release_what_is_free_and_keep_what_a_pending_take_pins() {
    let mut sim = file_sim_with_checkpoints();
    let mut mem = memory();
    let mut acked = Acked::default();
    {
        let mut ch = open(&mut sim, &mut mem);
        workload(&mut ch, &mut acked).expect("no cut, no error");
        let newest = ch.stats().newest_segment;
        assert!(newest >= 10, "the churn must lap the ring: newest {newest}");
    }
    let released: Vec<u64> = sim
        .released()
        .iter()
        .inspect(|(r, from, to)| {
            assert_eq!(*r, Region::Log);
            assert_eq!(to - from, SEGMENT_BYTES);
        })
        .map(|(_, from, _)| from / SEGMENT_BYTES)
        .collect();
    let distinct: BTreeSet<u64> = released.iter().copied().collect();
    assert!(distinct.len() >= 6, "released slots {distinct:?}");
    sim.reboot(1, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    check(&peek_all(&mut ch), &acked, "no cut");
    assert_eq!(peek_all(&mut ch).len(), acked.queued.len());
}

/// A power cut at every mutation of the workload, each rebooted under two fates: whatever the
/// cut interrupts, a released segment never held anything acknowledged.
#[test]
fn a_cut_anywhere_around_releases_loses_nothing_acknowledged() {
    // Count the mutations of a whole run.
    let mut total = 0u64;
    {
        let mut sim = file_sim_with_checkpoints();
        let mut mem = memory();
        let mut ch = open(&mut sim, &mut mem);
        ch.storage_mut().reset_counters();
        workload(&mut ch, &mut Acked::default()).unwrap();
        let c = ch.storage_mut().counters();
        total += c.writes + c.erases + c.syncs;
    }
    assert!(total > 200, "{total} mutations");
    let mut cuts = 0;
    for n in (0..total).step_by(3) {
        for (seed, policy) in [(n, CrashPolicy::Random), (n, CrashPolicy::LoseUnsynced)] {
            let mut sim = file_sim_with_checkpoints();
            let mut mem = memory();
            let mut acked = Acked::default();
            {
                let mut ch = open(&mut sim, &mut mem);
                ch.storage_mut().cut_power_after(n);
                let _ = workload(&mut ch, &mut acked);
            }
            sim.reboot(seed, policy);
            let mut ch = open(&mut sim, &mut mem);
            check(
                &peek_all(&mut ch),
                &acked,
                &format!("cut after {n}, {policy:?}"),
            );
            cuts += 1;
        }
    }
    assert!(cuts > 100);
}
