//! The duration limit, checked before anything is decoded: from what the headers declare, or,
//! when they declare nothing, from the packets' timestamps. Decoding an over-long recording only
//! to refuse it at the limit costs seconds of CPU and hundreds of megabytes of spill.

use std::fs::File;
use std::path::Path;

use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatReader, Track};
use symphonia::core::units::TimeBase;

use super::DecodeLimits;
use super::open::{chained_ogg, open_format};
use super::opus_track::next_link;
use crate::audio::opus;
use crate::error::{Error, ErrorCode, Result};

/// How long the container says the track is, in seconds, when it says. Frame counts are at the
/// container's `rate` (for implicit HE-AAC twice the rate that is decoded), so this is in
/// seconds, not frames. A zero duration (a fragmented MP4's empty `moov`) says nothing.
pub(super) fn declared_seconds(format: &dyn FormatReader, track: &Track, rate: u32) -> Option<f64> {
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

/// Refuses a recording that is longer than the limit from its packets' timestamps alone (for
/// Opus, from the durations in their TOC bytes, which no container can lie about), before any of
/// it is decoded. Used when the headers declare no duration: a 315 KB WebM of 2-byte packets
/// holds five hours, and decoding four of them took 18 s and spilled 920 MB before the limit hit.
/// Demuxing costs a small fraction of decoding. Chained Ogg Opus links count together; other
/// chained Ogg files are refused here.
pub(super) fn scan_duration(
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

pub(super) fn too_long(seconds: f64, limits: &DecodeLimits) -> Error {
    Error::new(
        ErrorCode::AudioTooLong,
        format!(
            "the recording is longer than the limit of {:.0} minutes (at least {:.0} minutes)",
            limits.max_duration_s / 60.0,
            seconds / 60.0
        ),
    )
}
