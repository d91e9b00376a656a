//! The Redis Streams queue against a real `redis-server` (tests/common/servers.rs): delivery,
//! acknowledgement, reclaiming a crashed consumer's entry, heartbeats, dead letters, depth and a
//! Redis restart. Timeouts are small (visibility 400 ms) so the suite runs in seconds.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use audio_worker::ErrorCode;
use audio_worker::job::Job;
use audio_worker::queue::{Delivery, Queue, QueueConfig, QueueDepth};
use common::servers::{RedisOptions, RedisServer};

const VISIBILITY: Duration = Duration::from_millis(400);
const BLOCK: Duration = Duration::from_millis(150);

fn config(redis: &RedisServer, consumer: &str) -> QueueConfig {
    QueueConfig {
        block: BLOCK,
        visibility_timeout: VISIBILITY,
        max_attempts: 3,
        command_timeout: Duration::from_secs(2),
        ..QueueConfig::new(redis.url(), consumer)
    }
}

async fn queue(redis: &RedisServer, consumer: &str) -> Queue {
    Queue::connect(config(redis, consumer))
        .await
        .expect("connect to the test redis")
}

fn job_json(session: &str) -> Vec<u8> {
    Job::new(
        session,
        "user-1",
        "recordings",
        format!("user-1/{session}/recording.webm"),
        "ja",
        SystemTime::now(),
    )
    .to_json()
}

fn depth(length: u64, pending: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        length,
        pending,
        waiting: length - pending,
        dead,
    }
}

/// Waits past the visibility timeout, so held entries become reclaimable.
async fn outlast_visibility() {
    tokio::time::sleep(VISIBILITY + Duration::from_millis(150)).await;
}

async fn next_some(q: &Queue) -> Delivery {
    q.next().await.expect("next").expect("an entry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_next_ack_leaves_nothing_pending() {
    let redis = RedisServer::start();
    let q = queue(&redis, "worker-a").await;
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0));

    let json = job_json("session-1");
    let id = q.enqueue(&json).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(1, 0, 0));

    let d = next_some(&q).await;
    assert_eq!(d.entry_id, id);
    assert_eq!(d.payload, json);
    assert_eq!(d.attempt, 1);
    assert!(!q.exhausted(&d));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap()["session_id"],
        "session-1"
    );
    assert_eq!(q.depth().await.unwrap(), depth(1, 1, 0));

    q.ack(&d.entry_id).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0));
    // Acknowledging again is harmless, and nothing comes back, not even after the timeout.
    q.ack(&d.entry_id).await.unwrap();
    outlast_visibility().await;
    let started = Instant::now();
    assert_eq!(q.next().await.unwrap(), None);
    assert!(
        started.elapsed() >= BLOCK - Duration::from_millis(20),
        "next() must block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_entry_is_reclaimed_as_attempt_2() {
    let redis = RedisServer::start();
    let crashed = queue(&redis, "worker-crashed").await;
    let healthy = queue(&redis, "worker-healthy").await;
    let json = job_json("session-2");
    let id = crashed.enqueue(&json).await.unwrap();

    let first = next_some(&crashed).await;
    assert_eq!((first.entry_id.as_str(), first.attempt), (id.as_str(), 1));
    drop(crashed); // dies without acknowledging

    // Not yet: the entry has not been idle for the visibility timeout.
    assert_eq!(healthy.next().await.unwrap(), None);

    outlast_visibility().await;
    let second = next_some(&healthy).await;
    assert_eq!(second.entry_id, id);
    assert_eq!(second.payload, json);
    assert_eq!(second.attempt, 2);
    assert_eq!(healthy.depth().await.unwrap(), depth(1, 1, 0));

    // The crashed worker, were it to come back, no longer holds the entry.
    let zombie = queue(&redis, "worker-crashed").await;
    assert!(!zombie.heartbeat(&id).await.unwrap());
    assert!(healthy.heartbeat(&id).await.unwrap());

    healthy.ack(&id).await.unwrap();
    assert_eq!(healthy.depth().await.unwrap(), depth(0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_slow_job_from_being_reclaimed() {
    let redis = RedisServer::start();
    let slow = Arc::new(queue(&redis, "worker-slow").await);
    let other = queue(&redis, "worker-other").await;
    let id = slow.enqueue(&job_json("session-3")).await.unwrap();
    let d = next_some(&slow).await;
    assert_eq!(d.entry_id, id);

    // The slow job runs for 3.5 visibility timeouts, heartbeating every third of one.
    let interval = slow.config().heartbeat_interval();
    assert!(interval < VISIBILITY / 2);
    let beating = {
        let slow = slow.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let until = Instant::now() + VISIBILITY * 7 / 2;
            let mut beats = 0;
            while Instant::now() < until {
                assert!(slow.heartbeat(&id).await.unwrap(), "lost the claim");
                beats += 1;
                tokio::time::sleep(interval).await;
            }
            beats
        })
    };
    let watch_until = Instant::now() + VISIBILITY * 3;
    while Instant::now() < watch_until {
        assert_eq!(other.next().await.unwrap(), None, "stole a healthy job");
    }
    let beats = beating.await.unwrap();
    assert!(beats >= 8, "only {beats} heartbeats");

    // Heartbeats do not count as deliveries; when they stop, the job is reclaimed as attempt 2.
    outlast_visibility().await;
    let reclaimed = next_some(&other).await;
    assert_eq!(
        (reclaimed.entry_id.as_str(), reclaimed.attempt),
        (id.as_str(), 2)
    );
    assert!(!slow.heartbeat(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_moves_to_the_dead_stream_exactly_once() {
    let redis = RedisServer::start();
    let q = queue(&redis, "worker-a").await;
    let good = q.enqueue(&job_json("session-4")).await.unwrap();
    let poison = q.enqueue(b"{\"version\": 1, \"oops\"").await.unwrap();

    let first = next_some(&q).await;
    assert_eq!(first.entry_id, good);
    let d = next_some(&q).await;
    assert_eq!(d.entry_id, poison);
    let err = Job::parse(&d.payload).unwrap_err();
    assert_eq!(err.code, ErrorCode::QueueInvalidJob);

    assert!(
        q.dead_letter(&d, err.code.as_str(), &err.message)
            .await
            .unwrap()
    );
    assert_eq!(q.depth().await.unwrap(), depth(1, 1, 1));
    // A repeated call (say, a retry after a lost reply) adds nothing.
    assert!(
        !q.dead_letter(&d, err.code.as_str(), &err.message)
            .await
            .unwrap()
    );
    assert_eq!(q.depth().await.unwrap(), depth(1, 1, 1));

    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let fields = &dead[0].1;
    assert_eq!(fields["job"], "{\"version\": 1, \"oops\"");
    assert_eq!(fields["error_code"], "QUEUE_INVALID_JOB");
    assert_eq!(fields["message"], err.message);
    assert_eq!(fields["attempts"], "1");
    assert_eq!(fields["entry_id"], poison);
    assert_eq!(fields["consumer"], "worker-a");
    assert!(
        audio_worker::job::parse_rfc3339(&fields["failed_at"]).is_some(),
        "{fields:?}"
    );

    // The poison entry never comes back; the good one is untouched.
    q.ack(&good).await.unwrap();
    outlast_visibility().await;
    assert_eq!(q.next().await.unwrap(), None);
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_killing_workers_is_exhausted() {
    let redis = RedisServer::start();
    let cfg = QueueConfig {
        max_attempts: 2,
        ..config(&redis, "worker-a")
    };
    let q = Queue::connect(cfg).await.unwrap();
    let id = q.enqueue(&job_json("session-5")).await.unwrap();
    let mut attempts = vec![];
    loop {
        let d = next_some(&q).await;
        assert_eq!(d.entry_id, id);
        attempts.push(d.attempt);
        assert_eq!(q.last_attempt(&d), d.attempt >= 2);
        if q.exhausted(&d) {
            let msg = format!("gave up after {} deliveries", d.attempt - 1);
            assert!(q.dead_letter(&d, "INTERNAL", &msg).await.unwrap());
            break;
        }
        // The worker "dies": no ack, no heartbeat.
        outlast_visibility().await;
    }
    assert_eq!(attempts, [1, 2, 3]);
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].1["attempts"], "3");
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_waiting_in_flight_and_dead() {
    let redis = RedisServer::start();
    let q = queue(&redis, "worker-a").await;
    for i in 0..3 {
        q.enqueue(&job_json(&format!("s{i}"))).await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), depth(3, 0, 0));
    let a = next_some(&q).await;
    let b = next_some(&q).await;
    assert_eq!(q.depth().await.unwrap(), depth(3, 2, 0));
    q.ack(&a.entry_id).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(2, 1, 0));
    q.dead_letter(&b, "AUDIO_EMPTY", "empty").await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_each_get_every_job_once() {
    let redis = RedisServer::start();
    let mut ids = HashSet::new();
    let producer = queue(&redis, "producer").await;
    for i in 0..30 {
        ids.insert(producer.enqueue(&job_json(&format!("s{i}"))).await.unwrap());
    }
    let mut workers = vec![];
    for name in ["w1", "w2", "w3"] {
        let q = queue(&redis, name).await;
        workers.push(tokio::spawn(async move {
            let mut got = vec![];
            while let Some(d) = q.next().await.unwrap() {
                assert_eq!(d.attempt, 1);
                q.ack(&d.entry_id).await.unwrap();
                got.push(d.entry_id);
            }
            got
        }));
    }
    let mut seen = vec![];
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    assert_eq!(seen.len(), 30, "each job exactly once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(producer.depth().await.unwrap(), depth(0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_and_the_unacked_entry_survives() {
    let mut redis = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..RedisOptions::default()
    });
    let q = queue(&redis, "worker-a").await;
    let first = q.enqueue(&job_json("session-6")).await.unwrap();
    let second = q.enqueue(&job_json("session-7")).await.unwrap();
    let held = next_some(&q).await;
    assert_eq!(held.entry_id, first);

    // Redis crashes (SIGKILL) with one entry in flight and one waiting.
    tokio::task::block_in_place(|| redis.kill());
    let t = Instant::now();
    let err = q.depth().await.expect_err("redis is down");
    assert!(t.elapsed() < Duration::from_secs(2), "depth must fail fast");
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.code.is_retryable());

    // It comes back on the same port with its append-only file; the same Queue reconnects.
    let t = Instant::now();
    assert!(q.next().await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "next took {:?}",
        t.elapsed()
    );
    tokio::task::block_in_place(|| redis.restart());
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match q.depth().await {
            Ok(d) => break d,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code, ErrorCode::Internal);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no reconnect within 15 s: {e}"),
        }
    };
    assert_eq!(after, depth(2, 1, 0), "the held entry is still pending");

    // The waiting job is delivered as attempt 1; the one held across the crash comes back as
    // attempt 2 once it has been idle for the visibility timeout (the outage counts).
    let mut got = vec![];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(d) = q.next().await.unwrap() {
            q.ack(&d.entry_id).await.unwrap();
            got.push((d.entry_id, d.attempt));
        }
    }
    got.sort();
    assert_eq!(got, [(first.clone(), 2), (second.clone(), 1)]);
    assert_eq!(q.next().await.unwrap(), None);
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_everything_gets_its_group_back() {
    let mut redis = RedisServer::start(); // in memory: a restart forgets the stream and group
    let q = queue(&redis, "worker-a").await;
    q.enqueue(&job_json("lost")).await.unwrap();
    tokio::task::block_in_place(|| redis.restart());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match q.next().await {
            Ok(got) => {
                assert_eq!(got, None);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code, ErrorCode::Internal, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery within 15 s: {e}"),
        }
    }
    let id = q.enqueue(&job_json("new")).await.unwrap();
    assert_eq!(next_some(&q).await.entry_id, id);
}

/// Issue 15, item 12: an entry whose `job` field is larger than a job may be never leaves Redis
/// whole: the claim hands over its size and first bytes, and it can be dead-lettered like any
/// invalid job (new and reclaimed alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_handed_over_by_size_only_and_dead_lettered() {
    let redis = RedisServer::start();
    let q = queue(&redis, "worker-a").await;
    let huge = vec![b'{'; 8 << 20];
    q.enqueue(&huge).await.unwrap();
    let d = next_some(&q).await;
    assert!(d.oversized());
    assert_eq!(d.size, 8 << 20);
    assert_eq!(d.payload.len(), audio_worker::queue::OVERSIZED_PREFIX);

    // Reclaimed by another consumer: the same rule.
    outlast_visibility().await;
    let other = queue(&redis, "worker-b").await;
    let again = next_some(&other).await;
    assert_eq!(
        (again.entry_id.as_str(), again.attempt),
        (d.entry_id.as_str(), 2)
    );
    assert!(again.oversized());
    assert!(
        other
            .dead_letter(&again, "QUEUE_INVALID_JOB", "too large")
            .await
            .unwrap()
    );
    assert_eq!(other.depth().await.unwrap(), depth(0, 0, 1));

    // A job of normal size is handed over whole.
    let json = job_json("session-ok");
    q.enqueue(&json).await.unwrap();
    let d = next_some(&q).await;
    assert!(!d.oversized());
    assert_eq!(d.payload, json);
}
