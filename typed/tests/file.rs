//! Typed events through the file adapter: a value put is the value taken, across a reopen; a
//! value too large, bytes that are not a value and a buffer smaller than the channel's events
//! are clear errors, counted, and lose nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sluicegate_file::{FileChannel, FileChannelConfig};
use sluicegate_typed::{Codec, TypedError};

/// A gateway's reading, with a bounded label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    seq: u32,
    at_ms: u64,
    sensor: u16,
    value: f32,
    label: heapless::String<16>,
}

fn reading(seq: u32) -> Reading {
    let mut label = heapless::String::new();
    for _ in 0..seq % 17 {
        // Up to 16 characters: fits.
        let _ = label.push('x');
    }
    Reading {
        seq,
        at_ms: 1_700_000_000_000 + u64::from(seq) * 250,
        sensor: (seq % 5) as u16,
        value: seq as f32 * 0.5 - 40.0,
        label,
    }
}

fn config(root: &Path, max_event_bytes: u32) -> FileChannelConfig {
    FileChannelConfig {
        capacity: 1_000,
        transaction_capacity: 100,
        max_file_bytes: 256 * 1024,
        log_files: 8,
        minimum_required_space_bytes: 0,
        checkpoint_interval_ms: 0,
        keep_alive_ms: 0,
        max_event_bytes,
        ..FileChannelConfig::in_dir(root)
    }
}

#[test]
fn values_put_are_the_values_taken_across_a_reopen() {
    let root = tempfile::tempdir().unwrap();
    let mut codec: Codec<Reading, 64> = Codec::new();
    {
        let ch = FileChannel::open(config(root.path(), 64)).unwrap();
        for batch in 0..5u32 {
            let mut tx = ch.begin().unwrap();
            for i in 0..20 {
                codec.put(&mut tx, &reading(batch * 20 + i)).unwrap();
            }
            tx.commit().unwrap();
        }
        // A rolled-back take leaves its values queued, in order.
        let mut tx = ch.begin().unwrap();
        assert_eq!(codec.take(&mut tx).unwrap(), Some(reading(0)));
        tx.rollback().unwrap();
    }
    let ch = FileChannel::open(config(root.path(), 64)).unwrap();
    let mut tx = ch.begin().unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(codec.take(&mut tx).unwrap().expect("a queued reading"));
    }
    tx.commit().unwrap();
    assert_eq!(got, (0..100).map(reading).collect::<Vec<_>>());
    let mut tx = ch.begin().unwrap();
    assert_eq!(codec.take(&mut tx).unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(codec.undecodable(), 0);
}

#[test]
fn a_value_longer_than_the_channel_allows_is_refused_and_nothing_is_put() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(config(root.path(), 24)).unwrap();
    let mut codec: Codec<Reading, 64> = Codec::new();
    let mut tx = ch.begin().unwrap();
    // A short label fits in 24 bytes; a long one does not.
    codec.put(&mut tx, &reading(0)).unwrap();
    let e = codec.put(&mut tx, &reading(16)).unwrap_err();
    assert!(matches!(e, TypedError::TooLarge { max: 24 }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the value's encoding is longer than 24 bytes"
    );
    tx.commit().unwrap();
    let mut tx = ch.begin().unwrap();
    assert_eq!(codec.take(&mut tx).unwrap(), Some(reading(0)));
    assert_eq!(codec.take(&mut tx).unwrap(), None);
    tx.commit().unwrap();

    // The codec's own buffer bounds it too.
    let mut small: Codec<Reading, 8> = Codec::new();
    assert_eq!(
        small.encode(&reading(0), 64).unwrap_err(),
        TypedError::TooLarge { max: 8 }
    );
}

#[test]
fn bytes_that_are_not_a_value_are_counted_and_stay_in_the_transaction() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(config(root.path(), 64)).unwrap();
    let mut codec: Codec<Reading, 64> = Codec::new();
    let mut tx = ch.begin().unwrap();
    codec.put(&mut tx, &reading(1)).unwrap();
    // Another program's event: not a reading (a truncated one, and one with bytes after it).
    let whole = postcard::to_allocvec(&reading(2)).unwrap();
    tx.put(&whole[..whole.len() - 3]).unwrap();
    let mut longer = whole.clone();
    longer.push(0);
    tx.put(&longer).unwrap();
    codec.put(&mut tx, &reading(3)).unwrap();
    tx.commit().unwrap();

    let mut tx = ch.begin().unwrap();
    assert_eq!(codec.take(&mut tx).unwrap(), Some(reading(1)));
    let e = codec.take(&mut tx).unwrap_err();
    assert!(
        matches!(e, TypedError::Undecodable { len } if len == whole.len() - 3),
        "{e:?}"
    );
    assert_eq!(
        &codec.buffer_mut()[..whole.len() - 3],
        &whole[..whole.len() - 3],
        "the bytes are kept for the caller"
    );
    assert!(matches!(
        codec.take(&mut tx).unwrap_err(),
        TypedError::Undecodable { .. }
    ));
    assert_eq!(codec.undecodable(), 2);
    // Rolled back: the undecodable events are still queued, in their places.
    tx.rollback().unwrap();
    let mut tx = ch.begin().unwrap();
    assert_eq!(codec.take(&mut tx).unwrap(), Some(reading(1)));
    assert!(codec.take(&mut tx).is_err());
    assert!(codec.take(&mut tx).is_err());
    assert_eq!(codec.take(&mut tx).unwrap(), Some(reading(3)));
    tx.commit().unwrap();
    assert_eq!(codec.undecodable(), 4);
    assert_eq!(ch.stats().channel.depth, 0);
}

#[test]
fn a_codec_smaller_than_the_channels_events_takes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let ch = FileChannel::open(config(root.path(), 64)).unwrap();
    let mut big: Codec<Reading, 64> = Codec::new();
    let mut tx = ch.begin().unwrap();
    big.put(&mut tx, &reading(5)).unwrap();
    tx.commit().unwrap();
    let mut small: Codec<Reading, 32> = Codec::new();
    let mut tx = ch.begin().unwrap();
    let e = small.take(&mut tx).unwrap_err();
    assert!(
        matches!(e, TypedError::BufferTooSmall { have: 32, need: 64 }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the codec's buffer (32 bytes) is smaller than the channel's max_event_bytes (64)"
    );
    assert_eq!(big.take(&mut tx).unwrap(), Some(reading(5)));
    tx.commit().unwrap();
}
