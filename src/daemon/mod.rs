//! `audio-worker run` and `audio-worker check`: configuration → adapters → servers → worker loop.
//!
//! Startup fails fast with one `error[CONFIG_MISSING]` line naming every bad variable; a Redis
//! that is down at start is waited for (with backoff) rather than crashing the machine into a
//! restart loop. SIGINT and SIGTERM stop claiming, let jobs in flight finish within the grace
//! period, and exit 0.
//!
//! The daemon side, one file per part: [`worker`] (the loop and the delivery of each job),
//! [`queue`] (Redis streams), [`storage`] (S3 downloads inside the user's folder), [`supabase`]
//! (job rows and results through PostgREST) and [`server`] (/health, /ready, /metrics). The
//! pipeline never imports any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::watch;
use tracing::{info, warn};

pub mod policy;
pub mod queue;
pub mod server;
pub mod storage;
pub mod supabase;
pub mod worker;

use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::analysis::gemini::GeminiAnalyzer;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::PipelineOptions;
use crate::telemetry;
use crate::transcribe::openai::OpenAiTranscriber;
use queue::Queue;
use server::{HealthRoutes, MetricsRoutes, Probe, ServeLimits};
use supabase::SupabaseClient;
use worker::{Services, StopReason, WorkerOptions};

/// Runs the daemon until a signal (exit 0 after draining) or idleness.
pub async fn run(mut config: Config) -> Result<()> {
    if let Some(limit) = config.exit_when_idle {
        // The idle clock samples the stream at every empty read: often enough to see an entry
        // that came and went within the idle window.
        config.queue.block = config
            .queue
            .block
            .min(limit / 5)
            .max(Duration::from_millis(100));
    }
    let metrics = telemetry::init_metrics()?;
    info!(config = ?config, "starting");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(forward_signals(stop_tx.clone()));

    // Listen before waiting for Redis: /health must answer while the worker waits (Fly stops a
    // machine whose checks fail); /ready says not ready until the probes exist.
    let health_routes = Arc::new(HealthRoutes::default());
    let (health_addr, health) = server::serve(
        SocketAddr::from(([0, 0, 0, 0], config.port)),
        Arc::clone(&health_routes) as Arc<dyn server::Routes>,
        ServeLimits::PUBLIC,
        stop_rx.clone(),
    )
    .await?;
    let (metrics_addr, metrics_server) = server::serve(
        SocketAddr::from(([0, 0, 0, 0], config.metrics_port)),
        Arc::new(MetricsRoutes(metrics)),
        ServeLimits::PUBLIC,
        stop_rx.clone(),
    )
    .await?;
    info!(%health_addr, %metrics_addr, consumer = %config.queue.consumer, "listening");

    let queue = connect_queue(&config, stop_rx.clone()).await?;
    let Some(queue) = queue else {
        info!("stopped before Redis came up");
        let _ = tokio::join!(health, metrics_server);
        return Ok(());
    };
    let services = Arc::new(services(&config, queue).await?);
    let own_dir = services.pipeline.work_root.clone();
    let _ = health_routes.probes.set(readiness_probes(&services));
    let opts = WorkerOptions {
        concurrency: config.concurrency,
        shutdown_grace: config.shutdown_grace,
        exit_when_idle: config.exit_when_idle,
    };
    let (reason, summary) = worker::run(services, opts, stop_rx).await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(health, metrics_server);
    if let Err(e) = std::fs::remove_dir_all(&own_dir) {
        warn!(dir = %own_dir.display(), error = %e, "cannot remove the work directory");
    }
    match reason {
        StopReason::Idle => info!(?summary, "the queue stayed empty; exiting"),
        StopReason::Shutdown => info!(?summary, "shut down"),
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM, then tells everyone to stop. A second signal exits at once.
async fn forward_signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = int.recv() => info!(signal = "SIGINT", "shutting down"),
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
    }
    let _ = stop.send(true);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    warn!("second signal: exiting now; unfinished jobs are reclaimed by other workers");
    std::process::exit(130);
}

/// Connects to Redis, retrying with backoff until it answers or a stop is requested (`None`).
async fn connect_queue(config: &Config, mut stop: watch::Receiver<bool>) -> Result<Option<Queue>> {
    let mut pause = Duration::from_millis(500);
    loop {
        match Queue::connect(config.queue.clone()).await {
            Ok(q) => return Ok(Some(q)),
            Err(e) if e.code == ErrorCode::ConfigMissing => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Redis is not reachable yet");
                telemetry::count_retry("redis");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// The production adapters.
pub async fn services(config: &Config, queue: Queue) -> Result<Services> {
    let transcriber = Arc::new(OpenAiTranscriber::new(config.openai.clone())?);
    let analyzer: Option<Arc<dyn Analyzer>> = match &config.gemini {
        Some(g) => Some(Arc::new(GeminiAnalyzer::new(g.clone())?)),
        None => None,
    };
    let work_root = own_work_dir(&config.work_dir)?;
    let mut pipeline = PipelineOptions {
        transcribe_concurrency: config.transcribe_concurrency,
        work_root,
        ..PipelineOptions::default()
    };
    pipeline.prepare.decode.max_duration_s = config.max_duration_s;
    pipeline.diarize.expected_speakers = config.expected_speakers;
    pipeline.pieces.max_s = config.max_piece_s;
    pipeline.prepare.decode.max_input_bytes = config.storage.max_bytes;
    Ok(Services {
        queue: Arc::new(queue),
        supabase: SupabaseClient::new(&config.supabase)?,
        s3: storage::client_from_env().await,
        storage: config.storage.clone(),
        transcriber,
        analyzer,
        pipeline,
        signing_secret: config
            .job_signing_secret
            .as_ref()
            .map(|s| s.expose_secret().as_bytes().to_vec()),
        job_max_age: config.job_max_age,
    })
}

/// This process's directory for job files, `WORK_DIR/worker-<pid>`. Directories of processes
/// that no longer run (killed mid-job: SIGKILL, OOM) are removed first, so a crash never leaves
/// recordings on disk for longer than the next start, even when several workers share WORK_DIR.
fn own_work_dir(work_dir: &Path) -> Result<PathBuf> {
    let cannot = |e| Error::io(format!("WORK_DIR {} is not usable", work_dir.display()), e);
    std::fs::create_dir_all(work_dir).map_err(cannot)?;
    for entry in std::fs::read_dir(work_dir).map_err(cannot)?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("worker-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    info!(dir = %entry.path().display(), "removed the files of a worker that died")
                }
                Err(e) => {
                    warn!(dir = %entry.path().display(), error = %e, "cannot remove a dead worker's files")
                }
            }
        }
    }
    let own = work_dir.join(format!("worker-{}", std::process::id()));
    std::fs::create_dir_all(&own).map_err(cannot)?;
    // Recordings are personal data: only this user may enter.
    std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(cannot)?;
    Ok(own)
}

/// A probe from a name and an async check.
struct FnProbe<F>(&'static str, F);

impl<F> Probe for FnProbe<F>
where
    F: Fn() -> BoxFuture<'static, Result<()>> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.0
    }
    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        (self.1)()
    }
}

/// What `/ready` checks: the three things a job cannot run without.
pub fn readiness_probes(services: &Arc<Services>) -> Vec<Arc<dyn Probe>> {
    let s = Arc::clone(services);
    let redis = FnProbe("redis", move || -> BoxFuture<'static, Result<()>> {
        let s = Arc::clone(&s);
        Box::pin(async move { s.queue.depth().await.map(drop) })
    });
    let s = Arc::clone(services);
    let s3 = FnProbe("s3", move || -> BoxFuture<'static, Result<()>> {
        let s = Arc::clone(&s);
        Box::pin(async move { storage::probe_bucket(&s.s3, &s.storage.bucket).await })
    });
    let s = Arc::clone(services);
    let supabase = FnProbe("supabase", move || -> BoxFuture<'static, Result<()>> {
        let s = Arc::clone(&s);
        Box::pin(async move { s.supabase.ping().await })
    });
    vec![Arc::new(redis), Arc::new(s3), Arc::new(supabase)]
}

/// A GET that must answer 2xx, for the HTTP dependencies `check` probes. An HTTP answer that
/// refuses us (a 4xx other than 408/429: key, model or project wrong) is CONFIG_MISSING, the
/// caller's to fix; no connection, a timeout or a 5xx is `unreachable`, worth retrying later.
fn http_probe(
    name: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    unreachable: ErrorCode,
) -> Arc<dyn Probe> {
    Arc::new(FnProbe(name, move || -> BoxFuture<'static, Result<()>> {
        let (url, headers) = (url.clone(), headers.clone());
        Box::pin(async move {
            let shown = crate::error::redact_url(&url);
            let mut request = reqwest::Client::new()
                .get(&url)
                .timeout(server::PROBE_TIMEOUT);
            for (header, value) in headers {
                request = request.header(header, value);
            }
            let response = request.send().await.map_err(|e| {
                Error::new(
                    unreachable,
                    format!(
                        "{shown} is not reachable: {}",
                        crate::error::chain(&e.without_url())
                    ),
                )
            })?;
            let status = response.status();
            let refused = status.is_client_error() && !matches!(status.as_u16(), 408 | 429);
            match (status.is_success(), refused) {
                (true, _) => Ok(()),
                (false, true) => Err(Error::new(
                    ErrorCode::ConfigMissing,
                    format!("{shown} refused us: HTTP {status}"),
                )),
                (false, false) => Err(Error::new(
                    unreachable,
                    format!("{shown} answered HTTP {status}"),
                )),
            }
        })
    }))
}

/// Every dependency `check` probes, built from the configuration alone: no connection is made
/// before the probes run, so one that is down does not hide the others.
async fn check_probes(config: &Config) -> Vec<Arc<dyn Probe>> {
    let queue_config = config.queue.clone();
    let redis = FnProbe("redis", move || -> BoxFuture<'static, Result<()>> {
        let cfg = queue_config.clone();
        Box::pin(async move {
            let queue = Queue::connect(cfg).await.map_err(unreachable_queue)?;
            queue.depth().await.map(drop).map_err(unreachable_queue)
        })
    });
    // One attempt: the SDK's retry loop would outlast the probe's 3 s and hide the reason.
    let s3 = storage::client_from_env().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        s3.config()
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    );
    let bucket = config.storage.bucket.clone();
    let s3 = FnProbe("s3", move || -> BoxFuture<'static, Result<()>> {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        Box::pin(async move { storage::probe_bucket(&s3, &bucket).await })
    });
    let sb = &config.supabase;
    let openai = &config.openai;
    let mut probes: Vec<Arc<dyn Probe>> = vec![
        Arc::new(redis),
        Arc::new(s3),
        http_probe(
            "supabase",
            format!(
                "{}/rest/v1/{}?select=session_id&limit=1",
                sb.url.trim_end_matches('/'),
                crate::supabase::JOBS_TABLE
            ),
            crate::supabase::auth_headers(sb.service_key.expose_secret()),
            ErrorCode::SupabaseWriteFailed,
        ),
        http_probe(
            "whisper model",
            format!(
                "{}/models/{}",
                openai.base_url.trim_end_matches('/'),
                openai.model
            ),
            vec![(
                "authorization",
                format!("Bearer {}", openai.api_key.expose_secret()),
            )],
            ErrorCode::WhisperFailed,
        ),
    ];
    if let Some(g) = &config.gemini {
        probes.push(http_probe(
            "gemini model",
            format!("{}/v1beta/models/{}", g.base_url, g.model),
            vec![("x-goog-api-key", g.api_key.expose_secret().to_string())],
            ErrorCode::GeminiFailed,
        ));
    }
    probes
}

/// Redis not answering is QUEUE_UNAVAILABLE (retry later), not an internal error; a bad
/// REDIS_URL stays CONFIG_MISSING.
fn unreachable_queue(e: Error) -> Error {
    match e.code {
        ErrorCode::ConfigMissing => e,
        _ => Error {
            code: ErrorCode::QueueUnavailable,
            ..e
        },
    }
}

/// One line per dependency: name, status, latency and the failure's message on one line.
fn check_line(c: &server::CheckReport) -> String {
    let message = c
        .error
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let message = message
        .strip_prefix(&format!(
            "error[{}]: ",
            c.code.map(|k| k.to_string()).unwrap_or_default()
        ))
        .unwrap_or(&message)
        .to_string();
    format!(
        "  {:<16} {:<9} {:>5} ms  {}",
        c.name,
        format!("{:?}", c.status).to_lowercase(),
        c.latency_ms,
        crate::error::brief(&message, 200)
    )
    .trim_end()
    .to_string()
}

/// The error `check` ends with: when anything could not be reached, the first such
/// dependency's retryable code (exit 75: try again once it is up); when every failing
/// dependency answered and refused us, CONFIG_MISSING (exit 1: fix the configuration).
fn check_failure(checks: &[server::CheckReport]) -> Option<Error> {
    let failed: Vec<_> = checks
        .iter()
        .filter(|c| c.status == server::Health::Unhealthy)
        .collect();
    let names =
        |list: &[&server::CheckReport]| list.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    let unreachable: Vec<_> = failed
        .iter()
        .copied()
        .filter(|c| c.code.is_none_or(ErrorCode::is_retryable))
        .collect();
    if let Some(first) = unreachable.first() {
        let code = first.code.unwrap_or_else(|| unreachable_code(first.name));
        return Some(Error::new(
            code,
            format!(
                "cannot reach {} (see above); try again once it is up",
                names(&unreachable)
            ),
        ));
    }
    (!failed.is_empty()).then(|| {
        Error::new(
            ErrorCode::ConfigMissing,
            format!(
                "{} refused our configuration or credentials (see above)",
                names(&failed)
            ),
        )
    })
}

/// The retryable code of a dependency that did not answer in time.
fn unreachable_code(name: &str) -> ErrorCode {
    match name {
        "redis" => ErrorCode::QueueUnavailable,
        "s3" => ErrorCode::StorageDownloadFailed,
        "supabase" => ErrorCode::SupabaseWriteFailed,
        "gemini model" => ErrorCode::GeminiFailed,
        _ => ErrorCode::WhisperFailed,
    }
}

/// `audio-worker check`: prints the configuration (secrets redacted) and probes every
/// dependency, including the configured Whisper and Gemini models, all of them even when one is
/// down. Fails if any is unhealthy.
pub async fn check(config: Config) -> Result<()> {
    println!("configuration:");
    for (name, value) in config.describe() {
        println!("  {name:<24} {value}");
    }
    let readiness = server::check_all(&check_probes(&config).await).await;
    println!("dependencies:");
    for c in &readiness.checks {
        println!("{}", check_line(c));
    }
    match check_failure(&readiness.checks) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
