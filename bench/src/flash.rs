//! Flash: Sluicegate's flash adapter and sequential-storage's queue on the same simulated NOR
//! part, the same workload of 32-byte readings, and a timing model of a common SPI NOR part.
//!
//! The timing model is the Winbond W25Q32JV (32 Mbit SPI NOR, 4 KiB sectors, 256-byte pages),
//! typical values from its datasheet's AC electrical characteristics (revision F, 2017):
//! page program tPP 0.4 ms, first byte tBP1 30 µs, each further byte tBP2 2.5 µs, 4 KiB sector
//! erase tSE 45 ms; the bus is single-bit SPI at 50 MHz (0.16 µs per byte, command and address
//! included). A program of k bytes within one page costs min(tBP1 + (k − 1)·tBP2, tPP).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use sluicegate_core::{Channel, Config};
use sluicegate_flash::FlashStorage;
use sluicegate_sim::{NorCounters, NorError, SimNor};

use crate::systems::Result;

const BLOCK: usize = 4096;
const WORD: usize = 4;
const PAGE: usize = 256;
/// A reading: a sequence number, a value and filler, as the firmware example's.
pub const READING: usize = 32;

const BUS_US_PER_BYTE: f64 = 8.0 / 50.0;
const T_PP_US: f64 = 400.0;
const T_BP1_US: f64 = 30.0;
const T_BP2_US: f64 = 2.5;
const T_SE_US: f64 = 45_000.0;

/// A simulated part with the timing model's clock.
pub struct Timed {
    part: SimNor<WORD, BLOCK>,
    /// Modelled microseconds spent in the part's operations.
    pub busy_us: f64,
}

impl Timed {
    fn new(bytes: usize) -> Self {
        Timed {
            part: SimNor::new(bytes, 0xFF),
            busy_us: 0.0,
        }
    }

    fn counters(&self) -> NorCounters {
        self.part.counters()
    }

    fn program_us(offset: usize, len: usize) -> f64 {
        let mut us = 0.0;
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let page_end = (at / PAGE + 1) * PAGE;
            let k = page_end.min(end) - at;
            // Write enable (1 byte), then command, address and data.
            us += (1 + 4 + k) as f64 * BUS_US_PER_BYTE;
            us += (T_BP1_US + (k as f64 - 1.0) * T_BP2_US).min(T_PP_US);
            at += k;
        }
        us
    }
}

impl ErrorType for Timed {
    type Error = NorError;
}

impl ReadNorFlash for Timed {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> std::result::Result<(), NorError> {
        // Fast read: command, 3 address bytes, a dummy byte, then the data.
        self.busy_us += (5 + bytes.len()) as f64 * BUS_US_PER_BYTE;
        self.part.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.part.capacity()
    }
}

impl NorFlash for Timed {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = BLOCK;
    fn write(&mut self, offset: u32, bytes: &[u8]) -> std::result::Result<(), NorError> {
        self.busy_us += Self::program_us(offset as usize, bytes.len());
        self.part.write(offset, bytes)
    }
    fn erase(&mut self, from: u32, to: u32) -> std::result::Result<(), NorError> {
        let blocks = (to - from) as usize / BLOCK;
        self.busy_us += blocks as f64 * (T_SE_US + 5.0 * BUS_US_PER_BYTE);
        self.part.erase(from, to)
    }
}

/// The same part for sequential-storage, which drives flash through the async traits and pops
/// by programming an item's header a second time (the part allows it here; see
/// `SimNor::set_multiwrite`).
mod for_async {
    use super::*;
    use embedded_storage_async::nor_flash as a;

    impl a::ReadNorFlash for Timed {
        const READ_SIZE: usize = 1;
        async fn read(
            &mut self,
            offset: u32,
            bytes: &mut [u8],
        ) -> std::result::Result<(), NorError> {
            ReadNorFlash::read(self, offset, bytes)
        }
        fn capacity(&self) -> usize {
            ReadNorFlash::capacity(self)
        }
    }

    impl a::NorFlash for Timed {
        const WRITE_SIZE: usize = WORD;
        const ERASE_SIZE: usize = BLOCK;
        async fn erase(&mut self, from: u32, to: u32) -> std::result::Result<(), NorError> {
            NorFlash::erase(self, from, to)
        }
        async fn write(&mut self, offset: u32, bytes: &[u8]) -> std::result::Result<(), NorError> {
            NorFlash::write(self, offset, bytes)
        }
    }

    impl a::MultiwriteNorFlash for Timed {}
}

/// Runs a future that never waits (the simulated part answers at once).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Operation counts of one kind of call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ops {
    pub calls: u64,
    pub reads: u64,
    pub programs: u64,
    pub erases: u64,
    /// Bytes programmed, in all regions.
    pub bytes: u64,
    /// Of those, the bytes programmed into checkpoint slots (Sluicegate only).
    pub checkpoint_bytes: u64,
}

impl Ops {
    fn add(&mut self, before: NorCounters, after: NorCounters) {
        self.calls += 1;
        self.reads += after.reads - before.reads;
        self.programs += after.writes - before.writes;
        self.erases += after.blocks_erased - before.blocks_erased;
        self.bytes += after.bytes_written - before.bytes_written;
    }

    /// Reads, programs and erases per call.
    pub fn per_call(&self) -> (f64, f64, f64) {
        let c = self.calls.max(1) as f64;
        (
            self.reads as f64 / c,
            self.programs as f64 / c,
            self.erases as f64 / c,
        )
    }
}

/// What one system did with the workload.
#[derive(Debug, Clone)]
pub struct FlashResult {
    pub name: String,
    /// Readings per transaction (Sluicegate); 0 for a queue without transactions.
    pub batch: u64,
    pub readings: u64,
    pub total: NorCounters,
    pub busy_us: f64,
    /// RAM the queue keeps beyond the code and the caller's buffers: Sluicegate's channel
    /// memory; sequential-storage's cache.
    pub ram_bytes: usize,
    pub put: Ops,
    pub take: Ops,
    pub commit: Ops,
    pub violations: usize,
    /// Blocks erased in the checkpoint slots (Sluicegate only; included in `total`).
    pub slot_blocks_erased: u64,
}

impl FlashResult {
    pub fn payload_bytes(&self) -> u64 {
        self.readings * READING as u64
    }
    pub fn programmed_per_payload_byte(&self) -> f64 {
        self.total.bytes_written as f64 / self.payload_bytes() as f64
    }
    pub fn erases_per_payload_mib(&self) -> f64 {
        self.total.blocks_erased as f64 / (self.payload_bytes() as f64 / (1 << 20) as f64)
    }
    /// Reads, programs and erases (blocks) per reading put and taken.
    pub fn ops_per_reading(&self) -> (f64, f64, f64) {
        let n = self.readings as f64;
        (
            self.total.reads as f64 / n,
            self.total.writes as f64 / n,
            self.total.blocks_erased as f64 / n,
        )
    }
    /// Bytes programmed per reading: into the log by puts, takes and commits, and into the
    /// checkpoint slots by any of them.
    pub fn bytes_per_reading(&self) -> [f64; 4] {
        let n = self.readings as f64;
        let log = |o: &Ops| (o.bytes - o.checkpoint_bytes) as f64 / n;
        let slots =
            self.put.checkpoint_bytes + self.take.checkpoint_bytes + self.commit.checkpoint_bytes;
        [
            log(&self.put),
            log(&self.take),
            log(&self.commit),
            slots as f64 / n,
        ]
    }
    pub fn busy_us_per_reading(&self) -> f64 {
        self.busy_us / self.readings as f64
    }
}

fn sum(parts: &[&Timed]) -> (NorCounters, f64) {
    let mut t = NorCounters::default();
    let mut us = 0.0;
    for p in parts {
        let n = p.counters();
        t.reads += n.reads;
        t.writes += n.writes;
        t.erases += n.erases;
        t.bytes_written += n.bytes_written;
        t.blocks_erased += n.blocks_erased;
        us += p.busy_us;
    }
    (t, us)
}

fn reading(seq: u64) -> [u8; READING] {
    let mut r = [0u8; READING];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in r[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    r
}

/// Log blocks, and blocks per checkpoint slot: 20 blocks (80 KiB) in all, the same flash
/// sequential-storage is given.
const LOG_BLOCKS: usize = 16;
const SLOT_BLOCKS: usize = 2;
const ROUND: u64 = 64;

/// A channel of 128 readings with transactions of up to `batch`, two at a time, and a
/// checkpoint after every half ring of log.
/// `compact`: with compact records ([`Config::with_compact_records`]).
fn sluicegate_config(batch: u32, compact: bool) -> Config {
    let c = Config::new(128, batch.max(1), 2, READING as u32, BLOCK as u32)
        .with_checkpoints(0, (LOG_BLOCKS as u64 / 2) * BLOCK as u64, 0)
        .with_checkpoint_step(8);
    if compact {
        c.with_compact_records()
    } else {
        c
    }
}

/// Sluicegate: rounds of 64 readings put in transactions of `batch`, then taken in transactions
/// of `batch`, until `readings` have gone through; `compact`: with compact records.
pub fn sluicegate(readings: u64, batch: u64, compact: bool) -> Result<FlashResult> {
    let config = sluicegate_config(batch as u32, compact);
    let log = Timed::new(LOG_BLOCKS * BLOCK);
    let cp = Timed::new(SLOT_BLOCKS * BLOCK);
    let bk = Timed::new(SLOT_BLOCKS * BLOCK);
    let mut storage = FlashStorage::new(log, cp, bk).map_err(|e| format!("{e:?}"))?;
    let mut memory = vec![0u64; config.memory_words()];
    let mut ch =
        Channel::open(&mut storage, &mut memory[..], config).map_err(|e| format!("{e:?}"))?;
    let mut r = FlashResult {
        name: format!(
            "sluicegate{}, transactions of {batch}",
            if compact { " compact" } else { "" }
        ),
        batch,
        readings: 0,
        total: NorCounters::default(),
        busy_us: 0.0,
        ram_bytes: config.memory_bytes(),
        put: Ops::default(),
        take: Ops::default(),
        commit: Ops::default(),
        violations: 0,
        slot_blocks_erased: 0,
    };
    let counters = |ch: &Channel<&mut FlashStorage<Timed, Timed, Timed>, &mut [u64]>| {
        let (l, c, b) = ch.storage().devices();
        sum(&[l, c, b]).0
    };
    // Bytes programmed into the checkpoint slots so far, to tell them from the log's.
    let slot_bytes = |ch: &Channel<&mut FlashStorage<Timed, Timed, Timed>, &mut [u64]>| {
        let (_, c, b) = ch.storage().devices();
        sum(&[c, b]).0.bytes_written
    };
    let err = |e| format!("{e:?}");
    let (mut put_seq, mut take_seq) = (0u64, 0u64);
    let mut buf = [0u8; READING];
    while take_seq < readings {
        let round_end = put_seq + ROUND;
        while put_seq < round_end {
            let tx = ch.begin().map_err(err)?;
            for _ in 0..batch {
                let (before, slots) = (counters(&ch), slot_bytes(&ch));
                ch.put(tx, &reading(put_seq)).map_err(err)?;
                r.put.add(before, counters(&ch));
                r.put.checkpoint_bytes += slot_bytes(&ch) - slots;
                put_seq += 1;
            }
            let (before, slots) = (counters(&ch), slot_bytes(&ch));
            ch.commit(tx).map_err(err)?;
            r.commit.add(before, counters(&ch));
            r.commit.checkpoint_bytes += slot_bytes(&ch) - slots;
        }
        while take_seq < round_end {
            let tx = ch.begin().map_err(err)?;
            for _ in 0..batch {
                let (before, slots) = (counters(&ch), slot_bytes(&ch));
                let got = ch.take(tx, &mut buf).map_err(err)?;
                r.take.add(before, counters(&ch));
                r.take.checkpoint_bytes += slot_bytes(&ch) - slots;
                if got != Some(READING) || buf != reading(take_seq) {
                    return Err(format!("reading {take_seq} came back wrong: {got:?}").into());
                }
                take_seq += 1;
            }
            let (before, slots) = (counters(&ch), slot_bytes(&ch));
            ch.commit(tx).map_err(err)?;
            r.commit.add(before, counters(&ch));
            r.commit.checkpoint_bytes += slot_bytes(&ch) - slots;
        }
    }
    let (l, c, b) = storage.devices();
    let (total, us) = sum(&[l, c, b]);
    r.readings = take_seq;
    r.total = total;
    r.slot_blocks_erased = sum(&[c, b]).0.blocks_erased;
    r.busy_us = us;
    r.violations =
        l.part.violations().len() + c.part.violations().len() + b.part.violations().len();
    Ok(r)
}

/// sequential-storage 8.x's queue on the same 80 KiB: each reading pushed, then popped, in the
/// same rounds of 64. A push and a pop are each durable on return. `cached`: with its page-state
/// and page-pointer caches (arrays of one entry per block) instead of none.
pub fn sequential_storage(readings: u64, cached: bool) -> Result<FlashResult> {
    use sequential_storage::cache::page_pointers::ArrayPagePointers;
    use sequential_storage::cache::page_states::ArrayPageStates;
    use sequential_storage::cache::{Cache, Uncached};
    const BLOCKS: usize = LOG_BLOCKS + 2 * SLOT_BLOCKS;
    if cached {
        let cache: Cache<ArrayPageStates<BLOCKS>, ArrayPagePointers<BLOCKS>, Uncached> =
            Cache::new(ArrayPageStates::new(), ArrayPagePointers::new(), Uncached);
        run_sequential_storage(readings, cache, "sequential-storage 8 queue, cached")
    } else {
        run_sequential_storage(
            readings,
            Cache::<Uncached, Uncached, Uncached>::new_uncached(),
            "sequential-storage 8 queue, uncached",
        )
    }
}

fn run_sequential_storage<C: sequential_storage::cache::CacheImpl<()>>(
    readings: u64,
    cache: C,
    name: &str,
) -> Result<FlashResult> {
    use sequential_storage::queue::{QueueConfig, QueueStorage};
    let total_blocks = LOG_BLOCKS + 2 * SLOT_BLOCKS;
    let mut part = Timed::new(total_blocks * BLOCK);
    part.part.set_multiwrite(true);
    let cache_bytes = std::mem::size_of::<C>();
    let mut q = QueueStorage::new(
        part,
        QueueConfig::new(0..(total_blocks * BLOCK) as u32),
        cache,
    );
    let mut r = FlashResult {
        name: name.into(),
        batch: 0,
        readings: 0,
        total: NorCounters::default(),
        busy_us: 0.0,
        ram_bytes: cache_bytes,
        put: Ops::default(),
        take: Ops::default(),
        commit: Ops::default(),
        violations: 0,
        slot_blocks_erased: 0,
    };
    let (mut put_seq, mut take_seq) = (0u64, 0u64);
    let mut buf = [0u8; READING];
    while take_seq < readings {
        let round_end = put_seq + ROUND;
        while put_seq < round_end {
            let before = q.flash().counters();
            block_on(q.push(&reading(put_seq), false)).map_err(|e| format!("push: {e:?}"))?;
            r.put.add(before, q.flash().counters());
            put_seq += 1;
        }
        while take_seq < round_end {
            let before = q.flash().counters();
            let got = block_on(q.pop(&mut buf))
                .map_err(|e| format!("pop: {e:?}"))?
                .map(|s| s.len());
            r.take.add(before, q.flash().counters());
            if got != Some(READING) || buf != reading(take_seq) {
                return Err(format!("reading {take_seq} came back wrong: {got:?}").into());
            }
            take_seq += 1;
        }
    }
    let (part, _) = q.destroy();
    r.readings = take_seq;
    r.total = part.counters();
    r.busy_us = part.busy_us;
    r.violations = part.part.violations().len();
    Ok(r)
}
