//! One NOR device cut into partitions, so the log, checkpoint and backup can share a chip.

use core::cell::RefCell;

use critical_section::Mutex;
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// A window `[start, start + len)` of a device shared behind a critical-section mutex. Each
/// operation borrows the device inside a critical section, so partitions of one chip can live
/// in different places (a [`crate::SharedChannel`] in a `static`, for example).
///
/// `start` and `len` must be whole erase blocks; [`Partition::new`] checks it.
pub struct Partition<'a, F> {
    device: &'a Mutex<RefCell<F>>,
    start: u32,
    len: u32,
}

impl<F> core::fmt::Debug for Partition<'_, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Partition")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, F: NorFlash> Partition<'a, F> {
    /// The window `[start, start + len)` of `device`, or `None` if it is not made of whole erase
    /// blocks or runs past the device's end.
    pub fn new(device: &'a Mutex<RefCell<F>>, start: u32, len: u32) -> Option<Self> {
        let erase = F::ERASE_SIZE as u32;
        let capacity = critical_section::with(|cs| device.borrow_ref(cs).capacity());
        let end = start.checked_add(len)?;
        if start % erase != 0 || len % erase != 0 || end as usize > capacity {
            return None;
        }
        Some(Partition { device, start, len })
    }

    fn check(&self, offset: u32, len: usize) -> Result<u32, PartitionError<F::Error>> {
        let len = u32::try_from(len).map_err(|_| PartitionError::OutOfBounds)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.start + offset),
            _ => Err(PartitionError::OutOfBounds),
        }
    }
}

/// A partition's error: the device's, or an access beyond the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PartitionError<E> {
    /// The device failed.
    Device(E),
    /// The access runs past the partition's end.
    OutOfBounds,
}

impl<E: embedded_storage::nor_flash::NorFlashError> embedded_storage::nor_flash::NorFlashError
    for PartitionError<E>
{
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            PartitionError::Device(e) => e.kind(),
            PartitionError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

impl<F: NorFlash> ErrorType for Partition<'_, F> {
    type Error = PartitionError<F::Error>;
}

impl<F: NorFlash> ReadNorFlash for Partition<'_, F> {
    const READ_SIZE: usize = F::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.check(offset, bytes.len())?;
        critical_section::with(|cs| self.device.borrow_ref_mut(cs).read(at, bytes))
            .map_err(PartitionError::Device)
    }

    fn capacity(&self) -> usize {
        self.len as usize
    }
}

impl<F: NorFlash> NorFlash for Partition<'_, F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let len = to.checked_sub(from).ok_or(PartitionError::OutOfBounds)?;
        let at = self.check(from, len as usize)?;
        critical_section::with(|cs| self.device.borrow_ref_mut(cs).erase(at, at + len))
            .map_err(PartitionError::Device)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = self.check(offset, bytes.len())?;
        critical_section::with(|cs| self.device.borrow_ref_mut(cs).write(at, bytes))
            .map_err(PartitionError::Device)
    }
}
