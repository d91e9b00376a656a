//! Neural speaker embeddings behind [`SpeakerEncoder`], two implementations run natively (no
//! torch, no ONNX runtime; GEMMs with `matrixmultiply`), weights fetched and converted by
//! `scripts/fetch-speaker-model.sh`:
//!
//! * [`Ge2e`], resemblyzer 0.1.4's GE2E d-vector encoder (Apache-2.0), loaded with
//!   [`load_ge2e`]. A window is embedded exactly as resemblyzer's `VoiceEncoder.embed_utterance`
//!   embeds a waveform after `normalize_volume(wav, -30 dBFS, increase_only=True)`: split into
//!   1.6 s partials at 1.3 partials per second (the last kept when it covers >= 75 %, a lone
//!   short window zero-padded to 1.6 s), each partial embedded and L2-normalised, their mean
//!   L2-normalised. The only departure: digital silence stays silence (resemblyzer turns it into
//!   NaN).
//! * [`Campplus`], 3D-Speaker's CAM++ `speech_campplus_sv_zh_en_16k-common_advanced`
//!   (Apache-2.0, trained on about 200k Chinese and English speakers), loaded with
//!   [`load_campplus`]: the Kaldi fbank of the whole window, mean-normalised, through the network
//!   once (no partials), L2-normalised. On fixtures/dialogues/clear.flac every same-speaker pair
//!   of 1.5 s windows is closer than every cross-speaker pair (tests/campplus_encoder.rs).
//!
//! CAM++ is the default ([`default_model_path`]): on real two-speaker recordings it halves the
//! speaker error of GE2E (README.md, "Who said what, measured"), for about twice the CPU.
//! [`load_encoder`] picks the one a file holds (the CAM++ file says so in its metadata).

mod campplus;
pub mod fbank;
pub mod ge2e;
pub mod mel;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use campplus::{CamppNet, EMBED_DIM};
use fbank::KaldiFbank;
use ge2e::{Ge2eNet, HIDDEN, PARTIAL_FRAMES, Scratch};
use mel::{HOP, MelFrontEnd, N_MELS, SAMPLE_RATE};

use crate::error::{Error, ErrorCode, Result};

/// A model that maps speech to a fixed-size vector where the same voice lands close.
pub trait SpeakerEncoder: Send + Sync {
    /// For `versions.diarizer`, e.g. "ge2e-resemblyzer-0.1.4".
    fn name(&self) -> &str;
    /// Embedding dimension (GE2E 256, CAM++ 192).
    fn dim(&self) -> usize;
    /// Samples at 16 kHz of the window the model works best on (GE2E 1.6 s = 25 600, its
    /// training partial; CAM++ 1.5 s = 24 000).
    fn window_samples(&self) -> usize;
    /// One L2-normalised embedding per window (each slice any length >= 0.5 s; shorter slices or
    /// silence must not produce NaN).
    fn embed(&self, windows: &[&[f32]]) -> Vec<Vec<f32>>;
}

/// The model's name, also the stem of its file.
pub const GE2E_NAME: &str = "ge2e-resemblyzer-0.1.4";
/// File name that `SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh` writes.
pub const GE2E_FILE: &str = "ge2e-resemblyzer-0.1.4.safetensors";
/// Environment variable naming the daemon's model file (CAM++ or GE2E).
pub const MODEL_PATH_ENV: &str = "SPEAKER_MODEL_PATH";
/// Environment variable naming the GE2E file for its tests and benches (scripts/test.sh sets
/// it) while `SPEAKER_MODEL_PATH` names the daemon's model.
pub const GE2E_PATH_ENV: &str = "GE2E_MODEL_PATH";

/// Partials that run through the LSTM together on one thread. Bounds memory: the gate buffer is
/// 160 × 64 × 1024 f32 = 42 MB per thread.
const BATCH: usize = 64;
/// resemblyzer's `embed_utterance` defaults.
const PARTIAL_RATE: f64 = 1.3;
const MIN_COVERAGE: f64 = 0.75;

/// CAM++'s name, also the stem of its file and the `model` entry of its metadata.
pub const CAMPPLUS_NAME: &str = campplus::MODEL_TAG;
/// File name that scripts/fetch-speaker-model.sh writes (CAM++ is its default).
pub const CAMPPLUS_FILE: &str = "campplus-3dspeaker-zh_en-common-advanced.safetensors";
/// Environment variable naming the CAM++ file for its tests and benches (scripts/test.sh sets
/// it) while `SPEAKER_MODEL_PATH` names the daemon's model.
pub const CAMPPLUS_PATH_ENV: &str = "CAMPPLUS_MODEL_PATH";
/// CAM++'s window: 1.5 s.
const CAMPPLUS_WINDOW: usize = 24_000;
/// Frames (after CAM++'s TDNN, 50 per second, plus 2 between windows) that one thread sends
/// through the network together: 10 s of audio, about seven 1.5 s windows. The more windows
/// share a pass, the less often the 27 MB of weights are read; the buffers grow with it.
const CAMPPLUS_BATCH_FRAMES: usize = 512;

/// One f32 tensor of a speaker model's safetensors file, checked for dtype, shape and
/// finiteness; the error names the tensor (the loaders add the file and the fix).
fn f32_tensor(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, String> {
    let t = st
        .tensor(name)
        .map_err(|_| format!("has no tensor {name}"))?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(format!("{name} is {:?}, expected F32", t.dtype()));
    }
    if t.shape() != shape {
        return Err(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.shape()
        ));
    }
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!("{name} holds non-finite values"));
    }
    Ok(v)
}

/// Where the daemon's model is: `$SPEAKER_MODEL_PATH`, else the fetch script's default cache
/// path of CAM++, the default encoder (either file works: [`load_encoder`]).
pub fn default_model_path() -> PathBuf {
    model_path(MODEL_PATH_ENV, CAMPPLUS_FILE)
}

/// Where the CAM++ file is: `$CAMPPLUS_MODEL_PATH`, else the fetch script's default cache path.
pub fn campplus_model_path() -> PathBuf {
    model_path(CAMPPLUS_PATH_ENV, CAMPPLUS_FILE)
}

/// Where the GE2E file is: `$GE2E_MODEL_PATH`, else the fetch script's default cache path.
pub fn ge2e_model_path() -> PathBuf {
    model_path(GE2E_PATH_ENV, GE2E_FILE)
}

fn model_path(env: &str, file: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("AUDIO_WORKER_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("audio-worker")
        });
    cache.join("models").join(file)
}

/// Loads whichever encoder `path` holds: CAM++ when its safetensors metadata says
/// `"model": "campplus-3dspeaker-zh_en-common-advanced"`, GE2E when there is no `model` entry
/// (its converter writes none). Errors as [`load_ge2e`]'s, plus an unknown `model`.
pub fn load_encoder(path: &Path) -> Result<Arc<dyn SpeakerEncoder>> {
    match model_tag(path)? {
        None => Ok(Arc::new(load_ge2e(path)?)),
        Some(tag) if tag == CAMPPLUS_NAME => Ok(Arc::new(load_campplus(path)?)),
        Some(tag) => Err(Error::new(
            ErrorCode::ConfigMissing,
            format!(
                "speaker model {}: unknown model {tag:?} (run scripts/fetch-speaker-model.sh \
                 and set SPEAKER_MODEL_PATH)",
                path.display()
            ),
        )),
    }
}

/// The `model` entry of a safetensors file's `__metadata__`, reading only its header.
fn model_tag(path: &Path) -> Result<Option<String>> {
    let bad = |what: String| {
        Error::new(
            ErrorCode::ConfigMissing,
            format!(
                "speaker model {}: {what} (run scripts/fetch-speaker-model.sh and set \
                 SPEAKER_MODEL_PATH)",
                path.display()
            ),
        )
    };
    /// Far above the CAM++ header (about 60 KB); stops a corrupt length from allocating.
    const MAX_HEADER: u64 = 16 << 20;
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(bad(format!("not a safetensors file: {len}-byte header")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get("model"))
        .and_then(|m| m.as_str())
        .map(str::to_owned))
}

/// resemblyzer's GE2E encoder.
pub struct Ge2e {
    net: Ge2eNet,
    front: MelFrontEnd,
    threads: usize,
}

/// Loads the safetensors file made by `SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh`. A
/// missing, truncated or wrongly shaped file is a `ConfigMissing` error naming the file and the
/// fix.
pub fn load_ge2e(path: &Path) -> crate::error::Result<Ge2e> {
    let net = Ge2eNet::load(path)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    Ok(Ge2e {
        net,
        front: MelFrontEnd::new(),
        threads,
    })
}

impl Ge2e {
    /// Threads one `embed` call uses (default: available parallelism, at most 2).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Embeds windows on this thread, `BATCH` partials at a time.
    fn embed_serial(&self, windows: &[&[f32]]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = windows.iter().map(|_| vec![0.0; HIDDEN]).collect();
        let mut scratch = Scratch::default();
        // Pending partials: their mel frames (partial-major) and the window each belongs to.
        let mut pending_mels: Vec<f32> = Vec::with_capacity(BATCH * PARTIAL_FRAMES * N_MELS);
        let mut owners: Vec<usize> = Vec::with_capacity(BATCH);
        let mut time_major = Vec::new();
        let mut embeds = Vec::new();
        let mut wav = Vec::new();
        let mut mel = Vec::new();

        let mut flush =
            |pending_mels: &mut Vec<f32>, owners: &mut Vec<usize>, out: &mut [Vec<f32>]| {
                let b = owners.len();
                if b == 0 {
                    return;
                }
                // Partial-major [b][T][mel] -> time-major [T][b][mel].
                time_major.resize(b * PARTIAL_FRAMES * N_MELS, 0.0);
                for j in 0..b {
                    for t in 0..PARTIAL_FRAMES {
                        let src = &pending_mels[(j * PARTIAL_FRAMES + t) * N_MELS..][..N_MELS];
                        time_major[(t * b + j) * N_MELS..][..N_MELS].copy_from_slice(src);
                    }
                }
                embeds.resize(b * HIDDEN, 0.0);
                self.net.forward(&time_major, b, &mut scratch, &mut embeds);
                for (j, &w) in owners.iter().enumerate() {
                    for (acc, v) in out[w].iter_mut().zip(&embeds[j * HIDDEN..(j + 1) * HIDDEN]) {
                        *acc += v;
                    }
                }
                pending_mels.clear();
                owners.clear();
            };

        for (w, window) in windows.iter().enumerate() {
            let starts = partial_starts(window.len());
            let last_stop = (starts.last().copied().unwrap_or(0) + PARTIAL_FRAMES) * HOP;
            wav.clear();
            wav.extend_from_slice(window);
            // Non-finite input would poison the whole batch's matrices: treat it as silence.
            for s in wav.iter_mut() {
                if !s.is_finite() {
                    *s = 0.0;
                }
            }
            mel::normalize_volume(&mut wav);
            if last_stop > wav.len() {
                wav.resize(last_stop, 0.0);
            }
            mel.clear();
            self.front.mel_into(&wav, &mut mel);
            for &start in &starts {
                pending_mels
                    .extend_from_slice(&mel[start * N_MELS..(start + PARTIAL_FRAMES) * N_MELS]);
                owners.push(w);
                if owners.len() == BATCH {
                    flush(&mut pending_mels, &mut owners, &mut out);
                }
            }
        }
        flush(&mut pending_mels, &mut owners, &mut out);
        for e in &mut out {
            ge2e::l2_normalise(e);
        }
        out
    }
}

/// First mel frame of each partial of an `n`-sample waveform: resemblyzer's
/// `compute_partial_slices(n, rate=1.3, min_coverage=0.75)`.
fn partial_starts(n: usize) -> Vec<usize> {
    let n_frames = (n + 1).div_ceil(HOP);
    let frame_step = ((SAMPLE_RATE as f64 / PARTIAL_RATE) / HOP as f64).round() as usize;
    let steps = (n_frames + frame_step + 1)
        .saturating_sub(PARTIAL_FRAMES)
        .max(1);
    let mut starts: Vec<usize> = (0..steps).step_by(frame_step).collect();
    if starts.len() > 1 {
        let last = *starts.last().unwrap_or(&0);
        let (lo, hi) = (last * HOP, (last + PARTIAL_FRAMES) * HOP);
        let coverage = (n as f64 - lo as f64) / (hi - lo) as f64;
        if coverage < MIN_COVERAGE {
            starts.pop();
        }
    }
    starts
}

impl SpeakerEncoder for Ge2e {
    fn name(&self) -> &str {
        GE2E_NAME
    }

    fn dim(&self) -> usize {
        HIDDEN
    }

    fn window_samples(&self) -> usize {
        PARTIAL_FRAMES * HOP
    }

    fn embed(&self, windows: &[&[f32]]) -> Vec<Vec<f32>> {
        // Split by partial count so both threads get about the same work.
        in_parallel(
            windows,
            self.threads,
            |w| partial_starts(w.len()).len(),
            |part| self.embed_serial(part),
        )
    }
}

/// Runs `serial` on consecutive runs of `windows` on up to `threads` scoped threads, split so
/// that each run's `cost` is about the same, and concatenates the results in order.
fn in_parallel(
    windows: &[&[f32]],
    threads: usize,
    cost: impl Fn(&[f32]) -> usize,
    serial: impl Fn(&[&[f32]]) -> Vec<Vec<f32>> + Sync,
) -> Vec<Vec<f32>> {
    if threads < 2 || windows.len() < 2 {
        return serial(windows);
    }
    let costs: Vec<usize> = windows.iter().map(|w| cost(w)).collect();
    let total: usize = costs.iter().sum();
    let per = total.div_ceil(threads);
    let mut bounds = vec![0];
    let mut acc = 0;
    for (i, c) in costs.iter().enumerate() {
        acc += c;
        if acc >= per * bounds.len() && bounds.len() < threads && i + 1 < windows.len() {
            bounds.push(i + 1);
        }
    }
    bounds.push(windows.len());
    let serial = &serial;
    std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|r| {
                let part = &windows[r[0]..r[1]];
                s.spawn(move || serial(part))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// 3D-Speaker's CAM++ encoder.
pub struct Campplus {
    net: CamppNet,
    front: KaldiFbank,
    threads: usize,
}

/// Loads the safetensors file made by scripts/fetch-speaker-model.sh.
/// A missing, truncated, foreign (e.g. the GE2E file) or wrongly shaped file is a
/// `ConfigMissing` error naming the file and the fix.
pub fn load_campplus(path: &Path) -> Result<Campplus> {
    let net = CamppNet::load(path)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    Ok(Campplus {
        net,
        front: KaldiFbank::new(),
        threads,
    })
}

impl Campplus {
    /// Threads one `embed` call uses (default: available parallelism, at most 2).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Embeds windows on this thread, batches of up to `CAMPPLUS_BATCH_FRAMES` at a time through
    /// one reused [`campplus::Scratch`] (see its size there).
    ///
    /// A window shorter than one fbank frame (25 ms) has no features: it gets the uniform unit
    /// vector, as an all-zero embedding would from [`ge2e::l2_normalise`]. Digital silence (and
    /// any window whose frames all have the same spectrum) has all-zero features after the mean
    /// normalisation and gets the network's finite answer for them, which depends only on the
    /// window's length. Non-finite samples count as silence.
    fn embed_serial(&self, windows: &[&[f32]]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = windows.iter().map(|_| vec![0.0; EMBED_DIM]).collect();
        let mut scratch = campplus::Scratch::default();
        let mut wav = Vec::new();
        // The pending batch: its windows' features end to end, and (window, end of features).
        let mut feats = Vec::new();
        let mut pending: Vec<(usize, usize)> = Vec::new();
        let mut frames = 0;
        let mut embeds = Vec::new();
        let mut flush = |feats: &mut Vec<f32>, pending: &mut Vec<(usize, usize)>| {
            if pending.is_empty() {
                return;
            }
            let mut start = 0;
            let slices: Vec<&[f32]> = pending
                .iter()
                .map(|&(_, end)| {
                    let s = &feats[start..end];
                    start = end;
                    s
                })
                .collect();
            embeds.resize(pending.len() * EMBED_DIM, 0.0);
            self.net.forward(&slices, &mut scratch, &mut embeds);
            for (&(w, _), e) in pending.iter().zip(embeds.chunks_exact(EMBED_DIM)) {
                out[w].copy_from_slice(e);
            }
            feats.clear();
            pending.clear();
        };
        for (w, window) in windows.iter().enumerate() {
            wav.clear();
            wav.extend(window.iter().map(|&s| if s.is_finite() { s } else { 0.0 }));
            let n = KaldiFbank::n_frames(wav.len());
            if n == 0 {
                continue;
            }
            let cost = campplus::tdnn_frames(n) + 2;
            if frames + cost > CAMPPLUS_BATCH_FRAMES {
                flush(&mut feats, &mut pending);
                frames = 0;
            }
            let start = feats.len();
            self.front.fbank_into(&wav, &mut feats);
            fbank::subtract_mean(&mut feats[start..]);
            pending.push((w, feats.len()));
            frames += cost;
        }
        flush(&mut feats, &mut pending);
        for e in &mut out {
            ge2e::l2_normalise(e);
        }
        out
    }
}

impl SpeakerEncoder for Campplus {
    fn name(&self) -> &str {
        CAMPPLUS_NAME
    }

    fn dim(&self) -> usize {
        EMBED_DIM
    }

    fn window_samples(&self) -> usize {
        CAMPPLUS_WINDOW
    }

    fn embed(&self, windows: &[&[f32]]) -> Vec<Vec<f32>> {
        // The network's cost grows with the window's length.
        in_parallel(
            windows,
            self.threads,
            |w| w.len(),
            |part| self.embed_serial(part),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_slices_match_resemblyzer() {
        // compute_partial_slices(n, 1.3, 0.75) in resemblyzer 0.1.4, by hand:
        assert_eq!(partial_starts(25_600), vec![0]); // second partial covers 52 %: dropped
        assert_eq!(partial_starts(8_000), vec![0]); // short: one zero-padded partial
        assert_eq!(partial_starts(51_200), vec![0, 77, 154]);
        assert_eq!(partial_starts(0), vec![0]);
    }
}
