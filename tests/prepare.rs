//! `prepare` end to end on the committed fixtures: formats, fidelity, timeline, chunks, bad input.

mod common;

use std::path::Path;
use std::process::Command;

use audio_worker::ErrorCode;
use audio_worker::audio::manifest::Manifest;
use audio_worker::audio::{self, PrepareOptions};
use common::{fixture, good_fixtures, in_band_ser, read_wav_mono};

fn prepare(
    input: &Path,
    opts: &PrepareOptions,
) -> (tempfile::TempDir, Result<Manifest, audio_worker::Error>) {
    let dir = tempfile::tempdir().unwrap();
    let result = audio::prepare(input, &dir.path().join("out"), opts);
    (dir, result)
}

fn with_pcm() -> PrepareOptions {
    PrepareOptions {
        write_pcm: true,
        ..PrepareOptions::default()
    }
}

/// Our container names for the catalogue's.
fn container_name(catalogue: &str) -> &str {
    match catalogue {
        "webm" => "matroska",
        "m4a" => "mp4",
        other => other,
    }
}

#[test]
fn every_good_fixture_decodes_faithfully_on_its_own_timeline() {
    let fixtures = good_fixtures();
    assert!(
        fixtures.len() >= 15,
        "catalogue lists {} good fixtures",
        fixtures.len()
    );
    let mut failures = Vec::new();
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>6}",
        "fixture", "dur_s", "want_s", "SER_dB", "lag"
    );
    for f in &fixtures {
        let (dir, result) = prepare(&fixture(&f.path), &with_pcm());
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: {e}", f.path));
                continue;
            }
        };
        let out = dir.path().join("out");
        let want = f.duration_s.expect("good fixtures know their duration");
        let (ours, rate) = read_wav_mono(&out.join(audio::PCM_FILE));
        assert_eq!(rate, 16_000);
        assert_eq!(
            ours.len() as u64,
            m.output.samples,
            "{}: audio16k.wav length",
            f.path
        );

        let mut ser = (f64::NAN, 0);
        if let Some(reference) = &f.reference {
            let (reference, _) = read_wav_mono(&fixture(reference));
            let band = 0.45 * f64::from(f.sample_rate.unwrap().min(16_000));
            ser = in_band_ser(&reference, &ours, band, 48);
            if ser.0 < 40.0 || ser.1.abs() > 2 {
                failures.push(format!(
                    "{}: SER {:.1} dB at lag {} (want >= 40 dB at lag 0)",
                    f.path, ser.0, ser.1
                ));
            }
        }
        println!(
            "{:<34} {:>9.4} {:>9.4} {:>8.1} {:>6}",
            f.path, m.source.duration_s, want, ser.0, ser.1
        );

        let checks = [
            (
                (m.source.duration_s - want).abs() <= 0.020,
                "source duration within 20 ms",
            ),
            (
                (m.output.duration_s - want).abs() <= 0.020,
                "output duration within 20 ms",
            ),
            (
                m.source.container == container_name(f.container.as_deref().unwrap()),
                "container",
            ),
            (Some(m.source.codec.as_str()) == f.codec.as_deref(), "codec"),
            (Some(m.source.sample_rate) == f.sample_rate, "sample rate"),
            (Some(m.source.channels) == f.channels, "channels"),
            (
                m.decode.corrupt_packets == 0 && !m.decode.truncated,
                "clean decode",
            ),
            (m.output.peak_dbfs <= -0.99, "no clipping"),
        ];
        for (ok, what) in checks {
            if !ok {
                failures.push(format!("{}: {what} (manifest {:?})", f.path, m.source));
            }
        }
        if let Some(Err(e)) = f
            .speech_regions
            .as_ref()
            .map(|r| speech_matches(&m.speech, r))
        {
            failures.push(format!("{}: {e}", f.path));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// Our speech map against the regions the fixture was built from (espeak's own edges are
/// approximate, hence 150 ms).
fn speech_matches(ours: &[[f64; 2]], want: &[[f64; 2]]) -> Result<(), String> {
    if ours.len() != want.len() {
        return Err(format!("speech map {ours:?}, want {want:?}"));
    }
    for (o, w) in ours.iter().zip(want) {
        if (o[0] - w[0]).abs() > 0.15 || (o[1] - w[1]).abs() > 0.15 {
            return Err(format!("speech region {o:?}, want {w:?} (+-0.15 s)"));
        }
    }
    Ok(())
}

#[test]
fn chunks_tile_the_timeline_and_cut_in_silence() {
    let mut opts = with_pcm();
    opts.chunks.max_duration_s = 3.0;
    opts.chunks.search_window_s = 1.5;
    let input = fixture("audio/speech-48k-mono.wav");
    let (dir, result) = prepare(&input, &opts);
    let m = result.unwrap();
    let out = dir.path().join("out");
    assert!(m.chunks.len() >= 3, "{} chunks", m.chunks.len());
    assert_eq!(m.chunks[0].start_sample, 0);
    assert_eq!(m.chunks.last().unwrap().end_sample, m.output.samples);
    let (whole, _) = read_wav_mono(&out.join(audio::PCM_FILE));
    let mut joined = Vec::new();
    for (i, c) in m.chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        if i > 0 {
            assert_eq!(
                c.start_sample,
                m.chunks[i - 1].end_sample,
                "chunks tile the timeline"
            );
        }
        assert!(c.end_sample - c.start_sample <= 3 * 16_000);
        assert!((c.start_s - c.start_sample as f64 / 16_000.0).abs() < 1e-9);
        let path = out.join(&c.file);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), c.bytes);
        assert_eq!(c.bytes, 44 + 2 * (c.end_sample - c.start_sample));
        let (samples, _) = read_wav_mono(&path);
        joined.extend(samples);
        if i + 1 < m.chunks.len() {
            // Every cut lies in a silence of the speech map, never inside speech.
            let cut = c.end_s;
            assert!(!c.cut_in_speech);
            assert!(
                m.speech.iter().all(|r| cut <= r[0] || cut >= r[1]),
                "cut at {cut} inside speech {:?}",
                m.speech
            );
        }
    }
    assert_eq!(
        joined, whole,
        "chunks concatenate to the whole recording, sample for sample"
    );
}

#[test]
fn normalises_speech_to_the_target_without_clipping() {
    for target in [-20.0f32, -26.0] {
        let mut opts = with_pcm();
        opts.normalisation.target_db = target;
        let (dir, result) = prepare(&fixture("audio/speech-48k-mono.wav"), &opts);
        let m = result.unwrap();
        let (pcm, _) = read_wav_mono(&dir.path().join("out").join(audio::PCM_FILE));
        // Measure the speech level of the written file over the speech map.
        let (mut sum, mut n) = (0.0f64, 0usize);
        for r in &m.speech {
            for s in &pcm[(r[0] * 16_000.0) as usize..(r[1] * 16_000.0) as usize] {
                sum += f64::from(*s) * f64::from(*s);
                n += 1;
            }
        }
        let level = 10.0 * (sum / n as f64).log10();
        let peak = pcm.iter().fold(0.0f32, |p, s| p.max(s.abs()));
        assert!(peak < 0.9, "peak {peak}");
        let limited_by_peak = m.output.peak_dbfs > -1.1;
        assert!(
            (level - f64::from(target)).abs() < 1.5 || limited_by_peak,
            "speech at {level:.1} dBFS, target {target}, manifest {:?}",
            m.output
        );
    }
}

#[test]
fn format_is_detected_from_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let disguised = dir.path().join("recording.mp3");
    std::fs::copy(fixture("audio/chrome.webm"), &disguised).unwrap();
    let (_out, result) = prepare(&disguised, &PrepareOptions::default());
    let m = result.unwrap();
    assert_eq!(
        (m.source.container.as_str(), m.source.codec.as_str()),
        ("matroska", "opus")
    );
}

#[test]
fn limits_are_enforced_with_their_codes() {
    let input = fixture("audio/speech-48k-mono.wav");
    let mut opts = PrepareOptions::default();
    opts.decode.max_duration_s = 2.0;
    assert_eq!(
        prepare(&input, &opts).1.unwrap_err().code,
        ErrorCode::AudioTooLong
    );
    let mut opts = PrepareOptions::default();
    opts.decode.max_input_bytes = 1000;
    assert_eq!(
        prepare(&input, &opts).1.unwrap_err().code,
        ErrorCode::AudioTooLarge
    );
    // Opus streams without a declared duration are stopped while decoding.
    let mut opts = PrepareOptions::default();
    opts.decode.max_duration_s = 2.0;
    let err = prepare(&fixture("audio/chrome.webm"), &opts).1.unwrap_err();
    assert_eq!(err.code, ErrorCode::AudioTooLong);
}

#[test]
fn opus_decodes_the_same_on_one_thread_and_many() {
    let input = fixture("audio/chrome.webm");
    let mut one = with_pcm();
    one.decode.threads = 1;
    let mut four = with_pcm();
    four.decode.threads = 4;
    let (d1, r1) = prepare(&input, &one);
    let (d4, r4) = prepare(&input, &four);
    assert_eq!(r1.unwrap().output, r4.unwrap().output);
    let (a, _) = read_wav_mono(&d1.path().join("out").join(audio::PCM_FILE));
    let (b, _) = read_wav_mono(&d4.path().join("out").join(audio::PCM_FILE));
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_fail_with_their_code_and_leave_nothing_behind() {
    let mut failures = Vec::new();
    for (path, want) in common::BAD_INPUTS {
        let (dir, result) = prepare(&fixture(path), &PrepareOptions::default());
        let out = dir.path().join("out");
        match (result, want) {
            (Err(e), Some(code)) => {
                if e.code.as_str() != *code {
                    failures.push(format!("{path}: got {e}, want {code}"));
                }
                if out.exists() {
                    let left: Vec<_> = std::fs::read_dir(&out)
                        .map(|d| d.flatten().map(|e| e.file_name()).collect())
                        .unwrap_or_default();
                    failures.push(format!("{path}: left {out:?} with {left:?} behind"));
                }
            }
            (Ok(m), None) => {
                let f = common::catalog().into_iter().find(|f| f.path == *path);
                let want = f.and_then(|f| f.duration_s);
                if let Some(want) = want.filter(|w| (m.output.duration_s - w).abs() > 0.25) {
                    failures.push(format!(
                        "{path}: {} s, want about {want} s",
                        m.output.duration_s
                    ));
                }
                // MP3 frames carry no checksum: damaged frame data decodes as noise and cannot be
                // counted, only webm/opus packets that libopus rejects are.
                if path.ends_with("corrupt-middle.webm") && m.decode.corrupt_packets == 0 {
                    failures.push(format!("{path}: corrupt packets were not counted"));
                }
            }
            (Ok(m), Some(code)) => {
                failures.push(format!("{path}: succeeded ({:?}), want {code}", m.source))
            }
            (Err(e), None) => failures.push(format!("{path}: {e}, want success")),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn the_cli_reports_one_error_line_and_never_panics() {
    let bin = env!("CARGO_BIN_EXE_audio-worker");
    for (path, want) in common::BAD_INPUTS.iter().filter(|(_, want)| want.is_some()) {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(bin)
            .args(["prepare"])
            .arg(fixture(path))
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{path}: status {:?}, stderr {stderr}",
            output.status
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{path}: stderr {stderr:?}");
        assert!(
            lines[0].starts_with(&format!("error[{}]: ", want.unwrap())),
            "{path}: {}",
            lines[0]
        );
    }
}

/// The published schema and the manifest we write must not drift apart: every object has the
/// schema's required keys and no key the schema does not know.
#[test]
fn manifest_matches_its_published_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/manifest.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let (dir, result) = prepare(&fixture("audio/chrome.webm"), &with_pcm());
    result.unwrap();
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out").join(audio::MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    common::check_against(&schema, &written, "manifest");
}

/// The faster direct 16 kHz Opus path keeps the same timeline as the default 48 kHz one.
#[test]
fn opus_direct_16k_keeps_the_timeline() {
    let input = fixture("audio/speech.opus");
    let mut direct = PrepareOptions::default();
    direct.decode.opus_rate = 16_000;
    let (_a, canonical) = prepare(&input, &PrepareOptions::default());
    let (_b, direct) = prepare(&input, &direct);
    let (canonical, direct) = (canonical.unwrap(), direct.unwrap());
    assert_eq!(canonical.output.samples, direct.output.samples);
    assert!((canonical.source.duration_s - direct.source.duration_s).abs() <= 1.0 / 16_000.0);
    assert!(speech_matches(&direct.speech, &canonical.speech).is_ok());
}
