//! Diarisation against scripted dialogues with known turns (fixtures/dialogues, made by
//! fixtures/dialogues.sh): diarisation error rate (DER) of our diariser and of the original
//! design's loudness rule, role assignment, the one-speaker case and the split of merged lines.
//!
//! `cargo test --test diarize -- --nocapture` prints the table.

use std::path::{Path, PathBuf};

use audio_worker::audio::{self, PrepareOptions};
use audio_worker::conversation::{Segment, Speaker, Transcript, Turn};
use audio_worker::diarize::{self, Diarization, DiarizeOptions, DiarizeStats};

const CASES: [&str; 5] = ["clear", "similar", "quiet", "noise", "overlap"];
/// Scoring grid and forgiveness collar around each reference boundary (seconds).
const STEP: f64 = 0.01;
const COLLAR: f64 = 0.25;

fn dialogue(name: &str, ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/dialogues")
        .join(format!("{name}.{ext}"))
}

/// A speaker's stretch of speech: (start, end, speaker).
type Span = (f64, f64, String);

fn read_rttm(path: &Path) -> Vec<Span> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SPEAKER "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, dur): (f64, f64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
            (start, start + dur, f[7].to_string())
        })
        .collect()
}

/// The sidecar transcript (OpenAI Whisper verbose_json), parsed here on purpose: the test must
/// not depend on the transcriber's own parser.
fn read_transcript(path: &Path) -> Transcript {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Transcript {
        language: v["language"].as_str().unwrap_or("").to_string(),
        source: path.display().to_string(),
        segments: v["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Segment {
                start_s: s["start"].as_f64().unwrap(),
                end_s: s["end"].as_f64().unwrap(),
                text: s["text"].as_str().unwrap().trim().to_string(),
                no_speech_prob: s["no_speech_prob"].as_f64().map(|x| x as f32),
                avg_logprob: s["avg_logprob"].as_f64().map(|x| x as f32),
                speaker_label: None,
            })
            .collect(),
    }
}

/// One dialogue prepared like the pipeline does: normalised 16 kHz WAV and speech map.
struct Prepared {
    _dir: tempfile::TempDir,
    pcm: PathBuf,
    speech: Vec<[f64; 2]>,
    transcript: Transcript,
    reference: Vec<Span>,
}

fn prepare(name: &str) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let opts = PrepareOptions {
        write_pcm: true,
        ..Default::default()
    };
    let manifest = audio::prepare(&dialogue(name, "flac"), dir.path(), &opts).unwrap();
    Prepared {
        pcm: dir.path().join(audio::PCM_FILE),
        _dir: dir,
        speech: manifest.speech,
        transcript: read_transcript(&dialogue(name, "transcript.json")),
        reference: read_rttm(&dialogue(name, "rttm")),
    }
}

fn label(s: Speaker) -> String {
    match s {
        Speaker::Coach => "coach",
        Speaker::Client => "client",
        Speaker::Unknown => "unknown",
    }
    .to_string()
}

fn turns_to_spans(turns: &[Turn]) -> Vec<Span> {
    turns
        .iter()
        .map(|t| (t.start_s, t.end_s, label(t.speaker)))
        .collect()
}

/// DER and role accuracy of `hyp` against `reference`.
#[derive(Debug, Clone, Copy)]
struct Score {
    der: f64,
    missed: f64,
    false_alarm: f64,
    confusion: f64,
    /// Share of scored single-speaker reference time where the hypothesis names the same role
    /// (coach/client) as the reference, without any remapping.
    role_accuracy: f64,
}

fn speakers_at(spans: &[Span], t: f64) -> Vec<&str> {
    let mut v: Vec<&str> = spans
        .iter()
        .filter(|s| s.0 <= t && t < s.1)
        .map(|s| s.2.as_str())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Standard DER (md-eval style): (missed + false alarm + confusion) / reference speech, on a
/// 10 ms grid, overlapping speakers each counted, a 0.25 s collar around every reference
/// boundary not scored, and the hypothesis speakers mapped one-to-one onto the reference
/// speakers so as to maximise agreement (all mappings tried: there are at most 3 x 2).
fn der(reference: &[Span], hyp: &[Span]) -> Score {
    let end = reference
        .iter()
        .chain(hyp)
        .map(|s| s.1)
        .fold(0.0f64, f64::max);
    let boundaries: Vec<f64> = reference.iter().flat_map(|s| [s.0, s.1]).collect();
    let mut ref_names: Vec<&str> = reference.iter().map(|s| s.2.as_str()).collect();
    ref_names.sort();
    ref_names.dedup();
    let mut hyp_names: Vec<&str> = hyp.iter().map(|s| s.2.as_str()).collect();
    hyp_names.sort();
    hyp_names.dedup();
    // scored grid points: (reference speakers, hypothesis speakers)
    let mut points: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    let n = (end / STEP).ceil() as usize + 1;
    for i in 0..n {
        let t = (i as f64 + 0.5) * STEP;
        if boundaries.iter().any(|b| (t - b).abs() < COLLAR) {
            continue;
        }
        points.push((speakers_at(reference, t), speakers_at(hyp, t)));
    }
    // every injective mapping hyp name -> ref name or none
    let mut mappings: Vec<Vec<Option<&str>>> = vec![vec![]];
    for _ in &hyp_names {
        let mut next = Vec::new();
        for m in &mappings {
            for choice in ref_names.iter().map(|r| Some(*r)).chain([None]) {
                if choice.is_some() && m.contains(&choice) {
                    continue;
                }
                let mut m2 = m.clone();
                m2.push(choice);
                next.push(m2);
            }
        }
        mappings = next;
    }
    let mut best: Option<(usize, usize)> = None; // (correct, mapping index)
    for (mi, m) in mappings.iter().enumerate() {
        let correct: usize = points
            .iter()
            .map(|(r, h)| {
                h.iter()
                    .filter(|hn| {
                        let k = hyp_names.iter().position(|x| x == *hn).unwrap();
                        m[k].is_some_and(|rn| r.contains(&rn))
                    })
                    .count()
            })
            .sum();
        if best.is_none_or(|(c, _)| correct > c) {
            best = Some((correct, mi));
        }
    }
    let (correct, _) = best.unwrap_or((0, 0));
    let (mut total, mut missed, mut fa, mut overlapped) = (0usize, 0usize, 0usize, 0usize);
    let (mut role_ok, mut role_n) = (0usize, 0usize);
    for (r, h) in &points {
        total += r.len();
        missed += r.len().saturating_sub(h.len());
        fa += h.len().saturating_sub(r.len());
        overlapped += r.len().min(h.len());
        if r.len() == 1 && !h.is_empty() {
            role_n += 1;
            role_ok += usize::from(h.contains(&r[0]));
        }
    }
    let confusion = overlapped - correct.min(overlapped);
    let t = total.max(1) as f64;
    Score {
        der: (missed + fa + confusion) as f64 / t,
        missed: missed as f64 / t,
        false_alarm: fa as f64 / t,
        confusion: confusion as f64 / t,
        role_accuracy: role_ok as f64 / role_n.max(1) as f64,
    }
}

/// The original design's rule: a transcript segment louder than -25 dBFS RMS (measured in the
/// normalised audio16k.wav) is the coach, anything else the client.
fn loudness_rule(pcm: &Path, transcript: &Transcript) -> Vec<Span> {
    let mut reader = hound::WavReader::open(pcm).unwrap();
    let rate = f64::from(reader.spec().sample_rate);
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    transcript
        .segments
        .iter()
        .map(|s| {
            let a = ((s.start_s * rate) as usize).min(samples.len());
            let b = ((s.end_s * rate) as usize).clamp(a, samples.len());
            let x = &samples[a..b];
            let rms =
                (x.iter().map(|v| f64::from(v * v)).sum::<f64>() / x.len().max(1) as f64).sqrt();
            let db = 20.0 * rms.max(1e-10).log10();
            let who = if db > -25.0 { "coach" } else { "client" };
            (s.start_s, s.end_s, who.to_string())
        })
        .collect()
}

struct Row {
    case: &'static str,
    ours: Score,
    loud: Score,
    result: Diarization,
    stats: DiarizeStats,
}

fn evaluate(case: &'static str) -> Row {
    let p = prepare(case);
    let (result, stats) =
        diarize::diarize_with_stats(&p.pcm, &p.speech, &p.transcript, &DiarizeOptions::default())
            .unwrap();
    let ours = der(&p.reference, &turns_to_spans(&result.turns));
    let loud = der(&p.reference, &loudness_rule(&p.pcm, &p.transcript));
    Row {
        case,
        ours,
        loud,
        result,
        stats,
    }
}

#[test]
fn der_of_scripted_dialogues() {
    let rows: Vec<Row> = CASES.iter().map(|c| evaluate(c)).collect();
    println!(
        "\n{:<8} {:>9} {:>7} {:>7} {:>7} {:>10} {:>8} {:>9} {:>9} {:>6} {:>13} {:>6}",
        "case",
        "DER ours",
        "miss",
        "FA",
        "conf",
        "DER loud",
        "speakers",
        "role acc",
        "role loud",
        "split",
        "pitch Hz",
        "cv d'"
    );
    for r in &rows {
        println!(
            "{:<8} {:>8.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>9.1}% {:>8} {:>8.0}% {:>8.0}% {:>6} {:>6.0}/{:<6.0} {:>6.2}",
            r.case,
            100.0 * r.ours.der,
            100.0 * r.ours.missed,
            100.0 * r.ours.false_alarm,
            100.0 * r.ours.confusion,
            100.0 * r.loud.der,
            r.result.speakers_found,
            100.0 * r.ours.role_accuracy,
            100.0 * r.loud.role_accuracy,
            r.stats.segments_split,
            r.stats.pitch_hz[0],
            r.stats.pitch_hz[1],
            r.stats.cv_separation.unwrap_or(f64::NAN),
        );
    }
    for r in &rows {
        assert_eq!(r.result.speakers_found, 2, "{}: two speakers", r.case);
        let target = if r.case == "clear" { 0.10 } else { 0.20 };
        assert!(
            r.ours.der <= target,
            "{}: DER {:.1}% > {:.0}%",
            r.case,
            100.0 * r.ours.der,
            100.0 * target
        );
        assert!(
            r.result
                .turns
                .windows(2)
                .all(|w| w[0].start_s <= w[1].start_s),
            "{}: turns in time order",
            r.case
        );
    }
    let clear = &rows[0];
    assert!(
        clear.ours.role_accuracy >= 0.9,
        "clear: the questioner must be the coach (role accuracy {:.0}%)",
        100.0 * clear.ours.role_accuracy
    );
}

#[test]
fn merged_lines_are_split_between_the_speakers() {
    let row = evaluate("clear");
    assert!(row.stats.segments_split >= 1, "{:?}", row.stats);
    let question = "How would a first rough draft look?";
    let turn = row
        .result
        .turns
        .iter()
        .find(|t| t.text.contains(question))
        .expect("the merged question is in some turn");
    assert_eq!(turn.speaker, Speaker::Coach, "{turn:?}");
    assert_eq!(turn.text, question, "{turn:?}");
    // every word of the transcript is in exactly one turn, in order
    let all: Vec<String> = row.result.turns.iter().map(|t| t.text.clone()).collect();
    let joined = all
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let p = read_transcript(&dialogue("clear", "transcript.json"));
    let expected = p
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(joined, expected);
}

#[test]
fn one_voice_is_one_speaker_with_unknown_roles() {
    for case in CASES {
        one_voice(case);
    }
}

fn one_voice(case: &str) {
    let p = prepare(case);
    for who in ["coach", "client"] {
        // Keep only one speaker's reference turns as the speech map, and their transcript lines
        // (minus where the other speaks at the same time, in the overlap case).
        let mine: Vec<&Span> = p.reference.iter().filter(|s| s.2 == who).collect();
        let others: Vec<&Span> = p.reference.iter().filter(|s| s.2 != who).collect();
        let mut speech: Vec<[f64; 2]> = Vec::new();
        for s in &mine {
            let mut pieces = vec![[s.0, s.1]];
            for o in &others {
                pieces = pieces
                    .into_iter()
                    .flat_map(|[a, b]| {
                        [[a, b.min(o.0)], [a.max(o.1), b]]
                            .into_iter()
                            .filter(|[x, y]| y > x)
                    })
                    .collect();
            }
            speech.extend(pieces);
        }
        let mut transcript = p.transcript.clone();
        transcript
            .segments
            .retain(|s| mine.iter().any(|r| s.start_s < r.1 && r.0 < s.end_s));
        let (d, stats) =
            diarize::diarize_with_stats(&p.pcm, &speech, &transcript, &DiarizeOptions::default())
                .unwrap();
        println!(
            "{case} {who} alone: cv d' {:.2}, {stats:?}",
            stats.cv_separation.unwrap_or(f64::NAN)
        );
        assert_eq!(d.speakers_found, 1, "{case} {who}: {stats:?}");
        assert!(d.turns.iter().all(|t| t.speaker == Speaker::Unknown));
    }
}

#[test]
fn der_scoring_is_standard() {
    let r: Vec<Span> = vec![(0.0, 10.0, "a".into()), (10.0, 20.0, "b".into())];
    // perfect up to renaming
    let h: Vec<Span> = vec![(0.0, 10.0, "x".into()), (10.0, 20.0, "y".into())];
    assert!(der(&r, &h).der < 1e-9);
    // a boundary 0.2 s off is inside the collar
    let h: Vec<Span> = vec![(0.0, 10.2, "x".into()), (10.2, 20.0, "y".into())];
    assert!(der(&r, &h).der < 1e-9);
    // everything one speaker: half confused
    let h: Vec<Span> = vec![(0.0, 20.0, "x".into())];
    let s = der(&r, &h);
    assert!((s.confusion - 0.5).abs() < 0.02, "{s:?}");
    // nothing said: all missed
    assert!((der(&r, &[]).missed - 1.0).abs() < 1e-9);
    // overlap: both speakers count
    let r2: Vec<Span> = vec![(0.0, 10.0, "a".into()), (5.0, 15.0, "b".into())];
    let h2: Vec<Span> = vec![(0.0, 10.0, "x".into()), (10.0, 15.0, "y".into())];
    let s = der(&r2, &h2);
    assert!(s.missed > 0.2 && s.confusion < 1e-9, "{s:?}");
}

#[test]
fn without_a_transcript_turns_still_cover_the_speech() {
    let p = prepare("clear");
    let empty = Transcript::default();
    let (d, stats) =
        diarize::diarize_with_stats(&p.pcm, &p.speech, &empty, &DiarizeOptions::default()).unwrap();
    let s = der(&p.reference, &turns_to_spans(&d.turns));
    println!(
        "clear without transcript: DER {:.1}%, {stats:?}",
        100.0 * s.der
    );
    assert_eq!(d.speakers_found, 2);
    assert!(d.turns.iter().all(|t| t.text.is_empty()));
    // roles from talk share and who opens alone: right, with less confidence
    assert!(s.der <= 0.10, "{s:?}");
    assert!(s.role_accuracy >= 0.9, "{s:?}");
}

/// Throughput on a long recording: `DIARIZE_LONG=/path/to/16k-mono.wav cargo test --release
/// --test diarize long_recording -- --ignored --nocapture` (speech map: the whole file). With
/// `DIARIZE_LONG_IS_CLEAR=1` (the file being clear.flac repeated), also the one-voice check on
/// a long recording, where one voice's repeated sentences form consistent groups.
#[test]
#[ignore]
fn long_recording() {
    let Ok(path) = std::env::var("DIARIZE_LONG") else {
        return;
    };
    let spec = hound::WavReader::open(&path).unwrap();
    let dur = spec.duration() as f64 / f64::from(spec.spec().sample_rate);
    let t0 = std::time::Instant::now();
    let (d, stats) = diarize::diarize_with_stats(
        Path::new(&path),
        &[[0.0, dur]],
        &Transcript::default(),
        &DiarizeOptions::default(),
    )
    .unwrap();
    println!(
        "{dur:.0} s of audio in {:.2} s: {} turns, {stats:?}",
        t0.elapsed().as_secs_f64(),
        d.turns.len()
    );
    // If the file is fixtures/dialogues/clear.flac repeated (sox clear.flac x14 long.wav), each
    // voice alone is one speaker.
    if std::env::var("DIARIZE_LONG_IS_CLEAR").is_ok() {
        let reference = read_rttm(&dialogue("clear", "rttm"));
        let clip = 683_055.0 / 16_000.0; // clear.flac's samples
        for who in ["coach", "client"] {
            let speech: Vec<[f64; 2]> = (0..(dur / clip).round() as usize)
                .flat_map(|k| {
                    let off = k as f64 * clip;
                    reference
                        .iter()
                        .filter(|s| s.2 == who)
                        .map(move |s| [s.0 + off, s.1 + off])
                })
                .collect();
            let (d, stats) = diarize::diarize_with_stats(
                Path::new(&path),
                &speech,
                &Transcript::default(),
                &DiarizeOptions::default(),
            )
            .unwrap();
            println!("{who} alone: {stats:?}");
            assert_eq!(d.speakers_found, 1, "{who}: {stats:?}");
        }
    }
}
