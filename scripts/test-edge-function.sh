#!/usr/bin/env bash
# Tests the Supabase Edge Function supabase/functions/enqueue-audio-processing: deno fmt --check,
# lint and check, then its tests against a real redis-server (started here on a free loopback
# port, no persistence) and the Rust worker's `validate-job`.
#
# Needs npm (only to install Deno), redis-server and redis-cli. Deno comes from the npm package
# `deno`, installed without root into TOOLS; its cache (DENO_DIR) lives there too, not in the repo.
#   TOOLS             default ${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools
#   DENO              a deno binary to use instead
#   AUDIO_WORKER_BIN  default target/debug/audio-worker (then built with cargo first)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FN=supabase/functions/enqueue-audio-processing
TOOLS=${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/audio-worker-tools}
export DENO_DIR="$TOOLS/deno-dir"
export DENO_NO_UPDATE_CHECK=1 NO_COLOR=1

# The npm package puts the real binary in its platform package (@deno/linux-x64-glibc/deno, ...);
# node_modules/.bin/deno is a copy made by a postinstall script npm may not run, so try both.
find_deno() {
  local d
  for d in "$TOOLS"/node_modules/@deno/*/deno "$TOOLS"/node_modules/.bin/deno; do
    if [ -x "$d" ] && "$d" --version >/dev/null 2>&1; then echo "$d"; return 0; fi
  done
  return 1
}
if [ -n "${DENO:-}" ]; then
  :
elif command -v deno >/dev/null && deno --version | grep -q '^deno [2-9]'; then
  DENO=$(command -v deno)
elif ! DENO=$(find_deno); then
  command -v npm >/dev/null || { echo "npm is needed to install Deno" >&2; exit 1; }
  echo "installing deno@2 into $TOOLS (npm)"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error deno@2 >/dev/null
  DENO=$(find_deno) || { echo "no working deno binary under $TOOLS/node_modules" >&2; exit 1; }
fi
echo "$("$DENO" --version | head -1) ($DENO)"

if [ -z "${AUDIO_WORKER_BIN:-}" ]; then
  # Built here so the tests never run a stale binary (a no-op when it is up to date).
  cargo build --locked --quiet --bin audio-worker
  AUDIO_WORKER_BIN="$ROOT/target/debug/audio-worker"
fi
export AUDIO_WORKER_BIN

# A throwaway redis-server: free loopback port, no RDB/AOF, a random password (kept in a 0600
# config file so it is not on the command line), stopped and removed on exit.
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
WORK=$(mktemp -d)
REDIS_PID=""
cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
( umask 077; printf 'requirepass %s\n' "$password" >"$WORK/redis.conf" )
for _ in 1 2 3; do
  port=$("$DENO" eval 'const l = Deno.listen({ hostname: "127.0.0.1", port: 0 }); console.log(l.addr.port); l.close();')
  redis-server "$WORK/redis.conf" --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
  REDIS_PID=$!
  for _ in $(seq 50); do
    if REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      break 2
    fi
    kill -0 "$REDIS_PID" 2>/dev/null || break # lost the port race: try another
    sleep 0.1
  done
  kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""
done
[ -n "$REDIS_PID" ] || { echo "redis-server did not start:" >&2; cat "$WORK/redis.log" >&2; exit 1; }
export REDIS_URL="redis://:$password@127.0.0.1:$port"

cd "$FN"
"$DENO" fmt --check
"$DENO" lint
"$DENO" check index.ts handler.ts redis.ts handler_test.ts
"$DENO" test --allow-net --allow-env --allow-run --allow-read handler_test.ts
