//! The whole pipeline end to end on a fixture dialogue: the same `pipeline::run` the daemon uses,
//! with the sidecar transcriber and a local fake of Gemini; and the `replay` command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_worker::BoxFuture;
use audio_worker::ErrorCode;
use audio_worker::analysis::Analyzer;
use audio_worker::analysis::gemini::{GeminiAnalyzer, GeminiConfig};
use audio_worker::conversation::Speaker;
use audio_worker::pipeline::{
    self, AnalysisOutcome, AnalysisStatus, PipelineJob, PipelineOptions, Ports, Progress,
    ProgressSink, Stage,
};
use audio_worker::replay::LocalFile;
use audio_worker::transcribe::sidecar::SidecarTranscriber;
use common::fixture;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Records every progress report.
#[derive(Default)]
struct Recorder(Mutex<Vec<Progress>>);

impl ProgressSink for Recorder {
    fn report<'a>(&'a self, p: Progress) -> BoxFuture<'a, audio_worker::Result<()>> {
        self.0.lock().unwrap().push(p);
        Box::pin(async { Ok(()) })
    }
}

fn clear_dialogue() -> (PathBuf, PathBuf) {
    (
        fixture("dialogues/clear.flac"),
        fixture("dialogues/clear.transcript.json"),
    )
}

fn ports(analyzer: Option<Arc<dyn Analyzer>>, progress: Arc<Recorder>) -> Ports {
    let (audio, transcript) = clear_dialogue();
    Ports {
        source: Arc::new(LocalFile(audio)),
        transcriber: Arc::new(SidecarTranscriber::open(&transcript).unwrap()),
        analyzer,
        progress,
    }
}

fn options(work: &Path) -> PipelineOptions {
    PipelineOptions {
        work_root: work.to_path_buf(),
        ..PipelineOptions::default()
    }
}

fn job() -> PipelineJob {
    PipelineJob {
        session_id: "session-1".into(),
        language: Some("en".into()),
        keywords: Vec::new(),
    }
}

fn gemini(server: &MockServer) -> Arc<dyn Analyzer> {
    let mut config = GeminiConfig::new("fake-google-key");
    config.base_url = server.uri();
    config.model = "gemini-test".into();
    config.max_attempts = 2;
    config.backoff_base = Duration::from_millis(5);
    config.backoff_cap = Duration::from_millis(20);
    Arc::new(GeminiAnalyzer::new(config).unwrap())
}

#[tokio::test]
async fn the_pipeline_turns_a_recording_into_a_labelled_measured_analysed_result() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": common::fakes::clear_dialogue_analysis().to_string()}]}, "finishReason": "STOP"}]
        })))
        .mount(&server)
        .await;
    let work = tempfile::tempdir().unwrap();
    let progress = Arc::new(Recorder::default());
    let result = pipeline::run(
        &job(),
        &ports(Some(gemini(&server)), progress.clone()),
        &options(work.path()),
    )
    .await
    .unwrap();

    assert_eq!(result.analysis.status(), AnalysisStatus::Ok);
    assert_eq!(
        result.analysis.analysis().unwrap().skills.questioning.score,
        5
    );
    assert_eq!(result.speakers_found, 2);
    // one segment per single-speaker piece: the sidecar's 9 segments include one where Whisper
    // merged a client line and the coach's question, which the speaker timeline splits
    assert_eq!(result.transcript.segments.len(), 10);
    assert!(
        result
            .turns
            .iter()
            .any(|t| t.speaker == Speaker::Coach && t.text == "How would a first rough draft look?"),
        "{:?}",
        result.turns
    );
    // The coach asks the questions in this dialogue; every question turn is the coach's.
    let questions: Vec<_> = result
        .turns
        .iter()
        .filter(|t| t.text.trim_end().ends_with('?'))
        .collect();
    assert!(questions.len() >= 4);
    assert!(
        questions.iter().all(|t| t.speaker == Speaker::Coach),
        "{:?}",
        result.turns
    );
    assert_eq!(result.metrics.speakers.coach.questions, questions.len());
    assert!(
        result.metrics.speakers.client.speaking_ratio
            > result.metrics.speakers.coach.speaking_ratio
    );
    // Every turn lies on the recording's timeline.
    assert!(
        result.turns.iter().all(|t| t.start_s >= 0.0
            && t.end_s <= result.duration_s + 1e-6
            && t.start_s < t.end_s)
    );
    assert_eq!(result.versions.transcriber, "sidecar:clear.transcript.json");
    assert_eq!(result.versions.analyzer.as_deref(), Some("gemini-test"));

    let stages: Vec<Stage> = progress.0.lock().unwrap().iter().map(|p| p.stage).collect();
    for stage in [
        Stage::Downloading,
        Stage::Preprocessing,
        Stage::Transcribing,
        Stage::Diarization,
        Stage::Analyzing,
    ] {
        assert!(
            stages.contains(&stage),
            "{stage:?} not reported: {stages:?}"
        );
    }
    let percents: Vec<u8> = progress
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.percent)
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward: {percents:?}"
    );
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "the job's temp dir is removed"
    );

    let written = serde_json::to_value(&result).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/result.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    common::check_against(&schema, &written, "result");
    // The schema is checked in full, not only for shape: a wrong type, an unknown field or an
    // out-of-range score are each found.
    let mut bad = written.clone();
    bad["duration_s"] = serde_json::json!("long");
    bad["unexpected"] = serde_json::json!(1);
    bad["turns"][0]["speaker"] = serde_json::json!("narrator");
    let problems = common::schema_problems(&schema, &bad, "result");
    for field in ["/duration_s", "unexpected", "/turns/0/speaker"] {
        assert!(
            problems.iter().any(|p| p.contains(field)),
            "{field} not found in {problems:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_analysis_is_stored_as_failed_never_as_made_up_scores() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}
        })))
        .mount(&server)
        .await;
    let work = tempfile::tempdir().unwrap();
    let result = pipeline::run(
        &job(),
        &ports(Some(gemini(&server)), Arc::default()),
        &options(work.path()),
    )
    .await
    .unwrap();
    assert_eq!(result.analysis.status(), AnalysisStatus::Failed);
    assert!(result.analysis.analysis().is_none());
    let err = result.analysis.error().unwrap();
    assert_eq!(err.code, ErrorCode::GeminiFailed);
    assert!(
        err.message.contains("API key not valid."),
        "{}",
        err.message
    );
    // The transcript, turns and metrics are still there.
    assert!(!result.turns.is_empty());
}

#[tokio::test]
async fn without_an_analyzer_the_analysis_is_skipped_and_null() {
    let work = tempfile::tempdir().unwrap();
    let result = pipeline::run(&job(), &ports(None, Arc::default()), &options(work.path()))
        .await
        .unwrap();
    assert_eq!(result.analysis, AnalysisOutcome::Skipped);
}

#[tokio::test]
async fn a_bad_recording_fails_with_its_code_reports_it_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let progress = Arc::new(Recorder::default());
    let mut p = ports(None, progress.clone());
    p.source = Arc::new(LocalFile(fixture("bad/silence.wav")));
    let err = pipeline::run(&job(), &p, &options(work.path()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AudioNoSpeech);
    let last = progress.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.stage, Stage::Error);
    assert!(last.message.contains("AUDIO_NO_SPEECH"));
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

fn replay_cmd(work: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audio-worker"));
    cmd.current_dir(work)
        .env_remove("OPENAI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env("TMPDIR", work);
    cmd
}

#[test]
fn replay_writes_the_result_and_a_self_contained_report() {
    let work = tempfile::tempdir().unwrap();
    let (audio, transcript) = clear_dialogue();
    let out = replay_cmd(work.path())
        .arg("replay")
        .arg(&audio)
        .arg("--transcript")
        .arg(&transcript)
        .args([
            "--out",
            "result.json",
            "--report",
            "report.html",
            "--language",
            "en",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped"), "{stdout}");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(result["analysis_status"], "skipped");
    assert!(result["analysis"].is_null());
    let html = std::fs::read_to_string(work.path().join("report.html")).unwrap();
    assert!(html.contains("What would you like to focus on today?"));
    assert!(html.contains("<svg") && html.contains("class=\"coach\""));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script src"),
        "self-contained"
    );
}

#[test]
fn replay_without_transcript_or_key_names_both_options() {
    let work = tempfile::tempdir().unwrap();
    let audio = work.path().join("talk.flac");
    std::fs::copy(fixture("dialogues/clear.flac"), &audio).unwrap();
    let out = replay_cmd(work.path())
        .arg("replay")
        .arg(&audio)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error[CONFIG_MISSING]: "), "{stderr}");
    assert!(
        stderr.contains("OPENAI_API_KEY") && stderr.contains("--transcript"),
        "{stderr}"
    );
    assert!(stderr.contains("talk.transcript.json"), "{stderr}");
}

/// Issue 17: without `--language` and without a transcript that names one, replay asks the
/// transcriber without a language (the model detects it) and the result carries the language
/// the words are in, not an assumed Japanese. A text-only model reports no language, so it comes
/// from the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_openai_without_a_language_detects_it() {
    for (case, expected) in [
        ("dialogues/clear", "en"),
        ("conversations/jtalk-clear-1", "ja"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let original = ["flac", "opus"]
            .iter()
            .map(|ext| fixture(&format!("{case}.{ext}")))
            .find(|p| p.exists())
            .unwrap();
        // away from the fixture's transcript, which replay would take instead of OpenAI
        let audio = work
            .path()
            .join("talk")
            .with_extension(original.extension().unwrap());
        std::fs::copy(&original, &audio).unwrap();
        let server = common::fakes::whisper(
            &audio,
            &fixture(&format!("{case}.truth.json")),
            Duration::ZERO,
        )
        .await;
        let mut cmd = replay_cmd(work.path());
        cmd.arg("replay")
            .arg(&audio)
            .args(["--out", "result.json"])
            .env("OPENAI_API_KEY", common::fakes::OPENAI_KEY)
            .env("OPENAI_BASE_URL", common::fakes::openai_base(&server))
            .env("WHISPER_MODEL", "gpt-transcribe");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let requests = server.received_requests().await.unwrap();
        let uploads: Vec<_> = requests
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .collect();
        assert!(!uploads.is_empty(), "{case}: nothing was transcribed");
        for r in uploads {
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains("name=\"language\""),
                "{case}: a language was sent though none was given"
            );
        }
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(work.path().join("result.json")).unwrap())
                .unwrap();
        assert_eq!(result["language"], expected, "{case}");
        assert_eq!(result["transcript"]["language"], expected, "{case}");
    }
}
