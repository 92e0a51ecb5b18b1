//! The storage boundary: the only way the core touches media.
//!
//! A [`Storage`] holds three regions ([`Region::Log`], [`Region::Checkpoint`],
//! [`Region::Backup`]) with the semantics of NOR flash, the common denominator of every medium
//! Sluicegate runs on:
//!
//! - a byte can be written once until the erase block that holds it is erased again;
//! - writes are whole multiples of [`Storage::WRITE_SIZE`] at offsets aligned to it, erases whole
//!   multiples of [`Storage::ERASE_SIZE`];
//! - nothing written or erased is durable until [`Storage::sync`] on that region has returned.
//!
//! Files emulate these rules (the file adapter), flash has them natively (the flash adapter) and
//! the simulated media in `host-tests` enforce them. The core decides every ordering question:
//! what is written where and where the sync barriers go. An adapter never decides durability.
//!
//! **Invariant:** the core never writes a word twice between two erases of its block, and never
//! relies on the value an erase leaves behind (so media that erase to `0x00` and to `0xFF` both
//! work). The one exception is a storage that says it can be rewritten
//! ([`Storage::rewritable`], files): there a run continues in the last segment, writing over the
//! previous run's torn tail once it has cleared it.

use core::fmt::Debug;

/// One of the three regions a [`Storage`] provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Region {
    /// The write-ahead log: a ring of segments holding put and commit records.
    Log,
    /// The checkpoint region: a snapshot of the queue so restart replays only the log's tail.
    Checkpoint,
    /// The backup region: a second copy of the checkpoint, possibly on another device.
    Backup,
}

/// What kind of failure a storage error is, so the core can react without knowing the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The offset or length is not aligned to the region's write, read or erase size.
    NotAligned,
    /// The range lies outside the region.
    OutOfBounds,
    /// The device has no room left (ENOSPC on files).
    NoSpace,
    /// The device reported an I/O failure; the state of the data is unknown.
    Io,
    /// Power was lost (simulated media only): the operation may have been partly applied.
    PowerLoss,
    /// Anything else.
    Other,
}

/// An error from a storage adapter.
pub trait StorageError: Debug {
    /// Classifies the error.
    fn kind(&self) -> StorageErrorKind;
}

/// Ties an error type to a storage adapter (as `embedded_storage::nor_flash::ErrorType` does).
pub trait ErrorType {
    /// The adapter's error.
    type Error: StorageError;
}

/// Byte-addressed, NOR-like media with three regions. See the module docs for the rules.
///
/// Offsets are `u64` so a server log can exceed 4 GiB; flash adapters check that they fit their
/// 32-bit address space.
pub trait Storage: ErrorType {
    /// Reads may start and end at any byte. An adapter over a device with a coarser read unit
    /// buffers internally; the core checks at compile time that this is 1.
    const READ_SIZE: usize;
    /// The write (program) unit in bytes: every write is a whole number of these, aligned.
    const WRITE_SIZE: usize;
    /// The erase unit in bytes: every erase is a whole number of these, aligned.
    const ERASE_SIZE: usize;

    /// The size of `region` in bytes. Never changes while the storage is open.
    fn capacity(&self, region: Region) -> u64;

    /// Reads `buf.len()` bytes at `offset`. Reads see every write made so far, synced or not.
    ///
    /// Power cut during it: nothing changes on the medium.
    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Programs `data` at `offset`; both are multiples of `WRITE_SIZE`. Each word is written at
    /// most once between erases of its block.
    ///
    /// Power cut during it: any subset of the words being written may be programmed, and a word
    /// may be programmed partly (some bits only). Words outside the range are untouched. Without
    /// a later `sync`, a power cut may also lose the whole write.
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Erases `[from, to)`; both are multiples of `ERASE_SIZE`.
    ///
    /// Power cut during it: each block in the range may be erased, untouched, or left with
    /// arbitrary contents. Without a later `sync` the erase may also be lost.
    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error>;

    /// The durability barrier: when it returns `Ok`, every write and erase made to `region`
    /// before the call survives a power cut.
    ///
    /// Power cut during it: any subset of the unsynced writes and erases may have become durable.
    /// If it returns an error the state of the unsynced data is unknown, and the core stops
    /// writing until it is reopened (the fsync lesson from PostgreSQL).
    fn sync(&mut self, region: Region) -> Result<(), Self::Error>;

    /// Called before a write that adds data (a put, or a put's commit) rolls the log into a
    /// new segment, with the range of the segment after that one. An adapter that makes
    /// segments on demand makes that one ready now, and fails with
    /// [`StorageErrorKind::NoSpace`] if it cannot: so the put fails for room while a take's
    /// commit, which is never announced, still finds a segment to go on in and can drain the
    /// channel. It writes nothing the core reads. The default does nothing.
    fn prepare(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        let _ = (region, from, to);
        Ok(())
    }

    /// True if the adapter gathers log writes that continue one another into larger ones (the
    /// file adapter). A server build of the core then hands each sealed record that fits its
    /// staging buffer to the storage as one write, header first, as it does a plaintext one,
    /// instead of its body and then its header in front of it. The default, false, keeps the
    /// body-first order, which needs no second staging buffer (firmware stacks are small).
    fn whole_records(&self) -> bool {
        false
    }

    /// True if the log can be written again over bytes written before, without an erase, and a
    /// byte reads back exactly what was last made durable there (files). A run then continues
    /// in the last segment, after the last intact record, instead of opening a segment of its
    /// own: before its first write it overwrites the previous run's tail beyond that record
    /// with zeros (and erases the whole blocks after it) and syncs. The default, false, is NOR
    /// flash: a word a cut program left half done may read as erased and must never be
    /// programmed again, so every run that writes starts a new segment.
    fn rewritable(&self) -> bool {
        false
    }

    /// Erases `from..to` of the segment a run goes on in, past the previous run's tail (only
    /// over a [`Storage::rewritable`] storage, whole erase blocks, followed by a sync). What a
    /// power cut during it leaves is as for [`Storage::erase`]. The default erases; an adapter
    /// may do it more cheaply (the file adapter zeroes the range without writing it).
    fn erase_tail(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        self.erase(region, from, to)
    }

    /// Called when segment `from..to` of the log holds nothing the core will read again until
    /// the log rolls into it once more (and erases it first): every event in it was taken and
    /// both checkpoints replay from after it. Asked for only over a [`Storage::rewritable`]
    /// storage, when a checkpoint completes. An adapter that makes segments on demand may
    /// give the room back: delete the file, or keep it to reuse for another segment. The
    /// range may read as anything afterwards, at once and after a power cut. An error is
    /// ignored (the segment stays as it was). The default does nothing.
    fn release(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        let _ = (region, from, to);
        Ok(())
    }

    /// A random number for the header of a new log segment, asked for only over a
    /// [`Storage::rewritable`] storage, where the core erases a reused segment's first block
    /// and leaves the rest as earlier laps left it. The core binds it into every record's CRC
    /// of the segment, so that a record image some event body of an earlier lap carried at
    /// the spot where this segment's records end cannot pass for one of them (it passes by
    /// a 2^-32 chance). A stale record of an earlier lap fails the CRC even with a salt of 0,
    /// by its sequence number. The default is 0; the file adapter draws from the operating
    /// system.
    fn salt(&mut self) -> u32 {
        0
    }
}

/// An optional capability of a [`Storage`]: a sync of the log in three steps, so that the
/// durable wait runs without the caller's lock and commits from several threads share one sync
/// (group commit). The core drives it, and keeps the one book of what is durable
/// (`Channel::begin_sync`, `Channel::finish_sync`); the adapter only performs it.
pub trait SplitSync: Storage {
    /// What a sync begun now must make durable.
    type Ticket;

    /// Under the caller's lock: a ticket that covers every log write and erase made so far.
    fn begin_log_sync(&mut self) -> Self::Ticket;

    /// Without the lock: makes durable what the ticket covers, exactly as
    /// `sync(Region::Log)` would have at [`SplitSync::begin_log_sync`]. Safe while other
    /// writes are made. An error means the state of the unsynced data is unknown.
    fn run_log_sync(ticket: &Self::Ticket) -> Result<(), Self::Error>;

    /// Under the lock again, after [`SplitSync::run_log_sync`] returned `Ok`: records that
    /// what the ticket covers is durable, so a later sync need not repeat it.
    fn settle_log_sync(&mut self, ticket: &Self::Ticket);
}

/// A `&mut S` is a storage too, so a caller can lend its storage to a channel and take it back.
impl<S: ErrorType + ?Sized> ErrorType for &mut S {
    type Error = S::Error;
}

impl<S: Storage> Storage for &mut S {
    const READ_SIZE: usize = S::READ_SIZE;
    const WRITE_SIZE: usize = S::WRITE_SIZE;
    const ERASE_SIZE: usize = S::ERASE_SIZE;

    fn capacity(&self, region: Region) -> u64 {
        S::capacity(self, region)
    }
    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        S::read(self, region, offset, buf)
    }
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        S::write(self, region, offset, data)
    }
    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        S::erase(self, region, from, to)
    }
    fn sync(&mut self, region: Region) -> Result<(), Self::Error> {
        S::sync(self, region)
    }
    fn prepare(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        S::prepare(self, region, from, to)
    }
    fn whole_records(&self) -> bool {
        S::whole_records(self)
    }
    fn rewritable(&self) -> bool {
        S::rewritable(self)
    }
    fn erase_tail(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        S::erase_tail(self, region, from, to)
    }
    fn release(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        S::release(self, region, from, to)
    }
    fn salt(&mut self) -> u32 {
        S::salt(self)
    }
}

impl<S: SplitSync> SplitSync for &mut S {
    type Ticket = S::Ticket;
    fn begin_log_sync(&mut self) -> Self::Ticket {
        S::begin_log_sync(self)
    }
    fn run_log_sync(ticket: &Self::Ticket) -> Result<(), Self::Error> {
        S::run_log_sync(ticket)
    }
    fn settle_log_sync(&mut self, ticket: &Self::Ticket) {
        S::settle_log_sync(self, ticket)
    }
}
