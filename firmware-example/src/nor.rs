//! The "flash chip": a NOR part emulated in a RAM region that startup does not clear, so its
//! contents survive the resets that stand in for power cuts.
//!
//! It keeps the rules of ECC NOR flash: 8-byte program words, each programmed at most once per
//! erase of its 4 KiB block (a second program is counted as a violation), and programs can only
//! clear bits. A power cut can be armed to fall inside the Nth program or erase: it tears that
//! operation (some words programmed, one word half-programmed; or part of a block erased and a
//! run of garbage after it) and resets the core at once.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, Ordering};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use crate::kept;

/// The program word: ECC flash of the STM32L4/G4 kind.
pub const WORD: usize = 8;
/// The erase block.
pub const BLOCK: usize = 4096;
/// The whole part: 20 blocks (the log takes 16, each checkpoint region 2).
pub const BYTES: usize = 20 * BLOCK;
const ERASED: u8 = 0xFF;

/// Memory that the reset handler leaves alone (cortex-m-rt's `.uninit` section).
pub struct Kept<T>(UnsafeCell<MaybeUninit<T>>);

// SAFETY: every access goes through a raw pointer inside a critical section (see `kept`), and
// the firmware runs on one core.
unsafe impl<T> Sync for Kept<T> {}

impl<T> Kept<T> {
    /// Uninitialised; startup does not touch it either.
    pub const fn new() -> Self {
        Kept(UnsafeCell::new(MaybeUninit::uninit()))
    }
    /// The raw pointer to the contents.
    pub fn get(&self) -> *mut T {
        self.0.get().cast()
    }
}

#[link_section = ".uninit.sluicegate.flash"]
static IMAGE: Kept<[u8; BYTES]> = Kept::new();

/// Program and erase operations left before the armed power cut (0: none armed).
static CUT_IN: AtomicU32 = AtomicU32::new(0);

/// Arms a power cut inside the `n`th program or erase from now (`n >= 1`), or disarms (0).
pub fn arm_cut(n: u32) {
    CUT_IN.store(n, Ordering::Relaxed);
}

/// True if this operation is the one the armed cut falls in.
fn cut_now() -> bool {
    match CUT_IN.load(Ordering::Relaxed) {
        0 => false,
        1 => {
            CUT_IN.store(0, Ordering::Relaxed);
            true
        }
        n => {
            CUT_IN.store(n - 1, Ordering::Relaxed);
            false
        }
    }
}

/// Fills the image with the erased value: a new part, at the first boot.
pub fn erase_chip() {
    // SAFETY: called once at boot, before any `Nor` exists and with interrupts off.
    unsafe { core::ptr::write_bytes(IMAGE.get().cast::<u8>(), ERASED, BYTES) };
}

/// The whole part, to read: call it only while holding the part's mutex (`DEVICE`), so no
/// program or erase runs at the same time.
pub fn bytes() -> &'static [u8; BYTES] {
    image()
}

fn image() -> &'static mut [u8; BYTES] {
    // SAFETY: the image is only reached through the one `Nor`, which lives behind a
    // critical-section mutex, so there is never a second reference at the same time; the
    // bytes were initialised by `erase_chip` at the first boot and kept since.
    unsafe { &mut *IMAGE.get() }
}

/// The driver's error: only misuse, which the core never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum NorError {
    /// Misaligned offset or length.
    NotAligned,
    /// Beyond the part.
    OutOfBounds,
}

impl NorFlashError for NorError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            NorError::NotAligned => NorFlashErrorKind::NotAligned,
            NorError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

/// The driver.
pub struct Nor {
    /// Operations counted, for the summary.
    pub programs: u32,
    /// Block erases counted, for the summary.
    pub erases: u32,
}

impl Nor {
    /// The driver; the image must have been erased once (see [`erase_chip`]).
    pub const fn new() -> Self {
        Nor {
            programs: 0,
            erases: 0,
        }
    }
}

impl ErrorType for Nor {
    type Error = NorError;
}

fn check(offset: u32, len: usize, align: usize) -> Result<usize, NorError> {
    let at = offset as usize;
    if at % align != 0 || len % align != 0 {
        return Err(NorError::NotAligned);
    }
    match at.checked_add(len) {
        Some(end) if end <= BYTES => Ok(at),
        _ => Err(NorError::OutOfBounds),
    }
}

impl ReadNorFlash for Nor {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorError> {
        let at = check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&image()[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        BYTES
    }
}

impl NorFlash for Nor {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = BLOCK;

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorError> {
        let at = check(offset, bytes.len(), WORD)?;
        let img = image();
        let words = bytes.len() / WORD;
        // With a cut armed here, only `done` words are programmed and the next one is torn.
        let done = if cut_now() {
            kept::random_below(words as u32 + 1) as usize
        } else {
            words
        };
        for w in 0..done.min(words) {
            let cell = &mut img[at + w * WORD..at + (w + 1) * WORD];
            if cell.iter().any(|&b| b != ERASED) {
                kept::flash_rule_broken();
            }
            for (c, b) in cell.iter_mut().zip(&bytes[w * WORD..]) {
                *c &= *b;
            }
        }
        self.programs += 1;
        if done < words {
            // The torn word: a random subset of the bits that were to be cleared are cleared.
            let cell = &mut img[at + done * WORD..at + (done + 1) * WORD];
            for (c, b) in cell.iter_mut().zip(&bytes[done * WORD..]) {
                *c &= *b | kept::random_byte();
            }
            kept::power_cut(true);
        }
        Ok(())
    }

    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorError> {
        if to < from {
            return Err(NorError::OutOfBounds);
        }
        let at = check(from, (to - from) as usize, BLOCK)?;
        let img = image();
        for block in (at..to as usize).step_by(BLOCK) {
            if cut_now() {
                // Part of the block erased, then a run of garbage where the erase stopped.
                let cleared = kept::random_below(BLOCK as u32) as usize;
                img[block..block + cleared].fill(ERASED);
                let garbage = (kept::random_below(64) as usize).min(BLOCK - cleared);
                for b in &mut img[block + cleared..block + cleared + garbage] {
                    *b = kept::random_byte();
                }
                kept::power_cut(true);
            }
            img[block..block + BLOCK].fill(ERASED);
            self.erases += 1;
            kept::block_erased(block / BLOCK);
        }
        Ok(())
    }
}
