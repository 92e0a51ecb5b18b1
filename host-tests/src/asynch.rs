//! Async NOR parts for the host: [`Yielding`] turns any blocking `NorFlash` (a [`SimNor`]) into
//! an `embedded_storage_async` one whose every operation first yields to the executor a few
//! times, as a driver waiting for the part's busy flag does. The flash adapter's async side
//! runs on it as [`AsyncFlashSim`](crate::model::AsyncFlashSim), in the model checker as on
//! the blocking side.
//!
//! [`SimNor`]: crate::nor::SimNor

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash as BlockingNor, ReadNorFlash as BlockingRead,
};
use embedded_storage_async::nor_flash::{NorFlash, ReadNorFlash};

/// A blocking NOR part behind the async traits: each read yields once, each program twice and
/// each erase `erase_yields` times (8 by default) before the part does the operation.
#[derive(Debug, Clone)]
pub struct Yielding<F> {
    inner: F,
    erase_yields: u32,
    yields: u64,
}

impl<F> Yielding<F> {
    /// `inner` behind the async traits.
    pub fn new(inner: F) -> Self {
        Yielding {
            inner,
            erase_yields: 8,
            yields: 0,
        }
    }

    /// The part.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The part, mutably.
    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }

    /// Times an operation gave the executor back so far.
    pub fn yields(&self) -> u64 {
        self.yields
    }

    fn pause(&mut self, n: u32) -> Pause {
        self.yields += u64::from(n);
        Pause(n)
    }
}

/// Pending `n` times (waking itself each time), then ready.
struct Pause(u32);

impl Future for Pause {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<F: ErrorType> ErrorType for Yielding<F> {
    type Error = F::Error;
}

impl<F: BlockingRead> ReadNorFlash for Yielding<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.pause(1).await;
        self.inner.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl<F: BlockingNor> NorFlash for Yielding<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let n = self.erase_yields;
        self.pause(n).await;
        self.inner.erase(from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.pause(2).await;
        self.inner.write(offset, bytes)
    }
}
