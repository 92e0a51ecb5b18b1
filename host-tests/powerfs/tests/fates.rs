//! The power-cut filesystem tested by itself, through a real FUSE mount: every fate against a
//! plain reference model of what a disk may hold after a cut, so that a bug in the tool cannot
//! hide a bug in the channel. Needs `/dev/fuse` and root (CI has both).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sluicegate_powerfs::volume::{PAGE_BYTES, SECTOR_BYTES};
use sluicegate_powerfs::{CutPoint, DataFate, DirFate, Fate, PowerMount, TempMount};

/// Mounts, or returns from the calling test when FUSE is unavailable and not required.
macro_rules! mount {
    () => {
        match TempMount::new_or_skip() {
            Some(m) => m,
            None => return,
        }
    };
}

fn fate(data: DataFate, dirs: DirFate) -> Fate {
    Fate { data, dirs }
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Creates `name` with `content`, durable: the file and its directory synced.
fn durable_file(m: &PowerMount, name: &str, content: &[u8]) -> PathBuf {
    let p = m.path().join(name);
    let f = File::create(&p).unwrap();
    f.write_all_at(content, 0).unwrap();
    f.sync_data().unwrap();
    sync_dir(m.path());
    p
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An unsynced write is lost and a synced one kept when every unsynced page is lost.
#[test]
fn lost_fate_keeps_exactly_what_was_synced() {
    let mut m = mount!();
    let p = durable_file(&m, "f", &pattern(1, 3 * PAGE_BYTES as usize));
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&pattern(2, 100), 10).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&pattern(3, 5000), PAGE_BYTES + 7).unwrap();
    f.write_all_at(&pattern(4, 10), 5 * PAGE_BYTES).unwrap();
    drop(f);
    let mut expected = pattern(1, 3 * PAGE_BYTES as usize);
    expected[10..110].copy_from_slice(&pattern(2, 100));
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    m.power_cycle(fate(DataFate::Lost, DirFate::Lost), &mut rng)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), expected);
}

/// Every write and every entry operation survives when the fate keeps everything.
#[test]
fn kept_fate_keeps_every_write_and_entry() {
    let mut m = mount!();
    let p = durable_file(&m, "f", &pattern(1, 1000));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&pattern(5, 9000), 500)
        .unwrap();
    fs::write(m.path().join("new"), b"never synced").unwrap();
    fs::create_dir(m.path().join("sub")).unwrap();
    fs::rename(&p, m.path().join("g")).unwrap();
    let mut rng = Pcg64Mcg::seed_from_u64(2);
    m.power_cycle(fate(DataFate::Kept, DirFate::Kept), &mut rng)
        .unwrap();
    let mut expected = pattern(1, 1000);
    expected.truncate(500);
    expected.extend_from_slice(&pattern(5, 9000));
    assert_eq!(fs::read(m.path().join("g")).unwrap(), expected);
    assert_eq!(fs::read(m.path().join("new")).unwrap(), b"never synced");
    assert_eq!(names(m.path()), ["g", "new", "sub"]);
}

/// With pages kept at random, each page holds its old or its new content whole, and over a few
/// cuts both happen.
#[test]
fn pages_fate_keeps_each_page_whole_or_not_at_all() {
    let mut m = mount!();
    let pages = 32usize;
    let old = pattern(1, pages * PAGE_BYTES as usize);
    let p = durable_file(&m, "f", &old);
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let (mut kept, mut lost) = (0, 0);
    let mut durable = old;
    for round in 0..4u8 {
        let new = pattern(10 + round, durable.len());
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(&new, 0)
            .unwrap();
        m.power_cycle(fate(DataFate::Pages, DirFate::Lost), &mut rng)
            .unwrap();
        let after = fs::read(&p).unwrap();
        assert_eq!(after.len(), durable.len());
        for (i, page) in after.chunks(PAGE_BYTES as usize).enumerate() {
            let at = i * PAGE_BYTES as usize..(i + 1) * PAGE_BYTES as usize;
            if page == &new[at.clone()] {
                kept += 1;
            } else {
                assert_eq!(page, &durable[at], "page {i} is neither old nor new");
                lost += 1;
            }
        }
        durable = after;
    }
    assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
}

/// With torn pages, every 512-byte sector holds its old or its new content whole, and some
/// page mixes both.
#[test]
fn sectors_fate_tears_pages_at_sector_bounds() {
    let mut m = mount!();
    let pages = 32usize;
    let old = pattern(1, pages * PAGE_BYTES as usize);
    let p = durable_file(&m, "f", &old);
    let new = pattern(77, old.len());
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&new, 0)
        .unwrap();
    let mut rng = Pcg64Mcg::seed_from_u64(4);
    m.power_cycle(fate(DataFate::Sectors, DirFate::Lost), &mut rng)
        .unwrap();
    let after = fs::read(&p).unwrap();
    let mut torn = 0;
    for (i, page) in after.chunks(PAGE_BYTES as usize).enumerate() {
        let base = i * PAGE_BYTES as usize;
        let mut kinds = [false; 2];
        for (s, sector) in page.chunks(SECTOR_BYTES).enumerate() {
            let at = base + s * SECTOR_BYTES..base + (s + 1) * SECTOR_BYTES;
            if sector == &new[at.clone()] {
                kinds[1] = true;
            } else {
                assert_eq!(sector, &old[at], "page {i} sector {s} is neither");
                kinds[0] = true;
            }
        }
        if kinds == [true, true] {
            torn += 1;
        }
    }
    assert!(torn > 0, "no page was torn");
    let c = m.counters();
    assert_eq!(c.pages_torn, torn, "{c:?}");
}

/// A file whose data was synced but whose directory was not is gone after a cut that loses
/// directory operations; with the directory synced it stays.
#[test]
fn a_file_synced_without_its_directory_disappears() {
    let mut m = mount!();
    let f = File::create(m.path().join("lost")).unwrap();
    f.write_all_at(b"data", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let f = File::create(m.path().join("kept")).unwrap();
    f.write_all_at(b"data", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    sync_dir(m.path());
    let f = File::create(m.path().join("lost-too")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut rng = Pcg64Mcg::seed_from_u64(5);
    m.power_cycle(fate(DataFate::Kept, DirFate::Lost), &mut rng)
        .unwrap();
    // "lost" was created before the directory sync, so that sync covered it.
    assert_eq!(names(m.path()), ["kept", "lost"]);
    assert_eq!(fs::read(m.path().join("kept")).unwrap(), b"data");
}

/// A rename not covered by a directory sync is undone by a cut that loses it, and kept by one
/// that keeps it; the file's synced data is the same either way.
#[test]
fn an_unsynced_rename_can_be_undone() {
    for (dirs, expected) in [(DirFate::Lost, "a"), (DirFate::Kept, "b")] {
        let mut m = mount!();
        durable_file(&m, "a", b"content");
        fs::rename(m.path().join("a"), m.path().join("b")).unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(6);
        m.power_cycle(fate(DataFate::Lost, dirs), &mut rng).unwrap();
        assert_eq!(names(m.path()), [expected]);
        assert_eq!(fs::read(m.path().join(expected)).unwrap(), b"content");
    }
}

/// A rename is atomic across a cut: the file is under its old name or its new one, never
/// both and never neither, and a file it replaced is there only if the rename is not; a sync
/// of the directory renamed into makes it durable.
#[test]
fn a_rename_is_atomic_across_a_cut() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let mut m = mount!();
        fs::create_dir(m.path().join("x")).unwrap();
        fs::create_dir(m.path().join("y")).unwrap();
        sync_dir(m.path());
        durable_file(&m, "x/f", b"new");
        sync_dir(&m.path().join("x"));
        durable_file(&m, "y/f", b"old");
        sync_dir(&m.path().join("y"));
        fs::rename(m.path().join("x/f"), m.path().join("y/f")).unwrap();
        let synced = seed % 2 == 0;
        if synced {
            sync_dir(&m.path().join("y"));
        }
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        m.power_cycle(fate(DataFate::Lost, DirFate::Each), &mut rng)
            .unwrap();
        let (x, y) = (names(&m.path().join("x")), names(&m.path().join("y")));
        let y_content = fs::read(m.path().join("y/f")).unwrap();
        let done = x.is_empty();
        assert_eq!(y, ["f"]);
        assert_eq!(y_content, if done { &b"new"[..] } else { &b"old"[..] });
        assert!(done || !synced, "a synced rename was undone");
        outcomes.insert(done);
    }
    assert_eq!(
        outcomes.len(),
        2,
        "an unsynced rename was always kept or always lost"
    );
}

/// The prefix fate keeps uncovered entry operations in the order they were made: the files
/// that survive are the first k created, for some k, and over a few cuts k varies.
#[test]
fn prefix_fate_keeps_entry_operations_in_order() {
    let mut ks = std::collections::BTreeSet::new();
    for seed in 0..6 {
        let mut m = mount!();
        for i in 0..10 {
            fs::write(m.path().join(format!("f{i}")), b"").unwrap();
        }
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        m.power_cycle(fate(DataFate::Kept, DirFate::Prefix), &mut rng)
            .unwrap();
        let present = names(m.path());
        let k = present.len();
        let mut first: Vec<String> = (0..k).map(|i| format!("f{i}")).collect();
        first.sort();
        assert_eq!(present, first);
        ks.insert(k);
    }
    assert!(ks.len() > 1, "the prefix never varied: {ks:?}");
}

/// A truncation and an extension are size changes: lost without a sync, kept by `fdatasync`
/// (which, as on Linux, writes the size a later read needs).
#[test]
fn size_changes_need_a_sync_and_fdatasync_gives_it() {
    let mut m = mount!();
    let p = durable_file(&m, "f", &pattern(1, 10_000));
    let g = durable_file(&m, "g", &pattern(2, 100));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(10)
        .unwrap();
    let gf = OpenOptions::new().write(true).open(&g).unwrap();
    gf.set_len(20_000).unwrap();
    gf.sync_data().unwrap();
    drop(gf);
    let mut rng = Pcg64Mcg::seed_from_u64(8);
    m.power_cycle(fate(DataFate::Lost, DirFate::Lost), &mut rng)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), pattern(1, 10_000));
    let mut expected = pattern(2, 100);
    expected.resize(20_000, 0);
    assert_eq!(fs::read(&g).unwrap(), expected);
    // Truncated and extended again: the bytes in between read as zeros, before and after a
    // cut that keeps it.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(10).unwrap();
    f.set_len(9000).unwrap();
    let mut expected = pattern(1, 10);
    expected.resize(9000, 0);
    assert_eq!(fs::read(&p).unwrap(), expected);
    drop(f);
    m.power_cycle(fate(DataFate::Kept, DirFate::Lost), &mut rng)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), expected);
}

/// A memory map reads what was written through `pwrite` at once, and after a cut a new map
/// reads the durable content.
#[test]
fn memory_maps_see_writes_and_then_the_durable_content() {
    let mut m = mount!();
    let old = pattern(1, 4 * PAGE_BYTES as usize);
    let p = durable_file(&m, "f", &old);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // SAFETY: the file is not truncated while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(&map[..], &old[..]);
    f.write_all_at(&pattern(9, 300), 5000).unwrap();
    assert_eq!(&map[5000..5300], &pattern(9, 300)[..]);
    drop(map);
    drop(f);
    let mut rng = Pcg64Mcg::seed_from_u64(9);
    m.power_cycle(fate(DataFate::Lost, DirFate::Lost), &mut rng)
        .unwrap();
    let f = File::open(&p).unwrap();
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(&map[..], &old[..]);
}

/// An armed cut falls at its sync: that sync and every later request fail, nothing after it
/// is durable, and an applied cut point makes the sync itself durable.
#[test]
fn an_armed_cut_falls_at_its_sync() {
    for applied in [false, true] {
        let mut m = mount!();
        let p = durable_file(&m, "f", b"one");
        let base = m.syncs();
        m.arm(CutPoint {
            sync: base + 1,
            applied,
            file: None,
        });
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"two", 0).unwrap();
        assert!(f.sync_data().is_err(), "the sync at the cut fails");
        assert!(m.is_cut());
        assert!(f.write_all_at(b"six", 0).is_err(), "the power is off");
        drop(f);
        let mut rng = Pcg64Mcg::seed_from_u64(10);
        m.power_cycle(fate(DataFate::Lost, DirFate::Lost), &mut rng)
            .unwrap();
        let expected: &[u8] = if applied { b"two" } else { b"one" };
        assert_eq!(fs::read(&p).unwrap(), expected);
    }
}

/// The reference model: random writes, truncations, extensions and `fdatasync`s on a few
/// durable files, with a cut of a random data fate after each few operations. The model keeps
/// each file's durable and visible bytes; after the cut each page (for the page fates) or
/// sector (torn) must equal the durable or the visible version, and the size one or the other,
/// exactly as the fate allows.
#[test]
fn random_operations_match_the_reference_model() {
    let mut m = mount!();
    let mut rng = Pcg64Mcg::seed_from_u64(11);
    let files = 4;
    // name -> (durable, visible)
    let mut model: BTreeMap<String, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for i in 0..files {
        let content = pattern(i as u8, rng.random_range(0..20_000));
        durable_file(&m, &format!("f{i}"), &content);
        model.insert(format!("f{i}"), (content.clone(), content));
    }
    let mut checked_units = 0u64;
    for cut in 0..40 {
        for _ in 0..rng.random_range(1..12) {
            let name = format!("f{}", rng.random_range(0..files));
            let (durable, visible) = model.get_mut(&name).unwrap();
            let f = OpenOptions::new()
                .write(true)
                .open(m.path().join(&name))
                .unwrap();
            match rng.random_range(0..10) {
                0..=5 => {
                    let at = rng.random_range(0..24_000usize);
                    let data = pattern(rng.random(), rng.random_range(1..9000));
                    f.write_all_at(&data, at as u64).unwrap();
                    if visible.len() < at + data.len() {
                        visible.resize(at + data.len(), 0);
                    }
                    visible[at..at + data.len()].copy_from_slice(&data);
                }
                6 => {
                    let len = rng.random_range(0..30_000usize);
                    f.set_len(len as u64).unwrap();
                    visible.resize(len, 0);
                }
                _ => {
                    f.sync_data().unwrap();
                    *durable = visible.clone();
                }
            }
        }
        let data = [
            DataFate::Lost,
            DataFate::Kept,
            DataFate::Pages,
            DataFate::Sectors,
        ][cut % 4];
        m.power_cycle(fate(data, DirFate::Lost), &mut rng).unwrap();
        for (name, (durable, visible)) in model.iter_mut() {
            let after = fs::read(m.path().join(name)).unwrap();
            match data {
                DataFate::Lost => assert_eq!(&after, durable, "{name} after cut {cut}"),
                DataFate::Kept => assert_eq!(&after, visible, "{name} after cut {cut}"),
                DataFate::Pages | DataFate::Sectors => {
                    assert!(
                        after.len() == durable.len() || after.len() == visible.len(),
                        "{name}: size {} is neither {} nor {}",
                        after.len(),
                        durable.len(),
                        visible.len()
                    );
                    let unit = if data == DataFate::Pages {
                        PAGE_BYTES as usize
                    } else {
                        SECTOR_BYTES
                    };
                    for (i, got) in after.chunks(unit).enumerate() {
                        let at = i * unit..i * unit + got.len();
                        let candidate = |v: &Vec<u8>| {
                            let (from, to) = (at.start.min(v.len()), at.end.min(v.len()));
                            let mut c = v[from..to].to_vec();
                            c.resize(got.len(), 0);
                            c
                        };
                        // A unit past a truncation reads zeros whichever version it came from.
                        let zeros = vec![0u8; got.len()];
                        assert!(
                            got == candidate(durable) || got == candidate(visible) || got == zeros,
                            "{name}: unit {i} after cut {cut} is neither version"
                        );
                        checked_units += 1;
                    }
                }
            }
            *durable = after.clone();
            *visible = after;
        }
    }
    assert!(checked_units > 100, "{checked_units}");
    assert_eq!(m.counters().cuts, 40);
}

/// Every file and directory under `root`, with its content (`None` for a directory).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// What `materialize` writes for a fate is what a power cycle with that fate leaves on the
/// mount, for both fates that draw nothing at random.
#[test]
fn materialize_writes_what_a_power_cycle_leaves() {
    for f in [
        fate(DataFate::Lost, DirFate::Lost),
        fate(DataFate::Kept, DirFate::Kept),
    ] {
        let mut m = mount!();
        durable_file(&m, "a", &pattern(1, 9000));
        fs::create_dir(m.path().join("sub")).unwrap();
        sync_dir(m.path());
        fs::write(m.path().join("sub/b"), pattern(2, 5000)).unwrap();
        OpenOptions::new()
            .write(true)
            .open(m.path().join("a"))
            .unwrap()
            .write_all_at(&pattern(3, 100), 8950)
            .unwrap();
        fs::rename(m.path().join("a"), m.path().join("c")).unwrap();
        let out = m.dir().join("out");
        let mut rng = Pcg64Mcg::seed_from_u64(12);
        m.materialize(f, &mut rng, &out).unwrap();
        m.power_cycle(f, &mut rng).unwrap();
        assert_eq!(snapshot(&out), snapshot(m.path()), "{f:?}");
        assert!(!snapshot(&out).is_empty());
    }
}

/// A Unix socket can be bound, renamed and connected to inside the filesystem (the channel's
/// owner serves other processes this way), and a cut that loses its entry leaves no name.
#[test]
fn unix_sockets_bind_rename_and_connect() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let mut m = mount!();
    let tmp = m.path().join(".sock.tmp");
    let listener = UnixListener::bind(&tmp).unwrap();
    fs::rename(&tmp, m.path().join("sock")).unwrap();
    let mut client = UnixStream::connect(m.path().join("sock")).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    drop((client, server, listener));
    let mut rng = Pcg64Mcg::seed_from_u64(13);
    m.power_cycle(fate(DataFate::Lost, DirFate::Lost), &mut rng)
        .unwrap();
    assert!(names(m.path()).is_empty());
}
