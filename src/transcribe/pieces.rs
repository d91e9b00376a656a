//! Speech pieces for transcription models that return text without timestamps.
//!
//! Such models (gpt-4o-transcribe and its successors) cannot tell us where in a 10-minute chunk a
//! sentence was said. So, like WhisperX, we send pieces of at most 30 s cut at speech-region
//! boundaries, whose times we already know from the speech map: each reply's text belongs to its
//! piece's span.

use std::path::{Path, PathBuf};

use super::ChunkAudio;
use crate::audio::TARGET_RATE;
use crate::error::{Error, ErrorCode, Result};

/// Longest piece sent to a text-only model.
pub const MAX_PIECE_S: f64 = 30.0;

/// Groups speech regions into spans of at most `max_s`; a longer region is cut into `max_s` slices.
pub fn plan_pieces(speech: &[[f64; 2]], max_s: f64) -> Vec<[f64; 2]> {
    let mut pieces: Vec<[f64; 2]> = Vec::new();
    for &[start, end] in speech {
        match pieces.last_mut() {
            Some(p) if end - p[0] <= max_s => p[1] = end,
            _ => {
                let mut s = start;
                while end - s > max_s {
                    pieces.push([s, s + max_s]);
                    s += max_s;
                }
                pieces.push([s, end]);
            }
        }
    }
    pieces
}

/// Writes each piece of the 16 kHz WAV `pcm_wav` as its own WAV file in `dir`.
pub fn write_pieces(pcm_wav: &Path, pieces: &[[f64; 2]], dir: &Path) -> Result<Vec<ChunkAudio>> {
    let wav_err = |e: hound::Error| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot cut speech pieces: {e}"),
        )
    };
    let mut reader = hound::WavReader::open(pcm_wav).map_err(wav_err)?;
    let spec = reader.spec();
    let total = reader.duration();
    let mut out = Vec::with_capacity(pieces.len());
    for (index, &[start_s, end_s]) in pieces.iter().enumerate() {
        let first = ((start_s * f64::from(TARGET_RATE)) as u32).min(total);
        let last = ((end_s * f64::from(TARGET_RATE)).ceil() as u32).min(total);
        reader
            .seek(first)
            .map_err(|e| Error::io("cannot seek in the 16 kHz recording", e))?;
        let path: PathBuf = dir.join(format!("piece-{index:05}.wav"));
        let mut writer = crate::audio::private_wav(&path, spec).map_err(wav_err)?;
        for sample in reader.samples::<i16>().take((last - first) as usize) {
            writer
                .write_sample(sample.map_err(wav_err)?)
                .map_err(wav_err)?;
        }
        writer.finalize().map_err(wav_err)?;
        out.push(ChunkAudio {
            index,
            path,
            start_s: f64::from(first) / f64::from(TARGET_RATE),
            end_s: f64::from(last) / f64::from(TARGET_RATE),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_group_regions_up_to_the_limit() {
        let speech = [[1.0, 5.0], [6.0, 20.0], [22.0, 40.0], [41.0, 105.0]];
        let pieces = plan_pieces(&speech, 30.0);
        assert_eq!(
            pieces,
            vec![
                [1.0, 20.0],
                [22.0, 40.0],
                [41.0, 71.0],
                [71.0, 101.0],
                [101.0, 105.0]
            ]
        );
        assert!(pieces.iter().all(|p| p[1] - p[0] <= 30.0));
    }

    #[test]
    fn writes_pieces_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&wav, spec).unwrap();
        for i in 0..48_000 {
            w.write_sample((i % 1000) as i16).unwrap();
        }
        w.finalize().unwrap();
        let pieces = write_pieces(&wav, &[[0.5, 1.0], [2.0, 3.0]], dir.path()).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!((pieces[1].start_s, pieces[1].end_s), (2.0, 3.0));
        let r = hound::WavReader::open(&pieces[1].path).unwrap();
        assert_eq!(r.duration(), 16_000);
        let first: i16 = hound::WavReader::open(&pieces[1].path)
            .unwrap()
            .samples::<i16>()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first, (32_000 % 1000) as i16);
    }
}
