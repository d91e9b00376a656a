//! The `audio-worker` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use audio_worker::audio::{self, PrepareOptions};
use audio_worker::replay;
use audio_worker::{Error, ErrorCode};

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
        /// Longest chunk in seconds (each file also stays under 24 MiB).
        #[arg(long, default_value_t = 600.0)]
        max_chunk_s: f64,
        /// Speech level to normalise to, in dBFS.
        #[arg(long, default_value_t = -20.0, allow_hyphen_values = true)]
        target_dbfs: f32,
        /// Longest recording accepted, in seconds.
        #[arg(long, default_value_t = 4.0 * 3600.0)]
        max_duration_s: f64,
        /// Largest input accepted, in megabytes.
        #[arg(long, default_value_t = 2048)]
        max_input_mb: u64,
        /// Opus decoder threads (default: the number of cores, at most 4).
        #[arg(long)]
        threads: Option<usize>,
        /// Rate libopus renders at before resampling: 48000 (canonical) or 16000 (direct, faster).
        #[arg(long, default_value_t = audio_worker::audio::decode::OPUS_RATE_DEFAULT)]
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
        /// Language of the session (ISO-639-1).
        #[arg(long, default_value = "ja")]
        language: String,
        /// Skip the analysis even when GOOGLE_API_KEY is set.
        #[arg(long)]
        no_analysis: bool,
        /// Session id written into the result.
        #[arg(long, default_value = "replay")]
        session_id: String,
    },
}

fn main() -> ExitCode {
    // Panics are turned into error codes where they happen (decoder threads); the default hook
    // would print a second, unstructured report.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = Cli::parse();
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
                opts.decode.threads = t.max(1);
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
