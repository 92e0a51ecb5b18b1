//! Frames: what is encoded is decoded, whatever the bytes around it; a damaged frame costs
//! itself only, and is counted.

use sluicegate_uplink::{encode, Decoder, Down, Reading, Up, MAX_BATCH, MAX_FRAME};

fn batch(seq: u32, n: usize) -> Up {
    let mut readings = heapless::Vec::new();
    for i in 0..n as u32 {
        let _ = readings.push(Reading {
            seq: seq * 100 + i,
            at_ms: u32::MAX - i,
            sensor: i as u8,
            centi_celsius: i16::MIN + i as i16,
        });
    }
    Up::Batch {
        seq,
        boot: u32::MAX,
        readings,
    }
}

fn feed(d: &mut Decoder, bytes: &[u8]) -> Vec<Up> {
    bytes.iter().filter_map(|&b| d.push::<Up>(b)).collect()
}

#[test]
fn frames_round_trip_including_the_largest() {
    let mut out = [0u8; MAX_FRAME];
    let mut d = Decoder::new();
    for n in [0, 1, MAX_BATCH] {
        let m = batch(7, n);
        let frame = encode(&m, &mut out).unwrap().to_vec();
        assert_eq!(
            frame.iter().filter(|&&b| b == 0).count(),
            1,
            "one zero byte, at the end"
        );
        assert_eq!(*frame.last().unwrap(), 0);
        assert_eq!(feed(&mut d, &frame), vec![m]);
    }
    let ack = encode(&Down::Ack { seq: 42 }, &mut out).unwrap().to_vec();
    let mut d = Decoder::new();
    let got: Vec<Down> = ack.iter().filter_map(|&b| d.push::<Down>(b)).collect();
    assert_eq!(got, vec![Down::Ack { seq: 42 }]);
}

#[test]
fn a_damaged_frame_is_dropped_and_counted_and_the_next_one_is_read() {
    let mut out = [0u8; MAX_FRAME];
    let first = encode(&batch(1, 3), &mut out).unwrap().to_vec();
    let second = encode(&batch(2, 3), &mut out).unwrap().to_vec();
    let mut d = Decoder::new();
    // Every single-byte change of the first frame that keeps its zero byte where it was.
    for at in 0..first.len() - 1 {
        for flip in [0x01u8, 0x80] {
            let mut bad = first.clone();
            bad[at] ^= flip;
            if bad[at] == 0 {
                continue;
            }
            let mut stream = bad;
            stream.extend(&second);
            assert_eq!(
                feed(&mut d, &stream),
                vec![batch(2, 3)],
                "byte {at} ^ {flip:#x}"
            );
        }
    }
    let dropped = d.dropped();
    assert!(dropped.damaged > 0 && dropped.too_long == 0, "{dropped:?}");
    // Bytes lost from the middle: the frame is dropped, the next one read.
    let mut stream = first[..5].to_vec();
    stream.extend(&first[9..]);
    stream.extend(&second);
    assert_eq!(feed(&mut d, &stream), vec![batch(2, 3)]);
    // Noise with no zero byte longer than any frame, then a frame.
    let mut stream = vec![0x55u8; MAX_FRAME * 3];
    stream.push(0);
    stream.extend(&second);
    assert_eq!(feed(&mut d, &stream), vec![batch(2, 3)]);
    assert_eq!(d.dropped().too_long, 1);
}

#[test]
fn a_frame_that_checks_but_is_not_a_message_is_counted() {
    let mut out = [0u8; MAX_FRAME];
    // A well-formed frame of another type: an acknowledgement read where batches are expected.
    let ack = encode(&Down::Ack { seq: 300 }, &mut out).unwrap().to_vec();
    let mut d = Decoder::new();
    assert!(feed(&mut d, &ack).is_empty());
    assert_eq!(d.dropped().undecodable, 1);
}
