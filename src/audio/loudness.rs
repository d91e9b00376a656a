//! Frame levels and loudness normalisation.
//!
//! While the decoder streams, [`LevelMeter`] keeps one number per 20 ms frame (its level in dBFS
//! with the frame's DC offset removed) and the peak: 200 KB for an hour, so the
//! speech map and the gain can be computed after decoding without holding the audio in memory.

/// Samples per analysis frame: 20 ms at 16 kHz.
pub const FRAME_SAMPLES: usize = 320;
/// Floor for the level of a silent frame, so digital silence is a finite number.
pub const SILENCE_DB: f32 = -120.0;

/// Per-frame levels of a whole recording.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    /// Level of each 20 ms frame in dBFS (RMS without DC). The last partial frame is included.
    pub frame_db: Vec<f32>,
    /// Largest absolute sample value, before any gain.
    pub peak: f32,
}

/// Streams samples into [`Levels`].
#[derive(Debug, Default)]
pub struct LevelMeter {
    levels: Levels,
    /// The samples of the frame being filled.
    frame: Vec<f32>,
}

impl LevelMeter {
    pub fn new() -> Self {
        LevelMeter {
            levels: Levels::default(),
            frame: Vec::with_capacity(FRAME_SAMPLES),
        }
    }

    pub fn push(&mut self, mut samples: &[f32]) {
        self.levels.peak = samples.iter().fold(self.levels.peak, |p, s| p.max(s.abs()));
        if !self.frame.is_empty() {
            let take = (FRAME_SAMPLES - self.frame.len()).min(samples.len());
            self.frame.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.frame.len() == FRAME_SAMPLES {
                self.levels.frame_db.push(frame_level_db(&self.frame));
                self.frame.clear();
            }
        }
        let mut frames = samples.chunks_exact(FRAME_SAMPLES);
        for frame in &mut frames {
            self.levels.frame_db.push(frame_level_db(frame));
        }
        self.frame.extend_from_slice(frames.remainder());
    }

    pub fn finish(mut self) -> Levels {
        if !self.frame.is_empty() {
            self.levels.frame_db.push(frame_level_db(&self.frame));
        }
        self.levels
    }
}

/// Level of one frame: its power with the frame's mean (DC offset) removed, in dBFS.
///
/// Sums in eight lanes so the compiler vectorises it: this runs on every sample of every
/// recording.
fn frame_level_db(frame: &[f32]) -> f32 {
    let mut sum = [0.0f32; 8];
    let mut sum_sq = [0.0f32; 8];
    let mut lanes = frame.chunks_exact(8);
    for chunk in &mut lanes {
        for i in 0..8 {
            sum[i] += chunk[i];
            sum_sq[i] += chunk[i] * chunk[i];
        }
    }
    for (i, &x) in lanes.remainder().iter().enumerate() {
        sum[i] += x;
        sum_sq[i] += x * x;
    }
    let n = frame.len() as f64;
    let total: f64 = sum.iter().map(|&v| f64::from(v)).sum();
    let total_sq: f64 = sum_sq.iter().map(|&v| f64::from(v)).sum();
    let mean = total / n;
    power_db((total_sq / n - mean * mean).max(0.0))
}

/// Mean power to dBFS, where a full-scale sine is -3 dBFS and a full-scale square 0 dBFS.
fn power_db(mean_square: f64) -> f32 {
    if mean_square <= 0.0 {
        return SILENCE_DB;
    }
    ((10.0 * mean_square.log10()) as f32).max(SILENCE_DB)
}

/// Power-average level of the given frames in dBFS: the "RMS of speech" we normalise.
pub fn mean_level_db(frame_db: &[f32], frames: impl Iterator<Item = usize>) -> Option<f32> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for i in frames.filter(|i| *i < frame_db.len()) {
        sum += 10f64.powf(f64::from(frame_db[i]) / 10.0);
        n += 1;
    }
    (n > 0).then(|| power_db(sum / n as f64))
}

/// How we normalise: speech to `target_db`, but never so much that the peak would clip.
#[derive(Debug, Clone, Copy)]
pub struct Normalisation {
    pub target_db: f32,
    /// Highest peak allowed after gain, in dBFS.
    pub peak_ceiling_db: f32,
    /// Most gain we apply: beyond this we would only be raising noise.
    pub max_gain_db: f32,
}

impl Default for Normalisation {
    fn default() -> Self {
        Normalisation {
            target_db: -20.0,
            peak_ceiling_db: -1.0,
            max_gain_db: 40.0,
        }
    }
}

impl Normalisation {
    /// Gain in dB that brings `speech_db` to the target, limited by the peak and the maximum.
    pub fn gain_db(&self, speech_db: f32, peak: f32) -> f32 {
        let wanted = self.target_db - speech_db;
        let peak_db = if peak > 0.0 {
            20.0 * peak.log10()
        } else {
            SILENCE_DB
        };
        let headroom = self.peak_ceiling_db - peak_db;
        wanted.min(headroom).min(self.max_gain_db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sine_reads_minus_three_db_below_its_peak() {
        let mut meter = LevelMeter::new();
        let sine: Vec<f32> = (0..16_000)
            .map(|n| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 16_000.0).sin())
            .collect();
        meter.push(&sine);
        let levels = meter.finish();
        assert_eq!(levels.frame_db.len(), 50);
        let mid = levels.frame_db[25];
        // 0.5 amplitude: -6.02 dB peak, -9.03 dBFS RMS.
        assert!((mid + 9.03).abs() < 0.05, "level {mid}");
        assert!((levels.peak - 0.5).abs() < 1e-3);
    }

    #[test]
    fn silence_and_dc_are_the_floor() {
        let mut meter = LevelMeter::new();
        meter.push(&vec![0.0; 640]);
        meter.push(&vec![0.3; 16_000]); // DC is not sound
        let levels = meter.finish();
        assert_eq!(levels.frame_db[0], SILENCE_DB);
        assert!(*levels.frame_db.last().unwrap() < -60.0);
        assert_eq!(levels.frame_db.len(), 52);
    }

    #[test]
    fn gain_reaches_the_target_unless_the_peak_forbids() {
        let n = Normalisation::default();
        assert!((n.gain_db(-30.0, 0.05) - 10.0).abs() < 1e-4);
        // Peak at -6 dBFS allows only 5 dB.
        assert!((n.gain_db(-30.0, 0.5012) - 5.0).abs() < 0.01);
        // Near-silence is not amplified without bound.
        assert_eq!(n.gain_db(-90.0, 0.0001), 40.0);
        // Loud speech is turned down.
        assert!((n.gain_db(-10.0, 0.9) + 10.0).abs() < 1e-4);
    }

    #[test]
    fn mean_level_is_a_power_average() {
        let db = [-10.0, -20.0, SILENCE_DB];
        let m = mean_level_db(&db, [0usize, 1].into_iter()).unwrap();
        // (0.1 + 0.01) / 2 = 0.055 -> -12.6 dB
        assert!((m + 12.596).abs() < 0.01, "{m}");
        assert!(mean_level_db(&db, std::iter::empty()).is_none());
    }
}
