//! The client protocol spoken on a channel home's Unix socket.
//!
//! A frame is a 4-byte little-endian length and that many bytes of a postcard-encoded
//! [`Request`] (client to owner) or [`Response`] (owner to client). Each request gets exactly
//! one response, in order. A connection has at most one open transaction: the first `Put` or
//! `Take` begins it, `Commit` or `Rollback` ends it (a `Put` with `commit` set ends it too).
//!
//! **Invariant:** a `Done` answer to a request that commits is sent only after the commit is
//! durable; a connection that drops with a transaction open has it rolled back, so its takes are
//! delivered again and its puts never appear.
//!
//! **Invariant:** an owner that is leaving begins no transaction: it answers [`Response::Leaving`]
//! to a request that would begin one, so a client that gets `Leaving` (or a closed connection
//! while it had no transaction open) knows the request did nothing and may send it elsewhere.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

/// The largest frame either side accepts. A client splits larger put batches into several
/// `Put` requests of one transaction.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What a client asks of the owner. Events borrow from the caller (to send) or from the
/// received frame (to serve), so a put batch is never copied event by event.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Puts events into the connection's transaction (beginning one if none is open); with
    /// `commit`, commits it and answers once it is durable.
    Put {
        /// The events, in order.
        #[serde(borrow)]
        events: Vec<&'a Bytes>,
        /// Commit the transaction after these puts.
        commit: bool,
    },
    /// Takes up to `max` events into the connection's transaction (beginning one if none is
    /// open), waiting up to `wait_ms` for the first one.
    Take {
        /// The most events to return.
        max: u32,
        /// How long to wait for a first event when none is available.
        wait_ms: u32,
    },
    /// Commits the open transaction; answered once it is durable.
    Commit,
    /// Rolls the open transaction back: its takes become available again in their places.
    Rollback,
    /// The owner's figures, as JSON (see [`crate::metrics::Served::figures`]).
    Stats,
}

/// Why the owner refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The channel stayed full for `keep_alive_ms`.
    Full,
    /// A directory is below `minimum_required_space_bytes`.
    NoSpace,
    /// An event is larger than `max_event_bytes`, or a batch than a transaction holds.
    TooLarge,
    /// The request does not fit the connection's state (a commit with no transaction, a take
    /// in a put transaction...).
    BadRequest,
    /// The channel failed (an I/O error); the owner must be restarted.
    Failed,
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// The request was carried out (and, if it committed, the commit is durable).
    Done,
    /// The events taken, in order; empty if none came within the wait.
    Events(Vec<ByteBuf>),
    /// The figures, as a JSON object.
    Stats(String),
    /// The request was refused; the transaction, if one was open, is still open unless the
    /// refusal was of a commit (then it was rolled back).
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// One line for a person.
        message: String,
    },
    /// The owner is closing: nothing was done; connect again (or become the owner).
    Leaving,
}

/// Asks for a send buffer that holds a large frame whole (the kernel caps it at `wmem_max`),
/// so a batch crosses the socket in one wake-up of the reader rather than several.
pub fn widen_send_buffer(stream: &std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size; failure
    // only leaves the default buffer.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Encodes one frame (length and body) into `out`, replacing what it held.
pub fn encode_frame<T: Serialize>(value: &T, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(value, std::mem::take(out))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let len = body.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    body[..4].copy_from_slice(&(len as u32).to_le_bytes());
    *out = body;
    Ok(())
}

/// Writes one frame, in one write.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let mut frame = Vec::new();
    encode_frame(value, &mut frame)?;
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame's body into `body` (replacing what it held); `Ok(false)` if the peer closed
/// the connection between frames.
pub fn read_frame_into(r: &mut impl Read, body: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    let mut got = 0;
    // Bounded: each turn reads at least one byte of four or returns.
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    body.clear();
    // Appends without zeroing first: the frame can be large.
    r.take(len as u64).read_to_end(body)?;
    if body.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(true)
}

/// Decodes a frame's body.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> io::Result<T> {
    postcard::from_bytes(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Reads one frame of an owned type; `Ok(None)` if the peer closed the connection between
/// frames.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut body = Vec::new();
    if !read_frame_into(r, &mut body)? {
        return Ok(None);
    }
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request survives the frame both ways, and a frame longer than the limit is refused
    /// before its body is read.
    #[test]
    fn frames_round_trip_and_lengths_are_bounded() {
        let mut buf = Vec::new();
        let req = Request::Put {
            events: vec![Bytes::new(b"a"), Bytes::new(b"")],
            commit: true,
        };
        write_frame(&mut buf, &req).unwrap();
        let mut body = Vec::new();
        assert!(read_frame_into(&mut &buf[..], &mut body).unwrap());
        let back: Request<'_> = decode(&body).unwrap();
        match back {
            Request::Put { events, commit } => {
                assert!(commit);
                assert_eq!(events.len(), 2);
                assert_eq!(&events[0][..], b"a");
            }
            other => panic!("got {other:?}"),
        }
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        let err = read_frame::<Response>(&mut &huge[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(read_frame::<Response>(&mut &[][..]).unwrap().is_none());
        assert!(read_frame::<Response>(&mut &[1u8, 0][..]).is_err());
    }
}
