//! The OpenAI transcription response bodies we read: `verbose_json` (Whisper: segments with
//! times), `json` (newer models: text only) and `diarized_json` (segments with speaker labels).
//! The sidecar files replayed offline are `verbose_json` too.

use serde::Deserialize;

use crate::conversation::Segment;

/// What one request (or sidecar file) said, times relative to the audio that was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkText {
    pub text: String,
    /// Empty when the model gives no timestamps (`json`).
    pub segments: Vec<Segment>,
    /// The language the model reports, if any ("japanese", "ja", ...).
    pub language: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    segments: Option<Vec<RawSegment>>,
}

#[derive(Deserialize)]
struct RawSegment {
    start: f64,
    end: f64,
    text: String,
    #[serde(default)]
    no_speech_prob: Option<f32>,
    #[serde(default)]
    avg_logprob: Option<f32>,
    #[serde(default)]
    speaker: Option<String>,
}

/// Parses a response body. An error names what is wrong, for the retry log and the final error.
pub fn parse(body: &[u8]) -> Result<ChunkText, String> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| format!("the response is not transcription JSON: {e}"))?;
    let mut segments = Vec::new();
    for s in body.segments.unwrap_or_default() {
        if !(s.start.is_finite() && s.end.is_finite() && s.start >= 0.0 && s.end >= s.start) {
            return Err(format!(
                "a segment has impossible times {}..{}",
                s.start, s.end
            ));
        }
        segments.push(Segment {
            start_s: s.start,
            end_s: s.end,
            text: s.text.trim().to_string(),
            no_speech_prob: s.no_speech_prob,
            avg_logprob: s.avg_logprob,
            speaker_label: s.speaker,
        });
    }
    let text = match body.text {
        Some(t) => t.trim().to_string(),
        None if !segments.is_empty() => segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        None => return Err("the response has neither text nor segments".into()),
    };
    Ok(ChunkText {
        text,
        segments,
        language: body.language,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_json() {
        let body = r#"{"task":"transcribe","language":"japanese","duration":8.47,
            "text":"こんにちは。元気ですか？",
            "segments":[{"id":0,"seek":0,"start":0.0,"end":1.5,"text":" こんにちは。","tokens":[1],
              "temperature":0.0,"avg_logprob":-0.25,"compression_ratio":1.1,"no_speech_prob":0.02},
              {"id":1,"seek":0,"start":1.5,"end":3.0,"text":"元気ですか？","tokens":[2],
              "temperature":0.0,"avg_logprob":-0.3,"compression_ratio":1.1,"no_speech_prob":0.01}]}"#;
        let t = parse(body.as_bytes()).unwrap();
        assert_eq!(t.segments.len(), 2);
        assert_eq!(t.segments[0].text, "こんにちは。");
        assert_eq!(t.segments[1].start_s, 1.5);
        assert_eq!(t.segments[0].no_speech_prob, Some(0.02));
        assert_eq!(t.language.as_deref(), Some("japanese"));
    }

    #[test]
    fn text_only_and_diarized() {
        let t =
            parse(br#"{"text":"hello there","usage":{"type":"duration","seconds":3}}"#).unwrap();
        assert!(t.segments.is_empty());
        assert_eq!(t.text, "hello there");
        let d = parse(br#"{"text":"a b","segments":[{"type":"transcript.text.segment","id":"seg_0","start":0.1,"end":0.9,"text":"a","speaker":"A"},{"type":"transcript.text.segment","id":"seg_1","start":1.0,"end":2.0,"text":"b","speaker":"B"}]}"#).unwrap();
        assert_eq!(d.segments[1].speaker_label.as_deref(), Some("B"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse(b"<html>502 Bad Gateway</html>").is_err());
        assert!(parse(br#"{"segments":[{"start":2.0,"end":1.0,"text":"x"}],"text":"x"}"#).is_err());
        assert!(parse(br#"{"usage":{}}"#).is_err());
    }
}
