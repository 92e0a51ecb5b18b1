//! The caller's memory, carved once into its parts ([`Carving`]): the queue ring, the pending-put
//! pool, the transaction slots, the stream table of marks and each slot's pending mark. The
//! channel computes the carving from its configuration and checks the memory's length against
//! it once, at open; every operation then borrows the parts it needs by name ([`Parts`]).
//!
//! **Invariant:** the parts are laid out in this order, each right after the one before, and
//! together span [`Config::memory_words`] words, so a memory sized by the configuration holds
//! them all.

use crate::config::{Config, TXN_WORDS};
use crate::queue::Packing;

/// Where each part of the caller's memory lies: their lengths in words, in layout order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Carving {
    queue: usize,
    pool: usize,
    txns: usize,
    marks: usize,
    pending_marks: usize,
}

/// The parts of the caller's memory, borrowed for one operation.
pub(crate) struct Parts<'m> {
    /// The queue ring's entries (`Queue`), packed.
    pub queue: &'m mut [u64],
    /// The pointers of each transaction's puts not yet committed, `transaction_capacity`
    /// words per slot.
    pub pool: &'m mut [u64],
    /// The transaction slots, `TXN_WORDS` words each.
    pub txns: &'m mut [u64],
    /// The stream table: each stream's newest committed mark (`mark`).
    pub marks: &'m mut [u64],
    /// Each transaction slot's mark waiting for its commit.
    pub pending_marks: &'m mut [u64],
}

/// [`Parts`], shared.
pub(crate) struct PartsRef<'m> {
    /// As [`Parts::queue`].
    pub queue: &'m [u64],
    /// As [`Parts::pool`].
    pub pool: &'m [u64],
    /// As [`Parts::txns`].
    pub txns: &'m [u64],
    /// As [`Parts::marks`].
    pub marks: &'m [u64],
    /// As [`Parts::pending_marks`].
    pub pending_marks: &'m [u64],
}

impl Carving {
    /// The carving a channel with `config` uses.
    pub(crate) const fn new(config: &Config) -> Self {
        let slots = config.max_transactions() as usize;
        let mark = config.mark_entry_words();
        Carving {
            queue: Packing::for_config(config).words(config.capacity() as usize),
            pool: slots * config.transaction_capacity() as usize,
            txns: slots * TXN_WORDS,
            marks: config.marks() as usize * mark,
            pending_marks: slots * mark,
        }
    }

    /// The words all the parts span.
    pub(crate) const fn words(&self) -> usize {
        self.queue + self.pool + self.txns + self.marks + self.pending_marks
    }

    /// The parts of `mem`, which holds at least [`Carving::words`] words (checked at open).
    pub(crate) fn parts<'m>(&self, mem: &'m mut [u64]) -> Parts<'m> {
        let (queue, rest) = mem.split_at_mut(self.queue);
        let (pool, rest) = rest.split_at_mut(self.pool);
        let (txns, rest) = rest.split_at_mut(self.txns);
        let (marks, rest) = rest.split_at_mut(self.marks);
        Parts {
            queue,
            pool,
            txns,
            marks,
            pending_marks: &mut rest[..self.pending_marks],
        }
    }

    /// As [`Carving::parts`], shared.
    pub(crate) fn parts_ref<'m>(&self, mem: &'m [u64]) -> PartsRef<'m> {
        let (queue, rest) = mem.split_at(self.queue);
        let (pool, rest) = rest.split_at(self.pool);
        let (txns, rest) = rest.split_at(self.txns);
        let (marks, rest) = rest.split_at(self.marks);
        PartsRef {
            queue,
            pool,
            txns,
            marks,
            pending_marks: &rest[..self.pending_marks],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts span exactly the memory the configuration asks for, in layout order, with
    /// and without marks.
    #[test]
    fn the_parts_span_the_configured_memory() {
        for config in [
            Config::new(64, 16, 4, 256, 4096),
            Config::new(64, 16, 4, 256, 4096).with_marks(3, 20),
        ] {
            let carving = Carving::new(&config);
            // Counted apart from the carving: the packed queue, then each slot's pending puts
            // and state, then a mark's room per stream and per slot.
            let width = Packing::for_config(&config).width() as usize;
            let queue = (config.capacity() as usize * width).div_ceil(64);
            let slots = config.max_transactions() as usize;
            let mark = config.mark_entry_words();
            let expected = queue
                + slots * (config.transaction_capacity() as usize + TXN_WORDS)
                + (config.marks() as usize + slots) * mark;
            assert_eq!(config.memory_words(), expected);
            let mut mem = [0u64; 512];
            let mem = &mut mem[..config.memory_words()];
            let p = carving.parts(mem);
            let parts = [p.queue, p.pool, p.txns, p.marks, p.pending_marks];
            for (i, part) in parts.into_iter().enumerate() {
                part.fill(i as u64 + 1);
            }
            // In layout order, and every word in exactly one part.
            assert!(mem.windows(2).all(|w| w[0] <= w[1]), "{mem:?}");
            assert!(!mem.contains(&0), "a word in no part");
            let shared = carving.parts_ref(mem);
            assert_eq!(shared.queue.len(), queue);
            assert!(shared.pending_marks.iter().all(|&w| w == 5));
        }
    }
}
