//! The speech map: where in the recording somebody speaks, from the 20 ms frame levels.
//!
//! Thresholds adapt to the recording: the noise floor is a low percentile of frame levels and the
//! speech level a high one, so the same rules work for a quiet laptop microphone and a loud
//! headset. A hysteresis (a higher level to start speech than to keep it) avoids chattering, short
//! gaps inside words are closed, clicks are dropped, and each region is padded slightly so soft
//! onsets and word endings stay inside it. Silence is never removed from the timeline: the map is
//! a list of regions on the original recording's clock.

use super::loudness::{FRAME_SAMPLES, SILENCE_DB};

/// A stretch of speech, in 16 kHz samples on the original timeline, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Tuning of the detector; the defaults suit conversational speech.
#[derive(Debug, Clone, Copy)]
pub struct VadOptions {
    /// Recordings whose loud frames stay below this are silence or hiss, not speech.
    pub min_speech_db: f32,
    /// Loud frames must stand this far above the noise floor for there to be speech at all.
    pub min_dynamic_range_db: f32,
    /// Gaps shorter than this (ms) inside speech are closed.
    pub close_gap_ms: u32,
    /// Speech shorter than this (ms) is dropped as a click or a breath.
    pub min_speech_ms: u32,
    /// Padding added before and after each region (ms).
    pub pad_ms: u32,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions {
            min_speech_db: -55.0,
            min_dynamic_range_db: 10.0,
            close_gap_ms: 160,
            min_speech_ms: 80,
            pad_ms: 60,
        }
    }
}

const FRAME_MS: u32 = (FRAME_SAMPLES as u32 * 1000) / 16_000;

/// Finds the speech regions of a recording of `total_samples` samples from its frame levels.
pub fn detect_speech(frame_db: &[f32], total_samples: u64, opts: &VadOptions) -> Vec<Region> {
    if frame_db.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<f32> = frame_db.to_vec();
    sorted.sort_by(f32::total_cmp);
    let noise = percentile(&sorted, 0.10);
    let loud = percentile(&sorted, 0.95);
    if loud < opts.min_speech_db || loud - noise < opts.min_dynamic_range_db {
        return Vec::new();
    }
    // Judge levels against the speech, not against digital silence 100 dB further down.
    let floor = noise.max(loud - 50.0).max(SILENCE_DB);
    let range = loud - floor;
    let start_db = floor + (0.40 * range).max(6.0);
    let keep_db = floor + (0.25 * range).max(3.0);

    let mut frames = Vec::new(); // (first, last_exclusive) in frames
    let mut open: Option<usize> = None;
    for (i, &db) in frame_db.iter().enumerate() {
        match open {
            None if db >= start_db => open = Some(i),
            Some(s) if db < keep_db => {
                frames.push((s, i));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(s) = open {
        frames.push((s, frame_db.len()));
    }

    let close_gap = (opts.close_gap_ms / FRAME_MS) as usize;
    let min_speech = (opts.min_speech_ms / FRAME_MS) as usize;
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in frames {
        match merged.last_mut() {
            Some(last) if s - last.1 < close_gap => last.1 = e,
            _ => merged.push((s, e)),
        }
    }
    merged.retain(|(s, e)| e - s >= min_speech);

    let pad = u64::from(opts.pad_ms) * 16;
    let frame = FRAME_SAMPLES as u64;
    let mut regions: Vec<Region> = Vec::new();
    for (s, e) in merged {
        let start = (s as u64 * frame).saturating_sub(pad);
        let end = (e as u64 * frame + pad).min(total_samples);
        match regions.last_mut() {
            Some(last) if start <= last.end => last.end = end,
            _ => regions.push(Region { start, end }),
        }
    }
    regions
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
fn percentile(sorted: &[f32], q: f32) -> f32 {
    let i = ((sorted.len() - 1) as f32 * q).round() as usize;
    sorted[i]
}

/// The frame indices inside the regions, for measuring speech loudness.
pub fn speech_frames(regions: &[Region]) -> impl Iterator<Item = usize> + '_ {
    let frame = FRAME_SAMPLES as u64;
    regions
        .iter()
        .flat_map(move |r| (r.start / frame) as usize..r.end.div_ceil(frame) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame levels: `(seconds, dB)` pieces laid end to end.
    fn levels(pieces: &[(f32, f32)]) -> (Vec<f32>, u64) {
        let mut out = Vec::new();
        for &(secs, db) in pieces {
            out.extend(std::iter::repeat_n(db, (secs * 50.0).round() as usize));
        }
        let total = out.len() as u64 * FRAME_SAMPLES as u64;
        (out, total)
    }

    fn secs(r: &Region) -> (f32, f32) {
        (r.start as f32 / 16_000.0, r.end as f32 / 16_000.0)
    }

    #[test]
    fn finds_speech_between_silences() {
        let (db, total) = levels(&[
            (1.0, -70.0),
            (2.0, -25.0),
            (1.0, -70.0),
            (1.5, -28.0),
            (0.5, -70.0),
        ]);
        let regions = detect_speech(&db, total, &VadOptions::default());
        assert_eq!(regions.len(), 2, "{regions:?}");
        let (s0, e0) = secs(&regions[0]);
        assert!(
            (s0 - 0.94).abs() < 0.01 && (e0 - 3.06).abs() < 0.01,
            "{s0} {e0}"
        );
        let (s1, e1) = secs(&regions[1]);
        assert!(
            (s1 - 3.94).abs() < 0.01 && (e1 - 5.56).abs() < 0.01,
            "{s1} {e1}"
        );
    }

    #[test]
    fn short_gaps_close_and_clicks_vanish() {
        let (db, total) = levels(&[
            (1.0, -80.0),
            (1.0, -20.0),
            (0.1, -80.0), // a 100 ms gap between words
            (1.0, -20.0),
            (1.0, -80.0),
            (0.04, -20.0), // a 40 ms click
            (1.0, -80.0),
        ]);
        let regions = detect_speech(&db, total, &VadOptions::default());
        assert_eq!(regions.len(), 1, "{regions:?}");
    }

    #[test]
    fn silence_and_hiss_have_no_speech() {
        let (db, total) = levels(&[(10.0, SILENCE_DB)]);
        assert!(detect_speech(&db, total, &VadOptions::default()).is_empty());
        let hiss: Vec<f32> = (0..500).map(|i| -60.0 + (i % 7) as f32 * 0.3).collect();
        assert!(detect_speech(&hiss, 500 * 320, &VadOptions::default()).is_empty());
    }

    #[test]
    fn quiet_recordings_work_too() {
        // The same conversation 35 dB quieter, over a noise floor.
        let (db, total) = levels(&[(1.0, -75.0), (2.0, -50.0), (1.0, -75.0)]);
        let regions = detect_speech(&db, total, &VadOptions::default());
        assert_eq!(regions.len(), 1);
    }

    #[test]
    fn speech_frames_cover_regions() {
        let r = [
            Region { start: 0, end: 640 },
            Region {
                start: 3200,
                end: 3300,
            },
        ];
        assert_eq!(speech_frames(&r).collect::<Vec<_>>(), vec![0, 1, 10]);
    }
}
