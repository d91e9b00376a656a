//! Opening the input and its container: the size check, recognising the container from the
//! bytes, choosing the audio track, building its decoder, and reading packets (where the end of a
//! stream is told apart from a container that breaks off or chains a second Ogg stream). Both
//! decoding paths read packets through here, and the duration scan opens the container here too,
//! so the two paths (and the scan) see the same container.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known::{FORMAT_ID_ISOMP4, FORMAT_ID_MKV};
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::Packet;

use super::{DecodeLimits, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Stats};
use crate::audio::{aac, mp4_edit, wav_header};
use crate::error::{Error, ErrorCode, Result};

/// Opens the input and checks its size against the limits before anything reads it.
pub(super) fn open_input(path: &Path, limits: &DecodeLimits) -> Result<(File, u64)> {
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
pub(super) fn open_format(
    path: &Path,
    mut file: File,
    bytes: u64,
) -> Result<Box<dyn FormatReader>> {
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
/// configuration, which symphonia decodes ([`crate::audio::aac`]).
pub(super) fn make_decoder(params: &AudioCodecParameters) -> Result<Box<dyn AudioDecoder>> {
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
pub(super) fn decoder_rate(decoder: &dyn AudioDecoder, container_rate: Option<u32>) -> Result<u32> {
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

pub(super) fn container_name(format: &dyn FormatReader) -> String {
    match format.format_info().short_name {
        "isomp4" => "mp4",
        "matroska" | "mkv" => "matroska",
        "riff" | "wave" => "wav",
        other => other,
    }
    .to_string()
}

/// The audio track to decode, or a clear error when there is none or its codec is unknown.
pub(super) fn pick_audio_track(format: &dyn FormatReader, path: &Path) -> Result<Track> {
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

pub(super) fn codec_name(short_name: &str) -> String {
    if short_name.starts_with("pcm") {
        "pcm".into()
    } else {
        short_name.to_ascii_lowercase()
    }
}

/// The next packet, or `None` at the end. A container that breaks off after some audio ends the
/// stream there (what was read is kept and the report says truncated); one that breaks off before
/// any audio is a decode failure.
pub(super) fn next_packet(
    format: &mut dyn FormatReader,
    stats: &mut Stats,
) -> Result<Option<Packet>> {
    match read_packet(format, stats)? {
        Next::Packet(packet) => Ok(Some(packet)),
        Next::End => Ok(None),
        // Stopping at the end of the first link would silently drop everything after it.
        Next::NewLink => Err(chained_ogg()),
    }
}

/// What the demuxer has next.
pub(super) enum Next {
    Packet(Packet),
    /// symphonia's Ogg reader found a second recording chained after the first; its tracks are
    /// now the new link's.
    NewLink,
    End,
}

/// [`next_packet`], but a chained Ogg link is the caller's to handle.
pub(super) fn read_packet(format: &mut dyn FormatReader, stats: &mut Stats) -> Result<Next> {
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

pub(super) fn chained_ogg() -> Error {
    Error::new(
        ErrorCode::AudioUnsupportedFormat,
        "the Ogg file chains several recordings one after another (chained Ogg streams); \
         that is supported for Opus only",
    )
}
