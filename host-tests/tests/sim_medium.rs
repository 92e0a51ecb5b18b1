//! The simulated medium keeps the rules of NOR flash and of power loss, so that tests built on
//! it mean something.

use sluicegate_core::{Region, Storage, StorageErrorKind};
use sluicegate_sim::{CrashPolicy, OpKind, SimStorage};

type Sim = SimStorage<4, 256>;

/// A second write to a word before an erase is reported as a violation by the caller.
#[test]
fn double_write_is_a_violation() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    s.write(Region::Log, 0, &[1, 2, 3, 4]).unwrap();
    assert!(s.write(Region::Log, 0, &[1, 2, 3, 4]).is_err());
    assert_eq!(s.violations().len(), 1);
    s.erase(Region::Log, 0, 256).unwrap();
    s.write(Region::Log, 0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(s.violations().len(), 1);
}

/// Misaligned writes and erases are violations too.
#[test]
fn misaligned_access_is_a_violation() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    assert!(s.write(Region::Log, 2, &[1, 2, 3, 4]).is_err());
    assert!(s.erase(Region::Log, 128, 256).is_err());
    assert_eq!(s.violations().len(), 2);
}

/// Programming moves bits only away from the erased value, for both erased values: programming
/// over stale bits (left by a foreign writer) combines them instead of replacing them.
#[test]
fn programming_only_moves_bits_away_from_erased() {
    for (erased, expected) in [(0xFFu8, 0x00u8), (0x00, 0xFF)] {
        let mut s: Sim = SimStorage::new(1024, erased);
        assert!(s.image(Region::Log).iter().all(|&b| b == erased));
        s.overwrite(Region::Log, 0, &[0x0F; 4]);
        s.write(Region::Log, 0, &[0xF0; 4]).unwrap();
        assert_eq!(
            &s.image(Region::Log)[..4],
            &[expected; 4],
            "erased {erased:#x}"
        );
    }
}

/// Synced data survives every crash; unsynced data is lost or kept as the policy says.
#[test]
fn crash_keeps_synced_and_chooses_unsynced() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    s.write(Region::Log, 0, &[1; 4]).unwrap();
    s.sync(Region::Log).unwrap();
    s.write(Region::Log, 4, &[2; 4]).unwrap();
    let mut lost = s.clone();
    lost.reboot(1, CrashPolicy::LoseUnsynced);
    assert_eq!(
        &lost.image(Region::Log)[..8],
        &[1, 1, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    let mut kept = s.clone();
    kept.reboot(1, CrashPolicy::KeepUnsynced);
    assert_eq!(&kept.image(Region::Log)[..8], &[1, 1, 1, 1, 2, 2, 2, 2]);
    // Under the random policy every outcome shows up over enough seeds.
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut r = s.clone();
        r.reboot(seed, CrashPolicy::Random);
        assert_eq!(&r.image(Region::Log)[..4], &[1; 4]);
        outcomes.insert(r.image(Region::Log)[4..8].to_vec());
    }
    assert!(outcomes.contains(&vec![2; 4]));
    assert!(outcomes.contains(&vec![0xFF; 4]));
    assert!(outcomes.len() > 2, "torn outcomes appear too: {outcomes:?}");
}

/// A scheduled power cut interrupts exactly the chosen mutation and everything after fails until
/// reboot; an interrupted erase can leave garbage.
#[test]
fn power_cut_interrupts_the_chosen_operation() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    s.write(Region::Log, 0, &[0; 256]).unwrap();
    s.sync(Region::Log).unwrap();
    s.cut_power_after(1);
    s.write(Region::Log, 256, &[0; 4]).unwrap();
    let e = s.erase(Region::Log, 0, 256).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::PowerLoss);
    assert!(s.is_powered_off());
    let mut buf = [0u8; 4];
    assert_eq!(
        s.read(Region::Log, 0, &mut buf).unwrap_err().kind,
        StorageErrorKind::PowerLoss
    );
    let mut garbage = false;
    for seed in 0..50 {
        let mut r = s.clone();
        r.reboot(seed, CrashPolicy::LoseUnsynced);
        let block = &r.image(Region::Log)[..256];
        if block.iter().any(|&b| b != 0 && b != 0xFF) {
            garbage = true;
        }
    }
    assert!(garbage, "an interrupted erase sometimes leaves garbage");
}

/// Injected I/O errors hit the chosen operation, which then has no effect.
#[test]
fn injected_io_error_has_no_effect() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    s.fail_nth(OpKind::Write, 2);
    s.write(Region::Log, 0, &[1; 4]).unwrap();
    let e = s.write(Region::Log, 4, &[2; 4]).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::Io);
    assert_eq!(&s.image(Region::Log)[4..8], &[0xFF; 4]);
    s.write(Region::Log, 4, &[3; 4]).unwrap();
}

/// Counters count calls and bytes.
#[test]
fn counters_count() {
    let mut s: Sim = SimStorage::new(1024, 0xFF);
    s.write(Region::Log, 0, &[1; 8]).unwrap();
    s.erase(Region::Log, 256, 512).unwrap();
    s.sync(Region::Log).unwrap();
    let mut b = [0u8; 3];
    s.read(Region::Log, 0, &mut b).unwrap();
    let c = s.counters();
    assert_eq!((c.writes, c.erases, c.syncs, c.reads), (1, 1, 1, 1));
    assert_eq!((c.bytes_written, c.bytes_erased, c.bytes_read), (8, 256, 3));
    assert_eq!(c.mutations(), 3);
}
