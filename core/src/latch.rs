//! [`Latched`]: the channel's storage, with the first failed write or sync of the log latched.
//!
//! After a failed write or sync the state of the unsynced data is unknown (PostgreSQL's fsync
//! lesson): nothing written after it may be reported durable, so the channel writes nothing more
//! until it is reopened and recovery has read what really is on the medium. Every log write,
//! erase and sync of the channel goes through this wrapper, so no write path can forget to
//! latch a failure; every write path starts with `Channel::check_writable`, which asks it.
//!
//! What does not latch: a failed erase or preparation for lack of space (it touched only a free
//! segment, which the next try does again, so a channel on a full disk is usable once space is
//! freed);
//! failures in the checkpoint regions (a failed checkpoint is abandoned and counted, and the log
//! is not affected); reads.
//!
//! **Invariant:** once `latched()` is true it stays true for the life of the channel.

use crate::storage::{ErrorType, Region, Storage, StorageError, StorageErrorKind};

/// A storage whose first failed log write or sync is latched. See the module docs.
#[derive(Debug)]
pub(crate) struct Latched<S> {
    inner: S,
    latched: bool,
}

impl<S> Latched<S> {
    pub(crate) fn new(inner: S) -> Self {
        Latched {
            inner,
            latched: false,
        }
    }

    /// True once a log write or sync failed (or [`Latched::latch`] was called).
    pub(crate) fn latched(&self) -> bool {
        self.latched
    }

    /// Latches a failure the wrapper did not see: a sync the adapter carried out itself (group
    /// commit), or a write the core found inconsistent.
    pub(crate) fn latch(&mut self) {
        self.latched = true;
    }

    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    fn note<T, E: StorageError>(&mut self, region: Region, result: Result<T, E>) -> Result<T, E> {
        if region == Region::Log && result.is_err() {
            self.latched = true;
        }
        result
    }

    /// As [`Latched::note`], except that lack of space does not latch: an erase or a
    /// preparation touches only a free segment, which the next try does again.
    fn note_unless_full<E: StorageError>(
        &mut self,
        region: Region,
        result: Result<(), E>,
    ) -> Result<(), E> {
        match &result {
            Err(e) if e.kind() == StorageErrorKind::NoSpace => result,
            _ => self.note(region, result),
        }
    }
}

impl<S: Storage> ErrorType for Latched<S> {
    type Error = S::Error;
}

impl<S: Storage> Storage for Latched<S> {
    const READ_SIZE: usize = S::READ_SIZE;
    const WRITE_SIZE: usize = S::WRITE_SIZE;
    const ERASE_SIZE: usize = S::ERASE_SIZE;

    fn capacity(&self, region: Region) -> u64 {
        self.inner.capacity(region)
    }

    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(region, offset, buf)
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        debug_assert!(
            region != Region::Log || !self.latched,
            "a log write after a latched failure: a write path skipped check_writable"
        );
        let result = self.inner.write(region, offset, data);
        self.note(region, result)
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        debug_assert!(
            region != Region::Log || !self.latched,
            "a log erase after a latched failure: a write path skipped check_writable"
        );
        let result = self.inner.erase(region, from, to);
        self.note_unless_full(region, result)
    }

    fn prepare(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        let result = self.inner.prepare(region, from, to);
        self.note_unless_full(region, result)
    }

    fn whole_records(&self) -> bool {
        self.inner.whole_records()
    }

    fn rewritable(&self) -> bool {
        self.inner.rewritable()
    }

    fn salt(&mut self) -> u32 {
        self.inner.salt()
    }

    /// Never latches: a segment that could not be released only stays as it was.
    fn release(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        self.inner.release(region, from, to)
    }

    fn erase_tail(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        debug_assert!(
            region != Region::Log || !self.latched,
            "a log erase after a latched failure: a write path skipped check_writable"
        );
        let result = self.inner.erase_tail(region, from, to);
        self.note_unless_full(region, result)
    }

    fn sync(&mut self, region: Region) -> Result<(), Self::Error> {
        let result = self.inner.sync(region);
        self.note(region, result)
    }
}
