//! Where recordings come from in production: S3-compatible storage (Tigris on Fly.io).
//!
//! Only keys inside the configured bucket (and optional prefix) are accepted: a job can never make
//! the worker download an arbitrary URL or another tenant's object. The object is streamed into
//! the job's temp directory with a size cap, never held in memory.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_bucket::HeadBucketError;
use tokio::io::AsyncWriteExt;

use crate::BoxFuture;
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::AudioSource;

/// Which objects the worker may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `BUCKET_NAME`, as `fly storage create` sets it.
    pub bucket: String,
    /// Keys must start with this (`AUDIO_KEY_PREFIX`, e.g. `recordings/`), if set.
    pub prefix: Option<String>,
    /// Largest object downloaded, in bytes.
    pub max_bytes: u64,
}

impl StorageConfig {
    /// Reads `BUCKET_NAME` (required) and `AUDIO_KEY_PREFIX`; the size cap is the audio limit.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        max_bytes: u64,
    ) -> Result<StorageConfig> {
        let bucket = get("BUCKET_NAME")
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ConfigMissing,
                    "BUCKET_NAME is not set (fly storage create sets it)",
                )
            })?;
        Ok(StorageConfig {
            bucket: bucket.trim().to_string(),
            prefix: get("AUDIO_KEY_PREFIX").filter(|p| !p.is_empty()),
            max_bytes,
        })
    }

    /// Accepts `bucket`/`key` only inside our bucket and the folder of the job's user,
    /// `{AUDIO_KEY_PREFIX}{user_id}/`, and only as a plain object key: the one key rule of
    /// [`crate::job::check_owned_key`], which the Edge Function shares.
    pub fn check(&self, bucket: &str, user_id: &str, key: &str) -> Result<()> {
        let forbid = |why: &str| {
            Err(Error::new(
                ErrorCode::StorageForbiddenKey,
                format!("the audio key {key:?} in bucket {bucket:?} is not allowed: {why}"),
            ))
        };
        if bucket != self.bucket {
            return forbid("it is not in the configured bucket");
        }
        if let Err(why) = crate::job::check_owned_key(self.prefix.as_deref(), user_id, key) {
            return forbid(&why);
        }
        Ok(())
    }
}

/// An S3 client from the standard AWS environment (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`; region `auto` as Tigris wants unless `AWS_REGION` says otherwise).
/// `S3_FORCE_PATH_STYLE=true` addresses buckets by path (`host/bucket/key`), for S3 servers
/// without virtual-host buckets (MinIO, local test servers); Tigris needs neither.
pub async fn client_from_env() -> Client {
    let region =
        aws_config::Region::new(std::env::var("AWS_REGION").unwrap_or_else(|_| "auto".into()));
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .load()
        .await;
    let path_style = std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(path_style)
        .retry_config(crate::retry::RetryPolicy::default().sdk_config())
        .build();
    Client::from_conf(config)
}

/// Checks the bucket exists and the credentials may read it (HeadBucket), for `/ready`.
/// (The SDK's retry loop, configured in [`client_from_env`], is [`crate::retry`]'s policy.)
pub async fn probe_bucket(client: &Client, bucket: &str) -> Result<()> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(drop)
        .map_err(|e| bucket_error(bucket, &e))
}

/// A failed HeadBucket as one readable line: 403 and 404 are answers (wrong credentials or
/// bucket: permanent), anything else means the storage could not be reached (retryable).
fn bucket_error(
    bucket: &str,
    e: &SdkError<HeadBucketError, aws_sdk_s3::config::http::HttpResponse>,
) -> Error {
    match e.raw_response().map(|r| r.status().as_u16()) {
        Some(403) => Error::new(
            ErrorCode::StorageAccessDenied,
            format!(
                "bucket {bucket:?}: access denied (HTTP 403): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ),
        ),
        Some(404) => Error::new(
            ErrorCode::StorageNotFound,
            format!("bucket {bucket:?} does not exist (HTTP 404): check BUCKET_NAME"),
        ),
        Some(status) => Error::new(
            ErrorCode::StorageDownloadFailed,
            format!("bucket {bucket:?}: the storage answered HTTP {status}"),
        ),
        None => Error::new(
            ErrorCode::StorageDownloadFailed,
            format!(
                "bucket {bucket:?} is not reachable: {}",
                crate::error::chain(e)
            ),
        ),
    }
}

/// One object to download.
pub struct S3Object {
    pub client: Client,
    pub config: StorageConfig,
    pub bucket: String,
    /// The job's user: the key must lie in their folder.
    pub user_id: String,
    pub key: String,
}

impl fmt::Debug for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl AudioSource for S3Object {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn fetch<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<PathBuf>> {
        Box::pin(async move {
            self.config.check(&self.bucket, &self.user_id, &self.key)?;
            let path = dir.join("input.audio");
            let result = download(self, &path).await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&path).await;
            }
            result.map(|()| path)
        })
    }
}

async fn download(obj: &S3Object, path: &Path) -> Result<()> {
    let response = obj
        .client
        .get_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .send()
        .await
        .map_err(|e| get_error(e, obj))?;
    let too_large = |n: u64| {
        Error::new(
            ErrorCode::AudioTooLarge,
            format!(
                "the recording is {} MB; the limit is {} MB",
                n / 1_000_000,
                obj.config.max_bytes / 1_000_000
            ),
        )
    };
    if let Some(len) = response
        .content_length()
        .and_then(|l| u64::try_from(l).ok())
        && len > obj.config.max_bytes
    {
        return Err(too_large(len));
    }
    // Only the worker's user may read a downloaded recording.
    let mut file = crate::audio::private_file(path)
        .map(tokio::fs::File::from_std)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    let mut body = response.body;
    let mut written = 0u64;
    while let Some(bytes) = body.try_next().await.map_err(|e| {
        Error::new(
            ErrorCode::StorageDownloadFailed,
            format!("the download of {obj:?} broke off: {e}"),
        )
    })? {
        written += bytes.len() as u64;
        // The declared length can lie; the cap holds on what actually arrives.
        if written > obj.config.max_bytes {
            return Err(too_large(written));
        }
        file.write_all(&bytes)
            .await
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(())
}

fn get_error(err: SdkError<GetObjectError>, obj: &S3Object) -> Error {
    match &err {
        SdkError::ServiceError(service) if service.err().is_no_such_key() => Error::new(
            ErrorCode::StorageNotFound,
            format!("{obj:?} does not exist"),
        ),
        SdkError::ServiceError(service) if service.raw().status().as_u16() == 404 => Error::new(
            ErrorCode::StorageNotFound,
            format!("{obj:?} does not exist"),
        ),
        // Wrong credentials or a policy that denies us: no retry heals that (issue 15, item 8).
        SdkError::ServiceError(service) if service.raw().status().as_u16() == 403 => Error::new(
            ErrorCode::StorageAccessDenied,
            format!(
                "storage refused access to {obj:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&err)
            ),
        ),
        _ => Error::new(
            ErrorCode::StorageDownloadFailed,
            format!(
                "cannot download {obj:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&err)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: Option<&str>) -> StorageConfig {
        StorageConfig {
            bucket: "audio".into(),
            prefix: prefix.map(String::from),
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn only_plain_keys_in_our_bucket_and_the_users_folder_are_allowed() {
        let c = cfg(Some("recordings/"));
        assert!(c.check("audio", "u1", "recordings/u1/s1.webm").is_ok());
        for (bucket, key) in [
            ("other", "recordings/u1/s1.webm"),
            ("audio", "../etc/passwd"),
            ("audio", "recordings/../../secret"),
            ("audio", "/recordings/a.webm"),
            ("audio", "https://evil.example/a.webm"),
            ("audio", "s3://audio/recordings/a.webm"),
            ("audio", "uploads/a.webm"),
            ("audio", ""),
            ("audio", "recordings/a\nb"),
            ("audio", "recordings\\..\\a"),
            ("audio", "recordings/u2/s1.webm"),
            ("audio", "recordings/u1/./s1.webm"),
            ("audio", "recordings/u1//s1.webm"),
            ("audio", "recordings/u1/"),
            ("audio", "recordings/u1"),
        ] {
            let err = c.check(bucket, "u1", key).unwrap_err();
            assert_eq!(err.code, ErrorCode::StorageForbiddenKey, "{bucket}/{key}");
        }
        assert!(cfg(None).check("audio", "u1", "u1/key.m4a").is_ok());
        assert!(cfg(None).check("audio", "u1", "any/key.m4a").is_err());
    }

    /// The vectors the Edge Function's tests read too (`schemas/audio-key-vectors.json`).
    #[test]
    fn the_shared_key_vectors_hold() {
        let text = include_str!("../../schemas/audio-key-vectors.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let prefix = v["prefix"].as_str().unwrap();
        let user = v["user_id"].as_str().unwrap();
        let c = cfg(Some(prefix));
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let key = case["key"].as_str().unwrap();
            let ok = case["ok"].as_bool().unwrap();
            let got = c.check("audio", user, key);
            assert_eq!(got.is_ok(), ok, "{key:?} ({}): {got:?}", case["why"]);
            // The job's own (user-independent) part agrees too.
            if ok {
                assert_eq!(crate::job::key_problem(key), None, "{key:?}");
            }
        }
    }

    #[test]
    fn config_needs_a_bucket() {
        let err = StorageConfig::from_lookup(|_| None, 1).unwrap_err();
        assert!(err.message.contains("BUCKET_NAME"));
        let c = StorageConfig::from_lookup(|k| (k == "BUCKET_NAME").then(|| "b".to_string()), 7)
            .unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix, c.max_bytes), ("b", None, 7));
    }
}
