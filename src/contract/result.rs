//! The job's result, published as `schemas/result.schema.json` and stored in
//! `audio_analysis_results`: the timeline, turns, metrics and the analysis outcome.

use serde::{Deserialize, Serialize};

use crate::analysis::metrics::ConversationMetrics;
use crate::analysis::{AnalysisReport, CoachingAnalysis};
use crate::audio::decode::SourceInfo;
use crate::conversation::{Transcript, Turn};
use crate::error::ErrorCode;

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

#[cfg(test)]
mod tests {
    use super::*;

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
