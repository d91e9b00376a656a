//! The daemon under test: every dependency of `audio-worker run` started for one test (real
//! redis-server, s3s-fs, PostgREST on real PostgreSQL, Whisper and Gemini fakes, optionally
//! behind fault-injecting proxies), and the real binary run against them as a child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fakes::{self, GEMINI_MODEL, GOOGLE_KEY, OPENAI_KEY};
use super::faulty::{FaultPlan, FaultyProxy};
use super::postgrest::PostgrestOnPostgres;
use super::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use super::servers::{RedisOptions, RedisServer, free_port};
use audio_worker::queue::{Queue, QueueConfig, QueueDepth};
use wiremock::MockServer;

pub const BUCKET: &str = "recordings";
pub const PREFIX: &str = "users/";
pub const SERVICE_KEY: &str = "service-role-FAKE-SECRET";
pub const SIGNING_SECRET: &str = "job-signing-FAKE-SECRET";
pub const USER: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const GOOD_KEY: &str = "users/aaaaaaaa-0000-4000-8000-000000000001/clear.flac";
pub const SECRETS: [&str; 5] = [
    SERVICE_KEY,
    SIGNING_SECRET,
    OPENAI_KEY,
    GOOGLE_KEY,
    SECRET_KEY,
];

/// Every dependency of the daemon, started for one test.
pub struct Stack {
    pub redis: RedisServer,
    pub s3: S3Server,
    pub supabase: PostgrestOnPostgres,
    pub whisper: MockServer,
    pub gemini: MockServer,
    /// Fault-injecting proxies in front of Whisper, Gemini and PostgREST, when asked for.
    pub faults: Option<[FaultyProxy; 3]>,
    pub dir: tempfile::TempDir,
}

/// How to start a [`Stack`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StackOptions {
    pub whisper_delay: Duration,
    pub redis: RedisOptions,
    /// Faults for Whisper, Gemini and PostgREST (in that order).
    pub faults: Option<[FaultPlan; 3]>,
}

impl Stack {
    pub async fn start(whisper_delay: Duration) -> Stack {
        Stack::start_with(StackOptions {
            whisper_delay,
            ..StackOptions::default()
        })
        .await
    }

    pub async fn start_with(opts: StackOptions) -> Stack {
        let whisper_delay = opts.whisper_delay;
        let redis = RedisServer::start_with(opts.redis);
        let s3 = S3Server::start(&[BUCKET]).await;
        let clear = std::fs::read(super::fixture("dialogues/clear.flac")).unwrap();
        s3.put(BUCKET, GOOD_KEY, &clear);
        for bad in ["silence.wav", "text.m4a"] {
            let bytes = std::fs::read(super::fixture(&format!("bad/{bad}"))).unwrap();
            s3.put(BUCKET, &format!("users/{USER}/{bad}"), &bytes);
        }
        s3.put(BUCKET, "elsewhere/clear.flac", &clear);
        let supabase = PostgrestOnPostgres::start(SERVICE_KEY).await;
        let whisper = fakes::whisper(
            &super::fixture("dialogues/clear.flac"),
            &super::fixture("dialogues/clear.truth.json"),
            whisper_delay,
        )
        .await;
        let gemini = fakes::gemini(&fakes::clear_dialogue_analysis()).await;
        let faults = match opts.faults {
            None => None,
            Some([w, g, p]) => Some([
                FaultyProxy::start(&whisper.uri(), w).await,
                FaultyProxy::start(&gemini.uri(), g).await,
                FaultyProxy::start(&supabase.url(), p).await,
            ]),
        };
        Stack {
            faults,
            redis,
            s3,
            supabase,
            whisper,
            gemini,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The environment a deployed worker gets, pointed at this stack.
    pub fn env(&self) -> Vec<(String, String)> {
        let (whisper, gemini, supabase) = match &self.faults {
            Some([w, g, p]) => (w.url(), g.url(), p.url()),
            None => (self.whisper.uri(), self.gemini.uri(), self.supabase.url()),
        };
        [
            ("REDIS_URL", self.redis.url()),
            ("SUPABASE_URL", supabase),
            ("SUPABASE_SERVICE_KEY", SERVICE_KEY.into()),
            ("OPENAI_API_KEY", OPENAI_KEY.into()),
            ("OPENAI_BASE_URL", format!("{whisper}/v1")),
            ("WHISPER_MODEL", fakes::WHISPER_MODEL.into()),
            ("GOOGLE_API_KEY", GOOGLE_KEY.into()),
            ("GEMINI_BASE_URL", gemini),
            ("GEMINI_MODEL", GEMINI_MODEL.into()),
            ("AWS_ENDPOINT_URL_S3", format!("http://{}", self.s3.addr)),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("S3_FORCE_PATH_STYLE", "true".into()),
            ("BUCKET_NAME", BUCKET.into()),
            ("AUDIO_KEY_PREFIX", PREFIX.into()),
            ("JOB_SIGNING_SECRET", SIGNING_SECRET.into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts `audio-worker run` with the stack's environment plus `extra`.
    pub fn worker(&self, name: &str, extra: &[(&str, &str)]) -> Worker {
        let work_dir = match extra.iter().find(|(k, _)| *k == "WORK_DIR") {
            Some((_, dir)) => PathBuf::from(dir),
            None => self.dir.path().join(format!("{name}-work")),
        };
        let log = self.dir.path().join(format!("{name}.log"));
        let err = self.dir.path().join(format!("{name}.err"));
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_audio-worker"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .env("WORKER_NAME", name)
            .env("WORK_DIR", &work_dir)
            .env("PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        Worker {
            child: cmd.spawn().expect("start audio-worker run"),
            log,
            err,
            work_dir,
            port,
            metrics_port,
        }
    }

    /// `audio-worker enqueue`, as an operator or the Edge Function would.
    pub fn enqueue(&self, session: &str, key: &str, bucket: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
            .args(["enqueue", "--session-id", session, "--user-id", USER])
            .args(["--key", key, "--bucket", bucket, "--language", "en"])
            .env_clear()
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("enqueued job_id="));
    }

    pub async fn queue(&self) -> Queue {
        Queue::connect(QueueConfig::new(self.redis.url(), "test-observer"))
            .await
            .unwrap()
    }

    /// Polls until `done` holds or `timeout` passes (then fails with `what`).
    pub async fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_depth(&self, want: QueueDepth, timeout: Duration) {
        let queue = self.queue().await;
        let start = Instant::now();
        loop {
            let depth = queue.depth().await.unwrap();
            if depth == want {
                return;
            }
            if start.elapsed() >= timeout {
                let dead = queue.dead_letters(100).await.unwrap_or_default();
                panic!("queue depth {depth:?}, want {want:?}; dead letters: {dead:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn stage(&self, session: &str) -> Option<String> {
        self.supabase.job_row(session)["stage"]
            .as_str()
            .map(String::from)
    }
}

/// A running `audio-worker run` process.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
    pub err: PathBuf,
    pub work_dir: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
}

impl Worker {
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Waits for the process to exit by itself; its exit code.
    pub async fn exit_code(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < timeout,
                "the worker did not exit within {timeout:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    pub async fn get(&self, port: u16, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{port}{path}");
        let start = Instant::now();
        loop {
            match reqwest::get(&url).await {
                Ok(r) => return (r.status().as_u16(), r.text().await.unwrap()),
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{url}: {e}\n{}", self.logs()),
            }
        }
    }

    /// Files left in the worker's temp directory.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        walk(&self.work_dir)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
            out.extend(walk(&e.path()));
        }
    }
    out
}

pub fn uuid(n: u32) -> String {
    format!("{n:08x}-1111-4111-8111-111111111111")
}

pub fn depth(length: u64, pending: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        length,
        pending,
        waiting: length - pending,
        dead,
    }
}

/// A metric's value in Prometheus' text format (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs a one-shot command of the binary with the stack's environment plus `extra`.
pub fn command(stack: &Stack, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(stack.env())
        .env("WORK_DIR", stack.dir.path().join("check-work"))
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .output()
        .unwrap()
}
