//! The speaker timeline alone, on every scripted conversation: DER (10 ms grid, 0.25 s collar)
//! of `diarize::speaker_timeline` against the fixture's reference turns, with no transcriber
//! and no turn grouping in between. A development tool for speaker work (the end-to-end limits
//! are in tests/speakers.rs):
//!
//! `cargo test --test timeline -- --ignored --nocapture` prints one row per case and the
//! sum per set, for the configured encoder and for the pitch + MFCC fallback. `TIMELINE_CASES=jtalk`
//! keeps the cases whose names contain that text; `TIMELINE_FALLBACK=0` skips the fallback,
//! `TIMELINE_RESEGMENT=0` the resegmentation; `TIMELINE_SPANS=1` prints each timeline.

mod common;

use std::path::{Path, PathBuf};

use audio_worker::audio::{self, PrepareOptions};
use audio_worker::diarize::{self, DiarizeOptions};
use common::scoring;

/// One conversation: its audio prepared once (16 kHz PCM + speech map) and its reference turns.
struct Prepared {
    name: String,
    pcm: PathBuf,
    speech: Vec<[f64; 2]>,
    reference: Vec<scoring::Span>,
}

/// The committed scripted conversations, then the real recordings when they were fetched
/// (`REAL_SPEECH_DIR`, from scripts/fetch-real-speech.sh).
fn case_dirs() -> Vec<PathBuf> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut dirs = vec![fixtures.join("dialogues"), fixtures.join("conversations")];
    dirs.extend(std::env::var_os("REAL_SPEECH_DIR").map(PathBuf::from));
    dirs
}

fn prepare_all(dir: &Path, filter: &str) -> Vec<Prepared> {
    let mut out = Vec::new();
    for set in case_dirs() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&set)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rttm"))
            .collect();
        names.sort();
        for rttm in names {
            let name = rttm.file_stem().unwrap().to_str().unwrap().to_string();
            if !name.contains(filter) {
                continue;
            }
            let audio = ["opus", "flac", "wav"]
                .iter()
                .map(|ext| rttm.with_extension(ext))
                .find(|a| a.exists())
                .unwrap();
            let work = dir.join(&name);
            let opts = PrepareOptions {
                write_pcm: true,
                ..PrepareOptions::default()
            };
            let manifest = audio::prepare(&audio, &work, &opts).unwrap();
            out.push(Prepared {
                name,
                pcm: work.join(audio::PCM_FILE),
                speech: manifest.speech,
                reference: scoring::read_rttm(&std::fs::read_to_string(&rttm).unwrap()),
            });
        }
    }
    out
}

fn timeline_der(
    case: &Prepared,
    encoder: Option<&dyn audio_worker::speakers::embed::SpeakerEncoder>,
) -> (f64, usize) {
    let opts = DiarizeOptions {
        resegment: std::env::var("TIMELINE_RESEGMENT").map_or(true, |v| v != "0"),
        // TIMELINE_HOP_S: seconds between the encoder's windows, or "units"
        embedding_hop_s: match std::env::var("TIMELINE_HOP_S") {
            Ok(v) if v == "units" => None,
            Ok(v) => Some(v.parse().expect("TIMELINE_HOP_S: seconds or units")),
            Err(_) => DiarizeOptions::default().embedding_hop_s,
        },
        ..DiarizeOptions::default()
    };
    let (timeline, stats) =
        diarize::speaker_timeline_with_stats(&case.pcm, &case.speech, &opts, encoder).unwrap();
    let hyp = hypothesis(&timeline);
    if std::env::var("TIMELINE_SPANS").is_ok() {
        let text: Vec<String> = hyp
            .iter()
            .map(|(a, b, v)| format!("{v} {a:.2}-{b:.2}"))
            .collect();
        println!("{}: {}", case.name, text.join(" "));
    }
    let parts = scoring::der_parts(&case.reference, &hyp);
    if std::env::var("TIMELINE_PARTS").is_ok() {
        println!(
            "{}: missed {:.1} % false alarm {:.1} % confusion {:.1} % ({stats:?})",
            case.name,
            100.0 * parts.missed,
            100.0 * parts.false_alarm,
            100.0 * parts.confusion
        );
    }
    (parts.total(), timeline.speakers_found)
}

/// The timeline's spans as scored spans, voices named v0 and v1.
fn hypothesis(timeline: &diarize::SpeakerTimeline) -> Vec<scoring::Span> {
    timeline
        .spans
        .iter()
        .map(|s| (s.start_s, s.end_s, format!("v{}", s.voice)))
        .collect()
}

#[test]
#[ignore = "a development report: run with --ignored --nocapture"]
fn timeline_der_report() {
    let filter = std::env::var("TIMELINE_CASES").unwrap_or_default();
    let with_fallback = std::env::var("TIMELINE_FALLBACK").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    let cases = prepare_all(dir.path(), &filter);
    let encoder = audio_worker::speakers::load_configured()
        .expect("the speaker model is missing: run scripts/fetch-speaker-model.sh");
    println!(
        "| case | {} DER | voices | fallback DER | voices |",
        encoder.name()
    );
    println!("|---|---|---|---|---|");
    let mut sums: Vec<(String, f64, f64, usize)> = Vec::new();
    for case in &cases {
        let (der, found) = timeline_der(case, Some(encoder.as_ref()));
        let (fb, fb_found) = if with_fallback {
            timeline_der(case, None)
        } else {
            (f64::NAN, 0)
        };
        println!(
            "| {} | {:.1} % | {found} | {:.1} % | {fb_found} |",
            case.name,
            100.0 * der,
            100.0 * fb
        );
        let set = case.name.rsplit_once('-').map_or("dialogues", |(s, _)| s);
        match sums.iter_mut().find(|s| s.0 == set) {
            Some(s) => {
                s.1 += der;
                s.2 += fb;
                s.3 += 1;
            }
            None => sums.push((set.to_string(), der, fb, 1)),
        }
    }
    println!(
        "\n| set | mean {} DER | mean fallback DER |",
        encoder.name()
    );
    println!("|---|---|---|");
    for (set, der, fb, n) in &sums {
        let n = *n as f64;
        println!(
            "| {set} | {:.1} % | {:.1} % |",
            100.0 * der / n,
            100.0 * fb / n
        );
    }
    assert!(!cases.is_empty(), "no case matches {filter:?}");
}

/// The longest pause of the speech map: (start, length).
fn longest_pause(speech: &[[f64; 2]]) -> (f64, f64) {
    speech
        .windows(2)
        .map(|w| (w[0][1], w[1][0] - w[0][1]))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("two speech regions")
}

/// `pcm` with a tone burst (`freqs` summed, -18 dBFS each) added at `at_s` for `len_s`.
fn with_tone(pcm: &Path, out: &Path, at_s: f64, len_s: f64, freqs: &[f64]) {
    let mut reader = hound::WavReader::open(pcm).unwrap();
    let spec = reader.spec();
    let mut samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let (lo, hi) = (
        (at_s * 16_000.0) as usize,
        ((at_s + len_s) * 16_000.0) as usize,
    );
    for (n, s) in samples[lo..hi].iter_mut().enumerate() {
        let t = n as f64 / 16_000.0;
        let v: f64 = freqs
            .iter()
            .map(|f| 0.125 * (2.0 * std::f64::consts::PI * f * t).sin())
            .sum();
        *s = (f64::from(*s) + v * 32_767.0).clamp(-32_768.0, 32_767.0) as i16;
    }
    let mut w = hound::WavWriter::create(out, spec).unwrap();
    for s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// Issue 13: a beep or a two-tone ring in a pause passes the energy detector as speech, but it
/// is nobody's voice: no span of the timeline covers it. And no block of real speech in any
/// scripted conversation (five synthesisers, telephone band, noise) is taken for a tone.
#[test]
fn tones_are_nobodys_voice_and_speech_is_never_a_tone() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DiarizeOptions::default();
    for case in prepare_all(dir.path(), "") {
        let (_, stats) =
            diarize::speaker_timeline_with_stats(&case.pcm, &case.speech, &opts, None).unwrap();
        assert_eq!(
            stats.tone_blocks, 0,
            "{}: speech taken for a tone",
            case.name
        );
    }

    let clear = prepare_all(dir.path(), "clear")
        .into_iter()
        .find(|c| c.name == "clear")
        .unwrap();
    for (name, freqs) in [("beep", &[1000.0][..]), ("ring", &[440.0, 480.0][..])] {
        // 0.2 s of silence either side keeps the tone its own region.
        let (pause, gap) = longest_pause(&clear.speech);
        let len = (gap - 0.4).min(0.5);
        assert!(len >= 0.3, "clear.flac has no pause of 0.7 s");
        let at = pause + 0.2;
        let wav = dir.path().join(format!("{name}.wav"));
        with_tone(&clear.pcm, &wav, at, len, freqs);
        let work = dir.path().join(name);
        let prepare = PrepareOptions {
            write_pcm: true,
            ..PrepareOptions::default()
        };
        let manifest = audio::prepare(&wav, &work, &prepare).unwrap();
        let tone_span = [at + 0.1, at + len - 0.1];
        assert!(
            manifest
                .speech
                .iter()
                .any(|r| r[0] <= tone_span[0] && r[1] >= tone_span[1]),
            "{name}: the energy detector should take the tone for speech (else this test tests nothing)"
        );
        let pcm = work.join(audio::PCM_FILE);
        let (timeline, stats) =
            diarize::speaker_timeline_with_stats(&pcm, &manifest.speech, &opts, None).unwrap();
        let covered: f64 = timeline
            .spans
            .iter()
            .map(|s| (s.end_s.min(tone_span[1]) - s.start_s.max(tone_span[0])).max(0.0))
            .sum();
        assert!(
            covered < 0.05,
            "{name}: {covered:.2} s of the tone is in a voice's span ({} blocks dropped)",
            stats.tone_blocks
        );
        assert!(stats.tone_blocks >= 1, "{name}: no block dropped");
    }
}

/// The reference voice (0 = coach, 1 = client) holding most of `start..end`, if any.
fn reference_voice(reference: &[scoring::Span], start: f64, end: f64) -> Option<usize> {
    let mut held = [0.0f64; 2];
    for (s, e, who) in reference {
        held[usize::from(who != "coach")] += (e.min(end) - s.max(start)).max(0.0);
    }
    (held[0] + held[1] > 0.0).then(|| usize::from(held[1] > held[0]))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The clustering units of a case as the pipeline embeds them (at most 1.6 s of uninterrupted
/// speech): their embeddings, lengths (s) and reference voices.
struct Units {
    spans: Vec<(f64, f64)>,
    embeddings: Vec<Option<Vec<f32>>>,
    weights: Vec<f32>,
    truth: Vec<Option<usize>>,
}

fn embedded_units(
    case: &Prepared,
    encoder: &dyn audio_worker::speakers::embed::SpeakerEncoder,
) -> Units {
    use audio_worker::diarize::{features, timeline, voices};
    let feats = features::extract(&case.pcm, &case.speech, 10).unwrap();
    let in_speech: Vec<bool> = feats.blocks.iter().map(|b| b.speech_frames > 0).collect();
    let (units, _) = timeline::speech_units(&in_speech, feats.block_s);
    let spans: Vec<(f64, f64)> = units
        .iter()
        .map(|&(a, b)| (a as f64 * feats.block_s, b as f64 * feats.block_s))
        .collect();
    let embeddings = voices::embed_units(&case.pcm, &spans, encoder).unwrap();
    let weights: Vec<f32> = spans.iter().map(|(a, b)| (b - a) as f32).collect();
    let truth = spans
        .iter()
        .map(|&(a, b)| reference_voice(&case.reference, a, b))
        .collect();
    Units {
        spans,
        embeddings,
        weights,
        truth,
    }
}

/// Issue 13, a development report: are the voices in the embeddings, or does the clustering
/// miss them? Per case, over the clustering units (at most 1.6 s of uninterrupted speech, as
/// the pipeline embeds them), the share of speech whose unit is nearer the centroid of its true
/// voice than the other's ("oracle"), the share the unsupervised split gets right, and the
/// k-means objective (mean cosine to the own centroid) of the true split and of the found one.
/// A found split with the higher objective but lower accuracy means the objective, not the
/// search, is wrong (content outweighs voice).
#[test]
#[ignore = "a development report: run with --ignored --nocapture"]
fn voice_split_against_the_reference_report() {
    use audio_worker::diarize::voices;
    let filter = std::env::var("TIMELINE_CASES").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let encoder = audio_worker::speakers::load_configured()
        .expect("the speaker model is missing: run scripts/fetch-speaker-model.sh");
    println!("| case | units | oracle | split | objective true / found |");
    println!("|---|---|---|---|---|");
    for case in prepare_all(dir.path(), &filter) {
        let Units {
            spans: _,
            embeddings,
            weights,
            truth,
        } = embedded_units(&case, encoder.as_ref());
        let split = voices::split_voices(&embeddings, &weights).unwrap();
        let found: Vec<Option<usize>> = split
            .p_voice1
            .iter()
            .map(|p| p.map(|p| usize::from(p > 0.5)))
            .collect();
        // (labelled units: embedding, label, weight)
        let labelled = |labels: &[Option<usize>]| -> Vec<(&[f32], usize, f32)> {
            embeddings
                .iter()
                .zip(labels)
                .zip(&weights)
                .filter_map(|((e, l), w)| Some((e.as_deref()?, (*l)?, *w)))
                .collect()
        };
        let centroids = |units: &[(&[f32], usize, f32)]| -> [Vec<f32>; 2] {
            [0, 1].map(|k| {
                let mut c = vec![0f32; encoder.dim()];
                for (e, _, w) in units.iter().filter(|u| u.1 == k) {
                    c.iter_mut().zip(e.iter()).for_each(|(c, x)| *c += w * x);
                }
                let n = dot(&c, &c).sqrt().max(1e-12);
                c.iter_mut().for_each(|x| *x /= n);
                c
            })
        };
        let objective = |units: &[(&[f32], usize, f32)]| {
            let c = centroids(units);
            let total: f32 = units.iter().map(|u| u.2).sum();
            units
                .iter()
                .map(|(e, l, w)| w * dot(e, &c[*l]))
                .sum::<f32>()
                / total
        };
        let true_units = labelled(&truth);
        let c = centroids(&true_units);
        let total: f32 = true_units.iter().map(|u| u.2).sum();
        let oracle: f32 = true_units
            .iter()
            .filter(|(e, l, _)| usize::from(dot(e, &c[1]) > dot(e, &c[0])) == *l)
            .map(|u| u.2)
            .sum::<f32>()
            / total;
        let agree: f32 = truth
            .iter()
            .zip(&found)
            .zip(&weights)
            .filter(|((t, f), _)| t.is_some() && t == f)
            .map(|(_, w)| w)
            .sum::<f32>()
            / total;
        println!(
            "| {} | {} | {:.1} % | {:.1} % | {:.4} / {:.4} |",
            case.name,
            true_units.len(),
            100.0 * oracle,
            100.0 * agree.max(1.0 - agree),
            objective(&true_units),
            objective(&labelled(&found)),
        );
    }
}

/// Changes of voice without a pause in the reference: (end of one voice, start of the other)
/// wherever the next voice starts within 0.1 s of the previous one's end.
fn reference_changes(reference: &[scoring::Span]) -> Vec<(f64, f64)> {
    let mut spans = reference.to_vec();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    spans
        .windows(2)
        .filter(|w| w[0].2 != w[1].2 && (w[1].0 - w[0].1).abs() < 0.1)
        .map(|w| (w[0].1.min(w[1].0), w[0].1.max(w[1].0)))
        .collect()
}

/// Issue 12, a development report: how close to the true change of voice each change without a
/// pause lands (`diarize::boundary`), per case: changes found near a true one (within 0.5 s),
/// how many fall inside the true gap between the two voices' words (within 5 ms), within 50 ms,
/// and the mean distance. A piece edge outside the gap cuts a word.
#[test]
#[ignore = "a development report: run with --ignored --nocapture"]
fn change_placement_report() {
    let filter = std::env::var("TIMELINE_CASES").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let cases = prepare_all(dir.path(), &filter);
    let encoder = audio_worker::speakers::load_configured()
        .expect("the speaker model is missing: run scripts/fetch-speaker-model.sh");
    println!("| case | changes | in the gap | within 50 ms | mean error (ms) |");
    println!("|---|---|---|---|---|");
    let (mut all, mut in_gap_all, mut near_all) = (0, 0, 0);
    for case in &cases {
        let timeline = diarize::speaker_timeline(
            &case.pcm,
            &case.speech,
            &DiarizeOptions::default(),
            Some(encoder.as_ref()),
        )
        .unwrap();
        let truth = reference_changes(&case.reference);
        let (mut n, mut in_gap, mut near, mut err_sum) = (0, 0, 0, 0.0);
        for w in timeline.spans.windows(2) {
            if w[0].voice == w[1].voice || w[1].start_s - w[0].end_s > 1e-6 {
                continue;
            }
            let t = w[1].start_s;
            let Some(&(gap_lo, gap_hi)) = truth
                .iter()
                .min_by(|a, b| dist(t, **a).total_cmp(&dist(t, **b)))
            else {
                continue;
            };
            let err = dist(t, (gap_lo, gap_hi));
            if err > 0.5 {
                continue; // not a true change placed nearby: a clustering error
            }
            n += 1;
            in_gap += usize::from(err <= 0.005);
            near += usize::from(err <= 0.05);
            err_sum += err;
        }
        println!(
            "| {} | {n} | {in_gap} | {near} | {:.0} |",
            case.name,
            1000.0 * err_sum / n.max(1) as f64
        );
        all += n;
        in_gap_all += in_gap;
        near_all += near;
    }
    println!("| all | {all} | {in_gap_all} | {near_all} | |");
    assert!(!cases.is_empty(), "no case matches {filter:?}");
}

/// Distance (s) from `t` to the interval `gap`.
fn dist(t: f64, gap: (f64, f64)) -> f64 {
    if t < gap.0 {
        gap.0 - t
    } else if t > gap.1 {
        t - gap.1
    } else {
        0.0
    }
}

/// Issue 13, a development report: how alike the two voices the split finds are in a
/// conversation of two voices, against the same for each voice alone (its units only, as a
/// recording of one person would give them). The one-voice rule must tell these apart with a
/// margin: per case, the centroid cosine and the smaller share of the split of all units, then
/// of the coach's units alone and of the client's alone.
#[test]
#[ignore = "a development report: run with --ignored --nocapture"]
fn one_voice_or_two_report() {
    use audio_worker::diarize::voices;
    let filter = std::env::var("TIMELINE_CASES").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let encoder = audio_worker::speakers::load_configured()
        .expect("the speaker model is missing: run scripts/fetch-speaker-model.sh");
    println!("| case | two voices: cosine, share | coach alone | client alone |");
    println!("|---|---|---|---|");
    for case in prepare_all(dir.path(), &filter) {
        let Units {
            spans: _,
            embeddings,
            weights,
            truth,
        } = embedded_units(&case, encoder.as_ref());
        let describe = |keep: &dyn Fn(Option<usize>) -> bool| {
            let kept: Vec<Option<Vec<f32>>> = embeddings
                .iter()
                .zip(&truth)
                .map(|(e, t)| e.clone().filter(|_| keep(*t)))
                .collect();
            match voices::split_voices(&kept, &weights) {
                Some(s) => format!(
                    "{:.3}, {:.2}",
                    s.centroid_cosine,
                    s.share[0].min(s.share[1])
                ),
                None => "-".to_string(),
            }
        };
        println!(
            "| {} | {} | {} | {} |",
            case.name,
            describe(&|_| true),
            describe(&|t| t == Some(0)),
            describe(&|t| t == Some(1)),
        );
    }
}

/// Development aid for speaker work: writes, per case, the reference turns, the clustering
/// units and 1.6 s windows every 0.2 s over the speech map with their embeddings, and every
/// 20 ms frame's level (dBFS), as JSON in
/// `UNITS_DUMP` (a directory), for trying clustering ideas outside the build.
#[test]
#[ignore = "a development aid: UNITS_DUMP=DIR cargo test --test timeline dump -- --ignored"]
fn dump_embeddings_for_study() {
    use audio_worker::diarize::voices;
    let out =
        PathBuf::from(std::env::var_os("UNITS_DUMP").expect("UNITS_DUMP=DIR: where to write"));
    std::fs::create_dir_all(&out).unwrap();
    let filter = std::env::var("TIMELINE_CASES").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let encoder = audio_worker::speakers::load_configured().expect("the speaker model");
    for case in prepare_all(dir.path(), &filter) {
        let units = embedded_units(&case, encoder.as_ref());
        let mut windows: Vec<(f64, f64)> = Vec::new();
        for r in &case.speech {
            let mut t = r[0];
            while t + 0.5 <= r[1] {
                windows.push((t, (t + 1.6).min(r[1])));
                t += 0.2;
            }
        }
        // every window is at least 0.5 s, so each gets its embedding
        let window_emb = voices::embed_units(&case.pcm, &windows, encoder.as_ref()).unwrap();
        let feats = audio_worker::diarize::features::extract(&case.pcm, &case.speech, 10).unwrap();
        let json = serde_json::json!({
            "frame_db": feats.frame_db,
            "name": case.name,
            "encoder": encoder.name(),
            "speech": case.speech,
            "reference": case.reference,
            "units": units.embeddings.iter().zip(&units.truth).map(|(e, t)| {
                serde_json::json!({"emb": e, "truth": t})
            }).collect::<Vec<_>>(),
            "unit_spans": units.spans,
            "windows": windows,
            "window_emb": window_emb,
        });
        std::fs::write(out.join(format!("{}.json", case.name)), json.to_string()).unwrap();
    }
}

/// Issue 13: real two-speaker recordings (scripts/fetch-real-speech.sh; test.sh sets
/// `REAL_SPEECH_DIR`) are two voices, and speaker confusion and false alarm stay where they were
/// measured (README.md "Who said what, measured"). Missed speech belongs to the speech map and
/// to overlaps, which one voice per moment cannot score. real-ami01 holds a third talker
/// 17-26 dB under the two men, not in its reference: GE2E takes it as the second voice (high
/// confusion, and it is no background: it is a voice of its own); CAM++ finds the two men, and
/// the third talker is background inside one of them (`diarize::background`), which the false
/// alarm shows.
#[test]
fn real_two_speaker_recordings_are_told_apart() {
    let path = audio_worker::speakers::embed::campplus_model_path();
    let encoder = audio_worker::speakers::embed::load_campplus(&path)
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-speaker-model.sh"));
    // CAM++, the daemon's encoder, windows every second: confusion 3.8 / 0.0 / 7.2 % (one window
    // per unit: 5.1 / 5.2 / 25.3); false alarm 2.3 / 1.8 / 17.3 % (50.1 % before the third
    // talker was background)
    let limits = RealLimits {
        confusion: [0.06, 0.03, 0.09],
        false_alarm: [0.05, 0.05, 0.25],
    };
    check_real_recordings(&encoder, limits);
}

/// The same recordings with GE2E (`GE2E_MODEL_PATH`), the second encoder.
#[test]
fn real_two_speaker_recordings_with_ge2e() {
    let path = audio_worker::speakers::embed::ge2e_model_path();
    let encoder = audio_worker::speakers::embed::load_ge2e(&path)
        .unwrap_or_else(|e| panic!("{e}: run SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh"));
    // windows every second, confusion 2.0 / 4.1 / 25.3 % (one window per unit: 5.8 / 11.3 /
    // 25.3); false alarm 2.3 / 1.8 / 50.1 %
    let limits = RealLimits {
        confusion: [0.05, 0.08, 0.30],
        false_alarm: [0.05, 0.05, 0.55],
    };
    check_real_recordings(&encoder, limits);
}

/// Per recording (real-sample, real-ami00, real-ami01): the most speaker confusion and false
/// alarm allowed.
struct RealLimits {
    confusion: [f64; 3],
    false_alarm: [f64; 3],
}

/// Two voices and at most the `limits` with `encoder`.
fn check_real_recordings(
    encoder: &dyn audio_worker::speakers::embed::SpeakerEncoder,
    limits: RealLimits,
) {
    let real_dir = std::env::var_os("REAL_SPEECH_DIR")
        .expect("REAL_SPEECH_DIR is not set: run scripts/fetch-real-speech.sh and export it");
    assert!(
        Path::new(&real_dir).join("real-sample.wav").exists(),
        "REAL_SPEECH_DIR holds no real-sample.wav: run scripts/fetch-real-speech.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let cases = prepare_all(dir.path(), "real-");
    assert_eq!(cases.len(), 3, "three real recordings");
    let mut failures = Vec::new();
    for case in &cases {
        let k = match case.name.as_str() {
            "real-sample" => 0,
            "real-ami00" => 1,
            _ => 2,
        };
        let (max_confusion, max_false_alarm) = (limits.confusion[k], limits.false_alarm[k]);
        let opts = DiarizeOptions::default();
        let timeline =
            diarize::speaker_timeline(&case.pcm, &case.speech, &opts, Some(encoder)).unwrap();
        let parts = scoring::der_parts(&case.reference, &hypothesis(&timeline));
        println!("{}: {parts:?}", case.name);
        if timeline.speakers_found != 2
            || parts.confusion > max_confusion
            || parts.false_alarm > max_false_alarm
        {
            failures.push(format!(
                "{}: {} voices, confusion {:.1} % (limit {:.0} %), false alarm {:.1} % (limit \
                 {:.0} %)",
                case.name,
                timeline.speakers_found,
                100.0 * parts.confusion,
                100.0 * max_confusion,
                100.0 * parts.false_alarm,
                100.0 * max_false_alarm
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
