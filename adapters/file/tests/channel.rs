//! The file channel: threads, group commit, the checkpoint thread, waiting for room, and
//! configuration.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sluicegate_core::RecoveryPath;
use sluicegate_file::{FileChannel, FileChannelConfig, FileChannelError};

/// A small channel under `root`: no free-space floor (test machines vary), no timed
/// checkpoints unless a test asks.
fn small(root: &Path) -> FileChannelConfig {
    FileChannelConfig {
        capacity: 10_000,
        transaction_capacity: 100,
        max_file_bytes: 256 * 1024,
        log_files: 8,
        minimum_required_space_bytes: 0,
        checkpoint_interval_ms: 0,
        keep_alive_ms: 0,
        max_event_bytes: 4096,
        ..FileChannelConfig::in_dir(root)
    }
}

fn put_one(ch: &FileChannel, event: &[u8]) {
    let mut tx = ch.begin().unwrap();
    tx.put(event).unwrap();
    tx.commit().unwrap();
}

/// Waits (up to a generous bound) until `cond` holds; a synchronisation aid, not a timing test.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < until, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The handle can be shared between threads.
#[test]
fn file_channel_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<FileChannel>();
}

/// Flume's group-commit test: 20 transactions from 20 threads write their commits, then all wait
/// for durability at once; one `fdatasync` covers all 20.
#[test]
fn twenty_concurrent_commits_share_one_fsync() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    // The run's first write opens a segment (with syncs of its own): get it out of the way.
    put_one(&ch, b"warm-up");
    let before = ch.stats();
    let barrier = Barrier::new(20);
    std::thread::scope(|s| {
        for i in 0..20u32 {
            let (ch, barrier) = (&ch, &barrier);
            s.spawn(move || {
                let mut tx = ch.begin().unwrap();
                tx.put(&i.to_le_bytes()).unwrap();
                let pending = tx.write_commit().unwrap();
                barrier.wait();
                pending.wait().unwrap();
            });
        }
    });
    let after = ch.stats();
    println!(
        "20 concurrent commits: {} fdatasync, {} group sync",
        after.fsyncs - before.fsyncs,
        after.group_syncs - before.group_syncs
    );
    assert_eq!(after.fsyncs - before.fsyncs, 1);
    assert_eq!(after.group_syncs - before.group_syncs, 1);
    assert_eq!(after.commits_acknowledged - before.commits_acknowledged, 20);
    assert_eq!(ch.len(), 21);
}

/// Many producers and consumers at once: every event is delivered exactly once, each take
/// transaction gets each producer's events in the order they were committed, and nothing is
/// left behind.
#[test]
fn producers_and_consumers_deliver_exactly_once_in_order() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 600;
    const BATCH: u32 = 10;
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(FileChannelConfig {
        keep_alive_ms: 3_000,
        checkpoint_interval_ms: 20,
        ..small(root.path())
    })
    .unwrap();
    let received = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for p in 0..PRODUCERS {
            let ch = &ch;
            s.spawn(move || {
                for b in 0..PER_PRODUCER / BATCH {
                    let mut tx = ch.begin().unwrap();
                    for k in 0..BATCH {
                        let seq = b * BATCH + k;
                        let mut e = [p.to_le_bytes(), seq.to_le_bytes()].concat();
                        e.resize(8 + (seq as usize % 200), seq as u8);
                        tx.put(&e).unwrap();
                    }
                    tx.commit().unwrap();
                }
            });
        }
        for _ in 0..4 {
            let (ch, received) = (&ch, &received);
            s.spawn(move || loop {
                if received.lock().unwrap().len() == (PRODUCERS * PER_PRODUCER) as usize {
                    return;
                }
                let mut tx = ch.begin().unwrap();
                let mut got = Vec::new();
                for _ in 0..7 {
                    match tx.take_vec().unwrap() {
                        Some(e) => got.push(e),
                        None => break,
                    }
                }
                tx.commit().unwrap();
                // Within one take transaction, each producer's events come in its order.
                let mut last = [None; PRODUCERS as usize];
                for e in &got {
                    let p = u32::from_le_bytes(e[..4].try_into().unwrap()) as usize;
                    let seq = u32::from_le_bytes(e[4..8].try_into().unwrap());
                    assert!(last[p] < Some(seq), "producer {p} out of order in one take");
                    last[p] = Some(seq);
                }
                received.lock().unwrap().extend(got);
                std::thread::yield_now();
            });
        }
    });
    let received = received.into_inner().unwrap();
    assert_eq!(received.len(), (PRODUCERS * PER_PRODUCER) as usize);
    let mut seen = std::collections::BTreeSet::new();
    for e in &received {
        let p = u32::from_le_bytes(e[..4].try_into().unwrap());
        let seq = u32::from_le_bytes(e[4..8].try_into().unwrap());
        assert_eq!(e.len(), 8 + (seq as usize % 200));
        assert!(seen.insert((p, seq)), "({p}, {seq}) delivered twice");
    }
    assert_eq!(seen.len(), (PRODUCERS * PER_PRODUCER) as usize);
    let stats = ch.stats();
    println!(
        "{} commits acknowledged with {} fdatasync calls ({} group syncs), {} checkpoints",
        stats.commits_acknowledged, stats.fsyncs, stats.group_syncs, stats.channel.checkpoints
    );
    assert!(ch.is_empty());
    ch.close().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    assert!(ch.is_empty());
    assert_eq!(ch.recovery().records_read, 0, "closed with a checkpoint");
}

/// A put into a full channel waits up to keep-alive for a take to make room, and fails with
/// `Full` when none comes; nothing is lost either way.
#[test]
fn put_waits_keep_alive_for_room() {
    let root = tempfile::tempdir().unwrap();
    let tiny = |keep_alive_ms| FileChannelConfig {
        capacity: 4,
        transaction_capacity: 4,
        keep_alive_ms,
        ..small(root.path())
    };
    let ch = FileChannel::open(tiny(10_000)).unwrap();
    for i in 0..4u8 {
        put_one(&ch, &[i]);
    }
    std::thread::scope(|s| {
        let waiter = s.spawn(|| put_one(&ch, b"late"));
        std::thread::sleep(Duration::from_millis(50));
        let mut tx = ch.begin().unwrap();
        assert_eq!(tx.take_vec().unwrap().unwrap(), vec![0]);
        tx.commit().unwrap();
        waiter.join().unwrap();
    });
    assert_eq!(ch.len(), 4);
    drop(ch);
    let ch = FileChannel::open(tiny(20)).unwrap();
    let mut tx = ch.begin().unwrap();
    match tx.put(b"no room") {
        Err(FileChannelError::Full(_)) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    drop(tx);
    let mut tx = ch.begin().unwrap();
    let got: Vec<Vec<u8>> = (0..4).map(|_| tx.take_vec().unwrap().unwrap()).collect();
    assert_eq!(got, vec![vec![1], vec![2], vec![3], b"late".to_vec()]);
}

/// A full log takes the same path as a full channel: a put waits up to keep-alive for takes to
/// free a segment, and fails with `Full` (holding `LogFull`) when none come; nothing is lost.
#[test]
fn put_waits_keep_alive_for_log_space() {
    let root = tempfile::tempdir().unwrap();
    let tight = |keep_alive_ms| FileChannelConfig {
        log_files: 4,
        max_file_bytes: 16 * 1024,
        keep_alive_ms,
        ..small(root.path())
    };
    let event = [9u8; 3000];
    let mut queued = 0;
    {
        let ch = FileChannel::open(tight(20)).unwrap();
        let err = loop {
            let mut tx = ch.begin().unwrap();
            if let Err(e) = tx.put(&event) {
                break e;
            }
            tx.commit().unwrap();
            queued += 1;
            assert!(queued < 100, "the log never filled");
        };
        match err {
            FileChannelError::Full(sluicegate_core::Error::LogFull) => {}
            other => panic!("expected Full(LogFull), got {other:?}"),
        }
        assert_eq!(ch.len(), queued);
    }
    let ch = FileChannel::open(tight(10_000)).unwrap();
    assert_eq!(ch.len(), queued, "nothing lost");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| put_one(&ch, &event));
        std::thread::sleep(Duration::from_millis(50));
        let mut tx = ch.begin().unwrap();
        for _ in 0..queued {
            tx.take_vec().unwrap().unwrap();
        }
        tx.commit().unwrap();
        waiter.join().unwrap();
    });
    assert_eq!(ch.len(), 1);
}

/// The checkpoint thread writes timed checkpoints while producers run, so a restart without a
/// clean close replays only the tail; a clean close with `checkpoint_on_close` replays nothing.
#[test]
fn background_checkpoints_shorten_restart() {
    let root = tempfile::tempdir().unwrap();
    let config = FileChannelConfig {
        checkpoint_interval_ms: 10,
        checkpoint_on_close: false,
        ..small(root.path())
    };
    {
        let ch = FileChannel::open(config.clone()).unwrap();
        for i in 0..200u32 {
            put_one(&ch, &i.to_le_bytes());
        }
        eventually("a background checkpoint", || {
            ch.stats().channel.checkpoints >= 1
        });
        put_one(&ch, b"after the checkpoint");
        // Dropped without a checkpoint on close.
    }
    let ch = FileChannel::open(config).unwrap();
    assert_ne!(ch.recovery().path, RecoveryPath::FullReplay);
    assert_ne!(ch.recovery().path, RecoveryPath::New);
    assert!(
        ch.recovery().records_read < 400,
        "replayed {} records",
        ch.recovery().records_read
    );
    assert_eq!(ch.len(), 201);
}

/// `take_vec` returns events of every size exactly, small and larger than its first buffer.
#[test]
fn take_vec_returns_events_of_any_size() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    let sizes = [0usize, 1, 511, 512, 513, 4096];
    for &n in &sizes {
        put_one(&ch, &vec![n as u8; n]);
    }
    let mut tx = ch.begin().unwrap();
    for &n in &sizes {
        assert_eq!(tx.take_vec().unwrap().unwrap(), vec![n as u8; n]);
    }
    assert_eq!(tx.take_vec().unwrap(), None);
    tx.commit().unwrap();
    assert!(ch.is_empty());
}

/// An uncommitted transaction is rolled back when dropped: its puts vanish, its takes return
/// in place.
#[test]
fn dropped_transactions_roll_back() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    put_one(&ch, b"a");
    put_one(&ch, b"b");
    {
        let mut tx = ch.begin().unwrap();
        tx.put(b"never").unwrap();
    }
    {
        let mut tx = ch.begin().unwrap();
        assert_eq!(tx.take_vec().unwrap().unwrap(), b"a");
    }
    let mut tx = ch.begin().unwrap();
    assert_eq!(tx.take_vec().unwrap().unwrap(), b"a");
    assert_eq!(tx.take_vec().unwrap().unwrap(), b"b");
    assert_eq!(tx.take_vec().unwrap(), None);
    tx.rollback().unwrap();
    assert_eq!(ch.len(), 2);
}

/// A configuration file uses Flume's names where they fit, with Flume's defaults; relative
/// directories are relative to the file; unknown keys and bad values are refused with the
/// setting's name.
#[test]
fn toml_configuration_and_validation() {
    let root = tempfile::tempdir().unwrap();
    let defaults = FileChannelConfig::default();
    assert_eq!(defaults.capacity, 1_000_000);
    assert_eq!(defaults.transaction_capacity, 10_000);
    assert_eq!(defaults.checkpoint_interval_ms, 30_000);
    assert_eq!(defaults.minimum_required_space_bytes, 524_288_000);
    assert_eq!(defaults.keep_alive_ms, 3_000);
    assert!(defaults.use_dual_checkpoints && defaults.checkpoint_on_close);

    let file = root.path().join("channel.toml");
    std::fs::write(
        &file,
        "capacity = 5000\ntransaction_capacity = 50\ndata_dirs = [\"d1\", \"d2\"]\n\
         checkpoint_dir = \"ck\"\nbackup_checkpoint_dir = \"bk\"\nminimum_required_space_bytes = 0\n",
    )
    .unwrap();
    let c = FileChannelConfig::from_toml_file(&file).unwrap();
    assert_eq!(c.capacity, 5000);
    assert_eq!(
        c.data_dirs,
        vec![root.path().join("d1"), root.path().join("d2")]
    );
    assert_eq!(c.checkpoint_dir, root.path().join("ck"));
    assert_eq!(c.keep_alive_ms, 3_000, "unset keys keep their defaults");
    c.validate().unwrap();

    std::fs::write(&file, "capacty = 5\n").unwrap();
    let err = FileChannelConfig::from_toml_file(&file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("capacty") && err.contains("channel.toml"),
        "{err}"
    );

    let refused = |c: FileChannelConfig, needle: &str| {
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        let err = FileChannel::open(c).unwrap_err().to_string();
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    let base = small(root.path());
    refused(
        FileChannelConfig {
            backup_checkpoint_dir: base.checkpoint_dir.clone(),
            ..base.clone()
        },
        "backup_checkpoint_dir and checkpoint_dir are the same directory",
    );
    refused(
        FileChannelConfig {
            backup_checkpoint_dir: base.data_dirs[0].join("."),
            ..base.clone()
        },
        "data_dirs[0] and backup_checkpoint_dir are the same directory",
    );
    refused(
        FileChannelConfig {
            transaction_capacity: 20_000,
            ..base.clone()
        },
        "transaction_capacity (20000) is above capacity (10000)",
    );
    refused(
        FileChannelConfig {
            data_dirs: vec![root.path().join("missing/parent/data")],
            ..base.clone()
        },
        "data_dirs[0]: the parent of",
    );
    std::fs::write(root.path().join("a-file"), b"").unwrap();
    refused(
        FileChannelConfig {
            checkpoint_dir: root.path().join("a-file"),
            ..base.clone()
        },
        "checkpoint_dir: ",
    );
    refused(
        FileChannelConfig {
            log_files: 3,
            ..base.clone()
        },
        "log_files is 3",
    );
    refused(
        FileChannelConfig {
            max_file_bytes: 5000,
            ..base.clone()
        },
        "max_file_bytes (5000) must be a multiple of 4096",
    );
    refused(
        FileChannelConfig {
            data_dirs: vec![],
            ..base.clone()
        },
        "data_dirs is empty",
    );
    // Nothing was created by the refused configurations.
    assert!(!base.checkpoint_dir.exists());
    // Dual checkpoints off: the second slot lives beside the first.
    let single = FileChannelConfig {
        use_dual_checkpoints: false,
        ..base.clone()
    };
    let ch = FileChannel::open(single).unwrap();
    put_one(&ch, b"x");
    ch.close().unwrap();
    assert!(base
        .checkpoint_dir
        .join("second")
        .join("backup.slot")
        .exists());
}

/// Two channels on the same directories: the second is refused, naming the lock and the pid.
#[test]
fn second_channel_on_the_same_directories_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let _first = FileChannel::open(small(root.path())).unwrap();
    let err = FileChannel::open(small(root.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sluicegate.lock") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
}

/// Commits keep flowing while many threads commit at once: every commit is acknowledged and
/// syncs are shared (the ratio is printed; benchmarks measure it properly).
#[test]
fn free_running_commits_share_syncs() {
    let root = tempfile::tempdir().unwrap();
    let ch = Arc::new(FileChannel::open(small(root.path())).unwrap());
    put_one(&ch, b"warm-up");
    let before = ch.stats();
    let threads: Vec<_> = (0..16)
        .map(|t: u32| {
            let ch = Arc::clone(&ch);
            std::thread::spawn(move || {
                for i in 0..25u32 {
                    put_one(&ch, &[t.to_le_bytes(), i.to_le_bytes()].concat());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = ch.stats();
    let commits = after.commits_acknowledged - before.commits_acknowledged;
    let fsyncs = after.fsyncs - before.fsyncs;
    println!("16 threads x 25 commits: {commits} commits, {fsyncs} fdatasync");
    assert_eq!(commits, 400);
    assert!(fsyncs <= commits);
    assert_eq!(ch.len(), 401);
}

/// With the fewest log files (4), 40 runs that each put one event and leave it queued all
/// succeed: a run goes on in the newest file after the last intact record, so restarts cost no
/// file (before, every run started a file and a put keeps two free in reserve, and the third
/// run with events queued was refused with `LogFull`). Half the runs close, half are
/// dropped without closing; no checkpoint is written, so every open replays the file. One file
/// is written.
#[test]
fn forty_restarts_with_events_queued_share_one_log_file() {
    let root = tempfile::tempdir().unwrap();
    let config = FileChannelConfig {
        log_files: 4,
        checkpoint_on_close: false,
        ..small(root.path())
    };
    for run in 0..40 {
        let ch = FileChannel::open(config.clone()).unwrap();
        put_one(&ch, format!("run {run}").as_bytes());
        if run % 2 == 0 {
            ch.close().unwrap();
        }
    }
    let files = std::fs::read_dir(root.path().join("data"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    // The one written, and the spare that a put's roll into it made (for take commits).
    assert_eq!(files, 2, "log files made");
    let ch = FileChannel::open(config).unwrap();
    let mut tx = ch.begin().unwrap();
    for run in 0..40 {
        let want = format!("run {run}");
        assert_eq!(tx.take_vec().unwrap().as_deref(), Some(want.as_bytes()));
    }
    assert_eq!(tx.take_vec().unwrap(), None);
    tx.commit().unwrap();
    ch.close().unwrap();
}

/// A take that waits returns an event committed by another thread during the wait, and an empty
/// wait returns `None` no sooner than asked.
#[test]
fn take_wait_wakes_on_a_commit_and_times_out_when_nothing_comes() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    let mut tx = ch.begin().unwrap();
    let asked = Duration::from_millis(30);
    let t = Instant::now();
    assert_eq!(tx.take_vec_wait(asked).unwrap(), None);
    assert!(t.elapsed() >= asked);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            put_one(&ch, b"late");
        });
        // Generous: only a commit can end this wait early.
        let got = tx.take_vec_wait(Duration::from_secs(60)).unwrap();
        assert_eq!(got.as_deref(), Some(&b"late"[..]));
    });
    tx.commit().unwrap();
}

/// A second open of the same directories fails with an error whose kind says the lock is held,
/// naming this process as the holder.
#[test]
fn a_held_lock_is_an_error_of_its_own_kind() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(small(root.path())).unwrap();
    let err = FileChannel::open(small(root.path())).unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert_eq!(err.lock_holder(), Some(std::process::id()));
    drop(ch);
    let bad = FileChannelConfig {
        capacity: 0,
        ..small(root.path())
    };
    let other = FileChannel::open(bad).unwrap_err();
    assert!(!other.is_locked(), "{other}");
}

/// A mark committed with a transaction survives a restart from a checkpoint and a restart
/// that replays the whole log; a home whose slot files were made before marks (no room for them) gets
/// them grown at open, keeping its checkpoint; a mark too long is refused.
#[test]
fn marks_survive_restarts_and_old_slot_files_grow() {
    let root = tempfile::tempdir().unwrap();
    let old = FileChannelConfig {
        marks: 0,
        ..small(root.path())
    };
    {
        let ch = FileChannel::open(old.clone()).unwrap();
        put_one(&ch, b"before marks");
        ch.close().unwrap();
    }
    let slot = root.path().join("checkpoint").join("checkpoint.slot");
    let before = std::fs::metadata(&slot).unwrap().len();
    let config = small(root.path());
    assert_eq!(config.marks, 8, "marks are on by default");
    {
        let ch = FileChannel::open(config.clone()).unwrap();
        assert_eq!(
            ch.recovery().path,
            RecoveryPath::Checkpoint,
            "the old checkpoint holds"
        );
        assert_eq!(ch.len(), 1);
        assert!(
            std::fs::metadata(&slot).unwrap().len() > before,
            "the slot file grew"
        );
        assert_eq!(ch.mark(2), None);
        let mut tx = ch.begin().unwrap();
        tx.put(b"e").unwrap();
        tx.set_mark(2, b"file 7 at 4096").unwrap();
        tx.commit().unwrap();
        let mut tx = ch.begin().unwrap();
        assert!(tx.set_mark(2, &[0; 513]).is_err(), "over mark_bytes");
        assert!(tx.set_mark(8, b"x").is_err(), "no such stream");
        tx.rollback().unwrap();
        ch.close().unwrap();
    }
    {
        let ch = FileChannel::open(config.clone()).unwrap();
        assert_eq!(ch.mark(2).as_deref(), Some(&b"file 7 at 4096"[..]));
        let mut tx = ch.begin().unwrap();
        tx.set_mark(2, b"file 7 at 8192").unwrap();
        tx.commit().unwrap();
        ch.close().unwrap();
    }
    // Both checkpoint slots gone: the mark comes back by replaying the log.
    std::fs::remove_file(&slot).unwrap();
    std::fs::remove_file(root.path().join("backup").join("backup.slot")).unwrap();
    let ch = FileChannel::open(config).unwrap();
    assert_eq!(ch.recovery().path, RecoveryPath::FullReplay);
    assert_eq!(ch.mark(2).as_deref(), Some(&b"file 7 at 8192"[..]));
    assert_eq!(ch.len(), 2);
}

/// The channel's identity stays across reopens, and a damaged identity file gets a new one
/// rather than stopping the channel; an event's id is the same each time it is delivered.
#[test]
fn identity_and_event_ids() {
    let root = tempfile::tempdir().unwrap();
    let config = small(root.path());
    let first = {
        let ch = FileChannel::open(config.clone()).unwrap();
        put_one(&ch, b"x");
        let mut tx = ch.begin().unwrap();
        let (e, id) = tx.take_vec_wait_with_id(Duration::ZERO).unwrap().unwrap();
        assert_eq!(e, b"x");
        tx.rollback().unwrap();
        let mut tx = ch.begin().unwrap();
        let (_, again) = tx.take_vec_wait_with_id(Duration::ZERO).unwrap().unwrap();
        assert_eq!(id, again, "the same id when delivered again");
        tx.rollback().unwrap();
        ch.identity()
    };
    let ch = FileChannel::open(config.clone()).unwrap();
    assert_eq!(ch.identity(), first);
    drop(ch);
    let file = root.path().join("checkpoint").join("sluicegate.id");
    std::fs::write(&file, b"\xff not an id").unwrap();
    let ch = FileChannel::open(config).unwrap();
    assert_ne!(ch.identity(), first, "a new identity");
    assert_eq!(ch.len(), 1, "the events are still there");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        format!("{:032x}", ch.identity())
    );
}

/// Puts `n` copies of `event` in one transaction, then takes `n` in another: churn that leaves
/// the queue as it was and moves the log on.
fn churn(ch: &FileChannel, event: &[u8], n: usize) {
    let mut tx = ch.begin().unwrap();
    for _ in 0..n {
        tx.put(event).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = ch.begin().unwrap();
    for _ in 0..n {
        assert_eq!(tx.take_vec().unwrap().unwrap(), event);
    }
    tx.commit().unwrap();
}

/// The elastic log. An event taken by a transaction that stays open pins its segment; churn
/// around it rolls the log over thirty files of a 64-file ring, far past the four it keeps,
/// and no put is refused. Once the take commits, a checkpoint releases what nothing needs:
/// the log shrinks back to the kept files (plus the one being written and the one made ready),
/// and later segments take the kept files by a rename instead of making new ones.
#[test]
fn a_pinned_segment_grows_the_log_and_checkpoints_shrink_it_back() {
    let root = tempfile::tempdir().unwrap();
    let config = FileChannelConfig {
        max_file_bytes: 64 * 1024,
        log_files: 64,
        kept_log_files: 4,
        ..small(root.path())
    };
    let data = config.data_dirs[0].clone();
    // A file being made is counted by `log_files` from the moment its temporary file
    // (`.seg.tmp`) exists, until its thread renames it: count both names, or a check made
    // while the thread runs sees one file fewer on disk (CI saw 33 against 32 once).
    let files_in_data = || {
        std::fs::read_dir(&data)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".seg") || name.ends_with(".seg.tmp")
            })
            .count() as u64
    };
    let event = [7u8; 2000];
    {
        let ch = FileChannel::open(config.clone()).unwrap();
        put_one(&ch, b"pinned");
        let mut pin = ch.begin().unwrap();
        assert_eq!(pin.take_vec().unwrap().unwrap(), b"pinned");
        // About thirty files' worth of events, checkpoints among them.
        for round in 0..100 {
            churn(&ch, &event, 10);
            if round % 10 == 9 {
                ch.checkpoint().unwrap();
            }
        }
        let grown = ch.stats();
        assert!(
            grown.log_files >= 25 && grown.channel.segments_pinned_by_events >= 25,
            "the pinned segment holds the log: {grown:?}"
        );
        assert_eq!(grown.log_files, files_in_data());
        pin.commit().unwrap();
        ch.checkpoint().unwrap();
        let shrunk = ch.stats();
        assert!(
            shrunk.log_files <= 4 + 2,
            "released files beyond the kept four are deleted: {shrunk:?}"
        );
        assert!(shrunk.files_deleted >= 20, "{shrunk:?}");
        assert_eq!(shrunk.log_files, files_in_data());
        // Ten more files' worth, a checkpoint after each: the kept files carry them.
        for _ in 0..10 {
            churn(&ch, &event, 33);
            ch.checkpoint().unwrap();
        }
        let after = ch.stats();
        assert!(
            after.files_recycled >= 8,
            "later segments take kept files: {after:?}"
        );
        assert!(
            after.files_created <= shrunk.files_created + 2,
            "few new files once files are kept: {shrunk:?} then {after:?}"
        );
        assert!(after.log_files <= 4 + 2, "{after:?}");
        ch.close().unwrap();
    }
    let ch = FileChannel::open(config).unwrap();
    assert_eq!(ch.len(), 0);
    assert!(files_in_data() <= 4 + 2);
    churn(&ch, &event, 10);
}

/// A channel made with the old default ring of 16 files opens under today's defaults: with
/// `log_files` left at its default, the recorded ring size is used, so nothing is refused and
/// nothing lost. A value set on purpose that contradicts the record is still refused.
#[test]
fn a_channel_made_with_sixteen_files_opens_under_the_new_default() {
    let root = tempfile::tempdir().unwrap();
    let old = FileChannelConfig {
        log_files: 16,
        ..small(root.path())
    };
    {
        let ch = FileChannel::open(old).unwrap();
        put_one(&ch, b"made with sixteen");
        ch.close().unwrap();
    }
    let defaults = FileChannelConfig {
        log_files: sluicegate_file::DEFAULT_LOG_FILES,
        ..small(root.path())
    };
    assert_eq!(defaults.layout().segments, 16);
    let ch = FileChannel::open(defaults.clone()).unwrap();
    assert_eq!(ch.stats().channel.segments, 16);
    let mut tx = ch.begin().unwrap();
    assert_eq!(tx.take_vec().unwrap().unwrap(), b"made with sixteen");
    tx.commit().unwrap();
    ch.close().unwrap();
    let err = FileChannel::open(FileChannelConfig {
        log_files: 32,
        ..defaults
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("log_files is 32") && err.contains("log_files = 16"),
        "{err}"
    );
}

/// With no checkpoint due by time (an interval of an hour), half the kept files' worth of log
/// starts one in the background: churn alone brings checkpoints, they release what it moved
/// past, and the log reuses and deletes files instead of keeping one per segment written.
#[test]
fn log_growth_starts_background_checkpoints_that_release_files() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(FileChannelConfig {
        max_file_bytes: 64 * 1024,
        // A ring far larger than the test writes between two looks of the checkpoint thread
        // (once a second), so no checkpoint comes from a log that ran out of room.
        log_files: 4096,
        kept_log_files: 4,
        checkpoint_interval_ms: 3_600_000,
        ..small(root.path())
    })
    .unwrap();
    let event = [5u8; 2000];
    let started = Instant::now();
    let mut rounds = 0;
    while ch.stats().channel.checkpoints < 3 {
        churn(&ch, &event, 10);
        rounds += 1;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint after {rounds} rounds: {:?}",
            ch.stats()
        );
    }
    let s = ch.stats();
    assert!(
        s.channel.newest_segment < 4000,
        "the checkpoints came from a full ring, not from its growth: {s:?}"
    );
    assert!(s.files_deleted + s.files_recycled > 0, "{s:?}");
    assert!(
        s.log_files <= s.channel.newest_segment,
        "files were released: {s:?}"
    );
}

/// With the default settings a queued event costs 44 bits of the core's memory (27 for an
/// offset in a 128 MiB file, 10 for one of 1,024 files, 7 for one of 64 transactions or none),
/// not the 58 a ring of any size needs: the channel packs its queue for its own ring.
#[test]
fn the_default_channel_packs_its_queue_for_its_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let config = FileChannelConfig::in_dir(tmp.path());
    let wide = config.core_config().unwrap();
    let packed = config.core_config_for(&config.layout()).unwrap();
    assert_eq!(wide.queue_entry_bits(), 27 + 24 + 7);
    assert_eq!(packed.queue_entry_bits(), 27 + 10 + 7);
    // 14 bits fewer per event of capacity, rounded to whole words.
    let saved = (wide.memory_words() - packed.memory_words()) as u64;
    assert_eq!(
        saved,
        (u64::from(config.capacity) * 58).div_ceil(64)
            - (u64::from(config.capacity) * 44).div_ceil(64)
    );
}
