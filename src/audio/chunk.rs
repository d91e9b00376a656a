//! Cutting the recording into Whisper-sized chunks, inside silences, on the original timeline.
//!
//! 16 kHz 16-bit mono WAV is 32 000 B/s, so the Whisper API's 25 MB limit is only about 13
//! minutes. A chunk is bounded both by a maximum duration and by its encoded size (strictly under
//! 24 MiB), and each cut is placed in the middle of the longest silence in the last minute before
//! the bound, so no word is cut when any pause of 300 ms or more exists there. Chunks tile the
//! timeline without gaps: chunk `i` ends exactly where chunk `i + 1` starts, and their starts are
//! the offsets that put every transcript segment back on the recording's clock.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::TARGET_RATE;
use super::spill::SpillReader;
use super::vad::Region;
use crate::error::{Error, ErrorCode, Result};

/// Bytes of the canonical WAV header hound writes for 16-bit PCM.
pub const WAV_HEADER_BYTES: u64 = 44;

/// Bounds and preferences for the cuts.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_duration_s: f64,
    /// Every chunk file must be strictly smaller than this.
    pub max_file_bytes: u64,
    /// How far back from the bound we look for a silence to cut in.
    pub search_window_s: f64,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_duration_s: 600.0,
            max_file_bytes: 24 * 1024 * 1024,
            search_window_s: 60.0,
        }
    }
}

impl ChunkLimits {
    /// The most samples one chunk may hold, from both the duration and the file size bound.
    pub fn max_samples(&self) -> u64 {
        let by_duration = (self.max_duration_s * f64::from(TARGET_RATE)).floor() as u64;
        let by_size = (self.max_file_bytes.saturating_sub(WAV_HEADER_BYTES + 1)) / 2;
        by_duration.min(by_size).max(1)
    }
}

/// A planned chunk: samples `start..end` of the 16 kHz recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    /// The cut at `end` falls inside speech (no silence at all was found near the bound).
    pub cut_in_speech: bool,
}

/// Plans the chunks of a recording of `total` samples with the given speech regions.
pub fn plan_chunks(total: u64, speech: &[Region], limits: &ChunkLimits) -> Vec<Span> {
    let max = limits.max_samples();
    let window = ((limits.search_window_s * f64::from(TARGET_RATE)) as u64).min(max / 2);
    let silences = silences(total, speech);

    let mut spans = Vec::new();
    let mut start = 0;
    while total - start > max {
        let bound = start + max;
        let (end, cut_in_speech) = match best_silence(&silences, bound - window, bound) {
            Some(cut) => (cut, false),
            None => (bound, true),
        };
        spans.push(Span {
            start,
            end,
            cut_in_speech,
        });
        start = end;
    }
    if total > start {
        spans.push(Span {
            start,
            end: total,
            cut_in_speech: false,
        });
    }
    spans
}

/// The gaps between speech regions over `0..total`.
fn silences(total: u64, speech: &[Region]) -> Vec<Region> {
    let mut out = Vec::with_capacity(speech.len() + 1);
    let mut pos = 0;
    for r in speech {
        if r.start > pos {
            out.push(Region {
                start: pos,
                end: r.start,
            });
        }
        pos = pos.max(r.end);
    }
    if total > pos {
        out.push(Region {
            start: pos,
            end: total,
        });
    }
    out
}

/// The middle of the longest silence within `lo..hi` (the later one among equals, which makes
/// chunks fuller), or `None` when the window is all speech. Taking the longest means a pause of
/// 300 ms or more always wins over a shorter one, and any pause beats a cut mid-word.
fn best_silence(silences: &[Region], lo: u64, hi: u64) -> Option<u64> {
    silences
        .iter()
        .map(|s| Region {
            start: s.start.max(lo),
            end: s.end.min(hi),
        })
        .filter(|s| !s.is_empty())
        .max_by_key(|s| (s.len(), s.start))
        .map(|s| s.start + s.len() / 2)
}

/// A chunk file as written, for the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkFile {
    pub index: usize,
    /// File name inside the output directory.
    pub file: String,
    pub start_s: f64,
    pub end_s: f64,
    pub start_sample: u64,
    pub end_sample: u64,
    pub bytes: u64,
    /// The cut at the end of this chunk falls inside speech: no pause existed near the bound.
    pub cut_in_speech: bool,
}

/// Writes the chunks (and, when asked, the whole recording) as 16-bit WAV, applying `gain`.
///
/// Reads the spill file once, sequentially. Returns the chunk files in order; on error, the
/// files written so far are removed.
pub fn write_chunks(
    spill: &mut SpillReader,
    spans: &[Span],
    gain: f32,
    out_dir: &Path,
    pcm_file: Option<&Path>,
) -> Result<Vec<ChunkFile>> {
    let mut written: Vec<PathBuf> = Vec::new();
    let result = write_all(spill, spans, gain, out_dir, pcm_file, &mut written);
    if result.is_err() {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn write_all(
    spill: &mut SpillReader,
    spans: &[Span],
    gain: f32,
    out_dir: &Path,
    pcm_file: Option<&Path>,
    written: &mut Vec<PathBuf>,
) -> Result<Vec<ChunkFile>> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: TARGET_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let create = |path: &Path, written: &mut Vec<PathBuf>| {
        written.push(path.to_path_buf());
        super::private_wav(path, spec).map_err(|e| wav_error(path, e))
    };
    let mut pcm = match pcm_file {
        Some(path) => Some(create(path, written)?),
        None => None,
    };
    let mut block = vec![0.0f32; 1 << 16];
    let mut ints: Vec<i16> = Vec::with_capacity(block.len());
    let mut files = Vec::with_capacity(spans.len());
    for (index, span) in spans.iter().enumerate() {
        let name = format!("chunk-{index:03}.wav");
        let path = out_dir.join(&name);
        let mut wav = create(&path, written)?;
        let mut left = span.end - span.start;
        while left > 0 {
            let want = (left as usize).min(block.len());
            let n = spill.read(&mut block[..want])?;
            if n == 0 {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "the PCM spill file is shorter than the decoded recording",
                ));
            }
            ints.clear();
            ints.extend(block[..n].iter().map(|s| to_i16(s * gain)));
            write_i16(&mut wav, &ints, &path)?;
            if let (Some(pcm), Some(pcm_path)) = (pcm.as_mut(), pcm_file) {
                write_i16(pcm, &ints, pcm_path)?;
            }
            left -= n as u64;
        }
        wav.finalize().map_err(|e| wav_error(&path, e))?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
            .len();
        files.push(ChunkFile {
            index,
            file: name,
            start_s: span.start as f64 / f64::from(TARGET_RATE),
            end_s: span.end as f64 / f64::from(TARGET_RATE),
            start_sample: span.start,
            end_sample: span.end,
            bytes,
            cut_in_speech: span.cut_in_speech,
        });
    }
    if let (Some(pcm), Some(path)) = (pcm, pcm_file) {
        pcm.finalize().map_err(|e| wav_error(path, e))?;
    }
    Ok(files)
}

/// Float sample to 16-bit, rounding half away from zero; `as` saturates, which only matters at
/// full scale since the gain keeps peaks below the ceiling. (Not `f32::round`: without SSE4.1
/// it is a libm call per sample.)
fn to_i16(x: f32) -> i16 {
    let v = x * 32768.0;
    (v + 0.5f32.copysign(v)) as i16
}

fn write_i16(
    wav: &mut hound::WavWriter<BufWriter<File>>,
    samples: &[i16],
    path: &Path,
) -> Result<()> {
    let mut w = wav.get_i16_writer(samples.len() as u32);
    for &s in samples {
        w.write_sample(s);
    }
    w.flush().map_err(|e| wav_error(path, e))
}

fn wav_error(path: &Path, err: hound::Error) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("cannot write {}: {err}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = TARGET_RATE as u64;

    fn speech(pieces: &[(f64, f64)]) -> Vec<Region> {
        pieces
            .iter()
            .map(|&(a, b)| Region {
                start: (a * S as f64) as u64,
                end: (b * S as f64) as u64,
            })
            .collect()
    }

    fn limits(max_s: f64) -> ChunkLimits {
        ChunkLimits {
            max_duration_s: max_s,
            search_window_s: max_s / 2.0,
            ..ChunkLimits::default()
        }
    }

    fn check_tiling(spans: &[Span], total: u64, max: u64) {
        assert_eq!(spans.first().unwrap().start, 0);
        assert_eq!(spans.last().unwrap().end, total);
        for pair in spans.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "chunks must tile the timeline");
        }
        for s in spans {
            assert!(s.end > s.start && s.end - s.start <= max, "{s:?}");
        }
    }

    #[test]
    fn short_recordings_are_one_chunk() {
        let spans = plan_chunks(30 * S, &speech(&[(1.0, 29.0)]), &ChunkLimits::default());
        assert_eq!(spans.len(), 1);
        check_tiling(&spans, 30 * S, ChunkLimits::default().max_samples());
    }

    #[test]
    fn cuts_fall_in_the_longest_silence_before_the_bound() {
        // Max 10 s, window 5 s: silences at 6.0-6.4 (0.4 s) and 8.0-9.0 (1 s) -> cut at 8.5.
        let sp = speech(&[(0.0, 6.0), (6.4, 8.0), (9.0, 14.0), (14.2, 25.0)]);
        let spans = plan_chunks(25 * S, &sp, &limits(10.0));
        check_tiling(&spans, 25 * S, 10 * S);
        assert_eq!(spans[0].end, 8 * S + S / 2);
        assert!(!spans[0].cut_in_speech);
        // Next bound 18.5 s, window 13.5-18.5: only the 0.2 s pause at 14.0-14.2 -> 14.1.
        assert_eq!(spans[1].end, 14 * S + S / 10);
    }

    #[test]
    fn never_cuts_in_speech_when_a_pause_exists() {
        let sp = speech(&[(0.0, 9.7), (9.8, 30.0)]);
        let spans = plan_chunks(30 * S, &sp, &limits(10.0));
        assert_eq!(spans[0].end, 9 * S + 3 * S / 4);
        assert!(!spans[0].cut_in_speech);
    }

    #[test]
    fn continuous_speech_is_cut_at_the_bound() {
        let spans = plan_chunks(25 * S, &speech(&[(0.0, 25.0)]), &limits(10.0));
        check_tiling(&spans, 25 * S, 10 * S);
        assert_eq!(spans.len(), 3);
        assert!(spans[0].cut_in_speech && spans[1].cut_in_speech);
    }

    #[test]
    fn file_size_bounds_the_chunk_below_24_mib() {
        let l = ChunkLimits {
            max_duration_s: 3600.0,
            ..ChunkLimits::default()
        };
        let max = l.max_samples();
        assert!(WAV_HEADER_BYTES + 2 * max < 24 * 1024 * 1024);
        assert!(WAV_HEADER_BYTES + 2 * (max + 1) >= 24 * 1024 * 1024 - 1);
        let total = 3 * 3600 * S;
        let spans = plan_chunks(total, &speech(&[(0.0, 3.0 * 3600.0)]), &l);
        check_tiling(&spans, total, max);
    }

    #[test]
    fn samples_round_to_nearest_and_saturate() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(1.6 / 32768.0), 2);
        assert_eq!(to_i16(-1.6 / 32768.0), -2);
        assert_eq!(to_i16(1.2 / 32768.0), 1);
        assert_eq!(to_i16(1.5), 32767);
        assert_eq!(to_i16(-1.5), -32768);
    }

    #[test]
    fn default_is_ten_minutes() {
        assert_eq!(ChunkLimits::default().max_samples(), 600 * S);
    }
}
