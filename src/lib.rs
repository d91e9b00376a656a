//! audio-worker: turns recorded coaching sessions into diarised transcripts and a coaching
//! analysis. This crate is the library; `src/main.rs` and `src/cli/` are a thin command line
//! over it.
//!
//! The modules, in the order the data flows (ARCHITECTURE.md "Layout"):
//! - `contract`: the wire formats other programs depend on: job, progress, result.
//! - `pipeline`: one job start to finish, the same for the daemon and `replay`.
//! - `audio`: decode, resample, levels, speech map, chunks.
//! - `speakers` (encoders) and `diarize`: who speaks when, from the audio alone.
//! - `transcribe`: single-speaker pieces to text (OpenAI, a sidecar file).
//! - `conversation`, `analysis`: turns, roles, metrics, the Gemini analysis.
//! - `daemon`: the worker loop and its delivery policy, Redis, S3, Supabase, the HTTP servers.
//! - `replay`, `report`: the offline entry point and its HTML report.
//! - `config`, `error`, `retry`, `telemetry`, `usage`, `memory`: shared support.

pub mod analysis;
pub mod audio;
pub mod config;
pub mod contract;
pub mod conversation;
pub mod daemon;
pub mod diarize;
pub mod error;
pub mod memory;
pub mod pipeline;
pub mod replay;
pub mod report;
pub mod retry;
pub mod speakers;
pub mod telemetry;
pub mod transcribe;
pub mod usage;

pub use contract::job;
pub use daemon::{queue, server, storage, supabase, worker};
pub use error::{Error, ErrorCode, Result};

/// A boxed, sendable future: what the pipeline's ports (transcriber, analyzer) return, so they
/// can be swapped behind `dyn` (OpenAI or a sidecar file, Gemini or nothing).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
