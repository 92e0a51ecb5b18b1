//! [`Owner`]: serves one open file channel to other processes on the home's Unix socket.
//!
//! One thread accepts; one thread per connection reads requests and carries them out on the
//! channel, holding at most one transaction for that connection (dropped, and so rolled back,
//! when the connection ends). The socket is created under a temporary name, made mode 0600, and
//! renamed into place, so no client ever sees it open to others.
//!
//! Stopping hands the home over: the owner stops beginning transactions, lets every open one
//! finish (up to a bound), tells each idle client `Leaving` (so the client knows its next
//! request did nothing), and only then returns, so the caller can close the channel and release
//! its lock for the next owner.
//!
//! **Invariant:** only the holder of the channel's lock creates or removes the socket, so a
//! socket file found by a new owner is a dead owner's, and is replaced.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use sluicegate_core::Error as CoreError;
use sluicegate_file::{FileChannelError, Transaction};

use crate::metrics::{ChannelCounters, Served};
use crate::protocol::{
    decode, read_frame_into, write_frame, Refusal, Request, Response, MAX_FRAME_BYTES,
};

/// How often an idle connection's thread looks whether the owner is leaving.
const IDLE_TICK: Duration = Duration::from_millis(50);
/// The most clients served at once (a thread each); more are refused.
pub const MAX_CONNECTIONS: usize = 1024;

struct Conn {
    /// A handle on the connection, to cut it if its transaction outlives the handover.
    stream: UnixStream,
    in_transaction: bool,
}

#[derive(Default)]
struct Table {
    leaving: bool,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    served: Served,
    table: Mutex<Table>,
    changed: Condvar,
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A channel served on a socket. Stop it with [`Owner::stop`] before closing the channel.
pub struct Owner {
    shared: Arc<Shared>,
    listener: Arc<UnixListener>,
    socket: PathBuf,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Owner {
    /// Serves `served` on `socket`. The caller holds the channel open (and so its lock): any
    /// file at `socket` is a dead owner's and is replaced.
    pub fn start(served: Served, socket: &Path) -> std::io::Result<Owner> {
        let dir = crate::home::parent_of(socket);
        let tmp = dir.join(format!(".sluicegate.sock.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", socket.display()),
            )
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, socket)?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            served,
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            let listener = Arc::clone(&listener);
            std::thread::Builder::new()
                .name("sluicegate-accept".into())
                .spawn(move || accept_loop(&shared, &listener))?
        };
        tracing::debug!(socket = %socket.display(), "serving the channel");
        Ok(Owner {
            shared,
            listener,
            socket: socket.to_path_buf(),
            accept: Some(accept),
        })
    }

    /// The served channel.
    pub fn served(&self) -> &Served {
        &self.shared.served
    }

    /// Clients connected now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.table).conns.len()
    }

    /// Hands the home over: begins no more transactions, waits up to `patience` for open ones
    /// to end (then cuts their connections, which rolls them back), tells idle clients it is
    /// leaving, removes the socket and joins every thread.
    pub fn stop(mut self, patience: Duration) {
        self.stop_inner(patience);
    }

    fn stop_inner(&mut self, patience: Duration) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        lock(&self.shared.table).leaving = true;
        self.shared.changed.notify_all();
        // Wake the accept loop: shutting a listening socket down makes a blocked accept return.
        // SAFETY: the descriptor belongs to `self.listener`, which is alive; shutdown changes
        // no memory.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        let _ = UnixStream::connect(&self.socket);
        let _ = accept.join();
        let _ = std::fs::remove_file(&self.socket);
        let deadline = Instant::now() + patience;
        let mut table = lock(&self.shared.table);
        // Bounded by the deadline; connection threads signal `changed` as they end.
        loop {
            let busy = table.conns.values().filter(|c| c.in_transaction).count();
            if table.conns.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    connections = table.conns.len(),
                    busy,
                    "handover: cutting connections whose transactions did not end in time (they roll back)"
                );
                for conn in table.conns.values() {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                }
                break;
            }
            table = self
                .shared
                .changed
                .wait_timeout(table, (deadline - now).min(IDLE_TICK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let threads = std::mem::take(&mut table.threads);
        drop(table);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop_inner(Duration::ZERO);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    // Bounded by `leaving`, which `stop` sets before waking this loop.
    for stream in listener.incoming() {
        let mut table = lock(&shared.table);
        if table.leaving {
            break;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: try again shortly rather than spin.
            drop(table);
            std::thread::sleep(IDLE_TICK);
            continue;
        };
        if table.conns.len() >= MAX_CONNECTIONS {
            drop(table);
            let mut stream = stream;
            let _ = write_frame(
                &mut stream,
                &refused(
                    Refusal::Failed,
                    format!("the owner serves {MAX_CONNECTIONS} clients already"),
                ),
            );
            continue;
        }
        crate::protocol::widen_send_buffer(&stream);
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let id = table.next_id;
        table.next_id += 1;
        table.conns.insert(
            id,
            Conn {
                stream: handle,
                in_transaction: false,
            },
        );
        table.threads.retain(|t| !t.is_finished());
        let s = Arc::clone(shared);
        match std::thread::Builder::new()
            .name("sluicegate-conn".into())
            .spawn(move || serve(&s, id, stream))
        {
            Ok(t) => table.threads.push(t),
            Err(e) => {
                tracing::warn!("cannot start a connection thread: {e}");
                table.conns.remove(&id);
            }
        }
    }
}

/// Waits until the connection has bytes to read or `tick` passes. True if readable (or broken:
/// the read then reports it).
fn readable(stream: &UnixStream, tick: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut fd, 1, tick.as_millis() as libc::c_int) };
    n != 0
}

/// One connection: requests in, answers out, one transaction at a time.
fn serve(shared: &Shared, id: u64, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        lock(&shared.table).conns.remove(&id);
        shared.changed.notify_all();
        return;
    };
    let mut reader = BufReader::with_capacity(256 << 10, stream);
    let mut writer = BufWriter::with_capacity(256 << 10, write_half);
    // The frame being read, kept to reuse its allocation; requests borrow their events from it.
    let mut body = Vec::new();
    let mut conn = Connection {
        shared,
        id,
        tx: None,
        puts: 0,
        takes: 0,
    };
    // Bounded by the client closing, an I/O error, or the owner leaving.
    loop {
        if reader.buffer().is_empty() && !readable(reader.get_ref(), IDLE_TICK) {
            if conn.tx.is_none() && lock(&shared.table).leaving {
                // Unasked: the client reads it as the answer to its next request, which then
                // did nothing.
                let _ = write_frame(&mut writer, &Response::Leaving);
                break;
            }
            continue;
        }
        let request = match read_frame_into(&mut reader, &mut body).and_then(|more| {
            if more {
                decode::<Request<'_>>(&body).map(Some)
            } else {
                Ok(None)
            }
        }) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("a client connection ended: {e}");
                break;
            }
        };
        let response = conn.handle(request);
        if write_frame(&mut writer, &response).is_err() {
            break;
        }
        if conn.tx.is_none() {
            conn.set_in_transaction(false);
        }
    }
    // Dropping an open transaction rolls it back.
    drop(conn.tx.take());
    lock(&shared.table).conns.remove(&id);
    shared.changed.notify_all();
}

struct Connection<'a> {
    shared: &'a Shared,
    id: u64,
    tx: Option<Transaction<'a>>,
    /// Events put and taken by the open transaction.
    puts: u64,
    takes: u64,
}

fn refused(kind: Refusal, message: impl Into<String>) -> Response {
    Response::Refused {
        kind,
        message: message.into(),
    }
}

/// The kind of refusal a channel error is.
fn refusal(e: &FileChannelError) -> Refusal {
    match e {
        FileChannelError::Full(_) => Refusal::Full,
        FileChannelError::InsufficientSpace { .. } => Refusal::NoSpace,
        FileChannelError::Channel(CoreError::EventTooLarge { .. })
        | FileChannelError::Channel(CoreError::TransactionFull) => Refusal::TooLarge,
        FileChannelError::Channel(CoreError::WrongTransactionKind)
        | FileChannelError::Channel(CoreError::BadTransaction) => Refusal::BadRequest,
        FileChannelError::Channel(e) if e.is_full() => Refusal::Full,
        _ => Refusal::Failed,
    }
}

impl<'a> Connection<'a> {
    fn set_in_transaction(&self, value: bool) {
        let mut table = lock(&self.shared.table);
        if let Some(c) = table.conns.get_mut(&self.id) {
            c.in_transaction = value;
        }
        drop(table);
        self.shared.changed.notify_all();
    }

    /// Begins a transaction unless one is open; `Err(Leaving)` if the owner is leaving.
    fn ensure_transaction(&mut self) -> Result<(), Response> {
        if self.tx.is_some() {
            return Ok(());
        }
        {
            let mut table = lock(&self.shared.table);
            if table.leaving {
                return Err(Response::Leaving);
            }
            if let Some(c) = table.conns.get_mut(&self.id) {
                c.in_transaction = true;
            }
        }
        let channel: &'a sluicegate_file::FileChannel = &self.shared.served.channel;
        match channel.begin() {
            Ok(tx) => {
                self.tx = Some(tx);
                self.puts = 0;
                self.takes = 0;
                Ok(())
            }
            Err(e) => Err(refused(refusal(&e), e.to_string())),
        }
    }

    fn fail(&mut self, e: FileChannelError) -> Response {
        // A refused operation rolls the whole transaction back (see `Response::Refused`).
        drop(self.tx.take());
        refused(refusal(&e), e.to_string())
    }

    fn handle(&mut self, request: Request<'_>) -> Response {
        let counters = &self.shared.served.counters;
        match request {
            Request::Put { events, commit } => {
                if let Err(r) = self.ensure_transaction() {
                    return r;
                }
                ChannelCounters::add(&counters.put_attempts, events.len() as u64);
                for event in &events {
                    let Some(tx) = self.tx.as_mut() else { break };
                    if let Err(e) = tx.put(event) {
                        return self.fail(e);
                    }
                    self.puts += 1;
                }
                if commit {
                    self.commit()
                } else {
                    Response::Done
                }
            }
            Request::Take { max, wait_ms } => {
                if let Err(r) = self.ensure_transaction() {
                    return r;
                }
                ChannelCounters::add(&counters.take_attempts, 1);
                self.take(max, Duration::from_millis(wait_ms.into()))
            }
            Request::Commit => self.commit(),
            Request::Rollback => match self.tx.take() {
                Some(tx) => match tx.rollback() {
                    Ok(()) => Response::Done,
                    Err(e) => refused(refusal(&e), e.to_string()),
                },
                None => Response::Done,
            },
            Request::Stats => Response::Stats(self.shared.served.figures().to_string()),
        }
    }

    fn commit(&mut self) -> Response {
        let Some(tx) = self.tx.take() else {
            return Response::Done;
        };
        match tx.commit() {
            Ok(()) => {
                let c = &self.shared.served.counters;
                ChannelCounters::add(&c.put_successes, self.puts);
                ChannelCounters::add(&c.take_successes, self.takes);
                Response::Done
            }
            Err(e) => refused(refusal(&e), e.to_string()),
        }
    }

    fn take(&mut self, max: u32, wait: Duration) -> Response {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        // Bounded by `max`, the frame's size and the deadline.
        while events.len() < max as usize && bytes < MAX_FRAME_BYTES / 2 {
            let Some(tx) = self.tx.as_mut() else { break };
            // Wait only for the first event, in short slices, so a leaving owner answers soon.
            let slice = if events.is_empty() {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(IDLE_TICK)
            } else {
                Duration::ZERO
            };
            match tx.take_vec_wait(slice) {
                Ok(Some(event)) => {
                    bytes += event.len() + 16;
                    events.push(ByteBuf::from(event));
                    self.takes += 1;
                }
                Ok(None) => {
                    let waiting = events.is_empty()
                        && Instant::now() < deadline
                        && !lock(&self.shared.table).leaving;
                    if !waiting {
                        break;
                    }
                }
                Err(e) => return self.fail(e),
            }
        }
        Response::Events(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use sluicegate_file::{FileChannel, FileChannelConfig};

    /// The socket is mode 0600 from the moment it has its name, a stale file at its path is
    /// replaced, and a client's transaction open when its connection drops is rolled back.
    #[test]
    fn socket_is_private_replaces_a_stale_one_and_a_dropped_client_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ch");
        std::fs::create_dir_all(&dir).unwrap();
        let config = FileChannelConfig {
            max_file_bytes: 1 << 20,
            max_event_bytes: 4096,
            transaction_capacity: 100,
            minimum_required_space_bytes: 0,
            checkpoint_interval_ms: 0,
            ..FileChannelConfig::in_dir(&dir)
        };
        let served = Served::new("t".into(), Arc::new(FileChannel::open(config).unwrap()));
        let socket = tmp.path().join("sluicegate.sock");
        std::fs::write(&socket, b"stale").unwrap();
        let owner = Owner::start(served.clone(), &socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut a = crate::Client::connect(&socket).unwrap();
        a.put_batch(&[b"kept".as_slice()]).unwrap();
        let mut b = crate::Client::connect(&socket).unwrap();
        assert_eq!(b.take(10, 0).unwrap().len(), 1);
        drop(b);
        // The dropped connection's take is rolled back: the event is there for the next one.
        let mut c = crate::Client::connect(&socket).unwrap();
        let got = c.take(10, 5_000).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][..], b"kept");
        c.commit().unwrap();
        drop((a, c));
        owner.stop(Duration::from_secs(1));
        assert!(!socket.exists(), "a stopped owner removes its socket");
    }
}
