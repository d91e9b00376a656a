//! The Opus path: an Opus track in a container (Ogg, WebM/Matroska, MP4), decoded by libopus on
//! several cores rather than by symphonia. Here are its trim (the `OpusHead` pre-skip, MP4's
//! big-endian `dOps`, the MP4 edit list), chained Ogg links (each trimmed on its own) and its
//! pipeline: one thread demuxes the packets into segments, `DecodeLimits::threads` threads decode
//! them ([`crate::audio::opus`]), and the calling thread puts them back in order, trims them,
//! resamples them when libopus renders at another rate than 16 kHz, and hands them to the sink.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::formats::{FormatReader, Track, TrackType};

use super::open::{Next, chained_ogg, read_packet};
use super::trim::{Trimmer, end_tolerance};
use super::{DecodeLimits, Sink, Stats, join};
use crate::audio::mp4_edit;
use crate::audio::opus::{self, LinkTrim, OpusHead, Segment};
use crate::audio::resample::MonoResampler;
use crate::error::{Error, ErrorCode, Result};

/// What the Opus path needs to know about its track beyond the packets.
pub(super) struct OpusTrack<'a> {
    /// The track's codec private data: `OpusHead`, or in MP4 the magic plus `dOps`.
    pub(super) extra_data: Option<&'a [u8]>,
    pub(super) mp4: bool,
    /// The MP4 edit list: its media time is the pre-skip, its duration the recording's.
    pub(super) edit: Option<mp4_edit::AudioEdit>,
    /// The duration the container declares, at 48 kHz.
    pub(super) declared_48k: Option<u64>,
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

/// Decodes an Opus track in parallel segments; see [`crate::audio::opus`].
pub(super) fn decode_opus(
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
pub(super) fn next_link(format: &dyn FormatReader) -> Result<(u32, LinkTrim)> {
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
