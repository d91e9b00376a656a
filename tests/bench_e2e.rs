//! End-to-end benchmark (ignored by `cargo test`; `scripts/bench-e2e.sh` runs it): one long
//! recording through the real `audio-worker run` binary against the same stack as
//! `tests/daemon.rs` (real `redis-server`, in-process S3 server, PostgREST on a real migrated
//! PostgreSQL), with a transcription fake whose latency grows with each piece's audio
//! (`base + per_s x seconds`), which enforces a requests-per-minute limit with 429 and
//! Retry-After as OpenAI does, and answers text only (`gpt-transcribe`, the default) or
//! `verbose_json` (whisper-1); and a Gemini fake whose analysis quotes occur in the transcript.
//!
//! For each transcription concurrency it enqueues one job with `audio-worker enqueue`, starts a
//! worker under `/usr/bin/time -v` with `EXIT_WHEN_IDLE=1s` (so it exits after the job), and
//! measures: time from enqueue to the job row being `completed` (the row's `completed_at`), the
//! worker's CPU seconds (user + system, from `time -v`: the whole process life, nothing
//! subtracted) and peak RSS, the simulated transcription wait (sum and wall-clock union of the
//! fake's delays), requests and billed audio minutes per audio hour, the share of pieces sent
//! with the preceding text as `prompt`, the 429s, and a per-phase timeline of CPU and RSS sampled
//! from `/proc/<pid>/{stat,status}`. Before the runs it measures the speaker stage alone
//! (`diarize::speaker_timeline` with the configured speaker model) in this process: CPU seconds
//! per audio hour.
//!
//! Environment:
//! - `BENCH_AUDIO` (required): the recording.
//! - `BENCH_TRANSCRIBE_CONCURRENCY`: comma-separated list, one worker run each (default `1,4,8`).
//! - `BENCH_WHISPER_MODEL`: `gpt-transcribe` (default, text only) or `whisper-1`.
//! - `BENCH_LATENCY`: `BASE+PER_S`, the fake's seconds per request and per second of audio
//!   (default `0.4+0.05`).
//! - `BENCH_RATE_LIMIT_RPM`: requests per minute before 429s (default 300; 0 = no limit).
//! - `BENCH_ANALYSIS`: `on` (default) or `off` (the worker then runs with `ANALYSIS=off`).
//! - `BENCH_OUT`: where to write the JSON results (also printed).
//! - `BENCH_TIMEOUT_S`: give up on one run after this long (default 3600).
//!
//! `cargo test --release --test bench_e2e -- --ignored --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fakes::{self, GEMINI_MODEL, GOOGLE_KEY, OPENAI_KEY, WHISPER_PATH};
use common::postgrest::PostgrestOnPostgres;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use common::servers::{RedisServer, free_port};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const BUCKET: &str = "recordings";
const SERVICE_KEY: &str = "service-role-FAKE-SECRET";
const USER: &str = "aaaaaaaa-0000-4000-8000-000000000001";
/// Linux's USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every mainstream arch).
const CLOCK_TICKS: f64 = 100.0;
/// How often the worker's /proc entries are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The fake Whisper's segment length.
const SEGMENT_S: f64 = 5.0;

/// Lines of a coaching conversation. The four quotes of `fakes::clear_dialogue_analysis()` are
/// among them, so the Gemini fake's analysis passes the worker's verbatim-quote validation.
const LINES: [&str; 16] = [
    "What would you like to focus on today?",
    "I keep putting off the quarterly report for my manager.",
    "What makes it hard to start?",
    "I never know where to begin, so I wait until the last minute.",
    "What might get in the way?",
    "Meetings fill most of my afternoons, and then I am tired.",
    "When could you write that?",
    "Tomorrow at eight, before the first meeting starts.",
    "That sounds like a clear plan. How confident are you, from one to ten?",
    "Maybe a seven. I would like it to be higher.",
    "What would make it an eight?",
    "If I blocked the time in my calendar tonight.",
    "How will you know the morning went well?",
    "I will have a first draft of the summary section.",
    "Let us come back to how that felt next week.",
    "Thank you, this already feels lighter than before.",
];

/// One request the Whisper fake answered.
#[derive(Debug, Clone, Copy)]
struct Call {
    arrived: Instant,
    audio_s: f64,
    delay: Duration,
    bytes: usize,
    /// Sent with the preceding text as `prompt`.
    with_context: bool,
}

/// How the transcription fake behaves.
#[derive(Debug, Clone, Copy)]
struct FakeApi {
    /// Seconds per request, and per second of uploaded audio.
    base_s: f64,
    per_s: f64,
    /// Requests accepted per rolling minute (0: unlimited).
    rpm: usize,
    /// Answer `verbose_json` with segments (whisper-1) instead of text only.
    segments: bool,
}

/// The transcription API: reads the WAV header inside the multipart upload for the piece's
/// duration, waits `base + per_s x duration`, and answers. Over the rate limit it answers 429
/// with `retry-after` (seconds until the oldest request of the window leaves it).
struct SlowTranscriber {
    api: FakeApi,
    calls: Arc<Mutex<Vec<Call>>>,
    window: Mutex<std::collections::VecDeque<Instant>>,
    rejected: Arc<AtomicUsize>,
}

impl SlowTranscriber {
    /// `Some(seconds to wait)` when this request is over the limit.
    fn over_limit(&self, now: Instant) -> Option<u64> {
        if self.api.rpm == 0 {
            return None;
        }
        let mut window = self.window.lock().unwrap();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() >= self.api.rpm {
            let oldest = *window.front().unwrap();
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            return Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        window.push_back(now);
        None
    }
}

impl Respond for SlowTranscriber {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let arrived = Instant::now();
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(format!("Bearer {OPENAI_KEY}").as_str()) {
            return openai_error(401, "Incorrect API key provided");
        }
        let Some(audio_s) = wav_duration(&request.body) else {
            return openai_error(400, "no WAV file in the upload");
        };
        if let Some(wait_s) = self.over_limit(arrived) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return ResponseTemplate::new(429)
                .insert_header("retry-after", wait_s.to_string().as_str())
                .set_body_json(json!({"error": {
                    "message": "Rate limit reached for requests",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}}));
        }
        let delay = Duration::from_secs_f64(self.api.base_s + audio_s * self.api.per_s);
        let field: &[u8] = b"name=\"prompt\"";
        let with_context = request.body.windows(field.len()).any(|w| w == field);
        self.calls.lock().unwrap().push(Call {
            arrived,
            audio_s,
            delay,
            bytes: request.body.len(),
            with_context,
        });
        let body = if self.api.segments {
            verbose_json(audio_s, request.body.len())
        } else {
            text_only(audio_s, request.body.len())
        };
        ResponseTemplate::new(200)
            .set_body_json(body)
            .set_delay(delay)
    }
}

/// `gpt-transcribe`'s `json` answer: the text alone, two lines per 5 s of audio.
fn text_only(audio_s: f64, seed: usize) -> Value {
    let lines = ((audio_s / SEGMENT_S).ceil() as usize).max(1) * 2;
    let text: Vec<&str> = (0..lines)
        .map(|i| LINES[seed.wrapping_add(i) % LINES.len()])
        .collect();
    json!({ "text": text.join(" ") })
}

fn openai_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// Duration of the WAV file inside a multipart body, from its `fmt ` and `data` chunks.
fn wav_duration(body: &[u8]) -> Option<f64> {
    let riff = body
        .windows(12)
        .position(|w| &w[..4] == b"RIFF" && &w[8..12] == b"WAVE")?;
    let u16_at = |i: usize| Some(u16::from_le_bytes(body.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(body.get(i..i + 4)?.try_into().ok()?));
    let mut at = riff + 12;
    let mut bytes_per_s = None;
    while at + 8 <= body.len() {
        let id = &body[at..at + 4];
        let size = u32_at(at + 4)? as usize;
        if id == b"fmt " {
            let channels = f64::from(u16_at(at + 10)?);
            let rate = f64::from(u32_at(at + 12)?);
            let bits = f64::from(u16_at(at + 22)?);
            bytes_per_s = Some(rate * channels * bits / 8.0);
        } else if id == b"data" {
            let available = body.len() - (at + 8);
            return Some(size.min(available) as f64 / bytes_per_s?);
        }
        at += 8 + size + (size & 1);
    }
    None
}

/// Whisper's `verbose_json` for `audio_s` seconds: a segment every [`SEGMENT_S`], two lines each.
fn verbose_json(audio_s: f64, seed: usize) -> Value {
    let mut segments = Vec::new();
    let mut texts = Vec::new();
    let mut start = 0.0;
    let mut i = 0usize;
    while start < audio_s - 0.5 {
        let end = (start + SEGMENT_S - 0.3).min(audio_s);
        let k = seed.wrapping_add(2 * i);
        let text = format!(
            " {} {}",
            LINES[k % LINES.len()],
            LINES[(k + 1) % LINES.len()]
        );
        segments.push(json!({
            "id": i, "seek": (start * 100.0) as u64, "start": start, "end": end, "text": text,
            "tokens": [50364, 2264], "temperature": 0.0, "avg_logprob": -0.21,
            "compression_ratio": 1.3, "no_speech_prob": 0.02
        }));
        texts.push(text);
        start += SEGMENT_S;
        i += 1;
    }
    json!({
        "task": "transcribe",
        "language": "english",
        "duration": audio_s,
        "text": texts.concat(),
        "segments": segments
    })
}

/// Gemini: records when each request arrives and answers the clear dialogue's analysis.
struct RecordingGemini {
    calls: Arc<Mutex<Vec<Instant>>>,
    reply: String,
}

impl Respond for RecordingGemini {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.calls.lock().unwrap().push(Instant::now());
        let key = request
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok());
        if key != Some(GOOGLE_KEY) {
            return ResponseTemplate::new(403).set_body_string("bad key");
        }
        fakes::gemini_reply(&self.reply)
    }
}

/// The benchmark's settings, from the environment.
struct Settings {
    audio: PathBuf,
    concurrencies: Vec<usize>,
    api: FakeApi,
    model: String,
    analysis: bool,
    out: Option<PathBuf>,
    timeout: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let audio = PathBuf::from(
            var("BENCH_AUDIO").expect("BENCH_AUDIO must name the recording (scripts/bench-e2e.sh)"),
        );
        assert!(
            audio.is_file(),
            "BENCH_AUDIO={} is not a file",
            audio.display()
        );
        let concurrencies = var("BENCH_TRANSCRIBE_CONCURRENCY")
            .unwrap_or_else(|| "1,4,8".into())
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("BENCH_TRANSCRIBE_CONCURRENCY: numbers")
            })
            .collect();
        let model = var("BENCH_WHISPER_MODEL").unwrap_or_else(|| "gpt-transcribe".into());
        let latency = var("BENCH_LATENCY").unwrap_or_else(|| "0.4+0.05".into());
        let (base_s, per_s) = latency
            .split_once('+')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .expect("BENCH_LATENCY: BASE+PER_S, e.g. 0.4+0.05");
        let api = FakeApi {
            base_s,
            per_s,
            rpm: var("BENCH_RATE_LIMIT_RPM")
                .map_or(300, |v| v.parse().expect("BENCH_RATE_LIMIT_RPM")),
            segments: model == "whisper-1",
        };
        let analysis = match var("BENCH_ANALYSIS").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => panic!("BENCH_ANALYSIS={other:?}: on or off"),
        };
        let timeout = Duration::from_secs(
            var("BENCH_TIMEOUT_S").map_or(3600, |v| v.parse().expect("BENCH_TIMEOUT_S")),
        );
        Settings {
            audio,
            concurrencies,
            api,
            model,
            analysis,
            out: var("BENCH_OUT").map(PathBuf::from),
            timeout,
        }
    }
}

/// The daemon's dependencies, as in `tests/daemon.rs`.
struct Stack {
    redis: RedisServer,
    s3: S3Server,
    supabase: PostgrestOnPostgres,
    /// What the worker talks to: [`BigBodyPostgrest`] on `supabase`'s database.
    whisper: MockServer,
    whisper_calls: Arc<Mutex<Vec<Call>>>,
    rejected: Arc<AtomicUsize>,
    model: String,
    gemini: MockServer,
    gemini_calls: Arc<Mutex<Vec<Instant>>>,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn start(api: FakeApi, model: &str) -> Stack {
        let redis = RedisServer::start();
        let s3 = S3Server::start(&[BUCKET]).await;
        // Not recorded: an hour's progress and result bodies would pile up in this process.
        let supabase = PostgrestOnPostgres::start_with(SERVICE_KEY, false).await;
        let dir = tempfile::tempdir().unwrap();

        // No request recording: the uploads are ~19 MB each and would pile up in this process.
        let whisper = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let whisper_calls = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(AtomicUsize::new(0));
        Mock::given(method("POST"))
            .and(path(WHISPER_PATH))
            .respond_with(SlowTranscriber {
                api,
                calls: Arc::clone(&whisper_calls),
                window: Mutex::new(std::collections::VecDeque::new()),
                rejected: Arc::clone(&rejected),
            })
            .mount(&whisper)
            .await;
        let gemini = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let gemini_calls = Arc::new(Mutex::new(Vec::new()));
        Mock::given(method("POST"))
            .and(path(format!(
                "/v1beta/models/{GEMINI_MODEL}:generateContent"
            )))
            .respond_with(RecordingGemini {
                calls: Arc::clone(&gemini_calls),
                reply: fakes::clear_dialogue_analysis().to_string(),
            })
            .mount(&gemini)
            .await;
        Stack {
            redis,
            s3,
            supabase,
            whisper,
            whisper_calls,
            rejected,
            model: model.to_string(),
            gemini,
            gemini_calls,
            dir,
        }
    }

    fn env(&self, analysis: bool) -> Vec<(String, String)> {
        let mut env: Vec<(&str, String)> = vec![
            ("REDIS_URL", self.redis.url()),
            ("SUPABASE_URL", self.supabase.url()),
            ("SUPABASE_SERVICE_KEY", SERVICE_KEY.into()),
            ("OPENAI_API_KEY", OPENAI_KEY.into()),
            ("OPENAI_BASE_URL", fakes::openai_base(&self.whisper)),
            ("WHISPER_MODEL", self.model.clone()),
            ("GOOGLE_API_KEY", GOOGLE_KEY.into()),
            ("GEMINI_BASE_URL", self.gemini.uri()),
            ("GEMINI_MODEL", GEMINI_MODEL.into()),
            ("AWS_ENDPOINT_URL_S3", format!("http://{}", self.s3.addr)),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("S3_FORCE_PATH_STYLE", "true".into()),
            ("BUCKET_NAME", BUCKET.into()),
            ("AUDIO_KEY_PREFIX", "users/".into()),
            ("RUST_LOG", "info".into()),
        ];
        if !analysis {
            env.push(("ANALYSIS", "off".into()));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn enqueue(&self, session: &str, key: &str, analysis: bool) {
        let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
            .args(["enqueue", "--session-id", session, "--user-id", USER])
            .args(["--key", key, "--bucket", BUCKET, "--language", "en"])
            .env_clear()
            .envs(self.env(analysis))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One sample of the worker's /proc entries.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

fn read_sample(pid: u32) -> Option<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name's closing parenthesis: state is field 3; utime and stime
    // are fields 14 and 15; num_threads is field 20.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| rest.get(i)?.parse::<u64>().ok();
    let cpu_s = (ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS;
    let threads = ticks(17)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Sample {
        at,
        cpu_s,
        rss_kb: kb("VmRSS:")?,
        hwm_kb: kb("VmHWM:")?,
        threads,
    })
}

/// Samples `pid` every [`SAMPLE_EVERY`] on a thread until it is gone or `stop` is set.
fn sample(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match read_sample(pid) {
                Some(s) => out.push(s),
                None => break,
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        out
    })
}

/// The worker's pid: the only child of the `/usr/bin/time` process.
fn child_pid(parent: u32) -> u32 {
    let file = format!("/proc/{parent}/task/{parent}/children");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/usr/bin/time did not start the worker"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `/usr/bin/time -v` output: CPU seconds, peak RSS and the rest, by label.
fn parse_time_v(text: &str) -> Value {
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label)?.trim().strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let num = |label: &str| {
        field(label)
            .and_then(|v| v.trim_end_matches('%').parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {label:?} in /usr/bin/time output:\n{text}"))
    };
    json!({
        "user_s": num("User time (seconds)"),
        "system_s": num("System time (seconds)"),
        "max_rss_kb": num("Maximum resident set size (kbytes)"),
        "cpu_percent": num("Percent of CPU this job got"),
        "wall": field("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
        "major_faults": num("Major (requiring I/O) page faults"),
        "minor_faults": num("Minor (reclaiming a frame) page faults"),
        "voluntary_switches": num("Voluntary context switches"),
        "involuntary_switches": num("Involuntary context switches"),
        "fs_inputs": num("File system inputs"),
        "fs_outputs": num("File system outputs"),
        "exit_status": num("Exit status"),
    })
}

/// CPU seconds at `t`: the last sample taken at or before it (0 before the first).
fn cpu_at(samples: &[Sample], t: Instant) -> f64 {
    samples
        .iter()
        .take_while(|s| s.at <= t)
        .last()
        .map_or(0.0, |s| s.cpu_s)
}

fn max_rss_between(samples: &[Sample], from: Instant, to: Instant) -> u64 {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .map(|s| s.rss_kb)
        .max()
        .unwrap_or(0)
}

/// Wall seconds during which at least one interval is running.
fn union_s(mut intervals: Vec<(Instant, Instant)>) -> f64 {
    intervals.sort();
    let mut total = 0.0;
    let mut current: Option<(Instant, Instant)> = None;
    for (a, b) in intervals {
        current = match current {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                total += (e - s).as_secs_f64();
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = current {
        total += (e - s).as_secs_f64();
    }
    total
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

struct WorkerRun {
    time: Child,
    time_file: PathBuf,
    log: PathBuf,
}

impl WorkerRun {
    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for WorkerRun {
    fn drop(&mut self) {
        let _ = self.time.kill();
        let _ = self.time.wait();
    }
}

/// The speaker stage alone on the recording: decode and speech map first (not counted), then
/// `diarize::speaker_timeline` with the configured speaker model, timed by this process's CPU
/// clock (`/proc/self/stat`; the encoder's threads included).
fn speaker_stage_cpu(audio: &Path) -> Value {
    use audio_worker::audio::{self, PrepareOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = PrepareOptions {
        write_pcm: true,
        ..PrepareOptions::default()
    };
    let manifest = audio::prepare(audio, dir.path(), &opts).unwrap();
    let pcm = dir.path().join(audio::PCM_FILE);
    let encoder = audio_worker::speakers::load_configured();
    let me = std::process::id();
    let (cpu0, t0) = (read_sample(me).unwrap().cpu_s, Instant::now());
    let timeline = audio_worker::diarize::speaker_timeline(
        &pcm,
        &manifest.speech,
        &audio_worker::diarize::DiarizeOptions::default(),
        encoder.as_deref(),
    )
    .unwrap();
    let (cpu_s, wall_s) = (
        read_sample(me).unwrap().cpu_s - cpu0,
        t0.elapsed().as_secs_f64(),
    );
    let hours = manifest.output.duration_s / 3600.0;
    json!({
        "method": timeline.method,
        "speakers_found": timeline.speakers_found,
        "cpu_s": round3(cpu_s),
        "wall_s": round3(wall_s),
        "cpu_s_per_audio_hour": round3(cpu_s / hours),
        "speech_s": round3(manifest.speech.iter().map(|r| r[1] - r[0]).sum::<f64>()),
    })
}

/// One job through one worker with `concurrency` chunks transcribed at once.
async fn run_once(
    stack: &Stack,
    settings: &Settings,
    key: &str,
    n: usize,
    concurrency: usize,
) -> Value {
    let session = format!("{n:08x}-2222-4222-8222-222222222222");
    let name = format!("bench-c{concurrency}-{n}");
    stack.whisper_calls.lock().unwrap().clear();
    stack.rejected.store(0, Ordering::Relaxed);
    stack.gemini_calls.lock().unwrap().clear();
    let work_dir = stack.dir.path().join(format!("{name}-work"));
    let time_file = stack.dir.path().join(format!("{name}.time"));
    let log = stack.dir.path().join(format!("{name}.log"));

    stack.enqueue(&session, key, settings.analysis);
    // Time to result counts from here: the job is in the stream; the worker starts now, as a
    // machine woken by the enqueue would.
    let t0 = Instant::now();
    let t0_epoch = epoch_s(SystemTime::now());
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg("-o")
        .arg(&time_file)
        .arg(env!("CARGO_BIN_EXE_audio-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(stack.env(settings.analysis))
        .env("WORKER_NAME", &name)
        .env("WORK_DIR", &work_dir)
        .env("PORT", free_port().to_string())
        .env("METRICS_PORT", free_port().to_string())
        .env("TRANSCRIBE_CONCURRENCY", concurrency.to_string())
        .env("EXIT_WHEN_IDLE", "1s")
        // env_clear() took HOME, so the worker would miss the model at its default path.
        .env(
            "SPEAKER_MODEL_PATH",
            audio_worker::speakers::embed::default_model_path(),
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(stack.dir.path().join(format!("{name}.err"))).unwrap());
    let mut run = WorkerRun {
        time: cmd
            .spawn()
            .expect("start /usr/bin/time audio-worker run (Debian package `time`)"),
        time_file,
        log,
    };
    let pid = child_pid(run.time.id());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(pid, Arc::clone(&stop));

    // Wait for the row to say completed: rarely while the worker is busy (psql costs CPU on the
    // same cores), every 50 ms once the last remote call (Gemini, or the last Whisper reply with
    // the analysis off) has been answered.
    let mut last_poll = Instant::now();
    loop {
        let near_end = if settings.analysis {
            !stack.gemini_calls.lock().unwrap().is_empty()
        } else {
            let calls = stack.whisper_calls.lock().unwrap();
            !calls.is_empty() && calls.iter().all(|c| c.arrived + c.delay <= Instant::now())
        };
        let every = if near_end {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(2)
        };
        if last_poll.elapsed() >= every {
            last_poll = Instant::now();
            let row = stack.supabase.job_row(&session);
            match row["status"].as_str() {
                Some("completed") => break,
                Some("error") => panic!("the job failed: {row}\n{}", run.logs()),
                _ => {}
            }
        }
        if let Some(status) = run.time.try_wait().unwrap() {
            panic!(
                "the worker exited ({status}) before the job completed\n{}",
                run.logs()
            );
        }
        assert!(
            t0.elapsed() < settings.timeout,
            "no result within {:?}\n{}",
            settings.timeout,
            run.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let polled_done = t0.elapsed();

    // EXIT_WHEN_IDLE=1s: the worker leaves by itself; /usr/bin/time then writes its report.
    let exited_at = loop {
        if let Some(status) = run.time.try_wait().unwrap() {
            assert!(
                status.success(),
                "the worker exited with {status}\n{}",
                run.logs()
            );
            break Instant::now();
        }
        assert!(
            t0.elapsed() < settings.timeout + Duration::from_secs(60),
            "the worker did not exit when idle\n{}",
            run.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let time_v = parse_time_v(&std::fs::read_to_string(&run.time_file).unwrap());

    // When the row said completed, by the database's clock (the same machine's).
    let db = |sql: &str| stack.supabase.sql(sql, &[("s", &session)]);
    let completed_epoch: f64 = db(
        "select extract(epoch from completed_at) from audio_processing_jobs where session_id = :'s'",
    )
    .parse()
    .unwrap();
    let started_epoch: f64 = db(
        "select extract(epoch from started_at) from audio_processing_jobs where session_id = :'s'",
    )
    .parse()
    .unwrap();
    let time_to_result = completed_epoch - t0_epoch;
    let result: Value = serde_json::from_str(&db(
        "select json_build_object('duration_s', duration_s, 'analysis_status', analysis_status, \
         'analysis_error', analysis_error, 'speakers_found', speakers_found, \
         'turns', jsonb_array_length(turns), \
         'segments', jsonb_array_length(transcript->'segments'), \
         'speech_regions', jsonb_array_length(speech), 'versions', versions) \
         from audio_analysis_results where session_id = :'s'",
    ))
    .unwrap();
    let expected = if settings.analysis { "ok" } else { "skipped" };
    assert_eq!(result["analysis_status"], expected, "{result}");
    let duration_s = result["duration_s"].as_f64().unwrap();

    // The simulated Whisper wait.
    let calls = stack.whisper_calls.lock().unwrap().clone();
    let gemini = stack.gemini_calls.lock().unwrap().clone();
    assert!(!calls.is_empty(), "no Whisper request");
    let chunk_audio_s: f64 = calls.iter().map(|c| c.audio_s).sum();
    let wait_sum_s: f64 = calls.iter().map(|c| c.delay.as_secs_f64()).sum();
    let wait_union_s = union_s(
        calls
            .iter()
            .map(|c| (c.arrived, c.arrived + c.delay))
            .collect(),
    );

    // Phases, bounded by what the fakes saw.
    let done = t0 + Duration::from_secs_f64(time_to_result.max(0.0));
    let first_whisper = calls.iter().map(|c| c.arrived).min().unwrap();
    let last_whisper = calls.iter().map(|c| c.arrived + c.delay).max().unwrap();
    let mut bounds = vec![
        (
            "startup, claim, download, decode, VAD, speaker timeline, pieces",
            t0,
            first_whisper,
        ),
        (
            "transcription (requests in flight)",
            first_whisper,
            last_whisper,
        ),
    ];
    match gemini.first() {
        Some(&g) => {
            bounds.push(("turns, roles and metrics", last_whisper, g));
            bounds.push(("analysis (Gemini) and saving", g, done));
        }
        None => bounds.push(("turns, roles, metrics and saving", last_whisper, done)),
    }
    bounds.push(("idle until exit (EXIT_WHEN_IDLE=1s)", done, exited_at));
    let phases: Vec<Value> = bounds
        .iter()
        .map(|&(name, from, to)| {
            json!({
                "phase": name,
                "wall_s": round3(to.saturating_duration_since(from).as_secs_f64()),
                "cpu_s": round3(cpu_at(&samples, to) - cpu_at(&samples, from)),
                "max_rss_mb": round3(max_rss_between(&samples, from, to) as f64 / 1024.0),
            })
        })
        .collect();

    let cpu_s = time_v["user_s"].as_f64().unwrap() + time_v["system_s"].as_f64().unwrap();
    let peak_rss_mb = time_v["max_rss_kb"].as_f64().unwrap() / 1024.0;
    let hwm_mb = samples.iter().map(|s| s.hwm_kb).max().unwrap_or(0) as f64 / 1024.0;
    let threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    json!({
        "transcribe_concurrency": concurrency,
        "session_id": session,
        "time_to_result_s": round3(time_to_result),
        "time_to_result_polled_s": round3(polled_done.as_secs_f64()),
        "worker_start_to_claim_s": round3(started_epoch - t0_epoch),
        "worker_life_s": round3((exited_at - t0).as_secs_f64()),
        "audio_s": round3(duration_s),
        "cpu_s": round3(cpu_s),
        "cpu_user_s": time_v["user_s"],
        "cpu_system_s": time_v["system_s"],
        "cpu_s_per_audio_hour": round3(cpu_s / (duration_s / 3600.0)),
        "cpu_pct_of_audio": round3(100.0 * cpu_s / duration_s),
        "peak_rss_mb": round3(peak_rss_mb),
        "peak_rss_sampled_vmhwm_mb": round3(hwm_mb),
        "max_threads": threads,
        "whisper": {
            "model": settings.model,
            "latency_base_s": settings.api.base_s,
            "latency_per_audio_s": settings.api.per_s,
            "rate_limit_rpm": settings.api.rpm,
            "requests": calls.len(),
            "rejected_429": stack.rejected.load(Ordering::Relaxed),
            "requests_per_audio_hour": round3(calls.len() as f64 / (duration_s / 3600.0)),
            "billed_audio_min": round3(chunk_audio_s / 60.0),
            "billed_min_per_audio_hour": round3(chunk_audio_s / 60.0 / (duration_s / 3600.0)),
            "with_context_share": round3(
                calls.iter().filter(|c| c.with_context).count() as f64 / calls.len() as f64
            ),
            "chunk_audio_s": calls.iter().map(|c| round3(c.audio_s)).collect::<Vec<_>>(),
            "chunk_audio_total_s": round3(chunk_audio_s),
            "upload_mb": round3(calls.iter().map(|c| c.bytes).sum::<usize>() as f64 / 1e6),
            "simulated_wait_sum_s": round3(wait_sum_s),
            "simulated_wait_wall_s": round3(wait_union_s),
        },
        "time_to_result_minus_whisper_wall_s": round3(time_to_result - wait_union_s),
        "gemini_requests": gemini.len(),
        "phases": phases,
        "result": result,
        "time_v": time_v,
        "samples": samples.len(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench-e2e.sh runs it with --ignored"]
async fn bench_end_to_end() {
    let settings = Settings::from_env();
    assert!(
        Path::new("/usr/bin/time").exists(),
        "/usr/bin/time is missing (Debian package `time`)"
    );
    let speaker_stage = speaker_stage_cpu(&settings.audio);
    eprintln!("bench-e2e: speaker stage alone: {speaker_stage}");
    let stack = Stack::start(settings.api, &settings.model).await;
    let key = format!("users/{USER}/bench-recording");
    stack
        .s3
        .put(BUCKET, &key, &std::fs::read(&settings.audio).unwrap());

    let mut runs = Vec::new();
    for (n, &c) in settings.concurrencies.iter().enumerate() {
        eprintln!(
            "bench-e2e: run {} of {}: TRANSCRIBE_CONCURRENCY={c}",
            n + 1,
            settings.concurrencies.len()
        );
        let run = run_once(&stack, &settings, &key, n + 1, c).await;
        eprintln!(
            "bench-e2e:   time to result {} s, CPU {} s ({} % of the audio), peak RSS {} MB, \
             simulated Whisper wall {} s",
            run["time_to_result_s"],
            run["cpu_s"],
            run["cpu_pct_of_audio"],
            run["peak_rss_mb"],
            run["whisper"]["simulated_wait_wall_s"]
        );
        runs.push(run);
    }

    let ttr = |c: usize| {
        runs.iter()
            .find(|r| r["transcribe_concurrency"] == c)
            .and_then(|r| r["time_to_result_s"].as_f64())
    };
    let (lowest, highest) = (
        *settings.concurrencies.iter().min().unwrap(),
        *settings.concurrencies.iter().max().unwrap(),
    );
    let speedup = match (ttr(lowest), ttr(highest)) {
        (Some(a), Some(b)) if lowest != highest => Some(round3(a / b)),
        _ => None,
    };
    let report = json!({
        "audio_file": settings.audio.display().to_string(),
        "audio_bytes": std::fs::metadata(&settings.audio).unwrap().len(),
        "binary": env!("CARGO_BIN_EXE_audio-worker"),
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "whisper_model": settings.model,
        "latency": {"base_s": settings.api.base_s, "per_audio_s": settings.api.per_s},
        "rate_limit_rpm": settings.api.rpm,
        "speaker_stage": speaker_stage,
        "analysis": settings.analysis,
        "runs": runs,
        "speedup": {
            "sequential_concurrency": lowest,
            "parallel_concurrency": highest,
            "time_to_result": speedup,
        },
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    if let Some(out) = &settings.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(out, &text).unwrap();
        eprintln!("bench-e2e: wrote {}", out.display());
    }
    println!("{text}");
}
