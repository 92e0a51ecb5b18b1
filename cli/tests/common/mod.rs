//! Helpers the operator program's test files share.
// Each test file uses what it needs.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The program under test.
pub fn sg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluicegate"))
}

/// Runs the program with `stdin` as input.
pub fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = sg()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluicegate");
    let mut input = child.stdin.take().expect("stdin");
    // A program that fails at once may close its stdin first: that is not the test's failure.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait")
}
