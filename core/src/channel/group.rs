//! Group commit through the storage boundary: a sync of the log begun under the caller's lock,
//! run without it, and finished under it again, so that commits from several threads share one
//! sync. The storage offers it ([`SplitSync`]); the channel drives it and keeps the one book of
//! what is durable, its sync mark: [`Channel::begin_sync`] takes the mark together with the
//! storage's ticket, and [`Channel::finish_sync`] records both, so a caller never joins them.
//!
//! **Invariant:** a commit is applied only by a sync that began after its commit record was
//! written, and only once that sync has returned `Ok`; a failed sync latches the channel.

use crate::channel::{Channel, SyncMark};
use crate::error::Error;
use crate::seal::KeyProvider;
use crate::storage::SplitSync;

/// A sync of the log begun by [`Channel::begin_sync`]: run it without the caller's lock
/// ([`PendingSync::run`]), then hand it back to [`Channel::finish_sync`].
#[must_use = "a sync applies no commit until it is run and finished"]
pub struct PendingSync<S: SplitSync> {
    mark: SyncMark,
    ticket: S::Ticket,
    outcome: Option<Result<(), S::Error>>,
}

impl<S: SplitSync> PendingSync<S> {
    /// Every log write before this mark is covered.
    pub fn mark(&self) -> SyncMark {
        self.mark
    }

    /// Makes the covered writes durable. Needs no access to the channel: call it without the
    /// lock that guards the channel, while other threads write.
    pub fn run(&mut self) {
        self.outcome = Some(S::run_log_sync(&self.ticket));
    }
}

impl<S: SplitSync> core::fmt::Debug for PendingSync<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingSync")
            .field("mark", &self.mark)
            .field("ran", &self.outcome.is_some())
            .finish()
    }
}

impl<S: SplitSync, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// The first step of a group sync: the mark of every log write so far, with the storage's
    /// ticket for them. Fails if the channel is poisoned.
    pub fn begin_sync(&mut self) -> Result<PendingSync<S>, Error<S::Error>> {
        self.check_writable()?;
        let mark = self.sync_mark();
        let ticket = self.storage.inner_mut().begin_log_sync();
        Ok(PendingSync {
            mark,
            ticket,
            outcome: None,
        })
    }

    /// The last step of a group sync: if it succeeded, the storage records it and every commit
    /// written before its mark is applied, in log order, and checkpoint work advances a step as
    /// after a commit. A failed sync poisons the channel as a failed [`Channel::sync`] does; one
    /// that was never run applies nothing.
    pub fn finish_sync(&mut self, pending: PendingSync<S>) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        if pending.mark > self.sync_mark() {
            return Err(Error::LogicBug("a sync begun on another channel"));
        }
        let outcome = match pending.outcome {
            None => return Err(Error::LogicBug("a sync finished without being run")),
            Some(Ok(())) => {
                self.storage.inner_mut().settle_log_sync(&pending.ticket);
                Ok(())
            }
            Some(Err(e)) => Err(e),
        };
        self.settle_sync(pending.mark, outcome)?;
        // The commits are durable: a checkpoint failure must not make them look failed.
        let _ = self.checkpoint_work(None);
        Ok(())
    }
}
