//! The daemon's loop: claim a job from Redis, run [`pipeline::run`] with the production adapters
//! (S3 in, OpenAI, Gemini, Supabase out), write the result, then acknowledge.
//!
//! # What happens to a delivery
//! | situation | job row | queue entry |
//! |---|---|---|
//! | result stored | `completed` | acknowledged (deleted) |
//! | the session already completed (a duplicate) | untouched | acknowledged |
//! | permanent error (bad audio, forbidden key, invalid or badly signed job) | `error` + code | dead-lettered |
//! | retryable error, attempts left | back to `queued` | left pending: reclaimed after the visibility timeout (that is the backoff) |
//! | retryable error on the last attempt | `error` + code | dead-lettered |
//! | delivered more often than the attempts allow (workers died on it) | `error`, INTERNAL | dead-lettered unrun |
//! | the claim was lost (another worker reclaimed it) | untouched | left to the other worker |
//! | shutdown grace ran out | back to `queued` | requeued as a new entry (not counted as an attempt) |
//!
//! A failed analysis is a failed job: the partial result (transcript, turns, metrics) is stored
//! with `analysis_status: failed` and the job row says `error`; a retryable analysis failure is
//! first retried like any other retryable error.
//!
//! # Concurrency
//! One fetcher (this loop) and up to `concurrency` job tasks. CPU work inside a job runs on the
//! blocking pool (`pipeline`), so the runtime stays free for heartbeats, HTTP and Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span, warn};

use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::error::{Error, ErrorCode, Result};
use crate::job::Job;
use crate::pipeline::{
    self, AnalysisStatus, JobResult, PipelineOptions, Ports, Progress, ProgressSink, Stage,
};
use crate::queue::{Delivery, Queue};
use crate::storage::{S3Object, StorageConfig};
use crate::supabase::{JobStatus, NewJob, SupabaseClient, SupabaseProgress};
use crate::telemetry;
use crate::transcribe::Transcriber;

/// The adapters and policies every job of this process shares.
pub struct Services {
    pub queue: Arc<Queue>,
    pub supabase: SupabaseClient,
    pub s3: aws_sdk_s3::Client,
    pub storage: StorageConfig,
    pub transcriber: Arc<dyn Transcriber>,
    /// `None` only when the analysis is switched off (ANALYSIS=off): results say `skipped`.
    pub analyzer: Option<Arc<dyn Analyzer>>,
    pub pipeline: PipelineOptions,
    /// Jobs must carry a valid signature when set.
    pub signing_secret: Option<Vec<u8>>,
    pub job_max_age: Duration,
}

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    pub exit_when_idle: Option<Duration>,
}

/// How one delivery ended (also the `status` label of [`telemetry::JOBS_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The session had already completed: acknowledged without reprocessing.
    Duplicate,
    /// Dead-lettered with this code; the job row says error.
    Failed(ErrorCode),
    /// Left pending for a later attempt.
    Retrying(ErrorCode),
    /// Another worker holds the entry now.
    Abandoned,
    /// Shutdown cut it short; released for another worker.
    Interrupted,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed(_) => "failed",
            Outcome::Retrying(_) => "retrying",
            Outcome::Abandoned => "abandoned",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Shutdown,
    Idle,
}

/// Counts of what one run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub completed: u64,
    pub duplicate: u64,
    pub failed: u64,
    pub retrying: u64,
    pub abandoned: u64,
    pub interrupted: u64,
}

impl Summary {
    fn add(&mut self, outcome: Outcome) {
        *match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::Duplicate => &mut self.duplicate,
            Outcome::Failed(_) => &mut self.failed,
            Outcome::Retrying(_) => &mut self.retrying,
            Outcome::Abandoned => &mut self.abandoned,
            Outcome::Interrupted => &mut self.interrupted,
        } += 1;
    }
}

/// Longest pause between attempts to reach Redis.
const MAX_REDIS_BACKOFF: Duration = Duration::from_secs(30);
/// How often the queue depth gauges are refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(10);
/// After the grace period, how long interrupted jobs get to put their rows back to queued.
const CANCEL_CLEANUP: Duration = Duration::from_secs(5);

/// Claims and runs jobs until `shutdown` turns true (then drains within the grace period) or,
/// with `exit_when_idle`, until the queue has been empty that long.
pub async fn run(
    services: Arc<Services>,
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> (StopReason, Summary) {
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut jobs: JoinSet<Outcome> = JoinSet::new();
    let mut summary = Summary::default();
    // When the last job ended (set by the job itself, so the idle clock does not wait for the
    // loop's next look, which can be a whole blocking read later).
    let last_done = Arc::new(Mutex::new(Instant::now()));
    let mut redis_backoff = Duration::from_millis(500);
    // None until the first look (subtracting from `Instant::now()` can underflow on a machine
    // that booted seconds ago, as a freshly started Fly machine has).
    let mut depth_checked: Option<Instant> = None;
    let reason = loop {
        while let Some(done) = jobs.try_join_next() {
            record(&mut summary, done);
        }
        if *shutdown.borrow() {
            break StopReason::Shutdown;
        }
        if depth_checked.is_none_or(|at| at.elapsed() >= DEPTH_INTERVAL) {
            depth_checked = Some(Instant::now());
            publish_depth(&services.queue).await;
        }
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|stop| *stop) => break StopReason::Shutdown,
        };
        let next = tokio::select! {
            n = services.queue.next() => n,
            _ = shutdown.wait_for(|stop| *stop) => break StopReason::Shutdown,
        };
        match next {
            Ok(Some(delivery)) => {
                redis_backoff = Duration::from_millis(500);
                let (services, cancel) = (Arc::clone(&services), cancel_rx.clone());
                let last_done = Arc::clone(&last_done);
                jobs.spawn(async move {
                    let _permit = permit;
                    let outcome = process(&services, delivery, cancel).await;
                    *last_done.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    outcome
                });
            }
            Ok(None) => {
                drop(permit);
                redis_backoff = Duration::from_millis(500);
                while let Some(done) = jobs.try_join_next() {
                    record(&mut summary, done);
                }
                let idle_for = last_done
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                if let Some(limit) = opts.exit_when_idle
                    && jobs.is_empty()
                    && idle_for >= limit
                    && queue_is_empty(&services.queue).await
                {
                    break StopReason::Idle;
                }
            }
            Err(e) => {
                drop(permit);
                telemetry::count_retry("redis");
                warn!(error = %e, backoff_ms = redis_backoff.as_millis() as u64, "cannot read the queue; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(redis_backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break StopReason::Shutdown,
                }
                redis_backoff = (redis_backoff * 2).min(MAX_REDIS_BACKOFF);
            }
        }
    };

    if !jobs.is_empty() {
        info!(
            jobs = jobs.len(),
            grace_s = opts.shutdown_grace.as_secs(),
            "stopped claiming; waiting for jobs in flight"
        );
        let drained = tokio::time::timeout(opts.shutdown_grace, async {
            while let Some(done) = jobs.join_next().await {
                record(&mut summary, done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                jobs = jobs.len(),
                "grace period over; handing the jobs in flight back to the queue"
            );
            let _ = cancel_tx.send(true);
            let _ = tokio::time::timeout(CANCEL_CLEANUP, async {
                while let Some(done) = jobs.join_next().await {
                    record(&mut summary, done);
                }
            })
            .await;
            jobs.abort_all();
        }
    }
    (reason, summary)
}

fn record(summary: &mut Summary, done: std::result::Result<Outcome, tokio::task::JoinError>) {
    let outcome = done.unwrap_or_else(|e| {
        // process() catches everything it can; a panic here is a bug, and the entry stays
        // pending, so another attempt follows after the visibility timeout.
        error!(error = %e, "a job task crashed");
        count(Outcome::Retrying(ErrorCode::Internal));
        Outcome::Retrying(ErrorCode::Internal)
    });
    summary.add(outcome);
}

/// Counts a finished delivery as soon as it ends (not when the loop next looks).
fn count(outcome: Outcome) {
    metrics::counter!(telemetry::JOBS_TOTAL, "status" => outcome.label()).increment(1);
    if let Outcome::Failed(code) = outcome {
        metrics::counter!(telemetry::JOB_FAILURES_TOTAL, "code" => code.as_str()).increment(1);
    }
}

async fn publish_depth(queue: &Queue) {
    match queue.depth().await {
        Ok(d) => {
            metrics::gauge!(telemetry::QUEUE_WAITING).set(d.waiting as f64);
            metrics::gauge!(telemetry::QUEUE_PENDING).set(d.pending as f64);
            metrics::gauge!(telemetry::QUEUE_DEAD).set(d.dead as f64);
        }
        Err(e) => warn!(error = %e, "cannot read the queue depth"),
    }
}

/// Idle means nothing unfinished anywhere: a pending entry of a worker that died must still be
/// reclaimed by someone, so the last worker does not leave while one exists.
async fn queue_is_empty(queue: &Queue) -> bool {
    matches!(queue.depth().await, Ok(d) if d.length == 0)
}

/// Runs one delivery to its end. Never panics out and never returns an error: every path ends
/// in one of the [`Outcome`]s.
pub async fn process(
    services: &Services,
    delivery: Delivery,
    cancel: watch::Receiver<bool>,
) -> Outcome {
    let job = match Job::parse(&delivery.payload) {
        Ok(job) => job,
        Err(err) => {
            let span = info_span!("job", entry_id = %delivery.entry_id, attempt = delivery.attempt);
            let outcome = async {
                // The row of a job we cannot read can still be found by its session id, if the
                // payload has a well-formed one: the user then sees the failure.
                let session = session_hint(&delivery.payload);
                fail(services, &delivery, session.as_deref(), &err).await
            }
            .instrument(span)
            .await;
            count(outcome);
            return outcome;
        }
    };
    let span = info_span!(
        "job",
        job_id = %job.job_id,
        session_id = %job.session_id,
        entry_id = %delivery.entry_id,
        attempt = delivery.attempt,
    );
    metrics::gauge!(telemetry::ACTIVE_JOBS).increment(1.0);
    let started = Instant::now();
    let outcome = process_job(services, &delivery, &job, cancel)
        .instrument(span.clone())
        .await;
    metrics::gauge!(telemetry::ACTIVE_JOBS).decrement(1.0);
    metrics::histogram!(telemetry::JOB_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        info!(
            outcome = outcome.label(),
            seconds = started.elapsed().as_secs_f64(),
            "job ended"
        )
    });
    count(outcome);
    outcome
}

async fn process_job(
    services: &Services,
    delivery: &Delivery,
    job: &Job,
    cancel: watch::Receiver<bool>,
) -> Outcome {
    let session = job.session_id.as_str();
    info!(attempt = delivery.attempt, key = %job.audio.key, "job claimed");
    if services.queue.exhausted(delivery) {
        let err = Error::new(
            ErrorCode::Internal,
            format!(
                "gave up after {} deliveries: the workers processing it stopped each time",
                delivery.attempt - 1
            ),
        );
        return fail(services, delivery, Some(session), &err).await;
    }
    let secret = services.signing_secret.as_deref();
    if let Err(err) = job.check_signature(secret, SystemTime::now(), services.job_max_age) {
        return fail(services, delivery, Some(session), &err).await;
    }

    match services.supabase.job_status(session).await {
        Ok(Some(state)) if state.status == JobStatus::Completed => {
            info!("the session already completed; acknowledging the duplicate");
            return match services.queue.ack(&delivery.entry_id).await {
                Ok(()) => Outcome::Duplicate,
                Err(e) => retry_later(services, delivery, job, &e).await,
            };
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            let row = NewJob {
                session_id: job.session_id.clone(),
                user_id: job.user_id.clone(),
                job_id: Some(job.job_id.clone()),
                audio_bucket: Some(job.audio.bucket.clone()),
                audio_key: Some(job.audio.key.clone()),
            };
            if let Err(e) = services.supabase.ensure_job(&row).await {
                return decide(services, delivery, job, &e).await;
            }
        }
        Err(e) => return decide(services, delivery, job, &e).await,
    }

    // Keep the claim alive while the job runs; learn when another worker took it.
    let (lost_tx, mut lost) = watch::channel(false);
    let heartbeat = tokio::spawn({
        let (queue, entry) = (Arc::clone(&services.queue), delivery.entry_id.clone());
        let every = queue.config().heartbeat_interval();
        async move {
            loop {
                tokio::time::sleep(every).await;
                match queue.heartbeat(&entry).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(e) => {
                        telemetry::count_retry("redis");
                        warn!(error = %e, "heartbeat failed; trying again");
                    }
                }
            }
        }
        .in_current_span()
    });

    let progress = Arc::new(StageTimer::new(
        services
            .supabase
            .progress(session)
            .with_attempt(delivery.attempt),
    ));
    let ports = Ports {
        source: Arc::new(S3Object {
            client: services.s3.clone(),
            config: services.storage.clone(),
            bucket: job.audio.bucket.clone(),
            key: job.audio.key.clone(),
        }),
        transcriber: Arc::clone(&services.transcriber),
        analyzer: services.analyzer.clone(),
        progress: progress.clone(),
    };
    let mut cancel = cancel;
    let pipeline_job = job.pipeline_job();
    let ran = tokio::select! {
        r = pipeline::run(&pipeline_job, &ports, &services.pipeline) => Some(r),
        _ = cancel.wait_for(|stop| *stop) => None,
        _ = lost.wait_for(|lost| *lost) => {
            heartbeat.abort();
            warn!("another worker holds this job now; leaving it to them");
            return Outcome::Abandoned;
        }
    };
    let outcome = match ran {
        None => interrupted(services, delivery, job).await,
        Some(Err(err)) => decide(services, delivery, job, &err).await,
        Some(Ok(result)) => finish(services, delivery, job, &result, &progress).await,
    };
    heartbeat.abort();
    progress.finish();
    outcome
}

/// Stores a finished pipeline's result and acknowledges, or fails/retries a failed analysis.
async fn finish(
    services: &Services,
    delivery: &Delivery,
    job: &Job,
    result: &JobResult,
    progress: &StageTimer,
) -> Outcome {
    if let (AnalysisStatus::Failed, Some(e)) = (result.analysis_status, &result.analysis_error)
        && e.code.is_retryable()
        && !services.queue.last_attempt(delivery)
    {
        let err = Error::new(e.code, format!("the analysis failed: {}", e.message));
        return retry_later(services, delivery, job, &err).await;
    }
    if let Err(e) = progress.report(Progress::at(Stage::Saving)).await {
        return decide(services, delivery, job, &e).await;
    }
    if let Err(e) = services.supabase.upsert_result(result, &job.user_id).await {
        return decide(services, delivery, job, &e).await;
    }
    if let (AnalysisStatus::Failed, Some(e)) = (result.analysis_status, &result.analysis_error) {
        // Stored, and the row already says error (upsert_result); the job goes to the dead
        // letters so an operator can re-enqueue it once the analysis works again.
        let err = Error::new(e.code, format!("the analysis failed: {}", e.message));
        return dead_letter(services, delivery, &err).await;
    }
    metrics::counter!(telemetry::AUDIO_SECONDS_TOTAL).increment(result.duration_s.round() as u64);
    match services.queue.ack(&delivery.entry_id).await {
        Ok(()) => {
            info!(
                duration_s = result.duration_s,
                turns = result.turns.len(),
                "result stored"
            );
            Outcome::Completed
        }
        // Stored but not acknowledged: the next delivery finds the session completed.
        Err(e) => {
            warn!(error = %e, "result stored but the acknowledgement failed; a redelivery will see it completed");
            Outcome::Retrying(e.code)
        }
    }
}

/// Permanent errors and last attempts fail the job; anything else is retried later.
async fn decide(services: &Services, delivery: &Delivery, job: &Job, err: &Error) -> Outcome {
    if err.code.is_retryable() && !services.queue.last_attempt(delivery) {
        retry_later(services, delivery, job, err).await
    } else {
        fail(services, delivery, Some(&job.session_id), err).await
    }
}

/// Leaves the entry pending: it comes back after the visibility timeout as the next attempt.
/// The row goes back to queued so the browser shows waiting, not a failure that is not final.
async fn retry_later(services: &Services, delivery: &Delivery, job: &Job, err: &Error) -> Outcome {
    warn!(code = %err.code, error = %err.message, attempt = delivery.attempt, "retryable failure; the job will be retried");
    let queued = Progress::at(Stage::Queued);
    if let Err(e) = services
        .supabase
        .report(&job.session_id, &queued, None, Some(delivery.attempt))
        .await
    {
        warn!(error = %e, "cannot put the job row back to queued");
    }
    Outcome::Retrying(err.code)
}

/// Marks the row failed (when there is a session to mark) and dead-letters the entry.
async fn fail(
    services: &Services,
    delivery: &Delivery,
    session: Option<&str>,
    err: &Error,
) -> Outcome {
    error!(code = %err.code, error = %err.message, "job failed");
    if let Some(session) = session
        && let Err(e) = services.supabase.mark_failed(session, err).await
    {
        // The dead letter still holds the job and its error: nothing is lost.
        error!(error = %e, "cannot mark the job row failed");
    }
    dead_letter(services, delivery, err).await
}

async fn dead_letter(services: &Services, delivery: &Delivery, err: &Error) -> Outcome {
    match services
        .queue
        .dead_letter(delivery, err.code.as_str(), &err.message)
        .await
    {
        Ok(_) => Outcome::Failed(err.code),
        Err(e) => {
            // Still pending: reclaimed later, and dead-lettered then.
            error!(error = %e, "cannot dead-letter the job; it stays pending");
            Outcome::Retrying(err.code)
        }
    }
}

/// Shutdown outlasted the grace period: the row goes back to queued and the job is requeued so
/// another worker can take it at once instead of after the visibility timeout.
async fn interrupted(services: &Services, delivery: &Delivery, job: &Job) -> Outcome {
    if let Err(e) = services.supabase.mark_queued(&job.session_id).await {
        warn!(error = %e, "cannot put the job row back to queued");
    }
    if let Err(e) = services.queue.requeue(delivery).await {
        warn!(error = %e, "cannot requeue the job; it is reclaimed after the visibility timeout");
    }
    Outcome::Interrupted
}

/// The `session_id` of a payload that is not a valid job, if it has a well-formed one.
fn session_hint(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = value.get("session_id")?.as_str()?;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| id.to_string())
}

/// Forwards progress to Supabase and times each stage (for the stage histogram). Error reports
/// are not forwarded: the worker decides whether a failure is final, and writes it itself.
struct StageTimer {
    inner: SupabaseProgress,
    current: Mutex<Option<(Stage, Instant)>>,
}

impl StageTimer {
    fn new(inner: SupabaseProgress) -> StageTimer {
        StageTimer {
            inner,
            current: Mutex::new(None),
        }
    }

    fn enter(&self, stage: Option<Stage>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.map(|(s, _)| s) == stage {
            return;
        }
        if let Some((previous, since)) = current.take() {
            metrics::histogram!(telemetry::STAGE_DURATION_SECONDS, "stage" => stage_label(previous))
                .record(since.elapsed().as_secs_f64());
        }
        *current = stage.map(|s| (s, Instant::now()));
    }

    fn finish(&self) {
        self.enter(None);
    }
}

fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Queued => "queued",
        Stage::Downloading => "downloading",
        Stage::Preprocessing => "preprocessing",
        Stage::Transcribing => "transcribing",
        Stage::Diarization => "diarization",
        Stage::Analyzing => "analyzing",
        Stage::Saving => "saving",
        Stage::Completed => "completed",
        Stage::Error => "error",
    }
}

impl ProgressSink for StageTimer {
    fn report<'a>(&'a self, progress: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if progress.stage == Stage::Error {
                return Ok(());
            }
            self.enter(Some(progress.stage));
            self.inner.report(progress).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_is_taken_from_a_broken_job_only_when_well_formed() {
        assert_eq!(
            session_hint(br#"{"session_id":"s-1","version":9}"#).as_deref(),
            Some("s-1")
        );
        assert_eq!(session_hint(br#"{"session_id":"a'; drop"}"#), None);
        assert_eq!(session_hint(b"not json"), None);
        assert_eq!(session_hint(br#"{"session_id":7}"#), None);
    }

    #[test]
    fn outcomes_are_counted() {
        let mut s = Summary::default();
        s.add(Outcome::Completed);
        s.add(Outcome::Failed(ErrorCode::AudioEmpty));
        s.add(Outcome::Failed(ErrorCode::AudioEmpty));
        assert_eq!((s.completed, s.failed, s.retrying), (1, 2, 0));
        assert_eq!(Outcome::Retrying(ErrorCode::Internal).label(), "retrying");
    }
}
