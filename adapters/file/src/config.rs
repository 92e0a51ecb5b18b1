//! [`FileChannelConfig`]: the file channel's settings, with Flume's names and defaults where they
//! make sense, loadable from TOML, and checked before anything is created.
//!
//! **Invariant:** a configuration that [`FileChannelConfig::validate`] accepts gives a core
//! [`Config`] and a [`Layout`] that open; every refusal names the setting at fault.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluicegate_core::{Config, MAX_TRANSACTIONS};

use crate::keys::{EncryptionConfig, Keyring};
use crate::storage::Layout;

/// Where the file channel keeps its data, how much it holds, and how it behaves. Every field has
/// a default; in TOML, unknown keys are refused so a misspelt setting is never silently ignored.
///
/// | setting | Flume's name | default |
/// |---|---|---|
/// | `checkpoint_dir` | `checkpointDir` | `checkpoint` |
/// | `backup_checkpoint_dir` | `backupCheckpointDir` | `backup` |
/// | `use_dual_checkpoints` | `useDualCheckpoints` | `true` (Flume: `false`) |
/// | `data_dirs` | `dataDirs` | `["data"]` |
/// | `capacity` | `capacity` | 1,000,000 |
/// | `transaction_capacity` | `transactionCapacity` | 10,000 |
/// | `checkpoint_interval_ms` | `checkpointInterval` | 30,000 |
/// | `max_file_bytes` | `maxFileSize` | 128 MiB (Flume: 2 GiB) |
/// | `log_files` | (none) | 1,024 |
/// | `kept_log_files` | (none) | 16 |
/// | `minimum_required_space_bytes` | `minimumRequiredSpace` | 500 MB (524,288,000) |
/// | `keep_alive_ms` | `keep-alive` (seconds) | 3,000 |
/// | `checkpoint_on_close` | `checkpointOnClose` | `true` |
/// | `max_event_bytes` | (none) | 1 MiB |
/// | `max_transactions` | (none) | 64 |
/// | `space_check_interval_ms` | (none) | 1,000 |
/// | `marks` | (none) | 8 |
/// | `mark_bytes` | (none) | 512 |
/// | `[encryption]` | `encryption.*` | none: plaintext |
///
/// The `[encryption]` section names the key that seals new data (`active_key`, an alias) and
/// every key the log may still need (`[[encryption.keys]]`: `id`, `alias`, `key_file` and, for a
/// wrapped key, `password_file`); see [`Keyring`](crate::Keyring).
///
/// Relative directories are resolved against the directory of the TOML file they come from
/// ([`FileChannelConfig::from_toml_file`]) or the base given to
/// [`FileChannelConfig::from_toml_str`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileChannelConfig {
    /// Holds the checkpoint slot.
    pub checkpoint_dir: PathBuf,
    /// Holds the second checkpoint slot when `use_dual_checkpoints` is on: put it on another disk.
    pub backup_checkpoint_dir: PathBuf,
    /// On: the second slot lives in `backup_checkpoint_dir`. Off: it lives in
    /// `checkpoint_dir/second`, on the same disk. The channel always alternates two slots, so a
    /// checkpoint torn by a crash never costs a full replay either way; this setting only says
    /// whether losing one disk can cost both.
    pub use_dual_checkpoints: bool,
    /// Log files go round-robin over these, so several disks share the writes.
    pub data_dirs: Vec<PathBuf>,
    /// The most events the channel holds (queued, being taken, or put but not committed).
    pub capacity: u32,
    /// The most events one transaction puts or takes.
    pub transaction_capacity: u32,
    /// A checkpoint starts when this much time has passed since the last one (0: never by
    /// time, and no background checkpoints at all). With it on, one also starts once half of
    /// `kept_log_files` files' worth of log was written since the last.
    pub checkpoint_interval_ms: u64,
    /// The size of one log file, a multiple of 4,096. Files are created at full size.
    pub max_file_bytes: u32,
    /// The most log files there can be (the segments of the log's ring), at least 4: the log
    /// never takes more than `log_files * max_file_bytes` of disk. Files are made as the log
    /// needs them and released when nothing needs them any more, so a backlog grows the log
    /// until it meets this bound or `minimum_required_space_bytes`, and the log shrinks back
    /// to `kept_log_files` once the backlog is taken and a checkpoint lets go of it. Flume
    /// has no such bound. A run goes on in the newest file after the last intact record, so
    /// restarts cost no file; a run starts a new file only when the newest is full, after
    /// replay met damage in it, when it is sealed, or when the run seals (every sealed run
    /// starts its own). A put keeps two segments free in reserve. Fixed when the channel is
    /// made (recorded in its format files); left at its default, it follows what an existing
    /// channel recorded, so channels made with 16 (the default before) open unchanged.
    pub log_files: u32,
    /// Log files kept for reuse when the log no longer needs them: a released file is kept,
    /// to be renamed for a later segment without writing a byte of it, while at most this many
    /// files exist, and deleted otherwise. Can change at any restart.
    pub kept_log_files: u32,
    /// Puts are refused while any of the channel's directories has less free space than this.
    pub minimum_required_space_bytes: u64,
    /// How long a put waits for room (capacity or log space) before it fails.
    pub keep_alive_ms: u64,
    /// Write a checkpoint when the channel closes, so the next open replays nothing.
    pub checkpoint_on_close: bool,
    /// The largest event accepted.
    pub max_event_bytes: u32,
    /// The most transactions open at once (1 to 254).
    pub max_transactions: u16,
    /// How often free space is measured for the `minimum_required_space_bytes` check
    /// (0: before every put).
    pub space_check_interval_ms: u64,
    /// Mark streams: sources (the agent's file tail) record how far they read in the same
    /// transaction as the events they read (0 to 1,024; 0 turns marks off).
    pub marks: u16,
    /// The longest mark, 1 to 4,096 bytes.
    pub mark_bytes: u16,
    /// Encryption at rest: the active key and the key files.
    #[serde(skip_serializing_if = "EncryptionConfig::is_off")]
    pub encryption: EncryptionConfig,
}

/// The default of `log_files`: 128 GiB of log at the default file size.
pub const DEFAULT_LOG_FILES: u32 = 1024;

impl Default for FileChannelConfig {
    fn default() -> Self {
        FileChannelConfig {
            checkpoint_dir: PathBuf::from("checkpoint"),
            backup_checkpoint_dir: PathBuf::from("backup"),
            use_dual_checkpoints: true,
            data_dirs: vec![PathBuf::from("data")],
            capacity: 1_000_000,
            transaction_capacity: 10_000,
            checkpoint_interval_ms: 30_000,
            max_file_bytes: 128 << 20,
            log_files: DEFAULT_LOG_FILES,
            kept_log_files: 16,
            minimum_required_space_bytes: 524_288_000,
            keep_alive_ms: 3_000,
            checkpoint_on_close: true,
            max_event_bytes: 1 << 20,
            max_transactions: 64,
            space_check_interval_ms: 1_000,
            marks: 8,
            mark_bytes: 512,
            encryption: EncryptionConfig::default(),
        }
    }
}

/// A configuration that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl FileChannelConfig {
    /// The defaults, with every directory under `root`.
    pub fn in_dir(root: &Path) -> Self {
        FileChannelConfig::default().resolved_against(root)
    }

    /// Parses TOML; relative directories are taken as relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let config: FileChannelConfig = toml::from_str(text)
            .map_err(|e| ConfigError::new(format!("bad configuration: {e}")))?;
        Ok(config.resolved_against(base))
    }

    /// Reads and parses a TOML file; relative directories are relative to the file's directory.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base)
            .map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.message)))
    }

    /// The same configuration with relative directories joined to `base`.
    pub fn resolved_against(mut self, base: &Path) -> Self {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.checkpoint_dir);
        join(&mut self.backup_checkpoint_dir);
        self.data_dirs.iter_mut().for_each(join);
        crate::keys::resolve(&mut self.encryption, base);
        self
    }

    /// Checks the configuration on its own and against the filesystem (without creating
    /// anything): sizes and limits, distinct directories, for each directory either an
    /// existing writable directory or a missing one whose parent is an existing writable
    /// directory, and every key file (read, and unwrapped with its password).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_dirs()?;
        self.keyring().map(drop)
    }

    /// Loads the keys the `[encryption]` section names.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        Keyring::load(&self.encryption)
    }

    /// [`FileChannelConfig::validate`] without the key files.
    pub(crate) fn validate_dirs(&self) -> Result<(), ConfigError> {
        self.core_config()?;
        if self.data_dirs.is_empty() {
            return Err(ConfigError::new(
                "data_dirs is empty: name at least one directory",
            ));
        }
        if self.log_files < 4 {
            return Err(ConfigError::new(format!(
                "log_files is {}: the log needs at least 4 files",
                self.log_files
            )));
        }
        let backup = self.second_slot_dir();
        let mut named: Vec<(String, PathBuf)> =
            vec![("checkpoint_dir".into(), normal(&self.checkpoint_dir))];
        if self.use_dual_checkpoints {
            named.push(("backup_checkpoint_dir".into(), normal(&backup)));
        }
        for (i, d) in self.data_dirs.iter().enumerate() {
            named.push((format!("data_dirs[{i}]"), normal(d)));
        }
        for (i, (key, dir)) in named.iter().enumerate() {
            if let Some((other, _)) = named[..i].iter().find(|(_, d)| d == dir) {
                return Err(ConfigError::new(format!(
                    "{key} and {other} are the same directory ({}): the checkpoint, backup and data directories must all differ",
                    dir.display()
                )));
            }
        }
        for (key, dir) in &named {
            check_dir(key, dir)?;
        }
        Ok(())
    }

    /// The core's configuration.
    pub fn core_config(&self) -> Result<Config, ConfigError> {
        if self.transaction_capacity > self.capacity {
            return Err(ConfigError::new(format!(
                "transaction_capacity ({}) is above capacity ({}): a transaction could never fill",
                self.transaction_capacity, self.capacity
            )));
        }
        if self.max_transactions == 0 || self.max_transactions > MAX_TRANSACTIONS {
            return Err(ConfigError::new(format!(
                "max_transactions is {}: it must be 1 to {MAX_TRANSACTIONS}",
                self.max_transactions
            )));
        }
        if !self.max_file_bytes.is_multiple_of(4096) {
            return Err(ConfigError::new(format!(
                "max_file_bytes ({}) must be a multiple of 4096",
                self.max_file_bytes
            )));
        }
        Config::try_new(
            self.capacity,
            self.transaction_capacity,
            self.max_transactions,
            self.max_event_bytes,
            self.max_file_bytes,
        )
        .map(|c| c.with_checkpoints(0, 0, self.checkpoint_interval_ms))
        .and_then(|c| match self.marks {
            0 => Ok(c),
            n => c.try_with_marks(n, self.mark_bytes),
        })
        .map_err(|e| {
            ConfigError::new(format!(
                "capacity {}, transaction_capacity {}, max_event_bytes {}, max_file_bytes {}, marks {}, mark_bytes {}: {}",
                self.capacity,
                self.transaction_capacity,
                self.max_event_bytes,
                self.max_file_bytes,
                self.marks,
                self.mark_bytes,
                e.message()
            ))
        })
    }

    /// The core's configuration for a channel over `layout` (this configuration's
    /// [`FileChannelConfig::layout`]): [`FileChannelConfig::core_config`] with the queue's
    /// entries packed for the layout's ring of log files (`Config::with_log_segments`): 5.5
    /// bytes per event of capacity with the defaults (1,024 files of 128 MiB, 64
    /// transactions), against 7.25 for a ring of any size.
    pub fn core_config_for(&self, layout: &Layout) -> Result<Config, ConfigError> {
        self.core_config()?
            .try_with_log_segments(layout.segments)
            .map_err(|e| {
                ConfigError::new(format!("log_files {}: {}", layout.segments, e.message()))
            })
    }

    /// The storage layout. With `log_files` at its default, an existing channel's recorded
    /// ring size is used (see [`FileChannelConfig::log_files`]).
    pub fn layout(&self) -> Layout {
        let mut layout = self.layout_as_set();
        if self.log_files == DEFAULT_LOG_FILES {
            if let Some((recorded, _)) = crate::dirs::recorded_geometry(&layout) {
                layout.segments = recorded.log_files;
            }
        }
        layout
    }

    /// The storage layout exactly as these settings say, whatever the directories record (for
    /// `migrate`, which compares the geometry asked for with the one recorded).
    pub fn layout_as_set(&self) -> Layout {
        Layout {
            checkpoint_dir: self.checkpoint_dir.clone(),
            backup_dir: self.second_slot_dir(),
            data_dirs: self.data_dirs.clone(),
            segment_bytes: self.max_file_bytes,
            segments: self.log_files,
            kept_segments: self.kept_log_files,
            slot_bytes: self.slot_bytes(),
        }
    }

    /// The size of a checkpoint slot file: a started mark, the entries, a complete mark and,
    /// with marks, room for every stream's and a tag, rounded up to whole pages.
    fn slot_bytes(&self) -> u64 {
        let marks = match self.marks {
            0 => 0,
            n => n as u64 * (8 + (self.mark_bytes as u64).next_multiple_of(8)) + 16,
        };
        (128 + 8 * self.capacity as u64 + marks).div_ceil(4096) * 4096
    }

    /// Every directory the channel writes to.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.checkpoint_dir.clone(), self.second_slot_dir()];
        dirs.extend(self.data_dirs.iter().cloned());
        dirs
    }

    fn second_slot_dir(&self) -> PathBuf {
        if self.use_dual_checkpoints {
            self.backup_checkpoint_dir.clone()
        } else {
            self.checkpoint_dir.join("second")
        }
    }
}

/// The path without `.` components or trailing slashes, and with symbolic links resolved where
/// it exists, so two spellings of one directory compare equal.
fn normal(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => normal(parent).join(name),
        _ => p.components().collect(),
    }
}

fn check_dir(key: &str, dir: &Path) -> Result<(), ConfigError> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ConfigError::new(format!(
                "{key}: {} exists and is not a directory",
                dir.display()
            )));
        }
        return writable(key, dir);
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(ConfigError::new(format!(
            "{key}: the parent of {} does not exist or is not a directory (create it, or choose another directory)",
            dir.display()
        )));
    }
    writable(key, parent)
}

fn writable(key: &str, dir: &Path) -> Result<(), ConfigError> {
    crate::space::check_writable(dir)
        .map_err(|e| ConfigError::new(format!("{key}: {} is not writable: {e}", dir.display())))
}
