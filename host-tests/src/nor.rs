//! A simulated NOR flash part behind `embedded_storage`'s `NorFlash`, as strict as the parts it
//! stands for and crueller when the power fails. It runs the flash adapter in the host tests.
//!
//! Rules it enforces (a broken rule is recorded in [`SimNor::violations`] and the model
//! checker fails the run):
//! - writes and erases are aligned to the program word `W` and the erase block `E`;
//! - a program moves bits only away from the erased value (AND-writes when erased is `0xFF`,
//!   OR-writes when it is `0x00`; the erased value is configurable);
//! - each word is programmed at most once between erases of its block (ECC flash), also after
//!   an interrupted program or erase left it in an unknown state.
//!
//! When the power is cut ([`SimNor::cut_power_after`]), the operation under way is torn and
//! every later one fails until [`SimNor::reboot`]:
//! - a program keeps a prefix of its words (the last one partly), or a random subset of the
//!   bits it was to program, or all of them but one bit; the bits it did not finish read
//!   *unstable*: each read returns them at random until the block is erased (on by default for
//!   a part; [`SimNor::set_unstable_reads`]);
//! - an erase leaves each block of the range erased, untouched, or full of garbage with some
//!   unstable bits.
//!
//! A NOR program or erase is complete when it returns, so there is nothing to lose at a cut but
//! the operation under way. Every operation is counted, per erase block too.

use std::cell::Cell;
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sluicegate_core::StorageErrorKind;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// An error from the simulated part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NorError {
    /// Misaligned offset or length.
    NotAligned,
    /// Beyond the part's end.
    OutOfBounds,
    /// The power is off (the cut happened during this operation or before it).
    PowerLoss,
}

impl NorFlashError for NorError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            NorError::NotAligned => NorFlashErrorKind::NotAligned,
            NorError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            NorError::PowerLoss => NorFlashErrorKind::Other,
        }
    }
}

impl NorError {
    /// How the core would classify it, had it seen it directly.
    pub fn storage_kind(&self) -> StorageErrorKind {
        match self {
            NorError::NotAligned => StorageErrorKind::NotAligned,
            NorError::OutOfBounds => StorageErrorKind::OutOfBounds,
            NorError::PowerLoss => StorageErrorKind::PowerLoss,
        }
    }
}

/// Operation counts of a part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NorCounters {
    /// `read` calls.
    pub reads: u64,
    /// `write` (program) calls.
    pub writes: u64,
    /// `erase` calls.
    pub erases: u64,
    /// Bytes programmed.
    pub bytes_written: u64,
    /// Erase blocks erased.
    pub blocks_erased: u64,
}

/// The power line of one or more parts: a cut scheduled on it counts the mutations of every
/// part on it, and powers them all off together.
#[derive(Debug, Clone, Copy)]
struct Supply {
    /// Mutations left before the cut; `None`: no cut scheduled.
    cut_in: Option<u64>,
    powered: bool,
}

/// A NOR part of `W`-byte program words and `E`-byte erase blocks.
#[derive(Debug)]
pub struct SimNor<const W: usize, const E: usize> {
    cells: Vec<u8>,
    /// Per byte, the bits that read at random (an interrupted program or erase left them).
    unstable: Vec<u8>,
    /// Per word: programmed (or in an unknown state) since its block was last erased.
    programmed: Vec<bool>,
    erased: u8,
    rng: Pcg64Mcg,
    counters: NorCounters,
    block_erases: Vec<u32>,
    supply: Rc<Cell<Supply>>,
    violations: Vec<String>,
    unstable_reads: bool,
    multiwrite: bool,
}

/// A clone is a separate part with its own power line, in the state the original is in.
impl<const W: usize, const E: usize> Clone for SimNor<W, E> {
    fn clone(&self) -> Self {
        SimNor {
            cells: self.cells.clone(),
            unstable: self.unstable.clone(),
            programmed: self.programmed.clone(),
            erased: self.erased,
            rng: self.rng.clone(),
            counters: self.counters,
            block_erases: self.block_erases.clone(),
            supply: Rc::new(Cell::new(self.supply.get())),
            violations: self.violations.clone(),
            unstable_reads: self.unstable_reads,
            multiwrite: self.multiwrite,
        }
    }
}

impl<const W: usize, const E: usize> SimNor<W, E> {
    /// A part of `bytes` bytes (whole erase blocks), fully erased to `erased`.
    pub fn new(bytes: usize, erased: u8) -> Self {
        assert!(bytes % E == 0 && E % W == 0, "whole blocks of whole words");
        SimNor {
            cells: vec![erased; bytes],
            unstable: vec![0; bytes],
            programmed: vec![false; bytes / W],
            erased,
            rng: Pcg64Mcg::seed_from_u64(0),
            counters: NorCounters::default(),
            block_erases: vec![0; bytes / E],
            supply: Rc::new(Cell::new(Supply {
                cut_in: None,
                powered: true,
            })),
            violations: Vec::new(),
            unstable_reads: true,
            multiwrite: false,
        }
    }

    /// Lets a word be programmed again before its block is erased, as long as the program only
    /// moves bits away from the erased value (off by default). Many SPI NOR parts allow this;
    /// ECC flash does not. Sluicegate never needs it; the benchmark turns it on for
    /// sequential-storage, whose queue marks popped items by programming their header again.
    pub fn set_multiwrite(&mut self, on: bool) {
        self.multiwrite = on;
    }

    /// Whether bits an interrupted program did not finish read differently from one read to
    /// the next (on by default). Off, they keep the value the interrupted program left.
    pub fn set_unstable_reads(&mut self, on: bool) {
        self.unstable_reads = on;
    }

    /// Puts this part on `other`'s power line, as parts of one board are.
    pub fn share_power_with<const W2: usize, const E2: usize>(&mut self, other: &SimNor<W2, E2>) {
        self.supply = Rc::clone(&other.supply);
    }

    /// The erased value.
    pub fn erased_value(&self) -> u8 {
        self.erased
    }

    /// Cuts the power during the `n`th program or erase from now (0: the next one) of any part
    /// on this part's power line.
    pub fn cut_power_after(&mut self, n: u64) {
        self.supply.set(Supply {
            cut_in: Some(n),
            powered: true,
        });
    }

    /// True once the power has been cut.
    pub fn is_powered_off(&self) -> bool {
        !self.supply.get().powered
    }

    /// Powers the part's line up again; `seed` drives this part's unstable reads from now on.
    pub fn reboot(&mut self, seed: u64) {
        self.supply.set(Supply {
            cut_in: None,
            powered: true,
        });
        self.rng = Pcg64Mcg::seed_from_u64(seed);
    }

    /// Rules the user of the part broke.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Operation counts.
    pub fn counters(&self) -> NorCounters {
        self.counters
    }

    /// Zeroes the operation counts (not the per-block erase counts).
    pub fn reset_counters(&mut self) {
        self.counters = NorCounters::default();
    }

    /// How many times each erase block has been erased (interrupted erases included).
    pub fn block_erases(&self) -> &[u32] {
        &self.block_erases
    }

    /// The cells as they stand, unstable bits at their last value.
    pub fn image(&self) -> &[u8] {
        &self.cells
    }

    /// Bits that read at random now.
    pub fn unstable_bits(&self) -> usize {
        self.unstable.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Flips one bit, as media decay would (not an operation of the part).
    pub fn flip_bit(&mut self, offset: usize, bit: u8) {
        self.cells[offset] ^= 1 << bit;
    }

    /// Counts a mutation; true if the power fails during it.
    fn cut_now(&mut self) -> bool {
        let mut supply = self.supply.get();
        let cut = crate::sim::count_down(&mut supply.cut_in);
        if cut {
            supply.powered = false;
        }
        self.supply.set(supply);
        cut
    }

    /// Moves the bits of `target` that differ from the erased value into cell `i`.
    fn program_byte(&mut self, i: usize, target: u8, bits: u8) {
        // `bits`: which of the bits to program actually get programmed.
        let away = (target ^ self.erased) & bits;
        self.cells[i] ^= away & !(self.cells[i] ^ self.erased);
    }

    fn check(&self, offset: u32, len: usize, unit: usize) -> Result<usize, NorError> {
        let at = offset as usize;
        if at % unit != 0 || len % unit != 0 {
            return Err(NorError::NotAligned);
        }
        if at + len > self.cells.len() {
            return Err(NorError::OutOfBounds);
        }
        Ok(at)
    }
}

impl<const W: usize, const E: usize> ErrorType for SimNor<W, E> {
    type Error = NorError;
}

impl<const W: usize, const E: usize> ReadNorFlash for SimNor<W, E> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorError> {
        if self.is_powered_off() {
            return Err(NorError::PowerLoss);
        }
        let at = self.check(offset, bytes.len(), 1)?;
        self.counters.reads += 1;
        for (k, out) in bytes.iter_mut().enumerate() {
            let i = at + k;
            let noise = self.unstable[i];
            // Unstable bits come back different from one read to the next.
            *out = if noise == 0 {
                self.cells[i]
            } else {
                self.cells[i] ^ (self.rng.random::<u8>() & noise)
            };
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.cells.len()
    }
}

impl<const W: usize, const E: usize> NorFlash for SimNor<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorError> {
        if self.is_powered_off() {
            return Err(NorError::PowerLoss);
        }
        let at = self.check(offset, bytes.len(), W)?;
        self.counters.writes += 1;
        self.counters.bytes_written += bytes.len() as u64;
        for w in at / W..(at + bytes.len()) / W {
            if self.programmed[w] && !self.multiwrite {
                self.violations.push(format!(
                    "word at {} programmed twice without an erase",
                    w * W
                ));
            }
            self.programmed[w] = true;
        }
        for (k, &b) in bytes.iter().enumerate() {
            let programmed_back = !(b ^ self.erased) & (self.cells[at + k] ^ self.erased);
            if programmed_back != 0 {
                self.violations.push(format!(
                    "byte at {} asked to return bits to the erased value",
                    at + k
                ));
            }
        }
        if !self.cut_now() {
            for (k, &b) in bytes.iter().enumerate() {
                self.program_byte(at + k, b, 0xFF);
            }
            return Ok(());
        }
        // Torn: which bits of the program made it.
        let total_bits = bytes.len() * 8;
        let mode = self.rng.random_range(0..3);
        let cut_bit = self.rng.random_range(0..=total_bits);
        let spared = self.rng.random_range(0..total_bits.max(1));
        for (k, &b) in bytes.iter().enumerate() {
            let mut done = 0u8;
            for bit in 0..8 {
                let n = k * 8 + bit;
                let lands = match mode {
                    // A prefix of the bits, word by word.
                    0 => n < cut_bit,
                    // A random subset.
                    1 => self.rng.random_bool(0.5),
                    // All but one.
                    _ => n != spared,
                };
                if lands {
                    done |= 1 << bit;
                }
            }
            let i = at + k;
            let wanted = (b ^ self.erased) & !(self.cells[i] ^ self.erased);
            self.program_byte(i, b, done);
            // Bits it was programming but did not finish read at random from now on.
            if self.unstable_reads {
                self.unstable[i] |= wanted & !done;
            }
        }
        Err(NorError::PowerLoss)
    }

    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorError> {
        if self.is_powered_off() {
            return Err(NorError::PowerLoss);
        }
        let len = (to as usize)
            .checked_sub(from as usize)
            .ok_or(NorError::OutOfBounds)?;
        let at = self.check(from, len, E)?;
        self.counters.erases += 1;
        let cut = self.cut_now();
        for block in at / E..(at + len) / E {
            let range = block * E..(block + 1) * E;
            self.block_erases[block] += 1;
            self.counters.blocks_erased += 1;
            let outcome = if cut { self.rng.random_range(0..3) } else { 0 };
            match outcome {
                0 => {
                    self.cells[range.clone()].fill(self.erased);
                    self.unstable[range.clone()].fill(0);
                    self.programmed[block * E / W..(block + 1) * E / W].fill(false);
                }
                1 => {} // untouched
                _ => {
                    // Garbage, some of it unstable; its words are in an unknown state.
                    for i in range.clone() {
                        self.cells[i] = self.rng.random();
                        self.unstable[i] = if self.unstable_reads && self.rng.random_bool(0.1) {
                            self.rng.random()
                        } else {
                            0
                        };
                    }
                    self.programmed[block * E / W..(block + 1) * E / W].fill(true);
                }
            }
        }
        if cut {
            Err(NorError::PowerLoss)
        } else {
            Ok(())
        }
    }
}
