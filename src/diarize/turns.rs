//! Turns: runs of one voice on the speaker timeline, with the text transcribed inside them, and
//! which voice is the coach.

use super::roles;
use super::timeline::{SpeakerTimeline, VoiceSpan};
use crate::conversation::{Speaker, Transcript, Turn};

/// One voice's run of speech: its spans, joined over pauses up to `max_pause_in_turn_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnSpan {
    pub start_s: f64,
    pub end_s: f64,
    pub voice: u8,
    /// Seconds of speech in it (the pauses left out).
    pub speech_s: f64,
    /// Mean label confidence of its spans, weighted by their length.
    pub confidence: f32,
}

impl TurnSpan {
    /// Extends the turn over a later stretch of its voice: `speech_s` of speech ending at
    /// `end_s`, labelled with `confidence` (the turn's confidence is the speech-weighted mean).
    fn absorb(&mut self, end_s: f64, speech_s: f64, confidence: f32) {
        let total = self.speech_s + speech_s;
        self.confidence = ((self.confidence * self.speech_s as f32 + confidence * speech_s as f32)
            / total.max(1e-9) as f32)
            .clamp(0.0, 1.0);
        self.end_s = end_s;
        self.speech_s = total;
    }
}

/// The diariser's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Diarization {
    /// Time-ordered, on the original timeline, with the transcript's text.
    pub turns: Vec<Turn>,
    /// 1 or 2.
    pub speakers_found: usize,
    pub method: String,
}

/// Joins consecutive spans of one voice separated by at most `max_pause_s`.
pub fn group_turns(spans: &[VoiceSpan], max_pause_s: f64) -> Vec<TurnSpan> {
    let mut turns: Vec<TurnSpan> = Vec::new();
    for s in spans {
        let len = s.end_s - s.start_s;
        match turns.last_mut() {
            Some(t) if t.voice == s.voice && s.start_s - t.end_s <= max_pause_s + 1e-9 => {
                t.absorb(s.end_s, len, s.confidence);
            }
            _ => turns.push(TurnSpan {
                start_s: s.start_s,
                end_s: s.end_s,
                voice: s.voice,
                speech_s: len,
                confidence: s.confidence,
            }),
        }
    }
    turns
}

/// A change of voice this close (s) to a turn counts as touching it.
const TOUCHING_S: f64 = 0.15;

/// Folds a backchannel into the turn it interrupts: a turn with less than `min_speech_s` of
/// speech (too short to transcribe alone) between two turns of the other voice, touching one of
/// them and at most `max_pause_s` from both. Sent as its own sliver it would cut the other
/// voice's words in two (and its own text is never sent); folded, the other voice's piece runs
/// through it whole.
pub fn fold_backchannels(turns: &[TurnSpan], min_speech_s: f64, max_pause_s: f64) -> Vec<TurnSpan> {
    let mut out: Vec<TurnSpan> = Vec::with_capacity(turns.len());
    let mut i = 0;
    while i < turns.len() {
        let t = turns[i];
        let folds = |prev: &TurnSpan| {
            turns.get(i + 1).is_some_and(|next| {
                let (before, after) = (t.start_s - prev.end_s, next.start_s - t.end_s);
                t.speech_s < min_speech_s
                    && prev.voice == next.voice
                    && prev.voice != t.voice
                    && before.min(after) <= TOUCHING_S
                    && before.max(after) <= max_pause_s
            })
        };
        match out.last_mut() {
            Some(prev) if folds(prev) => {
                let next = turns[i + 1];
                prev.absorb(next.end_s, next.speech_s, next.confidence);
                // the backchannel's speech is in the turn now; its voice's label is not
                prev.speech_s += t.speech_s;
                i += 2;
            }
            _ => {
                out.push(t);
                i += 1;
            }
        }
    }
    out
}

/// Gives each transcript segment to the turn it lies in (by its midpoint; the nearest turn when
/// it lies in a pause) and decides the roles from the words.
pub fn label_turns(
    timeline: &SpeakerTimeline,
    turns: &[TurnSpan],
    transcript: &Transcript,
) -> Diarization {
    let mut texts: Vec<Vec<(f64, &str)>> = vec![Vec::new(); turns.len()];
    for seg in transcript
        .segments
        .iter()
        .filter(|s| !s.text.trim().is_empty())
    {
        let mid = 0.5 * (seg.start_s + seg.end_s);
        let distance = |t: &TurnSpan| (t.start_s - mid).max(mid - t.end_s).max(0.0);
        if let Some(i) =
            (0..turns.len()).min_by(|&a, &b| distance(&turns[a]).total_cmp(&distance(&turns[b])))
        {
            texts[i].push((seg.start_s, seg.text.as_str()));
        }
    }
    let texts: Vec<String> = texts
        .into_iter()
        .map(|mut parts| {
            parts.sort_by(|a, b| a.0.total_cmp(&b.0));
            join_text(parts.into_iter().map(|p| p.1))
        })
        .collect();
    let roles = if timeline.speakers_found == 2 {
        // two voices: never a whole session "unknown"; on a tie the weaker evidence decides,
        // with the low confidence it deserves
        let r = roles::assign(&role_cues(turns, &texts));
        roles::Roles {
            coach: r.coach.or(Some(usize::from(r.score < 0.0))),
            ..r
        }
    } else {
        roles::Roles {
            coach: None,
            confidence: 0.0,
            score: 0.0,
        }
    };
    let turns = turns
        .iter()
        .zip(texts)
        .map(|(t, text)| {
            let (speaker, confidence) = match roles.coach {
                Some(c) if usize::from(t.voice) == c => (
                    Speaker::Coach,
                    roles.confidence * (0.5 + 0.5 * t.confidence),
                ),
                Some(_) => (
                    Speaker::Client,
                    roles.confidence * (0.5 + 0.5 * t.confidence),
                ),
                None => (Speaker::Unknown, 0.0),
            };
            Turn {
                start_s: t.start_s,
                end_s: t.end_s,
                speaker,
                text,
                confidence,
            }
        })
        .collect();
    Diarization {
        turns,
        speakers_found: timeline.speakers_found,
        method: timeline.method.clone(),
    }
}

fn role_cues(turns: &[TurnSpan], texts: &[String]) -> roles::RoleCues {
    let mut cues = roles::RoleCues::default();
    for (t, text) in turns.iter().zip(texts) {
        let k = usize::from(t.voice.min(1));
        cues.talk_s[k] += t.speech_s;
        if !text.is_empty() {
            cues.turns_with_text[k] += 1;
            cues.question_turns[k] += usize::from(roles::is_question(text));
        }
    }
    cues.first = turns.first().map(|t| usize::from(t.voice.min(1)));
    cues
}

/// Joins pieces of text: with a space, or without one between pieces of Japanese/Chinese.
pub fn join_text<'a>(parts: impl Iterator<Item = &'a str>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Segment;

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

    fn turn(a: f64, b: f64, voice: u8, speech_s: f64) -> TurnSpan {
        TurnSpan {
            start_s: a,
            end_s: b,
            voice,
            speech_s,
            confidence: 1.0,
        }
    }

    #[test]
    fn a_backchannel_inside_the_other_voice_is_folded_into_its_turn() {
        let turns = [
            turn(0.0, 5.0, 0, 5.0),
            turn(5.0, 5.4, 1, 0.4), // "Right." over the end of a word: folded
            turn(5.4, 9.0, 0, 3.6),
            turn(9.5, 12.0, 1, 2.5),
            turn(12.5, 12.9, 0, 0.4), // alone between pauses: cuts no word, stays
            turn(13.4, 15.0, 1, 1.6),
            turn(15.0, 16.0, 0, 1.0), // long enough to send alone: stays
            turn(16.0, 18.0, 1, 2.0),
        ];
        let folded = fold_backchannels(&turns, 0.5, 2.0);
        let spans: Vec<(f64, f64, u8)> = folded
            .iter()
            .map(|t| (t.start_s, t.end_s, t.voice))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0.0, 9.0, 0),
                (9.5, 12.0, 1),
                (12.5, 12.9, 0),
                (13.4, 15.0, 1),
                (15.0, 16.0, 0),
                (16.0, 18.0, 1)
            ]
        );
        assert!((folded[0].speech_s - 9.0).abs() < 1e-9);
    }

    #[test]
    fn turns_join_one_voice_over_short_pauses_only() {
        let spans = [
            VoiceSpan::sure(0.0, 1.0, 0),
            VoiceSpan::sure(1.5, 2.0, 0),
            VoiceSpan::sure(2.0, 5.0, 1),
            VoiceSpan::sure(8.0, 9.0, 1),
        ];
        let turns = group_turns(&spans, 2.0);
        let bounds: Vec<(f64, f64, u8)> = turns
            .iter()
            .map(|t| (t.start_s, t.end_s, t.voice))
            .collect();
        assert_eq!(bounds, vec![(0.0, 2.0, 0), (2.0, 5.0, 1), (8.0, 9.0, 1)]);
        assert!((turns[0].speech_s - 1.5).abs() < 1e-9);
    }

    #[test]
    fn text_goes_to_its_turn_and_the_questioner_is_the_coach() {
        let timeline = SpeakerTimeline {
            spans: vec![
                VoiceSpan::sure(0.0, 2.0, 1),
                VoiceSpan::sure(2.0, 9.0, 0),
                VoiceSpan::sure(9.5, 11.0, 1),
                VoiceSpan::sure(11.5, 20.0, 0),
            ],
            speakers_found: 2,
            method: "test".into(),
            frame_db: Vec::new(),
        };
        let turns = group_turns(&timeline.spans, 0.2);
        let t = Transcript {
            language: "en".into(),
            source: "test".into(),
            segments: vec![
                seg(0.0, 2.0, "How was your week?"),
                seg(2.0, 5.0, "Busy, but good."),
                seg(5.0, 9.0, "I planned every morning."),
                seg(9.5, 11.0, "What helped most?"),
                seg(11.5, 20.0, "Writing the plan down."),
            ],
        };
        let d = label_turns(&timeline, &turns, &t);
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
        assert_eq!(d.turns[1].text, "Busy, but good. I planned every morning.");
    }

    #[test]
    fn one_voice_gives_unknown_roles() {
        let timeline = SpeakerTimeline {
            spans: vec![VoiceSpan::sure(0.0, 2.0, 0), VoiceSpan::sure(3.0, 4.0, 0)],
            speakers_found: 1,
            method: "test".into(),
            frame_db: Vec::new(),
        };
        let turns = group_turns(&timeline.spans, 0.5);
        let d = label_turns(&timeline, &turns, &Transcript::default());
        assert_eq!(d.turns.len(), 2);
        assert!(
            d.turns
                .iter()
                .all(|t| t.speaker == Speaker::Unknown && t.text.is_empty())
        );
    }

    #[test]
    fn japanese_text_joins_without_spaces() {
        assert_eq!(
            join_text(["今日は。", "よろしく", "Hello", "there"].into_iter()),
            "今日は。よろしく Hello there"
        );
    }
}
