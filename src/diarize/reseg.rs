//! Resegmentation: the clustering's block labels are redrawn by a two-state hidden Markov model
//! over the speech blocks, each voice a diagonal Gaussian of cepstra (all speech frames) and
//! pitch, plus (with a speaker encoder) the embeddings' own evidence for each voice, which is
//! never re-estimated: on real people pitch and cepstra alone settle on a split by sound class.
//! The models are re-estimated from the forward-backward posteriors a few times (soft EM: hard
//! relabelling locks into the first split it finds), then the Viterbi path is the answer.
//!
//! The clustering decides each block from its 0.6 s neighbourhood, so a stretch of one voice
//! whose words happen to look like the other voice flips for a second or three. A speaker change
//! costs [`SWITCH_COST`] nats of evidence inside continuous speech and less across a pause, so
//! only sustained evidence moves a change (measured with `tests/timeline.rs` on the 20 fixture
//! conversations: timeline DER summed 222 → 156 points with the GE2E clustering as the start,
//! 231 → 171 with the pitch + MFCC one; README.md "Who said what, measured").

use super::features::{Block, N_CEP};

/// Log-likelihood a speaker change must win inside continuous speech.
pub const SWITCH_COST: f64 = 4.0;
/// Weight of the twelve cepstra's log-likelihood against pitch's. A block's cepstra are
/// correlated with each other and with the neighbouring blocks'; counted as twelve independent
/// observations they outvote pitch, the one feature that tells most voice pairs apart, and the
/// models settle on a split by sound class (measured: 0.35 to 0.5 are stable, 1.0 flips
/// `espeak-1` between 8 % and 41 % DER with the switch cost).
const CEP_WEIGHT: f64 = 0.35;
/// A pause this long (s) or longer makes a change free; shorter ones discount it linearly.
const FREE_AFTER_PAUSE_S: f64 = 1.0;
/// Re-estimations of the two voices' models.
const ROUNDS: usize = 5;
/// Blocks with fewer voiced frames have no pitch observation.
const MIN_VOICED: u16 = 3;
/// Variance floors: cepstra (squared units) and pitch (semitones²).
const CEP_FLOOR: f64 = 1e-3;
const PITCH_FLOOR: f64 = 0.1;
/// A voice needs this many blocks to be modelled; with fewer the labels stay as they are.
const MIN_BLOCKS: usize = 3;

/// One speech block's observation.
struct Obs {
    block: usize,
    cep: [f64; N_CEP],
    /// Mean pitch in semitones (12·log2 f0), when voiced enough.
    pitch: Option<f64>,
    /// Silence before this block (s) since the previous speech block.
    gap_s: f64,
    /// Evidence for voice 1 from the speaker embeddings, as log-odds (0: none).
    embedding_log_odds: f64,
}

/// Diagonal Gaussian of one voice.
struct VoiceModel {
    cep_mean: [f64; N_CEP],
    cep_var: [f64; N_CEP],
    /// Mean and variance; `None` with too few voiced blocks.
    pitch: Option<(f64, f64)>,
}

/// Redraws `labels` (per block; `None` outside speech) of a two-voice timeline in place.
/// `embedding_log_odds` (per block, when there is a speaker encoder) is the embeddings' evidence
/// for voice 1; it stays in every block's likelihood, so the pitch and cepstra models refine the
/// embeddings' voices instead of replacing them (on real voices pitch and cepstra alone settle
/// on a split by sound class: README.md, "Who said what, measured").
/// Returns the number of blocks whose voice changed.
pub fn resegment(
    blocks: &[Block],
    labels: &mut [Option<u8>],
    embedding_log_odds: &[Option<f32>],
    block_s: f64,
) -> usize {
    let obs = observations(blocks, labels, embedding_log_odds, block_s);
    let start: Vec<u8> = obs.iter().map(|o| labels[o.block].unwrap_or(0)).collect();
    let Some(models) = em(&obs, start.iter().map(|&l| f64::from(l)).collect()) else {
        return 0;
    };
    let redrawn = viterbi(&obs, &models);
    let mut changed = 0;
    for (o, (&new, &old)) in obs.iter().zip(redrawn.iter().zip(&start)) {
        changed += usize::from(new != old);
        labels[o.block] = Some(new);
    }
    changed
}

/// Soft EM from `p1` (per block, the probability of voice 1): the two voices' models after
/// [`ROUNDS`] re-estimations; `None` when a voice holds too little to model.
fn em(obs: &[Obs], mut p1: Vec<f64>) -> Option<[VoiceModel; 2]> {
    let mut models = None;
    for _ in 0..ROUNDS {
        let Some(m) = fit_models(obs, &p1) else {
            break;
        };
        p1 = posteriors(obs, &m);
        models = Some(m);
    }
    models
}

fn observations(
    blocks: &[Block],
    labels: &[Option<u8>],
    embedding_log_odds: &[Option<f32>],
    block_s: f64,
) -> Vec<Obs> {
    let mut out = Vec::new();
    let mut last: Option<usize> = None;
    for (j, b) in blocks.iter().enumerate() {
        if b.speech_frames == 0 || labels[j].is_none() {
            continue;
        }
        let n = f64::from(b.speech_frames);
        let cep = std::array::from_fn(|k| f64::from(b.cep_all[k]) / n);
        let pitch = (b.voiced_frames >= MIN_VOICED)
            .then(|| 12.0 * f64::from(b.sum[N_CEP]) / f64::from(b.voiced_frames));
        let gap_s = last.map_or(0.0, |l| (j - l - 1) as f64 * block_s);
        out.push(Obs {
            block: j,
            cep,
            pitch,
            gap_s,
            embedding_log_odds: embedding_log_odds
                .get(j)
                .copied()
                .flatten()
                .map_or(0.0, f64::from),
        });
        last = Some(j);
    }
    out
}

/// Each voice's Gaussians from the blocks weighted by `p1`; `None` when a voice holds less
/// than [`MIN_BLOCKS`] blocks' worth.
fn fit_models(obs: &[Obs], p1: &[f64]) -> Option<[VoiceModel; 2]> {
    let fit = |voice: u8| -> Option<VoiceModel> {
        let w: Vec<f64> = p1
            .iter()
            .map(|&p| if voice == 1 { p } else { 1.0 - p })
            .collect();
        let n: f64 = w.iter().sum();
        if n < MIN_BLOCKS as f64 {
            return None;
        }
        let cep_mean: [f64; N_CEP] =
            std::array::from_fn(|k| obs.iter().zip(&w).map(|(o, w)| w * o.cep[k]).sum::<f64>() / n);
        let cep_var = std::array::from_fn(|k| {
            obs.iter()
                .zip(&w)
                .map(|(o, w)| w * (o.cep[k] - cep_mean[k]).powi(2))
                .sum::<f64>()
                / n
                + CEP_FLOOR
        });
        let voiced: Vec<(f64, f64)> = obs
            .iter()
            .zip(&w)
            .filter_map(|(o, &w)| o.pitch.map(|p| (p, w)))
            .collect();
        let nv: f64 = voiced.iter().map(|(_, w)| w).sum();
        let pitch = (nv >= MIN_BLOCKS as f64).then(|| {
            let m = voiced.iter().map(|(p, w)| w * p).sum::<f64>() / nv;
            let v = voiced.iter().map(|(p, w)| w * (p - m).powi(2)).sum::<f64>() / nv;
            (m, v + PITCH_FLOOR)
        });
        Some(VoiceModel {
            cep_mean,
            cep_var,
            pitch,
        })
    };
    Some([fit(0)?, fit(1)?])
}

fn gauss_ll(x: f64, mean: f64, var: f64) -> f64 {
    -0.5 * ((x - mean).powi(2) / var + var.ln())
}

fn log_likelihood(o: &Obs, m: &VoiceModel) -> f64 {
    let cep: f64 = (0..N_CEP)
        .map(|k| gauss_ll(o.cep[k], m.cep_mean[k], m.cep_var[k]))
        .sum();
    let pitch = match (o.pitch, m.pitch) {
        (Some(p), Some((mean, var))) => gauss_ll(p, mean, var),
        _ => 0.0,
    };
    CEP_WEIGHT * cep + pitch
}

/// Log-likelihood of block `o` under each voice: its features under the voice's model plus
/// the embeddings' log-probability of the voice.
fn emissions(o: &Obs, models: &[VoiceModel; 2]) -> [f64; 2] {
    let lo = o.embedding_log_odds;
    [
        log_likelihood(o, &models[0]) - softplus(lo),
        log_likelihood(o, &models[1]) - softplus(-lo),
    ]
}

/// ln(1 + e^x), without overflow: -ln sigmoid(-x).
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// What a change before block `o` costs: [`SWITCH_COST`] less what the pause forgives.
fn switch_cost(o: &Obs) -> f64 {
    SWITCH_COST * (1.0 - o.gap_s / FREE_AFTER_PAUSE_S).max(0.0)
}

fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Per block the probability of voice 1 (forward-backward), a change having probability
/// `exp(-cost) / 2`.
fn posteriors(obs: &[Obs], models: &[VoiceModel; 2]) -> Vec<f64> {
    let n = obs.len();
    let ll: Vec<[f64; 2]> = obs.iter().map(|o| emissions(o, models)).collect();
    let trans = |i: usize| {
        let p = 0.5 * (-switch_cost(&obs[i])).exp();
        ((1.0 - p).ln(), p.ln())
    };
    let mut fwd = vec![[0f64; 2]; n];
    for i in 0..n {
        fwd[i] = if i == 0 {
            [ll[0][0] + 0.5f64.ln(), ll[0][1] + 0.5f64.ln()]
        } else {
            let (stay, sw) = trans(i);
            let f = fwd[i - 1];
            [
                log_add(f[0] + stay, f[1] + sw) + ll[i][0],
                log_add(f[1] + stay, f[0] + sw) + ll[i][1],
            ]
        };
    }
    let mut bwd = vec![[0f64; 2]; n];
    for i in (0..n.saturating_sub(1)).rev() {
        let (stay, sw) = trans(i + 1);
        let b = bwd[i + 1];
        let e = ll[i + 1];
        bwd[i] = [
            log_add(stay + e[0] + b[0], sw + e[1] + b[1]),
            log_add(stay + e[1] + b[1], sw + e[0] + b[0]),
        ];
    }
    fwd.iter()
        .zip(&bwd)
        .map(|(f, b)| {
            let (a0, a1) = (f[0] + b[0], f[1] + b[1]);
            1.0 / (1.0 + (a0 - a1).exp())
        })
        .collect()
}

/// The likeliest voice sequence, a change costing [`SWITCH_COST`] less what the pause before
/// it forgives.
fn viterbi(obs: &[Obs], models: &[VoiceModel; 2]) -> Vec<u8> {
    let n = obs.len();
    if n == 0 {
        return Vec::new();
    }
    let mut score = [0f64; 2];
    let mut back: Vec<[u8; 2]> = Vec::with_capacity(n);
    for (i, o) in obs.iter().enumerate() {
        let ll = emissions(o, models);
        if i == 0 {
            score = ll;
            back.push([0, 1]);
            continue;
        }
        let cost = switch_cost(o);
        let mut next = [0f64; 2];
        let mut from = [0u8; 2];
        for k in 0..2 {
            let (stay, switch) = (score[k], score[1 - k] - cost);
            (next[k], from[k]) = if stay >= switch {
                (stay, k as u8)
            } else {
                (switch, 1 - k as u8)
            };
            next[k] += ll[k];
        }
        score = next;
        back.push(from);
    }
    let mut path = vec![0u8; n];
    path[n - 1] = u8::from(score[1] > score[0]);
    for i in (1..n).rev() {
        path[i - 1] = back[i][path[i] as usize];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A speech block with constant cepstra `c` and pitch `semitones`.
    fn block(c: f32, semitones: f32) -> Block {
        let mut b = Block {
            speech_frames: 10,
            voiced_frames: 10,
            ..Block::default()
        };
        b.cep_all = [10.0 * c; N_CEP];
        b.sum[..N_CEP].fill(10.0 * c);
        b.sum[N_CEP] = 10.0 * semitones / 12.0;
        b
    }

    #[test]
    fn a_short_wrong_stretch_inside_a_turn_is_redrawn() {
        // voice A (c = 0, 80 st) for 30 blocks, then voice B (c = 1, 90 st) for 30; the start
        // labels have a wrong 5-block stretch inside A and the change 3 blocks late
        let blocks: Vec<Block> = (0..60)
            .map(|j| {
                let jitter = ((j * 7919) % 13) as f32 / 130.0;
                if j < 30 {
                    block(jitter, 80.0 + jitter)
                } else {
                    block(1.0 + jitter, 90.0 + jitter)
                }
            })
            .collect();
        let mut labels: Vec<Option<u8>> = (0..60)
            .map(|j| Some(u8::from((10..15).contains(&j) || j >= 33)))
            .collect();
        let changed = resegment(&blocks, &mut labels, &[], 0.2);
        let want: Vec<Option<u8>> = (0..60).map(|j| Some(u8::from(j >= 30))).collect();
        assert_eq!(labels, want);
        assert_eq!(changed, 8);
    }

    #[test]
    fn the_embeddings_keep_a_voice_the_features_cannot_tell_apart() {
        // two voices with the same pitch and cepstra but for a sound-class change in the
        // middle of voice A: the features alone would follow the sound class; the embeddings
        // say A for blocks 0..30 and B after, and their evidence stays in the likelihood
        let blocks: Vec<Block> = (0..60)
            .map(|j| {
                let jitter = ((j * 7919) % 13) as f32 / 130.0;
                block(if (15..45).contains(&j) { 1.0 } else { 0.0 } + jitter, 80.0)
            })
            .collect();
        let start: Vec<Option<u8>> = (0..60).map(|j| Some(u8::from(j >= 30))).collect();
        let evidence: Vec<Option<f32>> = (0..60)
            .map(|j| Some(if j >= 30 { 3.0 } else { -3.0 }))
            .collect();
        let mut with = start.clone();
        resegment(&blocks, &mut with, &evidence, 0.2);
        assert_eq!(with, start);
        let mut without = start.clone();
        resegment(&blocks, &mut without, &[], 0.2);
        assert_ne!(without, start, "the features alone follow the sound class");
    }

    #[test]
    fn blocks_outside_speech_stay_unlabelled() {
        let mut blocks: Vec<Block> = (0..20).map(|j| block((j / 10) as f32, 80.0)).collect();
        blocks[5] = Block::default();
        let mut labels: Vec<Option<u8>> = (0..20).map(|j| Some(u8::from(j >= 10))).collect();
        labels[5] = None;
        resegment(&blocks, &mut labels, &[], 0.2);
        assert_eq!(labels[5], None);
        assert_eq!(labels[4], Some(0));
        assert_eq!(labels[15], Some(1));
    }

    #[test]
    fn a_voice_with_too_few_blocks_leaves_the_labels_alone() {
        let blocks: Vec<Block> = (0..10).map(|_| block(0.0, 80.0)).collect();
        let mut labels: Vec<Option<u8>> = (0..10).map(|j| Some(u8::from(j == 9))).collect();
        let before = labels.clone();
        assert_eq!(resegment(&blocks, &mut labels, &[], 0.2), 0);
        assert_eq!(labels, before);
    }
}
