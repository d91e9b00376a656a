//! The audio front end: any recording → 16 kHz mono → speech map → Whisper-sized chunks.
//!
//! [`prepare`] runs the stages in order, streaming: decode (with downmix and resampling) feeds a
//! level meter and a PCM spill file; the speech map and the gain come from the frame levels; the
//! chunk files are cut from the spill file. Memory stays flat however long the recording is.

pub mod aac;
pub mod chunk;
pub mod decode;
pub mod loudness;
pub mod manifest;
pub mod mp4_edit;
pub mod opus;
pub mod pcm;
pub mod peaks;
pub mod resample;
pub mod spill;
pub mod vad;
pub mod wav_header;

use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, ErrorCode, Result};
use chunk::ChunkLimits;
use decode::DecodeLimits;
use loudness::{LevelMeter, Normalisation};
use manifest::{DecodeInfo, MANIFEST_VERSION, Manifest, OutputInfo, Producer};
use spill::Spill;
use vad::VadOptions;

/// Every stage downstream of decoding works at this rate.
pub const TARGET_RATE: u32 = 16_000;
/// Name of the whole-recording WAV written with `--pcm`.
pub const PCM_FILE: &str = "audio16k.wav";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything `prepare` can be tuned with; the defaults are the production settings.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub decode: DecodeLimits,
    pub normalisation: Normalisation,
    pub vad: VadOptions,
    pub chunks: ChunkLimits,
    /// Recordings shorter than this are refused.
    pub min_duration_s: f64,
    /// Also write the whole normalised recording as `audio16k.wav`.
    pub write_pcm: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            decode: DecodeLimits::default(),
            normalisation: Normalisation::default(),
            vad: VadOptions::default(),
            chunks: ChunkLimits::default(),
            min_duration_s: 1.0,
            write_pcm: false,
        }
    }
}

/// Creates (or truncates) a file only its owner may read: recordings are personal data.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// A WAV writer on a [`private_file`].
pub fn private_wav(
    path: &Path,
    spec: hound::WavSpec,
) -> hound::Result<hound::WavWriter<BufWriter<File>>> {
    hound::WavWriter::new(BufWriter::new(private_file(path)?), spec)
}

/// Decodes `input`, maps its speech, and writes the chunks and `manifest.json` into `out_dir`.
///
/// On error nothing is left behind: not our files in `out_dir`, nor `out_dir` itself if this call
/// created it.
pub fn prepare(input: &Path, out_dir: &Path, opts: &PrepareOptions) -> Result<Manifest> {
    let created = !out_dir.exists();
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::io(format!("cannot create {}", out_dir.display()), e))?;
    let result = prepare_into(input, out_dir, opts);
    if result.is_err() && created {
        // Only removes an empty directory: every stage cleans up its own files first.
        let _ = std::fs::remove_dir(out_dir);
    }
    result
}

fn prepare_into(input: &Path, out_dir: &Path, opts: &PrepareOptions) -> Result<Manifest> {
    let mut spill = Spill::create(out_dir)?;
    let mut meter = LevelMeter::new();
    let report = decode::decode_file(input, &opts.decode, &mut |samples| {
        meter.push(samples);
        spill.write(samples)
    })?;
    let levels = meter.finish();
    let total = spill.samples();

    let duration_s = total as f64 / f64::from(TARGET_RATE);
    if duration_s < opts.min_duration_s {
        return Err(Error::new(
            ErrorCode::AudioTooShort,
            format!(
                "the recording lasts {duration_s:.2} s; at least {:.0} s is needed",
                opts.min_duration_s
            ),
        ));
    }
    let speech = vad::detect_speech(&levels.frame_db, total, &opts.vad);
    if speech.is_empty() {
        return Err(Error::new(
            ErrorCode::AudioNoSpeech,
            "no speech was found in the recording (silence or background noise only)",
        ));
    }
    let speech_db = loudness::mean_level_db(&levels.frame_db, vad::speech_frames(&speech))
        .expect("speech regions contain frames");
    let gain_db = opts.normalisation.gain_db(speech_db, levels.peak);
    let gain = 10f32.powf(gain_db / 20.0);

    let spans = chunk::plan_chunks(total, &speech, &opts.chunks);
    let pcm_path = opts.write_pcm.then(|| out_dir.join(PCM_FILE));
    let mut reader = spill.into_reader()?;
    let chunks = chunk::write_chunks(&mut reader, &spans, gain, out_dir, pcm_path.as_deref())?;

    let seconds = |s: u64| s as f64 / f64::from(TARGET_RATE);
    let peak_after = levels.peak * gain;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        source: report.source,
        output: OutputInfo {
            sample_rate: TARGET_RATE,
            channels: 1,
            samples: total,
            duration_s,
            gain_db,
            speech_level_dbfs: speech_db,
            peak_dbfs: if peak_after > 0.0 {
                20.0 * peak_after.log10()
            } else {
                loudness::SILENCE_DB
            },
        },
        speech: speech
            .iter()
            .map(|r| [seconds(r.start), seconds(r.end)])
            .collect(),
        chunks,
        decode: DecodeInfo {
            packets: report.packets,
            corrupt_packets: report.corrupt_packets,
            truncated: report.truncated,
        },
        pcm_file: opts.write_pcm.then(|| PCM_FILE.to_string()),
        producer: Producer {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            libopus: opus::libopus_version(),
        },
    };
    if let Err(e) = write_manifest(out_dir, &manifest) {
        remove_outputs(out_dir, &manifest);
        return Err(e);
    }
    Ok(manifest)
}

/// Writes `manifest.json` atomically: readers never see half a manifest.
fn write_manifest(out_dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot serialise the manifest: {e}"),
        )
    })?;
    let tmp = out_dir.join(".manifest.json.tmp");
    let path = out_dir.join(MANIFEST_FILE);
    private_file(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot write {}", path.display()), e)
        })
}

fn remove_outputs(out_dir: &Path, manifest: &Manifest) {
    for chunk in &manifest.chunks {
        let _ = std::fs::remove_file(out_dir.join(&chunk.file));
    }
    if let Some(pcm) = &manifest.pcm_file {
        let _ = std::fs::remove_file(out_dir.join(pcm));
    }
}
