//! Scores of a diarised transcript against a fixture's truth: DER (md-eval style), who said what
//! (attribution), text recall and precision, roles.

use audio_worker::conversation::{Speaker, Turn};

use super::truth::{Truth, Word, is_cjk};

/// Scoring grid and forgiveness collar around each reference boundary (seconds).
const STEP: f64 = 0.01;
const COLLAR: f64 = 0.25;
/// A word may be found in a turn up to this far (s) from its own time.
const NEAR_S: f64 = 0.5;

/// A speaker's stretch of speech: (start, end, speaker).
pub type Span = (f64, f64, String);

pub fn read_rttm(text: &str) -> Vec<Span> {
    text.lines()
        .filter(|l| l.starts_with("SPEAKER "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, dur): (f64, f64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
            (start, start + dur, f[7].to_string())
        })
        .collect()
}

pub fn role_name(s: Speaker) -> &'static str {
    match s {
        Speaker::Coach => "coach",
        Speaker::Client => "client",
        Speaker::Unknown => "unknown",
    }
}

pub fn turns_to_spans(turns: &[Turn]) -> Vec<Span> {
    turns
        .iter()
        .map(|t| (t.start_s, t.end_s, role_name(t.speaker).to_string()))
        .collect()
}

fn speakers_at(spans: &[Span], t: f64) -> Vec<&str> {
    let mut v: Vec<&str> = spans
        .iter()
        .filter(|s| s.0 <= t && t < s.1)
        .map(|s| s.2.as_str())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Standard DER: (missed + false alarm + confusion) / reference speech, on a 10 ms grid,
/// overlapping speakers each counted, a 0.25 s collar around every reference boundary not
/// scored, and the hypothesis speakers mapped one-to-one onto the reference speakers so as to
/// maximise agreement (every mapping tried).
pub fn der(reference: &[Span], hyp: &[Span]) -> f64 {
    der_parts(reference, hyp).total()
}

/// DER's three parts, each a share of the reference speech.
#[derive(Debug, Clone, Copy, Default)]
pub struct DerParts {
    pub missed: f64,
    pub false_alarm: f64,
    pub confusion: f64,
}

impl DerParts {
    pub fn total(&self) -> f64 {
        self.missed + self.false_alarm + self.confusion
    }
}

/// [`der`] in its parts: speech missed, non-speech given a speaker, speech given the wrong one.
pub fn der_parts(reference: &[Span], hyp: &[Span]) -> DerParts {
    let end = reference
        .iter()
        .chain(hyp)
        .map(|s| s.1)
        .fold(0.0f64, f64::max);
    let boundaries: Vec<f64> = reference.iter().flat_map(|s| [s.0, s.1]).collect();
    let names = |spans: &[Span]| {
        let mut v: Vec<String> = spans.iter().map(|s| s.2.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let (ref_names, hyp_names) = (names(reference), names(hyp));
    let mut points: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for i in 0..=(end / STEP).ceil() as usize {
        let t = (i as f64 + 0.5) * STEP;
        if boundaries.iter().any(|b| (t - b).abs() < COLLAR) {
            continue;
        }
        points.push((speakers_at(reference, t), speakers_at(hyp, t)));
    }
    let mut mappings: Vec<Vec<Option<&str>>> = vec![vec![]];
    for _ in &hyp_names {
        let mut next = Vec::new();
        for m in &mappings {
            for choice in ref_names.iter().map(|r| Some(r.as_str())).chain([None]) {
                if choice.is_some() && m.contains(&choice) {
                    continue;
                }
                let mut m2 = m.clone();
                m2.push(choice);
                next.push(m2);
            }
        }
        mappings = next;
    }
    let correct = mappings
        .iter()
        .map(|m| {
            points
                .iter()
                .map(|(r, h)| {
                    h.iter()
                        .filter(|hn| {
                            let k = hyp_names.iter().position(|x| x == *hn).unwrap();
                            m[k].is_some_and(|rn| r.contains(&rn))
                        })
                        .count()
                })
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let (mut total, mut missed, mut fa, mut overlapped) = (0usize, 0usize, 0usize, 0usize);
    for (r, h) in &points {
        total += r.len();
        missed += r.len().saturating_sub(h.len());
        fa += h.len().saturating_sub(r.len());
        overlapped += r.len().min(h.len());
    }
    let confusion = overlapped - correct.min(overlapped);
    let share = |n: usize| n as f64 / total.max(1) as f64;
    DerParts {
        missed: share(missed),
        false_alarm: share(fa),
        confusion: share(confusion),
    }
}

/// Lowercase letters and digits only, so punctuation and case never decide a match.
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A turn's text as tokens: words, or characters in Japanese.
fn hyp_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        if w.chars().any(is_cjk) {
            out.extend(
                w.chars()
                    .map(|c| norm(&c.to_string()))
                    .filter(|t| !t.is_empty()),
            );
        } else {
            let n = norm(w);
            if !n.is_empty() {
                out.push(n);
            }
        }
    }
    out
}

/// What the text scores say.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextScore {
    /// Share of true characters found in a turn of the right speaker (roles as labelled, or
    /// swapped, whichever is better: roles are scored on their own).
    pub attribution: f64,
    /// Share of true characters found in any turn near their time.
    pub recall: f64,
    /// Share of the hypothesis' characters that match a true word near its time.
    pub precision: f64,
    /// The roles as labelled beat the swapped ones, and no turn with text is unknown.
    pub roles_right: bool,
}

/// Greedy matching of true words to hypothesis tokens near their time, speaker as `map` says
/// (`None`: any speaker). Returns matched true characters and per turn which tokens were used.
fn matched(
    words: &[Word],
    turns: &[Turn],
    map: Option<&dyn Fn(&str) -> &'static str>,
) -> (usize, Vec<Vec<bool>>) {
    let tokens: Vec<Vec<String>> = turns.iter().map(|t| hyp_tokens(&t.text)).collect();
    let mut used: Vec<Vec<bool>> = tokens.iter().map(|t| vec![false; t.len()]).collect();
    let mut chars = 0;
    // words by speaker run through turns in time order, so a token is found near its place
    let mut cursor = vec![0usize; turns.len()];
    for w in words {
        let key = norm(&w.text);
        let parts: Vec<String> = if w.cjk {
            w.text
                .chars()
                .map(|c| norm(&c.to_string()))
                .filter(|t| !t.is_empty())
                .collect()
        } else {
            vec![key.clone()]
        };
        if parts.is_empty() {
            continue;
        }
        let found = turns.iter().enumerate().find_map(|(ti, t)| {
            let near = t.start_s - NEAR_S <= w.end_s && w.start_s <= t.end_s + NEAR_S;
            let who_ok = map.is_none_or(|m| role_name(t.speaker) == m(&w.speaker));
            if !(near && who_ok) {
                return None;
            }
            // the first unused run of the word's parts from this turn's cursor on
            let toks = &tokens[ti];
            (cursor[ti]..toks.len())
                .chain(0..cursor[ti])
                .find(|&k| {
                    k + parts.len() <= toks.len()
                        && (0..parts.len()).all(|j| !used[ti][k + j] && toks[k + j] == parts[j])
                })
                .map(|k| (ti, k))
        });
        if let Some((ti, k)) = found {
            for j in 0..parts.len() {
                used[ti][k + j] = true;
            }
            cursor[ti] = k + parts.len();
            chars += key.chars().count();
        }
    }
    (chars, used)
}

pub fn text_score(truth: &Truth, turns: &[Turn]) -> TextScore {
    let words = truth.words();
    let total: usize = words
        .iter()
        .map(|w| norm(&w.text).chars().count())
        .sum::<usize>()
        .max(1);
    let same = |s: &str| -> &'static str { if s == "coach" { "coach" } else { "client" } };
    let swapped = |s: &str| -> &'static str { if s == "coach" { "client" } else { "coach" } };
    let (as_labelled, _) = matched(&words, turns, Some(&same));
    let (as_swapped, _) = matched(&words, turns, Some(&swapped));
    let (any, used) = matched(&words, turns, None);
    let tokens: Vec<Vec<String>> = turns.iter().map(|t| hyp_tokens(&t.text)).collect();
    let hyp_chars: usize = tokens.iter().flatten().map(|t| t.chars().count()).sum();
    let hyp_matched: usize = tokens
        .iter()
        .zip(&used)
        .flat_map(|(t, u)| {
            t.iter()
                .zip(u)
                .filter(|(_, u)| **u)
                .map(|(t, _)| t.chars().count())
        })
        .sum();
    let unknown_with_text = turns
        .iter()
        .any(|t| t.speaker == Speaker::Unknown && !t.text.is_empty());
    TextScore {
        attribution: as_labelled.max(as_swapped) as f64 / total as f64,
        recall: any as f64 / total as f64,
        precision: if hyp_chars == 0 {
            0.0
        } else {
            hyp_matched as f64 / hyp_chars as f64
        },
        roles_right: as_labelled > as_swapped && !unknown_with_text,
    }
}

/// Piece edges that fall inside a word (more than 20 ms from both of its ends).
pub fn cuts_inside_words(words: &[Word], edges: &[f64]) -> usize {
    edges
        .iter()
        .filter(|&&e| {
            words
                .iter()
                .any(|w| e > w.start_s + 0.02 && e < w.end_s - 0.02)
        })
        .count()
}
