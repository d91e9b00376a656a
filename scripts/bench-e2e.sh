#!/usr/bin/env bash
# End-to-end benchmark: one generated recording through the real daemon (`audio-worker run`
# against redis-server, an in-process S3 server, PostgREST on PostgreSQL, a transcription fake
# with realistic latency and a rate limit, and a Gemini fake; tests/bench_e2e.rs) in text-only
# mode (gpt-transcribe) at several transcription concurrencies, then the original design's
# pydub preprocessing and the worker's own preprocessing (`audio-worker prepare --pcm`) on the
# same file. Prints a table with PASS/FAIL per target.
#
# Usage: scripts/bench-e2e.sh [MINUTES]        (default 60; 180 checks the 3-hour memory target)
#
# Environment (all optional):
#   BENCH_WHISPER_MODEL           gpt-transcribe (default: text only) or whisper-1
#   BENCH_LATENCY                 the fake's latency BASE+PER_S: seconds per request + per second
#                                 of piece audio (default 0.4+0.05)
#   BENCH_RATE_LIMIT_RPM          requests per rolling minute before 429 + Retry-After (300)
#   BENCH_TRANSCRIBE_CONCURRENCY  worker runs, comma-separated (default 1,4,8)
#   BENCH_SKIP_PYDUB=1            skip the pydub baseline (it takes minutes and GBs at 180 min)
#   BENCH_WORK                    where inputs and results go (default target/bench)
#
# Recording: fixtures/audio/speech-48k-mono.wav (two voices, alternating) looped with varying
# pauses, as scripts/bench-vs-ffmpeg.sh does, encoded as Chrome's MediaRecorder records: WebM
# (live shape, fixtures/webm_live.py), Opus 48 kHz mono 32 kb/s voip. Cached in BENCH_WORK.
# Results: BENCH_WORK/e2e-<N>min.json (the test's numbers) and e2e-<N>min.md (the table).
# Needs: cargo, sox, ffmpeg, python3 (+ venv), redis-server, PostgreSQL, /usr/bin/time (installed
# with apt when missing). pydub goes into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools.
set -euo pipefail
export LC_ALL=C

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MINUTES="${1:-60}"
CONC="${BENCH_TRANSCRIBE_CONCURRENCY:-1,4,8}"
WORK="${BENCH_WORK:-$ROOT/target/bench}"
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools"
VENV="$TOOLS/pydub-venv"
PYDUB_REQ="pydub==0.25.1"

die() { echo "bench-e2e: $*" >&2; exit 1; }
log() { echo "[bench-e2e] $*" >&2; }
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
[[ "$MINUTES" =~ ^[0-9]+$ && "$MINUTES" -gt 0 ]] || die "MINUTES must be a positive integer"

SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
apt_install() {
  log "installing $* with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
[[ -x /usr/bin/time ]] || apt_install time
for t in sox ffmpeg python3 redis-server cargo; do
  command -v "$t" >/dev/null || die "missing $t (Debian: sox ffmpeg python3 redis-server; cargo: rustup)"
done
MASTER="$ROOT/fixtures/audio/speech-48k-mono.wav"
[[ -f "$MASTER" ]] || die "missing $MASTER; run: bash fixtures/generate.sh"
mkdir -p "$WORK"

# ------------------------------------------------------------------ the recording
unit="$WORK/unit.wav"
make_unit() { # ~108 s: 12 copies of the master, each followed by a different pause
  [[ -f "$unit" ]] && return
  local pauses=(0.3 0.9 1.6 0.5 2.4 0.7 1.1 0.4 3.0 0.8 1.3 0.6) parts=() i
  for i in "${!pauses[@]}"; do
    sox -D -V1 -n -r 48000 -c 1 -b 16 "$WORK/pause$i.wav" trim 0 "${pauses[$i]}"
    parts+=("$MASTER" "$WORK/pause$i.wav")
  done
  sox -D -V1 "${parts[@]}" "$unit.tmp.wav" && mv "$unit.tmp.wav" "$unit"
  rm -f "$WORK"/pause*.wav
}
make_webm() { # MINUTES OUT
  [[ -f "$2" ]] && { log "reusing $2"; return; }
  log "generating $2 ($1 min Opus/WebM 48 kHz mono 32 kb/s, Chrome live shape)"
  local secs=$(($1 * 60)) reps
  reps=$(python3 -c "import math,sys; print(max(0, math.ceil(float(sys.argv[1]) / float(sys.argv[2])) - 1))" \
    "$secs" "$(soxi -D "$unit")")
  sox -D -V1 "$unit" -t wav - repeat "$reps" trim 0 "$secs" |
    ffmpeg -nostdin -v error -y -f wav -i - -c:a libopus -b:a 32k -application voip \
      -cluster_time_limit 2000 -fflags +bitexact -map_metadata -1 "$2.ffmpeg.webm"
  python3 "$ROOT/fixtures/webm_live.py" "$2.ffmpeg.webm" "$2.tmp" && mv "$2.tmp" "$2"
  rm -f "$2.ffmpeg.webm"
}
make_unit
INPUT="$WORK/speech-${MINUTES}min.webm"
make_webm "$MINUTES" "$INPUT"

# ------------------------------------------------------------------ build
log "building (release): the worker and tests/bench_e2e.rs"
cargo build --release --quiet --bin audio-worker
cargo test --release --quiet --test bench_e2e --no-run 2>/dev/null ||
  cargo test --release --test bench_e2e --no-run
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/audio-worker"

# ------------------------------------------------------------------ the daemon, end to end
E2E_JSON="$WORK/e2e-${MINUTES}min.json"
# Other work on this machine inflates wall times (CPU seconds much less): recorded in the table.
export BENCH_LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
log "daemon end to end: ${MINUTES} min, TRANSCRIBE_CONCURRENCY=$CONC"
BENCH_AUDIO="$INPUT" BENCH_TRANSCRIBE_CONCURRENCY="$CONC" \
  BENCH_OUT="$E2E_JSON" \
  cargo test --release --quiet --test bench_e2e -- --ignored --nocapture --test-threads=1 \
  >"$WORK/e2e-${MINUTES}min.stdout" || die "the end-to-end run failed (see above)"

# ------------------------------------------------------------------ preprocessing only
# time_v OUTFILE CMD...: runs CMD under /usr/bin/time -v (its report in OUTFILE.time)
time_v() {
  local out="$1"; shift
  cat "$INPUT" >/dev/null # warm the page cache: measure the work, not the disk
  if ! /usr/bin/time -v -o "$out.time" "$@" >"$out.stdout" 2>"$out.stderr"; then
    tail -5 "$out.stderr" >&2
    die "failed: $*"
  fi
}
PREP_OUT="$WORK/prepare-out"
rm -rf "$PREP_OUT"
log "audio-worker prepare --pcm (the worker's own preprocessing) on the same file"
time_v "$WORK/prepare-${MINUTES}min" "$BIN" prepare "$INPUT" --out "$PREP_OUT" --pcm
rm -rf "$PREP_OUT"

PYDUB_PREFIX="$WORK/pydub-${MINUTES}min"
if [[ "${BENCH_SKIP_PYDUB:-0}" != 1 ]]; then
  if [[ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$PYDUB_REQ" ]]; then
    log "installing $PYDUB_REQ into $VENV"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV" >/dev/null 2>&1 || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PYDUB_REQ"
    echo "$PYDUB_REQ" >"$VENV/.requirements"
  fi
  # pydub's audioop import: Python 3.13 removed audioop (pydub then needs audioop-lts).
  "$VENV/bin/python" -c 'import audioop' 2>/dev/null ||
    "$VENV/bin/pip" install --quiet --disable-pip-version-check audioop-lts
  log "pydub preprocessing (load, set_frame_rate(16000), set_channels(1), normalize, export WAV)"
  time_v "$PYDUB_PREFIX" "$VENV/bin/python" "$ROOT/scripts/pydub_preprocess.py" "$INPUT" "$WORK/pydub-out.wav"
  rm -f "$WORK/pydub-out.wav"
else
  rm -f "$PYDUB_PREFIX.time"
fi

# ------------------------------------------------------------------ report
TABLE="$WORK/e2e-${MINUTES}min.md"
python3 - "$E2E_JSON" "$WORK/prepare-${MINUTES}min.time" "$PYDUB_PREFIX.time" "$PYDUB_PREFIX.stdout" \
  "$MINUTES" >"$TABLE" <<'PY'
import json, os, re, subprocess, sys

e2e_path, prep_path, pydub_path, pydub_out, minutes = sys.argv[1:6]
minutes = int(minutes)
e2e = json.load(open(e2e_path))

def time_v(path):
    if not os.path.exists(path):
        return None
    text = open(path).read()
    def f(label):
        m = re.search(r"^\s*" + re.escape(label) + r":\s*(.+)$", text, re.M)
        return m.group(1).strip() if m else None
    wall = f("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return {
        "wall_s": secs,
        "cpu_s": float(f("User time (seconds)")) + float(f("System time (seconds)")),
        "rss_mb": int(f("Maximum resident set size (kbytes)")) / 1024,
    }

prep = time_v(prep_path)
pydub = time_v(pydub_path)
runs = sorted(e2e["runs"], key=lambda r: r["transcribe_concurrency"])
seq, par = runs[0], runs[-1]
audio_s = par["audio_s"]

def verdict(ok):
    return "PASS" if ok else "FAIL"

out = []
p = out.append
cpus = e2e["host_cpus"]
p(f"## audio-worker end to end: {minutes} min recording ({audio_s:.0f} s of audio, "
  f"{e2e['audio_bytes'] / 1e6:.1f} MB Opus/WebM 32 kb/s, Chrome live shape)")
p("")
lat = e2e["latency"]
p(f"Host: {cpus} CPUs, load average {os.environ.get('BENCH_LOADAVG', '?')} before the daemon runs. Transcription: `{e2e['whisper_model']}` fake, "
  f"latency {lat['base_s']} s + {lat['per_audio_s']} s per s of piece audio, {e2e['rate_limit_rpm']} requests per minute then 429 with Retry-After. "
  f"Analysis: {'Gemini fake (validated)' if e2e['analysis'] else 'off (ANALYSIS=off)'}. "
  "Worker CPU and peak RSS from /usr/bin/time -v around `audio-worker run` (whole process life: "
  "startup, the job, 1 s idle before exit; nothing subtracted).")
p("")
p("| TRANSCRIBE_CONCURRENCY | time to result s | simulated API wall s (sum) | the rest s | worker CPU s | CPU s per audio hour | peak RSS MB | requests (429s) | with context |")
p("|---|---|---|---|---|---|---|---|---|")
for r in runs:
    w = r["whisper"]
    p(f"| {r['transcribe_concurrency']} | {r['time_to_result_s']:.2f} | {w['simulated_wait_wall_s']:.2f} ({w['simulated_wait_sum_s']:.2f}) "
      f"| {r['time_to_result_minus_whisper_wall_s']:.2f} | {r['cpu_s']:.2f} ({r['cpu_user_s']:.2f} user + {r['cpu_system_s']:.2f} sys) "
      f"| {r['cpu_s_per_audio_hour']:.2f} | {r['peak_rss_mb']:.1f} | {w['requests']} ({w['rejected_429']}) | {100 * w['with_context_share']:.0f} % |")
p("")
w = par["whisper"]
sp = e2e["speaker_stage"]
p(f"Per audio hour: {w['requests_per_audio_hour']:.0f} requests, {w['billed_min_per_audio_hour']:.1f} billed audio minutes "
  f"(speech only; {w['billed_audio_min']:.1f} min for this recording). Speaker stage alone (`{sp['method']}`, in the benchmark process): "
  f"{sp['cpu_s']:.1f} CPU s, {sp['wall_s']:.1f} s wall = {sp['cpu_s_per_audio_hour']:.1f} CPU s per audio hour.")
p("")
speed = e2e["speedup"]["time_to_result"]
tphase = lambda r: next(ph for ph in r["phases"] if ph["phase"].startswith("transcription"))["wall_s"]
if len(runs) > 1:
    p(f"Parallel over sequential (concurrency {seq['transcribe_concurrency']} -> {par['transcribe_concurrency']}): "
      f"time to result {speed:.2f}x ({seq['time_to_result_s']:.1f} s -> {par['time_to_result_s']:.1f} s); "
      f"transcription phase {tphase(seq) / tphase(par):.2f}x ({tphase(seq):.1f} s -> {tphase(par):.1f} s); "
      f"ideal for these chunk lengths {par['whisper']['simulated_wait_sum_s'] / par['whisper']['simulated_wait_wall_s']:.2f}x.")
    p("")
p(f"Where the time and CPU go (concurrency {par['transcribe_concurrency']}; phases bounded by what the fakes saw, CPU and RSS sampled from /proc every 50 ms):")
p("")
p("| phase | wall s | worker CPU s | max RSS MB |")
p("|---|---|---|---|")
for ph in par["phases"]:
    p(f"| {ph['phase']} | {ph['wall_s']:.2f} | {ph['cpu_s']:.2f} | {ph['max_rss_mb']:.1f} |")
p("")
p("Preprocessing only, same file (page cache warm):")
p("")
p("| tool | wall s | CPU s | peak RSS MB |")
p("|---|---|---|---|")
if pydub:
    steps = ""
    if os.path.exists(pydub_out):
        try:
            steps = json.loads(open(pydub_out).read().strip().splitlines()[-1])["steps_s"]
            steps = " (" + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()) + ")"
        except Exception:
            steps = ""
    p(f"| pydub 0.25.1 + ffmpeg: from_file, set_frame_rate(16000), set_channels(1), normalize, export WAV{steps} | {pydub['wall_s']:.2f} | {pydub['cpu_s']:.2f} | {pydub['rss_mb']:.0f} |")
p(f"| audio-worker prepare --pcm (decode, 16 kHz, loudness, VAD, chunk files, PCM file) | {prep['wall_s']:.2f} | {prep['cpu_s']:.2f} | {prep['rss_mb']:.1f} |")
p(f"| audio-worker run, whole job minus simulated Whisper wall (concurrency {par['transcribe_concurrency']}) | {par['time_to_result_minus_whisper_wall_s']:.2f} | {par['cpu_s']:.2f} | {par['peak_rss_mb']:.1f} |")
p("")
p("Targets:")
p("")
p("| target | measured | verdict |")
p("|---|---|---|")
p(f"| speaker stage <= 10 CPU s per audio hour (issue 12; <= 20 s with the encoder, issue 13) | {sp['cpu_s_per_audio_hour']:.1f} s | {verdict(sp['cpu_s_per_audio_hour'] <= 20)} |")
for r in runs:
    p(f"| local CPU work < 1 % of the audio's duration (concurrency {r['transcribe_concurrency']}) | {r['cpu_pct_of_audio']:.3f} % ({r['cpu_s']:.1f} CPU s for {audio_s / 60:.0f} min) | {verdict(r['cpu_pct_of_audio'] < 1.0)} |")
peak = max(r["peak_rss_mb"] for r in runs)
if minutes >= 180:
    p(f"| peak RSS < 150 MB for a 3-hour recording, one job | {peak:.1f} MB | {verdict(peak < 150)} |")
else:
    p(f"| peak RSS < 150 MB for a 3-hour recording, one job | {peak:.1f} MB at {minutes} min (run with 180 to judge) | n/a |")
if pydub:
    like = pydub["wall_s"] / prep["wall_s"]
    whole = pydub["wall_s"] / par["time_to_result_minus_whisper_wall_s"]
    mem_like = pydub["rss_mb"] / prep["rss_mb"]
    mem_whole = pydub["rss_mb"] / par["peak_rss_mb"]
    p(f"| >= 10x faster than pydub: preprocessing vs preprocessing (pydub / prepare wall) | {like:.1f}x ({pydub['wall_s']:.1f} s vs {prep['wall_s']:.2f} s) | {verdict(like >= 10)} |")
    p(f"| >= 10x faster than pydub: pydub preprocessing vs the worker's whole local job (time to result minus Whisper wall) | {whole:.1f}x ({pydub['wall_s']:.1f} s vs {par['time_to_result_minus_whisper_wall_s']:.2f} s) | {verdict(whole >= 10)} |")
    p(f"| >= 10x less memory than pydub: preprocessing vs preprocessing (peak RSS) | {mem_like:.1f}x ({pydub['rss_mb']:.0f} MB vs {prep['rss_mb']:.1f} MB) | {verdict(mem_like >= 10)} |")
    p(f"| >= 10x less memory than pydub: pydub vs the worker's whole job (peak RSS) | {mem_whole:.1f}x ({pydub['rss_mb']:.0f} MB vs {par['peak_rss_mb']:.1f} MB) | {verdict(mem_whole >= 10)} |")
else:
    p("| >= 10x faster / less memory than pydub | pydub skipped (BENCH_SKIP_PYDUB=1) | n/a |")
print("\n".join(out))
PY
echo
cat "$TABLE"
echo
log "numbers: $E2E_JSON; table: $TABLE"
