//! The subcommands: their arguments (clap), the usage checks that run before any work, and the
//! dispatch to the library. One file per command that does more than call the library.

mod operator;
mod prepare;
mod validate_job;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use audio_worker::config::Config;
use audio_worker::usage::{self, UsageError};
use audio_worker::{Error, daemon, replay, server, telemetry};

#[derive(Parser)]
#[command(
    name = "audio-worker",
    version,
    about = "Turns recorded coaching sessions into diarised transcripts."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Decode a recording to 16 kHz mono, map its speech, and cut Whisper-sized chunks.
    Prepare(prepare::PrepareArgs),
    /// Run the whole pipeline on a local recording: prepare, transcribe, diarise, measure, analyse.
    Replay(ReplayCommand),
    /// The daemon: claim jobs from Redis, process them, write results to Supabase.
    Run(RunArgs),
    /// Print the configuration (secrets redacted) and probe every dependency.
    Check,
    /// Put a job on the queue exactly as the Edge Function does (signed if JOB_SIGNING_SECRET is set).
    Enqueue(operator::EnqueueArgs),
    /// Put dead-lettered jobs back on the queue (after fixing what failed them).
    Redrive(operator::RedriveArgs),
    /// Check a job's JSON (a file, or - for stdin) as the worker would: schema and signature.
    ValidateJob(validate_job::ValidateJobArgs),
    /// Exit 0 when the local /health answers (for container health checks).
    Health {
        /// Default: http://127.0.0.1:$PORT/health (PORT defaults to 8080).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct ReplayCommand {
    /// The recording.
    input: PathBuf,
    /// Whisper verbose_json transcript of the whole recording (default: INPUT's stem +
    /// .transcript.json beside it, else OpenAI when OPENAI_API_KEY is set).
    #[arg(long)]
    transcript: Option<PathBuf>,
    /// Where to write the result JSON (schemas/result.schema.json).
    #[arg(long, default_value = "result.json")]
    out: PathBuf,
    /// Also write a self-contained HTML report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Language of the session (ISO-639-1). Default: the transcript's, else the one the
    /// transcriber finds.
    #[arg(long)]
    language: Option<String>,
    /// Skip the analysis even when GOOGLE_API_KEY is set.
    #[arg(long)]
    no_analysis: bool,
    /// Session id written into the result.
    #[arg(long, default_value = "replay")]
    session_id: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Exit 0 once the queue has been empty this long (e.g. 5m); overrides EXIT_WHEN_IDLE.
    #[arg(long, value_parser = parse_duration)]
    exit_when_idle: Option<std::time::Duration>,
    /// Jobs at once; overrides WORKER_CONCURRENCY.
    #[arg(long)]
    concurrency: Option<usize>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    audio_worker::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 300, 90s, 5m, 1h)"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Runtime::new().map_err(|e| Error::io("cannot start the async runtime", e))
}

/// Runs the command.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run(args) => {
            // Before the runtime's threads exist (src/memory.rs: arenas held RSS up).
            audio_worker::memory::limit_arenas();
            telemetry::init_logging();
            let mut config = Config::from_env()?;
            if args.exit_when_idle.is_some() {
                config.exit_when_idle = args.exit_when_idle;
            }
            if let Some(n) = args.concurrency {
                config.concurrency = n.max(1);
            }
            runtime()?.block_on(daemon::run(config))
        }
        Command::Check => runtime()?.block_on(daemon::check(Config::from_env()?)),
        Command::Enqueue(args) => runtime()?.block_on(operator::enqueue(args)),
        Command::Redrive(args) => runtime()?.block_on(operator::redrive(args)),
        Command::ValidateJob(args) => validate_job::run(&args),
        Command::Health { url } => {
            let url = url.unwrap_or_else(|| {
                let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
                format!("http://127.0.0.1:{port}/health")
            });
            runtime()?.block_on(server::get_ok(&url, std::time::Duration::from_secs(3)))
        }
        Command::Replay(c) => runtime()?.block_on(replay::run(replay::ReplayArgs {
            input: c.input,
            transcript: c.transcript,
            out: c.out,
            report: c.report,
            language: c.language,
            no_analysis: c.no_analysis,
            session_id: c.session_id,
        })),
        Command::Prepare(args) => prepare::run(&args),
    }
}

/// The paths a command reads and writes, checked before it starts: a mistake there is the
/// caller's (exit 2), and `replay` would otherwise find an unwritable `--out` only after the
/// whole pipeline ran. Numbers are checked by clap's value parsers ([`usage`]).
pub fn check_usage(command: &Command) -> Result<(), UsageError> {
    match command {
        Command::Prepare(args) => {
            usage::readable_file("INPUT", &args.input)?;
            usage::output_dir("--out", &args.out)
        }
        Command::Replay(c) => {
            usage::readable_file("INPUT", &c.input)?;
            if let Some(t) = &c.transcript {
                usage::readable_file("--transcript", t)?;
            }
            usage::writable_file("--out", &c.out)?;
            match &c.report {
                Some(r) => usage::writable_file("--report", r),
                None => Ok(()),
            }
        }
        Command::ValidateJob(args) if args.input.as_os_str() != "-" => {
            usage::readable_file("job file", &args.input)
        }
        _ => Ok(()),
    }
}

/// A set, non-blank environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
