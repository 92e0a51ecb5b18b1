//! The exec sink: runs a command once per batch with the batch on its standard input, one
//! event per line, and counts the batch delivered only if the command exits 0.
//!
//! This is the safe form of `sluicegate take | cmd`: a pipe accepts bytes whether or not the
//! reader ever handles them, so a take into a pipe commits on the pipe's word alone; here the
//! command's exit status is the acknowledgement.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Refused, Sink, Taken};

/// Runs `program args...` per batch.
#[derive(Debug, Clone)]
pub struct ExecSink {
    command: Vec<String>,
    timeout: Duration,
}

impl ExecSink {
    /// A sink running `command` (program first), killing it after `timeout`.
    pub fn new(command: Vec<String>, timeout: Duration) -> Self {
        ExecSink { command, timeout }
    }

    /// A sink running `line` through `sh -c`.
    pub fn shell(line: &str, timeout: Duration) -> Self {
        Self::new(vec!["sh".into(), "-c".into(), line.into()], timeout)
    }
}

impl Sink for ExecSink {
    fn finish(&mut self, events: &[Taken], stop: &AtomicBool) -> Result<Vec<Refused>, String> {
        let Some((program, args)) = self.command.split_first() else {
            return Err("no command".into());
        };
        let mut child = Command::new(program)
            .args(args)
            .env("SLUICEGATE_BATCH_EVENTS", events.len().to_string())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let mut input = Vec::with_capacity(events.iter().map(|e| e.body.len() + 1).sum());
        for e in events {
            input.extend_from_slice(&e.body);
            input.push(b'\n');
        }
        // Feed stdin from another thread, so a command that writes a lot before reading cannot
        // deadlock against us. A command that exits without reading all of it still decides
        // by its status.
        let stdin = child.stdin.take();
        let feeder = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&input);
            }
        });
        let deadline = Instant::now() + self.timeout;
        // Polled, not waited on from another thread: only this thread reaps the child, so a
        // kill can never reach a reused pid. Each millisecond of polling is a millisecond in
        // which a crash would deliver the batch again.
        // Bounded by the deadline and `stop`.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => break Err(format!("cannot wait for {program}: {e}")),
            }
            if stop.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{program} was stopped: the agent is stopping"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "{program} ran over {} ms and was killed",
                    self.timeout.as_millis()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let _ = feeder.join();
        let status = status?;
        if status.success() {
            Ok(Vec::new())
        } else {
            Err(format!("{program} failed ({status})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bodies: &[&[u8]]) -> Vec<Taken> {
        bodies
            .iter()
            .map(|b| Taken {
                body: b.to_vec(),
                id: None,
            })
            .collect()
    }

    /// The exit status decides: 0 delivers, anything else fails, and the command sees every
    /// event as a line.
    #[test]
    fn exit_status_is_the_acknowledgement() {
        let stop = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut sink =
            ExecSink::shell(&format!("cat > {}", out.display()), Duration::from_secs(10));
        sink.deliver(&events(&[b"a", b"b"]), &stop).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"a\nb\n");
        let mut failing = ExecSink::shell("cat >/dev/null; exit 3", Duration::from_secs(10));
        let err = failing.deliver(&events(&[b"a"]), &stop).unwrap_err();
        assert!(err.contains("exit status: 3"), "{err}");
        let mut slow = ExecSink::shell("sleep 5", Duration::from_millis(50));
        assert!(slow.deliver(&events(&[b"a"]), &stop).is_err());
    }
}
