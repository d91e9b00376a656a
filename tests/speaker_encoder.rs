//! The GE2E speaker encoder (src/speakers/embed) against resemblyzer 0.1.4 itself, on
//! fixtures/dialogues/clear.flac. Needs the weights: `SPEAKER_MODEL=ge2e
//! scripts/fetch-speaker-model.sh` (scripts/test.sh runs it and exports GE2E_MODEL_PATH).
//! Without them these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use audio_worker::ErrorCode;
use audio_worker::audio::decode::{DecodeLimits, decode_file};
use audio_worker::speakers::embed::{Ge2e, SpeakerEncoder, ge2e_model_path, load_ge2e};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    let path = ge2e_model_path();
    assert!(
        path.is_file(),
        "GE2E model not found at {} (GE2E_MODEL_PATH or the default cache path): \
         run SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh",
        path.display()
    );
    path
}

fn encoder() -> &'static Ge2e {
    static ENCODER: OnceLock<Ge2e> = OnceLock::new();
    ENCODER.get_or_init(|| load_ge2e(&model_path()).expect("load the speaker model"))
}

fn clear_samples() -> &'static [f32] {
    static SAMPLES: OnceLock<Vec<f32>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let mut samples = Vec::new();
        let path = root().join("fixtures/dialogues/clear.flac");
        decode_file(&path, &DecodeLimits::default(), &mut |s| {
            samples.extend_from_slice(s);
            Ok(())
        })
        .expect("decode clear.flac");
        samples
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[derive(serde::Deserialize)]
struct Reference {
    model: String,
    windows: Vec<RefWindow>,
}

#[derive(serde::Deserialize)]
struct RefWindow {
    start: usize,
    len: usize,
    sample_sum: f64,
    embedding: Vec<f32>,
}

#[test]
fn matches_resemblyzer_reference() {
    let text = std::fs::read_to_string(root().join("fixtures/reference/ge2e-clear.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    let enc = encoder();
    assert_eq!(reference.model, enc.name());
    let samples = clear_samples();
    let windows: Vec<&[f32]> = reference
        .windows
        .iter()
        .map(|w| {
            let s = &samples[w.start..w.start + w.len];
            let sum: f64 = s.iter().map(|&x| f64::from(x)).sum();
            assert!(
                (sum - w.sample_sum).abs() < 1e-3,
                "window at {}: decoded samples differ from the reference's ({sum} vs {})",
                w.start,
                w.sample_sum
            );
            s
        })
        .collect();
    let got = enc.embed(&windows);
    assert_eq!(got.len(), windows.len());
    for (w, e) in reference.windows.iter().zip(&got) {
        assert_eq!(e.len(), 256);
        let distance = 1.0 - cosine(e, &w.embedding);
        println!(
            "window {}+{}: cosine distance to resemblyzer {distance:.2e}",
            w.start, w.len
        );
        assert!(
            distance < 1e-3,
            "window {}+{}: cosine distance {distance}",
            w.start,
            w.len
        );
    }
    // Serial and threaded paths agree.
    let serial = load_ge2e(&model_path())
        .unwrap()
        .with_threads(1)
        .embed(&windows);
    for (a, b) in serial.iter().zip(&got) {
        assert!(1.0 - cosine(a, b) < 1e-6);
    }
}

/// (start s, end s, speaker) from an RTTM file.
fn rttm(path: &Path) -> Vec<(f64, f64, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SPEAKER"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let start: f64 = f[3].parse().unwrap();
            let dur: f64 = f[4].parse().unwrap();
            (start, start + dur, f[7].to_string())
        })
        .collect()
}

#[test]
fn same_speaker_is_closer_than_the_other_speaker() {
    let samples = clear_samples();
    let enc = encoder();
    let win = enc.window_samples();
    // Every whole 1.6 s window inside a turn, 0.8 s apart.
    let mut windows: Vec<&[f32]> = Vec::new();
    let mut who: Vec<String> = Vec::new();
    for (start, end, speaker) in rttm(&root().join("fixtures/dialogues/clear.rttm")) {
        let (a, b) = (
            (start * 16_000.0) as usize,
            ((end * 16_000.0) as usize).min(samples.len()),
        );
        let mut s = a;
        while s + win <= b {
            windows.push(&samples[s..s + win]);
            who.push(speaker.clone());
            s += win / 2;
        }
    }
    let speakers: std::collections::BTreeSet<&String> = who.iter().collect();
    assert_eq!(speakers.len(), 2, "{speakers:?}");
    assert!(windows.len() >= 10, "{} windows", windows.len());
    let emb = enc.embed(&windows);
    let (mut same, mut diff) = (Vec::new(), Vec::new());
    for i in 0..emb.len() {
        for j in i + 1..emb.len() {
            let c = cosine(&emb[i], &emb[j]);
            if who[i] == who[j] {
                same.push(c)
            } else {
                diff.push(c)
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ms, md) = (mean(&same), mean(&diff));
    // Leave-one-out nearest centroid: each window should be nearest its own speaker's mean.
    let mut correct = 0;
    for i in 0..emb.len() {
        let mut best = (f64::MIN, "");
        for spk in &speakers {
            let others: Vec<usize> = (0..emb.len())
                .filter(|&j| j != i && &who[j] == *spk)
                .collect();
            let mut centroid = vec![0f32; 256];
            for &j in &others {
                for (c, v) in centroid.iter_mut().zip(&emb[j]) {
                    *c += v;
                }
            }
            let c = cosine(&emb[i], &centroid);
            if c > best.0 {
                best = (c, spk.as_str());
            }
        }
        correct += usize::from(best.1 == who[i]);
    }
    println!(
        "{} windows: same-speaker cosine {ms:.3} (n={}), different-speaker {md:.3} (n={}), \
         nearest-centroid {correct}/{}",
        emb.len(),
        same.len(),
        diff.len(),
        emb.len()
    );
    assert!(ms > md + 0.1, "same {ms:.3} vs different {md:.3}");
    assert!(
        correct * 10 >= emb.len() * 9,
        "nearest centroid right for {correct}/{}",
        emb.len()
    );
}

#[test]
fn silence_and_short_slices_give_unit_vectors() {
    let enc = encoder();
    let zeros = vec![0.0f32; 25_600];
    let noise: Vec<f32> = (0..8_000)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-7)
        .collect();
    let nan = vec![f32::NAN; 16_000];
    let windows: Vec<&[f32]> = vec![&zeros, &zeros[..8_000], &zeros[..100], &[], &noise, &nan];
    let out = enc.embed(&windows);
    assert_eq!(out.len(), windows.len());
    for e in out {
        assert_eq!(e.len(), enc.dim());
        assert!(e.iter().all(|v| v.is_finite()));
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert!(enc.embed(&[]).is_empty());
}

#[test]
fn missing_truncated_or_foreign_model_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let err = load_ge2e(&missing).err().expect("missing file must fail");
    assert_eq!(err.code, ErrorCode::ConfigMissing);
    assert!(err.to_string().contains("fetch-speaker-model.sh"), "{err}");

    let bytes = std::fs::read(model_path()).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_ge2e(&path).err().expect("truncated file must fail");
        assert_eq!(err.code, ErrorCode::ConfigMissing, "{err}");
    }

    // A valid safetensors file with the wrong shape for one tensor.
    let header = r#"{"linear.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0; 12]);
    let path = dir.path().join("foreign.safetensors");
    std::fs::write(&path, &file).unwrap();
    let err = load_ge2e(&path).err().expect("foreign file must fail");
    assert_eq!(err.code, ErrorCode::ConfigMissing);
}
