//! [`Client`]: one connection to a channel's owner.
//!
//! Calls are blocking and carry one transaction at a time, as the owner serves them
//! ([`crate::protocol`]). A [`ClientError::Gone`] says whether a transaction was open when the
//! connection broke: if not, the request did nothing and may be sent again to the next owner;
//! if one was, it was rolled back unless the request was its commit, whose outcome is unknown.

use std::fmt;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_bytes::{ByteBuf, Bytes};

use crate::protocol::{encode_frame, read_frame, Refusal, Request, Response, MAX_FRAME_BYTES};

/// Why a client call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The owner refused the request; any open transaction was rolled back.
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// The owner's one line.
        message: String,
    },
    /// The owner is closing and did nothing: connect again.
    Leaving,
    /// The connection broke.
    Gone {
        /// True if a transaction was open (or being committed) when it broke.
        in_transaction: bool,
        /// What happened.
        error: std::io::Error,
    },
    /// The owner answered something this client did not ask for.
    Protocol(String),
}

impl ClientError {
    /// True if the request certainly did nothing and can be sent to the next owner.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Leaving
                | ClientError::Gone {
                    in_transaction: false,
                    ..
                }
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused { message, .. } => f.write_str(message),
            ClientError::Leaving => f.write_str("the channel's owner is closing"),
            ClientError::Gone {
                in_transaction,
                error,
            } => write!(
                f,
                "the connection to the channel's owner broke{}: {error}",
                if *in_transaction {
                    " with a transaction open"
                } else {
                    ""
                }
            ),
            ClientError::Protocol(what) => write!(f, "the channel's owner answered {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to the owner of a channel.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The frame being sent, kept to reuse its allocation.
    frame: Vec<u8>,
    in_transaction: bool,
}

impl Client {
    /// Connects to the owner listening on `socket`.
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        crate::protocol::widen_send_buffer(&stream);
        Ok(Client {
            reader: BufReader::with_capacity(256 << 10, stream.try_clone()?),
            writer: stream,
            frame: Vec::new(),
            in_transaction: false,
        })
    }

    /// True while a transaction is open on this connection.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn call(&mut self, request: &Request<'_>) -> Result<Response, ClientError> {
        let ends = matches!(
            request,
            Request::Commit | Request::Rollback | Request::Put { commit: true, .. }
        );
        let begins = matches!(request, Request::Put { .. } | Request::Take { .. });
        let was_open = self.in_transaction;
        // A write that fails never reached the owner whole, so it did nothing; an owner that
        // leaves first answers `Leaving` (even unasked), so a break after a whole write means
        // the owner died, and a request that began or ended a transaction has an unknown outcome.
        let sent = encode_frame(request, &mut self.frame)
            .and_then(|()| self.writer.write_all(&self.frame));
        if let Err(error) = sent {
            self.in_transaction = false;
            return Err(ClientError::Gone {
                in_transaction: was_open,
                error,
            });
        }
        let response = match read_frame::<Response>(&mut self.reader) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => {
                self.in_transaction = false;
                return Err(ClientError::Gone {
                    in_transaction: was_open || begins,
                    error: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the owner closed the connection",
                    ),
                });
            }
        };
        match response {
            Response::Refused { kind, message } => {
                self.in_transaction = false;
                Err(ClientError::Refused { kind, message })
            }
            Response::Leaving => {
                self.in_transaction = false;
                Err(ClientError::Leaving)
            }
            r => {
                self.in_transaction = (was_open || begins) && !ends;
                Ok(r)
            }
        }
    }

    fn expect_done(&mut self, request: &Request<'_>) -> Result<(), ClientError> {
        match self.call(request)? {
            Response::Done => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "{other:?} to {}",
                request_name(request)
            ))),
        }
    }

    /// Puts `events` in one transaction and commits it; returns once the commit is durable.
    /// Batches larger than one frame go as several requests of the same transaction.
    pub fn put_batch<E: AsRef<[u8]>>(&mut self, events: &[E]) -> Result<(), ClientError> {
        let limit = MAX_FRAME_BYTES / 2;
        let mut chunk: Vec<&Bytes> = Vec::new();
        let mut bytes = 0usize;
        for event in events {
            let e = event.as_ref();
            if !chunk.is_empty() && bytes + e.len() + 16 > limit {
                let events = std::mem::take(&mut chunk);
                self.expect_done(&Request::Put {
                    events,
                    commit: false,
                })?;
                bytes = 0;
            }
            bytes += e.len() + 16;
            chunk.push(Bytes::new(e));
        }
        self.expect_done(&Request::Put {
            events: chunk,
            commit: true,
        })
    }

    /// Takes up to `max` events into this connection's transaction, waiting up to `wait_ms`
    /// for the first. Commit or roll back afterwards.
    pub fn take(&mut self, max: u32, wait_ms: u32) -> Result<Vec<ByteBuf>, ClientError> {
        let request = Request::Take { max, wait_ms };
        match self.call(&request)? {
            Response::Events(events) => Ok(events),
            other => Err(ClientError::Protocol(format!("{other:?} to a take"))),
        }
    }

    /// Commits the open transaction; returns once it is durable.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        self.expect_done(&Request::Commit)
    }

    /// Rolls back the open transaction.
    pub fn rollback(&mut self) -> Result<(), ClientError> {
        self.expect_done(&Request::Rollback)
    }

    /// The owner's figures of its channel, as JSON.
    pub fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        match self.call(&Request::Stats)? {
            Response::Stats(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("figures that do not parse: {e}"))),
            other => Err(ClientError::Protocol(format!("{other:?} to stats"))),
        }
    }
}

fn request_name(request: &Request<'_>) -> &'static str {
    match request {
        Request::Put { .. } => "a put",
        Request::Take { .. } => "a take",
        Request::Commit => "a commit",
        Request::Rollback => "a rollback",
        Request::Stats => "stats",
    }
}
