//! The Supabase adapter, proven from both sides of the wire.
//!
//! 1. Against a local PostgREST fake (wiremock) that answers only requests of the documented
//!    shape: method, path, exact query (`session_id=eq.…`, `on_conflict=session_id`), headers
//!    (`apikey`, `Authorization: Bearer`, `Content-Type`, `Prefer`) and a JSON body. Anything else
//!    gets a 404, which the client reports as a failure, so a drifting request fails the test.
//! 2. On a real PostgreSQL (throwaway cluster, `tests/common/postgres.rs`) with the migration
//!    applied over a small Supabase shim: exactly the bodies the fake received are executed the
//!    way PostgREST executes them (`json_populate_recordset`, `ON CONFLICT`), so the real columns,
//!    types and checks accept them; plus RLS and the checks themselves.

mod common;

use std::time::{Duration, Instant};

use audio_worker::ErrorCode;
use audio_worker::analysis::{AnalysisReport, CoachingAnalysis, TokenUsage, metrics};
use audio_worker::audio::decode::SourceInfo;
use audio_worker::conversation::{Segment, Speaker, Transcript, Turn};
use audio_worker::error::Error;
use audio_worker::pipeline::{
    AnalysisOutcome, AnalysisStatus, JobResult, Progress, ProgressSink, Stage, StoredError,
    Versions,
};
use audio_worker::retry::RetryPolicy;
use audio_worker::supabase::{
    JobState, JobStatus, NewJob, SupabaseClient, SupabaseConfig, SupabaseProgress,
};
use common::postgrest::{
    PostgrestOnPostgres, Received, execute_like_postgrest, migrated, migrations, query, received,
    repo,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "service-role-key.test.SECRET";
const JOBS: &str = "/rest/v1/audio_processing_jobs";
const RESULTS: &str = "/rest/v1/audio_analysis_results";
const USER_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const USER_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const SESSION_OK: &str = "11111111-1111-4111-8111-111111111111";
const SESSION_FAILED: &str = "22222222-2222-4222-8222-222222222222";
const SESSION_REQUEUED: &str = "33333333-3333-4333-8333-333333333333";
const SESSION_SKIPPED: &str = "44444444-4444-4444-8444-444444444444";
const SESSION_ANALYSIS_FAILED: &str = "55555555-5555-4555-8555-555555555555";

// ------------------------------------------------------------------------------------------
// The PostgREST fake
// ------------------------------------------------------------------------------------------

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    }
}

fn client(server: &MockServer) -> SupabaseClient {
    SupabaseClient::new(&SupabaseConfig {
        url: format!("{}/", server.uri()),
        service_key: KEY.into(),
    })
    .unwrap()
    .with_retry(quick_retry(4))
    .with_timeout(Duration::from_secs(5))
}

/// Matches exactly this query, nothing more.
fn exact_query(expected: &[(&str, &str)]) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |r: &Request| {
        let mut got = query(r);
        let mut want = expected.clone();
        got.sort();
        want.sort();
        got == want
    }
}

/// Exactly one `name` header with exactly this value (wiremock's `header` splits on commas,
/// which `Prefer: a,b` has).
fn one_header(
    name: &'static str,
    value: &str,
) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    let value = value.to_string();
    move |r: &Request| {
        let got: Vec<_> = r.headers.get_all(name).iter().collect();
        got.len() == 1 && got[0].as_bytes() == value.as_bytes()
    }
}

/// The headers PostgREST/Supabase expect of the service role.
fn auth_headers(mock: wiremock::MockBuilder) -> wiremock::MockBuilder {
    mock.and(one_header("apikey", KEY))
        .and(one_header("authorization", &format!("Bearer {KEY}")))
}

/// Plus, for writes, a JSON body and exactly this `Prefer`.
fn write_headers(mock: wiremock::MockBuilder, prefer: &str) -> wiremock::MockBuilder {
    auth_headers(mock)
        .and(one_header("content-type", "application/json"))
        .and(one_header("prefer", prefer))
        .and(|r: &Request| serde_json::from_slice::<Value>(&r.body).is_ok())
}

/// A PATCH of the session's progress row.
fn patch_progress(session: &str) -> wiremock::MockBuilder {
    let filter = format!("eq.{session}");
    write_headers(
        Mock::given(method("PATCH")).and(path(JOBS)),
        "return=minimal",
    )
    .and(exact_query(&[("session_id", filter.as_str())]))
}

/// The fake's happy PostgREST: every documented request shape, nothing else.
async fn mount_postgrest(server: &MockServer) {
    for session in [
        SESSION_OK,
        SESSION_FAILED,
        SESSION_REQUEUED,
        SESSION_SKIPPED,
        SESSION_ANALYSIS_FAILED,
    ] {
        patch_progress(session)
            .respond_with(ResponseTemplate::new(204))
            .mount(server)
            .await;
    }
    write_headers(
        Mock::given(method("POST")).and(path(JOBS)),
        "resolution=ignore-duplicates,return=minimal",
    )
    .and(exact_query(&[("on_conflict", "session_id")]))
    .respond_with(ResponseTemplate::new(201))
    .mount(server)
    .await;
    write_headers(
        Mock::given(method("POST")).and(path(RESULTS)),
        "resolution=merge-duplicates,return=minimal",
    )
    .and(exact_query(&[("on_conflict", "session_id")]))
    .respond_with(ResponseTemplate::new(201))
    .mount(server)
    .await;
    let filter = format!("eq.{SESSION_OK}");
    auth_headers(Mock::given(method("GET")).and(path(JOBS)))
        .and(exact_query(&[
            ("select", "status,stage,progress,error_code,attempts"),
            ("session_id", filter.as_str()),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"status": "completed", "stage": "completed", "progress": 100,
             "error_code": null, "attempts": 1}
        ])))
        .mount(server)
        .await;
    let filter = format!("eq.{SESSION_SKIPPED}");
    auth_headers(Mock::given(method("GET")).and(path(JOBS)))
        .and(exact_query(&[
            ("select", "status,stage,progress,error_code,attempts"),
            ("session_id", filter.as_str()),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(server)
        .await;
}

// ------------------------------------------------------------------------------------------
// A realistic result
// ------------------------------------------------------------------------------------------

fn turns() -> Vec<Turn> {
    let t = |s: f64, e: f64, speaker, text: &str| Turn {
        start_s: s,
        end_s: e,
        speaker,
        text: text.into(),
        confidence: 0.9,
    };
    vec![
        t(0.0, 4.0, Speaker::Coach, "今日は何について話したいですか？"),
        t(4.5, 12.0, Speaker::Client, "仕事の優先順位で悩んでいます。"),
        t(
            12.5,
            20.0,
            Speaker::Coach,
            "なるほど、優先順位で悩んでいるんですね。",
        ),
        t(
            24.0,
            30.0,
            Speaker::Client,
            "はい、まず上司と話してみます。",
        ),
        t(754.0, 760.0, Speaker::Coach, "素晴らしい一歩ですね。"),
    ]
}

fn analysis() -> CoachingAnalysis {
    let skill = |score: u8, quote: &str, t: f64| json!({"score": score, "comment": "具体的な根拠がある", "examples": [{"quote": quote, "time_s": t}]});
    serde_json::from_value(json!({
        "skills": {
            "listening": skill(4, "優先順位で悩んでいるんですね", 12.5),
            "questioning": skill(3, "今日は何について話したいですか？", 0.0),
            "empathy": skill(4, "なるほど", 12.5),
            "feedback": skill(5, "素晴らしい一歩ですね。", 754.0)
        },
        "emotions": {
            "coach": {"positive": 0.6, "neutral": 0.4, "negative": 0.0},
            "client": {"positive": 0.3, "neutral": 0.4, "negative": 0.3}
        },
        "events": [{"time_s": 24.0, "kind": "commitment", "description": "上司と話すと決めた"}],
        "diagnosis": {"name": "伴走型", "icon": "🌱", "description": "クライアントの決断を支えた"},
        "prescriptions": [{"title": "沈黙を活かす", "detail": "質問の後に待つ"}]
    }))
    .expect("a valid analysis")
}

fn result(session_id: &str, status: AnalysisStatus) -> JobResult {
    let turns = turns();
    let duration_s = 765.5;
    JobResult {
        session_id: session_id.into(),
        source: SourceInfo {
            container: "matroska".into(),
            codec: "opus".into(),
            sample_rate: 48_000,
            channels: 1,
            duration_s,
            bytes: 3_061_234,
        },
        duration_s,
        language: "ja".into(),
        speech: vec![[0.0, 30.0], [754.0, 760.0]],
        waveform: vec![0.0, 0.25, 0.5, 1.0],
        transcript: Transcript {
            language: "ja".into(),
            segments: turns
                .iter()
                .map(|t| Segment {
                    start_s: t.start_s,
                    end_s: t.end_s,
                    text: t.text.clone(),
                    no_speech_prob: Some(0.01),
                    avg_logprob: None,
                    speaker_label: None,
                })
                .collect(),
            source: "openai:whisper-1".into(),
        },
        metrics: metrics::compute(&turns, duration_s),
        turns,
        speakers_found: 2,
        analysis: match status {
            AnalysisStatus::Ok => AnalysisOutcome::Ok {
                analysis: Box::new(analysis()),
                report: AnalysisReport {
                    requests: 2,
                    dropped_examples: 1,
                    usage: TokenUsage {
                        prompt_tokens: 2000,
                        output_tokens: 600,
                        thinking_tokens: 150,
                    },
                },
            },
            AnalysisStatus::Skipped => AnalysisOutcome::Skipped,
            AnalysisStatus::Failed => AnalysisOutcome::Failed(StoredError {
                code: ErrorCode::GeminiInvalidResponse,
                message: "引用が文字起こしに見つかりません".into(),
            }),
        },
        versions: Versions {
            worker: "0.1.0".into(),
            libopus: "libopus 1.6.1".into(),
            transcriber: "openai:whisper-1".into(),
            diarizer: "pitch-spectral-v1".into(),
            analyzer: (status != AnalysisStatus::Skipped).then(|| "gemini-test".into()),
        },
    }
}

fn new_job(session: &str, user: &str) -> NewJob {
    NewJob {
        session_id: session.into(),
        user_id: user.into(),
        job_id: Some(format!("job-{}", &session[..8])),
        audio_bucket: Some("recordings".into()),
        audio_key: Some(format!("sessions/{session}.webm")),
    }
}

/// What the daemon does for four sessions: one completes (progress through every stage, the
/// result, completed), one fails, one is put back in the queue on shutdown, one completes with
/// the analysis skipped. Returns what the fake received, in order.
async fn run_jobs_against_the_fake() -> Vec<Received> {
    let server = MockServer::start().await;
    mount_postgrest(&server).await;
    let supabase = client(&server);

    // The job row exists first (the Edge Function's or ours), then progress.
    supabase
        .ensure_job(&new_job(SESSION_OK, USER_A))
        .await
        .unwrap();
    let sink: SupabaseProgress = supabase.progress(SESSION_OK).with_attempt(1);
    for p in [
        Progress::at(Stage::Downloading),
        Progress::at(Stage::Downloading), // an identical report is not sent twice
        Progress::at(Stage::Preprocessing),
        Progress::transcribing(0, 2),
        Progress::transcribing(1, 2),
        Progress::transcribing(2, 2),
        Progress::at(Stage::Diarization),
        Progress::at(Stage::Analyzing),
        Progress::at(Stage::Saving),
    ] {
        sink.report(p).await.unwrap();
    }
    supabase
        .upsert_result(&result(SESSION_OK, AnalysisStatus::Ok), USER_A)
        .await
        .unwrap();
    // A re-delivered job writes the same result again: still one row (checked on PostgreSQL).
    supabase
        .upsert_result(&result(SESSION_OK, AnalysisStatus::Ok), USER_A)
        .await
        .unwrap();
    let state = supabase.job_status(SESSION_OK).await.unwrap();
    assert_eq!(
        state,
        Some(JobState {
            status: JobStatus::Completed,
            stage: Stage::Completed,
            progress: 100,
            error_code: None,
            attempts: 1
        })
    );
    assert_eq!(supabase.job_status(SESSION_SKIPPED).await.unwrap(), None);

    // A failure reported by the pipeline through the sink carries its code.
    supabase
        .ensure_job(&new_job(SESSION_FAILED, USER_B))
        .await
        .unwrap();
    let sink = supabase.progress(SESSION_FAILED).with_attempt(3);
    sink.report(Progress::at(Stage::Downloading)).await.unwrap();
    let err = Error::new(
        ErrorCode::StorageNotFound,
        "録音ファイルが見つかりません: sessions/x.webm",
    );
    sink.report(Progress::error(&err)).await.unwrap();
    supabase.mark_failed(SESSION_FAILED, &err).await.unwrap();

    supabase
        .ensure_job(&new_job(SESSION_REQUEUED, USER_A))
        .await
        .unwrap();
    supabase
        .progress(SESSION_REQUEUED)
        .report(Progress::at(Stage::Transcribing))
        .await
        .unwrap();
    supabase.mark_queued(SESSION_REQUEUED).await.unwrap();

    supabase
        .ensure_job(&new_job(SESSION_SKIPPED, USER_B))
        .await
        .unwrap();
    supabase
        .upsert_result(&result(SESSION_SKIPPED, AnalysisStatus::Skipped), USER_B)
        .await
        .unwrap();

    // The analysis failed: the result is stored without one, and the job fails visibly.
    supabase
        .ensure_job(&new_job(SESSION_ANALYSIS_FAILED, USER_A))
        .await
        .unwrap();
    supabase
        .upsert_result(
            &result(SESSION_ANALYSIS_FAILED, AnalysisStatus::Failed),
            USER_A,
        )
        .await
        .unwrap();

    received(&server).await
}

fn patches(requests: &[Received], session: &str) -> Vec<Value> {
    let filter = ("session_id".to_string(), format!("eq.{session}"));
    requests
        .iter()
        .filter(|r| r.method == "PATCH" && r.query.contains(&filter))
        .map(|r| r.body.clone())
        .collect()
}

#[tokio::test]
async fn a_whole_job_speaks_postgrest() {
    let requests = run_jobs_against_the_fake().await;

    let progress = |stage: &str, status: &str, percent: u8, message: &str| {
        json!({"status": status, "stage": stage, "progress": percent, "message": message,
               "error_code": null, "attempts": 1})
    };
    let completed = json!({"status": "completed", "stage": "completed", "progress": 100,
                           "message": "分析完了！", "error_code": null});
    assert_eq!(
        patches(&requests, SESSION_OK),
        vec![
            progress(
                "downloading",
                "processing",
                10,
                "音声ファイルをダウンロード中..."
            ),
            progress(
                "preprocessing",
                "processing",
                20,
                "音声ファイルを前処理中..."
            ),
            progress("transcribing", "processing", 40, "音声を文字に変換中..."),
            progress("transcribing", "processing", 50, "音声を文字に変換中..."),
            progress("transcribing", "processing", 59, "音声を文字に変換中..."),
            progress("diarization", "processing", 60, "話者を識別中..."),
            progress("analyzing", "processing", 80, "AIが会話を分析中..."),
            progress("saving", "processing", 95, "結果を保存中..."),
            completed.clone(),
            completed,
        ]
    );

    let failed = patches(&requests, SESSION_FAILED);
    assert_eq!(failed.len(), 3);
    for body in &failed[1..] {
        assert_eq!(body["status"], "error");
        assert_eq!(body["stage"], "error");
        assert_eq!(body["error_code"], "STORAGE_NOT_FOUND");
        let message = body["message"].as_str().unwrap();
        // Our message for the code, not the error's own text (issue 15, item 9).
        assert_eq!(
            message,
            "エラーが発生しました: 音声ファイルが見つかりませんでした (STORAGE_NOT_FOUND)"
        );
    }
    assert_eq!(
        patches(&requests, SESSION_REQUEUED)[1],
        json!({"status": "queued", "stage": "queued", "progress": 0,
               "message": "処理待ちです...", "error_code": null})
    );

    let results: Vec<&Received> = requests.iter().filter(|r| r.path == RESULTS).collect();
    assert_eq!(results.len(), 4);
    let analysis_failed = &results[3].body;
    assert_eq!(analysis_failed["analysis_status"], "failed");
    assert_eq!(analysis_failed["analysis"], Value::Null);
    assert_eq!(
        analysis_failed["analysis_error"]["code"],
        "GEMINI_INVALID_RESPONSE"
    );
    let marked = patches(&requests, SESSION_ANALYSIS_FAILED);
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0]["status"], "error");
    assert_eq!(marked[0]["error_code"], "GEMINI_INVALID_RESPONSE");
    let row = &results[0].body;
    assert_eq!(row["session_id"], SESSION_OK);
    assert_eq!(row["user_id"], USER_A);
    assert_eq!(row["analysis_status"], "ok");
    assert_eq!(row["analysis_error"], Value::Null);
    assert_eq!(row["turns"].as_array().unwrap().len(), 5);
    // The row is the published result JSON plus its owner, key for key.
    let mut as_result = row.clone();
    as_result.as_object_mut().unwrap().remove("user_id");
    as_result.as_object_mut().unwrap().remove("analysis_error");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("schemas/result.schema.json")).unwrap())
            .unwrap();
    common::check_against(&schema, &as_result, "result");
    let skipped = &results[2].body;
    assert_eq!(skipped["analysis_status"], "skipped");
    assert_eq!(skipped["analysis"], Value::Null);

    let inserts: Vec<&Received> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == JOBS)
        .collect();
    assert_eq!(inserts.len(), 5);
    assert_eq!(
        inserts[0].body,
        json!({"session_id": SESSION_OK, "user_id": USER_A, "job_id": "job-11111111",
               "audio_bucket": "recordings",
               "audio_key": format!("sessions/{SESSION_OK}.webm")})
    );
}

#[tokio::test]
async fn a_503_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    patch_progress(SESSION_OK)
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"code": "PGRST001", "message": "Database client error"})),
        )
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    patch_progress(SESSION_OK)
        .and(body_json(
            json!({"status": "processing", "stage": "diarization", "progress": 60,
                              "message": "話者を識別中...", "error_code": null}),
        ))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .progress(SESSION_OK)
        .report(Progress::at(Stage::Diarization))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let server = MockServer::start().await;
    patch_progress(SESSION_OK)
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0.3"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    patch_progress(SESSION_OK)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let start = Instant::now();
    client(&server).mark_queued(SESSION_OK).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_timed_out_request_is_retried() {
    let server = MockServer::start().await;
    patch_progress(SESSION_OK)
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    patch_progress(SESSION_OK)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .with_timeout(Duration::from_millis(300))
        .mark_queued(SESSION_OK)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_postgrest_400_fails_at_once_with_its_message() {
    let server = MockServer::start().await;
    write_headers(
        Mock::given(method("POST")).and(path(RESULTS)),
        "resolution=merge-duplicates,return=minimal",
    )
    .respond_with(ResponseTemplate::new(400).set_body_json(json!({
        "code": "PGRST204",
        "message": "Could not find the 'speech' column of 'audio_analysis_results' in the schema cache",
        "details": null,
        "hint": null
    })))
    .expect(1)
    .mount(&server)
    .await;
    let err = client(&server)
        .upsert_result(&result(SESSION_OK, AnalysisStatus::Skipped), USER_A)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::SupabaseWriteFailed);
    assert!(err.message.contains("PGRST204"), "{}", err.message);
    assert!(
        err.message.contains("Could not find the 'speech' column"),
        "{}",
        err.message
    );
    assert!(!err.message.contains(KEY));
    // Nothing was marked completed after the failed upsert.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_fails_after_the_attempts_without_the_key() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let supabase = SupabaseClient::new(&SupabaseConfig {
        url: format!("http://127.0.0.1:{port}"),
        service_key: KEY.into(),
    })
    .unwrap()
    .with_retry(quick_retry(3));
    let err = supabase.mark_queued(SESSION_OK).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::SupabaseWriteFailed);
    assert!(err.message.contains("after 3 attempts"), "{}", err.message);
    assert!(!err.message.contains(KEY) && !format!("{err:?}").contains(KEY));
}

// ------------------------------------------------------------------------------------------
// Real PostgreSQL
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_bodies_the_fake_received_are_accepted_by_the_real_schema() {
    let requests = run_jobs_against_the_fake().await;
    let pg = migrated();
    for r in &requests {
        let out = execute_like_postgrest(&pg, r).unwrap_or_else(|e| {
            panic!("PostgreSQL refused {} {} {}: {e}", r.method, r.path, r.body)
        });
        if r.method == "GET" {
            // The reply of the real table decodes into what job_status returns.
            let rows: Vec<JobState> = serde_json::from_str(&out).unwrap();
            assert!(rows.len() <= 1);
        }
    }
    // The upsert body once more: still one row per session.
    let upsert = requests.iter().find(|r| r.path == RESULTS).unwrap();
    execute_like_postgrest(&pg, upsert).unwrap();
    let count = |sql: &str| pg.sql("app", sql, &[]);
    assert_eq!(
        count(&format!(
            "select count(*) from audio_analysis_results where session_id = '{SESSION_OK}'"
        )),
        "1"
    );
    assert_eq!(count("select count(*) from audio_analysis_results"), "3");

    let row = |session: &str| -> Value {
        serde_json::from_str(&pg.sql(
            "app",
            "select row_to_json(j) from audio_processing_jobs j where session_id = :'id'",
            &[("id", session)],
        ))
        .unwrap()
    };
    let ok = row(SESSION_OK);
    assert_eq!(ok["status"], "completed");
    assert_eq!(ok["stage"], "completed");
    assert_eq!(ok["progress"], 100);
    assert_eq!(ok["message"], "分析完了！");
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["user_id"], USER_A);
    assert_eq!(ok["audio_bucket"], "recordings");
    assert!(ok["started_at"].is_string() && ok["completed_at"].is_string());
    let failed = row(SESSION_FAILED);
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error_code"], "STORAGE_NOT_FOUND");
    assert_eq!(failed["attempts"], 3);
    let analysis_failed = row(SESSION_ANALYSIS_FAILED);
    assert_eq!(analysis_failed["status"], "error");
    assert_eq!(analysis_failed["error_code"], "GEMINI_INVALID_RESPONSE");
    let requeued = row(SESSION_REQUEUED);
    assert_eq!(requeued["status"], "queued");
    assert_eq!(requeued["completed_at"], Value::Null);

    // The stored result reads back as the result the worker wrote.
    let stored: Value = serde_json::from_str(&pg.sql(
        "app",
        "select row_to_json(r) from audio_analysis_results r where session_id = :'id'",
        &[("id", SESSION_OK)],
    ))
    .unwrap();
    let written = result(SESSION_OK, AnalysisStatus::Ok);
    let back: JobResult = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(back.analysis, written.analysis);
    assert_eq!(back.turns, written.turns);
    assert_eq!(back.metrics, written.metrics);
    assert_eq!(back.versions, written.versions);
    assert_eq!(stored["analysis_status"], "ok");
}

#[test]
fn migration_is_idempotent_and_rls_shows_users_only_their_rows() {
    let pg = migrated();
    // Applying every migration again changes nothing and fails nothing.
    for file in migrations() {
        pg.apply_file("app", &file)
            .unwrap_or_else(|e| panic!("second run of {}: {e}", file.display()));
    }
    assert_eq!(
        pg.sql(
            "app",
            "select string_agg(tablename, ',' order by tablename) from pg_publication_tables \
             where pubname = 'supabase_realtime'",
            &[]
        ),
        "audio_analysis_results,audio_processing_jobs"
    );

    let seed = "insert into audio_processing_jobs (session_id, user_id, status, stage, progress) values \
        (:'sa', :'ua', 'processing', 'transcribing', 45), (:'sb', :'ub', 'queued', 'queued', 0); \
        insert into audio_analysis_results (session_id, user_id, analysis_status, turns) values \
        (:'sa', :'ua', 'skipped', '[]'), (:'sb', :'ub', 'skipped', '[]');";
    let ids = [
        ("sa", SESSION_OK),
        ("sb", SESSION_FAILED),
        ("ua", USER_A),
        ("ub", USER_B),
    ];
    pg.sql("app", seed, &ids);

    let as_user = |user: &str, sql: &str| {
        pg.psql(
            "app",
            &format!(
                "begin; set local role authenticated; \
                 select set_config('request.jwt.claim.sub', :'user', true);\n{sql}\ncommit;"
            ),
            &[("user", user)],
        )
    };
    let visible = |user: &str, table: &str| {
        as_user(
            user,
            &format!("select coalesce(string_agg(user_id::text, ','), '-') from {table};"),
        )
        .unwrap()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
    };
    for table in ["audio_processing_jobs", "audio_analysis_results"] {
        assert_eq!(visible(USER_A, table), USER_A, "{table}");
        assert_eq!(visible(USER_B, table), USER_B, "{table}");
        // Signed in as somebody else: nothing.
        assert_eq!(
            visible("cccccccc-0000-4000-8000-000000000003", table),
            "-",
            "{table}"
        );
        // Signed-in users cannot write, not even their own rows.
        for sql in [
            format!("update {table} set user_id = user_id where user_id = :'user';"),
            format!("delete from {table} where user_id = :'user';"),
        ] {
            let err = as_user(USER_A, &sql).unwrap_err();
            assert!(err.contains("permission denied"), "{sql}: {err}");
        }
        // anon reads nothing at all.
        let err = pg
            .psql(
                "app",
                &format!("set role anon; select count(*) from {table};"),
                &[],
            )
            .unwrap_err();
        assert!(err.contains("permission denied"), "{err}");
        // The service role (the worker) sees every row.
        assert_eq!(
            pg.sql(
                "app",
                &format!("set role service_role; select count(*) from {table};"),
                &[]
            ),
            "2"
        );
    }
    let err = as_user(
        USER_A,
        "insert into audio_processing_jobs (session_id, user_id) values \
         ('55555555-5555-4555-8555-555555555555', :'user');",
    )
    .unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn the_checks_refuse_bad_rows() {
    let pg = migrated();
    let job = "insert into audio_processing_jobs (session_id, user_id) values (:'s', :'u');";
    pg.sql("app", job, &[("s", SESSION_OK), ("u", USER_A)]);

    let refused = |sql: &str, constraint: &str| {
        let err = pg
            .psql("app", sql, &[("s", SESSION_OK), ("u", USER_A)])
            .expect_err(sql);
        assert!(
            err.contains(constraint),
            "{sql}: expected {constraint}, got {err}"
        );
    };
    refused(
        "update audio_processing_jobs set progress = 101 where session_id = :'s';",
        "audio_processing_jobs_progress_check",
    );
    refused(
        "update audio_processing_jobs set progress = -1 where session_id = :'s';",
        "audio_processing_jobs_progress_check",
    );
    refused(
        "update audio_processing_jobs set stage = 'bogus', status = 'processing' where session_id = :'s';",
        "audio_processing_jobs_stage_check",
    );
    refused(
        "update audio_processing_jobs set status = 'done' where session_id = :'s';",
        "audio_processing_jobs_status_check",
    );
    refused(
        "update audio_processing_jobs set status = 'completed', stage = 'transcribing' where session_id = :'s';",
        "audio_processing_jobs_status_matches_stage",
    );
    refused(
        "update audio_processing_jobs set status = 'error', stage = 'error' where session_id = :'s';",
        "audio_processing_jobs_error_has_code",
    );

    let result = |status: &str, analysis: &str, error: &str| {
        format!(
            "insert into audio_analysis_results (session_id, user_id, analysis_status, analysis, analysis_error) \
             values (:'s', :'u', '{status}', {analysis}, {error});"
        )
    };
    let made_up = "'{\"skills\": {\"listening\": {\"score\": 3}}}'::jsonb";
    let error = "'{\"code\": \"GEMINI_FAILED\", \"message\": \"x\"}'::jsonb";
    refused(
        &result("failed", made_up, error),
        "audio_analysis_results_analysis_only_when_ok",
    );
    refused(
        &result("skipped", made_up, "null"),
        "audio_analysis_results_analysis_only_when_ok",
    );
    refused(
        &result("ok", "null", "null"),
        "audio_analysis_results_analysis_only_when_ok",
    );
    refused(
        &result("failed", "null", "null"),
        "audio_analysis_results_failure_has_error",
    );
    refused(
        &result("maybe", "null", "null"),
        "audio_analysis_results_analysis_status_check",
    );
    // A result needs its job row.
    let err = pg
        .psql(
            "app",
            "insert into audio_analysis_results (session_id, user_id, analysis_status) \
             values ('99999999-9999-4999-8999-999999999999', :'u', 'skipped');",
            &[("u", USER_A)],
        )
        .unwrap_err();
    assert!(
        err.contains("audio_analysis_results_session_id_fkey"),
        "{err}"
    );
    // What the worker writes is accepted.
    pg.sql(
        "app",
        &result("failed", "null", error),
        &[("s", SESSION_OK), ("u", USER_A)],
    );

    // updated_at follows every write, started_at/completed_at follow the status.
    let times = || {
        pg.sql(
            "app",
            "select updated_at > created_at, started_at is not null, completed_at is not null \
             from audio_processing_jobs where session_id = :'s';",
            &[("s", SESSION_OK)],
        )
    };
    assert_eq!(times(), "f|f|f");
    pg.sql(
        "app",
        "update audio_processing_jobs set status = 'processing', stage = 'downloading' where session_id = :'s';",
        &[("s", SESSION_OK)],
    );
    assert_eq!(times(), "t|t|f");
    pg.sql(
        "app",
        "update audio_processing_jobs set status = 'completed', stage = 'completed', progress = 100 where session_id = :'s';",
        &[("s", SESSION_OK)],
    );
    assert_eq!(times(), "t|t|t");
    // Deleting the job deletes its result.
    pg.sql(
        "app",
        "delete from audio_processing_jobs where session_id = :'s';",
        &[("s", SESSION_OK)],
    );
    assert_eq!(
        pg.sql("app", "select count(*) from audio_analysis_results;", &[]),
        "0"
    );
}

// ------------------------------------------------------------------------------------------
// The harness cleans up
// ------------------------------------------------------------------------------------------

/// A process that still runs (a reaped child has no /proc entry; a zombie is not running).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Every server a test starts stops when the test ends: the PostgREST fake's cluster, once the
/// fake is dropped, has no postmaster and no data directory left. (Mounted on wiremock's pooled
/// servers, the responder's `Arc<Postgres>` stayed in the static pool, and each test process
/// left its clusters running under PID 1 with 40 MB of files each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_postgrest_fake_leaves_no_postgres_running_and_no_files() {
    let fake = PostgrestOnPostgres::start(KEY).await;
    let ping = client(&fake.server).ping().await;
    assert!(ping.is_ok(), "the fake answers: {ping:?}");
    let pid = fake.pg.pid().expect("the postmaster runs");
    let dir = fake.pg.dir().to_path_buf();
    assert!(running(pid) && dir.exists());

    drop(fake);
    // The mock server's task drops its mocks (and the cluster) once it sees the shutdown.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (running(pid) || dir.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!running(pid), "postmaster {pid} still runs");
    assert!(!dir.exists(), "{} is still there", dir.display());
}
