//! The progress the browser shows: stage, percent, a Japanese message, and the error code once a
//! job fails. The stage names, order, percentages and messages are a contract with the web app
//! (ARCHITECTURE.md "Contracts"), written to the job row and pushed by Supabase Realtime.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};

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
}
