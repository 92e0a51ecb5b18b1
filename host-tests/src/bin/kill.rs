//! `cargo xtask kill [--rounds N] [--seed S] [--sealed]`: kills a child process running
//! transactions on a file channel N times (default 1,000) and checks every recovery, after one
//! death at each named crash point of the file adapter. `--sealed` encrypts the channel (a new
//! random key per directory, and each run's new log segments sealed with an algorithm drawn for
//! it). See `sluicegate_sim::kill`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 1000u64;
    let mut seed = 7u64;
    let mut sealed = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--sealed" {
            sealed = true;
            continue;
        }
        let value = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), value) {
            ("--rounds", Some(v)) => rounds = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: kill [--rounds N] [--seed S] [--sealed]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(child) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("crash-child")))
        .filter(|p| p.exists())
    else {
        eprintln!("kill: crash-child is not built next to this program (cargo build -p sluicegate-sim --bins)");
        return ExitCode::FAILURE;
    };
    let root = match tempfile_dir() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kill: cannot make a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kill: {rounds} rounds, seed {seed}, {}, under {}",
        if sealed { "sealed" } else { "plaintext" },
        root.display()
    );
    let started = Instant::now();
    match sluicegate_sim::kill::run_crash_points(&child, &root, seed, sealed, |_, _| {}) {
        Ok(o) => println!(
            "kill: named crash points: {} deaths, {} recoveries checked, {} commits acknowledged",
            o.kills, o.recoveries, o.acknowledged
        ),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&root);
            eprintln!("kill: VIOLATION: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut last = Instant::now();
    let result = sluicegate_sim::kill::run_kills(&child, &root, seed, rounds, sealed, |done, o| {
        if last.elapsed().as_secs() >= 10 {
            last = Instant::now();
            println!(
                "  {done}/{rounds} rounds, {} kills, {} commits acknowledged, {:.0} s",
                o.kills,
                o.acknowledged,
                started.elapsed().as_secs_f64()
            );
        }
    });
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Ok(o) => {
            println!(
                "kill: {} kills, {} recoveries checked, {} commits acknowledged, {} kills mid-commit, 0 violations, {:.1} s",
                o.kills,
                o.recoveries,
                o.acknowledged,
                o.in_flight_at_kill,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kill: VIOLATION: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluicegate-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
