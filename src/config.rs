//! The daemon's configuration: environment variables → one typed [`Config`], validated at start.
//!
//! Every problem is collected and reported at once, each naming its variable, so a deploy with
//! three mistakes fails once, not three times. Secrets (API keys, the service key, the signing
//! secret, the Redis password) never appear in `Debug` output or in [`Config::describe`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::analysis::gemini::GeminiConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::queue::{QueueConfig, redact_url};
use crate::storage::StorageConfig;
use crate::supabase::SupabaseConfig;
use crate::transcribe::openai::{OpenAiConfig, ResponseMode};

/// Everything `audio-worker run` needs.
#[derive(Clone)]
pub struct Config {
    pub queue: QueueConfig,
    pub storage: StorageConfig,
    pub supabase: SupabaseConfig,
    pub openai: OpenAiConfig,
    /// `None` only when `ANALYSIS=off` says so explicitly: results then say `skipped`.
    pub gemini: Option<GeminiConfig>,
    /// HMAC key jobs must be signed with (JOB_SIGNING_SECRET); unsigned jobs are accepted without.
    pub job_signing_secret: Option<SecretString>,
    /// Signed jobs older than this are refused (JOB_MAX_AGE_H, 168 h).
    pub job_max_age: Duration,
    /// Jobs run at once by this process (WORKER_CONCURRENCY, 1).
    pub concurrency: usize,
    /// Chunks of one job transcribed at once (TRANSCRIBE_CONCURRENCY, 4).
    pub transcribe_concurrency: usize,
    /// Voices in a session (EXPECTED_SPEAKERS, 2 for a 1-on-1; 1 never splits).
    pub expected_speakers: usize,
    /// Longest piece sent to the transcriber, in seconds (MAX_PIECE_S, 30).
    pub max_piece_s: f64,
    /// How long a job in flight may take to finish after SIGINT/SIGTERM (SHUTDOWN_GRACE_S, 25).
    pub shutdown_grace: Duration,
    /// Exit 0 once the queue has been empty this long (EXIT_WHEN_IDLE, e.g. `5m`; unset: never).
    pub exit_when_idle: Option<Duration>,
    /// Parent of the per-job temp directories (WORK_DIR, the system temp dir).
    pub work_dir: PathBuf,
    /// `/health` and `/ready` (PORT, 8080).
    pub port: u16,
    /// Prometheus `/metrics` (METRICS_PORT, 9091).
    pub metrics_port: u16,
    /// Longest recording accepted (MAX_AUDIO_MINUTES, 240).
    pub max_duration_s: f64,
}

/// Why a REDIS_TLS_CA_FILE cannot serve as a CA bundle, or `None` when it can: readable and
/// holding at least one PEM certificate.
pub fn tls_ca_problem(path: &std::path::Path) -> Option<String> {
    match std::fs::read(path) {
        Err(e) => Some(format!("cannot be read: {e}")),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            (!text.contains("-----BEGIN CERTIFICATE-----"))
                .then(|| "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string())
        }
    }
}

/// Defaults that are not obvious from a single variable.
pub const DEFAULT_JOB_MAX_AGE: Duration = Duration::from_secs(JOB_MAX_AGE_H.1 * 3600);
/// JOB_MAX_AGE_H: (least, default, most) hours.
const JOB_MAX_AGE_H: (u64, u64, u64) = (1, 7 * 24, 24 * 365);
pub const DEFAULT_MAX_AUDIO_MB: u64 = 2048;

/// The S3 variables the README marks required (`fly storage create` sets them for Tigris).
const S3_VARIABLES: [(&str, &str); 3] = [
    (
        "AWS_ENDPOINT_URL_S3",
        "the S3 endpoint, e.g. https://fly.storage.tigris.dev",
    ),
    ("AWS_ACCESS_KEY_ID", "the S3 access key"),
    ("AWS_SECRET_ACCESS_KEY", "the S3 secret key"),
];

/// JOB_MAX_AGE_H alone, for `validate-job`, which needs no other configuration: the same
/// bounds and default as the worker's, and CONFIG_MISSING naming the variable when out of range.
pub fn job_max_age_from_env() -> Result<Duration> {
    let (least, default, most) = JOB_MAX_AGE_H;
    let value = std::env::var("JOB_MAX_AGE_H").ok();
    let hours = whole_number("JOB_MAX_AGE_H", value.as_deref(), default, least, most)
        .map_err(|problem| Error::new(ErrorCode::ConfigMissing, problem))?;
    Ok(Duration::from_secs(hours * 3600))
}

/// A numeric variable: `default` when unset or blank, else a whole number in `least..=most`, or
/// the problem naming the variable and its bounds.
fn whole_number(
    name: &str,
    value: Option<&str>,
    default: u64,
    least: u64,
    most: u64,
) -> std::result::Result<u64, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (least..=most).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}={v:?} must be a whole number from {least} to {most}"
            )),
        },
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads any source of variables (tests pass a map). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut problems: Vec<String> = Vec::new();
        let mut require = |name: &str, why: &str| {
            let v = get(name);
            if v.is_none() {
                problems.push(format!("{name} is not set ({why})"));
            }
            v.unwrap_or_default()
        };
        let redis_url = require(
            "REDIS_URL",
            "the job queue, redis://host:port or rediss:// (TLS)",
        );
        let supabase_url = require("SUPABASE_URL", "the project URL, https://<ref>.supabase.co");
        let service_key = require("SUPABASE_SERVICE_KEY", "the service-role key");
        // Read by aws-config's chain, not by us; named here so a missing one is reported with the
        // rest at start instead of as an unreachable bucket at the first job.
        for (name, why) in S3_VARIABLES {
            require(name, why);
        }
        if get("OPENAI_API_KEY").is_none() {
            problems.push("OPENAI_API_KEY is not set (Whisper transcription)".into());
        }

        let mut number = |name: &str, default: u64, min: u64, max: u64| -> u64 {
            whole_number(name, get(name).as_deref(), default, min, max).unwrap_or_else(|problem| {
                problems.push(problem);
                default
            })
        };
        let concurrency = number("WORKER_CONCURRENCY", 1, 1, 64) as usize;
        let transcribe_concurrency = number("TRANSCRIBE_CONCURRENCY", 4, 1, 32) as usize;
        let expected_speakers = number("EXPECTED_SPEAKERS", 2, 1, 2) as usize;
        // Under 10 s, pieces cut sentences; over 120 s, a failed request redoes too much.
        let max_piece_s = number("MAX_PIECE_S", 30, 10, 120) as f64;
        let shutdown_grace = Duration::from_secs(number("SHUTDOWN_GRACE_S", 25, 0, 3600));
        let visibility = Duration::from_secs(number("VISIBILITY_TIMEOUT_S", 120, 3, 86_400));
        let max_attempts = number("JOB_MAX_ATTEMPTS", 3, 1, 100) as u32;
        let (least, default, most) = JOB_MAX_AGE_H;
        let job_max_age = Duration::from_secs(3600 * number("JOB_MAX_AGE_H", default, least, most));
        let max_audio_mb = number("MAX_AUDIO_MB", DEFAULT_MAX_AUDIO_MB, 1, 100_000);
        let max_minutes = number("MAX_AUDIO_MINUTES", 240, 1, 24 * 60);
        let port = number("PORT", 8080, 1, 65_535) as u16;
        let metrics_port = number("METRICS_PORT", 9091, 1, 65_535) as u16;
        if port == metrics_port {
            problems.push(format!("PORT and METRICS_PORT are both {port}"));
        }
        let exit_when_idle = match get("EXIT_WHEN_IDLE") {
            None => None,
            Some(v) => match parse_duration(&v) {
                Some(d) => Some(d),
                None => {
                    problems.push(format!(
                        "EXIT_WHEN_IDLE={v:?} is not a duration (e.g. 300, 90s, 5m, 1h)"
                    ));
                    None
                }
            },
        };

        let storage = match StorageConfig::from_lookup(get, max_audio_mb * 1_000_000) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e.message);
                None
            }
        };
        let openai = match OpenAiConfig::from_lookup(get) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.message);
                None
            }
        };
        let gemini = match (get("ANALYSIS").as_deref(), GeminiConfig::from_lookup(get)) {
            (Some("off"), _) => None,
            (_, Some(c)) => Some(c),
            (_, None) => {
                problems.push(
                    "GOOGLE_API_KEY is not set (the coaching analysis; set ANALYSIS=off to store \
                     results without one)"
                        .into(),
                );
                None
            }
        };
        let is_http = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        if !supabase_url.is_empty() && !is_http(&supabase_url) {
            problems.push(format!(
                "SUPABASE_URL must be an http(s) URL, got {supabase_url:?}"
            ));
        }
        let is_redis = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if !redis_url.is_empty() && !is_redis(&redis_url) {
            problems.push(format!(
                "REDIS_URL must start with redis:// or rediss://, got {}",
                redact_url(&redis_url)
            ));
        }
        let tls_ca_file = get("REDIS_TLS_CA_FILE").map(PathBuf::from);
        if let Some(path) = &tls_ca_file {
            if let Some(problem) = tls_ca_problem(path) {
                problems.push(format!("REDIS_TLS_CA_FILE={}: {problem}", path.display()));
            }
            if !redis_url.is_empty() && !redis_url.starts_with("rediss://") {
                problems.push(
                    "REDIS_TLS_CA_FILE is set but REDIS_URL is not rediss:// (TLS)".to_string(),
                );
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(
                ErrorCode::ConfigMissing,
                format!("invalid configuration: {}", problems.join("; ")),
            ));
        }

        let mut queue = QueueConfig::new(redis_url, consumer_name(&get));
        queue.visibility_timeout = visibility;
        queue.max_attempts = max_attempts;
        queue.tls_ca_file = tls_ca_file;
        Ok(Config {
            queue,
            storage: storage.expect("no problems means storage parsed"),
            supabase: SupabaseConfig {
                url: supabase_url,
                service_key: service_key.into(),
            },
            openai: openai.expect("no problems means OpenAI parsed"),
            gemini,
            job_signing_secret: get("JOB_SIGNING_SECRET").map(SecretString::from),
            job_max_age,
            concurrency,
            transcribe_concurrency,
            expected_speakers,
            max_piece_s,
            shutdown_grace,
            exit_when_idle,
            work_dir: get("WORK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            port,
            metrics_port,
            max_duration_s: max_minutes as f64 * 60.0,
        })
    }

    /// The resolved configuration as `NAME = value` lines, secrets shown only as set/unset.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let secret = |set: bool| if set { "<set>" } else { "<unset>" }.to_string();
        let q = &self.queue;
        vec![
            ("REDIS_URL", redact_url(&q.redis_url)),
            (
                "REDIS_TLS_CA_FILE",
                q.tls_ca_file
                    .as_ref()
                    .map_or("(system roots)".into(), |p| p.display().to_string()),
            ),
            ("consumer", q.consumer.clone()),
            (
                "VISIBILITY_TIMEOUT_S",
                q.visibility_timeout.as_secs().to_string(),
            ),
            ("JOB_MAX_ATTEMPTS", q.max_attempts.to_string()),
            ("BUCKET_NAME", self.storage.bucket.clone()),
            (
                "AUDIO_KEY_PREFIX",
                self.storage.prefix.clone().unwrap_or_default(),
            ),
            (
                "MAX_AUDIO_MB",
                (self.storage.max_bytes / 1_000_000).to_string(),
            ),
            (
                "MAX_AUDIO_MINUTES",
                (self.max_duration_s / 60.0).round().to_string(),
            ),
            ("SUPABASE_URL", redact_url(&self.supabase.url)),
            ("SUPABASE_SERVICE_KEY", secret(true)),
            ("OPENAI_BASE_URL", redact_url(&self.openai.base_url)),
            ("OPENAI_API_KEY", secret(true)),
            ("WHISPER_MODEL", self.openai.model.clone()),
            (
                "WHISPER_RESPONSE_MODE",
                match self.openai.mode {
                    ResponseMode::Segments => "verbose_json",
                    ResponseMode::Text => "json",
                }
                .into(),
            ),
            (
                "WHISPER_MAX_ATTEMPTS",
                self.openai.retry.max_attempts.to_string(),
            ),
            (
                "WHISPER_TIMEOUT_S",
                self.openai.request_timeout.as_secs().to_string(),
            ),
            (
                "GEMINI_MODEL",
                self.gemini
                    .as_ref()
                    .map_or("(analysis off)".into(), |g| g.model.clone()),
            ),
            (
                "GEMINI_BASE_URL",
                self.gemini
                    .as_ref()
                    .map_or(String::new(), |g| redact_url(&g.base_url)),
            ),
            ("GOOGLE_API_KEY", secret(self.gemini.is_some())),
            (
                "JOB_SIGNING_SECRET",
                secret(self.job_signing_secret.is_some()),
            ),
            (
                "JOB_MAX_AGE_H",
                (self.job_max_age.as_secs() / 3600).to_string(),
            ),
            ("WORKER_CONCURRENCY", self.concurrency.to_string()),
            (
                "TRANSCRIBE_CONCURRENCY",
                self.transcribe_concurrency.to_string(),
            ),
            ("EXPECTED_SPEAKERS", self.expected_speakers.to_string()),
            ("MAX_PIECE_S", self.max_piece_s.to_string()),
            (
                "SHUTDOWN_GRACE_S",
                self.shutdown_grace.as_secs().to_string(),
            ),
            (
                "EXIT_WHEN_IDLE",
                self.exit_when_idle
                    .map_or("never".into(), |d| format!("{}s", d.as_secs())),
            ),
            ("WORK_DIR", self.work_dir.display().to_string()),
            (
                "SPEAKER_MODEL_PATH",
                crate::speakers::embed::default_model_path()
                    .display()
                    .to_string(),
            ),
            ("PORT", self.port.to_string()),
            ("METRICS_PORT", self.metrics_port.to_string()),
        ]
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        for (name, value) in self.describe() {
            d.field(name, &value);
        }
        d.finish()
    }
}

/// The consumer name inside the group: unique per process. On Fly the machine id (stable across
/// restarts of the same machine) plus the pid; elsewhere the host name plus the pid.
fn consumer_name(get: &impl Fn(&str) -> Option<String>) -> String {
    let host = get("WORKER_NAME")
        .or_else(|| get("FLY_MACHINE_ID"))
        .or_else(|| get("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// `300`, `90s`, `5m`, `1h`, `250ms` → a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("REDIS_URL", "redis://:redis-pass-xyz@10.0.0.1:6379"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("SUPABASE_SERVICE_KEY", "service-key-xyz"),
        ("OPENAI_API_KEY", "sk-openai-xyz"),
        ("GOOGLE_API_KEY", "google-key-xyz"),
        ("BUCKET_NAME", "recordings"),
        ("AWS_ENDPOINT_URL_S3", "https://fly.storage.tigris.dev"),
        ("AWS_ACCESS_KEY_ID", "tid_xyz"),
        ("AWS_SECRET_ACCESS_KEY", "tsec_xyz"),
        ("JOB_SIGNING_SECRET", "signing-secret-xyz"),
        ("FLY_MACHINE_ID", "e784079b"),
    ];

    #[test]
    fn defaults_follow_the_documentation() {
        let c = Config::from_lookup(env(MINIMAL)).unwrap();
        assert_eq!(c.concurrency, 1);
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert_eq!((c.port, c.metrics_port), (8080, 9091));
        assert_eq!(c.exit_when_idle, None);
        assert_eq!((c.expected_speakers, c.max_piece_s), (2, 30.0));
        assert_eq!(c.queue.visibility_timeout, Duration::from_secs(120));
        assert_eq!(c.queue.max_attempts, 3);
        assert!(c.queue.consumer.starts_with("e784079b-"));
        assert_eq!(c.storage.max_bytes, 2_048_000_000);
        assert!(c.gemini.is_some());
    }

    /// Issue 15, item 9: credentials inside any URL variable stay out of `check` and `Debug`.
    #[test]
    fn credentials_in_url_variables_are_redacted() {
        let mut vars: Vec<(&str, &str)> = MINIMAL.to_vec();
        vars.retain(|(k, _)| *k != "SUPABASE_URL");
        vars.push(("SUPABASE_URL", "https://sbuser:sb-url-pass@abc.supabase.co"));
        vars.push((
            "OPENAI_BASE_URL",
            "https://proxy-user:openai-url-pass@proxy.example/v1",
        ));
        vars.push(("GEMINI_BASE_URL", "https://gem.example?key=gemini-url-key"));
        let c = Config::from_lookup(env(&vars)).unwrap();
        let shown = format!("{:?} {:?}", c.describe(), c);
        for secret in [
            "sb-url-pass",
            "openai-url-pass",
            "gemini-url-key",
            "redis-pass-xyz",
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(shown.contains("https://***@proxy.example/v1"), "{shown}");
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let err = Config::from_lookup(env(&[
            ("WORKER_CONCURRENCY", "zero"),
            ("EXIT_WHEN_IDLE", "soon"),
            ("EXPECTED_SPEAKERS", "3"),
            ("MAX_PIECE_S", "5"),
        ]))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::ConfigMissing);
        for name in [
            "REDIS_URL",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_KEY",
            "OPENAI_API_KEY",
            "GOOGLE_API_KEY",
            "BUCKET_NAME",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "WORKER_CONCURRENCY=\"zero\"",
            "EXIT_WHEN_IDLE=\"soon\"",
            "EXPECTED_SPEAKERS=\"3\"",
            "MAX_PIECE_S=\"5\"",
        ] {
            assert!(
                err.message.contains(name),
                "{name} missing in {}",
                err.message
            );
        }
    }

    #[test]
    fn a_private_redis_ca_must_be_a_pem_certificate_for_a_tls_url() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, junk) = (dir.path().join("ca.pem"), dir.path().join("junk.pem"));
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&junk, "not a certificate").unwrap();
        let with = |url: &str, ca: &std::path::Path| {
            let mut vars: Vec<(&str, String)> =
                MINIMAL.iter().map(|(k, v)| (*k, v.to_string())).collect();
            vars.retain(|(k, _)| *k != "REDIS_URL");
            vars.push(("REDIS_URL", url.to_string()));
            vars.push(("REDIS_TLS_CA_FILE", ca.display().to_string()));
            let map: HashMap<String, String> =
                vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            Config::from_lookup(move |k| map.get(k).cloned())
        };
        let ok = with("rediss://:pw@redis.example:6380", &pem).unwrap();
        assert_eq!(ok.queue.tls_ca_file.as_deref(), Some(pem.as_path()));
        for (url, ca, says) in [
            (
                "rediss://h:6380",
                junk.as_path(),
                "holds no PEM certificate",
            ),
            (
                "rediss://h:6380",
                &dir.path().join("missing.pem"),
                "cannot be read",
            ),
            ("redis://h:6379", pem.as_path(), "not rediss://"),
        ] {
            let err = with(url, ca).unwrap_err();
            assert!(err.message.contains("REDIS_TLS_CA_FILE"), "{}", err.message);
            assert!(err.message.contains(says), "{}", err.message);
        }
    }

    #[test]
    fn a_new_secret_key_is_accepted_as_the_service_key() {
        let vars: Vec<(&str, &str)> = MINIMAL
            .iter()
            .map(|&(k, v)| {
                if k == "SUPABASE_SERVICE_KEY" {
                    (k, "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz")
                } else {
                    (k, v)
                }
            })
            .collect();
        let c = Config::from_lookup(env(&vars)).unwrap();
        assert!(
            c.supabase
                .service_key
                .expose_secret()
                .starts_with("sb_secret_")
        );
    }

    #[test]
    fn analysis_can_only_be_switched_off_explicitly() {
        let without: Vec<_> = MINIMAL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "GOOGLE_API_KEY")
            .collect();
        assert!(Config::from_lookup(env(&without)).is_err());
        let mut off = without.clone();
        off.push(("ANALYSIS", "off"));
        assert!(Config::from_lookup(env(&off)).unwrap().gemini.is_none());
    }

    #[test]
    fn secrets_never_show() {
        let c = Config::from_lookup(env(MINIMAL)).unwrap();
        let text = format!(
            "{c:?}\n{}",
            c.describe()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        for secret in [
            "redis-pass-xyz",
            "service-key-xyz",
            "sk-openai-xyz",
            "google-key-xyz",
            "signing-secret-xyz",
        ] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(text.contains("10.0.0.1:6379"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration(""), None);
    }
}
