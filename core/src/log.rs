//! The log's geometry and the mechanics of reading and writing records in it.
//!
//! The log region is a ring of `segments` segments of `segment_bytes` each. The segment with
//! sequence number `seq` lives in slot `seq % segments`. Records are appended to the newest
//! segment; when one does not fit, the next slot is erased (header block first, then a sync,
//! then the rest) and a new segment header is written there.
//!
//! **Invariant:** a record's CRC is bound to the sequence number of the segment it lives in, so a
//! stale record left in a slot by an earlier lap of the ring can never pass as a new one.

use crate::record::{
    align_up, header_bytes, Pointer, RecordHeader, SegmentCheck, SegmentHeader,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::storage::{Region, Storage};

/// The largest write size the core supports.
pub const MAX_WRITE_SIZE: usize = 64;
/// The staging buffer of the writer: a multiple of every supported write size.
const STAGE_BYTES: usize = 256;

/// Where segments and records lie in the log region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The segments in the ring.
    pub segments: u64,
    /// The size of one segment.
    pub segment_bytes: u64,
    /// Records are aligned to this (the storage's write size).
    pub align: u64,
    /// True for a compact log ([`crate::record::SEGMENT_FLAG_COMPACT`]): 8-byte record headers.
    pub compact: bool,
}

impl Geometry {
    /// The geometry of a ring of `segments` segments of `segment_bytes` on a storage whose
    /// write size is `write_size`.
    pub fn new(segments: u64, segment_bytes: u64, write_size: usize) -> Self {
        let align = write_size as u64;
        Geometry {
            segments,
            segment_bytes,
            align,
            compact: false,
        }
    }

    /// The offset of a segment's first record: the segment header, padded to whole words.
    pub const fn first_record(&self) -> u64 {
        // In 32 bits (the write size is at most `MAX_WRITE_SIZE`): one division instruction
        // on a 32-bit core, where a 64-bit one is a library call.
        let align = self.align as u32;
        (SEGMENT_HEADER_BYTES as u32).div_ceil(align) as u64 * align as u64
    }

    /// The same geometry for a compact log, or not.
    pub const fn with_compact(self, compact: bool) -> Self {
        Geometry { compact, ..self }
    }

    /// True for a compact log in a build with the core's `compact` feature. Without the
    /// feature this is false whatever the field says, so the compact format's code is left
    /// out of the build (firmware that does not use it saves about 3.7 KiB of flash on a
    /// Cortex-M4), and a compact log is refused as one of another format.
    #[inline(always)]
    pub const fn is_compact(&self) -> bool {
        cfg!(feature = "compact") && self.compact
    }

    /// The size of a record header in this log.
    pub const fn header_bytes(&self) -> u64 {
        header_bytes(self.is_compact()) as u64
    }

    /// The slot of the segment numbered `seq`.
    pub fn slot_of(&self, seq: u64) -> u32 {
        (seq % self.segments) as u32
    }

    /// Where the segment in `slot` starts in the log region.
    pub fn segment_start(&self, slot: u32) -> u64 {
        slot as u64 * self.segment_bytes
    }

    /// Where the record `p` points at lies in the log region.
    pub fn record_offset(&self, p: Pointer) -> u64 {
        self.segment_start(p.slot) + p.offset as u64
    }

    /// The bytes a record with `payload` bytes occupies, padding included.
    pub fn record_span(&self, payload: u64) -> u64 {
        align_up(self.header_bytes() + payload, self.align)
    }

    /// The sequence number of the segment in `slot`, for a log whose newest segment is `newest`
    /// and whose live segments all lie in `(newest - segments, newest]`.
    pub fn seq_of_slot(&self, slot: u32, newest: u64) -> u64 {
        let back = (self.slot_of(newest) as u64 + self.segments - slot as u64) % self.segments;
        newest.wrapping_sub(back)
    }

    /// A pointer read from media is well formed: inside the ring, aligned, and with room for a
    /// record header before the segment's end.
    pub fn pointer_in_bounds(&self, p: Pointer) -> bool {
        (p.slot as u64) < self.segments
            && p.offset as u64 >= self.first_record()
            && (p.offset as u64) % self.align == 0
            && p.offset as u64 + self.header_bytes() <= self.segment_bytes
    }
}

/// Streams bytes to the log as whole, aligned words. Small pieces are staged; long aligned runs
/// go straight through. One record is usually one `write` call.
pub(crate) struct WordWriter<'s, S: Storage> {
    storage: &'s mut S,
    region: Region,
    align: usize,
    /// The region offset where `stage[0]` will land; always aligned.
    pos: u64,
    stage: [u8; STAGE_BYTES],
    fill: usize,
}

impl<'s, S: Storage> WordWriter<'s, S> {
    pub fn new(storage: &'s mut S, region: Region, align: u64, pos: u64) -> Self {
        debug_assert!(pos % align == 0);
        WordWriter {
            storage,
            region,
            align: align as usize,
            pos,
            stage: [0; STAGE_BYTES],
            fill: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), S::Error> {
        while !bytes.is_empty() {
            if self.fill == 0 && bytes.len() >= STAGE_BYTES {
                // A long run: write its aligned part straight from the caller's buffer.
                let direct = bytes.len() - bytes.len() % self.align;
                self.storage
                    .write(self.region, self.pos, &bytes[..direct])?;
                self.pos += direct as u64;
                bytes = &bytes[direct..];
                continue;
            }
            let n = (STAGE_BYTES - self.fill).min(bytes.len());
            self.stage[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == STAGE_BYTES {
                self.storage.write(self.region, self.pos, &self.stage)?;
                self.pos += STAGE_BYTES as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Pads the last word with zeros and writes what is staged. Returns the end offset.
    pub fn finish(mut self) -> Result<u64, S::Error> {
        if self.fill > 0 {
            let padded = align_up(self.fill as u64, self.align as u64) as usize;
            self.stage[self.fill..padded].fill(0);
            self.storage
                .write(self.region, self.pos, &self.stage[..padded])?;
            self.pos += padded as u64;
        }
        Ok(self.pos)
    }
}

/// Reads the segment header in `slot`.
pub(crate) fn read_segment_header<S: Storage>(
    storage: &mut S,
    geo: &Geometry,
    slot: u32,
) -> Result<SegmentCheck, S::Error> {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    storage.read(Region::Log, geo.segment_start(slot), &mut b)?;
    Ok(SegmentHeader::decode(&b))
}

/// Reads a record header of a compact log or not.
pub(crate) fn read_record_header<S: Storage>(
    storage: &mut S,
    compact: bool,
    offset: u64,
) -> Result<RecordHeader, S::Error> {
    let mut b = [0u8; RECORD_HEADER_BYTES];
    storage.read(Region::Log, offset, &mut b[..header_bytes(compact)])?;
    Ok(RecordHeader::decode_as(compact, &b))
}

/// Feeds `len` bytes at `offset` to `sink` in bounded chunks, through a stack buffer, so that
/// payloads of any size are checked without memory proportional to them.
pub(crate) fn stream_payload<S: Storage>(
    storage: &mut S,
    offset: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), S::Error> {
    let mut buf = [0u8; STAGE_BYTES];
    let mut done = 0u64;
    // Bounded: `len` was checked against the configured maximum by the caller.
    while done < len {
        let n = (len - done).min(STAGE_BYTES as u64) as usize;
        storage.read(Region::Log, offset + done, &mut buf[..n])?;
        sink(&buf[..n]);
        done += n as u64;
    }
    Ok(())
}

/// True if the payload of the record whose header is `header`, at `offset` in a segment whose
/// binding is `bind` ([`crate::record::SegmentHeader::binding`]), completes the header's CRC.
/// The payload is streamed, so its length costs no memory.
pub(crate) fn payload_matches<S: Storage>(
    storage: &mut S,
    header: &RecordHeader,
    bind: u64,
    offset: u64,
) -> Result<bool, S::Error> {
    let mut digest = header.digest(bind);
    stream_payload(
        storage,
        offset + header.bytes() as u64,
        header.len as u64,
        |c| digest.update(c),
    )?;
    Ok(digest.finalize() == header.crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot-to-sequence mapping inverts seq-to-slot for every live segment.
    #[test]
    fn seq_of_slot_inverts_slot_of() {
        let g = Geometry::new(7, 4096, 4);
        for newest in 6..40u64 {
            for seq in newest - 6..=newest {
                assert_eq!(g.seq_of_slot(g.slot_of(seq), newest), seq);
            }
        }
    }
}
