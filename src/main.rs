//! The `audio-worker` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use audio_worker::audio::{self, PrepareOptions};
use audio_worker::config::Config;
use audio_worker::job::{self, Job};
use audio_worker::queue::{Queue, QueueConfig};
use audio_worker::usage::{self, UsageError};
use audio_worker::{Error, ErrorCode};
use audio_worker::{daemon, replay, server, telemetry};

#[derive(Parser)]
#[command(
    name = "audio-worker",
    version,
    about = "Turns recorded coaching sessions into diarised transcripts."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode a recording to 16 kHz mono, map its speech, and cut Whisper-sized chunks.
    Prepare {
        /// The recording (WebM/Opus, Ogg, MP4/M4A, MP3, WAV, FLAC, AIFF): detected from its bytes.
        input: PathBuf,
        /// Directory for manifest.json and the chunk files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Also write the whole normalised recording as audio16k.wav.
        #[arg(long)]
        pcm: bool,
        /// Longest chunk in seconds, at least 1 (each file also stays under 24 MiB).
        #[arg(long, default_value_t = 600.0, allow_hyphen_values = true,
              value_parser = usage::chunk_seconds)]
        max_chunk_s: f64,
        /// Speech level to normalise to, in dBFS (-60 to 0).
        #[arg(long, default_value_t = -20.0, allow_hyphen_values = true,
              value_parser = usage::target_dbfs)]
        target_dbfs: f32,
        /// Longest recording accepted, in seconds.
        #[arg(long, default_value_t = 4.0 * 3600.0, allow_hyphen_values = true,
              value_parser = usage::positive_seconds)]
        max_duration_s: f64,
        /// Largest input accepted, in megabytes.
        #[arg(long, default_value_t = 2048, allow_hyphen_values = true,
              value_parser = usage::at_least_one)]
        max_input_mb: u64,
        /// Opus decoder threads (default: the number of cores, at most 4).
        #[arg(long, allow_hyphen_values = true, value_parser = usage::at_least_one)]
        threads: Option<u64>,
        /// Rate libopus renders at: 16000 (direct, the default) or 48000 (then resampled).
        #[arg(long, default_value_t = audio_worker::audio::decode::OPUS_RATE_DEFAULT,
              value_parser = usage::opus_rate)]
        opus_rate: u32,
    },
    /// Run the whole pipeline on a local recording: prepare, transcribe, diarise, measure, analyse.
    Replay {
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
        /// Language of the session (ISO-639-1; default: the transcript's, else ja).
        #[arg(long)]
        language: Option<String>,
        /// Skip the analysis even when GOOGLE_API_KEY is set.
        #[arg(long)]
        no_analysis: bool,
        /// Session id written into the result.
        #[arg(long, default_value = "replay")]
        session_id: String,
    },
    /// The daemon: claim jobs from Redis, process them, write results to Supabase.
    Run {
        /// Exit 0 once the queue has been empty this long (e.g. 5m); overrides EXIT_WHEN_IDLE.
        #[arg(long, value_parser = parse_duration)]
        exit_when_idle: Option<std::time::Duration>,
        /// Jobs at once; overrides WORKER_CONCURRENCY.
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Print the configuration (secrets redacted) and probe every dependency.
    Check,
    /// Put a job on the queue exactly as the Edge Function does (signed if JOB_SIGNING_SECRET is set).
    Enqueue {
        #[arg(long)]
        session_id: String,
        #[arg(long)]
        user_id: String,
        /// Object key of the recording inside the bucket.
        #[arg(long)]
        key: String,
        /// Bucket (default: BUCKET_NAME).
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long, default_value = "ja")]
        language: String,
        /// A name or term the transcriber should expect (repeat for several; at most 50).
        #[arg(long = "keyword", value_name = "TERM")]
        keywords: Vec<String>,
    },
    /// Put dead-lettered jobs back on the queue (after fixing what failed them).
    Redrive {
        /// Entry ids in `audio:jobs:dead` (see `redis-cli XRANGE audio:jobs:dead - +`).
        #[arg(required_unless_present = "all")]
        entry_ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "entry_ids")]
        all: bool,
    },
    /// Check a job's JSON (a file, or - for stdin) as the worker would: schema and signature.
    ValidateJob {
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Exit 0 when the local /health answers (for container health checks).
    Health {
        /// Default: http://127.0.0.1:$PORT/health (PORT defaults to 8080).
        #[arg(long)]
        url: Option<String>,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    audio_worker::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 300, 90s, 5m, 1h)"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Runtime::new().map_err(|e| Error::io("cannot start the async runtime", e))
}

fn main() -> ExitCode {
    // Panics are turned into error codes where they happen (decoder threads); the default hook
    // would print a second, unstructured report.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = Cli::parse();
    if let Err(mistake) = check_usage(&cli.command) {
        eprintln!("{mistake}");
        return ExitCode::from(usage::EXIT_USAGE);
    }
    let outcome = std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|panic| {
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

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run {
            exit_when_idle,
            concurrency,
        } => {
            // Before the runtime's threads exist (src/memory.rs: arenas held RSS up).
            audio_worker::memory::limit_arenas();
            telemetry::init_logging();
            let mut config = Config::from_env()?;
            if exit_when_idle.is_some() {
                config.exit_when_idle = exit_when_idle;
            }
            if let Some(n) = concurrency {
                config.concurrency = n.max(1);
            }
            runtime()?.block_on(daemon::run(config))
        }
        Command::Check => runtime()?.block_on(daemon::check(Config::from_env()?)),
        Command::Enqueue {
            session_id,
            user_id,
            key,
            bucket,
            language,
            keywords,
        } => runtime()?.block_on(enqueue(
            Job::new(
                session_id,
                user_id,
                bucket.or_else(|| env("BUCKET_NAME")).unwrap_or_default(),
                key,
                language,
                std::time::SystemTime::now(),
            ),
            keywords,
        )),
        Command::Redrive { entry_ids, all } => runtime()?.block_on(redrive(entry_ids, all)),
        Command::ValidateJob { input } => {
            let bytes = read_job_input(&input)?;
            let job = Job::parse(&bytes)?;
            let secret = std::env::var("JOB_SIGNING_SECRET")
                .ok()
                .filter(|s| !s.is_empty());
            job.check_signature(
                secret.as_deref().map(str::as_bytes),
                std::time::SystemTime::now(),
                audio_worker::config::DEFAULT_JOB_MAX_AGE,
            )?;
            println!(
                "ok job_id={} session_id={} key={} signature={}",
                job.job_id,
                job.session_id,
                job.audio.key,
                match (&job.signature, &secret) {
                    (Some(_), Some(_)) => "verified",
                    (Some(_), None) => "present, not checked (JOB_SIGNING_SECRET unset)",
                    (None, _) => "none",
                }
            );
            Ok(())
        }
        Command::Health { url } => {
            let url = url.unwrap_or_else(|| {
                let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
                format!("http://127.0.0.1:{port}/health")
            });
            runtime()?.block_on(server::get_ok(&url, std::time::Duration::from_secs(3)))
        }
        Command::Replay {
            input,
            transcript,
            out,
            report,
            language,
            no_analysis,
            session_id,
        } => {
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| Error::io("cannot start the async runtime", e))?;
            runtime.block_on(replay::run(replay::ReplayArgs {
                input,
                transcript,
                out,
                report,
                language,
                no_analysis,
                session_id,
            }))
        }
        Command::Prepare {
            input,
            out,
            pcm,
            max_chunk_s,
            target_dbfs,
            max_duration_s,
            max_input_mb,
            threads,
            opus_rate,
        } => {
            let mut opts = PrepareOptions {
                write_pcm: pcm,
                ..PrepareOptions::default()
            };
            opts.chunks.max_duration_s = max_chunk_s;
            opts.normalisation.target_db = target_dbfs;
            opts.decode.max_duration_s = max_duration_s;
            opts.decode.max_input_bytes = max_input_mb.saturating_mul(1_000_000);
            opts.decode.opus_rate = opus_rate;
            if let Some(t) = threads {
                opts.decode.threads = usize::try_from(t).unwrap_or(usize::MAX);
            }
            let manifest = audio::prepare(&input, &out, &opts)?;
            println!(
                "{}: {:.2} s of {}/{} -> {} chunk(s), {} speech region(s), gain {:+.1} dB, in {}",
                input.display(),
                manifest.output.duration_s,
                manifest.source.container,
                manifest.source.codec,
                manifest.chunks.len(),
                manifest.speech.len(),
                manifest.output.gain_db,
                out.display()
            );
            Ok(())
        }
    }
}

/// The paths a command reads and writes, checked before it starts: a mistake there is the
/// caller's (exit 2), and `replay` would otherwise find an unwritable `--out` only after the
/// whole pipeline ran. Numbers are checked by clap's value parsers ([`usage`]).
fn check_usage(command: &Command) -> Result<(), UsageError> {
    match command {
        Command::Prepare { input, out, .. } => {
            usage::readable_file("INPUT", input)?;
            usage::output_dir("--out", out)
        }
        Command::Replay {
            input,
            transcript,
            out,
            report,
            ..
        } => {
            usage::readable_file("INPUT", input)?;
            if let Some(t) = transcript {
                usage::readable_file("--transcript", t)?;
            }
            usage::writable_file("--out", out)?;
            match report {
                Some(r) => usage::writable_file("--report", r),
                None => Ok(()),
            }
        }
        Command::ValidateJob { input } if input.as_os_str() != "-" => {
            usage::readable_file("job file", input)
        }
        _ => Ok(()),
    }
}

/// A set, non-blank environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The queue for an operator's command (REDIS_URL), as consumer `name`.
async fn operator_queue(name: &str) -> Result<Queue, Error> {
    let redis_url = env("REDIS_URL")
        .ok_or_else(|| Error::new(ErrorCode::ConfigMissing, "REDIS_URL is not set"))?;
    let mut cfg = QueueConfig::new(redis_url, name);
    cfg.tls_ca_file = env("REDIS_TLS_CA_FILE").map(std::path::PathBuf::from);
    Queue::connect(cfg).await
}

/// A job's bytes from a file or stdin (`-`), at most one byte more than a job may have: enough
/// for `Job::parse` to refuse an oversized one, without buffering whatever is piped in.
fn read_job_input(input: &std::path::Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let limit = audio_worker::job::MAX_JOB_BYTES as u64 + 1;
    let mut buf = Vec::new();
    if input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("cannot read the job from stdin", e))?;
    } else {
        let what = || format!("cannot read {}", input.display());
        std::fs::File::open(input)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .map_err(|e| Error::io(what(), e))?;
    }
    Ok(buf)
}

/// `audio-worker enqueue`: adds the vocabulary, signs, validates and XADDs one job.
async fn enqueue(mut job: Job, keywords: Vec<String>) -> Result<(), Error> {
    if job.audio.bucket.is_empty() {
        return Err(Error::new(
            ErrorCode::ConfigMissing,
            "no bucket: pass --bucket or set BUCKET_NAME",
        ));
    }
    job.keywords = keywords;
    if let Some(secret) = env("JOB_SIGNING_SECRET") {
        job::sign(&mut job, secret.as_bytes());
    }
    // The worker validates again; refusing here gives the operator the message at once.
    let json = job.to_json();
    Job::parse(&json)?;
    let queue = operator_queue("enqueue").await?;
    let entry = queue.enqueue(&json).await?;
    println!("enqueued job_id={} entry_id={entry}", job.job_id);
    Ok(())
}

/// `audio-worker redrive`: dead letters back onto the job stream.
async fn redrive(mut entry_ids: Vec<String>, all: bool) -> Result<(), Error> {
    let queue = operator_queue("redrive").await?;
    if all {
        entry_ids = queue
            .dead_letters(1_000_000)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
    }
    let mut missing = Vec::new();
    for id in &entry_ids {
        match queue.redrive(id).await? {
            Some(new_id) => println!("redriven {id} -> {new_id}"),
            None => missing.push(id.clone()),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::QueueInvalidJob,
            format!("no such dead letter: {}", missing.join(", ")),
        ))
    }
}
