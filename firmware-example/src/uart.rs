//! UART0 of the mps2-an386 board (an Arm CMSDK APB UART at 0x4000_4000), polled: the uplink's
//! line. QEMU connects it to a host socket (`-serial tcp:...`), where `sluicegate bridge`
//! reads it.

use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_4000;
const DATA: *mut u32 = BASE as *mut u32;
const STATE: *mut u32 = (BASE + 0x04) as *mut u32;
const CTRL: *mut u32 = (BASE + 0x08) as *mut u32;
const BAUDDIV: *mut u32 = (BASE + 0x10) as *mut u32;

const TX_FULL: u32 = 1 << 0;
const RX_FULL: u32 = 1 << 1;
const TX_ENABLE: u32 = 1 << 0;
const RX_ENABLE: u32 = 1 << 1;

/// Enables the transmitter and the receiver (115,200 baud at the board's 25 MHz).
pub fn init() {
    // SAFETY: the UART's registers, at the address the board's memory map gives them; only
    // this module touches them, from the main loop.
    unsafe {
        write_volatile(BAUDDIV, 25_000_000 / 115_200);
        write_volatile(CTRL, TX_ENABLE | RX_ENABLE);
    }
}

/// Sends `bytes`, waiting while the transmit buffer is full.
pub fn write_all(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: as in `init`.
        unsafe {
            // Bounded by the UART: it empties its one-byte buffer onto the line.
            while read_volatile(STATE) & TX_FULL != 0 {}
            write_volatile(DATA, u32::from(b));
        }
    }
}

/// A received byte, if one is waiting.
pub fn try_read() -> Option<u8> {
    // SAFETY: as in `init`.
    unsafe { (read_volatile(STATE) & RX_FULL != 0).then(|| read_volatile(DATA) as u8) }
}
