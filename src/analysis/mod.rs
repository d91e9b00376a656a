//! Conversation metrics (ours, deterministic) and the coaching analysis (a model's judgement,
//! validated before anyone sees it).
//!
//! - [`metrics`]: numbers computed from the turns; the model is given them, never asked for them.
//! - [`CoachingAnalysis`]: the model's assessment, in the shape published as
//!   `schemas/analysis.schema.json`; [`validate`] checks every rule of that schema plus that each
//!   quoted example really occurs in the transcript.
//! - [`Analyzer`]: the port; [`gemini::GeminiAnalyzer`] is the Gemini adapter.

pub mod gemini;
pub mod metrics;
pub mod prompt;

use serde::{Deserialize, Serialize};

use crate::conversation::Turn;

/// What the analyzer is given.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisInput<'a> {
    pub turns: &'a [Turn],
    pub metrics: &'a metrics::ConversationMetrics,
    /// BCP-47-ish language of the session ("ja", "en-US"); the analysis is written in it
    /// (Japanese unless it starts with "en").
    pub language: &'a str,
    pub duration_s: f64,
}

/// The analysis port: Gemini in production, a fake in tests, nothing in `replay --no-analysis`.
pub trait Analyzer: Send + Sync {
    /// Model or adapter name for the result's provenance.
    fn name(&self) -> String;
    fn analyze<'a>(
        &'a self,
        input: &'a AnalysisInput<'a>,
    ) -> crate::BoxFuture<'a, crate::Result<Analyzed>>;
}

/// A validated analysis and what producing it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Analyzed {
    pub analysis: CoachingAnalysis,
    pub report: AnalysisReport,
}

/// What the analysis cost and what was dropped from it (the result's `analysis_report`), so
/// cost is visible and a dropped example is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisReport {
    /// Model requests that produced a reply (the first, and the corrective one if it was needed).
    pub requests: u32,
    /// Examples removed because their quote was still not in the transcript after the
    /// corrective request (each skill kept at least one verified example).
    pub dropped_examples: u32,
    /// Tokens over all those requests, as the model reported them.
    pub usage: TokenUsage,
}

/// Token counts of Gemini's `usageMetadata`, summed over requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// `promptTokenCount`.
    pub prompt_tokens: u64,
    /// `candidatesTokenCount`: the reply.
    pub output_tokens: u64,
    /// `thoughtsTokenCount`: thinking, billed as output.
    pub thinking_tokens: u64,
}

impl TokenUsage {
    pub fn add(&mut self, other: TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.output_tokens += other.output_tokens;
        self.thinking_tokens += other.thinking_tokens;
    }
}

/// The JSON Schema of [`CoachingAnalysis`], sent to the model as its response schema.
pub const SCHEMA_JSON: &str = include_str!("../../schemas/analysis.schema.json");

/// A coaching supervisor's analysis of one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoachingAnalysis {
    pub skills: Skills,
    pub emotions: Emotions,
    pub events: Vec<ConversationEvent>,
    pub diagnosis: Diagnosis,
    pub prescriptions: Vec<Prescription>,
}

/// The coach's four core skills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skills {
    pub listening: SkillAssessment,
    pub questioning: SkillAssessment,
    pub empathy: SkillAssessment,
    pub feedback: SkillAssessment,
}

impl Skills {
    /// `(name, assessment)` in schema order, to change them.
    pub fn iter_mut(&mut self) -> [(&'static str, &mut SkillAssessment); 4] {
        [
            ("listening", &mut self.listening),
            ("questioning", &mut self.questioning),
            ("empathy", &mut self.empathy),
            ("feedback", &mut self.feedback),
        ]
    }

    /// `(name, assessment)` in schema order.
    pub fn iter(&self) -> [(&'static str, &SkillAssessment); 4] {
        [
            ("listening", &self.listening),
            ("questioning", &self.questioning),
            ("empathy", &self.empathy),
            ("feedback", &self.feedback),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillAssessment {
    /// 1..=5.
    pub score: u8,
    pub comment: String,
    /// 1..=3 verbatim quotes.
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Words copied verbatim from the transcript.
    pub quote: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emotions {
    pub coach: EmotionMix,
    pub client: EmotionMix,
}

/// Shares of tone, each 0..=1, summing to 1 (± [`SHARE_SUM_TOLERANCE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmotionMix {
    pub positive: f64,
    pub neutral: f64,
    pub negative: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationEvent {
    pub time_s: f64,
    pub kind: EventKind,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Insight,
    Resistance,
    EmotionShift,
    Commitment,
    TopicChange,
    Silence,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    pub name: String,
    /// One emoji.
    pub icon: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prescription {
    pub title: String,
    pub detail: String,
}

pub const MIN_SCORE: u8 = 1;
pub const MAX_SCORE: u8 = 5;
pub const MAX_EXAMPLES: usize = 3;
pub const MAX_EVENTS: usize = 20;
pub const MIN_PRESCRIPTIONS: usize = 1;
pub const MAX_PRESCRIPTIONS: usize = 5;
/// How far the emotion shares may sum away from 1.
pub const SHARE_SUM_TOLERANCE: f64 = 0.05;
/// Slack for times just past the end of the recording (rounding by the model).
const TIME_SLACK_S: f64 = 1.0;

/// Checks an analysis against every rule of `schemas/analysis.schema.json` (ranges, counts,
/// non-empty strings), that the emotion shares sum to 1 ± 0.05, that times lie inside the
/// recording, that the icon is an emoji, and that every quote occurs in the transcript (see
/// [`quote_occurs`]). Returns every problem found, joined by "; ", so a retry can fix them all.
pub fn validate(analysis: &CoachingAnalysis, input: &AnalysisInput<'_>) -> Result<(), String> {
    let mut problems = Vec::new();
    let haystack = transcript_haystack(input.turns);
    let max_time = input.duration_s.max(0.0) + TIME_SLACK_S;
    let non_empty = |problems: &mut Vec<String>, path: &str, s: &str| {
        if s.trim().is_empty() {
            problems.push(format!("{path} is empty"));
        }
    };

    for (name, skill) in analysis.skills.iter() {
        let path = format!("skills.{name}");
        if !(MIN_SCORE..=MAX_SCORE).contains(&skill.score) {
            problems.push(format!(
                "{path}.score is {}, must be an integer from {MIN_SCORE} to {MAX_SCORE}",
                skill.score
            ));
        }
        non_empty(&mut problems, &format!("{path}.comment"), &skill.comment);
        if skill.examples.is_empty() || skill.examples.len() > MAX_EXAMPLES {
            problems.push(format!(
                "{path}.examples has {} items, must have 1 to {MAX_EXAMPLES}",
                skill.examples.len()
            ));
        }
        for (i, ex) in skill.examples.iter().enumerate() {
            let p = format!("{path}.examples[{i}]");
            if ex.quote.trim().is_empty() {
                problems.push(format!("{p}.quote is empty"));
            } else if !quote_occurs(&haystack, &ex.quote) {
                problems.push(format!(
                    "{p}.quote \"{}\" does not occur in the transcript (quotes must be copied verbatim)",
                    ex.quote
                ));
            }
            if let Some(t) = ex.time_s {
                check_time(&mut problems, &format!("{p}.time_s"), t, max_time);
            }
        }
    }

    for (who, mix) in [
        ("coach", &analysis.emotions.coach),
        ("client", &analysis.emotions.client),
    ] {
        let path = format!("emotions.{who}");
        let shares = [
            ("positive", mix.positive),
            ("neutral", mix.neutral),
            ("negative", mix.negative),
        ];
        for (name, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                problems.push(format!("{path}.{name} is {v}, must be from 0 to 1"));
            }
        }
        let sum: f64 = shares.iter().map(|(_, v)| v).sum();
        if !sum.is_finite() || (sum - 1.0).abs() > SHARE_SUM_TOLERANCE {
            problems.push(format!(
                "{path} shares sum to {sum}, must sum to 1 (± {SHARE_SUM_TOLERANCE})"
            ));
        }
    }

    if analysis.events.len() > MAX_EVENTS {
        problems.push(format!(
            "events has {} items, at most {MAX_EVENTS} allowed",
            analysis.events.len()
        ));
    }
    for (i, e) in analysis.events.iter().enumerate() {
        check_time(
            &mut problems,
            &format!("events[{i}].time_s"),
            e.time_s,
            max_time,
        );
        non_empty(
            &mut problems,
            &format!("events[{i}].description"),
            &e.description,
        );
    }

    let d = &analysis.diagnosis;
    non_empty(&mut problems, "diagnosis.name", &d.name);
    non_empty(&mut problems, "diagnosis.description", &d.description);
    if !is_emoji(&d.icon) {
        problems.push(format!(
            "diagnosis.icon \"{}\" is not a single emoji",
            d.icon
        ));
    }

    let n = analysis.prescriptions.len();
    if !(MIN_PRESCRIPTIONS..=MAX_PRESCRIPTIONS).contains(&n) {
        problems.push(format!(
            "prescriptions has {n} items, must have {MIN_PRESCRIPTIONS} to {MAX_PRESCRIPTIONS}"
        ));
    }
    for (i, p) in analysis.prescriptions.iter().enumerate() {
        non_empty(
            &mut problems,
            &format!("prescriptions[{i}].title"),
            &p.title,
        );
        non_empty(
            &mut problems,
            &format!("prescriptions[{i}].detail"),
            &p.detail,
        );
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Parses a model's reply text as a [`CoachingAnalysis`] and [`validate`]s it.
pub fn parse_and_validate(
    text: &str,
    input: &AnalysisInput<'_>,
) -> Result<CoachingAnalysis, String> {
    let analysis: CoachingAnalysis = serde_json::from_str(text.trim())
        .map_err(|e| format!("the reply is not JSON of the required schema: {e}"))?;
    validate(&analysis, input)?;
    Ok(analysis)
}

/// The last word on a corrected reply: examples whose quote still does not occur in the
/// transcript are dropped (counted), rather than failing an otherwise sound analysis; it fails
/// only when a skill is left with no verified example, or on any other rule. Returns the
/// analysis and how many examples were dropped.
pub fn parse_dropping_unverified(
    text: &str,
    input: &AnalysisInput<'_>,
) -> Result<(CoachingAnalysis, u32), String> {
    let mut analysis: CoachingAnalysis = serde_json::from_str(text.trim())
        .map_err(|e| format!("the reply is not JSON of the required schema: {e}"))?;
    let dropped = drop_unverified_examples(&mut analysis, input)?;
    validate(&analysis, input)?;
    Ok((analysis, dropped))
}

/// Removes the examples whose (non-empty) quote does not occur in the transcript; an error
/// names each skill left without any example, and the quotes it lost.
pub fn drop_unverified_examples(
    analysis: &mut CoachingAnalysis,
    input: &AnalysisInput<'_>,
) -> Result<u32, String> {
    let haystack = transcript_haystack(input.turns);
    let mut dropped = 0;
    let mut emptied = Vec::new();
    for (name, skill) in analysis.skills.iter_mut() {
        let (kept, lost): (Vec<Example>, Vec<Example>) = std::mem::take(&mut skill.examples)
            .into_iter()
            .partition(|ex| ex.quote.trim().is_empty() || quote_occurs(&haystack, &ex.quote));
        if kept.is_empty() && !lost.is_empty() {
            let quotes: Vec<String> = lost.iter().map(|ex| format!("\"{}\"", ex.quote)).collect();
            emptied.push(format!(
                "skills.{name} has no example whose quote occurs in the transcript ({})",
                quotes.join(", ")
            ));
        }
        dropped += lost.len() as u32;
        skill.examples = kept;
    }
    if emptied.is_empty() {
        Ok(dropped)
    } else {
        Err(emptied.join("; "))
    }
}

fn check_time(problems: &mut Vec<String>, path: &str, t: f64, max_time: f64) {
    if !t.is_finite() || t < 0.0 || t > max_time {
        problems.push(format!(
            "{path} is {t}, must lie inside the recording (0 to {:.0} s)",
            max_time - TIME_SLACK_S
        ));
    }
}

/// One emoji: 1 to 8 characters (a ZWJ sequence, a flag or a keycap), no letters or digits,
/// and at least one character from the pictographic planes (U+2190 and up, excluding CJK and
/// kana so that "★" passes but "円" does not).
fn is_emoji(icon: &str) -> bool {
    let s = icon.trim();
    let n = s.chars().count();
    (1..=8).contains(&n)
        && !s.chars().any(|c| c.is_alphanumeric())
        && s.chars().any(|c| {
            let u = c as u32;
            (0x2190..=0x2BFF).contains(&u) || (0x1F000..=0x1FAFF).contains(&u) || u == 0x3030
        })
}

/// Separates turns of different speakers in the haystack, so a quote cannot span them.
const TURN_SEPARATOR: char = '\u{1}';
/// The ellipses a model may use to shorten a quote.
const ELLIPSES: [&str; 3] = ["…", "...", "・・・"];

/// The transcript as one string with all whitespace removed; consecutive turns of the same
/// speaker are joined (a sentence may be split across segments), other turns are separated.
fn transcript_haystack(turns: &[Turn]) -> String {
    let mut out = String::new();
    let mut previous = None;
    for t in turns {
        if previous.is_some() && previous != Some(t.speaker) {
            out.push(TURN_SEPARATOR);
        }
        out.extend(t.text.chars().filter(|c| !c.is_whitespace()));
        previous = Some(t.speaker);
    }
    out
}

/// Whether `quote` occurs in the haystack: whitespace is ignored on both sides (Whisper spaces
/// Japanese arbitrarily), quotation marks and punctuation at the quote's edges are ignored, and
/// an ellipsis (…, ..., ・・・) inside the quote stands for omitted words: the pieces must occur
/// in order within one speaker's run of turns. Anything else must match character for character.
pub fn quote_occurs(haystack: &str, quote: &str) -> bool {
    let mut q: String = quote.chars().filter(|c| !c.is_whitespace()).collect();
    for e in ELLIPSES {
        q = q.replace(e, "\u{0}");
    }
    let pieces: Vec<&str> = q
        .split('\u{0}')
        .map(|p| p.trim_matches(|c: char| is_edge_punctuation(c)))
        .filter(|p| !p.is_empty())
        .collect();
    if pieces.is_empty() {
        return false;
    }
    haystack.split(TURN_SEPARATOR).any(|run| {
        let mut rest = run;
        pieces.iter().all(|p| match rest.find(p) {
            Some(at) => {
                rest = &rest[at + p.len()..];
                true
            }
            None => false,
        })
    })
}

fn is_edge_punctuation(c: char) -> bool {
    matches!(
        c,
        '「' | '」'
            | '『'
            | '』'
            | '"'
            | '\''
            | '“'
            | '”'
            | '‘'
            | '’'
            | '。'
            | '、'
            | '．'
            | '，'
            | '.'
            | ','
            | '！'
            | '!'
            | '？'
            | '?'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Speaker;

    fn turns() -> Vec<Turn> {
        let t = |s: f64, e: f64, speaker, text: &str| Turn {
            start_s: s,
            end_s: e,
            speaker,
            text: text.into(),
            confidence: 0.9,
        };
        vec![
            t(
                0.0,
                5.0,
                Speaker::Coach,
                "今日は 何について 話したいですか？",
            ),
            t(5.0, 9.0, Speaker::Client, "仕事の優先順位で悩んでいます。"),
            t(9.0, 12.0, Speaker::Client, "上司との関係も。"),
            t(
                12.0,
                20.0,
                Speaker::Coach,
                "なるほど、優先順位で悩んでいるんですね。",
            ),
        ]
    }

    pub(crate) fn sample() -> CoachingAnalysis {
        let skill = |quote: &str, t: f64| SkillAssessment {
            score: 4,
            comment: "良い".into(),
            examples: vec![Example {
                quote: quote.into(),
                time_s: Some(t),
            }],
        };
        CoachingAnalysis {
            skills: Skills {
                listening: skill("優先順位で悩んでいるんですね", 12.0),
                questioning: skill("今日は何について話したいですか？", 0.0),
                empathy: skill("なるほど", 12.0),
                feedback: skill("優先順位で悩んでいるんですね。", 12.0),
            },
            emotions: Emotions {
                coach: EmotionMix {
                    positive: 0.5,
                    neutral: 0.5,
                    negative: 0.0,
                },
                client: EmotionMix {
                    positive: 0.1,
                    neutral: 0.5,
                    negative: 0.4,
                },
            },
            events: vec![ConversationEvent {
                time_s: 5.0,
                kind: EventKind::TopicChange,
                description: "テーマ設定".into(),
            }],
            diagnosis: Diagnosis {
                name: "傾聴型".into(),
                icon: "👂".into(),
                description: "よく聴いている".into(),
            },
            prescriptions: vec![Prescription {
                title: "沈黙を待つ".into(),
                detail: "質問の後 3 秒待つ".into(),
            }],
        }
    }

    fn check(a: &CoachingAnalysis) -> Result<(), String> {
        let turns = turns();
        let m = metrics::compute(&turns, 20.0);
        let input = AnalysisInput {
            turns: &turns,
            metrics: &m,
            language: "ja",
            duration_s: 20.0,
        };
        validate(a, &input)
    }

    #[test]
    fn a_valid_analysis_passes() {
        check(&sample()).unwrap();
    }

    #[test]
    fn every_violation_is_reported() {
        let mut a = sample();
        a.skills.listening.score = 7;
        a.skills.questioning.score = 0;
        a.skills.empathy.examples.clear();
        a.skills.feedback.comment = "  ".into();
        a.skills.feedback.examples[0].quote = "私はあなたを完全に理解しています".into();
        a.skills.listening.examples[0].time_s = Some(99.0);
        a.emotions.client.negative = 0.9; // sum 1.5
        a.emotions.coach.positive = -0.1;
        a.events[0].time_s = -1.0;
        a.diagnosis.icon = "ear".into();
        a.prescriptions.clear();
        let err = check(&a).unwrap_err();
        for needle in [
            "skills.listening.score is 7",
            "skills.questioning.score is 0",
            "skills.empathy.examples has 0 items",
            "skills.feedback.comment is empty",
            "私はあなたを完全に理解しています\" does not occur",
            "skills.listening.examples[0].time_s is 99",
            "emotions.client shares sum to 1.5",
            "emotions.coach.positive is -0.1",
            "events[0].time_s is -1",
            "diagnosis.icon \"ear\"",
            "prescriptions has 0 items",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn too_many_items_are_rejected() {
        let mut a = sample();
        let p = a.prescriptions[0].clone();
        a.prescriptions = vec![p; 6];
        let ex = a.skills.listening.examples[0].clone();
        a.skills.listening.examples = vec![ex; 4];
        let err = check(&a).unwrap_err();
        assert!(err.contains("prescriptions has 6 items"), "{err}");
        assert!(
            err.contains("skills.listening.examples has 4 items"),
            "{err}"
        );
    }

    #[test]
    fn shares_may_be_off_by_rounding_only() {
        let mut a = sample();
        a.emotions.coach = EmotionMix {
            positive: 0.33,
            neutral: 0.33,
            negative: 0.33,
        };
        check(&a).unwrap();
        a.emotions.coach.negative = 0.2; // sum 0.86
        assert!(check(&a).unwrap_err().contains("emotions.coach shares sum"));
    }

    #[test]
    fn quote_matching_rules() {
        let h = transcript_haystack(&turns());
        // Whitespace differs from the transcript: fine.
        assert!(quote_occurs(&h, "今日は何について話したいですか"));
        assert!(quote_occurs(&h, "今日は 何 について"));
        // Quotation marks and edge punctuation are ignored.
        assert!(quote_occurs(&h, "「上司との関係も。」"));
        // Consecutive turns of one speaker are joined.
        assert!(quote_occurs(&h, "悩んでいます。上司との関係も"));
        // An ellipsis stands for omitted words, in order.
        assert!(quote_occurs(&h, "今日は…話したいですか"));
        assert!(!quote_occurs(&h, "話したいですか…今日は"));
        // A quote may not span two speakers.
        assert!(!quote_occurs(&h, "話したいですか？仕事の"));
        // Paraphrase, a changed character, or nothing at all: invalid.
        assert!(!quote_occurs(&h, "今日は何を話したいですか"));
        assert!(!quote_occurs(&h, "「」"));
        assert!(!quote_occurs(&h, ""));
    }

    #[test]
    fn emoji_rule() {
        for ok in ["👂", "🌱", "★", "👩‍🏫", "🇯🇵", "❤️"] {
            assert!(is_emoji(ok), "{ok}");
        }
        for bad in ["", "ear", "円", "🌱 growth", ":)"] {
            assert!(!is_emoji(bad), "{bad}");
        }
    }

    #[test]
    fn parse_rejects_unknown_fields_and_wrong_types() {
        let turns = turns();
        let m = metrics::compute(&turns, 20.0);
        let input = AnalysisInput {
            turns: &turns,
            metrics: &m,
            language: "ja",
            duration_s: 20.0,
        };
        let good = serde_json::to_string(&sample()).unwrap();
        parse_and_validate(&good, &input).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["skills"]["listening"]["score"] = serde_json::json!(4.5);
        let err = parse_and_validate(&v.to_string(), &input).unwrap_err();
        assert!(err.contains("not JSON of the required schema"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(parse_and_validate(&v.to_string(), &input).is_err());
        assert!(parse_and_validate("{\"skills\":", &input).is_err());
    }

    /// Checks a JSON value against the schema subset we publish (type, properties, required,
    /// items, enum, minimum, maximum, minItems, maxItems), so the schema and the types agree.
    fn conforms(schema: &serde_json::Value, v: &serde_json::Value, path: &str) -> Vec<String> {
        let mut errs = Vec::new();
        let ty = schema["type"].as_str().unwrap_or_default();
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            _ => false,
        };
        if !ok {
            return vec![format!("{path}: not a {ty}")];
        }
        if let Some(req) = schema["required"].as_array() {
            for r in req {
                if v.get(r.as_str().unwrap()).is_none() {
                    errs.push(format!("{path}: missing {r}"));
                }
            }
        }
        if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
            for (k, val) in obj {
                match props.get(k) {
                    Some(s) => errs.extend(conforms(s, val, &format!("{path}.{k}"))),
                    None => errs.push(format!("{path}: {k} is not in the schema")),
                }
            }
        }
        if let Some(arr) = v.as_array() {
            if schema["minItems"]
                .as_u64()
                .is_some_and(|min| (arr.len() as u64) < min)
            {
                errs.push(format!("{path}: fewer than minItems"));
            }
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|max| (arr.len() as u64) > max)
            {
                errs.push(format!("{path}: more than maxItems"));
            }
            for (i, item) in arr.iter().enumerate() {
                errs.extend(conforms(&schema["items"], item, &format!("{path}[{i}]")));
            }
        }
        if let Some(x) = v.as_f64()
            && (schema["minimum"].as_f64().is_some_and(|m| x < m)
                || schema["maximum"].as_f64().is_some_and(|m| x > m))
        {
            errs.push(format!("{path}: {x} out of range"));
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            errs.push(format!("{path}: {v} not in enum"));
        }
        errs
    }

    #[test]
    fn the_published_schema_uses_the_gemini_subset_and_matches_the_types() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        fn keywords(s: &serde_json::Value) {
            let allowed = [
                "type",
                "properties",
                "required",
                "items",
                "enum",
                "minimum",
                "maximum",
                "minItems",
                "maxItems",
                "description",
            ];
            for (k, v) in s.as_object().unwrap() {
                assert!(allowed.contains(&k.as_str()), "keyword {k} not allowed");
                if k == "properties" {
                    v.as_object().unwrap().values().for_each(keywords);
                } else if k == "items" {
                    keywords(v);
                }
            }
        }
        keywords(&schema);
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(conforms(&schema, &v, "$"), Vec::<String>::new());
        // Every enum value of the type is in the schema, and the schema names nothing else.
        let kinds = &schema["properties"]["events"]["items"]["properties"]["kind"]["enum"];
        for k in kinds.as_array().unwrap() {
            serde_json::from_value::<EventKind>(k.clone()).unwrap();
        }
        assert_eq!(kinds.as_array().unwrap().len(), 7);
        // A violation the validator catches is caught by the schema too.
        let mut bad = sample();
        bad.skills.listening.score = 7;
        bad.prescriptions.clear();
        let errs = conforms(&schema, &serde_json::to_value(bad).unwrap(), "$");
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
