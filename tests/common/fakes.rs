//! Local fakes of OpenAI's transcription endpoint and Gemini's generateContent, speaking their
//! documented wire formats, for tests that run the whole daemon.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const OPENAI_KEY: &str = "sk-test-openai-FAKE-SECRET";
pub const GOOGLE_KEY: &str = "google-test-FAKE-SECRET";
pub const GEMINI_MODEL: &str = "gemini-test";
pub const WHISPER_PATH: &str = "/v1/audio/transcriptions";

/// The transcription model the daemon tests run (the product's default, text only).
pub const WHISPER_MODEL: &str = "gpt-transcribe";

/// OpenAI's transcription endpoint for one recording: it hears only the audio it is sent (the
/// piece is found in `recording` by its samples, see `truth.rs`) and answers the words of
/// `truth` spoken inside it, as `json` (text only) or `verbose_json` (segments) as asked, after
/// `delay`.
pub async fn whisper(recording: &Path, truth: &Path, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(WHISPER_PATH))
        .and(header(
            "authorization",
            format!("Bearer {OPENAI_KEY}").as_str(),
        ))
        .respond_with(HearsOnlyThePiece {
            recording: super::truth::Recording::prepare(recording),
            words: super::truth::Truth::load(truth).words(),
            delay,
        })
        .mount(&server)
        .await;
    // `audio-worker check` asks whether the model exists (GET /v1/models/{model}).
    Mock::given(method("GET"))
        .and(path(format!("/v1/models/{WHISPER_MODEL}")))
        .and(header(
            "authorization",
            format!("Bearer {OPENAI_KEY}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": WHISPER_MODEL, "object": "model", "created": 1677532384, "owned_by": "system"
        })))
        .mount(&server)
        .await;
    server
}

struct HearsOnlyThePiece {
    recording: super::truth::Recording,
    words: Vec<super::truth::Word>,
    delay: Duration,
}

impl wiremock::Respond for HearsOnlyThePiece {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        let Some(samples) = uploaded_wav(&req.body) else {
            return ResponseTemplate::new(400).set_body_json(
                json!({"error": {"message": "Invalid file format.", "type": "invalid_request_error", "param": "file", "code": null}}),
            );
        };
        let Some((start, end)) = self.recording.locate(&samples) else {
            // audio this fake never heard: a server that cannot understand it says nothing
            return ResponseTemplate::new(200)
                .set_body_json(json!({"text": ""}))
                .set_delay(self.delay);
        };
        let heard = super::truth::heard(&self.words, start, end);
        let text = super::truth::join_words(heard.iter().copied());
        let verbose = String::from_utf8_lossy(&req.body).contains("verbose_json");
        let body = if verbose {
            let segments: Vec<Value> = heard
                .iter()
                .enumerate()
                .map(|(i, w)| json!({"id": i, "seek": 0, "start": (w.start_s - start).max(0.0), "end": (w.end_s - start).min(end - start), "text": format!(" {}", w.text), "tokens": [], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.2, "no_speech_prob": 0.01}))
                .collect();
            json!({"task": "transcribe", "language": "english", "duration": end - start, "text": text, "segments": segments})
        } else {
            json!({"text": text, "usage": {"type": "duration", "seconds": (end - start).ceil()}})
        };
        ResponseTemplate::new(200)
            .set_body_json(body)
            .set_delay(self.delay)
    }
}

/// The WAV file inside a multipart upload, as samples.
fn uploaded_wav(body: &[u8]) -> Option<Vec<i16>> {
    let at = body.windows(4).position(|w| w == b"RIFF")?;
    let size = u32::from_le_bytes(body.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    let wav = body.get(at..at + 8 + size)?;
    let reader = hound::WavReader::new(std::io::Cursor::new(wav)).ok()?;
    reader
        .into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

/// OPENAI_BASE_URL for a fake.
pub fn openai_base(server: &MockServer) -> String {
    format!("{}/v1", server.uri())
}

/// A valid analysis whose quotes are all in the clear dialogue's transcript.
pub fn clear_dialogue_analysis() -> Value {
    let skill = |score: u8, quote: &str| json!({"score": score, "comment": "根拠あり", "examples": [{"quote": quote}]});
    json!({
        "skills": {
            "listening": skill(4, "What makes it hard to start?"),
            "questioning": skill(5, "What would you like to focus on today?"),
            "empathy": skill(3, "What might get in the way?"),
            "feedback": skill(2, "When could you write that?")
        },
        "emotions": {
            "coach": {"positive": 0.5, "neutral": 0.5, "negative": 0.0},
            "client": {"positive": 0.3, "neutral": 0.4, "negative": 0.3}
        },
        "events": [{"time_s": 29.3, "kind": "commitment", "description": "a concrete plan for tomorrow"}],
        "diagnosis": {"name": "Focused questioner", "icon": "🎯", "description": "open questions led to a plan"},
        "prescriptions": [{"title": "Reflect feelings", "detail": "name the worry before moving on"}]
    })
}

/// Gemini's documented success envelope around one text part.
pub fn gemini_reply(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 300, "totalTokenCount": 1300},
        "modelVersion": GEMINI_MODEL,
        "responseId": "fake-1"
    }))
}

/// A Gemini that answers `analysis` to every generateContent call with our key.
pub async fn gemini(analysis: &Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/v1beta/models/{GEMINI_MODEL}:generateContent"
        )))
        .and(header("x-goog-api-key", GOOGLE_KEY))
        .respond_with(gemini_reply(&analysis.to_string()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1beta/models/{GEMINI_MODEL}")))
        .and(header("x-goog-api-key", GOOGLE_KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": format!("models/{GEMINI_MODEL}"),
            "version": "001",
            "displayName": "Gemini Test",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"]
        })))
        .mount(&server)
        .await;
    server
}
