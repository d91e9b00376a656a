//! The symphonia pipeline, for every codec but Opus: decode, downmix and trim on one thread,
//! resample to 16 kHz on another, hand the blocks to the sink on the calling thread. Split in
//! threads so that two cores share the work, as libopus's segments do for Opus.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use symphonia::core::codecs::audio::well_known::CODEC_ID_PCM_S16LE;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder};
use symphonia::core::formats::{FormatReader, Track};
use symphonia::core::packet::Packet;

use super::open::{codec_name, next_packet};
use super::trim::{Trimmer, end_tolerance};
use super::{MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Sink, SourceInfo, Stats, join};
use crate::audio::mp4_edit;
use crate::audio::resample::MonoResampler;
use crate::error::{Error, ErrorCode, Result};

/// Decoded blocks buffered between the decoder thread and the resampler.
const BLOCKS_IN_FLIGHT: usize = 8;

/// Decodes a non-Opus track with symphonia in a pipeline of three threads, so that two cores
/// share the work: one decodes, downmixes and trims; one resamples; this one hands the 16 kHz
/// blocks on. Each link holds at most `BLOCKS_IN_FLIGHT` blocks (64 KB each).
pub(super) fn decode_symphonia(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages() {
        let mut mono = vec![9.0; 5];
        downmix(&[1.0, 0.0, 0.5, 0.5], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5]);
    }
}
