//! Every input the fuzzers (`scripts/fuzz.sh`) found a crash, hang or leak with, replayed in
//! process: each must end in a clean `Ok` or the `Err` code listed here, in bounded time, without
//! a panic. A file in `fixtures/fuzz/` without an entry in [`EXPECTED`] fails the test, so a new
//! finding cannot be added without saying what it must now produce.
//!
//! `.json` files go through `Job::parse`, everything else through `audio::prepare` with the fuzz
//! target's limits (`fuzz/fuzz_targets/prepare.rs`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use audio_worker::ErrorCode;
use audio_worker::audio::{self, PrepareOptions};
use audio_worker::job::Job;

/// What each regression input must produce: `None` is `Ok`.
const EXPECTED: &[(&str, Option<ErrorCode>)] = &[
    // rubato's FFT panicked on NaN samples ("Imaginary part of first value was non-zero") in the
    // decode thread. Fixed in resample.rs (sanitise).
    ("wav-f32-nan.wav", Some(ErrorCode::AudioTooShort)),
    // The same through the downmix: huge finite stereo samples sum to infinity, then NaN.
    (
        "wav-f32-overflow-stereo.wav",
        Some(ErrorCode::AudioTooShort),
    ),
    // What the fuzzer found (minimised): a float WAV declaring 4,278,238,080 Hz. Once NaN no
    // longer panicked, resampling from that rate hung. Fixed in audio/decode/open.rs (sample rate
    // range).
    ("wav-rate-4ghz-nan.wav", Some(ErrorCode::AudioDecodeFailed)),
    // An M4A whose damaged sample table gives a corrupt AAC packet a duration of hours: its
    // silence was allocated at that length (1 GB, then OOM). Fixed in audio/decode/symphonia.rs
    // (lost packets last at most a second). Not minimised: 46 kB as the fuzzer found it.
    (
        "mp4-lost-packet-huge-duration-oom.m4a",
        Some(ErrorCode::AudioDecodeFailed),
    ),
];

/// Generous for a debug build on a loaded machine; a hang is what this catches.
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn options() -> PrepareOptions {
    let mut opts = PrepareOptions::default();
    opts.decode.max_input_bytes = 1 << 20;
    opts.decode.max_duration_s = 60.0;
    opts.decode.threads = 1;
    opts.chunks.max_duration_s = 8.0;
    opts.chunks.max_file_bytes = 200_000;
    opts.chunks.search_window_s = 3.0;
    opts.write_pcm = true;
    opts
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz")
}

/// Runs one input on its own thread: `Ok(code or None)`, or why it did not end cleanly.
fn run(path: &Path) -> Result<Option<ErrorCode>, String> {
    let (tx, rx) = mpsc::channel();
    let input = path.to_path_buf();
    let worker = std::thread::spawn(move || {
        let code = if input.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&input).unwrap();
            Job::parse(&bytes).err().map(|e| e.code)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let result = audio::prepare(&input, &out, &options());
            if result.is_err() {
                assert!(!out.exists(), "a failed prepare leaves nothing behind");
            }
            result.err().map(|e| e.code)
        };
        let _ = tx.send(code);
    });
    let started = Instant::now();
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(code) => {
            worker
                .join()
                .map_err(|_| "panicked after answering".to_string())?;
            Ok(code)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => Err(format!(
                "panicked: {}",
                audio_worker::error::panic_message(panic.as_ref())
            )),
            Ok(()) => Err("ended without an answer".into()),
        },
        // The thread is left running; the test process ends anyway.
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("still running after {:?}", started.elapsed()))
        }
    }
}

#[test]
fn every_fuzz_finding_ends_cleanly_with_its_code() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fuzz_dir())
        .expect("fixtures/fuzz exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let Some((_, expected)) = EXPECTED.iter().find(|(n, _)| *n == name) else {
            failures.push(format!("{name}: not listed in EXPECTED"));
            continue;
        };
        match run(path) {
            Ok(got) if got == *expected => {}
            Ok(got) => failures.push(format!("{name}: expected {expected:?}, got {got:?}")),
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    for (name, _) in EXPECTED {
        if !files.iter().any(|p| p.file_name().unwrap() == *name) {
            failures.push(format!("{name}: listed but missing from fixtures/fuzz"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
