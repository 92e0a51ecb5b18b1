//! Real processes killed with SIGKILL while they run transactions on a file channel; every
//! recovery is judged like the simulation's. `SLUICEGATE_KILLS` sets the number of rounds
//! (200 by default); `cargo xtask kill --rounds N` runs more.

use std::sync::Mutex;

use sluicegate_sim::kill::{run_crash_points, run_kills, KillOutcome, POINT_HITS};

/// The tests here run one at a time. Side by side in one process, a child failed to start
/// twice in six runs of the suite on a busy machine: its directories were "in use" by the test
/// process itself. The likely cause: one test forks a child while the other test's own channel
/// (its check after a kill) holds its directory lock; the forked copy shares that lock until it
/// execs, past the moment the other test starts its next child.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The number of rounds `var` asks for, or `default`.
fn rounds_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `rounds` random kills under `root`, then, while the children have acknowledged no more
/// commits than there were rounds, 10 more rounds at a time on fresh directories. Each kill
/// comes a random time after the child is ready, so a busy machine gets less done before it:
/// there it runs longer rather than fail. Gives up (and the caller's check fails) after 100
/// extra batches, when the children plainly do nothing.
fn kills_with_work(
    exe: &std::path::Path,
    root: &std::path::Path,
    seed: u64,
    rounds: u64,
    sealed: bool,
) -> KillOutcome {
    let mut total =
        run_kills(exe, root, seed, rounds, sealed, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    // Bounded by 100 batches.
    for extra in 0..100u64 {
        if total.acknowledged > rounds {
            break;
        }
        let more = run_kills(
            exe,
            &root.join(format!("extra-{extra}")),
            seed + 1000 + extra,
            10,
            sealed,
            |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        println!("a slow run: 10 more rounds after {total:?}");
        total.kills += more.kills;
        total.recoveries += more.recoveries;
        total.acknowledged += more.acknowledged;
        total.in_flight_at_kill += more.in_flight_at_kill;
    }
    total
}

/// At least 200 kills (by default) at random moments, each followed by a checked recovery: no
/// acknowledged commit lost, no committed take delivered again, in-flight commits all or
/// nothing, FIFO order, no corrupt byte.
#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rounds = rounds_from_env("SLUICEGATE_KILLS", 200);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let outcome = kills_with_work(exe, dir.path(), 7, rounds, false);
    println!("{rounds} rounds: {outcome:?}");
    assert!(
        outcome.kills >= rounds * 9 / 10,
        "most rounds must end in a kill, not a clean exit: {outcome:?}"
    );
    assert!(
        outcome.acknowledged > rounds,
        "the children did work: {outcome:?}"
    );
    assert!(
        outcome.in_flight_at_kill > 0,
        "some kills land mid-commit: {outcome:?}"
    );
    // The control for the sealed test's search: plaintext logs show their events.
    assert!(events_in_the_clear(dir.path()) > 0);
}

/// The child dies at every named crash point of the file adapter (`file-created`,
/// `file-half-created`, `file-recycle-zeroed`, `file-recycled`, `file-removed`, `log-written`,
/// `slot-written`, `synced`), at several hits each, and every recovery is
/// judged. These windows are too short for random kills to find reliably.
#[test]
fn sigkill_at_every_named_crash_point_loses_nothing_acknowledged() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let outcome =
        run_crash_points(exe, dir.path(), 11, false, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    println!("named crash points: {outcome:?}");
    let rounds = (sluicegate_file::crash::POINTS.len() * POINT_HITS.len()) as u64;
    assert_eq!(outcome.kills, rounds, "every round dies at its point");
    assert_eq!(outcome.recoveries, rounds);
    assert!(
        outcome.acknowledged > 0,
        "the children did work: {outcome:?}"
    );
}

/// The same with encryption on: a random key per directory, so every segment and checkpoint is
/// sealed, and every recovery after a kill (at random moments and at each named crash point) is
/// judged the same way. Each run seals its new log segments with an algorithm drawn for it, so
/// both are killed, and recoveries read logs that mix them. `SLUICEGATE_SEALED_KILLS` sets the random rounds (60 by default).
#[test]
fn sigkill_of_a_sealed_channel_loses_nothing_acknowledged() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rounds = rounds_from_env("SLUICEGATE_SEALED_KILLS", 60);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_crash-child"));
    let points =
        run_crash_points(exe, dir.path(), 13, true, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    let random = kills_with_work(exe, dir.path(), 17, rounds, true);
    println!("sealed: named crash points {points:?}; {rounds} random rounds {random:?}");
    let point_rounds = (sluicegate_file::crash::POINTS.len() * POINT_HITS.len()) as u64;
    assert_eq!(points.recoveries, point_rounds);
    assert!(random.kills >= rounds * 9 / 10, "{random:?}");
    assert!(random.acknowledged > rounds, "{random:?}");
    // The directories really were sealed: no log file holds an event in the clear (the plain
    // test above finds them with the same search).
    assert_eq!(events_in_the_clear(dir.path()), 0);
    // Each run drew its algorithm, so the logs mix segments sealed with both.
    let [xchacha, gcm] = seal_algorithms(dir.path());
    println!("sealed segments left: {xchacha} XChaCha20-Poly1305, {gcm} AES-256-GCM");
    assert!(xchacha > 0 && gcm > 0, "{xchacha} and {gcm}");
}

/// The sealed segments under `dir`: how many name XChaCha20-Poly1305 and how many AES-256-GCM
/// in their seal records.
fn seal_algorithms(dir: &std::path::Path) -> [usize; 2] {
    use sluicegate_core::record::{
        SealRecord, SegmentCheck, SegmentHeader, RECORD_HEADER_BYTES, SEAL_PAYLOAD_BYTES,
        SEGMENT_FLAG_SEALED, SEGMENT_HEADER_BYTES,
    };
    use sluicegate_core::Algorithm;
    let mut counts = [0; 2];
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        let header = bytes[..SEGMENT_HEADER_BYTES].try_into().unwrap();
        let SegmentCheck::Valid(h) = SegmentHeader::decode(header) else {
            continue;
        };
        if h.flags & SEGMENT_FLAG_SEALED != 0 {
            let at = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES;
            let payload = bytes[at..at + SEAL_PAYLOAD_BYTES].try_into().unwrap();
            match SealRecord::decode(payload).map(|r| r.algorithm) {
                Some(Algorithm::XChaCha20Poly1305) => counts[0] += 1,
                Some(Algorithm::Aes256Gcm) => counts[1] += 1,
                None => {}
            }
        }
    }
    counts
}

/// Events of the kill workload found in the clear in the log files under `dir`: an id the
/// workload uses, followed by that event's next 8 bytes.
fn events_in_the_clear(dir: &std::path::Path) -> usize {
    let mut found = 0;
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        for w in bytes.windows(16) {
            let id = u64::from_le_bytes(w[..8].try_into().unwrap());
            if (1_000_000..1_000_000_000).contains(&id) && id % 1_000_000 < 100_000 {
                let e = sluicegate_sim::model::event_bytes(id, sluicegate_sim::kill::MAX_EVENT);
                if e.len() >= 16 && e[8..16] == w[8..] {
                    found += 1;
                }
            }
        }
    }
    found
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            found.extend(segments(&p));
        } else if p.extension().is_some_and(|e| e == "seg") {
            found.push(p);
        }
    }
    found
}
