//! Errors, as the program reports them: one line on stderr and an exit code.

use std::process::ExitCode;

/// Why a command failed.
#[derive(Debug)]
pub struct Fail {
    pub message: String,
    pub code: u8,
}

impl Fail {
    /// A failure at run time (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Fail {
            message: message.into(),
            code: 1,
        }
    }

    /// Bad arguments or settings (exit 2), found before anything changed.
    pub fn usage(message: impl Into<String>) -> Self {
        Fail {
            message: message.into(),
            code: 2,
        }
    }

    /// Reports the failure on stderr, in one line: text, or with `json` (the command was asked
    /// for `--json`) one JSON object, `{"error": MESSAGE, "exit": CODE}`.
    pub fn exit(&self, json: bool) -> ExitCode {
        if json {
            let line = serde_json::json!({ "error": self.message, "exit": self.code });
            eprintln!("{line}");
        } else {
            eprintln!("sluicegate: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<sluicegate_file::FileChannelError> for Fail {
    fn from(e: sluicegate_file::FileChannelError) -> Self {
        Fail::runtime(e.to_string())
    }
}

impl From<sluicegate_file::FileError> for Fail {
    fn from(e: sluicegate_file::FileError) -> Self {
        Fail::runtime(e.to_string())
    }
}

/// `context: error` as a runtime failure.
pub fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Fail {
    Fail::runtime(format!("{context}: {e}"))
}
