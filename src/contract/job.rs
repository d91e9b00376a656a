//! The job wire format: what the Supabase Edge Function and `audio-worker enqueue` put into the
//! Redis stream (one field `job` holding this JSON), validated before anything touches storage.
//!
//! ```json
//! {"version": 1, "job_id": "…", "session_id": "…", "user_id": "…",
//!  "audio": {"bucket": "recordings", "key": "user/session/recording.webm"},
//!  "language": "ja", "enqueued_at": "2026-11-23T10:00:00.000Z", "signature": "…hex…"}
//! ```
//!
//! The published schema is `schemas/job.schema.json`; a unit test keeps the two in step.
//!
//! # Validation ([`Job::parse`])
//! - at most [`MAX_JOB_BYTES`] of JSON, no unknown fields, `version` == [`JOB_VERSION`];
//! - `job_id`, `session_id`, `user_id`: `^[A-Za-z0-9_-]{1,128}$` (a UUID fits);
//! - `audio.bucket`: an S3 bucket name, `^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`;
//! - `audio.key`: 1–1024 bytes, not absolute (no leading `/`), no `..` anywhere, no backslash, no
//!   control characters, no URL scheme (`s3:`, `https:`, …), no empty or `.` segment: it is a key
//!   inside our bucket, never a location of its own ([`key_problem`]). That it lies in the folder
//!   of the job's user, `{AUDIO_KEY_PREFIX}{user_id}/`, is checked by the worker against its
//!   configuration ([`check_owned_key`], `storage.rs`);
//! - `language`: ISO 639-1, two lowercase letters, optionally a region (`ja`, `en-US`); default
//!   `ja`;
//! - `enqueued_at`: RFC 3339 `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, what JavaScript's
//!   `new Date().toISOString()` writes;
//! - `keywords` (optional): at most [`MAX_KEYWORDS`] distinct terms (names, company words) for
//!   the transcriber, each 1–[`MAX_KEYWORD_CHARS`] characters, trimmed, no control characters.
//!
//! Every failure is [`ErrorCode::QueueInvalidJob`] (permanent) with a message naming the field.
//!
//! # Signature (optional, HMAC-SHA256)
//! When `JOB_SIGNING_SECRET` is set, the producer signs and the worker verifies. The signature is
//! the lowercase hex HMAC-SHA256, keyed with the secret's bytes, of the canonical string
//! ([`Job::canonical_string`]): these eight fields joined by a newline (`\n`), no trailing newline:
//!
//! ```text
//! version \n job_id \n session_id \n user_id \n audio.bucket \n audio.key \n language \n enqueued_at
//! ```
//!
//! followed, only when the job has keywords, by `\n` and each keyword in order joined by `\n`
//! (a job without keywords signs exactly as before they existed).
//!
//! Each field exactly as sent (version in decimal; `language` after the `ja` default is applied;
//! `enqueued_at` as the string in the JSON, not re-formatted). Validation forbids newlines in every
//! field, so the string is unambiguous. [`verify`] compares in constant time and also rejects a
//! job older than `max_age` (or dated more than [`MAX_CLOCK_SKEW`] in the future), so a captured
//! job cannot be replayed forever. Failures are [`ErrorCode::QueueBadSignature`] (permanent).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::PipelineJob;

/// The only wire version this worker understands.
pub const JOB_VERSION: u32 = 1;
/// Larger payloads are rejected before parsing (a job is a few hundred bytes).
pub const MAX_JOB_BYTES: usize = 16 * 1024;
/// Vocabulary terms one job may carry: enough for the names and company words of a session,
/// few enough that the request and the signature stay small.
pub const MAX_KEYWORDS: usize = 50;
/// Characters per keyword (a name or a short phrase).
pub const MAX_KEYWORD_CHARS: usize = 64;
/// The language when the producer does not say.
pub const DEFAULT_LANGUAGE: &str = "ja";
/// How far in the future `enqueued_at` may lie (producer clocks drift).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Longest accepted `audio.key` in bytes (S3's own limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// The patterns as published in `schemas/job.schema.json` (ECMA-262 regex syntax).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,128}$";
/// `session_id` and `user_id` are Supabase row ids (uuid columns): a job naming anything else
/// could never be written, so it is refused as invalid instead of failing at its first write.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
pub const BUCKET_PATTERN: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
pub const LANGUAGE_PATTERN: &str = "^[a-z]{2}(-[A-Z]{2})?$";
pub const ENQUEUED_AT_PATTERN: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$";

/// One recording to process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub version: u32,
    pub job_id: String,
    pub session_id: String,
    pub user_id: String,
    pub audio: AudioRef,
    #[serde(default = "default_language")]
    pub language: String,
    /// RFC 3339, as written by the producer.
    pub enqueued_at: String,
    /// Lowercase hex HMAC-SHA256 of [`Job::canonical_string`], when the producer has a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Names and terms the transcriber should expect (optional; sent as `keywords[]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
}

/// Where the recording lies: a key inside a bucket, never a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioRef {
    pub bucket: String,
    pub key: String,
}

fn default_language() -> String {
    DEFAULT_LANGUAGE.to_string()
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::QueueInvalidJob, format!("job.{field}: {why}"))
}

impl Job {
    /// A new unsigned job with a fresh random `job_id` (UUID v4 form), dated `now`.
    pub fn new(
        session_id: impl Into<String>,
        user_id: impl Into<String>,
        bucket: impl Into<String>,
        key: impl Into<String>,
        language: impl Into<String>,
        now: SystemTime,
    ) -> Job {
        Job {
            version: JOB_VERSION,
            job_id: new_job_id(),
            session_id: session_id.into(),
            user_id: user_id.into(),
            audio: AudioRef {
                bucket: bucket.into(),
                key: key.into(),
            },
            language: language.into(),
            enqueued_at: format_rfc3339(now),
            signature: None,
            keywords: Vec::new(),
        }
    }

    /// Parses and validates a job from the stream. Does not check the signature (see [`verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Job> {
        if bytes.len() > MAX_JOB_BYTES {
            return Err(Error::new(
                ErrorCode::QueueInvalidJob,
                format!(
                    "job: {} bytes is larger than the {MAX_JOB_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorCode::QueueInvalidJob, format!("job: not JSON: {e}")))?;
        let job = Job::from_value(&value)?;
        job.validate()?;
        Ok(job)
    }

    /// Field by field rather than through serde, so that every error names its field.
    fn from_value(value: &Value) -> Result<Job> {
        const FIELDS: [&str; 9] = [
            "version",
            "job_id",
            "session_id",
            "user_id",
            "audio",
            "language",
            "enqueued_at",
            "signature",
            "keywords",
        ];
        let obj = value
            .as_object()
            .ok_or_else(|| Error::new(ErrorCode::QueueInvalidJob, "job: must be a JSON object"))?;
        if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(k, "unknown field"));
        }
        let string = |obj: &Map<String, Value>, at: &str, name: &str| -> Result<Option<String>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(&format!("{at}{name}"), "must be a string")),
            }
        };
        let required = |obj: &Map<String, Value>, at: &str, name: &str| -> Result<String> {
            string(obj, at, name)?.ok_or_else(|| invalid(&format!("{at}{name}"), "is missing"))
        };
        let version = match obj.get("version") {
            None => return Err(invalid("version", "is missing")),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| invalid("version", "must be a small whole number"))?,
        };
        let audio = match obj.get("audio") {
            None => return Err(invalid("audio", "is missing")),
            Some(Value::Object(a)) => {
                if let Some(k) = a.keys().find(|k| *k != "bucket" && *k != "key") {
                    return Err(invalid(&format!("audio.{k}"), "unknown field"));
                }
                AudioRef {
                    bucket: required(a, "audio.", "bucket")?,
                    key: required(a, "audio.", "key")?,
                }
            }
            Some(_) => return Err(invalid("audio", "must be an object {bucket, key}")),
        };
        Ok(Job {
            version,
            job_id: required(obj, "", "job_id")?,
            session_id: required(obj, "", "session_id")?,
            user_id: required(obj, "", "user_id")?,
            audio,
            language: string(obj, "", "language")?.unwrap_or_else(default_language),
            enqueued_at: required(obj, "", "enqueued_at")?,
            signature: string(obj, "", "signature")?,
            keywords: keywords_of(obj.get("keywords"))?,
        })
    }

    /// Checks every field (see the module documentation); the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.version != JOB_VERSION {
            return Err(invalid(
                "version",
                format!("{} is not supported (expected {JOB_VERSION})", self.version),
            ));
        }
        check_id("job_id", &self.job_id)?;
        check_uuid("session_id", &self.session_id)?;
        check_uuid("user_id", &self.user_id)?;
        check_bucket(&self.audio.bucket)?;
        check_key(&self.audio.key)?;
        check_language(&self.language)?;
        parse_rfc3339(&self.enqueued_at)
            .ok_or_else(|| invalid("enqueued_at", "not an RFC 3339 timestamp"))?;
        check_keywords(&self.keywords)?;
        if let Some(sig) = &self.signature
            && (sig.len() != 64 || !sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(invalid("signature", "must be 64 lowercase hex digits"));
        }
        Ok(())
    }

    /// The JSON written to the stream's `job` field.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Job always serialises")
    }

    /// The string the signature covers (module documentation).
    pub fn canonical_string(&self) -> String {
        [
            self.version.to_string().as_str(),
            &self.job_id,
            &self.session_id,
            &self.user_id,
            &self.audio.bucket,
            &self.audio.key,
            &self.language,
            &self.enqueued_at,
        ]
        .into_iter()
        .chain(self.keywords.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// `enqueued_at` as a point in time (None when it does not parse).
    pub fn enqueued_time(&self) -> Option<SystemTime> {
        let ms = parse_rfc3339(&self.enqueued_at)?;
        if ms >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_millis(ms.unsigned_abs()))
        }
    }

    /// The two-letter language for the transcriber (`en-US` → `en`).
    pub fn base_language(&self) -> &str {
        self.language.split('-').next().unwrap_or(&self.language)
    }

    /// What `pipeline::run` needs from this job.
    pub fn pipeline_job(&self) -> PipelineJob {
        PipelineJob {
            session_id: self.session_id.clone(),
            language: Some(self.base_language().to_string()),
            keywords: self.keywords.clone(),
        }
    }

    /// Verifies only when a secret is configured: `None` accepts signed and unsigned jobs alike.
    pub fn check_signature(
        &self,
        secret: Option<&[u8]>,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<()> {
        match secret {
            Some(secret) => verify(self, secret, now, max_age),
            None => Ok(()),
        }
    }
}

fn check_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(invalid(field, "longer than 128 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            field,
            "only letters, digits, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

fn check_uuid(field: &str, value: &str) -> Result<()> {
    // 36 characters: the hyphenated form only (the parser also takes braced and URN forms).
    if value.len() != 36 || uuid::Uuid::try_parse(value).is_err() {
        return Err(invalid(
            field,
            "must be a UUID (8-4-4-4-12 hexadecimal digits), the Supabase row id",
        ));
    }
    Ok(())
}

fn check_bucket(bucket: &str) -> Result<()> {
    let b = bucket.as_bytes();
    let inner_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if bucket.is_empty() {
        return Err(invalid("audio.bucket", "must not be empty"));
    }
    if !(3..=63).contains(&b.len())
        || !inner_ok(b[0])
        || !inner_ok(b[b.len() - 1])
        || !b.iter().all(|&c| inner_ok(c) || c == b'.' || c == b'-')
    {
        return Err(invalid(
            "audio.bucket",
            "not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')",
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<()> {
    match key_problem(key) {
        Some(why) => Err(invalid("audio.key", why)),
        None => Ok(()),
    }
}

/// Why `key` is not a plain object key, or `None` when it is. The one key rule of the worker
/// (here and in `storage.rs`) and of the Edge Function (`keyProblem` in its `handler.ts`); both
/// run the shared vectors of `schemas/audio-key-vectors.json`:
///
/// 1–1024 bytes; not absolute (no leading `/`); no URL scheme at the start (`s3:`, `https:`);
/// no backslash; no control characters; no `..` anywhere; no empty segment (`a//b`, a trailing
/// `/`) and no `.` segment.
pub fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Some("must not be longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return Some("must be relative to the bucket, not start with '/'");
    }
    if key.contains("..") {
        return Some("must not contain '..'");
    }
    if key.contains('\\') {
        return Some("must not contain '\\'");
    }
    if key.chars().any(char::is_control) {
        return Some("must not contain control characters");
    }
    if has_scheme(key) {
        return Some("must be a key inside the bucket, not a URL");
    }
    if key.split('/').any(str::is_empty) {
        return Some("must not contain an empty segment ('//' or a trailing '/')");
    }
    if key.split('/').any(|segment| segment == ".") {
        return Some("must not contain a '.' segment");
    }
    None
}

/// The folder every key of `user_id` must lie in: `{AUDIO_KEY_PREFIX}{user_id}/`.
pub fn owner_folder(prefix: Option<&str>, user_id: &str) -> String {
    format!("{}{user_id}/", prefix.unwrap_or(""))
}

/// The whole rule for a job's key: a plain key ([`key_problem`]) inside the folder of the job's
/// user ([`owner_folder`]). `Err` says why not.
pub fn check_owned_key(
    prefix: Option<&str>,
    user_id: &str,
    key: &str,
) -> std::result::Result<(), String> {
    if let Some(why) = key_problem(key) {
        return Err(why.to_string());
    }
    let folder = owner_folder(prefix, user_id);
    if !key.starts_with(&folder) {
        return Err(format!("it is outside the user's folder {folder:?}"));
    }
    Ok(())
}

/// `scheme:` at the start (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":").
fn has_scheme(s: &str) -> bool {
    let Some(colon) = s.find(':') else {
        return false;
    };
    let scheme = &s.as_bytes()[..colon];
    !scheme.is_empty()
        && scheme[0].is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.')
}

/// `keywords` as a list of strings (absent or null: none).
fn keywords_of(value: Option<&Value>) -> Result<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| invalid(&format!("keywords[{i}]"), "must be a string"))
            })
            .collect(),
        Some(_) => Err(invalid("keywords", "must be an array of strings")),
    }
}

/// The bounds of `keywords` (module documentation): they reach a paid API and the signature, so
/// they are small, plain and unambiguous (no newline can shift the canonical string).
pub fn check_keywords(keywords: &[String]) -> Result<()> {
    if keywords.len() > MAX_KEYWORDS {
        return Err(invalid(
            "keywords",
            format!("{} terms, at most {MAX_KEYWORDS} allowed", keywords.len()),
        ));
    }
    for (i, k) in keywords.iter().enumerate() {
        let field = format!("keywords[{i}]");
        let n = k.chars().count();
        if n == 0 || n > MAX_KEYWORD_CHARS {
            return Err(invalid(
                &field,
                format!("must have 1 to {MAX_KEYWORD_CHARS} characters, has {n}"),
            ));
        }
        if k.trim() != k || k.chars().any(char::is_control) {
            return Err(invalid(
                &field,
                "no leading or trailing space, no control characters",
            ));
        }
        if keywords[..i].contains(k) {
            return Err(invalid(&field, format!("{k:?} is repeated")));
        }
    }
    Ok(())
}

fn check_language(lang: &str) -> Result<()> {
    let b = lang.as_bytes();
    let ok = match b.len() {
        2 => b.iter().all(u8::is_ascii_lowercase),
        5 => {
            b[..2].iter().all(u8::is_ascii_lowercase)
                && b[2] == b'-'
                && b[3..].iter().all(u8::is_ascii_uppercase)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "language",
            format!("{lang:?} is not an ISO 639-1 code like \"ja\" or \"en-US\""),
        ))
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac_of(job: &Job, secret: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(job.canonical_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Sets `job.signature` to the hex HMAC-SHA256 of its canonical string.
pub fn sign(job: &mut Job, secret: &[u8]) {
    job.signature = Some(hex::encode(mac_of(job, secret)));
}

/// Checks the signature in constant time and the job's age: older than `max_age` (from
/// `enqueued_at`) or more than [`MAX_CLOCK_SKEW`] in the future is rejected. Every failure is
/// [`ErrorCode::QueueBadSignature`]; the message never contains the expected signature.
pub fn verify(job: &Job, secret: &[u8], now: SystemTime, max_age: Duration) -> Result<()> {
    let bad = |why: &str| {
        Error::new(
            ErrorCode::QueueBadSignature,
            format!("job signature: {why}"),
        )
    };
    let Some(sig) = &job.signature else {
        return Err(bad("missing, and JOB_SIGNING_SECRET is set"));
    };
    let given = hex::decode(sig).map_err(|_| bad("not hex"))?;
    let expected = mac_of(job, secret);
    if !bool::from(expected.as_slice().ct_eq(given.as_slice())) {
        return Err(bad("does not match"));
    }
    let enqueued = job
        .enqueued_time()
        .ok_or_else(|| bad("enqueued_at is not a timestamp"))?;
    match now.duration_since(enqueued) {
        Ok(age) if age > max_age => Err(bad(&format!(
            "expired: enqueued {}s ago, the limit is {}s",
            age.as_secs(),
            max_age.as_secs()
        ))),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > MAX_CLOCK_SKEW => Err(bad(&format!(
            "enqueued_at lies {}s in the future",
            ahead.duration().as_secs()
        ))),
        Err(_) => Ok(()),
    }
}

/// A random UUID v4 in its usual text form.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds), like JavaScript's `toISOString()`.
pub fn format_rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp in [`ENQUEUED_AT_PATTERN`]'s
/// shape, or None. RFC 3339 itself also allows a space or a lowercase `t` between date and time,
/// a lowercase `z` and any number of fraction digits; the published pattern does not, so neither
/// does this.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let fraction_digits = s
        .split_once('.')
        .map_or(0, |(_, f)| f.bytes().take_while(u8::is_ascii_digit).count());
    if s.as_bytes().get(10) != Some(&b'T') || s.contains('z') || fraction_digits > 9 {
        return None;
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn now() -> SystemTime {
        // 2026-11-23T10:00:00Z
        UNIX_EPOCH + Duration::from_secs(1_795_428_000)
    }

    fn good() -> Value {
        json!({
            "version": 1,
            "job_id": "0b4e7c2a-5f0e-4c1d-9a57-2f7d2c6b1e11",
            "session_id": "3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f",
            "user_id": "5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
            "audio": {"bucket": "recordings", "key": "user_42/3f1c/recording.webm"},
            "language": "ja",
            "enqueued_at": "2026-11-23T09:59:30.123Z"
        })
    }

    fn parse(v: &Value) -> Result<Job> {
        Job::parse(&serde_json::to_vec(v).unwrap())
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut v = good();
        let mut at = &mut v;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = good();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[track_caller]
    fn rejects(v: Value, field: &str) {
        let err = parse(&v).expect_err("must be rejected");
        assert_eq!(err.code, ErrorCode::QueueInvalidJob, "{err}");
        assert!(err.message.contains(field), "{field} not named in: {err}");
    }

    #[test]
    fn a_good_job_parses_and_round_trips() {
        let job = parse(&good()).unwrap();
        assert_eq!(job.audio.bucket, "recordings");
        assert_eq!(job.language, "ja");
        let again = Job::parse(&job.to_json()).unwrap();
        assert_eq!(again, job);
        // No signature: the key is left out, not written as null.
        assert!(
            !String::from_utf8(job.to_json())
                .unwrap()
                .contains("signature")
        );
    }

    #[test]
    fn language_defaults_to_japanese() {
        let job = parse(&without("language")).unwrap();
        assert_eq!(job.language, "ja");
        let job = parse(&with(&["language"], json!("en-US"))).unwrap();
        assert_eq!(job.base_language(), "en");
        assert_eq!(job.pipeline_job().language.as_deref(), Some("en"));
    }

    #[test]
    fn size_cap() {
        let mut v = good();
        v["audio"]["key"] = json!("a".repeat(MAX_JOB_BYTES));
        rejects(v, "limit");
    }

    #[test]
    fn broken_json_and_unknown_or_missing_fields() {
        let err = Job::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueInvalidJob);
        rejects(without("session_id"), "session_id");
        rejects(without("audio"), "audio");
        rejects(without("enqueued_at"), "enqueued_at");
        rejects(with(&["extra"], json!(1)), "extra");
        rejects(with(&["audio", "url"], json!("https://x")), "url");
        rejects(with(&["version"], json!("1")), "version");
        rejects(with(&["session_id"], json!(42)), "session_id");
        rejects(with(&["audio"], json!("recordings/x.webm")), "audio");
        rejects(with(&["audio", "key"], json!(["x"])), "audio.key");
        let err = Job::parse(b"[1]").unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueInvalidJob);
    }

    #[test]
    fn version() {
        rejects(with(&["version"], json!(2)), "job.version");
        rejects(with(&["version"], json!(0)), "job.version");
    }

    #[test]
    fn ids() {
        for field in ["job_id", "session_id", "user_id"] {
            rejects(with(&[field], json!("")), field);
            rejects(with(&[field], json!("a".repeat(129))), field);
            rejects(with(&[field], json!("a/b")), field);
            rejects(with(&[field], json!("a b")), field);
            rejects(with(&[field], json!("a\nb")), field);
            rejects(with(&[field], json!("ä")), field);
        }
        parse(&with(&["job_id"], json!("a".repeat(128)))).unwrap();
        parse(&with(&["job_id"], json!("Ab_9-"))).unwrap();
        for field in ["session_id", "user_id"] {
            rejects(with(&[field], json!("Ab_9-")), field);
            rejects(
                with(&[field], json!("3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6")),
                field,
            );
            rejects(
                with(&[field], json!("3f1c9d2e8b7a4c6d9e0f1a2b3c4d5e6f")),
                field,
            );
            rejects(
                with(&[field], json!("3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6g")),
                field,
            );
            parse(&with(
                &[field],
                json!("3F1C9D2E-8B7A-4C6D-9E0F-1A2B3C4D5E6F"),
            ))
            .unwrap();
        }
    }

    #[test]
    fn bucket() {
        rejects(with(&["audio", "bucket"], json!("")), "audio.bucket");
        for bad in [
            "ab",
            "Recordings",
            "-rec",
            "rec-",
            "rec/x",
            "rec_x",
            &"a".repeat(64),
        ] {
            rejects(with(&["audio", "bucket"], json!(bad)), "audio.bucket");
        }
        for ok in ["abc", "my.bucket-1", &"a".repeat(63)] {
            parse(&with(&["audio", "bucket"], json!(ok))).unwrap();
        }
    }

    #[test]
    fn key() {
        for bad in [
            "",
            "/etc/passwd",
            "../other/x.webm",
            "a/../../b",
            "a/..",
            "a\\b",
            "a\nb",
            "a\u{0}b",
            "https://evil.example/x.webm",
            "s3:other-bucket/x",
            "file:///etc/passwd",
            &"k".repeat(MAX_KEY_BYTES + 1),
        ] {
            rejects(with(&["audio", "key"], json!(bad)), "audio.key");
        }
        for ok in [
            "x.webm",
            "user/session/recording.webm",
            "a/b.c/d e (1).m4a",
            "録音/会話.webm",
            "2026/11:23/x.wav", // a colon after a slash is not a scheme
            "9x:y",             // nor one starting with a digit
        ] {
            parse(&with(&["audio", "key"], json!(ok))).unwrap();
        }
    }

    #[test]
    fn language() {
        for bad in ["", "j", "jpn", "JA", "ja-jp", "ja_JP", "ja-JPN", "12"] {
            rejects(with(&["language"], json!(bad)), "language");
        }
        for ok in ["ja", "en", "en-US", "pt-BR"] {
            parse(&with(&["language"], json!(ok))).unwrap();
        }
    }

    #[test]
    fn enqueued_at() {
        for bad in [
            "",
            "yesterday",
            "2026-11-23",
            "2026-11-23 10:00:00Z",
            "2026-11-23T10:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00.1234567890Z",
            "2026-11-23T10:00:00+0900",
            "2026-11-23T10:00:00+09:00x",
        ] {
            rejects(with(&["enqueued_at"], json!(bad)), "enqueued_at");
        }
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.5Z"),
            Some(1_709_164_800_500)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T19:00:00+09:00"),
            parse_rfc3339("2026-11-23T10:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00Z"),
            Some(1_795_428_000_000)
        );
        assert_eq!(format_rfc3339(now()), "2026-11-23T10:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_164_800_500);
        assert_eq!(format_rfc3339(t), "2024-02-29T00:00:00.500Z");
        for ms in [0i64, 951_782_400_123, 4_102_444_799_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(ms));
        }
    }

    #[test]
    fn signature_shape() {
        rejects(with(&["signature"], json!("zz")), "signature");
        rejects(with(&["signature"], json!("g".repeat(64))), "signature");
        rejects(with(&["signature"], json!(7)), "signature");
        rejects(with(&["signature"], json!("A".repeat(64))), "signature");
        // null is the same as absent.
        assert_eq!(
            parse(&with(&["signature"], json!(null))).unwrap().signature,
            None
        );
    }

    #[test]
    fn new_jobs_are_valid_and_unique() {
        let (s1, u1) = (new_job_id(), new_job_id());
        let a = Job::new(&s1, &u1, "recordings", "u1/s1/a.webm", "ja", now());
        let b = Job::new(&s1, &u1, "recordings", "u1/s1/a.webm", "ja", now());
        a.validate().unwrap();
        assert_ne!(a.job_id, b.job_id);
        assert_eq!(a.job_id.len(), 36);
        assert_eq!(&a.job_id[14..15], "4");
    }

    fn signed() -> Job {
        let mut job = parse(&good()).unwrap();
        sign(&mut job, SECRET);
        job
    }

    #[test]
    fn a_signed_job_verifies_after_the_wire() {
        let job = signed();
        let back = Job::parse(&job.to_json()).unwrap();
        verify(&back, SECRET, now(), Duration::from_secs(3600)).unwrap();
        back.check_signature(Some(SECRET), now(), Duration::from_secs(3600))
            .unwrap();
        // A known vector, so the Edge Function's implementation can be checked against ours.
        assert_eq!(
            back.canonical_string(),
            "1\n0b4e7c2a-5f0e-4c1d-9a57-2f7d2c6b1e11\n3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f\n\
             5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d\nrecordings\nuser_42/3f1c/recording.webm\nja\n\
             2026-11-23T09:59:30.123Z"
        );
        let expected = {
            let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
            mac.update(back.canonical_string().as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(back.signature.as_deref(), Some(expected.as_str()));
        // Computed with Python's hmac module; the Edge Function's test checks the same value.
        assert_eq!(
            expected,
            "b9a9cb80bff7fab71bf0dd1d72035d0c948f9195cfd53e02316da5e1b3ba07c7"
        );
    }

    #[track_caller]
    fn bad_signature(job: &Job, now: SystemTime, max_age: Duration, says: &str) {
        let err = verify(job, SECRET, now, max_age).expect_err("must fail");
        assert_eq!(err.code, ErrorCode::QueueBadSignature);
        assert!(err.message.contains(says), "{err}");
    }

    #[test]
    fn every_tampered_field_fails() {
        let hour = Duration::from_secs(3600);
        let tampers: Vec<fn(&mut Job)> = vec![
            |j| j.version = 2,
            |j| j.job_id.push('x'),
            |j| j.session_id = "other-session".into(),
            |j| j.user_id = "attacker".into(),
            |j| j.audio.bucket = "other-bucket".into(),
            |j| j.audio.key = "user_1/secret.webm".into(),
            |j| j.language = "en".into(),
            |j| j.enqueued_at = "2026-11-23T09:59:31.123Z".into(),
        ];
        for tamper in tampers {
            let mut job = signed();
            tamper(&mut job);
            bad_signature(&job, now(), hour, "does not match");
        }
        // Wrong secret, truncated and non-hex signatures.
        let job = signed();
        let err = verify(&job, b"other-secret", now(), hour).unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueBadSignature);
        let mut short = signed();
        short.signature.as_mut().unwrap().truncate(62);
        bad_signature(&short, now(), hour, "does not match");
        let mut nonhex = signed();
        nonhex.signature = Some("x".repeat(64));
        bad_signature(&nonhex, now(), hour, "not hex");
    }

    #[test]
    fn old_and_future_jobs_fail() {
        let job = signed(); // enqueued 29.877 s before now()
        verify(&job, SECRET, now(), Duration::from_secs(30)).unwrap();
        bad_signature(&job, now(), Duration::from_secs(29), "expired");
        // 300.123 s ahead of the clock: beyond the tolerated skew.
        let early = now() - Duration::from_secs(30) - MAX_CLOCK_SKEW;
        bad_signature(&job, early, Duration::from_secs(3600), "future");
        // Small clock skew is tolerated.
        verify(
            &job,
            SECRET,
            now() - Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .unwrap();
    }

    #[test]
    fn missing_signature_fails_only_when_a_secret_is_set() {
        let job = parse(&good()).unwrap();
        bad_signature(&job, now(), Duration::from_secs(3600), "missing");
        let err = job
            .check_signature(Some(SECRET), now(), Duration::from_secs(3600))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueBadSignature);
        job.check_signature(None, now(), Duration::from_secs(3600))
            .unwrap();
        signed()
            .check_signature(None, now(), Duration::from_secs(3600))
            .unwrap();
    }

    /// Issue 12, keywords: optional, bounded, and covered by the signature.
    #[test]
    fn keywords_are_bounded_and_signed() {
        let mut job = signed();
        let plain = job.canonical_string();
        job.keywords = vec!["山田".into(), "Acme".into()];
        assert_eq!(job.canonical_string(), format!("{plain}\n山田\nAcme"));
        assert!(
            verify(&job, SECRET, now(), Duration::from_secs(3600)).is_err(),
            "tampered"
        );
        sign(&mut job, SECRET);
        let back = Job::parse(&job.to_json()).unwrap();
        assert_eq!(back.keywords, ["山田", "Acme"]);
        verify(&back, SECRET, now(), Duration::from_secs(3600)).unwrap();
        assert_eq!(back.pipeline_job().keywords, ["山田", "Acme"]);

        let refused = |keywords: Vec<String>| {
            let mut j = job.clone();
            j.keywords = keywords;
            let e = Job::parse(&j.to_json()).unwrap_err();
            assert_eq!(e.code, ErrorCode::QueueInvalidJob);
            e.message
        };
        assert!(refused((0..=MAX_KEYWORDS).map(|i| format!("k{i}")).collect()).contains("at most"));
        assert!(refused(vec!["x".repeat(MAX_KEYWORD_CHARS + 1)]).contains("keywords[0]"));
        assert!(refused(vec!["".into()]).contains("keywords[0]"));
        assert!(refused(vec!["a\nb".into()]).contains("control"));
        assert!(refused(vec![" a".into()]).contains("space"));
        assert!(refused(vec!["a".into(), "a".into()]).contains("repeated"));
        let mut v: Value = serde_json::from_slice(&job.to_json()).unwrap();
        v["keywords"] = json!("not a list");
        let e = Job::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("job.keywords"), "{}", e.message);
    }

    /// The published schema and the struct must not drift apart: the serialized Job has exactly
    /// the schema's keys, the required ones, the types, and the patterns the code enforces.
    #[test]
    fn serialized_job_matches_the_published_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/job.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let mut full = signed();
        full.language = "en-US".into();
        full.keywords = vec!["山田太郎".into(), "Acme株式会社".into()];
        sign(&mut full, SECRET);
        let unsigned = parse(&good()).unwrap();
        for job in [&full, &unsigned] {
            let value: Value = serde_json::from_slice(&job.to_json()).unwrap();
            check(&schema, &value, "job");
        }
        // Every schema property is produced by a full job, and nothing else is.
        let full_value: Value = serde_json::from_slice(&full.to_json()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let keys: Vec<_> = full_value.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), props.len(), "{keys:?} vs {:?}", props.keys());
        // Required: everything but language (defaulted) and signature (optional).
        let mut required: Vec<_> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(
            required,
            [
                "audio",
                "enqueued_at",
                "job_id",
                "session_id",
                "user_id",
                "version"
            ]
        );
        assert_eq!(
            schema["properties"]["language"]["default"],
            DEFAULT_LANGUAGE
        );
        assert_eq!(schema["properties"]["version"]["const"], JOB_VERSION);
        assert_eq!(schema["properties"]["job_id"]["pattern"], ID_PATTERN);
        for id in ["session_id", "user_id"] {
            assert_eq!(schema["properties"][id]["pattern"], UUID_PATTERN, "{id}");
        }
        let audio = &schema["properties"]["audio"]["properties"];
        assert_eq!(audio["bucket"]["pattern"], BUCKET_PATTERN);
        assert_eq!(audio["key"]["maxLength"], MAX_KEY_BYTES);
        assert_eq!(
            schema["properties"]["language"]["pattern"],
            LANGUAGE_PATTERN
        );
        assert_eq!(
            schema["properties"]["enqueued_at"]["pattern"],
            ENQUEUED_AT_PATTERN
        );
        assert_eq!(
            schema["properties"]["signature"]["pattern"],
            "^[0-9a-f]{64}$"
        );
        let keywords = &schema["properties"]["keywords"];
        assert_eq!(keywords["maxItems"], MAX_KEYWORDS);
        assert_eq!(keywords["items"]["maxLength"], MAX_KEYWORD_CHARS);
        // The key's schema rejects what check_key rejects, as far as simple patterns say it.
        let not = &audio["key"]["not"]["anyOf"];
        assert!(
            not.is_array(),
            "audio.key must forbid '..', schemes, '/' etc."
        );
    }

    /// The parts of JSON Schema job.schema.json uses: type, required, properties,
    /// additionalProperties: false, const, minLength/maxLength (in characters).
    fn check(schema: &Value, value: &Value, at: &str) {
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "object" => value.is_object(),
                "string" => value.is_string(),
                "integer" => value.is_u64() || value.is_i64(),
                "array" => value.is_array(),
                other => panic!("{at}: type {other} not handled"),
            };
            assert!(ok, "{at} = {value} is not of type {ty}");
        }
        if let Some(c) = schema.get("const") {
            assert_eq!(value, c, "{at}");
        }
        if let Some(s) = value.as_str() {
            let n = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                assert!(n >= min, "{at} shorter than {min}");
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                assert!(n <= max, "{at} longer than {max}");
            }
        }
        if let Some(items) = value.as_array() {
            let max = schema["maxItems"].as_u64().expect("arrays are bounded");
            assert!(items.len() as u64 <= max, "{at} has more than {max} items");
            assert_eq!(schema["uniqueItems"], Value::Bool(true), "{at}");
            for (i, item) in items.iter().enumerate() {
                check(&schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let obj = value.as_object().unwrap();
            assert_eq!(
                schema["additionalProperties"],
                Value::Bool(false),
                "{at} must be closed"
            );
            for key in schema["required"].as_array().unwrap() {
                assert!(obj.contains_key(key.as_str().unwrap()), "{at} lacks {key}");
            }
            for (key, v) in obj {
                let sub = props
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} is not in the schema"));
                check(sub, v, &format!("{at}.{key}"));
            }
        }
    }
}
