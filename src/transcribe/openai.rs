//! The OpenAI transcription adapter (async-openai), for OpenAI itself or any server that speaks
//! its API (`OPENAI_BASE_URL`, e.g. a self-hosted Whisper).
//!
//! async-openai's own retry layer is replaced by a plain transport that remembers each reply's
//! status and Retry-After header, so our [`RetryPolicy`] decides: 429, 5xx, timeouts, dropped
//! connections and unreadable bodies are retried with backoff; any other 4xx fails at once.

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

use super::rate_gate::RateGate;
use super::retry::{RetryPolicy, parse_retry_after};
use super::whisper_json::{self, ChunkText};
use super::{ChunkRequest, Transcriber};
use crate::BoxFuture;
use crate::error::{Error, ErrorCode, Result};

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
    pub api_key: String,
    pub base_url: String,
    pub model: String,
    pub mode: ResponseMode,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
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
        let bad = |var: &str, v: &str| {
            Error::new(ErrorCode::Internal, format!("{var}={v:?} is not valid"))
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
            api_key: api_key.trim().to_string(),
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

    /// One request. The outcome says whether another attempt may help.
    async fn attempt(&self, req: &ChunkRequest<'_>) -> Attempt {
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
                .with_api_key(self.config.api_key.clone())
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
            language: Some(req.language.to_string()),
            prompt: req.prompt.clone(),
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
                Err(e) => Attempt::Retry(format!("unreadable reply: {e}"), None, false),
            },
            Err(OpenAIError::ApiError(api)) => {
                let e = &api.api_error;
                let quota = [&e.code, &e.r#type]
                    .iter()
                    .any(|v| v.as_deref() == Some("insufficient_quota"));
                classify(api.status_code.as_u16(), &e.message, quota, seen)
            }
            Err(OpenAIError::Reqwest(e)) if e.is_timeout() => {
                Attempt::Retry("the request timed out".into(), None, false)
            }
            Err(OpenAIError::Reqwest(e)) => {
                Attempt::Retry(format!("connection failed: {e}"), None, false)
            }
            Err(OpenAIError::JSONDeserialize(_, body)) => match seen.status {
                Some(status) if status >= 400 => classify(
                    status,
                    &snippet(&body),
                    body.contains("insufficient_quota"),
                    seen,
                ),
                _ => Attempt::Retry(format!("unreadable reply: {}", snippet(&body)), None, false),
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

/// What the transport saw of the last reply.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    status: Option<u16>,
    retry_after: Option<Duration>,
}

enum Attempt {
    Done(ChunkText),
    /// Worth retrying: the reason, the server's Retry-After, and whether it was a rate limit.
    Retry(String, Option<Duration>, bool),
    Fail(Error),
}

/// Retry-After as OpenAI sends it: `retry-after-ms` (milliseconds) first, else `retry-after`
/// (seconds).
fn retry_after_of(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let ms = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    ms.or_else(|| {
        headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    })
}

/// An error reply: 408, 429 (a rate limit) and 5xx are worth another try; a 429 saying
/// `insufficient_quota` is an account problem (permanent, its own code); any other 4xx is the
/// request itself (permanent).
fn classify(status: u16, message: &str, quota: bool, seen: Seen) -> Attempt {
    match status {
        429 if quota => Attempt::Fail(Error::new(
            ErrorCode::WhisperQuotaExceeded,
            format!("the OpenAI account has no quota left (429 insufficient_quota): {message}"),
        )),
        429 => Attempt::Retry(
            format!("rate limited (429): {message}"),
            seen.retry_after,
            true,
        ),
        408 => Attempt::Retry(
            format!("request timeout (408): {message}"),
            seen.retry_after,
            false,
        ),
        500..=599 => Attempt::Retry(
            format!("server error ({status}): {message}"),
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
            let policy = self.config.retry;
            let mut attempt = 1;
            loop {
                self.gate.wait().await;
                let (reason, retry_after, rate_limited) = match self.attempt(&req).await {
                    Attempt::Done(text) => return Ok(text),
                    Attempt::Fail(e) => return Err(e),
                    Attempt::Retry(reason, retry_after, rate_limited) => {
                        (reason, retry_after, rate_limited)
                    }
                };
                if attempt >= policy.max_attempts {
                    let code = if rate_limited {
                        ErrorCode::WhisperRateLimited
                    } else {
                        ErrorCode::WhisperFailed
                    };
                    return Err(Error::new(
                        code,
                        format!(
                            "chunk {} failed after {attempt} attempts: {reason}",
                            req.audio.index
                        ),
                    ));
                }
                crate::telemetry::count_retry("whisper");
                let pause = policy.backoff(attempt, retry_after);
                if rate_limited {
                    self.gate.hold(pause);
                }
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, quota: bool) -> std::result::Result<bool, ErrorCode> {
        match classify(status, "m", quota, Seen::default()) {
            Attempt::Retry(_, _, rate_limited) => Ok(rate_limited),
            Attempt::Fail(e) => Err(e.code),
            Attempt::Done(_) => unreachable!(),
        }
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
    fn retry_after_ms_comes_first() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "350".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_millis(350)));
        h.insert("retry-after-ms", "soon".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_secs(2)));
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
    }
}
