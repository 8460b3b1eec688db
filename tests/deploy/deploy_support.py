"""Shared paths, helpers and fixtures of the deploy/ checks (test_deploy_*.py).

The checks need neither a Docker engine nor a helm binary:

1. yamllint on every plain YAML file of deploy/ (Helm templates are Go
   templates, not YAML: they are checked structurally, and rendered with
   Helm's own engine when the helm-python-sdk package is installed).
2. The Grafana dashboard is valid JSON and queries only gdnserve's metric
   families, with the right series suffixes; the families are compared with a
   real exposition (GDNSERVE_METRICS_TEST_BIN: the metrics_test binary's dump)
   and a real GET /metrics (GDNSERVE_BIN, once it serves --http-port).
3. Every --flag the Dockerfiles, compose.yaml and the chart give gdnserve is
   one of `gdnserve --help`'s (GDNSERVE_BIN), whole command lines parse
   (`gdnserve ARGS --version` exits 0), and ports, probe paths and drain
   timings agree with the server's defaults and with each other.
4. The Dockerfiles build with the project's own scripts/install_deps.sh and
   the `release` CMake preset (one source of truth with the README and CI),
   and the CPU image's runtime packages cover what the binaries load.

Environment: GDNSERVE_BIN (a built gdnserve), GDNSERVE_TEST_MODELS (the
generated test models, for the live /metrics check), GDNSERVE_METRICS_TEST_BIN
(optional). Parts whose input is missing are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from fnmatch import fnmatch
from pathlib import Path

import pytest

try:
    import yaml
    import yamllint  # noqa: F401
except ImportError as e:  # fail loudly: a skipped check would pass CI unchecked
    raise ImportError("tests/deploy needs yamllint (with PyYAML): add it to requirements.txt "
                      "and run scripts/setup_python.sh") from e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "gdnserve"
TEMPLATES = CHART / "templates"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gdnserve.json"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERFILE_CUDA = DEPLOY / "docker" / "Dockerfile.cuda"
DOCKERFILES = [DOCKERFILE, DOCKERFILE_CUDA]
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.sh"
RUNTIME_PACKAGES = DEPLOY / "docker" / "runtime-packages.sh"
YAMLLINT_CONFIG = Path(__file__).resolve().parent / "yamllint.yaml"

GDNSERVE_BIN = os.environ.get("GDNSERVE_BIN", "")
METRICS_TEST_BIN = os.environ.get("GDNSERVE_METRICS_TEST_BIN", "")
TEST_MODELS = os.environ.get("GDNSERVE_TEST_MODELS", "")

# gdnserve's metric families (server/serving_metrics.h) and their types.
METRICS = {
    "gdnserve_num_requests_running": "gauge",
    "gdnserve_num_requests_waiting": "gauge",
    "gdnserve_state_slots_used": "gauge",
    "gdnserve_state_slots_total": "gauge",
    "gdnserve_state_bytes_per_sequence": "gauge",
    "gdnserve_build_info": "gauge",
    "gdnserve_time_to_first_token_seconds": "histogram",
    "gdnserve_inter_token_latency_seconds": "histogram",
    "gdnserve_e2e_request_latency_seconds": "histogram",
    "gdnserve_request_queue_time_seconds": "histogram",
    "gdnserve_request_prefill_time_seconds": "histogram",
    "gdnserve_request_decode_time_seconds": "histogram",
    "gdnserve_iteration_tokens_total": "histogram",
    "gdnserve_engine_step_seconds": "histogram",
    "gdnserve_prompt_tokens_total": "counter",
    "gdnserve_generation_tokens_total": "counter",
    "gdnserve_request_success_total": "counter",
    "gdnserve_request_errors_total": "counter",
}
# Labels a query may group or match by: the server's and Prometheus' own.
LABELS = {"model_name", "finished_reason", "code", "version", "device", "le", "instance", "job",
          "namespace", "pod", "service"}

# Flags of the HTTP front end (server/http/http_server.h; tests/http's
# http_test_server spells them as gdnserve will). A gdnserve built before the
# HTTP front end has none of them: uses of these are then skipped, not failed.
HTTP_FRONTEND_FLAGS = {"api_key", "api_key_file", "metrics_require_auth", "tls_cert", "tls_key",
                       "max_body_bytes", "max_header_bytes", "http_max_connections", "chat_template"}


def norm(flag: str) -> str:
    """--grpc-port / --grpc_port / grpc-port -> grpc_port (gdnserve takes either spelling)."""
    return flag.lstrip("-").split("=", 1)[0].replace("-", "_")


def flag_value(args: list[str], name: str) -> str | None:
    """The last value given to --name (gdnserve's rule for repeated flags)."""
    value = None
    for i, a in enumerate(args):
        if a.startswith("--") and norm(a) == norm(name):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
    return value


# --------------------------------------------------------------------------
# Helm: rendering with Helm's own engine (optional package helm-python-sdk).

try:
    import helm_python  # noqa: F401
    HAVE_HELM = True
except Exception:  # not installed, or its native library cannot load
    HAVE_HELM = False
needs_helm = pytest.mark.skipif(not HAVE_HELM, reason="helm-python-sdk (Helm's Go engine via ctypes) is not "
                                                     "installed: the chart is checked structurally only")

# Value sets the chart is rendered with: the defaults, and every option on.
CHART_VARIANTS = {
    "defaults": {},
    "everything": {
        "gpu": {"enabled": True},
        "server": {"device": "cpu", "extraArgs": ["--max-body-bytes=8388608"]},
        "apiKey": {"enabled": True, "value": "not-a-real-key"},
        "model": {"source": "initContainer"},
        "ingress": {"enabled": True, "className": "nginx",
                    "tls": [{"secretName": "gdnserve-tls", "hosts": ["gdnserve.example.com"]}]},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "autoscaling": {"enabled": True, "kind": "keda", "minReplicas": 0},
        "service": {"headless": True, "sessionAffinity": "ClientIP"},
        "podDisruptionBudget": {"enabled": True},
        "resources": {"limits": {"cpu": "2500m", "memory": "8Gi"}},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                "matchLabels": {"app.kubernetes.io/name": "gdnserve"}}}}]}},
    },
    "hpa-pvc": {
        "autoscaling": {"enabled": True, "kind": "hpa"},
        "model": {"source": "pvc", "name": "my-model", "pvc": {"claimName": "models", "subPath": "v1"}},
        "apiKey": {"enabled": True, "existingSecret": "gdnserve-key"},
        "shutdown": {"drainTimeoutSeconds": 120, "preStopSleepSeconds": 10, "exitMarginSeconds": 5},
        "probes": {"startup": {"maxLoadSeconds": 1801, "periodSeconds": 10}},
    },
    "hostpath": {"model": {"source": "hostPath", "hostPath": {"path": "/data/models"}},
                 "resources": {"requests": {"cpu": "500m"}, "limits": {}}},
}

_rendered_cache: dict[str, dict[str, str]] = {}


def render_chart(variant: str) -> dict[str, str]:
    """{template path: rendered text} for CHART_VARIANTS[variant]."""
    if variant not in _rendered_cache:
        import helm_python as helm
        with helm.Chart.load(str(CHART)) as chart:
            _rendered_cache[variant] = chart.render(CHART_VARIANTS[variant], name="demo", namespace="prod")
    return _rendered_cache[variant]


def rendered_objects(variant: str) -> list[dict]:
    objs = []
    for path, text in render_chart(variant).items():
        if path.endswith(".yaml"):
            objs += [d for d in yaml.safe_load_all(text) if d]
    return objs


def find_object(objs: list[dict], kind: str, name: str | None = None) -> dict:
    for o in objs:
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise AssertionError(f"no {kind} {name or ''} rendered")


def server_container(objs: list[dict]) -> dict:
    pod = find_object(objs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "gdnserve")


def expand_k8s_args(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def rendered_command(variant: str) -> list[str]:
    """The gdnserve container's args, $(VAR) expanded from its ConfigMap."""
    objs = rendered_objects(variant)
    container = server_container(objs)
    env = {}
    for src in container.get("envFrom", []):
        cm = find_object(objs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "")
    return expand_k8s_args(container["args"], env)


# --------------------------------------------------------------------------
# Files and the flags they give gdnserve.

def plain_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and TEMPLATES not in p.parents)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") and not cur:
            continue
        if line.strip().startswith("#"):
            continue  # a comment inside a continued instruction
        cur += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if cur.strip():
                word, _, rest = cur.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def dockerfile_exec_forms(path: Path) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) of the final stage, both exec form."""
    entry, cmd = [], []
    for ins, rest in dockerfile_instructions(path):
        if ins == "FROM":
            entry, cmd = [], []
        elif ins == "ENTRYPOINT":
            entry = json.loads(rest)
        elif ins == "CMD":
            cmd = json.loads(rest)
    return entry, cmd


def dockerfile_command(path: Path) -> list[str]:
    """What the container runs by default: ENTRYPOINT + CMD."""
    entry, cmd = dockerfile_exec_forms(path)
    return entry + cmd


def compose_default(value: str) -> str:
    """Compose interpolation with the variables unset: ${VAR:-default} -> default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def compose_command() -> list[str]:
    """The gdnserve service's command line: the image's ENTRYPOINT + compose's command."""
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["gdnserve"]
    entry = svc.get("entrypoint") or dockerfile_exec_forms(DOCKERFILE)[0]
    return [compose_default(a) for a in list(entry) + list(svc.get("command") or [])]


FLAG_RE = re.compile(r"(?<![\w-])--([a-z][a-z0-9_-]*)")


def template_flags() -> set[str]:
    """--flags in the chart's server args (structurally: the Deployment's `- --x` lines) and values.yaml."""
    flags = set()
    dep = (TEMPLATES / "deployment.yaml").read_text()
    args = dep[dep.index("args:"):dep.index("envFrom:")]
    flags |= {m.group(1) for m in re.finditer(r"^\s*-\s+[\"']?--([a-z][a-z0-9_-]*)", args, re.M)}
    # values.yaml documents fields by their flags (comments included).
    flags |= {m.group(1) for m in FLAG_RE.finditer((CHART / "values.yaml").read_text())}
    flags.discard("help")
    return flags


def used_flags() -> list[tuple[str, str]]:
    """(where, flag) for every gdnserve flag the deploy files use."""
    used = set()
    for df in DOCKERFILES:
        used |= {(df.name, norm(a)) for a in dockerfile_command(df)[1:] if a.startswith("--")}
    used |= {("compose.yaml", norm(a)) for a in compose_command()[1:] if a.startswith("--")}
    used |= {("helm chart", norm(f)) for f in template_flags()}
    return sorted(used)


# --------------------------------------------------------------------------
# The server binary: its flags and defaults.

@pytest.fixture(scope="session")
def server_help() -> dict[str, str]:
    """{flag (underscores): default} from `gdnserve --help`."""
    if not GDNSERVE_BIN:
        pytest.skip("GDNSERVE_BIN is unset: point it at a built gdnserve to check flags against --help")
    out = subprocess.run([GDNSERVE_BIN, "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    flags = {}
    blocks = re.split(r"^\s{2,}--(?=[a-z0-9_]+ \()", text, flags=re.M)[1:]
    for block in blocks:
        name = block.split(" ", 1)[0]
        m = re.search(r"default: (.*?);", block, re.S)
        flags[name] = m.group(1).strip().strip('"') if m else ""
    assert "grpc_port" in flags and "model" in flags, f"cannot parse `gdnserve --help`:\n{text}"
    return flags


def has_http_frontend(flags: dict[str, str]) -> bool:
    return bool(HTTP_FRONTEND_FLAGS & flags.keys())


def check_flag(flags: dict[str, str], flag: str, where: str) -> None:
    if flag in flags:
        return
    if flag in HTTP_FRONTEND_FLAGS and not has_http_frontend(flags):
        pytest.skip(f"--{flag} ({where}) belongs to the HTTP front end, which this gdnserve does not have yet")
    raise AssertionError(f"{where} uses --{flag.replace('_', '-')}, which `gdnserve --help` does not list")


def parses(command: list[str], flags: dict[str, str]) -> None:
    """`gdnserve ARGS --version` exits 0 iff every flag is known and its value parses."""
    args = command[1:] if command and Path(command[0]).name == "gdnserve" else command
    if not has_http_frontend(flags):
        args = [a for a in args if not (a.startswith("--") and norm(a) in HTTP_FRONTEND_FLAGS)]
    out = subprocess.run([GDNSERVE_BIN, *args, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"gdnserve rejects {args}:\n{out.stdout}{out.stderr}"


# ==========================================================================
# A live gdnserve (GDNSERVE_BIN with a test model), for /metrics and probes.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    if not GDNSERVE_BIN:
        pytest.skip("GDNSERVE_BIN is unset")
    model = Path(TEST_MODELS) / "tiny" if TEST_MODELS else None
    if not model or not (model / "config.json").exists():
        pytest.skip("no test model: set GDNSERVE_TEST_MODELS (ctest's test_models fixture makes them)")
    port = free_port()
    log = tmp_path_factory.mktemp("live") / "gdnserve.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen([GDNSERVE_BIN, f"--model={model}", "--host=127.0.0.1", "--grpc-port=0",
                                 f"--http-port={port}", "--threads=1", "--max-seqs=2"],
                                stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gdnserve exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                if http_get(port, "/readyz", timeout=2)[0] == 200:
                    break
            text = log.read_text()
            if "serving on" in text and ("not built yet" in text or "reserved" in text):
                pytest.skip("this gdnserve does not serve HTTP yet (--http-port reserved)")
            if time.monotonic() > deadline:
                if "serving on" in text:
                    pytest.skip(f"gdnserve serves gRPC but nothing answers on --http-port {port}")
                pytest.fail(f"gdnserve not ready after 60 s:\n{text}")
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
