//! One reader of the log's format: segment headers and records, checked the way recovery checks
//! them, for recovery itself and for the tools that inspect and mend a log (`verify`, `dump`,
//! `repair`), so no second parser can drift from the one that decides what a channel holds.
//!
//! Every length read from the medium is bounded before it is used: a record's by its segment's
//! `max_payload` and by the room left in the segment, so a damaged length never causes a long
//! read. Payloads are streamed through a fixed stack buffer; nothing here allocates.
//!
//! **Invariant:** [`read_header`] and [`read_record`] accept exactly what recovery accepts at
//! the CRC level; recovery adds only what needs keys (the seal of a sealed segment, the
//! authentication of its records) and the meaning of an intact record (its kind, a commit's
//! shape).

pub use crate::log::Geometry;
use crate::log::{payload_matches, read_record_header, read_segment_header};
use crate::record::{
    kind_at, RecordHeader, RecordKind, SegmentCheck, SegmentHeader, COMPACT_MAX_SEGMENT_BYTES,
    SEGMENT_FLAG_COMPACT, SEGMENT_FLAG_SEALED,
};
use crate::storage::Storage;

/// What a slot's segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRead {
    /// A valid header of a segment that belongs in this slot, of this log's segment size.
    Valid(SegmentHeader),
    /// No valid header: erased, torn or damaged.
    Invalid,
    /// An intact header of a format version this build does not read.
    Unsupported(u16),
    /// An intact header of a segment that belongs in another slot (a file renamed or copied),
    /// or one whose `max_payload` leaves no room in a segment: recovery refuses it.
    Misplaced(SegmentHeader),
    /// An intact header of a log written with another segment size.
    OtherSize(SegmentHeader),
    /// An intact header of a compact segment in a log read as a full one, or the reverse.
    OtherFormat(SegmentHeader),
}

/// Reads and classifies the segment header in `slot`.
pub fn read_header<S: Storage>(
    storage: &mut S,
    geo: &Geometry,
    slot: u32,
) -> Result<HeaderRead, S::Error> {
    Ok(match read_segment_header(storage, geo, slot)? {
        SegmentCheck::Invalid => HeaderRead::Invalid,
        SegmentCheck::Unsupported(v) => HeaderRead::Unsupported(v),
        SegmentCheck::Valid(h) if h.segment_bytes as u64 != geo.segment_bytes => {
            HeaderRead::OtherSize(h)
        }
        SegmentCheck::Valid(h) if (h.flags & SEGMENT_FLAG_COMPACT != 0) != geo.is_compact() => {
            HeaderRead::OtherFormat(h)
        }
        // A compact segment is never sealed, nor larger than a compact header can describe.
        SegmentCheck::Valid(h)
            if geo.slot_of(h.seq) != slot
                || geo.is_compact()
                    && (h.flags & SEGMENT_FLAG_SEALED != 0
                        || geo.segment_bytes > COMPACT_MAX_SEGMENT_BYTES as u64)
                || h.max_payload as u64 + geo.header_bytes() > geo.segment_bytes =>
        {
            HeaderRead::Misplaced(h)
        }
        SegmentCheck::Valid(h) => HeaderRead::Valid(h),
    })
}

/// True if a record header read at `offset` of `segment` keeps to the bounds: a length within
/// the writer's `max_payload` and the room left in the segment, and, with `index`, the
/// expected write-order delta.
pub fn fits(
    geo: &Geometry,
    segment: &SegmentHeader,
    offset: u64,
    h: &RecordHeader,
    index: Option<u64>,
) -> bool {
    h.len <= segment.max_payload
        && offset + geo.header_bytes() + h.len as u64 <= geo.segment_bytes
        && index.is_none_or(|i| h.wid_delta as u64 == i)
}

/// The header of the record at `offset` of `segment` if it is intact: within bounds ([`fits`]),
/// and its CRC (over the segment's sequence number, the header and the payload, streamed)
/// holds. `None` for a damaged, torn, erased or stale record.
pub fn read_record<S: Storage>(
    storage: &mut S,
    geo: &Geometry,
    segment: &SegmentHeader,
    offset: u64,
    index: Option<u64>,
) -> Result<Option<RecordHeader>, S::Error> {
    if offset + geo.header_bytes() > geo.segment_bytes {
        return Ok(None);
    }
    let at = geo.segment_start(geo.slot_of(segment.seq)) + offset;
    let h = read_record_header(storage, geo.is_compact(), at)?;
    if !fits(geo, segment, offset, &h, index) {
        return Ok(None);
    }
    Ok(payload_matches(storage, &h, segment.binding(), at)?.then_some(h))
}

/// The first intact record at or after `from` (aligned) whose write-order delta is past
/// `after`, with its offset: where reading can go on behind damage. Only offsets whose kind
/// byte names a record kind are checked in full, so a long erased or garbled stretch costs one
/// pass of small reads.
pub fn next_intact<S: Storage>(
    storage: &mut S,
    geo: &Geometry,
    segment: &SegmentHeader,
    from: u64,
    after: u64,
) -> Result<Option<(u64, RecordHeader)>, S::Error> {
    const CHUNK: usize = 256;
    let base = geo.segment_start(geo.slot_of(segment.seq));
    let mut at = crate::record::align_up(from, geo.align);
    let mut buf = [0u8; CHUNK];
    // Bounded: every turn moves `at` forward by at least one aligned word.
    let header = geo.header_bytes() as usize;
    while at + header as u64 <= geo.segment_bytes {
        let n = ((geo.segment_bytes - at) as usize).min(CHUNK);
        storage.read(crate::storage::Region::Log, base + at, &mut buf[..n])?;
        let mut i = 0usize;
        while i + header <= n {
            if RecordKind::from_u8(kind_at(geo.is_compact(), &buf[i..])).is_some() {
                let offset = at + i as u64;
                if let Some(h) = read_record(storage, geo, segment, offset, None)? {
                    if h.wid_delta as u64 > after {
                        return Ok(Some((offset, h)));
                    }
                }
            }
            i += geo.align as usize;
        }
        at += i.max(geo.align as usize) as u64;
    }
    Ok(None)
}
