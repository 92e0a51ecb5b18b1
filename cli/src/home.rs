//! A channel home: `--dir DIR` and what is in it.
//!
//! ```text
//! DIR/
//!   sluicegate.toml     the channel's settings, written when the channel is created
//!   checkpoint/         checkpoint_dir        (--checkpoint-dir overrides)
//!   backup/             backup_checkpoint_dir (--backup-dir overrides)
//!   data/               data_dirs             (--data-dir, repeatable, overrides)
//! ```
//!
//! The settings file makes every later command open the channel with the layout it was created
//! with. Directories inside DIR are written relative to it, so a home can be moved as a whole.

use std::path::{Path, PathBuf};

use sluicegate_file::{FileChannel, FileChannelConfig, FORMAT_FILE};

use crate::fail::Fail;

pub use sluicegate_agent::home::SETTINGS_FILE;
/// Present while a restore into the home is unfinished.
pub const RESTORING_FILE: &str = "sluicegate.restoring";
/// Written by a `repair` that lost events: how many, and where its reports are; `stats` shows
/// it until `repair --acknowledge` removes it.
pub const LOST_FILE: &str = "sluicegate.lost";

/// What `DIR/sluicegate.lost` says: events lost by repairs, not yet acknowledged, and the
/// reports of those repairs.
pub fn lost_by_repair(home: &Path) -> Option<(u64, Vec<String>)> {
    let text = std::fs::read_to_string(home.join(LOST_FILE)).ok()?;
    let mut events = 0u64;
    let mut reports = Vec::new();
    for line in text.lines() {
        if let Some((n, report)) = line.split_once('\t') {
            events += n.trim().parse::<u64>().unwrap_or(0);
            reports.push(report.to_string());
        }
    }
    Some((events, reports))
}

/// Present while a migrate is swapping directories: `sluicegate migrate` finishes it.
pub const MIGRATING_FILE: &str = "sluicegate.migrating";
/// Names the temporary directory of a backup in progress.
pub const BACKUP_JOURNAL: &str = "sluicegate.backup-in-progress";

/// `--dir` and the directory overrides, shared by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct HomeArgs {
    /// The channel's home directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The checkpoint directory (default DIR/checkpoint).
    #[arg(long, value_name = "PATH")]
    pub checkpoint_dir: Option<PathBuf>,
    /// The backup checkpoint directory (default DIR/backup); put it on another disk.
    #[arg(long, value_name = "PATH")]
    pub backup_dir: Option<PathBuf>,
    /// A data directory (default DIR/data); repeat it to spread the log over several disks.
    #[arg(long = "data-dir", value_name = "PATH")]
    pub data_dirs: Vec<PathBuf>,
}

/// Settings chosen when a channel is created (`put`); later runs may change only the run-time
/// ones.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CreateArgs {
    /// Events the channel holds at most (fixed when the channel is created).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// The size of one log file in bytes, a multiple of 4096 (fixed at creation).
    #[arg(long, value_parser = clap::value_parser!(u32).range(4096..))]
    pub file_bytes: Option<u32>,
    /// How many log files the ring has, at least 4 (fixed at creation).
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..))]
    pub log_files: Option<u32>,
    /// How long a put waits for room before failing, in milliseconds.
    #[arg(long)]
    pub keep_alive_ms: Option<u64>,
    /// Puts are refused while a directory has less free space than this (bytes).
    #[arg(long)]
    pub min_free_bytes: Option<u64>,
}

impl HomeArgs {
    fn settings_path(&self) -> PathBuf {
        self.dir.join(SETTINGS_FILE)
    }

    /// True if the home holds a channel (its checkpoint directory has a format file).
    pub fn has_channel(&self, config: &FileChannelConfig) -> bool {
        config.checkpoint_dir.join(FORMAT_FILE).exists()
    }

    /// True if the home has no settings file, or an empty one: commands then read the
    /// geometry the channel's directories record, and `repair` writes the file.
    pub fn settings_missing(&self) -> bool {
        std::fs::read(self.settings_path())
            .map_or(true, |b| b.iter().all(|c| c.is_ascii_whitespace()))
    }

    /// The settings file, if it exists and is damaged: not UTF-8, or not TOML at all (a file
    /// that is TOML but names an unknown setting or a bad value is an error of its own).
    pub fn settings_damaged(&self) -> Option<PathBuf> {
        let path = self.settings_path();
        let bytes = std::fs::read(&path).ok()?;
        let damaged = match std::str::from_utf8(&bytes) {
            Ok(text) => text.parse::<toml::Table>().is_err(),
            Err(_) => true,
        };
        damaged.then_some(path)
    }

    /// The configuration: the settings file if there is one, else the defaults with the
    /// geometry the channel's directories record (so a lost settings file never makes a
    /// command misread the log files), with the directory flags applied.
    pub fn config(&self) -> Result<FileChannelConfig, Fail> {
        self.config_with(false)
    }

    /// As [`HomeArgs::config`]; with `damaged_ok`, a damaged settings file is read as a
    /// missing one (for `repair`, which rebuilds it).
    pub fn config_with(&self, damaged_ok: bool) -> Result<FileChannelConfig, Fail> {
        let path = self.settings_path();
        let damaged = self.settings_damaged();
        if let Some(damaged) = damaged.as_ref().filter(|_| !damaged_ok) {
            return Err(Fail::runtime(format!(
                "{} is damaged (not TOML); `sluicegate repair` rebuilds it from what the channel's directories record, keeping a copy",
                damaged.display()
            )));
        }
        let from_media = self.settings_missing() || damaged.is_some();
        let mut config = if from_media {
            FileChannelConfig::in_dir(&self.dir)
        } else {
            FileChannelConfig::from_toml_file(&path).map_err(|e| Fail::runtime(e.to_string()))?
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        if let Some(d) = &self.checkpoint_dir {
            config.checkpoint_dir = cwd.join(d);
        }
        if let Some(d) = &self.backup_dir {
            config.backup_checkpoint_dir = cwd.join(d);
        }
        if !self.data_dirs.is_empty() {
            config.data_dirs = self.data_dirs.iter().map(|d| cwd.join(d)).collect();
        }
        if from_media {
            if let Some((g, _)) = sluicegate_file::recorded_geometry(&config.layout()) {
                set_file_bytes(&mut config, g.max_file_bytes);
                config.log_files = g.log_files;
            }
        }
        Ok(config)
    }

    /// The configuration of an existing channel: DIR must exist, hold a channel, and not be
    /// half restored.
    pub fn existing(&self) -> Result<FileChannelConfig, Fail> {
        if !self.dir.is_dir() {
            return Err(Fail::runtime(format!(
                "{} does not exist or is not a directory",
                self.dir.display()
            )));
        }
        self.refuse_half_restored()?;
        let config = self.config()?;
        if !self.has_channel(&config) {
            return Err(Fail::runtime(format!(
                "{} holds no channel ({} has no {FORMAT_FILE}; `sluicegate put` creates one)",
                self.dir.display(),
                config.checkpoint_dir.display()
            )));
        }
        Ok(config)
    }

    pub fn refuse_half_restored(&self) -> Result<(), Fail> {
        if self.dir.join(MIGRATING_FILE).exists() {
            return Err(Fail::runtime(format!(
                "{} holds an unfinished migrate ({MIGRATING_FILE}): run `sluicegate migrate --dir {}` to finish it",
                self.dir.display(),
                self.dir.display()
            )));
        }
        if self.dir.join(RESTORING_FILE).exists() {
            return Err(Fail::runtime(format!(
                "{} holds an unfinished restore ({RESTORING_FILE}): run the same `sluicegate restore` again to finish it",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// The configuration for a command that may create the channel, with the creation flags
    /// applied. Fixed settings of an existing channel cannot change.
    pub fn for_create(&self, create: &CreateArgs) -> Result<(FileChannelConfig, bool), Fail> {
        self.refuse_half_restored()?;
        let mut config = self.config()?;
        let exists = self.settings_path().exists();
        let fixed = [
            ("--capacity", create.capacity, config.capacity),
            ("--file-bytes", create.file_bytes, config.max_file_bytes),
            ("--log-files", create.log_files, config.log_files),
        ];
        for (flag, given, current) in fixed {
            if let Some(v) = given {
                if exists && v != current {
                    return Err(Fail::usage(format!(
                        "{flag} {v}: the channel in {} was created with {current}, and it cannot change",
                        self.dir.display()
                    )));
                }
            }
        }
        if let Some(v) = create.capacity {
            config.capacity = v;
            config.transaction_capacity = config.transaction_capacity.min(v);
        }
        if let Some(v) = create.file_bytes {
            set_file_bytes(&mut config, v);
        }
        if let Some(v) = create.log_files {
            config.log_files = v;
        }
        if let Some(v) = create.keep_alive_ms {
            config.keep_alive_ms = v;
        }
        if let Some(v) = create.min_free_bytes {
            config.minimum_required_space_bytes = v;
        }
        Ok((config, !exists))
    }

    /// Writes the settings file (durably, through a temporary file and a rename).
    pub fn write_settings(&self, config: &FileChannelConfig) -> Result<(), Fail> {
        write_settings(&self.dir, config)
    }
}

/// Sets the log file size, and the limits a record (an event, or a commit listing a whole
/// transaction) must keep to fit in one: small files get smaller limits, as at creation.
pub fn set_file_bytes(config: &mut FileChannelConfig, v: u32) {
    config.max_file_bytes = v;
    config.max_event_bytes = config.max_event_bytes.min(v / 4);
    config.transaction_capacity = config.transaction_capacity.min(v / 32);
}

/// Writes `config` as `home/sluicegate.toml`, with directories inside `home` made relative.
pub fn write_settings(home: &Path, config: &FileChannelConfig) -> Result<(), Fail> {
    sluicegate_agent::home::write_settings(home, config).map_err(|e| {
        Fail::runtime(format!(
            "cannot write {}: {e}",
            home.join(SETTINGS_FILE).display()
        ))
    })
}

/// Opens the channel, showing a spinner while recovery runs.
pub fn open(config: FileChannelConfig) -> Result<FileChannel, Fail> {
    let spinner = crate::progress::spinner("recovering the channel");
    let result = FileChannel::open(config);
    spinner.finish_and_clear();
    Ok(result?)
}
