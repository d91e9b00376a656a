//! Human-readable views of a job result: the self-contained HTML replay report.

use std::path::{Path, PathBuf};

pub mod html;

/// What the page shows beyond the result: the result JSON neither names the recording nor knows
/// where a playable copy of its audio lies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The recording's file name, for the title.
    pub recording: Option<String>,
    /// The audio's URL relative to the report (percent-encoded), for the player.
    pub audio_url: Option<String>,
}

impl Page {
    /// The page for a report written to `report` about the recording `input`, with its audio at
    /// [`audio_beside`]`(report)`.
    pub fn beside(report: &Path, input: &Path) -> Page {
        Page {
            recording: file_name(input),
            audio_url: file_name(&audio_beside(report)).map(|name| url_segment(&name)),
        }
    }
}

/// Where replay keeps the 16 kHz WAV the report plays: beside the report, so the pair can be
/// moved or zipped together and the page refers to it by a relative URL (`report.audio.wav`).
pub fn audio_beside(report: &Path) -> PathBuf {
    report.with_extension("audio.wav")
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Percent-encodes one path segment, so a file name with `#`, `?`, `%` or spaces stays one
/// relative URL.
fn url_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audio_lies_beside_the_report_under_a_relative_encoded_url() {
        let page = Page::beside(
            Path::new("/tmp/out/my report#1.html"),
            Path::new("/data/talk ä.flac"),
        );
        assert_eq!(page.recording.as_deref(), Some("talk ä.flac"));
        assert_eq!(page.audio_url.as_deref(), Some("my%20report%231.audio.wav"));
        assert_eq!(
            audio_beside(Path::new("demo/report.html")),
            Path::new("demo/report.audio.wav")
        );
        assert_eq!(
            audio_beside(Path::new("report")),
            Path::new("report.audio.wav")
        );
    }
}
