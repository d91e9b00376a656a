//! A transcriber that reads a Whisper `verbose_json` file of the whole recording, so recordings
//! replay offline with the same pipeline. Each chunk gets the segments that start inside it, with
//! times made relative to the chunk, exactly as the API would have answered.

use std::path::{Path, PathBuf};

use super::whisper_json::{self, ChunkText};
use super::{ChunkRequest, Transcriber};
use crate::BoxFuture;
use crate::error::{Error, ErrorCode, Result};

pub struct SidecarTranscriber {
    path: PathBuf,
    whole: ChunkText,
}

impl SidecarTranscriber {
    pub fn open(path: &Path) -> Result<SidecarTranscriber> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorCode::WhisperFailed,
                format!("cannot read the transcript file {}: {e}", path.display()),
            )
        })?;
        let whole = whisper_json::parse(&bytes).map_err(|e| {
            Error::new(ErrorCode::WhisperFailed, format!("{}: {e}", path.display()))
        })?;
        if whole.segments.is_empty() {
            return Err(Error::new(
                ErrorCode::WhisperFailed,
                format!(
                    "{} has no segments with times (verbose_json is needed)",
                    path.display()
                ),
            ));
        }
        Ok(SidecarTranscriber {
            path: path.to_path_buf(),
            whole,
        })
    }

    /// `<input stem>.transcript.json` beside the input, the default sidecar.
    pub fn default_path(input: &Path) -> PathBuf {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        input.with_file_name(format!("{stem}.transcript.json"))
    }
}

impl Transcriber for SidecarTranscriber {
    fn name(&self) -> String {
        format!(
            "sidecar:{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        )
    }

    fn gives_timestamps(&self) -> bool {
        true
    }

    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>> {
        let (start, end) = (req.audio.start_s, req.audio.end_s);
        let segments: Vec<_> = self
            .whole
            .segments
            .iter()
            .filter(|s| s.start_s >= start && s.start_s < end)
            .map(|s| crate::conversation::Segment {
                start_s: s.start_s - start,
                end_s: s.end_s - start,
                ..s.clone()
            })
            .collect();
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Box::pin(async move {
            Ok(ChunkText {
                text,
                segments,
                language: self.whole.language.clone(),
            })
        })
    }
}
