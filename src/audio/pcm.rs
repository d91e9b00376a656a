//! Stretches of the 16 kHz WAV that `prepare` wrote ([`super::PCM_FILE`]), read on demand: the
//! speaker stage embeds units and looks at the samples around changes of voice without ever
//! holding the whole recording.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorCode, Result};

/// Random access to a 16-bit mono WAV.
pub struct PcmReader {
    reader: hound::WavReader<BufReader<File>>,
    path: PathBuf,
    rate: f64,
    total: u32,
}

impl PcmReader {
    pub fn open(path: &Path) -> Result<PcmReader> {
        let reader = hound::WavReader::open(path).map_err(|e| read_error(path, &e))?;
        Ok(PcmReader {
            rate: f64::from(reader.spec().sample_rate),
            total: reader.duration(),
            reader,
            path: path.to_path_buf(),
        })
    }

    /// Samples per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The samples of `start_s..end_s` (cut to the recording), scaled to ±1, and the time of
    /// the first one.
    pub fn read(&mut self, start_s: f64, end_s: f64) -> Result<(f64, Vec<f32>)> {
        let first = ((start_s * self.rate).max(0.0) as u32).min(self.total);
        let last = ((end_s * self.rate).max(0.0) as u32).clamp(first, self.total);
        self.reader
            .seek(first)
            .map_err(|e| Error::io("cannot seek in the 16 kHz recording", e))?;
        let samples: std::result::Result<Vec<f32>, hound::Error> = self
            .reader
            .samples::<i16>()
            .take((last - first) as usize)
            .map(|s| s.map(|v| f32::from(v) / 32768.0))
            .collect();
        let samples = samples.map_err(|e| read_error(&self.path, &e))?;
        Ok((f64::from(first) / self.rate, samples))
    }
}

fn read_error(path: &Path, e: &hound::Error) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("cannot read {}: {e}", path.display()),
    )
}
