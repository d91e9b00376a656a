//! One job, start to finish: fetch → prepare (decode, speech map, speaker timeline) → pieces →
//! transcribe → turns and roles → metrics → analysis.
//!
//! The daemon and `audio-worker replay` run this very function; they differ only in the ports
//! they plug in (ARCHITECTURE.md). No stage knows where its input came from or where its output
//! goes. CPU-heavy stages run on blocking threads, never on the async runtime. The job's temp
//! directory is removed on every path out, success, error or panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::contract::progress::{Progress, Stage};
pub use crate::contract::result::{
    AnalysisOutcome, AnalysisStatus, JobResult, StoredError, Versions, WAVEFORM_BUCKETS,
};

use crate::BoxFuture;
use crate::analysis::metrics;
use crate::analysis::{AnalysisInput, Analyzer};
use crate::audio::{self, PrepareOptions};
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
    /// ISO-639-1 language of the session ("ja"). `None` (replay when nobody named one): the
    /// transcriber detects it, and the result carries what it found.
    pub language: Option<String>,
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

    enter(ports, Stage::Downloading).await?;
    let input = ports.source.fetch(&work).await?;

    enter(ports, Stage::Preprocessing).await?;
    let prepared_dir = work.join("prepared");
    let mut prepare_opts = opts.prepare.clone();
    prepare_opts.write_pcm = true;
    let manifest = blocking({
        let (input, dir) = (input.clone(), prepared_dir.clone());
        move || audio::prepare(&input, &dir, &prepare_opts)
    })
    .await?;
    log_prepared(&manifest);
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
    let max_pause = opts.diarize.max_pause_in_turn_s;
    let turn_spans = diarize::turns::fold_backchannels(
        &diarize::turns::group_turns(&timeline.spans, max_pause),
        opts.pieces.min_speech_s,
        max_pause,
    );

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
        changes_refined = stats.changes_refined,
        tone_blocks = stats.tone_blocks,
        background_blocks = stats.background_blocks,
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
    // The job's language, or when it names none the one the transcriber found (`merge`).
    let language = transcript.language.clone();

    enter(ports, Stage::Diarization).await?;
    let diarization = diarize::turns::label_turns(&timeline, &turn_spans, &transcript);
    let duration_s = manifest.output.duration_s;
    let metrics = metrics::compute(&diarization.turns, duration_s);

    enter(ports, Stage::Analyzing).await?;
    let analysis = match &ports.analyzer {
        None => AnalysisOutcome::Skipped,
        Some(analyzer) => {
            let input = AnalysisInput {
                turns: &diarization.turns,
                metrics: &metrics,
                language: &language,
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
        language,
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

/// Logs and reports the start of a stage (the log is how a job's time reads between "claimed"
/// and "ended").
async fn enter(ports: &Ports, stage: Stage) -> Result<()> {
    tracing::info!(stage = stage.as_str(), "stage started");
    ports.progress.report(Progress::at(stage)).await
}

/// What decoding made of the recording; a damaged or cut-off one is a warning (kept, not refused:
/// what was there is transcribed).
fn log_prepared(manifest: &audio::manifest::Manifest) {
    let d = &manifest.decode;
    tracing::info!(
        container = %manifest.source.container,
        codec = %manifest.source.codec,
        duration_s = manifest.output.duration_s,
        packets = d.packets,
        speech_regions = manifest.speech.len(),
        gain_db = manifest.output.gain_db,
        "audio prepared"
    );
    if d.truncated || d.corrupt_packets > 0 {
        tracing::warn!(
            truncated = d.truncated,
            corrupt_packets = d.corrupt_packets,
            "the recording is damaged or cut off; decoded what was there"
        );
    }
}

/// Runs CPU work on tokio's blocking pool, inside the caller's span (so its logs keep the job's
/// fields); a panic there becomes an error, not a dead worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| {
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
