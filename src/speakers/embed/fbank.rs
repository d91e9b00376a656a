//! The CAM++ front end: Kaldi's log mel filter bank exactly as 3D-Speaker computes it,
//! `torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80, sample_frequency=16000, dither=0)`
//! with Kaldi's defaults, then per-window mean normalisation (`feat - feat.mean(0)`).
//!
//! Per frame (25 ms every 10 ms, `snip_edges`: only frames that fit whole): remove the frame's
//! DC offset, pre-emphasise (`x[j] -= 0.97·x[j-1]`, `x[0] -= 0.97·x[0]`), multiply by the Povey
//! window (`hann(400, symmetric)^0.85`), zero-pad to 512, power spectrum, 80 triangular filters
//! on Kaldi's mel scale (`1127·ln(1 + f/700)`, 20 Hz to Nyquist, the Nyquist bin unused), then
//! `ln(max(energy, f32::EPSILON))`. No energy column, no dither. The model was trained on
//! samples in [-1, 1], which is what the decoder gives.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the model expects.
pub const SAMPLE_RATE: usize = 16_000;
/// 25 ms frame.
pub const FRAME_LEN: usize = 400;
/// 10 ms shift.
pub const FRAME_SHIFT: usize = 160;
/// Mel bands.
pub const N_MELS: usize = 80;
/// The frame rounded up to a power of two.
const N_FFT: usize = 512;
const N_BINS: usize = N_FFT / 2 + 1;
const PREEMPHASIS: f32 = 0.97;
const LOW_FREQ: f64 = 20.0;
const POVEY_POWER: f64 = 0.85;

/// Window, filters and FFT plan. Cheap to share between threads.
pub struct KaldiFbank {
    window: Vec<f32>,
    /// For each mel band: its first FFT bin and its non-zero weights from there.
    filters: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl Default for KaldiFbank {
    fn default() -> Self {
        Self::new()
    }
}

impl KaldiFbank {
    pub fn new() -> Self {
        let window = (0..FRAME_LEN)
            .map(|n| {
                let hann = 0.5
                    - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / (FRAME_LEN - 1) as f64).cos();
                hann.powf(POVEY_POWER) as f32
            })
            .collect();
        let filters = mel_filters()
            .chunks_exact(N_BINS)
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            window,
            filters,
            fft,
        }
    }

    /// Frames Kaldi makes of `n` samples (`snip_edges`): none below 25 ms.
    pub fn n_frames(n: usize) -> usize {
        if n < FRAME_LEN {
            0
        } else {
            1 + (n - FRAME_LEN) / FRAME_SHIFT
        }
    }

    /// The log mel filter bank of `wav`, frame-major: `n_frames(wav.len())` rows of `N_MELS`,
    /// appended to `out`. Not mean-normalised (see [`subtract_mean`]).
    pub fn fbank_into(&self, wav: &[f32], out: &mut Vec<f32>) {
        let n_frames = Self::n_frames(wav.len());
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = [0f32; N_BINS];
        out.reserve(n_frames * N_MELS);
        for t in 0..n_frames {
            let src = &wav[t * FRAME_SHIFT..t * FRAME_SHIFT + FRAME_LEN];
            let mean = (src.iter().map(|&s| f64::from(s)).sum::<f64>() / FRAME_LEN as f64) as f32;
            let (head, pad) = frame.split_at_mut(FRAME_LEN);
            for (d, &s) in head.iter_mut().zip(src) {
                *d = s - mean;
            }
            for j in (1..FRAME_LEN).rev() {
                head[j] -= PREEMPHASIS * head[j - 1];
            }
            head[0] -= PREEMPHASIS * head[0];
            for (d, w) in head.iter_mut().zip(&self.window) {
                *d *= w;
            }
            pad.fill(0.0);
            // The lengths come from the plan itself, so this cannot fail.
            let _ = self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (first, weights) in &self.filters {
                let e: f32 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(e.max(f32::EPSILON).ln());
            }
        }
    }
}

/// 3D-Speaker's mean normalisation: subtracts from each band its mean over the frames of
/// `feats` (frame-major rows of `N_MELS`).
pub fn subtract_mean(feats: &mut [f32]) {
    let frames = feats.len() / N_MELS;
    if frames == 0 {
        return;
    }
    let mut mean = [0f64; N_MELS];
    for row in feats.chunks_exact(N_MELS) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let mean = mean.map(|m| (m / frames as f64) as f32);
    for row in feats.chunks_exact_mut(N_MELS) {
        for (v, m) in row.iter_mut().zip(&mean) {
            *v -= m;
        }
    }
}

fn mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// torchaudio's `get_mel_banks(80, 512, 16000, 20, 0 → 8000, …)` with the zero Nyquist column,
/// row-major `N_MELS × N_BINS`.
fn mel_filters() -> Vec<f32> {
    let bin_width = SAMPLE_RATE as f64 / N_FFT as f64;
    let (lo, hi) = (mel(LOW_FREQ), mel(SAMPLE_RATE as f64 / 2.0));
    let delta = (hi - lo) / (N_MELS + 1) as f64;
    let mut weights = vec![0f32; N_MELS * N_BINS];
    for m in 0..N_MELS {
        let left = lo + m as f64 * delta;
        let center = lo + (m + 1) as f64 * delta;
        let right = lo + (m + 2) as f64 * delta;
        for k in 0..N_FFT / 2 {
            let f = mel(bin_width * k as f64);
            let up = (f - left) / (center - left);
            let down = (right - f) / (right - center);
            weights[m * N_BINS + k] = up.min(down).max(0.0) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_follows_snip_edges() {
        assert_eq!(KaldiFbank::n_frames(0), 0);
        assert_eq!(KaldiFbank::n_frames(399), 0);
        assert_eq!(KaldiFbank::n_frames(400), 1);
        assert_eq!(KaldiFbank::n_frames(16_000), 98);
        assert_eq!(KaldiFbank::n_frames(24_000), 148);
    }

    #[test]
    fn sine_peaks_in_its_mel_band() {
        let fb = KaldiFbank::new();
        for hz in [300.0, 1000.0, 3000.0, 6000.0] {
            let wav: Vec<f32> = (0..4_000)
                .map(|i| 0.3 * (2.0 * std::f64::consts::PI * hz * i as f64 / 16_000.0).sin() as f32)
                .collect();
            let mut out = Vec::new();
            fb.fbank_into(&wav, &mut out);
            assert_eq!(out.len(), KaldiFbank::n_frames(4_000) * N_MELS);
            let row = &out[5 * N_MELS..6 * N_MELS];
            let peak = (0..N_MELS)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            // The band whose centre is nearest the tone, on the same mel scale.
            let delta = (mel(8000.0) - mel(LOW_FREQ)) / (N_MELS + 1) as f64;
            let want = ((mel(hz) - mel(LOW_FREQ)) / delta - 1.0).round() as usize;
            assert!(
                peak.abs_diff(want) <= 1,
                "{hz} Hz: peak in band {peak}, expected {want}"
            );
        }
    }

    #[test]
    fn silence_is_the_epsilon_floor_and_normalises_to_zero() {
        let fb = KaldiFbank::new();
        let mut out = Vec::new();
        fb.fbank_into(&vec![0.0; 8_000], &mut out);
        assert_eq!(out.len(), 48 * N_MELS);
        assert!(out.iter().all(|&v| v == f32::EPSILON.ln()));
        subtract_mean(&mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        let mut none: Vec<f32> = Vec::new();
        fb.fbank_into(&[0.1; 399], &mut none);
        subtract_mean(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn filters_cover_20_hz_to_nyquist() {
        let f = mel_filters();
        // The Nyquist column is zero, each band has some weight, and bin 0 (0 Hz < 20 Hz) none.
        for m in 0..N_MELS {
            let row = &f[m * N_BINS..(m + 1) * N_BINS];
            assert_eq!(row[N_BINS - 1], 0.0);
            assert_eq!(row[0], 0.0);
            assert!(row.iter().any(|&w| w > 0.0), "band {m} is empty");
        }
    }
}
