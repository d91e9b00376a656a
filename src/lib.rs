//! audio-worker: turns recorded coaching sessions into diarised transcripts and a coaching
//! analysis. This crate is the library; `src/main.rs` is a thin command line over it.

pub mod audio;
pub mod error;

pub use error::{Error, ErrorCode, Result};
