//! The GE2E front end, as resemblyzer 0.1.4 computes it (`audio.wav_to_mel_spectrogram`):
//! `librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)` with
//! librosa's defaults, i.e. a periodic Hann window of 400 samples, `center=True` with zero padding
//! (librosa >= 0.10's `pad_mode="constant"`), the **power** spectrogram (|X|², no log), and
//! Slaney-style mel filters (`htk=False`, `norm="slaney"`, 0–8 kHz). Plus resemblyzer's
//! `normalize_volume(wav, -30 dBFS, increase_only=True)`.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the model expects.
pub const SAMPLE_RATE: usize = 16_000;
/// 25 ms window.
pub const N_FFT: usize = 400;
/// 10 ms hop.
pub const HOP: usize = 160;
/// Mel bands.
pub const N_MELS: usize = 40;
/// Frequency bins of the one-sided spectrum.
const N_BINS: usize = N_FFT / 2 + 1;
/// resemblyzer's `audio_norm_target_dBFS`.
const TARGET_DBFS: f64 = -30.0;

/// Precomputed window, mel filters and FFT plan. Cheap to share between threads.
pub struct MelFrontEnd {
    window: Vec<f32>,
    /// `N_MELS` rows of `N_BINS` weights.
    filters: Vec<f32>,
    /// For each mel band, the range of bins where its weights are non-zero.
    support: Vec<(usize, usize)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl Default for MelFrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrontEnd {
    pub fn new() -> Self {
        // scipy.signal.get_window("hann", 400, fftbins=True): periodic.
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let filters = slaney_mel_filters(
            SAMPLE_RATE as f64,
            N_FFT,
            N_MELS,
            0.0,
            SAMPLE_RATE as f64 / 2.0,
        );
        let support = filters
            .chunks_exact(N_BINS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |l| l + 1);
                (first, last.max(first))
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            window,
            filters,
            support,
            fft,
        }
    }

    /// Number of frames `melspectrogram` gives for `n` samples (`center=True`).
    pub fn n_frames(n: usize) -> usize {
        1 + n / HOP
    }

    /// The mel power spectrogram of `wav`, frame-major: `n_frames(wav.len())` rows of `N_MELS`,
    /// appended to `out`.
    pub fn mel_into(&self, wav: &[f32], out: &mut Vec<f32>) {
        let n_frames = Self::n_frames(wav.len());
        let pad = N_FFT / 2;
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = [0f32; N_BINS];
        out.reserve(n_frames * N_MELS);
        for t in 0..n_frames {
            // Frame t covers padded samples [t*HOP, t*HOP + N_FFT), i.e. wav[t*HOP - pad ..].
            let start = (t * HOP) as isize - pad as isize;
            for (k, slot) in frame.iter_mut().enumerate() {
                let i = start + k as isize;
                let s = if i >= 0 && (i as usize) < wav.len() {
                    wav[i as usize]
                } else {
                    0.0
                };
                *slot = s * self.window[k];
            }
            // The lengths come from the plan itself, so this cannot fail.
            let _ = self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, &(lo, hi)) in self.support.iter().enumerate() {
                let row = &self.filters[m * N_BINS..(m + 1) * N_BINS];
                let e: f32 = row[lo..hi]
                    .iter()
                    .zip(&power[lo..hi])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(e);
            }
        }
    }
}

/// resemblyzer's `normalize_volume(wav, -30, increase_only=True)`: scales `wav` up so that its
/// RMS is -30 dBFS, never down. Silence (RMS 0) is left as it is instead of becoming NaN.
pub fn normalize_volume(wav: &mut [f32]) {
    if wav.is_empty() {
        return;
    }
    let mean_sq = wav
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / wav.len() as f64;
    let rms = mean_sq.sqrt();
    if !(rms > 0.0 && rms.is_finite()) {
        return;
    }
    // 20*log10(rms*32767/32767) == 20*log10(rms): int16_max cancels out.
    let change_db = TARGET_DBFS - 20.0 * rms.log10();
    if change_db <= 0.0 {
        return;
    }
    let gain = 10f64.powf(change_db / 20.0) as f32;
    for s in wav {
        *s *= gain;
    }
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")`, row-major.
fn slaney_mel_filters(sr: f64, n_fft: usize, n_mels: usize, fmin: f64, fmax: f64) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * sr / n_fft as f64).collect();
    let (mel_min, mel_max) = (hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz_slaney(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let fdiff_lo = mel_f[m + 1] - mel_f[m];
        let fdiff_hi = mel_f[m + 2] - mel_f[m + 1];
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / fdiff_lo;
            let upper = (mel_f[m + 2] - f) / fdiff_hi;
            let w = lower.min(upper).max(0.0);
            weights[m * n_bins + k] = (w * enorm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_is_linear_below_1khz() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz_slaney(hz_to_mel_slaney(hz)) - hz).abs() < 1e-6);
        }
        assert!((hz_to_mel_slaney(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filters_match_librosa_spot_values() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): a few entries computed with
        // librosa 0.11.0.
        let f = slaney_mel_filters(16000.0, 400, 40, 0.0, 8000.0);
        let at = |m: usize, k: usize| f[m * N_BINS + k];
        assert!((at(0, 1) - 0.007_390_21).abs() < 1e-6, "{}", at(0, 1));
        assert!((at(39, 196) - 0.000_486_06).abs() < 1e-6, "{}", at(39, 196));
    }

    #[test]
    fn frame_count_and_silence() {
        let fe = MelFrontEnd::new();
        let mut out = Vec::new();
        fe.mel_into(&vec![0.0; 25_600], &mut out);
        assert_eq!(out.len(), 161 * N_MELS);
        assert!(out.iter().all(|&v| v == 0.0));
        let mut silent = vec![0.0f32; 100];
        normalize_volume(&mut silent);
        assert!(silent.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn volume_goes_up_to_minus_30_dbfs_never_down() {
        let mut quiet: Vec<f32> = (0..1600)
            .map(|i| 0.001 * ((i as f32) * 0.1).sin())
            .collect();
        normalize_volume(&mut quiet);
        let rms = (quiet.iter().map(|s| s * s).sum::<f32>() / quiet.len() as f32).sqrt();
        assert!((20.0 * rms.log10() + 30.0).abs() < 1e-3, "{rms}");
        let mut loud = vec![0.5f32; 100];
        normalize_volume(&mut loud);
        assert_eq!(loud[0], 0.5);
    }
}
