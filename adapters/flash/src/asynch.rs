//! The flash adapter over async NOR drivers (`embedded_storage_async::nor_flash::NorFlash`,
//! feature `async`), and [`AsyncChannel`], the core's channel with async operations.
//!
//! The core is synchronous: it decides every write, erase and barrier while it holds the
//! channel. [`AsyncFlashStorage`] lets it run unchanged over a driver whose programs and erases
//! are futures:
//!
//! - While an [`AsyncChannel`] operation runs the core, the storage **stages** each write and
//!   erase the core makes (in order, in a fixed buffer of `STAGE` bytes and `OPS` operations),
//!   and a sync is only a barrier between them.
//! - When the core returns, the operation **awaits** the staged operations on the driver, one
//!   after another, in the order the core made them, and only then returns to its caller. A
//!   commit is acknowledged after its record is on flash, as with the blocking adapter.
//! - So a power cut at any moment leaves the flash exactly as the blocking adapter would leave
//!   it if the cut fell at the same program or erase: a prefix of the same operations, the one
//!   under way torn. NOR operations are complete when the driver returns, which is why the
//!   blocking adapter's sync has nothing to do either; the crash model is the same, and
//!   `cargo xtask sim` runs it (`--flash-async`).
//! - Nothing the core did is seen before it is on flash: an operation holds the channel
//!   (`&mut self`) until its staged operations have finished. Share the channel between tasks
//!   with an async mutex (for example `embassy_sync::mutex::Mutex`), which is held across the
//!   await. If an awaited operation fails, the channel is poisoned: every later call returns
//!   [`Error::Poisoned`] until it is opened again, which recovers what is on flash.
//! - **Reads** are short (a record, a slot entry) and are driven to completion where the core
//!   asks for them, polling the driver's future until it is ready (an interrupt-driven driver
//!   completes while it is polled; no executor is needed). A read of a range with a staged
//!   write or erase first finishes the staged operations the same way, so it reads what the
//!   core wrote. So does a write or erase that finds the stage full. Both are counted
//!   ([`AsyncCounters`]): with a stage larger than a put's record and a commit's, a put, a take
//!   and a commit await every program and erase they make, and only checkpoints (which write
//!   many slot entries) and opens may block.
//!
//! Outside an [`AsyncChannel`] operation (a plain `Channel` over this storage) every write and
//! erase is made at once, as the blocking adapter makes it.

use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use embedded_storage_async::nor_flash::{ErrorType as FlashErrorType, NorFlash};
use heapless::Vec;
use sluicegate_core::{
    Channel, Config, Error, ErrorType, EventId, KeyProvider, NoKeys, Recovery, Region, Stats,
    Storage, Txn,
};

use crate::{check_partitions, check_sizes, FlashError, GeometryError, MAX_READ_SIZE};

/// Drives `future` to completion on this thread: polls it with a waker that does nothing until
/// it is ready. A driver completes its operation in an interrupt or by being polled, so this
/// needs no executor; it blocks the caller while the operation runs.
fn spin<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    // Bounded by the driver: the operation finishes.
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        core::hint::spin_loop();
    }
}

/// What the stage holds: a write of `len` bytes kept at `data` in the byte buffer, or an erase.
#[derive(Debug, Clone, Copy)]
struct Op {
    region: Region,
    at: u32,
    len: u32,
    /// `Some(start in the byte buffer)` for a write; `None` for an erase of `at..at + len`.
    data: Option<u16>,
}

/// How the async adapter's flash operations ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AsyncCounters {
    /// Programs and erases awaited after a core operation (the caller's task yields while they
    /// run).
    pub awaited: u64,
    /// Programs and erases finished while the core waited (a full stage, a read of a staged
    /// range, or no operation under way): the caller's task did not yield for them.
    pub blocked: u64,
    /// Reads driven to completion where the core asked for them.
    pub reads: u64,
}

/// The core's storage over three async NOR flash partitions of the same geometry, staging
/// writes and erases during an [`AsyncChannel`] operation (see the module docs). `STAGE` bytes
/// of writes and `OPS` operations fit the stage (at most 65,535 bytes).
#[derive(Debug, Clone)]
pub struct AsyncFlashStorage<L, C, B, const STAGE: usize = 256, const OPS: usize = 8>
where
    L: FlashErrorType,
    L::Error: Clone,
{
    log: L,
    checkpoint: C,
    backup: B,
    /// True while an [`AsyncChannel`] operation runs the core: writes and erases are staged.
    staging: bool,
    /// The first staged operation that failed, until a flush reports it: the core may have
    /// counted on it (a sync only marked a barrier), so the caller must hear of it even if the
    /// core's own call that met it forgave the error (a checkpoint's).
    failed: Option<FlashError<L::Error>>,
    ops: Vec<Op, OPS>,
    bytes: Vec<u8, STAGE>,
    counters: AsyncCounters,
}

impl<L, C, B, const STAGE: usize, const OPS: usize> AsyncFlashStorage<L, C, B, STAGE, OPS>
where
    L: NorFlash,
    L::Error: Clone,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    /// Checks the geometry as [`crate::FlashStorage::new`] does.
    pub fn new(log: L, checkpoint: C, backup: B) -> Result<Self, GeometryError> {
        const {
            check_sizes(
                [L::WRITE_SIZE, C::WRITE_SIZE, B::WRITE_SIZE],
                [L::ERASE_SIZE, C::ERASE_SIZE, B::ERASE_SIZE],
                [L::READ_SIZE, C::READ_SIZE, B::READ_SIZE],
            );
            assert!(STAGE <= u16::MAX as usize, "STAGE is at most 65,535 bytes");
            assert!(OPS >= 1, "OPS is at least 1");
        }
        check_partitions(
            [log.capacity(), checkpoint.capacity(), backup.capacity()],
            L::ERASE_SIZE,
        )?;
        Ok(AsyncFlashStorage {
            log,
            checkpoint,
            backup,
            staging: false,
            failed: None,
            ops: Vec::new(),
            bytes: Vec::new(),
            counters: AsyncCounters::default(),
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

    /// Gives the partitions back, with any staged operation dropped (as a power cut would).
    pub fn into_devices(self) -> (L, C, B) {
        (self.log, self.checkpoint, self.backup)
    }

    /// How the flash operations ran so far.
    pub fn counters(&self) -> AsyncCounters {
        self.counters
    }

    /// Operations staged and not yet made.
    pub fn staged(&self) -> usize {
        self.ops.len()
    }

    /// Stages the core's writes and erases from now on (`true`) or makes them at once
    /// (`false`). Only for a caller that awaits [`AsyncFlashStorage::flush`] before it tells
    /// anyone what the core did, as [`AsyncChannel`] does: a staged write is not on flash.
    pub fn set_staging(&mut self, on: bool) {
        self.staging = on;
    }

    /// Makes every staged operation, in order, awaiting each. On an error the operations after
    /// the failed one are dropped (their state is as after a power cut there).
    /// A staged operation that failed earlier, while the core waited for it (a read or a
    /// full stage), is reported here too, and the staged operations are dropped.
    pub async fn flush(&mut self) -> Result<(), FlashError<L::Error>> {
        let result = match self.failed.take() {
            Some(e) => Err(e),
            None => self.run_staged(true).await,
        };
        self.ops.clear();
        self.bytes.clear();
        result
    }

    /// Makes the staged operations in order; counted as awaited or blocked.
    async fn run_staged(&mut self, awaited: bool) -> Result<(), FlashError<L::Error>> {
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            let data = match op.data {
                Some(start) => start as usize..start as usize + op.len as usize,
                None => 0..0,
            };
            let result = Self::run_one(
                (&mut self.log, &mut self.checkpoint, &mut self.backup),
                op,
                &self.bytes[data],
            )
            .await;
            if awaited {
                self.counters.awaited += 1;
            } else {
                self.counters.blocked += 1;
            }
            result?;
        }
        Ok(())
    }

    /// Makes one operation on its partition: a program of `data`, or an erase.
    async fn run_one(
        (log, checkpoint, backup): (&mut L, &mut C, &mut B),
        op: Op,
        data: &[u8],
    ) -> Result<(), FlashError<L::Error>> {
        let region = op.region;
        let end = op.at + op.len;
        match (op.data, region) {
            (Some(_), Region::Log) => log.write(op.at, data).await,
            (Some(_), Region::Checkpoint) => checkpoint.write(op.at, data).await,
            (Some(_), Region::Backup) => backup.write(op.at, data).await,
            (None, Region::Log) => log.erase(op.at, end).await,
            (None, Region::Checkpoint) => checkpoint.erase(op.at, end).await,
            (None, Region::Backup) => backup.erase(op.at, end).await,
        }
        .map_err(|error| FlashError::Device { region, error })
    }

    /// Makes `op` now, after the staged operations, on this thread; keeps a failure for the
    /// flush during an operation.
    fn run_now(&mut self, op: Op, data: &[u8]) -> Result<(), FlashError<L::Error>> {
        self.finish_staged()?;
        self.counters.blocked += 1;
        let result = spin(Self::run_one(
            (&mut self.log, &mut self.checkpoint, &mut self.backup),
            op,
            data,
        ));
        self.latch(result)
    }

    /// Makes the staged operations now, on this thread.
    fn finish_staged(&mut self) -> Result<(), FlashError<L::Error>> {
        let result = spin(self.run_staged(false));
        self.ops.clear();
        self.bytes.clear();
        if let Err(e) = &result {
            self.failed.get_or_insert_with(|| e.clone());
        }
        result
    }

    /// During an operation, keeps the first failure for [`AsyncFlashStorage::flush`].
    fn latch(
        &mut self,
        result: Result<(), FlashError<L::Error>>,
    ) -> Result<(), FlashError<L::Error>> {
        if let (true, Err(e)) = (self.staging, &result) {
            self.failed.get_or_insert_with(|| e.clone());
        }
        result
    }

    fn span(&self, region: Region, offset: u64, len: usize) -> Result<u32, FlashError<L::Error>> {
        let capacity = self.capacity(region);
        match offset.checked_add(len as u64) {
            Some(end) if end <= capacity => Ok(offset as u32),
            _ => Err(FlashError::OutOfBounds { region }),
        }
    }

    /// True if a staged operation touches `at..at + len` of `region`.
    fn staged_over(&self, region: Region, at: u32, len: u32) -> bool {
        self.ops
            .iter()
            .any(|op| op.region == region && op.at < at + len && at < op.at + op.len)
    }

    /// Stages `op` (with `data` for a write), finishing the stage first if it is full. Returns
    /// false if the write is larger than the whole stage (the caller makes it at once).
    fn stage(&mut self, op: Op, data: &[u8]) -> Result<bool, FlashError<L::Error>> {
        if data.len() > STAGE {
            self.finish_staged()?;
            return Ok(false);
        }
        if self.ops.is_full() || self.bytes.len() + data.len() > STAGE {
            self.finish_staged()?;
        }
        let start = self.bytes.len() as u16;
        // Room was made above.
        let _ = self.bytes.extend_from_slice(data);
        let op = Op {
            data: op.data.map(|_| start),
            ..op
        };
        let _ = self.ops.push(op);
        Ok(true)
    }
}

impl<L, C, B, const STAGE: usize, const OPS: usize> ErrorType
    for AsyncFlashStorage<L, C, B, STAGE, OPS>
where
    L: NorFlash,
    L::Error: Clone,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    type Error = FlashError<L::Error>;
}

impl<L, C, B, const STAGE: usize, const OPS: usize> Storage
    for AsyncFlashStorage<L, C, B, STAGE, OPS>
where
    L: NorFlash,
    L::Error: Clone,
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
        if self.staged_over(region, at, buf.len() as u32) {
            self.finish_staged()?;
        }
        self.counters.reads += 1;
        let device = |error| FlashError::Device { region, error };
        match region {
            Region::Log => spin(read_any(&mut self.log, at, buf)),
            Region::Checkpoint => spin(read_any(&mut self.checkpoint, at, buf)),
            Region::Backup => spin(read_any(&mut self.backup, at, buf)),
        }
        .map_err(device)
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        let at = self.span(region, offset, data.len())?;
        let op = Op {
            region,
            at,
            len: data.len() as u32,
            data: Some(0),
        };
        if self.staging && self.stage(op, data)? {
            return Ok(());
        }
        self.run_now(op, data)
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), Self::Error> {
        let len = to
            .checked_sub(from)
            .ok_or(FlashError::OutOfBounds { region })?;
        let at = self.span(region, from, len as usize)?;
        let op = Op {
            region,
            at,
            len: len as u32,
            data: None,
        };
        if self.staging && self.stage(op, &[])? {
            return Ok(());
        }
        self.run_now(op, &[])
    }

    /// A barrier between staged operations, which are made in order; outside an operation
    /// nothing is staged. NOR programs and erases are durable when the driver returns.
    fn sync(&mut self, _region: Region) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// As [`crate::read_any`], over an async driver.
async fn read_any<F: NorFlash>(dev: &mut F, offset: u32, buf: &mut [u8]) -> Result<(), F::Error> {
    let unit = F::READ_SIZE as u32;
    if unit == 1 {
        return dev.read(offset, buf).await;
    }
    let end = offset + buf.len() as u32;
    let mid_start = offset.next_multiple_of(unit).min(end);
    let mid_end = (end / unit * unit).max(mid_start);
    let (head, rest) = buf.split_at_mut((mid_start - offset) as usize);
    let (mid, tail) = rest.split_at_mut((mid_end - mid_start) as usize);
    if !mid.is_empty() {
        dev.read(mid_start, mid).await?;
    }
    let mut bounce = [0u8; MAX_READ_SIZE];
    for (part, start) in [(head, offset), (tail, mid_end)] {
        if part.is_empty() {
            continue;
        }
        let base = start / unit * unit;
        let window = &mut bounce[..unit as usize];
        dev.read(base, window).await?;
        let skip = (start - base) as usize;
        part.copy_from_slice(&window[skip..skip + part.len()]);
    }
    Ok(())
}

/// The core's [`Channel`] over [`AsyncFlashStorage`], with async operations: each runs the
/// core, then awaits the programs and erases it made before it returns (see the module docs).
pub struct AsyncChannel<L, C, B, M, K = NoKeys, const STAGE: usize = 256, const OPS: usize = 8>
where
    L: NorFlash,
    L::Error: Clone,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
{
    inner: Channel<AsyncFlashStorage<L, C, B, STAGE, OPS>, M, K>,
    poisoned: bool,
}

/// The error of an [`AsyncChannel`] over partitions whose driver fails with `E`.
pub type AsyncError<E> = Error<FlashError<E>>;

impl<L, C, B, M, const STAGE: usize, const OPS: usize> AsyncChannel<L, C, B, M, NoKeys, STAGE, OPS>
where
    L: NorFlash,
    L::Error: Clone,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
    M: AsRef<[u64]> + AsMut<[u64]>,
{
    /// Opens a plaintext channel: recovery runs (its reads block), then what the open wrote
    /// (a checkpoint that pins its verdict) is awaited before it returns.
    pub async fn open(
        storage: AsyncFlashStorage<L, C, B, STAGE, OPS>,
        memory: M,
        config: Config,
    ) -> Result<Self, AsyncError<L::Error>> {
        Self::open_with_keys(storage, memory, config, NoKeys).await
    }
}

impl<L, C, B, M, K, const STAGE: usize, const OPS: usize> AsyncChannel<L, C, B, M, K, STAGE, OPS>
where
    L: NorFlash,
    L::Error: Clone,
    C: NorFlash<Error = L::Error>,
    B: NorFlash<Error = L::Error>,
    M: AsRef<[u64]> + AsMut<[u64]>,
    K: KeyProvider,
{
    /// Opens a channel with keys, as `Channel::open_with_keys`, awaiting what the open wrote.
    pub async fn open_with_keys(
        mut storage: AsyncFlashStorage<L, C, B, STAGE, OPS>,
        memory: M,
        config: Config,
        keys: K,
    ) -> Result<Self, AsyncError<L::Error>> {
        storage.set_staging(true);
        let mut inner = Channel::open_with_keys(storage, memory, config, keys)?;
        let flushed = inner.storage_mut().flush().await;
        inner.storage_mut().set_staging(false);
        flushed.map_err(Error::Storage)?;
        Ok(AsyncChannel {
            inner,
            poisoned: false,
        })
    }

    /// Runs `f` on the core with writes and erases staged, then awaits them.
    async fn run<R>(
        &mut self,
        f: impl FnOnce(
            &mut Channel<AsyncFlashStorage<L, C, B, STAGE, OPS>, M, K>,
        ) -> Result<R, AsyncError<L::Error>>,
    ) -> Result<R, AsyncError<L::Error>> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.inner.storage_mut().set_staging(true);
        let result = f(&mut self.inner);
        let flushed = self.inner.storage_mut().flush().await;
        self.inner.storage_mut().set_staging(false);
        if let Err(e) = flushed {
            // The core counted on what did not reach flash: only a reopen knows what did.
            self.poisoned = true;
            return Err(Error::Storage(e));
        }
        result
    }

    /// Begins a transaction.
    pub async fn begin(&mut self) -> Result<Txn, AsyncError<L::Error>> {
        self.run(|ch| ch.begin()).await
    }

    /// Puts an event; its record is on flash when this returns.
    pub async fn put(&mut self, txn: Txn, event: &[u8]) -> Result<(), AsyncError<L::Error>> {
        self.run(|ch| ch.put(txn, event)).await
    }

    /// Takes the next event into `buf`, as `Channel::take`.
    pub async fn take(
        &mut self,
        txn: Txn,
        buf: &mut [u8],
    ) -> Result<Option<usize>, AsyncError<L::Error>> {
        self.run(|ch| ch.take(txn, buf)).await
    }

    /// Takes the next event into `buf` with its id, as `Channel::take_with_id`.
    pub async fn take_with_id(
        &mut self,
        txn: Txn,
        buf: &mut [u8],
    ) -> Result<Option<(usize, EventId)>, AsyncError<L::Error>> {
        self.run(|ch| ch.take_with_id(txn, buf)).await
    }

    /// Commits: returns once the commit record (and any checkpoint it started) is on flash.
    pub async fn commit(&mut self, txn: Txn) -> Result<(), AsyncError<L::Error>> {
        self.run(|ch| ch.commit(txn)).await
    }

    /// Rolls back.
    pub async fn rollback(&mut self, txn: Txn) -> Result<(), AsyncError<L::Error>> {
        self.run(|ch| ch.rollback(txn)).await
    }

    /// Writes a checkpoint now.
    pub async fn checkpoint(&mut self) -> Result<(), AsyncError<L::Error>> {
        self.run(|ch| ch.checkpoint()).await
    }

    /// A snapshot of the state and counters.
    pub fn stats(&mut self) -> Stats {
        self.inner.stats()
    }

    /// What the open recovered.
    pub fn recovery(&self) -> &Recovery {
        self.inner.recovery()
    }

    /// Events queued.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True if no event is queued.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// How the flash operations ran so far.
    pub fn counters(&self) -> AsyncCounters {
        self.inner.storage().counters()
    }

    /// The storage (for tests that inspect the medium).
    pub fn storage(&self) -> &AsyncFlashStorage<L, C, B, STAGE, OPS> {
        self.inner.storage()
    }

    /// The storage, mutably (for tests that damage the medium under an open channel).
    pub fn storage_mut(&mut self) -> &mut AsyncFlashStorage<L, C, B, STAGE, OPS> {
        self.inner.storage_mut()
    }

    /// Gives the storage and the memory back.
    pub fn into_parts(self) -> (AsyncFlashStorage<L, C, B, STAGE, OPS>, M) {
        self.inner.into_parts()
    }
}
