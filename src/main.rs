//! The `audio-worker` command line: parse, check the usage, run, map the outcome to an exit code.
//! The commands live in `cli/`, the work in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use audio_worker::usage;
use audio_worker::{Error, ErrorCode};

fn main() -> ExitCode {
    // Panics are turned into error codes where they happen (decoder threads); the default hook
    // would print a second, unstructured report.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = cli::Cli::parse();
    if let Err(mistake) = cli::check_usage(&cli.command) {
        eprintln!("{mistake}");
        return ExitCode::from(usage::EXIT_USAGE);
    }
    let outcome = std::panic::catch_unwind(|| cli::run(cli)).unwrap_or_else(|panic| {
        let what = audio_worker::error::panic_message(panic.as_ref());
        Err(Error::new(
            ErrorCode::Internal,
            format!("internal error: {what}"),
        ))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            // Retryable failures get EX_TEMPFAIL so scripts can tell them apart.
            ExitCode::from(if err.code.is_retryable() { 75 } else { 1 })
        }
    }
}
