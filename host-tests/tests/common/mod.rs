//! Helpers shared by the integration tests: a medium with 4-byte words and 256-byte erase
//! blocks, and transactions in one call.
#![allow(dead_code)]

use sluicegate_core::{Channel, KeyProvider};
use sluicegate_sim::SimStorage;

pub type Sim = SimStorage<4, 256>;
pub type Chan<'a> = Channel<&'a mut Sim, &'a mut [u64]>;

/// A medium of `log_bytes` that behaves as a file: rewritable, erased to zeros.
pub fn file_sim(log_bytes: usize) -> Sim {
    let mut sim = SimStorage::new(log_bytes, 0x00);
    sim.set_rewritable(true);
    sim
}

/// Puts `events` in one transaction and commits it.
pub fn put_all(ch: &mut Chan<'_>, events: &[&[u8]]) {
    let tx = ch.begin().unwrap();
    for e in events {
        ch.put(tx, e).unwrap();
    }
    ch.commit(tx).unwrap();
}

/// Takes up to `n` events in one transaction, then commits or rolls back.
pub fn take_n(ch: &mut Chan<'_>, n: usize, commit: bool) -> Vec<Vec<u8>> {
    let tx = ch.begin().unwrap();
    let mut buf = [0u8; 64];
    let mut out = Vec::new();
    while out.len() < n {
        match ch.take(tx, &mut buf).unwrap() {
            Some(k) => out.push(buf[..k].to_vec()),
            None => break,
        }
    }
    if commit {
        ch.commit(tx).unwrap();
    } else {
        ch.rollback(tx).unwrap();
    }
    out
}

/// Reads the whole queue without consuming it: takes through every transaction slot, then
/// rolls them all back. Any key provider: sealed channels too.
pub fn peek_all<K: KeyProvider>(ch: &mut Channel<&mut Sim, &mut [u64], K>) -> Vec<Vec<u8>> {
    let config = *ch.config();
    let mut out = Vec::new();
    let mut txs = Vec::new();
    let mut buf = [0u8; 64];
    'outer: for _ in 0..config.max_transactions() {
        let tx = ch.begin().unwrap();
        txs.push(tx);
        for _ in 0..config.transaction_capacity() {
            match ch.take(tx, &mut buf).unwrap() {
                Some(n) => out.push(buf[..n].to_vec()),
                None => break 'outer,
            }
        }
    }
    for tx in txs {
        ch.rollback(tx).unwrap();
    }
    out
}

/// Byte strings as owned vectors, for comparisons.
pub fn v(items: &[&[u8]]) -> Vec<Vec<u8>> {
    items.iter().map(|i| i.to_vec()).collect()
}
