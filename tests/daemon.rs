//! The daemon end to end: the real `audio-worker run` binary against a real `redis-server`, an
//! in-process S3 server (s3s-fs) holding fixture recordings, PostgREST served on a real migrated
//! PostgreSQL, and local fakes of Whisper and Gemini. Jobs are enqueued with `audio-worker
//! enqueue`, exactly as the Edge Function writes them.
//!
//! Proven here: good jobs go through every stage to exactly one result (also when enqueued twice),
//! every kind of poison job fails with its own code in the job row and the dead-letter stream, a
//! SIGKILLed worker's job is finished by another, SIGTERM hands an unfinished job back without
//! spending an attempt, a worker exits by itself when idle, /health, /ready and /metrics answer,
//! every log line is JSON with the job's ids, and no secret reaches the logs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use audio_worker::job::{self, Job};
use common::daemon::*;
use common::fakes::{GOOGLE_KEY, OPENAI_KEY};
use common::faulty::FaultPlan;
use common::s3::SECRET_KEY;
use serde_json::Value;

const SECRETS: [&str; 5] = [
    SERVICE_KEY,
    SIGNING_SECRET,
    OPENAI_KEY,
    GOOGLE_KEY,
    SECRET_KEY,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_jobs_complete_once_and_poison_jobs_fail_visibly_with_their_codes() {
    let stack = Stack::start(Duration::ZERO).await;
    let good = uuid(1);
    let (silent, not_audio, missing) = (uuid(2), uuid(3), uuid(4));
    let (other_bucket, outside_prefix) = (uuid(5), uuid(6));
    let (unsigned, badly_signed, invalid) = (uuid(7), uuid(8), uuid(9));

    // The good recording, enqueued twice (a double click): one result.
    stack.enqueue(&good, GOOD_KEY, BUCKET);
    stack.enqueue(&good, GOOD_KEY, BUCKET);
    stack.enqueue(&silent, &format!("users/{USER}/silence.wav"), BUCKET);
    stack.enqueue(&not_audio, &format!("users/{USER}/text.m4a"), BUCKET);
    stack.enqueue(&missing, &format!("users/{USER}/gone.webm"), BUCKET);
    stack.enqueue(&other_bucket, GOOD_KEY, "someone-elses-bucket");
    stack.enqueue(&outside_prefix, "elsewhere/clear.flac", BUCKET);
    // Jobs that did not come from a holder of the secret.
    let queue = stack.queue().await;
    let forged = |session: &str, secret: Option<&[u8]>| {
        let mut job = Job::new(session, USER, BUCKET, GOOD_KEY, "en", SystemTime::now());
        if let Some(secret) = secret {
            job::sign(&mut job, secret);
        }
        job.to_json()
    };
    queue.enqueue(&forged(&unsigned, None)).await.unwrap();
    queue
        .enqueue(&forged(&badly_signed, Some(b"not-the-secret")))
        .await
        .unwrap();
    let garbage = format!(r#"{{"version":1,"session_id":"{invalid}","audio":"http://evil"}}"#);
    queue.enqueue(garbage.as_bytes()).await.unwrap();
    // The forged jobs name sessions whose rows exist: another user's finished sessions. A job
    // that is not authenticated must not touch them (issue 15, item 10).
    for session in [&unsigned, &badly_signed, &invalid] {
        stack.supabase.sql(
            "insert into audio_processing_jobs (session_id, user_id, status, stage, progress, message) \
             values (:'s', 'bbbbbbbb-0000-4000-8000-000000000002', 'completed', 'completed', 100, '分析完了！')",
            &[("s", session)],
        );
    }
    let forged_rows: Vec<Value> = [&unsigned, &badly_signed, &invalid]
        .iter()
        .map(|s| stack.supabase.job_row(s))
        .collect();

    let mut worker = stack.worker("w1", &[]);
    let (status, body) = worker.get(worker.port, "/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    // /health answers before Redis is reached; /ready once the worker is connected.
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = worker.get(worker.port, "/ready").await;
        if status == 200 || started.elapsed() > Duration::from_secs(20) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    let names: Vec<_> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("redis", "healthy"),
            ("s3", "healthy"),
            ("supabase", "healthy")
        ],
        "{body}"
    );

    stack
        .wait_for_depth(depth(0, 0, 8), Duration::from_secs(120))
        .await;

    // Exactly one result, completed, through every stage in order.
    let row = stack.supabase.job_row(&good);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["progress"], 100);
    assert_eq!(row["message"], "分析完了！");
    assert_eq!(stack.supabase.result_count(&good), 1);
    let analysis_status = stack.supabase.sql(
        "select analysis_status || ' ' || jsonb_array_length(turns::jsonb) from audio_analysis_results where session_id = :'s'",
        &[("s", &good)],
    );
    assert!(analysis_status.starts_with("ok "), "{analysis_status}");
    let stages: Vec<String> = stack
        .supabase
        .progress_of(&good)
        .await
        .iter()
        .map(|b| b["stage"].as_str().unwrap().to_string())
        .collect();
    let mut distinct = stages.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [
            "downloading",
            "preprocessing",
            "transcribing",
            "diarization",
            "analyzing",
            "saving",
            "completed"
        ],
        "{stages:?}"
    );

    // Every poison job: its own code in the row (where a row exists) and in the dead letters.
    let expected = [
        (&silent, "AUDIO_NO_SPEECH"),
        (&not_audio, "AUDIO_UNSUPPORTED_FORMAT"),
        (&missing, "STORAGE_NOT_FOUND"),
        (&other_bucket, "STORAGE_FORBIDDEN_KEY"),
        (&outside_prefix, "STORAGE_FORBIDDEN_KEY"),
        (&unsigned, "QUEUE_BAD_SIGNATURE"),
        (&badly_signed, "QUEUE_BAD_SIGNATURE"),
        (&invalid, "QUEUE_INVALID_JOB"),
    ];
    let dead = queue.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), expected.len());
    for (session, code) in expected {
        let row = stack.supabase.job_row(session);
        if code.starts_with("QUEUE_") {
            // Not authenticated: dead-lettered only, the row untouched.
            assert!(forged_rows.contains(&row), "{session}: {row}");
            assert_eq!(row["status"], "completed", "{session}: {row}");
        } else {
            assert_eq!(row["status"], "error", "{session}: {row}");
            assert_eq!(row["error_code"], code, "{session}: {row}");
            assert!(
                row["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("エラーが発生しました: "),
                "{row}"
            );
            assert_eq!(stack.supabase.result_count(session), 0);
        }
        let letter = dead
            .iter()
            .find(|(_, f)| f["job"].contains(session.as_str()))
            .unwrap_or_else(|| panic!("no dead letter for {session}"));
        assert_eq!(letter.1["error_code"], code);
        assert_eq!(
            letter.1["attempts"], "1",
            "permanent errors are not retried"
        );
    }

    // Metrics count what happened; the autoscaler's gauges are there.
    let (_, text) = worker.get(worker.metrics_port, "/metrics").await;
    assert_eq!(
        metric(&text, r#"audio_worker_jobs_total{status="completed"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"audio_worker_jobs_total{status="duplicate"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"audio_worker_jobs_total{status="failed"}"#),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            r#"audio_worker_job_failures_total{code="STORAGE_FORBIDDEN_KEY"}"#
        ),
        2.0
    );
    assert!(text.contains("audio_worker_queue_waiting"), "{text}");
    assert!(text.contains(r#"audio_worker_stage_duration_seconds_bucket{stage="transcribing""#));
    assert!(metric(&text, "audio_worker_audio_seconds_total") >= 42.0);

    // An operator redrives a dead letter: it runs again (and, being bad audio, comes back).
    let (dead_id, _) = dead
        .iter()
        .find(|(_, f)| f["job"].contains(silent.as_str()))
        .unwrap();
    let out = command(&stack, &["redrive", dead_id], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("redriven {dead_id} -> ")));
    let again = command(&stack, &["redrive", dead_id], &[]);
    assert_eq!(again.status.code(), Some(1), "a letter is redriven once");
    stack
        .wait_for_depth(depth(0, 0, 8), Duration::from_secs(60))
        .await;
    let letters = queue.dead_letters(100).await.unwrap();
    assert!(letters.iter().all(|(id, _)| id != dead_id));
    assert_eq!(
        letters
            .iter()
            .filter(|(_, f)| f["job"].contains(silent.as_str()))
            .count(),
        1
    );

    // SIGTERM with nothing in flight: a clean exit.
    worker.signal("TERM");
    assert_eq!(worker.exit_code(Duration::from_secs(15)).await, 0);
    assert!(worker.leftovers().is_empty(), "{:?}", worker.leftovers());

    // Logs: JSON on every line, the job's ids on its lines, no secret anywhere.
    let logs = std::fs::read_to_string(&worker.log).unwrap();
    let (mut job_lines, mut stage_lines) = (0, 0);
    for line in logs.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let between = ["stage started", "audio prepared", "speaker timeline"];
        if between
            .iter()
            .any(|m| v["message"].as_str().unwrap_or("").starts_with(m))
        {
            // What happens between claimed and ended is in the log, in the job's span.
            assert!(v["span"]["job_id"].is_string(), "{line}");
            stage_lines += 1;
        }
        if v["message"] == "job claimed" || v["message"] == "job ended" {
            assert!(v["span"]["job_id"].is_string(), "{line}");
            assert_eq!(
                v["span"]["session_id"].as_str().unwrap().len(),
                36,
                "{line}"
            );
            job_lines += 1;
        }
    }
    assert!(job_lines >= 8, "{logs}");
    assert!(stage_lines >= 6, "{logs}");
    let everything = worker.logs();
    for secret in SECRETS {
        assert!(!everything.contains(secret), "{secret} in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_job_is_finished_by_another_and_shutdown_hands_jobs_back() {
    // Whisper takes 3 s per request, so the workers are caught in the middle of jobs.
    let stack = Stack::start(Duration::from_secs(3)).await;
    // A and B share a work directory, as processes on one machine do.
    let shared = stack.dir.path().join("shared-work");
    let shared = shared.to_str().unwrap();
    let fast_reclaim = [
        ("VISIBILITY_TIMEOUT_S", "3"),
        ("SHUTDOWN_GRACE_S", "1"),
        ("WORK_DIR", shared),
    ];
    let (first, second) = (uuid(21), uuid(22));

    // Worker A dies (SIGKILL) mid-transcription.
    stack.enqueue(&first, GOOD_KEY, BUCKET);
    let a = stack.worker("a", &fast_reclaim);
    stack
        .wait_for("worker a to transcribe", Duration::from_secs(60), || {
            stack.stage(&first).as_deref() == Some("transcribing")
        })
        .await;
    a.signal("KILL");
    let a_files = a.leftovers();
    drop(a);
    assert!(
        !a_files.is_empty(),
        "a killed worker leaves its job's files"
    );

    // Worker B reclaims it after the visibility timeout and finishes it.
    let mut b = stack.worker("b", &fast_reclaim);
    stack
        .wait_for(
            "worker b to finish the job",
            Duration::from_secs(90),
            || stack.stage(&first).as_deref() == Some("completed"),
        )
        .await;
    assert_eq!(stack.supabase.result_count(&first), 1);
    assert_eq!(stack.supabase.job_row(&first)["attempts"], 2);
    stack
        .wait_for_depth(depth(0, 0, 0), Duration::from_secs(10))
        .await;

    // SIGTERM while B is mid-job, with a 1 s grace: B hands the job back and exits 0.
    stack.enqueue(&second, GOOD_KEY, BUCKET);
    stack
        .wait_for("worker b to transcribe", Duration::from_secs(60), || {
            stack.stage(&second).as_deref() == Some("transcribing")
        })
        .await;
    let stopped = Instant::now();
    b.signal("TERM");
    assert_eq!(
        b.exit_code(Duration::from_secs(15)).await,
        0,
        "{}",
        b.logs()
    );
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert_eq!(stack.stage(&second).as_deref(), Some("queued"));
    stack
        .wait_for_depth(depth(1, 0, 0), Duration::from_secs(5))
        .await;
    // Including A's: B removed them when it started.
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());

    // Worker C takes it at once (no visibility wait), finishes, and exits when idle.
    let mut c = stack.worker("c", &[("EXIT_WHEN_IDLE", "1s")]);
    assert_eq!(
        c.exit_code(Duration::from_secs(90)).await,
        0,
        "{}",
        c.logs()
    );
    let row = stack.supabase.job_row(&second);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(
        row["attempts"], 1,
        "an interruption is not a failed attempt"
    );
    assert_eq!(stack.supabase.result_count(&second), 1);
    stack
        .wait_for_depth(depth(0, 0, 0), Duration::from_secs(5))
        .await;
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
    assert!(c.logs().contains("the queue stayed empty; exiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_prints_the_redacted_configuration_and_probes_every_dependency() {
    let stack = Stack::start(Duration::ZERO).await;
    let out = command(&stack, &["check"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dependency in ["redis", "s3", "supabase", "whisper model", "gemini model"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(dependency))
            .unwrap_or_else(|| panic!("no {dependency} line in\n{stdout}"));
        assert!(line.contains("healthy"), "{line}");
    }
    assert!(stdout.contains("SUPABASE_SERVICE_KEY") && stdout.contains("<set>"));
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "{secret} printed");
    }

    // A wrong service key: check names the failing dependency and fails.
    let out = command(&stack, &["check"], &[("SUPABASE_SERVICE_KEY", "wrong-key")]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let supabase = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("supabase"))
        .unwrap();
    assert!(
        supabase.contains("unhealthy") && supabase.contains("401"),
        "{supabase}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[CONFIG_MISSING]"));
    assert!(walk(&stack.dir.path().join("check-work")).is_empty());
}

/// Issue 17, item 8: with Redis and S3 down, `check` still probes every dependency, prints one
/// readable line each (no SDK struct dumps), and ends with a retryable code (exit 75), not
/// CONFIG_MISSING: a refused connection is an outage, not a configuration mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_probes_every_dependency_when_redis_and_s3_are_down() {
    let stack = Stack::start(Duration::ZERO).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let redis_url = format!("redis://127.0.0.1:{closed_port}");
    let s3_url = format!("http://127.0.0.1:{closed_port}");
    let out = command(
        &stack,
        &["check"],
        &[("REDIS_URL", &redis_url), ("AWS_ENDPOINT_URL_S3", &s3_url)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(75), "{stdout}{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in\n{stdout}"))
            .to_string()
    };
    for down in ["redis", "s3"] {
        let l = line(down);
        assert!(l.contains("unhealthy") && l.contains("refused"), "{l}");
        assert!(!l.contains('{') && !l.contains("DispatchFailure("), "{l}");
    }
    for up in ["supabase", "whisper model", "gemini model"] {
        let l = line(up);
        assert!(l.contains(" healthy"), "{l}");
    }
    assert!(stderr.starts_with("error[QUEUE_UNAVAILABLE]: "), "{stderr}");
    assert!(stderr.contains("redis, s3"), "{stderr}");
}

/// Issue 17: Redis that answers but refuses the password in REDIS_URL is a configuration mistake
/// (CONFIG_MISSING, exit 1, saying so), not "unreachable" (exit 75, try again later).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_says_when_redis_refuses_the_password() {
    let stack = Stack::start(Duration::ZERO).await;
    let redis_url = format!(
        "redis://:not-the-password@127.0.0.1:{}/",
        stack.redis.port()
    );
    let out = command(&stack, &["check"], &[("REDIS_URL", &redis_url)]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let redis = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("redis"))
        .unwrap_or_else(|| panic!("no redis line in\n{stdout}"));
    assert!(
        redis.contains("unhealthy") && redis.contains("refused the credentials"),
        "{redis}"
    );
    assert!(!stdout.contains("not-the-password"), "{stdout}");
    assert!(stderr.starts_with("error[CONFIG_MISSING]"), "{stderr}");
}

#[test]
fn run_without_configuration_names_every_missing_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .arg("run")
        .env_clear()
        .env("WORKER_CONCURRENCY", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error[CONFIG_MISSING]: "), "{stderr}");
    for name in [
        "REDIS_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_KEY",
        "OPENAI_API_KEY",
        "GOOGLE_API_KEY",
        "BUCKET_NAME",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "WORKER_CONCURRENCY",
    ] {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_input_ends_with_its_code_after_one_attempt_and_the_worker_goes_on() {
    let stack = Stack::start(Duration::ZERO).await;
    let mut sessions = Vec::new();
    for (i, (file, code)) in common::BAD_INPUTS.iter().enumerate() {
        let key = format!("users/{USER}/{}", file.replace('/', "-"));
        stack
            .s3
            .put(BUCKET, &key, &std::fs::read(common::fixture(file)).unwrap());
        let session = uuid(100 + i as u32);
        stack.enqueue(&session, &key, BUCKET);
        sessions.push((session, *file, *code));
    }
    // A good job behind them all: the worker is still working after every bad one.
    let last = uuid(199);
    stack.enqueue(&last, GOOD_KEY, BUCKET);

    let mut worker = stack.worker("bad", &[("EXIT_WHEN_IDLE", "1s")]);
    assert_eq!(
        worker.exit_code(Duration::from_secs(120)).await,
        0,
        "{}",
        worker.logs()
    );
    assert_eq!(stack.supabase.job_row(&last)["status"], "completed");
    let dead = stack.queue().await.dead_letters(100).await.unwrap();
    for (session, file, code) in &sessions {
        let row = stack.supabase.job_row(session);
        match code {
            Some(code) => {
                assert_eq!(row["status"], "error", "{file}: {row}");
                assert_eq!(row["error_code"], *code, "{file}: {row}");
                assert_eq!(row["attempts"], 1, "{file}: retried a permanent error");
                let letter = dead
                    .iter()
                    .find(|(_, f)| f["job"].contains(session.as_str()))
                    .unwrap_or_else(|| panic!("{file}: no dead letter"));
                assert_eq!(letter.1["error_code"], *code, "{file}");
            }
            // Damaged but usable: decoded and stored. (The fakes' transcript belongs to another
            // recording, so its analysis may be refused; the audio was not.)
            None => {
                assert_eq!(stack.supabase.result_count(session), 1, "{file}: {row}");
                let code = row["error_code"].as_str().unwrap_or("");
                assert!(!code.starts_with("AUDIO_"), "{file}: {row}");
            }
        }
    }
    assert!(worker.leftovers().is_empty(), "{:?}", worker.leftovers());
}

/// The job's stream entry and who holds it, read straight from Redis.
fn pending_entries(stack: &Stack) -> Vec<(String, String, u64)> {
    let mut con = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg("audio:jobs")
        .arg("audio-workers")
        .arg("-")
        .arg("+")
        .arg(100)
        .query(&mut con)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|p| (p.id, p.consumer, p.times_delivered as u64))
        .collect()
}

/// Issue 15, item 1: a Supabase slower than the visibility timeout (every read takes 10 s, the
/// timeout is 3 s) must not let a second worker reclaim a job whose worker is alive: the claim is
/// heartbeated from the moment it is made, before the first Supabase call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_supabase_does_not_let_a_second_worker_take_a_live_job() {
    let slow_reads = FaultPlan {
        slow: 1.0,
        slow_by: Duration::from_secs(10),
        slow_method: Some("GET"),
        ..FaultPlan::default()
    };
    let stack = Stack::start_with(StackOptions {
        faults: Some([FaultPlan::default(), FaultPlan::default(), slow_reads]),
        ..StackOptions::default()
    })
    .await;
    let session = uuid(31);
    stack.enqueue(&session, GOOD_KEY, BUCKET);
    let fast_reclaim = [("VISIBILITY_TIMEOUT_S", "3")];
    let a = stack.worker("a", &fast_reclaim);
    stack
        .wait_for_depth(depth(1, 1, 0), Duration::from_secs(30))
        .await;
    let b = stack.worker("b", &fast_reclaim);
    stack
        .wait_for("the job to complete", Duration::from_secs(120), || {
            stack.stage(&session).as_deref() == Some("completed")
        })
        .await;
    stack
        .wait_for_depth(depth(0, 0, 0), Duration::from_secs(30))
        .await;
    let logs = format!("{}{}", a.logs(), b.logs());
    assert_eq!(
        logs.matches("\"job claimed\"").count(),
        1,
        "the job was claimed more than once:\n{logs}"
    );
    assert_eq!(logs.matches("\"result stored\"").count(), 1, "{logs}");
    assert_eq!(stack.supabase.job_row(&session)["attempts"], 1);
    assert_eq!(stack.supabase.result_count(&session), 1);
}

/// Issue 15, item 1: once another worker holds the entry, the first one writes nothing more
/// (no progress, no result, no acknowledgement), even when it would finish before its next
/// periodic heartbeat: every state change first checks the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superseded_worker_writes_nothing_more() {
    let slow_writes = FaultPlan {
        slow: 1.0,
        slow_by: Duration::from_millis(1500),
        slow_method: Some("PATCH"),
        ..FaultPlan::default()
    };
    let stack = Stack::start_with(StackOptions {
        faults: Some([FaultPlan::default(), FaultPlan::default(), slow_writes]),
        ..StackOptions::default()
    })
    .await;
    let session = uuid(32);
    stack.enqueue(&session, GOOD_KEY, BUCKET);
    // The default visibility timeout (120 s): the periodic heartbeat comes every 40 s, long after
    // this job would have finished.
    let a = stack.worker("a", &[]);
    stack
        .wait_for("worker a to start the job", Duration::from_secs(60), || {
            stack.stage(&session).as_deref() == Some("downloading")
        })
        .await;
    // Another worker takes the entry over (as XAUTOCLAIM does after a stall).
    let pending = pending_entries(&stack);
    assert_eq!(pending.len(), 1, "{pending:?}");
    let mut con = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("audio:jobs")
        .arg("audio-workers")
        .arg("thief")
        .arg(0)
        .arg(&pending[0].0)
        .query(&mut con)
        .unwrap();
    // A write already on its way may still land; nothing after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = stack.supabase.job_row(&session);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        stack.supabase.job_row(&session),
        row,
        "a superseded worker went on writing; log:\n{}",
        a.logs()
    );
    assert_ne!(row["status"], "completed");
    assert_eq!(stack.supabase.result_count(&session), 0);
    let pending = pending_entries(&stack);
    assert_eq!(pending.len(), 1, "acknowledged by the superseded worker");
    assert_eq!(pending[0].1, "thief");
    assert!(a.logs().contains("\"abandoned\""), "{}", a.logs());
}

/// Puts the session's only entry into the pending list of a consumer that does not exist any
/// more, with this delivery count (as if that many workers had died on it).
fn strand_pending(stack: &Stack, consumer: &str, deliveries: u64) -> String {
    let mut con = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audio-workers")
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("audio:jobs")
        .arg(">")
        .query(&mut con)
        .unwrap();
    let id = read.keys[0].ids[0].id.clone();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("audio:jobs")
        .arg("audio-workers")
        .arg(consumer)
        .arg(0)
        .arg(&id)
        .arg("RETRYCOUNT")
        .arg(deliveries)
        .arg("JUSTID")
        .query(&mut con)
        .unwrap();
    id
}

/// Issue 15, item 2: a worker died between the `completed` write and the XACK, on the last
/// delivery: the redelivery finds the session completed and acknowledges it untouched, although
/// its attempts are exhausted (it used to flip completed → error INTERNAL and dead-letter it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_session_is_acknowledged_untouched_whatever_its_delivery_count() {
    let stack = Stack::start(Duration::ZERO).await;
    let session = uuid(33);
    stack.supabase.sql(
        "insert into audio_processing_jobs (session_id, user_id, status, stage, progress, message, attempts) \
         values (:'s', :'u', 'completed', 'completed', 100, '分析完了！', 3)",
        &[("s", &session), ("u", USER)],
    );
    stack.enqueue(&session, GOOD_KEY, BUCKET);
    strand_pending(&stack, "died-after-completing", 5);
    let before = stack.supabase.job_row(&session);
    let w = stack.worker("w", &[("VISIBILITY_TIMEOUT_S", "3")]);
    let queue = stack.queue().await;
    let start = Instant::now();
    while queue.depth().await.unwrap().length > 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(queue.depth().await.unwrap(), depth(0, 0, 0), "{}", w.logs());
    assert_eq!(stack.supabase.job_row(&session), before, "{}", w.logs());
    assert!(w.logs().contains("\"duplicate\""), "{}", w.logs());
}

/// Issue 15, item 3: EXIT_WHEN_IDLE counts from the moment the stream became empty, not from
/// the end of this worker's last job: an entry pending with another worker keeps it here, and so
/// does the time since that entry was finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_when_idle_waits_until_the_stream_has_been_empty_that_long() {
    let stack = Stack::start(Duration::ZERO).await;
    let session = uuid(34);
    stack.enqueue(&session, GOOD_KEY, BUCKET);
    let id = strand_pending(&stack, "another-worker", 1);
    let started = Instant::now();
    let mut w = stack.worker("idle", &[("EXIT_WHEN_IDLE", "6s")]);
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed())).await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "left while a job was pending:\n{}",
        w.logs()
    );
    // The other worker finishes its job.
    let mut con = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: redis::Value = redis::pipe()
        .cmd("XACK")
        .arg("audio:jobs")
        .arg("audio-workers")
        .arg(&id)
        .cmd("XDEL")
        .arg("audio:jobs")
        .arg(&id)
        .query(&mut con)
        .unwrap();
    let emptied = Instant::now();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "left {:?} after the stream emptied (EXIT_WHEN_IDLE=6s):\n{}",
        emptied.elapsed(),
        w.logs()
    );
    assert_eq!(
        w.exit_code(Duration::from_secs(20)).await,
        0,
        "{}",
        w.logs()
    );
    assert!(emptied.elapsed() >= Duration::from_millis(4500));
    assert!(w.logs().contains("the queue stayed empty; exiting"));
}

/// Issue 15, item 5: `rediss://` works, against a real redis-server that speaks only TLS with a
/// certificate from a CA made here: trusted as a system root (rustls-native-certs reads
/// SSL_CERT_FILE), or named by REDIS_TLS_CA_FILE; untrusted, it fails on the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_redis_works_with_the_system_roots_or_a_private_ca() {
    let stack = Stack::start(Duration::ZERO).await;
    let tls = common::servers::TlsRedisServer::start();
    let (url, ca) = (tls.url(), tls.ca_file.display().to_string());
    let session = uuid(35);
    let enqueue = |extra: &[(&str, &str)]| {
        command(
            &stack,
            &[
                "enqueue",
                "--session-id",
                &session,
                "--user-id",
                USER,
                "--key",
                GOOD_KEY,
                "--bucket",
                BUCKET,
            ],
            extra,
        )
    };
    let out = enqueue(&[("REDIS_URL", &url), ("SSL_CERT_FILE", &ca)]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tls.log_tail()
    );
    let mut w = stack.worker(
        "tls",
        &[
            ("REDIS_URL", &url),
            ("REDIS_TLS_CA_FILE", &ca),
            ("EXIT_WHEN_IDLE", "1s"),
        ],
    );
    assert_eq!(
        w.exit_code(Duration::from_secs(90)).await,
        0,
        "{}",
        w.logs()
    );
    assert_eq!(stack.supabase.job_row(&session)["status"], "completed");
    assert_eq!(stack.supabase.result_count(&session), 1);

    // A CA nobody trusts: refused for its certificate.
    let empty_roots = stack.dir.path().join("no-roots.pem");
    std::fs::write(&empty_roots, "").unwrap();
    let out = enqueue(&[
        ("REDIS_URL", &url),
        ("SSL_CERT_FILE", empty_roots.to_str().unwrap()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("certificate") && !stderr.contains("not enabled"),
        "{stderr}"
    );
}

/// Issue 15, item 11: a signed job for user A naming user B's recording is refused by the worker
/// itself (not only by the Edge Function), before anything is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_naming_another_users_recording_is_refused() {
    let stack = Stack::start(Duration::ZERO).await;
    let other = "bbbbbbbb-0000-4000-8000-000000000002";
    let theirs = format!("users/{other}/clear.flac");
    let clear = std::fs::read(common::fixture("dialogues/clear.flac")).unwrap();
    stack.s3.put(BUCKET, &theirs, &clear);
    let session = uuid(36);
    stack.supabase.sql(
        "insert into audio_processing_jobs (session_id, user_id) values (:'s', :'u')",
        &[("s", &session), ("u", USER)],
    );
    stack.enqueue(&session, &theirs, BUCKET);
    let mut w = stack.worker("w", &[("EXIT_WHEN_IDLE", "1s")]);
    assert_eq!(
        w.exit_code(Duration::from_secs(60)).await,
        0,
        "{}",
        w.logs()
    );
    let row = stack.supabase.job_row(&session);
    assert_eq!(row["status"], "error", "{row}");
    assert_eq!(row["error_code"], "STORAGE_FORBIDDEN_KEY", "{row}");
    assert_eq!(stack.supabase.result_count(&session), 0);
    let stages: Vec<Value> = stack.supabase.progress_of(&session).await;
    assert!(
        stages.iter().all(|b| b["stage"] != "downloading"),
        "{stages:?}"
    );
    let dead = stack.queue().await.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["error_code"], "STORAGE_FORBIDDEN_KEY");
}

/// Issue 15, item 9: what the user's rows say is ours, in Japanese, per code. An OpenAI 401
/// quoting a key and a Gemini 400 echoing the prompt reach the logs (cut and redacted), never
/// the job row, a progress report or the result row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_error_text_never_reaches_the_users_rows() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let stack = Stack::start(Duration::ZERO).await;
    let prompt_echo = "Invalid JSON payload received. Unknown name \"What would you like to focus on today?\" at 'contents[0].parts[0].text'";
    Mock::given(method("POST"))
        .and(path(format!(
            "/v1beta/models/{}:generateContent",
            common::fakes::GEMINI_MODEL
        )))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"code": 400, "message": prompt_echo, "status": "INVALID_ARGUMENT"}
        })))
        .with_priority(1)
        .mount(&stack.gemini)
        .await;
    let analysed = uuid(40);
    stack.enqueue(&analysed, GOOD_KEY, BUCKET);
    let extra = [("EXIT_WHEN_IDLE", "1s"), ("JOB_MAX_ATTEMPTS", "1")];
    let mut w = stack.worker("gemini-400", &extra);
    assert_eq!(
        w.exit_code(Duration::from_secs(120)).await,
        0,
        "{}",
        w.logs()
    );
    let row = stack.supabase.job_row(&analysed);
    assert_eq!(row["error_code"], "GEMINI_FAILED", "{row}");
    assert_eq!(
        row["message"],
        "エラーが発生しました: AIによる分析に失敗しました (GEMINI_FAILED)"
    );
    let stored = stack.supabase.sql(
        "select analysis_error::text from audio_analysis_results where session_id = :'s'",
        &[("s", &analysed)],
    );
    assert!(stored.contains("GEMINI_FAILED"), "{stored}");
    let mut shown = format!("{} {stored}", row["message"]);
    assert!(
        w.logs().contains("INVALID_ARGUMENT"),
        "the details are logged"
    );

    // The transcription API refuses the key, quoting it masked as OpenAI does.
    Mock::given(method("POST"))
        .and(path(common::fakes::WHISPER_PATH))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": {"message": "Incorrect API key provided: sk-proj-****************************b4a3. You can find your API key at https://platform.openai.com/account/api-keys.",
                      "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}
        })))
        .with_priority(1)
        .mount(&stack.whisper)
        .await;
    let transcribed = uuid(41);
    stack.enqueue(&transcribed, GOOD_KEY, BUCKET);
    let mut w = stack.worker("openai-401", &extra);
    assert_eq!(
        w.exit_code(Duration::from_secs(120)).await,
        0,
        "{}",
        w.logs()
    );
    let row = stack.supabase.job_row(&transcribed);
    assert_eq!(row["error_code"], "WHISPER_REJECTED", "{row}");
    shown.push_str(&row["message"].to_string());
    assert_eq!(
        row["message"],
        "エラーが発生しました: 文字起こしサービスがリクエストを受け付けませんでした (WHISPER_REJECTED)"
    );
    let logs = w.logs();
    assert!(logs.contains("Incorrect API key provided"), "{logs}");
    assert!(
        !logs.contains("b4a3"),
        "the masked key is redacted in the logs too"
    );

    for session in [&analysed, &transcribed] {
        for report in stack.supabase.progress_of(session).await {
            shown.push_str(&report["message"].to_string());
        }
    }
    for leak in [
        "Incorrect API key",
        "sk-",
        "b4a3",
        "platform.openai.com",
        "INVALID_ARGUMENT",
        "focus on today",
        "contents[0]",
        "http",
        BUCKET,
        GOOD_KEY,
    ] {
        assert!(
            !shown.contains(leak),
            "{leak:?} reached a user's row: {shown}"
        );
    }
}

/// Issue 15, item 12: `/health` answers while the worker is still waiting for Redis (a machine
/// that is up but not yet connected is alive, not dead), `/ready` says it is not ready, and
/// `/metrics` is never served on the public port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_answers_while_waiting_for_redis_and_metrics_stay_private() {
    let stack = Stack::start(Duration::ZERO).await;
    let nowhere = format!("redis://127.0.0.1:{}", common::servers::free_port());
    let w = stack.worker("no-redis", &[("REDIS_URL", &nowhere)]);
    let (status, body) = w.get(w.port, "/health").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ok"}"#),
        "{}",
        w.logs()
    );
    let (status, body) = w.get(w.port, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");
    let (status, _) = w.get(w.port, "/metrics").await;
    assert_eq!(status, 404, "no metrics on the public port");
}

/// Issue 15, item 12: `validate-job -` reads at most 16 KiB + 1 of stdin and refuses the job,
/// so a large pipe is cut off (the writer sees the pipe close) instead of buffered whole.
#[test]
fn validate_job_reads_a_bounded_amount_of_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .args(["validate-job", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let block = vec![b' '; 1 << 20];
        let mut written = 0usize;
        for _ in 0..256 {
            if stdin.write_all(&block).is_err() {
                break;
            }
            written += block.len();
        }
        written
    });
    let out = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error[QUEUE_INVALID_JOB]"), "{stderr}");
    assert!(
        written < 256 << 20,
        "all 256 MiB were read ({written} bytes)"
    );
}

/// Issue 12, keywords: `audio-worker enqueue --keyword` puts the vocabulary into the (signed)
/// job, and the worker sends it to the text-only model as `keywords[]` fields of every piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueued_keywords_reach_the_transcription_api() {
    let stack = Stack::start(Duration::ZERO).await;
    let session = uuid(42);
    let out = command(
        &stack,
        &[
            "enqueue",
            "--session-id",
            &session,
            "--user-id",
            USER,
            "--key",
            GOOD_KEY,
            "--bucket",
            BUCKET,
            "--language",
            "en",
            "--keyword",
            "Acme Corp",
            "--keyword",
            "山田",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut w = stack.worker("keywords", &[("EXIT_WHEN_IDLE", "1s")]);
    assert_eq!(
        w.exit_code(Duration::from_secs(120)).await,
        0,
        "{}",
        w.logs()
    );
    assert_eq!(stack.supabase.job_row(&session)["status"], "completed");
    let uploads: Vec<String> = stack
        .whisper
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(!uploads.is_empty());
    for body in &uploads {
        for keyword in ["Acme Corp", "山田"] {
            let field = format!("name=\"keywords[]\"\r\n\r\n{keyword}\r\n");
            assert!(
                body.contains(&field),
                "{keyword} missing in a piece's request"
            );
        }
    }

    // Out of bounds: refused by enqueue itself, with the field named.
    let long = "x".repeat(65);
    let out = command(
        &stack,
        &[
            "enqueue",
            "--session-id",
            &uuid(43),
            "--user-id",
            USER,
            "--key",
            GOOD_KEY,
            "--keyword",
            &long,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("QUEUE_INVALID_JOB") && stderr.contains("keywords[0]"),
        "{stderr}"
    );
}

/// VmRSS of a process, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Issue 15, item 4 (a measurement, not run by default: `cargo test --test daemon -- --ignored
/// --nocapture long_lived`): one worker runs RSS_JOBS jobs (default 60) of the clear dialogue
/// one after the other; prints its RSS every 10 jobs and fails above the 150 MB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn long_lived_worker_memory() {
    let jobs: u32 = std::env::var("RSS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let stack = Stack::start(Duration::ZERO).await;
    for i in 0..jobs {
        stack.enqueue(&uuid(1000 + i), GOOD_KEY, BUCKET);
    }
    let extra: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_") || k == "WORKER_CONCURRENCY")
        .collect();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let w = stack.worker("rss", &extra);
    let queue = stack.queue().await;
    let (mut peak, mut reported) = (0.0f64, 0u64);
    let started = Instant::now();
    loop {
        let depth = queue.depth().await.unwrap();
        let done = u64::from(jobs) - depth.length;
        let rss = rss_mb(w.child.id()).unwrap_or(0.0);
        peak = peak.max(rss);
        if done >= reported + 10 || depth.length == 0 {
            println!(
                "after {done:>4} jobs: RSS {rss:6.1} MB (peak {peak:6.1} MB, {:?})",
                started.elapsed()
            );
            reported = done;
        }
        if depth.length == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = rss_mb(w.child.id()).unwrap_or(0.0);
    println!("idle after {jobs} jobs: RSS {settled:.1} MB, peak {peak:.1} MB");
    assert!(peak < 150.0, "peak RSS {peak:.0} MB");
}
