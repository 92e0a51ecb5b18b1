//! Errors, as the program reports them: one line on stderr and an exit code.

use std::process::ExitCode;

/// Why a command failed.
#[derive(Debug)]
pub struct Fail {
    pub message: String,
    pub code: u8,
    /// The channel error's kind (`FileErrorKind::name`), when the failure is one.
    pub kind: Option<&'static str>,
}

impl Fail {
    /// A failure at run time (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Fail {
            message: message.into(),
            code: 1,
            kind: None,
        }
    }

    /// Bad arguments or settings (exit 2), found before anything changed.
    pub fn usage(message: impl Into<String>) -> Self {
        Fail {
            message: message.into(),
            code: 2,
            kind: Some("usage"),
        }
    }

    /// The same failure with `note` after its message (`MESSAGE: NOTE`).
    pub fn context(mut self, note: &str) -> Self {
        self.message = format!("{}: {note}", self.message);
        self
    }

    /// Reports the failure on stderr, in one line: text, or with `json` (the command was asked
    /// for `--json`) one JSON object, `{"error": MESSAGE, "kind": KIND, "exit": CODE}` (`kind`
    /// only when the failure has one: `usage`, or a channel error's kind).
    pub fn exit(&self, json: bool) -> ExitCode {
        if json {
            let mut line = serde_json::json!({ "error": self.message, "exit": self.code });
            if let Some(kind) = self.kind {
                line["kind"] = kind.into();
            }
            eprintln!("{line}");
        } else {
            eprintln!("sluicegate: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<sluicegate_file::FileChannelError> for Fail {
    fn from(e: sluicegate_file::FileChannelError) -> Self {
        Fail {
            kind: Some(e.kind().name()),
            ..Fail::runtime(e.to_string())
        }
    }
}

impl From<sluicegate_file::FileError> for Fail {
    fn from(e: sluicegate_file::FileError) -> Self {
        Fail {
            kind: Some(e.detail().name()),
            ..Fail::runtime(e.to_string())
        }
    }
}

/// `context: error` as a runtime failure.
pub fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Fail {
    Fail::runtime(format!("{context}: {e}"))
}
