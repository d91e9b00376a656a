//! Progress and results through Supabase's PostgREST API (`{SUPABASE_URL}/rest/v1`), with the
//! service key (which bypasses row-level security; users only ever read their own rows).
//!
//! Tables: `supabase/migrations/*_audio_processing.sql`. `audio_processing_jobs` holds one row per
//! session with the stage, percent and Japanese message the browser shows live;
//! `audio_analysis_results` holds the result JSON (`schemas/result.schema.json`) column by column.
//!
//! Every write is idempotent: progress is a PATCH of the session's row, the result an upsert keyed
//! by `session_id`, so a re-delivered job never produces a second result. Connection failures,
//! timeouts, 408/429 and 5xx are retried with exponential backoff and full jitter (honouring
//! Retry-After); any other 4xx fails at once with PostgREST's own message as
//! `SUPABASE_WRITE_FAILED`. The service key never appears in an error, a log or `Debug` output.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use postgrest::{Builder, Postgrest};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::BoxFuture;
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::{JobResult, Progress, ProgressSink, Stage};
use crate::retry::{Attempt, RetryPolicy, Transient, retry_after_from, transient_status};

/// The job progress table.
pub const JOBS_TABLE: &str = "audio_processing_jobs";
/// The results table.
pub const RESULTS_TABLE: &str = "audio_analysis_results";

/// `Prefer` for progress writes: nothing to send back.
pub const PREFER_MINIMAL: &str = "return=minimal";
/// `Prefer` for the result upsert: merge into an existing row of the same session.
pub const PREFER_UPSERT: &str = "resolution=merge-duplicates,return=minimal";
/// `Prefer` for creating a job row: leave an existing row (the Edge Function's) alone.
pub const PREFER_INSERT_IF_ABSENT: &str = "resolution=ignore-duplicates,return=minimal";

/// Where Supabase is and the key the worker writes with.
#[derive(Clone)]
pub struct SupabaseConfig {
    /// The project URL, e.g. `https://abcd.supabase.co` (no `/rest/v1`).
    pub url: String,
    /// The service-role key: bypasses RLS, so it never leaves this process.
    pub service_key: SecretString,
}

impl SupabaseConfig {
    /// From SUPABASE_URL and SUPABASE_SERVICE_KEY; `None` unless both are set and non-empty.
    pub fn from_env() -> Option<SupabaseConfig> {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(SupabaseConfig {
            url: get("SUPABASE_URL")?,
            service_key: get("SUPABASE_SERVICE_KEY")?.into(),
        })
    }

    /// PostgREST's base URL: `{url}/rest/v1`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest/v1", self.url.trim_end_matches('/'))
    }
}

impl fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("url", &crate::error::redact_url(&self.url))
            .field("service_key", &self.service_key)
            .finish()
    }
}

/// `audio_processing_jobs.status`: derived from the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Error,
}

impl JobStatus {
    /// The status a row at `stage` has (the migration checks the same rule).
    pub fn of(stage: Stage) -> JobStatus {
        match stage {
            Stage::Queued => JobStatus::Queued,
            Stage::Completed => JobStatus::Completed,
            Stage::Error => JobStatus::Error,
            _ => JobStatus::Processing,
        }
    }
}

/// What `job_status` reads back from a session's row.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobState {
    pub status: JobStatus,
    pub stage: Stage,
    pub progress: u8,
    pub error_code: Option<String>,
    pub attempts: u32,
}

/// A job row as the worker creates it when none exists yet (`ensure_job`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewJob {
    pub session_id: String,
    pub user_id: String,
    pub job_id: Option<String>,
    pub audio_bucket: Option<String>,
    pub audio_key: Option<String>,
}

/// The PATCH body of one progress report. `error_code` is always present (null unless the stage
/// is `error`) so a retried job clears its previous failure; `attempts` only when known.
pub fn progress_body(progress: &Progress, attempt: Option<u32>) -> Value {
    let mut body = json!({
        "status": JobStatus::of(progress.stage),
        "stage": progress.stage,
        "progress": progress.percent.min(100),
        "message": progress.message,
        "error_code": match progress.stage {
            Stage::Error => Some(progress.code.unwrap_or(ErrorCode::Internal)),
            _ => None,
        },
    });
    if let Some(attempt) = attempt {
        body["attempts"] = json!(attempt);
    }
    body
}

/// The `audio_analysis_results` row of a result: the result JSON itself, key for key, plus the
/// owner. The absent `analysis_error` is sent as null so an upsert clears an earlier one; a
/// present one carries our message for its code, never the upstream text.
pub fn result_row(result: &JobResult, user_id: &str) -> Result<Value> {
    let mut row = serde_json::to_value(result).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot serialise the result: {e}"),
        )
    })?;
    let obj = row
        .as_object_mut()
        .ok_or_else(|| Error::new(ErrorCode::Internal, "the result is not a JSON object"))?;
    obj.insert("user_id".into(), json!(user_id));
    // The user reads this row: the analysis error's message is ours (the details are logged).
    if let Some(e) = result.analysis.error() {
        obj.insert(
            "analysis_error".into(),
            json!({"code": e.code, "message": e.code.user_message()}),
        );
    }
    obj.entry("analysis_error").or_insert(Value::Null);
    Ok(row)
}

/// A PostgREST client for the worker's two tables.
#[derive(Clone)]
pub struct SupabaseClient {
    rest: Postgrest,
    rest_url: String,
    retry: RetryPolicy,
    timeout: Duration,
}

impl fmt::Debug for SupabaseClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseClient")
            .field("rest_url", &crate::error::redact_url(&self.rest_url))
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SupabaseClient {
    /// A client for `config`: 5 attempts from 1 s backoff, 15 s per request.
    pub fn new(config: &SupabaseConfig) -> Result<SupabaseClient> {
        let key = config.service_key.expose_secret().trim();
        // postgrest panics on a header value it cannot send; refuse such a key politely.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::new(
                ErrorCode::ConfigMissing,
                "SUPABASE_SERVICE_KEY must be a non-empty token of printable ASCII",
            ));
        }
        let url = config.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::new(
                ErrorCode::ConfigMissing,
                format!("SUPABASE_URL must be an http(s) URL, got {url:?}"),
            ));
        }
        let rest_url = config.rest_url();
        let mut rest = Postgrest::new(rest_url.clone());
        for (name, value) in auth_headers(key) {
            rest = rest.insert_header(name, value);
        }
        Ok(SupabaseClient {
            rest,
            rest_url,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(15),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> SupabaseClient {
        self.retry = retry;
        self
    }

    /// The limit of one request (connect + reply); a timed-out request is retried.
    pub fn with_timeout(mut self, timeout: Duration) -> SupabaseClient {
        self.timeout = timeout;
        self
    }

    /// `{url}/rest/v1`.
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }

    /// The progress sink of one session, for `pipeline::Ports`.
    pub fn progress(&self, session_id: impl Into<String>) -> SupabaseProgress {
        SupabaseProgress {
            session_id: session_id.into(),
            attempt: None,
            client: self.clone(),
            last: Mutex::new(None),
        }
    }

    /// PATCHes the session's row with one progress report.
    pub async fn report(
        &self,
        session_id: &str,
        progress: &Progress,
        attempt: Option<u32>,
    ) -> Result<()> {
        let body = progress_body(progress, attempt).to_string();
        let stage = progress.stage.as_str();
        let what = format!("the {stage} progress of session {session_id}");
        self.send(
            &what,
            || {
                self.rest
                    .from(JOBS_TABLE)
                    .eq("session_id", session_id)
                    .update(body.clone())
            },
            PREFER_MINIMAL,
        )
        .await
        .map(drop)
    }

    /// Creates the session's job row (status queued) unless one exists; an existing row, e.g. the
    /// Edge Function's, is left as it is.
    pub async fn ensure_job(&self, job: &NewJob) -> Result<()> {
        let body = serde_json::to_string(job).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot serialise the job: {e}"),
            )
        })?;
        let what = format!("the job row of session {}", job.session_id);
        self.send(
            &what,
            || {
                self.rest
                    .from(JOBS_TABLE)
                    .insert(body.clone())
                    .on_conflict("session_id")
            },
            PREFER_INSERT_IF_ABSENT,
        )
        .await
        .map(drop)
    }

    /// Stores the result (an upsert keyed by session_id: delivering a job twice leaves one row),
    /// then marks the job completed at 100 % 「分析完了！」. The job row must exist.
    ///
    /// A result whose analysis failed is stored as it is (`analysis: null`, the error kept) but
    /// the job is marked `error` with the analysis' code: it fails visibly, never "completed"
    /// without its analysis. Whether to retry it is the caller's decision.
    pub async fn upsert_result(&self, result: &JobResult, user_id: &str) -> Result<()> {
        self.store_result(result, user_id).await?;
        self.mark_result_stored(result).await
    }

    /// The first half of [`SupabaseClient::upsert_result`]: the result row alone (an upsert keyed
    /// by session_id). The worker confirms its claim between the two halves.
    pub async fn store_result(&self, result: &JobResult, user_id: &str) -> Result<()> {
        let body = result_row(result, user_id)?.to_string();
        let what = format!("the result of session {}", result.session_id);
        self.send(
            &what,
            || {
                self.rest
                    .from(RESULTS_TABLE)
                    .upsert(body.clone())
                    .on_conflict("session_id")
            },
            PREFER_UPSERT,
        )
        .await
        .map(drop)
    }

    /// The second half of [`SupabaseClient::upsert_result`]: the job row says completed, or
    /// error with the analysis' code when the analysis failed.
    pub async fn mark_result_stored(&self, result: &JobResult) -> Result<()> {
        if let Some(e) = result.analysis.error() {
            let err = Error::new(e.code, e.message.clone());
            return self.mark_failed(&result.session_id, &err).await;
        }
        self.report(&result.session_id, &Progress::at(Stage::Completed), None)
            .await
    }

    /// Marks the session failed: stage `error`, the error code, and the user-facing message.
    pub async fn mark_failed(&self, session_id: &str, err: &Error) -> Result<()> {
        self.report(session_id, &Progress::error(err), None).await
    }

    /// Puts the session back to `queued` (graceful shutdown left the job for another worker).
    pub async fn mark_queued(&self, session_id: &str) -> Result<()> {
        self.report(session_id, &Progress::at(Stage::Queued), None)
            .await
    }

    /// The session's row, `None` if there is none. A completed session is not processed again.
    pub async fn job_status(&self, session_id: &str) -> Result<Option<JobState>> {
        let what = format!("the status of session {session_id}");
        let body = self
            .send(
                &what,
                || {
                    self.rest
                        .from(JOBS_TABLE)
                        .select("status,stage,progress,error_code,attempts")
                        .eq("session_id", session_id)
                },
                "",
            )
            .await?;
        let rows: Vec<JobState> = serde_json::from_str(&body).map_err(|e| {
            Error::new(
                ErrorCode::SupabaseWriteFailed,
                format!("unexpected reply reading {what}: {e}"),
            )
        })?;
        Ok(rows.into_iter().next())
    }

    /// Reads one row of the jobs table: proves the URL, the key and the migration (for `/ready`).
    pub async fn ping(&self) -> Result<()> {
        let quick = SupabaseClient {
            retry: RetryPolicy {
                max_attempts: 1,
                ..self.retry
            },
            ..self.clone()
        };
        quick
            .send(
                "a readiness probe",
                || self.rest.from(JOBS_TABLE).select("session_id").limit(1),
                "",
            )
            .await
            .map(drop)
    }

    /// Sends one request with retries (the shared [`RetryPolicy`]); returns the reply's body on
    /// success. `prefer` replaces postgrest's own `Prefer` (it always asks for
    /// `return=representation`); "" keeps none.
    async fn send(&self, what: &str, build: impl Fn() -> Builder, prefer: &str) -> Result<String> {
        let build = &build;
        self.retry
            .run(
                "supabase",
                || async move { self.attempt(what, build, prefer).await },
                |_, _| {},
                |attempts, last| {
                    Error::new(
                        ErrorCode::SupabaseWriteFailed,
                        format!(
                            "Supabase failed {what} after {attempts} attempts: {}",
                            last.reason
                        ),
                    )
                },
            )
            .await
    }

    /// One request: its body on a 2xx, permanent on a 4xx that will not heal, else transient.
    async fn attempt(
        &self,
        what: &str,
        build: &impl Fn() -> Builder,
        prefer: &str,
    ) -> Attempt<String> {
        let (client, request) = build().build().timeout(self.timeout).build_split();
        let mut request = match request {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Fail(Error::new(
                    ErrorCode::Internal,
                    format!("cannot build the request for {what}: {e}"),
                ));
            }
        };
        let headers = request.headers_mut();
        headers.remove("prefer");
        if !prefer.is_empty() {
            let Ok(value) = prefer.parse() else {
                return Attempt::Fail(Error::new(
                    ErrorCode::Internal,
                    format!("bad Prefer header {prefer:?}"),
                ));
            };
            headers.insert("prefer", value);
        }
        for name in ["apikey", "authorization"] {
            if let Some(v) = headers.get_mut(name) {
                v.set_sensitive(true);
            }
        }
        let response = match client.execute(request).await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(Transient::new(transport_failure(&e))),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_from(|name| {
            let value = response.headers().get(name)?;
            value.to_str().ok().map(String::from)
        });
        let transient = |reason: String| {
            Attempt::Retry(Transient {
                reason,
                retry_after,
                rate_limited: status == 429,
            })
        };
        match response.text().await {
            Ok(body) if (200..300).contains(&status) => Attempt::Done(body),
            Ok(body) if transient_status(status) => transient(describe_failure(status, &body)),
            Ok(body) => Attempt::Fail(Error::new(
                ErrorCode::SupabaseWriteFailed,
                format!(
                    "Supabase refused {what}: {}",
                    describe_failure(status, &body)
                ),
            )),
            Err(e) => transient(format!("HTTP {status}, reply lost: {e}")),
        }
    }
}

/// The headers that carry the service key. A legacy `service_role` key is a JWT and goes in
/// both `apikey` and `Authorization: Bearer`; a new secret key (`sb_secret_…`) is not a JWT and
/// goes in `apikey` only (Supabase's gateway then acts as service_role; a non-JWT bearer token is
/// refused).
pub fn auth_headers(key: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![("apikey", key.to_string())];
    if !key.starts_with("sb_") {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    headers
}

/// A transport failure (connection refused or reset, timeout) with its chain of causes. The URL in
/// it holds no secret: the key travels only in headers.
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// PostgREST's error `{code, message, details, hint}` as one line; other bodies truncated.
fn describe_failure(status: u16, body: &str) -> String {
    #[derive(Deserialize)]
    struct PostgrestError {
        code: Option<String>,
        message: Option<String>,
        details: Option<Value>,
        hint: Option<Value>,
    }
    let text = |v: &Option<Value>| match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    match serde_json::from_str::<PostgrestError>(body) {
        Ok(e) if e.message.is_some() || e.code.is_some() => {
            let mut line = format!("HTTP {status}");
            if let Some(code) = e.code {
                line.push_str(&format!(" {code}"));
            }
            line.push_str(&format!(": {}", e.message.unwrap_or_default()));
            if let Some(details) = text(&e.details) {
                line.push_str(&format!(" (details: {details})"));
            }
            if let Some(hint) = text(&e.hint) {
                line.push_str(&format!(" (hint: {hint})"));
            }
            line
        }
        _ => {
            let body: String = body.trim().chars().take(300).collect();
            if body.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {body}")
            }
        }
    }
}

/// Reports one session's progress to its `audio_processing_jobs` row ([`ProgressSink`]).
pub struct SupabaseProgress {
    pub session_id: String,
    /// The delivery attempt (1-based), written to `attempts` with every report when set.
    pub attempt: Option<u32>,
    client: SupabaseClient,
    /// The last (stage, percent) written: an identical report is not sent again.
    last: Mutex<Option<(Stage, u8)>>,
}

impl SupabaseProgress {
    pub fn with_attempt(mut self, attempt: u32) -> SupabaseProgress {
        self.attempt = Some(attempt);
        self
    }
}

impl fmt::Debug for SupabaseProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseProgress")
            .field("session_id", &self.session_id)
            .field("attempt", &self.attempt)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl ProgressSink for SupabaseProgress {
    fn report<'a>(&'a self, progress: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = (progress.stage, progress.percent);
            if progress.stage != Stage::Error && *self.last.lock().unwrap() == Some(key) {
                return Ok(());
            }
            self.client
                .report(&self.session_id, &progress, self.attempt)
                .await?;
            *self.last.lock().unwrap() = Some(key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_stage() {
        assert_eq!(JobStatus::of(Stage::Queued), JobStatus::Queued);
        assert_eq!(JobStatus::of(Stage::Transcribing), JobStatus::Processing);
        assert_eq!(JobStatus::of(Stage::Saving), JobStatus::Processing);
        assert_eq!(JobStatus::of(Stage::Completed), JobStatus::Completed);
        assert_eq!(JobStatus::of(Stage::Error), JobStatus::Error);
    }

    #[test]
    fn progress_bodies() {
        let body = progress_body(&Progress::transcribing(1, 2), Some(2));
        assert_eq!(
            body,
            json!({"status": "processing", "stage": "transcribing", "progress": 50,
                   "message": "音声を文字に変換中...", "error_code": null, "attempts": 2})
        );
        let err = Error::new(ErrorCode::StorageNotFound, "missing");
        let body = progress_body(&Progress::error(&err), None);
        assert_eq!(body["status"], "error");
        assert_eq!(body["error_code"], "STORAGE_NOT_FOUND");
        // An error report must name a code: the table requires one.
        let codeless = Progress {
            code: None,
            ..Progress::error(&err)
        };
        assert_eq!(progress_body(&codeless, None)["error_code"], "INTERNAL");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let config = SupabaseConfig {
            url: "https://x.supabase.co/".into(),
            service_key: "sb-secret-key-123".into(),
        };
        assert_eq!(config.rest_url(), "https://x.supabase.co/rest/v1");
        let client = SupabaseClient::new(&config).unwrap();
        let progress = client.progress("s");
        for text in [
            format!("{config:?}"),
            format!("{client:?}"),
            format!("{progress:?}"),
        ] {
            assert!(!text.contains("sb-secret-key-123"), "{text}");
        }
        let bad = SupabaseConfig {
            service_key: "two words".into(),
            ..config
        };
        assert_eq!(
            SupabaseClient::new(&bad).unwrap_err().code,
            ErrorCode::ConfigMissing
        );
    }

    #[test]
    fn new_secret_keys_go_in_apikey_only_legacy_jwts_in_both() {
        assert_eq!(
            auth_headers("sb_secret_abc123"),
            [("apikey", "sb_secret_abc123".to_string())]
        );
        assert_eq!(
            auth_headers("eyJhbGciOiJIUzI1NiJ9.e30.sig"),
            [
                ("apikey", "eyJhbGciOiJIUzI1NiJ9.e30.sig".to_string()),
                (
                    "Authorization",
                    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig".to_string()
                )
            ]
        );
        let config = SupabaseConfig {
            url: "https://x.supabase.co".into(),
            service_key: "sb_secret_abc123".into(),
        };
        SupabaseClient::new(&config).unwrap();
    }

    #[test]
    fn postgrest_errors_are_one_line() {
        let body = r#"{"code":"23514","message":"new row violates check constraint","details":"Failing row contains (...)","hint":null}"#;
        assert_eq!(
            describe_failure(400, body),
            "HTTP 400 23514: new row violates check constraint (details: Failing row contains (...))"
        );
        assert_eq!(
            describe_failure(502, "<html>bad gateway</html>"),
            "HTTP 502: <html>bad gateway</html>"
        );
        assert_eq!(describe_failure(503, ""), "HTTP 503");
        assert!(transient_status(503) && transient_status(429) && !transient_status(400));
    }
}
