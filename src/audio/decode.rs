//! Decoding any recording a browser or a user can give us into 16 kHz mono, streaming.
//!
//! The container is recognised from the bytes (never the file name). Opus goes straight to
//! libopus at 16 kHz on every core ([`super::opus`]); everything else is decoded by symphonia,
//! downmixed and trimmed on one thread and resampled on another while the calling thread hands
//! the 16 kHz blocks on ([`decode_symphonia`]), so two cores are busy either way. Encoder delay
//! and padding are removed so the output starts and ends where the recording does: Opus pre-skip
//! from `OpusHead` (MP4's big-endian `dOps`), AAC priming from the MP4 edit list, MP3 and Vorbis
//! from what symphonia reads (LAME tag, Ogg granules). Chained Ogg Opus links are trimmed one by
//! one. Every buffer is resampled at the rate the decoder produced it at, never the container's
//! (HE-AAC). The duration limit is checked against the container's timestamps before decoding
//! when the headers declare no duration ([`scan_duration`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::well_known::{CODEC_ID_AAC, CODEC_ID_OPUS, CODEC_ID_PCM_S16LE};
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known::{FORMAT_ID_ISOMP4, FORMAT_ID_MKV};
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::Packet;
use symphonia::core::units::TimeBase;

use super::TARGET_RATE;
use super::aac;
use super::mp4_edit;
use super::opus::{self, LinkTrim, OpusHead, Segment};
use super::resample::MonoResampler;
use super::wav_header;
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

/// Decoded blocks buffered between the decoder thread and the resampler.
const BLOCKS_IN_FLIGHT: usize = 8;

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

/// Opens the input and checks its size against the limits before anything reads it.
fn open_input(path: &Path, limits: &DecodeLimits) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorCode::StorageNotFound
        } else {
            ErrorCode::Internal
        };
        Error::new(code, format!("cannot open {}: {e}", path.display()))
    })?;
    let bytes = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
        .len();
    if bytes == 0 {
        return Err(Error::new(
            ErrorCode::AudioEmpty,
            "the file is empty (0 bytes)",
        ));
    }
    if bytes > limits.max_input_bytes {
        return Err(Error::new(
            ErrorCode::AudioTooLarge,
            format!(
                "the file is {} MB; the limit is {} MB",
                bytes / 1_000_000,
                limits.max_input_bytes / 1_000_000
            ),
        ));
    }
    Ok((file, bytes))
}

/// Recognises the container from the bytes and opens its reader. A WAV's placeholder sizes are
/// corrected on the way in ([`wav_header`]).
fn open_format(path: &Path, mut file: File, bytes: u64) -> Result<Box<dyn FormatReader>> {
    let mut magic = [0u8; 8];
    let magic_len = file.read(&mut magic).unwrap_or(0);
    let patches = wav_header::header_patches(&mut file, bytes);
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let source = wav_header::PatchedSource::new(file, bytes, patches);
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| probe_error(e, &magic[..magic_len]))
}

/// The symphonia decoder for a non-Opus track. Explicitly signalled HE-AAC gets its AAC-LC core's
/// configuration, which symphonia decodes ([`super::aac`]).
fn make_decoder(params: &AudioCodecParameters) -> Result<Box<dyn AudioDecoder>> {
    let mut params = params.clone();
    if params.codec == CODEC_ID_AAC
        && let Some(core) = params.extra_data.as_deref().and_then(aac::core_config)
    {
        params.extra_data = Some(core.into_boxed_slice());
    }
    symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| {
            Error::new(
                ErrorCode::AudioUnsupportedFormat,
                format!("the audio codec is not supported: {e}"),
            )
        })
}

/// The rate the decoder will render at: from the codec's own header where it has one (an MP4
/// sample entry cannot hold 96 kHz and says 0; implicit HE-AAC's says twice its core's rate),
/// else the container's. Decoded buffers are resampled at their own rate all the same.
fn decoder_rate(decoder: &dyn AudioDecoder, container_rate: Option<u32>) -> Result<u32> {
    let rate = decoder
        .codec_params()
        .sample_rate
        .filter(|r| *r > 0)
        .or(container_rate)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::AudioDecodeFailed,
                "the audio track declares no sample rate",
            )
        })?;
    // A damaged header can declare any rate; resampling from 4 GHz builds an FFT of millions of
    // points per block and never finishes (found by fuzzing: fixtures/fuzz/wav-rate-4ghz-nan.wav).
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        return Err(Error::new(
            ErrorCode::AudioDecodeFailed,
            format!("the audio track declares an impossible sample rate of {rate} Hz"),
        ));
    }
    Ok(rate)
}

/// Refuses a recording that is longer than the limit from its packets' timestamps alone (for
/// Opus, from the durations in their TOC bytes, which no container can lie about), before any of
/// it is decoded. Used when the headers declare no duration: a 315 KB WebM of 2-byte packets
/// holds five hours, and decoding four of them took 18 s and spilled 920 MB before the limit hit.
/// Demuxing costs a small fraction of decoding. Chained Ogg Opus links count together; other
/// chained Ogg files are refused here.
fn scan_duration(
    path: &Path,
    bytes: u64,
    mut track_id: u32,
    is_opus: bool,
    limits: &DecodeLimits,
) -> Result<()> {
    let Ok(file) = File::open(path) else {
        return Ok(()); // the decode itself reports what is wrong
    };
    let Ok(mut format) = open_format(path, file, bytes) else {
        return Ok(());
    };
    let time_base = format
        .tracks()
        .iter()
        .find(|t| t.id == track_id)
        .and_then(|t| t.time_base);
    let mut opus_frames = 0u64;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            // A chained Ogg Opus link: its packets count towards the same recording.
            Err(SymphoniaError::ResetRequired) if is_opus => {
                track_id = next_link(format.as_ref())?.0;
                continue;
            }
            Err(SymphoniaError::ResetRequired) => return Err(chained_ogg()),
            Err(_) => return Ok(()), // damage: the decode decides what it means
        };
        if packet.track_id != track_id {
            continue;
        }
        let seconds = if is_opus {
            opus_frames += opus::packet_frames(&packet.data, opus::OPUS_CLOCK).unwrap_or(0) as u64;
            opus_frames as f64 / f64::from(opus::OPUS_CLOCK)
        } else if let Some(tb) = time_base {
            let seconds =
                |ticks: f64| ticks * f64::from(tb.numer.get()) / f64::from(tb.denom.get());
            // No codec's packet lasts a minute: such a packet is a damaged table (fuzzing found
            // one claiming hours), which the decoder's own checks judge, not the duration limit.
            if seconds(packet.dur.get() as f64) > MAX_PACKET_S {
                return Ok(());
            }
            seconds(packet.pts.get().max(0) as f64 + packet.dur.get() as f64)
        } else {
            return Ok(());
        };
        if seconds > limits.max_duration_s {
            return Err(too_long(seconds, limits));
        }
    }
}

/// Longer than any real packet (FLAC's largest block at 8 kHz is 8.2 s).
const MAX_PACKET_S: f64 = 60.0;

fn chained_ogg() -> Error {
    Error::new(
        ErrorCode::AudioUnsupportedFormat,
        "the Ogg file chains several recordings one after another (chained Ogg streams); \
         that is supported for Opus only",
    )
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

fn too_long(seconds: f64, limits: &DecodeLimits) -> Error {
    Error::new(
        ErrorCode::AudioTooLong,
        format!(
            "the recording is longer than the limit of {:.0} minutes (at least {:.0} minutes)",
            limits.max_duration_s / 60.0,
            seconds / 60.0
        ),
    )
}

/// Maps a failure to recognise the container to our codes. `magic` is the file's first bytes.
fn probe_error(err: SymphoniaError, magic: &[u8]) -> Error {
    match err {
        // An MP4 whose index (moov) never got written: the MP4 reader declines the file, but the
        // bytes say MP4 and the user deserves to hear that it is incomplete, not unknown.
        SymphoniaError::Unsupported(_) if magic.get(4..8) == Some(b"ftyp") => Error::new(
            ErrorCode::AudioDecodeFailed,
            "the MP4 file has no index (moov box): the upload or recording was cut off before it finished",
        ),
        SymphoniaError::Unsupported(_) => Error::new(
            ErrorCode::AudioUnsupportedFormat,
            "not a recognised audio file (WebM, Ogg, MP4/M4A, MP3, WAV, FLAC, AIFF or CAF)",
        ),
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Error::new(
            ErrorCode::AudioDecodeFailed,
            "the file ends before its audio headers do (an incomplete upload?)",
        ),
        other => Error::new(
            ErrorCode::AudioDecodeFailed,
            format!("the file is damaged and cannot be read: {other}"),
        ),
    }
}

fn container_name(format: &dyn FormatReader) -> String {
    match format.format_info().short_name {
        "isomp4" => "mp4",
        "matroska" | "mkv" => "matroska",
        "riff" | "wave" => "wav",
        other => other,
    }
    .to_string()
}

/// The audio track to decode, or a clear error when there is none or its codec is unknown.
fn pick_audio_track(format: &dyn FormatReader, path: &Path) -> Result<Track> {
    if let Some(track) = format.default_track(TrackType::Audio) {
        return Ok(track.clone());
    }
    if format.first_track(TrackType::Audio).is_some() {
        return Err(Error::new(
            ErrorCode::AudioUnsupportedFormat,
            "the audio track uses a codec we cannot decode",
        ));
    }
    // symphonia's MP4 reader drops a track whose sample entry it does not know (AMR from old
    // phones' 3GP): the file has audio, in a codec we do not decode, and should say which.
    if format.format_info().format == FORMAT_ID_ISOMP4
        && let Some(entry) = File::open(path)
            .ok()
            .and_then(|mut f| mp4_edit::audio_sample_entry(&mut f))
    {
        return Err(Error::new(
            ErrorCode::AudioUnsupportedFormat,
            format!(
                "the audio track is {}, which we cannot decode",
                sample_entry_name(&entry)
            ),
        ));
    }
    let what = if format.first_track(TrackType::Video).is_some() {
        "the file has a video track but no audio track"
    } else {
        "the file contains no audio track"
    };
    Err(Error::new(ErrorCode::AudioNoAudioTrack, what))
}

/// A person's name for an MP4 audio sample entry type.
fn sample_entry_name(entry: &[u8; 4]) -> String {
    let fourcc = String::from_utf8_lossy(entry);
    let name = match entry {
        b"samr" => "AMR-NB (narrow-band AMR speech)",
        b"sawb" => "AMR-WB (wide-band AMR speech)",
        b"sevc" => "EVRC speech",
        b"sqcp" => "QCELP speech",
        b"ac-3" => "AC-3 (Dolby Digital)",
        b"ec-3" => "E-AC-3 (Dolby Digital Plus)",
        b"ac-4" => "AC-4",
        b"mha1" | b"mhm1" => "MPEG-H 3D Audio",
        _ => return format!("in a format we do not know ('{fourcc}')"),
    };
    format!("{name}, '{fourcc}'")
}

/// How long the container says the track is, in seconds, when it says. Frame counts are at the
/// container's `rate` (for implicit HE-AAC twice the rate that is decoded), so this is in
/// seconds, not frames. A zero duration (a fragmented MP4's empty `moov`) says nothing.
fn declared_seconds(format: &dyn FormatReader, track: &Track, rate: u32) -> Option<f64> {
    let in_seconds = |ticks: u64, tb: TimeBase| {
        ticks as f64 * f64::from(tb.numer.get()) / f64::from(tb.denom.get())
    };
    let seconds = if let Some(n) = track.num_frames {
        n as f64 / f64::from(rate.max(1))
    } else if let (Some(d), Some(tb)) = (track.duration, track.time_base) {
        in_seconds(d.get(), tb)
    } else {
        let media = format.media_info();
        match (media.duration, media.time_base) {
            (Some(d), Some(tb)) => in_seconds(d.get(), tb),
            _ => return None,
        }
    };
    (seconds > 0.0).then_some(seconds)
}

/// How far a stream may run past its declared end and still be cut there: 200 ms, more than any
/// codec's padding (one Opus packet is at most 120 ms, an AAC frame 2048 samples).
fn end_tolerance(rate: u32) -> u64 {
    u64::from(rate) / 5
}

/// Drops encoder delay at the start and padding at the end of a stream of samples.
///
/// The end is known only from the container; a container that claims less than the stream holds
/// by more than `tolerance` is lying (or was cut and re-muxed), and then nothing is cut.
struct Trimmer {
    skip: u64,
    keep: Option<u64>,
    tolerance: u64,
    emitted: u64,
    held: Vec<f32>,
}

impl Trimmer {
    fn new(skip: u64, keep: Option<u64>, tolerance: u64) -> Trimmer {
        Trimmer {
            skip,
            keep,
            tolerance,
            emitted: 0,
            held: Vec::new(),
        }
    }

    fn push(&mut self, mut block: &[f32], sink: &mut Sink<'_>) -> Result<()> {
        let skip = (self.skip as usize).min(block.len());
        self.skip -= skip as u64;
        block = &block[skip..];
        let Some(keep) = self.keep else {
            self.emitted += block.len() as u64;
            return sink(block);
        };
        let room = keep.saturating_sub(self.emitted) as usize;
        let (now, beyond) = block.split_at(room.min(block.len()));
        if !now.is_empty() {
            self.emitted += now.len() as u64;
            sink(now)?;
        }
        self.held.extend_from_slice(beyond);
        if self.held.len() as u64 > self.tolerance {
            // The declared end was wrong: keep everything.
            self.keep = None;
            let held = std::mem::take(&mut self.held);
            self.emitted += held.len() as u64;
            sink(&held)?;
        }
        Ok(())
    }

    /// Frames emitted in total.
    fn emitted(&self) -> u64 {
        self.emitted
    }
}

/// Decodes a non-Opus track with symphonia in a pipeline of three threads, so that two cores
/// share the work: one decodes, downmixes and trims; one resamples; this one hands the 16 kHz
/// blocks on. Each link holds at most `BLOCKS_IN_FLIGHT` blocks (64 KB each).
fn decode_symphonia(
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track: &Track,
    edit: Option<mp4_edit::AudioEdit>,
    info: &mut SourceInfo,
    sink: &mut Sink<'_>,
) -> Result<Stats> {
    info.codec = codec_name(decoder.codec_info().short_name);
    let rate = info.sample_rate;
    let (skip, keep) = edit.map_or((0, None), |e| e.at_rate(rate));
    let decoding = Decoding {
        format,
        s16_channels: s16_interleaved(decoder.codec_params()),
        decoder,
        track_id: track.id,
        frames_per_tick: track
            .time_base
            .map(|tb| f64::from(tb.numer.get()) * f64::from(rate) / f64::from(tb.denom.get())),
        rate,
        trimmer: Trimmer::new(skip, keep, end_tolerance(rate)),
    };
    let resampler = RateFollower::new(rate)?;
    let (source_tx, source_rx) = sync_channel::<SourceBlock>(BLOCKS_IN_FLIGHT);
    let (tx, rx) = sync_channel::<Vec<f32>>(BLOCKS_IN_FLIGHT);

    std::thread::scope(|scope| {
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        let decode = spawn("decode")
            .spawn_scoped(scope, move || {
                decoding.run(&mut SourceBatcher::new(&source_tx))
            })
            .map_err(|e| Error::io("cannot start the decoder thread", e))?;
        let resample = spawn("resample")
            .spawn_scoped(scope, move || resample_blocks(source_rx, resampler, &tx))
            .map_err(|e| Error::io("cannot start the resampler thread", e))?;

        let mut consumed = Ok(());
        for block in rx.iter() {
            consumed = sink(&block);
            if consumed.is_err() {
                break;
            }
        }
        drop(rx);
        // The consumer's error (a limit, a full disk) explains a stage that stopped early, so it
        // wins over that stage's own "the consumer stopped"; likewise the resampler's over the
        // decoder's.
        let resampled = join(resample);
        let decoded = join(decode);
        consumed?;
        let decoded_rate = resampled??;
        let (stats, channels) = decoded??;
        if info.channels == 0 {
            info.channels = channels;
        }
        info.sample_rate = decoded_rate;
        Ok(stats)
    })
}

/// The first stage of [`decode_symphonia`]: everything up to the resampler.
struct Decoding {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    /// Source frames per container tick, to give a lost packet its length.
    frames_per_tick: Option<f64>,
    rate: u32,
    trimmer: Trimmer,
    /// Set for 16-bit little-endian PCM, which is converted here (see [`s16_interleaved`]).
    s16_channels: Option<usize>,
}

/// The channel count of a 16-bit little-endian PCM track (the WAV that every tool writes), which
/// we convert to float ourselves: symphonia's decoder fills planar buffers sample by sample and
/// then interleaves them again, a quarter of all the CPU a 48 kHz stereo WAV costs. The
/// conversion is symphonia's own (`s / 32768`), so the samples are the same to the bit.
fn s16_interleaved(params: &AudioCodecParameters) -> Option<usize> {
    let sixteen = |bits: Option<u32>| bits.is_none_or(|b| b == 16);
    let channels = params.channels.as_ref()?.count();
    (params.codec == CODEC_ID_PCM_S16LE
        && sixteen(params.bits_per_sample)
        && sixteen(params.bits_per_coded_sample)
        && channels > 0)
        .then_some(channels)
}

impl Decoding {
    /// Decodes every packet into mono at its decoded rate, trimmed. Returns the counters and the
    /// most channels a buffer had.
    fn run(mut self, out: &mut SourceBatcher<'_>) -> Result<(Stats, u32)> {
        let mut stats = Stats::default();
        let mut channels = 0u32;
        let mut interleaved: Vec<f32> = Vec::new();
        let mut mono: Vec<f32> = Vec::new();
        let mut last_frames = 0usize;
        while let Some(packet) = next_packet(self.format.as_mut(), &mut stats)? {
            if packet.track_id != self.track_id {
                continue;
            }
            stats.packets += 1;
            match self.decode(&packet, &mut interleaved) {
                Some((rate, n)) => {
                    channels = channels.max(n as u32);
                    out.set_rate(rate)?;
                    last_frames = interleaved.len() / n;
                    downmix(&interleaved, n, &mut mono);
                }
                None => {
                    // Keep the timeline: a lost packet becomes silence of its length.
                    stats.corrupt += 1;
                    mono.clear();
                    mono.resize(self.lost_frames(&packet, last_frames), 0.0);
                }
            }
            self.trimmer.push(&mono, &mut |b| out.push(b))?;
        }
        out.finish()?;
        stats.source_frames = self.trimmer.emitted();
        Ok((stats, channels))
    }

    /// Decodes one packet into interleaved float samples; returns their rate and channel count,
    /// or `None` when the packet is corrupt.
    fn decode(&mut self, packet: &Packet, interleaved: &mut Vec<f32>) -> Option<(u32, usize)> {
        if let Some(n) = self.s16_channels {
            let frames = packet.data.len() / (2 * n);
            interleaved.clear();
            interleaved.extend(
                packet.data[..frames * 2 * n]
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0),
            );
            return Some((self.rate, n));
        }
        let buf = self.decoder.decode(packet).ok()?;
        let n = buf.spec().channels().count().max(1);
        interleaved.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut interleaved[..]);
        Some((buf.spec().rate(), n))
    }

    /// The length of a packet that failed to decode. The duration comes from the container,
    /// which is as damaged as the packet: one claiming hours made us allocate gigabytes (found
    /// by fuzzing: fixtures/fuzz/mp4-lost-packet-huge-duration-oom.m4a). No codec's packet lasts
    /// a second; beyond that, the last packet's length.
    fn lost_frames(&self, packet: &Packet, last_frames: usize) -> usize {
        self.frames_per_tick
            .map(|f| (packet.dur.get() as f64 * f).round() as usize)
            .filter(|n| *n > 0 && *n <= self.rate as usize)
            .unwrap_or(last_frames)
    }
}

/// Mono samples at the rate they were decoded at, on their way to the resampler.
struct SourceBlock {
    rate: u32,
    samples: Vec<f32>,
}

/// Collects decoded mono samples into blocks for the resampler thread. A change of rate ends the
/// block (even an empty one), so the resampler sees every change where the decoder made it.
struct SourceBatcher<'a> {
    tx: &'a SyncSender<SourceBlock>,
    rate: Option<u32>,
    samples: Vec<f32>,
}

impl<'a> SourceBatcher<'a> {
    const BLOCK: usize = 16_384;

    fn new(tx: &'a SyncSender<SourceBlock>) -> Self {
        SourceBatcher {
            tx,
            rate: None,
            samples: Vec::with_capacity(Self::BLOCK),
        }
    }

    /// Called with each decoded buffer's rate before its samples are pushed.
    fn set_rate(&mut self, rate: u32) -> Result<()> {
        if self.rate != Some(rate) {
            self.send()?;
            self.rate = Some(rate);
        }
        Ok(())
    }

    fn push(&mut self, samples: &[f32]) -> Result<()> {
        self.samples.extend_from_slice(samples);
        if self.samples.len() >= Self::BLOCK {
            self.send()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.send()
    }

    /// Sends what is held, if any rate has been seen. Fails when the resampler has gone away.
    fn send(&mut self) -> Result<()> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let samples = std::mem::replace(&mut self.samples, Vec::with_capacity(Self::BLOCK));
        self.tx
            .send(SourceBlock { rate, samples })
            .map_err(|_| Error::new(ErrorCode::Internal, "the resampler stopped"))
    }
}

/// The second stage of [`decode_symphonia`]: resamples each block at its own rate to 16 kHz.
/// Returns the rate of the first decoded buffer.
fn resample_blocks(
    blocks: Receiver<SourceBlock>,
    mut resampler: RateFollower,
    tx: &SyncSender<Vec<f32>>,
) -> Result<u32> {
    let mut out = Batcher::new(tx);
    for block in blocks {
        resampler.follow(block.rate, &mut |r| out.push(r))?;
        resampler.push(&block.samples, &mut |r| out.push(r))?;
    }
    resampler.finish(&mut |r| out.push(r))?;
    out.flush()?;
    Ok(resampler.first_rate())
}

/// A resampler to 16 kHz from whatever rate the decoded buffers come at.
///
/// The rate of a buffer is the decoder's, not the container's: an implicitly signalled HE-AAC
/// stream says 44.1 kHz in its MP4 sample entry while the AAC core decodes at 22.05 kHz, and
/// resampling that as 44.1 kHz played it at double speed. A change of rate mid-stream flushes
/// the old resampler and starts a new one.
struct RateFollower {
    rate: u32,
    first: Option<u32>,
    inner: MonoResampler,
}

impl RateFollower {
    fn new(rate: u32) -> Result<RateFollower> {
        Ok(RateFollower {
            rate,
            first: None,
            inner: MonoResampler::new(rate)?,
        })
    }

    /// Called with each decoded buffer's rate before its samples are pushed.
    fn follow(&mut self, rate: u32, emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.first.get_or_insert(rate);
        if rate == self.rate {
            return Ok(());
        }
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
            return Err(Error::new(
                ErrorCode::AudioDecodeFailed,
                format!("the decoder produced audio at an impossible rate of {rate} Hz"),
            ));
        }
        self.inner.finish(emit)?;
        self.inner = MonoResampler::new(rate)?;
        self.rate = rate;
        Ok(())
    }

    fn push(&mut self, input: &[f32], emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.inner.push(input, emit)
    }

    fn finish(&mut self, emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.inner.finish(emit)
    }

    /// The rate of the first decoded buffer (the decoder's declared rate when none was).
    fn first_rate(&self) -> u32 {
        self.first.unwrap_or(self.rate)
    }
}

/// Collects 16 kHz samples into blocks of a useful size before sending them to the consumer.
struct Batcher<'a> {
    tx: &'a SyncSender<Vec<f32>>,
    block: Vec<f32>,
}

impl<'a> Batcher<'a> {
    const BLOCK: usize = 16_384;

    fn new(tx: &'a SyncSender<Vec<f32>>) -> Self {
        Batcher {
            tx,
            block: Vec::with_capacity(Self::BLOCK),
        }
    }

    /// Fails when the consumer has gone away.
    fn push(&mut self, samples: &[f32]) -> Result<()> {
        self.block.extend_from_slice(samples);
        if self.block.len() >= Self::BLOCK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(Self::BLOCK));
        self.tx
            .send(block)
            .map_err(|_| Error::new(ErrorCode::Internal, "the consumer stopped"))
    }
}

/// The next packet, or `None` at the end. A container that breaks off after some audio ends the
/// stream there (what was read is kept and the report says truncated); one that breaks off before
/// any audio is a decode failure.
fn next_packet(format: &mut dyn FormatReader, stats: &mut Stats) -> Result<Option<Packet>> {
    match read_packet(format, stats)? {
        Next::Packet(packet) => Ok(Some(packet)),
        Next::End => Ok(None),
        // Stopping at the end of the first link would silently drop everything after it.
        Next::NewLink => Err(chained_ogg()),
    }
}

/// What the demuxer has next.
enum Next {
    Packet(Packet),
    /// symphonia's Ogg reader found a second recording chained after the first; its tracks are
    /// now the new link's.
    NewLink,
    End,
}

/// [`next_packet`], but a chained Ogg link is the caller's to handle.
fn read_packet(format: &mut dyn FormatReader, stats: &mut Stats) -> Result<Next> {
    match format.next_packet() {
        Ok(Some(packet)) => Ok(Next::Packet(packet)),
        Ok(None) => Ok(Next::End),
        Err(SymphoniaError::ResetRequired) => Ok(Next::NewLink),
        Err(e) if stats.packets == 0 => Err(Error::new(
            ErrorCode::AudioDecodeFailed,
            format!("the audio data cannot be read: {e}"),
        )),
        // Chrome's live WebM has no sizes or index: it always ends with end-of-file inside an
        // unknown-size cluster, which is its normal end, not a truncation.
        Err(SymphoniaError::IoError(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                && format.format_info().format == FORMAT_ID_MKV =>
        {
            Ok(Next::End)
        }
        Err(_) => {
            stats.truncated = true;
            Ok(Next::End)
        }
    }
}

/// Averages interleaved channels into one, into `mono`.
fn downmix(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    mono.clear();
    if channels == 1 {
        mono.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    mono.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
}

fn codec_name(short_name: &str) -> String {
    if short_name.starts_with("pcm") {
        "pcm".into()
    } else {
        short_name.to_ascii_lowercase()
    }
}

/// Joins a worker thread, turning a panic inside a decoder into a decode failure.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<Result<T>> {
    handle.join().map_err(|panic| crashed(panic.as_ref()))
}

/// What the Opus path needs to know about its track beyond the packets.
struct OpusTrack<'a> {
    /// The track's codec private data: `OpusHead`, or in MP4 the magic plus `dOps`.
    extra_data: Option<&'a [u8]>,
    mp4: bool,
    /// The MP4 edit list: its media time is the pre-skip, its duration the recording's.
    edit: Option<mp4_edit::AudioEdit>,
    /// The duration the container declares, at 48 kHz.
    declared_48k: Option<u64>,
}

impl OpusTrack<'_> {
    fn head(&self) -> Option<OpusHead> {
        let bytes = self.extra_data?;
        if self.mp4 {
            OpusHead::parse_dops(bytes)
        } else {
            OpusHead::parse(bytes)
        }
    }

    /// Samples at 48 kHz to drop at the start and to keep after them. Ogg's final granule and
    /// MP4's media duration count the pre-skip; Matroska's Duration does not.
    fn trim_48k(
        &self,
        head: Option<OpusHead>,
        fallback_delay: u32,
        ogg: bool,
    ) -> (u64, Option<u64>) {
        if let Some(edit) = self.edit {
            let (skip, keep) = edit.at_rate(opus::OPUS_CLOCK);
            return (skip, keep);
        }
        let pre_skip = head.map_or(u64::from(fallback_delay), |h| u64::from(h.pre_skip));
        let keep = self.declared_48k.map(|n| {
            if ogg || self.mp4 {
                n.saturating_sub(pre_skip)
            } else {
                n
            }
        });
        (pre_skip, keep)
    }
}

/// Decodes an Opus track in parallel segments; see [`super::opus`].
fn decode_opus(
    mut format: Box<dyn FormatReader>,
    track: &Track,
    opus_track: &OpusTrack<'_>,
    limits: &DecodeLimits,
    sink: &mut Sink<'_>,
) -> Result<Stats> {
    let head = opus_track.head();
    check_channels(head)?;
    let rate = limits.opus_rate;
    if !opus::NATIVE_RATES.contains(&rate) {
        return Err(Error::new(
            ErrorCode::Internal,
            format!("libopus cannot render at {rate} Hz"),
        ));
    }
    let ratio = u64::from(opus::OPUS_CLOCK / rate);
    let ogg = format.format_info().short_name == "ogg";
    let (skip, keep) = opus_track.trim_48k(head, track.delay.unwrap_or(0), ogg);
    let first = LinkTrim {
        skip_48k: skip,
        keep_48k: keep,
    };
    let mut trimmer = LinkTrimmer::new(first, ratio, end_tolerance(rate));
    let mut resampler = MonoResampler::new(rate)?;

    let threads = limits.threads.max(1);
    let credits = 2 * threads + 2;
    let track_id = track.id;
    let (job_tx, job_rx) = sync_channel::<Segment>(threads);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (credit_tx, credit_rx) = sync_channel::<()>(credits);
    for _ in 0..credits {
        credit_tx.send(()).expect("fresh channel has room");
    }

    std::thread::scope(|scope| {
        let demux = scope.spawn(move || demux_opus(format.as_mut(), track_id, &job_tx, &credit_rx));
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let result_tx = result_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok(segment)) = job else { break };
                    let decoded = std::panic::catch_unwind(|| opus::decode_segment(segment, rate))
                        .unwrap_or_else(|_| Err("libopus panicked".into()));
                    if result_tx.send(decoded).is_err() {
                        break;
                    }
                }
            });
        }
        drop(result_tx);

        let mut corrupt = 0u64;
        let consumed = emit_in_order(result_rx, &credit_tx, &mut corrupt, &mut |decoded| {
            if let Some(link) = decoded.starts_link {
                trimmer.start_link(link);
            }
            trimmer.push(&decoded.samples, &mut |t| resampler.push(t, sink))
        });
        drop(credit_tx);
        let demuxed = join(demux);
        consumed?;
        let mut stats = demuxed??;
        resampler.finish(sink)?;
        stats.corrupt += corrupt;
        stats.source_frames = trimmer.emitted() * ratio;
        Ok(stats)
    })
}

/// Checks an `OpusHead`'s channel layout: stereo at most, or any count in mapping family 0.
fn check_channels(head: Option<OpusHead>) -> Result<()> {
    match head {
        Some(h) if h.channels > 2 && h.mapping_family != 0 => Err(Error::new(
            ErrorCode::AudioUnsupportedFormat,
            format!(
                "multichannel Opus ({} channels) is not supported",
                h.channels
            ),
        )),
        _ => Ok(()),
    }
}

/// The track id and trim of the chained Ogg link that `format` has just moved to. Every link
/// must be Opus: another codec would need a decoder of its own mid-stream.
fn next_link(format: &dyn FormatReader) -> Result<(u32, LinkTrim)> {
    let track = format
        .default_track(TrackType::Audio)
        .filter(|t| matches!(&t.codec_params, Some(CodecParameters::Audio(p)) if p.codec == CODEC_ID_OPUS))
        .ok_or_else(chained_ogg)?;
    let Some(CodecParameters::Audio(params)) = &track.codec_params else {
        unreachable!("filtered on audio parameters");
    };
    let link = OpusTrack {
        extra_data: params.extra_data.as_deref(),
        mp4: false,
        edit: None,
        declared_48k: track.num_frames,
    };
    let head = link.head();
    check_channels(head)?;
    let (skip_48k, keep_48k) = link.trim_48k(head, track.delay.unwrap_or(0), true);
    Ok((track.id, LinkTrim { skip_48k, keep_48k }))
}

/// Trims each chained Ogg link on its own: its pre-skip at its start, its padding at its end.
/// Every other file is one link.
struct LinkTrimmer {
    current: Trimmer,
    /// Frames emitted by the links before the current one.
    before: u64,
    /// 48 kHz frames per frame that libopus renders.
    ratio: u64,
    tolerance: u64,
}

impl LinkTrimmer {
    fn new(first: LinkTrim, ratio: u64, tolerance: u64) -> LinkTrimmer {
        LinkTrimmer {
            current: Self::trimmer(first, ratio, tolerance),
            before: 0,
            ratio,
            tolerance,
        }
    }

    fn trimmer(trim: LinkTrim, ratio: u64, tolerance: u64) -> Trimmer {
        Trimmer::new(
            trim.skip_48k / ratio,
            trim.keep_48k.map(|n| n / ratio),
            tolerance,
        )
    }

    /// Ends the current link (what it held past its end is its padding) and starts the next.
    fn start_link(&mut self, trim: LinkTrim) {
        self.before += self.current.emitted();
        self.current = Self::trimmer(trim, self.ratio, self.tolerance);
    }

    fn push(&mut self, block: &[f32], sink: &mut Sink<'_>) -> Result<()> {
        self.current.push(block, sink)
    }

    /// Frames emitted over all links.
    fn emitted(&self) -> u64 {
        self.before + self.current.emitted()
    }
}

/// Reads Opus packets and cuts them into segments for the decoder threads. Waits for a credit
/// before each segment so no more than a fixed number are in memory.
fn demux_opus(
    format: &mut dyn FormatReader,
    track_id: u32,
    jobs: &SyncSender<Segment>,
    credits: &Receiver<()>,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut track_id = track_id;
    let mut segment = Segment::first();
    let send = |segment: Segment| -> bool { credits.recv().is_ok() && jobs.send(segment).is_ok() };
    loop {
        let packet = match read_packet(format, &mut stats)? {
            Next::Packet(packet) => packet,
            Next::End => break,
            Next::NewLink => {
                let (id, trim) = next_link(format)?;
                track_id = id;
                // A new link is a new stream: its first segment starts a cold decoder.
                if !segment.packets.is_empty() {
                    let next = segment.successor();
                    if !send(std::mem::replace(&mut segment, next)) {
                        return Ok(stats);
                    }
                }
                segment.pre_roll.clear();
                segment.starts_link = Some(trim);
                continue;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        stats.packets += 1;
        // A packet whose TOC cannot be read still takes its place; count it as 20 ms.
        let frames = opus::packet_frames(&packet.data, opus::OPUS_CLOCK).unwrap_or(960);
        segment.frames_48k += frames as u64;
        segment.packets.push(packet.data);
        if opus::segment_full(segment.frames_48k) {
            let next = segment.successor();
            if !send(std::mem::replace(&mut segment, next)) {
                return Ok(stats); // the consumer stopped; it reports why
            }
        }
    }
    if !segment.packets.is_empty() {
        send(segment);
    }
    Ok(stats)
}

/// Hands decoded segments to `emit` in their original order, returning a credit for each.
fn emit_in_order(
    results: Receiver<Result<opus::DecodedSegment, String>>,
    credits: &SyncSender<()>,
    corrupt: &mut u64,
    emit: &mut dyn FnMut(&opus::DecodedSegment) -> Result<()>,
) -> Result<()> {
    let mut waiting = BTreeMap::new();
    let mut next = 0usize;
    for result in results {
        let decoded = result.map_err(|e| Error::new(ErrorCode::AudioDecodeFailed, e))?;
        waiting.insert(decoded.index, decoded);
        while let Some(decoded) = waiting.remove(&next) {
            *corrupt += decoded.corrupt_packets;
            emit(&decoded)?;
            // Give the demuxer back a credit; if it has already finished, nobody needs one.
            let _ = credits.try_send(());
            next += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(trimmer: &mut Trimmer, blocks: &[&[f32]]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in blocks {
            trimmer
                .push(b, &mut |s| {
                    out.extend_from_slice(s);
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn trimmer_drops_delay_and_padding() {
        let mut t = Trimmer::new(2, Some(4), 10);
        let out = collect(&mut t, &[&[0., 0., 1., 2.], &[3., 4., 5., 6.]]);
        assert_eq!(out, vec![1., 2., 3., 4.]);
        assert_eq!(t.emitted(), 4);
    }

    #[test]
    fn trimmer_ignores_an_end_that_lies() {
        let mut t = Trimmer::new(0, Some(2), 3);
        let out = collect(&mut t, &[&[1., 2., 3., 4., 5., 6.], &[7.]]);
        assert_eq!(out, vec![1., 2., 3., 4., 5., 6., 7.]);
    }

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

    #[test]
    fn downmix_averages() {
        let mut mono = vec![9.0; 5];
        downmix(&[1.0, 0.0, 0.5, 0.5], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5]);
    }
}
