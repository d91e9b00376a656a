//! The OpenAI transcription adapter and the chunk merge, against a local fake of the
//! `/v1/audio/transcriptions` endpoint that speaks its documented wire format and its failures.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_worker::ErrorCode;
use audio_worker::retry::RetryPolicy;
use audio_worker::transcribe::openai::{OpenAiConfig, OpenAiTranscriber, ResponseMode};
use audio_worker::transcribe::{ChunkAudio, TranscribeContext, transcribe_all};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ENDPOINT: &str = "/v1/audio/transcriptions";

fn config(server: &MockServer, mode: ResponseMode) -> OpenAiConfig {
    OpenAiConfig {
        api_key: "sk-fake-key".into(),
        base_url: format!("{}/v1", server.uri()),
        model: match mode {
            ResponseMode::Segments => "whisper-1".into(),
            ResponseMode::Text => "gpt-4o-transcribe".into(),
        },
        mode,
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        request_timeout: Duration::from_secs(5),
    }
}

/// Chunk WAVs (the content does not matter to the fake) at the given timeline spans.
fn chunks(dir: &Path, spans: &[(f64, f64)]) -> Vec<ChunkAudio> {
    spans
        .iter()
        .enumerate()
        .map(|(index, &(start_s, end_s))| {
            let path = dir.join(format!("chunk-{index:03}.wav"));
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 16_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for _ in 0..1600 {
                w.write_sample(0i16).unwrap();
            }
            w.finalize().unwrap();
            ChunkAudio {
                index,
                path,
                start_s,
                end_s,
            }
        })
        .collect()
}

fn verbose(segments: &[(f64, f64, &str)]) -> serde_json::Value {
    serde_json::json!({
        "task": "transcribe",
        "language": "japanese",
        "duration": segments.last().map_or(0.0, |s| s.1),
        "text": segments.iter().map(|s| s.2).collect::<String>(),
        "segments": segments.iter().enumerate().map(|(i, s)| serde_json::json!({
            "id": i, "seek": 0, "start": s.0, "end": s.1, "text": s.2, "tokens": [1, 2],
            "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.3, "no_speech_prob": 0.01
        })).collect::<Vec<_>>()
    })
}

fn openai_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}
    }))
}

async fn run(
    cfg: OpenAiConfig,
    audio: Vec<ChunkAudio>,
    concurrency: usize,
) -> audio_worker::Result<audio_worker::conversation::Transcript> {
    let t = Arc::new(OpenAiTranscriber::new(cfg).unwrap());
    transcribe_all(t, audio, "ja", concurrency, &[[0.0, 10_000.0]], |_, _| {}).await
}

fn body_text(req: &wiremock::Request) -> String {
    String::from_utf8_lossy(&req.body).into_owned()
}

/// The multipart form field `name`'s value.
fn form_field(body: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"\r\n\r\n");
    let start = body.find(&marker)? + marker.len();
    let end = body[start..].find("\r\n")? + start;
    Some(body[start..end].to_string())
}

#[tokio::test]
async fn segments_land_on_the_original_timeline_and_the_request_is_well_formed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("authorization", "Bearer sk-fake-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(verbose(&[
            (0.5, 2.0, "こんにちは。"),
            (3.0, 4.5, "元気ですか？"),
        ])))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let t = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 600.0), (600.0, 1200.0)]),
        2,
    )
    .await
    .unwrap();
    let times: Vec<(f64, f64)> = t.segments.iter().map(|s| (s.start_s, s.end_s)).collect();
    assert_eq!(
        times,
        vec![(0.5, 2.0), (3.0, 4.5), (600.5, 602.0), (603.0, 604.5)]
    );
    assert_eq!(t.source, "openai:whisper-1");

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let body = body_text(&requests[0]);
    assert_eq!(form_field(&body, "model").as_deref(), Some("whisper-1"));
    assert_eq!(form_field(&body, "language").as_deref(), Some("ja"));
    assert_eq!(
        form_field(&body, "response_format").as_deref(),
        Some("verbose_json")
    );
    assert_eq!(
        form_field(&body, "timestamp_granularities[]").as_deref(),
        Some("segment")
    );
    assert!(
        body.contains("filename=\"chunk-00"),
        "the file part carries a name with an extension"
    );
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_servers_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(openai_error(429, "Rate limit reached").insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(verbose(&[(0.0, 1.0, "はい")])))
        .with_priority(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let t = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 10.0)]),
        1,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}, Retry-After said 1 s",
        started.elapsed()
    );
    assert_eq!(t.segments.len(), 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn server_errors_timeouts_and_garbage_are_retried() {
    let server = MockServer::start().await;
    // 500, then a reply slower than the client's timeout, then an HTML error page, then success.
    for (priority, response) in [
        (1, openai_error(500, "The server had an error")),
        (
            2,
            ResponseTemplate::new(200)
                .set_body_json(verbose(&[(0.0, 1.0, "遅い")]))
                .set_delay(Duration::from_secs(3)),
        ),
        (
            3,
            ResponseTemplate::new(200).set_body_string("<html>502 Bad Gateway</html>"),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path(ENDPOINT))
            .respond_with(response)
            .up_to_n_times(1)
            .with_priority(priority)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(verbose(&[(0.0, 1.0, "成功")])))
        .with_priority(9)
        .mount(&server)
        .await;
    let mut cfg = config(&server, ResponseMode::Segments);
    cfg.retry.max_attempts = 4;
    cfg.request_timeout = Duration::from_millis(500);
    let dir = tempfile::tempdir().unwrap();
    let t = run(cfg, chunks(dir.path(), &[(0.0, 10.0)]), 1)
        .await
        .unwrap();
    assert_eq!(t.segments[0].text, "成功");
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_client_error_fails_at_once_with_the_apis_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(openai_error(400, "Invalid file format."))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 10.0)]),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::WhisperRejected);
    assert!(!err.code.is_retryable(), "the whole job must not be redone");
    assert!(err.message.contains("Invalid file format."), "{err}");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn endless_rate_limits_end_as_rate_limited_after_the_last_attempt() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(openai_error(429, "Rate limit reached").insert_header("retry-after", "0"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 10.0)]),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::WhisperRateLimited);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

// Several runtime threads: requests must still start in timeline order, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_chunk_is_prompted_with_the_tail_of_the_previous_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(verbose(&[(
            0.0,
            1.0,
            "前の話の終わりです。",
        )])))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    run(
        config(&server, ResponseMode::Segments),
        chunks(
            dir.path(),
            &[
                (0.0, 5.0),
                (5.0, 10.0),
                (10.0, 15.0),
                (15.0, 20.0),
                (20.0, 25.0),
                (25.0, 30.0),
            ],
        ),
        1,
    )
    .await
    .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 6);
    assert_eq!(
        form_field(&body_text(&requests[0]), "prompt"),
        None,
        "the first chunk has no prompt"
    );
    for (i, request) in requests.iter().enumerate().skip(1) {
        assert_eq!(
            form_field(&body_text(request), "prompt").as_deref(),
            Some("前の話の終わりです。"),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn text_only_models_get_json_and_their_text_spans_the_piece() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "text": "ありがとうございます。",
            "usage": {"type": "tokens", "input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let t = run(
        config(&server, ResponseMode::Text),
        chunks(dir.path(), &[(12.25, 30.5)]),
        1,
    )
    .await
    .unwrap();
    assert_eq!((t.segments[0].start_s, t.segments[0].end_s), (12.25, 30.5));
    let body = body_text(&server.received_requests().await.unwrap()[0]);
    assert_eq!(
        form_field(&body, "response_format").as_deref(),
        Some("json")
    );
    assert_eq!(form_field(&body, "timestamp_granularities[]"), None);
}

/// Answers each piece with a text naming its file (`chunk-003.wav` → "text 3."), and records
/// when each request arrived; the first `rate_limited` requests get 429 with Retry-After 1 s.
struct NamedPieces {
    seen: Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    rate_limited: std::sync::atomic::AtomicUsize,
    /// How long a successful reply takes.
    ok_delay: Duration,
}

impl wiremock::Respond for NamedPieces {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        let body = body_text(req);
        let name = body
            .split("filename=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        self.seen
            .lock()
            .unwrap()
            .push((std::time::Instant::now(), name.clone()));
        let left = self.rate_limited.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.rate_limited
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return openai_error(429, "Rate limit reached").insert_header("retry-after", "1");
        }
        let n: usize = name
            .trim_start_matches("chunk-")
            .trim_end_matches(".wav")
            .parse()
            .unwrap_or(999);
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "text": format!("text {n}.") }))
            .set_delay(self.ok_delay)
    }
}

async fn named_pieces(
    rate_limited: usize,
    ok_delay: Duration,
) -> (
    MockServer,
    Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
) {
    let server = MockServer::start().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(NamedPieces {
            seen: Arc::clone(&seen),
            rate_limited: rate_limited.into(),
            ok_delay,
        })
        .mount(&server)
        .await;
    (server, seen)
}

// Lanes over consecutive stretches: every piece but a lane's first is prompted with the text of
// the piece just before it, however the runtime schedules the lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_prompt_each_piece_with_the_text_just_before_it() {
    let (server, _) = named_pieces(0, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let spans: Vec<(f64, f64)> = (0..9)
        .map(|i| (i as f64 * 5.0, i as f64 * 5.0 + 4.0))
        .collect();
    let t = run(
        config(&server, ResponseMode::Text),
        chunks(dir.path(), &spans),
        3,
    )
    .await
    .unwrap();
    let texts: Vec<&str> = t.segments.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        (0..9).map(|i| format!("text {i}.")).collect::<Vec<_>>()
    );
    let mut without = Vec::new();
    for request in server.received_requests().await.unwrap() {
        let body = body_text(&request);
        let name = body
            .split("filename=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let n: usize = name[6..9].parse().unwrap();
        match form_field(&body, "prompt") {
            Some(p) => assert_eq!(p, format!("text {}.", n - 1), "piece {n}"),
            None => without.push(n),
        }
    }
    without.sort();
    assert_eq!(
        without,
        vec![0, 3, 6],
        "only each lane's first piece goes without context"
    );
}

// A 429 in one lane pauses the other lanes too, until its Retry-After has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_in_one_lane_pauses_every_lane() {
    let (server, seen) = named_pieces(1, Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let spans: Vec<(f64, f64)> = (0..8)
        .map(|i| (i as f64 * 5.0, i as f64 * 5.0 + 4.0))
        .collect();
    let mut cfg = config(&server, ResponseMode::Text);
    cfg.retry.base = Duration::from_millis(10);
    run(cfg, chunks(dir.path(), &spans), 2).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let limited_at = seen[0].0;
    // The other lane's first request was already in flight (it arrives with the 429 and is
    // answered after 300 ms); after that, nothing new is sent until the second has passed:
    // without the shared gate that lane's next piece would go at about 300 ms.
    let gap: Vec<Duration> = seen[1..]
        .iter()
        .map(|(t, _)| t.duration_since(limited_at))
        .filter(|d| *d > Duration::from_millis(100) && *d < Duration::from_millis(950))
        .collect();
    assert!(gap.is_empty(), "requests sent during the pause: {gap:?}");
    assert_eq!(seen.len(), 9, "8 pieces and one retry");
}

/// Issue 15, item 8: a 429 saying `insufficient_quota` is an account problem: one request, a
/// permanent code of its own; a 408 is retried, after `retry-after-ms`.
#[tokio::test]
async fn no_quota_fails_at_once_and_a_request_timeout_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(429).set_body_json(serde_json::json!({
            "error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                      "param": null, "code": "insufficient_quota"}
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 10.0)]),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::WhisperQuotaExceeded, "{err}");
    assert!(!err.code.is_retryable());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(openai_error(408, "Request timeout.").insert_header("retry-after-ms", "300"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_json(verbose(&[(0.0, 1.0, "成功")])))
        .with_priority(9)
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let t = run(
        config(&server, ResponseMode::Segments),
        chunks(dir.path(), &[(0.0, 10.0)]),
        1,
    )
    .await
    .unwrap();
    assert_eq!(t.segments[0].text, "成功");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retry-after-ms was not honoured"
    );
}

/// Every value of the multipart form field `name`, in order.
fn form_fields(body: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\"\r\n\r\n");
    body.match_indices(&marker)
        .filter_map(|(at, _)| {
            let start = at + marker.len();
            let end = body[start..].find("\r\n")? + start;
            Some(body[start..end].to_string())
        })
        .collect()
}

/// Issue 12, keywords: a text-only model gets the job's vocabulary as repeated `keywords[]`
/// fields beside the fields async-openai sends; failures are classified as on the other path.
#[tokio::test]
async fn keywords_reach_text_only_models_as_repeated_multipart_fields() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("authorization", "Bearer sk-fake-key"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after-ms", "20"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("authorization", "Bearer sk-fake-key"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"text": "山田さん、こんにちは。"})),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let t = Arc::new(OpenAiTranscriber::new(config(&server, ResponseMode::Text)).unwrap());
    let context = TranscribeContext {
        language: Some("ja".into()),
        keywords: vec!["山田太郎".into(), "Acme株式会社".into()],
    };
    let transcript = transcribe_all(
        t,
        chunks(dir.path(), &[(0.0, 5.0), (5.0, 10.0)]),
        context,
        1,
        &[[0.0, 10.0]],
        |_, _| {},
    )
    .await
    .unwrap();
    assert!(
        transcript
            .segments
            .iter()
            .any(|s| s.text.contains("山田さん"))
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3, "the 429 was retried");
    for (i, r) in requests.iter().enumerate() {
        let body = body_text(r);
        assert_eq!(
            form_fields(&body, "keywords[]"),
            ["山田太郎", "Acme株式会社"],
            "request {i}"
        );
        assert_eq!(
            form_field(&body, "model").as_deref(),
            Some("gpt-4o-transcribe")
        );
        assert_eq!(form_field(&body, "language").as_deref(), Some("ja"));
        assert_eq!(
            form_field(&body, "response_format").as_deref(),
            Some("json")
        );
        assert!(
            body.contains("filename=\"chunk-00"),
            "request {i}: the file part"
        );
    }
    assert_eq!(
        form_field(&body_text(&requests[2]), "prompt").as_deref(),
        Some("山田さん、こんにちは。")
    );

    // A refused key on this path is WHISPER_REJECTED at once, like on the other.
    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(openai_error(401, "Incorrect API key provided: sk-…b4a3."))
        .mount(&refusing)
        .await;
    let t = Arc::new(OpenAiTranscriber::new(config(&refusing, ResponseMode::Text)).unwrap());
    let context = TranscribeContext {
        language: Some("ja".into()),
        keywords: vec!["Acme".into()],
    };
    let err = transcribe_all(
        t,
        chunks(dir.path(), &[(0.0, 5.0)]),
        context,
        1,
        &[[0.0, 5.0]],
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::WhisperRejected, "{err}");
    assert_eq!(refusing.received_requests().await.unwrap().len(), 1);
}

/// Issue 15, item 13: `gpt-4o-transcribe-diarize` rejects `prompt`, so it is never sent one,
/// not even when the previous piece's text is known.
#[tokio::test]
async fn the_diarize_model_is_sent_no_prompt() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"text": "前の話です。"})),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, ResponseMode::Text);
    cfg.model = "gpt-4o-transcribe-diarize".into();
    run(
        cfg,
        chunks(dir.path(), &[(0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]),
        1,
    )
    .await
    .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(form_field(&body_text(r), "prompt"), None);
    }
}
