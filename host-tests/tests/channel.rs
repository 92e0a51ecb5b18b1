//! The channel's contract, one behaviour per test, on the simulated medium.

use sluicegate_core::record::{CRC32C, SEGMENT_HEADER_BYTES};
use sluicegate_core::{Channel, Config, ConfigError, Error, Recovery, RecoveryPath, Region};
use sluicegate_sim::{CrashPolicy, OpKind, SimStorage};

mod common;
use common::{put_all, take_n, v, Chan, Sim};

const CONFIG: Config = Config::new(8, 4, 3, 64, 512);
const LOG_BYTES: usize = 8 * 512;

fn sim() -> Sim {
    SimStorage::new(LOG_BYTES, 0xFF)
}

fn memory() -> Vec<u64> {
    vec![0; CONFIG.memory_words()]
}

fn open<'a>(sim: &'a mut Sim, mem: &'a mut [u64]) -> Chan<'a> {
    Channel::open(sim, mem, CONFIG).expect("open")
}

/// Takes up to a transaction's worth of events in one transaction.
fn take_all(ch: &mut Chan<'_>, commit: bool) -> Vec<Vec<u8>> {
    take_n(ch, CONFIG.transaction_capacity() as usize, commit)
}

fn reopen_after_crash(sim: &mut Sim, mem: &mut [u64], policy: CrashPolicy) -> Recovery {
    sim.reboot(1, policy);
    let ch = Channel::open(&mut *sim, &mut *mem, CONFIG).expect("reopen");
    *ch.recovery()
}

/// Events come out in commit order, across transactions and across a restart.
#[test]
fn fifo_in_commit_order_across_restart() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        // Two put transactions interleave; the second commits first, so its event comes first.
        let a = ch.begin().unwrap();
        let b = ch.begin().unwrap();
        ch.put(a, b"a1").unwrap();
        ch.put(b, b"b1").unwrap();
        ch.put(a, b"a2").unwrap();
        ch.commit(b).unwrap();
        ch.commit(a).unwrap();
        put_all(&mut ch, &[b"c1"]);
    }
    reopen_after_crash(&mut sim, &mut mem, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, true), v(&[b"b1", b"a1", b"a2", b"c1"]));
}

/// A commit is durable when it returns: a power cut that loses every unsynced write keeps it,
/// and each commit costs exactly one sync.
#[test]
fn commit_is_durable_when_it_returns() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"first"]); // also opens the run's segment
        ch.storage().counters();
        let before = ch.storage().counters().syncs;
        put_all(&mut ch, &[b"x", b"y"]);
        assert_eq!(ch.storage().counters().syncs - before, 1);
    }
    let r = reopen_after_crash(&mut sim, &mut mem, CrashPolicy::LoseUnsynced);
    assert_eq!(r.path, RecoveryPath::FullReplay);
    assert_eq!(r.events, 3);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, false), v(&[b"first", b"x", b"y"]));
}

/// A put that was never committed is not delivered after a crash, even if its record survived.
#[test]
fn uncommitted_put_is_not_delivered_after_crash() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"kept"]);
        let tx = ch.begin().unwrap();
        ch.put(tx, b"never committed").unwrap();
    }
    let r = reopen_after_crash(&mut sim, &mut mem, CrashPolicy::KeepUnsynced);
    assert_eq!((r.puts, r.events, r.uncommitted_puts), (2, 1, 1));
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, false), v(&[b"kept"]));
}

/// A rolled-back put is not replayed, and an empty rollback or commit is fine and writes nothing.
#[test]
fn rollback_of_put_and_empty_transactions() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"one"]);
        let tx = ch.begin().unwrap();
        ch.put(tx, b"rolled back").unwrap();
        ch.rollback(tx).unwrap();
        let before = ch.storage().counters();
        let tx = ch.begin().unwrap();
        ch.commit(tx).unwrap();
        let tx = ch.begin().unwrap();
        ch.rollback(tx).unwrap();
        assert_eq!(
            ch.storage().counters(),
            before,
            "empty transactions touch nothing"
        );
    }
    reopen_after_crash(&mut sim, &mut mem, CrashPolicy::KeepUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, false), v(&[b"one"]));
}

/// A rolled-back take puts its events back exactly where they were, even when another take
/// transaction holds later events.
#[test]
fn rollback_of_take_restores_original_order() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    put_all(&mut ch, &[b"a", b"b", b"c", b"d"]);
    let mut buf = [0u8; 64];
    let t1 = ch.begin().unwrap();
    let t2 = ch.begin().unwrap();
    assert_eq!(ch.take(t1, &mut buf).unwrap(), Some(1)); // a
    assert_eq!(ch.take(t2, &mut buf).unwrap(), Some(1)); // b
    assert_eq!(&buf[..1], b"b");
    assert_eq!(ch.take(t1, &mut buf).unwrap(), Some(1)); // c
    ch.rollback(t1).unwrap();
    ch.commit(t2).unwrap();
    assert_eq!(take_all(&mut ch, true), v(&[b"a", b"c", b"d"]));
}

/// An uncommitted take is delivered again after a crash; a committed take never is.
#[test]
fn takes_across_a_crash() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        let tx = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        ch.take(tx, &mut buf).unwrap();
        ch.commit(tx).unwrap(); // a is gone for good
        let tx = ch.begin().unwrap();
        ch.take(tx, &mut buf).unwrap(); // b is taken, not committed
    }
    let r = reopen_after_crash(&mut sim, &mut mem, CrashPolicy::LoseUnsynced);
    assert_eq!(
        (r.events_committed, r.events_taken, r.take_commits),
        (3, 1, 1)
    );
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, false), v(&[b"b", b"c"]));
}

/// A take transaction that begins before another commits puts, and commits after, removes only
/// what it took (Flume's FLUME-1432 interleaving), and replay agrees.
#[test]
fn interleaved_put_and_take_commits_replay_identically() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a"]);
        let take = ch.begin().unwrap();
        let put = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        ch.take(take, &mut buf).unwrap();
        ch.put(put, b"b").unwrap();
        ch.commit(put).unwrap();
        assert_eq!(ch.take(take, &mut buf).unwrap(), Some(1));
        assert_eq!(&buf[..1], b"b");
        ch.commit(take).unwrap();
        put_all(&mut ch, &[b"c"]);
    }
    reopen_after_crash(&mut sim, &mut mem, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(take_all(&mut ch, false), v(&[b"c"]));
}

/// Limits are enforced with typed errors and nothing already committed is lost when something
/// is refused.
#[test]
fn limits_give_typed_errors_and_lose_nothing() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    let big = [7u8; 65];
    let tx = ch.begin().unwrap();
    assert_eq!(
        ch.put(tx, &big),
        Err(Error::EventTooLarge { len: 65, max: 64 })
    );
    for i in 0..4u8 {
        ch.put(tx, &[i]).unwrap();
    }
    assert_eq!(ch.put(tx, b"5th"), Err(Error::TransactionFull));
    let mut buf = [0u8; 64];
    assert_eq!(ch.take(tx, &mut buf), Err(Error::WrongTransactionKind));
    ch.commit(tx).unwrap();
    assert_eq!(ch.put(tx, b"stale"), Err(Error::BadTransaction));
    put_all(&mut ch, &[b"4", b"5", b"6", b"7"]);
    let tx = ch.begin().unwrap();
    assert_eq!(ch.put(tx, b"9th"), Err(Error::ChannelFull));
    ch.rollback(tx).unwrap();
    let held: Vec<_> = (0..3).map(|_| ch.begin()).collect();
    assert_eq!(ch.begin(), Err(Error::TooManyTransactions));
    for t in held {
        ch.rollback(t.unwrap()).unwrap();
    }
    // A buffer too small for the next event leaves it in place.
    let tx = ch.begin().unwrap();
    let mut tiny = [0u8; 0];
    assert_eq!(
        ch.take(tx, &mut tiny),
        Err(Error::BufferTooSmall { needed: 1 })
    );
    ch.rollback(tx).unwrap();
    let first = take_all(&mut ch, true);
    let second = take_all(&mut ch, true);
    assert_eq!(first, v(&[&[0], &[1], &[2], &[3]]));
    assert_eq!(second, v(&[b"4", b"5", b"6", b"7"]));
}

/// A rolled-back take does not free capacity (Flume's TestFileChannel case); a committed one does.
#[test]
fn rolled_back_take_does_not_free_capacity() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    put_all(&mut ch, &[b"1", b"2", b"3", b"4"]);
    put_all(&mut ch, &[b"5", b"6", b"7", b"8"]);
    take_all(&mut ch, false);
    let tx = ch.begin().unwrap();
    assert_eq!(ch.put(tx, b"x"), Err(Error::ChannelFull));
    ch.rollback(tx).unwrap();
    take_all(&mut ch, true);
    put_all(&mut ch, &[b"x"]);
    assert_eq!(ch.len(), 5);
}

/// After a failed write the channel refuses writes with a sticky error until it is reopened,
/// and reopening finds everything committed before the failure.
#[test]
fn write_failure_poisons_until_reopen() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"safe"]);
        let tx = ch.begin().unwrap();
        ch.put(tx, b"written").unwrap();
        ch.storage_mut().fail_nth(OpKind::Write, 1);
        assert!(matches!(ch.put(tx, b"fails"), Err(Error::Storage(_))));
        assert_eq!(ch.put(tx, b"again"), Err(Error::Poisoned));
        assert_eq!(ch.commit(tx), Err(Error::Poisoned));
        let tx2 = ch.begin().unwrap();
        assert_eq!(ch.put(tx2, b"other"), Err(Error::Poisoned));
        // Reads still work, and rollbacks, which write nothing.
        assert_eq!(take_all(&mut ch, false), v(&[b"safe"]));
        ch.rollback(tx).unwrap();
    }
    let mut ch = open(&mut sim, &mut mem);
    put_all(&mut ch, &[b"after reopen"]);
    assert_eq!(take_all(&mut ch, false), v(&[b"safe", b"after reopen"]));
}

/// A failed sync poisons the channel: the commit reports the failure and is not applied, and
/// the channel refuses writes until reopened.
#[test]
fn sync_failure_poisons_and_commit_is_not_applied() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    put_all(&mut ch, &[b"safe"]);
    let tx = ch.begin().unwrap();
    ch.put(tx, b"x").unwrap();
    ch.storage_mut().fail_nth(OpKind::Sync, 1);
    assert!(matches!(ch.commit(tx), Err(Error::Storage(_))));
    assert_eq!(ch.len(), 1, "the failed commit is not applied");
    let tx = ch.begin().unwrap();
    assert_eq!(ch.put(tx, b"y"), Err(Error::Poisoned));
}

/// A full disk when a new segment is started (the file adapter creates the segment's file
/// then) fails that one write cleanly: the channel is not poisoned, everything committed stays,
/// and once the space is there the same transaction goes on. Any other erase failure poisons.
#[test]
fn no_space_for_a_new_segment_is_not_sticky() {
    use sluicegate_core::StorageErrorKind;
    // Transactions large enough to fill a segment.
    const ROOMY: Config = Config::new(32, 16, 3, 64, 512);
    let mut sim = sim();
    let mut mem = vec![0; ROOMY.memory_words()];
    let mut ch = Channel::open(&mut sim, &mut mem[..], ROOMY).unwrap();
    put_all(&mut ch, &[b"before"]);
    let big = [7u8; 64];
    // Puts until one needs a new segment, whose erase fails for want of space.
    let tx = ch.begin().unwrap();
    ch.storage_mut()
        .fail_nth_as(OpKind::Erase, 1, StorageErrorKind::NoSpace);
    let mut n = 0;
    loop {
        match ch.put(tx, &big) {
            Ok(()) => n += 1,
            Err(Error::Storage(e)) => {
                assert_eq!(e.kind, StorageErrorKind::NoSpace);
                break;
            }
            Err(e) => panic!("expected a NoSpace storage error, got {e:?}"),
        }
        assert!(n < 16, "the injected failure was never met");
    }
    ch.put(tx, &big).unwrap();
    ch.commit(tx).unwrap();
    assert_eq!(ch.len(), 2 + n);
    // An I/O error at the same step poisons.
    let tx = ch.begin().unwrap();
    ch.storage_mut().fail_nth(OpKind::Erase, 1);
    let mut failed = false;
    for _ in 0..16 {
        match ch.put(tx, &big) {
            Ok(()) => {}
            Err(Error::Storage(_)) => {
                failed = true;
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(failed, "the injected erase failure was never met");
    assert_eq!(ch.put(tx, b"x"), Err(Error::Poisoned));
    let _ = ch.into_parts();
    let mut ch = Channel::open(&mut sim, &mut mem[..], ROOMY).unwrap();
    assert_eq!(ch.len(), 2 + n, "everything committed survives");
    put_all(&mut ch, &[b"after reopen"]);
}

/// A sync done outside the channel (group commit) applies exactly the commits written before
/// its mark, in log order; a commit written after the mark waits for the next sync; a failed
/// outside sync poisons like a failed sync, and one never run applies nothing.
#[test]
fn outside_sync_applies_only_what_its_mark_covers() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    let (a, b, c) = (
        ch.begin().unwrap(),
        ch.begin().unwrap(),
        ch.begin().unwrap(),
    );
    ch.put(a, b"a").unwrap();
    ch.put(b, b"b").unwrap();
    ch.put(c, b"c").unwrap();
    assert!(ch.write_commit(b).unwrap());
    assert!(ch.write_commit(a).unwrap());
    let syncs = ch.storage().counters().syncs;
    let mut pending = ch.begin_sync().unwrap();
    assert_eq!(pending.mark(), ch.sync_mark());
    assert!(ch.write_commit(c).unwrap());
    pending.run();
    ch.finish_sync(pending).unwrap();
    assert!(ch.is_finished(a) && ch.is_finished(b));
    assert!(!ch.is_finished(c), "c was written after the mark");
    assert_eq!(ch.len(), 2);
    ch.sync().unwrap();
    assert!(ch.is_finished(c));
    assert_eq!(ch.storage().counters().syncs, syncs + 2);
    assert_eq!(take_all(&mut ch, false), v(&[b"b", b"a", b"c"]));
    let d = ch.begin().unwrap();
    ch.put(d, b"d").unwrap();
    assert!(ch.write_commit(d).unwrap());
    let unrun = ch.begin_sync().unwrap();
    assert!(matches!(ch.finish_sync(unrun), Err(Error::LogicBug(_))));
    assert!(!ch.is_finished(d), "a sync that never ran applies nothing");
    ch.storage_mut().fail_nth(OpKind::Sync, 1);
    let mut failed = ch.begin_sync().unwrap();
    failed.run();
    assert!(matches!(ch.finish_sync(failed), Err(Error::Storage(_))));
    assert!(!ch.is_finished(d));
    let e = ch.begin().unwrap();
    assert_eq!(ch.put(e, b"e"), Err(Error::Poisoned));
}

/// A torn record at the log's tail is the end of the log, not an error.
#[test]
fn torn_tail_is_end_of_log() {
    let (mut sim, mut mem) = (sim(), memory());
    let end;
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b"]);
        end = ch.stats();
    }
    assert_eq!(end.depth, 2);
    // Garbage where the next record would go, as a torn write leaves it.
    let image = sim.image(Region::Log).to_vec();
    let last = image.iter().rposition(|&b| b != 0xFF).unwrap();
    sim.overwrite(Region::Log, last + 1, &[0x12, 0x34, 0x56, 0x00, 0x77]);
    let ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().events, 2);
    assert_eq!(ch.recovery().put_commits, 1);
}

/// A bit that flips in a committed event under an open channel is caught by the CRC on take:
/// the event is never delivered, it is counted, the next one is, and it leaves with that take.
#[test]
fn corrupt_event_is_never_delivered() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"AAAAAAAA", b"BBBBBBBB"]);
        let at = find(ch.storage().image(Region::Log), b"AAAAAAAA");
        ch.storage_mut().flip_bit(Region::Log, at + 3, 2);
        assert_eq!(take_all(&mut ch, true), v(&[b"BBBBBBBB"]));
        assert_eq!(ch.stats().corrupt_events_skipped, 1);
    }
    let mut ch = open(&mut sim, &mut mem);
    assert!(ch.is_empty());
    assert!(take_all(&mut ch, false).is_empty());
}

/// A bit that flips in an acknowledged event while the channel is closed loses that event only:
/// replay finds proof the commit was acknowledged and keeps the rest of its batch.
#[test]
fn media_decay_loses_only_the_damaged_event() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"AAAAAAAA", b"BBBBBBBB"]);
        put_all(&mut ch, &[b"CCCCCCCC"]);
    }
    let at = find(sim.image(Region::Log), b"AAAAAAAA");
    sim.flip_bit(Region::Log, at + 3, 2);
    let mut ch = open(&mut sim, &mut mem);
    let r = *ch.recovery();
    assert_eq!(
        (r.corrupt_records_skipped, r.corrupt_events_dropped),
        (1, 1)
    );
    assert_eq!(r.torn_commits_dropped, 0);
    assert_eq!(take_all(&mut ch, false), v(&[b"BBBBBBBB", b"CCCCCCCC"]));
}

/// A commit whose put did not survive and that nothing proves acknowledged was in flight at the
/// power cut: replay drops it whole, never half of it.
#[test]
fn unproven_commit_with_a_torn_put_is_dropped_whole() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"kept"]);
        put_all(&mut ch, &[b"AAAAAAAA", b"BBBBBBBB"]);
    }
    let at = find(sim.image(Region::Log), b"AAAAAAAA");
    sim.flip_bit(Region::Log, at, 1);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().torn_commits_dropped, 1);
    assert_eq!(take_all(&mut ch, false), v(&[b"kept"]));
}

/// A commit with a damaged put is kept (without the damaged event) only when a later commit's
/// durable mark proves it was synced: after its own sync, yes; when both were written before
/// one sync (group commit), no, and it is dropped whole. In the full format and the compact
/// one (where the mark is a distance back from the commit's own id).
#[test]
fn only_a_later_durable_mark_proves_a_commit_with_a_damaged_put() {
    for config in [CONFIG, CONFIG.with_compact_records()] {
        for grouped in [false, true] {
            let (mut sim, mut mem) = (sim(), memory());
            {
                let mut ch = Channel::open(&mut sim, &mut mem[..], config).unwrap();
                put_all(&mut ch, &[b"kept"]);
                let (a, b) = (ch.begin().unwrap(), ch.begin().unwrap());
                ch.put(a, b"AAAAAAAA").unwrap();
                ch.put(a, b"BBBBBBBB").unwrap();
                ch.put(b, b"later").unwrap();
                if grouped {
                    assert!(ch.write_commit(a).unwrap());
                    assert!(ch.write_commit(b).unwrap());
                    ch.sync().unwrap();
                } else {
                    ch.commit(a).unwrap();
                    ch.commit(b).unwrap();
                }
            }
            let at = find(sim.image(Region::Log), b"AAAAAAAA");
            sim.flip_bit(Region::Log, at, 1);
            let mut ch = Channel::open(&mut sim, &mut mem[..], config).unwrap();
            let what = format!("compact {}, grouped {grouped}", config.compact());
            if grouped {
                assert_eq!(ch.recovery().torn_commits_dropped, 1, "{what}");
                assert_eq!(take_all(&mut ch, false), v(&[b"kept", b"later"]), "{what}");
            } else {
                assert_eq!(ch.recovery().torn_commits_dropped, 0, "{what}");
                assert_eq!(ch.recovery().corrupt_events_dropped, 1, "{what}");
                assert_eq!(
                    take_all(&mut ch, false),
                    v(&[b"kept", b"BBBBBBBB", b"later"]),
                    "{what}"
                );
            }
        }
    }
}

/// A damaged record in the middle of a segment is skipped by replay when the next record is
/// intact, so later commits still count.
#[test]
fn damaged_record_mid_log_is_skipped() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        let tx = ch.begin().unwrap();
        ch.put(tx, b"ROLLEDBACK").unwrap();
        ch.rollback(tx).unwrap();
        put_all(&mut ch, &[b"later"]);
    }
    let at = find(sim.image(Region::Log), b"ROLLEDBACK");
    sim.flip_bit(Region::Log, at, 0);
    let ch = open(&mut sim, &mut mem);
    let r = ch.recovery();
    assert_eq!(r.corrupt_records_skipped, 1);
    assert_eq!(r.events, 1);
}

/// A segment written by a newer format version is refused with a clear error.
#[test]
fn newer_format_is_refused() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"x"]);
    }
    let mut header = sim.image(Region::Log)[..SEGMENT_HEADER_BYTES].to_vec();
    header[8..10].copy_from_slice(&9u16.to_le_bytes());
    let crc = CRC32C.checksum(&header[4..]);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    sim.overwrite(Region::Log, 0, &header);
    let err = Channel::open(&mut sim, &mut mem[..], CONFIG).err();
    assert_eq!(err, Some(Error::UnsupportedFormat { found: 9 }));
    assert!(err.unwrap().to_string().contains("format version 9"));
}

/// Opening a log with another segment size is refused, never misread.
#[test]
fn segment_size_mismatch_is_refused() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"x"]);
    }
    let other = Config::new(8, 4, 3, 64, 1024);
    let mut mem2 = vec![0u64; other.memory_words()];
    let err = Channel::open(&mut sim, &mut mem2[..], other).err();
    assert_eq!(
        err,
        Some(Error::Config(ConfigError::SegmentSizeMismatch {
            on_media: 512,
            configured: 1024
        }))
    );
}

/// A compact log (`Config::with_compact_records`) writes an 8-byte record header and commits
/// of variable-length integers, and its events come back the same across a restart: a
/// 32-byte event is 40 bytes, and a commit of two events 12 (header 8, distance 1, slot 1,
/// first offset 1, one step of 1; padded to the 4-byte word), where the full format writes 48
/// and 40 (`operation_counts_are_pinned`).
#[test]
fn compact_records_cost_pinned_bytes_and_replay() {
    let compact = CONFIG.with_compact_records();
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = Channel::open(&mut sim, &mut mem[..], compact).unwrap();
        let tx = ch.begin().unwrap();
        ch.put(tx, &[1u8; 32]).unwrap();
        let c1 = ch.storage().counters();
        ch.put(tx, &[2u8; 32]).unwrap();
        let c2 = ch.storage().counters();
        assert_eq!(
            (c2.writes - c1.writes, c2.bytes_written - c1.bytes_written),
            (1, 40)
        );
        ch.commit(tx).unwrap();
        let c3 = ch.storage().counters();
        assert_eq!(
            (c3.writes - c2.writes, c3.bytes_written - c2.bytes_written),
            (1, 12)
        );
        put_all(&mut ch, &[b"three", b"four"]);
        let tx = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(ch.take(tx, &mut buf).unwrap(), Some(32));
        assert_eq!(&buf[..32], &[1u8; 32]);
        let c4 = ch.storage().counters();
        assert_eq!(ch.take(tx, &mut buf).unwrap(), Some(32));
        let c5 = ch.storage().counters();
        assert_eq!(c5.reads - c4.reads, 2, "a header and a payload per take");
        ch.commit(tx).unwrap();
        let c6 = ch.storage().counters();
        assert_eq!(c6.bytes_written - c5.bytes_written, 12);
    }
    sim.reboot(1, CrashPolicy::LoseUnsynced);
    let mut ch = Channel::open(&mut sim, &mut mem[..], compact).unwrap();
    assert_eq!(ch.recovery().put_commits, 2);
    assert_eq!(ch.recovery().take_commits, 1);
    assert_eq!(take_all(&mut ch, true), v(&[b"three", b"four"]));
}

/// A log is compact in every segment or in none: opening it the other way is refused with
/// the reason, never misread; and compact records need small plaintext segments without marks.
#[test]
fn compact_records_mismatch_and_limits_are_refused() {
    let compact = CONFIG.with_compact_records();
    for (written, opened, on_media_compact) in [(compact, CONFIG, true), (CONFIG, compact, false)] {
        let (mut sim, mut mem) = (sim(), memory());
        {
            let mut ch = Channel::open(&mut sim, &mut mem[..], written).unwrap();
            put_all(&mut ch, &[b"x"]);
        }
        let err = Channel::open(&mut sim, &mut mem[..], opened).err();
        assert_eq!(
            err,
            Some(Error::Config(ConfigError::RecordFormatMismatch {
                on_media_compact
            }))
        );
        let reason = err.unwrap().to_string();
        assert!(reason.contains("with_compact_records"), "{reason}");
        let ch = Channel::open(&mut sim, &mut mem[..], written).unwrap();
        assert_eq!(ch.recovery().put_commits, 1);
    }
    assert_eq!(
        Config::new(8, 4, 3, 64, 128 * 1024).try_with_compact_records(),
        Err(ConfigError::BadCompact)
    );
    assert!(Config::new(8, 4, 3, 64, 64 * 1024)
        .try_with_compact_records()
        .is_ok());
    assert_eq!(
        CONFIG.with_marks(1, 8).try_with_compact_records(),
        Err(ConfigError::BadCompact)
    );
    assert_eq!(compact.try_with_marks(1, 8), Err(ConfigError::BadCompact));
    let keys = sluicegate_core::StaticKeys::new(&[(1, [7u8; 32])], Some(1));
    let (mut sim, mut mem) = (sim(), memory());
    assert_eq!(
        Channel::open_with_keys(&mut sim, &mut mem[..], compact, keys).err(),
        Some(Error::Config(ConfigError::BadCompact))
    );
}

/// Bad configurations are refused with the reason, before anything is touched.
#[test]
fn bad_configurations_are_refused() {
    assert_eq!(
        Config::try_new(0, 1, 1, 8, 512),
        Err(ConfigError::ZeroCapacity)
    );
    assert_eq!(
        Config::try_new(4, 0, 1, 8, 512),
        Err(ConfigError::ZeroTransactionCapacity)
    );
    assert_eq!(
        Config::try_new(4, 5, 1, 8, 512),
        Err(ConfigError::TransactionCapacityAboveCapacity)
    );
    assert_eq!(
        Config::try_new(4, 4, 0, 8, 512),
        Err(ConfigError::BadMaxTransactions)
    );
    assert_eq!(
        Config::try_new(4, 4, 255, 8, 512),
        Err(ConfigError::BadMaxTransactions)
    );
    assert_eq!(
        Config::try_new(4, 4, 1, 0, 512),
        Err(ConfigError::BadMaxEventBytes)
    );
    assert_eq!(
        Config::try_new(4, 4, 1, 1 << 24, 1 << 25),
        Err(ConfigError::BadMaxEventBytes)
    );
    assert_eq!(
        Config::try_new(4, 4, 1, 500, 512),
        Err(ConfigError::SegmentTooSmall)
    );

    let mut sim = sim();
    let mut small = vec![0u64; CONFIG.memory_words() - 1];
    assert!(matches!(
        Channel::open(&mut sim, &mut small[..], CONFIG).err(),
        Some(Error::Config(ConfigError::MemoryTooSmall { .. }))
    ));
    let odd = Config::new(8, 4, 3, 64, 600);
    let mut mem = vec![0u64; odd.memory_words()];
    assert_eq!(
        Channel::open(&mut sim, &mut mem[..], odd).err(),
        Some(Error::Config(ConfigError::SegmentNotErasable))
    );
    let mut tiny: Sim = SimStorage::new(3 * 512, 0xFF);
    let mut mem = memory();
    assert_eq!(
        Channel::open(&mut tiny, &mut mem[..], CONFIG).err(),
        Some(Error::Config(ConfigError::TooFewSegments))
    );
    // The queue packs slots for at most `log_segments`: a log of more is refused, not misread.
    assert_eq!(
        CONFIG.try_with_log_segments(3),
        Err(ConfigError::BadLogSegments)
    );
    let seven = CONFIG.with_log_segments(7);
    let mut mem = vec![0u64; seven.memory_words()];
    assert_eq!(
        Channel::open(&mut sim, &mut mem[..], seven).err(),
        Some(Error::Config(ConfigError::TooManySegments))
    );
    let eight = CONFIG.with_log_segments(8);
    let mut mem = vec![0u64; eight.memory_words()];
    assert!(Channel::open(&mut sim, &mut mem[..], eight).is_ok());
}

/// `Config::new` fails the build (or panics) on nonsense.
#[test]
#[should_panic(expected = "transaction_capacity must not exceed capacity")]
fn const_config_panics_with_reason() {
    let _ = Config::new(4, 5, 1, 8, 512);
}

/// When the log is full of unconsumed events, puts fail with LogFull and nothing is
/// overwritten; taking events frees segments and puts work again.
#[test]
fn full_log_refuses_and_recovers_after_takes() {
    let big = Config::new(200, 4, 2, 64, 512);
    let mut sim = sim();
    let mut mem = vec![0u64; big.memory_words()];
    let mut ch = Channel::open(&mut sim, &mut mem[..], big).unwrap();
    let mut stored = Vec::new();
    'fill: for i in 0u32.. {
        let tx = ch.begin().unwrap();
        let body = [i.to_le_bytes().as_slice(), &[0xAB; 40]].concat();
        match ch.put(tx, &body) {
            Ok(()) => {}
            Err(Error::LogFull) => {
                ch.rollback(tx).unwrap();
                break 'fill;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        ch.commit(tx).unwrap();
        stored.push(body);
    }
    let stats = ch.stats();
    assert!(stored.len() > 20, "only {} events fit", stored.len());
    assert_eq!(
        stats.segments_free, 2,
        "one segment is kept for commit records and one for the next run's first segment"
    );
    // Drain everything; every event comes back intact and in order.
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    loop {
        let tx = ch.begin().unwrap();
        let mut n_taken = 0;
        while n_taken < 4 {
            match ch.take(tx, &mut buf).unwrap() {
                Some(n) => {
                    got.push(buf[..n].to_vec());
                    n_taken += 1;
                }
                None => break,
            }
        }
        ch.commit(tx).unwrap();
        if n_taken == 0 {
            break;
        }
    }
    assert_eq!(got, stored);
    let tx = ch.begin().unwrap();
    ch.put(tx, b"room again").unwrap();
    ch.commit(tx).unwrap();
    let pinned = ch.stats().segments_pinned;
    assert!(
        pinned <= 2,
        "{pinned} segments pinned by one event and its commit"
    );
}

/// A run that writes nothing costs no segment, so repeated power cuts while idle never fill the
/// log (a restart opens its segment at its first write).
#[test]
fn idle_restarts_cost_no_segment() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"x"]);
    }
    let before = sim.counters();
    for seed in 0..100 {
        sim.reboot(seed, CrashPolicy::Random);
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(take_all(&mut ch, false), v(&[b"x"]));
    }
    assert_eq!(sim.counters().mutations(), before.mutations());
}

/// Recovery reports what it replayed, with exact counts.
#[test]
fn recovery_counters_are_exact() {
    let (mut sim, mut mem) = (sim(), memory());
    {
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(ch.recovery().path, RecoveryPath::New);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        let tx = ch.begin().unwrap();
        ch.put(tx, b"rolled back").unwrap();
        ch.rollback(tx).unwrap();
        take_all(&mut ch, true);
        put_all(&mut ch, &[b"d"]);
    }
    let ch = open(&mut sim, &mut mem);
    let r = *ch.recovery();
    assert_eq!(r.path, RecoveryPath::FullReplay);
    assert_eq!(r.records_read, 4 + 1 + 1 + 1 + 1);
    assert_eq!(r.puts, 5);
    assert_eq!((r.put_commits, r.take_commits), (2, 1));
    assert_eq!((r.events_committed, r.events_taken, r.events), (4, 3, 1));
    assert_eq!(r.uncommitted_puts, 1);
    assert_eq!(
        (
            r.torn_commits_dropped,
            r.corrupt_records_skipped,
            r.records_lost
        ),
        (0, 0, 0)
    );
}

/// On storage that can be rewritten (files), a new segment erases only its first erase block
/// (the segment's records and salt make whatever an earlier lap left stale): one erase of
/// 256 bytes of this 512-byte segment, one sync and one write, against two erases of the whole
/// segment on NOR flash (below).
#[test]
fn a_new_segment_on_rewritable_storage_erases_one_block() {
    let (mut sim, mut mem) = (sim(), memory());
    sim.set_rewritable(true);
    let mut ch = open(&mut sim, &mut mem);
    let c0 = ch.storage().counters();
    let (_, c1) = first_put(&mut ch);
    assert_eq!(
        (
            c1.erases - c0.erases,
            c1.bytes_erased - c0.bytes_erased,
            c1.syncs - c0.syncs,
            c1.writes - c0.writes
        ),
        (1, 256, 1, 2)
    );
}

/// Begins a transaction and puts its first event, which opens the run's segment; returns the
/// transaction and the medium's counters after it.
fn first_put(ch: &mut Chan<'_>) -> (sluicegate_core::Txn, sluicegate_sim::Counters) {
    let tx = ch.begin().unwrap();
    ch.put(tx, &[1u8; 32]).unwrap();
    (tx, ch.storage().counters())
}

/// Pins the medium operations of each channel operation, so a regression in wear fails here:
/// a put is one write (16 bytes of header), a commit one write and one sync (16 bytes of header,
/// 8 of durable mark, 8 per event), a take only reads, and a new segment costs two erases, one
/// sync and one write.
#[test]
fn operation_counts_are_pinned() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    let opened = ch.storage().counters();
    assert_eq!(opened.mutations(), 0, "open writes nothing");
    let c0 = ch.storage().counters();
    let (tx, c1) = first_put(&mut ch);
    assert_eq!(
        (
            c1.erases - c0.erases,
            c1.syncs - c0.syncs,
            c1.writes - c0.writes
        ),
        (2, 1, 2)
    );
    ch.put(tx, &[2u8; 32]).unwrap();
    let c2 = ch.storage().counters();
    assert_eq!(
        (
            c2.writes - c1.writes,
            c2.syncs - c1.syncs,
            c2.bytes_written - c1.bytes_written
        ),
        (1, 0, 48)
    );
    ch.commit(tx).unwrap();
    let c3 = ch.storage().counters();
    assert_eq!(
        (
            c3.writes - c2.writes,
            c3.syncs - c2.syncs,
            c3.bytes_written - c2.bytes_written
        ),
        (1, 1, 40)
    );
    let tx = ch.begin().unwrap();
    let mut buf = [0u8; 64];
    ch.take(tx, &mut buf).unwrap();
    ch.take(tx, &mut buf).unwrap();
    let c4 = ch.storage().counters();
    assert_eq!(c4.mutations(), c3.mutations(), "takes only read");
    assert_eq!(c4.reads - c3.reads, 4, "a header and a payload per take");
    ch.commit(tx).unwrap();
    let c5 = ch.storage().counters();
    assert_eq!(
        (
            c5.writes - c4.writes,
            c5.syncs - c4.syncs,
            c5.bytes_written - c4.bytes_written
        ),
        (1, 1, 40)
    );
}

/// The queue costs the bits of a packed pointer and tag per event of capacity: the offset in a
/// segment, the segment's slot, the transaction holding it (2.25 bytes for 16 segments of 4 KiB
/// and 2 transactions, as on the firmware; 5 bytes for the file channel's default of 1,024
/// segments of 128 MiB and 4 transactions), plus a fixed amount per transaction slot; the
/// channel's own state is under 1 KiB beside the state of a sealed checkpoint being
/// written (1,216 bytes here, where Poly1305 keeps its AVX2 tables and AES-GCM is compiled in;
/// the firmware example prints its size on Cortex-M4) and, with the core's `aes-gcm` feature
/// (servers), the expanded AES keys of the last two segments sealed or opened and the tag
/// masks made ahead (1,664 bytes in all).
#[test]
fn ram_per_event_is_a_packed_pointer() {
    // The memory a configuration needs for 1,000,000 more events of capacity, per event.
    let per_event = |make: &dyn Fn(u32) -> Config| {
        (make(2_000_000).memory_bytes() - make(1_000_000).memory_bytes()) as f64 / 1e6
    };
    let gateway = |capacity| Config::new(capacity, 10, 2, 64, 4096).with_log_segments(16);
    assert_eq!(gateway(1000).queue_entry_bits(), 12 + 4 + 2);
    assert!((per_event(&gateway) - 2.25).abs() < 0.001);
    let server =
        |capacity| Config::new(capacity, 1000, 4, 1 << 20, 128 << 20).with_log_segments(1024);
    assert_eq!(server(1000).queue_entry_bits(), 27 + 10 + 3);
    assert!((per_event(&server) - 5.0).abs() < 0.001);
    // The widest entry: 4 GiB segments, the most segments and transactions.
    let widest = |capacity| Config::new(capacity, 10, 254, 64, u32::MAX - 4095);
    assert_eq!(widest(64).queue_entry_bits(), 64);
    assert_eq!(per_event(&widest), 8.0);
    let small = Config::new(1000, 10, 2, 64, 4096);
    // A slot's pending puts and bookkeeping (3 and 4 transactions' tags both take 3 bits).
    let per_slot = Config::new(1000, 10, 4, 64, 4096).memory_bytes()
        - Config::new(1000, 10, 3, 64, 4096).memory_bytes();
    assert_eq!(per_slot, 10 * 8 + 24);
    // Marks: a head word and the bytes in words, per stream and per transaction slot.
    let marked = small.with_marks(4, 20).memory_bytes() - small.memory_bytes();
    assert_eq!(marked, (4 + 2) * (8 + 24));
    let fixed = std::mem::size_of::<Channel<&mut Sim, &mut [u64]>>();
    let seal = std::mem::size_of::<sluicegate_core::seal::Sealer>();
    let cache = std::mem::size_of::<sluicegate_core::seal::SealerCache>();
    println!("channel state {fixed} bytes: checkpoint seal {seal}, segment key cache {cache}");
    assert!(
        fixed - seal - cache <= 1024,
        "channel state is {fixed} bytes, {seal} of them the checkpoint's seal and {cache} the \
         segment key cache"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("bytes present")
}

/// An event keeps its id when its take rolls back and when a crash undoes its take; ids differ
/// for every event and grow in put order, across segments and restarts.
#[test]
fn event_ids_are_stable_and_unique() {
    let (mut sim, mut mem) = (sim(), memory());
    let take_ids = |ch: &mut Chan<'_>, n: usize, commit: bool| {
        let tx = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < n {
            match ch.take_with_id(tx, &mut buf).unwrap() {
                Some((k, id)) => got.push((buf[..k].to_vec(), id)),
                None => break,
            }
        }
        if commit {
            ch.commit(tx).unwrap();
        } else {
            ch.rollback(tx).unwrap();
        }
        got
    };
    let mut seen = Vec::new();
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        let first = take_ids(&mut ch, 2, false);
        let again = take_ids(&mut ch, 2, true);
        assert_eq!(first, again, "a rolled-back take delivers the same ids");
        seen.extend(again);
        let tx = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        let (_, c) = ch.take_with_id(tx, &mut buf).unwrap().unwrap();
        // The crash comes before this take commits.
        seen.push((b"c".to_vec(), c));
    }
    sim.reboot(1, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut sim, &mut mem);
    let after = take_ids(&mut ch, 1, true);
    assert_eq!(
        after,
        vec![seen.pop().unwrap()],
        "the same id after a crash"
    );
    seen.extend(after);
    // Enough events to fill and reuse segments.
    for round in 0..40u32 {
        let e = round.to_le_bytes();
        put_all(&mut ch, &[&e, &e]);
        seen.extend(take_ids(&mut ch, 2, true));
    }
    assert!(ch.stats().segments_opened > 8, "the ring wrapped");
    let ids: Vec<u128> = seen.iter().map(|(_, id)| id.get()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
}

/// A roll into a new segment is announced to the storage (`Storage::prepare`, naming the segment
/// after the new one) when a put or a put's commit makes it, never when a take's commit does:
/// the file adapter makes its spare log file then, so take commits can drain a full disk.
#[test]
fn only_rolls_that_add_data_are_announced() {
    let (mut sim, mut mem) = (sim(), memory());
    let mut ch = open(&mut sim, &mut mem);
    let segments = (LOG_BYTES / 512) as u64;
    let (mut put_rolls, mut take_rolls) = (0, 0);
    let event = [7u8; 60];
    for round in 0..12 {
        for _ in 0..2 {
            let opened = ch.stats().segments_opened;
            let before = ch.storage().prepared().len() as u64;
            let tx = ch.begin().unwrap();
            for _ in 0..4 {
                ch.put(tx, &event).unwrap();
            }
            ch.commit(tx).unwrap();
            let rolls = ch.stats().segments_opened - opened;
            let prepared = ch.storage().prepared().len() as u64 - before;
            assert_eq!(
                prepared, rolls,
                "round {round}: each roll a put makes is announced"
            );
            put_rolls += rolls;
        }
        for _ in 0..8 {
            let opened = ch.stats().segments_opened;
            let before = ch.storage().prepared().len();
            let tx = ch.begin().unwrap();
            let mut buf = [0u8; 64];
            assert!(ch.take(tx, &mut buf).unwrap().is_some());
            ch.commit(tx).unwrap();
            take_rolls += ch.stats().segments_opened - opened;
            assert_eq!(
                ch.storage().prepared().len(),
                before,
                "round {round}: a take's commit announced a roll"
            );
        }
    }
    assert!(
        put_rolls > 0 && take_rolls > 0,
        "{put_rolls} put rolls, {take_rolls} take rolls"
    );
    // Each announcement names one whole segment of the log region.
    for &(region, from, to) in ch.storage().prepared() {
        assert_eq!(region, Region::Log);
        assert_eq!((to - from, from % 512), (512, 0));
        assert!(from < segments * 512);
    }
}
