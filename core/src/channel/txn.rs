//! Transactions: the slot table in the caller's memory (one `Slot` of `TXN_WORDS` words per
//! transaction), and begin, put, take, marks, commit and rollback over it. A commit writes its
//! record here; the sync that applies it is the channel's (`Channel::sync`, group commit).

use super::*;

pub(super) const STATE_FREE: u8 = 0;

const STATE_OPEN: u8 = 1;

pub(super) const STATE_WRITTEN: u8 = 2;

const KIND_NONE: u8 = 0;

pub(super) const KIND_PUT: u8 = 1;

const KIND_TAKE: u8 = 2;

/// One transaction slot, as kept in `TXN_WORDS` words of channel memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) generation: u32,
    pub(super) state: u8,
    pub(super) kind: u8,
    pub(super) count: u32,
    pub(super) id: u32,
    /// The write-order id of the slot's commit record once written.
    pub(super) commit_wid: u64,
}

impl Slot {
    pub(super) fn load(words: &[u64], s: usize) -> Self {
        let w = &words[s * TXN_WORDS..(s + 1) * TXN_WORDS];
        Slot {
            generation: w[0] as u32,
            state: (w[0] >> 32) as u8,
            kind: (w[0] >> 40) as u8,
            count: w[1] as u32,
            id: (w[1] >> 32) as u32,
            commit_wid: w[2],
        }
    }

    pub(super) fn store(&self, words: &mut [u64], s: usize) {
        let w = &mut words[s * TXN_WORDS..(s + 1) * TXN_WORDS];
        w[0] = self.generation as u64 | (self.state as u64) << 32 | (self.kind as u64) << 40;
        w[1] = self.count as u64 | (self.id as u64) << 32;
        w[2] = self.commit_wid;
    }
}

/// The numbers the slot table hands out, and the puts waiting in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct TxnCounters {
    /// The id the next transaction gets, carried by its records: past every id in the log.
    next_id: u32,
    /// Bumped at every begin, so that a stale [`Txn`] handle never matches a reused slot.
    generation: u32,
    /// Events put by transactions that have not committed or rolled back.
    pending_puts: u64,
}

impl TxnCounters {
    /// The counters replay leaves: the next transaction gets id `next_id`.
    pub(super) fn after_replay(next_id: u32) -> Self {
        TxnCounters {
            next_id,
            generation: 0,
            pending_puts: 0,
        }
    }

    /// The id the next transaction gets.
    pub(super) fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Events put by open transactions.
    pub(super) fn pending_puts(&self) -> u64 {
        self.pending_puts
    }

    /// A fresh generation and id for a transaction that begins.
    fn begin(&mut self) -> (u32, u32) {
        self.generation = self.generation.wrapping_add(1);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        (self.generation, id)
    }

    /// A put joined the pending ones.
    fn added(&mut self) {
        self.pending_puts += 1;
    }

    /// `n` puts of a transaction left the pending ones (committed or rolled back).
    fn settled(&mut self, n: u32) {
        self.pending_puts -= n as u64;
    }
}

fn free_slot() -> Slot {
    Slot {
        generation: 0,
        state: STATE_FREE,
        kind: KIND_NONE,
        count: 0,
        id: 0,
        commit_wid: 0,
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Channel<S, M, K> {
    /// Begins a transaction. It becomes a put or a take transaction with its first operation.
    pub fn begin(&mut self) -> Result<Txn, Error<S::Error>> {
        let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
        for s in 0..self.config.max_transactions() as usize {
            let slot = Slot::load(txns, s);
            if slot.state == STATE_FREE {
                let (generation, id) = self.txn_counters.begin();
                let fresh = Slot {
                    generation,
                    state: STATE_OPEN,
                    kind: KIND_NONE,
                    count: 0,
                    id,
                    commit_wid: 0,
                };
                fresh.store(txns, s);
                let ew = self.config.mark_entry_words();
                if ew > 0 {
                    let Parts {
                        pending_marks: pending,
                        ..
                    } = self.carving.parts(self.memory.as_mut());
                    mark::clear(mark::entry_mut(pending, ew, s));
                }
                return Ok(Txn {
                    slot: s as u8,
                    generation,
                });
            }
        }
        Err(Error::TooManyTransactions)
    }

    /// Puts an event in a put transaction. The event is written to the log now and becomes
    /// visible when the transaction commits.
    pub fn put(&mut self, txn: Txn, event: &[u8]) -> Result<(), Error<S::Error>> {
        self.check_writable()?;
        let mut slot = self.open_slot(txn)?;
        if slot.kind == KIND_TAKE {
            return Err(Error::WrongTransactionKind);
        }
        if slot.count >= self.config.transaction_capacity() {
            return Err(Error::TransactionFull);
        }
        if event.len() > self.config.max_event_bytes() as usize {
            return Err(Error::EventTooLarge {
                len: event.len(),
                max: self.config.max_event_bytes(),
            });
        }
        if self.queue.len() as u64 + self.txn_counters.pending_puts()
            >= self.config.capacity() as u64
        {
            return Err(Error::ChannelFull);
        }
        let ptr = self.append(
            RecordKind::Put,
            slot.id,
            Body::Event(event),
            event.len() as u32,
            WriteClass::Produce,
        )?;
        let Parts { pool, txns, .. } = self.carving.parts(self.memory.as_mut());
        let cap = self.config.transaction_capacity() as usize;
        pool[txn.slot as usize * cap + slot.count as usize] = ptr.to_word();
        slot.count += 1;
        slot.kind = KIND_PUT;
        slot.store(txns, txn.slot as usize);
        self.txn_counters.added();
        self.stats.puts += 1;
        Ok(())
    }

    /// Takes the next available event into `buf` and returns its length, or `None` if no event
    /// is available. The event leaves the channel when the transaction commits; a rollback (or a
    /// crash before the commit) makes it available again in its place.
    ///
    /// An event whose record fails its checks is never delivered: it is counted in
    /// [`Stats::corrupt_events_skipped`] and leaves the queue with this transaction.
    ///
    /// A transaction that already holds its capacity gets [`Error::TransactionFull`] without a
    /// look at the queue, even when no event is left: a caller that drains the channel in one
    /// transaction as large as the channel must stop at the capacity, not wait for `None`.
    pub fn take(&mut self, txn: Txn, buf: &mut [u8]) -> Result<Option<usize>, Error<S::Error>> {
        Ok(self.take_with_id(txn, buf)?.map(|(n, _)| n))
    }

    /// As [`Channel::take`], and also returns the event's [`EventId`]: the same for the same
    /// event however often it is delivered (after a rollback or a crash), and different for
    /// every event the channel ever holds.
    pub fn take_with_id(
        &mut self,
        txn: Txn,
        buf: &mut [u8],
    ) -> Result<Option<(usize, EventId)>, Error<S::Error>> {
        let mut slot = self.open_slot(txn)?;
        if slot.kind == KIND_PUT {
            return Err(Error::WrongTransactionKind);
        }
        let tag = txn.slot + 1;
        // Bounded: every turn tags one more queue entry, and there are `len` of them.
        loop {
            if slot.count >= self.config.transaction_capacity() {
                return Err(Error::TransactionFull);
            }
            let Parts { queue: qmem, .. } = self.carving.parts(self.memory.as_mut());
            let Some((index, ptr)) = self.queue.take_next(qmem, tag) else {
                return Ok(None);
            };
            let result = self.read_event(ptr, buf);
            let Parts {
                queue: qmem, txns, ..
            } = self.carving.parts(self.memory.as_mut());
            match result {
                Ok(n) => {
                    slot.count += 1;
                    slot.kind = KIND_TAKE;
                    slot.store(txns, txn.slot as usize);
                    self.stats.takes += 1;
                    let seq = self.geo.seq_of_slot(ptr.slot, self.head.seq());
                    return Ok(Some((n, EventId::new(seq, ptr.offset))));
                }
                Err(ReadFail::Corrupt) => {
                    slot.count += 1;
                    slot.kind = KIND_TAKE;
                    slot.store(txns, txn.slot as usize);
                    self.stats.corrupt_events_skipped += 1;
                }
                Err(fail) => {
                    self.queue.untag_at(qmem, index);
                    return Err(match fail {
                        ReadFail::Storage(e) => Error::Storage(e),
                        ReadFail::Key(e) => e,
                        ReadFail::TooSmall(needed) => Error::BufferTooSmall { needed },
                        ReadFail::TooLarge(len) => Error::EventTooLarge {
                            len,
                            max: self.config.max_event_bytes(),
                        },
                        ReadFail::Corrupt => Error::LogicBug("corrupt handled above"),
                    });
                }
            }
        }
    }

    /// Attaches a mark to an open transaction: `bytes` become stream `stream`'s mark when the
    /// transaction commits, in the same record group as its events, and never if it rolls back
    /// or a crash cuts the commit. A later call replaces the transaction's mark. A transaction
    /// with a mark and no event commits the mark alone. See [`Config::with_marks`].
    pub fn set_mark(&mut self, txn: Txn, stream: u16, bytes: &[u8]) -> Result<(), Error<S::Error>> {
        self.open_slot(txn)?;
        if stream >= self.config.marks() || bytes.len() > self.config.mark_bytes() as usize {
            return Err(Error::BadMark);
        }
        let ew = self.config.mark_entry_words();
        let Parts {
            pending_marks: pending,
            ..
        } = self.carving.parts(self.memory.as_mut());
        mark::store(
            mark::entry_mut(pending, ew, txn.slot as usize),
            stream,
            bytes,
        );
        Ok(())
    }

    /// Copies stream `stream`'s newest committed mark into `buf` and returns its length, or
    /// `None` if the stream has none (or `buf` is too short: a mark is at most
    /// [`Config::mark_bytes`] long).
    pub fn mark(&self, stream: u16, buf: &mut [u8]) -> Option<usize> {
        if stream >= self.config.marks() {
            return None;
        }
        let ew = self.config.mark_entry_words();
        let PartsRef { marks: table, .. } = self.carving.parts_ref(self.memory.as_ref());
        mark::load(mark::entry(table, ew, stream as usize), buf)
    }

    /// The length of the mark waiting in transaction slot `s`, if any.
    fn pending_mark(&self, s: usize) -> Option<u16> {
        let ew = self.config.mark_entry_words();
        if ew == 0 {
            return None;
        }
        let PartsRef {
            pending_marks: pending,
            ..
        } = self.carving.parts_ref(self.memory.as_ref());
        mark::head(mark::entry(pending, ew, s)).map(|(_, len)| len)
    }

    /// Commits: writes the commit record, syncs, and applies the transaction. When it returns
    /// `Ok` the transaction is durable. A transaction with no operation writes nothing.
    ///
    /// If it fails with [`Error::LogFull`] the transaction stays open: roll it back or retry.
    pub fn commit(&mut self, txn: Txn) -> Result<(), Error<S::Error>> {
        if self.write_commit(txn)? {
            self.sync()?;
            // The commit is durable: a checkpoint that fails now must not make it look failed.
            // Checkpoint failures are counted in `Stats::checkpoint_failures`; the log is intact.
            let _ = self.checkpoint_work(None);
        }
        Ok(())
    }

    /// The first half of a commit, for group commit: writes the commit record without syncing.
    /// Returns false if the transaction was empty and is already finished. The transaction takes
    /// effect at the next [`Channel::sync`], whoever calls it.
    pub fn write_commit(&mut self, txn: Txn) -> Result<bool, Error<S::Error>> {
        let mut slot = self.open_slot(txn)?;
        let marked = self.pending_mark(txn.slot as usize);
        let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
        if slot.count == 0 && marked.is_none() {
            Slot::store(&free_slot(), txns, txn.slot as usize);
            return Ok(false);
        }
        self.check_writable()?;
        // The mark rides in the commit record itself, so it takes effect exactly with it.
        let mark_len = marked.map_or(0, |len| MARK_PREFIX_BYTES as u64 + padded(len));
        let len = COMMIT_PREFIX_BYTES as u64 + mark_len + slot.count as u64 * POINTER_BYTES as u64;
        let synced_wid = self.head.synced_wid();
        let (kind, body) = if slot.kind != KIND_TAKE {
            let pending = Body::Pending {
                synced_wid,
                slot: txn.slot as usize,
                count: slot.count as usize,
                marked: marked.is_some(),
            };
            let kind = match marked {
                Some(_) => RecordKind::MarkedPutCommit,
                None => RecordKind::PutCommit,
            };
            (kind, pending)
        } else {
            let taken = Body::Taken {
                synced_wid,
                tag: txn.slot + 1,
                marked: marked.is_some(),
            };
            let kind = match marked {
                Some(_) => RecordKind::MarkedTakeCommit,
                None => RecordKind::TakeCommit,
            };
            (kind, taken)
        };
        let wid = self.head.next_wid();
        let class = WriteClass::Commit {
            adds: slot.kind == KIND_PUT,
        };
        self.append(kind, slot.id, body, len as u32, class)?;
        let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
        slot.state = STATE_WRITTEN;
        slot.commit_wid = wid;
        slot.store(txns, txn.slot as usize);
        self.stats.commits += 1;
        Ok(true)
    }

    /// True if `txn` is no longer open or waiting for a sync: it committed, rolled back, or the
    /// handle is stale.
    pub fn is_finished(&self, txn: Txn) -> bool {
        let PartsRef { txns, .. } = self.carving.parts_ref(self.memory.as_ref());
        let slot = Slot::load(txns, txn.slot as usize);
        slot.generation != txn.generation || slot.state == STATE_FREE
    }

    /// Rolls back an open transaction. Nothing is written: puts no commit lists are ignored by
    /// replay, and taken events become available again in their original places.
    pub fn rollback(&mut self, txn: Txn) -> Result<(), Error<S::Error>> {
        let slot = self.open_slot(txn)?;
        let Parts {
            queue: qmem, txns, ..
        } = self.carving.parts(self.memory.as_mut());
        match slot.kind {
            KIND_PUT => {
                self.txn_counters.settled(slot.count);
                self.head.loosened();
            }
            KIND_TAKE => self.queue.untag_all(qmem, txn.slot + 1),
            _ => {}
        }
        free_slot().store(txns, txn.slot as usize);
        self.stats.rollbacks += 1;
        Ok(())
    }

    pub(super) fn apply(&mut self, s: usize, slot: Slot) -> Result<(), Error<S::Error>> {
        let ew = self.config.mark_entry_words();
        if ew > 0 {
            let Parts {
                marks: table,
                pending_marks: pending,
                ..
            } = self.carving.parts(self.memory.as_mut());
            let e = mark::entry_mut(pending, ew, s);
            if let Some((stream, _)) = mark::head(e) {
                mark::copy(e, mark::entry_mut(table, ew, stream as usize));
                mark::clear(e);
            }
        }
        let Parts {
            queue: qmem,
            pool,
            txns,
            ..
        } = self.carving.parts(self.memory.as_mut());
        let cap = self.config.transaction_capacity() as usize;
        if slot.kind == KIND_PUT {
            for &w in &pool[s * cap..s * cap + slot.count as usize] {
                if !self.queue.push_back(qmem, Pointer::from_word(w)) {
                    return Err(Error::LogicBug("queue overflow despite reserved capacity"));
                }
            }
            self.txn_counters.settled(slot.count);
        } else {
            let mut left = self.ckpt.entries_left();
            let removed = self.queue.remove_tagged(qmem, s as u8 + 1, left.as_mut());
            self.ckpt.entries_moved(left);
            if removed != slot.count as usize {
                return Err(Error::LogicBug("take commit removed a different count"));
            }
            self.head.loosened();
        }
        free_slot().store(txns, s);
        Ok(())
    }

    fn open_slot(&mut self, txn: Txn) -> Result<Slot, Error<S::Error>> {
        if txn.slot as usize >= self.config.max_transactions() as usize {
            return Err(Error::BadTransaction);
        }
        let Parts { txns, .. } = self.carving.parts(self.memory.as_mut());
        let slot = Slot::load(txns, txn.slot as usize);
        if slot.generation != txn.generation || slot.state != STATE_OPEN {
            return Err(Error::BadTransaction);
        }
        Ok(slot)
    }
}
