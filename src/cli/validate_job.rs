//! `audio-worker validate-job`: a job's JSON checked exactly as the worker checks it (schema,
//! then the signature and its age when JOB_SIGNING_SECRET is set), without touching the queue.

use std::io::Read;
use std::path::{Path, PathBuf};

use audio_worker::Error;
use audio_worker::job::{Job, MAX_JOB_BYTES};

use super::env;

#[derive(clap::Args)]
pub struct ValidateJobArgs {
    #[arg(default_value = "-")]
    pub input: PathBuf,
}

/// Validates and prints one line naming the job and what was checked.
pub fn run(args: &ValidateJobArgs) -> Result<(), Error> {
    let bytes = read_job_input(&args.input)?;
    let job = Job::parse(&bytes)?;
    let secret = env("JOB_SIGNING_SECRET");
    job.check_signature(
        secret.as_deref().map(str::as_bytes),
        std::time::SystemTime::now(),
        audio_worker::config::job_max_age_from_env()?,
    )?;
    println!(
        "ok job_id={} session_id={} key={} signature={}",
        job.job_id,
        job.session_id,
        job.audio.key,
        match (&job.signature, &secret) {
            (Some(_), Some(_)) => "verified",
            (Some(_), None) => "present, not checked (JOB_SIGNING_SECRET unset)",
            (None, _) => "none",
        }
    );
    Ok(())
}

/// A job's bytes from a file or stdin (`-`), at most one byte more than a job may have: enough
/// for `Job::parse` to refuse an oversized one, without buffering whatever is piped in.
fn read_job_input(input: &Path) -> Result<Vec<u8>, Error> {
    let limit = MAX_JOB_BYTES as u64 + 1;
    let mut buf = Vec::new();
    if input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("cannot read the job from stdin", e))?;
    } else {
        let what = || format!("cannot read {}", input.display());
        std::fs::File::open(input)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .map_err(|e| Error::io(what(), e))?;
    }
    Ok(buf)
}
