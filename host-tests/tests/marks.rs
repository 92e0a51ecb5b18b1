//! Marks: a caller's progress committed in the same transaction as its events. These show that
//! a mark changes exactly when its commit takes effect, through replay, checkpoints, the backup,
//! sealing and power cuts at every step of a workload (docs/guarantees.md, "Marks").

use sluicegate_core::{
    Channel, Config, Error, KeyProvider, NoKeys, RecoveryPath, Region, StaticKeys,
};
use sluicegate_sim::{CrashPolicy, SimStorage};

mod common;
use common::{peek_all, Sim};

type Chan<'a, K> = Channel<&'a mut Sim, &'a mut [u64], K>;

/// 16 events, transactions of 4, 3 at once, 512-byte segments, 8 of them; two mark streams of
/// 16 bytes; a checkpoint every 3 commits.
const CONFIG: Config = Config::new(16, 4, 3, 64, 512)
    .with_checkpoint_step(8)
    .with_checkpoints(3, 0, 0)
    .with_marks(2, 16);
const PUTS: u16 = 0;
const TAKES: u16 = 1;

fn sim(checkpoints: bool) -> Sim {
    if checkpoints {
        SimStorage::with_checkpoints(8 * 512, 1024, 0xFF)
    } else {
        SimStorage::new(8 * 512, 0xFF)
    }
}

fn open<'a, K: KeyProvider>(
    s: &'a mut Sim,
    mem: &'a mut [u64],
    keys: K,
) -> Result<Chan<'a, K>, Error<<&'a mut Sim as sluicegate_core::ErrorType>::Error>> {
    Channel::open_with_keys(s, mem, CONFIG, keys)
}

fn mark<K: KeyProvider>(ch: &Chan<'_, K>, stream: u16) -> Option<u64> {
    let mut buf = [0u8; 16];
    let n = ch.mark(stream, &mut buf)?;
    assert_eq!(n, 8, "marks here are u64s");
    Some(u64::from_le_bytes(buf[..8].try_into().unwrap()))
}

fn event(i: u64) -> Vec<u8> {
    format!("e{i}").into_bytes()
}

/// The channel agrees with its marks: the queue is exactly the events from the take mark to
/// the put mark.
fn check_agrees<K: KeyProvider>(ch: &mut Chan<'_, K>, what: &str) -> (u64, u64) {
    let (p, t) = (mark(ch, PUTS).unwrap_or(0), mark(ch, TAKES).unwrap_or(0));
    let expected: Vec<Vec<u8>> = (t..p).map(event).collect();
    let r = *ch.recovery();
    assert_eq!(
        peek_all(ch),
        expected,
        "{what}: puts mark {p}, takes mark {t}, {r:?}"
    );
    (p, t)
}

/// One step of the workload from the marks `(p, t)`: a put batch marked with its end, or a take
/// batch marked with its end. Returns the new marks once the commit returned.
fn step<K: KeyProvider>(
    ch: &mut Chan<'_, K>,
    rng: &mut u64,
    (p, t): (u64, u64),
) -> Result<(u64, u64), String> {
    *rng = rng
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = 1 + (*rng >> 33) % 4;
    let e = |e: Error<_>| format!("{e}");
    let tx = ch.begin().map_err(e)?;
    if p - t + n <= 12 && (*rng >> 40) % 3 != 0 {
        for i in p..p + n {
            ch.put(tx, &event(i)).map_err(e)?;
        }
        ch.set_mark(tx, PUTS, &(p + n).to_le_bytes()).map_err(e)?;
        ch.commit(tx).map_err(e)?;
        Ok((p + n, t))
    } else {
        let mut buf = [0u8; 64];
        let mut taken = 0;
        while taken < n {
            match ch.take(tx, &mut buf).map_err(e)? {
                Some(k) => {
                    assert_eq!(&buf[..k], &event(t + taken)[..], "takes in order");
                    taken += 1;
                }
                None => break,
            }
        }
        ch.set_mark(tx, TAKES, &(t + taken).to_le_bytes())
            .map_err(e)?;
        ch.commit(tx).map_err(e)?;
        Ok((p, t + taken))
    }
}

/// A mark takes effect with its commit and never without it: a rolled-back transaction's mark
/// is dropped, a later commit replaces it, a transaction with a mark and no event commits the
/// mark alone, and all of it survives a crash, by full replay and from a checkpoint.
#[test]
fn marks_change_with_their_commits_only() {
    for checkpoints in [false, true] {
        let mut s = sim(checkpoints);
        let mut mem = vec![0u64; CONFIG.memory_words()];
        {
            let mut ch = open(&mut s, &mut mem, NoKeys).unwrap();
            assert_eq!(mark(&ch, PUTS), None, "a new channel has no marks");
            let tx = ch.begin().unwrap();
            ch.put(tx, b"a").unwrap();
            ch.set_mark(tx, PUTS, &1u64.to_le_bytes()).unwrap();
            ch.commit(tx).unwrap();
            assert_eq!(mark(&ch, PUTS), Some(1));
            let tx = ch.begin().unwrap();
            ch.put(tx, b"b").unwrap();
            ch.set_mark(tx, PUTS, &2u64.to_le_bytes()).unwrap();
            ch.rollback(tx).unwrap();
            assert_eq!(mark(&ch, PUTS), Some(1), "a rollback drops its mark");
            let tx = ch.begin().unwrap();
            ch.set_mark(tx, TAKES, &7u64.to_le_bytes()).unwrap();
            ch.commit(tx).unwrap();
            assert_eq!(mark(&ch, TAKES), Some(7), "a mark alone commits");
            let tx = ch.begin().unwrap();
            assert_eq!(
                ch.set_mark(tx, 2, b"x").unwrap_err(),
                Error::BadMark,
                "stream out of range"
            );
            assert_eq!(ch.set_mark(tx, PUTS, &[0; 17]).unwrap_err(), Error::BadMark);
            ch.rollback(tx).unwrap();
            // A put whose commit never returned: its mark must not count.
            let tx = ch.begin().unwrap();
            ch.put(tx, b"c").unwrap();
            ch.set_mark(tx, PUTS, &3u64.to_le_bytes()).unwrap();
        }
        s.reboot(1, CrashPolicy::LoseUnsynced);
        let mut ch = open(&mut s, &mut mem, NoKeys).unwrap();
        let path = ch.recovery().path;
        assert_eq!(mark(&ch, PUTS), Some(1), "{path:?}");
        assert_eq!(mark(&ch, TAKES), Some(7), "{path:?}");
        assert_eq!(peek_all(&mut ch), vec![b"a".to_vec()]);
    }
}

/// Power cut after every storage operation of a workload of marked put and take batches
/// (segments rolling and reused, checkpoints every 3 commits), under each crash policy: after
/// recovery the queue is exactly the events between the take mark and the put mark, and every
/// commit that returned is covered by the marks. Then the run goes on from the marks it found,
/// and a clean reopen agrees again.
#[test]
fn marks_agree_with_the_queue_after_a_power_cut_anywhere() {
    for_each_cut(NoKeys, 1);
}

/// The same with every segment and checkpoint sealed, at every third cut.
#[test]
fn sealed_marks_agree_with_the_queue_after_a_power_cut_anywhere() {
    for_each_cut(StaticKeys::new(&[(1, [0x42; 32])], Some(1)), 3);
}

fn for_each_cut<K: KeyProvider + Clone>(keys: K, every: u64) {
    const STEPS: usize = 90;
    let mut mem = vec![0u64; CONFIG.memory_words()];
    // One uncut run to count the storage operations.
    let mut s = sim(true);
    let total = {
        let mut ch = open(&mut s, &mut mem, keys.clone()).unwrap();
        let (mut rng, mut at) = (9u64, (0, 0));
        for _ in 0..STEPS {
            at = step(&mut ch, &mut rng, at).unwrap();
        }
        assert!(ch.stats().segments_opened > 8, "the ring wraps");
        assert!(ch.stats().checkpoints > 5);
        drop(ch);
        s.counters().mutations()
    };
    let mut paths = std::collections::BTreeSet::new();
    for k in (0..total).step_by(every as usize) {
        for policy in [
            CrashPolicy::LoseUnsynced,
            CrashPolicy::KeepUnsynced,
            CrashPolicy::Random,
        ] {
            let mut s = sim(true);
            s.cut_power_after(k);
            let mut acked = (0, 0);
            if let Ok(mut ch) = open(&mut s, &mut mem, keys.clone()) {
                let mut rng = 9u64;
                for _ in 0..STEPS {
                    match step(&mut ch, &mut rng, acked) {
                        Ok(next) => acked = next,
                        Err(_) => break,
                    }
                }
            }
            s.reboot(k, policy);
            let what = format!("cut at {k} of {total}, {policy:?}");
            let mut ch = open(&mut s, &mut mem, keys.clone()).expect(&what);
            paths.insert(ch.recovery().path.name());
            let (p, t) = check_agrees(&mut ch, &what);
            assert!(
                p >= acked.0 && t >= acked.1,
                "{what}: {acked:?} was acknowledged, marks ({p}, {t})"
            );
            let mut rng = k;
            let mut at = (p, t);
            for _ in 0..5 {
                at = step(&mut ch, &mut rng, at).expect(&what);
            }
            drop(ch);
            let mut ch = open(&mut s, &mut mem, keys.clone()).expect(&what);
            assert_eq!(check_agrees(&mut ch, &what), at, "{what}: after going on");
        }
    }
    assert!(
        paths.contains("checkpoint") && paths.contains("replay"),
        "{paths:?}"
    );
}

/// A checkpoint whose slot is damaged falls back to the backup, whose marks are older: replay
/// from the backup's position re-applies the marks committed after it.
#[test]
fn marks_survive_falling_back_to_the_backup() {
    let mut s = sim(true);
    let mut mem = vec![0u64; CONFIG.memory_words()];
    let at = {
        let mut ch = open(&mut s, &mut mem, NoKeys).unwrap();
        let (mut rng, mut at) = (5u64, (0, 0));
        for _ in 0..20 {
            at = step(&mut ch, &mut rng, at).unwrap();
        }
        ch.checkpoint().unwrap();
        for _ in 0..2 {
            at = step(&mut ch, &mut rng, at).unwrap();
        }
        ch.checkpoint().unwrap();
        at
    };
    // The newest checkpoint is in the slot written last; damage its started mark.
    let mut newest = None;
    for region in [Region::Checkpoint, Region::Backup] {
        let b = s.image(region);
        let seq = u64::from_le_bytes(b[16..24].try_into().unwrap());
        if newest.is_none_or(|(_, n)| seq > n) {
            newest = Some((region, seq));
        }
    }
    // Damage the newest checkpoint's complete mark: the slot stays recognisably newer.
    let (region, _) = newest.unwrap();
    let entries = u64::from_le_bytes(s.image(region)[48..56].try_into().unwrap());
    s.flip_bit(
        region,
        64 + (8 * entries as usize).next_multiple_of(4) + 9,
        1,
    );
    s.reboot(0, CrashPolicy::LoseUnsynced);
    let mut ch = open(&mut s, &mut mem, NoKeys).unwrap();
    assert_eq!(ch.recovery().path, RecoveryPath::Backup);
    assert_eq!(check_agrees(&mut ch, "backup"), at);
}
