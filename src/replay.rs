//! `audio-worker replay`: the pipeline with local adapters, for developers.
//!
//! Audio comes from a local file, the transcript from a sidecar `verbose_json` file (or OpenAI
//! when a key is set), the analysis from Gemini when a key is set, and progress goes to the
//! terminal: a progress bar on a TTY, plain lines otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::analysis::gemini::{GeminiAnalyzer, GeminiConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::{
    self, AnalysisStatus, AudioSource, JobResult, PipelineJob, PipelineOptions, Ports, Progress,
    ProgressSink,
};
use crate::transcribe::Transcriber;
use crate::transcribe::openai::{OpenAiConfig, OpenAiTranscriber};
use crate::transcribe::sidecar::SidecarTranscriber;

/// A recording on the local disk, used in place.
pub struct LocalFile(pub PathBuf);

impl AudioSource for LocalFile {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }

    fn fetch<'a>(&'a self, _dir: &'a Path) -> BoxFuture<'a, Result<PathBuf>> {
        Box::pin(async move {
            if self.0.is_file() {
                Ok(self.0.clone())
            } else {
                Err(Error::new(
                    ErrorCode::StorageNotFound,
                    format!("{} does not exist", self.0.display()),
                ))
            }
        })
    }
}

/// Progress on the terminal (stderr, so stdout stays for the summary).
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
    last_stage: Mutex<Option<crate::pipeline::Stage>>,
}

impl TerminalProgress {
    pub fn new() -> TerminalProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(100);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        TerminalProgress {
            bar,
            last_stage: Mutex::new(None),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for TerminalProgress {
    fn report<'a>(&'a self, p: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match &self.bar {
                Some(bar) => {
                    bar.set_position(u64::from(p.percent));
                    bar.set_message(p.message.clone());
                }
                None => {
                    // Plain lines: one per stage, plus each transcription step.
                    let mut last = self.last_stage.lock().expect("not poisoned");
                    if *last != Some(p.stage) || p.stage == crate::pipeline::Stage::Transcribing {
                        eprintln!("[{:>3}%] {}", p.percent, p.message);
                        *last = Some(p.stage);
                    }
                }
            }
            Ok(())
        })
    }
}

/// The transcriber replay uses: an explicit `--transcript`, else `<stem>.transcript.json` beside
/// the input, else OpenAI if `OPENAI_API_KEY` is set; otherwise a clear error naming both ways.
pub fn choose_transcriber(input: &Path, transcript: Option<&Path>) -> Result<Arc<dyn Transcriber>> {
    if let Some(path) = transcript {
        return Ok(Arc::new(SidecarTranscriber::open(path)?));
    }
    let sidecar = SidecarTranscriber::default_path(input);
    if sidecar.is_file() {
        return Ok(Arc::new(SidecarTranscriber::open(&sidecar)?));
    }
    match OpenAiConfig::from_env()? {
        Some(config) => Ok(Arc::new(OpenAiTranscriber::new(config)?)),
        None => Err(Error::new(
            ErrorCode::ConfigMissing,
            format!(
                "no way to transcribe: set OPENAI_API_KEY, or give a Whisper verbose_json transcript \
                 with --transcript FILE (or put it at {})",
                sidecar.display()
            ),
        )),
    }
}

/// What `audio-worker replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub input: PathBuf,
    pub transcript: Option<PathBuf>,
    pub out: PathBuf,
    pub report: Option<PathBuf>,
    pub language: String,
    pub no_analysis: bool,
    pub session_id: String,
}

/// Runs the pipeline on a local file, writes the result (and report), prints a summary.
/// A failed analysis is written into the result and then reported as the command's error.
pub async fn run(args: ReplayArgs) -> Result<()> {
    let transcriber = choose_transcriber(&args.input, args.transcript.as_deref())?;
    let analyzer: Option<Arc<dyn Analyzer>> = match (args.no_analysis, GeminiConfig::from_env()) {
        (false, Some(config)) => Some(Arc::new(GeminiAnalyzer::new(config)?)),
        _ => None,
    };
    let progress = Arc::new(TerminalProgress::new());
    let ports = Ports {
        source: Arc::new(LocalFile(args.input.clone())),
        transcriber,
        analyzer,
        progress: progress.clone(),
    };
    let job = PipelineJob {
        session_id: args.session_id.clone(),
        language: args.language.clone(),
        keywords: Vec::new(),
    };
    let options = PipelineOptions {
        // The report's player plays the 16 kHz audio the stages used, kept beside the report.
        keep_audio: args.report.as_deref().map(crate::report::audio_beside),
        ..PipelineOptions::default()
    };
    let result = pipeline::run(&job, &ports, &options).await;
    progress.finish();
    let result = result?;

    write_file(
        &args.out,
        &serde_json::to_vec_pretty(&result)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?,
    )?;
    if let Some(report) = &args.report {
        let page = crate::report::Page::beside(report, &args.input);
        write_file(
            report,
            crate::report::html::render(&result, &page).as_bytes(),
        )?;
    }
    print!("{}", summary(&result, &args));
    match (&result.analysis_status, &result.analysis_error) {
        (AnalysisStatus::Failed, Some(e)) => Err(Error::new(
            e.code,
            format!("the analysis failed: {}", e.message),
        )),
        _ => Ok(()),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// The short table printed after a replay.
pub fn summary(r: &JobResult, args: &ReplayArgs) -> String {
    let m = &r.metrics;
    let mut s = String::new();
    s.push_str(&format!("{:<18} {}\n", "recording", args.input.display()));
    s.push_str(&format!(
        "{:<18} {:.1} s ({}/{})\n",
        "duration", r.duration_s, r.source.container, r.source.codec
    ));
    s.push_str(&format!(
        "{:<18} {} segments ({})\n",
        "transcript",
        r.transcript.segments.len(),
        r.versions.transcriber
    ));
    s.push_str(&format!(
        "{:<18} {} turns, {} speaker(s) found\n",
        "diarisation",
        r.turns.len(),
        r.speakers_found
    ));
    s.push_str(&format!(
        "{:<18} coach {:.0} %, client {:.0} %, unknown {:.0} %\n",
        "share of talk",
        m.speakers.coach.speaking_ratio * 100.0,
        m.speakers.client.speaking_ratio * 100.0,
        m.speakers.unknown.speaking_ratio * 100.0
    ));
    s.push_str(&format!(
        "{:<18} coach {}, client {}\n",
        "questions", m.speakers.coach.questions, m.speakers.client.questions
    ));
    let analysis = match (&r.analysis_status, &r.analysis_error) {
        (AnalysisStatus::Ok, _) => {
            format!("ok ({})", r.versions.analyzer.clone().unwrap_or_default())
        }
        (AnalysisStatus::Skipped, _) => "skipped (set GOOGLE_API_KEY to analyse)".into(),
        (AnalysisStatus::Failed, Some(e)) => format!("FAILED: {} ({})", e.message, e.code),
        (AnalysisStatus::Failed, None) => "FAILED".into(),
    };
    s.push_str(&format!("{:<18} {}\n", "analysis", analysis));
    s.push_str(&format!("{:<18} {}\n", "result", args.out.display()));
    if let Some(report) = &args.report {
        s.push_str(&format!("{:<18} {}\n", "report", report.display()));
    }
    s
}
