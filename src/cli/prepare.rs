//! `audio-worker prepare`: the audio stage alone, for looking at what the pipeline will hear.

use std::path::PathBuf;

use audio_worker::Error;
use audio_worker::audio::{self, PrepareOptions};
use audio_worker::usage;

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// The recording (WebM/Opus, Ogg, MP4/M4A, MP3, WAV, FLAC, AIFF): detected from its bytes.
    pub input: PathBuf,
    /// Directory for manifest.json and the chunk files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
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
}

impl PrepareArgs {
    fn options(&self) -> PrepareOptions {
        let mut opts = PrepareOptions {
            write_pcm: self.pcm,
            ..PrepareOptions::default()
        };
        opts.chunks.max_duration_s = self.max_chunk_s;
        opts.normalisation.target_db = self.target_dbfs;
        opts.decode.max_duration_s = self.max_duration_s;
        opts.decode.max_input_bytes = self.max_input_mb.saturating_mul(1_000_000);
        opts.decode.opus_rate = self.opus_rate;
        if let Some(t) = self.threads {
            opts.decode.threads = usize::try_from(t).unwrap_or(usize::MAX);
        }
        opts
    }
}

/// Prepares the recording and prints one line about it.
pub fn run(args: &PrepareArgs) -> Result<(), Error> {
    let manifest = audio::prepare(&args.input, &args.out, &args.options())?;
    println!(
        "{}: {:.2} s of {}/{} -> {} chunk(s), {} speech region(s), gain {:+.1} dB, in {}",
        args.input.display(),
        manifest.output.duration_s,
        manifest.source.container,
        manifest.source.codec,
        manifest.chunks.len(),
        manifest.speech.len(),
        manifest.output.gain_db,
        args.out.display()
    );
    Ok(())
}
