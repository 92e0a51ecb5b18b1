//! The operator program, run as a real process on real directories.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{run, sg};

fn ok(args: &[&str], stdin: &str) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args, "")).expect("JSON report")
}

/// A fresh channel home with small log files (so segments roll) and no free-space floor.
struct Home {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: String,
}

impl Home {
    /// A home of 64 KiB log files holding `ev-00000` to `ev-07999`, put in batches of 500 (so
    /// they span log files 0 to 3), and those events.
    fn with_8000_events() -> (Home, Vec<String>) {
        let h = Home::new(65536);
        let all = lines("ev", 8000);
        h.put(&all, 500);
        (h, all)
    }

    fn new(file_bytes: u32) -> Home {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let dir = root.join("ch").display().to_string();
        let fb = file_bytes.to_string();
        ok(
            &[
                "put",
                "--dir",
                &dir,
                "--file-bytes",
                &fb,
                "--min-free-bytes",
                "0",
            ],
            "",
        );
        Home {
            _tmp: tmp,
            root,
            dir,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    fn put(&self, lines: &[String], batch: u32) -> String {
        let mut input = lines.join("\n");
        input.push('\n');
        ok(
            &["put", "--dir", &self.dir, "--batch", &batch.to_string()],
            &input,
        )
    }

    fn take_all(&self) -> Vec<String> {
        ok(&["take", "--dir", &self.dir], "")
            .lines()
            .map(String::from)
            .collect()
    }

    fn stats(&self) -> Value {
        json(&["stats", "--dir", &self.dir, "--json"])
    }
}

/// The manifest of a backup or savepoint directory.
fn manifest(dir: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(dir).join("sluicegate-backup.json"));
    serde_json::from_str(&text.expect("manifest")).expect("JSON manifest")
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {err}"
    );
}

#[test]
fn put_commits_every_batch_and_take_delivers_in_order() {
    let h = Home::new(65536);
    let ev = lines("ev", 7);
    assert_eq!(h.put(&ev, 3), "committed 3\ncommitted 6\ncommitted 7\n");
    // A last line without a newline is an event too; an empty line is an empty event.
    assert_eq!(
        ok(&["put", "--dir", &h.dir], "\nlast-without-newline"),
        "committed 2\n"
    );
    let first = ok(
        &["take", "--dir", &h.dir, "--batch", "2", "--limit", "5"],
        "",
    );
    assert_eq!(first, ev[..5].join("\n") + "\n");
    let rest = h.take_all();
    assert_eq!(rest, ["ev-00005", "ev-00006", "", "last-without-newline"]);
    assert_eq!(
        ok(&["take", "--dir", &h.dir], ""),
        "",
        "empty channel: nothing"
    );
    assert_eq!(h.stats()["depth"], 0);
}

#[test]
fn put_on_default_settings_creates_the_home_and_its_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("new-home");
    let d = dir.display().to_string();
    assert_eq!(ok(&["put", "--dir", &d], "one\ntwo\n"), "committed 2\n");
    for sub in ["checkpoint", "backup", "data", "sluicegate.toml"] {
        assert!(dir.join(sub).exists(), "{sub} missing");
    }
    let s = json(&["stats", "--dir", &d, "--json"]);
    assert_eq!(s["depth"], 2);
    assert_eq!(s["capacity"], 1_000_000);
    assert_eq!(s["recovery"], "checkpoint");
    assert_eq!(ok(&["take", "--dir", &d], ""), "one\ntwo\n");
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1_with_one_line() {
    let h = Home::new(65536);
    assert_one_line_error(
        &run(&["take", "--dir", &h.dir, "--batch", "0"], ""),
        2,
        "--batch",
    );
    assert_one_line_error(
        &run(&["put", "--dir", &h.dir, "--batch", "0"], ""),
        2,
        "--batch",
    );
    assert_one_line_error(
        &run(&["take", "--dir", &h.dir, "--frobnicate"], ""),
        2,
        "--frobnicate",
    );
    assert_one_line_error(&run(&["verify"], ""), 2, "--dir");
    assert_one_line_error(&run(&["nonsense"], ""), 2, "nonsense");
    // A batch above the channel's transaction capacity is a usage error too.
    assert_one_line_error(
        &run(&["put", "--dir", &h.dir, "--batch", "999999"], "x\n"),
        2,
        "transaction_capacity",
    );
    // A fixed setting cannot change after creation.
    assert_one_line_error(
        &run(&["put", "--dir", &h.dir, "--capacity", "5"], "x\n"),
        2,
        "--capacity",
    );
    let missing = h.path("missing");
    for cmd in ["take", "stats", "verify", "dump", "checkpoint", "repair"] {
        let out = run(&[cmd, "--dir", &missing], "");
        assert_one_line_error(&out, 1, "does not exist");
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
    assert!(
        !Path::new(&missing).exists(),
        "take must not create a missing DIR"
    );
    // A line above max_event_bytes is skipped (never held whole), named in one line, and the
    // put goes on from the next newline; it exits 1.
    let big = "x".repeat(70_000);
    let out = run(
        &["put", "--dir", &h.dir, "--batch", "1"],
        &format!("fine\n{big}\nafter\n"),
    );
    assert_one_line_error(&out, 1, "line 2 over max_event_bytes");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "committed 1\ncommitted 2\n"
    );
    assert_eq!(h.take_all(), ["fine", "after"]);
}

/// Starts `put --batch 1` and feeds it `n` lines, waiting for each commit, then returns it still
/// running (holding the channel).
fn running_put(
    dir: &str,
    n: usize,
) -> (
    Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = sg()
        .args(["put", "--dir", dir, "--batch", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn put");
    let mut input = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    for i in 0..n {
        writeln!(input, "line-{i:05}").expect("feed");
        input.flush().expect("flush");
        let mut l = String::new();
        out.read_line(&mut l).expect("read committed");
        assert_eq!(l, format!("committed {}\n", i + 1));
    }
    (child, input, out)
}

/// While a producer owns the home, other producers, consumers and `stats` go through it, and
/// the commands that read or rewrite the files themselves fail at once, naming the lock or the
/// owner, and change nothing.
#[test]
fn beside_a_running_producer_clients_work_and_file_commands_fail_at_once() {
    let h = Home::new(65536);
    ok(&["backup", "--dir", &h.dir, "--to", &h.path("bk0")], "");
    let (mut child, input, _out) = running_put(&h.dir, 3);
    for args in [
        vec!["verify", "--dir", &h.dir],
        vec!["backup", "--dir", &h.dir, "--to", &h.path("bk")],
        vec!["repair", "--dir", &h.dir],
        vec!["migrate", "--dir", &h.dir, "--log-files", "32"],
    ] {
        let started = Instant::now();
        let out = run(&args, "");
        assert_one_line_error(&out, 1, "sluicegate.lock");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "must not wait for the lock"
        );
        if args[0] == "repair" || args[0] == "migrate" {
            // Refused before it changes anything, not halfway through.
            assert_one_line_error(&out, 1, &format!("stop it before a {}", args[0]));
        }
    }
    // A forced restore is refused too, and leaves the home as it was for its owner (it once
    // left its "unfinished restore" marker behind, and every later command refused the home).
    let out = run(
        &[
            "restore",
            "--from",
            &h.path("bk0"),
            "--dir",
            &h.dir,
            "--force",
        ],
        "",
    );
    assert_one_line_error(&out, 1, &format!("process {}", child.id()));
    assert_eq!(ok(&["put", "--dir", &h.dir], "beside\n"), "committed 1\n");
    let live = h.stats();
    assert_eq!(live["depth"], 4, "{live}");
    assert_eq!(live["owner_pid"], child.id(), "{live}");
    let mut expected = lines("line", 3);
    expected.push("beside".into());
    assert_eq!(h.take_all(), expected);
    drop(input);
    assert!(child.wait().expect("wait").success());
    assert_eq!(h.take_all(), Vec::<String>::new());
}

/// The brief's side-by-side case: one follower and many short producers started at random
/// moments on one home. Every producer succeeds, the follower receives every line exactly once
/// and in order per producer, while the producers run.
#[test]
fn many_short_producers_and_one_follower_share_a_home() {
    let h = Home::new(1 << 20);
    let mut follower = sg()
        .args(["take", "--dir", &h.dir, "--follow", "--batch", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn take --follow");
    let out = BufReader::new(follower.stdout.take().expect("stdout"));
    let producers: u32 = std::env::var("SLUICEGATE_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let per: usize = 20;
    let dir = h.dir.clone();
    let feeders: Vec<_> = (0..producers)
        .map(|p| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                // Spread the starts over about 300 ms, as the report did.
                std::thread::sleep(Duration::from_millis(u64::from(p * 5 % 300)));
                let input: String = (0..per).map(|i| format!("p{p:03}-{i:03}\n")).collect();
                run(&["put", "--dir", &dir, "--batch", "3"], &input)
            })
        })
        .collect();
    for (p, f) in feeders.into_iter().enumerate() {
        let o = f.join().expect("producer thread");
        assert!(
            o.status.success(),
            "producer {p} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let total = producers as usize * per;
    let mut got = Vec::with_capacity(total);
    let mut out = out;
    while got.len() < total {
        let mut l = String::new();
        let n = out.read_line(&mut l).expect("read follower");
        assert!(n > 0, "the follower ended after {} lines", got.len());
        got.push(l.trim_end().to_string());
    }
    // SIGINT: the follower rolls back nothing (it is idle), hands over and exits cleanly.
    // SAFETY: kill(2) with a pid of our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let status = follower.wait().expect("wait follower");
    let mut err = String::new();
    let _ = follower
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut err));
    assert!(status.success(), "follower: {status}: {err}");
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<&str, i32> = Default::default();
    for line in &got {
        assert!(seen.insert(line.clone()), "{line} delivered twice");
        let (producer, i) = line.split_once('-').expect("p-i");
        let i: i32 = i.parse().expect("number");
        let prev = last.insert(producer, i).unwrap_or(-1);
        assert_eq!(i, prev + 1, "{producer}'s lines out of order at {line}");
    }
    assert_eq!(seen.len(), total);
    assert_eq!(h.take_all(), Vec::<String>::new(), "nothing left behind");
}

/// An event put while a follower waits reaches it while the producer still runs.
#[test]
fn a_follower_receives_while_the_producer_runs() {
    let h = Home::new(65536);
    let mut follower = sg()
        .args(["take", "--dir", &h.dir, "--follow", "--batch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn take --follow");
    let mut out = BufReader::new(follower.stdout.take().expect("stdout"));
    let (mut producer, input, _pout) = running_put(&h.dir, 2);
    for want in ["line-00000", "line-00001"] {
        let mut l = String::new();
        out.read_line(&mut l).expect("read");
        assert_eq!(l.trim_end(), want);
    }
    assert!(
        producer.try_wait().expect("try_wait").is_none(),
        "the producer is still running"
    );
    drop(input);
    assert!(producer.wait().expect("wait").success());
    follower.kill().expect("kill");
    follower.wait().expect("wait");
}

/// `take --exec` commits a batch only when the command exits 0: a failing command leaves every
/// event in the channel, and a succeeding one delivers each once.
#[test]
fn take_exec_commits_only_when_the_command_succeeds() {
    let h = Home::new(65536);
    h.put(&lines("e", 25), 25);
    let out = h.path("delivered");
    let flag = h.path("ok");
    let cmd = format!("test -f {flag} || exit 7; cat >> {out}");
    let mut failing = sg()
        .args(["take", "--dir", &h.dir, "--batch", "10", "--exec", &cmd])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn take --exec");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        h.stats()["depth"],
        25,
        "nothing committed while the command fails"
    );
    std::fs::write(&flag, "").expect("flag");
    let status = failing.wait().expect("wait");
    assert!(status.success());
    let delivered = std::fs::read_to_string(&out).expect("delivered");
    assert_eq!(delivered.lines().collect::<Vec<_>>(), lines("e", 25));
    assert_eq!(h.stats()["depth"], 0);
}

#[test]
fn a_killed_take_redelivers_only_what_it_did_not_commit() {
    let h = Home::new(1 << 20);
    let ev = lines("ev", 3000);
    h.put(&ev, 500);
    let mut child = sg()
        .args(["take", "--dir", &h.dir, "--batch", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn take");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut before = Vec::new();
    for _ in 0..100 {
        let mut l = String::new();
        out.read_line(&mut l).expect("read");
        before.push(l.trim_end().to_string());
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    // Everything it wrote to stdout before dying counts as delivered.
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("drain");
    before.extend(rest.lines().map(String::from));
    let after = h.take_all();
    // At least once: every event is delivered; the overlap is at most the batch that was
    // written but not committed.
    let mut all: Vec<&String> = before.iter().chain(&after).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), ev.len(), "an event was lost");
    let overlap = after.iter().filter(|e| before.contains(e)).count();
    assert!(
        overlap <= 7,
        "{overlap} events redelivered, more than one batch"
    );
    // Order: what comes after the kill continues where the committed part stopped.
    assert_eq!(after.last(), ev.last());
}

#[test]
fn stats_reports_each_recovery_path() {
    let h = Home::new(65536);
    let s = h.stats();
    assert_eq!(
        (s["depth"].as_u64(), s["recovery"].as_str()),
        (Some(0), Some("checkpoint"))
    );
    // A producer killed after three commits: no checkpoint since, so the log is replayed.
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = tmp.path().join("fresh").display().to_string();
    let (mut child, _input, _out) = running_put(&fresh, 3);
    child.kill().expect("kill");
    child.wait().expect("wait");
    let s = json(&["stats", "--dir", &fresh, "--json"]);
    assert_eq!(s["recovery"], "replay", "{s}");
    assert_eq!(s["depth"], 3);
    assert_eq!(s["replay"]["put_commits"], 3);
    // stats wrote nothing: it recovers the same way again.
    assert_eq!(
        json(&["stats", "--dir", &fresh, "--json"])["recovery"],
        "replay"
    );
    // A producer killed before its first line: nothing in the log, no checkpoint: new.
    let empty = tmp.path().join("empty").display().to_string();
    let (mut child, _input, _out) = running_put(&empty, 0);
    // Wait until it has created the channel.
    let until = Instant::now() + Duration::from_secs(30);
    while !Path::new(&empty).join("data/sluicegate.dir").exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_eq!(
        json(&["stats", "--dir", &empty, "--json"])["recovery"],
        "new"
    );
    // The newest checkpoint damaged: the backup slot is used.
    h.put(&lines("a", 5), 5);
    ok(&["checkpoint", "--dir", &h.dir], "");
    let s = h.stats();
    let slot = s["checkpoint_slot"]
        .as_str()
        .expect("a checkpoint")
        .to_string();
    let file = if slot == "checkpoint" {
        Path::new(&h.dir).join("checkpoint/checkpoint.slot")
    } else {
        Path::new(&h.dir).join("backup/backup.slot")
    };
    damage(&file, 70);
    let s = h.stats();
    assert_eq!(s["recovery"], "backup", "{s}");
    assert_eq!(s["depth"], 5);
    // Its entries under an intact complete mark: the open says the newest checkpoint was
    // damaged, which no power cut can cause.
    assert_eq!(s["replay"]["newest_checkpoint_damaged"], true, "{s}");
    let text = ok(&["stats", "--dir", &h.dir], "");
    assert!(
        text.contains("WARNING     the newest checkpoint's entries are damaged"),
        "{text}"
    );
}

/// Flips every bit of one byte.
fn damage(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    f.write_all_at(&[!b[0]], offset).expect("write");
}

/// The file and offset of the put record whose body is `body`, from `dump --json`.
fn record_of(h: &Home, body: &str) -> (PathBuf, u64) {
    let (file, offset, _) = record_and_binding(h, body);
    (file, offset)
}

/// Also the record's segment number.
fn record_and_binding(h: &Home, body: &str) -> (PathBuf, u64, u64) {
    use sluicegate_core::record::{SegmentCheck, SegmentHeader, SEGMENT_HEADER_BYTES};
    let dump = ok(&["dump", "--dir", &h.dir, "--json"], "");
    for l in dump.lines() {
        let v: Value = serde_json::from_str(l).expect("JSON line");
        if v["type"] == "record" && v["body"] == body {
            let slot = v["slot"].as_u64().expect("slot");
            let file = Path::new(&h.dir).join(format!("data/log-{slot:06}.seg"));
            let mut hb = [0u8; SEGMENT_HEADER_BYTES];
            std::fs::File::open(&file)
                .and_then(|f| f.read_exact_at(&mut hb, 0))
                .expect("segment header");
            let SegmentCheck::Valid(seg) = SegmentHeader::decode(&hb) else {
                panic!("no valid header in {}", file.display());
            };
            assert_eq!(Some(seg.seq), v["seq"].as_u64());
            return (file, v["offset"].as_u64().expect("offset"), seg.binding());
        }
    }
    panic!("no record {body}");
}

/// Once the ring has gone round, log files are reused without erasing their bodies: past the
/// newest segment's records lie an earlier lap's. `verify` reports nothing there (before, a
/// torn tail), and every event is delivered once, in order.
#[test]
fn a_ring_that_went_round_verifies_clean_and_delivers_once() {
    let h = Home::new(65536);
    // 16 files of 64 KiB; a round writes about 70 KiB of records.
    for r in 0..20 {
        h.put(&lines(&format!("r{r:02}"), 2000), 500);
        assert_eq!(h.take_all().len(), 2000, "round {r}");
    }
    // More than a file's worth: this run opens the newest segment in a reused file.
    let last = lines("last", 3000);
    h.put(&last, 500);
    let v = json(&["verify", "--dir", &h.dir, "--json"]);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["warnings"], 0, "{v}");
    let dump = ok(&["dump", "--dir", &h.dir, "--json"], "");
    assert!(dump.contains("\"salt\":"), "segments show their salt");
    assert_eq!(h.take_all(), last);
}

#[test]
fn verify_is_clean_on_a_healthy_channel_and_finds_a_damaged_event() {
    let h = Home::new(65536);
    h.put(&lines("ev", 50), 10);
    ok(&["take", "--dir", &h.dir, "--limit", "5"], "");
    let v = json(&["verify", "--dir", &h.dir, "--json"]);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["queue"]["agree"], true);
    assert_eq!(v["queue"]["events"], 45);
    let text = ok(&["verify", "--dir", &h.dir], "");
    assert!(text.contains("clean"), "{text}");
    let dump = ok(&["dump", "--dir", &h.dir], "");
    assert!(
        dump.contains("put len 8") && dump.contains("\"ev-00049\""),
        "{dump}"
    );
    assert!(
        dump.contains("take-commit") && dump.contains("(newest)"),
        "{dump}"
    );

    // One byte of an event's body decays.
    let (file, offset) = record_of(&h, "ev-00020");
    damage(&file, offset + 16 + 3);
    let out = run(&["verify", "--dir", &h.dir, "--json"], "");
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["clean"], false);
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "corruption");
    assert_eq!(f["offset"], offset);
    assert!(f["file"].as_str().unwrap_or("").ends_with(".seg"));
    // The damaged event is never delivered, and the take says so; every other one is.
    let out = run(&["take", "--dir", &h.dir], "");
    assert_one_line_error(&out, 1, "1 queued events failed their checks when read");
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got.len(), 44);
    assert!(!got.contains(&"ev-00020".to_string()));
    let out = run(&["verify", "--dir", &h.dir, "--bogus"], "");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn repair_steps_over_a_damaged_length_so_later_events_survive() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ch").display().to_string();
    // A producer killed after 20 commits: no checkpoint, recovery replays the log.
    let (mut child, _i, _o) = running_put(&dir, 20);
    child.kill().expect("kill");
    child.wait().expect("wait");
    let h = Home {
        _tmp: tmp,
        root: PathBuf::new(),
        dir,
    };
    let (file, offset) = record_of(&h, "line-00005");
    // The length field of one put: replay can no longer find the record after it.
    damage(&file, offset + 6);
    assert_eq!(h.stats()["depth"], 5, "replay stops at the damage");
    let out = run(&["verify", "--dir", &h.dir], "");
    assert_eq!(out.status.code(), Some(1));
    let r = json(&["repair", "--dir", &h.dir, "--json"]);
    assert_eq!(r["repaired"], true, "{r}");
    let actions = r["actions"].to_string();
    assert!(actions.contains("replay steps over it"), "{actions}");
    // A copy of the file as it was.
    let copies = PathBuf::from(r["copies"].as_str().expect("copies dir"));
    let copy = std::fs::read_dir(&copies).expect("copies").count();
    assert_eq!(copy, 1);
    let s = h.stats();
    assert_eq!(s["depth"], 19, "{s}");
    let mut want = lines("line", 20);
    want.remove(5);
    assert_eq!(h.take_all(), want);
    // Repairing a healthy channel does nothing.
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("nothing to repair"), "{r}");
}

/// A log file that held queued events and is deleted, damaged at its start, cut short, zeroed
/// from its middle on, or has one record flipped, is never a silent hole: `stats` says how many
/// events are lost and where (each damage an open can see), `verify` fails, `take` refuses in
/// one line and delivers nothing (or, for the one flipped record, which only a full read finds,
/// skips it and says so); `repair` removes exactly those events, keeps every other one, writes a
/// report and exits 1, and `stats` shows the loss until `repair --acknowledge`; afterwards the
/// channel delivers the rest, in order, once, and a second `repair` finds nothing to do.
#[test]
fn a_lost_log_file_is_loud_and_repair_keeps_every_other_event() {
    for damage in [
        "deleted",
        "header overwritten",
        "cut short",
        "zeroed from the middle",
        "one record flipped",
    ] {
        let (h, all) = Home::with_8000_events();
        let seg = Path::new(&h.dir).join("data/log-000002.seg");
        // The puts the file holds (body, offset, length), from the dump before the damage.
        let dump = ok(&["dump", "--dir", &h.dir, "--json"], "");
        let puts: Vec<(String, u64, u64)> = dump
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "record" && v["kind"] == "put" && v["slot"] == 2)
            .filter_map(|v| {
                Some((
                    v["body"].as_str()?.to_string(),
                    v["offset"].as_u64()?,
                    v["len"].as_u64()?,
                ))
            })
            .collect();
        let seq2 = dump
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "record" && v["slot"] == 2)
            .and_then(|v| v["seq"].as_u64())
            .expect("segment 2's sequence number");
        assert!(puts.len() > 100, "segment 2 holds events");
        let middle = 32768u64;
        let flipped = &puts[puts.len() / 2];
        let lost_here = |(_, offset, len): &&(String, u64, u64)| match damage {
            "cut short" | "zeroed from the middle" => offset + 16 + len > middle,
            "one record flipped" => *offset == flipped.1,
            _ => true,
        };
        let in_seg: HashSet<String> = puts.iter().filter(lost_here).map(|p| p.0.clone()).collect();
        // Their event ids, as the repair report must list them.
        let lost_ids: HashSet<u128> = puts
            .iter()
            .filter(lost_here)
            .map(|p| (seq2 as u128) << 32 | p.1 as u128)
            .collect();
        assert!(!in_seg.is_empty() && in_seg.len() < 8000, "{damage}");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        match damage {
            "deleted" => std::fs::remove_file(&seg).expect("remove"),
            "header overwritten" => f.write_all(&[0x5a; 64]).expect("overwrite"),
            "cut short" => f.set_len(middle).expect("truncate"),
            "zeroed from the middle" => f
                .write_all_at(&vec![0u8; 65536 - middle as usize], middle)
                .expect("zero"),
            _ => f
                .write_all_at(&[0xff], flipped.1 + 16)
                .expect("flip a byte of a body"),
        }
        drop(f);
        let open_sees_it = damage != "one record flipped";
        let stats = ok(&["stats", "--dir", &h.dir], "");
        if open_sees_it {
            assert!(
                stats.contains(&format!("LOST        {} queued events", in_seg.len())),
                "{damage}: {stats}"
            );
            assert!(stats.contains("log-000002.seg"), "{damage}: {stats}");
            assert_eq!(h.stats()["replay"]["events_in_lost_segments"], in_seg.len());
        }
        let v = run(&["verify", "--dir", &h.dir], "");
        assert_eq!(v.status.code(), Some(1), "{damage}: verify must fail");
        let v = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.contains(&format!("{} queued events are in log files", in_seg.len())),
            "{damage}: {v}"
        );
        if open_sees_it {
            let out = run(&["take", "--dir", &h.dir], "");
            let expect = if damage == "cut short" {
                "log-000002.seg is cut short (32768 of 65536 bytes): "
            } else {
                "log-000002.seg is missing or damaged: "
            };
            assert_one_line_error(&out, 1, expect);
            assert!(
                String::from_utf8_lossy(&out.stderr)
                    .contains(&format!("{} queued events were in", in_seg.len())),
                "{damage}"
            );
            assert!(out.stdout.is_empty(), "{damage}: nothing is delivered");
        } else {
            // A take meets the damaged record: it delivers the rest and says what it skipped.
            let copy = h.root.join("copy");
            let cp = Command::new("cp")
                .args(["-a", &h.dir, &copy.display().to_string()])
                .status()
                .expect("cp");
            assert!(cp.success());
            let out = run(&["take", "--dir", &copy.display().to_string()], "");
            assert_one_line_error(&out, 1, "1 queued events failed their checks when read");
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7999);
        }
        let r = run(&["repair", "--dir", &h.dir], "");
        let text = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{damage}: {text}");
        assert!(
            text.contains(&format!("LOST {} queued events", in_seg.len())),
            "{damage}: {text}"
        );
        let report = text
            .lines()
            .find_map(|l| l.strip_prefix("a report of what was lost is in "))
            .expect("a report");
        let report = std::fs::read_to_string(report).expect("the report");
        let listed: HashSet<u128> = report
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(channel, _)| channel.len() == 32)
            .filter_map(|(_, id)| id.parse().ok())
            .collect();
        assert_eq!(
            listed, lost_ids,
            "{damage}: the report lists the lost events' ids"
        );
        // The loss stays in `stats` until acknowledged.
        assert_eq!(
            h.stats()["lost_by_repair"]["events"],
            in_seg.len(),
            "{damage}"
        );
        let text = ok(&["stats", "--dir", &h.dir], "");
        assert!(
            text.contains(&format!("REPAIRED    {} queued events", in_seg.len())),
            "{damage}: {text}"
        );
        let want: Vec<String> = all
            .iter()
            .filter(|e| !in_seg.contains(*e))
            .cloned()
            .collect();
        assert_eq!(h.take_all(), want, "{damage}");
        let again = ok(&["repair", "--dir", &h.dir], "");
        assert!(again.contains("nothing to repair"), "{damage}: {again}");
        let ack = ok(&["repair", "--dir", &h.dir, "--acknowledge"], "");
        assert!(
            ack.contains(&format!("acknowledged {}", in_seg.len())),
            "{damage}: {ack}"
        );
        assert!(h.stats()["lost_by_repair"].is_null(), "{damage}");
    }
}

/// The home describes itself: every directory's `sluicegate.dir` records the geometry
/// (`max_file_bytes`, `log_files`, the number of data directories). An edited fixed setting is
/// refused by `stats`, `take` and `repair` in one line naming the setting, the value on disk and
/// the way back, and nothing changes; a missing `sluicegate.toml` is read from what the media
/// record, and `repair` rebuilds it. A home made before the geometry was recorded still gets
/// the log's word over the settings: `repair` refuses, naming the setting to put back.
#[test]
fn repair_refuses_settings_the_log_contradicts_and_changes_nothing() {
    let (h, _) = Home::with_8000_events();
    // Enough bytes to reach slot 9 and beyond (opens go on in the newest log file).
    let more: Vec<String> = (0..600)
        .map(|i| format!("more-{i}-{}", "x".repeat(600)))
        .collect();
    for batch in more.chunks(100) {
        h.put(batch, 100);
    }
    let mut want = lines("ev", 8000);
    want.extend(more);
    let settings = Path::new(&h.dir).join("sluicegate.toml");
    let original = std::fs::read_to_string(&settings).expect("settings");
    let marker = Path::new(&h.dir).join("checkpoint/sluicegate.dir");
    let recorded = std::fs::read_to_string(&marker).expect("marker");
    assert!(
        recorded.contains("max_file_bytes = 65536") && recorded.contains("log_files = 1024"),
        "{recorded}"
    );
    let listing = |dir: &str| {
        let mut names: Vec<(String, u64)> = std::fs::read_dir(Path::new(&h.dir).join(dir))
            .expect("list")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(0, |m| m.len()),
                )
            })
            .collect();
        names.sort();
        names
    };
    assert!(
        listing("data")
            .iter()
            .any(|(name, _)| name == "log-000009.seg"),
        "{:?}",
        listing("data")
    );
    let before = (listing("data"), listing("checkpoint"));
    let other_disk = h.root.join("disk2").display().to_string();
    std::fs::create_dir(&other_disk).expect("a new disk");
    let edits = [
        (
            "log_files = 1024",
            "log_files = 8".to_string(),
            "log_files = 1024 back",
        ),
        (
            "max_file_bytes = 65536",
            "max_file_bytes = 131072".to_string(),
            "max_file_bytes = 65536 back",
        ),
        (
            "data_dirs = [",
            format!("data_dirs = [\"{other_disk}\", "),
            "put the data_dirs list as it was back",
        ),
    ];
    for (from, to, way_back) in edits {
        assert!(original.contains(from), "{original}");
        std::fs::write(&settings, original.replacen(from, &to, 1)).expect("edit");
        for cmd in ["stats", "take", "repair"] {
            let out = run(&[cmd, "--dir", &h.dir], "");
            assert_one_line_error(&out, 1, way_back);
            assert_one_line_error(&out, 1, "sluicegate migrate");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
            assert!(out.stdout.is_empty(), "{cmd} after {to}");
        }
        assert_eq!(
            (listing("data"), listing("checkpoint")),
            before,
            "a command changed files after {to}"
        );
    }
    // Settings gone: read from the media, and rebuilt by repair.
    std::fs::remove_file(&settings).expect("remove");
    assert_eq!(h.stats()["depth"], 8600);
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("rebuilt") && r.contains("was missing"), "{r}");
    let rebuilt = std::fs::read_to_string(&settings).expect("rebuilt settings");
    assert!(
        rebuilt.contains("max_file_bytes = 65536") && rebuilt.contains("log_files = 1024"),
        "{rebuilt}"
    );
    assert_eq!(
        (listing("data"), listing("checkpoint")),
        before,
        "repair changed files"
    );
    // A home from before the geometry was recorded: the log's headers still win.
    for dir in ["checkpoint", "backup", "data"] {
        let m = Path::new(&h.dir).join(dir).join("sluicegate.dir");
        let text = std::fs::read_to_string(&m).expect("marker");
        let legacy: String = text
            .lines()
            .filter(|l| !l.contains(" = ") || l.starts_with("format") || l.starts_with("role"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&m, legacy).expect("legacy marker");
    }
    std::fs::remove_file(&settings).expect("remove");
    let out = run(&["repair", "--dir", &h.dir], "");
    assert_one_line_error(&out, 1, "put max_file_bytes = 65536 back");
    std::fs::write(&settings, &original).expect("put back");
    assert_eq!(h.take_all(), want);
    // The open that took them recorded the geometry again.
    assert!(std::fs::read_to_string(&marker).is_ok_and(|t| t.contains("log_files = 1024")));
}

/// `migrate` is the one way to change the recorded geometry, and it loses nothing: every event
/// is copied, in order, into a channel of twice the log files, twice the file size and two data
/// directories; the old directories are kept whole; the directories record the new geometry and
/// the settings say it; afterwards every event is delivered once, in order. A migrate that
/// changes nothing is a usage error.
#[test]
fn migrate_changes_the_geometry_and_keeps_every_event() {
    let (h, _) = Home::with_8000_events();
    for i in 0..6 {
        h.put(&[format!("more-{i}")], 1);
    }
    let mut want = lines("ev", 8000);
    want.extend((0..6).map(|i| format!("more-{i}")));
    let out = run(&["migrate", "--dir", &h.dir], "");
    assert_one_line_error(&out, 2, "nothing to migrate");
    let second = h.root.join("disk2").display().to_string();
    let first = Path::new(&h.dir).join("data").display().to_string();
    let text = ok(
        &[
            "migrate",
            "--dir",
            &h.dir,
            "--log-files",
            "32",
            "--file-bytes",
            "131072",
            "--to-data-dir",
            &first,
            "--to-data-dir",
            &second,
        ],
        "",
    );
    assert!(text.contains("copied 8006 events"), "{text}");
    let kept: Vec<String> = std::fs::read_dir(&h.dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".before-migrate-"))
        .collect();
    assert_eq!(
        kept.len(),
        4,
        "checkpoint, backup, data and the settings: {kept:?}"
    );
    let marker =
        std::fs::read_to_string(Path::new(&second).join("sluicegate.dir")).expect("marker");
    assert!(
        marker.contains("log_files = 32")
            && marker.contains("max_file_bytes = 131072")
            && marker.contains("data_dirs = 2"),
        "{marker}"
    );
    let settings =
        std::fs::read_to_string(Path::new(&h.dir).join("sluicegate.toml")).expect("settings");
    assert!(settings.contains("log_files = 32"), "{settings}");
    assert!(
        std::fs::read_dir(&second)
            .expect("disk2")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg")),
        "the log now goes over both data directories"
    );
    let v = ok(&["verify", "--dir", &h.dir], "");
    assert!(v.contains("clean"), "{v}");
    assert_eq!(h.take_all(), want);
}

/// A log file renamed into an unused slot goes back to its own slot; a stray copy (beyond the
/// ring, or in an unused slot) is moved out: `stats` fails in one line until then, `repair`
/// exits 0, and every event is there.
#[test]
fn repair_puts_a_renamed_log_file_back_and_moves_a_stray_copy_out() {
    for case in [
        "renamed",
        "copied beyond the ring",
        "copied into an unused slot",
    ] {
        let (h, all) = Home::with_8000_events();
        let data = Path::new(&h.dir).join("data");
        match case {
            "renamed" => std::fs::rename(data.join("log-000002.seg"), data.join("log-000007.seg")),
            "copied beyond the ring" => {
                std::fs::copy(data.join("log-000001.seg"), data.join("log-000020.seg")).map(drop)
            }
            _ => std::fs::copy(data.join("log-000001.seg"), data.join("log-000009.seg")).map(drop),
        }
        .expect("damage");
        let out = run(&["stats", "--dir", &h.dir], "");
        if case != "copied into an unused slot" {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{case}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
            assert!(err.contains("sluicegate repair"), "{case}: {err}");
        }
        let r = ok(&["repair", "--dir", &h.dir], "");
        let expect = if case == "renamed" {
            "renamed to"
        } else {
            "moved"
        };
        assert!(r.contains(expect), "{case}: {r}");
        assert_eq!(h.take_all(), all, "{case}");
    }
}

/// No small file bricks a channel: each metadata file of a home (the lock file, the identity,
/// the settings, a format file) garbage, empty or missing is either harmless (every command
/// works) or named in one line and mended by `repair`; either way every event is there after.
#[test]
fn each_metadata_file_garbage_empty_or_missing_is_mended_or_harmless() {
    let garbage = [0xffu8, 0xfe, 0x00, 0x41, 0x80].repeat(10);
    for file in [
        "checkpoint/sluicegate.lock",
        "data/sluicegate.lock",
        "checkpoint/sluicegate.id",
        "sluicegate.toml",
        "backup/sluicegate.dir",
    ] {
        for damage in ["garbage", "empty", "missing"] {
            let h = Home::new(65536);
            let all = lines("ev", 300);
            h.put(&all, 50);
            let path = Path::new(&h.dir).join(file);
            match damage {
                "garbage" => std::fs::write(&path, &garbage).expect("garbage"),
                "empty" => std::fs::write(&path, b"").expect("empty"),
                _ => std::fs::remove_file(&path).expect("remove"),
            }
            let out = run(&["stats", "--dir", &h.dir, "--json"], "");
            let needs_repair = file.ends_with("sluicegate.dir")
                || (file == "sluicegate.toml" && damage == "garbage");
            if needs_repair {
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{file} {damage}: {err}");
                assert_eq!(err.trim_end().lines().count(), 1, "{file} {damage}: {err}");
                assert!(
                    err.contains(file.rsplit('/').next().unwrap_or(file)),
                    "{err}"
                );
                assert!(err.contains("sluicegate repair"), "{file} {damage}: {err}");
            } else {
                assert_eq!(out.status.code(), Some(0), "{file} {damage}");
                let v: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
                assert_eq!(v["depth"], 300, "{file} {damage}");
            }
            if needs_repair || file == "sluicegate.toml" {
                let r = ok(&["repair", "--dir", &h.dir], "");
                assert!(
                    r.contains("rebuilt") || r.contains("rewrote"),
                    "{file} {damage}: {r}"
                );
                if file == "sluicegate.toml" {
                    let text = std::fs::read_to_string(&path).expect("settings rebuilt");
                    assert!(text.contains("max_file_bytes = 65536"), "{text}");
                }
            }
            assert_eq!(h.take_all(), all, "{file} {damage}");
            let again = ok(&["repair", "--dir", &h.dir], "");
            assert!(
                again.contains("nothing to repair"),
                "{file} {damage}: {again}"
            );
        }
    }
}

/// A format file (`sluicegate.dir`) full of garbage, or missing, never bricks a channel: every
/// command names the file in one line, and `repair` rewrites it (keeping a copy of the damaged
/// one) when the directory holds the channel's files, after which every event is there.
#[test]
fn repair_rewrites_a_damaged_or_missing_format_file() {
    let h = Home::new(65536);
    h.put(&lines("ev", 30), 5);
    let marker = Path::new(&h.dir).join("checkpoint/sluicegate.dir");
    std::fs::write(&marker, [0xffu8, 0xfe, 0x00, 0x41, 0x80].repeat(10)).expect("garbage");
    for cmd in ["stats", "verify", "take"] {
        let out = run(&[cmd, "--dir", &h.dir], "");
        assert_one_line_error(&out, 1, "is not a Sluicegate format file");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sluicegate repair"), "{cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
    }
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("rewrote") && r.contains("damaged"), "{r}");
    assert!(
        std::fs::read_to_string(&marker).is_ok_and(|t| t.contains("role = checkpoint")),
        "the format file was not rewritten"
    );
    // Deleted, in a data directory: the next put refuses the directory, repair rewrites it.
    let data_marker = Path::new(&h.dir).join("data/sluicegate.dir");
    std::fs::remove_file(&data_marker).expect("remove");
    let out = run(&["put", "--dir", &h.dir], "more\n");
    assert_one_line_error(&out, 1, "sluicegate.dir");
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("rewrote") && r.contains("missing"), "{r}");
    h.put(&lines("more", 3), 5);
    let mut want = lines("ev", 30);
    want.extend(lines("more", 3));
    assert_eq!(h.take_all(), want);
}

#[test]
fn repair_pads_a_truncated_log_file_and_keeps_its_events() {
    let h = Home::new(65536);
    h.put(&lines("ev", 30), 5);
    let seg = Path::new(&h.dir).join("data/log-000000.seg");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(8192))
        .expect("truncate");
    let out = run(&["take", "--dir", &h.dir], "");
    assert_one_line_error(&out, 1, "bytes");
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("padded with zeros"), "{r}");
    assert_eq!(h.take_all(), lines("ev", 30));
}

#[test]
fn backup_restore_and_an_interrupted_backup() {
    let h = Home::new(65536);
    let ev = lines("ev", 200);
    h.put(&ev, 20);
    ok(&["take", "--dir", &h.dir, "--limit", "50"], "");
    let b = h.path("b1");
    let r = json(&["backup", "--dir", &h.dir, "--to", &b, "--json"]);
    assert_eq!(r["events"], 150);
    let manifest = manifest(&b);
    assert_eq!(manifest["kind"], "backup");
    assert_eq!(manifest["events"], 150);
    // Restore into a new home; the channel goes on from where the backup was taken.
    let target = h.path("restored");
    let r = json(&["restore", "--from", &b, "--dir", &target, "--json"]);
    assert_eq!(
        (r["events"].as_u64(), r["already"].as_bool()),
        (Some(150), Some(false))
    );
    assert_eq!(r["recovery"], "checkpoint");
    // Idempotent: the same restore again changes nothing.
    let r = json(&["restore", "--from", &b, "--dir", &target, "--json"]);
    assert_eq!(r["already"], true);
    let got = ok(&["take", "--dir", &target], "");
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        ev[50..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Now the home differs from the backup: refused without --force, replaced with it.
    let out = run(&["restore", "--from", &b, "--dir", &target], "");
    assert_one_line_error(&out, 1, "--force");
    // A forced restore over a running channel still respects its lock.
    let (mut child, input, _o) = running_put(&target, 1);
    assert_one_line_error(
        &run(&["restore", "--from", &b, "--dir", &target, "--force"], ""),
        1,
        "sluicegate.lock",
    );
    drop(input);
    assert!(child.wait().expect("wait").success());
    ok(&["restore", "--from", &b, "--dir", &target, "--force"], "");
    assert_eq!(json(&["stats", "--dir", &target, "--json"])["depth"], 150);
    // A directory holding anything else is refused too.
    let other = h.path("not-empty");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(Path::new(&other).join("notes.txt"), "mine").expect("write");
    assert_one_line_error(
        &run(&["restore", "--from", &b, "--dir", &other], ""),
        1,
        "not empty",
    );
    // Into data directories of another layout: segments are placed by number.
    let spread = h.path("spread");
    ok(
        &[
            "restore",
            "--from",
            &b,
            "--dir",
            &spread,
            "--data-dir",
            &h.path("d1"),
            "--data-dir",
            &h.path("d2"),
        ],
        "",
    );
    assert_eq!(json(&["stats", "--dir", &spread, "--json"])["depth"], 150);

    // Relative paths, from the directory the program runs in.
    for args in [
        ["backup", "--dir", "ch", "--to", "b-relative"],
        ["restore", "--from", "b-relative", "--dir", "r-relative"],
    ] {
        let out = sg().args(args).current_dir(&h.root).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!Path::new(&h.dir)
        .join("sluicegate.backup-in-progress")
        .exists());
    assert_eq!(
        json(&["stats", "--dir", &h.path("r-relative"), "--json"])["depth"],
        150
    );

    // A backup killed in the middle of its copy.
    let b2 = h.path("b2");
    let out = sg()
        .args(["backup", "--dir", &h.dir, "--to", &b2])
        .env("SLUICEGATE_TEST_ABORT_BACKUP_AFTER_FILES", "1")
        .stderr(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let partial = h.path(".b2.partial");
    assert!(Path::new(&partial).join("IN-PROGRESS").exists());
    assert!(!Path::new(&b2).exists());
    // Never restored.
    assert_one_line_error(
        &run(&["restore", "--from", &partial, "--dir", &h.path("r2")], ""),
        1,
        "incomplete",
    );
    assert_one_line_error(
        &run(&["restore", "--from", &b2, "--dir", &h.path("r2")], ""),
        1,
        "does not exist",
    );
    // The next backup cleans it up.
    let b3 = h.path("b3");
    let out = ok(&["backup", "--dir", &h.dir, "--to", &b3], "");
    assert!(out.contains("removed an interrupted backup"), "{out}");
    assert!(!Path::new(&partial).exists());
    // And so does repair.
    let out = sg()
        .args(["backup", "--dir", &h.dir, "--to", &h.path("b4")])
        .env("SLUICEGATE_TEST_ABORT_BACKUP_AFTER_FILES", "2")
        .stderr(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(Path::new(&h.path(".b4.partial")).exists());
    let out = ok(&["repair", "--dir", &h.dir], "");
    assert!(out.contains("removed an interrupted backup"), "{out}");
    assert!(!Path::new(&h.path(".b4.partial")).exists());

    // A damaged backup is refused.
    let seg = std::fs::read_dir(Path::new(&b3).join("segments"))
        .expect("segments")
        .next()
        .expect("a segment")
        .expect("entry")
        .path();
    damage(&seg, 100);
    assert_one_line_error(
        &run(&["restore", "--from", &b3, "--dir", &h.path("r3")], ""),
        1,
        "damaged",
    );
}

#[test]
fn a_savepoint_holds_only_needed_log_files_and_restores_from_anywhere() {
    // Small files, so the log spans several and the consumed ones are not needed.
    let h = Home::new(8192);
    let ev = lines("ev", 600);
    h.put(&ev, 10);
    ok(&["take", "--dir", &h.dir, "--limit", "500"], "");
    let sp = h.path("sp");
    let r = json(&["savepoint", "--dir", &h.dir, "--to", &sp, "--json"]);
    assert_eq!(r["events"], 100);
    let m = manifest(&sp);
    assert_eq!(m["kind"], "savepoint");
    assert!(m["created_utc"].as_str().unwrap_or("").ends_with('Z'));
    let in_savepoint = m["files"].as_array().expect("files").len() - 1;
    let in_channel = std::fs::read_dir(Path::new(&h.dir).join("data"))
        .expect("data")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    assert!(
        in_savepoint < in_channel,
        "savepoint has {in_savepoint} log files, the channel {in_channel}"
    );
    // Move it somewhere else, then restore from there.
    let moved = h.path("elsewhere/sp-moved");
    std::fs::create_dir(h.path("elsewhere")).expect("mkdir");
    std::fs::rename(&sp, &moved).expect("move");
    let target = h.path("from-savepoint");
    let r = json(&["restore", "--from", &moved, "--dir", &target, "--json"]);
    assert_eq!(r["events"], 100);
    assert_eq!(r["kind"], "savepoint");
    let got = ok(&["take", "--dir", &target], "");
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        ev[500..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // The source channel still has its 100 events: a savepoint takes nothing.
    assert_eq!(h.stats()["depth"], 100);
}

#[test]
fn checkpoint_forces_one_and_the_next_open_replays_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ch").display().to_string();
    let (mut child, _i, _o) = running_put(&dir, 4);
    child.kill().expect("kill");
    child.wait().expect("wait");
    let before = json(&["stats", "--dir", &dir, "--json"]);
    assert_eq!(before["recovery"], "replay");
    let c = json(&["checkpoint", "--dir", &dir, "--json"]);
    assert_eq!(c["checkpoint"], "written");
    assert_eq!(c["events"], 4);
    let after = json(&["stats", "--dir", &dir, "--json"]);
    assert_eq!(after["recovery"], "checkpoint");
    assert_eq!(after["replay"]["records_read"], 0);
    assert_eq!(after["depth"], 4);
}

#[test]
fn take_follow_waits_for_a_producer() {
    let h = Home::new(65536);
    let mut child = sg()
        .args(["take", "--dir", &h.dir, "--follow", "--batch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn take --follow");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    // The follower releases the channel while it waits; a producer gets in within a few tries.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let o = run(&["put", "--dir", &h.dir], "late-1\nlate-2\n");
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < until, "producer never got the channel");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).expect("read");
        got.push(l.trim_end().to_string());
    }
    child.kill().expect("kill");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    child.wait().expect("wait");
    assert_eq!(got, ["late-1", "late-2"], "follower's stderr: {err}");
}

/// A home whose producer was killed after `n` commits of one line each: no checkpoint, so every
/// recovery replays the log.
fn crashed_home(n: usize) -> Home {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ch").display().to_string();
    let (mut child, _i, _o) = running_put(&dir, n);
    child.kill().expect("kill");
    child.wait().expect("wait");
    Home {
        root: tmp.path().to_path_buf(),
        _tmp: tmp,
        dir,
    }
}

#[test]
fn repair_steps_over_an_intact_record_that_recovery_refuses() {
    use sluicegate_core::record::{RecordHeader, RECORD_HEADER_BYTES};
    let h = crashed_home(20);
    let (file, offset, bind) = record_and_binding(&h, "line-00007");
    // Forge a record of a kind this build does not know, with a correct CRC: recovery refuses
    // the whole log rather than guess.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("open");
    let mut hb = [0u8; RECORD_HEADER_BYTES];
    f.read_exact_at(&mut hb, offset).expect("read");
    let mut rec = RecordHeader::decode(&hb);
    let mut payload = vec![0u8; rec.len as usize];
    f.read_exact_at(&mut payload, offset + RECORD_HEADER_BYTES as u64)
        .expect("read");
    rec.kind = 9;
    let mut d = rec.digest(bind);
    d.update(&payload);
    rec.crc = d.finalize();
    f.write_all_at(&rec.encode(), offset).expect("write");
    drop(f);
    assert_one_line_error(&run(&["stats", "--dir", &h.dir], ""), 1, "corrupt");
    assert_one_line_error(&run(&["take", "--dir", &h.dir], ""), 1, "corrupt");
    let v = run(&["verify", "--dir", &h.dir, "--json"], "");
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains("unknown kind 9"));
    let r = ok(&["repair", "--dir", &h.dir], "");
    assert!(r.contains("CRC is spoilt"), "{r}");
    let mut want = lines("line", 20);
    want.remove(7);
    assert_eq!(h.take_all(), want);
}

#[test]
fn repair_raises_a_capacity_too_small_for_the_log() {
    let h = crashed_home(30);
    // Someone lowered the capacity below what the log holds.
    let settings = Path::new(&h.dir).join("sluicegate.toml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("capacity =") {
                "capacity = 10".to_string()
            } else if l.starts_with("transaction_capacity =") {
                "transaction_capacity = 10".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&settings, text).expect("write settings");
    assert_one_line_error(&run(&["take", "--dir", &h.dir], ""), 1, "");
    let r = json(&["repair", "--dir", &h.dir, "--json"]);
    assert!(r["actions"].to_string().contains("capacity raised"), "{r}");
    // The slot files were cut to the new layout, then moved out: both versions are kept, the
    // first one whole.
    let copies = PathBuf::from(r["copies"].as_str().expect("copies"));
    let whole = std::fs::metadata(copies.join("checkpoint--checkpoint.slot")).expect("copy");
    assert!(
        whole.len() > 4096,
        "the copy kept before the cut was overwritten"
    );
    assert!(copies.join("checkpoint--checkpoint.slot.2").exists());
    let s = h.stats();
    assert_eq!(s["depth"], 30, "{s}");
    assert!(s["capacity"].as_u64().unwrap_or(0) >= 30);
    assert_eq!(h.take_all(), lines("line", 30));
}

/// `key new` and `key wrap` make key files; with them listed under `[encryption]` in the home's
/// settings, put, take, stats and verify run on a sealed channel, and nothing is in the clear.
#[test]
fn key_files_made_by_the_cli_seal_a_channel() {
    let h = Home::new(65536);
    let raw = h.path("k1.key");
    let wrapped = h.path("k1.wrapped");
    let pw = h.path("k1.pass");
    ok(&["key", "new", "--out", &raw], "");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&raw).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&raw).unwrap().trim().len(), 64);
    // Never replaces a key file.
    assert_one_line_error(&run(&["key", "new", "--out", &raw], ""), 1, "exists");
    std::fs::write(&pw, "open sesame\n").unwrap();
    ok(
        &[
            "key",
            "wrap",
            "--key-file",
            &raw,
            "--password-file",
            &pw,
            "--out",
            &wrapped,
            "--iterations",
            "1000",
        ],
        "",
    );
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let settings = Path::new(&h.dir).join("sluicegate.toml");
    let mut text = std::fs::read_to_string(&settings).unwrap();
    text.push_str(&format!(
        "\n[encryption]\nactive_key = \"one\"\nalgorithm = \"aes-256-gcm\"\n\n[[encryption.keys]]\nid = 1\nalias = \"one\"\nkey_file = \"{wrapped}\"\npassword_file = \"{pw}\"\n"
    ));
    std::fs::write(&settings, &text).unwrap();
    let events = lines("secret", 200);
    h.put(&events, 50);
    assert_eq!(h.stats()["depth"], 200, "{}", h.stats());
    let verify = ok(&["verify", "--dir", &h.dir], "");
    assert!(!verify.is_empty());
    // The dump names each sealed segment's key and algorithm.
    let dump = ok(&["dump", "--dir", &h.dir], "");
    assert!(dump.contains("key 1, AES-256-GCM"), "{dump}");
    let mut stack = vec![PathBuf::from(&h.dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !bytes.windows(12).any(|w| w == b"secret-00100"),
                    "{} holds an event in the clear",
                    e.path().display()
                );
            }
        }
    }
    assert_eq!(h.take_all(), events);
    // A wrong password is one clear line, exit 1.
    std::fs::write(&pw, "open sesame!\n").unwrap();
    assert_one_line_error(&run(&["take", "--dir", &h.dir], ""), 1, "wrong password");
}

/// `stats`, `verify` and `dump` read a channel on a read-only filesystem (a tmpfs remounted
/// read-only: root may write anywhere else), where they cannot take the lock file for writing;
/// `take`, which must write, fails in one line. Mounting needs root: without it the test says
/// so and passes, unless `SLUICEGATE_REQUIRE_TMPFS=1` (set by the check command as root).
#[test]
fn inspection_works_on_a_read_only_filesystem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount(&["-t", "tmpfs", "-o", "size=300m", "tmpfs"]) {
        assert_ne!(
            std::env::var("SLUICEGATE_REQUIRE_TMPFS").as_deref(),
            Ok("1"),
            "cannot mount a tmpfs and SLUICEGATE_REQUIRE_TMPFS=1"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let dir = mnt.join("h").display().to_string();
    let mut input = lines("ro", 40).join("\n");
    input.push('\n');
    ok(
        &[
            "put",
            "--dir",
            &dir,
            "--file-bytes",
            "1048576",
            "--min-free-bytes",
            "0",
        ],
        &input,
    );
    assert!(mount(&["-o", "remount,ro"]), "remount read-only");
    let stats = json(&["stats", "--dir", &dir, "--json"]);
    assert_eq!(stats["depth"], 40, "{stats}");
    let verify = ok(&["verify", "--dir", &dir], "");
    assert!(verify.contains("clean"), "{verify}");
    let dump = ok(&["dump", "--dir", &dir], "");
    assert!(dump.contains("\"ro-00039\""), "{dump}");
    let out = run(&["take", "--dir", &dir, "--limit", "1"], "");
    assert_one_line_error(&out, 1, "read-only file system");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
    assert!(out.stdout.is_empty(), "nothing was taken");
}

/// Under `--json`, an error is one JSON object on stderr, with the exit code in it and, for a
/// channel error, its kind.
#[test]
fn errors_under_json_are_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nothing-here").display().to_string();
    for cmd in ["stats", "verify", "repair"] {
        let out = run(&[cmd, "--dir", &missing, "--json"], "");
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
        let v: Value = serde_json::from_str(err.trim_end())
            .unwrap_or_else(|e| panic!("{cmd}: {err:?} is not JSON: {e}"));
        assert_eq!(v["exit"], 1, "{v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|m| m.contains("nothing-here")),
            "{v}"
        );
        assert!(out.stdout.is_empty(), "{cmd}");
    }
    // Without --json, the same error is text.
    let out = run(&["stats", "--dir", &missing], "");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("sluicegate: "));
    // A channel error carries its kind: here queued events in a log file cut short.
    let (h, _) = Home::with_8000_events();
    let seg = Path::new(&h.dir).join("data/log-000002.seg");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(32768))
        .expect("cut short");
    let out = run(&["checkpoint", "--dir", &h.dir, "--json"], "");
    let err = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(err.trim_end()).expect("JSON error");
    assert_eq!(v["kind"], "lost", "{v}");
    assert_eq!(v["exit"], 1, "{v}");
}

/// `put` never holds an over-long line: a 200 MB line (max_event_bytes is 1 MiB by default)
/// is refused as it streams past, the line after it is put, and the process's peak memory
/// stays far below the line's size (measured by the kernel: `wait4`'s `ru_maxrss`).
#[test]
// The child is reaped by `wait4`, which gives its peak memory; `Child::wait` after it could
// reap another test's child that reused the pid.
#[allow(clippy::zombie_processes)]
fn put_streams_past_an_over_long_line_in_bounded_memory() {
    let h = Home::new(65536);
    let mut child = sg()
        .args(["put", "--dir", &h.dir])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn put");
    let mut input = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            input.write_all(&chunk).expect("feed");
        }
        input.write_all(b"\nafter\n").expect("feed");
    });
    let mut stderr = String::new();
    let mut err_pipe = child.stderr.take().expect("stderr");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = out_pipe.read_to_string(&mut out);
        out
    });
    let _ = err_pipe.read_to_string(&mut stderr);
    feeder.join().expect("feeder");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with valid pointers; it reaps the child, which
    // `Child` is then not asked to wait for.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let _ = reader.join();
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    eprintln!("put's peak resident memory: {peak_mib:.1} MiB for a 200 MiB line");
    assert!(stderr.contains("over max_event_bytes"), "{stderr}");
    assert!(
        peak_mib < 64.0,
        "put held {peak_mib:.1} MiB while a 200 MiB line streamed past"
    );
    assert_eq!(h.take_all(), vec!["after".to_string()]);
}

/// One-line puts into one home while no consumer runs, as a cron job or a hook makes them: each
/// run goes on in the newest log file, so 60 of them (more than the home's 16 log files) all
/// succeed, the log keeps to the file written and its spare, and every line comes out in order.
/// Before runs went on in the newest file, every run started a file of its own, and the 15th
/// failed with "the log has no free segment".
#[test]
fn sixty_one_line_puts_in_a_row_share_the_log_files() {
    let h = Home::new(65536);
    let want = lines("one", 60);
    for line in &want {
        h.put(std::slice::from_ref(line), 1);
    }
    let files = std::fs::read_dir(Path::new(&h.dir).join("data"))
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(files <= 2, "{files} log files");
    assert_eq!(h.take_all(), want);
}

/// A home made with the old default ring of 16 log files migrates to today's default of 1,024
/// (asked for by its number, which is also the default: a migrate that compared the settings
/// after reading a default as the recorded value found nothing to do), and keeps its events.
#[test]
fn migrate_to_the_default_ring_moves_a_home_of_sixteen_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ch").display().to_string();
    ok(
        &[
            "put",
            "--dir",
            &dir,
            "--file-bytes",
            "65536",
            "--log-files",
            "16",
            "--min-free-bytes",
            "0",
        ],
        "a\nb\n",
    );
    let stats = |dir: &str| -> Value {
        serde_json::from_str(&ok(&["stats", "--dir", dir, "--json"], "")).expect("json")
    };
    assert_eq!(stats(&dir)["segments"], 16);
    ok(&["migrate", "--dir", &dir, "--log-files", "1024"], "");
    assert_eq!(stats(&dir)["segments"], 1024);
    assert_eq!(ok(&["take", "--dir", &dir], ""), "a\nb\n");
}
