//! The OpenAI transcription adapter (async-openai), for OpenAI itself or any server that speaks
//! its API (`OPENAI_BASE_URL`, e.g. a self-hosted Whisper).
//!
//! async-openai's own retry layer is replaced by a plain transport that remembers each reply's
//! status and Retry-After header, so our [`RetryPolicy`] decides: 429, 5xx, timeouts, dropped
//! connections and unreadable bodies are retried with backoff; any other 4xx fails at once.
//!
//! A job's vocabulary goes out as repeated `keywords[]` multipart fields, which async-openai's
//! request type does not have: for text-only models with keywords the same multipart request
//! is built with reqwest ([`OpenAiTranscriber::attempt_with_keywords`]). Segment models
//! (whisper-1) get no keywords. Models that refuse a `prompt` (`gpt-4o-transcribe-diarize`)
//! are sent none ([`takes_prompt`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::InputSource;
use async_openai::types::audio::{
    AudioInput, AudioResponseFormat, CreateTranscriptionRequest, TimestampGranularity,
};
use secrecy::{ExposeSecret, SecretString};

use super::rate_gate::RateGate;
use super::whisper_json::{self, ChunkText};
use super::{ChunkRequest, Transcriber};
use crate::BoxFuture;
use crate::error::{Error, ErrorCode, Result};
use crate::retry::{self, RetryPolicy, Transient, retry_after_of};

/// Which reply a model gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// `verbose_json` with segment timestamps (whisper-1 and compatible servers).
    Segments,
    /// `json` with text only (gpt-transcribe, gpt-4o-transcribe).
    Text,
}

impl ResponseMode {
    /// The mode a model uses unless configured otherwise.
    pub fn default_for(model: &str) -> ResponseMode {
        if model.starts_with("whisper") {
            ResponseMode::Segments
        } else {
            ResponseMode::Text
        }
    }

    pub fn parse(value: &str) -> Option<ResponseMode> {
        match value {
            "verbose_json" | "segments" => Some(ResponseMode::Segments),
            "json" | "text" => Some(ResponseMode::Text),
            _ => None,
        }
    }
}

/// Everything the adapter needs; `Debug` never shows the key.
#[derive(Clone)]
pub struct OpenAiConfig {
    pub api_key: SecretString,
    pub base_url: String,
    pub model: String,
    pub mode: ResponseMode,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &self.api_key)
            .field("base_url", &crate::error::redact_url(&self.base_url))
            .field("model", &self.model)
            .field("mode", &self.mode)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// OpenAI's transcription model for files after whisper-1 and gpt-4o-*transcribe* shut down on
/// 2027-02-26: text only, which is all the pipeline needs (it owns the timeline). The model is
/// configuration (`WHISPER_MODEL`).
pub const DEFAULT_MODEL: &str = "gpt-transcribe";

impl OpenAiConfig {
    /// Reads `OPENAI_API_KEY` (none: `Ok(None)`), `OPENAI_BASE_URL`, `WHISPER_MODEL`,
    /// `WHISPER_RESPONSE_MODE` (verbose_json | json), `WHISPER_MAX_ATTEMPTS`,
    /// `WHISPER_TIMEOUT_S`. A malformed value is an error naming the variable.
    pub fn from_env() -> Result<Option<OpenAiConfig>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<OpenAiConfig>> {
        let Some(api_key) = get("OPENAI_API_KEY").filter(|k| !k.trim().is_empty()) else {
            return Ok(None);
        };
        // The caller's to fix (exit 1), not an outage to retry later.
        let bad = |var: &str, v: &str| {
            Error::new(
                ErrorCode::ConfigMissing,
                format!("{var}={v:?} is not valid"),
            )
        };
        let model = get("WHISPER_MODEL").unwrap_or_else(|| DEFAULT_MODEL.into());
        let mode = match get("WHISPER_RESPONSE_MODE") {
            Some(v) => ResponseMode::parse(&v).ok_or_else(|| bad("WHISPER_RESPONSE_MODE", &v))?,
            None => ResponseMode::default_for(&model),
        };
        let mut retry = RetryPolicy::default();
        if let Some(v) = get("WHISPER_MAX_ATTEMPTS") {
            retry.max_attempts = v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("WHISPER_MAX_ATTEMPTS", &v))?;
        }
        let request_timeout = match get("WHISPER_TIMEOUT_S") {
            Some(v) => Duration::from_secs(
                v.parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("WHISPER_TIMEOUT_S", &v))?,
            ),
            None => Duration::from_secs(300),
        };
        Ok(Some(OpenAiConfig {
            api_key: api_key.trim().into(),
            base_url: get("OPENAI_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into()),
            model,
            mode,
            retry,
            request_timeout,
        }))
    }
}

pub struct OpenAiTranscriber {
    config: OpenAiConfig,
    http: reqwest::Client,
    /// Shared by all lanes: a rate limit pauses them all.
    gate: RateGate,
}

impl OpenAiTranscriber {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiTranscriber> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        Ok(OpenAiTranscriber {
            config,
            http,
            gate: RateGate::default(),
        })
    }

    /// The prompt this model is sent: none for models that reject one.
    fn prompt_for(&self, req: &ChunkRequest<'_>) -> Option<String> {
        req.prompt
            .clone()
            .filter(|_| takes_prompt(&self.config.model))
    }

    /// One request. The outcome says whether another attempt may help.
    async fn attempt(&self, req: &ChunkRequest<'_>) -> Attempt {
        if !req.keywords.is_empty() && self.config.mode == ResponseMode::Text {
            return self.attempt_with_keywords(req).await;
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let probe = {
            let seen = Arc::clone(&seen);
            let http = self.http.clone();
            tower::service_fn(move |factory: HttpRequestFactory| {
                let (seen, http) = (Arc::clone(&seen), http.clone());
                async move {
                    let request = factory.build().await?;
                    let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
                    let mut s = seen.lock().expect("not poisoned");
                    s.status = Some(response.status().as_u16());
                    s.retry_after = retry_after_of(response.headers());
                    Ok::<_, OpenAIError>(response)
                }
            })
        };
        let client = Client::with_config(
            OpenAIConfig::new()
                .with_api_key(self.config.api_key.expose_secret())
                .with_api_base(self.config.base_url.trim_end_matches('/')),
        )
        .with_http_service(probe);

        let request = CreateTranscriptionRequest {
            file: AudioInput {
                source: InputSource::Path {
                    path: req.audio.path.clone(),
                },
            },
            model: self.config.model.clone(),
            language: req.language.map(str::to_string),
            prompt: self.prompt_for(req),
            response_format: Some(match self.config.mode {
                ResponseMode::Segments => AudioResponseFormat::VerboseJson,
                ResponseMode::Text => AudioResponseFormat::Json,
            }),
            timestamp_granularities: (self.config.mode == ResponseMode::Segments)
                .then(|| vec![TimestampGranularity::Segment]),
            ..Default::default()
        };
        let result = client.audio().transcription().create_raw(request).await;
        let seen = *seen.lock().expect("not poisoned");
        match result {
            Ok(body) => match whisper_json::parse(&body) {
                Ok(text) => Attempt::Done(text),
                Err(e) => transient(format!("unreadable reply: {e}"), None, false),
            },
            Err(OpenAIError::ApiError(api)) => {
                let e = &api.api_error;
                let quota = [&e.code, &e.r#type]
                    .iter()
                    .any(|v| v.as_deref() == Some("insufficient_quota"));
                classify(api.status_code.as_u16(), &e.message, quota, seen)
            }
            Err(OpenAIError::Reqwest(e)) if e.is_timeout() => {
                transient("the request timed out".into(), None, false)
            }
            Err(OpenAIError::Reqwest(e)) => {
                transient(format!("connection failed: {e}"), None, false)
            }
            Err(OpenAIError::JSONDeserialize(_, body)) => match seen.status {
                Some(status) if status >= 400 => classify(
                    status,
                    &snippet(&body),
                    body.contains("insufficient_quota"),
                    seen,
                ),
                _ => transient(format!("unreadable reply: {}", snippet(&body)), None, false),
            },
            Err(OpenAIError::FileReadError(e)) => Attempt::Fail(Error::new(
                ErrorCode::Internal,
                format!("cannot read chunk audio: {e}"),
            )),
            Err(other) => Attempt::Fail(Error::new(
                ErrorCode::WhisperFailed,
                format!("transcription failed: {other}"),
            )),
        }
    }
}

impl OpenAiTranscriber {
    /// One `POST {base}/audio/transcriptions` built here, for what async-openai cannot send:
    /// the fields it sends (model, file, language, prompt, response_format json) plus one
    /// `keywords[]` field per term. Classified exactly like the async-openai path.
    async fn attempt_with_keywords(&self, req: &ChunkRequest<'_>) -> Attempt {
        let form = match self.keyword_form(req).await {
            Ok(form) => form,
            Err(e) => return Attempt::Fail(e),
        };
        let url = format!(
            "{}/audio/transcriptions",
            self.config.base_url.trim_end_matches('/')
        );
        let sent = self
            .http
            .post(url)
            .bearer_auth(self.config.api_key.expose_secret())
            .multipart(form)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return transient("the request timed out".into(), None, false);
            }
            Err(e) => {
                return transient(
                    format!("connection failed: {}", e.without_url()),
                    None,
                    false,
                );
            }
        };
        let status = response.status().as_u16();
        let seen = Seen {
            status: Some(status),
            retry_after: retry_after_of(response.headers()),
        };
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) => {
                return transient(
                    format!("unreadable reply: {}", e.without_url()),
                    None,
                    false,
                );
            }
        };
        if (200..300).contains(&status) {
            return match whisper_json::parse(body.as_bytes()) {
                Ok(text) => Attempt::Done(text),
                Err(e) => transient(format!("unreadable reply: {e}"), None, false),
            };
        }
        let (message, quota) = api_error_of(&body);
        classify(status, &message, quota, seen)
    }

    /// The multipart body of [`attempt_with_keywords`](Self::attempt_with_keywords).
    async fn keyword_form(&self, req: &ChunkRequest<'_>) -> Result<reqwest::multipart::Form> {
        let path = &req.audio.path;
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot read chunk audio {}: {e}", path.display()),
            )
        })?;
        let name = path
            .file_name()
            .map_or("piece.wav".into(), |n| n.to_string_lossy().into_owned());
        let file = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str("audio/wav")
            .map_err(|e| Error::new(ErrorCode::Internal, format!("multipart: {e}")))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.config.model.clone())
            .text("response_format", "json");
        if let Some(language) = req.language {
            form = form.text("language", language.to_string());
        }
        if let Some(prompt) = self.prompt_for(req) {
            form = form.text("prompt", prompt);
        }
        for keyword in req.keywords {
            form = form.text("keywords[]", keyword.clone());
        }
        Ok(form)
    }
}

/// Whether a model accepts `prompt`: `gpt-4o-transcribe-diarize` rejects it (the API answers
/// 400), every other transcription model takes one.
pub fn takes_prompt(model: &str) -> bool {
    !model.contains("-diarize")
}

/// OpenAI's error body `{"error": {"message", "type", "code"}}`: the message (or the body, cut)
/// and whether it says `insufficient_quota`.
fn api_error_of(body: &str) -> (String, bool) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = &v["error"];
    let quota = [&e["code"], &e["type"]]
        .iter()
        .any(|f| f.as_str() == Some("insufficient_quota"));
    let message = e["message"]
        .as_str()
        .map_or_else(|| snippet(body), String::from);
    (message, quota)
}

/// What the transport saw of the last reply.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    status: Option<u16>,
    retry_after: Option<Duration>,
}

/// One request's outcome, in the shared retry vocabulary.
type Attempt = retry::Attempt<ChunkText>;

/// A transient failure of one request.
fn transient(reason: String, retry_after: Option<Duration>, rate_limited: bool) -> Attempt {
    Attempt::Retry(Transient {
        reason,
        retry_after,
        rate_limited,
    })
}

/// An error reply: 408, 429 (a rate limit) and 5xx are worth another try; a 429 saying
/// `insufficient_quota` is an account problem (permanent, its own code); any other 4xx is the
/// request itself (permanent).
fn classify(status: u16, message: &str, quota: bool, seen: Seen) -> Attempt {
    // Upstream text goes to the logs only, cut short (Error::new redacts keys in it).
    let message = crate::error::brief(message, 200);
    match status {
        429 if quota => Attempt::Fail(Error::new(
            ErrorCode::WhisperQuotaExceeded,
            format!("the OpenAI account has no quota left (429 insufficient_quota): {message}"),
        )),
        429 => transient(
            format!("rate limited (429): {message}"),
            seen.retry_after,
            true,
        ),
        _ if retry::transient_status(status) => transient(
            format!("transient reply ({status}): {message}"),
            seen.retry_after,
            false,
        ),
        _ => Attempt::Fail(Error::new(
            ErrorCode::WhisperRejected,
            format!("the transcription API refused the request ({status}): {message}"),
        )),
    }
}

fn snippet(body: &str) -> String {
    body.chars().take(200).collect()
}

impl Transcriber for OpenAiTranscriber {
    fn name(&self) -> String {
        format!("openai:{}", self.config.model)
    }

    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>> {
        Box::pin(async move {
            let index = req.audio.index;
            let req = &req;
            self.config
                .retry
                .run(
                    "whisper",
                    || async move {
                        self.gate.wait().await;
                        self.attempt(req).await
                    },
                    // A rate limit pauses every lane of the job, not only this request.
                    |t, pause| {
                        if t.rate_limited {
                            self.gate.hold(pause);
                        }
                    },
                    |attempts, last| {
                        let code = if last.rate_limited {
                            ErrorCode::WhisperRateLimited
                        } else {
                            ErrorCode::WhisperFailed
                        };
                        Error::new(
                            code,
                            format!(
                                "chunk {index} failed after {attempts} attempts: {}",
                                last.reason
                            ),
                        )
                    },
                )
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, quota: bool) -> std::result::Result<bool, ErrorCode> {
        match classify(status, "m", quota, Seen::default()) {
            Attempt::Retry(t) => Ok(t.rate_limited),
            Attempt::Fail(e) => Err(e.code),
            Attempt::Done(_) => unreachable!(),
        }
    }

    #[test]
    fn the_diarize_model_takes_no_prompt() {
        assert!(!takes_prompt("gpt-4o-transcribe-diarize"));
        for model in ["gpt-transcribe", "gpt-4o-transcribe", "whisper-1"] {
            assert!(takes_prompt(model), "{model}");
        }
        let (message, quota) = api_error_of(
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert_eq!(
            (message.as_str(), quota),
            ("You exceeded your current quota", true)
        );
        assert_eq!(api_error_of("<html>").0, "<html>");
    }

    /// Issue 15, item 8: what is permanent is permanent, with its own code.
    #[test]
    fn error_replies_are_classified() {
        assert_eq!(outcome(429, false), Ok(true), "a rate limit is retried");
        assert_eq!(outcome(429, true), Err(ErrorCode::WhisperQuotaExceeded));
        assert_eq!(
            outcome(408, false),
            Ok(false),
            "a request timeout is retried"
        );
        for status in [500, 502, 503, 504] {
            assert_eq!(outcome(status, false), Ok(false), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 415, 422] {
            assert_eq!(
                outcome(status, false),
                Err(ErrorCode::WhisperRejected),
                "{status}"
            );
        }
        assert!(!ErrorCode::WhisperQuotaExceeded.is_retryable());
        assert!(!ErrorCode::WhisperRejected.is_retryable());
        assert!(ErrorCode::WhisperRateLimited.is_retryable());
    }

    #[test]
    fn config_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(OpenAiConfig::from_lookup(env(&[])).unwrap().is_none());
        let c = OpenAiConfig::from_lookup(env(&[("OPENAI_API_KEY", "sk-test-123")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.model.as_str(), c.mode),
            ("gpt-transcribe", ResponseMode::Text)
        );
        assert!(
            !format!("{c:?}").contains("sk-test-123"),
            "the key never reaches Debug output"
        );
        let c = OpenAiConfig::from_lookup(env(&[
            ("OPENAI_API_KEY", "k"),
            ("WHISPER_MODEL", "whisper-1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.mode, ResponseMode::Segments);
        let c = OpenAiConfig::from_lookup(env(&[
            ("OPENAI_API_KEY", "k"),
            ("WHISPER_MODEL", "my-whisper"),
            ("WHISPER_RESPONSE_MODE", "verbose_json"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.mode, ResponseMode::Segments);
        let err = OpenAiConfig::from_lookup(env(&[
            ("OPENAI_API_KEY", "k"),
            ("WHISPER_MAX_ATTEMPTS", "zero"),
        ]))
        .unwrap_err();
        assert!(err.message.contains("WHISPER_MAX_ATTEMPTS"));
        assert_eq!(err.code, ErrorCode::ConfigMissing);
    }
}
