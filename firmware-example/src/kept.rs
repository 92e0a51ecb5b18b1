//! What survives a power cut besides the flash: the witness ledger. It stands for the world
//! outside the gateway (the sensor's numbering and the server at the end of the uplink), so it
//! lives in RAM that startup does not clear and is never part of what the channel may use.
//!
//! Every reading has a state, moved forward by the firmware as it learns outcomes, and a count
//! of deliveries seen by the "server". At each boot the recovered queue is compared with the
//! states; see `main.rs` for the rules.

use core::ptr::{addr_of, addr_of_mut};

use crate::nor::{Kept, BLOCK, BYTES};

/// Readings the ledger can follow; the run stops putting when they are used up.
pub const MAX_READINGS: usize = 1 << 20;
const MAGIC: u32 = 0x5157_4733;
/// The newest readings the ledger remembers whole.
pub const RECENT: usize = 64;

/// A reading's state in the ledger.
#[derive(Clone, Copy, PartialEq, Eq, defmt::Format)]
#[repr(u8)]
pub enum State {
    /// Not sampled yet.
    Never = 0,
    /// Its put is being committed; a cut now may keep it or lose it.
    PutInFlight,
    /// Its put commit returned: the channel must deliver it.
    Acked,
    /// The channel was full or the put failed: it must never appear.
    Refused,
    /// Its put was cut before it returned and recovery did not find it: lost, as allowed.
    Lost,
    /// The take commit of its batch is in flight.
    TakeInFlight,
    /// Its take committed: it must never be delivered again.
    Taken,
    /// Found in the queue by this boot's check (only during the check).
    Seen,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::PutInFlight,
            2 => State::Acked,
            3 => State::Refused,
            4 => State::Lost,
            5 => State::TakeInFlight,
            6 => State::Taken,
            7 => State::Seen,
            _ => State::Never,
        }
    }
}

/// The ledger.
#[repr(C)]
pub struct Ledger {
    magic: u32,
    /// Boots so far, this one included.
    pub boots: u32,
    /// Power cuts inside a flash program or erase.
    pub cuts_in_flash: u32,
    /// Power cuts from the timer interrupt, between flash operations.
    pub cuts_in_timer: u32,
    /// The next reading's number.
    pub next_seq: u32,
    /// Every reading below this one is settled (taken, refused or lost), so the boot check
    /// starts here.
    pub settled: u32,
    /// Readings whose put commit returned.
    pub acked: u32,
    /// Readings refused (channel or log full).
    pub refused: u32,
    /// Readings whose put was cut and did not survive.
    pub lost: u32,
    /// Deliveries to the server, repeats included.
    pub deliveries: u32,
    /// Deliveries of a reading the server had already seen (after a take that did not commit).
    pub redeliveries: u32,
    /// Readings whose take committed.
    pub taken: u32,
    /// Broken promises found.
    pub violations: u32,
    /// Opens that wrote a checkpoint to make their recovery's verdict final.
    pub checkpointed_opens: u32,
    /// Words programmed twice without an erase (ECC flash would reject them).
    pub flash_rule_breaks: u32,
    rng: u32,
    /// The most stack any boot used, in bytes (measured when the boot ends).
    pub stack_bytes: u32,
    /// Erases of each block of the part, counted by the driver.
    pub block_erases: [u32; BYTES / BLOCK],
    /// The newest readings put, as (sequence, sample time), a ring: the final check searches
    /// the log partition for their exact encodings.
    pub recent: [(u32, u32); RECENT],
    /// Readings ever noted in `recent`.
    pub recent_count: u32,
    /// Batches sent over the real uplink (their sequence numbers).
    pub batches_sent: u32,
    /// Batches whose acknowledgement did not come in time (their takes rolled back).
    pub ack_timeouts: u32,
    /// Backlogs (batches not acknowledged in time) drained within the boot they began in.
    pub drains: u32,
    /// The longest and the total time of those, from the first unacknowledged batch to the
    /// batch that emptied the queue, in ms.
    pub drain_ms_max: u32,
    pub drain_ms_total: u32,
    state: [u8; MAX_READINGS],
    delivered: [u8; MAX_READINGS],
}

#[link_section = ".uninit.sluicegate.ledger"]
static LEDGER: Kept<Ledger> = Kept::new();

/// Runs `f` on the ledger in a critical section. `f` must not call `with` again.
pub fn with<R>(f: impl FnOnce(&mut Ledger) -> R) -> R {
    critical_section::with(|_| {
        // SAFETY: one core, inside a critical section, and `f` does not re-enter: this is the
        // only reference. `boot` initialised the ledger before anything else calls `with`.
        f(unsafe { &mut *LEDGER.get() })
    })
}

/// Counts this boot. Returns true if the ledger was new (the first boot, or RAM lost): it is
/// then zeroed and seeded, and the caller erases the flash.
pub fn boot(seed: u32) -> bool {
    let p = LEDGER.get();
    // SAFETY: no other reference exists yet (interrupts are not started). The magic is read
    // through a raw pointer because, on the first boot, nothing has written it.
    let new = unsafe { core::ptr::read_volatile(addr_of!((*p).magic)) } != MAGIC;
    if new {
        // SAFETY: as above; all-zero bytes are a valid `Ledger` (integers only).
        unsafe {
            core::ptr::write_bytes(p, 0, 1);
            addr_of_mut!((*p).magic).write(MAGIC);
            addr_of_mut!((*p).rng).write(seed | 1);
        }
    }
    with(|l| l.boots += 1);
    new
}

impl Ledger {
    /// Remembers reading `seq`, sampled at `at_ms`, among the newest.
    pub fn note_recent(&mut self, seq: u32, at_ms: u32) {
        self.recent[self.recent_count as usize % RECENT] = (seq, at_ms);
        self.recent_count += 1;
    }
    /// A reading's state.
    pub fn state(&self, seq: u32) -> State {
        State::from_u8(self.state[seq as usize])
    }
    /// Sets a reading's state.
    pub fn set(&mut self, seq: u32, state: State) {
        self.state[seq as usize] = state as u8;
    }
    /// How often the server has received a reading.
    pub fn delivered(&self, seq: u32) -> u8 {
        self.delivered[seq as usize]
    }
    /// The server receives a reading; returns its delivery count.
    pub fn deliver(&mut self, seq: u32) -> u8 {
        let d = &mut self.delivered[seq as usize];
        *d = d.saturating_add(1);
        self.deliveries += 1;
        if *d > 1 {
            self.redeliveries += 1;
        }
        *d
    }
    /// xorshift32.
    pub fn random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x
    }
}

/// A random number below `n` (`n > 0`).
pub fn random_below(n: u32) -> u32 {
    with(|l| l.random()) % n
}

/// A random byte.
pub fn random_byte() -> u8 {
    with(|l| l.random()) as u8
}

/// Counts a program of a word that was not erased.
pub fn flash_rule_broken() {
    defmt::error!("flash: a word was programmed twice without an erase");
    with(|l| {
        l.flash_rule_breaks += 1;
        l.violations += 1;
    });
}

/// Counts an erase of `block`.
pub fn block_erased(block: usize) {
    with(|l| l.block_erases[block] += 1);
}

/// Cuts the power: counts the cut and resets the core. RAM outside `.uninit` is lost, as are
/// the channel's memory and every open transaction; the flash image is kept.
pub fn power_cut(in_flash: bool) -> ! {
    let stack = stack_used();
    with(|l| {
        l.stack_bytes = l.stack_bytes.max(stack);
        if in_flash {
            l.cuts_in_flash += 1;
        } else {
            l.cuts_in_timer += 1;
        }
    });
    cortex_m::peripheral::SCB::sys_reset()
}

/// How far below its top the stack is painted at boot.
const STACK_PAINT_BYTES: usize = 32 * 1024;
const PAINT: u32 = 0x5AC6_E5A7;

extern "C" {
    /// The stack's top, from cortex-m-rt's link script.
    static _stack_start: u32;
}

fn stack_top() -> usize {
    // Only the symbol's address is taken, never its value.
    addr_of!(_stack_start) as usize
}

/// Paints the unused stack below the current frame, so [`stack_used`] can find how deep the
/// stack went. Call first thing at boot.
#[inline(never)]
pub fn paint_stack() {
    let bottom = stack_top() - STACK_PAINT_BYTES;
    // Leave a margin below the current frame for this function's own calls.
    let below = cortex_m::register::msp::read() as usize - 256;
    let mut p = bottom;
    while p < below {
        // SAFETY: [bottom, below) is stack memory below every live frame (the stack grows
        // down from `_stack_start`, and the ledger and flash image end far below `bottom`).
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// The deepest the stack has gone since [`paint_stack`], in bytes.
pub fn stack_used() -> u32 {
    let top = stack_top();
    let mut p = top - STACK_PAINT_BYTES;
    // SAFETY: reads of painted stack memory below the live frames, as above.
    while p < top && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    (top - p) as u32
}
