//! Marks: a caller's progress, committed in the same transaction as the events it describes.
//!
//! A source that reads from somewhere else (a file, an upstream queue) must record how far it
//! got in the same atomic step as the events it read, or a crash between the two either loses
//! or repeats a batch. A mark is that record: up to `mark_bytes` bytes of the caller's own
//! encoding, in one of `marks` numbered streams, attached to a transaction with
//! [`Channel::set_mark`](crate::Channel::set_mark). It is written inside the transaction's
//! commit record (`MarkedPutCommit`, `MarkedTakeCommit`) and takes effect with that commit, or
//! never. (A record of its own before the commit was tried first: a power cut that kept the
//! commit and lost that record, as unsynced writes may, applied the events without their mark,
//! and `host-tests/tests/marks.rs` caught it.)
//!
//! Memory (after the transaction table, in the caller's words, carved by `crate::memory`): one
//! entry per stream (the newest committed mark), then one entry per transaction slot (the mark
//! waiting for the slot's commit). An entry is a head word (bit 63 present, bits 16..32 the stream, bits 0..16
//! the length) and the bytes, little-endian, 8 per word.
//!
//! **Invariant:** a stream's entry changes only when a commit that carries a mark for it is
//! applied, in commit order, at run time and in replay alike; a checkpoint stores the entries
//! as of its replay position.

const PRESENT: u64 = 1 << 63;

/// A mark's length padded to whole words, as commit records and checkpoints store it.
pub(crate) const fn padded(len: u16) -> u64 {
    (len as u64).next_multiple_of(8)
}

/// Entry `i` of an area of entries of `ew` words.
pub(crate) fn entry(area: &[u64], ew: usize, i: usize) -> &[u64] {
    &area[i * ew..(i + 1) * ew]
}

/// Entry `i`, mutable.
pub(crate) fn entry_mut(area: &mut [u64], ew: usize, i: usize) -> &mut [u64] {
    &mut area[i * ew..(i + 1) * ew]
}

/// The stream and length of an entry, if it holds a mark.
pub(crate) fn head(e: &[u64]) -> Option<(u16, u16)> {
    let w = *e.first()?;
    (w & PRESENT != 0).then_some(((w >> 16) as u16, w as u16))
}

/// Empties an entry.
pub(crate) fn clear(e: &mut [u64]) {
    if let Some(w) = e.first_mut() {
        *w = 0;
    }
}

/// Stores a mark (the caller checked that it fits).
pub(crate) fn store(e: &mut [u64], stream: u16, bytes: &[u8]) {
    e[0] = PRESENT | (stream as u64) << 16 | bytes.len() as u64;
    for (w, chunk) in e[1..].iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
}

/// Sets byte `i` of an entry's bytes (for marks read from media a piece at a time).
pub(crate) fn set_byte(e: &mut [u64], i: usize, byte: u8) {
    let w = &mut e[1 + i / 8];
    let shift = (i % 8) * 8;
    *w = (*w & !(0xff << shift)) | (byte as u64) << shift;
}

/// Sets an entry's head once its bytes are in place.
pub(crate) fn set_head(e: &mut [u64], stream: u16, len: u16) {
    e[0] = PRESENT | (stream as u64) << 16 | len as u64;
}

/// Hands an entry's bytes to `f` in pieces of at most 8, in order.
pub(crate) fn for_each_piece(e: &[u64], mut f: impl FnMut(&[u8])) {
    let Some((_, len)) = head(e) else { return };
    let mut left = len as usize;
    for w in &e[1..] {
        if left == 0 {
            break;
        }
        let b = w.to_le_bytes();
        let n = left.min(8);
        f(&b[..n]);
        left -= n;
    }
}

/// Copies an entry's bytes into `out`; returns the length, or `None` if it holds no mark or
/// `out` is too short.
pub(crate) fn load(e: &[u64], out: &mut [u8]) -> Option<usize> {
    let (_, len) = head(e)?;
    let len = len as usize;
    let dst = out.get_mut(..len)?;
    let mut at = 0;
    for_each_piece(e, |piece| {
        dst[at..at + piece.len()].copy_from_slice(piece);
        at += piece.len();
    });
    Some(len)
}

/// Copies entry `from` into `to` (same entry size).
pub(crate) fn copy(from: &[u64], to: &mut [u64]) {
    to.copy_from_slice(from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut e = [0u64; 4];
        assert_eq!(head(&e), None);
        store(&mut e, 7, b"hello, marks!");
        assert_eq!(head(&e), Some((7, 13)));
        let mut out = [0u8; 24];
        assert_eq!(load(&e, &mut out), Some(13));
        assert_eq!(&out[..13], b"hello, marks!");
        assert_eq!(load(&e, &mut [0u8; 12]), None, "too short a buffer");
        let mut f = [0u64; 4];
        for (i, b) in b"piecewise".iter().enumerate() {
            set_byte(&mut f, i, *b);
        }
        set_head(&mut f, 3, 9);
        assert_eq!(load(&f, &mut out), Some(9));
        assert_eq!(&out[..9], b"piecewise");
        clear(&mut f);
        assert_eq!(head(&f), None);
        store(&mut e, 1, b"");
        assert_eq!(head(&e), Some((1, 0)), "an empty mark is a mark");
    }
}
