//! Downloading recordings from a real S3-protocol server (s3s-fs, in process).

mod common;

use audio_worker::ErrorCode;
use audio_worker::pipeline::AudioSource;
use audio_worker::storage::{S3Object, StorageConfig};
use common::s3::S3Server;

fn object(server: &S3Server, bucket: &str, key: &str, max_bytes: u64) -> S3Object {
    S3Object {
        client: server.client(),
        config: StorageConfig {
            bucket: "audio".into(),
            prefix: Some("recordings/".into()),
            max_bytes,
        },
        bucket: bucket.into(),
        user_id: "u1".into(),
        key: key.into(),
    }
}

#[tokio::test]
async fn downloads_an_allowed_key_byte_for_byte() {
    let server = S3Server::start(&["audio"]).await;
    let bytes = std::fs::read(common::fixture("audio/chrome.webm")).unwrap();
    server.put("audio", "recordings/u1/s1.webm", &bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = object(&server, "audio", "recordings/u1/s1.webm", 1 << 20)
        .fetch(dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn missing_forbidden_and_oversized_objects_fail_with_their_codes() {
    let server = S3Server::start(&["audio", "other"]).await;
    server.put("audio", "recordings/u1/big.wav", &vec![7u8; 4096]);
    server.put("other", "recordings/x.webm", b"not ours");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "audio",
            "recordings/u1/missing.webm",
            1 << 20,
            ErrorCode::StorageNotFound,
        ),
        (
            "other",
            "recordings/x.webm",
            1 << 20,
            ErrorCode::StorageForbiddenKey,
        ),
        (
            "audio",
            "recordings/../other/x.webm",
            1 << 20,
            ErrorCode::StorageForbiddenKey,
        ),
        // Another user's recording (issue 15, item 11).
        (
            "audio",
            "recordings/u2/big.wav",
            1 << 20,
            ErrorCode::StorageForbiddenKey,
        ),
        (
            "audio",
            "http://169.254.169.254/latest",
            1 << 20,
            ErrorCode::StorageForbiddenKey,
        ),
        (
            "audio",
            "recordings/u1/big.wav",
            1000,
            ErrorCode::AudioTooLarge,
        ),
    ];
    for (bucket, key, max, code) in cases {
        let err = object(&server, bucket, key, max)
            .fetch(dir.path())
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{bucket}/{key}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no partial download is left"
    );
}

/// Issue 15, item 8: S3's 403 is permanent, with its own code (a retry cannot fix credentials).
#[tokio::test]
async fn wrong_credentials_are_a_permanent_access_denial_not_a_missing_file() {
    let server = S3Server::start(&["audio"]).await;
    server.put("audio", "recordings/u1/a.webm", b"x");
    let mut obj = object(&server, "audio", "recordings/u1/a.webm", 1 << 20);
    let creds = aws_sdk_s3::config::Credentials::new("wrong", "wrong-secret", None, None, "test");
    obj.client = aws_sdk_s3::Client::from_conf(
        obj.client
            .config()
            .to_builder()
            .credentials_provider(creds)
            .build(),
    );
    let dir = tempfile::tempdir().unwrap();
    let err = obj.fetch(dir.path()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::StorageAccessDenied, "{err}");
    assert!(!err.code.is_retryable());
}
