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
//! The table is [`policy::next_action`], a pure function with a row-by-row test; this file
//! gathers the facts and carries the actions out.
//!
//! A failed analysis is a failed job: the partial result (transcript, turns, metrics) is stored
//! with `analysis_status: failed` and the job row says `error`; a retryable analysis failure is
//! first retried like any other retryable error.
//!
//! # Concurrency
//! One fetcher (this loop) and up to `concurrency` job tasks. CPU work inside a job runs on the
//! blocking pool (`pipeline`), so the runtime stays free for heartbeats, HTTP and Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span, warn};

use super::policy::{self, Action, Event};
use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::error::{Error, ErrorCode, Result};
use crate::job::Job;
use crate::pipeline::{self, JobResult, PipelineOptions, Ports, Progress, ProgressSink, Stage};
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
    let mut idle = IdleClock::new();
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
                    // The job's buffers are gone: give their pages back (src/memory.rs).
                    crate::memory::trim();
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
                if let Some(limit) = opts.exit_when_idle
                    && jobs.is_empty()
                    && idle.quiet_for(&services.queue, &last_done).await >= limit
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

/// How long the queue has been quiet: no job of ours running, and nothing in the stream (waiting,
/// not yet delivered to the group, or pending with any consumer), for that long.
///
/// The stream is sampled at every empty read (the daemon shortens the read's block to a fifth of
/// `EXIT_WHEN_IDLE`), and an entry added since (the stream's last generated id, against Redis'
/// clock) counts as activity even when another worker took and finished it between two samples.
/// A pending entry of a worker that died must still be reclaimed by someone, so the last worker
/// does not leave while one exists.
struct IdleClock {
    /// When the stream was last seen holding an entry (or Redis could not be read).
    busy_at: Instant,
}

impl IdleClock {
    fn new() -> IdleClock {
        IdleClock {
            busy_at: Instant::now(),
        }
    }

    async fn quiet_for(&mut self, queue: &Queue, last_done: &Mutex<Instant>) -> Duration {
        match queue.activity().await {
            Ok(a) if a.length == 0 => {
                // Entries added (and finished by others) since the last sample.
                let added_ago = Duration::from_millis(a.since_last_added_ms);
                if let Some(at) = Instant::now().checked_sub(added_ago)
                    && at > self.busy_at
                {
                    self.busy_at = at;
                }
            }
            Ok(_) => self.busy_at = Instant::now(),
            Err(e) => {
                warn!(error = %e, "cannot read the queue's activity");
                self.busy_at = Instant::now();
            }
        }
        let done = *last_done.lock().unwrap_or_else(|p| p.into_inner());
        self.busy_at.max(done).elapsed()
    }
}

/// Runs one delivery to its end. Never panics out and never returns an error: every path ends
/// in one of the [`Outcome`]s.
pub async fn process(
    services: &Services,
    delivery: Delivery,
    cancel: watch::Receiver<bool>,
) -> Outcome {
    let parsed = if delivery.oversized() {
        // Never read whole (queue.rs): too large to be a job, and not worth buffering.
        Err(Error::new(
            ErrorCode::QueueInvalidJob,
            format!(
                "job: the entry's {} bytes are larger than the {}-byte limit (not read)",
                delivery.size,
                crate::job::MAX_JOB_BYTES
            ),
        ))
    } else {
        Job::parse(&delivery.payload)
    };
    let job = match parsed {
        Ok(job) => job,
        Err(err) => {
            let span = info_span!("job", entry_id = %delivery.entry_id, attempt = delivery.attempt);
            let outcome = async {
                // The row of a job we cannot read can still be found by its session id, if the
                // payload has a well-formed one: the user then sees the failure. Not when jobs
                // must be signed: an unreadable job is not authenticated, and its session id may
                // name anyone's row; it is only dead-lettered.
                let session = match services.signing_secret {
                    Some(_) => None,
                    None if delivery.oversized() => None,
                    None => session_hint(&delivery.payload),
                };
                let claim = Claim::new(Arc::clone(&services.queue), delivery.entry_id.clone());
                fail(services, &delivery, &claim, session.as_deref(), &err).await
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
    // Keep the claim alive from this moment (the first refresh is immediate), and learn when
    // another worker took it. Every state change below first confirms the claim is still ours.
    let claim = Arc::new(Claim::new(
        Arc::clone(&services.queue),
        delivery.entry_id.clone(),
    ));
    let heartbeat = tokio::spawn(Arc::clone(&claim).keep_alive().in_current_span());
    let outcome = run_claimed(services, delivery, job, session, &claim, cancel).await;
    heartbeat.abort();
    outcome
}

async fn run_claimed(
    services: &Services,
    delivery: &Delivery,
    job: &Job,
    session: &str,
    claim: &Arc<Claim>,
    cancel: watch::Receiver<bool>,
) -> Outcome {
    let secret = services.signing_secret.as_deref();
    if let Err(err) = job.check_signature(secret, SystemTime::now(), services.job_max_age) {
        // Nothing in a job that is not authenticated is trusted, its session id least of all:
        // no row is written (it may be another user's); the dead letter keeps the evidence.
        return act(Event::BadSignature, services, delivery, claim, job, &err).await;
    }
    // "Already completed" comes before "attempts exhausted": a worker that died between the
    // completed write and the acknowledgement leaves a finished job, whatever its count.
    let state = services.supabase.job_status(session).await;
    if let Ok(Some(state)) = &state
        && state.status == JobStatus::Completed
        && policy::next_action(Event::AlreadyCompleted, facts(services, delivery, claim))
            == Action::AckDuplicate
    {
        info!("the session already completed; acknowledging the duplicate");
        return match services.queue.ack(&delivery.entry_id).await {
            Ok(true) => Outcome::Duplicate,
            Ok(false) => abandoned(),
            Err(e) => retry_later(services, delivery, claim, job, &e).await,
        };
    }
    if policy::next_action(Event::Claimed, facts(services, delivery, claim)) != Action::Run {
        let err = Error::new(
            ErrorCode::Internal,
            format!(
                "gave up after {} deliveries: the workers processing it stopped each time",
                delivery.attempt - 1
            ),
        );
        return act(Event::Claimed, services, delivery, claim, job, &err).await;
    }
    match state {
        Ok(Some(_)) => {}
        Ok(None) => {
            let row = NewJob {
                session_id: job.session_id.clone(),
                user_id: job.user_id.clone(),
                job_id: Some(job.job_id.clone()),
                audio_bucket: Some(job.audio.bucket.clone()),
                audio_key: Some(job.audio.key.clone()),
            };
            if let Err(e) = claim.confirm().await {
                return decide(services, delivery, claim, job, &e).await;
            }
            if let Err(e) = services.supabase.ensure_job(&row).await {
                return decide(services, delivery, claim, job, &e).await;
            }
        }
        Err(e) => return decide(services, delivery, claim, job, &e).await,
    }

    // The key must lie in the folder of the job's user: refused before anything is downloaded.
    if let Err(err) = services
        .storage
        .check(&job.audio.bucket, &job.user_id, &job.audio.key)
    {
        return decide(services, delivery, claim, job, &err).await;
    }

    let progress = Arc::new(StageTimer::new(
        services
            .supabase
            .progress(session)
            .with_attempt(delivery.attempt),
        Arc::clone(claim),
    ));
    let ports = Ports {
        source: Arc::new(S3Object {
            client: services.s3.clone(),
            config: services.storage.clone(),
            bucket: job.audio.bucket.clone(),
            user_id: job.user_id.clone(),
            key: job.audio.key.clone(),
        }),
        transcriber: Arc::clone(&services.transcriber),
        analyzer: services.analyzer.clone(),
        progress: progress.clone(),
    };
    let mut cancel = cancel;
    let mut lost = claim.lost_rx.clone();
    let pipeline_job = job.pipeline_job();
    let ran = tokio::select! {
        r = pipeline::run(&pipeline_job, &ports, &services.pipeline) => Some(r),
        _ = cancel.wait_for(|stop| *stop) => None,
        _ = lost.wait_for(|lost| *lost) => return abandoned(),
    };
    let outcome = match ran {
        None => interrupted(services, delivery, claim, job).await,
        Some(Err(err)) => decide(services, delivery, claim, job, &err).await,
        Some(Ok(result)) => finish(services, delivery, claim, job, &result, &progress).await,
    };
    progress.finish();
    outcome
}

fn abandoned() -> Outcome {
    warn!("another worker holds this job now; leaving it to them");
    Outcome::Abandoned
}

/// This worker's hold on one stream entry. The heartbeat ([`Claim::keep_alive`]) refreshes it
/// from the moment of the claim; [`Claim::confirm`] refreshes it and fails unless it is still
/// ours, and is called before every state change, so a superseded attempt writes nothing more.
struct Claim {
    queue: Arc<Queue>,
    entry_id: String,
    lost: AtomicBool,
    lost_tx: watch::Sender<bool>,
    lost_rx: watch::Receiver<bool>,
}

impl Claim {
    fn new(queue: Arc<Queue>, entry_id: String) -> Claim {
        let (lost_tx, lost_rx) = watch::channel(false);
        Claim {
            queue,
            entry_id,
            lost: AtomicBool::new(false),
            lost_tx,
            lost_rx,
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        let _ = self.lost_tx.send(true);
    }

    /// Refreshes the claim; `Ok(true)` while it is ours.
    async fn refresh(&self) -> Result<bool> {
        if self.is_lost() {
            return Ok(false);
        }
        let held = self.queue.heartbeat(&self.entry_id).await?;
        if !held {
            self.mark_lost();
        }
        Ok(held)
    }

    /// Ok when the claim is (still) ours: then a write may follow. An error otherwise (also when
    /// Redis cannot say: better no write than one from a superseded attempt).
    async fn confirm(&self) -> Result<()> {
        match self.refresh().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::new(
                ErrorCode::Internal,
                "the claim on this job was lost: another worker holds it now",
            )),
            Err(e) => Err(e),
        }
    }

    /// Heartbeats every third of the visibility timeout, starting at once, until the claim is
    /// lost (or the task is aborted when the job ends).
    async fn keep_alive(self: Arc<Self>) {
        let every = self.queue.config().heartbeat_interval();
        loop {
            match self.refresh().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    telemetry::count_retry("redis");
                    warn!(error = %e, "heartbeat failed; trying again");
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Stores a finished pipeline's result and acknowledges, or fails/retries a failed analysis.
async fn finish(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    job: &Job,
    result: &JobResult,
    progress: &StageTimer,
) -> Outcome {
    let analysis_error = result.analysis.error().map(|e| {
        // The row gets our message for the code; the details are here, redacted.
        warn!(code = %e.code, error = %e.message, "the analysis failed");
        Error::new(e.code, format!("the analysis failed: {}", e.message))
    });
    let finished = Event::Finished {
        analysis_failed: analysis_error.as_ref().map(|e| e.code),
    };
    let store = policy::next_action(finished, facts(services, delivery, claim));
    if store == Action::Abandon {
        return abandoned();
    }
    if let (Action::RetryLater, Some(err)) = (store, &analysis_error) {
        return retry_later(services, delivery, claim, job, err).await;
    }
    if let Err(e) = progress.report(Progress::at(Stage::Saving)).await {
        return decide(services, delivery, claim, job, &e).await;
    }
    if let Err(e) = claim.confirm().await {
        return decide(services, delivery, claim, job, &e).await;
    }
    if let Err(e) = services.supabase.store_result(result, &job.user_id).await {
        return decide(services, delivery, claim, job, &e).await;
    }
    if let Err(e) = claim.confirm().await {
        return decide(services, delivery, claim, job, &e).await;
    }
    if let Err(e) = services.supabase.mark_result_stored(result).await {
        return decide(services, delivery, claim, job, &e).await;
    }
    if let (Action::StoreAndDeadLetter, Some(err)) = (store, &analysis_error) {
        // Stored, and the row already says error (mark_result_stored); the job goes to the dead
        // letters so an operator can re-enqueue it once the analysis works again.
        return dead_letter(services, delivery, claim, err).await;
    }
    metrics::counter!(telemetry::AUDIO_SECONDS_TOTAL).increment(result.duration_s.round() as u64);
    match services.queue.ack(&delivery.entry_id).await {
        Ok(false) => abandoned(),
        Ok(true) => {
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

/// Permanent errors and last attempts fail the job; anything else is retried later. A job whose
/// claim was lost is left to the worker holding it.
async fn decide(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    job: &Job,
    err: &Error,
) -> Outcome {
    act(Event::Failed(err.code), services, delivery, claim, job, err).await
}

/// The facts the delivery policy decides on.
fn facts(services: &Services, delivery: &Delivery, claim: &Claim) -> policy::Delivery {
    policy::Delivery {
        claim_lost: claim.is_lost(),
        ..services.queue.attempts(delivery)
    }
}

/// Carries out what the policy says about `event` when it ends the delivery with `err`.
async fn act(
    event: Event,
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    job: &Job,
    err: &Error,
) -> Outcome {
    match policy::next_action(event, facts(services, delivery, claim)) {
        Action::Abandon => abandoned(),
        Action::RetryLater => retry_later(services, delivery, claim, job, err).await,
        Action::Fail { mark_row } => {
            let session = mark_row.then_some(job.session_id.as_str());
            fail(services, delivery, claim, session, err).await
        }
        other => {
            // Not an outcome of a failure: a bug here, not in the job. Fail it visibly.
            error!(action = ?other, event = ?event, "the delivery policy gave no failure action");
            fail(services, delivery, claim, Some(&job.session_id), err).await
        }
    }
}

/// Leaves the entry pending: it comes back after the visibility timeout as the next attempt.
/// The row goes back to queued so the browser shows waiting, not a failure that is not final.
async fn retry_later(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    job: &Job,
    err: &Error,
) -> Outcome {
    warn!(code = %err.code, error = %err.message, attempt = delivery.attempt, "retryable failure; the job will be retried");
    if let Err(e) = claim.confirm().await {
        if claim.is_lost() {
            return abandoned();
        }
        warn!(error = %e, "cannot confirm the claim; the job row is left as it is");
        return Outcome::Retrying(err.code);
    }
    let queued = Progress::at(Stage::Queued);
    if let Err(e) = services
        .supabase
        .report(&job.session_id, &queued, Some(delivery.attempt))
        .await
    {
        warn!(error = %e, "cannot put the job row back to queued");
    }
    Outcome::Retrying(err.code)
}

/// Marks the row failed (when there is a session to mark) and dead-letters the entry, both only
/// while the claim is ours.
async fn fail(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    session: Option<&str>,
    err: &Error,
) -> Outcome {
    error!(code = %err.code, error = %err.message, "job failed");
    if let Err(e) = claim.confirm().await {
        if claim.is_lost() {
            return abandoned();
        }
        // Not sure it is ours: write nothing; the entry stays pending and comes back.
        error!(error = %e, "cannot confirm the claim; the job stays pending");
        return Outcome::Retrying(err.code);
    }
    if let Some(session) = session
        && let Err(e) = services.supabase.mark_failed(session, err).await
    {
        // The dead letter still holds the job and its error: nothing is lost.
        error!(error = %e, "cannot mark the job row failed");
    }
    dead_letter(services, delivery, claim, err).await
}

async fn dead_letter(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    err: &Error,
) -> Outcome {
    match services
        .queue
        .dead_letter(delivery, err.code.as_str(), &err.message)
        .await
    {
        Ok(true) => Outcome::Failed(err.code),
        // Not moved: a retried call already did, or another worker took the entry meanwhile.
        Ok(false) if claim.is_lost() => abandoned(),
        Ok(false) => Outcome::Failed(err.code),
        Err(e) => {
            // Still pending: reclaimed later, and dead-lettered then.
            error!(error = %e, "cannot dead-letter the job; it stays pending");
            Outcome::Retrying(err.code)
        }
    }
}

/// Shutdown outlasted the grace period: the row goes back to queued and the job is requeued so
/// another worker can take it at once instead of after the visibility timeout.
async fn interrupted(
    services: &Services,
    delivery: &Delivery,
    claim: &Claim,
    job: &Job,
) -> Outcome {
    if claim.confirm().await.is_err() {
        if claim.is_lost() {
            return abandoned();
        }
    } else if let Err(e) = services.supabase.mark_queued(&job.session_id).await {
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
    claim: Arc<Claim>,
    current: Mutex<Option<(Stage, Instant)>>,
}

impl StageTimer {
    fn new(inner: SupabaseProgress, claim: Arc<Claim>) -> StageTimer {
        StageTimer {
            inner,
            claim,
            current: Mutex::new(None),
        }
    }

    fn enter(&self, stage: Option<Stage>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.map(|(s, _)| s) == stage {
            return;
        }
        if let Some((previous, since)) = current.take() {
            metrics::histogram!(telemetry::STAGE_DURATION_SECONDS, "stage" => previous.as_str())
                .record(since.elapsed().as_secs_f64());
        }
        *current = stage.map(|s| (s, Instant::now()));
    }

    fn finish(&self) {
        self.enter(None);
    }
}

impl ProgressSink for StageTimer {
    fn report<'a>(&'a self, progress: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // The pipeline's error report is not the last word here: the delivery policy
            // (`decide`) may still retry the job, and writes the error row itself
            // (`mark_failed`) once the failure is final.
            if progress.stage == Stage::Error {
                tracing::debug!(code = ?progress.code, "error report left to the delivery policy");
                return Ok(());
            }
            self.enter(Some(progress.stage));
            // Only the worker holding the claim writes.
            self.claim.confirm().await?;
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
