//! WAV files from streaming writers, read the way ffmpeg reads them.
//!
//! A writer that cannot seek back (ffmpeg or sox writing to a pipe, a phone app killed mid-way)
//! leaves the RIFF and `data` sizes as placeholders: 0, 0xFFFFFFFF, or sox's 0x7FFFF000 (six
//! hours at 48 kHz). symphonia trusts them and refuses the file ("invalid riff length", "chunk
//! length exceeds parent") or believes the six hours. ffmpeg reads such a `data` chunk to the end
//! of the file. We do the same without touching the file: [`PatchedSource`] shows symphonia the
//! sizes the file really has. A `data` size that is smaller than the file is kept (ffmpeg keeps
//! it too: what follows may be another chunk).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use symphonia::core::io::MediaSource;

/// Four bytes at `offset` that readers see instead of the file's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: [u8; 4],
}

/// Chunks walked before giving up on finding `data` (real files have a handful).
const MAX_CHUNKS: usize = 64;

/// The size fields to correct in a RIFF/WAVE file of `len` bytes; empty for anything else.
pub fn header_patches<R: Read + Seek>(r: &mut R, len: u64) -> Vec<Patch> {
    let Some(head) = read_at::<12>(r, 0) else {
        return Vec::new();
    };
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Vec::new();
    }
    let riff_size = u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")));
    let mut patches = Vec::new();
    let Some(data_end) = data_chunk_end(r, len, &mut patches) else {
        return Vec::new();
    };
    // The RIFF size must cover the data; a placeholder or a size beyond the file is replaced.
    let placeholder = riff_size == 0 || riff_size == u64::from(u32::MAX);
    if placeholder || riff_size > len - 8 || riff_size + 8 < data_end {
        patches.push(size_patch(4, len - 8));
    }
    patches
}

/// Walks the chunks to `data`; returns where its samples end, after pushing a patch for its
/// size if that size is a placeholder or runs past the file.
fn data_chunk_end<R: Read + Seek>(r: &mut R, len: u64, patches: &mut Vec<Patch>) -> Option<u64> {
    let mut pos = 12u64;
    let mut block_align = 1u64;
    for _ in 0..MAX_CHUNKS {
        let head = read_at::<8>(r, pos)?;
        let size = u64::from(u32::from_le_bytes(head[4..8].try_into().ok()?));
        let body = pos + 8;
        if &head[0..4] == b"data" {
            let real = len.saturating_sub(body);
            let real = real - real % block_align.max(1);
            if size == 0 || size == u64::from(u32::MAX) || size > real {
                patches.push(size_patch(pos + 4, real));
                return Some(body + real);
            }
            return Some(body + size);
        }
        if &head[0..4] == b"fmt " {
            let fmt = read_at::<14>(r, body)?;
            block_align = u64::from(u16::from_le_bytes([fmt[12], fmt[13]]));
        }
        pos = body.checked_add(size + (size & 1))?;
        if pos >= len {
            return None;
        }
    }
    None
}

/// A little-endian 32-bit size, clamped to what the field can hold.
fn size_patch(offset: u64, size: u64) -> Patch {
    let size = size.min(u64::from(u32::MAX - 1)) as u32;
    Patch {
        offset,
        bytes: size.to_le_bytes(),
    }
}

fn read_at<const N: usize>(r: &mut (impl Read + Seek), pos: u64) -> Option<[u8; N]> {
    r.seek(SeekFrom::Start(pos)).ok()?;
    let mut buf = [0u8; N];
    r.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// A file as symphonia should see it: its bytes with the [`Patch`]es laid over them.
pub struct PatchedSource {
    file: File,
    patches: Vec<Patch>,
    pos: u64,
    len: u64,
}

impl PatchedSource {
    pub fn new(file: File, len: u64, patches: Vec<Patch>) -> PatchedSource {
        PatchedSource {
            file,
            patches,
            pos: 0,
            len,
        }
    }
}

impl Read for PatchedSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        for p in &self.patches {
            for (i, b) in p.bytes.iter().enumerate() {
                let at = p.offset + i as u64;
                if (start..end).contains(&at) {
                    buf[(at - start) as usize] = *b;
                }
            }
        }
        self.pos = end;
        Ok(n)
    }
}

impl Seek for PatchedSource {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

impl MediaSource for PatchedSource {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A 16-bit mono WAV header with the given sizes, then `samples` bytes of audio.
    fn wav(riff: u32, data: u32, samples: usize) -> Vec<u8> {
        let mut d = b"RIFF".to_vec();
        d.extend_from_slice(&riff.to_le_bytes());
        d.extend_from_slice(b"WAVEfmt ");
        d.extend_from_slice(&16u32.to_le_bytes());
        d.extend_from_slice(&[1, 0, 1, 0, 0x80, 0x3E, 0, 0, 0, 0x7D, 0, 0, 2, 0, 16, 0]);
        d.extend_from_slice(b"data");
        d.extend_from_slice(&data.to_le_bytes());
        d.resize(44 + samples, 0);
        d
    }

    fn patches(bytes: &[u8]) -> Vec<Patch> {
        header_patches(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn placeholder_sizes_become_the_real_ones() {
        for placeholder in [0, u32::MAX, 0x7FFF_F000] {
            let got = patches(&wav(placeholder, placeholder, 1000));
            assert_eq!(
                got,
                vec![
                    size_patch(40, 1000),
                    size_patch(4, 1036), // the whole file minus the RIFF header
                ],
                "placeholder {placeholder:#x}"
            );
        }
    }

    #[test]
    fn a_half_sample_at_the_end_is_not_data() {
        assert_eq!(patches(&wav(0, 0, 1001))[0], size_patch(40, 1000));
    }

    #[test]
    fn honest_and_short_sizes_are_kept() {
        assert!(patches(&wav(1036, 1000, 1000)).is_empty());
        // A data chunk that ends early (what follows may be another chunk): ffmpeg keeps it.
        assert!(patches(&wav(1036, 100, 1000)).is_empty());
        assert!(patches(b"RIFX0000WAVE").is_empty());
        assert!(patches(b"not a wav at all").is_empty());
    }

    #[test]
    fn a_riff_size_that_ends_before_the_data_is_replaced() {
        assert_eq!(patches(&wav(36, 1000, 1000)), vec![size_patch(4, 1036)]);
    }

    #[test]
    fn the_overlay_shows_the_patches_wherever_a_read_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wav");
        std::fs::write(&path, wav(0, 0, 8)).unwrap();
        let file = File::open(&path).unwrap();
        let mut src = PatchedSource::new(file, 52, vec![size_patch(40, 8), size_patch(4, 44)]);
        let mut all = Vec::new();
        src.read_to_end(&mut all).unwrap();
        assert_eq!(all[4..8], 44u32.to_le_bytes());
        assert_eq!(all[40..44], 8u32.to_le_bytes());
        src.seek(SeekFrom::Start(42)).unwrap();
        let mut two = [0u8; 2];
        src.read_exact(&mut two).unwrap();
        assert_eq!(two, [0, 0]);
        src.seek(SeekFrom::Start(40)).unwrap();
        src.read_exact(&mut two).unwrap();
        assert_eq!(two, [8, 0]);
    }
}
