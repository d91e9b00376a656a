//! Decoding any recording a browser or a user can give us into 16 kHz mono, streaming.
//!
//! The container is recognised from the bytes (never the file name). Opus goes to libopus, which
//! renders straight at 16 kHz by default ([`OPUS_RATE_DEFAULT`]): one thread demuxes it into
//! segments, [`DecodeLimits::threads`] threads decode them in parallel ([`super::opus`]), and the
//! calling thread puts them back in order and trims them (and resamples them when libopus renders
//! at another rate). Everything else is decoded by symphonia, downmixed and trimmed on one thread
//! and resampled on another ([`decode_symphonia`]). On both paths the calling thread hands the
//! 16 kHz blocks to the sink (in [`super::prepare`], the level meter and the spill file), so two
//! cores are busy either way.
//!
//! Encoder delay and padding are removed so the output starts and ends where the recording does:
//! Opus pre-skip from `OpusHead` (MP4's big-endian `dOps`), AAC priming from the MP4 edit list,
//! MP3 and Vorbis from what symphonia reads (LAME tag, Ogg granules). Chained Ogg Opus links are
//! trimmed one by one. Every buffer is resampled at the rate the decoder produced it at, never the
//! container's (HE-AAC). The duration limit is checked against the container's timestamps before
//! decoding when the headers declare no duration ([`scan_duration`]).
//!
//! One file per layer: this one holds the public types and [`decode_file`], which opens the file
//! and routes it to a path; `open.rs` opens the input and its container and reads its packets;
//! `duration.rs` applies the duration limit before decoding; `trim.rs` removes encoder delay and
//! padding for both paths; `symphonia.rs` is the pipeline for every codec but Opus, and
//! `opus_track.rs` the one for Opus in a container.

mod duration;
mod open;
mod opus_track;
mod symphonia;
mod trim;

use std::fs::File;
use std::path::Path;

// `::symphonia` is the crate; `self::symphonia` is this module's symphonia pipeline.
use ::symphonia::core::codecs::CodecParameters;
use ::symphonia::core::codecs::audio::well_known::{CODEC_ID_AAC, CODEC_ID_OPUS};
use ::symphonia::core::formats::well_known::FORMAT_ID_ISOMP4;

use self::duration::{declared_seconds, scan_duration, too_long};
use self::open::{
    container_name, decoder_rate, make_decoder, open_format, open_input, pick_audio_track,
};
use self::opus_track::{OpusTrack, decode_opus};
use self::symphonia::decode_symphonia;
use super::TARGET_RATE;
use super::mp4_edit;
use super::opus;
use crate::error::{Error, ErrorCode, Result, panic_message};

/// What the recording is, as found in its bytes. Serialised into the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// Container format: matroska (WebM), ogg, mp4, mp3, wav, aiff, flac, adts.
    pub container: String,
    /// Codec: opus, aac, mp3, pcm, flac, vorbis.
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u32,
    /// The true duration: decoded samples after removing encoder delay and padding.
    pub duration_s: f64,
    pub bytes: u64,
}

/// What happened while decoding. Serialised into the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecodeReport {
    pub source: SourceInfo,
    /// 16 kHz mono samples handed to the sink.
    pub samples: u64,
    pub packets: u64,
    /// Packets that failed to decode; each was replaced by concealment or silence of its length.
    pub corrupt_packets: u64,
    /// The container ended early (an interrupted upload or recording); what was there is kept.
    pub truncated: bool,
}

/// Bounds that protect the worker from hostile or absurd inputs.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_input_bytes: u64,
    pub max_duration_s: f64,
    /// Fail when more than this share of packets is corrupt.
    pub max_corrupt_ratio: f64,
    /// Decoder threads for Opus (the other formats use one decoder thread).
    pub threads: usize,
    /// The rate libopus renders at: 16 kHz (direct, the default) or 48 kHz (then resampled like
    /// every other format). See `OPUS_RATE_DEFAULT` for why 16 kHz is the default.
    pub opus_rate: u32,
}

/// libopus 1.6 rendering SILK speech directly at 16 kHz and rendering at 48 kHz then resampling
/// differ only in waveform phase (15 dB in-band SER), not in what the consumers use: their
/// Whisper-style log-mel spectra differ by a mean of 0.009, against 0.05-0.06 between either and
/// the uncoded source (ARCHITECTURE.md; tests/prepare.rs measures it on every Opus fixture). The
/// direct path skips a resampling pass and costs about a third less CPU.
pub const OPUS_RATE_DEFAULT: u32 = 16_000;

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_input_bytes: 2 << 30,
            max_duration_s: 4.0 * 3600.0,
            max_corrupt_ratio: 0.1,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            opus_rate: OPUS_RATE_DEFAULT,
        }
    }
}

/// Sample rates we accept: real recordings lie between telephone (8 kHz) and studio (384 kHz).
const MIN_SAMPLE_RATE: u32 = 1_000;
const MAX_SAMPLE_RATE: u32 = 768_000;

/// A sink for 16 kHz mono samples, in order.
pub type Sink<'a> = dyn FnMut(&[f32]) -> Result<()> + 'a;

/// Decodes `path` to 16 kHz mono, handing samples to `sink` as they are ready.
pub fn decode_file(
    path: &Path,
    limits: &DecodeLimits,
    sink: &mut Sink<'_>,
) -> Result<DecodeReport> {
    // The decoder threads catch their own panics (`join`), but probing the container, reading
    // its headers and building the decoder run on this thread, inside the same dependencies and
    // on the same hostile bytes: a panic there is this file's fault too, not a retryable crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_file_unguarded(path, limits, sink)
    }))
    .unwrap_or_else(|panic| Err(crashed(panic.as_ref())))
}

fn crashed(panic: &(dyn std::any::Any + Send)) -> Error {
    let what = panic_message(panic);
    Error::new(
        ErrorCode::AudioDecodeFailed,
        format!("the decoder crashed on this file ({what})"),
    )
}

fn decode_file_unguarded(
    path: &Path,
    limits: &DecodeLimits,
    sink: &mut Sink<'_>,
) -> Result<DecodeReport> {
    let (file, bytes) = open_input(path, limits)?;
    let format = open_format(path, file, bytes)?;
    let container = container_name(format.as_ref());
    let is_mp4 = format.format_info().format == FORMAT_ID_ISOMP4;
    let track = pick_audio_track(format.as_ref(), path)?;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        unreachable!("pick_audio_track returns audio tracks only");
    };
    let is_opus = params.codec == CODEC_ID_OPUS;
    let decoder = (!is_opus).then(|| make_decoder(&params)).transpose()?;
    let container_rate = params.sample_rate.filter(|r| *r > 0);
    let sample_rate = match &decoder {
        None => opus::OPUS_CLOCK,
        Some(d) => decoder_rate(d.as_ref(), container_rate)?,
    };

    let declared = declared_seconds(
        format.as_ref(),
        &track,
        container_rate.unwrap_or(sample_rate),
    );
    match declared {
        Some(seconds) if seconds > limits.max_duration_s => {
            return Err(too_long(seconds, limits));
        }
        // Nothing in the headers says how long it is (Chrome's WebM, a piped FLAC or MP3), or the
        // headers describe only the first of chained Ogg streams: read the timestamps first.
        Some(_) if format.format_info().short_name != "ogg" => {}
        _ => scan_duration(path, bytes, track.id, is_opus, limits)?,
    }

    let mut info = SourceInfo {
        container,
        codec: String::new(),
        sample_rate,
        // The decoder's view where it has one: HE-AAC v2's container says stereo (parametric
        // stereo), while the core that is decoded is mono.
        channels: decoder
            .as_ref()
            .and_then(|d| d.codec_params().channels.clone())
            .or(params.channels.clone())
            .map_or(0, |c| c.count() as u32),
        duration_s: 0.0,
        bytes,
    };
    let max_samples = (limits.max_duration_s * f64::from(TARGET_RATE)) as u64;
    let mut samples = 0u64;
    let mut counted_sink = |block: &[f32]| -> Result<()> {
        samples += block.len() as u64;
        if samples > max_samples {
            return Err(too_long(samples as f64 / f64::from(TARGET_RATE), limits));
        }
        sink(block)
    };

    let edit = if is_mp4 {
        File::open(path)
            .ok()
            .and_then(|mut f| mp4_edit::read_audio_edit(&mut f, params.codec == CODEC_ID_AAC))
    } else {
        None
    };
    let stats = match decoder {
        None => {
            info.codec = "opus".into();
            let opus_track = OpusTrack {
                extra_data: params.extra_data.as_deref(),
                mp4: is_mp4,
                edit,
                declared_48k: declared.map(|s| (s * f64::from(opus::OPUS_CLOCK)).round() as u64),
            };
            decode_opus(format, &track, &opus_track, limits, &mut counted_sink)?
        }
        Some(decoder) => {
            decode_symphonia(format, decoder, &track, edit, &mut info, &mut counted_sink)?
        }
    };

    if stats.packets == 0 || samples == 0 {
        return Err(Error::new(
            ErrorCode::AudioEmpty,
            "the audio track contains no samples",
        ));
    }
    if stats.corrupt as f64 > limits.max_corrupt_ratio * stats.packets as f64 && stats.corrupt > 2 {
        return Err(Error::new(
            ErrorCode::AudioDecodeFailed,
            format!(
                "{} of {} audio packets are corrupt; the file is too damaged to transcribe",
                stats.corrupt, stats.packets
            ),
        ));
    }
    info.duration_s = stats.source_frames as f64 / f64::from(info.sample_rate);
    Ok(DecodeReport {
        source: info,
        samples,
        packets: stats.packets,
        corrupt_packets: stats.corrupt,
        truncated: stats.truncated,
    })
}

/// Counters that both decoding paths return.
#[derive(Debug, Default)]
struct Stats {
    packets: u64,
    corrupt: u64,
    truncated: bool,
    /// Frames at the source rate after trimming (the true duration).
    source_frames: u64,
}

/// Joins a worker thread, turning a panic inside a decoder into a decode failure.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<Result<T>> {
    handle.join().map_err(|panic| crashed(panic.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoder_thread_is_a_decode_failure() {
        // Both decoding paths join their worker thread (the symphonia decoder, the Opus demuxer)
        // through `join`; a panic inside a dependency there must not take the worker down.
        let joined = std::thread::scope(|scope| {
            join(scope.spawn(|| -> Result<()> { panic!("index out of bounds in a decoder") }))
        });
        let err = joined.expect_err("a panic is an error");
        assert_eq!(err.code, ErrorCode::AudioDecodeFailed);
        assert!(err.message.contains("index out of bounds"), "{err}");
    }

    #[test]
    fn a_panic_on_the_calling_thread_is_a_decode_failure() {
        // Probing and header parsing run on the calling thread; a panicking sink stands in for a
        // dependency that panics there.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/speech.flac");
        let err = decode_file(&path, &DecodeLimits::default(), &mut |_| {
            panic!("a dependency panicked")
        })
        .expect_err("a panic is an error");
        assert_eq!(err.code, ErrorCode::AudioDecodeFailed);
        assert!(err.message.contains("a dependency panicked"), "{err}");
    }
}
