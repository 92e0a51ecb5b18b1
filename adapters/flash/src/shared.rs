//! A channel shared between interrupt handlers and the main loop.

use core::cell::RefCell;

use critical_section::Mutex;
use sluicegate_core::{Channel, Error, KeyProvider, NoKeys, Stats, Storage, Txn};

/// A [`Channel`] behind a critical-section mutex, for a `static`: an interrupt handler puts
/// events while the main loop takes them, each call in its own critical section.
///
/// Transactions are handles, so a take transaction can stay open across many calls (and across
/// the interrupts between them) while the main loop waits for the uplink's acknowledgement.
/// Every call holds the critical section for the flash operations it makes: a put-and-commit
/// from an interrupt programs a few words (see the pinned operation counts in `host-tests`), and
/// interrupts of higher priority wait that long. `K` is the channel's key provider (`NoKeys`:
/// plaintext; a `StaticKeys` for a sealed channel).
///
/// ```
/// # use sluicegate_flash::SharedChannel;
/// # use sluicegate_core::{Channel, Storage};
/// # fn demo<S: Storage>(shared: &SharedChannel<S, &'static mut [u64]>) {
/// // In the timer interrupt:
/// let _ = shared.put_committed(b"reading");
/// // In the main loop:
/// let mut buf = [0u8; 32];
/// if let Some(Ok(tx)) = shared.with(|ch| ch.begin()) {
///     let got = shared.with(|ch| ch.take(tx, &mut buf));
///     // ... send, wait for the acknowledgement, then:
///     let _ = shared.with(|ch| ch.commit(tx));
/// }
/// # }
/// ```
pub struct SharedChannel<S: Storage, M, K = NoKeys> {
    inner: Mutex<RefCell<Option<Channel<S, M, K>>>>,
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> SharedChannel<S, M, K> {
    /// An empty handle; [`SharedChannel::install`] puts an opened channel in it.
    pub const fn new() -> Self {
        SharedChannel {
            inner: Mutex::new(RefCell::new(None)),
        }
    }

    /// Installs an opened channel, returning the one it replaces.
    pub fn install(&self, channel: Channel<S, M, K>) -> Option<Channel<S, M, K>> {
        critical_section::with(|cs| self.inner.borrow_ref_mut(cs).replace(channel))
    }

    /// Removes the channel (to close it or reopen it).
    pub fn remove(&self) -> Option<Channel<S, M, K>> {
        critical_section::with(|cs| self.inner.borrow_ref_mut(cs).take())
    }

    /// Runs `f` on the channel inside a critical section; `None` if none is installed.
    pub fn with<R>(&self, f: impl FnOnce(&mut Channel<S, M, K>) -> R) -> Option<R> {
        critical_section::with(|cs| self.inner.borrow_ref_mut(cs).as_mut().map(f))
    }

    /// Puts one event in its own transaction and commits it, in one critical section: what an
    /// interrupt handler does with a reading. On failure the transaction is rolled back, and
    /// `Err(None)` means no channel is installed.
    pub fn put_committed(&self, event: &[u8]) -> Result<(), Option<Error<S::Error>>> {
        self.with(|ch| put_committed(ch, event))
            .unwrap_or(Err(None))
    }

    /// The channel's stats; `None` if none is installed.
    pub fn stats(&self) -> Option<Stats> {
        self.with(|ch| ch.stats())
    }
}

fn put_committed<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider>(
    ch: &mut Channel<S, M, K>,
    event: &[u8],
) -> Result<(), Option<Error<S::Error>>> {
    let tx: Txn = ch.begin()?;
    if let Err(e) = ch.put(tx, event) {
        let _ = ch.rollback(tx);
        return Err(Some(e));
    }
    ch.commit(tx).map_err(|e| {
        let _ = ch.rollback(tx);
        Some(e)
    })
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Default
    for SharedChannel<S, M, K>
{
    fn default() -> Self {
        Self::new()
    }
}
