//! Any bytes → `audio::prepare`: must return `Ok` or `Err`, never panic, abort or hang.
//!
//! libfuzzer-sys aborts on every panic, including one the decode thread would catch and report as
//! `AUDIO_DECODE_FAILED`: a contained panic is still a bug worth a fixture.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use audio_worker::audio::{self, PrepareOptions};
use libfuzzer_sys::fuzz_target;

struct Scratch {
    _dir: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        Scratch {
            input: dir.path().join("input"),
            out: dir.path().join("out"),
            _dir: dir,
        }
    })
}

fn options() -> PrepareOptions {
    let mut opts = PrepareOptions::default();
    // Small limits keep one run short; hostile headers must still be refused, not obeyed.
    opts.decode.max_input_bytes = 1 << 20;
    opts.decode.max_duration_s = 60.0;
    opts.decode.threads = 1;
    // Small chunks and the whole-recording WAV exercise the chunker and the writer too.
    opts.chunks.max_duration_s = 8.0;
    opts.chunks.max_file_bytes = 200_000;
    opts.chunks.search_window_s = 3.0;
    opts.write_pcm = true;
    opts
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    std::fs::write(&s.input, data).expect("write the input");
    let _ = std::fs::remove_dir_all(&s.out);
    let _ = audio::prepare(&s.input, &s.out, &options());
});
