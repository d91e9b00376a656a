//! Single-speaker pieces: what a text-only transcription model is sent.
//!
//! Such models (gpt-transcribe, gpt-4o-transcribe) return text without times or speakers, so we
//! send pieces whose time and voice we already know: each turn of the speaker timeline, cut into
//! pieces of at most `max_s` at its deepest pauses (never inside a word: a stretch without a
//! pause of `min_pause_s` is cut at its quietest 20 ms frame). Text-only models invent words on
//! tiny clips, so a turn with less than `min_speech_s` of speech (a short backchannel) is not
//! sent: it stays a timing-only turn with empty text (measured in README.md).

use std::path::{Path, PathBuf};

use super::ChunkAudio;
use crate::audio::TARGET_RATE;
use crate::diarize::TurnSpan;
use crate::error::{Error, ErrorCode, Result};

/// How pieces are cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PieceOptions {
    /// Longest piece (s).
    pub max_s: f64,
    /// Turns with less speech than this (s) are not sent.
    pub min_speech_s: f64,
    /// A pause this long (s) is a safe place to cut.
    pub min_pause_s: f64,
    /// A turn's first and last piece reach this far (s) into the pause beside it, never past
    /// the pause's middle: the speech map ends a soft word ending (a fricative, a breathy
    /// vowel) a few tens of milliseconds early, and a transcriber drops a clipped last word.
    pub pad_s: f64,
}

impl Default for PieceOptions {
    fn default() -> Self {
        PieceOptions {
            max_s: 30.0,
            min_speech_s: 0.5,
            min_pause_s: 0.15,
            pad_s: 0.15,
        }
    }
}

/// One piece to transcribe: its span and the turn it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PiecePlan {
    pub turn: usize,
    pub start_s: f64,
    pub end_s: f64,
}

const FRAME_S: f64 = 0.02;

/// Cuts every turn into pieces of at most `opts.max_s`; `frame_db` is the level of each 20 ms
/// frame of the recording.
pub fn plan_pieces(turns: &[TurnSpan], frame_db: &[f32], opts: &PieceOptions) -> Vec<PiecePlan> {
    let quiet = quiet_threshold(frame_db);
    let recording_s = frame_db.len() as f64 * FRAME_S;
    let mut out = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        if t.speech_s < opts.min_speech_s {
            continue;
        }
        let first = out.len();
        let mut start = t.start_s;
        while t.end_s - start > opts.max_s {
            let cut = best_cut(frame_db, quiet, start, t.end_s, opts);
            out.push(PiecePlan {
                turn: i,
                start_s: start,
                end_s: cut,
            });
            start = cut;
        }
        out.push(PiecePlan {
            turn: i,
            start_s: start,
            end_s: t.end_s,
        });
        let before = i.checked_sub(1).map_or(0.0, |p| turns[p].end_s);
        let after = turns.get(i + 1).map_or(recording_s, |n| n.start_s);
        out[first].start_s -= padding(t.start_s - before, opts.pad_s);
        out.last_mut().expect("pushed").end_s += padding(after - t.end_s, opts.pad_s);
    }
    out
}

/// How far a piece edge reaches into a pause of `pause_s` beside it (none where two turns
/// touch: that edge is a change of voice inside continuous speech).
fn padding(pause_s: f64, pad_s: f64) -> f64 {
    (pause_s / 2.0).clamp(0.0, pad_s)
}

/// Frames at or below this level are pauses: a third of the way from the noise floor (5th
/// percentile) to the speech level (90th percentile), and at least 15 dB below speech.
fn quiet_threshold(frame_db: &[f32]) -> f32 {
    let mut sorted: Vec<f32> = frame_db.to_vec();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    match (at(0.05), at(0.90)) {
        (Some(floor), Some(speech)) => (floor + (speech - floor) / 3.0).min(speech - 15.0),
        _ => f32::NEG_INFINITY,
    }
}

/// Where to end a piece that starts at `start` in a turn ending at `end`: the middle of the
/// longest pause in the last two thirds of the allowed span; without a pause of `min_pause_s`
/// there, its quietest frame.
fn best_cut(frame_db: &[f32], quiet: f32, start: f64, end: f64, opts: &PieceOptions) -> f64 {
    let frame = |t: f64| ((t / FRAME_S).floor().max(0.0) as usize).min(frame_db.len());
    let lo = frame(start + opts.max_s / 3.0);
    let hi = frame((start + opts.max_s).min(end - opts.min_speech_s));
    if lo >= hi {
        // no levels there (a test, a recording shorter than its map): cut at the limit
        return (start + opts.max_s).min(end);
    }
    let mut best: Option<(usize, usize)> = None; // (length, middle frame)
    let mut k = lo;
    while k < hi {
        if frame_db[k] > quiet {
            k += 1;
            continue;
        }
        let mut e = k;
        while e < hi && frame_db[e] <= quiet {
            e += 1;
        }
        if best.is_none_or(|(len, _)| e - k >= len) {
            best = Some((e - k, (k + e) / 2));
        }
        k = e;
    }
    let min_frames = (opts.min_pause_s / FRAME_S).round() as usize;
    let at = match best {
        Some((len, middle)) if len >= min_frames => middle,
        _ => (lo..hi)
            .min_by(|&a, &b| frame_db[a].total_cmp(&frame_db[b]))
            .unwrap_or(hi),
    };
    // the middle of the chosen frame; always moves forward
    ((at as f64 + 0.5) * FRAME_S).clamp(start + FRAME_S, start + opts.max_s)
}

/// Writes each piece of the 16 kHz WAV `pcm_wav` as its own WAV file in `dir`.
pub fn write_pieces(pcm_wav: &Path, pieces: &[PiecePlan], dir: &Path) -> Result<Vec<ChunkAudio>> {
    let wav_err = |e: hound::Error| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot cut speech pieces: {e}"),
        )
    };
    let mut reader = hound::WavReader::open(pcm_wav).map_err(wav_err)?;
    let spec = reader.spec();
    let total = reader.duration();
    let mut out = Vec::with_capacity(pieces.len());
    for (index, p) in pieces.iter().enumerate() {
        let (start_s, end_s) = (p.start_s, p.end_s);
        let first = ((start_s * f64::from(TARGET_RATE)) as u32).min(total);
        let last = ((end_s * f64::from(TARGET_RATE)).ceil() as u32).min(total);
        reader
            .seek(first)
            .map_err(|e| Error::io("cannot seek in the 16 kHz recording", e))?;
        let path: PathBuf = dir.join(format!("piece-{index:05}.wav"));
        let mut writer = crate::audio::private_wav(&path, spec).map_err(wav_err)?;
        for sample in reader.samples::<i16>().take((last - first) as usize) {
            writer
                .write_sample(sample.map_err(wav_err)?)
                .map_err(wav_err)?;
        }
        writer.finalize().map_err(wav_err)?;
        out.push(ChunkAudio {
            index,
            path,
            start_s: f64::from(first) / f64::from(TARGET_RATE),
            end_s: f64::from(last) / f64::from(TARGET_RATE),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(a: f64, b: f64, speech_s: f64) -> TurnSpan {
        TurnSpan {
            start_s: a,
            end_s: b,
            voice: 0,
            speech_s,
            confidence: 1.0,
        }
    }

    /// 20 ms levels: speech at -20 dB with silent frames (-90 dB) at the given times.
    fn levels(total_s: f64, pauses: &[(f64, f64)]) -> Vec<f32> {
        (0..(total_s / FRAME_S) as usize)
            .map(|i| {
                let t = (i as f64 + 0.5) * FRAME_S;
                if pauses.iter().any(|&(a, b)| t >= a && t < b) {
                    -90.0
                } else {
                    -20.0 + (i % 7) as f32
                }
            })
            .collect()
    }

    #[test]
    fn short_turns_are_one_piece_and_backchannels_none() {
        let turns = [
            turn(0.0, 10.0, 9.0),
            turn(10.0, 10.4, 0.4),
            turn(11.0, 12.0, 1.0),
        ];
        let p = plan_pieces(&turns, &levels(12.0, &[]), &PieceOptions::default());
        let spans: Vec<(usize, f64, f64)> = p
            .iter()
            .map(|p| (p.turn, round_ms(p.start_s), round_ms(p.end_s)))
            .collect();
        // the backchannel is not sent; the pieces reach into the pauses beside them
        assert_eq!(spans, vec![(0, 0.0, 10.0), (2, 10.85, 12.0)]);
    }

    #[test]
    fn pieces_reach_into_pauses_but_not_across_a_change_of_voice() {
        let turns = [
            turn(1.0, 5.0, 4.0),
            turn(5.0, 8.0, 3.0),  // touches the first: no padding there
            turn(8.1, 12.0, 3.9), // 0.1 s after the second: half of it each
            turn(13.0, 15.0, 2.0),
        ];
        let p = plan_pieces(&turns, &levels(15.1, &[]), &PieceOptions::default());
        let spans: Vec<(f64, f64)> = p
            .iter()
            .map(|p| (round_ms(p.start_s), round_ms(p.end_s)))
            .collect();
        // the last: half of the 0.1 s left before the end of the recording
        let want = vec![(0.85, 5.0), (5.0, 8.05), (8.05, 12.15), (12.85, 15.05)];
        assert_eq!(spans, want);
    }

    fn round_ms(t: f64) -> f64 {
        (t * 1000.0).round() / 1000.0
    }

    #[test]
    fn long_turns_are_cut_in_their_longest_pause() {
        // pauses of 60 ms at 12 s, 300 ms at 20 s, 160 ms at 27 s: the longest wins
        let db = levels(
            70.0,
            &[(12.0, 12.06), (20.0, 20.3), (27.0, 27.16), (48.0, 48.2)],
        );
        let p = plan_pieces(&[turn(0.0, 70.0, 69.0)], &db, &PieceOptions::default());
        assert!(
            p.iter().all(|p| p.end_s - p.start_s <= 30.0 + 1e-9),
            "{p:?}"
        );
        assert!((p[0].end_s - 20.15).abs() < 0.03, "{p:?}");
        assert!((p[1].end_s - 48.11).abs() < 0.03, "{p:?}");
        assert_eq!((p[2].start_s, round_ms(p[2].end_s)), (p[1].end_s, 70.0));
    }

    #[test]
    fn without_a_pause_the_quietest_frame_is_the_cut() {
        let mut db = levels(40.0, &[(5.0, 5.1)]); // a pause, but too early to use
        db[(22.0 / FRAME_S) as usize] = -40.0; // a dip inside speech
        let p = plan_pieces(&[turn(0.0, 40.0, 40.0)], &db, &PieceOptions::default());
        assert_eq!(p.len(), 2);
        assert!((p[0].end_s - 22.01).abs() < 0.02, "{p:?}");
    }

    #[test]
    fn writes_pieces_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&wav, spec).unwrap();
        for i in 0..48_000 {
            w.write_sample((i % 1000) as i16).unwrap();
        }
        w.finalize().unwrap();
        let plan = [
            PiecePlan {
                turn: 0,
                start_s: 0.5,
                end_s: 1.0,
            },
            PiecePlan {
                turn: 1,
                start_s: 2.0,
                end_s: 3.0,
            },
        ];
        let pieces = write_pieces(&wav, &plan, dir.path()).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!((pieces[1].start_s, pieces[1].end_s), (2.0, 3.0));
        let r = hound::WavReader::open(&pieces[1].path).unwrap();
        assert_eq!(r.duration(), 16_000);
        let first: i16 = hound::WavReader::open(&pieces[1].path)
            .unwrap()
            .samples::<i16>()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first, (32_000 % 1000) as i16);
    }
}
