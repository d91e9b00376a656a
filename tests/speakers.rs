//! Who said what, end to end: every scripted conversation with a truth file (fixtures/dialogues,
//! fixtures/conversations) through the very `pipeline::run` the daemon uses, with a
//! transcription fake that hears only the audio it is sent (tests/common/truth.rs), once
//! text-only (gpt-transcribe) and once with segment times (whisper-1).
//!
//! `cargo test --test speakers -- --nocapture` prints, per set, DER (10 ms grid, 0.25 s collar),
//! attribution, text recall and precision, roles, piece edges inside words and the share of
//! pieces sent with the preceding text as their prompt.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use audio_worker::BoxFuture;
use audio_worker::pipeline::{self, PipelineJob, PipelineOptions, Ports, Progress, ProgressSink};
use audio_worker::replay::LocalFile;
use audio_worker::speakers::embed::SpeakerEncoder;
use common::scoring::{self, TextScore};
use common::truth::{Truth, TruthTranscriber};

struct Quiet;

impl ProgressSink for Quiet {
    fn report<'a>(&'a self, _: Progress) -> BoxFuture<'a, audio_worker::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// One conversation's audio, reference turns and truth.
struct Case {
    name: String,
    audio: PathBuf,
    rttm: PathBuf,
    truth: PathBuf,
}

fn cases(dir: &str, prefix: &str) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    let mut out: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".truth.json")?
                .to_string();
            if !name.starts_with(prefix) {
                return None;
            }
            let audio = ["opus", "flac", "wav"]
                .iter()
                .map(|ext| dir.join(format!("{name}.{ext}")))
                .find(|a| a.exists())?;
            Some(Case {
                rttm: dir.join(format!("{name}.rttm")),
                truth: p,
                audio,
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "no cases {prefix}* in {}", dir.display());
    out
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Row {
    case: String,
    der: f64,
    text: TextScore,
    speakers: usize,
    pieces: usize,
    with_context: usize,
    cuts_in_words: usize,
}

async fn run_case(case: &Case, segments: bool, encoder: Option<Arc<dyn SpeakerEncoder>>) -> Row {
    let truth = Truth::load(&case.truth);
    let transcriber = Arc::new(TruthTranscriber::new(&case.audio, &truth, segments));
    let ports = Ports {
        source: Arc::new(LocalFile(case.audio.clone())),
        transcriber: transcriber.clone(),
        analyzer: None,
        progress: Arc::new(Quiet),
    };
    let job = PipelineJob {
        session_id: case.name.clone(),
        language: Some(truth.language.clone()),
        keywords: Vec::new(),
    };
    let opts = PipelineOptions {
        speaker_encoder: encoder,
        ..PipelineOptions::default()
    };
    let result = pipeline::run(&job, &ports, &opts)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let reference = scoring::read_rttm(&std::fs::read_to_string(&case.rttm).unwrap());
    let requests = transcriber.requests.lock().unwrap().clone();
    let edges: Vec<f64> = requests.iter().flat_map(|r| [r.start_s, r.end_s]).collect();
    Row {
        case: case.name.clone(),
        der: scoring::der(&reference, &scoring::turns_to_spans(&result.turns)),
        text: scoring::text_score(&truth, &result.turns),
        speakers: result.speakers_found,
        pieces: requests.len(),
        with_context: requests.iter().filter(|r| r.prompt.is_some()).count(),
        cuts_in_words: scoring::cuts_inside_words(&truth.words(), &edges),
    }
}

fn print_table(set: &str, mode: &str, rows: &[Row]) {
    println!("\n{set}, {mode}:");
    println!(
        "| case | DER | attribution | recall | precision | roles | speakers | pieces (with context) | cuts in words |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} ({}) | {} |",
            r.case,
            100.0 * r.der,
            100.0 * r.text.attribution,
            100.0 * r.text.recall,
            100.0 * r.text.precision,
            if r.text.roles_right { "right" } else { "WRONG" },
            r.speakers,
            r.pieces,
            r.with_context,
            r.cuts_in_words
        );
    }
}

/// Limits a set must meet, both modes.
struct Targets {
    max_der: f64,
    min_attribution: f64,
    min_recall: f64,
    min_precision: f64,
    /// Cases whose roles may come out wrong.
    role_errors: usize,
}

async fn check_set(set: &str, dir: &str, prefix: &str, t: Targets) {
    let cases = cases(dir, prefix);
    let mut failures = Vec::new();
    let encoder = audio_worker::speakers::load_configured()
        .expect("the speaker model is missing: run scripts/fetch-speaker-model.sh");
    // the configured encoder's name, so that a table made with another model says so
    let text_only = format!("{} embeddings, text-only (gpt-transcribe)", encoder.name());
    let segments_mode = format!("{} embeddings, segments (whisper-1)", encoder.name());
    for (mode, segments, encoder) in [
        (text_only.as_str(), false, Some(encoder.clone())),
        (segments_mode.as_str(), true, Some(encoder)),
        ("pitch+MFCC fallback, text-only", false, None),
    ] {
        let mut rows = Vec::new();
        for case in &cases {
            rows.push(run_case(case, segments, encoder.clone()).await);
        }
        print_table(set, mode, &rows);
        for r in &rows {
            let mut bad = |what: String| failures.push(format!("{} [{mode}]: {what}", r.case));
            if r.der > t.max_der {
                bad(format!(
                    "DER {:.1} % > {:.0} %",
                    100.0 * r.der,
                    100.0 * t.max_der
                ));
            }
            if r.speakers != 2 {
                // two is the prior of a 1-on-1 session: never a whole session "unknown"
                bad(format!(
                    "{} voice(s) found in a two-person session",
                    r.speakers
                ));
            }
            if r.text.attribution < t.min_attribution {
                bad(format!("attribution {:.1} %", 100.0 * r.text.attribution));
            }
            if r.text.recall < t.min_recall {
                bad(format!("recall {:.1} %", 100.0 * r.text.recall));
            }
            if r.text.precision < t.min_precision {
                bad(format!("precision {:.1} %", 100.0 * r.text.precision));
            }
        }
        let wrong = rows.iter().filter(|r| !r.text.roles_right).count();
        if wrong > t.role_errors {
            failures.push(format!(
                "{set} [{mode}]: roles wrong in {wrong} of {}",
                rows.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{set}:\n{}", failures.join("\n"));
}

/// The targets in text-only mode: DER <= 10 % (clearly different voices) or 20 % (hard
/// ones), attribution >= 95 %, recall and precision >= 98 %. Met on clearly different voices,
/// with the CAM++ embeddings (the daemon's encoder) and with the pitch + MFCC fallback; the sets
/// they miss are held at the worse of the two as measured (README.md "Who said what, measured")
/// so that nothing gets worse unnoticed.
const fn limits(
    max_der: f64,
    min_attribution: f64,
    min_recall: f64,
    role_errors: usize,
) -> Targets {
    Targets {
        max_der,
        min_attribution,
        min_recall,
        min_precision: 0.98,
        role_errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_dialogues() {
    // targets met but for `similar` (CAM++ 7.7 % DER, 93.8 % attribution; the fallback 17.8 %,
    // 81.9 %) and `overlap` (91 %)
    check_set(
        "espeak-ng dialogues",
        "dialogues",
        "",
        limits(0.20, 0.80, 0.97, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_conversations() {
    check_set(
        "espeak-ng conversations",
        "conversations",
        "espeak-",
        // the DER target; espeak-1 7.9 %, attribution 88.0 % with CAM++ since the
        // embeddings stay in the resegmentation (2.9 %, 93.5 % when pitch and cepstra could
        // overrule them, which cost real recordings up to 30 points: README.md "Who said what")
        limits(0.10, 0.85, 0.95, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbrola_conversations() {
    check_set(
        "MBROLA conversations",
        "conversations",
        "mbrola-",
        // the DER target; with CAM++ mbrola-2 2.5 %, attribution 93.9 %; mbrola-3
        // 1.5 %, 96.3 %
        limits(0.10, 0.90, 0.95, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flite_conversations() {
    // another synthesiser: clearly different, similar (awb / rms) and one voice three semitones
    // apart (flite-3: 10.5 %, the block features' split, since CAM++'s 23.9 % split by content is
    // no longer trusted: `voices::ALIKE_COSINE`)
    check_set(
        "flite conversations",
        "conversations",
        "flite-",
        limits(0.15, 0.85, 0.95, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_jtalk_clearly_different_voices() {
    // the targets
    check_set(
        "open-jtalk, different voices",
        "conversations",
        "jtalk-clear-",
        limits(0.10, 0.95, 0.98, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_jtalk_similar_voices() {
    // far from the targets: one semitone apart, the same timbre model. CAM++ 1.8 / 32.3 / 30.9 %
    // (roles wrong in -3), the fallback 52.7 / 32.3 / 30.9 % (wrong in -1 and -3); GE2E was
    // 52.7 / 32.3 / 30.9 % too
    check_set(
        "open-jtalk, similar voices",
        "conversations",
        "jtalk-similar-",
        limits(0.55, 0.0, 0.95, 2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephone_band() {
    // phone-3 is the weak case: 32.7 % with CAM++ (GE2E 43 %), 53 % with the fallback. phone-1
    // and -2 stay under 1.5 %.
    check_set(
        "telephone band (GSM)",
        "conversations",
        "phone-",
        limits(0.55, 0.50, 0.95, 1),
    )
    .await;
}
