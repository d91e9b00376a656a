//! The analysis prompt: a coaching supervisor's brief, our metrics as JSON (facts, not for the
//! model to recompute) and the timestamped, role-labelled transcript ("[12:34] コーチ: ...").
//!
//! Japanese unless the session's language starts with "en".
//!
//! Long sessions are trimmed explicitly to stay within `max_chars` (characters, not bytes):
//! the transcript keeps its beginning (up to 40 % of the transcript budget) and its end (up to
//! 40 %), and samples the middle at an even stride with what is left; every omitted run is
//! replaced by a marker line giving its time range and number of utterances, and a note before
//! the transcript tells the model what was cut and that the metrics cover the whole session.
//! A single utterance longer than an eighth of the budget is shortened (marked with "…").
//! [`CORRECTION_RESERVE`] characters are kept free for the correction a retry appends.

use super::AnalysisInput;
use crate::conversation::{Speaker, Turn};

/// About 100-200k tokens of Japanese: well inside a 1M-token context, cheap enough.
pub const DEFAULT_MAX_PROMPT_CHARS: usize = 400_000;
/// Characters kept free for [`with_correction`].
pub const CORRECTION_RESERVE: usize = 2_000;
/// The longest validation error repeated to the model.
const MAX_PROBLEM_CHARS: usize = 1_500;
/// Room kept for the trimming note (its numbers vary).
const NOTE_RESERVE: usize = 600;

/// What was left out of a trimmed transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimming {
    pub total_turns: usize,
    pub kept_head: usize,
    pub kept_middle: usize,
    pub kept_tail: usize,
    /// Utterances shortened because one alone was too long.
    pub shortened: usize,
}

impl Trimming {
    pub fn kept(&self) -> usize {
        self.kept_head + self.kept_middle + self.kept_tail
    }
}

#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    /// `None` when the whole transcript is in the prompt.
    pub trimming: Option<Trimming>,
}

/// Whether the prompt (and the analysis) is in English rather than Japanese.
pub fn is_english(language: &str) -> bool {
    language.trim().to_ascii_lowercase().starts_with("en")
}

/// `[mm:ss]`, or `[h:mm:ss]` from one hour on (seconds rounded down).
pub fn timestamp(seconds: f64) -> String {
    format!("[{}]", clock(seconds))
}

/// `mm:ss`, or `h:mm:ss` from one hour on (seconds rounded down; negative and NaN are 0).
fn clock(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

fn role(speaker: Speaker, en: bool) -> &'static str {
    match (speaker, en) {
        (Speaker::Coach, false) => "コーチ",
        (Speaker::Client, false) => "クライアント",
        (Speaker::Unknown, false) => "話者不明",
        (Speaker::Coach, true) => "Coach",
        (Speaker::Client, true) => "Client",
        (Speaker::Unknown, true) => "Unknown speaker",
    }
}

/// One transcript line: `[12:34] コーチ: text` (whitespace runs collapsed).
pub fn transcript_line(turn: &Turn, en: bool) -> String {
    let text = turn.text.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "{} {}: {}",
        timestamp(turn.start_s),
        role(turn.speaker, en),
        text
    )
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn instructions(en: bool, duration_s: f64) -> String {
    let duration = clock(duration_s);
    if en {
        format!(
            "You are an experienced coaching supervisor. Below is the transcript of a 1-on-1 \
coaching session between a coach and a client (length {duration}). Assess the coach and reply \
with JSON that follows the response schema.

Rules:
- Do not compute any numbers about the conversation (speaking time, ratios, turns, questions, \
silences, interruptions, speech rate). The \"Conversation metrics\" below were computed exactly \
by a program over the whole session; use and cite them as facts.
- Every examples[].quote must be copied verbatim from one transcript line: same words, same \
characters, no paraphrase, no translation, no merging of speakers. Use \"…\" only to leave out \
words inside one utterance. time_s is the time of that line in seconds.
- score: an integer from 1 (poor) to 5 (excellent), judged for listening, questioning, empathy \
and feedback.
- emotions: the share of positive, neutral and negative tone of the coach and of the client; \
the three shares of each sum to 1.
- events: notable moments (time_s in seconds from the start, kind, description).
- diagnosis: a short name for the session's type, exactly one emoji as icon, a description.
- prescriptions: 1 to 5 concrete pieces of advice for the coach.
- Write all text in English.
"
        )
    } else {
        format!(
            "あなたは経験豊富なコーチングのスーパーバイザーです。以下は、コーチとクライアントによる\
1対1のコーチングセッション(長さ {duration})の文字起こしです。コーチを評価し、応答スキーマに従った \
JSON で回答してください。

ルール:
- 会話についての数値(話した時間、比率、ターン数、質問数、沈黙、割り込み、話速など)は計算しないで\
ください。下の「会話指標」はプログラムがセッション全体から正確に計算したものです。事実として使い、\
必要なら引用してください。
- examples[].quote は文字起こしの1行から一字一句そのままコピーしてください。言い換え・要約・翻訳・\
話者をまたぐ結合は禁止です。1つの発言の途中を省くときだけ「…」を使えます。time_s はその行の時刻(秒)です。
- score は 1(不十分)から 5(卓越)の整数で、傾聴 (listening)、質問 (questioning)、共感 (empathy)、\
フィードバック (feedback) をそれぞれ評価してください。
- emotions: コーチとクライアントそれぞれの positive / neutral / negative の割合(各話者で合計 1)。
- events: 重要な場面(開始からの秒数 time_s、種類 kind、説明 description)。
- diagnosis: セッションのタイプを表す短い名前、アイコンとして絵文字1つ、説明。
- prescriptions: コーチへの具体的な改善提案を 1〜5 個。
- 文章はすべて日本語で書いてください。
"
        )
    }
}

fn trimming_note(t: &Trimming, en: bool) -> String {
    let omitted = t.total_turns - t.kept();
    if en {
        format!(
            "NOTE: the transcript is too long to include in full. Shown: {} of {} utterances \
(the first {}, the last {}, and {} sampled at even intervals from the middle{}). {} utterances \
are omitted; each gap is marked with a line \"[… omitted …]\". The conversation metrics cover the \
WHOLE session, including the omitted parts. Quote only from the lines shown.\n",
            t.kept(),
            t.total_turns,
            t.kept_head,
            t.kept_tail,
            t.kept_middle,
            if t.shortened > 0 {
                format!(
                    "; {} very long utterances are shortened, marked with …",
                    t.shortened
                )
            } else {
                String::new()
            },
            omitted
        )
    } else {
        format!(
            "注意: 文字起こしが長いため全文は載せていません。全 {} 発話のうち {} 発話を掲載しています\
(冒頭 {} 件、末尾 {} 件、中盤から等間隔に抽出した {} 件{})。省略した {} 発話の位置は「[… 省略 …]」の行で\
示します。会話指標は省略部分を含むセッション全体から計算したものです。引用は掲載された行からのみ行って\
ください。\n",
            t.total_turns,
            t.kept(),
            t.kept_head,
            t.kept_tail,
            t.kept_middle,
            if t.shortened > 0 {
                format!("。非常に長い {} 発話は途中を「…」で省略", t.shortened)
            } else {
                String::new()
            },
            omitted
        )
    }
}

fn omission_marker(turns: &[Turn], en: bool) -> String {
    let (first, last) = (&turns[0], &turns[turns.len() - 1]);
    let (from, to) = (clock(first.start_s), clock(last.end_s.max(last.start_s)));
    if en {
        format!("[… omitted: {} utterances, {from}–{to} …]", turns.len())
    } else {
        format!("[… 省略: {from}〜{to} の {} 発話 …]", turns.len())
    }
}

/// Builds the prompt for `input`, at most `max_chars - CORRECTION_RESERVE` characters long
/// (unless the instructions and metrics alone are longer, which no sane limit allows).
pub fn build(input: &AnalysisInput<'_>, max_chars: usize) -> Prompt {
    let en = is_english(input.language);
    let turns: Vec<&Turn> = input
        .turns
        .iter()
        .filter(|t| !t.text.trim().is_empty())
        .collect();
    let metrics = serde_json::to_string(input.metrics).unwrap_or_else(|_| "{}".into());
    let head = instructions(en, input.duration_s);
    let metrics_title = if en {
        "\nConversation metrics (JSON, computed by a program over the whole session):\n"
    } else {
        "\n会話指標(JSON、プログラムがセッション全体から計算):\n"
    };
    let transcript_title = if en {
        "\nTranscript ([minutes:seconds] speaker: words):\n"
    } else {
        "\n文字起こし([分:秒] 話者: 発言):\n"
    };
    let fixed = format!("{head}{metrics_title}{metrics}\n{transcript_title}");

    let lines: Vec<String> = turns.iter().map(|t| transcript_line(t, en)).collect();
    let full_cost: usize = lines.iter().map(|l| chars(l) + 1).sum();
    let limit = max_chars.saturating_sub(CORRECTION_RESERVE);
    if chars(&fixed) + full_cost <= limit {
        let mut text = fixed;
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        return Prompt {
            text,
            trimming: None,
        };
    }

    // Trim: budget for transcript lines and markers.
    let budget = limit.saturating_sub(chars(&fixed) + NOTE_RESERVE);
    let line_cap = (budget / 8).max(1);
    let mut shortened = 0;
    let lines: Vec<String> = lines
        .into_iter()
        .map(|l| {
            if chars(&l) > line_cap {
                shortened += 1;
                let mut cut: String = l.chars().take(line_cap.saturating_sub(1)).collect();
                cut.push('…');
                cut
            } else {
                l
            }
        })
        .collect();
    let cost = |i: usize| chars(&lines[i]) + 1;
    // Markers are at most this long (two timestamps of up to 11 characters, a count).
    let marker_cost = chars(&omission_marker(
        &[Turn {
            start_s: 359_999.0,
            end_s: 359_999.0,
            speaker: Speaker::Unknown,
            text: String::new(),
            confidence: 0.0,
        }],
        en,
    )) + 8;

    let n = lines.len();
    let mut used = 0;
    let mut head_n = 0;
    while head_n < n && used + cost(head_n) + marker_cost <= budget * 2 / 5 {
        used += cost(head_n);
        head_n += 1;
    }
    let mut tail_n = 0;
    let mut tail_used = 0;
    while head_n + tail_n < n && tail_used + cost(n - 1 - tail_n) <= budget * 2 / 5 {
        tail_used += cost(n - 1 - tail_n);
        tail_n += 1;
    }
    used += tail_used;
    let (mid_start, mid_end) = (head_n, n - tail_n);

    // Middle: evenly spaced picks, each followed (in the worst case) by one marker.
    let mut picks: Vec<usize> = Vec::new();
    let mid_len = mid_end - mid_start;
    if let Some(mid_avg) = (mid_start..mid_end)
        .map(cost)
        .sum::<usize>()
        .checked_div(mid_len)
    {
        let remaining = budget.saturating_sub(used + marker_cost);
        let avg = mid_avg + marker_cost;
        let k = (remaining / avg.max(1)).min(mid_len);
        if k > 0 {
            let step = mid_len as f64 / k as f64;
            picks = (0..k)
                .map(|j| mid_start + ((j as f64 + 0.5) * step) as usize)
                .map(|i| i.min(mid_end - 1))
                .collect();
            picks.dedup();
            let mut mid_used: usize = picks.iter().map(|&i| cost(i) + marker_cost).sum();
            while mid_used > remaining {
                let i = picks.pop().expect("non-empty while over budget");
                mid_used -= cost(i) + marker_cost;
            }
        }
    }

    let mut keep = vec![false; n];
    keep[..head_n].iter_mut().for_each(|k| *k = true);
    keep[mid_end..].iter_mut().for_each(|k| *k = true);
    picks.iter().for_each(|&i| keep[i] = true);

    let trimming = Trimming {
        total_turns: n,
        kept_head: head_n,
        kept_middle: picks.len(),
        kept_tail: tail_n,
        shortened,
    };
    let mut text = fixed;
    text.push_str(&trimming_note(&trimming, en));
    let mut i = 0;
    while i < n {
        if keep[i] {
            text.push_str(&lines[i]);
            text.push('\n');
            i += 1;
        } else {
            let start = i;
            while i < n && !keep[i] {
                i += 1;
            }
            let omitted: Vec<Turn> = turns[start..i].iter().map(|t| (*t).clone()).collect();
            text.push_str(&omission_marker(&omitted, en));
            text.push('\n');
        }
    }
    Prompt {
        text,
        trimming: Some(trimming),
    }
}

/// The prompt again, with the reason the previous reply was rejected appended.
pub fn with_correction(prompt: &str, problem: &str, language: &str) -> String {
    let mut problem: String = problem.chars().take(MAX_PROBLEM_CHARS).collect();
    if chars(&problem) == MAX_PROBLEM_CHARS {
        problem.push('…');
    }
    if is_english(language) {
        format!(
            "{prompt}\nYour previous reply was invalid because: {problem}\nReply again with JSON \
that follows the schema, copying every quote verbatim from the transcript.\n"
        )
    } else {
        format!(
            "{prompt}\n前回のあなたの回答は次の理由で無効でした(your previous reply was invalid \
because): {problem}\nスキーマに従った JSON で、引用は文字起こしから一字一句そのままコピーして、\
もう一度回答してください。\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics;

    fn turn(i: usize, text: &str) -> Turn {
        Turn {
            start_s: i as f64 * 5.0,
            end_s: i as f64 * 5.0 + 4.0,
            speaker: if i.is_multiple_of(2) {
                Speaker::Coach
            } else {
                Speaker::Client
            },
            text: text.into(),
            confidence: 0.9,
        }
    }

    fn build_for(turns: &[Turn], language: &str, max: usize) -> Prompt {
        let duration = turns.last().map_or(0.0, |t| t.end_s);
        let m = metrics::compute(turns, duration);
        let input = AnalysisInput {
            turns,
            metrics: &m,
            language,
            duration_s: duration,
        };
        build(&input, max)
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0.0), "[00:00]");
        assert_eq!(timestamp(754.9), "[12:34]");
        assert_eq!(timestamp(3600.0 + 62.0), "[1:01:02]");
        assert_eq!(timestamp(-3.0), "[00:00]");
        assert_eq!(timestamp(f64::NAN), "[00:00]");
    }

    #[test]
    fn short_session_is_in_full_japanese_with_metrics() {
        let turns = vec![
            turn(0, "今日は 何を話したい ですか？"),
            turn(1, "仕事のことです。"),
            turn(2, "   "),
        ];
        let p = build_for(&turns, "ja", DEFAULT_MAX_PROMPT_CHARS);
        assert!(p.trimming.is_none());
        assert!(p.text.contains("スーパーバイザー"));
        assert!(
            p.text
                .contains("[00:00] コーチ: 今日は 何を話したい ですか？\n")
        );
        assert!(p.text.contains("[00:05] クライアント: 仕事のことです。\n"));
        assert!(!p.text.contains("[00:10]"), "empty turns are left out");
        assert!(p.text.contains("\"gini_speaking_time\":"));
        assert!(p.text.contains("計算しないで"));
        assert!(p.text.contains("一字一句"));
    }

    #[test]
    fn english_when_the_language_is_english() {
        let turns = vec![turn(0, "What brings you here?")];
        let p = build_for(&turns, "en-US", DEFAULT_MAX_PROMPT_CHARS);
        assert!(p.text.contains("coaching supervisor"));
        assert!(p.text.contains("[00:00] Coach: What brings you here?"));
        assert!(!p.text.contains("コーチ"));
        let again = with_correction(&p.text, "score 7", "en");
        assert!(again.ends_with(
            "Your previous reply was invalid because: score 7\nReply again with JSON that \
follows the schema, copying every quote verbatim from the transcript.\n"
        ));
    }

    #[test]
    fn long_session_is_trimmed_within_the_limit_keeping_head_tail_and_middle_samples() {
        let turns: Vec<Turn> = (0..3000)
            .map(|i| {
                turn(
                    i,
                    &format!("発話番号{i:04}の内容です。少し長めの文章をここに書きます。"),
                )
            })
            .collect();
        let max = 60_000;
        let p = build_for(&turns, "ja", max);
        let t = p.trimming.clone().expect("must be trimmed");
        assert!(
            p.text.chars().count() <= max - CORRECTION_RESERVE,
            "{} chars",
            p.text.chars().count()
        );
        assert_eq!(t.total_turns, 3000);
        assert!(t.kept_head > 100 && t.kept_tail > 100, "{t:?}");
        assert!(t.kept_middle > 10, "{t:?}");
        assert!(t.kept() < 3000);
        // Beginning and end are there.
        assert!(p.text.contains("発話番号0000"));
        assert!(p.text.contains("発話番号2999"));
        // A middle sample exists: some line from the middle third.
        let middle_present = (1000..2000).any(|i| p.text.contains(&format!("発話番号{i:04}")));
        assert!(middle_present);
        // The model is told what was cut and that the metrics cover everything.
        assert!(
            p.text
                .contains(&format!("全 3000 発話のうち {} 発話を掲載", t.kept()))
        );
        assert!(p.text.contains("会話指標は省略部分を含むセッション全体"));
        assert!(p.text.contains("[… 省略: "));
        // Markers account for every omitted utterance.
        let omitted: usize = p
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("[… 省略: "))
            .map(|l| {
                let n = l.split(" の ").nth(1).unwrap();
                n.split(' ').next().unwrap().parse::<usize>().unwrap()
            })
            .sum();
        assert_eq!(omitted, 3000 - t.kept());
        // Lines stay in time order.
        let positions: Vec<usize> = [0usize, 1500, 2999]
            .iter()
            .filter_map(|i| p.text.find(&format!("発話番号{i:04}")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        // The correction still fits.
        let again = with_correction(&p.text, &"x".repeat(5000), "ja");
        assert!(again.chars().count() <= max, "{}", again.chars().count());
    }

    #[test]
    fn one_huge_utterance_is_shortened_not_dropped() {
        let turns = vec![
            turn(0, "こんにちは"),
            turn(1, &"あ".repeat(50_000)),
            turn(2, "終わり"),
        ];
        let p = build_for(&turns, "ja", 20_000);
        let t = p.trimming.expect("trimmed");
        assert_eq!(t.shortened, 1);
        assert!(p.text.chars().count() <= 20_000 - CORRECTION_RESERVE);
        assert!(p.text.contains("コーチ: こんにちは"));
        assert!(p.text.contains("コーチ: 終わり"));
        assert!(p.text.contains("クライアント: ああ"));
        assert!(p.text.contains("非常に長い 1 発話"));
    }
}
