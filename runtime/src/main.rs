//! The `warden` command: glue over the `warden` library.
#![forbid(unsafe_code)]

mod cli;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let mut reason = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !reason.ends_with(&cause) {
                    if !reason.is_empty() {
                        reason.push_str(": ");
                    }
                    reason.push_str(&cause);
                }
            }
            let reason = reason.replace('\n', " ");
            let _ = writeln!(std::io::stderr(), "warden: {reason}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
