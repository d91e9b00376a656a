//! A transcriber that reads a Whisper `verbose_json` file of the whole recording, so recordings
//! replay offline with the same pipeline. Each piece gets the words of the segments that fall
//! inside it: a segment that spans several pieces is split by time, at the nearest sentence,
//! clause or word boundary (by character share for Japanese), the same cut for both neighbours,
//! so no text is lost or doubled at piece edges.

use std::path::{Path, PathBuf};

use super::whisper_json::{self, ChunkText};
use super::{ChunkRequest, Transcriber};
use crate::BoxFuture;
use crate::conversation::Segment;
use crate::diarize::segment::cut_position;
use crate::error::{Error, ErrorCode, Result};

pub struct SidecarTranscriber {
    path: PathBuf,
    whole: ChunkText,
}

impl SidecarTranscriber {
    pub fn open(path: &Path) -> Result<SidecarTranscriber> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorCode::WhisperFailed,
                format!("cannot read the transcript file {}: {e}", path.display()),
            )
        })?;
        let whole = whisper_json::parse(&bytes).map_err(|e| {
            Error::new(ErrorCode::WhisperFailed, format!("{}: {e}", path.display()))
        })?;
        if whole.segments.is_empty() {
            return Err(Error::new(
                ErrorCode::WhisperFailed,
                format!(
                    "{} has no segments with times (verbose_json is needed)",
                    path.display()
                ),
            ));
        }
        Ok(SidecarTranscriber {
            path: path.to_path_buf(),
            whole,
        })
    }

    /// The language the transcript names ("english"), if it does.
    pub fn language(&self) -> Option<&str> {
        self.whole.language.as_deref()
    }

    /// `<input stem>.transcript.json` beside the input, the default sidecar.
    pub fn default_path(input: &Path) -> PathBuf {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        input.with_file_name(format!("{stem}.transcript.json"))
    }
}

impl Transcriber for SidecarTranscriber {
    fn name(&self) -> String {
        format!(
            "sidecar:{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        )
    }

    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>> {
        let (start, end) = (req.audio.start_s, req.audio.end_s);
        let segments: Vec<_> = self
            .whole
            .segments
            .iter()
            .filter_map(|s| part_inside(s, start, end))
            .collect();
        let text = crate::diarize::turns::join_text(segments.iter().map(|s| s.text.as_str()));
        Box::pin(async move {
            Ok(ChunkText {
                text,
                segments,
                language: self.whole.language.clone(),
            })
        })
    }
}

/// Whisper's segment edges are up to a few tenths of a second off (into the pauses around the
/// words): a piece edge this close to a segment's edge counts as that edge, so a piece that
/// starts a little after its segment does not lose the first word.
const EDGE_S: f64 = 0.4;

/// The part of `seg` said between `start` and `end` (times relative to `start`), if any: its text
/// cut at the fractions of its duration where the span begins and ends.
fn part_inside(seg: &Segment, start: f64, end: f64) -> Option<Segment> {
    let (a, b) = (seg.start_s.max(start), seg.end_s.min(end));
    let len = seg.end_s - seg.start_s;
    if len <= 0.0 {
        // a point in time: it belongs to the piece it lies in
        return (seg.start_s >= start && seg.start_s < end).then(|| Segment {
            start_s: seg.start_s - start,
            end_s: seg.end_s - start,
            ..seg.clone()
        });
    }
    if b <= a {
        return None;
    }
    let text = seg.text.trim();
    let chars: Vec<char> = text.chars().collect();
    // the same function for both pieces that meet at a time, so their parts never overlap
    let cut_at = |t: f64| -> usize {
        if t - seg.start_s <= EDGE_S {
            0
        } else if seg.end_s - t <= EDGE_S {
            chars.len()
        } else {
            cut_position(text, (t - seg.start_s) / len)
        }
    };
    let (from, to) = (cut_at(a), cut_at(b));
    let part: String = chars[from..to.max(from)].iter().collect();
    let part = part.trim();
    (!part.is_empty()).then(|| Segment {
        start_s: a - start,
        end_s: b - start,
        text: part.to_string(),
        ..seg.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: f64, b: f64, text: &str) -> Segment {
        Segment {
            start_s: a,
            end_s: b,
            text: text.into(),
            no_speech_prob: None,
            avg_logprob: None,
            speaker_label: None,
        }
    }

    #[test]
    fn a_segment_split_across_pieces_loses_and_doubles_nothing() {
        let s = seg(
            10.0,
            20.0,
            "I keep putting it off. It is due on Friday and I have not started.",
        );
        let cuts = [0.0, 13.0, 16.5, 30.0];
        let parts: Vec<String> = cuts
            .windows(2)
            .filter_map(|w| part_inside(&s, w[0], w[1]).map(|p| p.text))
            .collect();
        assert_eq!(parts.join(" "), s.text);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], "I keep putting it off.");
        assert!(part_inside(&s, 20.0, 25.0).is_none());
    }

    #[test]
    fn a_piece_a_little_inside_its_segment_gets_all_of_it() {
        // Whisper's segment starts 0.2 s early and ends 0.3 s late; the piece is the speech
        let s = seg(0.6, 3.2, "What would you like to focus on today?");
        assert_eq!(part_inside(&s, 0.8, 2.92).unwrap().text, s.text);
        assert!(part_inside(&s, 2.92, 3.8).is_none());
    }

    #[test]
    fn japanese_splits_by_character_share() {
        let s = seg(0.0, 4.0, "今日は、仕事のことを話したいです。");
        let a = part_inside(&s, 0.0, 1.0).unwrap().text;
        let b = part_inside(&s, 1.0, 4.0).unwrap().text;
        assert_eq!(format!("{a}{b}"), s.text);
        assert_eq!(a, "今日は、");
    }
}
