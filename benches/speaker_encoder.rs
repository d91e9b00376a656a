//! Throughput of the speaker encoders (src/speakers/embed) on windows of
//! fixtures/dialogues/clear.flac, with 1 and 2 threads: GE2E on 1.6 s windows, CAM++ on 1.5 s
//! windows. Prints CPU per second of audio and CPU-seconds per audio hour when 32 minutes of it
//! are embedded (the pipeline embeds the speech, about that much per hour of a session),
//! measured from /proc/self/stat.
//!
//! `scripts/fetch-speaker-model.sh` and `SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh`
//! first (or set CAMPPLUS_MODEL_PATH and GE2E_MODEL_PATH), then
//! `cargo bench --bench speaker_encoder`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use audio_worker::audio::decode::{DecodeLimits, decode_file};
use audio_worker::speakers::embed::{
    SpeakerEncoder, campplus_model_path, ge2e_model_path, load_campplus, load_ge2e,
};

const WINDOWS: usize = 128;
/// Seconds of speech embedded per audio hour.
const SPEECH_PER_HOUR: f64 = 32.0 * 60.0;

fn samples() -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/dialogues/clear.flac");
    let mut samples = Vec::new();
    decode_file(&path, &DecodeLimits::default(), &mut |s| {
        samples.extend_from_slice(s);
        Ok(())
    })
    .expect("fixture decodes");
    samples
}

/// 128 windows of `len` samples, 0.6 s apart, wrapping around the 42 s file.
fn windows(samples: &[f32], len: usize) -> Vec<Vec<f32>> {
    (0..WINDOWS)
        .map(|i| {
            let start = (i * 9_600) % (samples.len() - len);
            samples[start..start + len].to_vec()
        })
        .collect()
}

/// utime + stime of this process in seconds (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ")": state is field 0, utime is 11, stime is 12.
    (tick(11) + tick(12)) / 100.0
}

fn report(name: &str, threads: usize, enc: &dyn SpeakerEncoder, refs: &[&[f32]]) {
    enc.embed(&refs[..4]); // warm up
    let rounds = 3;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        black_box(enc.embed(refs));
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let n = (rounds * refs.len()) as f64;
    let audio: f64 = rounds as f64 * refs.iter().map(|w| w.len()).sum::<usize>() as f64 / 16e3;
    println!(
        "speaker_encoder: {name}, {threads} thread(s): {:.1} windows/s wall, {:.2} ms CPU per \
         window, {:.2} ms CPU per audio second, {:.1} CPU-s and {:.1} wall-s per audio hour \
         (32 min embedded)",
        n / wall,
        1000.0 * cpu / n,
        1000.0 * cpu / audio,
        cpu / audio * SPEECH_PER_HOUR,
        wall / audio * SPEECH_PER_HOUR
    );
}

fn bench(c: &mut Criterion) {
    let ge2e_path = ge2e_model_path();
    load_ge2e(&ge2e_path)
        .unwrap_or_else(|e| panic!("{e}: run SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh"));
    let camp_path = campplus_model_path();
    load_campplus(&camp_path).unwrap_or_else(|e| panic!("{e}: run scripts/fetch-speaker-model.sh"));
    let samples = samples();
    let ge2e_data = windows(&samples, 25_600);
    let camp_data = windows(&samples, 24_000);
    let ge2e_refs: Vec<&[f32]> = ge2e_data.iter().map(|w| w.as_slice()).collect();
    let camp_refs: Vec<&[f32]> = camp_data.iter().map(|w| w.as_slice()).collect();

    for threads in [1, 2] {
        let ge2e = load_ge2e(&ge2e_path).unwrap().with_threads(threads);
        report("ge2e (1.6 s windows)", threads, &ge2e, &ge2e_refs);
        let camp = load_campplus(&camp_path).unwrap().with_threads(threads);
        report("campplus (1.5 s windows)", threads, &camp, &camp_refs);
    }

    let mut group = c.benchmark_group("speaker_encoder");
    group.sample_size(10);
    group.throughput(Throughput::Elements(WINDOWS as u64));
    for threads in [1, 2] {
        let enc = load_ge2e(&ge2e_path).unwrap().with_threads(threads);
        group.bench_function(format!("ge2e_128_windows_{threads}_threads"), |b| {
            b.iter(|| black_box(enc.embed(black_box(&ge2e_refs))))
        });
        let enc = load_campplus(&camp_path).unwrap().with_threads(threads);
        group.bench_function(format!("campplus_128_windows_{threads}_threads"), |b| {
            b.iter(|| black_box(enc.embed(black_box(&camp_refs))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
