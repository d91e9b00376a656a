//! Puts chunk transcripts back on the original recording's timeline, as one transcript.
//!
//! Each segment is shifted by its chunk's start (never by the previous segment's end: silence is
//! part of the timeline). Whisper invents text in silence ("ご視聴ありがとうございました" is the
//! classic) and sometimes repeats the prompt at a chunk's start; both are dropped here.

use super::whisper_json::ChunkText;
use crate::conversation::{Segment, Transcript};

/// One transcribed chunk (or piece): where its audio lies on the timeline and what came back.
#[derive(Debug, Clone)]
pub struct ChunkResult {
    pub start_s: f64,
    pub end_s: f64,
    pub text: ChunkText,
}

/// A segment this likely to be silence, and mostly outside speech, is a hallucination.
pub const NO_SPEECH_PROB_DROP: f32 = 0.6;
/// ... where "mostly outside" means less than this share of it overlaps the speech map.
const MIN_SPEECH_SHARE: f64 = 0.3;
/// How many segments at each side of a chunk boundary are compared for repeats.
const BOUNDARY_SEGMENTS: usize = 2;
/// ... and how close in time (s) a repeat must follow the original to be one.
const REPEAT_WITHIN_S: f64 = 5.0;

/// The language of a transcript nobody named a language for and whose text says none
/// (BCP 47 "undetermined").
pub const UNDETERMINED: &str = "und";

/// Merges chunk results (in any order) into one time-ordered transcript in `language`, or when
/// that is `None` in the language the model reported or the text is written in.
pub fn merge(
    mut chunks: Vec<ChunkResult>,
    speech: &[[f64; 2]],
    language: Option<&str>,
    source: &str,
) -> Transcript {
    chunks.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let language = match language {
        Some(l) => l.to_string(),
        None => super::language::of_pieces(
            chunks.iter().map(|c| c.text.language.as_deref()),
            chunks.iter().map(|c| c.text.text.as_str()),
        )
        .unwrap_or_else(|| UNDETERMINED.to_string()),
    };
    let mut segments: Vec<Segment> = Vec::new();
    for chunk in chunks {
        let shifted = chunk_segments(&chunk);
        let boundary = segments.len().saturating_sub(BOUNDARY_SEGMENTS);
        for (i, seg) in shifted.into_iter().enumerate() {
            if seg.text.is_empty() || is_hallucination(&seg, speech) {
                continue;
            }
            let repeats = i < BOUNDARY_SEGMENTS
                && segments[boundary..].iter().any(|prev| {
                    seg.start_s - prev.end_s <= REPEAT_WITHIN_S
                        && normalise(&prev.text) == normalise(&seg.text)
                });
            if !repeats {
                segments.push(seg);
            }
        }
    }
    segments.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Transcript {
        language,
        segments,
        source: source.to_string(),
    }
}

/// The chunk's segments on the original timeline; a text-only reply becomes one segment spanning
/// the chunk (pieces sent to text-only models are cut at speech boundaries, so that is exact
/// enough).
fn chunk_segments(chunk: &ChunkResult) -> Vec<Segment> {
    if chunk.text.segments.is_empty() {
        return vec![Segment {
            start_s: chunk.start_s,
            end_s: chunk.end_s,
            text: chunk.text.text.trim().to_string(),
            no_speech_prob: None,
            avg_logprob: None,
            speaker_label: None,
        }];
    }
    chunk
        .text
        .segments
        .iter()
        .filter_map(|s| {
            let start_s = (chunk.start_s + s.start_s).min(chunk.end_s);
            let end_s = (chunk.start_s + s.end_s).min(chunk.end_s);
            (end_s > start_s).then(|| Segment {
                start_s,
                end_s,
                ..s.clone()
            })
        })
        .collect()
}

fn is_hallucination(seg: &Segment, speech: &[[f64; 2]]) -> bool {
    let Some(p) = seg.no_speech_prob else {
        return false;
    };
    if p < NO_SPEECH_PROB_DROP {
        return false;
    }
    let len = seg.end_s - seg.start_s;
    let overlap: f64 = speech
        .iter()
        .map(|r| (seg.end_s.min(r[1]) - seg.start_s.max(r[0])).max(0.0))
        .sum();
    overlap < MIN_SPEECH_SHARE * len
}

/// Text compared without spaces, punctuation or case.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64, text: &str, nsp: f32) -> Segment {
        Segment {
            start_s: start,
            end_s: end,
            text: text.into(),
            no_speech_prob: Some(nsp),
            avg_logprob: None,
            speaker_label: None,
        }
    }

    fn chunk(start: f64, end: f64, segments: Vec<Segment>) -> ChunkResult {
        ChunkResult {
            start_s: start,
            end_s: end,
            text: ChunkText {
                text: segments.iter().map(|s| s.text.clone()).collect(),
                segments,
                language: None,
            },
        }
    }

    #[test]
    fn offsets_are_chunk_starts_on_the_original_timeline() {
        let chunks = vec![
            chunk(600.0, 1200.0, vec![seg(5.0, 8.0, "二つ目", 0.0)]),
            chunk(
                0.0,
                600.0,
                vec![seg(1.0, 2.0, "一つ目", 0.0), seg(590.0, 605.0, "端", 0.0)],
            ),
        ];
        let t = merge(chunks, &[[0.0, 1200.0]], Some("ja"), "test");
        let times: Vec<(f64, f64)> = t.segments.iter().map(|s| (s.start_s, s.end_s)).collect();
        // The segment running past its chunk's end is clipped to it.
        assert_eq!(times, vec![(1.0, 2.0), (590.0, 600.0), (605.0, 608.0)]);
    }

    #[test]
    fn hallucinations_in_silence_are_dropped_but_speech_is_kept() {
        let speech = [[0.0, 10.0]];
        let chunks = vec![chunk(
            0.0,
            60.0,
            vec![
                seg(1.0, 3.0, "本当の発話", 0.9), // high no_speech_prob but inside speech: kept
                seg(40.0, 45.0, "ご視聴ありがとうございました", 0.8), // in silence: dropped
                seg(50.0, 52.0, "小さな声", 0.1), // low probability: kept
            ],
        )];
        let t = merge(chunks, &speech, Some("ja"), "test");
        let texts: Vec<&str> = t.segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, vec!["本当の発話", "小さな声"]);
    }

    #[test]
    fn a_repeat_across_a_boundary_is_dropped_once() {
        let chunks = vec![
            chunk(0.0, 10.0, vec![seg(8.0, 10.0, "では始めましょう。", 0.0)]),
            chunk(
                10.0,
                20.0,
                vec![
                    seg(0.0, 1.0, "では、始めましょう", 0.0),
                    seg(2.0, 4.0, "はい。", 0.0),
                ],
            ),
        ];
        let t = merge(chunks, &[[0.0, 20.0]], Some("ja"), "test");
        assert_eq!(t.segments.len(), 2);
        assert_eq!(t.segments[1].text, "はい。");
        // The same words said again much later are not a repeat.
        let chunks = vec![
            chunk(0.0, 600.0, vec![seg(1.0, 2.0, "はい。", 0.0)]),
            chunk(600.0, 1200.0, vec![seg(0.0, 1.0, "はい。", 0.0)]),
        ];
        assert_eq!(
            merge(chunks, &[[0.0, 1200.0]], Some("ja"), "test")
                .segments
                .len(),
            2
        );
    }

    #[test]
    fn with_no_language_given_the_text_names_it_or_it_is_undetermined() {
        let mut c = chunk(0.0, 8.0, vec![]);
        c.text.text = "The deadline for the product launch moved forward by two weeks.".into();
        assert_eq!(
            merge(vec![c.clone()], &[[0.0, 8.0]], None, "test").language,
            "en"
        );
        assert_eq!(
            merge(vec![c.clone()], &[[0.0, 8.0]], Some("ja"), "test").language,
            "ja"
        );
        c.text.text = "ok".into();
        assert_eq!(
            merge(vec![c], &[[0.0, 8.0]], None, "test").language,
            UNDETERMINED
        );
    }

    #[test]
    fn text_only_replies_span_their_piece() {
        let mut c = chunk(12.5, 20.0, vec![]);
        c.text.text = " はい ".into();
        let t = merge(vec![c], &[[12.5, 20.0]], Some("ja"), "test");
        assert_eq!((t.segments[0].start_s, t.segments[0].end_s), (12.5, 20.0));
        assert_eq!(t.segments[0].text, "はい");
    }
}
