//! Logs and metrics.
//!
//! Logs are tracing events, one JSON object per line on stdout (Fly ships stdout to its log
//! store), with the job span's `job_id` and `session_id` on every line of a job. `LOG_FORMAT=text`
//! gives plain lines for a terminal; `RUST_LOG` filters (default `info`). Nothing secret is ever
//! a field: configuration types redact themselves in `Debug`.
//!
//! Metrics go to a Prometheus recorder rendered on `METRICS_PORT` `/metrics` (see
//! [`crate::server`]). Every metric name is a constant here, so dashboards and alerts have one
//! place to look.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::error::{Error, ErrorCode, Result};

/// Jobs that ended, by `status`: completed, failed, retrying, duplicate, abandoned, interrupted.
pub const JOBS_TOTAL: &str = "audio_worker_jobs_total";
/// Failed jobs by error `code`.
pub const JOB_FAILURES_TOTAL: &str = "audio_worker_job_failures_total";
/// Wall time of a whole job, seconds (histogram).
pub const JOB_DURATION_SECONDS: &str = "audio_worker_job_duration_seconds";
/// Wall time per pipeline `stage`, seconds (histogram).
pub const STAGE_DURATION_SECONDS: &str = "audio_worker_stage_duration_seconds";
/// Jobs running in this process now.
pub const ACTIVE_JOBS: &str = "audio_worker_active_jobs";
/// Stream entries nobody has taken yet: what an autoscaler should scale on.
pub const QUEUE_WAITING: &str = "audio_worker_queue_waiting";
/// Stream entries taken and not yet acknowledged (jobs in flight anywhere).
pub const QUEUE_PENDING: &str = "audio_worker_queue_pending";
/// Entries in the dead-letter stream.
pub const QUEUE_DEAD: &str = "audio_worker_queue_dead";
/// Retries of calls to a `dependency`: whisper, gemini, supabase, redis.
pub const RETRIES_TOTAL: &str = "audio_worker_retries_total";
/// Seconds of recorded audio processed to a result.
pub const AUDIO_SECONDS_TOTAL: &str = "audio_worker_audio_seconds_total";

/// Counts one retry of a call to `dependency`.
pub fn count_retry(dependency: &'static str) {
    metrics::counter!(RETRIES_TOTAL, "dependency" => dependency).increment(1);
}

/// Installs the global tracing subscriber: JSON unless `LOG_FORMAT=text`. Safe to call twice
/// (the second call does nothing), so tests can call it freely.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let _ = if text {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
}

/// Job and stage durations run from seconds to hours.
const DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Installs the Prometheus recorder and returns the handle `/metrics` renders.
pub fn init_metrics() -> Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("metrics buckets: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot install the metrics recorder: {e}"),
        )
    })?;
    describe_metrics();
    Ok(handle)
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(JOBS_TOTAL, "Jobs that ended, by status.");
    describe_counter!(JOB_FAILURES_TOTAL, "Failed jobs by error code.");
    describe_histogram!(JOB_DURATION_SECONDS, Unit::Seconds, "Wall time of a job.");
    describe_histogram!(
        STAGE_DURATION_SECONDS,
        Unit::Seconds,
        "Wall time per pipeline stage."
    );
    describe_gauge!(ACTIVE_JOBS, "Jobs running in this process.");
    describe_gauge!(QUEUE_WAITING, "Queue entries nobody has taken yet.");
    describe_gauge!(
        QUEUE_PENDING,
        "Queue entries taken and not yet acknowledged."
    );
    describe_gauge!(QUEUE_DEAD, "Entries in the dead-letter stream.");
    describe_counter!(RETRIES_TOTAL, "Retried calls by dependency.");
    describe_counter!(
        AUDIO_SECONDS_TOTAL,
        Unit::Seconds,
        "Seconds of recorded audio processed to a result."
    );
}
