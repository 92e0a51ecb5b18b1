//! Decoding any bytes as a segment header, a record header or a pointer never panics, and a
//! header that decodes as valid re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate_core::record::{
    Pointer, RecordHeader, SegmentCheck, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..SEGMENT_HEADER_BYTES) {
        let b: &[u8; SEGMENT_HEADER_BYTES] = b.try_into().unwrap();
        if let SegmentCheck::Valid(h) = SegmentHeader::decode(b) {
            assert_eq!(&h.encode(), b);
        }
    }
    if let Some(b) = data.get(..RECORD_HEADER_BYTES) {
        let b: &[u8; RECORD_HEADER_BYTES] = b.try_into().unwrap();
        let h = RecordHeader::decode(b);
        let payload = &data[RECORD_HEADER_BYTES..];
        let seq = payload.len() as u64;
        if h.check(seq, payload) {
            // A record that checks out has exactly the payload its header claims.
            assert_eq!(h.len as usize, payload.len());
        }
        assert_eq!(&h.encode(), b);
    }
    if data.len() >= 8 {
        let p = Pointer::decode(&data[..8]);
        let _ = Pointer::from_word(p.to_word());
    }
});
