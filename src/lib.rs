//! audio-worker: turns recorded coaching sessions into diarised transcripts and a coaching
//! analysis. This crate is the library; `src/main.rs` is a thin command line over it.

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
