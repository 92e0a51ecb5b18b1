//! Decoding any bytes as a segment header, a record header (full or compact), a pointer or a
//! compact commit's payload never panics; a header that decodes as valid re-encodes to the
//! same bytes, and a compact commit that decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate_core::record::{
    compact, Pointer, RecordHeader, SegmentCheck, SegmentHeader, COMPACT_HEADER_BYTES,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
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
    if let Some(b) = data.get(..COMPACT_HEADER_BYTES) {
        let h = RecordHeader::decode_compact(b);
        let payload = &data[COMPACT_HEADER_BYTES..];
        if h.check(payload.len() as u64, payload) {
            assert_eq!(h.len as usize, payload.len());
        }
        assert_eq!(&h.encode()[..COMPACT_HEADER_BYTES], b);
    }
    // A compact commit over a ring whose shape the first two bytes choose.
    if let [a, s, body @ ..] = data {
        let align = [1u64, 4, 8, 16, 32][*a as usize % 5];
        let segments = 4 + *s as u64 * 65_000;
        let mut d = compact::Decoder::new(align, segments);
        let (mut distance, mut pointers) = (None, Vec::new());
        let mut ok = true;
        for &b in body {
            match d.feed(b) {
                Ok(Some(compact::Item::Distance(x))) => distance = Some(x),
                Ok(Some(compact::Item::Pointer(p))) => pointers.push(p),
                Ok(None) => {}
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok && d.finish().is_ok() {
            let mut again = Vec::new();
            compact::varint(distance.unwrap(), &mut |x| again.extend_from_slice(x));
            let mut e = compact::Encoder::new(align, segments);
            for p in &pointers {
                assert!((p.slot as u64) < segments && p.offset as u64 % align == 0);
                e.pointer(*p, &mut |x| again.extend_from_slice(x));
            }
            assert_eq!(again, body, "a compact commit re-encodes to its bytes");
        }
    }
});
