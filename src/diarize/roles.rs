//! Which of the two voices is the coach, from conversational cues: a coach asks more questions,
//! usually opens the session and talks less than the client.

/// Conversational evidence gathered per speaker (index 0 and 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleCues {
    /// Turns with text.
    pub turns_with_text: [usize; 2],
    /// Of those, turns that contain a question.
    pub question_turns: [usize; 2],
    /// Seconds of talk.
    pub talk_s: [f64; 2],
    /// Who speaks first.
    pub first: Option<usize>,
}

/// The outcome: which index is the coach (if the evidence says so) and how sure we are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roles {
    pub coach: Option<usize>,
    /// 0..=1; below the tie threshold `coach` is `None`.
    pub confidence: f32,
    /// Signed evidence for speaker 0 being the coach (for logs and tests).
    pub score: f64,
}

/// Weights of the cues; a difference of one question per turn outweighs everything else.
const W_QUESTIONS: f64 = 2.0;
const W_FIRST: f64 = 0.3;
const W_SHARE: f64 = 1.0;
/// Evidence below this is a tie: roles unknown.
pub const TIE: f64 = 0.15;

pub fn assign(cues: &RoleCues) -> Roles {
    let rate = |k: usize| {
        if cues.turns_with_text[k] == 0 {
            0.0
        } else {
            cues.question_turns[k] as f64 / cues.turns_with_text[k] as f64
        }
    };
    let mut score = 0.0;
    if cues.turns_with_text[0] + cues.turns_with_text[1] > 0 {
        score += W_QUESTIONS * (rate(0) - rate(1));
    }
    match cues.first {
        Some(0) => score += W_FIRST,
        Some(1) => score -= W_FIRST,
        _ => {}
    }
    let total = cues.talk_s[0] + cues.talk_s[1];
    if total > 0.0 {
        // share of talk of speaker 1 minus speaker 0: positive when 0 talks less
        score += W_SHARE * (cues.talk_s[1] - cues.talk_s[0]) / total;
    }
    let confidence = score.abs().tanh() as f32;
    let coach = if score.abs() < TIE {
        None
    } else if score > 0.0 {
        Some(0)
    } else {
        Some(1)
    };
    Roles {
        coach,
        confidence,
        score,
    }
}

/// Whether a piece of text asks a question: a question mark (ASCII or full width), a Japanese
/// sentence ending in a question particle (か, かな, でしょうか, ますか, ですか, の？), or an
/// English sentence opening with an interrogative when the transcriber left out the mark.
pub fn is_question(text: &str) -> bool {
    sentences(text).any(sentence_is_question)
}

/// How many sentences of `text` are questions.
pub fn count_questions(text: &str) -> usize {
    sentences(text).filter(|s| sentence_is_question(s)).count()
}

fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(['.', '?', '!', '。', '？', '！'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn sentence_is_question(s: &str) -> bool {
    let s = s.trim();
    if s.ends_with('?') || s.ends_with('？') {
        return true;
    }
    let body = s.trim_end_matches(['。', '.', '!', '！', ' ', '　']);
    const JA: [&str; 6] = ["か", "かな", "かね", "でしょうか", "ますか", "ですか"];
    if JA.iter().any(|p| body.ends_with(p)) && body.chars().any(is_cjk) {
        return true;
    }
    if s.ends_with('.') || s.ends_with('!') {
        return false; // punctuated as a statement
    }
    // no end punctuation at all: an English interrogative opening
    let lower = body.to_lowercase();
    const WH: [&str; 16] = [
        "what ",
        "how ",
        "why ",
        "when ",
        "where ",
        "who ",
        "which ",
        "do you ",
        "did you ",
        "are you ",
        "can you ",
        "could you ",
        "would you ",
        "is there ",
        "have you ",
        "will you ",
    ];
    WH.iter().any(|w| lower.starts_with(w))
}

/// Hiragana, katakana, CJK ideographs and full-width punctuation: text written without spaces.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x309F | 0x30A0..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0xAC00..=0xD7AF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_in_english_and_japanese() {
        assert!(is_question("What would you like to focus on today?"));
        assert!(is_question("I see. How did that feel"));
        assert!(!is_question("I planned each morning."));
        assert!(!is_question("What I did was plan."));
        assert!(is_question("今日は何について話したいですか。"));
        assert!(is_question("それはどう感じましたか"));
        assert!(is_question("どうして？"));
        assert!(!is_question("毎朝計画を立てました。"));
        assert_eq!(count_questions("Good. Why? And how?"), 2);
    }

    #[test]
    fn the_questioner_who_talks_less_is_the_coach() {
        let cues = RoleCues {
            turns_with_text: [5, 5],
            question_turns: [0, 5],
            talk_s: [40.0, 12.0],
            first: Some(1),
        };
        let r = assign(&cues);
        assert_eq!(r.coach, Some(1));
        assert!(r.confidence > 0.9, "{r:?}");
    }

    #[test]
    fn balanced_evidence_is_a_tie() {
        let cues = RoleCues {
            turns_with_text: [4, 4],
            question_turns: [2, 2],
            talk_s: [30.0, 30.0],
            first: None,
        };
        assert_eq!(assign(&cues).coach, None);
        // Talk share and the opening alone can decide, less confidently.
        let cues = RoleCues {
            talk_s: [10.0, 30.0],
            first: Some(0),
            ..cues
        };
        let r = assign(&cues);
        assert_eq!(r.coach, Some(0));
        assert!(r.confidence < 0.7, "{r:?}");
    }
}
