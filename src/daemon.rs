//! `audio-worker run` and `audio-worker check`: configuration → adapters → servers → worker loop.
//!
//! Startup fails fast with one `error[CONFIG_MISSING]` line naming every bad variable; a Redis
//! that is down at start is waited for (with backoff) rather than crashing the machine into a
//! restart loop. SIGINT and SIGTERM stop claiming, let jobs in flight finish within the grace
//! period, and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::analysis::gemini::GeminiAnalyzer;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::PipelineOptions;
use crate::queue::Queue;
use crate::server::{self, HealthRoutes, MetricsRoutes, Probe, ServeLimits};
use crate::storage;
use crate::supabase::SupabaseClient;
use crate::telemetry;
use crate::transcribe::openai::OpenAiTranscriber;
use crate::worker::{self, Services, StopReason, WorkerOptions};

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
            .map(|s| s.as_bytes().to_vec()),
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

/// A GET that must answer 2xx, for the model probes of `check`.
fn http_probe(name: &'static str, url: String, header: (&'static str, String)) -> Arc<dyn Probe> {
    Arc::new(FnProbe(name, move || -> BoxFuture<'static, Result<()>> {
        let (url, header) = (url.clone(), header.clone());
        Box::pin(async move {
            let response = reqwest::Client::new()
                .get(&url)
                .header(header.0, header.1)
                .timeout(server::PROBE_TIMEOUT)
                .send()
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, format!("{url}: {e}")))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorCode::Internal,
                    format!("{url} answered {status}"),
                ))
            }
        })
    }))
}

/// `audio-worker check`: prints the configuration (secrets redacted) and probes every
/// dependency, including the configured Whisper and Gemini models. Fails if any is unhealthy.
pub async fn check(config: Config) -> Result<()> {
    println!("configuration:");
    for (name, value) in config.describe() {
        println!("  {name:<24} {value}");
    }
    let queue = Queue::connect(config.queue.clone()).await?;
    let services = Arc::new(services(&config, queue).await?);
    let mut probes = readiness_probes(&services);
    let openai = &config.openai;
    probes.push(http_probe(
        "whisper model",
        format!(
            "{}/models/{}",
            openai.base_url.trim_end_matches('/'),
            openai.model
        ),
        ("authorization", format!("Bearer {}", openai.api_key)),
    ));
    if let Some(g) = &config.gemini {
        probes.push(http_probe(
            "gemini model",
            format!("{}/v1beta/models/{}", g.base_url, g.model),
            ("x-goog-api-key", g.api_key.clone()),
        ));
    }
    let readiness = server::check_all(&probes).await;
    let _ = std::fs::remove_dir_all(&services.pipeline.work_root);
    println!("dependencies:");
    for c in &readiness.checks {
        println!(
            "  {:<24} {:<9} {:>5} ms {}",
            c.name,
            format!("{:?}", c.status).to_lowercase(),
            c.latency_ms,
            c.error.as_deref().unwrap_or("")
        );
    }
    if readiness.status == server::Health::Unhealthy {
        return Err(Error::new(
            ErrorCode::ConfigMissing,
            "a dependency is unreachable or refuses our credentials (see above)",
        ));
    }
    Ok(())
}
