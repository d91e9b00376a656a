//! The Gemini adapter against a local fake Gemini (wiremock) that speaks the documented wire
//! format: `POST /v1beta/models/{model}:generateContent`, `x-goog-api-key`, replies
//! `{candidates:[{content:{parts:[{text}]}, finishReason}]}`, errors `{error:{code,message,status}}`.

mod common;

use std::time::{Duration, Instant};

use audio_worker::ErrorCode;
use audio_worker::analysis::gemini::{GeminiAnalyzer, GeminiConfig};
use audio_worker::analysis::{AnalysisInput, Analyzer, CoachingAnalysis, SCHEMA_JSON, metrics};
use audio_worker::conversation::{Speaker, Turn};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "test-key-123";
const MODEL: &str = "gemini-test-flash";
const ENDPOINT: &str = "/v1beta/models/gemini-test-flash:generateContent";

fn turns() -> Vec<Turn> {
    let t = |s: f64, e: f64, speaker, text: &str| Turn {
        start_s: s,
        end_s: e,
        speaker,
        text: text.into(),
        confidence: 0.9,
    };
    vec![
        t(0.0, 4.0, Speaker::Coach, "今日は何について話したいですか？"),
        t(4.5, 12.0, Speaker::Client, "仕事の優先順位で悩んでいます。"),
        t(
            12.5,
            20.0,
            Speaker::Coach,
            "なるほど、優先順位で悩んでいるんですね。",
        ),
        t(
            24.0,
            30.0,
            Speaker::Client,
            "はい、まず上司と話してみます。",
        ),
        t(754.0, 760.0, Speaker::Coach, "素晴らしい一歩ですね。"),
    ]
}

fn valid_analysis() -> Value {
    let skill = |score: u8, quote: &str, t: f64| json!({"score": score, "comment": "具体的な根拠がある", "examples": [{"quote": quote, "time_s": t}]});
    json!({
        "skills": {
            "listening": skill(4, "優先順位で悩んでいるんですね", 12.5),
            "questioning": skill(3, "今日は何について話したいですか？", 0.0),
            "empathy": skill(4, "なるほど", 12.5),
            "feedback": skill(5, "素晴らしい一歩ですね。", 754.0)
        },
        "emotions": {
            "coach": {"positive": 0.6, "neutral": 0.4, "negative": 0.0},
            "client": {"positive": 0.3, "neutral": 0.4, "negative": 0.3}
        },
        "events": [{"time_s": 24.0, "kind": "commitment", "description": "上司と話すと決めた"}],
        "diagnosis": {"name": "伴走型", "icon": "🌱", "description": "クライアントの決断を支えた"},
        "prescriptions": [{"title": "沈黙を活かす", "detail": "質問の後に待つ"}]
    })
}

fn gemini_error(code: u16, status: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(code)
        .set_body_json(json!({"error": {"code": code, "message": message, "status": status}}))
}

fn config(server: &MockServer) -> GeminiConfig {
    let mut c = GeminiConfig::new(KEY);
    c.base_url = server.uri();
    c.model = MODEL.into();
    c.max_attempts = 4;
    c.request_timeout = Duration::from_secs(5);
    c.backoff_base = Duration::from_millis(5);
    c.backoff_cap = Duration::from_millis(20);
    c
}

async fn run(config: GeminiConfig) -> audio_worker::Result<CoachingAnalysis> {
    let turns = turns();
    let m = metrics::compute(&turns, 760.0);
    let input = AnalysisInput {
        turns: &turns,
        metrics: &m,
        language: "ja",
        duration_s: 760.0,
    };
    let analyzer = GeminiAnalyzer::new(config).unwrap();
    assert_eq!(analyzer.name(), MODEL);
    analyzer.analyze(&input).await.map(|a| a.analysis)
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r: &Request| r.body_json::<Value>().unwrap())
        .collect()
}

fn prompt_of(body: &Value) -> &str {
    body["contents"][0]["parts"][0]["text"].as_str().unwrap()
}

#[tokio::test]
async fn success_and_the_request_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("x-goog-api-key", KEY))
        .and(header("content-type", "application/json"))
        .respond_with(common::fakes::gemini_reply(&valid_analysis().to_string()))
        .expect(1)
        .mount(&server)
        .await;

    let analysis = run(config(&server)).await.unwrap();
    let expected: CoachingAnalysis = serde_json::from_value(valid_analysis()).unwrap();
    assert_eq!(analysis, expected);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    // The key travels in the header only, never in the URL.
    assert!(!requests[0].url.as_str().contains(KEY));
    let body = &bodies(&server).await[0];
    assert_eq!(body["contents"][0]["role"], "user");
    let gen_config = &body["generationConfig"];
    assert_eq!(gen_config["responseMimeType"], "application/json");
    let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    assert_eq!(gen_config["responseJsonSchema"], schema);
    let prompt = prompt_of(body);
    assert!(prompt.contains("[00:00] コーチ: 今日は何について話したいですか？\n"));
    assert!(prompt.contains("[12:34] コーチ: 素晴らしい一歩ですね。\n"));
    assert!(prompt.contains("\"gini_speaking_time\":"));
    assert!(prompt.contains("\"speech_rate_unit\":\"chars_per_minute\""));
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_waited_then_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(
            gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded")
                .insert_header("retry-after", "1"),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&valid_analysis().to_string()))
        .expect(1)
        .mount(&server)
        .await;

    let started = Instant::now();
    run(config(&server)).await.unwrap();
    let elapsed = started.elapsed();
    // Backoff alone is at most 20 ms here, so only Retry-After explains a wait of 1 s.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test]
async fn server_error_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(gemini_error(
            500,
            "INTERNAL",
            "An internal error has occurred.",
        ))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&valid_analysis().to_string()))
        .expect(1)
        .mount(&server)
        .await;
    run(config(&server)).await.unwrap();
}

#[tokio::test]
async fn exhausting_the_attempts_fails_with_gemini_failed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(gemini_error(503, "UNAVAILABLE", "The model is overloaded."))
        .expect(3)
        .mount(&server)
        .await;
    let mut c = config(&server);
    c.max_attempts = 3;
    let err = run(c).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiFailed);
    assert!(err.message.contains("after 3 attempts"), "{}", err.message);
    assert!(
        err.message.contains("The model is overloaded."),
        "{}",
        err.message
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_timed_out_request_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(
            common::fakes::gemini_reply(&valid_analysis().to_string())
                .set_delay(Duration::from_secs(3)),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&valid_analysis().to_string()))
        .expect(1)
        .mount(&server)
        .await;
    let mut c = config(&server);
    c.request_timeout = Duration::from_millis(300);
    let started = Instant::now();
    run(c).await.unwrap();
    // We gave up on the slow reply instead of waiting its 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_timeout_every_time_fails_with_gemini_failed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply("{}").set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let mut c = config(&server);
    c.request_timeout = Duration::from_millis(200);
    c.max_attempts = 2;
    let err = run(c).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiFailed);
    assert!(err.message.contains("timed out"), "{}", err.message);
}

#[tokio::test]
async fn malformed_json_is_asked_for_once_more_then_fails_as_invalid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply("{\"skills\": {\"listening\": "))
        .expect(2)
        .mount(&server)
        .await;
    let err = run(config(&server)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiInvalidResponse);
    assert!(
        err.message.contains("not JSON of the required schema"),
        "{}",
        err.message
    );
    let bodies = bodies(&server).await;
    assert_eq!(bodies.len(), 2, "one retry, not more");
    assert!(!prompt_of(&bodies[0]).contains("前回のあなたの回答は次の理由で無効でした"));
    let second = prompt_of(&bodies[1]);
    assert!(second.contains("前回のあなたの回答は次の理由で無効でした"));
    assert!(second.contains("not JSON of the required schema"));
}

#[tokio::test]
async fn a_schema_violation_is_corrected_with_the_error_in_the_prompt() {
    let server = MockServer::start().await;
    let mut bad = valid_analysis();
    bad["skills"]["listening"]["score"] = json!(7);
    bad["skills"]["empathy"]["examples"][0]["quote"] = json!("あなたの気持ちは完全にわかります");
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&bad.to_string()))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&valid_analysis().to_string()))
        .expect(1)
        .mount(&server)
        .await;

    let analysis = run(config(&server)).await.unwrap();
    assert_eq!(analysis.skills.listening.score, 4);
    let bodies = bodies(&server).await;
    assert_eq!(bodies.len(), 2);
    let second = prompt_of(&bodies[1]);
    assert!(second.contains("前回のあなたの回答は次の理由で無効でした"));
    assert!(second.contains("skills.listening.score is 7"), "{second}");
    assert!(
        second.contains("\"あなたの気持ちは完全にわかります\" does not occur in the transcript"),
        "{second}"
    );
    // The correction is added to the same prompt, not a different one.
    assert!(second.starts_with(prompt_of(&bodies[0])));
}

#[tokio::test]
async fn an_invented_quote_twice_is_an_invalid_response_not_a_default() {
    let server = MockServer::start().await;
    let mut bad = valid_analysis();
    bad["skills"]["feedback"]["examples"][0]["quote"] = json!("存在しない発言");
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(common::fakes::gemini_reply(&bad.to_string()))
        .expect(2)
        .mount(&server)
        .await;
    let err = run(config(&server)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiInvalidResponse);
    assert!(err.message.contains("存在しない発言"), "{}", err.message);
}

#[tokio::test]
async fn bad_request_fails_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(gemini_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let err = run(config(&server)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiFailed);
    assert!(err.message.contains("API key not valid"), "{}", err.message);
    assert!(err.message.contains("400"), "{}", err.message);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_blocked_prompt_fails_with_the_reason_and_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 1000, "totalTokenCount": 1000},
            "modelVersion": MODEL
        })))
        .expect(1)
        .mount(&server)
        .await;
    let err = run(config(&server)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiBlocked);
    assert!(!err.code.is_retryable());
    assert!(
        err.message.contains("PROHIBITED_CONTENT"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn no_candidates_fails() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"candidates": []})))
        .expect(1)
        .mount(&server)
        .await;
    let err = run(config(&server)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::GeminiFailed);
    assert!(err.message.contains("no candidates"), "{}", err.message);
}

#[test]
fn no_key_means_no_analyzer() {
    // SAFETY: no other test of this binary reads or writes GOOGLE_API_KEY, and std serialises
    // its own environment accesses.
    unsafe { std::env::remove_var("GOOGLE_API_KEY") };
    assert!(GeminiConfig::from_env().is_none());
    unsafe { std::env::set_var("GOOGLE_API_KEY", "   ") };
    assert!(GeminiConfig::from_env().is_none());
    unsafe { std::env::set_var("GOOGLE_API_KEY", "k") };
    let c = GeminiConfig::from_env().expect("a key is set");
    assert!(!format!("{c:?}").contains("\"k\""));
    unsafe { std::env::remove_var("GOOGLE_API_KEY") };
}

/// Gemini's reply envelope with a given `usageMetadata`.
fn reply_with_usage(text: &str, prompt: u64, output: u64, thoughts: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output,
                          "thoughtsTokenCount": thoughts, "totalTokenCount": prompt + output + thoughts},
        "modelVersion": MODEL
    }))
}

/// Issue 15, item 13: after the corrective request, an example whose quote is still invented
/// is dropped and counted (the skill keeps its verified one) instead of failing the analysis;
/// the tokens of both requests are recorded.
#[tokio::test]
async fn an_unverified_quote_after_the_correction_drops_only_that_example() {
    let server = MockServer::start().await;
    let mut bad = valid_analysis();
    bad["skills"]["listening"]["examples"]
        .as_array_mut()
        .unwrap()
        .push(json!({"quote": "存在しない発言"}));
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(reply_with_usage(&bad.to_string(), 1000, 300, 120))
        .expect(2)
        .mount(&server)
        .await;
    let turns = turns();
    let m = metrics::compute(&turns, 760.0);
    let input = AnalysisInput {
        turns: &turns,
        metrics: &m,
        language: "ja",
        duration_s: 760.0,
    };
    let analyzed = GeminiAnalyzer::new(config(&server))
        .unwrap()
        .analyze(&input)
        .await
        .unwrap();
    let expected: CoachingAnalysis = serde_json::from_value(valid_analysis()).unwrap();
    assert_eq!(
        analyzed.analysis, expected,
        "only the invented example is gone"
    );
    let report = analyzed.report;
    assert_eq!((report.requests, report.dropped_examples), (2, 1));
    assert_eq!(
        (
            report.usage.prompt_tokens,
            report.usage.output_tokens,
            report.usage.thinking_tokens
        ),
        (2000, 600, 240)
    );
}
