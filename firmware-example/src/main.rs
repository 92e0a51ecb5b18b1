//! An edge gateway on Sluicegate, run in QEMU (`mps2-an386`, Cortex-M4).
//!
//! - A timer interrupt (SysTick, every millisecond) samples a "sensor" and puts the reading (a
//!   [`Reading`]: sequence, time, sensor, value, encoded by `sluicegate-typed` with postcard)
//!   through the interrupt-safe [`SharedChannel`], one committed transaction per reading.
//! - The main loop is the uplink. It is up or down in phases; when up it takes a batch in a take
//!   transaction, sends it to the "server", waits for the acknowledgement and commits the take.
//!   Sometimes the acknowledgement never comes and the take is rolled back.
//! - The power fails at a pseudo-random point of every boot: inside a flash program or erase
//!   (tearing it), or from the timer interrupt between two operations. A reset stands for the
//!   cut; the flash image and the witness ledger live in RAM that startup does not clear.
//! - At every boot the firmware opens the channel (recovery), takes everything queued in one
//!   transaction, rolls it back, and compares with the ledger: every acknowledged reading is
//!   delivered or still queued; no reading whose take committed is queued or delivered again;
//!   none that was refused appears; none appears twice; every payload is intact.
//! - After the configured number of boots, the uplink drains the channel without cuts, the final
//!   check runs, the summary is printed and the firmware exits through semihosting: 0 if no
//!   violation was found, 1 otherwise.
//! - With the `sealed` feature, the channel is encrypted at rest with a key compiled in
//!   ([`StaticKeys`], no TRNG on this board, so a fixed salt), and the final check also searches
//!   the whole log partition for any reading in the clear: finding one is a violation.

#![no_std]
#![no_main]

mod kept;
mod nor;
mod semihost;
#[cfg(feature = "uplink")]
mod uart;

use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use critical_section::Mutex;
use defmt_semihosting as _;
use sluicegate_core::{Channel, Config, Error, KeyProvider};
use sluicegate_flash::{FlashStorage, Partition, SharedChannel, Wear};
use sluicegate_typed::Codec;

use kept::State;
use nor::{Nor, BLOCK};
use semihost::exit;

/// The most bytes a reading's encoding may take (its postcard encoding takes 6 to 13).
const READING: usize = 32;

/// One sensor reading, as the gateway sends it up (`sluicegate-uplink`'s, the wire's).
use sluicegate_uplink::Reading;

/// A codec of readings, in its own buffer.
type Readings = Codec<Reading, READING>;
/// Log segments: one a block, the whole log partition.
const LOG_SEGMENTS: u32 = 16;
/// The channel: 64 readings, take batches of up to 64 (the boot check takes all at once),
/// two transactions at a time (the interrupt's put and the uplink's take), 4 KiB segments,
/// queue entries packed for 16 of them (18 bits a reading, not 64).
const BASE: Config = Config::new(64, 64, 2, READING as u32, BLOCK as u32)
    .with_checkpoints(16, 0, 0)
    .with_log_segments(LOG_SEGMENTS);
/// With the `compact` feature (the default) a plaintext build writes a compact log (8-byte
/// record headers, commits of variable-length integers: docs/format.md, "Compact logs"); a
/// sealed log cannot be compact.
const CONFIG: Config = if cfg!(all(feature = "compact", not(feature = "sealed"))) {
    BASE.with_compact_records()
} else {
    BASE
};
// The boot check holds the whole queue in one transaction.
const _: () = assert!(CONFIG.capacity() <= CONFIG.transaction_capacity());
const MEMORY_WORDS: usize = CONFIG.memory_words();
/// The partitions of the one flash part: 16 log segments, and two 2-block checkpoint regions.
const LOG_BYTES: u32 = LOG_SEGMENTS * BLOCK as u32;
const SLOT_BYTES: u32 = 2 * BLOCK as u32;
/// The uplink sends up to this many readings per take transaction.
const BATCH: usize = 16;
/// A reading every this many ticks: every millisecond against the in-firmware server, every
/// 20 over the real uplink, whose round trip through the bridge and the broker takes
/// milliseconds of host time.
const SAMPLE_TICKS: u32 = if cfg!(feature = "uplink") { 20 } else { 1 };
/// The timer cuts the power within this many ticks of a boot's start: longer over the real
/// uplink, so a backlog from an outage can drain within a boot.
const BOOT_MS: u32 = if cfg!(feature = "uplink") { 3000 } else { 600 };
/// SysTick reload: the mps2 board clocks the core at 25 MHz, so this is 1 ms.
const TICK_RELOAD: u32 = 25_000;

/// Boots before the final drain and check (`SLUICEGATE_BOOTS` at build time).
const BOOTS: u32 = match option_env!("SLUICEGATE_BOOTS") {
    Some(s) => parse_u32(s),
    None => 200,
};
/// The seed of the first boot (`SLUICEGATE_SEED` at build time).
const SEED: u32 = match option_env!("SLUICEGATE_SEED") {
    Some(s) => parse_u32(s),
    None => 1,
};

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u32 = 0;
    assert!(!b.is_empty(), "expected a number");
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "expected a number");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

type Part = Partition<'static, Nor>;
type Store = FlashStorage<Part, Part, Part>;
type Memory = &'static mut [u64];

static DEVICE: Mutex<RefCell<Nor>> = Mutex::new(RefCell::new(Nor::new()));
static CHANNEL: SharedChannel<Store, Memory, Keys> = SharedChannel::new();

/// The key provider: none (plaintext), or with the `sealed` feature one key compiled in.
#[cfg(not(feature = "sealed"))]
type Keys = sluicegate_core::NoKeys;
#[cfg(feature = "sealed")]
type Keys = sluicegate_core::StaticKeys<'static>;

#[cfg(not(feature = "sealed"))]
fn keys() -> Keys {
    sluicegate_core::NoKeys
}

/// An example key: a real gateway keeps its key in protected storage, not in the image.
#[cfg(feature = "sealed")]
static KEYS: [(sluicegate_core::KeyId, sluicegate_core::Key); 1] =
    [(1, *b"sluicegate example key, not real")];

#[cfg(feature = "sealed")]
fn keys() -> Keys {
    sluicegate_core::StaticKeys::new(&KEYS, Some(1))
}

/// Milliseconds since this boot's timer started.
static TICKS: AtomicU32 = AtomicU32::new(0);
/// The tick at which the timer cuts the power (0: never).
static TIMER_CUT_AT: AtomicU32 = AtomicU32::new(0);
/// False once the run is draining: the interrupt stops sampling.
static SAMPLING: AtomicBool = AtomicBool::new(true);

/// Violations printed in full; later ones are only counted.
const PRINTED_VIOLATIONS: u32 = 20;

fn violation(what: &str, seq: u32) {
    let n = kept::with(|l| {
        l.violations += 1;
        l.violations
    });
    if n <= PRINTED_VIOLATIONS {
        defmt::error!("VIOLATION: {=str} (reading {=u32})", what, seq);
    }
}

/// What the "sensor" reads for reading `seq`, sampled at `at_ms`: its sensor and its value
/// follow from `seq`, so a reading read back can be checked whole.
fn reading(seq: u32, at_ms: u32) -> Reading {
    let x = seq.wrapping_mul(0x9E37_79B9);
    Reading {
        seq,
        at_ms,
        sensor: (x >> 28) as u8,
        centi_celsius: ((x >> 8) % 6000) as i16 - 1000,
    }
}

/// The sequence number of a reading taken into `codec`'s buffer (`len` bytes), if it decodes
/// and is intact.
fn decode(codec: &mut Readings, len: usize) -> Option<u32> {
    decode_reading(codec, len).map(|r| r.seq)
}

/// A reading taken into `codec`'s buffer (`len` bytes), if it decodes and is intact.
fn decode_reading(codec: &mut Readings, len: usize) -> Option<Reading> {
    let r = codec.decode(len).ok()?;
    ((r.seq as usize) < kept::MAX_READINGS && reading(r.seq, r.at_ms) == r).then_some(r)
}

#[entry]
fn main() -> ! {
    kept::paint_stack();
    let mut core = cortex_m::Peripherals::take().expect("taken once, at boot");
    if kept::boot(SEED) {
        nor::erase_chip();
        defmt::println!(
            "sluicegate firmware example: {=u32} boots, seed {=u32}; the flash is new",
            BOOTS,
            SEED
        );
    }
    let boot = kept::with(|l| l.boots);
    let finishing = boot > BOOTS;
    #[cfg(feature = "uplink")]
    uart::init();

    let storage = match FlashStorage::new(
        Partition::new(&DEVICE, 0, LOG_BYTES).expect("whole blocks"),
        Partition::new(&DEVICE, LOG_BYTES, SLOT_BYTES).expect("whole blocks"),
        Partition::new(&DEVICE, LOG_BYTES + SLOT_BYTES, SLOT_BYTES).expect("whole blocks"),
    ) {
        Ok(s) => s,
        Err(e) => fatal_geometry(e),
    };
    let memory: Memory = cortex_m::singleton!(: [u64; MEMORY_WORDS] = [0; MEMORY_WORDS])
        .expect("taken once, at boot");
    match Channel::open_with_keys(storage, memory, CONFIG, keys()) {
        Ok(channel) => {
            if channel.recovery().checkpointed {
                kept::with(|l| l.checkpointed_opens += 1);
            }
            CHANNEL.install(channel);
        }
        Err(e) => {
            defmt::error!("boot {=u32}: the channel did not open: {}", boot, e);
            violation("the channel did not open", 0);
            finish();
        }
    }
    check_recovered(boot);
    if boot % 50 == 0 {
        let l = kept::with(|l| (l.next_seq, l.acked, l.taken, l.violations));
        defmt::println!(
            "boot {=u32}: {=u32} readings sampled, {=u32} acknowledged, {=u32} delivered for good, {=u32} violations",
            boot,
            l.0,
            l.1,
            l.2,
            l.3
        );
    }
    if finishing {
        SAMPLING.store(false, Ordering::Relaxed);
        // The uplink's timeouts count the timer's ticks.
        #[cfg(feature = "uplink")]
        start_timer(&mut core);
        drain();
        check_recovered(boot);
        finish();
    }

    // This boot ends with a power cut: always one from the timer, and usually an earlier one
    // inside a flash operation.
    let (flash_cut, timer_cut) = kept::with(|l| (l.random(), l.random()));
    if flash_cut % 4 != 0 {
        nor::arm_cut(1 + flash_cut % 300);
    }
    TIMER_CUT_AT.store(1 + timer_cut % BOOT_MS, Ordering::Relaxed);

    start_timer(&mut core);

    loop {
        let tick = TICKS.load(Ordering::Relaxed);
        // The uplink is up or down in 40 ms phases, down one phase in four.
        let up = cfg!(feature = "uplink")
            || kept::with(|l| (tick / 40).wrapping_mul(0x2545_F491) ^ l.boots) % 4 != 0;
        if !up || !uplink_batch(true) {
            cortex_m::asm::wfi();
        }
    }
}

/// Starts SysTick: a tick every millisecond.
fn start_timer(core: &mut cortex_m::Peripherals) {
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(TICK_RELOAD - 1);
    core.SYST.clear_current();
    core.SYST.enable_counter();
    core.SYST.enable_interrupt();
}

/// The real uplink (feature `uplink`): a batch over the UART, and its acknowledgement.
#[cfg(feature = "uplink")]
mod link {
    use core::sync::atomic::{AtomicU32, Ordering};

    use sluicegate_uplink::{encode, Decoder, Down, Reading, Up, MAX_BATCH, MAX_FRAME};

    use crate::{kept, uart, TICKS};

    /// How long a batch waits for its acknowledgement before its take is rolled back, in ticks.
    const ACK_TIMEOUT_TICKS: u32 = 500;

    /// Tick (+ 1) of this boot's first batch not acknowledged since the queue last drained; 0
    /// while there is no backlog.
    static BACKLOG_SINCE: AtomicU32 = AtomicU32::new(0);

    /// A batch of `n` readings was acknowledged: if it was not full, the queue is drained, and
    /// a backlog an outage left is gone: its time is kept.
    pub fn acknowledged(n: usize) {
        if n >= crate::BATCH {
            return;
        }
        let since = BACKLOG_SINCE.swap(0, Ordering::Relaxed);
        if since != 0 {
            let ms = TICKS.load(Ordering::Relaxed).wrapping_sub(since - 1);
            kept::with(|l| {
                l.drains += 1;
                l.drain_ms_max = l.drain_ms_max.max(ms);
                l.drain_ms_total += ms;
            });
        }
    }

    /// Sends `readings` as one batch and waits for its acknowledgement: true if it came.
    pub fn send(readings: &[Reading]) -> bool {
        let (seq, boot) = kept::with(|l| {
            l.batches_sent += 1;
            (l.batches_sent, l.boots)
        });
        let mut batch = heapless::Vec::<Reading, MAX_BATCH>::new();
        for r in readings {
            let _ = batch.push(*r);
        }
        let mut out = [0u8; MAX_FRAME];
        let Ok(frame) = encode(
            &Up::Batch {
                seq,
                boot,
                readings: batch,
            },
            &mut out,
        ) else {
            return false;
        };
        uart::write_all(frame);
        let mut decoder = Decoder::new();
        let start = TICKS.load(Ordering::Relaxed);
        // Bounded by the timeout: the timer's ticks go on in its interrupt.
        while TICKS.load(Ordering::Relaxed).wrapping_sub(start) < ACK_TIMEOUT_TICKS {
            while let Some(b) = uart::try_read() {
                if decoder.push::<Down>(b) == Some(Down::Ack { seq }) {
                    return true;
                }
            }
        }
        kept::with(|l| l.ack_timeouts += 1);
        let _ = BACKLOG_SINCE.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
        false
    }
}

/// One sensor reading per tick, put and committed from the interrupt.
#[exception]
fn SysTick() {
    let tick = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
    if tick == TIMER_CUT_AT.load(Ordering::Relaxed) {
        kept::power_cut(false);
    }
    // SAMPLE_TICKS is 1 without the uplink.
    #[allow(clippy::modulo_one)]
    let due = tick % SAMPLE_TICKS == 0;
    if !SAMPLING.load(Ordering::Relaxed) || !due {
        return;
    }
    let seq = kept::with(|l| {
        let seq = l.next_seq;
        if seq as usize >= kept::MAX_READINGS {
            return None;
        }
        l.next_seq += 1;
        l.set(seq, State::PutInFlight);
        l.note_recent(seq, tick);
        Some(seq)
    });
    let Some(seq) = seq else { return };
    let mut codec = Readings::new();
    let outcome = match codec.encode(&reading(seq, tick), READING) {
        Ok(bytes) => CHANNEL.put_committed(bytes),
        // Never: a reading's encoding takes at most 13 bytes.
        Err(_) => Err(None),
    };
    let unexpected = kept::with(|l| match outcome {
        Ok(()) => {
            l.set(seq, State::Acked);
            l.acked += 1;
            false
        }
        // Full while the uplink is down: the reading is dropped, as a gateway must.
        Err(Some(Error::ChannelFull | Error::LogFull)) => {
            l.set(seq, State::Refused);
            l.refused += 1;
            false
        }
        Err(_) => {
            l.set(seq, State::Refused);
            l.refused += 1;
            true
        }
    });
    if unexpected {
        violation("a put failed for a reason other than a full channel", seq);
    }
}

/// Sends one batch up the link. Returns false if there was nothing to send. While the timer
/// runs, the acknowledgement takes a tick to come back and is sometimes lost (`live`); the
/// final drain runs without the timer and every acknowledgement arrives.
fn uplink_batch(live: bool) -> bool {
    let Some(Ok(tx)) = CHANNEL.with(|ch| ch.begin()) else {
        violation("could not begin a take transaction", 0);
        return false;
    };
    let mut batch = [0u32; BATCH];
    let mut readings: heapless::Vec<Reading, BATCH> = heapless::Vec::new();
    let mut n = 0;
    let mut codec = Readings::new();
    while n < BATCH {
        match CHANNEL.with(|ch| ch.take(tx, codec.buffer_mut())) {
            Some(Ok(Some(len))) => match decode_reading(&mut codec, len) {
                Some(r) => {
                    batch[n] = r.seq;
                    let _ = readings.push(r);
                    n += 1;
                }
                None => violation("a reading came back damaged", 0),
            },
            Some(Ok(None)) => break,
            _ => {
                violation("a take failed", 0);
                break;
            }
        }
    }
    if n == 0 {
        let _ = CHANNEL.with(|ch| ch.rollback(tx));
        return false;
    }
    // The real uplink: the batch goes over the UART to the bridge, and the take commits only
    // on its acknowledgement, which comes after the broker acknowledged every reading.
    #[cfg(feature = "uplink")]
    {
        let _ = live;
        if !link::send(&readings) {
            let _ = CHANNEL.with(|ch| ch.rollback(tx));
            return true;
        }
        link::acknowledged(n);
    }
    #[cfg(not(feature = "uplink"))]
    let _ = &readings;
    // The server receives the batch.
    for &seq in &batch[..n] {
        let state = kept::with(|l| {
            l.deliver(seq);
            l.state(seq)
        });
        match state {
            State::Acked => {}
            State::Taken => violation("delivered again after its take committed", seq),
            _ => violation("delivered but never acknowledged", seq),
        }
    }
    // The acknowledgement takes a tick to come back, and sometimes never comes.
    if live && !cfg!(feature = "uplink") {
        cortex_m::asm::wfi();
    }
    if live && !cfg!(feature = "uplink") && kept::with(|l| l.random()) % 8 == 0 {
        let _ = CHANNEL.with(|ch| ch.rollback(tx));
        return true;
    }
    kept::with(|l| {
        for &seq in &batch[..n] {
            l.set(seq, State::TakeInFlight);
        }
    });
    match CHANNEL.with(|ch| ch.commit(tx)) {
        Some(Ok(())) => kept::with(|l| {
            for &seq in &batch[..n] {
                l.set(seq, State::Taken);
                l.taken += 1;
            }
        }),
        Some(Err(Error::LogFull)) => {
            let _ = CHANNEL.with(|ch| ch.rollback(tx));
            kept::with(|l| {
                for &seq in &batch[..n] {
                    l.set(seq, State::Acked);
                }
            });
        }
        _ => violation("a take commit failed", batch[0]),
    }
    true
}

/// Batches the final drain may send before it is judged stuck. The channel holds at most its
/// capacity, a few batches; a take commit refused for log space forever (a bug that keeps the
/// log full) would otherwise make the drain loop until QEMU's timeout.
const DRAIN_BATCHES: u32 = if cfg!(feature = "uplink") {
    20_000
} else {
    1_000
};

/// The last boot: the uplink stays up and drains everything, with no cuts.
fn drain() {
    for _ in 0..DRAIN_BATCHES {
        if !uplink_batch(false) {
            return;
        }
    }
    violation("the final drain did not empty the channel", 0);
}

/// Compares what recovery found with the ledger.
fn check_recovered(boot: u32) {
    let Some(Ok(tx)) = CHANNEL.with(|ch| ch.begin()) else {
        violation("could not begin the check's transaction", 0);
        return;
    };
    let mut codec = Readings::new();
    let mut queued = 0u32;
    loop {
        match CHANNEL.with(|ch| ch.take(tx, codec.buffer_mut())) {
            Some(Ok(Some(len))) => {
                queued += 1;
                let Some(seq) = decode(&mut codec, len) else {
                    violation("a queued reading is damaged", 0);
                    continue;
                };
                let state = kept::with(|l| {
                    let s = l.state(seq);
                    match s {
                        State::PutInFlight => {
                            // Its commit landed before the cut: it counts as acknowledged.
                            l.acked += 1;
                            l.set(seq, State::Seen);
                        }
                        State::Acked | State::TakeInFlight => l.set(seq, State::Seen),
                        _ => {}
                    }
                    s
                });
                match state {
                    State::PutInFlight | State::Acked | State::TakeInFlight => {}
                    State::Seen => violation("queued twice", seq),
                    State::Taken => violation("queued again after its take committed", seq),
                    State::Refused => violation("queued though its put was refused", seq),
                    State::Never | State::Lost => violation("queued but never acknowledged", seq),
                }
            }
            Some(Ok(None)) => break,
            // A full queue fills the check's transaction exactly, and the next take reports
            // the transaction full before it looks for more: everything was seen.
            Some(Err(Error::TransactionFull)) if queued >= CONFIG.transaction_capacity() => break,
            _ => {
                violation("a take failed during the boot check", 0);
                break;
            }
        }
    }
    let _ = CHANNEL.with(|ch| ch.rollback(tx));
    let mut lost = [0u32; 4];
    let mut lost_n = 0;
    kept::with(|l| {
        for seq in l.settled..l.next_seq {
            match l.state(seq) {
                State::Seen => l.set(seq, State::Acked),
                State::PutInFlight => {
                    l.set(seq, State::Lost);
                    l.lost += 1;
                }
                State::TakeInFlight => {
                    l.set(seq, State::Taken);
                    l.taken += 1;
                }
                // Acknowledged yet not queued, or taken for good yet never delivered: lost.
                s @ (State::Acked | State::Taken) if s == State::Acked || l.delivered(seq) == 0 => {
                    if lost_n < lost.len() {
                        lost[lost_n] = seq;
                    }
                    lost_n += 1;
                }
                _ => {}
            }
        }
        while l.settled < l.next_seq
            && matches!(
                l.state(l.settled),
                State::Taken | State::Refused | State::Lost
            )
        {
            l.settled += 1;
        }
    });
    for &seq in &lost[..lost_n.min(lost.len())] {
        violation("acknowledged, but neither queued nor delivered", seq);
    }
    for _ in lost.len()..lost_n {
        violation("acknowledged, but neither queued nor delivered", 0);
    }
    defmt::debug!(
        "boot {=u32}: {=u32} readings queued after recovery",
        boot,
        queued
    );
}

/// Prints the summary and exits: 0 if no violation was found.
fn finish() -> ! {
    let stack = kept::stack_used();
    kept::with(|l| l.stack_bytes = l.stack_bytes.max(stack));
    let stats = CHANNEL.stats();
    let l = kept::with(|l| {
        (
            l.boots,
            l.cuts_in_flash,
            l.cuts_in_timer,
            l.next_seq,
            l.acked,
            l.refused,
            l.lost,
            l.deliveries,
            l.redeliveries,
            l.taken,
            l.violations,
            l.flash_rule_breaks,
        )
    });
    let (erases_min, erases_max) = kept::with(|l| {
        let log = &l.block_erases[..(LOG_BYTES as usize / BLOCK)];
        (
            log.iter().copied().min().unwrap_or(0),
            log.iter().copied().max().unwrap_or(0),
        )
    });
    defmt::println!(
        "summary: boots={=u32} cuts={=u32} (in flash operations {=u32}, from the timer {=u32}); opens that checkpointed their verdict: {=u32}",
        l.0,
        l.1 + l.2,
        l.1,
        l.2,
        kept::with(|l| l.checkpointed_opens)
    );
    defmt::println!(
        "summary: readings={=u32} acknowledged={=u32} refused_full={=u32} lost_unacknowledged={=u32}",
        l.3,
        l.4,
        l.5,
        l.6
    );
    defmt::println!(
        "summary: delivered={=u32} (deliveries {=u32}, redeliveries after uncommitted takes {=u32})",
        l.9,
        l.7,
        l.8
    );
    if let Some(stats) = stats {
        let wear = Wear::of_log(&stats);
        defmt::println!(
            "summary: log wear from the segment headers: min={=u64} max={=u64} total={=u64}; erases counted by the driver per log block: min={=u32} max={=u32}",
            wear.min,
            wear.max,
            wear.total,
            erases_min,
            erases_max
        );
    }
    defmt::println!(
        "summary: channel RAM: {=usize} bytes of memory + {=usize} bytes of Channel struct; deepest stack {=u32} bytes; flash words programmed twice: {=u32}",
        CONFIG.memory_bytes(),
        core::mem::size_of::<Channel<Store, Memory, Keys>>(),
        kept::with(|l| l.stack_bytes),
        l.11
    );
    #[cfg(feature = "uplink")]
    print_taken(l.3);
    let (in_clear, first) = readings_in_the_clear();
    defmt::println!(
        "summary: sealed={=bool}; readings found in the clear in the log partition: {=u32}",
        keys().active().is_some(),
        in_clear
    );
    match (keys().active().is_some(), in_clear) {
        (true, n) if n > 0 => violation("a sealed channel left a reading in the clear", first),
        // The control: a plaintext log shows its readings, so the search can find them.
        (false, 0) => violation("the search found no reading in a plaintext log", 0),
        _ => {}
    }
    let violations = kept::with(|l| l.violations);
    defmt::println!("summary: violations={=u32}", violations);
    exit(violations == 0)
}

/// The readings whose take committed on the bridge's acknowledgement, as ranges, for the test
/// that compares them with what the broker received.
#[cfg(feature = "uplink")]
fn print_taken(sampled: u32) {
    let (sent, timeouts) = kept::with(|l| (l.batches_sent, l.ack_timeouts));
    let (drains, max, total) = kept::with(|l| (l.drains, l.drain_ms_max, l.drain_ms_total));
    defmt::println!(
        "uplink: batches_sent={=u32} ack_timeouts={=u32} backlogs_drained={=u32} drain_ms_mean={=u32} drain_ms_max={=u32} (a backlog: from the first batch not acknowledged in time to the batch that emptied the queue, within one boot)",
        sent,
        timeouts,
        drains,
        total.checked_div(drains).unwrap_or(0),
        max
    );
    let mut start = None;
    for seq in 0..=sampled {
        let taken = seq < sampled && kept::with(|l| l.state(seq)) == State::Taken;
        match (taken, start) {
            (true, None) => start = Some(seq),
            (false, Some(from)) => {
                defmt::println!("uplink: taken {=u32}..{=u32}", from, seq);
                start = None;
            }
            _ => {}
        }
    }
}

/// How many places in the log partition hold the exact encoding of one of the newest readings
/// put (some in a plaintext run, none in a sealed one), and the first such reading.
fn readings_in_the_clear() -> (u32, u32) {
    let (recent, noted) = kept::with(|l| (l.recent, l.recent_count));
    let (mut found, mut first) = (0, 0);
    let mut codec = Readings::new();
    for &(seq, at_ms) in &recent[..(noted as usize).min(kept::RECENT)] {
        let Ok(pattern) = codec.encode(&reading(seq, at_ms), READING) else {
            continue;
        };
        critical_section::with(|cs| {
            let _device = DEVICE.borrow_ref_mut(cs);
            let log = &nor::bytes()[..LOG_BYTES as usize];
            for window in log.windows(pattern.len()) {
                if window == pattern {
                    if found == 0 {
                        first = seq;
                    }
                    found += 1;
                }
            }
        });
    }
    (found, first)
}

fn fatal_geometry(e: sluicegate_flash::GeometryError) -> ! {
    defmt::error!("the partitions do not fit the flash part: {}", e);
    exit(false)
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {=u32:#x}", frame.pc());
    exit(false)
}
