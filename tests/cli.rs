//! The command line as a newcomer meets it: mistakes in how a command is called are usage
//! errors (exit 2, one `error:` line naming the option or file, before any work), a bad local
//! file is named, `replay` takes the session's language from its transcript and speaks the
//! terminal's language, and a failure is one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// `audio-worker ARGS` in `work`, without cloud keys and with an English locale.
fn run(work: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .current_dir(work)
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", work)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A usage error: exit 2 and one line `error: …` that contains every one of `words`.
fn assert_usage_error(out: &Output, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("error: "), "{err}");
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in {err}");
    }
}

#[test]
fn mistakes_in_paths_are_usage_errors_that_name_the_file_before_any_work() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let audio = fixture("dialogues/clear.flac");
    let audio = audio.to_str().unwrap();
    let transcript = fixture("dialogues/clear.transcript.json");
    let transcript = transcript.to_str().unwrap();
    std::fs::write(w.join("taken"), b"a file").unwrap();

    let replay_out = run(
        w,
        &[
            "replay",
            audio,
            "--transcript",
            transcript,
            "--out",
            "/nonexistent/r.json",
        ],
    );
    assert_usage_error(&replay_out, &["--out", "/nonexistent", "does not exist"]);
    // Refused before the pipeline ran: not a single progress line.
    assert!(
        !stderr(&replay_out).contains('%'),
        "{}",
        stderr(&replay_out)
    );

    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["replay", audio, "--transcript", "/nope.json"],
            &["--transcript", "/nope.json", "no such file"],
        ),
        (
            &["replay", audio, "--report", "/nonexistent/r.html"],
            &["--report", "/nonexistent"],
        ),
        (&["replay", "/nope.flac"], &["/nope.flac", "no such file"]),
        (
            &["prepare", audio, "--out", "taken"],
            &["--out", "taken", "is a file"],
        ),
        (&["prepare", "/nope.webm", "--out", "o"], &["/nope.webm"]),
        (
            &["validate-job", "/nope.json"],
            &["/nope.json", "no such file"],
        ),
    ];
    for (args, words) in cases {
        assert_usage_error(&run(w, args), words);
    }
    // Nothing was written while refusing (the probes leave no file behind).
    let left: Vec<_> = std::fs::read_dir(w).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn numbers_that_make_no_sense_are_usage_errors() {
    let work = tempfile::tempdir().unwrap();
    let audio = fixture("dialogues/clear.flac");
    let audio = audio.to_str().unwrap();
    let cases: [(&str, &str); 9] = [
        ("--max-chunk-s", "0"),
        ("--max-chunk-s", "-1"),
        ("--max-chunk-s", "NaN"),
        ("--threads", "0"),
        ("--target-dbfs", "NaN"),
        ("--target-dbfs", "6"),
        ("--opus-rate", "44100"),
        ("--max-duration-s", "0"),
        ("--max-input-mb", "0"),
    ];
    for (flag, value) in cases {
        let out = run(work.path(), &["prepare", audio, "--out", "o", flag, value]);
        assert_usage_error(&out, &[flag]);
        assert!(
            !work.path().join("o").exists(),
            "{flag} {value} wrote chunks"
        );
    }
}

#[test]
fn a_transcript_that_is_not_verbose_json_is_named_and_not_retryable() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("words.json"), b"hello").unwrap();
    let audio = fixture("dialogues/clear.flac");
    let out = run(
        work.path(),
        &[
            "replay",
            audio.to_str().unwrap(),
            "--transcript",
            "words.json",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error[CONFIG_MISSING]: "), "{err}");
    assert!(err.contains("words.json"), "{err}");
}

#[test]
fn a_failed_replay_prints_its_error_once() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::copy(fixture("bad/random.mp3"), w.join("talk.mp3")).unwrap();
    std::fs::copy(
        fixture("dialogues/clear.transcript.json"),
        w.join("talk.transcript.json"),
    )
    .unwrap();
    let out = run(w, &["replay", "talk.mp3"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("error") || l.contains("エラー"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("error[AUDIO_UNSUPPORTED_FORMAT]: "),
        "{err}"
    );
}

#[test]
fn replay_takes_the_language_from_the_transcript_and_speaks_english_on_the_terminal() {
    let work = tempfile::tempdir().unwrap();
    let audio = fixture("dialogues/clear.flac");
    let transcript = fixture("dialogues/clear.transcript.json");
    let out = run(
        work.path(),
        &[
            "replay",
            audio.to_str().unwrap(),
            "--transcript",
            transcript.to_str().unwrap(),
            "--out",
            "result.json",
        ],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(result["language"], "en", "the transcript says english");
    assert!(err.contains("Reading the recording"), "{err}");
    assert!(err.contains("Skipping the analysis"), "{err}");
    assert!(
        !err.contains("ダウンロード") && !err.contains("分析中"),
        "neither downloaded nor analysed: {err}"
    );
}

/// Issue 16: `validate-job` refuses a signed job by the same JOB_MAX_AGE_H as the worker (it
/// used a constant), and an out-of-range JOB_MAX_AGE_H is named, not a retryable failure.
#[test]
fn validate_job_honours_job_max_age_h() {
    use audio_worker::job::{Job, sign};
    use std::time::{Duration, SystemTime};
    let work = tempfile::tempdir().unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let mut job = Job::new(
        "3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f",
        "5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
        "recordings",
        "users/5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d/a.webm",
        "ja",
        two_hours_ago,
    );
    sign(&mut job, b"validate-FAKE-SECRET");
    let path = work.path().join("job.json");
    std::fs::write(&path, job.to_json()).unwrap();
    let validate = |max_age_h: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_audio-worker"));
        cmd.args(["validate-job", path.to_str().unwrap()])
            .env_clear()
            .env("JOB_SIGNING_SECRET", "validate-FAKE-SECRET");
        if let Some(h) = max_age_h {
            cmd.env("JOB_MAX_AGE_H", h);
        }
        cmd.output().unwrap()
    };
    let out = validate(None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature=verified"));

    let out = validate(Some("1"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error[QUEUE_BAD_SIGNATURE]") && stderr(&out).contains("expired"),
        "{}",
        stderr(&out)
    );

    let out = validate(Some("0"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error[CONFIG_MISSING]") && stderr(&out).contains("JOB_MAX_AGE_H"),
        "{}",
        stderr(&out)
    );
}
