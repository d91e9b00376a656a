//! The speaker timeline: 0.2 s blocks of voiced-frame features clustered into the session's
//! voices, labelled, smoothed, and cut into spans of one voice on the original timeline.

use std::collections::HashMap;

use super::cluster::{self, Gauss2, Points, Standardiser};
use super::features::{Block, Features, HOP, N_FEAT, RATE};
use super::voices::{ALIKE_COSINE, MIN_SEEN_SEPARATION, VoiceSplit, WEAK_SPLIT_COSINE, logit};
use super::{DiarizeOptions, DiarizeStats, METHOD, METHOD_EMBEDDINGS, reseg, segment};

/// One voice's stretch of speech (inside one region of the speech map).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceSpan {
    pub start_s: f64,
    pub end_s: f64,
    /// 0 or 1: which of the session's voices (not yet coach or client).
    pub voice: u8,
    /// How sure the labels are, 0..=1 (mean margin of the span's blocks).
    pub confidence: f32,
}

#[cfg(test)]
impl VoiceSpan {
    /// A span labelled with full confidence (for tests).
    pub(crate) fn sure(start_s: f64, end_s: f64, voice: u8) -> VoiceSpan {
        VoiceSpan {
            start_s,
            end_s,
            voice,
            confidence: 1.0,
        }
    }
}

/// Who speaks when, from the audio alone.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerTimeline {
    /// Time-ordered, not overlapping.
    pub spans: Vec<VoiceSpan>,
    /// 1 or 2.
    pub speakers_found: usize,
    pub method: String,
    /// Level (dBFS) of every 20 ms frame of the recording, for cutting pieces at quiet frames.
    pub frame_db: Vec<f32>,
}

/// Ridge added to the within-speaker covariance of the standardised features.
const LDA_RIDGE: f64 = 0.2;
/// Posterior above which a window keeps its own label against its unit's vote.
const SURE: f32 = 0.95;
/// Longest clustering unit (s) of uninterrupted speech.
const UNIT_S: f64 = 1.6;

/// The voiced 1 s windows, raw and standardised, with the block each is centred on.
struct Windows {
    raw: Points,
    z: Points,
    block: Vec<usize>,
    standardiser: Standardiser,
}

/// The discriminant and the two Gaussians on it.
struct Model {
    dir: Vec<f32>,
    gauss: Gauss2,
}

/// The clustering outcome: per window a label, and the labels that come from whole units (for
/// the one-or-two test: a window's own label came from the discriminant under test).
struct Split {
    labels: Vec<u8>,
    unit_labels: Vec<u8>,
    model: Option<Model>,
}

/// The audio path after feature extraction (separate for tests).
/// With `voices` (from speaker embeddings, per block) the embeddings decide who is who and the
/// block features only where each change falls.
pub fn from_features(
    feats: &Features,
    speech: &[[f64; 2]],
    opts: &DiarizeOptions,
    voices: Option<&VoiceSplit>,
) -> (SpeakerTimeline, DiarizeStats) {
    let blocks = &feats.blocks;
    let in_speech: Vec<bool> = blocks.iter().map(|b| b.speech_frames > 0).collect();
    let mut stats = DiarizeStats::default();
    let windows = voiced_windows(blocks, &in_speech, opts);
    stats.windows = windows.z.len();
    let (units, unit_of_block) = speech_units(&in_speech, feats.block_s);
    let window_unit: Vec<Option<u32>> = windows.block.iter().map(|&b| unit_of_block[b]).collect();
    // The embeddings decide who is who unless their split is weak (then the block features get
    // their chance: pitch can still differ). Either way two is the prior of a 1-on-1 session.
    let voices = voices.filter(|v| {
        stats.voice_cosine = Some(v.centroid_cosine);
        v.share[0].min(v.share[1]) >= opts.min_speaker_share
            && v.centroid_cosine < WEAK_SPLIT_COSINE
    });
    let embedded = voices
        .map(|v| (v, split_from_voices(&windows, v)))
        .filter(|(v, split)| {
            let cv = cv_separation(&windows.z, &split.unit_labels, &window_unit).0;
            stats.cv_separation = cv;
            v.centroid_cosine < ALIKE_COSINE || cv.is_none_or(|cv| cv >= MIN_SEEN_SEPARATION)
        });
    let voices = embedded.as_ref().map(|(v, _)| *v);
    let (split, two) = match embedded {
        Some((v, split)) => {
            stats.share = v.share;
            (split, opts.expected_speakers >= 2)
        }
        None => {
            // Two starts, the better kept: 2-means on all features (finds most pairs), and a
            // split at the median pitch (when the voices differ mainly in pitch, 2-means can
            // split sentence types).
            let split = [
                first_split(blocks, &units, &windows, &window_unit, opts),
                pitch_split(&windows),
            ]
            .into_iter()
            .map(|first| refine(&windows, &window_unit, units.len(), first))
            .max_by(|a, b| {
                split_quality(&windows, &window_unit, a).total_cmp(&split_quality(
                    &windows,
                    &window_unit,
                    b,
                ))
            })
            .expect("two candidates");
            measure_split(&windows, &window_unit, &split, opts, &mut stats);
            let two = opts.expected_speakers >= 2
                && split.model.is_some()
                && stats.share[0].min(stats.share[1]) >= opts.min_speaker_share;
            (split, two)
        }
    };
    let block_p1: Vec<Option<f32>> = match voices {
        Some(v) => v.p_voice1.clone(),
        None => vec![None; blocks.len()],
    };
    let (mut labels, margins) =
        label_blocks(feats, &in_speech, &windows, &split, two, &block_p1, opts);
    if two && opts.resegment {
        let embedding_log_odds: Vec<Option<f32>> = block_p1.iter().map(|p| p.map(logit)).collect();
        stats.blocks_resegmented =
            reseg::resegment(blocks, &mut labels, &embedding_log_odds, feats.block_s);
    }
    let mut spans = voice_spans(speech, &in_speech, &labels, &margins, feats.block_s);
    stats.changes_snapped = snap_changes(&mut spans, &feats.frame_db, opts.snap_change_s);
    (
        SpeakerTimeline {
            spans,
            speakers_found: if two { 2 } else { 1 },
            method: if voices.is_some() {
                METHOD_EMBEDDINGS
            } else {
                METHOD
            }
            .to_string(),
            frame_db: feats.frame_db.clone(),
        },
        stats,
    )
}

/// 1 s windows (the frames in them vote) with enough voiced frames, standardised.
fn voiced_windows(blocks: &[Block], in_speech: &[bool], opts: &DiarizeOptions) -> Windows {
    let (nb, r) = (blocks.len(), opts.cluster_radius);
    let mut block = Vec::new();
    let mut raw = Points::new(N_FEAT);
    for (j, _) in in_speech.iter().enumerate().filter(|(_, s)| **s) {
        let (mean, n) = window_mean(blocks, j.saturating_sub(r), (j + r + 1).min(nb));
        if n >= u32::from(opts.min_voiced_frames) {
            raw.push(&mean, n as f32);
            block.push(j);
        }
    }
    let mut dim_weight = vec![1.0f32; N_FEAT];
    dim_weight[N_FEAT - 1] = opts.pitch_weight;
    let standardiser = Standardiser::fit(&raw, &dim_weight);
    let z = standardiser.apply_all(&raw);
    Windows {
        raw,
        z,
        block,
        standardiser,
    }
}

/// Stretches of uninterrupted speech of at most [`UNIT_S`], and each block's unit.
pub fn speech_units(in_speech: &[bool], block_s: f64) -> (Vec<(usize, usize)>, Vec<Option<u32>>) {
    let nb = in_speech.len();
    let max_len = ((UNIT_S / block_s).round() as usize).max(1);
    let mut unit_of_block = vec![None; nb];
    let mut units = Vec::new();
    let mut j = 0;
    while j < nb {
        if !in_speech[j] {
            j += 1;
            continue;
        }
        let mut k = j;
        while k < nb && k - j < max_len && in_speech[k] {
            k += 1;
        }
        unit_of_block[j..k]
            .iter_mut()
            .for_each(|b| *b = Some(units.len() as u32));
        units.push((j, k));
        j = k;
    }
    (units, unit_of_block)
}

/// 2-means on the units' mean features (on the windows when there are too few units).
fn first_split(
    blocks: &[Block],
    units: &[(usize, usize)],
    windows: &Windows,
    window_unit: &[Option<u32>],
    opts: &DiarizeOptions,
) -> Vec<u8> {
    let mut unit_points = Points::new(N_FEAT);
    let mut unit_index = Vec::new();
    let mut zbuf = [0f32; N_FEAT];
    for (u, &(lo, hi)) in units.iter().enumerate() {
        let (mean, n) = window_mean(blocks, lo, hi);
        if n >= u32::from(opts.min_voiced_frames) {
            windows.standardiser.apply(&mean, &mut zbuf);
            unit_points.push(&zbuf, n as f32);
            unit_index.push(u);
        }
    }
    if unit_points.len() >= 4
        && let Some(km) = cluster::two_means(&unit_points)
    {
        let mut ulabel: Vec<Option<u8>> = vec![None; units.len()];
        for (i, &u) in unit_index.iter().enumerate() {
            ulabel[u] = Some(km.labels[i]);
        }
        return (0..windows.z.len())
            .map(|i| {
                window_unit[i]
                    .and_then(|u| ulabel[u as usize])
                    .unwrap_or_else(|| km.classify(windows.z.get(i)).0)
            })
            .collect();
    }
    cluster::two_means(&windows.z).map_or_else(Vec::new, |km| km.labels)
}

/// The embeddings' voices as window labels, and a discriminant of the block features trained on
/// them once (no refinement: on similar voices the features would drift to sentence types).
fn split_from_voices(windows: &Windows, v: &VoiceSplit) -> Split {
    let p1 = |i: usize| v.p_voice1[windows.block[i]];
    let labels: Vec<u8> = (0..windows.z.len())
        .map(|i| u8::from(p1(i).unwrap_or(0.0) > 0.5))
        .collect();
    let mut train = Points::new(windows.z.dim);
    let mut train_labels = Vec::new();
    for i in (0..windows.z.len()).filter(|&i| p1(i).is_some()) {
        train.push(windows.z.get(i), windows.z.weight[i]);
        train_labels.push(labels[i]);
    }
    let model = cluster::lda_direction(&train, &train_labels, LDA_RIDGE).and_then(|dir| {
        let proj: Vec<f32> = (0..train.len())
            .map(|i| cluster::project(train.get(i), &dir))
            .collect();
        Gauss2::fit(&proj, &train.weight, &train_labels).map(|gauss| Model { dir, gauss })
    });
    Split {
        unit_labels: labels.clone(),
        labels,
        model,
    }
}

/// Windows above the weighted median pitch against those below.
fn pitch_split(windows: &Windows) -> Vec<u8> {
    let pitch: Vec<f32> = (0..windows.raw.len())
        .map(|i| windows.raw.get(i)[N_FEAT - 1])
        .collect();
    let mut order: Vec<usize> = (0..pitch.len()).collect();
    order.sort_by(|&a, &b| pitch[a].total_cmp(&pitch[b]));
    let total: f32 = windows.raw.weight.iter().sum();
    let (mut acc, mut median) = (0.0, f32::NEG_INFINITY);
    for &i in &order {
        acc += windows.raw.weight[i];
        if acc >= total / 2.0 {
            median = pitch[i];
            break;
        }
    }
    pitch.iter().map(|&p| u8::from(p > median)).collect()
}

/// How well a split holds up: its cross-validated separation (0 when it cannot be measured).
fn split_quality(windows: &Windows, window_unit: &[Option<u32>], split: &Split) -> f64 {
    if split.model.is_none() {
        return 0.0;
    }
    cv_separation(&windows.z, &split.unit_labels, window_unit)
        .0
        .unwrap_or(0.0)
}

/// A linear discriminant trained on the labels (it finds the direction that tells the voices
/// apart, not the one that varies most), 1-D Gaussians on it, windows reclassified and units
/// relabelled by the vote of their windows; up to 4 rounds.
fn refine(windows: &Windows, window_unit: &[Option<u32>], n_units: usize, first: Vec<u8>) -> Split {
    let w = &windows.z;
    let mut split = Split {
        unit_labels: first.clone(),
        labels: first,
        model: None,
    };
    for _ in 0..4 {
        if split.labels.is_empty() {
            break;
        }
        let Some(dir) = cluster::lda_direction(w, &split.labels, LDA_RIDGE) else {
            break;
        };
        let proj: Vec<f32> = (0..w.len())
            .map(|i| cluster::project(w.get(i), &dir))
            .collect();
        let Some(gauss) = Gauss2::fit(&proj, &w.weight, &split.labels) else {
            break;
        };
        let cls: Vec<(u8, f32)> = proj.iter().map(|&p| gauss.classify(p)).collect();
        let mut votes = vec![[0f32; 2]; n_units];
        for (i, &(c, _)) in cls.iter().enumerate() {
            if let Some(u) = window_unit[i] {
                votes[u as usize][c as usize] += w.weight[i];
            }
        }
        let unit_vote = |u: u32| u8::from(votes[u as usize][1] > votes[u as usize][0]);
        // a window follows its unit's vote unless it is itself sure of the other voice
        let next: Vec<u8> = (0..w.len())
            .map(|i| match (window_unit[i], cls[i]) {
                (_, (c, p)) if p >= SURE => c,
                (Some(u), _) => unit_vote(u),
                (None, (c, _)) => c,
            })
            .collect();
        split.unit_labels = (0..w.len())
            .map(|i| window_unit[i].map_or(cls[i].0, unit_vote))
            .collect();
        split.model = Some(Model { dir, gauss });
        if next == split.labels {
            break;
        }
        split.labels = next;
    }
    split
}

/// How far apart the two groups of the features' split are, into `stats` (for the log): the
/// BIC, the separation on the discriminant, each group's share and median pitch, and the
/// separation cross-validated over units (on its own training data a 13-dimensional
/// discriminant separates any split of one voice). None of these decides one voice or two:
/// measured on the scripted conversations, one voice alone splits as far apart as two similar
/// voices do (`tests/timeline.rs`, `one_voice_or_two_report`), so only a second group with
/// almost no speech makes a session one voice.
fn measure_split(
    windows: &Windows,
    window_unit: &[Option<u32>],
    split: &Split,
    opts: &DiarizeOptions,
    stats: &mut DiarizeStats,
) {
    let Some(model) = &split.model else {
        return;
    };
    let w = &windows.z;
    let proj: Vec<f32> = (0..w.len())
        .map(|i| cluster::project(w.get(i), &model.dir))
        .collect();
    let hard: Vec<u8> = proj.iter().map(|&p| model.gauss.classify(p).0).collect();
    let stride = 2 * opts.cluster_radius + 1;
    stats.delta_bic = cluster::delta_bic_1d(&proj, &hard, stride, opts.bic_lambda);
    stats.separation = model.gauss.separation();
    let total: f32 = w.weight.iter().sum();
    for k in 0..2u8 {
        let mine = || (0..w.len()).filter(move |&i| split.labels[i] == k);
        stats.share[k as usize] = mine().map(|i| w.weight[i]).sum::<f32>() / total.max(1e-9);
        let mut pitch: Vec<f32> = mine()
            .map(|i| windows.raw.get(i)[N_FEAT - 1].exp2())
            .collect();
        pitch.sort_by(f32::total_cmp);
        stats.pitch_hz[k as usize] = pitch.get(pitch.len() / 2).copied().unwrap_or(0.0);
    }
    let (cv, units_per_speaker) = cv_separation(w, &split.unit_labels, window_unit);
    stats.cv_separation = cv;
    stats.units_per_speaker = units_per_speaker;
}

/// Each speech block's voice from its 0.6 s neighbourhood on the discriminant, with its margin
/// (0 = a coin toss, 1 = sure); blocks without voiced frames take their neighbours' label, and
/// short flips that touch the other voice are smoothed away.
fn label_blocks(
    feats: &Features,
    in_speech: &[bool],
    windows: &Windows,
    split: &Split,
    two: bool,
    block_p1: &[Option<f32>],
    opts: &DiarizeOptions,
) -> (Vec<Option<u8>>, Vec<f32>) {
    let (blocks, block_s) = (&feats.blocks, feats.block_s);
    let nb = blocks.len();
    let mut labels: Vec<Option<u8>> = vec![None; nb];
    let mut margins = vec![0f32; nb];
    let lr = opts.label_radius;
    let min_voiced = u32::from(opts.min_voiced_frames).div_ceil(2);
    let mut zbuf = [0f32; N_FEAT];
    for j in (0..nb).filter(|&j| in_speech[j]) {
        if !two {
            labels[j] = Some(0);
            margins[j] = 1.0;
            continue;
        }
        // evidence for voice 1 as log-odds: the block features' discriminant, plus the
        // embeddings of the pieces that cover the block (independent evidence adds up)
        let mut log_odds: Option<f32> = None;
        if let Some(m) = &split.model {
            let (mean, n) = window_mean(blocks, j.saturating_sub(lr), (j + lr + 1).min(nb));
            if n >= min_voiced {
                windows.standardiser.apply(&mean, &mut zbuf);
                let (l, post) = m.gauss.classify(cluster::project(&zbuf, &m.dir));
                let p1 = if l == 1 { post } else { 1.0 - post };
                log_odds = Some(logit(p1));
            }
        }
        if let Some(p) = block_p1[j] {
            log_odds = Some(log_odds.unwrap_or(0.0) + logit(p));
        }
        if let Some(lo) = log_odds {
            let p1 = 1.0 / (1.0 + (-lo).exp());
            labels[j] = Some(u8::from(p1 > 0.5));
            margins[j] = (2.0 * p1 - 1.0).abs();
        }
    }
    segment::fill_gaps(&mut labels, in_speech);
    // speech stretches without any voiced frame: voice 0 rather than nothing
    for j in 0..nb {
        if in_speech[j] && labels[j].is_none() {
            labels[j] = Some(0);
        }
    }
    segment::smooth_short_runs(&mut labels, (opts.min_run_s / block_s).round() as usize);
    (labels, margins)
}

/// The speech map cut at label changes, and where a block holds no speech (a tone dropped by
/// [`super::features::drop_tones`] inside a region of the energy detector).
fn voice_spans(
    speech: &[[f64; 2]],
    in_speech: &[bool],
    labels: &[Option<u8>],
    margins: &[f32],
    bs: f64,
) -> Vec<VoiceSpan> {
    let nb = labels.len();
    let mut spans = Vec::new();
    for reg in speech {
        let lo = ((reg[0] / bs).floor().max(0.0) as usize).min(nb);
        let hi = ((reg[1] / bs).ceil().max(0.0) as usize).min(nb);
        let mut j = lo;
        while j < hi {
            let Some(voice) = labels[j].filter(|_| in_speech[j]) else {
                j += 1;
                continue;
            };
            let mut k = j;
            let mut margin = 0.0;
            while k < hi && in_speech[k] && labels[k].is_none_or(|x| x == voice) {
                margin += margins[k];
                k += 1;
            }
            let start_s = (j as f64 * bs).max(reg[0]);
            let end_s = (k as f64 * bs).min(reg[1]);
            if end_s > start_s {
                spans.push(VoiceSpan {
                    start_s,
                    end_s,
                    voice,
                    confidence: (margin / (k - j) as f32).clamp(0.0, 1.0),
                });
            }
            j = k;
        }
    }
    spans
}

/// Moves each change between two voices without a pause (one span ends where the next begins)
/// to where `place(change_s, lo_s, hi_s)` puts it, `None` leaving it: `lo_s..hi_s` is
/// `radius_s` either side of it, kept `margin_s` from either span's other end. Returns how many
/// moved.
pub(crate) fn move_changes<E>(
    spans: &mut [VoiceSpan],
    radius_s: f64,
    margin_s: f64,
    mut place: impl FnMut(f64, f64, f64) -> std::result::Result<Option<f64>, E>,
) -> std::result::Result<usize, E> {
    let mut moved = 0;
    for i in 1..spans.len() {
        let (a, b) = (spans[i - 1], spans[i]);
        if a.voice == b.voice || b.start_s - a.end_s > 1e-6 {
            continue;
        }
        let lo_s = (b.start_s - radius_s).max(a.start_s + margin_s);
        let hi_s = (b.start_s + radius_s).min(b.end_s - margin_s);
        let Some(t) = place(b.start_s, lo_s, hi_s)? else {
            continue;
        };
        if (t - b.start_s).abs() > 1e-6 {
            spans[i - 1].end_s = t;
            spans[i].start_s = t;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Moves each change between two voices without a pause to the quietest 20 ms frame within
/// `radius_s` (between two words rather than inside one); returns how many moved.
fn snap_changes(spans: &mut [VoiceSpan], frame_db: &[f32], radius_s: f64) -> usize {
    let frame_s = HOP as f64 / f64::from(RATE);
    let quietest_frame = |_, lo_s: f64, hi_s: f64| {
        let (lo, hi) = (
            (lo_s / frame_s).ceil() as usize,
            (hi_s / frame_s).floor() as usize,
        );
        let quietest = (lo..=hi.min(frame_db.len().saturating_sub(1)))
            .filter(|_| lo <= hi)
            .min_by(|&x, &y| frame_db[x].total_cmp(&frame_db[y]));
        Ok::<_, std::convert::Infallible>(quietest.map(|q| (q as f64 + 0.5) * frame_s))
    };
    let Ok(moved) = move_changes(spans, radius_s, frame_s, quietest_frame);
    moved
}

/// Two-fold cross-validated separation of the labelled windows: the discriminant of one fold is
/// measured on the other. The units of each speaker alternate between the folds (so both folds
/// hold both speakers); with fewer than two units for a speaker, 2 s stretches of windows
/// alternate instead.
fn cv_separation(
    windows: &Points,
    labels: &[u8],
    window_unit: &[Option<u32>],
) -> (Option<f64>, usize) {
    let mut unit_fold: HashMap<u32, u8> = HashMap::new();
    let mut seen = [0usize; 2];
    for (u, &l) in window_unit.iter().zip(labels) {
        if let Some(u) = *u {
            unit_fold.entry(u).or_insert_with(|| {
                seen[l as usize] += 1;
                ((seen[l as usize] - 1) % 2) as u8
            });
        }
    }
    let by_units = seen[0] >= 2 && seen[1] >= 2;
    (
        cv_folds(windows, labels, window_unit, &unit_fold, by_units),
        seen[0].min(seen[1]),
    )
}

fn cv_folds(
    windows: &Points,
    labels: &[u8],
    window_unit: &[Option<u32>],
    unit_fold: &HashMap<u32, u8>,
    by_units: bool,
) -> Option<f64> {
    let fold = |i: usize| -> u8 {
        match window_unit[i] {
            Some(u) if by_units => unit_fold[&u],
            _ => ((i / 10) % 2) as u8,
        }
    };
    let mut total = 0.0;
    for f in 0..2u8 {
        let (mut train, mut test) = (Points::new(windows.dim), Points::new(windows.dim));
        let (mut train_l, mut test_l) = (Vec::new(), Vec::new());
        for (i, &l) in labels.iter().enumerate().take(windows.len()) {
            if fold(i) == f {
                train.push(windows.get(i), windows.weight[i]);
                train_l.push(l);
            } else {
                test.push(windows.get(i), windows.weight[i]);
                test_l.push(l);
            }
        }
        let dir = cluster::lda_direction(&train, &train_l, LDA_RIDGE)?;
        let p_train: Vec<f32> = (0..train.len())
            .map(|i| cluster::project(train.get(i), &dir))
            .collect();
        let p_test: Vec<f32> = (0..test.len())
            .map(|i| cluster::project(test.get(i), &dir))
            .collect();
        let g_train = cluster::Gauss2::fit(&p_train, &train.weight, &train_l)?;
        let g_test = cluster::Gauss2::fit(&p_test, &test.weight, &test_l)?;
        let same_order =
            (g_train.mean[1] - g_train.mean[0]) * (g_test.mean[1] - g_test.mean[0]) > 0.0;
        total += if same_order { g_test.separation() } else { 0.0 };
    }
    Some(total / 2.0)
}

/// Mean features of blocks `lo..hi` with their voiced frame count.
fn window_mean(blocks: &[Block], lo: usize, hi: usize) -> ([f32; N_FEAT], u32) {
    let mut sum = [0f32; N_FEAT];
    let mut n = 0u32;
    for b in &blocks[lo..hi] {
        n += u32::from(b.voiced_frames);
        for (s, v) in sum.iter_mut().zip(&b.sum) {
            *s += v;
        }
    }
    if n > 0 {
        sum.iter_mut().for_each(|s| *s /= n as f32);
    }
    (sum, n)
}
