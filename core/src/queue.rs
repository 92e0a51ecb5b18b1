//! The in-memory queue: a ring of pointers into the log, in FIFO (commit) order.
//!
//! Each entry is handled as a `u64` word: bits 0..32 are the record's offset in its segment,
//! bits 32..56 the segment's slot, bits 56..64 a tag. Tag 0 means the event is available; tag
//! `t` in `1..=254` means transaction slot `t - 1` has taken it and not yet committed; 255 marks
//! entries that recovery is about to remove.
//!
//! In memory an entry is packed into just the bits its configuration needs ([`Packing`]): the
//! offset in as many bits as `segment_bytes - 1` has, the slot in as many as
//! `log_segments - 1`, the tag in as many as `max_transactions + 1` (all ones standing for
//! 255). Entries lie one after another in the words of the queue's part, an entry crossing from
//! one word into the next where they meet.
//!
//! Taken events stay where they are until their take commits, so a rollback only clears tags and
//! the order is exactly what it was, the same order a replay of the log rebuilds.
//!
//! **Invariant:** every tagged entry lies in `[0, span)`, and every entry in `[0, first_free)` is
//! tagged. Scans are bounded by `span` (at most the events in flight) or by `len`.
//!
//! **Invariant:** every pointer the queue is given is in bounds for the log's geometry (replay
//! checks what it reads with `Geometry::pointer_in_bounds`, and open refuses a log of more
//! segments than `log_segments`), so packing it loses no bit.

use crate::config::Config;
use crate::record::Pointer;

pub(crate) const TAG_SHIFT: u32 = 56;
pub(crate) const TAG_REPLAY: u8 = 255;
const POINTER_MASK: u64 = (1 << TAG_SHIFT) - 1;

pub(crate) const fn tag_of(w: u64) -> u8 {
    (w >> TAG_SHIFT) as u8
}

pub(crate) const fn with_tag(w: u64, tag: u8) -> u64 {
    (w & POINTER_MASK) | ((tag as u64) << TAG_SHIFT)
}

/// The bits needed to write every number up to `x`.
const fn bits(x: u64) -> u8 {
    (u64::BITS - x.leading_zeros()) as u8
}

/// The lowest `n` bits set (`n` at most 64).
const fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1 << n) - 1
    }
}

/// How a queue entry is packed into memory: the offset's bits lowest, then the slot's, then the
/// tag's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packing {
    offset_bits: u8,
    slot_bits: u8,
    tag_bits: u8,
}

impl Packing {
    /// The packing of a channel with `config`: at most 32 + 24 + 8 = 64 bits.
    pub(crate) const fn for_config(config: &Config) -> Self {
        Packing {
            offset_bits: bits(config.segment_bytes() as u64 - 1),
            slot_bits: bits(config.log_segments() as u64 - 1),
            tag_bits: bits(config.max_transactions() as u64 + 1),
        }
    }

    /// Bits per entry.
    pub(crate) const fn width(&self) -> u32 {
        self.offset_bits as u32 + self.slot_bits as u32 + self.tag_bits as u32
    }

    /// Words that hold `entries` entries.
    pub(crate) const fn words(&self, entries: usize) -> usize {
        (entries as u64 * self.width() as u64).div_ceil(64) as usize
    }

    /// The offset's, the slot's and the tag's bits.
    const fn shifts(&self) -> (u32, u32, u32) {
        (
            self.offset_bits as u32,
            self.slot_bits as u32,
            self.tag_bits as u32,
        )
    }

    fn pack(&self, w: u64) -> u64 {
        let offset = w & 0xffff_ffff;
        let slot = (w >> 32) & 0x00ff_ffff;
        let (ob, sb, tb) = self.shifts();
        let tag = match tag_of(w) {
            TAG_REPLAY => low_bits(tb),
            t => t as u64,
        };
        debug_assert!(
            offset <= low_bits(ob)
                && slot <= low_bits(sb)
                && (tag < low_bits(tb) || tag_of(w) == TAG_REPLAY),
            "a queue entry out of its packing: {w:#x}"
        );
        offset | slot << ob | tag << (ob + sb)
    }

    fn unpack(&self, e: u64) -> u64 {
        let (ob, sb, tb) = self.shifts();
        let offset = e & low_bits(ob);
        let slot = (e >> ob) & low_bits(sb);
        let tag = match (e >> (ob + sb)) & low_bits(tb) {
            t if t == low_bits(tb) => TAG_REPLAY,
            t => t as u8,
        };
        with_tag(slot << 32 | offset, tag)
    }
}

/// The queue's bookkeeping; its entries live in the caller's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queue {
    head: usize,
    len: usize,
    span: usize,
    first_free: usize,
    capacity: u32,
    packing: Packing,
}

impl Queue {
    /// An empty queue for a channel with `config`, over a part of
    /// `Packing::words(capacity)` words.
    pub const fn new(config: &Config) -> Self {
        Queue {
            head: 0,
            len: 0,
            span: 0,
            first_free: 0,
            capacity: config.capacity(),
            packing: Packing::for_config(config),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries that lie in the region where taken events can be.
    #[cfg(test)]
    pub fn span(&self) -> usize {
        self.span
    }

    /// Where entry `i` lies in the ring of `capacity` entries.
    fn index(&self, i: usize) -> usize {
        let (j, capacity) = (self.head + i, self.capacity as usize);
        if j >= capacity {
            j - capacity
        } else {
            j
        }
    }

    /// Entry `i` as a word (pointer and tag), from the ring `mem` (the queue's own part of the
    /// caller's memory).
    pub fn get(&self, mem: &[u64], i: usize) -> u64 {
        let width = self.packing.width();
        let bit = self.index(i) * width as usize;
        let (at, shift) = (bit / 64, (bit % 64) as u32);
        let mut e = mem[at] >> shift;
        if shift + width > 64 {
            e |= mem[at + 1] << (64 - shift);
        }
        self.packing.unpack(e & low_bits(width))
    }

    /// Overwrites entry `i` (which must exist) with the word `w`.
    pub fn set(&self, mem: &mut [u64], i: usize, w: u64) {
        let width = self.packing.width();
        let bit = self.index(i) * width as usize;
        let (at, shift) = (bit / 64, (bit % 64) as u32);
        let (e, mask) = (self.packing.pack(w), low_bits(width));
        mem[at] = (mem[at] & !(mask << shift)) | e << shift;
        if shift + width > 64 {
            let done = 64 - shift;
            mem[at + 1] = (mem[at + 1] & !(mask >> done)) | e >> done;
        }
    }

    /// Appends an available entry; false if the ring is full.
    pub fn push_back(&mut self, mem: &mut [u64], p: Pointer) -> bool {
        if self.len == self.capacity as usize {
            return false;
        }
        self.len += 1;
        self.set(mem, self.len - 1, p.to_word());
        true
    }

    /// Drops the entries from `len` on, which must all be untagged (replay undoing a commit it
    /// could not read the same way twice; repair removing lost events, after moving the kept
    /// ones forward with [`Queue::set`]).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.first_free = self.first_free.min(len);
            self.span = self.span.min(len);
        }
    }

    /// Tags the first available entry for `tag` and returns its index and pointer.
    pub fn take_next(&mut self, mem: &mut [u64], tag: u8) -> Option<(usize, Pointer)> {
        let mut i = self.first_free;
        while i < self.len {
            let w = self.get(mem, i);
            if tag_of(w) == 0 {
                self.set(mem, i, with_tag(w, tag));
                self.span = self.span.max(i + 1);
                self.first_free = i + 1;
                return Some((i, Pointer::from_word(w)));
            }
            i += 1;
        }
        self.first_free = self.len;
        None
    }

    /// Clears the tag of the entry at `i` (a take the caller could not use).
    pub fn untag_at(&mut self, mem: &mut [u64], i: usize) {
        let w = self.get(mem, i);
        self.set(mem, i, with_tag(w, 0));
        self.first_free = self.first_free.min(i);
        self.shrink_span(mem);
    }

    /// Makes every entry tagged `tag` available again, in place.
    pub fn untag_all(&mut self, mem: &mut [u64], tag: u8) {
        for i in 0..self.span {
            let w = self.get(mem, i);
            if tag_of(w) == tag {
                self.set(mem, i, with_tag(w, 0));
                self.first_free = self.first_free.min(i);
            }
        }
        self.shrink_span(mem);
    }

    /// Calls `f` with each pointer tagged `tag`, in queue order.
    pub fn for_each_tagged(&self, mem: &[u64], tag: u8, mut f: impl FnMut(Pointer)) {
        for i in 0..self.span {
            let w = self.get(mem, i);
            if tag_of(w) == tag {
                f(Pointer::from_word(w));
            }
        }
    }

    /// Marks the first entry at or after `from` (wrapping once) that points at `p` with `tag`;
    /// returns its index.
    pub fn mark(&mut self, mem: &mut [u64], p: Pointer, tag: u8, from: usize) -> Option<usize> {
        let want = p.to_word();
        for k in 0..self.len {
            let i = (from + k) % self.len;
            let w = self.get(mem, i);
            if w == want {
                self.set(mem, i, with_tag(w, tag));
                self.span = self.span.max(i + 1);
                return Some(i);
            }
        }
        None
    }

    /// Removes every entry tagged `tag`, keeping the order of the rest. Returns how many.
    ///
    /// `watch` is a window `(start, len)` of indices that a checkpoint is copying: it is moved
    /// and shrunk so that it covers the same surviving entries afterwards.
    pub fn remove_tagged(
        &mut self,
        mem: &mut [u64],
        tag: u8,
        watch: Option<&mut (usize, usize)>,
    ) -> usize {
        let mut j = self.span;
        let (mut before, mut inside) = (0usize, 0usize);
        let (w_start, w_len) = watch.as_ref().map_or((0, 0), |w| **w);
        for i in (0..self.span).rev() {
            let w = self.get(mem, i);
            if tag_of(w) != tag {
                j -= 1;
                self.set(mem, j, w);
            } else if i < w_start {
                before += 1;
            } else if i < w_start + w_len {
                inside += 1;
            }
        }
        if let Some(w) = watch {
            *w = (w_start - before, w_len - inside);
        }
        let removed = j;
        self.head = self.index(removed);
        self.len -= removed;
        self.span -= removed;
        self.first_free = 0;
        while self.first_free < self.span && tag_of(self.get(mem, self.first_free)) != 0 {
            self.first_free += 1;
        }
        self.shrink_span(mem);
        removed
    }

    fn shrink_span(&mut self, mem: &[u64]) {
        while self.span > 0 && tag_of(self.get(mem, self.span - 1)) == 0 {
            self.span -= 1;
        }
        // Entries at or past `span` are untagged, so the tagged prefix cannot reach beyond it.
        self.first_free = self.first_free.min(self.span);
    }

    /// Calls `f` with every entry's pointer.
    pub fn for_each(&self, mem: &[u64], mut f: impl FnMut(Pointer)) {
        for i in 0..self.len {
            f(Pointer::from_word(self.get(mem, i)));
        }
    }

    /// Counts the entries that are tagged (taken, not yet committed).
    pub fn tagged(&self, mem: &[u64]) -> usize {
        (0..self.span)
            .filter(|&i| tag_of(self.get(mem, i)) != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of 5 entries, packed as the configuration says.
    fn five() -> (Queue, [u64; 5]) {
        (Queue::new(&Config::new(5, 5, 4, 64, 4096)), [0u64; 5])
    }

    fn p(n: u32) -> Pointer {
        Pointer { slot: 0, offset: n }
    }

    fn contents(q: &Queue, mem: &[u64]) -> [u32; 8] {
        let mut out = [u32::MAX; 8];
        for (i, slot) in out.iter_mut().enumerate().take(q.len()) {
            *slot = Pointer::from_word(q.get(mem, i)).offset;
        }
        out
    }

    /// Interleaved takes by two transactions, a rollback of one and a commit of the other leave
    /// the remaining entries in their original order, across the ring's wrap.
    #[test]
    fn rollback_keeps_order_and_commit_removes() {
        let (mut q, mut mem) = five();
        for n in 0..5 {
            assert!(q.push_back(&mut mem, p(n)));
        }
        assert!(!q.push_back(&mut mem, p(9)));
        assert_eq!(q.take_next(&mut mem, 1).map(|x| x.1), Some(p(0)));
        assert_eq!(q.take_next(&mut mem, 2).map(|x| x.1), Some(p(1)));
        assert_eq!(q.take_next(&mut mem, 1).map(|x| x.1), Some(p(2)));
        q.untag_all(&mut mem, 1);
        // A checkpoint copying entries 1..4 (1, 2, 3) sees entry 1 go: its window shrinks.
        let mut watch = (1, 3);
        assert_eq!(q.remove_tagged(&mut mem, 2, Some(&mut watch)), 1);
        assert_eq!(watch, (1, 2));
        assert_eq!(&contents(&q, &mem)[..4], &[0, 2, 3, 4]);
        assert!(q.push_back(&mut mem, p(5)));
        assert_eq!(&contents(&q, &mem)[..5], &[0, 2, 3, 4, 5]);
        assert_eq!(q.take_next(&mut mem, 3).map(|x| x.1), Some(p(0)));
        // A window past the removed entry moves down by one.
        let mut watch = (2, 2);
        assert_eq!(q.remove_tagged(&mut mem, 3, Some(&mut watch)), 1);
        assert_eq!(watch, (1, 2));
        assert_eq!(&contents(&q, &mem)[..4], &[2, 3, 4, 5]);
        assert_eq!(q.span(), 0);
    }

    /// Every entry reads back exactly as written, pointer and tag (the replay tag as well),
    /// whatever the packing: entries that cross from one word into the next, a write that
    /// leaves its neighbours alone, and the widest packing, 64 bits.
    #[test]
    fn packed_entries_read_back_as_written() {
        let narrow = Config::new(100, 10, 3, 64, 4096).with_log_segments(16);
        let wide = Config::new(100, 10, 254, 64, u32::MAX - 4095);
        assert_eq!(narrow.queue_entry_bits(), 12 + 4 + 3);
        assert_eq!(wide.queue_entry_bits(), 64);
        for (config, tags) in [
            (narrow, [0u8, 1, 3, TAG_REPLAY]),
            (wide, [0, 1, 254, TAG_REPLAY]),
        ] {
            let packing = Packing::for_config(&config);
            let mut mem = [u64::MAX; 100];
            let mem = &mut mem[..packing.words(100)];
            let mut q = Queue::new(&config);
            let word = |i: usize| {
                let slot = (i as u32 * 7) % config.log_segments().min(1 << 20);
                let offset = (i as u32).wrapping_mul(2_654_435_761) % config.segment_bytes();
                with_tag(Pointer { slot, offset }.to_word(), tags[i % 4])
            };
            for i in 0..100 {
                assert!(q.push_back(mem, Pointer::from_word(word(i))));
                q.set(mem, i, word(i));
            }
            assert!(!q.push_back(mem, p(1)));
            for i in 0..100 {
                assert_eq!(q.get(mem, i), word(i), "entry {i}");
            }
            // Rewriting one entry changes only it.
            q.set(mem, 41, with_tag(p(5).to_word(), tags[2]));
            for i in 0..100 {
                let want = if i == 41 {
                    with_tag(p(5).to_word(), tags[2])
                } else {
                    word(i)
                };
                assert_eq!(q.get(mem, i), want, "entry {i} after rewriting 41");
            }
        }
    }
}
