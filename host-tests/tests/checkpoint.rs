//! Checkpoints, dual slots and the backup, in-flight transactions across a checkpoint, and log
//! reclamation. docs/flume-scenarios.md maps Flume's restart tests to these.

use sluicegate_core::checkpoint::STARTED_BYTES;
use sluicegate_core::{Channel, Config, ConfigError, Error, RecoveryPath, Region};
use sluicegate_sim::{CrashPolicy, SimStorage};

mod common;
use common::{peek_all, put_all, take_n, v, Chan, Sim};

/// 16 events, transactions of 4, 3 at once, events up to 64 bytes, 512-byte segments;
/// checkpoint steps of 8 entries.
const CONFIG: Config = Config::new(16, 4, 3, 64, 512).with_checkpoint_step(8);
const LOG_BYTES: usize = 8 * 512;
const SLOT_BYTES: usize = 512;

fn sim() -> Sim {
    SimStorage::with_checkpoints(LOG_BYTES, SLOT_BYTES, 0xFF)
}

fn memory(config: &Config) -> Vec<u64> {
    vec![0; config.memory_words()]
}

fn open<'a>(sim: &'a mut Sim, mem: &'a mut [u64]) -> Chan<'a> {
    Channel::open(sim, mem, CONFIG).expect("open")
}

fn crash(sim: &mut Sim) {
    sim.reboot(7, CrashPolicy::LoseUnsynced);
}

/// Flips one bit inside the written part of a checkpoint region.
fn damage(sim: &mut Sim, region: Region, at: usize) {
    sim.flip_bit(region, at, 3);
}

/// After a checkpoint, restart loads it and replays only the records written after it.
#[test]
fn restart_replays_only_the_tail_after_a_checkpoint() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        take_n(&mut ch, 1, true);
        ch.checkpoint().unwrap();
        put_all(&mut ch, &[b"d"]);
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    let r = *ch.recovery();
    assert_eq!(r.path, RecoveryPath::Checkpoint);
    assert_eq!(r.checkpoint_events, 2);
    assert_eq!((r.records_read, r.puts, r.put_commits), (2, 1, 1), "{r:?}");
    assert_eq!(peek_all(&mut ch), v(&[b"b", b"c", b"d"]));
}

/// Closing checkpoints, so the next open replays nothing; restarting again and again without
/// writing keeps using the same checkpoint.
#[test]
fn close_checkpoints_and_idle_restarts_keep_it() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b"]);
        ch.close().unwrap();
    }
    for _ in 0..5 {
        crash(&mut sim);
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
        assert_eq!(ch.recovery().records_read, 0);
        assert_eq!(peek_all(&mut ch), v(&[b"a", b"b"]));
    }
}

/// A put begun before a checkpoint and committed after it survives; so does one committed after
/// a second checkpoint (Flume: put, checkpoint, commit, checkpoint).
#[test]
fn put_across_checkpoints_survives() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        let tx = ch.begin().unwrap();
        for e in [b"p1", b"p2", b"p3"] {
            ch.put(tx, e).unwrap();
        }
        ch.checkpoint().unwrap();
        ch.commit(tx).unwrap();
        let tx = ch.begin().unwrap();
        for e in [b"q1", b"q2", b"q3"] {
            ch.put(tx, e).unwrap();
        }
        ch.checkpoint().unwrap();
        ch.checkpoint().unwrap();
        ch.commit(tx).unwrap();
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(
        peek_all(&mut ch),
        v(&[b"p1", b"p2", b"p3", b"q1", b"q2", b"q3"])
    );
}

/// A take begun before a checkpoint and committed after it is not delivered again.
#[test]
fn take_across_a_checkpoint_is_not_redelivered() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        let tx = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        ch.take(tx, &mut buf).unwrap();
        ch.take(tx, &mut buf).unwrap();
        ch.checkpoint().unwrap();
        ch.commit(tx).unwrap();
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
    assert_eq!(peek_all(&mut ch), v(&[b"c"]));
}

/// A put begun before a checkpoint and rolled back after it does not appear (Flume's
/// TestFileChannelRollback), and uncommitted takes in two transactions across a checkpoint all
/// come back after a restart, in order.
#[test]
fn rollbacks_and_uncommitted_takes_across_a_checkpoint() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"1", b"2", b"3", b"4"]);
        put_all(&mut ch, &[b"5"]);
        let rolled = ch.begin().unwrap();
        ch.put(rolled, b"never").unwrap();
        let t1 = ch.begin().unwrap();
        let t2 = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        ch.take(t1, &mut buf).unwrap();
        ch.take(t2, &mut buf).unwrap();
        ch.take(t1, &mut buf).unwrap();
        ch.checkpoint().unwrap();
        ch.rollback(rolled).unwrap();
        ch.take(t2, &mut buf).unwrap();
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(peek_all(&mut ch), v(&[b"1", b"2", b"3", b"4", b"5"]));
}

/// A damaged newest checkpoint makes open use the backup (the previous checkpoint) and replay
/// from its position: nothing is lost. When the damage leaves the newer checkpoint's started
/// mark readable, the report says the backup was used; when it destroys that mark, nothing
/// shows the slot was newer, and the report says a checkpoint was used, the older one.
#[test]
fn damaged_checkpoint_falls_back_to_the_backup() {
    for (at, path) in [
        (0, RecoveryPath::Checkpoint),
        (10, RecoveryPath::Checkpoint),
        (STARTED_BYTES + 3, RecoveryPath::Backup),
        (STARTED_BYTES + 20, RecoveryPath::Backup),
    ] {
        let mut sim = sim();
        let mut mem = memory(&CONFIG);
        {
            let mut ch = open(&mut sim, &mut mem);
            put_all(&mut ch, &[b"a", b"b"]);
            ch.checkpoint().unwrap(); // number 1, in the Checkpoint region
            put_all(&mut ch, &[b"c", b"d"]);
            ch.checkpoint().unwrap(); // number 2, in the Backup region: the newest
            put_all(&mut ch, &[b"e"]);
        }
        damage(&mut sim, Region::Backup, at);
        crash(&mut sim);
        let mut ch = open(&mut sim, &mut mem);
        let r = *ch.recovery();
        assert_eq!((r.path, r.checkpoint), (path, 1), "damage at {at}");
        assert_eq!(r.checkpoint_events, 2);
        assert_eq!(
            r.put_commits, 2,
            "replays from the older checkpoint's position"
        );
        assert_eq!(peek_all(&mut ch), v(&[b"a", b"b", b"c", b"d", b"e"]));
    }
}

/// With both checkpoints damaged, open falls back to a full replay of the log, and nothing is
/// lost.
#[test]
fn both_checkpoints_damaged_falls_back_to_full_replay() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b"]);
        ch.checkpoint().unwrap();
        take_n(&mut ch, 1, true);
        ch.checkpoint().unwrap();
        put_all(&mut ch, &[b"c"]);
    }
    damage(&mut sim, Region::Checkpoint, 5);
    damage(&mut sim, Region::Backup, STARTED_BYTES + 1);
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().path, RecoveryPath::FullReplay);
    assert_eq!(peek_all(&mut ch), v(&[b"b", b"c"]));
}

/// Only the high bytes of the version, or of the complete mark's magic, damaged: detected, and
/// the other slot is used (Flume's FLUME-1893).
#[test]
fn damage_to_high_bytes_of_version_and_marker_is_detected() {
    let complete_at = STARTED_BYTES + 8; // one entry of 8 bytes
    for (offset, bit) in [(9usize, 7u8), (9, 0), (complete_at + 7, 7)] {
        let mut sim = sim();
        let mut mem = memory(&CONFIG);
        {
            let mut ch = open(&mut sim, &mut mem);
            put_all(&mut ch, &[b"a"]);
            ch.checkpoint().unwrap();
            ch.checkpoint().unwrap();
        }
        sim.flip_bit(Region::Backup, offset, bit);
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(ch.recovery().checkpoint, 1, "byte {offset} bit {bit}");
        assert_eq!(peek_all(&mut ch), v(&[b"a"]));
    }
}

/// A power cut at every mutation of a checkpoint leaves a channel that opens with everything
/// committed, from the new checkpoint once it is complete and from the backup before: never by a
/// full replay, because a checkpoint never overwrites the only valid one.
#[test]
fn power_cut_at_every_step_of_a_checkpoint() {
    let prepare = |sim: &mut Sim, mem: &mut [u64]| {
        let mut ch = Channel::open(&mut *sim, &mut *mem, CONFIG).unwrap();
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        ch.checkpoint().unwrap();
        put_all(&mut ch, &[b"d", b"e"]);
        take_n(&mut ch, 1, true);
    };
    let mut base = sim();
    let mut mem = memory(&CONFIG);
    prepare(&mut base, &mut mem);
    let before = base.counters().mutations();
    // The log after the checkpoint is replayed, so the open itself writes the next checkpoint
    // (to make its verdict on the log's tail final): that is the checkpoint cut here.
    let mut probe = base.clone();
    {
        let ch = open(&mut probe, &mut mem);
        assert!(ch.recovery().checkpointed);
    }
    let steps = probe.counters().mutations() - before;
    assert!(
        steps >= 5,
        "erase, mark, entries, sync, mark, sync: {steps}"
    );
    let mut paths = std::collections::BTreeSet::new();
    for k in 0..steps {
        for policy in [
            CrashPolicy::LoseUnsynced,
            CrashPolicy::KeepUnsynced,
            CrashPolicy::Random,
        ] {
            let mut s = base.clone();
            s.cut_power_after(k);
            assert!(
                Channel::open(&mut s, &mut mem[..], CONFIG).is_err(),
                "cut at {k}"
            );
            s.reboot(k, policy);
            let mut ch = open(&mut s, &mut mem);
            let path = ch.recovery().path;
            assert!(
                matches!(path, RecoveryPath::Checkpoint | RecoveryPath::Backup),
                "cut at {k} {policy:?}: {path:?}"
            );
            paths.insert(format!("{path:?}"));
            assert_eq!(
                peek_all(&mut ch),
                v(&[b"b", b"c", b"d", b"e"]),
                "cut at {k} {policy:?}"
            );
        }
    }
    assert!(paths.contains("Backup"), "{paths:?}");
}

/// An open that replayed log written after the last checkpoint writes a checkpoint, once: the
/// reboots after it, with nothing written in between, find nothing after that checkpoint and
/// write nothing at all, so a device that loses power over and over while idle wears nothing.
#[test]
fn open_checkpoints_after_replaying_a_tail_and_idle_reboots_write_nothing() {
    let mut s = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut s, &mut mem);
        put_all(&mut ch, &[b"a", b"b"]);
    }
    crash(&mut s);
    let before = s.counters().mutations();
    {
        let ch = open(&mut s, &mut mem);
        assert!(ch.recovery().checkpointed);
        assert_eq!(ch.recovery().path, RecoveryPath::FullReplay);
    }
    assert!(s.counters().mutations() > before);
    for reboot in 0..3 {
        crash(&mut s);
        let before = s.counters().mutations();
        {
            let mut ch = open(&mut s, &mut mem);
            assert!(!ch.recovery().checkpointed, "reboot {reboot}");
            assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
            assert_eq!(ch.recovery().records_read, 0);
            assert_eq!(peek_all(&mut ch), v(&[b"a", b"b"]));
        }
        assert_eq!(
            s.counters().mutations(),
            before,
            "idle reboot {reboot} wrote something"
        );
    }
}

/// A larger capacity after a restart just works; a smaller one that still holds the queue works
/// too; one that cannot hold it is a clear error, and nothing is lost by trying.
#[test]
fn capacity_changes_across_restarts() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c", b"d"]);
        put_all(&mut ch, &[b"e", b"f"]);
        ch.close().unwrap();
    }
    let bigger = Config::new(64, 4, 3, 64, 512);
    let mut big: Sim = SimStorage::with_checkpoints(LOG_BYTES, 1024, 0xFF);
    // Carry the same bytes over to a medium with larger checkpoint regions.
    for r in [Region::Log, Region::Checkpoint, Region::Backup] {
        let img = sim.image(r).to_vec();
        big.overwrite(r, 0, &img);
    }
    let mut mem_big = memory(&bigger);
    {
        let ch = Channel::open(&mut big, &mut mem_big[..], bigger).unwrap();
        assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
        assert_eq!(ch.len(), 6);
    }
    let smaller = Config::new(4, 4, 1, 64, 512);
    let mut mem_small = memory(&smaller);
    let err = Channel::open(&mut sim, &mut mem_small[..], smaller).err();
    assert!(
        matches!(err, Some(Error::CapacityTooSmall { .. })),
        "{err:?}"
    );
    let fits = Config::new(8, 4, 2, 64, 512);
    let mut mem_fits = memory(&fits);
    let ch = Channel::open(&mut sim, &mut mem_fits[..], fits).unwrap();
    assert_eq!(ch.len(), 6);
}

/// Checkpoints start by themselves every N commits, every N log bytes, and every N ms of the
/// adapter's clock; each writes a bounded number of entries per step, so it spreads over several
/// commits when the queue is long.
#[test]
fn checkpoint_triggers_and_bounded_steps() {
    let mut sim = sim();
    let by_commits = CONFIG.with_checkpoints(3, 0, 0);
    let mut mem = memory(&by_commits);
    {
        let mut ch = Channel::open(&mut sim, &mut mem[..], by_commits).unwrap();
        for i in 0..4u8 {
            put_all(&mut ch, &[&[i; 4], &[i; 5], &[i; 6]]);
        }
        // Twelve events queued: a checkpoint of 8-entry steps takes two commits to write.
        let mut in_progress_seen = false;
        for i in 0..6u8 {
            put_all(&mut ch, &[&[i]]);
            take_n(&mut ch, 1, true);
            in_progress_seen |= ch.stats().checkpoint_in_progress;
        }
        assert!(in_progress_seen, "a checkpoint spread over several commits");
        assert!(ch.stats().checkpoints >= 2, "{:?}", ch.stats());
    }
    let mut sim = self::sim();
    let by_bytes = CONFIG.with_checkpoints(0, 200, 0);
    let mut ch = Channel::open(&mut sim, &mut mem[..], by_bytes).unwrap();
    put_all(&mut ch, &[&[1; 60], &[2; 60]]);
    assert_eq!(ch.stats().checkpoints, 0);
    put_all(&mut ch, &[&[3; 60], &[4; 60]]);
    assert_eq!(ch.stats().checkpoints, 1);
    let mut sim = self::sim();
    let by_time = CONFIG.with_checkpoints(0, 0, 1000);
    let mut ch = Channel::open(&mut sim, &mut mem[..], by_time).unwrap();
    put_all(&mut ch, &[b"x"]);
    ch.poll(10_000).unwrap();
    ch.poll(10_500).unwrap();
    assert_eq!(ch.stats().checkpoints, 0);
    ch.poll(11_000).unwrap();
    assert_eq!(ch.stats().checkpoints, 1);
}

/// The log is reclaimed once no event and no checkpoint needs it: after everything is consumed
/// and two checkpoints are written, only the newest segment is pinned. When checkpoints are
/// rare, the older one's position would hold the log; under log pressure the channel moves both
/// checkpoints forward instead of refusing.
#[test]
fn log_is_reclaimed_once_nothing_needs_it() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    let mut ch = open(&mut sim, &mut mem);
    for round in 0..40u8 {
        put_all(&mut ch, &[&[round; 40], &[round; 40], &[round; 40]]);
        take_n(&mut ch, 3, true);
        if round % 10 == 0 {
            ch.checkpoint().unwrap();
        }
    }
    ch.checkpoint().unwrap();
    ch.checkpoint().unwrap();
    let s = ch.stats();
    assert!(s.segments_opened > 8, "the ring wrapped: {s:?}");
    assert_eq!(s.segments_pinned, 1, "{s:?}");
    assert_eq!(s.segments_pinned_by_events, 1, "{s:?}");
}

/// A checkpoint stays usable however far the log moves on after it: the segments it replays
/// from are kept (and under pressure both checkpoints move forward), so a restart never falls
/// back to a full replay because of reclamation.
#[test]
fn checkpoints_stay_usable_as_the_log_wraps() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"keep"]);
        ch.checkpoint().unwrap();
        take_n(&mut ch, 1, true);
        for round in 0..60u8 {
            put_all(&mut ch, &[&[round; 50], &[round; 50]]);
            take_n(&mut ch, 2, true);
        }
        put_all(&mut ch, &[b"last"]);
        assert!(ch.stats().segments_opened > 8, "the ring wrapped");
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    let path = ch.recovery().path;
    assert!(
        matches!(path, RecoveryPath::Checkpoint | RecoveryPath::Backup),
        "{path:?}"
    );
    assert_eq!(peek_all(&mut ch), v(&[b"last"]));
}

/// One old unconsumed event (here a put not yet committed) pins every newer segment, and the
/// channel says how many.
#[test]
fn one_old_event_pins_newer_segments_and_stats_say_so() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    let mut ch = open(&mut sim, &mut mem);
    let old = ch.begin().unwrap();
    ch.put(old, b"old").unwrap();
    for round in 0..6u8 {
        put_all(&mut ch, &[&[round; 50], &[round; 50]]);
        take_n(&mut ch, 2, true);
    }
    ch.checkpoint().unwrap();
    ch.checkpoint().unwrap();
    let s = ch.stats();
    assert!(s.segments_pinned_by_events >= 3, "{s:?}");
    assert_eq!(s.segments_pinned, s.segments_pinned_by_events);
    ch.commit(old).unwrap();
    take_n(&mut ch, 1, true);
    assert_eq!(ch.stats().segments_pinned_by_events, 1);
}

/// Bad checkpoint configurations are refused with the reason.
#[test]
fn checkpoint_regions_are_validated() {
    let mut mem = memory(&CONFIG);
    let mut one: Sim = SimStorage::with_regions([LOG_BYTES, 512, 0], 0xFF);
    assert_eq!(
        Channel::open(&mut one, &mut mem[..], CONFIG).err(),
        Some(Error::Config(ConfigError::CheckpointSlotMissing))
    );
    let big = Config::new(200, 4, 3, 64, 512);
    let mut mem = memory(&big);
    let mut small: Sim = SimStorage::with_checkpoints(LOG_BYTES, 512, 0xFF);
    assert!(matches!(
        Channel::open(&mut small, &mut mem[..], big).err(),
        Some(Error::Config(ConfigError::CheckpointRegionTooSmall { .. }))
    ));
    assert_eq!(
        Config::new(4, 4, 1, 8, 512).try_with_checkpoint_step(12),
        Err(ConfigError::BadCheckpointStep)
    );
    let mut none: Sim = SimStorage::new(LOG_BYTES, 0xFF);
    let mut mem = memory(&CONFIG);
    let mut ch = Channel::open(&mut none, &mut mem[..], CONFIG).unwrap();
    assert_eq!(ch.checkpoint(), Err(Error::CheckpointsDisabled));
}

/// An empty commit before a restart, and a restart of an empty channel that has a checkpoint,
/// both open cleanly.
#[test]
fn empty_commit_and_empty_checkpoint_restart() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        let tx = ch.begin().unwrap();
        ch.commit(tx).unwrap();
        ch.close().unwrap();
    }
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
    put_all(&mut ch, &[b"after"]);
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(peek_all(&mut ch), v(&[b"after"]));
}

/// Erases a region as if its files were deleted.
fn delete(sim: &mut Sim, region: Region) {
    let len = sim.image(region).len();
    sim.overwrite(region, 0, &vec![0xFF; len]);
}

/// The newest checkpoint deleted: the other slot is used; both deleted: a full replay; nothing is
/// lost either way (Flume: checkpoint deleted, with and without backup).
#[test]
fn deleted_checkpoints_fall_back_without_loss() {
    for (deleted, path) in [
        (vec![Region::Backup], RecoveryPath::Checkpoint),
        (vec![Region::Checkpoint], RecoveryPath::Checkpoint),
        (
            vec![Region::Checkpoint, Region::Backup],
            RecoveryPath::FullReplay,
        ),
    ] {
        let mut sim = sim();
        let mut mem = memory(&CONFIG);
        {
            let mut ch = open(&mut sim, &mut mem);
            put_all(&mut ch, &[b"a", b"b"]);
            ch.checkpoint().unwrap();
            take_n(&mut ch, 1, true);
            ch.checkpoint().unwrap();
            put_all(&mut ch, &[b"c"]);
        }
        for r in &deleted {
            delete(&mut sim, *r);
        }
        let mut ch = open(&mut sim, &mut mem);
        assert_eq!(ch.recovery().path, path, "{deleted:?}");
        assert_eq!(peek_all(&mut ch), v(&[b"b", b"c"]), "{deleted:?}");
    }
}

/// A complete mark that belongs to another checkpoint (its number differs from the started
/// mark's) is refused, and the other slot is used (Flume: meta WOID differs from the header's).
#[test]
fn mismatched_marks_are_refused() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a"]);
        ch.checkpoint().unwrap(); // number 1 in Checkpoint
        ch.checkpoint().unwrap(); // number 2 in Backup
        ch.checkpoint().unwrap(); // number 3 in Checkpoint
    }
    // Same layout (one entry): put number 2's complete mark under number 3's started mark.
    let complete_at = STARTED_BYTES + 8;
    let mark = sim.image(Region::Backup)[complete_at..complete_at + 32].to_vec();
    sim.overwrite(Region::Checkpoint, complete_at, &mark);
    let mut ch = open(&mut sim, &mut mem);
    let r = *ch.recovery();
    assert_eq!((r.path, r.checkpoint), (RecoveryPath::Backup, 2));
    assert_eq!(peek_all(&mut ch), v(&[b"a"]));
}

/// Random bytes in a checkpoint written while a put and a take transaction were open across it:
/// the other slot is used, the late-committed put survives and the late-committed take stays
/// taken (Flume: random bytes in inflightputs / inflighttakes).
#[test]
fn damaged_checkpoint_with_transactions_open_across_it() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a", b"b", b"c"]);
        ch.checkpoint().unwrap();
        let put = ch.begin().unwrap();
        ch.put(put, b"late").unwrap();
        let take = ch.begin().unwrap();
        let mut buf = [0u8; 64];
        ch.take(take, &mut buf).unwrap();
        ch.checkpoint().unwrap();
        ch.commit(put).unwrap();
        ch.commit(take).unwrap();
    }
    sim.overwrite(
        Region::Backup,
        STARTED_BYTES + 4,
        &[0x5a, 0x11, 0xc3, 0x07, 0x99, 0x42, 0xee, 0x01],
    );
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().path, RecoveryPath::Backup);
    assert_eq!(peek_all(&mut ch), v(&[b"b", b"c", b"late"]));
}

/// A stray segment left outside the log's run (garbage, or an old valid-looking header) is
/// ignored (Flume: an extra empty log file and a stray .tmp are ignored).
#[test]
fn stray_segment_outside_the_run_is_ignored() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"a"]);
        ch.close().unwrap();
    }
    // Slot 5 was never used: put garbage there.
    sim.overwrite(Region::Log, 5 * 512, &[0x42; 100]);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
    assert_eq!(peek_all(&mut ch), v(&[b"a"]));
    put_all(&mut ch, &[b"b"]);
    assert!(ch.storage().violations().is_empty());
}

/// An empty event body is an event like any other (Flume: a null header value becomes "").
#[test]
fn empty_event_round_trips() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    {
        let mut ch = open(&mut sim, &mut mem);
        put_all(&mut ch, &[b"", b"x", b""]);
    }
    crash(&mut sim);
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(peek_all(&mut ch), v(&[b"", b"x", b""]));
}

/// A rollback leaves nothing in flight: no pending put, no taken event, no open transaction
/// (Flume: FLUME-1606, a put rollback leaking inflights).
#[test]
fn rollback_leaves_nothing_in_flight() {
    let mut sim = sim();
    let mut mem = memory(&CONFIG);
    let mut ch = open(&mut sim, &mut mem);
    put_all(&mut ch, &[b"a", b"b"]);
    let put = ch.begin().unwrap();
    ch.put(put, b"p").unwrap();
    let take = ch.begin().unwrap();
    let mut buf = [0u8; 64];
    ch.take(take, &mut buf).unwrap();
    let s = ch.stats();
    assert_eq!(
        (s.pending_puts, s.in_flight_takes, s.open_transactions),
        (1, 1, 2)
    );
    ch.rollback(put).unwrap();
    ch.rollback(take).unwrap();
    let s = ch.stats();
    assert_eq!(
        (s.pending_puts, s.in_flight_takes, s.open_transactions),
        (0, 0, 0)
    );
    ch.checkpoint().unwrap();
    let mut ch = open(&mut sim, &mut mem);
    assert_eq!(peek_all(&mut ch), v(&[b"a", b"b"]));
}
