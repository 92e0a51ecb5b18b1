//! # sluicegate-flash
//!
//! The edge-gateway adapter: [`FlashStorage`] implements the core's `Storage` over three
//! [`embedded_storage::nor_flash::NorFlash`] partitions (log, checkpoint, backup), and
//! [`SharedChannel`] lets an interrupt handler put events while the main loop takes them.
//!
//! - Only `NorFlash` is required, never `MultiwriteNorFlash`: the core writes every word at most
//!   once between two erases of its block, so flash with ECC and 8- to 32-byte program words
//!   works. The host tests run the adapter on a simulated NOR part that enforces this.
//! - A NOR program or erase is durable when the driver returns, so `sync` has nothing to do. A
//!   driver that buffers writes must flush before it returns from `write`.
//! - Reads may start anywhere: a device whose `READ_SIZE` is larger than one byte is read through
//!   a 32-byte bounce buffer at the unaligned ends.
//! - Geometry is checked when the program is built where the types allow it (equal write and
//!   erase sizes across the partitions, sizes the core supports) and otherwise when the storage is
//!   made, with a [`GeometryError`].
//! - Wear: the log is a ring, so its segments are erased in turn and no segment is erased more
//!   than once more than any other. The erase counts follow from the sequence numbers in the
//!   segment headers on flash; [`Wear::of_log`] reports them.
//! - [`Partition`] cuts one device into the three regions, behind a critical section.
//! - With the `async` feature, `AsyncFlashStorage` and `AsyncChannel` do the same over
//!   `embedded_storage_async` drivers: the core's programs and erases are awaited after each
//!   operation, in the order the core made them, so the crash model is the blocking one's.
//!
//! ```
//! # use sluicegate_flash::FlashStorage;
//! # fn demo<F: embedded_storage::nor_flash::NorFlash>(log: F, a: F, b: F) {
//! let storage = FlashStorage::new(log, a, b).expect("partition sizes fit the device's geometry");
//! # }
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "async")]
mod asynch;
mod partition;
mod shared;

use core::fmt;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use sluicegate_core::{ErrorType, Region, Stats, Storage, StorageError, StorageErrorKind};

#[cfg(feature = "async")]
pub use asynch::{AsyncChannel, AsyncCounters, AsyncError, AsyncFlashStorage};
pub use partition::Partition;
pub use shared::SharedChannel;

/// The largest device read unit the adapter supports (its bounce buffer).
pub const MAX_READ_SIZE: usize = 32;

/// Logs a line through defmt when the `defmt` feature is on; nothing otherwise.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "defmt")]
        defmt::$level!($($arg)*);
    };
}
#[allow(unused_imports)]
pub(crate) use log;

/// A partition layout that does not fit the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GeometryError {
    /// A partition's size is not a whole number of erase blocks.
    NotWholeBlocks {
        /// The partition.
        region: Region,
        /// Its size in bytes.
        bytes: usize,
        /// The erase block size.
        erase_size: usize,
    },
    /// The log partition is empty.
    EmptyLog,
    /// The checkpoint and backup partitions differ in size; each holds the same two slots.
    SlotsDiffer {
        /// The checkpoint partition's size.
        checkpoint: usize,
        /// The backup partition's size.
        backup: usize,
    },
    /// A partition is larger than a 32-bit offset reaches.
    TooLarge {
        /// The partition.
        region: Region,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GeometryError::NotWholeBlocks {
                region,
                bytes,
                erase_size,
            } => write!(
                f,
                "the {region:?} partition is {bytes} bytes, not a whole number of {erase_size}-byte erase blocks"
            ),
            GeometryError::EmptyLog => f.write_str("the log partition is empty"),
            GeometryError::SlotsDiffer { checkpoint, backup } => write!(
                f,
                "the checkpoint partition is {checkpoint} bytes and the backup {backup}; they must be equal"
            ),
            GeometryError::TooLarge { region } => {
                write!(f, "the {region:?} partition is larger than 4 GiB")
            }
        }
    }
}

/// An error from the flash adapter: the device's own error, or an access outside a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashError<E> {
    /// The device failed; `region` is the partition that was being accessed.
    Device {
        /// The partition.
        region: Region,
        /// The driver's error.
        error: E,
    },
    /// The core asked for bytes beyond a partition (a bug; never seen in the tests).
    OutOfBounds {
        /// The partition.
        region: Region,
    },
}

impl<E> FlashError<E> {
    /// The driver's error, if it was one.
    pub fn device_error(&self) -> Option<&E> {
        match self {
            FlashError::Device { error, .. } => Some(error),
            FlashError::OutOfBounds { .. } => None,
        }
    }
}

impl<E: NorFlashError> StorageError for FlashError<E> {
    fn kind(&self) -> StorageErrorKind {
        match self {
            FlashError::Device { error, .. } => match error.kind() {
                NorFlashErrorKind::NotAligned => StorageErrorKind::NotAligned,
                NorFlashErrorKind::OutOfBounds => StorageErrorKind::OutOfBounds,
                _ => StorageErrorKind::Io,
            },
            FlashError::OutOfBounds { .. } => StorageErrorKind::OutOfBounds,
        }
    }
}

impl<E: fmt::Debug> fmt::Display for FlashError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashError::Device { region, error } => {
                write!(f, "flash error in the {region:?} partition: {error:?}")
            }
            FlashError::OutOfBounds { region } => {
                write!(f, "access beyond the {region:?} partition")
            }
        }
    }
}

/// The core's storage over three NOR flash partitions of the same geometry.
#[derive(Debug, Clone)]
pub struct FlashStorage<L, C, B> {
    log: L,
    checkpoint: C,
    backup: B,
}

impl<L, C, B> FlashStorage<L, C, B>
where
    L: NorFlash,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    /// Checks the geometry at build time where it can (equal write, erase and read sizes across
    /// the partitions, a read size the bounce buffer holds) and the partition sizes now.
    pub fn new(log: L, checkpoint: C, backup: B) -> Result<Self, GeometryError> {
        const {
            check_sizes(
                [L::WRITE_SIZE, C::WRITE_SIZE, B::WRITE_SIZE],
                [L::ERASE_SIZE, C::ERASE_SIZE, B::ERASE_SIZE],
                [L::READ_SIZE, C::READ_SIZE, B::READ_SIZE],
            )
        }
        let erase = L::ERASE_SIZE;
        check_partitions(
            [log.capacity(), checkpoint.capacity(), backup.capacity()],
            erase,
        )?;
        log!(
            info,
            "sluicegate-flash: log {=usize} B, slots {=usize} B, write {=usize} B, erase {=usize} B",
            log.capacity(),
            checkpoint.capacity(),
            L::WRITE_SIZE,
            erase
        );
        Ok(FlashStorage {
            log,
            checkpoint,
            backup,
        })
    }

    /// The three partitions.
    pub fn devices(&self) -> (&L, &C, &B) {
        (&self.log, &self.checkpoint, &self.backup)
    }

    /// The three partitions, mutably (for tests that damage or inspect the medium).
    pub fn devices_mut(&mut self) -> (&mut L, &mut C, &mut B) {
        (&mut self.log, &mut self.checkpoint, &mut self.backup)
    }

    /// Gives the partitions back.
    pub fn into_devices(self) -> (L, C, B) {
        (self.log, self.checkpoint, self.backup)
    }

    fn span(&self, region: Region, offset: u64, len: usize) -> Result<u32, FlashError<L::Error>> {
        let capacity = self.capacity(region);
        match offset.checked_add(len as u64) {
            Some(end) if end <= capacity => Ok(offset as u32),
            _ => Err(FlashError::OutOfBounds { region }),
        }
    }
}

impl<L, C, B> ErrorType for FlashStorage<L, C, B>
where
    L: NorFlash,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    type Error = FlashError<L::Error>;
}

/// Runs `$body` with `$dev` bound to the partition for `$region`.
macro_rules! on_device {
    ($self:ident, $region:expr, |$dev:ident| $body:expr) => {
        match $region {
            Region::Log => {
                let $dev = &mut $self.log;
                $body
            }
            Region::Checkpoint => {
                let $dev = &mut $self.checkpoint;
                $body
            }
            Region::Backup => {
                let $dev = &mut $self.backup;
                $body
            }
        }
    };
}

impl<L, C, B> Storage for FlashStorage<L, C, B>
where
    L: NorFlash,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    const READ_SIZE: usize = 1;
    const WRITE_SIZE: usize = L::WRITE_SIZE;
    const ERASE_SIZE: usize = L::ERASE_SIZE;

    fn capacity(&self, region: Region) -> u64 {
        (match region {
            Region::Log => self.log.capacity(),
            Region::Checkpoint => self.checkpoint.capacity(),
            Region::Backup => self.backup.capacity(),
        }) as u64
    }

    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.span(region, offset, buf.len())?;
        let device = |error| FlashError::Device { region, error };
        on_device!(self, region, |dev| read_any(dev, at, buf).map_err(device))
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        let at = self.span(region, offset, data.len())?;
        let result = on_device!(self, region, |dev| dev.write(at, data));
        result.map_err(|error| {
            log!(warn, "sluicegate-flash: write failed at {=u32}", at);
            FlashError::Device { region, error }
        })
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        let len = to
            .checked_sub(from)
            .ok_or(FlashError::OutOfBounds { region })?;
        let at = self.span(region, from, len as usize)?;
        let end = at + len as u32;
        let result = on_device!(self, region, |dev| dev.erase(at, end));
        result.map_err(|error| {
            log!(warn, "sluicegate-flash: erase failed at {=u32}", at);
            FlashError::Device { region, error }
        })
    }

    /// NOR programs and erases are durable when the driver returns: nothing to do.
    fn sync(&mut self, _region: Region) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Checks, when the program is built, that the three partitions' write, erase and read sizes
/// are equal, that the read size fits the bounce buffer and divides the erase block.
pub(crate) const fn check_sizes(write: [usize; 3], erase: [usize; 3], read: [usize; 3]) {
    assert!(
        write[0] == write[1] && write[0] == write[2],
        "the three partitions must have the same WRITE_SIZE"
    );
    assert!(
        erase[0] == erase[1] && erase[0] == erase[2],
        "the three partitions must have the same ERASE_SIZE"
    );
    assert!(
        read[0] == read[1] && read[0] == read[2],
        "the three partitions must have the same READ_SIZE"
    );
    assert!(
        read[0] >= 1 && MAX_READ_SIZE % read[0] == 0,
        "READ_SIZE must be a power of two no larger than 32"
    );
    assert!(
        erase[0] % read[0] == 0,
        "ERASE_SIZE must be a multiple of READ_SIZE"
    );
}

/// Checks the three partitions' sizes (log, checkpoint, backup) against the erase block.
pub(crate) fn check_partitions(sizes: [usize; 3], erase: usize) -> Result<(), GeometryError> {
    let regions = [Region::Log, Region::Checkpoint, Region::Backup];
    for (region, bytes) in regions.into_iter().zip(sizes) {
        if bytes % erase != 0 {
            return Err(GeometryError::NotWholeBlocks {
                region,
                bytes,
                erase_size: erase,
            });
        }
        if u32::try_from(bytes).is_err() {
            return Err(GeometryError::TooLarge { region });
        }
    }
    if sizes[0] == 0 {
        return Err(GeometryError::EmptyLog);
    }
    if sizes[1] != sizes[2] {
        return Err(GeometryError::SlotsDiffer {
            checkpoint: sizes[1],
            backup: sizes[2],
        });
    }
    Ok(())
}

/// Reads `buf.len()` bytes at any `offset` from a device whose reads must be aligned to its
/// `READ_SIZE`: the aligned middle directly, the ends through a bounce buffer.
fn read_any<F: NorFlash>(dev: &mut F, offset: u32, buf: &mut [u8]) -> Result<(), F::Error> {
    let unit = F::READ_SIZE as u32;
    if unit == 1 {
        return dev.read(offset, buf);
    }
    let end = offset + buf.len() as u32;
    let mid_start = offset.next_multiple_of(unit).min(end);
    let mid_end = (end / unit * unit).max(mid_start);
    let (head, rest) = buf.split_at_mut((mid_start - offset) as usize);
    let (mid, tail) = rest.split_at_mut((mid_end - mid_start) as usize);
    if !mid.is_empty() {
        dev.read(mid_start, mid)?;
    }
    let mut bounce = [0u8; MAX_READ_SIZE];
    for (part, start) in [(head, offset), (tail, mid_end)] {
        if part.is_empty() {
            continue;
        }
        let base = start / unit * unit;
        let window = &mut bounce[..unit as usize];
        dev.read(base, window)?;
        let skip = (start - base) as usize;
        part.copy_from_slice(&window[skip..skip + part.len()]);
    }
    Ok(())
}

/// How often the log's erase blocks have been erased, from the sequence number of the newest
/// segment (kept in its header on flash): segment `seq` lives in slot `seq % segments` and each
/// opening erases its slot once, so slot `k` has been erased once for every sequence number
/// up to the newest that maps to it.
///
/// The counts are exact except that a power cut during a segment's erase, before its header is
/// written, repeats that erase under the same number after restart: such an erase is counted
/// once. The ring keeps `max - min` at most 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Wear {
    /// The fewest erases of any log segment.
    pub min: u64,
    /// The most erases of any log segment.
    pub max: u64,
    /// Erases of all log segments together.
    pub total: u64,
}

impl Wear {
    /// The wear of a channel's log, from its stats.
    pub fn of_log(stats: &Stats) -> Wear {
        let n = stats.segments.max(1);
        let newest = stats.newest_segment;
        let of_slot = |k: u64| if newest >= k { (newest - k) / n + 1 } else { 0 };
        let max = of_slot(0);
        let min = of_slot(n - 1);
        // The first `newest % n + 1` slots have been erased `max` times, the rest one fewer.
        let full = (newest % n) + 1;
        let total = full * max + (n - full) * min;
        Wear { min, max, total }
    }

    /// How many times the log's segment in `slot` has been erased.
    pub fn of_slot(stats: &Stats, slot: u64) -> u64 {
        let n = stats.segments.max(1);
        let newest = stats.newest_segment;
        if newest >= slot {
            (newest - slot) / n + 1
        } else {
            0
        }
    }
}
