#!/usr/bin/env bash
# Benchmark `audio-worker prepare` against ffmpeg's decode+downmix+resample to 16 kHz.
#
# Usage: scripts/bench-vs-ffmpeg.sh [--minutes 60] [--bin target/release/audio-worker]
#                                   [--three-hours] [--runs 3] [--work DIR] [--ffmpeg-only]
#
#   --minutes N     length of the generated recordings (default 60)
#   --bin PATH      the audio-worker binary (default target/release/audio-worker)
#   --three-hours   also generate a 180-minute Opus/WebM and report audio-worker's peak RSS
#   --runs N        timed runs per tool and input, alternating; best wall time is kept (3)
#   --work DIR      where inputs and outputs go (default ${TMPDIR:-/tmp}/audio-worker-bench;
#                   generated inputs are reused when present)
#   --ffmpeg-only   skip audio-worker (to check the inputs and the ffmpeg baseline)
#
# Inputs, generated from fixtures/audio/speech-48k-mono.wav (the master; make it with
# `bash fixtures/generate.sh`) looped with varying pauses:
#   speech-<N>min.webm         48 kHz mono Opus 32 kb/s voip in Chrome MediaRecorder's live
#                              shape (fixtures/webm_live.py)
#   speech-<N>min-stereo.wav   48 kHz stereo s16 (60 min = 691 MB)
# Timings from /usr/bin/time -f '%e %U %S %M': wall seconds, CPU seconds (user + system) and
# peak RSS. Wall and CPU are those of the run with the best wall time; the peak RSS shown is
# the maximum over the runs. Ratios are ffmpeg / ours (above 1: we are faster).
# Needs: sox ffmpeg python3 /usr/bin/time.
set -euo pipefail
export LC_ALL=C

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINUTES=60
BIN="$ROOT/target/release/audio-worker"
THREE=0
RUNS=3
WORK="${TMPDIR:-/tmp}/audio-worker-bench"
FFMPEG_ONLY=0

die() { echo "bench-vs-ffmpeg: $*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --minutes) MINUTES="${2:?}"; shift 2 ;;
    --bin) BIN="${2:?}"; shift 2 ;;
    --three-hours) THREE=1; shift ;;
    --runs) RUNS="${2:?}"; shift 2 ;;
    --work) WORK="${2:?}"; shift 2 ;;
    --ffmpeg-only) FFMPEG_ONLY=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ "$MINUTES" =~ ^[0-9]+$ && "$MINUTES" -gt 0 ]] || die "--minutes wants a positive integer"
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -gt 0 ]] || die "--runs wants a positive integer"

for t in sox ffmpeg python3; do
  command -v "$t" >/dev/null || die "missing $t (sudo apt-get install -y sox ffmpeg python3)"
done
[[ -x /usr/bin/time ]] || die "missing /usr/bin/time (sudo apt-get install -y time)"
if ((!FFMPEG_ONLY)); then
  [[ "$BIN" == */* ]] || BIN="$(command -v "$BIN" || echo "$BIN")"
  [[ -x "$BIN" ]] || die "audio-worker binary not found or not executable: $BIN
  build it first:  cargo build --release
  or point at it:  --bin PATH      (or run the ffmpeg baseline alone with --ffmpeg-only)"
fi
MASTER="$ROOT/fixtures/audio/speech-48k-mono.wav"
[[ -f "$MASTER" ]] || die "missing $MASTER; run: bash fixtures/generate.sh"

mkdir -p "$WORK"
log() { echo "[bench] $*" >&2; }

# ------------------------------------------------------------------ inputs
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
long_mono() { # MINUTES -> 48 kHz mono s16 WAV on stdout
  local secs=$(($1 * 60)) ulen reps
  ulen=$(soxi -D "$unit")
  reps=$(python3 -c "import math,sys; print(max(0, math.ceil(float(sys.argv[1]) / float(sys.argv[2])) - 1))" "$secs" "$ulen")
  sox -D -V1 "$unit" -t wav - repeat "$reps" trim 0 "$secs"
}
make_webm() { # MINUTES OUT
  [[ -f "$2" ]] && { log "reusing $2"; return; }
  log "generating $2 ($1 min Opus/WebM, Chrome live shape)"
  long_mono "$1" | ffmpeg -nostdin -v error -y -f wav -i - -c:a libopus -b:a 32k -application voip \
    -cluster_time_limit 2000 -fflags +bitexact -map_metadata -1 "$2.ffmpeg.webm"
  python3 "$ROOT/fixtures/webm_live.py" "$2.ffmpeg.webm" "$2.tmp" && mv "$2.tmp" "$2"
  rm -f "$2.ffmpeg.webm"
}
make_stereo_wav() { # MINUTES OUT
  [[ -f "$2" ]] && { log "reusing $2"; return; }
  log "generating $2 ($1 min 48 kHz stereo s16 WAV)"
  long_mono "$1" | sox -D -V1 -t wav - -b 16 "$2.tmp.wav" remix 1 1v0.5
  mv "$2.tmp.wav" "$2"
}

make_unit
WEBM="$WORK/speech-${MINUTES}min.webm"
WAV="$WORK/speech-${MINUTES}min-stereo.wav"
make_webm "$MINUTES" "$WEBM"
make_stereo_wav "$MINUTES" "$WAV"
if ((THREE)); then
  WEBM3="$WORK/speech-180min.webm"
  make_webm 180 "$WEBM3"
fi

# ------------------------------------------------------------------ timing
TF="$WORK/time.txt"
OUT="$WORK/out"
# run_timed LOGFILE CMD... -> prints "wall_s cpu_s maxrss_kb"; dies if CMD fails
run_timed() {
  local logf="$1"; shift
  if ! /usr/bin/time -f '%e %U %S %M' -o "$TF" "$@" >/dev/null 2>"$logf"; then
    echo "bench-vs-ffmpeg: command failed: $*" >&2
    tail -5 "$logf" >&2
    tail -1 "$TF" >&2 || true
    exit 1
  fi
  tail -1 "$TF" | awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }'
}
ffmpeg_cmd() { ffmpeg -nostdin -v error -i "$1" -ac 1 -ar 16000 -f s16le -; }
ours_cmd() { rm -rf "$OUT"; mkdir -p "$OUT"; "$BIN" prepare "$1" --out "$OUT"; }
export -f ffmpeg_cmd ours_cmd
export BIN OUT

# best RUN... -> "wall cpu" of the run with the least wall time ("wall cpu rss" per argument)
best() { python3 -c "import sys; r=min((tuple(map(float, a.split()[:2])) for a in sys.argv[1:])); print(f'{r[0]:.2f} {r[1]:.2f}')" "$@"; }
max_mb() { python3 -c "import sys; print(f'{max(int(a.split()[2]) for a in sys.argv[1:]) / 1024:.0f}')" "$@"; }
ratio() { python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{a/b:.2f}x' if b else 'inf')" "$1" "$2"; }

ROWS=()
bench() { # LABEL INPUT
  local label="$1" in="$2" r fr=() or=() res
  cat "$in" >/dev/null   # warm the page cache: measure decoding, not the disk
  for ((r = 1; r <= RUNS; r++)); do
    res=$(run_timed "$WORK/ffmpeg.log" bash -c 'ffmpeg_cmd "$0"' "$in")
    fr+=("$res")
    log "$label: ffmpeg run $r: wall, CPU s, KB: $res"
    if ((!FFMPEG_ONLY)); then
      res=$(run_timed "$WORK/ours.log" bash -c 'ours_cmd "$0"' "$in")
      or+=("$res")
      log "$label: audio-worker run $r: wall, CPU s, KB: $res"
    fi
  done
  local f fmb o="n/a n/a" omb="n/a" wr="n/a" cr="n/a"
  f=$(best "${fr[@]}"); fmb=$(max_mb "${fr[@]}")
  if ((!FFMPEG_ONLY)); then
    o=$(best "${or[@]}"); omb=$(max_mb "${or[@]}")
    wr=$(ratio "${f% *}" "${o% *}"); cr=$(ratio "${f#* }" "${o#* }")
  fi
  ROWS+=("| $label | ${f% *} | ${o% *} | $wr | ${f#* } | ${o#* } | $cr | $fmb | $omb |")
}

bench "${MINUTES} min Opus/WebM 48 kHz mono 32 kb/s (Chrome live)" "$WEBM"
bench "${MINUTES} min WAV 48 kHz stereo s16 ($(($(stat -c %s "$WAV") / 1000000)) MB)" "$WAV"
if ((THREE)) && ((!FFMPEG_ONLY)); then
  cat "$WEBM3" >/dev/null
  res=$(run_timed "$WORK/ours.log" bash -c 'ours_cmd "$0"' "$WEBM3")
  read -r w c _ <<<"$res"
  ROWS+=("| 180 min Opus/WebM 48 kHz mono 32 kb/s (Chrome live), audio-worker only | - | $w | - | - | $c | - | - | $(max_mb "$res") |")
fi
rm -rf "$OUT"

echo
echo "Host: $(nproc) CPUs, $(ffmpeg -version | head -1 | cut -d' ' -f1-3); best of $RUNS wall-clock runs (alternating), peak RSS = max over runs"
echo
echo "| input | ffmpeg wall s | ours wall s | wall ratio | ffmpeg CPU s | ours CPU s | CPU ratio | ffmpeg peak MB | ours peak MB |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
