//! `manifest.json`: what `prepare` made of a recording. Its shape is published as
//! `schemas/manifest.schema.json`; every time is in seconds on the original recording's timeline.

use super::chunk::ChunkFile;
use super::decode::SourceInfo;

/// Bumped whenever a field changes meaning or disappears.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub source: SourceInfo,
    pub output: OutputInfo,
    /// Speech regions `[start_s, end_s]`.
    pub speech: Vec<[f64; 2]>,
    pub chunks: Vec<ChunkFile>,
    pub decode: DecodeInfo,
    /// The whole normalised recording (`--pcm`), if written.
    pub pcm_file: Option<String>,
    pub producer: Producer,
}

/// The 16 kHz mono recording the chunks are cut from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutputInfo {
    pub sample_rate: u32,
    pub channels: u32,
    pub samples: u64,
    pub duration_s: f64,
    /// Gain applied to reach the speech level target (negative turns it down).
    pub gain_db: f32,
    /// Speech level before the gain, power-averaged over speech frames.
    pub speech_level_dbfs: f32,
    /// Peak after the gain.
    pub peak_dbfs: f32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecodeInfo {
    pub packets: u64,
    pub corrupt_packets: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
    pub libopus: String,
}
