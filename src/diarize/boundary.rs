//! Where exactly a change of voice without a pause falls. The clustering places it at 0.2 s
//! blocks and [`super::timeline`] moves it to the quietest 20 ms frame near there, but a piece
//! edge there still cut the last word of one turn or the first of the next (measured on the
//! scripted conversations: 55 piece edges inside a clause, most 0.05–0.25 s from the true
//! change). Turn-taking without a pause still leaves a dip of a few milliseconds between the two
//! voices' words, and a 20 ms frame grid smears a 10 ms gap over two frames, so the dip is
//! looked for in the samples: 10 ms windows every 2.5 ms.
//!
//! Tried and left out: frame-by-frame pitch evidence (where the voiced frames stop matching one
//! voice's pitch) to choose among the dips; it moved as many edges the wrong way as the right.

use std::path::Path;

use super::timeline::{VoiceSpan, move_changes};
use crate::audio::pcm::PcmReader;
use crate::error::Result;

/// Length of one level window (s).
const WINDOW_S: f64 = 0.010;
/// Step between level windows (s).
const STEP_S: f64 = 0.0025;
/// A change never moves closer than this to either span's other end (s).
const MIN_SPAN_S: f64 = 0.05;

/// Moves every change between two voices without a pause (one span ends where the next begins)
/// to the quietest 10 ms of audio within `radius_s`; returns how many moved.
pub fn snap_changes_to_dips(
    pcm_wav: &Path,
    spans: &mut [VoiceSpan],
    radius_s: f64,
) -> Result<usize> {
    let mut pcm = PcmReader::open(pcm_wav)?;
    let rate = pcm.rate();
    move_changes(spans, radius_s, MIN_SPAN_S, |change_s, lo_s, hi_s| {
        if hi_s <= lo_s {
            return Ok(None);
        }
        let (first_s, samples) = pcm.read(lo_s - WINDOW_S / 2.0, hi_s + WINDOW_S / 2.0)?;
        Ok(quietest_window(&samples, rate, change_s - first_s)
            .map(|dip| (first_s + dip).clamp(lo_s, hi_s)))
    })
}

/// The centre (s from the first sample) of the 10 ms window with the least energy; of equally
/// quiet ones, the nearest to `near_s`.
fn quietest_window(samples: &[f32], rate: f64, near_s: f64) -> Option<f64> {
    let win = ((WINDOW_S * rate).round() as usize).max(1);
    let step = ((STEP_S * rate).round() as usize).max(1);
    if samples.len() < win {
        return None;
    }
    let mut best: Option<(f64, f64)> = None; // (energy, centre)
    let mut k = 0;
    while k + win <= samples.len() {
        let energy: f64 = samples[k..k + win]
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum();
        let centre = (k as f64 + win as f64 / 2.0) / rate;
        let better = match best {
            None => true,
            Some((e, c)) => {
                energy < e || (energy == e && (centre - near_s).abs() < (c - near_s).abs())
            }
        };
        if better {
            best = Some((energy, centre));
        }
        k += step;
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 s of loud noise at 16 kHz with silent gaps (s).
    fn noise_with_gaps(path: &Path, gaps: &[(f64, f64)]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 0..48_000 {
            let t = n as f64 / 16_000.0;
            let silent = gaps.iter().any(|&(a, b)| t >= a && t < b);
            let v = if silent { 0 } else { rng.i16(-8000..8000) };
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn a_change_moves_into_the_10_ms_gap_near_it() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        // a 10 ms gap astride two 20 ms frames, 0.15 s before the change
        noise_with_gaps(&wav, &[(1.005, 1.015)]);
        let mut spans = vec![VoiceSpan::sure(0.0, 1.16, 0), VoiceSpan::sure(1.16, 2.5, 1)];
        assert_eq!(snap_changes_to_dips(&wav, &mut spans, 0.2).unwrap(), 1);
        assert!((spans[0].end_s - 1.01).abs() < 0.004, "{spans:?}");
        assert_eq!(spans[0].end_s, spans[1].start_s);
    }

    #[test]
    fn changes_over_a_pause_and_far_gaps_stay() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        noise_with_gaps(&wav, &[(0.5, 0.51), (2.0, 2.2)]);
        let mut spans = vec![
            VoiceSpan::sure(0.0, 1.0, 0), // the gap at 0.5 s is beyond the 0.2 s radius of 1.0 s
            VoiceSpan::sure(1.0, 2.0, 1),
            VoiceSpan::sure(2.2, 3.0, 0), // after a pause: not a change inside speech
        ];
        let before = spans.clone();
        snap_changes_to_dips(&wav, &mut spans, 0.2).unwrap();
        // the change at 1.0 s moves only within its radius, to noise as quiet as any
        assert!((spans[0].end_s - 1.0).abs() <= 0.2, "{spans:?}");
        assert_eq!(spans[1].end_s, before[1].end_s);
        assert_eq!(spans[2].start_s, before[2].start_s);
    }
}
