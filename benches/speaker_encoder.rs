//! Throughput of the GE2E speaker encoder (src/speakers/embed) on 1.6 s windows of
//! fixtures/dialogues/clear.flac, with 1 and 2 threads. Also prints CPU-seconds per audio hour at
//! one window per 1.6 s of speech (2 250 windows), measured from /proc/self/stat.
//!
//! `scripts/fetch-speaker-model.sh` first (or set SPEAKER_MODEL_PATH), then
//! `cargo bench --bench speaker_encoder`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use audio_worker::audio::decode::{DecodeLimits, decode_file};
use audio_worker::speakers::embed::{SpeakerEncoder, default_model_path, load_ge2e};

const WINDOWS: usize = 128;

fn windows() -> Vec<Vec<f32>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/dialogues/clear.flac");
    let mut samples = Vec::new();
    decode_file(&path, &DecodeLimits::default(), &mut |s| {
        samples.extend_from_slice(s);
        Ok(())
    })
    .expect("fixture decodes");
    // 128 windows of 1.6 s, 0.6 s apart, wrapping around the 42 s file (two full batches).
    (0..WINDOWS)
        .map(|i| {
            let start = (i * 9_600) % (samples.len() - 25_600);
            samples[start..start + 25_600].to_vec()
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

fn bench(c: &mut Criterion) {
    let path = default_model_path();
    let model =
        load_ge2e(&path).unwrap_or_else(|e| panic!("{e}: run scripts/fetch-speaker-model.sh"));
    let data = windows();
    let refs: Vec<&[f32]> = data.iter().map(|w| w.as_slice()).collect();

    for threads in [1, 2] {
        let enc = load_ge2e(&path).unwrap().with_threads(threads);
        enc.embed(&refs[..4]); // warm up
        let rounds = 3;
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        for _ in 0..rounds {
            black_box(enc.embed(&refs));
        }
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        let n = (rounds * WINDOWS) as f64;
        let per_hour = 3600.0 / 1.6;
        println!(
            "speaker_encoder: {threads} thread(s): {:.1} windows/s wall, {:.2} ms CPU per window, \
             {:.1} CPU-s and {:.1} wall-s per audio hour (2250 windows)",
            n / wall,
            1000.0 * cpu / n,
            cpu / n * per_hour,
            wall / n * per_hour
        );
    }

    let mut group = c.benchmark_group("speaker_encoder");
    group.sample_size(10);
    group.throughput(Throughput::Elements(WINDOWS as u64));
    for threads in [1, 2] {
        let enc = load_ge2e(&path).unwrap().with_threads(threads);
        group.bench_function(format!("ge2e_128_windows_{threads}_threads"), |b| {
            b.iter(|| black_box(enc.embed(black_box(&refs))))
        });
    }
    group.finish();
    drop(model);
}

criterion_group!(benches, bench);
criterion_main!(benches);
