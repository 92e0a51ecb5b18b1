//! The flash adapter's async side (`AsyncFlashStorage`, `AsyncChannel`) on simulated NOR parts
//! behind `Yielding`: what it stages reads back, a failure met while the core waited reaches
//! the caller, and a producer task and an uplink task share one channel, as an embassy
//! application would (an `embassy_sync` mutex, tasks joined on one executor), across power cuts
//! at random programs and erases, with the witness's verdict at every boot.

use core::cell::{Cell, RefCell};

use embassy_futures::block_on;
use embassy_futures::join::join3;
use embassy_futures::yield_now;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use sluicegate_core::{Config, Error, NoKeys, Region, Storage};
use sluicegate_flash::{AsyncChannel, AsyncFlashStorage};
use sluicegate_sim::{NorError, SimNor, Yielding};

type Part = Yielding<SimNor<4, 256>>;
type Store = AsyncFlashStorage<Part, Part, Part>;
type Chan = AsyncChannel<Part, Part, Part, Vec<u64>>;

const CONFIG: Config = Config::new(64, 16, 2, 32, 512)
    .with_checkpoints(16, 0, 0)
    .with_log_segments(16);

fn parts() -> (Part, Part, Part) {
    let log = SimNor::<4, 256>::new(16 * 512, 0xFF);
    let mut checkpoint = SimNor::new(2048, 0xFF);
    let mut backup = SimNor::new(2048, 0xFF);
    checkpoint.share_power_with(&log);
    backup.share_power_with(&log);
    (
        Yielding::new(log),
        Yielding::new(checkpoint),
        Yielding::new(backup),
    )
}

fn storage(p: (Part, Part, Part)) -> Store {
    AsyncFlashStorage::new(p.0, p.1, p.2).expect("whole blocks")
}

#[test]
fn staged_writes_read_back_and_reach_the_part_in_order_when_flushed() {
    let mut s = storage(parts());
    s.set_staging(true);
    s.erase(Region::Log, 0, 512).unwrap();
    s.write(Region::Log, 0, &[1, 2, 3, 4]).unwrap();
    s.write(Region::Log, 4, &[5, 6, 7, 8]).unwrap();
    assert_eq!(s.staged(), 3);
    assert_eq!(
        s.devices().0.inner().image()[..4],
        [0xFF; 4],
        "nothing made yet"
    );
    // A read of a staged range makes the staged operations first.
    let mut back = [0u8; 8];
    s.read(Region::Log, 0, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!((s.staged(), s.counters().blocked), (0, 3));
    s.write(Region::Log, 8, &[9; 4]).unwrap();
    block_on(s.flush()).unwrap();
    assert_eq!(s.counters().awaited, 1);
    assert_eq!(s.devices().0.inner().image()[8..12], [9; 4]);
    assert!(s.devices().0.inner().violations().is_empty());
}

/// A stage of 2 operations: a commit that starts a checkpoint overflows it, so the core waits
/// for the staged operations, and a checkpoint forgives a failed write.
type SmallStage = AsyncChannel<Part, Part, Part, Vec<u64>, NoKeys, 64, 2>;

#[test]
fn a_commit_whose_operations_failed_never_returns_ok_and_poisons_the_channel() {
    const EVERY: Config = Config::new(64, 16, 2, 32, 512)
        .with_checkpoints(1, 0, 0)
        .with_log_segments(16);
    let mut blocked_failures = 0;
    for cut in 0..40 {
        let p = parts();
        let s = AsyncFlashStorage::<_, _, _, 64, 2>::new(p.0, p.1, p.2).unwrap();
        let mut ch: SmallStage =
            block_on(SmallStage::open(s, vec![0; EVERY.memory_words()], EVERY)).expect("open");
        let t = block_on(ch.begin()).unwrap();
        block_on(ch.put(t, b"first")).unwrap();
        block_on(ch.commit(t)).unwrap();
        let t = block_on(ch.begin()).unwrap();
        block_on(ch.put(t, b"second")).unwrap();
        let before = ch.counters().blocked;
        ch.storage_mut()
            .devices_mut()
            .0
            .inner_mut()
            .cut_power_after(cut);
        let committed = block_on(ch.commit(t));
        let lost_power = ch.storage().devices().0.inner().is_powered_off();
        if lost_power {
            let e = committed.expect_err("a commit whose flash operations failed returned Ok");
            assert!(
                matches!(&e, Error::Storage(f) if f.device_error() == Some(&NorError::PowerLoss)),
                "{e:?}"
            );
            assert!(matches!(block_on(ch.begin()), Err(Error::Poisoned)));
            if ch.counters().blocked > before {
                blocked_failures += 1;
            }
        } else {
            committed.unwrap();
        }
    }
    assert!(
        blocked_failures > 0,
        "no cut fell in an operation the core waited for"
    );
}

/// What the witness knows of each reading.
#[derive(Default)]
struct Ledger {
    next: u32,
    acked: Vec<u32>,
    /// Readings whose put commit failed at a cut: they may or may not be queued.
    put_in_doubt: Vec<u32>,
    /// Readings whose take committed.
    delivered: Vec<u32>,
    /// Readings whose take commit failed at a cut: taken for good or not.
    take_in_doubt: Vec<u32>,
}

/// One boot: a producer task puts a reading per turn, an uplink task takes batches of up to 8
/// (rolling one in four back, as a lost acknowledgement), and a heartbeat task counts how often
/// it ran while the others awaited the flash; until the power fails or `turns` pass. Returns
/// the heartbeats seen during commits.
async fn boot(ch: &Mutex<NoopRawMutex, Chan>, ledger: &RefCell<Ledger>, turns: u32) -> u64 {
    let beats = Cell::new(0u64);
    let stop = Cell::new(false);
    let during_commits = Cell::new(0u64);
    let producer = async {
        for turn in 0..turns {
            let seq = ledger.borrow().next;
            ledger.borrow_mut().next += 1;
            let mut c = ch.lock().await;
            let Ok(t) = c.begin().await else { break };
            if c.put(t, &seq.to_le_bytes()).await.is_err() {
                break;
            }
            let before = beats.get();
            match c.commit(t).await {
                Ok(()) => ledger.borrow_mut().acked.push(seq),
                Err(Error::ChannelFull | Error::LogFull) => {
                    let _ = c.rollback(t).await;
                }
                Err(_) => {
                    ledger.borrow_mut().put_in_doubt.push(seq);
                    break;
                }
            }
            during_commits.set(during_commits.get() + beats.get() - before);
            drop(c);
            if turn % 2 == 0 {
                yield_now().await;
            }
        }
        stop.set(true);
    };
    let uplink = async {
        let mut round = 0u32;
        while !stop.get() {
            round += 1;
            let t = match ch.lock().await.begin().await {
                Ok(t) => t,
                Err(Error::TooManyTransactions) => {
                    yield_now().await;
                    continue;
                }
                Err(_) => break,
            };
            let mut batch = Vec::new();
            let mut failed = false;
            while batch.len() < 8 {
                let mut buf = [0u8; 32];
                match ch.lock().await.take(t, &mut buf).await {
                    Ok(Some(4)) => batch.push(u32::from_le_bytes(buf[..4].try_into().unwrap())),
                    Ok(Some(n)) => panic!("a reading of {n} bytes"),
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
            // The network: the batch is in flight for a while.
            for _ in 0..3 {
                yield_now().await;
            }
            let mut c = ch.lock().await;
            if round % 4 == 0 || batch.is_empty() {
                if c.rollback(t).await.is_err() {
                    break;
                }
                continue;
            }
            match c.commit(t).await {
                Ok(()) => ledger.borrow_mut().delivered.extend(&batch),
                Err(_) => {
                    ledger.borrow_mut().take_in_doubt.extend(&batch);
                    break;
                }
            }
        }
    };
    let heartbeat = async {
        while !stop.get() {
            beats.set(beats.get() + 1);
            yield_now().await;
        }
    };
    join3(producer, uplink, heartbeat).await;
    during_commits.get()
}

#[test]
fn a_producer_task_and_an_uplink_task_share_one_channel_across_power_cuts() {
    let ledger = RefCell::new(Ledger::default());
    let mut devices = parts();
    let mut rng = 0x2545_F491_u64;
    let mut rand = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut beats, mut awaited, mut blocked) = (0u64, 0u64, 0u64);
    for boot_no in 0..150u64 {
        devices.0.inner_mut().cut_power_after(rand(600));
        let opened = block_on(Chan::open(
            storage(devices.clone()),
            vec![0; CONFIG.memory_words()],
            CONFIG,
        ));
        let ch = match opened {
            Ok(ch) => Mutex::new(ch),
            Err(_) => {
                for (i, p) in [&mut devices.0, &mut devices.1, &mut devices.2]
                    .into_iter()
                    .enumerate()
                {
                    p.inner_mut().reboot(boot_no * 3 + i as u64);
                }
                continue;
            }
        };
        beats += block_on(boot(&ch, &ledger, 200));
        let ch = ch.into_inner();
        awaited += ch.counters().awaited;
        blocked += ch.counters().blocked;
        let (l, c, b) = ch.into_parts().0.into_devices();
        devices = (l, c, b);
        for (i, p) in [&mut devices.0, &mut devices.1, &mut devices.2]
            .into_iter()
            .enumerate()
        {
            assert!(
                p.inner().violations().is_empty(),
                "{:?}",
                p.inner().violations()
            );
            p.inner_mut().reboot(boot_no * 3 + i as u64);
        }
    }
    // Drain with the power on.
    let mut ch = block_on(Chan::open(
        storage(devices),
        vec![0; CONFIG.memory_words()],
        CONFIG,
    ))
    .expect("open after the cuts");
    let mut l = ledger.into_inner();
    loop {
        let t = block_on(ch.begin()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 32];
        while got.len() < 16 {
            match block_on(ch.take(t, &mut buf)).unwrap() {
                Some(4) => got.push(u32::from_le_bytes(buf[..4].try_into().unwrap())),
                Some(n) => panic!("a reading of {n} bytes"),
                None => break,
            }
        }
        block_on(ch.commit(t)).unwrap();
        if got.is_empty() {
            break;
        }
        l.delivered.extend(got);
    }
    let mut once = l.delivered.clone();
    once.sort_unstable();
    let n = once.len();
    once.dedup();
    assert_eq!(
        once.len(),
        n,
        "a reading was delivered again after its take committed"
    );
    let mut reached = once.clone();
    reached.extend(&l.take_in_doubt);
    reached.sort_unstable();
    for s in &l.acked {
        assert!(
            reached.binary_search(s).is_ok(),
            "acknowledged reading {s} lost"
        );
    }
    for s in &once {
        assert!(
            l.acked.contains(s) || l.put_in_doubt.contains(s),
            "reading {s} delivered but never acknowledged nor in flight"
        );
    }
    eprintln!(
        "{} readings acknowledged, {} delivered; {} programs and erases awaited, {} made while the core waited; the heartbeat ran {} times during commits",
        l.acked.len(),
        once.len(),
        awaited,
        blocked,
        beats
    );
    assert!(l.acked.len() > 1000, "{} acknowledged", l.acked.len());
    assert!(
        beats > 0,
        "no other task ran while commits awaited the flash"
    );
    assert!(awaited > blocked, "{awaited} awaited, {blocked} blocked");
}
