//! `prepare` end to end on the committed fixtures: formats, fidelity, timeline, chunks, bad input.

mod common;

use std::path::Path;
use std::process::Command;

use audio_worker::ErrorCode;
use audio_worker::audio::decode::{self, DecodeLimits};
use audio_worker::audio::manifest::Manifest;
use audio_worker::audio::{self, PrepareOptions};
use common::{fixture, good_fixtures, in_band_ser, logmel, read_wav_mono};

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
        "{:<34} {:>9} {:>9} {:>8} {:>6} {:>8} {:>8}",
        "fixture", "dur_s", "want_s", "SER_dB", "lag", "mel", "mel_ref"
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
        let mut mel = (f64::NAN, f64::NAN);
        if f.codec.as_deref() == Some("opus") {
            // libopus at 16 kHz differs from 48 kHz + resampling in phase only: compare what the
            // transcriber hears, against the uncoded source (ARCHITECTURE.md).
            mel = opus_log_mel_distance(f, &ours, m.output.gain_db);
            if mel.0 > 0.1 || mel.0 > mel.1 + 0.02 {
                failures.push(format!(
                    "{}: log-mel distance to the source {:.4} (libopus at 48 kHz + sox: {:.4})",
                    f.path, mel.0, mel.1
                ));
            }
        } else if let Some(reference) = &f.reference {
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
            "{:<34} {:>9.4} {:>9.4} {:>8.1} {:>6} {:>8.4} {:>8.4}",
            f.path, m.source.duration_s, want, ser.0, ser.1, mel.0, mel.1
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

/// Whisper log-mel mean absolute difference between `ours` (undoing the normalisation gain) and
/// the uncoded source of the fixture, and the same for the fixture's libopus reference (decoded
/// at 48 kHz, resampled by sox): (ours, reference's).
fn opus_log_mel_distance(f: &common::Fixture, ours: &[f32], gain_db: f32) -> (f64, f64) {
    assert_eq!(
        f.master_window_s.map(|w| w[0]),
        Some(0.0),
        "{}: Opus fixtures hold the whole master",
        f.path
    );
    let (source, _) = read_wav_mono(&fixture("reference/speech-48k-mono.wav.16k.wav"));
    let gain = 10f32.powf(-gain_db / 20.0);
    let ours: Vec<f32> = ours.iter().map(|s| s * gain).collect();
    let source = logmel::log_mel(&source);
    let reference = f.reference.as_ref().map_or(f64::NAN, |r| {
        logmel::mean_abs_difference(&logmel::log_mel(&read_wav_mono(&fixture(r)).0), &source)
    });
    (
        logmel::mean_abs_difference(&logmel::log_mel(&ours), &source),
        reference,
    )
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

/// The canonical 48 kHz Opus path (`--opus-rate 48000`) keeps the same timeline as the direct
/// 16 kHz default, and both hear the same spectrum.
#[test]
fn opus_at_48k_keeps_the_timeline_of_the_direct_default() {
    for input in ["audio/speech.opus", "audio/opus.mp4"] {
        let mut canonical = with_pcm();
        canonical.decode.opus_rate = 48_000;
        let (a, direct) = prepare(&fixture(input), &with_pcm());
        let (b, canonical) = prepare(&fixture(input), &canonical);
        let (direct, canonical) = (direct.unwrap(), canonical.unwrap());
        assert_eq!(canonical.output.samples, direct.output.samples, "{input}");
        assert!((canonical.source.duration_s - direct.source.duration_s).abs() <= 1.0 / 16_000.0);
        assert!(speech_matches(&direct.speech, &canonical.speech).is_ok());
        let mel = |dir: &tempfile::TempDir, gain_db: f32| {
            let (pcm, _) = read_wav_mono(&dir.path().join("out").join(audio::PCM_FILE));
            let gain = 10f32.powf(-gain_db / 20.0);
            logmel::log_mel(&pcm.iter().map(|s| s * gain).collect::<Vec<_>>())
        };
        let between = logmel::mean_abs_difference(
            &mel(&a, direct.output.gain_db),
            &mel(&b, canonical.output.gain_db),
        );
        println!("{input}: log-mel distance 16 kHz direct vs 48 kHz + resampler: {between:.4}");
        assert!(between < 0.03, "{input}: {between}");
    }
}

/// Counts what reaches the sink: the hostile long files must be refused before any of it does.
fn decode_counting(
    path: &Path,
    limits: &DecodeLimits,
) -> (Result<decode::DecodeReport, audio_worker::Error>, u64) {
    let mut samples = 0u64;
    let result = decode::decode_file(path, limits, &mut |block| {
        samples += block.len() as u64;
        Ok(())
    });
    (result, samples)
}

/// Five hours in a few hundred kilobytes, with no duration in the headers: refused from the
/// timestamps (Opus: TOC durations) before a single sample is decoded or spilled. Before the
/// scan, both were refused only after decoding four hours (10-18 s of CPU, ~920 MB spilled).
#[test]
fn the_duration_limit_is_enforced_before_decoding() {
    for input in ["bad/opus-5h-tiny.webm", "bad/flac-5h-silence.flac"] {
        let (result, samples) = decode_counting(&fixture(input), &DecodeLimits::default());
        let err = result.expect_err(input);
        assert_eq!(err.code, ErrorCode::AudioTooLong, "{input}: {err}");
        assert_eq!(
            samples, 0,
            "{input}: {samples} samples decoded before the refusal"
        );
        // The scan stops at the limit, whatever it is.
        let one_minute = DecodeLimits {
            max_duration_s: 60.0,
            ..DecodeLimits::default()
        };
        let (result, limited) = decode_counting(&fixture(input), &one_minute);
        let err = result.expect_err(input);
        assert!(err.message.contains("limit of 1 minutes"), "{input}: {err}");
        assert_eq!(
            limited, 0,
            "{input}: {limited} samples decoded before the refusal"
        );
    }
}

/// Each refusal names what is wrong, so the user can do something about it. Chained Ogg is
/// decoded for Opus only: a chain of Vorbis recordings, or Opus followed by Vorbis, is refused.
#[test]
fn unsupported_inputs_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let chain = |name: &str, links: &[&str]| {
        let path = dir.path().join(name);
        let bytes: Vec<u8> = links
            .iter()
            .flat_map(|l| std::fs::read(fixture(l)).unwrap())
            .collect();
        std::fs::write(&path, bytes).unwrap();
        path
    };
    for (input, words) in [
        (fixture("bad/amr-nb.3gp"), "AMR-NB"),
        (
            chain("vorbis.ogg", &["audio/speech.ogg", "audio/speech.ogg"]),
            "chained Ogg",
        ),
        (
            chain("mixed.ogg", &["audio/speech.opus", "audio/speech.ogg"]),
            "chained Ogg",
        ),
    ] {
        let input = input.display().to_string();
        let (result, samples) = decode_counting(Path::new(&input), &DecodeLimits::default());
        let err = result.expect_err(&input);
        assert_eq!(
            err.code,
            ErrorCode::AudioUnsupportedFormat,
            "{input}: {err}"
        );
        assert!(err.message.contains(words), "{input}: {err}");
        assert_eq!(samples, 0, "{input}: refused before decoding");
    }
}

/// A chained Ogg file (two Opus recordings one after the other, each with its own `OpusHead`,
/// pre-skip and end granule) is one recording: both links, each trimmed on its own, in order.
/// Refused before the links were followed (AUDIO_UNSUPPORTED_FORMAT); decoding only the first
/// link would give 3 s.
#[test]
fn chained_ogg_opus_decodes_every_link_in_order() {
    let input = fixture("audio/chained.opus");
    let (_out, result) = prepare(&input, &PrepareOptions::default());
    let m = result.unwrap();
    // The links: master 0-3 s, then 3 s to the end (fixtures/generate.sh).
    let links = 3.0 + (7.837583 - 3.0);
    assert!(
        (m.source.duration_s - links).abs() <= 0.020,
        "{} s, want the sum of the links, {links} s",
        m.source.duration_s
    );
    assert!((m.output.duration_s - links).abs() <= 0.020);
    assert!(
        speech_matches(
            &m.speech,
            &good_fixture("audio/chained.opus").speech_regions.unwrap()
        )
        .is_ok(),
        "{:?}",
        m.speech
    );
    // Sample for sample what each link decodes to on its own, one after the other: each link's
    // own pre-skip and end are applied, nothing of either is lost or repeated.
    let bytes = std::fs::read(&input).unwrap();
    let second = second_link_offset(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let mut joined = Vec::new();
    for (i, link) in [&bytes[..second], &bytes[second..]].into_iter().enumerate() {
        let path = dir.path().join(format!("link{i}.opus"));
        std::fs::write(&path, link).unwrap();
        joined.extend(decode_samples(&path));
    }
    assert_eq!(decode_samples(&input), joined);
}

/// Where the second link of a chained Ogg file starts: the next page flagged "beginning of
/// stream" (RFC 3533 section 6).
fn second_link_offset(bytes: &[u8]) -> usize {
    (1..bytes.len() - 6)
        .find(|&i| &bytes[i..i + 4] == b"OggS" && bytes[i + 5] & 0x02 != 0)
        .expect("a second link")
}

/// Everything `decode_file` hands to its sink.
fn decode_samples(path: &Path) -> Vec<f32> {
    let mut samples = Vec::new();
    decode::decode_file(path, &DecodeLimits::default(), &mut |block| {
        samples.extend_from_slice(block);
        Ok(())
    })
    .unwrap();
    samples
}

fn good_fixture(path: &str) -> common::Fixture {
    good_fixtures()
        .into_iter()
        .find(|f| f.path == path)
        .unwrap()
}

/// The log-mel comparison can fail: the same decode 292 ms early (what reading MP4's big-endian
/// pre-skip as little-endian did) is far beyond the tolerance that every Opus fixture meets.
#[test]
fn the_log_mel_measure_sees_a_shifted_timeline() {
    let (source, _) = read_wav_mono(&fixture("reference/speech-48k-mono.wav.16k.wav"));
    let (decoded, _) = read_wav_mono(&fixture("reference/speech.opus.16k.wav"));
    let source = logmel::log_mel(&source);
    let aligned = logmel::mean_abs_difference(&logmel::log_mel(&decoded), &source);
    let early = logmel::mean_abs_difference(&logmel::log_mel(&decoded[4_672..]), &source);
    println!("log-mel distance: aligned {aligned:.4}, 292 ms early {early:.4}");
    assert!(aligned < 0.05, "{aligned}");
    assert!(early > aligned + 0.05, "{early} vs {aligned}");
}

/// The packets of an Ogg Opus file's first track, in order, as the demuxer hands them over.
fn ogg_opus_packets(path: &Path) -> Vec<Box<[u8]>> {
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::io::MediaSourceStream;
    let file = std::fs::File::open(path).unwrap();
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(&Hint::new(), mss, Default::default(), Default::default())
        .unwrap();
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = format.next_packet() {
        packets.push(packet.data);
    }
    packets
}

/// One fresh decoder (at 16 kHz) over `pre_roll` (output discarded) then `packets`.
fn decode_run(pre_roll: &[Box<[u8]>], packets: &[Box<[u8]>]) -> Vec<f32> {
    let segment = audio::opus::Segment {
        pre_roll: pre_roll.to_vec(),
        packets: packets.to_vec(),
        ..audio::opus::Segment::first()
    };
    audio::opus::decode_segment(segment, 16_000)
        .unwrap()
        .samples
}

/// The windows the seam measure looks at: the log-mel frames (400 samples every 160) that overlap
/// the 0.5 s after each seam, a seam every 25 packets (0.5 s).
fn seam_windows(packets: usize, per_packet: usize) -> Vec<(usize, std::ops::Range<usize>)> {
    (25..packets - 25)
        .step_by(25)
        .map(|seam| {
            let at = seam * per_packet;
            (seam, (at.saturating_sub(400) / 160)..((at + 8_000) / 160))
        })
        .collect()
}

/// Mean and worst of `distance` over the windows.
fn mean_and_worst(distances: impl Iterator<Item = f64>) -> (f64, f64) {
    let d: Vec<f64> = distances.collect();
    (
        d.iter().sum::<f64>() / d.len() as f64,
        d.iter().fold(0.0, |w, x| w.max(*x)),
    )
}

/// Log-mel distance over each seam window between decoding the whole stream with one decoder and
/// decoding it in two parts, the second by a fresh decoder warmed up on `pre_roll` packets.
fn seam_distance(packets: &[Box<[u8]>], pre_roll: usize) -> (f64, f64) {
    let whole = decode_run(&[], packets);
    let reference = logmel::log_mel(&whole);
    let windows = seam_windows(packets.len(), whole.len() / packets.len());
    mean_and_worst(windows.into_iter().map(|(seam, frames)| {
        let mut split = decode_run(&[], &packets[..seam]);
        split.extend(decode_run(
            &packets[seam - pre_roll..seam],
            &packets[seam..],
        ));
        assert_eq!(
            split.len(),
            whole.len(),
            "a split decode keeps the timeline"
        );
        let ours = logmel::log_mel(&split);
        logmel::mean_abs_difference(&ours[frames.clone()], &reference[frames])
    }))
}

/// The same windows' distance between libopus at 16 kHz and at 48 kHz plus our resampler (both
/// one sequential decoder): the difference already accepted as inaudible to the consumers.
fn direct_vs_48k_distance(packets: &[Box<[u8]>]) -> (f64, f64) {
    let direct = decode_run(&[], packets);
    let segment = audio::opus::Segment {
        packets: packets.to_vec(),
        ..audio::opus::Segment::first()
    };
    let at_48k = audio::opus::decode_segment(segment, 48_000)
        .unwrap()
        .samples;
    let mut resampler = audio::resample::MonoResampler::new(48_000).unwrap();
    let mut resampled = Vec::new();
    let mut keep = |b: &[f32]| {
        resampled.extend_from_slice(b);
        Ok(())
    };
    resampler.push(&at_48k, &mut keep).unwrap();
    resampler.finish(&mut keep).unwrap();
    assert_eq!(resampled.len(), direct.len());
    let (a, b) = (logmel::log_mel(&direct), logmel::log_mel(&resampled));
    let windows = seam_windows(packets.len(), direct.len() / packets.len());
    mean_and_worst(
        windows
            .into_iter()
            .map(|(_, frames)| logmel::mean_abs_difference(&a[frames.clone()], &b[frames])),
    )
}

/// Long Opus recordings are decoded in segments on several cores, each by a fresh decoder that
/// first decodes `PRE_ROLL_PACKETS` packets before its segment and discards them (RFC 7845
/// section 4.6). Around a seam, that decode and one sequential decoder hear the same spectrum: in
/// the 0.5 s after a seam they differ less on average than libopus at 16 kHz and at 48 kHz plus
/// resampling do in the same windows (a difference the consumers do not tell apart), and at worst
/// by less than twice that (measured: mean 0.0003 against 0.0008, worst 0.0017 against 0.0012;
/// both 20 times below the 0.030 between either decode and the uncoded source). Without a
/// pre-roll the seam shows (mean 0.0079), so the test can fail.
#[test]
fn opus_segment_seams_are_inaudible_in_the_log_mel_domain() {
    let packets = ogg_opus_packets(&fixture("audio/speech.opus"));
    assert!(packets.len() > 300, "{} packets", packets.len());
    for pre_roll in [0, 2, 4, 8, 16] {
        let (mean, worst) = seam_distance(&packets, pre_roll);
        println!(
            "pre-roll {pre_roll:>2} packets: seam log-mel distance mean {mean:.5}, worst {worst:.5}"
        );
    }
    let (rate_mean, rate_worst) = direct_vs_48k_distance(&packets);
    println!(
        "16 kHz direct vs 48 kHz + resampler, same windows: mean {rate_mean:.5}, worst {rate_worst:.5}"
    );
    let (mean, worst) = seam_distance(&packets, audio::opus::PRE_ROLL_PACKETS);
    assert!(
        mean < rate_mean && worst < 2.0 * rate_worst,
        "seams {mean:.5} / {worst:.5}, rates {rate_mean:.5} / {rate_worst:.5}"
    );
    let (cold_mean, _) = seam_distance(&packets, 0);
    assert!(
        cold_mean > rate_mean,
        "a cold start ({cold_mean:.5}) must show"
    );
}
