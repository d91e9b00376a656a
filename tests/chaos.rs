//! Chaos: several `audio-worker run` processes over hundreds of jobs while workers are SIGKILLed
//! and restarted, redis-server crashes and comes back from its append-only file, Whisper, Gemini
//! and PostgREST answer a share of requests with 429 + Retry-After, 500, slow replies or dropped
//! connections, and poison jobs are mixed in. At the end: every good job completed (one result),
//! every poison job failed with its code and sits in the dead-letter stream, nothing is pending,
//! no temp file is left, and no worker's memory went past its bound.
//!
//! CI runs the default size. A longer run: `CHAOS_JOBS=1000 CHAOS_WORKERS=6 cargo test --release
//! --test chaos -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use audio_worker::job::{self, Job};
use common::daemon::*;
use common::faulty::FaultPlan;
use common::servers::RedisOptions;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, in MB (None once it is gone).
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Memory a worker may use on these 42 s recordings (measured: about 40 MB); a leak or an
/// unbounded buffer over hundreds of jobs crosses it.
const RSS_BOUND_MB: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_job_is_lost_or_doubled_under_kills_crashes_and_faults() {
    let good_jobs = setting("CHAOS_JOBS", 200);
    let workers = setting("CHAOS_WORKERS", 4);
    let kill_every = Duration::from_millis(setting("CHAOS_KILL_EVERY_MS", 3000) as u64);
    let service = FaultPlan {
        rate_limited: 0.08,
        server_error: 0.05,
        slow: 0.04,
        dropped: 0.03,
        slow_by: Duration::from_millis(1500),
        slow_method: None,
    };
    let database = FaultPlan {
        rate_limited: 0.02,
        server_error: 0.03,
        slow: 0.02,
        dropped: 0.02,
        slow_by: Duration::from_millis(800),
        slow_method: None,
    };
    let mut stack = Stack::start_with(StackOptions {
        redis: RedisOptions {
            appendonly: true,
            fsync_always: true,
        },
        faults: Some([service, service, database]),
        ..StackOptions::default()
    })
    .await;

    // The jobs: good ones, and four kinds of poison.
    let queue = stack.queue().await;
    let mut good = Vec::new();
    for i in 0..good_jobs {
        let session = uuid(10_000 + i as u32);
        let mut job = Job::new(&session, USER, BUCKET, GOOD_KEY, "en", SystemTime::now());
        job::sign(&mut job, SIGNING_SECRET.as_bytes());
        queue.enqueue(&job.to_json()).await.unwrap();
        good.push(session);
    }
    let mut poison: Vec<(String, &str)> = Vec::new();
    for i in 0..4u32 {
        let signed = |session: &str, bucket: &str, key: &str| {
            let mut job = Job::new(session, USER, bucket, key, "en", SystemTime::now());
            job::sign(&mut job, SIGNING_SECRET.as_bytes());
            job.to_json()
        };
        let bad_audio = uuid(20_000 + i);
        let text = format!("users/{USER}/text.m4a");
        queue
            .enqueue(&signed(&bad_audio, BUCKET, &text))
            .await
            .unwrap();
        poison.push((bad_audio, "AUDIO_UNSUPPORTED_FORMAT"));
        let forbidden = uuid(21_000 + i);
        queue
            .enqueue(&signed(&forbidden, "another-bucket", GOOD_KEY))
            .await
            .unwrap();
        poison.push((forbidden, "STORAGE_FORBIDDEN_KEY"));
        let forged = uuid(22_000 + i);
        let mut job = Job::new(&forged, USER, BUCKET, GOOD_KEY, "en", SystemTime::now());
        job::sign(&mut job, b"a guess");
        queue.enqueue(&job.to_json()).await.unwrap();
        poison.push((forged, "QUEUE_BAD_SIGNATURE"));
        let invalid = uuid(23_000 + i);
        let payload = format!(r#"{{"version":2,"session_id":"{invalid}"}}"#);
        queue.enqueue(payload.as_bytes()).await.unwrap();
        poison.push((invalid, "QUEUE_INVALID_JOB"));
    }
    drop(queue);

    let work_dir = stack.dir.path().join("work");
    let work = work_dir.to_str().unwrap().to_string();
    let env = [
        ("WORK_DIR", work.as_str()),
        ("VISIBILITY_TIMEOUT_S", "3"),
        ("SHUTDOWN_GRACE_S", "2"),
        // Kills cost attempts; give the good jobs room (production keeps 3).
        ("JOB_MAX_ATTEMPTS", "10"),
        ("RUST_LOG", "warn"),
        // Two jobs per process: concurrency inside a worker is exercised too.
        ("WORKER_CONCURRENCY", "2"),
    ];
    let mut fleet: Vec<Worker> = (0..workers)
        .map(|i| stack.worker(&format!("w{i}-0"), &env))
        .collect();

    let started = Instant::now();
    let deadline = Duration::from_secs(setting("CHAOS_TIMEOUT_S", 420) as u64);
    let mut kills = 0usize;
    let mut restarts = vec![0usize; workers];
    let mut redis_restarted = false;
    let mut last_kill = Instant::now();
    let mut peak_rss: f64 = 0.0;
    let expect_dead = poison.len() as u64;
    let check_queue = stack.queue().await;
    loop {
        for w in &fleet {
            if let Some(mb) = rss_mb(w.child.id()) {
                peak_rss = peak_rss.max(mb);
            }
        }
        let completed: usize = stack
            .supabase
            .sql(
                "select count(*) from audio_processing_jobs where status = 'completed'",
                &[],
            )
            .parse()
            .unwrap();
        let now = check_queue.depth().await.ok();
        if completed == good_jobs && now == Some(depth(0, 0, expect_dead)) {
            break;
        }
        if started.elapsed() >= deadline {
            // what went to the dead letters that is not poison: a good job must never
            match check_queue.dead_letters(10_000).await {
                Ok(dead) => {
                    let unexpected: Vec<_> = dead
                        .iter()
                        .filter(|(_, f)| {
                            !poison
                                .iter()
                                .any(|(s, _)| f.get("job").is_some_and(|j| j.contains(s.as_str())))
                        })
                        .collect();
                    eprintln!("good jobs in the dead letters: {unexpected:?}");
                }
                Err(e) => eprintln!("cannot read the dead letters: {e}"),
            }
        }
        assert!(
            started.elapsed() < deadline,
            "not done after {deadline:?}: {completed}/{good_jobs} completed, queue {now:?}\n{}",
            fleet
                .iter()
                .map(Worker::logs)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        // Crash the queue once, a third of the way in.
        if !redis_restarted && completed >= good_jobs / 3 {
            stack.redis.restart();
            redis_restarted = true;
        }
        // Kill a random worker now and then (while there is work), and start a new one.
        if last_kill.elapsed() >= kill_every && completed < good_jobs {
            let i = fastrand::usize(..fleet.len());
            fleet[i].signal("KILL");
            let _ = fleet[i].exit_code(Duration::from_secs(5)).await;
            kills += 1;
            restarts[i] += 1;
            fleet[i] = stack.worker(&format!("w{i}-{}", restarts[i]), &env);
            last_kill = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();

    // Retries the surviving workers counted (the killed ones took their counters with them).
    let mut retries: HashMap<&str, f64> = HashMap::new();
    for w in &fleet {
        let (_, text) = w.get(w.metrics_port, "/metrics").await;
        for dependency in ["whisper", "gemini", "supabase", "redis"] {
            let series = format!(r#"audio_worker_retries_total{{dependency="{dependency}"}}"#);
            *retries.entry(dependency).or_default() += metric(&text, &series);
        }
    }

    // Every worker drains and exits cleanly.
    for w in &fleet {
        w.signal("TERM");
    }
    for w in &mut fleet {
        assert_eq!(
            w.exit_code(Duration::from_secs(15)).await,
            0,
            "{}",
            w.logs()
        );
    }

    // Exactly once: every good job completed with one result; none went to the dead letters.
    let results: usize = stack
        .supabase
        .sql("select count(*) from audio_analysis_results", &[])
        .parse()
        .unwrap();
    assert_eq!(results, good_jobs, "one result per good job");
    for session in &good {
        assert_eq!(
            stack.supabase.job_row(session)["status"],
            "completed",
            "{session}"
        );
    }
    // Poison: its code in the row (where a row exists) and in the dead letters, each once.
    let dead = stack.queue().await.dead_letters(10_000).await.unwrap();
    assert_eq!(dead.len(), poison.len(), "{dead:?}");
    for (session, code) in &poison {
        let letters: Vec<_> = dead
            .iter()
            .filter(|(_, f)| f["job"].contains(session.as_str()))
            .collect();
        assert_eq!(letters.len(), 1, "{session}");
        assert_eq!(letters[0].1["error_code"], *code, "{session}");
        let row = stack.supabase.job_row(session);
        if !row.is_null() {
            assert_eq!(row["error_code"], *code, "{session}: {row}");
        }
    }
    // Nothing pending, nothing on disk, memory bounded.
    stack
        .wait_for_depth(depth(0, 0, expect_dead), Duration::from_secs(5))
        .await;
    let left = walk(&work_dir);
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert!(
        peak_rss < RSS_BOUND_MB,
        "a worker used {peak_rss:.0} MB (bound {RSS_BOUND_MB} MB)"
    );

    // The summary.
    let times: Vec<f64> = {
        let text = stack.supabase.sql(
            "select extract(epoch from completed_at - created_at) from audio_processing_jobs \
             where status = 'completed' order by 1",
            &[],
        );
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let attempts: HashMap<String, usize> = stack
        .supabase
        .sql(
            "select attempts, count(*) from audio_processing_jobs where status = 'completed' \
             group by 1 order by 1",
            &[],
        )
        .lines()
        .filter_map(|l| {
            let (a, n) = l.split_once('|')?;
            Some((a.to_string(), n.parse().ok()?))
        })
        .collect();
    let [whisper, gemini, postgrest] = stack.faults.as_ref().unwrap();
    println!(
        "\nchaos summary ({} workers, {:.0} s)",
        workers,
        elapsed.as_secs_f64()
    );
    println!("  jobs          {good_jobs} good + {} poison", poison.len());
    println!("  kills         {kills} SIGKILLs, redis crashed and restarted once");
    println!("  whisper       {}", whisper.counts.line());
    println!("  gemini        {}", gemini.counts.line());
    println!("  postgrest     {}", postgrest.counts.line());
    let mut attempts: Vec<_> = attempts.into_iter().collect();
    attempts.sort();
    println!("  retries       {retries:?} (counted by the surviving workers)");
    println!("  attempts      {attempts:?} (attempt number: jobs)");
    println!(
        "  job time      p50 {:.1} s, p95 {:.1} s (first claim to completion)",
        percentile(&times, 0.5),
        percentile(&times, 0.95)
    );
    println!("  peak RSS      {peak_rss:.0} MB per worker (bound {RSS_BOUND_MB} MB)");
    assert!(kills > 0 && redis_restarted);
    assert!(whisper.counts.injected() > 0 && postgrest.counts.injected() > 0);
    assert!(
        retries["supabase"] > 0.0,
        "injected faults must show as retries: {retries:?}"
    );
}
