//! [`FileChannel`]: the core's channel shared by many threads, with group commit, a background
//! checkpoint thread, a free-space floor for puts, and a wait for room.
//!
//! One mutex guards the core channel; every operation holds it briefly. A commit writes its
//! record under the mutex, then joins a group sync: one committer at a time leads, taking the
//! core's sync mark and the storage's sync ticket under the mutex, running `fdatasync` without
//! it, and retaking it to apply every commit the mark covers. Committers that arrive while a
//! sync runs wait for it and for the next one, which covers all of them.
//!
//! **Invariant:** a commit returns `Ok` only after a sync that covers its record has finished
//! (the core applies the commit only then). **Invariant:** the `fdatasync` of the log never runs
//! with the mutex held on the group-commit path, so producers keep writing during it.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluicegate_core::{Channel, Error, EventId, Recovery, Stats, SyncMark, Txn};

use crate::config::{ConfigError, FileChannelConfig};
use crate::keys::Keyring;
use crate::snapshot::{SnapshotOptions, SnapshotStorage};
use crate::storage::{FileError, FileErrorKind, FileStorage, FileWaits};

type Core = Channel<FileStorage, Vec<u64>, Keyring>;

/// Everything that can go wrong with a file channel.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileChannelError {
    /// The configuration cannot work.
    Config(ConfigError),
    /// Opening the directories failed (lock held, wrong format, I/O error...).
    Storage(FileError),
    /// The channel refused or failed the operation (full, bad transaction, I/O error...).
    Channel(Error<FileError>),
    /// A directory has less free space than `minimum_required_space_bytes`: puts are refused
    /// until space is freed; takes go on.
    InsufficientSpace {
        /// The directory short of space.
        dir: PathBuf,
        /// Its free space when measured.
        available_bytes: u64,
        /// The configured floor.
        required_bytes: u64,
    },
    /// A put waited `keep_alive_ms` for room and found none; the event was not put.
    Full(Error<FileError>),
}

impl fmt::Display for FileChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileChannelError::Config(e) => write!(f, "{e}"),
            FileChannelError::Storage(e) => write!(f, "{e}"),
            FileChannelError::Channel(Error::Storage(e)) => write!(f, "storage error: {e}"),
            FileChannelError::Channel(e @ Error::KeyMissing { key }) => write!(
                f,
                "{e}: list the key with id {key} in [[encryption.keys]]"
            ),
            FileChannelError::Channel(e @ Error::WrongKey { key }) => write!(
                f,
                "{e}: check the key_file of id {key} in [[encryption.keys]]"
            ),
            FileChannelError::Channel(e) => write!(f, "{e}"),
            FileChannelError::InsufficientSpace {
                dir,
                available_bytes,
                required_bytes,
            } => write!(
                f,
                "{} has {available_bytes} bytes free, below minimum_required_space_bytes ({required_bytes}): puts are refused until space is freed",
                dir.display()
            ),
            FileChannelError::Full(e) => write!(f, "no room after waiting keep_alive_ms: {e}"),
        }
    }
}

impl std::error::Error for FileChannelError {}

impl FileChannelError {
    /// What the error is, so callers decide by kind, never by the message's words.
    pub fn kind(&self) -> FileErrorKind {
        match self {
            FileChannelError::Config(_) => FileErrorKind::Config,
            FileChannelError::Storage(e) | FileChannelError::Channel(Error::Storage(e)) => {
                e.detail()
            }
            FileChannelError::Channel(Error::Config(_)) => FileErrorKind::Layout,
            FileChannelError::Channel(Error::LogFull | Error::ChannelFull) => FileErrorKind::Full,
            FileChannelError::Channel(
                Error::Corrupted { .. } | Error::UnsupportedFormat { .. },
            ) => FileErrorKind::Format,
            FileChannelError::Channel(
                Error::CapacityTooSmall { .. }
                | Error::KeyMissing { .. }
                | Error::WrongKey { .. }
                | Error::UnsupportedAlgorithm { .. }
                | Error::EventTooLarge { .. },
            ) => FileErrorKind::Config,
            FileChannelError::Channel(_) => FileErrorKind::Other,
            FileChannelError::InsufficientSpace { .. } | FileChannelError::Full(_) => {
                FileErrorKind::Full
            }
        }
    }

    /// True if opening failed because another process holds the channel's directories.
    pub fn is_locked(&self) -> bool {
        matches!(self, FileChannelError::Storage(e) if e.is_locked())
    }

    /// The pid of the process holding the channel's directories, when that is the error and
    /// the lock file names it.
    pub fn lock_holder(&self) -> Option<u32> {
        match self {
            FileChannelError::Storage(e) => e.lock_holder(),
            _ => None,
        }
    }
}

impl From<Error<FileError>> for FileChannelError {
    fn from(e: Error<FileError>) -> Self {
        FileChannelError::Channel(e)
    }
}

impl From<ConfigError> for FileChannelError {
    fn from(e: ConfigError) -> Self {
        FileChannelError::Config(e)
    }
}

/// Counters of a file channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStats {
    /// The core's state and counters.
    pub channel: Stats,
    /// `fdatasync` calls on any file.
    pub fsyncs: u64,
    /// Group syncs led (each covers every commit written before it started).
    pub group_syncs: u64,
    /// Commits acknowledged.
    pub commits_acknowledged: u64,
    /// Log files created.
    pub files_created: u64,
    /// Log files there are now: the log grows past `kept_log_files` under a backlog and
    /// shrinks back once checkpoints release what was taken.
    pub log_files: u64,
    /// Released log files given to a later segment by a rename instead of making a new file.
    pub files_recycled: u64,
    /// Released log files deleted, beyond `kept_log_files`.
    pub files_deleted: u64,
    /// Log writes that found their segment's file not ready and waited while it was made:
    /// the stalls a backlog outgrowing the kept files costs (docs/benchmarks.md).
    pub file_waits: FileWaits,
    /// Puts refused for want of free space.
    pub puts_refused_for_space: u64,
    /// Checkpoints that failed in the background thread (the log is unaffected).
    pub background_checkpoint_failures: u64,
    /// Milliseconds since the newest checkpoint this run completed was seen (the checkpoint
    /// thread looks at least once a second), or `None` if none has completed since open.
    pub checkpoint_age_ms: Option<u64>,
}

struct State {
    core: Option<Core>,
    space_checked: Option<Instant>,
    space_short: Option<(PathBuf, u64)>,
    commits_acknowledged: u64,
    puts_refused_for_space: u64,
    background_checkpoint_failures: u64,
    /// The core's checkpoint count when last looked at, and when it was seen to rise.
    checkpoints_seen: u64,
    last_checkpoint: Option<Instant>,
}

impl State {
    /// Notes the time if the core completed a checkpoint since the last look. Called after
    /// every checkpoint step, so it must not scan the queue: `Channel::stats` did, and with
    /// 1,000,000 events queued the steps of one checkpoint then held the lock for 1.7 s in all.
    fn note_checkpoints(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let done = core.checkpoints_completed();
        if done > self.checkpoints_seen {
            self.checkpoints_seen = done;
            self.last_checkpoint = Some(Instant::now());
        }
    }

    fn core(&mut self) -> &mut Core {
        // The core is taken out only by `close`/`drop`, which own the channel; no transaction
        // can be alive then.
        self.core
            .as_mut()
            .expect("the channel is open while borrowed")
    }
}

#[derive(Default)]
struct Group {
    leading: bool,
    durable: Option<SyncMark>,
    syncs: u64,
}

struct Shared {
    config: FileChannelConfig,
    /// See [`FileChannel::identity`].
    identity: u128,
    state: Mutex<State>,
    /// Signalled after every sync and rollback: room may have been freed.
    room: Condvar,
    group: Mutex<Group>,
    group_done: Condvar,
    stop: Mutex<bool>,
    stop_now: Condvar,
    opened: Instant,
}

/// The error for an open that `FileStorage::open` refused. A log file cut short gets the number
/// of queued events in its missing part, from a read-only recovery that reads that part as
/// zeros; any other error is returned as it is.
fn cut_short_error(config: &FileChannelConfig, e: FileError) -> FileChannelError {
    let FileErrorKind::CutShort { slot } = e.detail() else {
        return FileChannelError::Storage(e);
    };
    let counted = (|| {
        let core_config = config.core_config().ok()?;
        let keys = config.keyring().ok()?;
        let snapshot = SnapshotStorage::open(&config.layout(), SnapshotOptions::default()).ok()?;
        let memory = vec![0u64; core_config.memory_words()];
        Some(
            Channel::open_with_keys(snapshot, memory, core_config, keys)
                .map(|core| core.recovery().events_in_lost_segments),
        )
    })();
    let file = config.layout().segment_path(slot);
    FileChannelError::Storage(match counted {
        // The file's header gives another size: the settings are wrong, not the file.
        Some(Err(core @ Error::Config(_))) => return FileChannelError::Channel(core),
        Some(Ok(0)) => FileError::cut_short(
            format!(
                "{e}, though no queued event was in its missing part; `sluicegate repair` restores its size"
            ),
            slot,
        ),
        Some(Ok(lost)) => FileError::lost(
            format!(
                "{e}: {lost} queued events were in its missing part (or in other damaged log files) and cannot be read; `sluicegate repair` removes them from the queue and keeps the rest"
            ),
            lost,
        ),
        Some(Err(_)) | None => FileError::cut_short(
            format!(
                "{e}; `sluicegate repair` keeps what it holds and reports what is lost ({} cannot be recovered read-only either)",
                file.display()
            ),
            slot,
        ),
    })
}

/// Locks a mutex, going on if a thread panicked while holding it: the core's state stays
/// consistent between calls, and a panic cannot leave a write half-acknowledged.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A durable channel on files, for many producer and consumer threads. Share it by reference
/// (it is `Send + Sync`) or in an `Arc`.
pub struct FileChannel {
    shared: Arc<Shared>,
    checkpointer: Option<JoinHandle<()>>,
    recovery: Recovery,
    open_duration: Duration,
}

impl fmt::Debug for FileChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileChannel")
            .field("recovery", &self.recovery)
            .finish()
    }
}

impl FileChannel {
    /// Checks the configuration, opens (creating what is missing) its directories, replays the
    /// log from the newest usable checkpoint, and starts the checkpoint thread.
    ///
    /// Queued events whose log file is missing, cut short or damaged as far as an open checks
    /// ([`Recovery::events_in_lost_segments`]) are an error naming the file and the events
    /// ([`FileErrorKind::Lost`]): they cannot be delivered, and are never skipped silently. A log
    /// file shorter than the layout is [`FileErrorKind::Lost`] too, counted by a read-only
    /// recovery, or [`FileErrorKind::CutShort`] when no queued event was in its missing part.
    /// `sluicegate repair` removes them with [`FileChannel::open_dropping_lost`].
    pub fn open(config: FileChannelConfig) -> Result<Self, FileChannelError> {
        Self::open_with(config, false).map(|(ch, _)| ch)
    }

    /// As [`FileChannel::open`], but every queued event's record is read, and those that cannot
    /// be (lost log files, damaged records) are removed from the queue, and a checkpoint
    /// written, instead of refusing to open: for repair. Returns the channel and how many
    /// events it removed.
    pub fn open_dropping_lost(config: FileChannelConfig) -> Result<(Self, u64), FileChannelError> {
        Self::open_with(config, true)
    }

    fn open_with(
        config: FileChannelConfig,
        drop_lost: bool,
    ) -> Result<(Self, u64), FileChannelError> {
        let started = Instant::now();
        config.validate_dirs()?;
        let keys = config.keyring()?;
        let layout = config.layout();
        let core_config = config.core_config_for(&layout)?;
        let storage = match FileStorage::open(&layout) {
            Ok(storage) => storage,
            Err(e) => return Err(cut_short_error(&config, e)),
        };
        let identity = crate::dirs::channel_identity(&config.checkpoint_dir)
            .map_err(FileChannelError::Storage)?;
        let memory = vec![0u64; core_config.memory_words()];
        let mut core = Channel::open_with_keys(storage, memory, core_config, keys)?;
        // The layout fits the files: record it, so no later edit of the settings can misread them.
        crate::dirs::record_geometry(&layout).map_err(FileChannelError::Storage)?;
        let mut dropped = 0;
        let lost = core.recovery().events_in_lost_segments;
        if drop_lost {
            // Every queued record is read, not only what an open checks.
            dropped = core.drop_lost_events()?;
            if dropped > 0 {
                core.checkpoint()?;
            }
        } else if lost > 0 {
            let file = config
                .layout()
                .segment_path(core.recovery().first_lost_slot as usize);
            return Err(FileChannelError::Storage(FileError::lost(
                format!(
                    "{} is missing or damaged: {lost} queued events were in it (or in other damaged log files) and cannot be read; `sluicegate repair` removes them from the queue and keeps the rest",
                    file.display()
                ),
                lost,
            )));
        }
        let recovery = *core.recovery();
        let shared = Arc::new(Shared {
            config,
            identity,
            state: Mutex::new(State {
                core: Some(core),
                space_checked: None,
                space_short: None,
                commits_acknowledged: 0,
                puts_refused_for_space: 0,
                background_checkpoint_failures: 0,
                checkpoints_seen: 0,
                last_checkpoint: None,
            }),
            room: Condvar::new(),
            group: Mutex::new(Group::default()),
            group_done: Condvar::new(),
            stop: Mutex::new(false),
            stop_now: Condvar::new(),
            opened: Instant::now(),
        });
        let checkpointer = if shared.config.checkpoint_interval_ms > 0 {
            let s = Arc::clone(&shared);
            Some(
                std::thread::Builder::new()
                    .name("sluicegate-checkpoint".into())
                    .spawn(move || checkpoint_thread(&s))
                    .map_err(|e| {
                        FileChannelError::Storage(FileError::config(format!(
                            "cannot start the checkpoint thread: {e}"
                        )))
                    })?,
            )
        } else {
            None
        };
        Ok((
            FileChannel {
                shared,
                checkpointer,
                recovery,
                open_duration: started.elapsed(),
            },
            dropped,
        ))
    }

    /// The channel's identity: a random number made when the channel was first opened and kept
    /// in its checkpoint directory (`sluicegate.id`). With an [`EventId`] it names an event
    /// uniquely among all channels; a restored backup gets a new identity.
    pub fn identity(&self) -> u128 {
        self.shared.identity
    }

    /// What opening found and did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// How long opening took, replay included.
    pub fn open_duration(&self) -> Duration {
        self.open_duration
    }

    /// The configuration.
    pub fn config(&self) -> &FileChannelConfig {
        &self.shared.config
    }

    /// Begins a transaction. It becomes a put or a take transaction with its first operation;
    /// dropping it without a commit rolls it back.
    pub fn begin(&self) -> Result<Transaction<'_>, FileChannelError> {
        let mut st = lock(&self.shared.state);
        let txn = st.core().begin()?;
        Ok(Transaction {
            channel: self,
            txn,
            finished: false,
            size_hint: 512,
        })
    }

    /// Committed events queued, including those taken by open transactions.
    pub fn len(&self) -> usize {
        lock(&self.shared.state).core().len()
    }

    /// True if no committed event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FileStats {
        let groups = lock(&self.shared.group).syncs;
        let mut st = lock(&self.shared.state);
        st.note_checkpoints();
        let (acked, refused, failed) = (
            st.commits_acknowledged,
            st.puts_refused_for_space,
            st.background_checkpoint_failures,
        );
        let checkpoint_age_ms = st.last_checkpoint.map(|t| t.elapsed().as_millis() as u64);
        let core = st.core();
        FileStats {
            channel: core.stats(),
            fsyncs: core.storage().fsyncs(),
            group_syncs: groups,
            commits_acknowledged: acked,
            files_created: core.storage().files_created(),
            log_files: core.storage().log_files() as u64,
            files_recycled: core.storage().files_recycled(),
            files_deleted: core.storage().files_deleted(),
            file_waits: core.storage().file_waits(),
            puts_refused_for_space: refused,
            background_checkpoint_failures: failed,
            checkpoint_age_ms,
        }
    }

    /// Stream `stream`'s newest committed mark (see [`Transaction::set_mark`]), or `None` if it
    /// has none or `stream` is not below the configured `marks`.
    pub fn mark(&self, stream: u16) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.shared.config.mark_bytes as usize];
        let mut st = lock(&self.shared.state);
        let n = st.core().mark(stream, &mut buf)?;
        buf.truncate(n);
        Some(buf)
    }

    /// Writes a whole checkpoint now.
    pub fn checkpoint(&self) -> Result<(), FileChannelError> {
        let mut st = lock(&self.shared.state);
        st.core().checkpoint()?;
        st.note_checkpoints();
        Ok(())
    }

    /// Stops the checkpoint thread and closes the channel, with a final checkpoint if
    /// `checkpoint_on_close` is set, so the next open replays nothing.
    pub fn close(mut self) -> Result<(), FileChannelError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), FileChannelError> {
        *lock(&self.shared.stop) = true;
        self.shared.stop_now.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        let core = lock(&self.shared.state).core.take();
        match core {
            Some(core) if self.shared.config.checkpoint_on_close => core.close().map(drop)?,
            _ => {}
        }
        Ok(())
    }

    /// Waits until a sync covering `need` has finished, leading one if none is running.
    fn wait_durable(&self, txn: Txn, need: SyncMark) -> Result<(), FileChannelError> {
        let shared = &*self.shared;
        let mut g = lock(&shared.group);
        // Bounded: each turn either returns or waits for a sync that ends, and every sync that
        // starts after our record was written covers it.
        loop {
            if g.durable.is_some_and(|d| d >= need) {
                return Ok(());
            }
            if g.leading {
                g = shared.group_done.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            g.leading = true;
            drop(g);
            let result = self.lead_sync(txn);
            g = lock(&shared.group);
            g.leading = false;
            if let Ok(Some(mark)) = result {
                g.durable = g.durable.max(Some(mark));
                g.syncs += 1;
            }
            shared.group_done.notify_all();
            if result?.is_none() {
                return Ok(());
            }
        }
    }

    /// One group sync: begun under the lock, run (`fdatasync`) without it, finished under it.
    /// Returns the mark now durable, or `None` if `txn` needed no sync: another path (a
    /// checkpoint's or a new segment's sync) already applied it.
    fn lead_sync(&self, txn: Txn) -> Result<Option<SyncMark>, FileChannelError> {
        let shared = &*self.shared;
        let mut pending = {
            let mut st = lock(&shared.state);
            let core = st.core();
            if core.is_finished(txn) {
                return Ok(None);
            }
            core.begin_sync()?
        };
        pending.run();
        let mark = pending.mark();
        let mut st = lock(&shared.state);
        let result = st.core().finish_sync(pending);
        drop(st);
        shared.room.notify_all();
        result?;
        Ok(Some(mark))
    }

    /// Checks the free-space floor, measuring again if the last measure is old.
    fn check_space(&self, st: &mut State) -> Result<(), FileChannelError> {
        let c = &self.shared.config;
        if c.minimum_required_space_bytes == 0 {
            return Ok(());
        }
        let stale = st
            .space_checked
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(c.space_check_interval_ms));
        if stale {
            st.space_short = None;
            for dir in c.all_dirs() {
                let available = crate::space::available_bytes(&dir).map_err(|e| {
                    FileChannelError::Storage(FileError::io("measure free space of", &dir, e))
                })?;
                if available < c.minimum_required_space_bytes {
                    st.space_short = Some((dir, available));
                    break;
                }
            }
            st.space_checked = Some(Instant::now());
        }
        if let Some((dir, available)) = &st.space_short {
            st.puts_refused_for_space += 1;
            return Err(FileChannelError::InsufficientSpace {
                dir: dir.clone(),
                available_bytes: *available,
                required_bytes: c.minimum_required_space_bytes,
            });
        }
        Ok(())
    }
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        // Errors cannot be reported from here; `close` reports them. Nothing committed depends
        // on this checkpoint: without it the next open replays more of the log.
        let _ = self.shutdown();
    }
}

fn checkpoint_thread(shared: &Shared) {
    let interval = shared.config.checkpoint_interval_ms;
    // Half the kept files' worth of log starts a checkpoint too, whatever the interval, so the
    // files the log has moved past are released (and reused) about as fast as it fills them.
    let grown = u64::from(shared.config.kept_log_files / 2).max(1)
        * u64::from(shared.config.max_file_bytes);
    // Wake often enough to start a checkpoint near its time, and between the steps of one.
    let idle = Duration::from_millis((interval / 4).clamp(1, 1000));
    let mut stop = lock(&shared.stop);
    // Bounded by the stop flag, which close and drop set.
    while !*stop {
        let (guard, _) = shared
            .stop_now
            .wait_timeout(stop, idle)
            .unwrap_or_else(|p| p.into_inner());
        stop = guard;
        if *stop {
            break;
        }
        drop(stop);
        // A checkpoint is written one bounded step per lock, so producers run between steps.
        loop {
            let mut st = lock(&shared.state);
            let now_ms = shared.opened.elapsed().as_millis() as u64;
            let Some(core) = st.core.as_mut() else { break };
            let failed =
                if !core.checkpoint_in_progress() && core.log_bytes_since_checkpoint() >= grown {
                    core.poll_start(now_ms).is_err()
                } else {
                    core.poll(now_ms).is_err()
                };
            let more = core.checkpoint_in_progress();
            if failed {
                st.background_checkpoint_failures += 1;
            }
            st.note_checkpoints();
            drop(st);
            // A checkpoint starts with a sync of the log, which may apply take commits.
            shared.room.notify_all();
            if !more || *lock(&shared.stop) {
                break;
            }
            std::thread::yield_now();
        }
        stop = lock(&shared.stop);
    }
}

/// An open transaction on a [`FileChannel`]. Dropping it without a commit rolls it back.
pub struct Transaction<'a> {
    channel: &'a FileChannel,
    txn: Txn,
    finished: bool,
    /// The buffer `take_vec` starts with: the last event's length (at least 512), so a run of
    /// events of one size is read once each, not first into a buffer too small.
    size_hint: usize,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("txn", &self.txn)
            .finish()
    }
}

impl<'a> Transaction<'a> {
    /// The channel this transaction is open on.
    pub fn channel(&self) -> &'a FileChannel {
        self.channel
    }

    /// Puts an event; it is written now and becomes visible when the transaction commits.
    /// Refused while a directory is below `minimum_required_space_bytes`. If the channel or the
    /// log is full, waits up to `keep_alive_ms` for room, then fails with
    /// [`FileChannelError::Full`].
    pub fn put(&mut self, event: &[u8]) -> Result<(), FileChannelError> {
        let shared = &*self.channel.shared;
        // Read the clock only once the channel is full: a put that finds room costs no clock
        // read (perf showed one at 2% of a 1 KiB put loop's samples).
        let mut deadline = None;
        let mut st = lock(&shared.state);
        self.channel.check_space(&mut st)?;
        // Bounded by the deadline.
        loop {
            match st.core().put(self.txn, event) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_full() => {
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert_with(|| {
                        now + Duration::from_millis(shared.config.keep_alive_ms)
                    });
                    if now >= deadline {
                        return Err(FileChannelError::Full(e));
                    }
                    st = shared
                        .room
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Attaches a mark: `bytes` become stream `stream`'s mark ([`FileChannel::mark`]) when this
    /// transaction commits, in its commit record, and never if it rolls back or a crash cuts
    /// the commit. A source records how far it read this way, in the same transaction as the
    /// events it read, so a crash neither loses nor repeats them. At most `mark_bytes` bytes,
    /// on a stream below `marks` (the channel's settings).
    pub fn set_mark(&mut self, stream: u16, bytes: &[u8]) -> Result<(), FileChannelError> {
        let mut st = lock(&self.channel.shared.state);
        Ok(st.core().set_mark(self.txn, stream, bytes)?)
    }

    /// Takes the next available event into `buf` and returns its length, or `None` if none is
    /// available now. The event leaves the channel when the transaction commits.
    pub fn take(&mut self, buf: &mut [u8]) -> Result<Option<usize>, FileChannelError> {
        Ok(self.take_wait_with_id(buf, Duration::ZERO)?.map(|(n, _)| n))
    }

    /// Like [`take`](Self::take), but when no event is available waits up to `wait` for a
    /// commit to make one available.
    pub fn take_wait(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<Option<usize>, FileChannelError> {
        Ok(self.take_wait_with_id(buf, wait)?.map(|(n, _)| n))
    }

    /// Like [`take_wait`](Self::take_wait), and also returns the event's [`EventId`]: the
    /// same every time the event is delivered, unique in the channel (see
    /// [`FileChannel::identity`] for the channel's).
    pub fn take_wait_with_id(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<Option<(usize, EventId)>, FileChannelError> {
        let shared = &*self.channel.shared;
        // The clock is read only once nothing is there to take (perf showed a clock read on
        // every take at 3% of a 1 KiB take loop's samples).
        let mut deadline = None;
        let mut st = lock(&shared.state);
        // Bounded by the deadline. Every applied commit (group sync, checkpoint sync) signals
        // `room` under this mutex, so no commit can slip in between the take and the wait.
        loop {
            if let Some(got) = st.core().take_with_id(self.txn, buf)? {
                return Ok(Some(got));
            }
            if wait.is_zero() {
                return Ok(None);
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + wait);
            if now >= deadline {
                return Ok(None);
            }
            st = shared
                .room
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes the next available event as a new vector of its exact size.
    pub fn take_vec(&mut self) -> Result<Option<Vec<u8>>, FileChannelError> {
        self.take_vec_wait(Duration::ZERO)
    }

    /// Like [`take_vec`](Self::take_vec), waiting up to `wait` as
    /// [`take_wait`](Self::take_wait) does.
    pub fn take_vec_wait(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, FileChannelError> {
        Ok(self.take_vec_wait_with_id(wait)?.map(|(e, _)| e))
    }

    /// Like [`take_vec_wait`](Self::take_vec_wait), with the event's id.
    pub fn take_vec_wait_with_id(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(Vec<u8>, EventId)>, FileChannelError> {
        // Try a buffer of the last event's size; on a larger event (which is left in place,
        // with its length reported) allocate exactly what it needs.
        let mut buf = vec![0u8; self.size_hint];
        let got = match self.take_wait_with_id(&mut buf, wait) {
            Err(FileChannelError::Channel(Error::BufferTooSmall { needed })) => {
                buf = vec![0u8; needed];
                self.take_wait_with_id(&mut buf, Duration::ZERO)?
            }
            other => other?,
        };
        Ok(got.map(|(n, id)| {
            self.size_hint = n.max(512);
            buf.truncate(n);
            (buf, id)
        }))
    }

    /// Commits: returns `Ok` once the transaction is durable. Commits from several threads
    /// share syncs. If the commit record cannot be written (a full log or disk), the
    /// transaction is rolled back and the error returned, as in Flume.
    pub fn commit(self) -> Result<(), FileChannelError> {
        self.write_commit()?.wait()
    }

    /// The first half of a commit: writes the commit record and returns without waiting for
    /// it to be durable. The transaction is durable once [`PendingCommit::wait`] returns `Ok`;
    /// until then it is neither acknowledged nor lost (the next sync, whoever runs it, applies
    /// it). Lets a thread write several commits and wait for them with one sync. If the record
    /// cannot be written, the transaction is rolled back.
    pub fn write_commit(mut self) -> Result<PendingCommit<'a>, FileChannelError> {
        let shared = &*self.channel.shared;
        let mut st = lock(&shared.state);
        let core = st.core();
        let written = core.write_commit(self.txn)?;
        let need = core.sync_mark();
        self.finished = true;
        Ok(PendingCommit {
            channel: self.channel,
            txn: self.txn,
            need: written.then_some(need),
        })
    }

    /// Rolls back: puts are forgotten, taken events become available again in their places.
    pub fn rollback(mut self) -> Result<(), FileChannelError> {
        self.finished = true;
        let shared = &*self.channel.shared;
        lock(&shared.state).core().rollback(self.txn)?;
        shared.room.notify_all();
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let shared = &*self.channel.shared;
            if let Some(core) = lock(&shared.state).core.as_mut() {
                // Rolling back writes nothing, so it cannot fail for a live transaction.
                let _ = core.rollback(self.txn);
            }
            shared.room.notify_all();
        }
    }
}

/// A commit written but not yet known durable. See [`Transaction::write_commit`].
#[must_use = "a commit is acknowledged only when `wait` returns Ok"]
#[derive(Debug)]
pub struct PendingCommit<'a> {
    channel: &'a FileChannel,
    txn: Txn,
    /// The sync mark that covers the commit record (`None` for an empty transaction).
    need: Option<SyncMark>,
}

impl PendingCommit<'_> {
    /// Waits until the commit is durable, sharing the sync with every other commit written
    /// before it started.
    pub fn wait(self) -> Result<(), FileChannelError> {
        if let Some(need) = self.need {
            self.channel.wait_durable(self.txn, need)?;
        }
        lock(&self.channel.shared.state).commits_acknowledged += 1;
        Ok(())
    }
}
