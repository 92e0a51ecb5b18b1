//! [`Session`]: how a CLI process reaches the channel in a home, whoever else is using it.
//!
//! The rule: if an owner serves the home's socket, be its client; otherwise open the channel,
//! become the owner (serving the socket for the next process), and be a client of yourself.
//! A process that cannot do either (the lock is held and no socket answers yet: another process
//! is opening the channel, or handing it over) tries again every few milliseconds until
//! `patience` runs out. When a hosting process finishes it hands the home over
//! ([`crate::owner::Owner::stop`]): clients of it get `Leaving` and attach again, and one of
//! them becomes the next owner. So any mix of producers and consumers on one home works, in any
//! order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate_file::{FileChannel, FileChannelConfig, FileChannelError};

use crate::client::Client;
use crate::metrics::Served;
use crate::owner::Owner;

/// How long a leaving owner waits for its clients' open transactions before cutting them.
pub const HANDOVER_PATIENCE: Duration = Duration::from_secs(10);

/// Why a process could not reach the channel.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachError {
    /// Opening the channel failed for a reason other than another holder.
    Open(FileChannelError),
    /// Another process held the channel without serving it for the whole patience.
    Busy {
        /// Its pid, if the lock file names it.
        holder: Option<u32>,
        /// How long this process tried.
        waited: Duration,
    },
    /// The socket could not be served.
    Serve(std::io::Error),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Open(e) => write!(f, "{e}"),
            AttachError::Busy { holder, waited } => write!(
                f,
                "the channel is in use by {} and not served on its socket (waited {:.1} s)",
                holder.map_or("another process".to_string(), |p| format!("process {p}")),
                waited.as_secs_f64()
            ),
            AttachError::Serve(e) => write!(f, "cannot serve the channel: {e}"),
        }
    }
}

impl std::error::Error for AttachError {}

/// A process's way to the channel in one home: a client connection, and the owner it hosts if
/// it is the owner.
#[derive(Debug)]
pub struct Session {
    config: FileChannelConfig,
    socket: PathBuf,
    patience: Duration,
    client: Client,
    hosted: Option<Owner>,
}

impl Session {
    /// Reaches the channel of `home` (opened with `config` if this process becomes the owner).
    /// `opening` is called before this process opens the channel itself (recovery may take a
    /// while).
    pub fn attach(
        home: &Path,
        config: &FileChannelConfig,
        patience: Duration,
        opening: &mut dyn FnMut(),
    ) -> Result<Session, AttachError> {
        let socket = crate::home::socket_path(home);
        let (client, hosted) = reach(&socket, config, patience, opening)?;
        Ok(Session {
            config: config.clone(),
            socket,
            patience,
            client,
            hosted,
        })
    }

    /// True if this process owns the channel.
    pub fn is_owner(&self) -> bool {
        self.hosted.is_some()
    }

    /// The connection to the owner.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Drops the connection and reaches the channel again: after the owner left or died.
    pub fn reattach(&mut self) -> Result<(), AttachError> {
        if let Some(owner) = self.hosted.take() {
            // Our own owner does not leave by itself; this is only reached after a failure.
            owner.stop(Duration::ZERO);
        }
        let (client, hosted) = reach(&self.socket, &self.config, self.patience, &mut || {})?;
        self.client = client;
        self.hosted = hosted;
        Ok(())
    }

    /// Ends the session: if this process owns the channel, hands it over and closes it (with a
    /// checkpoint if the settings ask for one).
    pub fn close(self) -> Result<(), FileChannelError> {
        let Session { client, hosted, .. } = self;
        drop(client);
        if let Some(owner) = hosted {
            let channel = Arc::clone(&owner.served().channel);
            owner.stop(HANDOVER_PATIENCE);
            if let Ok(channel) = Arc::try_unwrap(channel) {
                channel.close()?;
            }
        }
        Ok(())
    }
}

fn reach(
    socket: &Path,
    config: &FileChannelConfig,
    patience: Duration,
    opening: &mut dyn FnMut(),
) -> Result<(Client, Option<Owner>), AttachError> {
    let started = Instant::now();
    let mut holder: Option<u32>;
    let mut told = false;
    // Bounded by `patience`.
    loop {
        if let Ok(client) = Client::connect(socket) {
            return Ok((client, None));
        }
        if !told {
            opening();
            told = true;
        }
        match FileChannel::open(config.clone()) {
            Ok(channel) => {
                let name = socket
                    .parent()
                    .map_or_else(String::new, |p| p.display().to_string());
                let served = Served::new(name, Arc::new(channel));
                let owner = Owner::start(served, socket).map_err(AttachError::Serve)?;
                let client = Client::connect(socket).map_err(AttachError::Serve)?;
                return Ok((client, Some(owner)));
            }
            Err(e) if e.is_locked() => holder = e.lock_holder(),
            Err(e) => return Err(AttachError::Open(e)),
        }
        if started.elapsed() >= patience {
            return Err(AttachError::Busy {
                holder,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
