"""The Grafana dashboard and the server's metric names (see deploy_support.py for what the deploy checks cover)."""

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


