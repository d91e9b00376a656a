//! Per-frame speaker features that survive loudness normalisation, streamed from the 16 kHz WAV.
//!
//! Every 20 ms frame inside a speech region gets a YIN pitch estimate with a voicing decision and
//! 12 mel-frequency cepstral coefficients (c1..c12; c0, the frame energy, is left out on purpose:
//! loudness is not a speaker cue). Only voiced frames carry speaker information reliably (vowels:
//! pitch and formants), so only they are summed into 0.2 s blocks. Memory: one [`Block`] (about
//! 60 bytes) per 0.2 s of recording, 3 hours = 54 000 blocks (3 MB); samples are read frame by
//! frame and never kept.

use std::path::Path;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{Error, ErrorCode, Result};

pub const RATE: u32 = 16_000;
/// Hop between frames: 20 ms, the loudness meter's frame.
pub const HOP: usize = 320;
/// Analysis buffer of a frame: 40 ms centred on the hop (YIN needs a window plus the longest lag).
const BUF: usize = 640;
/// YIN integration window.
const YIN_W: usize = 320;
/// MFCC window: 25 ms, centred in the buffer.
const MFCC_WIN: usize = 400;
const MFCC_FFT: usize = 512;
const YIN_FFT: usize = 1024;
const N_MEL: usize = 24;
/// YIN's absolute threshold on the normalised difference.
const YIN_THRESHOLD: f32 = 0.15;
/// Cepstra kept per frame (c1..=N_CEP).
pub const N_CEP: usize = 12;
/// Features per block mean: the cepstra and log2 pitch.
pub const N_FEAT: usize = N_CEP + 1;

/// A frame is a tone when one peak (±2 bins, the Hamming main lobe) above the voice's pitch range
/// holds this share of its power above 94 Hz (a beep)...
const TONE_ONE_PEAK_SHARE: f32 = 0.9;
/// ...or its two strongest peaks hold this share and are not harmonics of one pitch (a ring, a
/// DTMF key). Voiced speech spreads power over many harmonics and formants; pre-emphasised, its
/// top two peaks hold well under this.
const TONAL_PEAK_SHARE: f32 = 0.95;
/// A block is a tone, not speech, when at least this share of its speech frames is tonal.
const TONAL_BLOCK_SHARE: f32 = 0.7;

/// Pitch search range.
pub const F0_MIN: f32 = 60.0;
pub const F0_MAX: f32 = 400.0;

/// What one frame yields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pitch {
    pub f0_hz: f32,
    /// YIN's cumulative mean normalised difference at the chosen lag (0 = perfectly periodic).
    pub aperiodicity: f32,
}

/// Sums of the voiced frames of one 0.2 s block (frames `index * frames_per_block ..`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Block {
    /// Frames of this block inside speech regions.
    pub speech_frames: u16,
    /// Voiced speech frames, the ones summed below.
    pub voiced_frames: u16,
    /// Sums over voiced frames of c1..c12 and log2(f0).
    pub sum: [f32; N_FEAT],
    /// Sums over all speech frames, voiced or not, of c1..c12 (the resegmentation's spectral
    /// model: consonants and breath carry a voice's timbre too).
    pub cep_all: [f32; N_CEP],
    /// Speech frames that are a steady tone (a beep, a ring, a hum): see [`drop_tones`].
    pub tonal_frames: u16,
}

/// The voiced-frame features of a recording, block by block.
#[derive(Debug, Clone)]
pub struct Features {
    pub block_s: f64,
    pub blocks: Vec<Block>,
    pub duration_s: f64,
    /// Level (dBFS) of every 20 ms frame (its hop), speech or not.
    pub frame_db: Vec<f32>,
}

/// YIN pitch tracker and MFCC analyser with their FFT plans and scratch buffers.
pub struct FrameAnalyser {
    yin_fft: Arc<dyn RealToComplex<f32>>,
    yin_a: Vec<f32>,
    yin_b: Vec<f32>,
    spec_a: Vec<Complex<f32>>,
    spec_b: Vec<Complex<f32>>,
    yin_inv: Arc<dyn realfft::ComplexToReal<f32>>,
    cross: Vec<f32>,
    scratch_fwd: Vec<Complex<f32>>,
    scratch_inv: Vec<Complex<f32>>,
    mfcc_fft: Arc<dyn RealToComplex<f32>>,
    mfcc_in: Vec<f32>,
    mfcc_spec: Vec<Complex<f32>>,
    mfcc_scratch: Vec<Complex<f32>>,
    /// The power spectrum [`Self::last_frame_tone`] takes peaks out of, reused frame to frame.
    tone_power: Vec<f32>,
    window: Vec<f32>,
    /// Triangular mel filters: (first bin, weights).
    mel: Vec<(usize, Vec<f32>)>,
    /// DCT-II rows for c1..=N_CEP.
    dct: Vec<[f32; N_MEL]>,
}

impl Default for FrameAnalyser {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAnalyser {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let yin_fft = planner.plan_fft_forward(YIN_FFT);
        let yin_inv = planner.plan_fft_inverse(YIN_FFT);
        let mfcc_fft = planner.plan_fft_forward(MFCC_FFT);
        let window = (0..MFCC_WIN)
            .map(|n| {
                0.54 - 0.46 * (2.0 * std::f32::consts::PI * n as f32 / (MFCC_WIN - 1) as f32).cos()
            })
            .collect();
        let mel = mel_filters(N_MEL, MFCC_FFT, RATE as f32, 80.0, 7600.0);
        let dct = (1..=N_CEP)
            .map(|k| {
                let mut row = [0f32; N_MEL];
                for (m, r) in row.iter_mut().enumerate() {
                    *r = (std::f32::consts::PI * k as f32 * (m as f32 + 0.5) / N_MEL as f32).cos()
                        * (2.0 / N_MEL as f32).sqrt();
                }
                row
            })
            .collect();
        FrameAnalyser {
            yin_a: yin_fft.make_input_vec(),
            yin_b: yin_fft.make_input_vec(),
            spec_a: yin_fft.make_output_vec(),
            spec_b: yin_fft.make_output_vec(),
            cross: yin_inv.make_output_vec(),
            scratch_fwd: yin_fft.make_scratch_vec(),
            scratch_inv: yin_inv.make_scratch_vec(),
            mfcc_in: mfcc_fft.make_input_vec(),
            mfcc_spec: mfcc_fft.make_output_vec(),
            mfcc_scratch: mfcc_fft.make_scratch_vec(),
            tone_power: Vec::with_capacity(MFCC_FFT / 2 + 1),
            yin_fft,
            yin_inv,
            mfcc_fft,
            window,
            mel,
            dct,
        }
    }

    /// YIN (de Cheveigné & Kawahara 2002) on a 40 ms buffer: the difference function through an
    /// FFT cross-correlation, cumulative mean normalisation, absolute threshold, parabolic
    /// interpolation. `None` when the frame is aperiodic (unvoiced, silence, noise).
    pub fn pitch(&mut self, buf: &[f32]) -> Option<Pitch> {
        assert_eq!(buf.len(), BUF);
        let max_lag = (RATE as f32 / F0_MIN).ceil() as usize; // 267
        let min_lag = (RATE as f32 / F0_MAX).floor() as usize; // 40
        let energy: f32 = buf[..YIN_W].iter().map(|x| x * x).sum();
        if energy < 1e-7 * YIN_W as f32 {
            return None; // digital silence or far below any speech
        }
        // cross(tau) = sum_{j<W} x[j] * x[j+tau]
        self.yin_a.fill(0.0);
        self.yin_a[..YIN_W].copy_from_slice(&buf[..YIN_W]);
        self.yin_b.fill(0.0);
        self.yin_b[..BUF].copy_from_slice(buf);
        self.yin_fft
            .process_with_scratch(&mut self.yin_a, &mut self.spec_a, &mut self.scratch_fwd)
            .expect("fft sizes");
        self.yin_fft
            .process_with_scratch(&mut self.yin_b, &mut self.spec_b, &mut self.scratch_fwd)
            .expect("fft sizes");
        for (a, b) in self.spec_a.iter_mut().zip(&self.spec_b) {
            *a = a.conj() * b;
        }
        self.spec_a[0].im = 0.0;
        let last = self.spec_a.len() - 1;
        self.spec_a[last].im = 0.0;
        self.yin_inv
            .process_with_scratch(&mut self.spec_a, &mut self.cross, &mut self.scratch_inv)
            .expect("fft sizes");
        let scale = 1.0 / YIN_FFT as f32;
        // energy of x[tau .. tau+W] by a running sum
        let mut e_tau = energy;
        let mut running = 0.0f32;
        let mut best: Option<(usize, f32)> = None;
        let mut found: Option<(usize, f32)> = None;
        for tau in 1..=max_lag {
            e_tau += buf[tau + YIN_W - 1] * buf[tau + YIN_W - 1] - buf[tau - 1] * buf[tau - 1];
            let d = (energy + e_tau - 2.0 * self.cross[tau] * scale).max(0.0);
            running += d;
            let dprime = if running > 0.0 {
                d * tau as f32 / running
            } else {
                1.0
            };
            if tau < min_lag {
                continue;
            }
            if best.is_none_or(|(_, b)| dprime < b) {
                best = Some((tau, dprime));
            }
            // the first dip under the threshold, followed down to its local minimum
            match found {
                None if dprime < YIN_THRESHOLD => found = Some((tau, dprime)),
                Some((_, fd)) if dprime < fd => found = Some((tau, dprime)),
                Some(_) => break,
                None => {}
            }
        }
        let (tau, ap) = match found {
            Some(f) => f,
            None => {
                let b = best?;
                if b.1 > 0.3 {
                    return None;
                }
                b
            }
        };
        // parabolic interpolation on the raw normalised difference around tau
        let tau_f = refine(buf, tau, max_lag);
        let f0 = RATE as f32 / tau_f;
        (F0_MIN * 0.95..=F0_MAX * 1.05)
            .contains(&f0)
            .then_some(Pitch {
                f0_hz: f0,
                aperiodicity: ap,
            })
    }

    /// c1..c12 of the 25 ms Hamming-windowed centre of the buffer (pre-emphasis 0.97).
    pub fn mfcc(&mut self, buf: &[f32]) -> [f32; N_CEP] {
        let off = (BUF - MFCC_WIN) / 2;
        self.mfcc_in.fill(0.0);
        for n in 0..MFCC_WIN {
            let x = buf[off + n] - 0.97 * buf[off + n - 1];
            self.mfcc_in[n] = x * self.window[n];
        }
        self.mfcc_fft
            .process_with_scratch(
                &mut self.mfcc_in,
                &mut self.mfcc_spec,
                &mut self.mfcc_scratch,
            )
            .expect("fft sizes");
        let mut logmel = [0f32; N_MEL];
        for (m, (first, weights)) in self.mel.iter().enumerate() {
            let e: f32 = weights
                .iter()
                .enumerate()
                .map(|(k, w)| w * self.mfcc_spec[first + k].norm_sqr())
                .sum();
            logmel[m] = (e + 1e-10).ln();
        }
        let mut out = [0f32; N_CEP];
        for (o, row) in out.iter_mut().zip(&self.dct) {
            *o = row.iter().zip(&logmel).map(|(a, b)| a * b).sum();
        }
        out
    }

    /// The strongest bin of the frame last given to [`Self::mfcc`] when the frame is a tone: a
    /// peak above the voice's pitch range ([`F0_MAX`]) holding 90 % of the power above 94 Hz,
    /// or two peaks holding [`TONAL_PEAK_SHARE`] of it that are not harmonics of one pitch (a
    /// hummed "mm" is F0 and 2·F0 alone; a ring is 440 + 480 Hz, a DTMF key 697 + 1209 Hz).
    pub fn last_frame_tone(&mut self) -> Option<usize> {
        const SKIP: usize = 3;
        let power = &mut self.tone_power;
        power.clear();
        power.extend(self.mfcc_spec[SKIP..].iter().map(|c| c.norm_sqr()));
        let total: f32 = power.iter().sum();
        if total <= 1e-12 {
            return None;
        }
        let (first, p1) = take_peak(power);
        let (second, p2) = take_peak(power);
        let hz = |bin: usize| (bin + SKIP) as f32 * RATE as f32 / MFCC_FFT as f32;
        if hz(first) < F0_MAX {
            return None;
        }
        let ratio = hz(first).max(hz(second)) / hz(first).min(hz(second)).max(1.0);
        let harmonic = (2.0..=4.0).contains(&ratio.round()) && (ratio - ratio.round()).abs() < 0.06;
        let tone =
            p1 >= TONE_ONE_PEAK_SHARE * total || (p1 + p2 >= TONAL_PEAK_SHARE * total && !harmonic);
        tone.then_some(first + SKIP)
    }
}

/// Removes the strongest peak (its bin ±2, the Hamming main lobe) from `power`: (bin, power).
fn take_peak(power: &mut [f32]) -> (usize, f32) {
    let top = (0..power.len())
        .max_by(|&a, &b| power[a].total_cmp(&power[b]))
        .unwrap_or(0);
    let lobe = top.saturating_sub(2)..(top + 3).min(power.len());
    let p = power[lobe.clone()].iter().sum();
    power[lobe].fill(0.0);
    (top, p)
}

/// Clears the blocks that are mostly steady tone (a notification beep, a phone ringing, a test
/// tone): the energy detector takes them for speech, and a 0.4 s beep would otherwise become a
/// turn, or a third "voice" pulling the clustering. Returns how many blocks were cleared.
pub fn drop_tones(blocks: &mut [Block]) -> usize {
    let mut dropped = 0;
    for b in blocks.iter_mut() {
        let speech = f32::from(b.speech_frames);
        if b.tonal_frames > 0 && f32::from(b.tonal_frames) >= TONAL_BLOCK_SHARE * speech {
            *b = Block::default();
            dropped += 1;
        }
    }
    dropped
}

/// Parabolic interpolation of the difference function around an integer lag (3 lags, direct).
fn refine(buf: &[f32], tau: usize, max_lag: usize) -> f32 {
    if tau <= 1 || tau >= max_lag {
        return tau as f32;
    }
    let d = |t: usize| -> f32 {
        (0..YIN_W)
            .map(|j| {
                let v = buf[j] - buf[j + t];
                v * v
            })
            .sum()
    };
    let (a, b, c) = (d(tau - 1), d(tau), d(tau + 1));
    let den = a - 2.0 * b + c;
    if den.abs() < 1e-12 {
        return tau as f32;
    }
    tau as f32 + (0.5 * (a - c) / den).clamp(-1.0, 1.0)
}

fn hz_to_mel(f: f32) -> f32 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f32) -> f32 {
    700.0 * (10f32.powf(m / 2595.0) - 1.0)
}

fn mel_filters(n: usize, fft: usize, rate: f32, lo: f32, hi: f32) -> Vec<(usize, Vec<f32>)> {
    let (mlo, mhi) = (hz_to_mel(lo), hz_to_mel(hi));
    let edges: Vec<f32> = (0..n + 2)
        .map(|i| mel_to_hz(mlo + (mhi - mlo) * i as f32 / (n + 1) as f32) * fft as f32 / rate)
        .collect();
    (0..n)
        .map(|m| {
            let (l, c, r) = (edges[m], edges[m + 1], edges[m + 2]);
            let first = l.floor().max(0.0) as usize;
            let last = (r.ceil() as usize).min(fft / 2);
            let weights = (first..=last)
                .map(|k| {
                    let k = k as f32;
                    if k <= l || k >= r {
                        0.0
                    } else if k <= c {
                        (k - l) / (c - l)
                    } else {
                        (r - k) / (r - c)
                    }
                })
                .collect();
            (first, weights)
        })
        .collect()
}

/// Streams `pcm_wav` (16 kHz mono, 16-bit or float) and sums the voiced speech frames into
/// blocks of `frames_per_block` frames. Frame `i` is centred at `(i + 0.5) * 20 ms`.
pub fn extract(pcm_wav: &Path, speech: &[[f64; 2]], frames_per_block: usize) -> Result<Features> {
    let internal = |e: hound::Error| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot read {}: {e}", pcm_wav.display()),
        )
    };
    let mut reader = hound::WavReader::open(pcm_wav).map_err(internal)?;
    let spec = reader.spec();
    if spec.sample_rate != RATE || spec.channels != 1 {
        return Err(Error::new(
            ErrorCode::Internal,
            format!(
                "{}: expected 16 kHz mono, found {} Hz x {} channels",
                pcm_wav.display(),
                spec.sample_rate,
                spec.channels
            ),
        ));
    }
    let total = reader.duration() as usize;
    let n_frames = total.div_ceil(HOP);
    let mut blocks = vec![Block::default(); n_frames.div_ceil(frames_per_block)];
    let mut frame_db = Vec::with_capacity(n_frames);
    let mut analyser = FrameAnalyser::new();

    // Sliding buffer: frame i needs samples [i*HOP - HOP/2, i*HOP - HOP/2 + BUF).
    let mut buf = vec![0f32; BUF];
    let mut filled = HOP / 2; // the first frame starts half a hop before the recording
    let mut region = 0usize;
    let mut frame = 0usize;
    let mut last_tone: Option<usize> = None;
    let mut sample_iter: Box<dyn Iterator<Item = std::result::Result<f32, hound::Error>>> =
        match spec.sample_format {
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
                Box::new(
                    reader
                        .samples::<i32>()
                        .map(move |s| s.map(|v| v as f32 * scale)),
                )
            }
            hound::SampleFormat::Float => Box::new(reader.samples::<f32>()),
        };
    let mut done = false;
    while frame < n_frames {
        while filled < BUF {
            match sample_iter.next() {
                Some(s) => {
                    buf[filled] = s.map_err(internal)?;
                    filled += 1;
                }
                None => {
                    done = true;
                    buf[filled..].fill(0.0);
                    filled = BUF;
                }
            }
        }
        frame_db.push(hop_level_db(&buf[HOP / 2..HOP / 2 + HOP]));
        let centre = (frame as f64 + 0.5) * HOP as f64 / RATE as f64;
        while region < speech.len() && speech[region][1] <= centre {
            region += 1;
        }
        let in_speech = region < speech.len() && speech[region][0] <= centre;
        if in_speech {
            let b = &mut blocks[frame / frames_per_block];
            b.speech_frames += 1;
            let c = analyser.mfcc(&buf);
            // A tone holds its frequency; a voice's strongest harmonic moves with pitch and
            // formants, so only a tonal frame at its predecessor's peak (±1 bin) counts.
            let tone = analyser.last_frame_tone();
            let steady = matches!((tone, last_tone), (Some(t), Some(p)) if t.abs_diff(p) <= 1);
            b.tonal_frames += u16::from(steady);
            last_tone = tone;
            for (s, v) in b.cep_all.iter_mut().zip(c.iter()) {
                *s += v;
            }
            if let Some(p) = analyser.pitch(&buf) {
                b.voiced_frames += 1;
                for (s, v) in b.sum.iter_mut().zip(c.iter()) {
                    *s += v;
                }
                b.sum[N_CEP] += p.f0_hz.log2();
            }
        } else {
            last_tone = None;
        }
        buf.copy_within(HOP.., 0);
        filled = BUF - HOP;
        frame += 1;
        if done && frame * HOP >= total + HOP {
            break;
        }
    }
    Ok(Features {
        block_s: frames_per_block as f64 * HOP as f64 / RATE as f64,
        blocks,
        duration_s: total as f64 / RATE as f64,
        frame_db,
    })
}

/// RMS level of one hop in dBFS, floored at -120.
fn hop_level_db(hop: &[f32]) -> f32 {
    let power = hop.iter().map(|v| v * v).sum::<f32>() / hop.len().max(1) as f32;
    (10.0 * power.max(1e-12).log10()).max(crate::audio::loudness::SILENCE_DB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f0: f32, harmonics: usize) -> Vec<f32> {
        (0..BUF)
            .map(|n| {
                let t = n as f32 / RATE as f32;
                (1..=harmonics)
                    .map(|h| {
                        (2.0 * std::f32::consts::PI * f0 * h as f32 * t + h as f32).sin() / h as f32
                    })
                    .sum::<f32>()
                    * 0.3
            })
            .collect()
    }

    #[test]
    fn pitch_of_tones_within_one_percent() {
        let mut a = FrameAnalyser::new();
        for &f0 in &[65.0f32, 98.0, 123.4, 150.0, 210.0, 261.6, 330.0, 390.0] {
            for harmonics in [1, 8] {
                let p = a
                    .pitch(&tone(f0, harmonics))
                    .unwrap_or_else(|| panic!("{f0} Hz x{harmonics} unvoiced"));
                let err = (p.f0_hz - f0).abs() / f0;
                assert!(err < 0.01, "{f0} Hz x{harmonics}: got {} Hz", p.f0_hz);
            }
        }
    }

    #[test]
    fn noise_and_silence_are_unvoiced() {
        let mut a = FrameAnalyser::new();
        assert!(a.pitch(&vec![0.0; BUF]).is_none());
        let mut rng = fastrand::Rng::with_seed(1);
        let mut voiced = 0;
        for _ in 0..50 {
            let noise: Vec<f32> = (0..BUF).map(|_| rng.f32() - 0.5).collect();
            voiced += usize::from(a.pitch(&noise).is_some());
        }
        assert!(voiced <= 2, "{voiced} of 50 noise frames voiced");
    }

    fn sines(freqs: &[f32]) -> Vec<f32> {
        (0..BUF)
            .map(|n| {
                let t = n as f32 / RATE as f32;
                freqs
                    .iter()
                    .map(|f| 0.2 * (2.0 * std::f32::consts::PI * f * t).sin())
                    .sum()
            })
            .collect()
    }

    #[test]
    fn beeps_and_rings_are_tonal_voices_and_noise_are_not() {
        let mut a = FrameAnalyser::new();
        let mut tonal = |x: &[f32]| {
            a.mfcc(x);
            a.last_frame_tone().is_some()
        };
        for f in [440.0, 1000.0, 1333.3, 3100.0] {
            assert!(tonal(&sines(&[f])), "{f} Hz beep");
        }
        assert!(tonal(&sines(&[697.0, 1209.0])), "DTMF 1");
        assert!(tonal(&sines(&[440.0, 480.0])), "ring tone");
        for (f0, harmonics) in [(110.0, 12), (220.0, 8), (320.0, 5), (180.0, 2), (260.0, 2)] {
            assert!(!tonal(&tone(f0, harmonics)), "{f0} Hz x{harmonics}");
        }
        let mut rng = fastrand::Rng::with_seed(3);
        let noise: Vec<f32> = (0..BUF).map(|_| rng.f32() - 0.5).collect();
        assert!(!tonal(&noise));
        assert!(!tonal(&vec![0.0; BUF]));
    }

    #[test]
    fn mostly_tonal_blocks_are_cleared() {
        let block = |speech, tonal| Block {
            speech_frames: speech,
            voiced_frames: speech,
            tonal_frames: tonal,
            ..Block::default()
        };
        let mut blocks = vec![block(10, 10), block(10, 7), block(10, 6), block(10, 0)];
        assert_eq!(drop_tones(&mut blocks), 2);
        let speech: Vec<u16> = blocks.iter().map(|b| b.speech_frames).collect();
        assert_eq!(speech, vec![0, 0, 10, 10]);
    }

    #[test]
    fn mfcc_ignores_gain() {
        let mut a = FrameAnalyser::new();
        let x = tone(140.0, 10);
        let quiet: Vec<f32> = x.iter().map(|v| v * 0.05).collect();
        let (c1, c2) = (a.mfcc(&x), a.mfcc(&quiet));
        for (p, q) in c1.iter().zip(&c2) {
            assert!((p - q).abs() < 0.05, "{c1:?} vs {c2:?}");
        }
    }
}
