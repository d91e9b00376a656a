//! A transcription fake that knows only what was said where (a fixture's `<case>.truth.json`) and
//! hears only the audio it is sent: it finds the uploaded piece in the recording by its samples
//! and answers the words spoken inside it. So a piece that spans two speakers, a cut inside a
//! word, and text lost or doubled at piece edges all show up in the scores.
//!
//! Words get times by their share of characters within their utterance (one clause, synthesised
//! on its own); a word is heard when at least [`HEARD`] of it lies inside the piece.

use std::path::Path;
use std::sync::Mutex;

use audio_worker::BoxFuture;
use audio_worker::audio::{self, PrepareOptions};
use audio_worker::conversation::Segment;
use audio_worker::error::{Error, ErrorCode, Result};
use audio_worker::transcribe::whisper_json::ChunkText;
use audio_worker::transcribe::{ChunkRequest, Transcriber};

/// Share of a word that must lie inside a piece for the fake to hear it.
pub const HEARD: f64 = 0.75;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Utterance {
    pub start_s: f64,
    pub end_s: f64,
    pub speaker: String,
    pub text: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Truth {
    pub language: String,
    pub duration_s: f64,
    pub utterances: Vec<Utterance>,
}

/// One word with its estimated time and who said it.
#[derive(Debug, Clone)]
pub struct Word {
    pub start_s: f64,
    pub end_s: f64,
    pub speaker: String,
    pub text: String,
    /// Japanese/Chinese: joined without spaces.
    pub cjk: bool,
}

impl Truth {
    pub fn load(path: &Path) -> Truth {
        serde_json::from_slice(
            &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every word, in time order.
    pub fn words(&self) -> Vec<Word> {
        let mut out = Vec::new();
        for u in &self.utterances {
            let tokens = tokens(&u.text);
            let total: usize = tokens
                .iter()
                .map(|t| t.chars().count())
                .sum::<usize>()
                .max(1);
            let len = u.end_s - u.start_s;
            let mut acc = 0usize;
            for t in tokens {
                let n = t.chars().count();
                out.push(Word {
                    start_s: u.start_s + len * acc as f64 / total as f64,
                    end_s: u.start_s + len * (acc + n) as f64 / total as f64,
                    speaker: u.speaker.clone(),
                    cjk: t.chars().any(is_cjk),
                    text: t,
                });
                acc += n;
            }
        }
        out.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        out
    }
}

pub fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x9fff | 0xff01..=0xff60 | 0x3000..=0x303f)
}

/// Words (split at spaces) or, in text without spaces, characters with the punctuation that
/// follows them.
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split_whitespace() {
        if w.chars().any(is_cjk) {
            for c in w.chars() {
                let punct = matches!(
                    c,
                    '、' | '。' | '？' | '！' | '，' | '「' | '」' | '?' | '!' | ',' | '.'
                );
                match out.last_mut() {
                    Some(last) if punct => last.push(c),
                    _ => out.push(c.to_string()),
                }
            }
        } else {
            out.push(w.to_string());
        }
    }
    out
}

/// Joins words as a transcriber would write them.
pub fn join_words<'a>(words: impl Iterator<Item = &'a Word>) -> String {
    let mut s = String::new();
    let mut prev_cjk = false;
    for w in words {
        let joined = prev_cjk && w.cjk;
        if !s.is_empty() && !joined {
            s.push(' ');
        }
        s.push_str(&w.text);
        prev_cjk = w.cjk;
    }
    s
}

/// The words heard in `start..end`.
pub fn heard(words: &[Word], start: f64, end: f64) -> Vec<&Word> {
    words
        .iter()
        .filter(|w| {
            let inside = (w.end_s.min(end) - w.start_s.max(start)).max(0.0);
            inside >= HEARD * (w.end_s - w.start_s)
        })
        .collect()
}

/// The recording as the worker normalises it (16 kHz mono s16), to find pieces in.
pub struct Recording {
    pub samples: Vec<i16>,
}

impl Recording {
    pub fn prepare(input: &Path) -> Recording {
        let dir = tempfile::tempdir().unwrap();
        let opts = PrepareOptions {
            write_pcm: true,
            ..Default::default()
        };
        audio::prepare(input, dir.path(), &opts).unwrap();
        Recording {
            samples: read_wav(&dir.path().join(audio::PCM_FILE)),
        }
    }

    /// Where `piece` lies in the recording (start, end in seconds), by its samples.
    pub fn locate(&self, piece: &[i16]) -> Option<(f64, f64)> {
        const W: usize = 64;
        // the first stretch of the piece that is not silence anchors the search
        let anchor = (0..piece.len().saturating_sub(W)).step_by(W).find(|&k| {
            piece[k..k + W]
                .iter()
                .map(|&s| i64::from(s).abs())
                .sum::<i64>()
                > 64 * 50
        })?;
        let key = &piece[anchor..anchor + W];
        let rate = f64::from(audio::TARGET_RATE);
        (anchor..self.samples.len().saturating_sub(W))
            .map(|p| p - anchor)
            .find(|&start| {
                self.samples[start + anchor..start + anchor + W] == *key
                    && self.samples.get(start..start + piece.len()) == Some(piece)
            })
            .map(|start| (start as f64 / rate, (start + piece.len()) as f64 / rate))
    }
}

pub fn read_wav(path: &Path) -> Vec<i16> {
    hound::WavReader::open(path)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}

/// What one request looked like, for the context and cost measurements.
#[derive(Debug, Clone)]
pub struct Request {
    pub start_s: f64,
    pub end_s: f64,
    pub prompt: Option<String>,
}

/// The fake as a [`Transcriber`]: text only (like gpt-transcribe), or with segment times
/// relative to the piece (like whisper-1's `verbose_json`).
pub struct TruthTranscriber {
    recording: Recording,
    words: Vec<Word>,
    language: String,
    segments: bool,
    pub requests: Mutex<Vec<Request>>,
}

impl TruthTranscriber {
    pub fn new(input: &Path, truth: &Truth, segments: bool) -> TruthTranscriber {
        TruthTranscriber {
            recording: Recording::prepare(input),
            words: truth.words(),
            language: truth.language.clone(),
            segments,
            requests: Mutex::new(Vec::new()),
        }
    }

    fn answer(&self, path: &Path) -> Result<(f64, f64, ChunkText)> {
        let piece = read_wav(path);
        let (start, end) = self.recording.locate(&piece).ok_or_else(|| {
            Error::new(
                ErrorCode::WhisperFailed,
                "the fake could not find the piece in the recording",
            )
        })?;
        let words = heard(&self.words, start, end);
        let text = join_words(words.iter().copied());
        let segments = if self.segments {
            // one segment per run of words of one utterance speaker, times relative to the piece
            let mut segs: Vec<(f64, f64, Vec<&Word>)> = Vec::new();
            for w in words {
                match segs.last_mut() {
                    Some(s) if s.2[0].speaker == w.speaker && w.start_s - s.1 < 0.5 => {
                        s.1 = w.end_s;
                        s.2.push(w);
                    }
                    _ => segs.push((w.start_s, w.end_s, vec![w])),
                }
            }
            segs.into_iter()
                .map(|(a, b, ws)| Segment {
                    start_s: (a - start).max(0.0),
                    end_s: (b - start).min(end - start),
                    text: join_words(ws.into_iter()),
                    no_speech_prob: Some(0.01),
                    avg_logprob: Some(-0.2),
                    speaker_label: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok((
            start,
            end,
            ChunkText {
                text,
                segments,
                language: Some(self.language.clone()),
            },
        ))
    }
}

impl Transcriber for TruthTranscriber {
    fn name(&self) -> String {
        if self.segments {
            "truth-fake:verbose_json"
        } else {
            "truth-fake:text"
        }
        .into()
    }

    fn transcribe<'a>(&'a self, req: ChunkRequest<'a>) -> BoxFuture<'a, Result<ChunkText>> {
        Box::pin(async move {
            let (start_s, end_s, text) = self.answer(&req.audio.path)?;
            self.requests.lock().unwrap().push(Request {
                start_s,
                end_s,
                prompt: req.prompt.clone(),
            });
            Ok(text)
        })
    }
}
