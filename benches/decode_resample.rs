//! Throughput of the audio front end's hot paths on committed fixtures: decode + downmix +
//! resample to 16 kHz (per container/codec), and the resampler alone.
//!
//! `cargo bench --bench decode_resample`. The whole-binary comparison with ffmpeg on hour-long
//! recordings is `scripts/bench-vs-ffmpeg.sh`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use audio_worker::audio::decode::{DecodeLimits, decode_file};
use audio_worker::audio::resample::MonoResampler;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_to_16k");
    for name in [
        "chrome.webm",
        "safari.m4a",
        "speech.mp3",
        "speech-48k-mono.wav",
        "speech.flac",
    ] {
        let path = fixture(&format!("audio/{name}"));
        let limits = DecodeLimits::default();
        // Throughput in seconds of audio: criterion's "elements" are 16 kHz output samples.
        let mut samples = 0u64;
        decode_file(&path, &limits, &mut |s| {
            samples += s.len() as u64;
            Ok(())
        })
        .expect("fixture decodes");
        group.throughput(Throughput::Elements(samples));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0.0f32;
                decode_file(&path, &limits, &mut |s| {
                    sum += s[0];
                    Ok(())
                })
                .unwrap();
                black_box(sum)
            })
        });
    }
    group.finish();
}

fn resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_to_16k");
    for rate in [44_100u32, 48_000] {
        let input: Vec<f32> = (0..rate * 10)
            .map(|n| ((n * 7919) % 2000) as f32 / 2000.0 - 0.5)
            .collect();
        group.throughput(Throughput::Elements(input.len() as u64));
        group.bench_function(format!("{rate}Hz_10s"), |b| {
            b.iter(|| {
                let mut r = MonoResampler::new(rate).unwrap();
                let mut n = 0usize;
                for block in input.chunks(4096) {
                    r.push(block, &mut |s| {
                        n += s.len();
                        Ok(())
                    })
                    .unwrap();
                }
                r.finish(&mut |s| {
                    n += s.len();
                    Ok(())
                })
                .unwrap();
                black_box(n)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, resample);
criterion_main!(benches);
