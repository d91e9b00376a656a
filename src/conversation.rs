//! The shared vocabulary of the stages after `prepare`: transcript segments and speaker turns.
//!
//! Every time is in seconds on the ORIGINAL recording's timeline (ARCHITECTURE.md): a chunk's
//! transcript is shifted by the chunk's start before anything else sees it.

use serde::{Deserialize, Serialize};

/// One stretch of recognised text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    /// Whisper's probability that the stretch holds no speech (hallucination guard), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_speech_prob: Option<f32>,
    /// Whisper's average token log-probability, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_logprob: Option<f32>,
    /// A speaker label from the transcription model itself (diarising models only), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_label: Option<String>,
}

/// The whole recording's transcript, in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub language: String,
    pub segments: Vec<Segment>,
    /// Which model (or sidecar file) produced it.
    pub source: String,
}

/// Who speaks in a coaching session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Coach,
    Client,
    /// The evidence was too weak to say.
    Unknown,
}

/// One speaker's continuous stretch of talk, with the text said in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub start_s: f64,
    pub end_s: f64,
    pub speaker: Speaker,
    pub text: String,
    /// How sure the diariser is of `speaker`, 0..=1.
    pub confidence: f32,
}

impl Turn {
    pub fn duration_s(&self) -> f64 {
        (self.end_s - self.start_s).max(0.0)
    }
}
