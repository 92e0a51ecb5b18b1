//! A channel home: the directory a channel is known by, shared by the CLI and the agent.
//!
//! ```text
//! HOME/
//!   sluicegate.toml     the channel's settings, written when the channel is created
//!   sluicegate.sock     the owner's client socket, while an owner runs (mode 0600)
//!   checkpoint/ backup/ data/   the channel's directories, unless the settings put them elsewhere
//! ```
//!
//! Directories inside the home are written into the settings relative to it, so a home can be
//! moved as a whole.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sluicegate_file::{ConfigError, FileChannelConfig};

/// The settings file in a home.
pub const SETTINGS_FILE: &str = "sluicegate.toml";
/// The owner's socket in a home.
pub const SOCKET_FILE: &str = "sluicegate.sock";

/// Where the owner of the channel in `home` listens.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// The settings in `home`, if it has a settings file.
pub fn load_settings(home: &Path) -> Result<Option<FileChannelConfig>, ConfigError> {
    let path = home.join(SETTINGS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    FileChannelConfig::from_toml_file(&path).map(Some)
}

/// Writes `config` as `home/sluicegate.toml` (durably), with directories inside `home` made
/// relative to it.
pub fn write_settings(home: &Path, config: &FileChannelConfig) -> io::Result<()> {
    write_file_durably(
        &home.join(SETTINGS_FILE),
        settings_text(home, config)?.as_bytes(),
    )
}

/// The text of `home/sluicegate.toml` for `config`, with directories inside `home` made
/// relative to it (their parents must exist).
pub fn settings_text(home: &Path, config: &FileChannelConfig) -> io::Result<String> {
    let home_abs = home.canonicalize()?;
    let rel = |p: &Path| -> PathBuf {
        let abs = p
            .parent()
            .and_then(|parent| parent.canonicalize().ok())
            .and_then(|parent| p.file_name().map(|n| parent.join(n)))
            .unwrap_or_else(|| p.to_path_buf());
        abs.strip_prefix(&home_abs)
            .map(Path::to_path_buf)
            .unwrap_or(abs)
    };
    let mut c = config.clone();
    c.checkpoint_dir = rel(&c.checkpoint_dir);
    c.backup_checkpoint_dir = rel(&c.backup_checkpoint_dir);
    c.data_dirs = c.data_dirs.iter().map(|d| rel(d)).collect();
    let text = format!(
        "# Sluicegate channel settings, written when the channel was created.\n\
         # Relative directories are relative to this file. capacity, max_file_bytes and\n\
         # log_files are fixed for the channel's life. To encrypt, add an [encryption]\n\
         # section (see `sluicegate key --help` and docs/operations.md).\n{}",
        toml::to_string(&c).map_err(|e| io::Error::other(format!("cannot write settings: {e}")))?
    );
    Ok(text)
}

/// Writes a whole file through a temporary file, a sync, a rename and a sync of its directory.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp-write");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(parent_of(path))
}

/// The directory holding `path`: `.` for a bare name.
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, each made durable by a sync of the directory that
/// holds it. A directory created without that sync can vanish at a power cut with everything
/// put into it since, however durably (the power-cut tests found an acknowledged put lost
/// this way with `create_dir_all`). An existing `dir` is left as it is.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    // Bounded by the path's depth.
    if !parent.is_dir() {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if !(e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir()) => return Err(e),
        _ => {}
    }
    sync_dir(parent)
}
