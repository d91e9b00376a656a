//! Who speaks when: labels each stretch of speech coach or client.
//!
//! Loudness after normalisation cannot tell two people apart (ARCHITECTURE.md), so the voices are
//! told apart by features that survive it, computed on speech frames only:
//!
//! 1. **Features** ([`features`]): every 20 ms frame inside the speech map gets a YIN pitch with a
//!    voicing decision and 12 MFCCs (c1..c12, no energy term). Voiced frames are summed into
//!    0.2 s blocks; nothing else is kept (3 hours = 54 000 small blocks).
//! 2. **Clustering** ([`cluster`]): 1 s windows (5 blocks, so frames vote) give the mean cepstrum
//!    and mean log pitch, standardised. Units (transcript segments, and uncovered speech in pieces
//!    of at most 1.6 s) average the phonetic content away; weighted 2-means on the units gives a
//!    first split. A linear discriminant (LDA) trained on that split finds the direction that
//!    tells the voices apart (on two similar voices it is not the direction of largest
//!    variance), 1-D Gaussians on it relabel the windows, units vote, and this repeats (up to 4
//!    times). Two speakers only if the groups stay apart (d' >= 1.7) on a discriminant trained
//!    on the other half of the units (two-fold cross-validation: on its own training data a
//!    13-dimensional discriminant separates any split of one voice), the smaller holds 5 %, and
//!    their median pitches differ by 8 % (or the separation is very large, d' >= 6): one voice's
//!    recurring kinds of sentences separate spectrally, too.
//! 3. **Labels**: each block gets the likelier speaker of its 0.6 s neighbourhood on the
//!    discriminant; speech blocks without voiced frames take their neighbours' label; flips
//!    shorter than 0.5 s that touch the other speaker are smoothed away.
//! 4. **Transcript segments**: a segment's blocks vote for its speaker; when the labels change
//!    inside a segment (Whisper merged two people's lines) it is split at the best change point
//!    and its text at the nearest sentence/clause/word boundary (by character share for Japanese).
//!    A change inside continuous speech (not at a pause of the speech map) needs purer sides.
//!    Inside a segment, away from its (imprecise) edges, the vote overrides stray block labels.
//! 5. **Turns** come from the speech map cut at label changes (so timing metrics see every
//!    stretch of speech, even one the transcriber skipped: such turns have empty text), merged
//!    while the same speaker continues after a pause of at most 2 s. Each piece of transcript
//!    text goes to the turn of its speaker it overlaps most.
//! 6. **Roles** ([`roles`]): the speaker who asks more questions, opens the session and talks less
//!    is the coach. Weak evidence (a tie, or only one voice) gives [`Speaker::Unknown`].
//!
//! When the transcript already carries speaker labels (a diarising transcription model), those
//! labels are the clustering and only the roles are decided here.

pub mod cluster;
pub mod features;
pub mod roles;
pub mod segment;

use std::collections::HashMap;
use std::path::Path;

use crate::conversation::{Segment, Speaker, Transcript, Turn};
use crate::error::Result;
use cluster::{Points, Standardiser};
use features::{Block, Features, N_FEAT};
use segment::SplitRule;

/// Tuning of the diariser; the defaults are the production settings.
#[derive(Debug, Clone)]
pub struct DiarizeOptions {
    /// 20 ms frames per block (the label resolution): 10 = 0.2 s.
    pub frames_per_block: usize,
    /// Blocks on each side of a clustering window's centre: 2 = 1 s windows.
    pub cluster_radius: usize,
    /// Blocks on each side when labelling a block: 1 = 0.6 s.
    pub label_radius: usize,
    /// Voiced frames a window needs to count.
    pub min_voiced_frames: u16,
    /// Weight of log pitch against each cepstral coefficient after standardisation.
    pub pitch_weight: f32,
    /// Penalty factor of the BIC reported in the stats (1 = textbook).
    pub bic_lambda: f64,
    /// Two speakers need their windows this far apart (d', cross-validated) on the discriminant.
    pub min_separation: f64,
    /// Two speakers also need median pitches this far apart (0.08 = 8 %) ...
    pub min_pitch_difference: f64,
    /// ... unless their cross-validated separation reaches this.
    pub strong_separation: f64,
    /// A second speaker needs at least this share of the voiced windows.
    pub min_speaker_share: f32,
    /// Label runs shorter than this (s) that touch the other speaker are smoothed away.
    pub min_run_s: f64,
    /// A speaker change inside a transcript segment needs this much speech (s) on each side.
    pub min_change_side_s: f64,
    /// ... and each side's majority must hold this share of its blocks (when the change falls in
    /// a pause of the speech map) ...
    pub change_purity: f32,
    /// ... or this share (when it falls inside continuous speech, where turn changes are rarer).
    pub change_purity_in_speech: f32,
    /// The vote of a transcript segment does not override labels this close (s) to its edges.
    pub segment_edge_guard_s: f64,
    /// One speaker's speech separated by a pause up to this long (s) stays one turn.
    pub max_pause_in_turn_s: f64,
}

impl Default for DiarizeOptions {
    fn default() -> Self {
        DiarizeOptions {
            frames_per_block: 10,
            cluster_radius: 2,
            label_radius: 1,
            min_voiced_frames: 8,
            pitch_weight: 1.0,
            bic_lambda: 1.0,
            min_separation: 1.7,
            min_pitch_difference: 0.08,
            strong_separation: 6.0,
            min_speaker_share: 0.05,
            min_run_s: 0.5,
            min_change_side_s: 0.8,
            change_purity: 0.7,
            change_purity_in_speech: 0.9,
            segment_edge_guard_s: 0.4,
            max_pause_in_turn_s: 2.0,
        }
    }
}

/// The diariser's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Diarization {
    /// Time-ordered, on the original timeline, text from the transcript.
    pub turns: Vec<Turn>,
    /// 1 or 2.
    pub speakers_found: usize,
    pub method: String,
}

/// Numbers behind the decisions, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiarizeStats {
    /// Clustering windows with enough voiced frames.
    pub windows: usize,
    /// BIC per window of two 1-D Gaussians over one on the discriminant (> 0 favours two;
    /// informational, the decision uses `cv_separation` and the pitch difference).
    pub delta_bic: f64,
    /// Share of the windows in each cluster.
    pub share: [f32; 2],
    /// Distance of the two speakers on the discriminant, in pooled standard deviations (d').
    pub separation: f64,
    /// The same, cross-validated: discriminant trained on half of the units, measured on the
    /// other half (mean of both folds); `None` when a fold lacks a speaker.
    pub cv_separation: Option<f64>,
    /// Units (transcript segments, speech pieces) of the smaller group.
    pub units_per_speaker: usize,
    /// Median pitch (Hz) of each cluster's windows.
    pub pitch_hz: [f32; 2],
    /// Role evidence for cluster 0 being the coach.
    pub role_score: f64,
    /// Transcript segments split at a speaker change.
    pub segments_split: usize,
}

pub const METHOD: &str = "pitch+mfcc segment 2-means + lda v1";
/// Ridge added to the within-speaker covariance of the standardised features.
const LDA_RIDGE: f64 = 0.2;
/// Posterior above which a window keeps its own label against its unit's vote.
const SURE: f32 = 0.95;
pub const METHOD_LABELS: &str = "transcript speaker labels + role cues v1";

/// Labels the speech of `pcm_wav` (16 kHz mono, `audio16k.wav`) coach or client.
pub fn diarize(
    pcm_wav: &Path,
    speech: &[[f64; 2]],
    transcript: &Transcript,
    opts: &DiarizeOptions,
) -> Result<Diarization> {
    diarize_with_stats(pcm_wav, speech, transcript, opts).map(|(d, _)| d)
}

/// [`diarize`], also returning the numbers behind its decisions.
pub fn diarize_with_stats(
    pcm_wav: &Path,
    speech: &[[f64; 2]],
    transcript: &Transcript,
    opts: &DiarizeOptions,
) -> Result<(Diarization, DiarizeStats)> {
    let labelled = transcript
        .segments
        .iter()
        .filter(|s| s.speaker_label.is_some())
        .count();
    if !transcript.segments.is_empty() && labelled * 2 >= transcript.segments.len() {
        return Ok(from_speaker_labels(transcript, opts));
    }
    let mut speech: Vec<[f64; 2]> = speech.iter().copied().filter(|r| r[1] > r[0]).collect();
    speech.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let feats = features::extract(pcm_wav, &speech, opts.frames_per_block.max(1))?;
    Ok(from_features(&feats, &speech, transcript, opts))
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

/// The audio path after feature extraction (separate for tests).
pub fn from_features(
    feats: &Features,
    speech: &[[f64; 2]],
    transcript: &Transcript,
    opts: &DiarizeOptions,
) -> (Diarization, DiarizeStats) {
    let blocks = &feats.blocks;
    let nb = blocks.len();
    let bs = feats.block_s;
    let mut stats = DiarizeStats::default();
    let in_speech: Vec<bool> = blocks.iter().map(|b| b.speech_frames > 0).collect();

    let min_voiced = u32::from(opts.min_voiced_frames);
    let block_range = |a: f64, b: f64| -> (usize, usize) {
        // blocks whose centre lies in [a, b]
        let lo = ((a / bs - 0.5).ceil().max(0.0) as usize).min(nb);
        let hi = (((b / bs - 0.5).floor() + 1.0).max(0.0) as usize).clamp(lo, nb);
        (lo, hi)
    };

    // --- 1 s windows (the frames in them vote), standardised, pitch weighted up
    let r = opts.cluster_radius;
    let mut win_block: Vec<usize> = Vec::new();
    let mut raw_points = Points::new(N_FEAT);
    for (j, _) in in_speech.iter().enumerate().filter(|(_, s)| **s) {
        let (mean, n) = window_mean(blocks, j.saturating_sub(r), (j + r + 1).min(nb));
        if n >= min_voiced {
            raw_points.push(&mean, n as f32);
            win_block.push(j);
        }
    }
    stats.windows = raw_points.len();
    let mut dim_weight = vec![1.0f32; N_FEAT];
    dim_weight[N_FEAT - 1] = opts.pitch_weight;
    let standardiser = Standardiser::fit(&raw_points, &dim_weight);
    let windows = standardiser.apply_all(&raw_points);

    // --- units: transcript segments (mostly one speaker each: their means average the phonetic
    // content away) and the speech they leave uncovered, in pieces of at most 1.6 s (short: with
    // no pause between two speakers a longer piece would hold both)
    let mut unit_of_block: Vec<Option<u32>> = vec![None; nb];
    let mut units: Vec<(usize, usize)> = Vec::new();
    for seg in &transcript.segments {
        let (lo, hi) = block_range(seg.start_s, seg.end_s);
        if hi > lo {
            let u = units.len() as u32;
            for b in unit_of_block[lo..hi].iter_mut().filter(|b| b.is_none()) {
                *b = Some(u);
            }
            units.push((lo, hi));
        }
    }
    let max_piece = ((1.6 / bs).round() as usize).max(1);
    let mut j = 0;
    while j < nb {
        if !in_speech[j] || unit_of_block[j].is_some() {
            j += 1;
            continue;
        }
        let mut k = j;
        while k < nb && k - j < max_piece && in_speech[k] && unit_of_block[k].is_none() {
            k += 1;
        }
        let u = units.len() as u32;
        unit_of_block[j..k].iter_mut().for_each(|b| *b = Some(u));
        units.push((j, k));
        j = k;
    }
    let mut unit_points = Points::new(N_FEAT);
    let mut unit_index: Vec<usize> = Vec::new();
    let mut zbuf = [0f32; N_FEAT];
    for (u, &(lo, hi)) in units.iter().enumerate() {
        let (mean, n) = window_mean(blocks, lo, hi);
        if n >= min_voiced {
            standardiser.apply(&mean, &mut zbuf);
            unit_points.push(&zbuf, n as f32);
            unit_index.push(u);
        }
    }

    // --- first split: 2-means on the units (on the windows when there are too few units)
    let window_unit: Vec<Option<u32>> = win_block.iter().map(|&b| unit_of_block[b]).collect();
    let mut wlabels: Vec<u8> = Vec::new();
    if unit_points.len() >= 4
        && let Some(km) = cluster::two_means(&unit_points)
    {
        let mut ulabel: Vec<Option<u8>> = vec![None; units.len()];
        for (i, &u) in unit_index.iter().enumerate() {
            ulabel[u] = Some(km.labels[i]);
        }
        wlabels = (0..windows.len())
            .map(|i| {
                window_unit[i]
                    .and_then(|u| ulabel[u as usize])
                    .unwrap_or_else(|| km.classify(windows.get(i)).0)
            })
            .collect();
    }
    if wlabels.is_empty()
        && let Some(km) = cluster::two_means(&windows)
    {
        wlabels = km.labels;
    }

    // --- refinement: a linear discriminant trained on those labels (it finds the direction that
    // tells the voices apart, not the one that varies most), 1-D Gaussians on it, windows
    // reclassified and units relabelled by the vote of their windows
    let mut model: Option<(Vec<f32>, cluster::Gauss2)> = None;
    let mut unit_labels: Vec<u8> = wlabels.clone();
    for _ in 0..4 {
        if wlabels.is_empty() {
            break;
        }
        let Some(dir) = cluster::lda_direction(&windows, &wlabels, LDA_RIDGE) else {
            break;
        };
        let proj: Vec<f32> = (0..windows.len())
            .map(|i| cluster::project(windows.get(i), &dir))
            .collect();
        let Some(g) = cluster::Gauss2::fit(&proj, &windows.weight, &wlabels) else {
            break;
        };
        let mut votes = vec![[0f32; 2]; units.len()];
        let cls: Vec<(u8, f32)> = proj.iter().map(|&p| g.classify(p)).collect();
        for (i, &(c, _)) in cls.iter().enumerate() {
            if let Some(u) = window_unit[i] {
                votes[u as usize][c as usize] += windows.weight[i];
            }
        }
        // a window follows its unit's vote unless it is itself sure of the other voice (a unit
        // can hold both speakers: a merged segment, a stretch of speech without pause)
        let next: Vec<u8> = (0..windows.len())
            .map(|i| match (window_unit[i], cls[i]) {
                (_, (c, p)) if p >= SURE => c,
                (Some(u), _) => u8::from(votes[u as usize][1] > votes[u as usize][0]),
                (None, (c, _)) => c,
            })
            .collect();
        // for the one-or-two test: labels that come from whole units only
        unit_labels = (0..windows.len())
            .map(|i| match window_unit[i] {
                Some(u) => u8::from(votes[u as usize][1] > votes[u as usize][0]),
                None => cls[i].0,
            })
            .collect();
        model = Some((dir, g));
        if next == wlabels {
            break;
        }
        wlabels = next;
    }

    // --- one speaker or two: how far apart the two groups stay on a discriminant trained on
    // other units (two-fold cross-validation; on the training data itself a 13-dimensional
    // discriminant separates any split of one voice, too)
    let mut two = false;
    if let Some((dir, g)) = &model {
        let proj: Vec<f32> = (0..windows.len())
            .map(|i| cluster::project(windows.get(i), dir))
            .collect();
        let hard: Vec<u8> = proj.iter().map(|&p| g.classify(p).0).collect();
        stats.delta_bic = cluster::delta_bic_1d(&proj, &hard, 2 * r + 1, opts.bic_lambda);
        stats.separation = g.separation();
        let total: f32 = windows.weight.iter().sum();
        for k in 0..2u8 {
            stats.share[k as usize] = (0..windows.len())
                .filter(|&i| wlabels[i] == k)
                .map(|i| windows.weight[i])
                .sum::<f32>()
                / total.max(1e-9);
            let mut p: Vec<f32> = (0..windows.len())
                .filter(|&i| wlabels[i] == k)
                .map(|i| raw_points.get(i)[N_FEAT - 1].exp2())
                .collect();
            p.sort_by(f32::total_cmp);
            stats.pitch_hz[k as usize] = p.get(p.len() / 2).copied().unwrap_or(0.0);
        }
        // (with the units' labels: a window's own label came from the discriminant under test)
        let (cv, units_per_speaker) = cv_separation(&windows, &unit_labels, &window_unit);
        stats.cv_separation = cv;
        stats.units_per_speaker = units_per_speaker;
        let separated = match cv {
            Some(cv) => cv >= opts.min_separation,
            // too few units to cross-validate: only an obvious difference counts
            None => stats.separation >= 3.0 * opts.min_separation,
        };
        // Spectral separation alone is not enough: one voice's recurring kinds of sentences
        // (short questions, long answers) separate too (cross-validated d' up to 5 measured on
        // single espeak voices). Ask for a difference in median pitch as well, unless the
        // spectral separation is far beyond that.
        let pitch_ratio = (stats.pitch_hz[0].max(1.0) / stats.pitch_hz[1].max(1.0))
            .log2()
            .abs();
        let pitch_apart = f64::from(pitch_ratio) >= (1.0 + opts.min_pitch_difference).log2();
        let cv_strong = cv.is_some_and(|cv| cv >= opts.strong_separation);
        two = separated
            && stats.share[0].min(stats.share[1]) >= opts.min_speaker_share
            && (pitch_apart || cv_strong);
    }
    let speakers_found = if two { 2 } else { 1 };

    // --- block labels from each block's 0.6 s neighbourhood
    let mut labels: Vec<Option<u8>> = vec![None; nb];
    let mut margins: Vec<f32> = vec![0.0; nb];
    let lr = opts.label_radius;
    for j in 0..nb {
        if !in_speech[j] {
            continue;
        }
        match (&model, two) {
            (Some((dir, g)), true) => {
                let (mean, n) = window_mean(blocks, j.saturating_sub(lr), (j + lr + 1).min(nb));
                if n >= min_voiced.div_ceil(2) {
                    standardiser.apply(&mean, &mut zbuf);
                    let (l, post) = g.classify(cluster::project(&zbuf, dir));
                    labels[j] = Some(l);
                    margins[j] = 2.0 * post - 1.0;
                }
            }
            _ => labels[j] = Some(0),
        }
    }
    segment::fill_gaps(&mut labels, &in_speech);
    // speech stretches without any voiced frame: label 0 rather than nothing
    for j in 0..nb {
        if in_speech[j] && labels[j].is_none() {
            labels[j] = Some(0);
        }
    }
    let min_run = (opts.min_run_s / bs).round() as usize;
    segment::smooth_short_runs(&mut labels, min_run);

    // --- transcript segments: vote, split, override stray labels
    let rule = SplitRule {
        min_side: ((opts.min_change_side_s / bs).round() as usize).max(1),
        min_purity: opts.change_purity,
        strict_purity: opts.change_purity_in_speech,
    };
    // a cut before block k is at a pause when block k-1 or k is outside the speech map
    let at_pause: Vec<bool> = (0..=nb)
        .map(|k| (k > 0 && !in_speech[k - 1]) || (k < nb && !in_speech[k]))
        .collect();
    let guard = (opts.segment_edge_guard_s / bs).round() as usize;
    let mut seg_pieces: Vec<Vec<segment::Piece>> = Vec::with_capacity(transcript.segments.len());
    for seg in &transcript.segments {
        let (lo, hi) = block_range(seg.start_s, seg.end_s);
        let pieces = if two {
            segment::split_segment(&labels, &at_pause, lo, hi, rule)
        } else {
            let any = labels[lo..hi].iter().any(Option::is_some);
            if any {
                vec![segment::Piece { lo, hi, label: 0 }]
            } else {
                Vec::new()
            }
        };
        if pieces.len() > 1 {
            stats.segments_split += 1;
        }
        if two {
            for p in &pieces {
                let a = p.lo.max(lo + guard);
                let b = p.hi.min(hi.saturating_sub(guard));
                for l in labels.iter_mut().take(b).skip(a) {
                    if l.is_some() {
                        *l = Some(p.label);
                    }
                }
            }
        }
        seg_pieces.push(pieces);
    }

    // --- turns from the speech map cut at label changes
    let mut raw: Vec<(f64, f64, u8, f32, usize)> = Vec::new(); // start, end, label, margin sum, blocks
    for reg in speech {
        let (lo, hi) = (
            ((reg[0] / bs).floor().max(0.0) as usize).min(nb),
            ((reg[1] / bs).ceil().max(0.0) as usize).min(nb),
        );
        let mut j = lo;
        while j < hi {
            let Some(l) = labels[j] else {
                j += 1;
                continue;
            };
            let mut k = j;
            let mut msum = 0.0;
            while k < hi && labels[k].is_none_or(|x| x == l) {
                msum += margins[k];
                k += 1;
            }
            let start = (j as f64 * bs).max(reg[0]);
            let end = (k as f64 * bs).min(reg[1]);
            if end > start {
                raw.push((start, end, l, msum, k - j));
            }
            j = k;
        }
    }
    let max_pause = if two { opts.max_pause_in_turn_s } else { 0.0 };
    let mut turns: Vec<Draft> = Vec::new();
    for (start, end, label, msum, n) in raw {
        match turns.last_mut() {
            Some(t) if t.label == label && start - t.end <= max_pause + 1e-9 => {
                t.end = end;
                t.margin_sum += msum;
                t.blocks += n;
            }
            _ => turns.push(Draft {
                start,
                end,
                label,
                margin_sum: msum,
                blocks: n,
                texts: Vec::new(),
            }),
        }
    }

    // --- text: each piece of each segment to the overlapping turn of its speaker
    for (seg, pieces) in transcript.segments.iter().zip(&seg_pieces) {
        attach_text(seg, pieces, &labels, bs, &mut turns);
    }
    turns.sort_by(|a, b| a.start.total_cmp(&b.start));

    // --- roles
    let mut cues = roles::RoleCues::default();
    for t in &turns {
        let k = t.label as usize;
        cues.talk_s[k] += t.end - t.start;
        let text = t.text();
        if !text.is_empty() {
            cues.turns_with_text[k] += 1;
            cues.question_turns[k] += usize::from(roles::is_question(&text));
        }
    }
    cues.first = turns.first().map(|t| t.label as usize);
    let roles = if two {
        roles::assign(&cues)
    } else {
        roles::Roles {
            coach: None,
            confidence: 0.0,
            score: 0.0,
        }
    };
    stats.role_score = roles.score;
    let turns = turns
        .into_iter()
        .map(|t| {
            let (speaker, confidence) = match roles.coach {
                Some(c) => {
                    let certainty = if t.blocks > 0 {
                        (2.0 * t.margin_sum / t.blocks as f32).min(1.0)
                    } else {
                        0.0
                    };
                    let who = if t.label as usize == c {
                        Speaker::Coach
                    } else {
                        Speaker::Client
                    };
                    (who, roles.confidence * (0.5 + 0.5 * certainty))
                }
                None => (Speaker::Unknown, 0.0),
            };
            Turn {
                start_s: t.start,
                end_s: t.end,
                speaker,
                text: t.text(),
                confidence,
            }
        })
        .collect();
    (
        Diarization {
            turns,
            speakers_found,
            method: METHOD.to_string(),
        },
        stats,
    )
}

/// A turn being built.
#[derive(Debug, Clone)]
struct Draft {
    start: f64,
    end: f64,
    label: u8,
    margin_sum: f32,
    blocks: usize,
    /// (time, text) pieces, joined in time order.
    texts: Vec<(f64, String)>,
}

impl Draft {
    fn text(&self) -> String {
        let mut parts: Vec<&(f64, String)> = self.texts.iter().collect();
        parts.sort_by(|a, b| a.0.total_cmp(&b.0));
        join_text(parts.iter().map(|p| p.1.as_str()))
    }
}

/// Joins pieces of text: with a space, or without one between pieces of Japanese/Chinese.
fn join_text<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for p in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let cjk_join = out.chars().last().is_some_and(roles::is_cjk)
            && p.chars().next().is_some_and(roles::is_cjk);
        if !out.is_empty() && !cjk_join {
            out.push(' ');
        }
        out.push_str(p);
    }
    out
}

fn overlap(a0: f64, a1: f64, b0: f64, b1: f64) -> f64 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

/// Splits a segment's text at its pieces' boundaries (by share of speech blocks) and gives each
/// part to the turn of the same speaker it overlaps most (else any overlapping turn, else a new
/// turn of its own).
fn attach_text(
    seg: &Segment,
    pieces: &[segment::Piece],
    labels: &[Option<u8>],
    bs: f64,
    turns: &mut Vec<Draft>,
) {
    let text = seg.text.trim();
    if text.is_empty() {
        return;
    }
    // (start, end, label, text)
    let parts: Vec<(f64, f64, Option<u8>, String)> = if pieces.len() <= 1 {
        vec![(
            seg.start_s,
            seg.end_s,
            pieces.first().map(|p| p.label),
            text.to_string(),
        )]
    } else {
        let weight = |p: &segment::Piece| labels[p.lo..p.hi].iter().flatten().count() as f64;
        let total: f64 = pieces.iter().map(weight).sum::<f64>().max(1.0);
        let mut cuts = Vec::new();
        let mut acc = 0.0;
        for p in &pieces[..pieces.len() - 1] {
            acc += weight(p);
            cuts.push(acc / total);
        }
        let texts = segment::split_text(text, &cuts);
        pieces
            .iter()
            .zip(texts)
            .enumerate()
            .map(|(i, (p, t))| {
                let a = if i == 0 {
                    seg.start_s
                } else {
                    p.lo as f64 * bs
                };
                let b = if i + 1 == pieces.len() {
                    seg.end_s
                } else {
                    p.hi as f64 * bs
                };
                (a, b, Some(p.label), t)
            })
            .collect()
    };
    for (a, b, label, t) in parts {
        if t.is_empty() {
            continue;
        }
        let best = |same: bool| {
            turns
                .iter()
                .enumerate()
                .filter(|(_, d)| !same || Some(d.label) == label)
                .map(|(i, d)| (i, overlap(a, b, d.start, d.end)))
                .filter(|&(_, o)| o > 0.0)
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .map(|(i, _)| i)
        };
        let target = best(true).or_else(|| best(false));
        match target {
            Some(i) => turns[i].texts.push((a, t)),
            None => {
                // no speech detected under this text: a turn of its own, labelled like the
                // nearest turn in time (or speaker 0)
                let near = turns
                    .iter()
                    .min_by(|x, y| {
                        let dx = (x.start - a).abs().min((x.end - b).abs());
                        let dy = (y.start - a).abs().min((y.end - b).abs());
                        dx.total_cmp(&dy)
                    })
                    .map(|d| d.label);
                turns.push(Draft {
                    start: a,
                    end: b.max(a),
                    label: label.or(near).unwrap_or(0),
                    margin_sum: 0.0,
                    blocks: 0,
                    texts: vec![(a, t)],
                });
            }
        }
    }
}

/// The transcript already says who speaks: its two most talkative labels are the speakers,
/// consecutive segments of one label are one turn, and the role cues decide who is the coach.
fn from_speaker_labels(
    transcript: &Transcript,
    opts: &DiarizeOptions,
) -> (Diarization, DiarizeStats) {
    let mut talk: HashMap<&str, f64> = HashMap::new();
    for s in &transcript.segments {
        if let Some(l) = &s.speaker_label {
            *talk.entry(l.as_str()).or_default() += (s.end_s - s.start_s).max(0.0);
        }
    }
    let mut by_talk: Vec<(&str, f64)> = talk.into_iter().collect();
    by_talk.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let index = |l: &Option<String>| -> Option<u8> {
        let l = l.as_deref()?;
        by_talk
            .iter()
            .take(2)
            .position(|(n, _)| *n == l)
            .map(|p| p as u8)
    };
    let mut segs: Vec<&Segment> = transcript.segments.iter().collect();
    segs.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    // (start, end, speaker index or None, texts)
    let mut drafts: Vec<(f64, f64, Option<u8>, Vec<&str>)> = Vec::new();
    for s in segs {
        let k = index(&s.speaker_label);
        match drafts.last_mut() {
            Some(d) if d.2 == k && s.start_s - d.1 <= opts.max_pause_in_turn_s => {
                d.1 = d.1.max(s.end_s);
                d.3.push(s.text.as_str());
            }
            _ => drafts.push((s.start_s, s.end_s, k, vec![s.text.as_str()])),
        }
    }
    let mut cues = roles::RoleCues::default();
    for d in &drafts {
        if let Some(k) = d.2 {
            let k = k as usize;
            cues.talk_s[k] += d.1 - d.0;
            let text = join_text(d.3.iter().copied());
            if !text.is_empty() {
                cues.turns_with_text[k] += 1;
                cues.question_turns[k] += usize::from(roles::is_question(&text));
            }
        }
    }
    cues.first = drafts.iter().find_map(|d| d.2.map(usize::from));
    let speakers_found = by_talk.len().clamp(1, 2);
    let roles = if speakers_found == 2 {
        roles::assign(&cues)
    } else {
        roles::Roles {
            coach: None,
            confidence: 0.0,
            score: 0.0,
        }
    };
    let turns = drafts
        .into_iter()
        .map(|(start_s, end_s, k, texts)| {
            let speaker = match (roles.coach, k) {
                (Some(c), Some(k)) if usize::from(k) == c => Speaker::Coach,
                (Some(_), Some(_)) => Speaker::Client,
                _ => Speaker::Unknown,
            };
            Turn {
                start_s,
                end_s,
                speaker,
                text: join_text(texts.into_iter()),
                confidence: if speaker == Speaker::Unknown {
                    0.0
                } else {
                    roles.confidence
                },
            }
        })
        .collect();
    (
        Diarization {
            turns,
            speakers_found,
            method: METHOD_LABELS.to_string(),
        },
        DiarizeStats {
            role_score: roles.score,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: f64, b: f64, text: &str, label: Option<&str>) -> Segment {
        Segment {
            start_s: a,
            end_s: b,
            text: text.into(),
            no_speech_prob: None,
            avg_logprob: None,
            speaker_label: label.map(Into::into),
        }
    }

    #[test]
    fn transcript_labels_are_the_clustering() {
        let t = Transcript {
            language: "en".into(),
            source: "test".into(),
            segments: vec![
                seg(0.0, 2.0, "How was your week?", Some("A")),
                seg(
                    2.5,
                    9.0,
                    "Busy, but good. I planned every morning.",
                    Some("B"),
                ),
                seg(9.2, 12.0, "And the evenings were calm.", Some("B")),
                seg(12.5, 14.0, "What helped most?", Some("A")),
                seg(
                    14.5,
                    20.0,
                    "Writing the plan down the night before.",
                    Some("B"),
                ),
            ],
        };
        let d = diarize(
            Path::new("/nonexistent.wav"),
            &[],
            &t,
            &DiarizeOptions::default(),
        )
        .unwrap();
        assert_eq!(d.speakers_found, 2);
        assert_eq!(d.method, METHOD_LABELS);
        let who: Vec<Speaker> = d.turns.iter().map(|t| t.speaker).collect();
        assert_eq!(
            who,
            vec![
                Speaker::Coach,
                Speaker::Client,
                Speaker::Coach,
                Speaker::Client
            ]
        );
        assert_eq!(
            d.turns[1].text,
            "Busy, but good. I planned every morning. And the evenings were calm."
        );
    }

    #[test]
    fn unreadable_audio_is_an_internal_error() {
        let t = Transcript::default();
        let e = diarize(
            Path::new("/nonexistent/audio16k.wav"),
            &[[0.0, 1.0]],
            &t,
            &DiarizeOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Internal);
    }

    #[test]
    fn no_voiced_speech_still_gives_the_transcript_as_turns() {
        let feats = Features {
            block_s: 0.2,
            blocks: vec![Block::default(); 50],
            duration_s: 10.0,
        };
        let t = Transcript {
            language: "ja".into(),
            source: "test".into(),
            segments: vec![
                seg(1.0, 3.0, "今日は何を話しますか。", None),
                seg(4.0, 8.0, "仕事のことです。", None),
            ],
        };
        let (d, _) = from_features(&feats, &[], &t, &DiarizeOptions::default());
        assert_eq!(d.speakers_found, 1);
        assert_eq!(d.turns.len(), 2);
        assert!(d.turns.iter().all(|t| t.speaker == Speaker::Unknown));
        assert_eq!(d.turns[0].text, "今日は何を話しますか。");
    }

    #[test]
    fn japanese_text_joins_without_spaces() {
        assert_eq!(
            join_text(["今日は。", "よろしく", "Hello", "there"].into_iter()),
            "今日は。よろしく Hello there"
        );
    }
}
