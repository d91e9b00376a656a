//! The 16 kHz PCM spill file: where the decoded recording waits, on disk rather than in memory,
//! until its gain and cuts are known.
//!
//! Samples are stored as raw little-endian f32, before any gain, so normalising later loses
//! nothing. The file is an unnamed-on-drop temp file (0600) in the job's directory: it disappears
//! on every path out of the job, including errors and panics.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

const IO_BUFFER: usize = 1 << 20;

pub struct Spill {
    writer: BufWriter<NamedTempFile>,
    samples: u64,
}

impl Spill {
    /// Creates the spill file inside `dir`.
    pub fn create(dir: &Path) -> Result<Spill> {
        let file = tempfile::Builder::new()
            .prefix(".pcm16k-")
            .suffix(".f32")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("cannot create a temp file in {}", dir.display()), e))?;
        Ok(Spill {
            writer: BufWriter::with_capacity(IO_BUFFER, file),
            samples: 0,
        })
    }

    pub fn write(&mut self, samples: &[f32]) -> Result<()> {
        for block in samples.chunks(4096) {
            let mut bytes = [0u8; 4096 * 4];
            for (b, s) in bytes.chunks_exact_mut(4).zip(block) {
                b.copy_from_slice(&s.to_le_bytes());
            }
            self.writer
                .write_all(&bytes[..block.len() * 4])
                .map_err(|e| Error::io("cannot write the PCM spill file", e))?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Finishes writing and returns a reader positioned at the first sample.
    pub fn into_reader(self) -> Result<SpillReader> {
        let mut file = self
            .writer
            .into_inner()
            .map_err(|e| Error::io("cannot flush the PCM spill file", e.into_error()))?;
        file.as_file_mut()
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("cannot rewind the PCM spill file", e))?;
        Ok(SpillReader {
            reader: BufReader::with_capacity(IO_BUFFER, file),
            bytes: vec![0; IO_BUFFER],
        })
    }
}

pub struct SpillReader {
    reader: BufReader<NamedTempFile>,
    bytes: Vec<u8>,
}

impl SpillReader {
    /// Reads up to `out.len()` samples into `out`; returns how many (0 at the end).
    pub fn read(&mut self, out: &mut [f32]) -> Result<usize> {
        let want = (out.len() * 4).min(self.bytes.len());
        let mut got = 0;
        while got < want {
            let n = self
                .reader
                .read(&mut self.bytes[got..want])
                .map_err(|e| Error::io("cannot read the PCM spill file", e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let samples = got / 4;
        for (o, b) in out
            .iter_mut()
            .zip(self.bytes[..samples * 4].chunks_exact(4))
        {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(dir.path()).unwrap();
        let data: Vec<f32> = (0..300_000).map(|i| (i as f32).sin()).collect();
        spill.write(&data[..1000]).unwrap();
        spill.write(&data[1000..]).unwrap();
        assert_eq!(spill.samples(), 300_000);
        let mut reader = spill.into_reader().unwrap();
        let mut back = Vec::new();
        let mut buf = vec![0.0; 70_001];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert_eq!(back, data);
        drop(reader);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
