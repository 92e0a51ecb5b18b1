//! File tailing (Flume's Taildir): follows the files that match globs, one event per line.
//!
//! Files are known by device and inode, not by name, and read through a handle kept open, so
//! a file renamed away by rotation is read to its end and a new file under the old name starts
//! from its beginning. A file that shrinks below the read position was truncated (copytruncate
//! rotation): reading starts again at 0. Only whole lines are read: a line still being written
//! waits for its newline. A line over the channel's `max_event_bytes` is skipped, with a warning
//! and a count.
//!
//! The read positions travel in the same channel transaction as the lines read: a mark on the
//! source's own mark stream ([`Transaction::set_mark`]), which takes effect with the commit or
//! not at all, holds every position that differs from what the positions file says (normally
//! just the files the batch read). Every position is also written to the positions file after
//! each commit, so at a restart that file misses at most the last commit, and that commit's
//! mark has what it misses: a kill at any moment neither loses nor repeats a line. If one batch's positions do
//! not fit in `mark_bytes`, its mark says so, and a kill right after that batch repeats it (the
//! log says so too).
//!
//! [`Transaction::set_mark`]: sluicegate_file::Transaction::set_mark

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::{ChannelCounters, Component, Served};
use crate::sinks::sleep_unless;

/// How a tail source runs.
#[derive(Debug, Clone)]
pub struct TailSettings {
    /// The source's name, in its marks.
    pub name: String,
    /// The channel's mark stream this source keeps its positions in.
    pub stream: u16,
    /// Glob patterns.
    pub paths: Vec<String>,
    /// The positions file.
    pub positions: PathBuf,
    /// Lines per transaction.
    pub batch: u32,
    /// How long to sleep when nothing new was read.
    pub poll: Duration,
    /// Start files first seen at their end.
    pub from_end: bool,
}

/// Read positions by device and inode.
type Positions = HashMap<(u64, u64), u64>;

/// One file's read position, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    /// The file's device.
    pub dev: u64,
    /// The file's inode.
    pub inode: u64,
    /// Its name when last matched.
    pub path: PathBuf,
    /// Bytes of it committed into the channel.
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PositionsFile {
    files: Vec<Position>,
}

/// What a tail source's mark holds: its name and, if they fit, the positions of every file
/// whose position differs from what the positions file says (the files the commit moved, files
/// followed since the file was written, positions a restart took from the previous mark). The
/// file holds the others, since it is written after every commit: at a restart it may miss
/// only the last commit, whose mark this is.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct TailMark {
    source: String,
    /// False when the positions did not fit in `mark_bytes`: the positions file is all there is.
    exact: bool,
    /// `(device, inode, offset)`.
    files: Vec<(u64, u64, u64)>,
}

/// The first bytes of a tail source's mark, so no other mark is taken for one.
const MARK_MAGIC: &[u8; 6] = b"SGTL1:";

fn encode_mark(m: &TailMark) -> Vec<u8> {
    let mut out = MARK_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(m).unwrap_or_default());
    out
}

fn decode_mark(bytes: &[u8]) -> Option<TailMark> {
    postcard::from_bytes(bytes.strip_prefix(MARK_MAGIC)?).ok()
}

/// Gives each tail source of a channel a mark stream: the one whose mark names it, else one
/// with no mark or the mark of a source no longer configured (whose progress is forgotten).
/// Fails if the channel has fewer streams than tail sources.
pub fn assign_streams(
    channel: &sluicegate_file::FileChannel,
    sources: &[String],
) -> Result<HashMap<String, u16>, String> {
    let streams = channel.config().marks;
    let owners: Vec<Option<String>> = (0..streams)
        .map(|s| {
            channel
                .mark(s)
                .and_then(|m| decode_mark(&m))
                .map(|m| m.source)
        })
        .collect();
    let mut assigned = HashMap::new();
    for name in sources {
        if let Some(s) = owners.iter().position(|o| o.as_deref() == Some(name)) {
            assigned.insert(name.clone(), s as u16);
        }
    }
    let taken: Vec<u16> = assigned.values().copied().collect();
    let mut free = (0..streams).filter(|&s| {
        let held = owners[s as usize]
            .as_ref()
            .is_some_and(|o| sources.contains(o));
        !held && !taken.contains(&s)
    });
    for name in sources {
        if assigned.contains_key(name) {
            continue;
        }
        let Some(s) = free.next() else {
            return Err(format!(
                "the channel has {streams} mark streams (`marks` in its sluicegate.toml) for {} tail sources: each tail source needs one",
                sources.len()
            ));
        };
        assigned.insert(name.clone(), s);
    }
    Ok(assigned)
}

/// The positions file's positions, and the positions to start from: those, with the files the
/// last commit moved taken from its mark, which the channel kept with that commit (the file is
/// written after every commit, so it can miss only the last one).
fn starting_positions(
    served: &Served,
    settings: &TailSettings,
) -> Result<(Positions, Positions), String> {
    let on_disk: Positions = positions_or_start_over(&settings.positions)?
        .into_iter()
        .map(|p| ((p.dev, p.inode), p.offset))
        .collect();
    let mut known = on_disk.clone();
    let mark = served
        .channel
        .mark(settings.stream)
        .and_then(|m| decode_mark(&m))
        .filter(|m| m.source == settings.name);
    match mark {
        Some(m) if m.exact => {
            tracing::info!(
                files = m.files.len(),
                "tail: the last commit's positions come from the channel's mark"
            );
            known.extend(m.files.into_iter().map(|(d, i, o)| ((d, i), o)));
        }
        Some(_) => tracing::warn!(
            "tail: the last commit's positions did not fit in the channel's mark: its batch may be read again"
        ),
        None => {}
    }
    Ok((on_disk, known))
}

/// Reads the positions file; a missing file means no positions.
pub fn load_positions(path: &Path) -> Result<Vec<Position>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<PositionsFile>(&bytes)
            .map(|p| p.files)
            .map_err(|e| format!("{} is not a positions file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The positions to start from. A positions file that does not parse is kept aside (renamed
/// with `.corrupt` added) and the files are read from their start: duplicates, never loss, and
/// never a source that cannot start.
fn positions_or_start_over(path: &Path) -> Result<Vec<Position>, String> {
    match load_positions(path) {
        Ok(p) => Ok(p),
        Err(why) if path.exists() => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            std::fs::rename(path, &aside)
                .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
            tracing::warn!(
                "tail: {why}; kept as {}, and every file is read again from its start (lines may be delivered twice)",
                Path::new(&aside).display()
            );
            Ok(Vec::new())
        }
        Err(why) => Err(why),
    }
}

struct Tracked {
    path: PathBuf,
    file: File,
    offset: u64,
    /// True if the last scan of the globs matched it.
    matched: bool,
}

/// The largest read at once from one file.
const CHUNK_BYTES: usize = 256 << 10;

/// Follows the files until `stop` is set. Fails only when the channel fails or the positions
/// file cannot be written.
pub fn run_tail(
    served: &Served,
    settings: &TailSettings,
    stop: &AtomicBool,
    metrics: &Component,
) -> Result<(), String> {
    let max_event = served.channel.config().max_event_bytes as usize;
    let mark_room = served.channel.config().mark_bytes as usize;
    // `on_disk`: what the positions file says; every other position goes in the next mark.
    let (mut on_disk, mut known) = starting_positions(served, settings)?;
    let mut warned_inexact = false;
    let mut files: BTreeMap<(u64, u64), Tracked> = BTreeMap::new();
    let mut last_scan: Option<Instant> = None;
    let mut buf = vec![0u8; CHUNK_BYTES.max(max_event + 1)];
    // Bounded by `stop`.
    while !stop.load(Ordering::Relaxed) {
        if last_scan.is_none_or(|t| t.elapsed() >= settings.poll) {
            scan(settings, &mut files, &mut known);
            last_scan = Some(Instant::now());
        }
        let mut events: Vec<Vec<u8>> = Vec::new();
        let mut moved: Vec<((u64, u64), u64)> = Vec::new();
        for (id, t) in files.iter_mut() {
            let room = settings.batch as usize - events.len();
            if room == 0 {
                break;
            }
            let before = t.offset;
            let end = read_lines(t, &mut buf, room, max_event, &mut events, metrics);
            if end != before {
                moved.push((*id, end));
            }
        }
        if moved.is_empty() {
            sleep_unless(stop, settings.poll);
            continue;
        }
        let started = Instant::now();
        let n = events.len() as u64;
        // Every position after this batch that the positions file does not hold goes in its
        // transaction (even one of skipped lines only).
        let mut mark = TailMark {
            source: settings.name.clone(),
            exact: true,
            files: files
                .iter()
                .map(|(&(dev, ino), t)| {
                    let moved_to = moved.iter().find(|(id, _)| *id == (dev, ino));
                    (dev, ino, moved_to.map_or(t.offset, |&(_, end)| end))
                })
                .filter(|&(dev, ino, offset)| on_disk.get(&(dev, ino)) != Some(&offset))
                .collect(),
        };
        let mut bytes = encode_mark(&mark);
        if bytes.len() > mark_room {
            if !warned_inexact {
                warned_inexact = true;
                tracing::warn!(
                    files = mark.files.len(),
                    mark_bytes = mark_room,
                    "tail: the positions of the files one batch moved do not fit in the channel's mark_bytes: a kill may repeat such a batch (raise mark_bytes, or lower the batch)"
                );
            }
            mark.exact = false;
            mark.files.clear();
            bytes = encode_mark(&mark);
        }
        ChannelCounters::add(&served.counters.put_attempts, n);
        let mut tx = served.channel.begin().map_err(|e| e.to_string())?;
        let mut put_all = || -> Result<(), sluicegate_file::FileChannelError> {
            for e in &events {
                tx.put(e)?;
            }
            tx.set_mark(settings.stream, &bytes)
        };
        if let Err(e) = put_all() {
            // Nothing is committed and no position moves: the same lines are read again.
            drop(tx);
            metrics.errors.inc();
            tracing::warn!("tail: cannot put {n} lines, trying again: {e}");
            sleep_unless(stop, settings.poll);
            continue;
        }
        tx.commit().map_err(|e| e.to_string())?;
        ChannelCounters::add(&served.counters.put_successes, n);
        on_disk = advance(&mut files, &mut known, &moved, &settings.positions)?;
        metrics.events.inc_by(n);
        metrics.batches.inc();
        metrics.latency.observe(started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Matches the globs, opening new files and forgetting old ones read to their end.
fn scan(settings: &TailSettings, files: &mut BTreeMap<(u64, u64), Tracked>, known: &mut Positions) {
    for t in files.values_mut() {
        t.matched = false;
    }
    for pattern in &settings.paths {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.flatten() {
            // The file is opened first and its identity read from the open file: a rotation
            // between a look at the path and the open would otherwise pair one file's saved
            // position with another file's bytes.
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            if let Some(t) = files.get_mut(&id) {
                t.matched = true;
                t.path = path;
                continue;
            }
            let offset = match known.get(&id) {
                Some(&o) => o,
                None if settings.from_end => meta.len(),
                None => 0,
            };
            tracing::info!(path = %path.display(), offset, "tail: following");
            files.insert(
                id,
                Tracked {
                    path,
                    file,
                    offset,
                    matched: true,
                },
            );
        }
    }
    // A file no longer matched (rotated away, deleted) is dropped once read to its end.
    files.retain(|id, t| {
        let len = t.file.metadata().map(|m| m.len()).unwrap_or(0);
        let keep = t.matched || t.offset < len;
        if !keep {
            known.remove(id);
        }
        keep
    });
}

/// Reads whole lines of `t` from its offset into `events` (at most `room`), skipping lines over
/// `max_event`; returns the offset just after the last whole line read or skipped. `buf` holds
/// more than `max_event` bytes, so any line short enough to be an event fits in one read.
fn read_lines(
    t: &mut Tracked,
    buf: &mut [u8],
    room: usize,
    max_event: usize,
    events: &mut Vec<Vec<u8>>,
    metrics: &Component,
) -> u64 {
    let len = t.file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < t.offset {
        tracing::warn!(path = %t.path.display(), "tail: the file shrank (truncated): reading from its start");
        t.offset = 0;
    }
    let mut pos = t.offset;
    let mut taken = 0;
    // Bounded by `room` and the file's length: each turn moves `pos` forward or stops.
    while taken < room && pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        if t.file.read_exact_at(&mut buf[..n], pos).is_err() {
            break;
        }
        let mut from = 0;
        while taken < room {
            let Some(i) = buf[from..n].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = &buf[from..from + i];
            if line.len() > max_event {
                metrics.rejected.inc();
                tracing::warn!(path = %t.path.display(), offset = pos + from as u64, bytes = line.len(), "tail: a line over max_event_bytes is skipped");
            } else {
                events.push(line.to_vec());
                taken += 1;
            }
            from += i + 1;
        }
        if from > 0 {
            pos += from as u64;
            continue;
        }
        if n <= max_event {
            // A partial last line: wait for its newline.
            break;
        }
        // No newline in more than max_event bytes: skip the line once its end is written.
        match newline_after(&t.file, pos + n as u64, len, &mut buf[..CHUNK_BYTES]) {
            Some(end) => {
                metrics.rejected.inc();
                tracing::warn!(path = %t.path.display(), offset = pos, bytes = end - pos, "tail: a line over max_event_bytes is skipped");
                pos = end + 1;
            }
            None => break,
        }
    }
    pos
}

/// The offset of the first newline at or after `from`, before `len`.
fn newline_after(file: &File, mut from: u64, len: u64, buf: &mut [u8]) -> Option<u64> {
    // Bounded by `len`.
    while from < len {
        let n = ((len - from) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], from).ok()?;
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Some(from + i as u64);
        }
        from += n as u64;
    }
    None
}

/// Moves the read positions past what was just committed, and writes them to the positions
/// file (the channel's mark already holds them). Returns what the file now says.
fn advance(
    files: &mut BTreeMap<(u64, u64), Tracked>,
    known: &mut Positions,
    moved: &[((u64, u64), u64)],
    positions: &Path,
) -> Result<Positions, String> {
    for &(id, end) in moved {
        if let Some(t) = files.get_mut(&id) {
            t.offset = end;
        }
        known.insert(id, end);
    }
    write_positions(positions, files)?;
    Ok(files.iter().map(|(&id, t)| (id, t.offset)).collect())
}

fn write_positions(path: &Path, files: &BTreeMap<(u64, u64), Tracked>) -> Result<(), String> {
    let list = PositionsFile {
        files: files
            .iter()
            .map(|(&(dev, inode), t)| Position {
                dev,
                inode,
                path: t.path.clone(),
                offset: t.offset,
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
    crate::home::write_file_durably(path, &text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    use sluicegate_file::{FileChannel, FileChannelConfig};

    fn channel(dir: &Path) -> Served {
        std::fs::create_dir_all(dir).unwrap();
        let config = FileChannelConfig {
            max_file_bytes: 1 << 20,
            max_event_bytes: 64,
            minimum_required_space_bytes: 0,
            checkpoint_interval_ms: 0,
            ..FileChannelConfig::in_dir(dir)
        };
        Served::new("t".into(), Arc::new(FileChannel::open(config).unwrap()))
    }

    /// A source named `t` following `glob`, its positions in `dir/pos`, on mark stream `stream`.
    fn settings(glob: String, dir: &Path, stream: u16) -> TailSettings {
        TailSettings {
            name: "t".into(),
            stream,
            paths: vec![glob],
            positions: dir.join("pos"),
            batch: 10,
            poll: Duration::from_millis(5),
            from_end: false,
        }
    }

    fn drain(served: &Served) -> Vec<String> {
        let mut tx = served.channel.begin().unwrap();
        let mut out = Vec::new();
        while let Some(e) = tx.take_vec().unwrap() {
            out.push(String::from_utf8(e).unwrap());
        }
        tx.commit().unwrap();
        out
    }

    /// Runs the source until `done` says the channel holds what it should (bounded), then stops
    /// it.
    fn run_until(served: &Served, settings: &TailSettings, done: impl Fn(&Served) -> bool) {
        let stop = AtomicBool::new(false);
        let metrics = crate::metrics::Metrics::new(vec![]).component("source", "t", "t");
        std::thread::scope(|s| {
            let h = s.spawn(|| run_tail(served, settings, &stop, &metrics));
            let until = Instant::now() + Duration::from_secs(60);
            while !done(served) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap().unwrap();
        });
    }

    /// A truncated file is read again from its start, a line over max_event_bytes is skipped
    /// (the lines around it are kept), a partial last line waits for its newline, and a corrupt
    /// positions file (with no mark in the channel) is kept aside while every file is read from
    /// its start.
    #[test]
    fn truncation_long_lines_partial_lines_and_a_corrupt_positions_file() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel(&tmp.path().join("ch"));
        let log = tmp.path().join("app.log");
        let settings = settings(log.display().to_string(), tmp.path(), 0);
        let mut f = std::fs::File::create(&log).unwrap();
        write!(f, "a\n{}\nb\npart", "x".repeat(100)).unwrap();
        run_until(&served, &settings, |s| s.channel.len() >= 2);
        assert_eq!(drain(&served), ["a", "b"]);
        // The partial line completes; then the file is truncated and rewritten shorter.
        writeln!(f, "ial").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["partial"]);
        f.set_len(0).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "c").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["c"]);
        // A positions file of garbage, on a channel that holds no mark for the source (so the
        // file is all there is): kept aside, and the file is read again from its start.
        let fresh = channel(&tmp.path().join("ch2"));
        std::fs::write(&settings.positions, b"\xff garbage").unwrap();
        run_until(&fresh, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&fresh), ["c"]);
        let mut aside = settings.positions.as_os_str().to_owned();
        aside.push(".corrupt");
        assert_eq!(std::fs::read(&aside).unwrap(), b"\xff garbage");
        assert!(load_positions(&settings.positions).is_ok());
    }

    /// The positions travel in the channel's mark: a restart whose positions file is stale (a
    /// kill between the commit and that file's write) or gone continues from the mark, so no
    /// line is read twice.
    #[test]
    fn a_restart_continues_from_the_mark_not_a_stale_positions_file() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel(&tmp.path().join("ch"));
        let log = tmp.path().join("app.log");
        let settings = settings(log.display().to_string(), tmp.path(), 3);
        let mut f = std::fs::File::create(&log).unwrap();
        writeln!(f, "a\nb").unwrap();
        run_until(&served, &settings, |s| s.channel.len() >= 2);
        assert_eq!(drain(&served), ["a", "b"]);
        let stale = std::fs::read(&settings.positions).unwrap();
        writeln!(f, "c").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["c"]);
        // As if the kill came after the commit of "c" and before the positions file's write.
        std::fs::write(&settings.positions, &stale).unwrap();
        writeln!(f, "d").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["d"], "c is not read again");
        std::fs::remove_file(&settings.positions).unwrap();
        writeln!(f, "e").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["e"]);
        let mark = decode_mark(&served.channel.mark(3).unwrap()).unwrap();
        assert_eq!(mark.source, "t");
        assert!(mark.exact);
        assert_eq!(mark.files.len(), 1);
        assert_eq!(mark.files[0].2, 10, "five lines of two bytes");
    }

    /// Two kills in a row, each between a commit and the positions file's write: the run in
    /// between reads another file, and its mark must still carry the first file's position,
    /// which only the previous mark had.
    #[test]
    fn two_kills_in_a_row_repeat_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel(&tmp.path().join("ch"));
        let (one, two) = (tmp.path().join("one.log"), tmp.path().join("two.log"));
        let settings = settings(
            tmp.path().join("*.log").display().to_string(),
            tmp.path(),
            0,
        );
        let mut f1 = std::fs::File::create(&one).unwrap();
        let mut f2 = std::fs::File::create(&two).unwrap();
        writeln!(f1, "a").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["a"]);
        let stale = std::fs::read(&settings.positions).unwrap();
        writeln!(f1, "b").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["b"]);
        std::fs::write(&settings.positions, &stale).unwrap(); // first kill
        writeln!(f2, "c").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["c"], "b is not read again");
        std::fs::write(&settings.positions, &stale).unwrap(); // second kill
        writeln!(f2, "d").unwrap();
        run_until(&served, &settings, |s| !s.channel.is_empty());
        assert_eq!(drain(&served), ["d"], "neither b nor c is read again");
    }

    /// Each tail source keeps its stream across restarts; a removed source's stream is given
    /// to a new one; more sources than streams is an error that says so.
    #[test]
    fn streams_are_kept_reused_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let served = channel(&tmp.path().join("ch"));
        let ch = &served.channel;
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let give = |source: &str, stream: u16| {
            let mut tx = ch.begin().unwrap();
            let m = TailMark {
                source: source.into(),
                exact: true,
                files: vec![],
            };
            tx.set_mark(stream, &encode_mark(&m)).unwrap();
            tx.commit().unwrap();
        };
        give("b", 0);
        give("gone", 1);
        let a = assign_streams(ch, &names(&["a", "b"])).unwrap();
        assert_eq!(a["b"], 0, "b keeps its stream");
        assert_eq!(a["a"], 1, "the removed source's stream is reused");
        let many: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
        let e = assign_streams(ch, &many).unwrap_err();
        assert!(
            e.contains("8 mark streams") && e.contains("9 tail sources"),
            "{e}"
        );
    }
}
