//! Who speaks when, from the audio alone: the speaker timeline, then turns and roles.
//!
//! The timeline never borrows from the transcriber (ARCHITECTURE.md "we own the timeline"):
//! text-only models return no times, and a transcript's segmentation must not decide speakers.
//! Loudness after normalisation cannot tell two people apart, so voices are told apart by
//! features that survive it, computed on speech frames only:
//!
//! 1. **Features** ([`features`]): every 20 ms frame inside the speech map gets a YIN pitch with a
//!    voicing decision and 12 MFCCs (c1..c12, no energy term); voiced frames are summed into
//!    0.2 s blocks. Every frame's level is kept too, for cutting pieces in pauses.
//! 2. **Clustering** ([`timeline`]): 1 s windows (5 blocks) standardised; units of at most 1.6 s
//!    of speech (short: turn-taking often leaves no pause, and a longer unit would hold both
//!    voices) average some phonetic content away; weighted 2-means on the units gives a first
//!    split, a linear discriminant (LDA) trained on it finds the direction that tells the voices
//!    apart, 1-D Gaussians on it relabel the windows, units vote, and this repeats.
//! 3. **One voice or two**: two is the prior of a 1-on-1 session ([`DiarizeOptions::
//!    expected_speakers`]); one only when the groups do not stay apart on a cross-validated
//!    discriminant, or the second voice holds almost no speech.
//!    With a speaker encoder, a quieter talker hidden inside one voice (a third person across
//!    the room) is dropped as [`background`] before the voices are drawn again.
//! 4. **Labels**: each 0.2 s block gets the likelier voice of its 0.6 s neighbourhood, so a change
//!    inside continuous speech is found at block resolution; short flips are smoothed away; a
//!    change without a pause is moved to the quietest 20 ms frame near it, then to the quietest
//!    10 ms of the samples ([`boundary`]): the gap between two words.
//! 5. **Turns** ([`turns`]): runs of one voice (pauses up to 2 s inside), each with the text of
//!    the pieces transcribed inside it; **roles** ([`roles`]) from the words: the speaker who asks
//!    more questions, opens the session and talks less is the coach.

pub mod background;
pub mod boundary;
pub mod cluster;
pub mod features;
pub mod reseg;
pub mod roles;
pub mod segment;
pub mod timeline;
pub mod turns;
pub mod voices;

use std::path::Path;

use crate::error::Result;
use crate::speakers::embed::SpeakerEncoder;
pub use timeline::{SpeakerTimeline, VoiceSpan};
pub use turns::{Diarization, TurnSpan};

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
    /// Voices in the session: 2 (a 1-on-1 session, the prior) or 1 (never split).
    pub expected_speakers: usize,
    /// A second voice needs at least this share of the voiced windows; with less the session
    /// is one voice (the only evidence for one voice that two similar voices never give).
    pub min_speaker_share: f32,
    /// Label runs shorter than this (s) that touch the other speaker are smoothed away.
    pub min_run_s: f64,
    /// A change inside continuous speech moves to the quietest frame within this distance (s).
    pub snap_change_s: f64,
    /// ... and then to the quietest 10 ms of the samples within this distance (s)
    /// ([`boundary`]).
    pub refine_change_s: f64,
    /// One speaker's speech separated by a pause up to this long (s) stays one turn.
    pub max_pause_in_turn_s: f64,
    /// Redraw the clustering's labels with a Viterbi over per-voice models ([`reseg`]).
    pub resegment: bool,
    /// Where the speaker encoder looks: `Some(hop)` = windows of the encoder's length every
    /// `hop` seconds over the speech ([`voices::embedding_windows`]); `None` = one window per
    /// unit (at most 1.6 s of uninterrupted speech, short tails unembedded). Windows every 1 s
    /// took real-recording confusion from 5.1 / 5.2 / 25.3 % to 3.8 / 0.0 / 1.9 % with CAM++
    /// (0.8-1.2 s alike) for 1.5x the encoder's CPU (README, "Who said what, measured").
    pub embedding_hop_s: Option<f64>,
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
            expected_speakers: 2,
            min_speaker_share: 0.03,
            min_run_s: 0.5,
            snap_change_s: 0.3,
            refine_change_s: 0.2,
            max_pause_in_turn_s: 2.0,
            resegment: true,
            embedding_hop_s: Some(1.0),
        }
    }
}

/// Numbers behind the decisions, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiarizeStats {
    /// Clustering windows with enough voiced frames.
    pub windows: usize,
    /// BIC per window of two 1-D Gaussians over one on the discriminant (> 0 favours two;
    /// informational).
    pub delta_bic: f64,
    /// Share of the windows in each cluster.
    pub share: [f32; 2],
    /// Distance of the two speakers on the discriminant, in pooled standard deviations (d').
    pub separation: f64,
    /// The same, cross-validated: discriminant trained on half of the units, measured on the
    /// other half (mean of both folds); `None` when a fold lacks a speaker.
    pub cv_separation: Option<f64>,
    /// Units of the smaller group.
    pub units_per_speaker: usize,
    /// Median pitch (Hz) of each cluster's windows.
    pub pitch_hz: [f32; 2],
    /// Cosine similarity of the two voices' embedding centroids (with a speaker encoder).
    pub voice_cosine: Option<f32>,
    /// Speaker changes moved to a quieter frame.
    pub changes_snapped: usize,
    /// ... and then to the quietest 10 ms of the samples.
    pub changes_refined: usize,
    /// Blocks whose voice the resegmentation changed.
    pub blocks_resegmented: usize,
    /// Blocks left out as steady tone, not speech ([`features::drop_tones`]).
    pub tone_blocks: usize,
    /// Blocks left out as a quieter third source, not a voice ([`background`]).
    pub background_blocks: usize,
}

/// The timeline from pitch + MFCC alone (no speaker model available).
pub const METHOD: &str = "pitch+mfcc timeline 2-means + lda v2";
/// The timeline from speaker embeddings, changes placed by the block features.
pub const METHOD_EMBEDDINGS: &str = "embedding windows 2-means + background + pitch/mfcc blocks v3";

/// The speaker timeline of `pcm_wav` (16 kHz mono, `audio16k.wav`) over the speech map, with
/// the speaker `encoder` when there is one (else from pitch + MFCC alone).
pub fn speaker_timeline(
    pcm_wav: &Path,
    speech: &[[f64; 2]],
    opts: &DiarizeOptions,
    encoder: Option<&dyn SpeakerEncoder>,
) -> Result<SpeakerTimeline> {
    speaker_timeline_with_stats(pcm_wav, speech, opts, encoder).map(|(t, _)| t)
}

/// [`speaker_timeline`], also returning the numbers behind its decisions.
pub fn speaker_timeline_with_stats(
    pcm_wav: &Path,
    speech: &[[f64; 2]],
    opts: &DiarizeOptions,
    encoder: Option<&dyn SpeakerEncoder>,
) -> Result<(SpeakerTimeline, DiarizeStats)> {
    let mut speech: Vec<[f64; 2]> = speech.iter().copied().filter(|r| r[1] > r[0]).collect();
    speech.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut feats = features::extract(pcm_wav, &speech, opts.frames_per_block.max(1))?;
    let tone_blocks = features::drop_tones(&mut feats.blocks);
    let (voices, background_blocks) = match encoder {
        Some(encoder) => embedding_voices(pcm_wav, &feats, opts, encoder)?,
        None => (None, Vec::new()),
    };
    for &b in &background_blocks {
        feats.blocks[b] = features::Block::default();
    }
    let (mut timeline, mut stats) = timeline::from_features(&feats, &speech, opts, voices.as_ref());
    stats.tone_blocks = tone_blocks;
    stats.background_blocks = background_blocks.len();
    stats.changes_refined =
        boundary::snap_changes_to_dips(pcm_wav, &mut timeline.spans, opts.refine_change_s)?;
    Ok((timeline, stats))
}

/// The two voices from the speaker encoder, per feature block: the speech cut into pieces
/// ([`DiarizeOptions::embedding_hop_s`]), each embedded, the embeddings split in two, and split
/// again without the pieces that are background ([`background`]); also the blocks that only
/// background covers.
fn embedding_voices(
    pcm_wav: &Path,
    feats: &features::Features,
    opts: &DiarizeOptions,
    encoder: &dyn SpeakerEncoder,
) -> Result<(Option<voices::VoiceSplit>, Vec<usize>)> {
    let block_s = feats.block_s;
    let in_speech: Vec<bool> = feats.blocks.iter().map(|b| b.speech_frames > 0).collect();
    let pieces = match opts.embedding_hop_s {
        None => timeline::speech_units(&in_speech, block_s).0,
        Some(hop_s) => {
            let win_s = encoder.window_samples() as f64 / 16_000.0;
            let blocks = |s: f64| ((s / block_s).round() as usize).max(1);
            voices::embedding_windows(&in_speech, blocks(win_s), blocks(hop_s))
        }
    };
    let piece_s: Vec<(f64, f64)> = pieces
        .iter()
        .map(|&(lo, hi)| (lo as f64 * block_s, hi as f64 * block_s))
        .collect();
    let mut embeddings = voices::embed_units(pcm_wav, &piece_s, encoder)?;
    let weights: Vec<f32> = piece_s.iter().map(|(a, b)| (b - a) as f32).collect();
    let Some(mut split) = voices::split_voices(&embeddings, &weights) else {
        return Ok((None, Vec::new()));
    };
    let frames_per_block = opts.frames_per_block.max(1);
    let under_db =
        background::levels_under_speech(&feats.frame_db, frames_per_block, &in_speech, &pieces);
    let is_background = background::background_pieces(&embeddings, &weights, &split, &under_db);
    let mut dropped = Vec::new();
    if is_background.contains(&true) {
        let embedded: Vec<bool> = embeddings.iter().map(Option::is_some).collect();
        dropped =
            background::background_blocks(&pieces, &is_background, &embedded, in_speech.len());
        for (e, _) in embeddings
            .iter_mut()
            .zip(&is_background)
            .filter(|(_, b)| **b)
        {
            *e = None;
        }
        match voices::split_voices(&embeddings, &weights) {
            Some(again) => split = again,
            None => return Ok((None, Vec::new())),
        }
    }
    Ok((Some(split.per_block(&pieces, in_speech.len())), dropped))
}
