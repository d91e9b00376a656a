#!/usr/bin/env python3
"""Deploy invariants that hadolint cannot see (run by scripts/lint-deploy.sh).

Checks fly.toml, the Dockerfile, .dockerignore, deploy/autoscaler/ and docs/operations.md
against each other and against the code. Needs Python >= 3.11 (tomllib) and PyYAML.
Prints one line per failed check and exits 1 if any failed.
"""

import math
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
failures: list[str] = []

# Read by the AWS SDK's standard environment loading (aws-config), not by name in src/.
AWS_SDK_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"}
# fly-autoscaler 0.3.1 reads these from its environment (cmd/fly-autoscaler/main.go).
FAS_ENV_VARS = {"FAS_API_TOKEN", "FAS_PROMETHEUS_TOKEN"}
# fly-autoscaler decodes its YAML with KnownFields(true): any key its Config struct lacks is fatal
# at start, and the autoscaler never scales. Keys per release (cmd/fly-autoscaler/main.go at the
# tag); `process-group` arrived in 0.3.2. The pinned image tag in deploy/autoscaler/fly.toml
# chooses the set, and an unknown tag fails the lint until its keys are added here.
FAS_KEYS_031 = {
    "app-name", "org", "regions", "created-machine-count",
    "min-created-machine-count", "max-created-machine-count", "initial-machine-state",
    "started-machine-count", "min-started-machine-count", "max-started-machine-count",
    "concurrency", "interval", "timeout", "app-list-refresh-interval", "api-token", "verbose",
    "metric-collectors",
}
FAS_KEYS_BY_VERSION = {
    "0.3.1": FAS_KEYS_031,
    "0.3.2": FAS_KEYS_031 | {"process-group"},
}
FAS_COLLECTOR_KEYS = {
    "type", "metric-name", "query", "address", "token", "namespace", "cert-data", "key-data",
}


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def seconds(value) -> float:
    """fly.toml durations: an integer (seconds) or a string like "30s", "5m"."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def code_reads(name: str, sources: str) -> bool:
    return f'"{name}"' in sources


def main() -> int:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    env = fly.get("env", {})
    svc = fly.get("http_service", {})
    metrics = fly.get("metrics", {})
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = "\n".join(p.read_text() for p in sorted((ROOT / "src").rglob("*.rs")))

    # --- shutdown and scale to zero ---
    check(fly.get("kill_signal") == "SIGINT", "fly.toml: kill_signal must be \"SIGINT\"")
    try:
        kill_timeout = seconds(fly["kill_timeout"])
        grace = float(env["SHUTDOWN_GRACE_S"])
        check(kill_timeout > grace,
              f"fly.toml: kill_timeout ({kill_timeout:g} s) must exceed SHUTDOWN_GRACE_S ({grace:g})")
        check(kill_timeout <= 300, "fly.toml: kill_timeout above Fly's maximum of 300 s")
    except (KeyError, ValueError) as e:
        failures.append(f"fly.toml: kill_timeout and [env] SHUTDOWN_GRACE_S needed ({e})")
    check(svc.get("auto_stop_machines") in ("off", False),
          "fly.toml: http_service.auto_stop_machines must be \"off\" (the proxy would stop busy workers)")
    check(svc.get("auto_start_machines") is True,
          "fly.toml: http_service.auto_start_machines must be true (the wake-up GET starts a machine)")
    check(svc.get("min_machines_running", 0) == 0, "fly.toml: min_machines_running must be 0")
    idle = env.get("EXIT_WHEN_IDLE", "")
    # The forms src/config.rs parse_duration accepts; zero would exit at once.
    check(bool(re.fullmatch(r"\d+(\.\d+)?(ms|s|m|min|h)?", idle)) and seconds(idle.replace("min", "m")) > 0,
          "fly.toml: [env] EXIT_WHEN_IDLE (e.g. \"5m\") is required: with autostop off the worker must stop itself")
    for r in fly.get("restart", []):
        check(r.get("policy") != "always",
              "fly.toml: [[restart]] policy \"always\" would restart a worker that exited idle")

    # --- ports ---
    check(svc.get("internal_port") == 8080, "fly.toml: http_service.internal_port must be 8080")
    check(str(svc.get("internal_port")) == env.get("PORT", "8080"),
          "fly.toml: [env] PORT differs from http_service.internal_port")
    check(metrics.get("port") == 9091 and metrics.get("path") == "/metrics",
          "fly.toml: [metrics] must be port 9091, path /metrics")
    check(str(metrics.get("port")) == env.get("METRICS_PORT", "9091"),
          "fly.toml: [env] METRICS_PORT differs from [metrics] port")
    check(any(c.get("path") == "/health" for c in svc.get("checks", [])),
          "fly.toml: http_service needs a check on /health")
    exposed = {int(p.split("/")[0]) for line in re.findall(r"(?m)^EXPOSE\s+(.+)$", dockerfile)
               for p in line.split()}
    check(exposed == {svc.get("internal_port"), metrics.get("port")},
          f"Dockerfile: EXPOSE {sorted(exposed)} must be the http and metrics ports")

    # --- no secrets in [env]; documented secrets and [env] are variables the code reads ---
    doc = (ROOT / "docs" / "operations.md").read_text()
    worker_secrets, autoscaler_secrets = set(), set()
    for line in re.findall(r"(?m)^\s*fly secrets set\b.*$", doc):
        names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", line))
        (autoscaler_secrets if "autoscaler" in line else worker_secrets).update(names)
    check(len(worker_secrets) > 0, "docs/operations.md: no `fly secrets set` lines for the worker")
    for name in sorted(worker_secrets):
        check(name not in env, f"fly.toml: secret {name} must not be in [env]")
        check(name in AWS_SDK_VARS or code_reads(name, sources),
              f"docs/operations.md: secret {name} is not read by the code (no \"{name}\" in src/)")
    for name in sorted(env):
        check(not re.search(r"KEY|SECRET|TOKEN|PASSWORD", name),
              f"fly.toml: {name} looks like a secret; set it with `fly secrets set`")
        # RUST_LOG may be read by tracing's EnvFilter without the name in our code.
        check(code_reads(name, sources) or (name == "RUST_LOG" and "EnvFilter" in sources),
              f"fly.toml: [env] {name} is not read by the code (no \"{name}\" in src/)")

    # --- Dockerfile: non-root, healthcheck, shared build script, every compiled-in file copied ---
    final = dockerfile[dockerfile.rfind("\nFROM "):]
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"),
          "Dockerfile: the runtime stage must end with a non-root USER")
    check(re.search(r'(?m)^HEALTHCHECK .*\n?.*"audio-worker", "health"', final) is not None,
          "Dockerfile: HEALTHCHECK must run `audio-worker health`")
    runs = re.findall(r"(?ms)^RUN .*?[^\\]$", dockerfile)
    check(sum("scripts/build-release.sh" in r for r in runs) == 2,
          "Dockerfile: the builder must run scripts/build-release.sh for the stub and the real build")
    copied = {s for line in re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", dockerfile)
              for s in line.split()[:-1]}
    copied_dirs = {c.rstrip("/") for c in copied}
    ignore = (ROOT / ".dockerignore").read_text().split()
    for c in sorted(copied_dirs):
        check(f"!{c}" in ignore or f"!{c}/" in ignore,
              f".dockerignore: allow-list lacks {c}, which the Dockerfile copies")
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for bench in cargo.get("bench", []):
        path = bench.get("path", f"benches/{bench['name']}.rs")
        check(path in dockerfile, f"Dockerfile: the dependency layer needs a stub {path}")
    check("build" not in cargo.get("package", {}) and not (ROOT / "build.rs").exists(),
          "Dockerfile: Cargo.toml has a build script now; copy it into both builder steps")
    for rs in sorted((ROOT / "src").rglob("*.rs")):
        for rel in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', rs.read_text()):
            target = (rs.parent / rel).resolve().relative_to(ROOT)
            top = target.parts[0]
            check(top in copied_dirs,
                  f"Dockerfile: {rs.relative_to(ROOT)} compiles in {target}, but {top}/ is not copied")

    # --- autoscaler ---
    fas_toml = tomllib.loads((ROOT / "deploy/autoscaler/fly.toml").read_text())
    raw = (ROOT / "deploy/autoscaler/fly-autoscaler.yml").read_text()
    fas = yaml.safe_load(raw)
    check(isinstance(fas, dict), "fly-autoscaler.yml: not a mapping")
    fas = fas or {}
    image = fas_toml.get("build", {}).get("image", "")
    version = image.rpartition(":")[2]
    known = FAS_KEYS_BY_VERSION.get(version)
    check(known is not None, f"deploy/autoscaler/fly.toml: image {image!r} is not a fly-autoscaler release this lint knows the keys of")
    unknown = sorted(set(fas) - known) if known is not None else []
    check(not unknown, f"fly-autoscaler.yml: keys {unknown} are not accepted by fly-autoscaler {version}")
    if "process-group" not in fas:
        check(len(fly.get("processes", {})) <= 1,
              "fly-autoscaler.yml: without process-group it scales every group of the worker app")
    check(fas.get("app-name") == fly.get("app"), "fly-autoscaler.yml: app-name is not fly.toml's app")
    defined = set(fas_toml.get("env", {})) | FAS_ENV_VARS
    for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", raw):
        check(var in defined, f"fly-autoscaler.yml: ${var} is neither in its fly.toml [env] nor a known secret")
    names = set()
    for c in fas.get("metric-collectors", []):
        check(set(c) <= FAS_COLLECTOR_KEYS, f"fly-autoscaler.yml: unknown collector keys {sorted(set(c) - FAS_COLLECTOR_KEYS)}")
        names.add(c.get("metric-name"))
        q = c.get("query", "")
        check("or vector(0)" in q, f"fly-autoscaler.yml: query {q!r} needs `or vector(0)` (scaled to zero = no series)")
        check(f'app="{fly.get("app")}"' in q, f"fly-autoscaler.yml: query {q!r} must select the worker app")
    check(names == {"queue_waiting", "queue_pending"}, "fly-autoscaler.yml: collect queue_waiting and queue_pending")
    for c in fas.get("metric-collectors", []):
        metric = re.search(r"(audio_worker_\w+)", c.get("query", ""))
        check(metric is not None and metric.group(1) in sources,
              f"fly-autoscaler.yml: {c.get('metric-name')} queries a metric the worker does not export")
    for name in sorted(autoscaler_secrets):
        check(name in FAS_ENV_VARS, f"docs/operations.md: autoscaler secret {name} is not read by fly-autoscaler")

    # The policy: start one machine per WORKER_CONCURRENCY jobs waiting or pending; never stop.
    expr = fas.get("min-started-machine-count", "")
    conc = int(env.get("WORKER_CONCURRENCY", "1"))

    def started(waiting: int, pending: int) -> int:
        ns = {"ceil": math.ceil, "floor": math.floor, "min": min, "max": max,
              "queue_waiting": waiting, "queue_pending": pending}
        return round(eval(expr, {"__builtins__": {}}, ns))  # expr-lang's arithmetic subset

    try:
        check(started(0, 0) == 0, "fly-autoscaler.yml: no jobs must want no machines")
        check(started(conc, 0) == 1 and started(0, conc) == 1,
              f"fly-autoscaler.yml: {conc} job(s) must want exactly 1 machine (WORKER_CONCURRENCY={conc})")
        check(started(conc + 1, 0) == min(2, started(10**6, 0)),
              f"fly-autoscaler.yml: {conc + 1} jobs must want 2 machines (WORKER_CONCURRENCY={conc})")
        cap = started(10**6, 10**6)
        check(1 <= cap < int(fas.get("max-started-machine-count", "0")),
              "fly-autoscaler.yml: max-started-machine-count must exceed the cap, so it never stops workers")
    except Exception as e:  # noqa: BLE001 - any eval error is a config error
        failures.append(f"fly-autoscaler.yml: cannot evaluate min-started-machine-count: {e}")

    for f in failures:
        print(f"check-deploy: {f}")
    print(f"check-deploy: {'FAILED' if failures else 'ok'} ({len(failures)} problem(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
