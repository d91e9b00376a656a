//! Conversation metrics: deterministic numbers computed from the diarised turns, never guessed by
//! the model (the model receives them as facts).
//!
//! Definitions (every number below follows from them exactly):
//! - **Valid turn**: a [`Turn`] whose start and end are finite; a turn with `end < start` counts
//!   as zero length. Turns are processed in start order (ties: earlier end first), whatever order
//!   they arrive in.
//! - **Merged turn** (the unit of "a turn"): a maximal run of consecutive turns (in start order)
//!   of the same speaker, where each next turn starts less than [`MERGE_GAP_S`] (1 s) after the
//!   run's end so far. Any other speaker's turn in between ends the run, so a back-channel
//!   ("うん") splits the other speaker's turn. A merged turn spans from its first start to its
//!   last end, including its short internal pauses.
//! - **Speaking time** of a speaker: the length of the union of that speaker's turns (internal
//!   pauses are not speech). **Speaking ratio**: speaking time / sum of the three speakers'
//!   speaking times (0 when nobody speaks); the three ratios sum to 1.
//! - **Gini coefficient** of speaking time across coach and client: the two-value Gini with the
//!   small-sample correction n/(n-1), i.e. `|coach - client| / (coach + client)`; 0 = perfectly
//!   balanced, 1 = only one of them speaks (0 when neither speaks). Unknown is left out.
//! - **Overlap**: two merged turns of different speakers whose spans intersect for a positive
//!   time. Its length is the intersection. The turn that starts later started while the other
//!   was still talking: it is an **interruption** by the later speaker of the earlier one. Two
//!   turns starting at the same instant overlap without an interruption. Total overlap time is
//!   the sum over overlapping pairs.
//! - **Silence**: a gap of at least [`MIN_SILENCE_S`] (3 s) between the end of all speech so far
//!   and the next start of speech. Time before the first and after the last speech is not a
//!   conversational silence and is not counted.
//! - **Question**: each turn's text is split into sentences after `。．.！!？?` and line breaks.
//!   A sentence is a question when it ends with `?` or `？`, or, once trailing `。．.` and
//!   spaces are removed, it ends with `か` (covers か。/ですか/ますか/でしょうか/ませんか);
//!   the bare back-channels そうですか/そうか/そっか are not questions.
//! - **Speech rate**: one unit for the whole session. When more than half of the letters and
//!   digits in all turns are ASCII, words per minute (whitespace-separated tokens that contain a
//!   letter or digit); otherwise characters per minute (letters and digits of any script: kana,
//!   kanji, latin, digits; no punctuation, no spaces). Minutes are the speaker's speaking time;
//!   `None` when the speaker has no speaking time.
//! - **Longest monologue**: the longest merged turn (earliest on a tie).

use serde::{Deserialize, Serialize};

use crate::conversation::{Speaker, Turn};

/// Same-speaker turns separated by less than this are one turn.
pub const MERGE_GAP_S: f64 = 1.0;
/// A pause in the conversation at least this long is a silence.
pub const MIN_SILENCE_S: f64 = 3.0;

/// Everything we measure about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationMetrics {
    /// The recording's duration as given to [`compute`].
    pub duration_s: f64,
    pub speakers: PerSpeaker<SpeakerMetrics>,
    /// `|coach - client| / (coach + client)` of speaking time, 0..=1.
    pub gini_speaking_time: f64,
    pub turns: TurnMetrics,
    pub overlaps: OverlapMetrics,
    pub silences: SilenceMetrics,
    /// The unit of every `speech_rate` in this session.
    pub speech_rate_unit: RateUnit,
    pub longest_monologue: Option<Monologue>,
}

/// One value per role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerSpeaker<T> {
    pub coach: T,
    pub client: T,
    pub unknown: T,
}

impl<T> PerSpeaker<T> {
    pub fn get(&self, speaker: Speaker) -> &T {
        match speaker {
            Speaker::Coach => &self.coach,
            Speaker::Client => &self.client,
            Speaker::Unknown => &self.unknown,
        }
    }

    pub fn get_mut(&mut self, speaker: Speaker) -> &mut T {
        match speaker {
            Speaker::Coach => &mut self.coach,
            Speaker::Client => &mut self.client,
            Speaker::Unknown => &mut self.unknown,
        }
    }
}

const ROLES: [Speaker; 3] = [Speaker::Coach, Speaker::Client, Speaker::Unknown];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeakerMetrics {
    /// Union of the speaker's turns, seconds.
    pub speaking_s: f64,
    /// Share of all speaking time, 0..=1.
    pub speaking_ratio: f64,
    /// Number of merged turns.
    pub turns: usize,
    /// Mean merged-turn length, seconds (0 without turns).
    pub mean_turn_s: f64,
    /// Sentences recognised as questions.
    pub questions: usize,
    /// How often this speaker started while someone else was still talking.
    pub interruptions: usize,
    /// In [`ConversationMetrics::speech_rate_unit`]; `None` without speaking time.
    pub speech_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnMetrics {
    /// The merge rule's gap, seconds ([`MERGE_GAP_S`]).
    pub merge_gap_s: f64,
    /// Merged turns of all speakers.
    pub count: usize,
    /// Mean merged-turn length, seconds (0 without turns).
    pub mean_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapMetrics {
    pub count: usize,
    pub total_s: f64,
    /// Every overlap in time order.
    pub events: Vec<Overlap>,
}

/// Two speakers talking at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    pub start_s: f64,
    pub end_s: f64,
    /// The speaker who was already talking (or, on a simultaneous start, the one listed first).
    pub first: Speaker,
    /// The speaker who started while `first` was talking.
    pub second: Speaker,
    /// `second` started strictly after `first`: `second` interrupted `first`.
    pub interruption: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilenceMetrics {
    /// The threshold, seconds ([`MIN_SILENCE_S`]).
    pub min_s: f64,
    pub count: usize,
    pub total_s: f64,
    /// `[start_s, end_s]` of every silence in time order.
    pub spans: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    CharsPerMinute,
    WordsPerMinute,
}

/// The longest merged turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monologue {
    pub speaker: Speaker,
    pub start_s: f64,
    pub duration_s: f64,
}

/// A merged turn: one speaker's span.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    speaker: Speaker,
    start: f64,
    end: f64,
}

/// Computes every metric of the module documentation from the turns of one recording.
pub fn compute(turns: &[Turn], duration_s: f64) -> ConversationMetrics {
    let mut valid: Vec<&Turn> = turns
        .iter()
        .filter(|t| t.start_s.is_finite() && t.end_s.is_finite())
        .collect();
    valid.sort_by(|a, b| {
        a.start_s
            .total_cmp(&b.start_s)
            .then(a.end_s.total_cmp(&b.end_s))
    });
    let end_of = |t: &Turn| t.end_s.max(t.start_s);

    // Merged turns.
    let mut merged: Vec<Span> = Vec::new();
    for t in &valid {
        match merged.last_mut() {
            Some(last) if last.speaker == t.speaker && t.start_s - last.end < MERGE_GAP_S => {
                last.end = last.end.max(end_of(t));
            }
            _ => merged.push(Span {
                speaker: t.speaker,
                start: t.start_s,
                end: end_of(t),
            }),
        }
    }

    let mut speakers: PerSpeaker<SpeakerMetrics> = PerSpeaker::default();

    // Speaking time: union of each speaker's own turns.
    for role in ROLES {
        let intervals: Vec<(f64, f64)> = valid
            .iter()
            .filter(|t| t.speaker == role)
            .map(|t| (t.start_s, end_of(t)))
            .collect();
        speakers.get_mut(role).speaking_s = union_length(&intervals);
    }
    let total_speech: f64 = ROLES.iter().map(|r| speakers.get(*r).speaking_s).sum();
    for role in ROLES {
        let m = speakers.get_mut(role);
        m.speaking_ratio = if total_speech > 0.0 {
            m.speaking_s / total_speech
        } else {
            0.0
        };
    }

    let (coach, client) = (speakers.coach.speaking_s, speakers.client.speaking_s);
    let gini_speaking_time = if coach + client > 0.0 {
        (coach - client).abs() / (coach + client)
    } else {
        0.0
    };

    // Turn counts and lengths.
    for role in ROLES {
        let lengths: Vec<f64> = merged
            .iter()
            .filter(|s| s.speaker == role)
            .map(|s| s.end - s.start)
            .collect();
        let m = speakers.get_mut(role);
        m.turns = lengths.len();
        m.mean_turn_s = mean(&lengths);
    }
    let all_lengths: Vec<f64> = merged.iter().map(|s| s.end - s.start).collect();
    let turn_metrics = TurnMetrics {
        merge_gap_s: MERGE_GAP_S,
        count: merged.len(),
        mean_s: mean(&all_lengths),
    };

    // Overlaps: merged spans are in start order, so every later-starting partner of span i is
    // found by scanning forward until a span starts at or after span i's end.
    let mut events = Vec::new();
    for (i, a) in merged.iter().enumerate() {
        for b in &merged[i + 1..] {
            if b.start >= a.end {
                break;
            }
            if a.speaker == b.speaker {
                continue;
            }
            let (start, end) = (b.start, a.end.min(b.end));
            if end <= start {
                continue;
            }
            let interruption = b.start > a.start;
            if interruption {
                speakers.get_mut(b.speaker).interruptions += 1;
            }
            events.push(Overlap {
                start_s: start,
                end_s: end,
                first: a.speaker,
                second: b.speaker,
                interruption,
            });
        }
    }
    events.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let overlaps = OverlapMetrics {
        count: events.len(),
        // fold from +0.0: `sum()` of no floats is -0.0, which would print as "-0.0 s".
        total_s: events
            .iter()
            .fold(0.0, |acc, e| acc + (e.end_s - e.start_s)),
        events,
    };

    // Silences between speech.
    let mut spans = Vec::new();
    let mut speech_end: Option<f64> = None;
    for s in &merged {
        if let Some(prev_end) = speech_end
            && s.start - prev_end >= MIN_SILENCE_S
        {
            spans.push([prev_end, s.start]);
        }
        speech_end = Some(speech_end.map_or(s.end, |e: f64| e.max(s.end)));
    }
    let silences = SilenceMetrics {
        min_s: MIN_SILENCE_S,
        count: spans.len(),
        total_s: spans.iter().fold(0.0, |acc, [a, b]| acc + (b - a)),
        spans,
    };

    // Questions and speech rate.
    let (mut ascii, mut alnum) = (0usize, 0usize);
    for t in &valid {
        for c in t.text.chars().filter(|c| c.is_alphanumeric()) {
            alnum += 1;
            if c.is_ascii() {
                ascii += 1;
            }
        }
    }
    let speech_rate_unit = if ascii * 2 > alnum {
        RateUnit::WordsPerMinute
    } else {
        RateUnit::CharsPerMinute
    };
    for role in ROLES {
        let texts = valid.iter().filter(|t| t.speaker == role).map(|t| &t.text);
        let (mut questions, mut units) = (0usize, 0usize);
        for text in texts {
            questions += count_questions(text);
            units += match speech_rate_unit {
                RateUnit::WordsPerMinute => count_words(text),
                RateUnit::CharsPerMinute => count_chars(text),
            };
        }
        let m = speakers.get_mut(role);
        m.questions = questions;
        m.speech_rate = (m.speaking_s > 0.0).then(|| units as f64 / (m.speaking_s / 60.0));
    }

    let longest_monologue = merged
        .iter()
        .fold(None::<&Span>, |best, s| match best {
            Some(b) if b.end - b.start >= s.end - s.start => Some(b),
            _ => Some(s),
        })
        .map(|s| Monologue {
            speaker: s.speaker,
            start_s: s.start,
            duration_s: s.end - s.start,
        });

    ConversationMetrics {
        duration_s,
        speakers,
        gini_speaking_time,
        turns: turn_metrics,
        overlaps,
        silences,
        speech_rate_unit,
        longest_monologue,
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Length of the union of intervals.
fn union_length(intervals: &[(f64, f64)]) -> f64 {
    let mut sorted = intervals.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (s, e) in sorted {
        match current {
            Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                current = Some((s, e));
            }
            None => current = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

const SENTENCE_ENDS: [char; 8] = ['。', '．', '.', '！', '!', '？', '?', '\n'];
const BACKCHANNELS: [&str; 3] = ["そうですか", "そうか", "そっか"];

/// Questions in a text, by the rule of the module documentation.
pub fn count_questions(text: &str) -> usize {
    text.split_inclusive(SENTENCE_ENDS)
        .filter(|s| is_question(s))
        .count()
}

fn is_question(sentence: &str) -> bool {
    let s = sentence.trim();
    if s.ends_with('?') || s.ends_with('？') {
        return true;
    }
    let core =
        s.trim_end_matches(|c: char| c == '。' || c == '．' || c == '.' || c.is_whitespace());
    core.ends_with('か') && !BACKCHANNELS.contains(&core)
}

fn count_words(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

fn count_chars(text: &str) -> usize {
    text.chars().filter(|c| c.is_alphanumeric()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: f64, end: f64, speaker: Speaker, text: &str) -> Turn {
        Turn {
            start_s: start,
            end_s: end,
            speaker,
            text: text.into(),
            confidence: 0.9,
        }
    }
    use Speaker::{Client as L, Coach as C, Unknown as U};

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn empty_input_gives_zeros_not_nan() {
        let m = compute(&[], 60.0);
        assert_eq!(m.turns.count, 0);
        close(m.turns.mean_s, 0.0);
        close(m.gini_speaking_time, 0.0);
        close(m.speakers.coach.speaking_ratio, 0.0);
        assert_eq!(m.speakers.coach.speech_rate, None);
        assert_eq!(m.longest_monologue, None);
        assert_eq!(m.silences.count, 0);
        // Serialises (no NaN, which JSON cannot hold).
        serde_json::to_string(&m).unwrap();
    }

    #[test]
    fn speaking_time_ratio_and_gini() {
        // Coach 0-30 and 40-50 (40 s), client 30-40 and 50-70 (30 s), unknown 70-80 (10 s).
        let turns = [
            t(0.0, 30.0, C, "a"),
            t(30.0, 40.0, L, "b"),
            t(40.0, 50.0, C, "c"),
            t(50.0, 70.0, L, "d"),
            t(70.0, 80.0, U, "e"),
        ];
        let m = compute(&turns, 80.0);
        close(m.speakers.coach.speaking_s, 40.0);
        close(m.speakers.client.speaking_s, 30.0);
        close(m.speakers.unknown.speaking_s, 10.0);
        close(m.speakers.coach.speaking_ratio, 0.5);
        close(m.speakers.client.speaking_ratio, 0.375);
        close(m.speakers.unknown.speaking_ratio, 0.125);
        // |40 - 30| / 70
        close(m.gini_speaking_time, 10.0 / 70.0);
        close(m.duration_s, 80.0);
    }

    #[test]
    fn gini_is_one_when_only_one_role_speaks_and_zero_when_balanced() {
        let m = compute(&[t(0.0, 10.0, C, "x")], 10.0);
        close(m.gini_speaking_time, 1.0);
        let m = compute(&[t(0.0, 10.0, C, "x"), t(10.0, 20.0, L, "y")], 20.0);
        close(m.gini_speaking_time, 0.0);
    }

    #[test]
    fn speaking_time_is_a_union_and_excludes_pauses() {
        // Two overlapping coach segments (0-10, 5-12) and one after a 0.5 s pause (12.5-14):
        // speech 12 + 1.5 = 13.5 s; one merged turn 0-14.
        let turns = [
            t(5.0, 12.0, C, ""),
            t(0.0, 10.0, C, ""),
            t(12.5, 14.0, C, ""),
        ];
        let m = compute(&turns, 20.0);
        close(m.speakers.coach.speaking_s, 13.5);
        assert_eq!(m.speakers.coach.turns, 1);
        close(m.speakers.coach.mean_turn_s, 14.0);
    }

    #[test]
    fn turns_merge_only_below_one_second_and_without_another_speaker_between() {
        let turns = [
            t(0.0, 2.0, C, ""),
            t(2.9, 4.0, C, ""),   // gap 0.9 -> merged: coach 0-4
            t(5.0, 6.0, C, ""),   // gap exactly 1.0 -> new turn
            t(6.2, 6.5, L, ""),   // client back-channel
            t(6.6, 8.0, C, ""),   // same speaker as before the back-channel, but a new turn
            t(20.0, 22.0, L, ""), // client again after a long pause: new turn
        ];
        let m = compute(&turns, 30.0);
        assert_eq!(m.turns.count, 5);
        assert_eq!(m.speakers.coach.turns, 3);
        assert_eq!(m.speakers.client.turns, 2);
        // Coach turns 4 + 1 + 1.4, client 0.3 + 2.
        close(m.speakers.coach.mean_turn_s, 6.4 / 3.0);
        close(m.speakers.client.mean_turn_s, 2.3 / 2.0);
        close(m.turns.mean_s, 8.7 / 5.0);
        close(m.turns.merge_gap_s, 1.0);
    }

    #[test]
    fn overlaps_and_who_interrupted_whom() {
        let turns = [
            t(0.0, 10.0, C, ""),
            t(8.0, 15.0, L, ""), // client starts at 8 while coach talks until 10: 2 s
            t(14.0, 20.0, C, ""), // coach starts at 14 while client talks until 15: 1 s
            t(30.0, 35.0, C, ""),
            t(30.0, 31.0, L, ""), // simultaneous start: overlap 1 s, no interruption
            t(40.0, 50.0, L, ""),
            t(42.0, 43.0, U, ""), // unknown inside client's turn: 1 s
        ];
        let m = compute(&turns, 60.0);
        assert_eq!(m.overlaps.count, 4);
        close(m.overlaps.total_s, 5.0);
        assert_eq!(m.speakers.client.interruptions, 1);
        assert_eq!(m.speakers.coach.interruptions, 1);
        assert_eq!(m.speakers.unknown.interruptions, 1);
        let e = &m.overlaps.events;
        assert_eq!((e[0].first, e[0].second, e[0].interruption), (C, L, true));
        close(e[0].start_s, 8.0);
        close(e[0].end_s, 10.0);
        assert_eq!((e[1].first, e[1].second, e[1].interruption), (L, C, true));
        close(e[1].start_s, 14.0);
        close(e[1].end_s, 15.0);
        assert!(!e[2].interruption);
        close(e[2].start_s, 30.0);
        close(e[2].end_s, 31.0);
        assert_eq!((e[3].first, e[3].second), (L, U));
        close(e[3].end_s - e[3].start_s, 1.0);
    }

    #[test]
    fn touching_turns_do_not_overlap() {
        let m = compute(&[t(0.0, 5.0, C, ""), t(5.0, 9.0, L, "")], 10.0);
        assert_eq!(m.overlaps.count, 0);
        close(m.overlaps.total_s, 0.0);
        assert!(
            m.overlaps.total_s.is_sign_positive(),
            "no overlap is +0, not -0"
        );
    }

    #[test]
    fn silences_of_three_seconds_or_more_between_speech_only() {
        let turns = [
            t(5.0, 10.0, C, ""),  // 5 s of leading silence: not counted
            t(12.9, 15.0, L, ""), // gap 2.9: not a silence
            t(18.0, 20.0, C, ""), // gap exactly 3.0: a silence
            t(19.0, 30.0, L, ""), // overlaps; speech runs to 30
            t(21.0, 22.0, C, ""), // inside the client's turn: no gap after 22
            t(40.0, 41.0, C, ""), // gap 10 from 30 (not from 22)
        ];
        let m = compute(&turns, 100.0); // 59 s of trailing silence: not counted
        assert_eq!(m.silences.count, 2);
        assert_eq!(m.silences.spans, vec![[15.0, 18.0], [30.0, 40.0]]);
        close(m.silences.total_s, 13.0);
        close(m.silences.min_s, 3.0);
    }

    #[test]
    fn question_rule() {
        assert_eq!(count_questions("それはどういう意味ですか？"), 1);
        assert_eq!(count_questions("どう思いますか。"), 1);
        assert_eq!(count_questions("何が一番大事でしょうか"), 1);
        assert_eq!(count_questions("やってみませんか。そうしましょう。"), 1);
        assert_eq!(count_questions("本当にそうか。"), 1);
        assert_eq!(count_questions("What do you want? Tell me more."), 1);
        assert_eq!(count_questions("なるほど。そうですか。"), 0);
        assert_eq!(count_questions("そっか"), 0);
        assert_eq!(count_questions("頑張ります。"), 0);
        assert_eq!(count_questions("いつから？ 誰と？ どこで？"), 3);
        assert_eq!(count_questions(""), 0);
    }

    #[test]
    fn questions_per_speaker() {
        let turns = [
            t(
                0.0,
                5.0,
                C,
                "今日は何を話したいですか？どんな気持ちですか。",
            ),
            t(5.0, 10.0, L, "仕事のことです。どうすればいいでしょうか"),
            t(10.0, 12.0, C, "そうですか。"),
        ];
        let m = compute(&turns, 12.0);
        assert_eq!(m.speakers.coach.questions, 2);
        assert_eq!(m.speakers.client.questions, 1);
        assert_eq!(m.speakers.unknown.questions, 0);
    }

    #[test]
    fn japanese_speech_rate_is_characters_per_minute() {
        // Coach: "今日は、何を話したいですか？" has 12 letters (punctuation excluded) in 6 s
        // -> 120/min. Client: "仕事 の 話です" has 6 letters (spaces excluded) in 2 s -> 180/min.
        let turns = [
            t(0.0, 6.0, C, "今日は、何を話したいですか？"),
            t(6.0, 8.0, L, "仕事 の 話です"),
        ];
        let m = compute(&turns, 10.0);
        assert_eq!(m.speech_rate_unit, RateUnit::CharsPerMinute);
        close(m.speakers.coach.speech_rate.unwrap(), 120.0);
        close(m.speakers.client.speech_rate.unwrap(), 180.0);
        assert_eq!(m.speakers.unknown.speech_rate, None);
    }

    #[test]
    fn english_speech_rate_is_words_per_minute() {
        let turns = [
            t(0.0, 30.0, C, "What would you like to talk about today?"), // 8 words / 0.5 min
            t(30.0, 60.0, L, "My work , mostly."), // "," is not a word: 3 words / 0.5 min
        ];
        let m = compute(&turns, 60.0);
        assert_eq!(m.speech_rate_unit, RateUnit::WordsPerMinute);
        close(m.speakers.coach.speech_rate.unwrap(), 16.0);
        close(m.speakers.client.speech_rate.unwrap(), 6.0);
    }

    #[test]
    fn longest_monologue_is_the_longest_merged_turn() {
        let turns = [
            t(0.0, 10.0, C, ""),
            t(10.0, 20.0, L, ""),
            t(20.5, 31.0, L, ""), // merged with the previous: client 10-31 = 21 s
            t(31.0, 52.0, C, ""), // 21 s too, but later: the earlier one wins
        ];
        let m = compute(&turns, 60.0);
        let mono = m.longest_monologue.unwrap();
        assert_eq!(mono.speaker, L);
        close(mono.start_s, 10.0);
        close(mono.duration_s, 21.0);
    }

    #[test]
    fn unsorted_and_broken_turns_are_handled() {
        let turns = [
            t(10.0, 12.0, L, ""),
            t(f64::NAN, 3.0, C, "ignored"),
            t(0.0, 4.0, C, ""),
            t(5.0, 4.0, U, ""), // end before start: zero length
        ];
        let m = compute(&turns, 20.0);
        close(m.speakers.coach.speaking_s, 4.0);
        close(m.speakers.unknown.speaking_s, 0.0);
        assert_eq!(m.turns.count, 3);
        assert_eq!(m.silences.spans, vec![[5.0, 10.0]]);
    }

    #[test]
    fn serialises_with_snake_case_names() {
        let m = compute(&[t(0.0, 1.0, C, "はい")], 1.0);
        let v = serde_json::to_value(&m).unwrap();
        assert!(v["speakers"]["coach"]["speaking_ratio"].is_number());
        assert_eq!(v["speech_rate_unit"], "chars_per_minute");
        assert_eq!(v["longest_monologue"]["speaker"], "coach");
        let back: ConversationMetrics = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
