//! The gateway on the flash adapter's async side, on the Cortex-M4: an `AsyncChannel` over an
//! async NOR part (here RAM behind `embedded_storage_async`, 8-byte words and 4 KiB blocks as
//! in the main example, yielding once before every program and erase as a driver waiting for
//! its busy flag does), shared through an `embassy_sync` mutex by a producer task that puts
//! typed readings and an uplink task that takes them in batches of 16, joined on one
//! executor (`embassy_futures::block_on`). A third task counts how often it ran while the
//! others awaited the flash.
//!
//! `cargo xtask firmware` builds and runs it to report what the async side costs in flash,
//! RAM and stack, beside the blocking example; it checks that every reading put came back,
//! in order, once. Power cuts are the main example's and the host simulation's business.

#![no_std]
#![no_main]

use core::cell::Cell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use cortex_m_rt::entry;
use defmt_semihosting as _;
use embassy_futures::join::join3;
use embassy_futures::yield_now;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embedded_storage_async::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use semihost::exit;
use sluicegate_core::Config;
use sluicegate_flash::{AsyncChannel, AsyncFlashStorage};
use sluicegate_typed::Codec;
use sluicegate_uplink::Reading;

#[path = "../semihost.rs"]
mod semihost;

const WORD: usize = 8;
const BLOCK: usize = 4096;
const READINGS: u32 = 2000;
const BASE: Config = Config::new(64, 16, 2, 32, BLOCK as u32)
    .with_checkpoints(16, 0, 0)
    .with_log_segments(16);
/// A compact log with the `compact` feature (the default), as the main gateway's.
const CONFIG: Config = if cfg!(feature = "compact") {
    BASE.with_compact_records()
} else {
    BASE
};
const MEMORY_WORDS: usize = CONFIG.memory_words();

/// A NOR part in RAM behind the async traits.
struct RamNor<const N: usize> {
    cells: &'static mut [u8; N],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NorError;

impl NorFlashError for NorError {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

impl<const N: usize> ErrorType for RamNor<N> {
    type Error = NorError;
}

/// Pending once (waking itself), then ready: the part is busy for one poll.
struct Busy(bool);

impl Future for Busy {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<const N: usize> ReadNorFlash for RamNor<N> {
    const READ_SIZE: usize = 1;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorError> {
        let at = offset as usize;
        bytes.copy_from_slice(self.cells.get(at..at + bytes.len()).ok_or(NorError)?);
        Ok(())
    }
    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> NorFlash for RamNor<N> {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = BLOCK;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), NorError> {
        Busy(false).await;
        self.cells
            .get_mut(from as usize..to as usize)
            .ok_or(NorError)?
            .fill(0xFF);
        Ok(())
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorError> {
        Busy(false).await;
        let at = offset as usize;
        for (cell, b) in self
            .cells
            .get_mut(at..at + bytes.len())
            .ok_or(NorError)?
            .iter_mut()
            .zip(bytes)
        {
            *cell &= *b;
        }
        Ok(())
    }
}

type Part<const N: usize> = RamNor<N>;
type Chan = AsyncChannel<
    Part<{ 16 * BLOCK }>,
    Part<{ 2 * BLOCK }>,
    Part<{ 2 * BLOCK }>,
    &'static mut [u64],
>;

#[entry]
fn main() -> ! {
    kept_stack::paint();
    let log = cortex_m::singleton!(: [u8; 16 * BLOCK] = [0xFF; 16 * BLOCK]).expect("once");
    let a = cortex_m::singleton!(: [u8; 2 * BLOCK] = [0xFF; 2 * BLOCK]).expect("once");
    let b = cortex_m::singleton!(: [u8; 2 * BLOCK] = [0xFF; 2 * BLOCK]).expect("once");
    let memory = cortex_m::singleton!(: [u64; MEMORY_WORDS] = [0; MEMORY_WORDS]).expect("once");
    let storage = match AsyncFlashStorage::new(
        RamNor { cells: log },
        RamNor { cells: a },
        RamNor { cells: b },
    ) {
        Ok(s) => s,
        Err(_) => finish(false),
    };
    let tasks = run(storage, &mut memory[..]);
    let future_bytes = core::mem::size_of_val(&tasks);
    let ok = embassy_futures::block_on(tasks);
    defmt::println!(
        "async gateway: Channel struct {=usize} bytes, channel memory {=usize} bytes, the tasks' future {=usize} bytes; deepest stack {=u32} bytes (the future included)",
        core::mem::size_of::<Chan>(),
        CONFIG.memory_bytes(),
        future_bytes,
        kept_stack::used()
    );
    finish(ok)
}

async fn run(
    storage: AsyncFlashStorage<Part<{ 16 * BLOCK }>, Part<{ 2 * BLOCK }>, Part<{ 2 * BLOCK }>>,
    memory: &'static mut [u64],
) -> bool {
    let Ok(ch) = Chan::open(storage, memory, CONFIG).await else {
        return false;
    };
    let ch: Mutex<NoopRawMutex, Chan> = Mutex::new(ch);
    let (done, beats, next) = (Cell::new(false), Cell::new(0u32), Cell::new(0u32));
    let bad = Cell::new(false);
    let producer = async {
        let mut codec: Codec<Reading, 32> = Codec::new();
        let mut seq = 0;
        // Bounded: READINGS readings, each put once room is made.
        while seq < READINGS {
            let r = Reading {
                seq,
                at_ms: seq * 20,
                sensor: (seq % 4) as u8,
                centi_celsius: (seq % 3000) as i16 - 500,
            };
            let Ok(bytes) = codec.encode(&r, 32) else {
                bad.set(true);
                break;
            };
            let mut c = ch.lock().await;
            let Ok(t) = c.begin().await else {
                bad.set(true);
                break;
            };
            let committed = match c.put(t, bytes).await {
                Ok(()) => c.commit(t).await,
                Err(e) => Err(e),
            };
            match committed {
                Ok(()) => seq += 1,
                Err(sluicegate_core::Error::ChannelFull | sluicegate_core::Error::LogFull) => {
                    // Full: let the uplink drain.
                    let _ = c.rollback(t).await;
                    drop(c);
                    yield_now().await;
                }
                Err(_) => {
                    bad.set(true);
                    break;
                }
            }
        }
        done.set(true);
    };
    let uplink = async {
        let mut codec: Codec<Reading, 32> = Codec::new();
        // Bounded: the producer finishes, and then the channel drains.
        loop {
            let mut c = ch.lock().await;
            let Ok(t) = c.begin().await else {
                bad.set(true);
                return;
            };
            let mut n = 0;
            while n < 16 {
                match c.take(t, codec.buffer_mut()).await {
                    Ok(Some(len)) => match codec.decode(len) {
                        Ok(r) if r.seq == next.get() => {
                            next.set(r.seq + 1);
                            n += 1;
                        }
                        _ => {
                            bad.set(true);
                            return;
                        }
                    },
                    Ok(None) => break,
                    Err(_) => {
                        bad.set(true);
                        return;
                    }
                }
            }
            if c.commit(t).await.is_err() {
                bad.set(true);
                return;
            }
            drop(c);
            if n == 0 && done.get() {
                return;
            }
            yield_now().await;
        }
    };
    let heartbeat = async {
        while !(bad.get() || done.get() && next.get() == READINGS) {
            beats.set(beats.get() + 1);
            yield_now().await;
        }
    };
    join3(producer, uplink, heartbeat).await;
    let counters = ch.lock().await.counters();
    defmt::println!(
        "async gateway: {=u32} readings put and taken in order; {=u64} programs and erases awaited, {=u64} made while the core waited; the heartbeat task ran {=u32} times",
        next.get(),
        counters.awaited,
        counters.blocked,
        beats.get()
    );
    !bad.get() && next.get() == READINGS && counters.awaited > 0
}

/// Prints the summary line `cargo xtask firmware` reads, and ends the run.
fn finish(ok: bool) -> ! {
    defmt::println!("summary: violations={=u32}", u32::from(!ok));
    exit(ok)
}

/// The stack, painted at start and measured at the end.
mod kept_stack {
    use core::sync::atomic::{AtomicUsize, Ordering};

    const PAINT: u32 = 0x5AFE_C0DE;
    const PAINTED: usize = 48 * 1024;
    /// The lowest painted address.
    static BOTTOM: AtomicUsize = AtomicUsize::new(0);

    extern "C" {
        static _stack_start: u32;
    }

    /// Paints the `PAINTED` bytes below the current stack pointer.
    pub fn paint() {
        let sp = cortex_m::register::msp::read() as usize;
        let mut at = sp - PAINTED;
        BOTTOM.store(at, Ordering::Relaxed);
        // Bounded: PAINTED / 4 words, all below the live stack.
        while at < sp - 64 {
            // SAFETY: RAM below the stack pointer that nothing uses yet.
            unsafe { core::ptr::write_volatile(at as *mut u32, PAINT) };
            at += 4;
        }
    }

    /// Bytes of stack used since `paint`, from the top of the stack.
    pub fn used() -> u32 {
        // The linker's symbol for the top of the stack (only its address is taken).
        let top = core::ptr::addr_of!(_stack_start) as usize;
        let sp = cortex_m::register::msp::read() as usize;
        let mut at = BOTTOM.load(Ordering::Relaxed);
        // Bounded: stops at the first word no longer painted.
        // SAFETY: painted RAM below the stack.
        while at < sp && unsafe { core::ptr::read_volatile(at as *const u32) } == PAINT {
            at += 4;
        }
        (top - at) as u32
    }
}
