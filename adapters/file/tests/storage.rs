//! The file adapter under the core: a channel on real directories, locks, format files and
//! layout checks.

use std::path::{Path, PathBuf};

use sluicegate_core::{Channel, Config, RecoveryPath, Region, Storage};
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
        assert!(segs >= 2, "{} holds {segs} segments", dir.display());
    }
}

/// A second storage on the same directories fails at once, naming the lock file and the pid
/// that holds it.
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
