//! Free space and writability of directories, asked of the operating system.
//!
//! **Invariant:** these only ask; they create nothing.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(dir: &Path) -> io::Result<CString> {
    CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Bytes an unprivileged process can still write on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let path = c_path(dir)?;
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct of integers.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` is a valid,
    // exclusively borrowed `statvfs` for the call to fill.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Ok if this process may create files in `dir` (a read-only filesystem says no even to root).
pub fn check_writable(dir: &Path) -> io::Result<()> {
    let path = c_path(dir)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
