//! A quieter sound source that is neither of the session's voices: a third person across the
//! room, a television, a meeting next door. The energy detector calls it speech, and the
//! two-voice split hands it to one of the voices (real-ami01 with CAM++: a talker 17-26 dB under
//! the two men in its reference went with the one who speaks less; 50 % false alarm). Each
//! voice's pieces are split in two again; a group is background when
//!
//! * its median piece is at least [`BACKGROUND_DB`] quieter than the other group's and than the
//!   session's speech (a participant far from the microphone is quieter too, but is a voice of
//!   their own, not a part of the other's), and
//! * the two groups are about as unlike as the two voices are ([`SAME_VOICE_SLACK`]): one
//!   person speaking softly for a while stays one voice;
//!
//! and of it only the pieces that are themselves that quiet go. When more than
//! [`MAX_BACKGROUND_SHARE`] of the embedded speech would go, the split itself is in doubt and
//! nothing is dropped.

use super::voices::{VoiceSplit, dot};

/// How far (dB) under the session's speech level a piece must be to be background.
pub const BACKGROUND_DB: f32 = 12.0;
/// A quiet group inside a voice is a stranger when the two groups are at most this much more
/// alike (cosine) than the two voices are.
const SAME_VOICE_SLACK: f32 = 0.05;
/// Each of a voice's two groups holds at least this share of its speech.
const MIN_GROUP_SHARE: f32 = 0.1;
/// Never more than this share of the embedded speech is background.
const MAX_BACKGROUND_SHARE: f32 = 0.4;
/// Percentile of a piece's frame levels taken as its level (its louder part: a word, not the
/// gaps between words).
const PIECE_PERCENTILE: f32 = 0.9;
/// Percentile of the speech frames' levels taken as the session's speech level.
const SPEECH_PERCENTILE: f32 = 0.95;

/// How far (dB) each piece (blocks `lo..hi`) is under the session's speech level, from the
/// 20 ms frame levels (`frames_per_block` frames per block).
pub fn levels_under_speech(
    frame_db: &[f32],
    frames_per_block: usize,
    in_speech: &[bool],
    pieces: &[(usize, usize)],
) -> Vec<f32> {
    let frames = |lo: usize, hi: usize| {
        let (a, b) = (
            lo * frames_per_block,
            (hi * frames_per_block).min(frame_db.len()),
        );
        frame_db.get(a..b.max(a)).unwrap_or(&[]).to_vec()
    };
    let speech_frames: Vec<f32> = in_speech
        .iter()
        .enumerate()
        .filter(|(_, s)| **s)
        .flat_map(|(j, _)| frames(j, j + 1))
        .collect();
    let speech_db = percentile(speech_frames, SPEECH_PERCENTILE);
    pieces
        .iter()
        .map(|&(lo, hi)| speech_db - percentile(frames(lo, hi), PIECE_PERCENTILE))
        .collect()
}

/// Which embedded pieces are background (see the module doc). `under_db[i]`: how far piece `i`
/// is under the session's speech ([`levels_under_speech`]); `weights`: its length.
pub fn background_pieces(
    embeddings: &[Option<Vec<f32>>],
    weights: &[f32],
    split: &VoiceSplit,
    under_db: &[f32],
) -> Vec<bool> {
    let mut background = vec![false; embeddings.len()];
    for voice in 0..2 {
        for i in quiet_stranger_in_voice(embeddings, weights, split, under_db, voice) {
            background[i] = true;
        }
    }
    at_most_max_share(background, embeddings, weights)
}

/// `background`, or none of it when it holds more than [`MAX_BACKGROUND_SHARE`] of the
/// embedded speech.
fn at_most_max_share(
    background: Vec<bool>,
    embeddings: &[Option<Vec<f32>>],
    weights: &[f32],
) -> Vec<bool> {
    let embedded: f32 = weights
        .iter()
        .zip(embeddings)
        .filter(|(_, e)| e.is_some())
        .map(|(w, _)| w)
        .sum();
    let dropped: f32 = weights
        .iter()
        .zip(&background)
        .filter(|(_, b)| **b)
        .map(|(w, _)| w)
        .sum();
    if dropped > MAX_BACKGROUND_SHARE * embedded {
        return vec![false; embeddings.len()];
    }
    background
}

/// The pieces of `voice` that are a quieter stranger inside it: split in two again, one group
/// at least [`BACKGROUND_DB`] quieter than the other (median) and as unlike it as the two
/// voices are unlike each other; of that group, the pieces themselves that quiet.
fn quiet_stranger_in_voice(
    embeddings: &[Option<Vec<f32>>],
    weights: &[f32],
    split: &VoiceSplit,
    under_db: &[f32],
    voice: usize,
) -> Vec<usize> {
    let nearer = |e: &[f32]| usize::from(dot(e, &split.centroids[1]) > dot(e, &split.centroids[0]));
    let members: Vec<Option<Vec<f32>>> = embeddings
        .iter()
        .map(|e| e.clone().filter(|e| nearer(e) == voice))
        .collect();
    let Some(inner) = super::voices::split_voices(&members, weights) else {
        return Vec::new();
    };
    // Both groups must hold speech: a split that leaves one empty (its centroid zero, so its
    // cosine says nothing) would make the whole voice "the quiet group".
    if inner.share[0].min(inner.share[1]) < MIN_GROUP_SHARE
        || inner.centroid_cosine > split.centroid_cosine + SAME_VOICE_SLACK
    {
        return Vec::new();
    }
    let group: Vec<Option<usize>> = inner
        .p_voice1
        .iter()
        .map(|p| p.map(|p| usize::from(p > 0.5)))
        .collect();
    let median_under = |g: usize| {
        let of_g = group.iter().zip(under_db).filter(|(k, _)| **k == Some(g));
        percentile(of_g.map(|(_, &u)| u).collect(), 0.5)
    };
    let under = [median_under(0), median_under(1)];
    let quiet = usize::from(under[1] > under[0]);
    if under[quiet] - under[1 - quiet] < BACKGROUND_DB || under[quiet] < BACKGROUND_DB {
        return Vec::new();
    }
    (0..embeddings.len())
        .filter(|&i| group[i] == Some(quiet) && under_db[i] >= BACKGROUND_DB)
        .collect()
}

/// The blocks that only background pieces cover: no other embedded piece says a voice is
/// there. `pieces[i]` = blocks `lo..hi` of piece `i`.
pub fn background_blocks(
    pieces: &[(usize, usize)],
    background: &[bool],
    embedded: &[bool],
    n_blocks: usize,
) -> Vec<usize> {
    let mut by_background = vec![false; n_blocks];
    let mut by_voice = vec![false; n_blocks];
    for ((&(lo, hi), &bg), &emb) in pieces.iter().zip(background).zip(embedded) {
        let marks = if bg {
            &mut by_background
        } else if emb {
            &mut by_voice
        } else {
            continue;
        };
        marks[lo.min(n_blocks)..hi.min(n_blocks)].fill(true);
    }
    (0..n_blocks)
        .filter(|&b| by_background[b] && !by_voice[b])
        .collect()
}

/// The `p` quantile (0..=1, nearest rank) of `values`; -inf for none.
fn percentile(mut values: Vec<f32>, p: f32) -> f32 {
    if values.is_empty() {
        return f32::NEG_INFINITY;
    }
    values.sort_by(f32::total_cmp);
    values[((values.len() - 1) as f32 * p).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::super::voices;
    use super::*;

    fn emb(v: [f32; 3]) -> Option<Vec<f32>> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        Some(v.iter().map(|x| x / n).collect())
    }

    /// Three directions about equally unlike: voice 0 (4 pieces), voice 1 (10, the one who
    /// talks most), a stranger (`n` pieces) a little nearer voice 0, as in real-ami01.
    fn session(stranger_under_db: f32, n: usize) -> (Vec<Option<Vec<f32>>>, Vec<f32>) {
        let mut embeddings = Vec::new();
        let mut under = Vec::new();
        let mut add = |v: [f32; 3], count: usize, db: f32| {
            for i in 0..count {
                let t = 0.02 * i as f32;
                embeddings.push(emb([v[0] + t, v[1], v[2] - t]));
                under.push(db);
            }
        };
        add([1.0, 0.2, 0.2], 4, 1.0);
        add([0.2, 1.0, 0.2], 10, 2.0);
        add([0.3, 0.2, 1.0], n, stranger_under_db);
        (embeddings, under)
    }

    fn background_of(stranger_under_db: f32, stranger_share: usize) -> Vec<bool> {
        let (embeddings, under) = session(stranger_under_db, stranger_share);
        background_in(&embeddings, &under)
    }

    /// The background among pieces of 1 s each, after the two-voice split.
    fn background_in(embeddings: &[Option<Vec<f32>>], under_db: &[f32]) -> Vec<bool> {
        let weights = vec![1.0; embeddings.len()];
        let split = voices::split_voices(embeddings, &weights).unwrap();
        background_pieces(embeddings, &weights, &split, under_db)
    }

    #[test]
    fn a_quiet_stranger_inside_a_voice_is_background() {
        let bg = background_of(18.0, 4);
        assert_eq!(bg.iter().filter(|b| **b).count(), 4, "{bg:?}");
        assert!(bg[14..].iter().all(|b| *b), "the stranger's pieces: {bg:?}");
    }

    #[test]
    fn a_stranger_as_loud_as_the_voices_stays() {
        assert!(!background_of(6.0, 4).contains(&true));
    }

    #[test]
    fn a_quiet_voice_of_its_own_stays() {
        // voice 0 is 18 dB quieter than voice 1: a participant far from the microphone
        let (embeddings, mut under) = session(0.0, 0);
        under[..4].fill(18.0);
        let bg = background_in(&embeddings, &under);
        assert!(!bg.contains(&true), "{bg:?}");
    }

    #[test]
    fn a_quiet_voice_that_does_not_split_stays() {
        // voice 0: two identical pieces 18 dB under, so splitting it again leaves a group empty
        let mut embeddings = vec![emb([1.0, 0.2, 0.2]); 2];
        let mut under = vec![18.0; 2];
        for i in 0..10 {
            embeddings.push(emb([0.2, 1.0, 0.2 + 0.02 * i as f32]));
            under.push(1.0);
        }
        let bg = background_in(&embeddings, &under);
        assert!(!bg.contains(&true), "{bg:?}");
    }

    #[test]
    fn nothing_is_background_when_too_much_would_go() {
        let embeddings = vec![emb([1.0, 0.0, 0.0]), emb([0.0, 1.0, 0.0]), None];
        let some = vec![false, true, false];
        let kept = at_most_max_share(some.clone(), &embeddings, &[3.0, 2.0, 9.0]);
        assert_eq!(kept, some, "2 s of 5 s embedded");
        let kept = at_most_max_share(some, &embeddings, &[2.0, 3.0, 9.0]);
        assert_eq!(kept, [false; 3], "3 s of 5 s embedded");
    }

    #[test]
    fn a_block_also_covered_by_a_voice_stays() {
        let pieces = [(0, 4), (3, 7), (8, 10)];
        let blocks = background_blocks(&pieces, &[false, true, true], &[true; 3], 11);
        assert_eq!(blocks, [4, 5, 6, 8, 9]);
    }

    #[test]
    fn a_piece_is_measured_against_the_speech_level() {
        // two blocks of 2 frames each at -10 dB, one at -30 dB
        let frame_db = [-10.0, -10.0, -10.0, -10.0, -30.0, -30.0];
        let under = levels_under_speech(&frame_db, 2, &[true; 3], &[(0, 2), (2, 3)]);
        assert_eq!(under, [0.0, 20.0]);
    }
}
