//! Speech to text: the [`Transcriber`] port, its adapters (OpenAI, sidecar file), the
//! single-speaker pieces every model is sent, and the merge of their text onto the original
//! timeline.

pub mod language;
pub mod merge;
pub mod openai;
pub mod pieces;
pub mod rate_gate;
pub mod sidecar;
pub mod whisper_json;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::BoxFuture;
use crate::conversation::Transcript;
use crate::error::{Error, ErrorCode, Result};
use merge::ChunkResult;
use whisper_json::ChunkText;

/// An audio file to transcribe and where it lies on the recording's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkAudio {
    pub index: usize,
    pub path: PathBuf,
    pub start_s: f64,
    pub end_s: f64,
}

/// One transcription request.
#[derive(Debug, Clone)]
pub struct ChunkRequest<'a> {
    pub audio: &'a ChunkAudio,
    /// ISO-639-1; `None`: the model detects it.
    pub language: Option<&'a str>,
    /// The tail of the text just before this piece, for continuity, when it is known.
    pub prompt: Option<String>,
    /// The job's vocabulary (names, company terms), possibly empty.
    pub keywords: &'a [String],
}

/// What every piece of one job is transcribed with: its language and vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranscribeContext {
    /// `None` when nobody named it: the model detects it ([`language`]).
    pub language: Option<String>,
    pub keywords: Vec<String>,
}

impl From<&str> for TranscribeContext {
    /// A language and no vocabulary.
    fn from(language: &str) -> Self {
        TranscribeContext {
            language: Some(language.to_string()),
            keywords: Vec::new(),
        }
    }
}

/// Turns one chunk of audio into text (with times relative to the chunk, when the model gives
/// them). Implementations retry transient failures themselves.
pub trait Transcriber: Send + Sync {
    /// Model or adapter name, for the result's provenance.
    fn name(&self) -> String;
    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>>;
}

/// Characters of the previous piece's text sent as the prompt (Whisper reads up to 224 tokens).
pub const PROMPT_TAIL_CHARS: usize = 200;

/// Transcribes all pieces in `concurrency` lanes over consecutive stretches of the recording and
/// merges them onto the timeline. Within a lane pieces go one after the other, so every piece
/// but a lane's first is sent with the text just before it as its prompt (context without making
/// a long session sequential). `on_done(done, total)` is called as pieces finish. The first
/// failure stops the rest.
pub async fn transcribe_all(
    transcriber: Arc<dyn Transcriber>,
    pieces: Vec<ChunkAudio>,
    context: impl Into<TranscribeContext>,
    concurrency: usize,
    speech: &[[f64; 2]],
    mut on_done: impl FnMut(usize, usize),
) -> Result<Transcript> {
    let context = Arc::new(context.into());
    let total = pieces.len();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<ChunkResult>>();
    let mut tasks = JoinSet::new();
    for lane in lanes(pieces, concurrency) {
        let (transcriber, done_tx, context) = (
            Arc::clone(&transcriber),
            done_tx.clone(),
            Arc::clone(&context),
        );
        tasks.spawn(async move {
            let mut previous: Option<String> = None;
            for audio in lane {
                let prompt = previous
                    .as_deref()
                    .map(|t| tail(t, PROMPT_TAIL_CHARS))
                    .filter(|t| !t.trim().is_empty());
                let result = transcriber
                    .transcribe(ChunkRequest {
                        audio: &audio,
                        language: context.language.as_deref(),
                        prompt,
                        keywords: &context.keywords,
                    })
                    .await
                    .map(|text| ChunkResult {
                        start_s: audio.start_s,
                        end_s: audio.end_s,
                        text,
                    });
                if let Ok(r) = &result {
                    previous = Some(r.text.text.clone());
                }
                let failed = result.is_err();
                if done_tx.send(result).is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(done_tx);
    let mut results = Vec::with_capacity(total);
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok(r) => {
                results.push(r);
                on_done(results.len(), total);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    // Every sender is gone: all tasks ended. One that ended without sending a result panicked.
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("a transcription task failed: {e}"),
            ));
        }
    }
    if results.len() != total {
        return Err(Error::new(
            ErrorCode::Internal,
            format!("only {} of {total} pieces were transcribed", results.len()),
        ));
    }
    Ok(merge::merge(
        results,
        speech,
        context.language.as_deref(),
        &transcriber.name(),
    ))
}

/// Pieces a lane holds at least before another lane opens: a lane's first piece goes without
/// context, so a short session split four ways would send nearly every piece blind (4 pieces in
/// 4 lanes: none with context; in one lane: 3 of 4), for a wait of a few requests.
const MIN_PIECES_PER_LANE: usize = 4;

/// Splits time-ordered pieces into at most `n` lanes of consecutive pieces, as even as can be,
/// with at least [`MIN_PIECES_PER_LANE`] pieces in each when there are that many.
fn lanes(pieces: Vec<ChunkAudio>, n: usize) -> Vec<Vec<ChunkAudio>> {
    let total = pieces.len();
    let n = n.max(1).min(total.div_ceil(MIN_PIECES_PER_LANE).max(1));
    let mut out: Vec<Vec<ChunkAudio>> = (0..n).map(|_| Vec::new()).collect();
    for (i, p) in pieces.into_iter().enumerate() {
        out[i * n / total.max(1)].push(p);
    }
    out.retain(|l| !l.is_empty());
    out
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(index: usize) -> ChunkAudio {
        ChunkAudio {
            index,
            path: PathBuf::from(format!("piece-{index}.wav")),
            start_s: index as f64,
            end_s: index as f64 + 1.0,
        }
    }

    #[test]
    fn lanes_are_consecutive_and_even() {
        let l = lanes((0..10).map(piece).collect(), 4);
        let idx: Vec<Vec<usize>> = l
            .iter()
            .map(|l| l.iter().map(|p| p.index).collect())
            .collect();
        assert_eq!(idx, vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);
        let l = lanes((0..20).map(piece).collect(), 4);
        assert_eq!(l.iter().map(Vec::len).collect::<Vec<_>>(), vec![5; 4]);
        assert_eq!(lanes((0..4).map(piece).collect(), 8).len(), 1);
        assert_eq!(lanes((0..5).map(piece).collect(), 8).len(), 2);
        assert!(lanes(Vec::new(), 4).is_empty());
    }
}
