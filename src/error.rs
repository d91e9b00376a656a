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
    pub const ALL: [ErrorCode; 24] = [
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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// An I/O failure on our own side (temp dir, output dir): retryable, not the user's fault.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(ErrorCode::Internal, format!("{context}: {err}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    fn display_is_the_cli_line() {
        let e = Error::new(ErrorCode::AudioEmpty, "the file is empty");
        assert_eq!(e.to_string(), "error[AUDIO_EMPTY]: the file is empty");
    }
}
