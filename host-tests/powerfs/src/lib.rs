//! # sluicegate-powerfs
//!
//! A FUSE filesystem for power-loss tests on real files. It passes every operation through to
//! its [`Volume`], which keeps durable file contents in a backing directory and everything no
//! sync has covered in memory: written pages per inode until an `fsync` or `fdatasync` of that
//! file, and entry operations (create, link, unlink, rename, mkdir, rmdir) until an `fsync` of
//! their directory. A power cut ([`PowerMount::power_cycle`]) applies a [`Fate`] to what was
//! not covered: all lost or all kept, pages kept at random and in no order, pages torn at
//! 512-byte sectors, and entry operations kept or lost independently of the data. Then it
//! remounts, so the kernel's caches go too.
//!
//! Unlike a filesystem that applies creates, renames and unlinks straight to its backing
//! directory, this one can lose a file whose data was synced while its directory entry was
//! not, which is the class of bug a missing directory sync causes.
//!
//! A cut falls at a numbered sync ([`PowerMount::arm`]) or at once ([`PowerMount::cut_now`]).
//! From the cut until the power cycle every request fails with `EIO`, so the program under test
//! is never told that anything after the cut is durable; the caller kills it, then calls
//! [`PowerMount::power_cycle`].
//!
//! Needs `/dev/fuse` and the right to mount (root, or `fusermount3` from Debian's `fuse3`).

#![deny(missing_docs)]

mod fs;
pub mod volume;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

pub use fs::CutPoint;
pub use volume::{Counters, DataFate, DirFate, Fate, Volume};

/// A mounted power-cut filesystem.
pub struct PowerMount {
    shared: Arc<fs::Shared>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for PowerMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerMount")
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

impl PowerMount {
    /// Mounts a new, empty volume at `mountpoint` (an existing empty directory), with its
    /// durable contents in `backing`.
    pub fn new(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        let shared = fs::Shared::new(Volume::new(backing)?);
        let mut m = PowerMount {
            shared,
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        m.mount()?;
        Ok(m)
    }

    fn mount(&mut self) -> io::Result<()> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("sluicegate-powerfs".into()),
            fuser::MountOption::Subtype("powerfs".into()),
        ];
        let fs = fs::PowerFs {
            shared: Arc::clone(&self.shared),
        };
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "mount a FUSE filesystem at {}: {e} (needs /dev/fuse and root, or fusermount3)",
                    self.mountpoint.display()
                ),
            )
        })?;
        self.session = Some(session);
        Ok(())
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Arms a cut at a numbered sync (see [`CutPoint`]); replaces an armed one.
    pub fn arm(&self, point: CutPoint) {
        let mut st = self.shared.lock();
        st.armed = Some(point);
        st.file_syncs = 0;
    }

    /// Cuts the power now: every request fails from here on, until the power cycle.
    pub fn cut_now(&self) {
        let mut st = self.shared.lock();
        st.cut = true;
        st.armed = None;
        self.shared.cut_happened.notify_all();
    }

    /// Whether the power is off.
    pub fn is_cut(&self) -> bool {
        self.shared.lock().cut
    }

    /// Waits up to `timeout` for the armed cut; whether it happened.
    pub fn wait_cut(&self, timeout: Duration) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .cut_happened
            .wait_timeout_while(st, timeout, |s| !s.cut)
            .unwrap_or_else(|p| p.into_inner());
        st.cut
    }

    /// Syncs since the last power cycle (file and directory syncs alike).
    pub fn syncs(&self) -> u64 {
        self.shared.lock().syncs
    }

    /// What the volume has seen.
    pub fn counters(&self) -> Counters {
        self.shared.lock().volume.counters()
    }

    /// Writes what a power cut with `fate` would leave now as a plain directory tree at `out`
    /// (which must not exist), without cutting: see [`Volume::materialize`].
    pub fn materialize(&self, fate: Fate, rng: &mut impl Rng, out: &Path) -> io::Result<Counters> {
        self.shared.lock().volume.materialize(fate, rng, out)
    }

    /// Unmounts, applies `fate` to everything no sync covered (cutting the power first if it is
    /// still on), and mounts again. Every process using the filesystem must have exited.
    pub fn power_cycle(&mut self, fate: Fate, rng: &mut impl Rng) -> io::Result<()> {
        self.cut_now();
        self.unmount()?;
        {
            let mut st = self.shared.lock();
            st.volume
                .power_cut(fate, rng)
                .map_err(io::Error::from_raw_os_error)?;
            st.cut = false;
            st.armed = None;
            st.syncs = 0;
        }
        self.mount()
    }

    fn unmount(&mut self) -> io::Result<()> {
        // A process just killed may still be tearing down (its open files and maps go before
        // its parent hears, but a child it started, such as a sink's command, lives on a
        // moment): wait for every holder to let go, so the unmount is not refused.
        let mut holders = self.holders();
        // Bounded: 10 s of 20 ms waits.
        for _ in 0..500 {
            if holders.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            holders = self.holders();
        }
        if !holders.is_empty() {
            return Err(io::Error::other(format!(
                "cannot unmount {}: still in use after 10 s by {}",
                self.mountpoint.display(),
                holders.join(", ")
            )));
        }
        if let Some(session) = self.session.take() {
            session.umount_and_join().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("unmount {}: {e}", self.mountpoint.display()),
                )
            })?;
        }
        Ok(())
    }
}

/// For tests: a mount of a new volume in a fresh temporary directory (the mountpoint and the
/// backing directory inside it), unmounted before the directory is removed. Where mounting is
/// impossible here (no `/dev/fuse`, not root) and `SLUICEGATE_REQUIRE_FUSE` is unset,
/// [`TempMount::new_or_skip`] says why on standard error and returns `None`, so the test can
/// skip; with it set (as `cargo xtask ci` does as root) a failure to mount panics.
#[derive(Debug)]
pub struct TempMount {
    // Declared first, so dropped (unmounted) before the directory goes.
    mount: PowerMount,
    dir: tempfile::TempDir,
}

impl TempMount {
    /// Mounts, or returns `None` where FUSE cannot mount and the run does not require it.
    pub fn new_or_skip() -> Option<TempMount> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("the mountpoint");
        match PowerMount::new(&dir.path().join("backing"), &mnt) {
            Ok(mount) => Some(TempMount { mount, dir }),
            Err(e) if std::env::var_os("SLUICEGATE_REQUIRE_FUSE").is_none() => {
                eprintln!("SKIPPED: {e}; set SLUICEGATE_REQUIRE_FUSE=1 to make this a failure");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The temporary directory holding the mountpoint, for scratch files off the mount.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl std::ops::Deref for TempMount {
    type Target = PowerMount;
    fn deref(&self) -> &PowerMount {
        &self.mount
    }
}

impl std::ops::DerefMut for TempMount {
    fn deref_mut(&mut self) -> &mut PowerMount {
        &mut self.mount
    }
}

impl PowerMount {
    /// The processes using the mount: an open file, a working directory or a map under it
    /// (`/proc`), as `pid (what)`, this process's own uses included.
    fn holders(&self) -> Vec<String> {
        let under = |p: &Path| p.starts_with(&self.mountpoint);
        let mut out = Vec::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in procs.flatten() {
            let pid = entry.file_name();
            let Some(pid) = pid
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let dir = entry.path();
            let mut what = Vec::new();
            if std::fs::read_link(dir.join("cwd")).is_ok_and(|p| under(&p)) {
                what.push("cwd".to_string());
            }
            for fd in std::fs::read_dir(dir.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(p) = std::fs::read_link(fd.path()) {
                    if under(&p) {
                        what.push(format!("fd {}", p.display()));
                    }
                }
            }
            let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
            let mount = self.mountpoint.display().to_string();
            if let Some(line) = maps.lines().find(|l| l.contains(&mount)) {
                what.push(format!(
                    "map {}",
                    line.split_whitespace().last().unwrap_or("")
                ));
            }
            if !what.is_empty() {
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                out.push(format!("{pid} {} ({})", comm.trim(), what.join(", ")));
            }
        }
        out
    }
}

impl Drop for PowerMount {
    fn drop(&mut self) {
        if self.unmount().is_err() {
            // Still in use (a test that failed while holding a file there): detach it, so no
            // dead mount outlives this process.
            use std::os::unix::ffi::OsStrExt;
            if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: `path` is a valid NUL-terminated string for the call.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
