//! The dead-letter directory: where a sink puts an event its destination refused for good
//! (too large for the broker, not authorized on its topic), with the reason, so that the
//! events after it are delivered and it is neither retried forever nor lost.
//!
//! Each sink appends to its own file, `DIR/SINK.jsonl`, one JSON object per event:
//!
//! ```json
//! {"sink":"out","channel":"events","id":"3f…9a:4294967400","reason":"…","at_ms":1764763200000,"body":"…"}
//! ```
//!
//! `body` is the event's bytes as a string when they are UTF-8; otherwise the object has
//! `body_hex` instead. `id` is `CHANNEL:EVENT` as in the sinks' headers (absent through a client
//! connection). The file is synced (and, when it is new, its directory too) before the take
//! that held the events commits, so a crash in between writes an event here twice, never
//! zero times.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::sinks::Taken;

/// One line of the file, its fields in this order (the body last: it may be long).
#[derive(Serialize)]
struct Line<'a> {
    sink: &'a str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    reason: &'a str,
    at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
}

/// One sink's dead-letter file.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    file: PathBuf,
    sink: String,
    channel: String,
    identity: u128,
}

impl DeadLetter {
    /// The dead-letter file of sink `sink` (taking from `channel`, whose identity is
    /// `identity`) in `dir`; nothing is created until an event is refused.
    pub fn new(dir: &Path, sink: &str, channel: &str, identity: u128) -> Self {
        DeadLetter {
            file: dir.join(format!("{sink}.jsonl")),
            sink: sink.to_string(),
            channel: channel.to_string(),
            identity,
        }
    }

    /// The file it appends to.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Appends each refused event with its reason, and syncs the file.
    pub fn record(&self, refused: &[(&Taken, &str)]) -> Result<(), String> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut text = String::new();
        for (event, reason) in refused {
            let utf8 = std::str::from_utf8(&event.body).ok();
            let line = Line {
                sink: &self.sink,
                channel: &self.channel,
                id: event.id.map(|id| crate::sinks::id_text(self.identity, id)),
                reason,
                at_ms,
                body: utf8,
                body_hex: utf8.is_none().then(|| hex(&event.body)),
            };
            let json = serde_json::to_string(&line)
                .map_err(|e| format!("cannot encode a dead letter: {e}"))?;
            text.push_str(&json);
            text.push('\n');
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.write_all(text.as_bytes())?;
            file.sync_data()
        };
        let dir = crate::home::parent_of(&self.file);
        let fresh = !self.file.exists();
        if fresh {
            crate::home::create_dir_durably(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| format!("cannot open {}: {e}", self.file.display()))?;
        write(&mut file).map_err(|e| format!("cannot write {}: {e}", self.file.display()))?;
        if fresh {
            // A new file's name is durable only once its directory is synced.
            crate::home::sync_dir(dir)
                .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refused events are appended with their reason; bytes that are not UTF-8 go as hex.
    #[test]
    fn refused_events_are_appended_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::new(&dir.path().join("dl"), "out", "events", 0xab);
        let a = Taken {
            body: b"hello".to_vec(),
            id: None,
        };
        let b = Taken {
            body: vec![0xff, 0x00],
            id: None,
        };
        dl.record(&[(&a, "too large")]).unwrap();
        dl.record(&[(&b, "not authorized")]).unwrap();
        let text = std::fs::read_to_string(dl.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["body"], "hello");
        assert_eq!(lines[0]["reason"], "too large");
        assert_eq!(lines[0]["sink"], "out");
        assert_eq!(lines[1]["body_hex"], "ff00");
        assert_eq!(lines[1]["reason"], "not authorized");
    }
}
