"""yamllint and the Helm chart (see deploy_support.py for what the deploy checks cover)."""

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


