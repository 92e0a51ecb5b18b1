//! Typed events on a Sluicegate channel: any `serde` type, encoded with `postcard` into a fixed
//! buffer, put and taken with no allocation, on a microcontroller and on a server alike.
//!
//! A [`Codec`] owns one buffer of `N` bytes. [`Codec::put`] encodes a value into it and puts the
//! bytes; [`Codec::take`] takes the next event into it and decodes it. Both work on anything
//! that implements [`Events`]: a transaction of the core's [`Channel`] ([`InTxn`]), and with the
//! `file` feature a `sluicegate_file::Transaction`. On firmware that puts from an interrupt
//! through the flash adapter's `SharedChannel`, [`Codec::encode`] gives the bytes to hand to
//! `put_committed`, and [`Codec::decode`] reads what a take left in [`Codec::buffer_mut`].
//!
//! The channel stores bytes and knows nothing of the type: every event a codec puts is one
//! postcard encoding, and a take that finds bytes that are not one (an event put by another
//! program, or by an older version of the type) returns [`TypedError::Undecodable`], counts it
//! ([`Codec::undecodable`]) and leaves the event in the caller's transaction: commit to drop
//! it (after keeping its bytes, which stay in [`Codec::buffer_mut`]), or roll back to leave it
//! queued. Nothing here panics on any input.
//!
//! A codec's buffer must hold the channel's largest event: [`Codec::take`] refuses a channel
//! whose `max_event_bytes` is larger than `N` ([`TypedError::BufferTooSmall`]), so one long
//! event put by another program can never stop a typed consumer in front of it. Give a
//! channel of typed events a `max_event_bytes` no larger than the codec's buffer.
//!
//! Bounded collections in a type come from `heapless` (`heapless::Vec`, `heapless::String`,
//! with its `serde` feature): postcard encodes them as a length and their elements, and the
//! largest value must fit both `N` and the channel's `max_event_bytes`
//! ([`TypedError::TooLarge`] otherwise, with nothing put).
#![no_std]
#![deny(missing_docs)]

use core::fmt;
use core::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluicegate_core::storage::Storage;
use sluicegate_core::{Channel, Error, KeyProvider, Txn};

/// Where typed events go and come from: a transaction that puts and takes bytes.
pub trait Events {
    /// The transaction's error.
    type Error;
    /// The largest event the channel accepts (its `max_event_bytes`).
    fn max_event_bytes(&self) -> usize;
    /// Puts one event.
    fn put_bytes(&mut self, event: &[u8]) -> Result<(), Self::Error>;
    /// Takes the next event into `buf` and returns its length, or `None` if none is queued.
    fn take_bytes(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
}

/// An open transaction of a core [`Channel`], as [`Events`].
pub struct InTxn<'c, S: Storage, M, K> {
    /// The channel.
    pub channel: &'c mut Channel<S, M, K>,
    /// The transaction, begun on `channel`.
    pub txn: Txn,
}

impl<'c, S: Storage, M, K> InTxn<'c, S, M, K> {
    /// `txn` of `channel`.
    pub fn new(channel: &'c mut Channel<S, M, K>, txn: Txn) -> Self {
        InTxn { channel, txn }
    }
}

impl<S: Storage, M: AsRef<[u64]> + AsMut<[u64]>, K: KeyProvider> Events for InTxn<'_, S, M, K> {
    type Error = Error<S::Error>;

    fn max_event_bytes(&self) -> usize {
        self.channel.config().max_event_bytes() as usize
    }

    fn put_bytes(&mut self, event: &[u8]) -> Result<(), Self::Error> {
        self.channel.put(self.txn, event)
    }

    fn take_bytes(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        self.channel.take(self.txn, buf)
    }
}

#[cfg(feature = "file")]
impl Events for sluicegate_file::Transaction<'_> {
    type Error = sluicegate_file::FileChannelError;

    fn max_event_bytes(&self) -> usize {
        self.channel().config().max_event_bytes as usize
    }

    fn put_bytes(&mut self, event: &[u8]) -> Result<(), Self::Error> {
        self.put(event)
    }

    fn take_bytes(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        self.take(buf)
    }
}

/// What went wrong with a typed put or take.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TypedError<E> {
    /// The value's encoding does not fit in `max` bytes (the codec's buffer or the channel's
    /// `max_event_bytes`, the smaller); nothing was put.
    TooLarge {
        /// The most bytes an event may have here.
        max: usize,
    },
    /// The value cannot be encoded by postcard at all (a sequence of unknown length, or the
    /// type's own `Serialize` failed); nothing was put.
    Unencodable,
    /// The taken event's `len` bytes are not one encoding of the type. The event is in the
    /// transaction (commit drops it, roll back leaves it queued); its bytes are in
    /// [`Codec::buffer_mut`]. Counted in [`Codec::undecodable`].
    Undecodable {
        /// The event's length.
        len: usize,
    },
    /// The codec's buffer is smaller than the channel's `max_event_bytes`, so an event the
    /// channel accepts might not fit it; nothing was taken.
    BufferTooSmall {
        /// The codec's buffer.
        have: usize,
        /// The channel's `max_event_bytes`.
        need: usize,
    },
    /// The channel failed.
    Channel(E),
}

impl<E: fmt::Display> fmt::Display for TypedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedError::TooLarge { max } => {
                write!(f, "the value's encoding is longer than {max} bytes")
            }
            TypedError::Unencodable => f.write_str("postcard cannot encode the value"),
            TypedError::Undecodable { len } => {
                write!(f, "an event of {len} bytes does not decode as the type")
            }
            TypedError::BufferTooSmall { have, need } => write!(
                f,
                "the codec's buffer ({have} bytes) is smaller than the channel's max_event_bytes ({need})"
            ),
            TypedError::Channel(e) => write!(f, "{e}"),
        }
    }
}

/// Encodes and decodes values of `T` in one buffer of `N` bytes, and counts the events that
/// did not decode. Holds no value of `T`: a codec is `N` bytes and a counter, in a `static` on
/// firmware as well as on a stack.
pub struct Codec<T, const N: usize> {
    buf: [u8; N],
    undecodable: u32,
    _type: PhantomData<fn(&T) -> T>,
}

impl<T, const N: usize> Default for Codec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for Codec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("buffer", &N)
            .field("undecodable", &self.undecodable)
            .finish()
    }
}

impl<T, const N: usize> Codec<T, N> {
    /// A codec with an empty buffer and nothing counted.
    pub const fn new() -> Self {
        Codec {
            buf: [0; N],
            undecodable: 0,
            _type: PhantomData,
        }
    }

    /// Events taken that did not decode, since this codec was made.
    pub fn undecodable(&self) -> u32 {
        self.undecodable
    }

    /// The buffer: where [`Codec::decode`] reads a taken event from, and what
    /// [`Codec::encode`] wrote last.
    pub fn buffer_mut(&mut self) -> &mut [u8; N] {
        &mut self.buf
    }

    /// Encodes `value` into the buffer, in at most `max` bytes (and at most `N`), and returns
    /// the encoding.
    pub fn encode(
        &mut self,
        value: &T,
        max: usize,
    ) -> Result<&[u8], TypedError<core::convert::Infallible>>
    where
        T: Serialize,
    {
        let limit = max.min(N);
        match postcard::to_slice(value, &mut self.buf[..limit]) {
            Ok(bytes) => Ok(bytes),
            Err(postcard::Error::SerializeBufferFull) => Err(TypedError::TooLarge { max: limit }),
            Err(_) => Err(TypedError::Unencodable),
        }
    }

    /// Decodes the first `len` bytes of the buffer (where a take put an event) as one value;
    /// anything else, trailing bytes included, is [`TypedError::Undecodable`] and counted.
    pub fn decode(&mut self, len: usize) -> Result<T, TypedError<core::convert::Infallible>>
    where
        T: DeserializeOwned,
    {
        let decoded = self
            .buf
            .get(..len)
            .and_then(|bytes| postcard::take_from_bytes::<T>(bytes).ok())
            .filter(|(_, rest)| rest.is_empty());
        match decoded {
            Some((value, _)) => Ok(value),
            None => {
                self.undecodable = self.undecodable.saturating_add(1);
                Err(TypedError::Undecodable { len })
            }
        }
    }

    /// Encodes `value` and puts it in `to`'s transaction.
    pub fn put<E: Events>(&mut self, to: &mut E, value: &T) -> Result<(), TypedError<E::Error>>
    where
        T: Serialize,
    {
        let max = to.max_event_bytes();
        let bytes = self.encode(value, max).map_err(widen)?;
        to.put_bytes(bytes).map_err(TypedError::Channel)
    }

    /// Takes the next event in `from`'s transaction and decodes it; `None` if none is queued.
    pub fn take<E: Events>(&mut self, from: &mut E) -> Result<Option<T>, TypedError<E::Error>>
    where
        T: DeserializeOwned,
    {
        let need = from.max_event_bytes();
        if N < need {
            return Err(TypedError::BufferTooSmall { have: N, need });
        }
        match from
            .take_bytes(&mut self.buf)
            .map_err(TypedError::Channel)?
        {
            None => Ok(None),
            Some(len) => self.decode(len).map(Some).map_err(widen),
        }
    }
}

/// An error of encoding or decoding, which involves no channel, as one of a channel's.
fn widen<E>(e: TypedError<core::convert::Infallible>) -> TypedError<E> {
    match e {
        TypedError::TooLarge { max } => TypedError::TooLarge { max },
        TypedError::Unencodable => TypedError::Unencodable,
        TypedError::Undecodable { len } => TypedError::Undecodable { len },
        TypedError::BufferTooSmall { have, need } => TypedError::BufferTooSmall { have, need },
        TypedError::Channel(never) => match never {},
    }
}
