//! A coarse waveform (peak per time bucket) of the 16 kHz recording, for drawing a timeline in
//! the report and the browser without shipping the audio.

use std::path::Path;

use crate::error::{Error, ErrorCode, Result};

/// Peak absolute sample (0..=1) of each of `buckets` equal spans of the WAV, read streaming.
pub fn read_peaks(wav: &Path, buckets: usize) -> Result<Vec<f32>> {
    let err = |e: hound::Error| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot read {}: {e}", wav.display()),
        )
    };
    let mut reader = hound::WavReader::open(wav).map_err(err)?;
    let total = reader.duration() as usize;
    let buckets = buckets.clamp(1, total.max(1));
    let mut peaks = vec![0f32; buckets];
    for (i, sample) in reader.samples::<i16>().enumerate() {
        let v = f32::from(sample.map_err(err)?).abs() / 32768.0;
        let b = i * buckets / total.max(1);
        if let Some(p) = peaks.get_mut(b) {
            *p = p.max(v);
        }
    }
    Ok(peaks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_follow_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..4000 {
            w.write_sample(if i >= 2000 { -16384i16 } else { 100 })
                .unwrap();
        }
        w.finalize().unwrap();
        let p = read_peaks(&path, 4).unwrap();
        assert_eq!(p.len(), 4);
        assert!(p[0] < 0.01 && p[1] < 0.01);
        assert!((p[2] - 0.5).abs() < 1e-3 && (p[3] - 0.5).abs() < 1e-3);
    }
}
