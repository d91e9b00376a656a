//! Whisper's log-mel spectrogram, for comparing lossy decodes by what the transcriber hears.
//!
//! Opus decoders legitimately differ in waveform phase (libopus at 16 kHz against 48 kHz then
//! resampled: 15 dB SER) while their spectra agree; ARCHITECTURE.md measures Opus fidelity in
//! this domain. As Whisper computes it: 25 ms Hann windows (400 samples) every 10 ms, power
//! spectrum, 80 Slaney-scaled mel bands from 0 to 8 kHz, log10 clamped to 8 decades below the
//! maximum, then (x + 4) / 4.

use realfft::RealFftPlanner;

const N_FFT: usize = 400;
const HOP: usize = 160;
const MELS: usize = 80;
const RATE: f64 = 16_000.0;

/// Frames × 80 bands of Whisper-scaled log-mel values for 16 kHz mono `signal`.
pub fn log_mel(signal: &[f32]) -> Vec<[f32; MELS]> {
    let filters = mel_filters();
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let window: Vec<f64> = (0..N_FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos())
        .collect();
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut frames = Vec::new();
    let mut start = 0;
    while start + N_FFT <= signal.len() {
        for (i, x) in input.iter_mut().enumerate() {
            *x = f64::from(signal[start + i]) * window[i];
        }
        fft.process(&mut input, &mut spectrum).expect("sizes match");
        let power: Vec<f64> = spectrum.iter().map(|c| c.norm_sqr()).collect();
        let mut frame = [0f32; MELS];
        for (band, f) in frame.iter_mut().zip(&filters) {
            let energy: f64 = f.iter().zip(&power).map(|(w, p)| w * p).sum();
            *band = energy.max(1e-10).log10() as f32;
        }
        frames.push(frame);
        start += HOP;
    }
    let max = frames
        .iter()
        .flatten()
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for v in frames.iter_mut().flatten() {
        *v = (v.max(max - 8.0) + 4.0) / 4.0;
    }
    frames
}

/// Mean absolute difference of two log-mel spectrograms over their common frames.
pub fn mean_abs_difference(a: &[[f32; MELS]], b: &[[f32; MELS]]) -> f64 {
    let n = a.len().min(b.len());
    assert!(n > 0, "nothing to compare");
    let total: f64 = a[..n]
        .iter()
        .zip(&b[..n])
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())))
        .sum();
    total / (n * MELS) as f64
}

/// Slaney mel scale (librosa's default, which Whisper's filters come from).
fn hz_to_mel(hz: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// 80 triangular filters over the 201 FFT bins, area-normalised (norm="slaney").
fn mel_filters() -> Vec<Vec<f64>> {
    let bins = N_FFT / 2 + 1;
    let fft_hz: Vec<f64> = (0..bins).map(|i| i as f64 * RATE / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(RATE / 2.0));
    let edges: Vec<f64> = (0..MELS + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (MELS + 1) as f64))
        .collect();
    (0..MELS)
        .map(|m| {
            let (l, c, r) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (r - l);
            fft_hz
                .iter()
                .map(|&f| {
                    let up = (f - l) / (c - l);
                    let down = (r - f) / (r - c);
                    up.min(down).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}
