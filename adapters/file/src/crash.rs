//! Named crash points for the kill tests (feature `crash-points`, off by default).
//!
//! With the feature on, a program that calls [`arm`]`(NAME, N)` sends itself SIGKILL the `N`th
//! time it reaches the point `NAME` (N counts from 1). Random kills rarely land inside a short
//! window such as a log file's creation; a named point lands there every time, so a bug in that
//! window fails the kill test on every run. Without the feature, the points compile to nothing.
//!
//! Only the kill tests' child calls `arm` (it reads `SLUICEGATE_CRASH_AT=NAME:N`). Nothing here
//! reads the environment: a build that gets the feature by Cargo's feature unification (a
//! `cargo build --workspace` builds the CLI beside the test crates that turn it on) still
//! never dies at a point, since no code in it arms one.

/// Where the adapter can be told to die.
pub const POINTS: [&str; 8] = [
    // A new file exists, empty, its length not yet allocated (a log segment or a slot).
    "file-created",
    // Half of a new file's zeros are written (a log segment or a checkpoint slot).
    "file-half-created",
    // A released log file kept for reuse had its old header zeroed and synced, not yet renamed.
    "file-recycle-zeroed",
    // A kept log file was renamed for a new segment and its directory synced.
    "file-recycled",
    // A released log file beyond the kept ones was deleted.
    "file-removed",
    // A record (or part of one) was written to the log, not yet synced.
    "log-written",
    // Bytes of a checkpoint or backup slot were written, not yet synced.
    "slot-written",
    // A sync of any region returned.
    "synced",
];

/// Dies here if [`arm`] asked for it (feature `crash-points` only).
#[inline]
pub(crate) fn point(name: &'static str) {
    #[cfg(feature = "crash-points")]
    armed::hit(name);
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}

/// Makes the process die the `n`th time it reaches `point` (feature `crash-points`).
#[cfg(feature = "crash-points")]
pub fn arm(point: &str, n: u64) {
    let _ = armed::TARGET.set((point.to_string(), n));
}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    pub(super) static TARGET: OnceLock<(String, u64)> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn hit(name: &'static str) {
        let Some((point, n)) = TARGET.get() else {
            return;
        };
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // SAFETY: kill(2) on our own pid with a valid signal number; it has no memory
            // effects. SIGKILL cannot be caught, so this is the same death the kill test gives.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
