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

/// A Whisper that answers every chunk with the `verbose_json` transcript in `transcript` (the
/// fixture recordings are shorter than one chunk), after `delay`.
pub async fn whisper(transcript: &Path, delay: Duration) -> MockServer {
    let body: Value = serde_json::from_slice(&std::fs::read(transcript).unwrap()).unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(WHISPER_PATH))
        .and(header(
            "authorization",
            format!("Bearer {OPENAI_KEY}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(delay),
        )
        .mount(&server)
        .await;
    // `audio-worker check` asks whether the model exists (GET /v1/models/{model}).
    Mock::given(method("GET"))
        .and(path("/v1/models/whisper-1"))
        .and(header("authorization", format!("Bearer {OPENAI_KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "whisper-1", "object": "model", "created": 1677532384, "owned_by": "openai-internal"
        })))
        .mount(&server)
        .await;
    server
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
