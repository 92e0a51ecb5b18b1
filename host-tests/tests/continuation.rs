//! Runs that go on in the newest segment (`Storage::rewritable`, files): what the open finds,
//! what the first write clears, and what must never come back from the previous run's tail.

use sluicegate_core::{Channel, Config, Region};
use sluicegate_sim::{CrashPolicy, SimStorage};

mod common;
use common::{file_sim, peek_all, put_all, take_n, v, Chan, Sim};

const CONFIG: Config = Config::new(48, 4, 3, 64, 512);
const LOG_BYTES: usize = 8 * 512;

fn memory() -> Vec<u64> {
    vec![0; CONFIG.memory_words()]
}

fn open<'a>(sim: &'a mut Sim, mem: &'a mut [u64]) -> Chan<'a> {
    Channel::open(sim, mem, CONFIG).expect("open")
}

/// A file-like medium where one run committed `kept` and then ran `more`: the medium, and the
/// log offset of the first byte `more` changed (where its first record went).
fn after_a_commit_then(kept: &[u8], more: impl FnOnce(&mut Chan<'_>)) -> (Sim, usize) {
    let (mut sim, mut mem) = (file_sim(LOG_BYTES), memory());
    let before = {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[kept]);
        let before = ch.storage().image(Region::Log).to_vec();
        more(&mut ch);
        before
    };
    let at = before
        .iter()
        .zip(sim.image(Region::Log))
        .position(|(x, y)| x != y)
        .expect("the images differ");
    (sim, at)
}

/// On a rewritable medium a run goes on in the newest segment: 40 runs of one committed put
/// each, each ended by a random power cut, open a segment only when the newest is full, and
/// keep every event in order. On NOR media each run that
/// writes opens a segment of its own, and the same 40 runs fill the 8-segment log.
#[test]
fn runs_on_a_rewritable_medium_share_the_newest_segment() {
    let (mut sim, mut mem) = (file_sim(LOG_BYTES), memory());
    let events: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize % 7]).collect();
    let (mut opened, mut continued) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[e]);
        let stats = ch.stats();
        opened += stats.segments_opened;
        continued += stats.segments_continued;
        drop(ch);
        sim.reboot(i as u64, CrashPolicy::Random);
    }
    // Segments are opened only when the newest one is full: 40 runs write about 2.3 KiB.
    assert!(
        continued >= 35 && opened <= 5,
        "{opened} segments opened, {continued} runs went on"
    );
    let mut ch = open(&mut sim, &mut mem);
    let mut delivered = Vec::new();
    // Bounded: every turn takes at least one event.
    loop {
        let batch = take_n(&mut ch, 3, true);
        if batch.is_empty() {
            break;
        }
        delivered.extend(batch);
    }
    assert_eq!(delivered, events);

    let (mut nor, mut mem): (Sim, _) = (SimStorage::new(LOG_BYTES, 0xFF), memory());
    let mut full_at = None;
    for (i, e) in events.iter().enumerate() {
        let mut ch = Channel::open(&mut nor, &mut mem[..], CONFIG).expect("open");
        let tx = ch.begin().unwrap();
        if ch.put(tx, e).is_err() {
            full_at = Some(i);
            break;
        }
        ch.commit(tx).unwrap();
        assert_eq!(
            ch.stats().segments_opened,
            1,
            "run {i} on NOR opens a segment"
        );
    }
    assert!(full_at.is_some(), "40 runs fill the NOR log");
}

/// A run that goes on in the newest segment clears the previous run's tail before it writes,
/// so records the previous run left past a lost one never come back, whatever a later power
/// cut keeps. Here the previous run's last transaction (two puts and their commit) lost its
/// first put's header; the next run puts an event of the same length in its place, which
/// would make the old second put and commit line up with the write-order ids it continues
/// with. After any cut, the queue holds only what was committed before the loss.
#[test]
fn records_past_a_lost_one_never_come_back() {
    let (mut sim, at) = after_a_commit_then(b"kept", |ch| put_all(ch, &[b"lost-one", b"lost-two"]));
    let mut mem = memory();
    // The first put of the last transaction is gone: its header reads as erased.
    sim.overwrite(Region::Log, at, &[0; 16]);
    sim.reboot(0, CrashPolicy::KeepUnsynced);
    for seed in 0..64 {
        let mut sim = sim.clone();
        {
            let mut ch = open(&mut sim, &mut mem);
            assert_eq!(peek_all(&mut ch), v(&[b"kept"]));
            let tx = ch.begin().unwrap();
            // As long as "lost-one", so that its record takes the same room.
            ch.put(tx, b"new-put!").unwrap();
            assert_eq!(ch.stats().segments_continued, 1);
        }
        sim.reboot(seed, CrashPolicy::Random);
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(peek_all(&mut ch), v(&[b"kept"]), "seed {seed}");
    }
}

/// A run goes on in the newest segment only after a clean walk of it: when replay skipped a
/// damaged record there, the next run opens a segment of its own, and nothing is lost.
#[test]
fn damage_in_the_newest_segment_makes_the_next_run_open_its_own() {
    let (mut sim, at) = after_a_commit_then(b"one", |ch| {
        put_all(ch, &[b"two"]);
        put_all(ch, &[b"three"]);
    });
    let mut mem = memory();
    // Decay in the put record of "two" (its payload): replay skips that record, because the
    // record after it is intact, and drops the event.
    sim.flip_bit(Region::Log, at + 16, 0);
    sim.reboot(0, CrashPolicy::KeepUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    assert!(ch.recovery().corrupt_records_skipped > 0);
    put_all(&mut ch, &[b"four"]);
    let stats = ch.stats();
    assert_eq!((stats.segments_opened, stats.segments_continued), (1, 0));
    drop(ch);
    sim.reboot(1, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(peek_all(&mut ch), v(&[b"one", b"three", b"four"]));
}

/// The clearing leaves the record header where the run goes on as it is: a cut during the
/// clearing can then only destroy what lies after it, and replay judges the record there as
/// the open did. Here that header's length is damaged (so the walk stops there), and an
/// empty put's record was there, with a committed put right after it; zeroing that header
/// would make it a 16-byte record whose successor is intact with the next write-order id,
/// and a cut that tore the clearing could bring the lost commit back.
#[test]
fn a_cut_while_clearing_never_changes_the_verdict_on_the_tail() {
    let (mut sim, at) = after_a_commit_then(b"kept", |ch| {
        let open_tx = ch.begin().unwrap();
        ch.put(open_tx, b"").unwrap();
        put_all(ch, &[b"after"]);
    });
    let mut mem = memory();
    // The empty put's length now reads 0xFFFFFF: past any segment, so the walk stops there.
    let mut header = sim.image(Region::Log)[at..at + 8].to_vec();
    header[5..8].copy_from_slice(&[0xFF; 3]);
    sim.overwrite(Region::Log, at, &header);
    sim.reboot(0, CrashPolicy::KeepUnsynced);
    for seed in 0..64 {
        let mut sim = sim.clone();
        {
            let mut ch = open(&mut sim, &mut mem);
            assert_eq!(peek_all(&mut ch), v(&[b"kept"]));
            let tx = ch.begin().unwrap();
            // The first write of the clearing is cut.
            ch.storage_mut().cut_power_after(0);
            assert!(ch.put(tx, b"new").is_err());
        }
        sim.reboot(seed, CrashPolicy::Random);
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(peek_all(&mut ch), v(&[b"kept"]), "seed {seed}");
    }
}
