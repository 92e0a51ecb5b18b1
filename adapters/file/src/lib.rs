//! # sluicegate-file
//!
//! The server-side adapter: [`FileStorage`] implements the core's `Storage` over directories,
//! so a channel's log can be spread over several disks and its backup checkpoint kept on
//! another one, as Flume's FileChannel does with `dataDirs` and `backupCheckpointDir`.
//!
//! - The log is a ring of segment files, `log-NNNNNN.seg`, spread round-robin over the data
//!   directories. Each is created when the log first reaches it, at its full size and full of
//!   zeros, through a temporary file that is synced and renamed, so a crash or a full disk never
//!   leaves a short segment. A segment not created yet reads as erased.
//! - The checkpoint and backup slots are one file each, `checkpoint.slot` and `backup.slot`,
//!   in the checkpoint and backup directories.
//! - Every directory holds a format file (`sluicegate.dir`: version and role) and a lock file
//!   (`sluicegate.lock`) held for as long as the storage is open, naming the holder's pid.
//!
//! Reads go through memory maps; writes are positioned writes (`pwrite`), which the maps see at
//! once through the page cache; `sync` is `fdatasync` of exactly the files written since the
//! last sync of that region. Erasing writes zeros: the erased value is `0x00`. For group
//! commit, a [`LogSyncTicket`] lets the log's `fdatasync` run without the channel's lock.
//!
//! Status: this is the storage layer of issue 4. The multi-threaded `FileChannel` (group commit,
//! a background checkpoint thread), TOML configuration, disk-space checks and the crash tests
//! that kill real processes are not built yet.

#![deny(missing_docs)]

mod channel;
mod config;
mod dirs;
mod space;
mod storage;

pub use channel::{FileChannel, FileChannelError, FileStats, PendingCommit, Transaction};
pub use config::{ConfigError, FileChannelConfig};
pub use space::available_bytes;

pub use dirs::{DirRole, FORMAT_FILE, FORMAT_VERSION, LOCK_FILE};
pub use storage::{FileError, FileStorage, Layout, LogSyncTicket};
