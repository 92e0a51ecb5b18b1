//! The file adapter under the core: a channel on real directories, locks, format files and
//! layout checks.

use std::path::{Path, PathBuf};

use sluicegate_core::{Channel, Config, RecoveryPath, Region, SplitSync, Storage};
use sluicegate_file::{FileStorage, Layout, FORMAT_FILE, LOCK_FILE};

const CONFIG: Config = Config::new(1000, 100, 4, 1024, 64 * 1024);

fn layout(root: &Path, data_dirs: usize) -> Layout {
    Layout {
        checkpoint_dir: root.join("checkpoint"),
        backup_dir: root.join("backup"),
        data_dirs: (0..data_dirs)
            .map(|i| root.join(format!("data{i}")))
            .collect(),
        segment_bytes: 64 * 1024,
        segments: 8,
        kept_segments: 8,
        slot_bytes: 16 * 1024,
    }
}

fn put(ch: &mut Channel<FileStorage, Vec<u64>>, events: &[Vec<u8>]) {
    let tx = ch.begin().unwrap();
    for e in events {
        ch.put(tx, e).unwrap();
    }
    ch.commit(tx).unwrap();
}

/// A channel over files keeps its events across a close and a reopen, from a checkpoint, and
/// across a drop without close, by replaying the log; segments spread over every data directory.
#[test]
fn channel_over_files_survives_reopen() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 3);
    let events: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(100)).collect();
    {
        let storage = FileStorage::open(&l).unwrap();
        let mut ch = Channel::open(storage, vec![0u64; CONFIG.memory_words()], CONFIG).unwrap();
        for batch in events.chunks(50) {
            put(&mut ch, batch);
        }
        ch.close().unwrap();
    }
    {
        let storage = FileStorage::open(&l).unwrap();
        let mut ch = Channel::open(storage, vec![0u64; CONFIG.memory_words()], CONFIG).unwrap();
        assert_eq!(ch.recovery().path, RecoveryPath::Checkpoint);
        assert_eq!(ch.len(), 300);
        put(&mut ch, &[b"after".to_vec()]);
        // Dropped without close: the next open replays the log after the checkpoint.
    }
    let storage = FileStorage::open(&l).unwrap();
    let mut ch = Channel::open(storage, vec![0u64; CONFIG.memory_words()], CONFIG).unwrap();
    assert_eq!(ch.recovery().records_read, 2);
    let tx = ch.begin().unwrap();
    let mut buf = vec![0u8; 1024];
    for e in &events[..100] {
        let n = ch.take(tx, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], &e[..]);
    }
    ch.commit(tx).unwrap();
    for dir in &l.data_dirs {
        let segs = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count();
        assert!(segs >= 1, "{} holds {segs} segments", dir.display());
    }
}

/// A second storage on the same directories fails (after the two seconds' patience given to our
/// own pid), naming the lock file and the pid that holds it.
#[test]
fn second_open_fails_naming_the_lock_and_pid() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 1);
    let _first = FileStorage::open(&l).unwrap();
    let err = FileStorage::open(&l).unwrap_err().to_string();
    assert!(err.contains(LOCK_FILE), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
}

/// A directory of a newer format, of another role, or holding foreign files is refused with a
/// clear error and left untouched.
#[test]
fn newer_foreign_or_misplaced_directories_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 1);
    drop(FileStorage::open(&l).unwrap());
    let format = l.data_dirs[0].join(FORMAT_FILE);
    let original = std::fs::read_to_string(&format).unwrap();
    std::fs::write(&format, original.replace("format = 1", "format = 2")).unwrap();
    let err = FileStorage::open(&l).unwrap_err().to_string();
    assert!(
        err.contains("format 2") && err.contains("reads format 1"),
        "{err}"
    );
    std::fs::write(&format, original.replace("role = data", "role = backup")).unwrap();
    let err = FileStorage::open(&l).unwrap_err().to_string();
    assert!(err.contains("is a backup directory"), "{err}");
    std::fs::write(&format, &original).unwrap();

    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"someone else's").unwrap();
    let mut l2 = layout(root.path(), 0);
    l2.data_dirs = vec![foreign.clone()];
    l2.checkpoint_dir = root.path().join("c2");
    l2.backup_dir = root.path().join("b2");
    let err = FileStorage::open(&l2).unwrap_err().to_string();
    assert!(err.contains("not a Sluicegate directory"), "{err}");
    assert_eq!(
        std::fs::read(foreign.join("notes.txt")).unwrap(),
        b"someone else's"
    );
}

/// Bad layouts are refused with the reason: a backup directory equal to the checkpoint or a data
/// directory, a missing parent, too few segments, sizes that are not whole pages.
#[test]
fn bad_layouts_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let check = |l: Layout, needle: &str| {
        let err = FileStorage::open(&l).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    };
    let mut l = layout(root.path(), 1);
    l.backup_dir = l.checkpoint_dir.clone();
    check(l, "named twice");
    let mut l = layout(root.path(), 1);
    l.backup_dir = l.data_dirs[0].clone();
    check(l, "named twice");
    let mut l = layout(root.path(), 1);
    l.data_dirs = vec![PathBuf::from("/nonexistent-parent/for/sure/data")];
    check(l, "does not exist");
    let mut l = layout(root.path(), 1);
    l.segments = 3;
    check(l, "at least 4 segments");
    let mut l = layout(root.path(), 1);
    l.segment_bytes = 5000;
    check(l, "multiple of 4096");
}

/// The storage keeps the core's contract: reads see writes at once, across segment files;
/// erase leaves zeros; sync succeeds; out-of-bounds access is an error, not a panic.
#[test]
fn storage_contract() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 2);
    let mut s = FileStorage::open(&l).unwrap();
    let seg = l.segment_bytes as u64;
    assert_eq!(s.capacity(Region::Log), seg * 8);
    let data: Vec<u8> = (0..64u8).collect();
    // Straddles the boundary between segment 0 (data0) and segment 1 (data1).
    s.write(Region::Log, seg - 32, &data).unwrap();
    let mut back = vec![0u8; 64];
    s.read(Region::Log, seg - 32, &mut back).unwrap();
    assert_eq!(back, data);
    s.sync(Region::Log).unwrap();
    s.erase(Region::Log, 0, seg).unwrap();
    s.read(Region::Log, seg - 32, &mut back).unwrap();
    assert_eq!(&back[..32], &[0u8; 32]);
    assert_eq!(&back[32..], &data[32..]);
    s.write(Region::Checkpoint, 8, &[1; 8]).unwrap();
    s.sync(Region::Checkpoint).unwrap();
    let mut b = [0u8; 8];
    assert!(s.read(Region::Backup, l.slot_bytes, &mut b).is_err());
    assert!(s.write(Region::Log, seg * 8 - 4, &[0; 8]).is_err());
}

/// Segment files are created as the log first reaches them, atomically (a temporary file a
/// crash left is removed at open); a segment never reached reads as erased; segment files that
/// another layout placed (more segments, or other data directories) are refused.
#[test]
fn segments_are_created_on_first_use_and_checked_against_the_layout() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 2);
    let seg = l.segment_bytes as u64;
    {
        let mut s = FileStorage::open(&l).unwrap();
        assert_eq!(s.files_created(), 0);
        let mut b = [0xAAu8; 16];
        s.read(Region::Log, 3 * seg + 8, &mut b).unwrap();
        assert_eq!(b, [0u8; 16], "a segment never reached reads as erased");
        s.erase(Region::Log, 3 * seg, 4 * seg).unwrap();
        assert_eq!(s.files_created(), 1);
        assert!(l.data_dirs[1].join("log-000003.seg").exists());
        s.write(Region::Log, 3 * seg, &[5; 8]).unwrap();
    }
    // A crash during a creation leaves a temporary file: the next open removes it.
    let tmp = l.data_dirs[0].join("log-000004.seg.tmp");
    std::fs::write(&tmp, b"half").unwrap();
    let mut s = FileStorage::open(&l).unwrap();
    assert!(!tmp.exists());
    let mut b = [0u8; 8];
    s.read(Region::Log, 3 * seg, &mut b).unwrap();
    assert_eq!(b, [5; 8]);
    drop(s);
    let mut fewer = l.clone();
    fewer.segments = 4;
    std::fs::rename(
        l.data_dirs[1].join("log-000003.seg"),
        l.data_dirs[1].join("log-000005.seg"),
    )
    .unwrap();
    let err = FileStorage::open(&fewer).unwrap_err().to_string();
    assert!(
        err.contains("log-000005.seg") && err.contains("another configuration"),
        "{err}"
    );
    std::fs::rename(
        l.data_dirs[1].join("log-000005.seg"),
        l.data_dirs[1].join("log-000003.seg"),
    )
    .unwrap();
    std::fs::rename(
        l.data_dirs[1].join("log-000003.seg"),
        l.data_dirs[0].join("log-000003.seg"),
    )
    .unwrap();
    let err = FileStorage::open(&l).unwrap_err().to_string();
    assert!(err.contains("does not belong to this layout"), "{err}");
}

/// Sync tickets let a sync run outside the channel: a ticket names exactly the files written
/// since their last sync; once settled, `sync` does not sync them again; every `fdatasync` is
/// counted.
#[test]
fn sync_tickets_cover_exactly_the_dirty_files() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 2);
    let seg = l.segment_bytes as u64;
    let mut s = FileStorage::open(&l).unwrap();
    s.write(Region::Log, 8, &[1; 8]).unwrap();
    s.write(Region::Log, seg + 8, &[2; 8]).unwrap();
    let ticket = s.begin_log_sync();
    assert_eq!(ticket.files(), 2);
    FileStorage::run_log_sync(&ticket).unwrap();
    s.settle_log_sync(&ticket);
    assert_eq!(s.fsyncs(), 2);
    s.sync(Region::Log).unwrap();
    assert_eq!(s.fsyncs(), 2, "settled writes are not synced again");
    s.write(Region::Log, 16, &[3; 8]).unwrap();
    assert_eq!(s.begin_log_sync().files(), 1);
    s.sync(Region::Log).unwrap();
    assert_eq!(s.fsyncs(), 3);
    assert_eq!(s.begin_log_sync().files(), 0);
}

/// Log writes are gathered while each continues the last or leads it (a large sealed record's
/// header comes after its body, in front of it) and made together: each byte lands where it was
/// sent; a read sees the gathered bytes without making them; a write that does not join the
/// run, a sync, and dropping the storage make them.
#[test]
fn gathered_writes_land_where_they_were_sent() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path(), 1);
    let mut s = FileStorage::open(&l).unwrap();
    let file = l.data_dirs[0].join("log-000000.seg");
    let on_disk = |from: usize, to: usize| std::fs::read(&file).unwrap()[from..to].to_vec();
    // A run from 64: a write continuing it, then one leading it.
    s.write(Region::Log, 64, &[1; 16]).unwrap();
    s.write(Region::Log, 80, &[2; 8]).unwrap();
    s.write(Region::Log, 56, &[3; 8]).unwrap();
    let mut back = [0u8; 40];
    s.read(Region::Log, 48, &mut back).unwrap();
    let mut expect = [0u8; 40];
    expect[8..16].fill(3);
    expect[16..32].fill(1);
    expect[32..40].fill(2);
    assert_eq!(back, expect, "a read sees the gathered writes");
    assert_eq!(on_disk(48, 88), [0; 40], "a read makes nothing");
    // A write with a gap before it does not join: the run is made first, and it starts another.
    s.write(Region::Log, 104, &[4; 8]).unwrap();
    assert_eq!(on_disk(48, 88), expect[..]);
    assert_eq!(on_disk(104, 112), [0; 8]);
    let mut b = [0u8; 8];
    s.read(Region::Log, 104, &mut b).unwrap();
    assert_eq!(b, [4; 8]);
    // A sync makes the run.
    s.sync(Region::Log).unwrap();
    assert_eq!(on_disk(104, 112), [4; 8]);
    // A write in another file makes the run too.
    s.write(Region::Log, 112, &[5; 8]).unwrap();
    s.write(Region::Log, l.segment_bytes as u64 + 8, &[7; 8])
        .unwrap();
    assert_eq!(on_disk(112, 120), [5; 8]);
    s.sync(Region::Log).unwrap();
    // Dropping the storage makes what is gathered.
    s.write(Region::Log, 400, &[8; 8]).unwrap();
    drop(s);
    assert_eq!(on_disk(400, 408), [8; 8]);
}
