//! One job, start to finish: fetch → prepare (decode, speech map, speaker timeline) → pieces →
//! transcribe → turns and roles → metrics → analysis.
//!
//! The daemon and `audio-worker replay` run this very function; they differ only in the ports
//! they plug in (ARCHITECTURE.md). No stage knows where its input came from or where its output
//! goes. CPU-heavy stages run on blocking threads, never on the async runtime. The job's temp
//! directory is removed on every path out, success, error or panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::analysis::metrics::{self, ConversationMetrics};
use crate::analysis::{AnalysisInput, AnalysisReport, Analyzer, CoachingAnalysis};
use crate::audio::decode::SourceInfo;
use crate::audio::{self, PrepareOptions};
use crate::conversation::{Transcript, Turn};
use crate::diarize::{self, DiarizeOptions, SpeakerTimeline, TurnSpan};
use crate::error::{Error, ErrorCode, Result};
use crate::speakers::embed::SpeakerEncoder;
use crate::transcribe::pieces::{self, PieceOptions};
use crate::transcribe::{ChunkAudio, TranscribeContext, Transcriber, transcribe_all};

/// Where the recording comes from: S3 for the daemon, a local file for replay.
pub trait AudioSource: Send + Sync {
    /// A short description for logs ("s3://bucket/key", a path).
    fn describe(&self) -> String;
    /// Puts the recording into `dir` and returns its path.
    fn fetch<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<PathBuf>>;
}

/// The stages the user sees, with ARCHITECTURE.md's percentages and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Queued,
    Downloading,
    Preprocessing,
    Transcribing,
    Diarization,
    Analyzing,
    Saving,
    Completed,
    Error,
}

impl Stage {
    /// The stage's name as the job row, the logs and the metrics spell it (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Downloading => "downloading",
            Stage::Preprocessing => "preprocessing",
            Stage::Transcribing => "transcribing",
            Stage::Diarization => "diarization",
            Stage::Analyzing => "analyzing",
            Stage::Saving => "saving",
            Stage::Completed => "completed",
            Stage::Error => "error",
        }
    }

    /// The Japanese message shown to the user for this stage.
    pub fn message(self) -> &'static str {
        match self {
            Stage::Queued => "処理待ちです...",
            Stage::Downloading => "音声ファイルをダウンロード中...",
            Stage::Preprocessing => "音声ファイルを前処理中...",
            Stage::Transcribing => "音声を文字に変換中...",
            Stage::Diarization => "話者を識別中...",
            Stage::Analyzing => "AIが会話を分析中...",
            Stage::Saving => "結果を保存中...",
            Stage::Completed => "分析完了！",
            Stage::Error => "エラーが発生しました",
        }
    }

    /// Where the progress bar starts for this stage.
    pub fn percent(self) -> u8 {
        match self {
            Stage::Queued => 0,
            Stage::Downloading => 10,
            Stage::Preprocessing => 20,
            Stage::Transcribing => 40,
            Stage::Diarization => 60,
            Stage::Analyzing => 80,
            Stage::Saving => 95,
            Stage::Completed => 100,
            Stage::Error => 0,
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: Stage,
    pub percent: u8,
    pub message: String,
    /// The error's code, with the `error` stage only (the job row's `error_code`).
    pub code: Option<ErrorCode>,
}

impl Progress {
    pub fn at(stage: Stage) -> Progress {
        Progress {
            stage,
            percent: stage.percent(),
            message: stage.message().to_string(),
            code: None,
        }
    }

    /// Transcription advances from 40 % to 59 % as pieces finish.
    pub fn transcribing(done: usize, total: usize) -> Progress {
        let share = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        Progress {
            percent: 40 + (19.0 * share).round() as u8,
            ..Progress::at(Stage::Transcribing)
        }
    }

    /// The error report: the stage message, our message for the code and the code, as the user
    /// sees it. Never `err.message`: that quotes upstream replies, keys and URLs (logs only).
    pub fn error(err: &Error) -> Progress {
        Progress {
            stage: Stage::Error,
            percent: 0,
            message: format!(
                "{}: {} ({})",
                Stage::Error.message(),
                err.user_message(),
                err.code
            ),
            code: Some(err.code),
        }
    }
}

/// Where progress goes: Supabase for the daemon, the terminal for replay.
pub trait ProgressSink: Send + Sync {
    fn report<'a>(&'a self, progress: Progress) -> BoxFuture<'a, Result<()>>;
}

/// The adapters one run uses.
#[derive(Clone)]
pub struct Ports {
    pub source: Arc<dyn AudioSource>,
    pub transcriber: Arc<dyn Transcriber>,
    /// `None`: the analysis is skipped (no key configured), and the result says so.
    pub analyzer: Option<Arc<dyn Analyzer>>,
    pub progress: Arc<dyn ProgressSink>,
}

/// What to process.
#[derive(Debug, Clone)]
pub struct PipelineJob {
    pub session_id: String,
    /// ISO-639-1 language of the session ("ja").
    pub language: String,
    /// Vocabulary for the transcriber (the job's `keywords`), possibly empty.
    pub keywords: Vec<String>,
}

/// Tuning that is not part of the job.
#[derive(Clone)]
pub struct PipelineOptions {
    pub prepare: PrepareOptions,
    pub diarize: DiarizeOptions,
    /// The speaker encoder (`SPEAKER_MODEL_PATH`); `None`: pitch + MFCC features alone.
    pub speaker_encoder: Option<Arc<dyn SpeakerEncoder>>,
    pub pieces: PieceOptions,
    /// Pieces transcribed at once (lanes).
    pub transcribe_concurrency: usize,
    /// Parent of the per-job temp directory (the system temp dir by default).
    pub work_root: PathBuf,
    /// Keep a copy of the 16 kHz mono WAV the stages worked on here (replay's HTML report plays
    /// it); `None`: it goes with the temp directory.
    pub keep_audio: Option<PathBuf>,
}

impl std::fmt::Debug for PipelineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineOptions")
            .field("prepare", &self.prepare)
            .field("diarize", &self.diarize)
            .field(
                "speaker_encoder",
                &self.speaker_encoder.as_ref().map(|e| e.name().to_string()),
            )
            .field("pieces", &self.pieces)
            .field("transcribe_concurrency", &self.transcribe_concurrency)
            .field("work_root", &self.work_root)
            .field("keep_audio", &self.keep_audio)
            .finish()
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            prepare: PrepareOptions::default(),
            diarize: DiarizeOptions::default(),
            speaker_encoder: crate::speakers::load_configured(),
            pieces: PieceOptions::default(),
            transcribe_concurrency: 4,
            work_root: std::env::temp_dir(),
            keep_audio: None,
        }
    }
}

/// Resolution of the result's waveform.
pub const WAVEFORM_BUCKETS: usize = 1200;

/// Whether the analysis ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisStatus {
    Ok,
    /// No analyzer configured.
    Skipped,
    Failed,
}

/// The error stored with a failed analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredError {
    pub code: ErrorCode,
    pub message: String,
}

/// How the analysis ended: exactly one of three, so a failure always carries its error and a
/// success its analysis and report. Nothing is ever made up: no analysis unless it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "AnalysisFields", try_from = "AnalysisFields")]
pub enum AnalysisOutcome {
    Ok {
        /// Boxed: it is large, and the other outcomes are small.
        analysis: Box<CoachingAnalysis>,
        /// Requests, tokens and dropped examples.
        report: AnalysisReport,
    },
    /// No analyzer configured.
    Skipped,
    Failed(StoredError),
}

impl AnalysisOutcome {
    pub fn status(&self) -> AnalysisStatus {
        match self {
            AnalysisOutcome::Ok { .. } => AnalysisStatus::Ok,
            AnalysisOutcome::Skipped => AnalysisStatus::Skipped,
            AnalysisOutcome::Failed(_) => AnalysisStatus::Failed,
        }
    }

    pub fn analysis(&self) -> Option<&CoachingAnalysis> {
        match self {
            AnalysisOutcome::Ok { analysis, .. } => Some(analysis),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&StoredError> {
        match self {
            AnalysisOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// The outcome's published form (schemas/result.schema.json): four fields side by side.
#[derive(Serialize, Deserialize)]
struct AnalysisFields {
    analysis: Option<CoachingAnalysis>,
    analysis_status: AnalysisStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis_error: Option<StoredError>,
    #[serde(default)]
    analysis_report: Option<AnalysisReport>,
}

impl From<AnalysisOutcome> for AnalysisFields {
    fn from(outcome: AnalysisOutcome) -> Self {
        let analysis_status = outcome.status();
        let (analysis, analysis_error, analysis_report) = match outcome {
            AnalysisOutcome::Ok { analysis, report } => (Some(*analysis), None, Some(report)),
            AnalysisOutcome::Skipped => (None, None, None),
            AnalysisOutcome::Failed(e) => (None, Some(e), None),
        };
        AnalysisFields {
            analysis,
            analysis_status,
            analysis_error,
            analysis_report,
        }
    }
}

impl TryFrom<AnalysisFields> for AnalysisOutcome {
    type Error = String;

    fn try_from(f: AnalysisFields) -> std::result::Result<Self, String> {
        match (
            f.analysis_status,
            f.analysis,
            f.analysis_error,
            f.analysis_report,
        ) {
            (AnalysisStatus::Ok, Some(analysis), None, Some(report)) => Ok(AnalysisOutcome::Ok {
                analysis: Box::new(analysis),
                report,
            }),
            (AnalysisStatus::Skipped, None, None, None) => Ok(AnalysisOutcome::Skipped),
            (AnalysisStatus::Failed, None, Some(e), None) => Ok(AnalysisOutcome::Failed(e)),
            (status, ..) => Err(format!(
                "analysis_status {status:?} does not match the analysis, analysis_error and \
                 analysis_report fields"
            )),
        }
    }
}

/// The job's result, published as `schemas/result.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub session_id: String,
    pub source: SourceInfo,
    pub duration_s: f64,
    pub language: String,
    pub speech: Vec<[f64; 2]>,
    /// Peak level (0..=1) of each of [`WAVEFORM_BUCKETS`] equal spans, for drawing the timeline.
    pub waveform: Vec<f32>,
    pub turns: Vec<Turn>,
    pub transcript: Transcript,
    pub speakers_found: usize,
    pub metrics: ConversationMetrics,
    /// Published as four flat fields (`analysis`, `analysis_status`, `analysis_error`,
    /// `analysis_report`); see [`AnalysisOutcome`].
    #[serde(flatten)]
    pub analysis: AnalysisOutcome,
    pub versions: Versions,
}

/// Which code and models produced a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub worker: String,
    pub libopus: String,
    pub transcriber: String,
    pub diarizer: String,
    pub analyzer: Option<String>,
}

/// Runs one job through every stage, reporting progress. On failure an error progress report is
/// sent (best effort) and the error returned; the temp directory is gone either way.
pub async fn run(job: &PipelineJob, ports: &Ports, opts: &PipelineOptions) -> Result<JobResult> {
    let result = run_stages(job, ports, opts).await;
    if let Err(err) = &result {
        // The original error matters more than a failure to report it.
        let _ = ports.progress.report(Progress::error(err)).await;
    }
    result
}

async fn run_stages(job: &PipelineJob, ports: &Ports, opts: &PipelineOptions) -> Result<JobResult> {
    let temp = tempfile::Builder::new()
        .prefix("audio-job-")
        .tempdir_in(&opts.work_root)
        .map_err(|e| {
            Error::io(
                format!(
                    "cannot create a job directory in {}",
                    opts.work_root.display()
                ),
                e,
            )
        })?;
    let work = temp.path().to_path_buf();

    ports
        .progress
        .report(Progress::at(Stage::Downloading))
        .await?;
    let input = ports.source.fetch(&work).await?;

    ports
        .progress
        .report(Progress::at(Stage::Preprocessing))
        .await?;
    let prepared_dir = work.join("prepared");
    let mut prepare_opts = opts.prepare.clone();
    prepare_opts.write_pcm = true;
    let manifest = blocking({
        let (input, dir) = (input.clone(), prepared_dir.clone());
        move || audio::prepare(&input, &dir, &prepare_opts)
    })
    .await?;
    let pcm = prepared_dir.join(audio::PCM_FILE);
    let waveform = blocking({
        let pcm = pcm.clone();
        move || audio::peaks::read_peaks(&pcm, WAVEFORM_BUCKETS)
    })
    .await?;
    // Who speaks when, from the audio alone: the transcriber only fills in the words.
    let (timeline, stats) = blocking({
        let (pcm, speech, dopts) = (pcm.clone(), manifest.speech.clone(), opts.diarize.clone());
        let encoder = opts.speaker_encoder.clone();
        move || diarize::speaker_timeline_with_stats(&pcm, &speech, &dopts, encoder.as_deref())
    })
    .await?;
    let turn_spans = diarize::turns::group_turns(&timeline.spans, opts.diarize.max_pause_in_turn_s);

    ports.progress.report(Progress::transcribing(0, 1)).await?;
    let pieces = write_pieces(&timeline, &turn_spans, &pcm, &opts.pieces, &work).await?;
    tracing::info!(
        speakers = timeline.speakers_found,
        turns = turn_spans.len(),
        pieces = pieces.len(),
        piece_audio_s = pieces.iter().map(|p| p.end_s - p.start_s).sum::<f64>(),
        voice_cosine = stats.voice_cosine,
        voice_share = ?stats.share,
        blocks_resegmented = stats.blocks_resegmented,
        changes_snapped = stats.changes_snapped,
        tone_blocks = stats.tone_blocks,
        "speaker timeline"
    );
    let progress = Arc::clone(&ports.progress);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = tokio::spawn(async move {
        while let Some((done, total)) = rx.recv().await {
            // Progress is advisory: a failed update must not fail the transcription.
            let _ = progress.report(Progress::transcribing(done, total)).await;
        }
    });
    let transcript = transcribe_all(
        Arc::clone(&ports.transcriber),
        pieces,
        TranscribeContext {
            language: job.language.clone(),
            keywords: job.keywords.clone(),
        },
        opts.transcribe_concurrency,
        &manifest.speech,
        |done, total| {
            let _ = tx.send((done, total));
        },
    )
    .await;
    drop(tx);
    let _ = forward.await;
    let transcript = transcript?;

    ports
        .progress
        .report(Progress::at(Stage::Diarization))
        .await?;
    let diarization = diarize::turns::label_turns(&timeline, &turn_spans, &transcript);
    let duration_s = manifest.output.duration_s;
    let metrics = metrics::compute(&diarization.turns, duration_s);

    ports
        .progress
        .report(Progress::at(Stage::Analyzing))
        .await?;
    let analysis = match &ports.analyzer {
        None => AnalysisOutcome::Skipped,
        Some(analyzer) => {
            let input = AnalysisInput {
                turns: &diarization.turns,
                metrics: &metrics,
                language: &job.language,
                duration_s,
            };
            match analyzer.analyze(&input).await {
                Ok(a) => {
                    tracing::info!(
                        requests = a.report.requests,
                        dropped_examples = a.report.dropped_examples,
                        prompt_tokens = a.report.usage.prompt_tokens,
                        output_tokens = a.report.usage.output_tokens,
                        thinking_tokens = a.report.usage.thinking_tokens,
                        "analysis done"
                    );
                    AnalysisOutcome::Ok {
                        analysis: Box::new(a.analysis),
                        report: a.report,
                    }
                }
                Err(e) => AnalysisOutcome::Failed(StoredError {
                    code: e.code,
                    message: e.message,
                }),
            }
        }
    };

    if let Some(dest) = opts.keep_audio.clone() {
        // Last, so a failed job leaves no audio behind.
        // Copied by content: the temp file's owner-only mode would stick with `fs::copy`.
        blocking(move || {
            let mut from = std::fs::File::open(&pcm)
                .map_err(|e| Error::io(format!("cannot read {}", pcm.display()), e))?;
            std::fs::File::create(&dest)
                .and_then(|mut to| std::io::copy(&mut from, &mut to))
                .map(drop)
                .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))
        })
        .await?;
    }

    Ok(JobResult {
        session_id: job.session_id.clone(),
        source: manifest.source.clone(),
        duration_s,
        language: job.language.clone(),
        speech: manifest.speech.clone(),
        waveform,
        turns: diarization.turns,
        transcript,
        speakers_found: diarization.speakers_found,
        metrics,
        analysis,
        versions: Versions {
            worker: env!("CARGO_PKG_VERSION").to_string(),
            libopus: manifest.producer.libopus.clone(),
            transcriber: ports.transcriber.name(),
            diarizer: diarization.method,
            analyzer: ports.analyzer.as_ref().map(|a| a.name()),
        },
    })
}

/// Cuts the turns into single-speaker pieces and writes each as a WAV file.
async fn write_pieces(
    timeline: &SpeakerTimeline,
    turns: &[TurnSpan],
    pcm: &Path,
    opts: &PieceOptions,
    work: &Path,
) -> Result<Vec<ChunkAudio>> {
    let plan = pieces::plan_pieces(turns, &timeline.frame_db, opts);
    let (pcm, dir) = (pcm.to_path_buf(), work.join("pieces"));
    blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create the pieces directory", e))?;
        pieces::write_pieces(&pcm, &plan, &dir)
    })
    .await
}

/// Runs CPU work on tokio's blocking pool; a panic there becomes an error, not a dead worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let what = if e.is_panic() {
            crate::error::panic_message(e.into_panic().as_ref())
        } else {
            "cancelled".into()
        };
        Error::new(
            ErrorCode::Internal,
            format!("a processing stage crashed: {what}"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_their_wire_names() {
        for stage in [
            Stage::Queued,
            Stage::Downloading,
            Stage::Preprocessing,
            Stage::Transcribing,
            Stage::Diarization,
            Stage::Analyzing,
            Stage::Saving,
            Stage::Completed,
            Stage::Error,
        ] {
            assert_eq!(serde_json::json!(stage), stage.as_str());
        }
    }

    #[test]
    fn progress_follows_the_documented_stages() {
        assert_eq!(Progress::at(Stage::Downloading).percent, 10);
        assert_eq!(Progress::at(Stage::Diarization).message, "話者を識別中...");
        assert_eq!(Progress::transcribing(0, 4).percent, 40);
        assert_eq!(Progress::transcribing(2, 4).percent, 50);
        assert_eq!(Progress::transcribing(4, 4).percent, 59);
        let e = Progress::error(&Error::new(
            ErrorCode::AudioNoSpeech,
            "no speech in s3://b/k",
        ));
        assert_eq!(
            e.message,
            "エラーが発生しました: 録音から話し声を検出できませんでした (AUDIO_NO_SPEECH)"
        );
    }

    /// The outcome is published as the four flat fields it always was; a row whose fields
    /// contradict each other (failed without an error, ok without an analysis) is refused.
    #[test]
    fn the_analysis_outcome_keeps_its_published_fields() {
        let failed = AnalysisOutcome::Failed(StoredError {
            code: ErrorCode::GeminiFailed,
            message: "quota".into(),
        });
        let v = serde_json::to_value(AnalysisFields::from(failed.clone())).unwrap();
        assert_eq!(v["analysis_status"], "failed");
        assert_eq!(v["analysis"], serde_json::Value::Null);
        assert_eq!(v["analysis_error"]["code"], "GEMINI_FAILED");
        assert_eq!(v["analysis_report"], serde_json::Value::Null);
        let back: AnalysisFields = serde_json::from_value(v).unwrap();
        assert_eq!(AnalysisOutcome::try_from(back).unwrap(), failed);

        let skipped = serde_json::to_value(AnalysisFields::from(AnalysisOutcome::Skipped)).unwrap();
        assert_eq!(
            skipped,
            serde_json::json!({"analysis": null, "analysis_status": "skipped", "analysis_report": null})
        );
        for contradiction in [
            serde_json::json!({"analysis": null, "analysis_status": "failed"}),
            serde_json::json!({"analysis": null, "analysis_status": "ok", "analysis_report": null}),
            serde_json::json!({"analysis": null, "analysis_status": "skipped",
                "analysis_error": {"code": "GEMINI_FAILED", "message": "x"}}),
        ] {
            let fields: AnalysisFields = serde_json::from_value(contradiction.clone()).unwrap();
            assert!(
                AnalysisOutcome::try_from(fields).is_err(),
                "{contradiction}"
            );
        }
    }
}
