//! The session's voices from a neural speaker encoder: one embedding per window of the
//! encoder's length, every second over the speech ([`embedding_windows`]; or one per clustering
//! unit), split into two voices by spherical 2-means, and each 0.2 s block given the mean
//! log-odds of the windows that cover it ([`VoiceSplit::per_block`]). Embeddings tell real
//! voices apart where pitch + MFCC averages do not (ARCHITECTURE.md, "What we measured"); the
//! block features then place each change at 0.2 s.

use std::path::Path;

use crate::audio::pcm::PcmReader;
use crate::error::Result;
use crate::speakers::embed::SpeakerEncoder;

/// Units with less speech than this (s) get no embedding (too short to say who speaks).
pub const MIN_UNIT_S: f64 = 0.5;
/// A start whose smaller voice holds less than this share loses against a balanced one.
const MIN_START_SHARE: f32 = 0.05;
/// Sharpness of a unit's voice posterior from its cosine similarities to the two voices.
const POSTERIOR_SCALE: f32 = 12.0;
/// A split whose two centroids are more alike than this is too weak to decide who is who, and
/// the block features (pitch, cepstra) get their chance. It never makes a session one voice:
/// one voice alone splits into groups 0.45-0.97 alike, two similar voices 0.63-0.97
/// (`tests/timeline.rs`, `one_voice_or_two_report`).
pub const WEAK_SPLIT_COSINE: f32 = 0.95;
/// Voices at least this alike whose split the block features cannot find again on held-out
/// units ([`MIN_SEEN_SEPARATION`]) were split by what was said, not by who said it: the block
/// features get their chance too. CAM++ is trained to ignore pitch, and one voice shifted by a
/// semitone or three comes out as two groups 0.93-0.95 alike whose block features are 0.1-0.8
/// standard deviations apart; every real pair here is under 0.65 alike (`tests/timeline.rs`).
pub const ALIKE_COSINE: f32 = 0.90;
/// See [`ALIKE_COSINE`]: the cross-validated separation (d') of the block features under
/// which the embeddings' split is not seen in them.
pub const MIN_SEEN_SEPARATION: f64 = 1.0;

/// The two-voice split of the embedded pieces (units or windows; per block after
/// [`VoiceSplit::per_block`]).
#[derive(Debug, Clone)]
pub struct VoiceSplit {
    /// Per piece: the probability that it is voice 1 (`None`: no embedding).
    pub p_voice1: Vec<Option<f32>>,
    /// Cosine similarity of the two voices' centroids.
    pub centroid_cosine: f32,
    /// Share of the embedded units in each voice.
    pub share: [f32; 2],
    /// The two voices' centroids (unit length).
    pub centroids: [Vec<f32>; 2],
}

/// Embeds every unit (`(start_s, end_s)`, time-ordered) of the 16 kHz WAV, 64 at a time.
pub fn embed_units(
    pcm_wav: &Path,
    units: &[(f64, f64)],
    encoder: &dyn SpeakerEncoder,
) -> Result<Vec<Option<Vec<f32>>>> {
    let mut pcm = PcmReader::open(pcm_wav)?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; units.len()];
    let wanted: Vec<usize> = (0..units.len())
        .filter(|&i| units[i].1 - units[i].0 >= MIN_UNIT_S)
        .collect();
    for batch in wanted.chunks(64) {
        let mut audio: Vec<Vec<f32>> = Vec::with_capacity(batch.len());
        for &i in batch {
            audio.push(pcm.read(units[i].0, units[i].1)?.1);
        }
        let refs: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
        for (&i, e) in batch.iter().zip(encoder.embed(&refs)) {
            out[i] = Some(e);
        }
    }
    Ok(out)
}

/// Overlapping encoder windows over the speech blocks: in each run of speech, `win` blocks
/// every `hop` blocks, the last one ending with the run; a run shorter than a window is one
/// window. Dense windows let a change inside continuous speech show in the embeddings: a block
/// near it is covered by a window on either side of it.
pub fn embedding_windows(in_speech: &[bool], win: usize, hop: usize) -> Vec<(usize, usize)> {
    let (win, hop) = (win.max(1), hop.max(1));
    let mut out = Vec::new();
    let mut j = 0;
    while j < in_speech.len() {
        if !in_speech[j] {
            j += 1;
            continue;
        }
        let run_end = (j..in_speech.len())
            .find(|&k| !in_speech[k])
            .unwrap_or(in_speech.len());
        let mut lo = j;
        loop {
            let hi = (lo + win).min(run_end);
            out.push((hi.saturating_sub(win).max(j), hi));
            if hi == run_end {
                break;
            }
            lo += hop;
        }
        j = run_end;
    }
    out
}

impl VoiceSplit {
    /// The pieces' posteriors spread over the `n_blocks` feature blocks they cover
    /// (`pieces[i]` = blocks `lo..hi` of piece `i`): a block covered by several pieces gets the
    /// mean of their log-odds, a block covered by none gets `None`.
    pub fn per_block(&self, pieces: &[(usize, usize)], n_blocks: usize) -> VoiceSplit {
        let mut sum = vec![0f32; n_blocks];
        let mut count = vec![0u32; n_blocks];
        for (&(lo, hi), p) in pieces.iter().zip(&self.p_voice1) {
            let Some(p) = p else { continue };
            let log_odds = logit(*p);
            for b in lo..hi.min(n_blocks) {
                sum[b] += log_odds;
                count[b] += 1;
            }
        }
        let p_voice1 = sum
            .iter()
            .zip(&count)
            .map(|(&s, &n)| (n > 0).then(|| 1.0 / (1.0 + (-s / n as f32).exp())))
            .collect();
        VoiceSplit {
            p_voice1,
            centroid_cosine: self.centroid_cosine,
            share: self.share,
            centroids: self.centroids.clone(),
        }
    }
}

/// Log-odds of a probability, kept finite.
pub(super) fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = dot(&v, &v).sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Spherical 2-means on the embeddings (weighted by the unit's length) from two starts, the
/// one with the tighter voices kept: the sign of each unit on the main axis of variation (splits
/// the bulk in two), and the unit least like the mean with the unit least like that one (finds a
/// small second voice, but also a lone outlier, hence the comparison).
pub fn split_voices(embeddings: &[Option<Vec<f32>>], weights: &[f32]) -> Option<VoiceSplit> {
    let items: Vec<(&[f32], f32)> = embeddings
        .iter()
        .zip(weights)
        .filter_map(|(e, &w)| e.as_deref().map(|e| (e, w)))
        .collect();
    if items.len() < 2 {
        return None;
    }
    let dim = items[0].0.len();
    let mean = normalised(weighted_sum(&items, dim, |_| true));
    let axis = main_axis(&items, &mean);
    let by_axis: Vec<u8> = items
        .iter()
        .map(|(e, _)| {
            u8::from(
                e.iter()
                    .zip(&mean)
                    .zip(&axis)
                    .map(|((x, m), a)| (x - m) * a)
                    .sum::<f32>()
                    > 0.0,
            )
        })
        .collect();
    let far = |from: &[f32]| {
        items
            .iter()
            .min_by(|a, b| dot(a.0, from).total_cmp(&dot(b.0, from)))
            .map(|(e, _)| e.to_vec())
            .expect("two items")
    };
    let c0 = far(&mean);
    let c1 = far(&c0);
    let by_far: Vec<u8> = items
        .iter()
        .map(|(e, _)| u8::from(dot(e, &c1) > dot(e, &c0)))
        .collect();
    let (labels, centroids) = [by_axis, by_far]
        .into_iter()
        .map(|start| two_means(&items, dim, start))
        .max_by(|a, b| {
            let key = |s: &(Vec<u8>, [Vec<f32>; 2])| (balanced(&items, &s.0), cohesion(&items, s));
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        })
        .expect("two starts");
    let total: f32 = items.iter().map(|(_, w)| w).sum::<f32>().max(1e-9);
    let mut share = [0f32; 2];
    for ((_, w), &l) in items.iter().zip(&labels) {
        share[l as usize] += w / total;
    }
    let p_voice1 = embeddings
        .iter()
        .map(|e| {
            e.as_ref().map(|e| {
                let margin = dot(e, &centroids[1]) - dot(e, &centroids[0]);
                1.0 / (1.0 + (-POSTERIOR_SCALE * margin).exp())
            })
        })
        .collect();
    Some(VoiceSplit {
        p_voice1,
        centroid_cosine: dot(&centroids[0], &centroids[1]),
        share,
        centroids,
    })
}

fn weighted_sum(items: &[(&[f32], f32)], dim: usize, take: impl Fn(usize) -> bool) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    for (i, (e, w)) in items.iter().enumerate().filter(|(i, _)| take(*i)) {
        let _ = i;
        sum.iter_mut().zip(e.iter()).for_each(|(s, x)| *s += w * x);
    }
    sum
}

/// The main axis of the embeddings around `mean` (power iteration on the weighted covariance).
fn main_axis(items: &[(&[f32], f32)], mean: &[f32]) -> Vec<f32> {
    let dim = mean.len();
    let mut v: Vec<f32> = (0..dim)
        .map(|d| if d % 2 == 0 { 1.0 } else { -0.5 })
        .collect();
    v = normalised(v);
    for _ in 0..30 {
        let mut next = vec![0f32; dim];
        for (e, w) in items {
            let proj: f32 = e
                .iter()
                .zip(mean)
                .zip(&v)
                .map(|((x, m), a)| (x - m) * a)
                .sum();
            next.iter_mut()
                .zip(e.iter().zip(mean))
                .for_each(|(n, (x, m))| *n += w * proj * (x - m));
        }
        v = normalised(next);
    }
    v
}

/// Spherical 2-means from the labels `start`: labels and the two unit centroids.
fn two_means(items: &[(&[f32], f32)], dim: usize, start: Vec<u8>) -> (Vec<u8>, [Vec<f32>; 2]) {
    let centroids_of = |labels: &[u8]| -> [Vec<f32>; 2] {
        [0u8, 1].map(|k| normalised(weighted_sum(items, dim, |i| labels[i] == k)))
    };
    let mut labels = start;
    let mut centroids = centroids_of(&labels);
    for _ in 0..20 {
        let next: Vec<u8> = items
            .iter()
            .map(|(e, _)| u8::from(dot(e, &centroids[1]) > dot(e, &centroids[0])))
            .collect();
        if next == labels {
            break;
        }
        labels = next;
        centroids = centroids_of(&labels);
    }
    (labels, centroids)
}

/// Whether each voice holds at least [`MIN_START_SHARE`] of the speech: a lone outlier is not a
/// voice.
fn balanced(items: &[(&[f32], f32)], labels: &[u8]) -> bool {
    let total: f32 = items.iter().map(|(_, w)| w).sum::<f32>().max(1e-9);
    let one: f32 = items
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == 1)
        .map(|((_, w), _)| w)
        .sum::<f32>()
        / total;
    one.min(1.0 - one) >= MIN_START_SHARE
}

/// Weighted mean cosine similarity of the units to their own voice (the k-means objective).
fn cohesion(items: &[(&[f32], f32)], split: &(Vec<u8>, [Vec<f32>; 2])) -> f32 {
    let (labels, centroids) = split;
    items
        .iter()
        .zip(labels)
        .map(|((e, w), &l)| w * dot(e, &centroids[l as usize]))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Option<Vec<f32>> {
        Some(normalised(v.to_vec()))
    }

    #[test]
    fn two_groups_of_directions_are_two_voices() {
        let e = vec![
            unit(&[1.0, 0.1, 0.0]),
            unit(&[0.9, 0.0, 0.1]),
            None,
            unit(&[0.0, 1.0, 0.1]),
            unit(&[0.1, 0.9, 0.0]),
            unit(&[1.0, 0.0, 0.05]),
        ];
        let s = split_voices(&e, &[1.0; 6]).unwrap();
        let hard: Vec<Option<bool>> = s.p_voice1.iter().map(|p| p.map(|p| p > 0.5)).collect();
        assert_eq!(hard[0], hard[1]);
        assert_eq!(hard[0], hard[5]);
        assert_eq!(hard[3], hard[4]);
        assert_ne!(hard[0], hard[3]);
        assert_eq!(hard[2], None);
        assert!(s.centroid_cosine < 0.3, "{}", s.centroid_cosine);
    }

    #[test]
    fn one_direction_is_a_weak_split() {
        let e: Vec<Option<Vec<f32>>> = (0..10)
            .map(|i| unit(&[1.0, 0.01 * i as f32, 0.02]))
            .collect();
        let s = split_voices(&e, &[1.0; 10]).unwrap();
        assert!(
            s.centroid_cosine > WEAK_SPLIT_COSINE,
            "{}",
            s.centroid_cosine
        );
    }

    #[test]
    fn windows_cover_every_run_of_speech_and_end_with_it() {
        let mut in_speech = vec![true; 12];
        in_speech.extend([false; 3]);
        in_speech.extend([true; 4]);
        let w = embedding_windows(&in_speech, 8, 5);
        // the 12-block run: 0..8, then 5..12 would pass its end, so the last ends with it
        assert_eq!(w, vec![(0, 8), (4, 12), (15, 19)]);
        assert!(embedding_windows(&[false; 5], 8, 5).is_empty());
    }

    #[test]
    fn a_block_between_two_windows_gets_their_mean_log_odds() {
        let split = VoiceSplit {
            p_voice1: vec![Some(0.9), Some(0.1), None],
            centroid_cosine: 0.5,
            share: [0.5, 0.5],
            centroids: [vec![1.0, 0.0], vec![0.0, 1.0]],
        };
        let blocks = split.per_block(&[(0, 4), (2, 6), (6, 8)], 9);
        let p: Vec<Option<f32>> = blocks.p_voice1;
        assert!((p[0].unwrap() - 0.9).abs() < 1e-5);
        assert!((p[2].unwrap() - 0.5).abs() < 1e-5, "{:?}", p[2]);
        assert!((p[5].unwrap() - 0.1).abs() < 1e-5);
        assert_eq!(p[6], None, "a window without an embedding says nothing");
        assert_eq!(p[8], None, "no window covers it");
    }
}
