//! `audio-worker replay`: the pipeline with local adapters, for developers.
//!
//! Audio comes from a local file, the transcript from a sidecar `verbose_json` file (or OpenAI
//! when a key is set), the analysis from Gemini when a key is set, and progress goes to the
//! terminal: a progress bar on a TTY, plain lines otherwise. The terminal speaks the user's
//! language (`LC_ALL`/`LC_MESSAGES`/`LANG`: Japanese for `ja*`, else English); the Japanese
//! messages of the stages are the browser's (Supabase rows) and stay as they are.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use crate::BoxFuture;
use crate::analysis::Analyzer;
use crate::analysis::gemini::{GeminiAnalyzer, GeminiConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::pipeline::{
    self, AnalysisOutcome, AudioSource, JobResult, PipelineJob, PipelineOptions, Ports, Progress,
    ProgressSink, Stage,
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

/// The language of the terminal's progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalLanguage {
    English,
    Japanese,
}

impl TerminalLanguage {
    /// From the locale variables in POSIX order (the first one set wins): Japanese for `ja*`.
    pub fn from_env() -> TerminalLanguage {
        let locale = ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|l| !l.is_empty()))
            .unwrap_or_default();
        if locale.starts_with("ja") {
            TerminalLanguage::Japanese
        } else {
            TerminalLanguage::English
        }
    }
}

/// What a stage is called on replay's terminal: the local file is read, not downloaded, and a
/// skipped analysis says so instead of claiming to analyse. `None` for the error report, which
/// the command prints once itself as `error[CODE]: …`.
pub fn terminal_message(
    stage: Stage,
    lang: TerminalLanguage,
    analysis: bool,
) -> Option<&'static str> {
    use TerminalLanguage::{English as En, Japanese as Ja};
    Some(match (stage, lang) {
        (Stage::Error, _) => return None,
        (Stage::Queued, En) => "Waiting...",
        (Stage::Queued, Ja) => "待機中...",
        (Stage::Downloading, En) => "Reading the recording...",
        (Stage::Downloading, Ja) => "音声ファイルを読み込み中...",
        (Stage::Preprocessing, En) => "Decoding and preparing the audio...",
        (Stage::Preprocessing, Ja) => "音声ファイルを前処理中...",
        (Stage::Transcribing, En) => "Transcribing...",
        (Stage::Transcribing, Ja) => "音声を文字に変換中...",
        (Stage::Diarization, En) => "Telling the speakers apart...",
        (Stage::Diarization, Ja) => "話者を識別中...",
        (Stage::Analyzing, En) if analysis => "Analysing the conversation (Gemini)...",
        (Stage::Analyzing, Ja) if analysis => "AIが会話を分析中...",
        (Stage::Analyzing, En) => "Skipping the analysis (no GOOGLE_API_KEY, or --no-analysis)",
        (Stage::Analyzing, Ja) => "分析は行いません (GOOGLE_API_KEY なし、または --no-analysis)",
        (Stage::Saving, En) => "Writing the result...",
        (Stage::Saving, Ja) => "結果を保存中...",
        (Stage::Completed, En) => "Done.",
        (Stage::Completed, Ja) => "完了",
    })
}

/// Progress on the terminal (stderr, so stdout stays for the summary).
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
    last_stage: Mutex<Option<Stage>>,
    language: TerminalLanguage,
    analysis: bool,
}

impl TerminalProgress {
    /// Progress in `language`; `analysis`: whether an analyzer will run.
    pub fn new(language: TerminalLanguage, analysis: bool) -> TerminalProgress {
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
            language,
            analysis,
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl ProgressSink for TerminalProgress {
    fn report<'a>(&'a self, p: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(message) = terminal_message(p.stage, self.language, self.analysis) else {
                return Ok(());
            };
            match &self.bar {
                Some(bar) => {
                    bar.set_position(u64::from(p.percent));
                    bar.set_message(message);
                }
                None => {
                    // Plain lines: one per stage, plus each transcription step.
                    let mut last = self.last_stage.lock().expect("not poisoned");
                    if *last != Some(p.stage) || p.stage == Stage::Transcribing {
                        eprintln!("[{:>3}%] {message}", p.percent);
                        *last = Some(p.stage);
                    }
                }
            }
            Ok(())
        })
    }
}

/// Where replay's words come from, and the language the transcript names (if it does).
pub struct ChosenTranscriber {
    pub transcriber: Arc<dyn Transcriber>,
    /// ISO-639-1, from a transcript file's `language` ("english" → "en").
    pub language: Option<String>,
}

/// A transcript file the user pointed at. A file that is not `verbose_json` is the user's to
/// fix, not a Whisper outage to retry later: CONFIG_MISSING (exit 1), naming the file.
fn open_sidecar(path: &Path) -> Result<ChosenTranscriber> {
    let sidecar = SidecarTranscriber::open(path).map_err(|e| Error {
        code: ErrorCode::ConfigMissing,
        message: format!("the transcript is not usable: {}", e.message),
    })?;
    Ok(ChosenTranscriber {
        language: sidecar
            .language()
            .and_then(crate::transcribe::language::iso_639_1),
        transcriber: Arc::new(sidecar),
    })
}

/// The transcriber replay uses: an explicit `--transcript`, else `<stem>.transcript.json` beside
/// the input, else OpenAI if `OPENAI_API_KEY` is set; otherwise a clear error naming both ways.
pub fn choose_transcriber(input: &Path, transcript: Option<&Path>) -> Result<ChosenTranscriber> {
    if let Some(path) = transcript {
        return open_sidecar(path);
    }
    let sidecar = SidecarTranscriber::default_path(input);
    if sidecar.is_file() {
        return open_sidecar(&sidecar);
    }
    match OpenAiConfig::from_env()? {
        Some(config) => Ok(ChosenTranscriber {
            transcriber: Arc::new(OpenAiTranscriber::new(config)?),
            language: None,
        }),
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
    /// `None`: the transcript's language, else the one the transcriber detects.
    pub language: Option<String>,
    pub no_analysis: bool,
    pub session_id: String,
}

/// Runs the pipeline on a local file, writes the result (and report), prints a summary.
/// A failed analysis is written into the result and then reported as the command's error.
pub async fn run(args: ReplayArgs) -> Result<()> {
    let ChosenTranscriber {
        transcriber,
        language: heard,
    } = choose_transcriber(&args.input, args.transcript.as_deref())?;
    let language = args.language.clone().or(heard);
    let analyzer: Option<Arc<dyn Analyzer>> = match (args.no_analysis, GeminiConfig::from_env()) {
        (false, Some(config)) => Some(Arc::new(GeminiAnalyzer::new(config)?)),
        _ => None,
    };
    let progress = Arc::new(TerminalProgress::new(
        TerminalLanguage::from_env(),
        analyzer.is_some(),
    ));
    let ports = Ports {
        source: Arc::new(LocalFile(args.input.clone())),
        transcriber,
        analyzer,
        progress: progress.clone(),
    };
    let job = PipelineJob {
        session_id: args.session_id.clone(),
        language,
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
    match &result.analysis {
        AnalysisOutcome::Failed(e) => Err(Error::new(
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
    let analysis = match &r.analysis {
        AnalysisOutcome::Ok { .. } => {
            format!("ok ({})", r.versions.analyzer.clone().unwrap_or_default())
        }
        AnalysisOutcome::Skipped => "skipped (set GOOGLE_API_KEY to analyse)".into(),
        AnalysisOutcome::Failed(e) => format!("FAILED: {} ({})", e.message, e.code),
    };
    s.push_str(&format!("{:<18} {}\n", "analysis", analysis));
    s.push_str(&format!("{:<18} {}\n", "result", args.out.display()));
    if let Some(report) = &args.report {
        s.push_str(&format!("{:<18} {}\n", "report", report.display()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use TerminalLanguage::{English, Japanese};

    /// The terminal says what replay does (a local file is read, a skipped analysis is skipped)
    /// in the user's language; the browser's Japanese messages are untouched.
    #[test]
    fn the_terminal_speaks_its_language_and_says_what_happens() {
        let en = |s| terminal_message(s, English, false).unwrap();
        assert_eq!(en(Stage::Downloading), "Reading the recording...");
        assert!(en(Stage::Analyzing).starts_with("Skipping the analysis"));
        assert_eq!(
            terminal_message(Stage::Downloading, Japanese, false),
            Some("音声ファイルを読み込み中...")
        );
        assert_eq!(
            terminal_message(Stage::Analyzing, Japanese, true),
            Some(Stage::Analyzing.message())
        );
        assert_eq!(terminal_message(Stage::Error, English, true), None);
        assert_eq!(
            Stage::Downloading.message(),
            "音声ファイルをダウンロード中..."
        );
    }
}
