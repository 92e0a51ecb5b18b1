//! The child process of the kill tests: `crash-child DIR SEED FIRST_ID [STEPS]`, with
//! `SLUICEGATE_CRASH_AT=NAME:N` to die at a named crash point. See `sluicegate_sim::kill`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let dir = PathBuf::from(args.first()?);
        let seed = args.get(1)?.parse().ok()?;
        let first_id = args.get(2)?.parse().ok()?;
        let steps = args.get(3).map_or(Some(u64::MAX), |s| s.parse().ok())?;
        Some((dir, seed, first_id, steps))
    })();
    let Some((dir, seed, first_id, steps)) = parsed else {
        eprintln!("usage: crash-child DIR SEED FIRST_ID [STEPS]");
        return ExitCode::from(2);
    };
    // `SLUICEGATE_CRASH_AT=NAME:N`: die at the Nth hit of a named crash point. Only this
    // program arms one; the adapter never reads the environment.
    if let Ok(spec) = std::env::var("SLUICEGATE_CRASH_AT") {
        match spec.split_once(':').map(|(p, n)| (p, n.parse::<u64>())) {
            Some((point, Ok(n))) => sluicegate_file::crash::arm(point, n),
            _ => {
                eprintln!("crash-child: SLUICEGATE_CRASH_AT={spec:?} is not NAME:N");
                return ExitCode::from(2);
            }
        }
    }
    match sluicegate_sim::kill::child(&dir, seed, first_id, steps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash-child: {e}");
            ExitCode::FAILURE
        }
    }
}
