//! Stable error codes: the one place every failure of the worker is named.
//!
//! A code is what the user's browser, the job row and the logs show; the message is for humans.
//! Each code is either permanent (retrying cannot help: bad audio, a forbidden key) or retryable
//! (the outside world may heal: a rate limit, a storage hiccup).

use std::fmt;

/// Every failure the worker can report, in the PREFIX_WHAT style of ARCHITECTURE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The bytes are not a container we can read (text, random bytes, unknown format).
    AudioUnsupportedFormat,
    /// The container was recognised but its audio could not be decoded.
    AudioDecodeFailed,
    /// The container holds no audio track (e.g. a video-only recording).
    AudioNoAudioTrack,
    /// The file is empty or decodes to no samples at all.
    AudioEmpty,
    /// The recording is shorter than the minimum we accept.
    AudioTooShort,
    /// The recording decodes, but nobody speaks in it (silence, hiss).
    AudioNoSpeech,
    /// The recording is longer than the configured maximum duration.
    AudioTooLong,
    /// The file is larger than the configured maximum input size.
    AudioTooLarge,
    StorageNotFound,
    StorageForbiddenKey,
    /// The storage service refused our credentials for the object (S3 403 AccessDenied): a
    /// wrong key or policy will not heal by retrying.
    StorageAccessDenied,
    StorageDownloadFailed,
    WhisperRateLimited,
    WhisperFailed,
    /// The OpenAI account has no quota left (429 `insufficient_quota`): retrying cannot help
    /// until someone pays; not a rate limit.
    WhisperQuotaExceeded,
    /// The transcription API refused the request itself (400, 401, 403, 404, 413, other 4xx
    /// but 408/429): a bad key, model or file; retrying the job cannot help.
    WhisperRejected,
    GeminiFailed,
    /// Gemini's safety filters refused the prompt or the reply: retrying cannot help.
    GeminiBlocked,
    GeminiInvalidResponse,
    SupabaseWriteFailed,
    QueueInvalidJob,
    QueueBadSignature,
    /// The queue could not be reached to enqueue the job (written by the Edge Function when its
    /// XADD fails, so the browser does not wait for a job that was never queued).
    QueueUnavailable,
    /// Configuration needed for this run is missing or invalid (the message names it).
    ConfigMissing,
    /// A bug or an environment failure (disk full, temp dir not writable).
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::AudioUnsupportedFormat,
        ErrorCode::AudioDecodeFailed,
        ErrorCode::AudioNoAudioTrack,
        ErrorCode::AudioEmpty,
        ErrorCode::AudioTooShort,
        ErrorCode::AudioNoSpeech,
        ErrorCode::AudioTooLong,
        ErrorCode::AudioTooLarge,
        ErrorCode::StorageNotFound,
        ErrorCode::StorageForbiddenKey,
        ErrorCode::StorageAccessDenied,
        ErrorCode::StorageDownloadFailed,
        ErrorCode::WhisperRateLimited,
        ErrorCode::WhisperFailed,
        ErrorCode::WhisperQuotaExceeded,
        ErrorCode::WhisperRejected,
        ErrorCode::GeminiFailed,
        ErrorCode::GeminiBlocked,
        ErrorCode::GeminiInvalidResponse,
        ErrorCode::SupabaseWriteFailed,
        ErrorCode::QueueInvalidJob,
        ErrorCode::QueueBadSignature,
        ErrorCode::QueueUnavailable,
        ErrorCode::ConfigMissing,
        ErrorCode::Internal,
    ];

    /// The stable wire name, e.g. `AUDIO_DECODE_FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AudioUnsupportedFormat => "AUDIO_UNSUPPORTED_FORMAT",
            ErrorCode::AudioDecodeFailed => "AUDIO_DECODE_FAILED",
            ErrorCode::AudioNoAudioTrack => "AUDIO_NO_AUDIO_TRACK",
            ErrorCode::AudioEmpty => "AUDIO_EMPTY",
            ErrorCode::AudioTooShort => "AUDIO_TOO_SHORT",
            ErrorCode::AudioNoSpeech => "AUDIO_NO_SPEECH",
            ErrorCode::AudioTooLong => "AUDIO_TOO_LONG",
            ErrorCode::AudioTooLarge => "AUDIO_TOO_LARGE",
            ErrorCode::StorageNotFound => "STORAGE_NOT_FOUND",
            ErrorCode::StorageForbiddenKey => "STORAGE_FORBIDDEN_KEY",
            ErrorCode::StorageAccessDenied => "STORAGE_ACCESS_DENIED",
            ErrorCode::StorageDownloadFailed => "STORAGE_DOWNLOAD_FAILED",
            ErrorCode::WhisperRateLimited => "WHISPER_RATE_LIMITED",
            ErrorCode::WhisperFailed => "WHISPER_FAILED",
            ErrorCode::WhisperQuotaExceeded => "WHISPER_QUOTA_EXCEEDED",
            ErrorCode::WhisperRejected => "WHISPER_REJECTED",
            ErrorCode::GeminiFailed => "GEMINI_FAILED",
            ErrorCode::GeminiBlocked => "GEMINI_BLOCKED",
            ErrorCode::GeminiInvalidResponse => "GEMINI_INVALID_RESPONSE",
            ErrorCode::SupabaseWriteFailed => "SUPABASE_WRITE_FAILED",
            ErrorCode::QueueInvalidJob => "QUEUE_INVALID_JOB",
            ErrorCode::QueueBadSignature => "QUEUE_BAD_SIGNATURE",
            ErrorCode::QueueUnavailable => "QUEUE_UNAVAILABLE",
            ErrorCode::ConfigMissing => "CONFIG_MISSING",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// What the user's row says for this code: ours, in Japanese, the same for every failure of
    /// the code. Never the upstream text, a key, a bucket or a URL (issue 15, item 9): the
    /// details of a failure go to the logs ([`redact`]), this table to the browser.
    pub fn user_message(self) -> &'static str {
        match self {
            ErrorCode::AudioUnsupportedFormat => "対応していない音声形式です",
            ErrorCode::AudioDecodeFailed => {
                "音声ファイルを読み取れませんでした (ファイルが破損している可能性があります)"
            }
            ErrorCode::AudioNoAudioTrack => "ファイルに音声が含まれていません",
            ErrorCode::AudioEmpty => "音声ファイルが空です",
            ErrorCode::AudioTooShort => "録音が短すぎます",
            ErrorCode::AudioNoSpeech => "録音から話し声を検出できませんでした",
            ErrorCode::AudioTooLong => "録音が長すぎます",
            ErrorCode::AudioTooLarge => "音声ファイルが大きすぎます",
            ErrorCode::StorageNotFound => "音声ファイルが見つかりませんでした",
            ErrorCode::StorageForbiddenKey => "この音声ファイルにはアクセスできません",
            ErrorCode::StorageAccessDenied => "音声ファイルの保存先へのアクセスが拒否されました",
            ErrorCode::StorageDownloadFailed => "音声ファイルをダウンロードできませんでした",
            ErrorCode::WhisperRateLimited => "文字起こしサービスが混み合っています",
            ErrorCode::WhisperFailed => "文字起こしに失敗しました",
            ErrorCode::WhisperQuotaExceeded => "文字起こしサービスの利用上限に達しました",
            ErrorCode::WhisperRejected => "文字起こしサービスがリクエストを受け付けませんでした",
            ErrorCode::GeminiFailed => "AIによる分析に失敗しました",
            ErrorCode::GeminiBlocked => "AIによる分析が安全フィルターにより停止されました",
            ErrorCode::GeminiInvalidResponse => "AIによる分析結果を検証できませんでした",
            ErrorCode::SupabaseWriteFailed => "結果を保存できませんでした",
            ErrorCode::QueueInvalidJob => "処理の依頼内容が正しくありません",
            ErrorCode::QueueBadSignature => "処理の依頼の署名が無効です",
            ErrorCode::QueueUnavailable => "処理キューに接続できませんでした",
            ErrorCode::ConfigMissing => "サーバーの設定に問題があります",
            ErrorCode::Internal => "内部エラーが発生しました",
        }
    }

    /// Whether trying the same job again could succeed. Bad input never becomes good input.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageDownloadFailed
                | ErrorCode::WhisperRateLimited
                | ErrorCode::WhisperFailed
                | ErrorCode::GeminiFailed
                | ErrorCode::SupabaseWriteFailed
                | ErrorCode::QueueUnavailable
                | ErrorCode::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its stable code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error[{code}]: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    /// An error whose message is [`redact`]ed on the way in: messages quote upstream replies
    /// and URLs, and they end up in logs, dead letters and the CLI's stderr.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: redact(&message.into()),
        }
    }

    /// What the user is shown for this error ([`ErrorCode::user_message`]), never `message`.
    pub fn user_message(&self) -> &'static str {
        self.code.user_message()
    }

    /// An I/O failure on our own side (temp dir, output dir): retryable, not the user's fault.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(ErrorCode::Internal, format!("{context}: {err}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cuts upstream text (an API's error message, which may echo our prompt, i.e. the user's
/// transcript) to `max` characters for a log line.
pub fn brief(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// The URL with any user and password replaced by `***`, and the values of credential-like
/// query parameters (`key`, `token`, `apikey`, `sig`, …) too: URL variables (REDIS_URL,
/// SUPABASE_URL, OPENAI_BASE_URL, GEMINI_BASE_URL) may carry credentials, and they are printed
/// by `check` and quoted in errors.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &head[..scheme_end], &head[at + 1..])
        }
        _ => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_credential_name(name) => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Query parameter names that carry credentials (Gemini's `key=`, SAS `sig=`, `access_token=`).
fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "key",
        "apikey",
        "api_key",
        "token",
        "access_token",
        "sig",
        "signature",
        "password",
        "secret",
    ]
    .iter()
    .any(|n| name == *n || name.ends_with(&format!("_{n}")) || name.ends_with(&format!("-{n}")))
}

/// Token prefixes of the credentials this worker handles or may be quoted: OpenAI (`sk-…`, also
/// the masked `sk-…b4a3` in OpenAI's own 401 text), Supabase's new keys, Google API keys, JWTs
/// (legacy Supabase keys), bearer tokens of GitHub and Slack.
const SECRET_PREFIXES: [&str; 8] = [
    "sk-",
    "sk_",
    "sb_secret_",
    "sb_publishable_",
    "AIza",
    "eyJ",
    "ghp_",
    "xox",
];

/// `text` with every URL's credentials ([`redact_url`]) and every token that looks like a key
/// ([`SECRET_PREFIXES`], or a long random mixed-case word) replaced by `***`. Applied to every
/// [`Error`] message, so logs, dead letters and stderr carry no credential even when an upstream
/// reply quotes one.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let word = if word.contains("://") {
            redact_url(word)
        } else {
            word.to_string()
        };
        out.push_str(&redact_tokens(&word));
    }
    out
}

/// Replaces key-like runs of `[A-Za-z0-9_-]` (and mask characters) inside one word.
fn redact_tokens(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if looks_like_secret(run) {
            let keep = SECRET_PREFIXES
                .iter()
                .find(|p| run.starts_with(*p))
                .map_or("", |p| p);
            out.push_str(keep);
            out.push_str("***");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in word.chars() {
        // `…` and `*` continue a run: OpenAI masks a key as `sk-…b4a3` or `sk-****b4a3`.
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '…' | '*') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A credential's shape: a known prefix, or 32+ characters mixing upper case, lower case and
/// digits (random keys do; UUIDs, hex digests and words do not).
fn looks_like_secret(run: &str) -> bool {
    if SECRET_PREFIXES.iter().any(|p| run.starts_with(p)) {
        return true;
    }
    run.len() >= 32
        && run.bytes().any(|b| b.is_ascii_uppercase())
        && run.bytes().any(|b| b.is_ascii_lowercase())
        && run.bytes().any(|b| b.is_ascii_digit())
}

/// An error and its sources as one line, "outer: inner: root", each distinct message once.
/// For people: SDK errors' `Debug` (what `DisplayErrorContext` appends) nests struct dumps such
/// as `DispatchFailure(DispatchFailure { source: ConnectorError …`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The message of a caught panic, for the error that replaces it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unique_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn bad_input_is_permanent() {
        for code in ErrorCode::ALL {
            let bad_input = code.as_str().starts_with("AUDIO_")
                || code == ErrorCode::QueueInvalidJob
                || code == ErrorCode::QueueBadSignature;
            if bad_input {
                assert!(!code.is_retryable(), "{code} must not be retried");
            }
        }
        assert!(ErrorCode::WhisperRateLimited.is_retryable());
        assert!(ErrorCode::QueueUnavailable.is_retryable());
    }

    #[test]
    fn every_code_has_its_own_japanese_message() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let m = code.user_message();
            assert!(seen.insert(m), "{code} shares its message");
            assert!(!m.is_ascii(), "{code}: {m} is not Japanese");
        }
    }

    #[test]
    fn credentials_are_redacted_in_text_and_urls() {
        let e = Error::new(
            ErrorCode::WhisperRejected,
            "HTTP 401: Incorrect API key provided: sk-proj-abc…b4a3. See https://u:pw@h/x?key=AIzaXYZ&alt=json",
        );
        for secret in ["abc", "b4a3", "pw", "AIzaXYZ"] {
            assert!(!e.message.contains(secret), "{secret} in {}", e.message);
        }
        assert!(
            e.message.contains("https://***@h/x?key=***&alt=json"),
            "{}",
            e.message
        );
        let plain = "session aaaaaaaa-0000-4000-8000-000000000001 failed: HTTP 503";
        assert_eq!(redact(plain), plain);
        assert!(!redact("token QmFzZTY0IGtleSB3aXRoIE1peGVkQ2FzZTEyMzQ1Ng").contains("QmFz"));
        assert_eq!(
            redact_url("https://abc.supabase.co"),
            "https://abc.supabase.co"
        );
        assert_eq!(brief("日本語です", 3), "日本語…");
    }

    #[test]
    fn display_is_the_cli_line() {
        let e = Error::new(ErrorCode::AudioEmpty, "the file is empty");
        assert_eq!(e.to_string(), "error[AUDIO_EMPTY]: the file is empty");
    }
}
