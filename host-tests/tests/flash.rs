//! The flash adapter on simulated NOR parts: the parts' own rules, the adapter's geometry
//! checks, the pinned flash operation counts per put, take and commit, wear, partitions and
//! the interrupt-safe handle, and exhaustive power cuts for every word size.

use std::cell::RefCell;

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use sluicegate_core::{Channel, Config, Region, Storage};
use sluicegate_flash::{FlashStorage, GeometryError, Partition, SharedChannel, Wear};
use sluicegate_sim::model::{exhaustive_on, FlashSim, Scenario};
use sluicegate_sim::{NorCounters, SimNor};

/// 4 KiB erase blocks, 4-byte words: a common internal-flash geometry.
type Part = SimNor<4, 4096>;

fn flash(log_blocks: usize, erased: u8) -> FlashStorage<Part, Part, Part> {
    let log = Part::new(log_blocks * 4096, erased);
    let mut cp = Part::new(2 * 4096, erased);
    let mut bk = Part::new(2 * 4096, erased);
    cp.share_power_with(&log);
    bk.share_power_with(&log);
    FlashStorage::new(log, cp, bk).unwrap()
}

fn total(s: &FlashStorage<Part, Part, Part>) -> NorCounters {
    let (l, c, b) = s.devices();
    let mut t = NorCounters::default();
    for p in [l, c, b] {
        let n = p.counters();
        t.reads += n.reads;
        t.writes += n.writes;
        t.erases += n.erases;
        t.bytes_written += n.bytes_written;
        t.blocks_erased += n.blocks_erased;
    }
    t
}

fn reset(s: &mut FlashStorage<Part, Part, Part>) {
    let (l, c, b) = s.devices_mut();
    for p in [l, c, b] {
        p.reset_counters();
    }
}

#[test]
fn nor_part_enforces_write_once_and_and_writes() {
    let mut p: SimNor<4, 256> = SimNor::new(512, 0xFF);
    p.write(0, &[0xF0, 0x0F, 0xFF, 0x00]).unwrap();
    let mut b = [0u8; 4];
    p.read(0, &mut b).unwrap();
    assert_eq!(b, [0xF0, 0x0F, 0xFF, 0x00]);
    assert!(p.violations().is_empty());
    // A second program of the same word is a broken rule, even one that only clears bits.
    p.write(0, &[0x00, 0x00, 0x00, 0x00]).unwrap();
    assert_eq!(p.violations().len(), 1, "{:?}", p.violations());
    // After an erase the word may be programmed again.
    p.erase(0, 256).unwrap();
    p.write(0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(p.violations().len(), 1);
    // Misaligned programs are refused.
    assert!(p.write(2, &[0; 4]).is_err());
    assert!(p.erase(0, 100).is_err());
}

#[test]
fn nor_part_erased_value_is_configurable_and_writes_move_bits_away_from_it() {
    let mut p: SimNor<1, 256> = SimNor::new(256, 0x00);
    let mut b = [9u8; 2];
    p.read(0, &mut b).unwrap();
    assert_eq!(b, [0, 0]);
    p.write(0, &[0xA5]).unwrap();
    p.read(0, &mut b[..1]).unwrap();
    assert_eq!(b[0], 0xA5);
    assert_eq!(p.erased_value(), 0x00);
}

#[test]
fn an_interrupted_program_leaves_bits_that_read_differently_until_erased() {
    // Find a seed whose torn program leaves unstable bits (the tear mode is random).
    let mut found = false;
    for seed in 0..64 {
        let mut p: SimNor<32, 256> = SimNor::new(256, 0xFF);
        p.reboot(seed);
        p.cut_power_after(0);
        assert!(p.write(0, &[0u8; 32]).is_err(), "the cut program fails");
        assert!(p.is_powered_off());
        p.reboot(seed + 1000);
        if p.unstable_bits() == 0 {
            continue;
        }
        let reads: Vec<[u8; 32]> = (0..16)
            .map(|_| {
                let mut b = [0u8; 32];
                p.read(0, &mut b).unwrap();
                b
            })
            .collect();
        assert!(
            reads.iter().any(|r| r != &reads[0]),
            "unstable bits differ between reads"
        );
        // Erasing the block makes its bits stable again.
        p.erase(0, 256).unwrap();
        assert_eq!(p.unstable_bits(), 0);
        found = true;
        break;
    }
    assert!(found, "some tear leaves unstable bits");
}

#[test]
fn an_interrupted_erase_can_leave_garbage_that_must_be_erased_again() {
    let mut garbage = 0;
    for seed in 0..32 {
        let mut p: SimNor<4, 256> = SimNor::new(256 * 4, 0xFF);
        p.reboot(seed);
        p.cut_power_after(0);
        assert!(p.erase(0, 1024).is_err());
        p.reboot(seed);
        if p.image().iter().any(|&b| b != 0xFF) {
            garbage += 1;
            // Writing into garbage without an erase is a broken rule.
            let at = p.image().iter().position(|&b| b != 0xFF).unwrap() / 256 * 256;
            p.write(at as u32, &[0; 4]).unwrap();
            assert!(!p.violations().is_empty());
        }
    }
    assert!(garbage > 0, "some interrupted erases leave garbage");
}

/// A driver reporting a capacity that is not whole erase blocks (a misconfigured partition).
struct Odd(SimNor<4, 256>);

impl embedded_storage::nor_flash::ErrorType for Odd {
    type Error = sluicegate_sim::NorError;
}

impl ReadNorFlash for Odd {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        1000
    }
}

impl NorFlash for Odd {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 256;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

#[test]
fn geometry_is_checked_when_the_storage_is_made() {
    let part = |bytes| SimNor::<4, 256>::new(bytes, 0xFF);
    let odd = Odd(part(1024));
    let Err(e) = FlashStorage::new(odd, Odd(part(256)), Odd(part(256))) else {
        panic!("a 1000-byte log is refused");
    };
    assert_eq!(
        e,
        GeometryError::NotWholeBlocks {
            region: Region::Log,
            bytes: 1000,
            erase_size: 256
        }
    );
    assert!(e.to_string().contains("1000"), "{e}");
    assert!(matches!(
        FlashStorage::new(part(0), part(512), part(512)),
        Err(GeometryError::EmptyLog)
    ));
    assert!(matches!(
        FlashStorage::new(part(2048), part(512), part(768)),
        Err(GeometryError::SlotsDiffer { .. })
    ));
    let msg = FlashStorage::new(part(2048), part(512), part(768))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("512") && msg.contains("768"), "{msg}");
    assert!(FlashStorage::new(part(2048), part(512), part(512)).is_ok());
}

/// The flash operations each channel operation costs, pinned so a change that costs wear fails
/// here: 32-byte readings, 4-byte words, 4 KiB blocks, checkpoints off.
#[test]
fn flash_operations_per_put_take_and_commit_are_pinned() {
    const CONFIG: Config = Config::new(64, 8, 2, 32, 4096);
    let mut storage = flash(8, 0xFF);
    let mut memory = vec![0u64; CONFIG.memory_words()];
    let reading = [0x5Au8; 32];
    let mut ch = Channel::open(&mut storage, &mut memory[..], CONFIG).unwrap();
    // The first write of a run opens a segment; do it once so the counts below are steady.
    let tx = ch.begin().unwrap();
    ch.put(tx, &reading).unwrap();
    ch.commit(tx).unwrap();
    reset(ch.storage_mut());

    let tx = ch.begin().unwrap();
    ch.put(tx, &reading).unwrap();
    let put = total(ch.storage());
    reset(ch.storage_mut());
    ch.commit(tx).unwrap();
    let put_commit = total(ch.storage());
    reset(ch.storage_mut());

    let tx = ch.begin().unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(ch.take(tx, &mut buf).unwrap(), Some(32));
    let take = total(ch.storage());
    reset(ch.storage_mut());
    ch.commit(tx).unwrap();
    let take_commit = total(ch.storage());

    let pinned = |c: NorCounters| (c.writes, c.bytes_written, c.erases);
    // put: one program of header and body (16 + 32 bytes).
    assert_eq!(pinned(put), (1, 48, 0), "put: {put:?}");
    // put commit: one program of the commit record (header, durable mark, one pointer).
    assert_eq!(pinned(put_commit), (1, 32, 0), "put commit: {put_commit:?}");
    // take: no program at all; one read of the header and one of the body.
    assert_eq!(pinned(take), (0, 0, 0), "take: {take:?}");
    assert_eq!(take.reads, 2, "take: {take:?}");
    // take commit: one program, like the put commit.
    assert_eq!(
        pinned(take_commit),
        (1, 32, 0),
        "take commit: {take_commit:?}"
    );
}

/// The log's segments are erased in turn; the wear the adapter reports from the segment
/// sequence numbers on flash matches the erases the part counted, block by block.
#[test]
fn wear_is_even_over_the_ring_and_reported_from_what_is_on_flash() {
    const CONFIG: Config = Config::new(16, 8, 2, 32, 4096);
    let mut storage = flash(6, 0xFF);
    let mut memory = vec![0u64; CONFIG.memory_words()];
    let mut id = 0u32;
    for round in 0..3 {
        let mut ch = Channel::open(&mut storage, &mut memory[..], CONFIG).unwrap();
        for _ in 0..400 {
            let tx = ch.begin().unwrap();
            ch.put(tx, &[id as u8; 32]).unwrap();
            ch.commit(tx).unwrap();
            id += 1;
            let tx = ch.begin().unwrap();
            let mut buf = [0u8; 32];
            ch.take(tx, &mut buf).unwrap().unwrap();
            ch.commit(tx).unwrap();
        }
        let stats = ch.stats();
        let wear = Wear::of_log(&stats);
        let erases = storage.devices().0.block_erases().to_vec();
        for (slot, &n) in erases.iter().enumerate() {
            assert_eq!(
                Wear::of_slot(&stats, slot as u64),
                n as u64,
                "round {round}: slot {slot}: {erases:?}, {wear:?}"
            );
        }
        let (min, max) = (erases.iter().min().unwrap(), erases.iter().max().unwrap());
        assert!(max - min <= 1, "even wear: {erases:?}");
        assert_eq!((wear.min, wear.max), (*min as u64, *max as u64));
        assert_eq!(wear.total, erases.iter().map(|&n| n as u64).sum::<u64>());
        assert!(wear.max >= 2, "the ring went round: {wear:?}");
    }
}

/// One part cut into three partitions behind a critical section, a channel on them in a shared
/// handle: puts from an "interrupt" (a closure run between the main loop's calls) while a take
/// transaction stays open, then a reopen that finds everything.
#[test]
fn shared_handle_on_partitions_of_one_part() {
    const CONFIG: Config = Config::new(32, 8, 3, 32, 4096);
    let chip = critical_section::Mutex::new(RefCell::new(Part::new(12 * 4096, 0xFF)));
    let log = Partition::new(&chip, 0, 8 * 4096).unwrap();
    let cp = Partition::new(&chip, 8 * 4096, 2 * 4096).unwrap();
    let bk = Partition::new(&chip, 10 * 4096, 2 * 4096).unwrap();
    assert!(
        Partition::new(&chip, 100, 4096).is_none(),
        "not on a block boundary"
    );
    assert!(
        Partition::new(&chip, 8 * 4096, 8 * 4096).is_none(),
        "past the end"
    );
    let storage = FlashStorage::new(log, cp, bk).unwrap();
    let mut memory = vec![0u64; CONFIG.memory_words()];
    let shared = SharedChannel::new();
    assert!(shared.put_committed(b"none installed").is_err());
    shared.install(Channel::open(storage, &mut memory[..], CONFIG).unwrap());
    let interrupt = |n: u8| shared.put_committed(&[n; 32]).unwrap();
    interrupt(1);
    interrupt(2);
    let tx = shared.with(|ch| ch.begin()).unwrap().unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(
        shared.with(|ch| ch.take(tx, &mut buf)).unwrap().unwrap(),
        Some(32)
    );
    assert_eq!(buf, [1; 32]);
    interrupt(3); // while the take is open
    shared.with(|ch| ch.commit(tx)).unwrap().unwrap();
    assert_eq!(shared.stats().unwrap().depth, 2);
    let ch = shared.remove().unwrap();
    let (storage, memory) = ch.into_parts();
    let mut ch = Channel::open(storage, memory, CONFIG).unwrap();
    let tx = ch.begin().unwrap();
    for want in [2u8, 3] {
        assert_eq!(ch.take(tx, &mut buf).unwrap(), Some(32));
        assert_eq!(buf, [want; 32]);
    }
    assert_eq!(ch.take(tx, &mut buf).unwrap(), None);
}

/// Crash points of a power cut at every program and erase of seeds `0..seeds`, for word sizes
/// 1, 4, 8, 16 and 32; each recovery judged by the model checker.
fn exhaustive_every_word_size(seeds: u64, scenario: fn(u64) -> Scenario) -> [u64; 5] {
    fn all<const W: usize>(seeds: u64, scenario: fn(u64) -> Scenario) -> u64 {
        (0..seeds)
            .map(|seed| {
                exhaustive_on::<FlashSim<W, 256>>(&scenario(seed), seed)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .0
            })
            .sum()
    }
    [
        all::<1>(seeds, scenario),
        all::<4>(seeds, scenario),
        all::<8>(seeds, scenario),
        all::<16>(seeds, scenario),
        all::<32>(seeds, scenario),
    ]
}

/// Exhaustive power cuts through the flash adapter for every word size: a cut at every program
/// and erase of small workloads. (Bits an interrupted program left keep their value here; the
/// next test makes them read differently.)
#[test]
fn power_cut_at_every_program_and_erase_for_every_word_size() {
    let points = exhaustive_every_word_size(4, |seed| Scenario::varied(seed, 60));
    println!("crash points per word size 1, 4, 8, 16, 32: {points:?}");
    assert!(points.iter().all(|&n| n > 100), "{points:?}");
}

/// As above, with the bits a cut program left half-done reading differently from one read to
/// the next, and checkpoint regions (intact): the verdict the first recovery reaches on the
/// record in flight holds for every later recovery, because the open checkpoints it.
#[test]
fn power_cut_at_every_program_and_erase_with_unstable_reads() {
    let points = exhaustive_every_word_size(8, |seed| {
        let mut s = Scenario::small(60).with_checkpoints(1 + seed as u32 % 3);
        s.erased = if seed % 2 == 0 { 0xFF } else { 0x00 };
        s.concurrent = 1 + (seed / 2 % 3) as usize;
        s.damage_checkpoints = 0.0;
        s.unstable_reads = true;
        s
    });
    println!("crash points per word size 1, 4, 8, 16, 32: {points:?}");
    assert!(points.iter().all(|&n| n > 100), "{points:?}");
}

#[test]
fn storage_reads_any_byte_range_and_sync_is_free() {
    let mut s = flash(2, 0xFF);
    s.write(Region::Log, 8, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut b = [0u8; 5];
    s.read(Region::Log, 9, &mut b).unwrap();
    assert_eq!(b, [2, 3, 4, 5, 6]);
    reset(&mut s);
    s.sync(Region::Log).unwrap();
    assert_eq!(total(&s), NorCounters::default());
    assert!(
        s.read(Region::Log, 2 * 4096 - 2, &mut b).is_err(),
        "beyond the partition"
    );
}

/// A storage whose last-written word reads differently every other time, as cells a cut
/// program left half-done do: replay must apply a commit record only from the very bytes whose
/// CRC it checked, never from a second read that came back different.
struct Flaky<'a> {
    inner: &'a mut sluicegate_sim::SimStorage<4, 256>,
    last_write: Option<(u64, usize)>,
    target: Option<u64>,
    reads: u64,
}

impl sluicegate_core::ErrorType for Flaky<'_> {
    type Error = sluicegate_sim::SimError;
}

impl Storage for Flaky<'_> {
    const READ_SIZE: usize = 1;
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 256;
    fn capacity(&self, region: Region) -> u64 {
        self.inner.capacity(region)
    }
    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(region, offset, buf)?;
        if let Some(t) = self
            .target
            .filter(|&t| region == Region::Log && t >= offset && t < offset + buf.len() as u64)
        {
            self.reads += 1;
            if self.reads % 2 == 0 {
                buf[(t - offset) as usize] ^= 0x04;
            }
        }
        Ok(())
    }
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        if region == Region::Log {
            self.last_write = Some((offset, data.len()));
        }
        self.inner.write(region, offset, data)
    }
    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        self.inner.erase(region, from, to)
    }
    fn sync(&mut self, region: Region) -> Result<(), Self::Error> {
        self.inner.sync(region)
    }
}

#[test]
fn replay_never_applies_a_commit_read_differently_from_how_it_was_checked() {
    const CONFIG: Config = Config::new(16, 9, 2, 32, 1024);
    let mut sim = sluicegate_sim::SimStorage::<4, 256>::new(8 * 1024, 0xFF);
    let mut memory = vec![0u64; CONFIG.memory_words()];
    let mut flaky = Flaky {
        inner: &mut sim,
        last_write: None,
        target: None,
        reads: 0,
    };
    {
        let mut ch = Channel::open(&mut flaky, &mut memory[..], CONFIG).unwrap();
        for batch in 0u8..3 {
            let tx = ch.begin().unwrap();
            for i in 0..3u8 {
                ch.put(tx, &[batch * 3 + i; 32]).unwrap();
            }
            ch.commit(tx).unwrap();
        }
    }
    // The last commit's last pointer: a bit of its offset reads flipped every other time.
    let (at, len) = flaky.last_write.unwrap();
    flaky.target = Some(at + len as u64 - 7);
    let mut ch = Channel::open(&mut flaky, &mut memory[..], CONFIG).unwrap();
    let tx = ch.begin().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 32];
    while let Some(n) = ch.take(tx, &mut buf).unwrap() {
        assert_eq!(n, 32);
        assert!(buf.iter().all(|&b| b == buf[0]), "an intact event");
        seen.push(buf[0]);
    }
    assert_eq!(
        ch.stats().corrupt_events_skipped,
        0,
        "no pointer led astray"
    );
    // The flaky commit is applied whole or not at all; the two before it always are.
    assert!(
        seen == [0, 1, 2, 3, 4, 5] || seen == [0, 1, 2, 3, 4, 5, 6, 7, 8],
        "{seen:?}; {:?}",
        ch.recovery()
    );
    assert!(
        ch.storage().reads >= 2,
        "the flaky word was read more than once"
    );
}
