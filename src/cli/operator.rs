//! The operator's queue commands: `enqueue` (a job exactly as the Edge Function writes it) and
//! `redrive` (dead letters back onto the job stream).

use audio_worker::job::{self, Job};
use audio_worker::queue::{Queue, QueueConfig};
use audio_worker::{Error, ErrorCode};

use super::env;

#[derive(clap::Args)]
pub struct EnqueueArgs {
    #[arg(long)]
    session_id: String,
    #[arg(long)]
    user_id: String,
    /// Object key of the recording inside the bucket.
    #[arg(long)]
    key: String,
    /// Bucket (default: BUCKET_NAME).
    #[arg(long)]
    bucket: Option<String>,
    #[arg(long, default_value = "ja")]
    language: String,
    /// A name or term the transcriber should expect (repeat for several; at most 50).
    #[arg(long = "keyword", value_name = "TERM")]
    keywords: Vec<String>,
}

#[derive(clap::Args)]
pub struct RedriveArgs {
    /// Entry ids in `audio:jobs:dead` (see `redis-cli XRANGE audio:jobs:dead - +`).
    #[arg(required_unless_present = "all")]
    entry_ids: Vec<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with = "entry_ids")]
    all: bool,
}

/// The queue for an operator's command (REDIS_URL), as consumer `name`.
async fn operator_queue(name: &str) -> Result<Queue, Error> {
    let redis_url = env("REDIS_URL")
        .ok_or_else(|| Error::new(ErrorCode::ConfigMissing, "REDIS_URL is not set"))?;
    let mut cfg = QueueConfig::new(redis_url, name);
    cfg.tls_ca_file = env("REDIS_TLS_CA_FILE").map(std::path::PathBuf::from);
    Queue::connect(cfg).await
}

/// Builds the job with its vocabulary, signs, validates and XADDs it.
pub async fn enqueue(args: EnqueueArgs) -> Result<(), Error> {
    let bucket = args
        .bucket
        .filter(|b| !b.is_empty())
        .or_else(|| env("BUCKET_NAME"))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::ConfigMissing,
                "no bucket: pass --bucket or set BUCKET_NAME",
            )
        })?;
    let mut job = Job::new(
        args.session_id,
        args.user_id,
        bucket,
        args.key,
        args.language,
        std::time::SystemTime::now(),
    );
    job.keywords = args.keywords;
    if let Some(secret) = env("JOB_SIGNING_SECRET") {
        job::sign(&mut job, secret.as_bytes());
    }
    // The worker validates again; refusing here gives the operator the message at once.
    let json = job.to_json();
    Job::parse(&json)?;
    let queue = operator_queue("enqueue").await?;
    let entry = queue.enqueue(&json).await?;
    println!("enqueued job_id={} entry_id={entry}", job.job_id);
    Ok(())
}

/// Puts the named dead letters (or all of them) back on the job stream.
pub async fn redrive(args: RedriveArgs) -> Result<(), Error> {
    let queue = operator_queue("redrive").await?;
    let entry_ids = if args.all {
        queue
            .dead_letters(1_000_000)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    } else {
        args.entry_ids
    };
    let mut missing = Vec::new();
    for id in &entry_ids {
        match queue.redrive(id).await? {
            Some(new_id) => println!("redriven {id} -> {new_id}"),
            None => missing.push(id.clone()),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::QueueInvalidJob,
            format!("no such dead letter: {}", missing.join(", ")),
        ))
    }
}
