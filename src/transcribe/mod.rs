//! Speech to text: the [`Transcriber`] port, its adapters (OpenAI, sidecar file), speech pieces for
//! models without timestamps, and the merge of chunk transcripts onto the original timeline.

pub mod merge;
pub mod openai;
pub mod pieces;
pub mod retry;
pub mod sidecar;
pub mod whisper_json;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    pub language: &'a str,
    /// The tail of the previous chunk's text, for continuity, when it is known.
    pub prompt: Option<String>,
}

/// Turns one chunk of audio into text (with times relative to the chunk, when the model gives
/// them). Implementations retry transient failures themselves.
pub trait Transcriber: Send + Sync {
    /// Model or adapter name, for the result's provenance.
    fn name(&self) -> String;
    /// Whether replies carry segment timestamps; without, the pipeline sends speech pieces.
    fn gives_timestamps(&self) -> bool;
    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>>;
}

/// Characters of the previous chunk's text sent as the prompt (Whisper reads up to 224 tokens).
pub const PROMPT_TAIL_CHARS: usize = 200;

/// Transcribes all chunks, at most `concurrency` at a time, and merges them onto the timeline.
/// `on_done(done, total)` is called as chunks finish. The first failure stops the rest.
pub async fn transcribe_all(
    transcriber: Arc<dyn Transcriber>,
    chunks: Vec<ChunkAudio>,
    language: &str,
    concurrency: usize,
    speech: &[[f64; 2]],
    mut on_done: impl FnMut(usize, usize),
) -> Result<Transcript> {
    let total = chunks.len();
    let texts: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; total]));
    // A pool of `concurrency` tasks taking chunks in index order: requests start in timeline
    // order (spawning one task per chunk would start them in whatever order the runtime polls
    // them), so each chunk most likely gets the previous chunk's text as its prompt.
    let next: Arc<Mutex<std::collections::VecDeque<ChunkAudio>>> =
        Arc::new(Mutex::new(chunks.into_iter().collect()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<ChunkResult>>();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1).min(total) {
        let (transcriber, texts, next, done_tx) = (
            Arc::clone(&transcriber),
            Arc::clone(&texts),
            Arc::clone(&next),
            done_tx.clone(),
        );
        let language = language.to_string();
        tasks.spawn(async move {
            loop {
                let Some(audio) = next.lock().expect("not poisoned").pop_front() else {
                    return;
                };
                // Decided when the request starts: the previous chunk's text if it is done by now.
                let prompt = audio
                    .index
                    .checked_sub(1)
                    .and_then(|prev| texts.lock().expect("not poisoned")[prev].clone())
                    .map(|t| tail(&t, PROMPT_TAIL_CHARS))
                    .filter(|t| !t.is_empty());
                let result = transcriber
                    .transcribe(ChunkRequest {
                        audio: &audio,
                        language: &language,
                        prompt,
                    })
                    .await
                    .map(|text| {
                        texts.lock().expect("not poisoned")[audio.index] = Some(text.text.clone());
                        ChunkResult {
                            start_s: audio.start_s,
                            end_s: audio.end_s,
                            text,
                        }
                    });
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
            format!("only {} of {total} chunks were transcribed", results.len()),
        ));
    }
    Ok(merge::merge(results, speech, language, &transcriber.name()))
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(n)).collect()
}
