//! The Gemini adapter of [`Analyzer`]: REST `generateContent` with a JSON-schema response.
//!
//! Wire format (Gemini API reference, ai.google.dev/api/generate-content):
//! `POST {base}/v1beta/models/{model}:generateContent`, header `x-goog-api-key`, body
//! `{contents:[{role:"user",parts:[{text}]}], generationConfig:{responseMimeType:
//! "application/json", responseJsonSchema:{...}}}`; the reply is
//! `{candidates:[{content:{parts:[{text}]}, finishReason}], promptFeedback:{blockReason}}`;
//! errors are `{error:{code, message, status}}` (a 429 may carry a
//! `google.rpc.RetryInfo` detail with `retryDelay: "37s"`).
//!
//! Failure policy (never a made-up default):
//! - 429, 408, 5xx, timeouts, connection errors and unreadable 2xx envelopes are retried up to
//!   `max_attempts` in all through the shared [`crate::retry`] policy: exponential backoff with
//!   full jitter (uniform in `0..min(backoff_cap, backoff_base * 2^(n-1))`), never shorter than
//!   `Retry-After` (seconds; else the error's `retryDelay`; capped at `max_retry_after`); then
//!   `GEMINI_FAILED`.
//! - Any other 4xx fails at once with `GEMINI_FAILED` and the API's message.
//! - A blocked prompt (`promptFeedback.blockReason`) or a candidate stopped for
//!   safety/recitation/policy fails with `GEMINI_BLOCKED` (permanent) and the reason; no
//!   candidates at all fails with `GEMINI_FAILED`.
//! - A reply that is not JSON, does not fit the schema or fails [`validate`](super::validate)
//!   (e.g. an invented quote) is asked for once more with the reason appended to the prompt.
//!   In the second reply an example whose quote is still not in the transcript is dropped and
//!   counted ([`super::parse_dropping_unverified`]); it fails with `GEMINI_INVALID_RESPONSE` only
//!   when a skill is left with no verified example or another rule is broken.
//! - `usageMetadata` (`promptTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount`) of every
//!   reply is summed into the result's [`AnalysisReport`].

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AnalysisInput, AnalysisReport, Analyzed, Analyzer, SCHEMA_JSON, TokenUsage, parse_and_validate,
    parse_dropping_unverified, prompt,
};
use crate::retry::{Attempt, RetryPolicy, Transient, retry_after_of, transient_status};
use crate::{Error, ErrorCode};

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Gemini 3.8 Flash, GA since 2026-09-02 with no shutdown date announced (Gemini API
/// deprecations page, ai.google.dev/gemini-api/docs/deprecations; the models page,
/// ai.google.dev/gemini-api/docs/models, lists it as the current, most capable Flash model).
/// gemini-2.5-flash shuts down on 2026-12-01; Google routes it to gemini-3.5-flash-lite after
/// that, a cheaper but weaker model. Model names are configuration: set GEMINI_MODEL.
pub const DEFAULT_MODEL: &str = "gemini-3.8-flash";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Finish reasons that mean the reply was withheld, not merely cut short.
const BLOCKING_FINISH_REASONS: [&str; 8] = [
    "SAFETY",
    "RECITATION",
    "LANGUAGE",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "MALFORMED_FUNCTION_CALL",
];

/// How to reach Gemini. `Debug` never prints the key.
#[derive(Clone)]
pub struct GeminiConfig {
    pub api_key: SecretString,
    /// Without a trailing slash; tests point it at a local fake.
    pub base_url: String,
    pub model: String,
    /// Requests in all for one call (the first plus retries), at least 1.
    pub max_attempts: u32,
    /// Whole-request timeout (connect, send, wait, read).
    pub request_timeout: Duration,
    /// Prompt length limit in characters (see [`prompt`]).
    pub max_prompt_chars: usize,
    /// First backoff ceiling (doubles per retry); 1 s in production, milliseconds in tests.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest `Retry-After` we honour; a longer one is cut to this.
    pub max_retry_after: Duration,
    /// Sampling temperature; `None` sends none. Google's Gemini 3 guidance is to keep the
    /// default 1.0 (lower values can cause looping), and the 2026-07-21 changelog deprecates
    /// temperature/topP/topK from Gemini 3.6 Flash on, so the default is `None`.
    pub temperature: Option<f32>,
}

impl GeminiConfig {
    /// Production defaults for a key.
    pub fn new(api_key: impl Into<SecretString>) -> Self {
        GeminiConfig {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.into(),
            model: DEFAULT_MODEL.into(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_prompt_chars: prompt::DEFAULT_MAX_PROMPT_CHARS,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            temperature: None,
        }
    }

    /// From GOOGLE_API_KEY, GEMINI_BASE_URL and GEMINI_MODEL; `None` when GOOGLE_API_KEY is
    /// unset or blank (analysis is then skipped, not faked). Blank optional values mean default.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut config = GeminiConfig::new(get("GOOGLE_API_KEY")?);
        if let Some(url) = get("GEMINI_BASE_URL") {
            config.base_url = url.trim_end_matches('/').to_string();
        }
        if let Some(model) = get("GEMINI_MODEL") {
            config.model = model;
        }
        Some(config)
    }
}

impl fmt::Debug for GeminiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiConfig")
            .field("api_key", &self.api_key)
            .field("base_url", &crate::error::redact_url(&self.base_url))
            .field("model", &self.model)
            .field("max_attempts", &self.max_attempts)
            .field("request_timeout", &self.request_timeout)
            .field("max_prompt_chars", &self.max_prompt_chars)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("max_retry_after", &self.max_retry_after)
            .field("temperature", &self.temperature)
            .finish()
    }
}

/// The Gemini analyzer.
#[derive(Debug)]
pub struct GeminiAnalyzer {
    config: GeminiConfig,
    client: reqwest::Client,
    schema: Value,
}

/// What one successful HTTP exchange yielded, with its token usage.
struct Replied {
    reply: Reply,
    usage: TokenUsage,
}

/// What one successful HTTP exchange yielded.
enum Reply {
    /// The candidate's text, to be parsed and validated.
    Text(String),
    /// A reply we can ask again for (empty, cut off).
    Invalid(String),
}

/// Why one attempt failed.
enum AttemptError {
    /// Worth another attempt, after the given wait if the server named one.
    Retryable(String, Option<Duration>),
    Fatal(Error),
}

impl GeminiAnalyzer {
    pub fn new(config: GeminiConfig) -> crate::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("HTTP client: {e}")))?;
        let schema = serde_json::from_str(SCHEMA_JSON).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("schemas/analysis.schema.json: {e}"),
            )
        })?;
        Ok(GeminiAnalyzer {
            config,
            client,
            schema,
        })
    }

    pub fn config(&self) -> &GeminiConfig {
        &self.config
    }

    fn url(&self) -> String {
        format!(
            "{}/v1beta/models/{}:generateContent",
            self.config.base_url.trim_end_matches('/'),
            self.config.model
        )
    }

    /// The `generateContent` request body for a prompt.
    pub fn request_body(&self, prompt: &str) -> Value {
        let mut generation = json!({
            "responseMimeType": "application/json",
            "responseJsonSchema": self.schema,
        });
        if let Some(t) = self.config.temperature {
            generation["temperature"] = json!(t);
        }
        json!({
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": generation,
        })
    }

    /// Sends one prompt, retrying transient failures through the shared [`RetryPolicy`];
    /// returns the candidate's text. A Retry-After longer than `max_retry_after` is cut to it.
    async fn generate(&self, prompt: &str) -> crate::Result<Replied> {
        let (url, body) = (&self.url(), &self.request_body(prompt));
        let max_retry_after = self.config.max_retry_after;
        self.retry_policy()
            .run(
                "gemini",
                || async move {
                    match self.attempt(url, body).await {
                        Ok(reply) => Attempt::Done(reply),
                        Err(AttemptError::Fatal(e)) => Attempt::Fail(e),
                        Err(AttemptError::Retryable(reason, wait)) => Attempt::Retry(Transient {
                            reason,
                            retry_after: wait.map(|w| w.min(max_retry_after)),
                            rate_limited: false,
                        }),
                    }
                },
                |_, _| {},
                |attempts, last| {
                    Error::new(
                        ErrorCode::GeminiFailed,
                        format!(
                            "Gemini request failed after {attempts} attempts; last: {}",
                            last.reason
                        ),
                    )
                },
            )
            .await
    }

    /// This adapter's knobs as the shared policy (full jitter up to
    /// `min(backoff_cap, backoff_base * 2^(n-1))`, Retry-After as the floor).
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.config.max_attempts.max(1),
            base: self.config.backoff_base,
            cap: self.config.backoff_cap,
        }
    }

    async fn attempt(&self, url: &str, body: &Value) -> Result<Replied, AttemptError> {
        let response = self
            .client
            .post(url)
            .header("x-goog-api-key", self.config.api_key.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = retry_after_of(response.headers());
        let text = response.text().await.map_err(transport_error)?;

        if !status.is_success() {
            let message = api_message(status, &text);
            return Err(if transient_status(status.as_u16()) {
                AttemptError::Retryable(message, retry_after.or_else(|| retry_delay(&text)))
            } else {
                AttemptError::Fatal(Error::new(ErrorCode::GeminiFailed, message))
            });
        }

        let mut envelope: GenerateContentResponse = serde_json::from_str(&text).map_err(|e| {
            AttemptError::Retryable(format!("unreadable Gemini response envelope: {e}"), None)
        })?;
        let usage = envelope
            .usage_metadata
            .take()
            .map_or_else(TokenUsage::default, |u| TokenUsage {
                prompt_tokens: u.prompt_token_count,
                output_tokens: u.candidates_token_count,
                thinking_tokens: u.thoughts_token_count,
            });
        let reply = interpret(envelope).map_err(AttemptError::Fatal)?;
        Ok(Replied { reply, usage })
    }
}

fn transport_error(e: reqwest::Error) -> AttemptError {
    if e.is_builder() {
        return AttemptError::Fatal(Error::new(
            ErrorCode::GeminiFailed,
            format!("invalid Gemini request: {e}"),
        ));
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // No URL in the message: it is ours and long; the key is in a header, never in the URL.
    AttemptError::Retryable(format!("{kind}: {}", e.without_url()), None)
}

/// `error.details[].retryDelay` ("37s") of a google.rpc.RetryInfo, if present.
fn retry_delay(body: &str) -> Option<Duration> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["error"]["details"].as_array()?.iter().find_map(|d| {
        let s = d["retryDelay"].as_str()?.strip_suffix('s')?;
        let secs: f64 = s.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    })
}

/// "HTTP 400 INVALID_ARGUMENT: the API's message", or the raw body (cut) when it is not the
/// documented error shape.
fn api_message(status: reqwest::StatusCode, body: &str) -> String {
    match serde_json::from_str::<ApiErrorBody>(body) {
        Ok(ApiErrorBody { error }) => format!(
            "HTTP {} {}: {}",
            status.as_u16(),
            error.status.unwrap_or_default(),
            // A 400 may echo the prompt (the user's transcript): logs get a short cut only.
            crate::error::brief(&error.message.unwrap_or_default(), 200)
        ),
        Err(_) => {
            format!(
                "HTTP {}: {}",
                status.as_u16(),
                crate::error::brief(body, 200)
            )
        }
    }
}

fn interpret(envelope: GenerateContentResponse) -> crate::Result<Reply> {
    let failed = |m: String| Error::new(ErrorCode::GeminiFailed, m);
    // A safety block will block again: permanent, unlike an outage.
    let blocked = |m: String| Error::new(ErrorCode::GeminiBlocked, m);
    if let Some(reason) = envelope.prompt_feedback.and_then(|p| p.block_reason) {
        return Err(blocked(format!("Gemini blocked the prompt: {reason}")));
    }
    let Some(candidate) = envelope.candidates.unwrap_or_default().into_iter().next() else {
        return Err(failed("Gemini returned no candidates".into()));
    };
    let finish = candidate.finish_reason.unwrap_or_default();
    if BLOCKING_FINISH_REASONS.contains(&finish.as_str()) {
        return Err(blocked(format!(
            "Gemini withheld the reply: finishReason {finish}"
        )));
    }
    let text: String = candidate
        .content
        .and_then(|c| c.parts)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.thought != Some(true))
        .filter_map(|p| p.text)
        .collect();
    if finish == "MAX_TOKENS" {
        return Ok(Reply::Invalid(
            "the reply was cut off at the output token limit (finishReason MAX_TOKENS); \
             write shorter comments and descriptions"
                .into(),
        ));
    }
    if text.trim().is_empty() {
        return Ok(Reply::Invalid(format!(
            "the reply contained no text (finishReason {finish})"
        )));
    }
    Ok(Reply::Text(text))
}

impl Analyzer for GeminiAnalyzer {
    fn name(&self) -> String {
        self.config.model.clone()
    }

    fn analyze<'a>(
        &'a self,
        input: &'a AnalysisInput<'a>,
    ) -> crate::BoxFuture<'a, crate::Result<Analyzed>> {
        Box::pin(async move {
            let built = prompt::build(input, self.config.max_prompt_chars);
            let mut text = built.text.clone();
            let mut report = AnalysisReport::default();
            loop {
                let Replied { reply, usage } = self.generate(&text).await?;
                report.requests += 1;
                report.usage.add(usage);
                let corrected = report.requests > 1;
                let problem = match reply {
                    Reply::Text(reply) if corrected => {
                        match parse_dropping_unverified(&reply, input) {
                            Ok((analysis, dropped)) => {
                                report.dropped_examples = dropped;
                                return Ok(Analyzed { analysis, report });
                            }
                            Err(problem) => problem,
                        }
                    }
                    Reply::Text(reply) => match parse_and_validate(&reply, input) {
                        Ok(analysis) => return Ok(Analyzed { analysis, report }),
                        Err(problem) => problem,
                    },
                    Reply::Invalid(problem) => problem,
                };
                if corrected {
                    return Err(Error::new(
                        ErrorCode::GeminiInvalidResponse,
                        format!("Gemini's reply was invalid twice; last: {problem}"),
                    ));
                }
                text = prompt::with_correction(&built.text, &problem, input.language);
            }
        })
    }
}

// The documented response shapes; unknown fields are ignored.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    candidates: Option<Vec<Candidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

/// `usageMetadata`: counts a reply may leave out (no thinking) are zero.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    parts: Option<Vec<Part>>,
}

#[derive(Debug, Deserialize)]
struct Part {
    text: Option<String>,
    thought: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiErrorBody {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    message: Option<String>,
    status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let c = GeminiConfig::new("AIzaSECRET123");
        let s = format!("{c:?}");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("REDACTED"), "{s}");
        let a = GeminiAnalyzer::new(c).unwrap();
        assert!(!format!("{a:?}").contains("SECRET"));
    }

    #[test]
    fn from_lookup_reads_and_defaults() {
        assert!(GeminiConfig::from_lookup(|_| None).is_none());
        assert!(GeminiConfig::from_lookup(|_| Some("  ".into())).is_none());
        let c = GeminiConfig::from_lookup(|k| match k {
            "GOOGLE_API_KEY" => Some("k".into()),
            "GEMINI_BASE_URL" => Some("http://127.0.0.1:9/".into()),
            "GEMINI_MODEL" => Some(String::new()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.api_key.expose_secret(), "k");
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert_eq!(c.model, DEFAULT_MODEL);
        assert_eq!(c.max_attempts, 4);
        assert_eq!(c.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn backoff_is_full_jitter_under_the_capped_exponential() {
        let mut c = GeminiConfig::new("k");
        c.backoff_base = Duration::from_secs(1);
        c.backoff_cap = Duration::from_secs(30);
        let a = GeminiAnalyzer::new(c).unwrap().retry_policy();
        for _ in 0..200 {
            assert!(a.backoff(1, None) <= Duration::from_secs(1));
            assert!(a.backoff(3, None) <= Duration::from_secs(4));
            assert!(a.backoff(10, None) <= Duration::from_secs(30));
        }
        let spread: Vec<Duration> = (0..50).map(|_| a.backoff(5, None)).collect();
        assert!(spread.iter().any(|d| *d != spread[0]), "jittered");
    }

    #[test]
    fn error_messages_and_retry_hints() {
        let body = r#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED",
            "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        assert_eq!(
            api_message(reqwest::StatusCode::TOO_MANY_REQUESTS, body),
            "HTTP 429 RESOURCE_EXHAUSTED: Resource exhausted"
        );
        assert_eq!(retry_delay(body), Some(Duration::from_secs(37)));
        assert_eq!(
            api_message(reqwest::StatusCode::BAD_GATEWAY, "<html>bad gateway</html>"),
            "HTTP 502: <html>bad gateway</html>"
        );
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_of(&h), None);
    }

    #[test]
    fn interpret_envelopes() {
        let parse = |s: &str| interpret(serde_json::from_str(s).unwrap());
        let ok = parse(
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":"{\"a\":"},{"text":"1}"}]},"finishReason":"STOP"}]}"#,
        );
        assert!(matches!(ok, Ok(Reply::Text(t)) if t == "{\"a\":1}"));
        let blocked = parse(r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#);
        let e = blocked.err().unwrap();
        assert_eq!(e.code, ErrorCode::GeminiBlocked);
        assert!(e.message.contains("PROHIBITED_CONTENT"));
        let none = parse(r#"{"candidates":[]}"#).err().unwrap();
        assert!(none.message.contains("no candidates"));
        let safety = parse(r#"{"candidates":[{"finishReason":"SAFETY"}]}"#)
            .err()
            .unwrap();
        assert!(safety.message.contains("SAFETY"));
        assert_eq!(safety.code, ErrorCode::GeminiBlocked);
        assert!(matches!(
            parse(r#"{"candidates":[{"content":{"parts":[{"text":"{"}]},"finishReason":"MAX_TOKENS"}]}"#),
            Ok(Reply::Invalid(m)) if m.contains("MAX_TOKENS")
        ));
        assert!(matches!(
            parse(r#"{"candidates":[{"content":{"parts":[]},"finishReason":"STOP"}]}"#),
            Ok(Reply::Invalid(_))
        ));
    }

    #[test]
    fn body_shape_and_optional_temperature() {
        let a = GeminiAnalyzer::new(GeminiConfig::new("k")).unwrap();
        let b = a.request_body("hello");
        assert_eq!(b["contents"][0]["role"], "user");
        assert_eq!(b["contents"][0]["parts"][0]["text"], "hello");
        assert_eq!(
            b["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(
            b["generationConfig"]["responseJsonSchema"]["type"],
            "object"
        );
        assert!(b["generationConfig"].get("temperature").is_none());
        let mut c = GeminiConfig::new("k");
        c.temperature = Some(0.25);
        let b = GeminiAnalyzer::new(c).unwrap().request_body("x");
        assert_eq!(b["generationConfig"]["temperature"], 0.25);
        assert_eq!(
            a.url(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-3.8-flash:generateContent"
        );
    }
}
