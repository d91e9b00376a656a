//! Helpers shared by the integration tests: the fixture catalogue and faithful audio comparison.
#![allow(dead_code)]

pub mod daemon;
pub mod fakes;
pub mod faulty;
pub mod logmel;
pub mod postgres;
pub mod postgrest;
pub mod s3;
pub mod scoring;
pub mod servers;
pub mod truth;

use std::path::{Path, PathBuf};

/// Absolute path of a file under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// One entry of `fixtures/catalog.json` (written by `fixtures/generate.sh`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Fixture {
    pub path: String,
    pub kind: String,
    pub container: Option<String>,
    pub codec: Option<String>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
    pub duration_s: Option<f64>,
    pub reference: Option<String>,
    #[serde(default)]
    pub speech_regions: Option<Vec<[f64; 2]>>,
    /// Which part of the master the file holds, in master seconds.
    #[serde(default)]
    pub master_window_s: Option<[f64; 2]>,
}

#[derive(Debug, serde::Deserialize)]
struct Catalog {
    files: Vec<Fixture>,
}

pub fn catalog() -> Vec<Fixture> {
    let text = std::fs::read_to_string(fixture("catalog.json")).expect("fixtures/catalog.json");
    serde_json::from_str::<Catalog>(&text)
        .expect("catalog parses")
        .files
}

pub fn good_fixtures() -> Vec<Fixture> {
    catalog().into_iter().filter(|f| f.kind == "good").collect()
}

/// Reads a 16-bit mono WAV as floats.
pub fn read_wav_mono(path: &Path) -> (Vec<f32>, u32) {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(spec.channels, 1, "{} must be mono", path.display());
    assert_eq!(spec.bits_per_sample, 16);
    let samples = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    (samples, spec.sample_rate)
}

/// Windowed-sinc low-pass FIR at `cutoff_hz` for 16 kHz signals (Blackman window, 255 taps).
fn low_pass(signal: &[f32], cutoff_hz: f64) -> Vec<f32> {
    const TAPS: usize = 255;
    let fc = cutoff_hz / 16_000.0;
    let mid = (TAPS / 2) as f64;
    let taps: Vec<f64> = (0..TAPS)
        .map(|i| {
            let x = i as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let w = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos()
                + 0.08 * (4.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos();
            sinc * w
        })
        .collect();
    let half = TAPS / 2;
    (0..signal.len())
        .map(|n| {
            let mut acc = 0.0f64;
            for (k, t) in taps.iter().enumerate() {
                let j = n as isize + k as isize - half as isize;
                if j >= 0 && (j as usize) < signal.len() {
                    acc += t * f64::from(signal[j as usize]);
                }
            }
            acc as f32
        })
        .collect()
}

/// Signal-to-error ratio (dB) of `ours` against `reference`, both 16 kHz, compared in the band
/// below `band_hz`, after searching the best lag within ±`max_lag` samples and the best gain
/// (ARCHITECTURE.md, "Testing audio faithfully"). Returns (SER dB, lag in samples).
pub fn in_band_ser(reference: &[f32], ours: &[f32], band_hz: f64, max_lag: isize) -> (f64, isize) {
    let r = low_pass(reference, band_hz);
    let o = low_pass(ours, band_hz);
    // Skip the edges, where filters and codecs legitimately differ.
    let edge = 400usize;
    let n = r.len().min(o.len());
    assert!(n > 2 * edge + 1600, "signals too short to compare");
    let mut best = (f64::NEG_INFINITY, 0isize);
    for lag in -max_lag..=max_lag {
        let (mut rr, mut ro, mut oo) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &ri) in r.iter().enumerate().take(n - edge).skip(edge) {
            let j = i as isize + lag;
            if j < 0 || j as usize >= o.len() {
                continue;
            }
            let (a, b) = (f64::from(ri), f64::from(o[j as usize]));
            rr += a * a;
            ro += a * b;
            oo += b * b;
        }
        if oo == 0.0 || rr == 0.0 {
            continue;
        }
        // With the best gain g = ro/oo, the error energy is rr - ro^2/oo.
        let err = (rr - ro * ro / oo).max(rr * 1e-12);
        let ser = 10.0 * (rr / err).log10();
        if ser > best.0 {
            best = (ser, lag);
        }
    }
    best
}

/// Validates a JSON value against a published JSON Schema, every keyword of it (types, required
/// and unknown keys, patterns, bounds, enums); panics listing each violation with its path.
pub fn check_against(schema: &serde_json::Value, value: &serde_json::Value, at: &str) {
    let problems = schema_problems(schema, value, at);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each violation of `schema` by `value`, with its path under `at`.
pub fn schema_problems(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    let validator = jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("the schema for {at} is not a valid JSON Schema: {e}"));
    validator
        .iter_errors(value)
        .map(|e| format!("{at}{}: {e}", e.instance_path()))
        .collect()
}

/// What each bad input must produce: an error code, or (for damaged but usable files) success.
pub const BAD_INPUTS: &[(&str, Option<&str>)] = &[
    ("bad/empty.wav", Some("AUDIO_EMPTY")),
    ("bad/random.mp3", Some("AUDIO_UNSUPPORTED_FORMAT")),
    ("bad/text.m4a", Some("AUDIO_UNSUPPORTED_FORMAT")),
    ("bad/truncated.m4a", Some("AUDIO_DECODE_FAILED")),
    ("bad/video-only.mp4", Some("AUDIO_NO_AUDIO_TRACK")),
    ("bad/silence.wav", Some("AUDIO_NO_SPEECH")),
    ("bad/hiss.wav", Some("AUDIO_NO_SPEECH")),
    ("bad/short.wav", Some("AUDIO_TOO_SHORT")),
    ("bad/lying-short.wav", Some("AUDIO_TOO_SHORT")),
    ("bad/mostly-corrupt.mp3", Some("AUDIO_DECODE_FAILED")),
    ("bad/truncated.wav", None),
    ("bad/truncated.webm", None),
    ("bad/corrupt-middle.mp3", None),
    ("bad/corrupt-middle.webm", None),
    // Issue 14: refused with a code that says why, never a silent part of the file.
    ("bad/amr-nb.3gp", Some("AUDIO_UNSUPPORTED_FORMAT")),
    ("bad/opus-5h-tiny.webm", Some("AUDIO_TOO_LONG")),
    ("bad/flac-5h-silence.flac", Some("AUDIO_TOO_LONG")),
];
