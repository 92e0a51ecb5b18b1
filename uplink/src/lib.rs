//! The serial uplink between a gateway and its bridge: what goes over the wire.
//!
//! The gateway sends its readings in batches ([`Up::Batch`], one per take transaction, each
//! with a sequence number of its own); the bridge answers [`Down::Ack`] with that number once
//! the broker acknowledged every reading of the batch. The gateway commits its take on the
//! acknowledgement and rolls it back when none comes in time, so a batch is sent again until it
//! is acknowledged: at least once, never lost.
//!
//! A frame is a message encoded with `postcard`, followed by the CRC-32C of those bytes
//! (little-endian), the whole encoded with COBS and ended by a zero byte. A frame that fails
//! its COBS decoding or its checksum, or that does not decode as a message, is dropped and
//! counted by the [`Decoder`]; a byte lost or changed on the line costs that frame only, and
//! the zero byte that ends every frame is where the reader finds its footing again. Nothing
//! here allocates or panics on any input.
#![no_std]
#![deny(missing_docs)]

use crc::{Crc, CRC_32_ISCSI};
use serde::{Deserialize, Serialize};

/// Readings in one batch, at most.
pub const MAX_BATCH: usize = 16;

/// The largest frame on the wire, zero byte included: a batch of [`MAX_BATCH`] readings of the
/// largest encoding, its checksum, and COBS's overhead.
pub const MAX_FRAME: usize = cobs::max_encoding_length(MAX_MESSAGE + 4) + 1;

/// The largest encoded message: a tag, two sequence numbers, a length and the readings.
const MAX_MESSAGE: usize = 1 + 5 + 5 + 1 + MAX_BATCH * Reading::MAX_ENCODED;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// One sensor reading, as the gateway samples it and the broker receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reading {
    /// Its sequence number, from 0, across boots.
    pub seq: u32,
    /// When it was sampled: milliseconds since the boot that sampled it started.
    pub at_ms: u32,
    /// Which sensor.
    pub sensor: u8,
    /// The value, in hundredths of a degree Celsius.
    pub centi_celsius: i16,
}

impl Reading {
    /// The longest postcard encoding of a reading: two varints of a `u32`, a byte and a
    /// zigzag varint of an `i16`.
    pub const MAX_ENCODED: usize = 5 + 5 + 1 + 3;
}

/// From the gateway to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Up {
    /// A take transaction's readings, in order.
    Batch {
        /// The batch's number; the acknowledgement repeats it.
        seq: u32,
        /// The boot that sent it (the bridge's logs tell boots apart by it).
        boot: u32,
        /// The readings.
        readings: heapless::Vec<Reading, MAX_BATCH>,
    },
}

/// From the bridge to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Down {
    /// Every reading of batch `seq` was acknowledged by the broker.
    Ack {
        /// The batch's number.
        seq: u32,
    },
}

/// A message that does not fit a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TooLong;

/// Encodes `message` as one frame into `out` and returns the frame, its zero byte included.
pub fn encode<'a, T: Serialize>(
    message: &T,
    out: &'a mut [u8; MAX_FRAME],
) -> Result<&'a [u8], TooLong> {
    let mut plain = [0u8; MAX_MESSAGE + 4];
    let n = postcard::to_slice(message, &mut plain[..MAX_MESSAGE])
        .map_err(|_| TooLong)?
        .len();
    let sum = CRC32C.checksum(&plain[..n]);
    plain[n..n + 4].copy_from_slice(&sum.to_le_bytes());
    // `out` holds the longest encoding of `MAX_MESSAGE + 4` bytes and the zero byte.
    let len = cobs::encode(&plain[..n + 4], &mut out[..MAX_FRAME - 1]);
    out[len] = 0;
    Ok(&out[..=len])
}

/// What a [`Decoder`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Dropped {
    /// Frames longer than any message (their bytes were skipped to the next zero byte).
    pub too_long: u32,
    /// Frames whose COBS encoding or checksum failed.
    pub damaged: u32,
    /// Frames that passed their checksum and did not decode as a message.
    pub undecodable: u32,
}

/// Reads frames from a byte stream, one byte at a time.
#[derive(Debug)]
pub struct Decoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    /// True while skipping the rest of a frame that was too long.
    skipping: bool,
    dropped: Dropped,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder at the start of a frame.
    pub const fn new() -> Self {
        Decoder {
            buf: [0; MAX_FRAME],
            len: 0,
            skipping: false,
            dropped: Dropped {
                too_long: 0,
                damaged: 0,
                undecodable: 0,
            },
        }
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Feeds one byte; returns a message when `byte` ends a frame that checks and decodes.
    pub fn push<T: serde::de::DeserializeOwned>(&mut self, byte: u8) -> Option<T> {
        if byte != 0 {
            if self.skipping {
                return None;
            }
            if self.len == self.buf.len() {
                self.dropped.too_long += 1;
                self.skipping = true;
                self.len = 0;
                return None;
            }
            self.buf[self.len] = byte;
            self.len += 1;
            return None;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.skipping) || len == 0 {
            return None;
        }
        let Ok(n) = cobs::decode_in_place(&mut self.buf[..len]) else {
            self.dropped.damaged += 1;
            return None;
        };
        if n < 4 {
            self.dropped.damaged += 1;
            return None;
        }
        let (body, sum) = self.buf[..n].split_at(n - 4);
        if CRC32C.checksum(body).to_le_bytes() != sum {
            self.dropped.damaged += 1;
            return None;
        }
        match postcard::take_from_bytes::<T>(body) {
            Ok((message, [])) => Some(message),
            _ => {
                self.dropped.undecodable += 1;
                None
            }
        }
    }
}
