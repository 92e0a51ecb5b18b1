//! `sluicegate key`: makes the key files that the `[encryption]` section of a channel's
//! `sluicegate.toml` names. Files are created readable by their owner only and never replaced.

use std::path::PathBuf;
use std::process::ExitCode;

use sluicegate_file::{new_key_line, wrap_key, write_secret_file, DEFAULT_WRAP_ITERATIONS};

use crate::fail::{io, Fail};

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new random key (64 hex digits) to a new file.
    New {
        /// The key file to create (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a copy of a raw key file wrapped under the password in a password file.
    Wrap {
        /// The raw key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// The wrapped key file to create (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// PBKDF2-HMAC-SHA256 iterations.
        #[arg(long, default_value_t = DEFAULT_WRAP_ITERATIONS, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
    },
}

pub fn run(command: &KeyCommand) -> Result<ExitCode, Fail> {
    match command {
        KeyCommand::New { out } => {
            let line = new_key_line().map_err(|e| io("no random source", e))?;
            write_secret_file(out, &line)
                .map_err(|e| io(format!("cannot create {}", out.display()), e))?;
            eprintln!("wrote a new key to {} (mode 600)", out.display());
        }
        KeyCommand::Wrap {
            key_file,
            password_file,
            out,
            iterations,
        } => {
            let key = std::fs::read_to_string(key_file)
                .map_err(|e| io(format!("cannot read {}", key_file.display()), e))?;
            let password = std::fs::read_to_string(password_file)
                .map_err(|e| io(format!("cannot read {}", password_file.display()), e))?;
            let password = password.lines().next().unwrap_or("");
            let line = wrap_key(&key, password.as_bytes(), *iterations)
                .map_err(|e| Fail::usage(format!("{}: {e}", key_file.display())))?;
            write_secret_file(out, &line)
                .map_err(|e| io(format!("cannot create {}", out.display()), e))?;
            eprintln!(
                "wrote {} wrapped with {} PBKDF2 iterations (mode 600)",
                out.display(),
                iterations
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
