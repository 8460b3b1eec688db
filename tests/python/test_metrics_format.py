"""gdnserve's /metrics text parses with prometheus-client's parser and says what was recorded.

Needs GDNSERVE_METRICS_TEST_BIN, the path of the metrics_test gtest binary
(server/metrics_test.cc). Its ServingMetricsDump.KnownWorkload test, with
GDNSERVE_METRICS_DUMP=path, records a fixed workload into a ServingMetrics and
writes Registry::Serialize() there; WORKLOAD below is that same workload (keep
the two equal), so every count, sum and bucket is checked against values this
file computes itself, and the bucket boundaries against its own transcription
of vLLM's (vllm/v1/metrics/loggers.py).

The parser (prometheus_client.parser.text_string_to_metric_families) is lax,
so the raw text is also checked line by line against the 0.0.4 grammar.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest

prometheus_parser = pytest.importorskip("prometheus_client.parser")

BIN = os.environ.get("GDNSERVE_METRICS_TEST_BIN")
pytestmark = pytest.mark.skipif(
    not BIN, reason="GDNSERVE_METRICS_TEST_BIN is unset: point it at the metrics_test binary "
                    "(server/metrics_test.cc) to check /metrics with prometheus-client's parser")

MODEL = 'gdn2 "tiny" \\ é\nv1'  # escaping of quote, backslash, newline; UTF-8
BUILD = {"version": "0.1.0", "device": "cpu"}

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0]
REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
ENGINE_STEP_BUCKETS = None  # gdnserve's own choice: only checked to be increasing

# The workload of RunKnownWorkload in server/metrics_test.cc.
SECONDS = [0.0009765625, 0.0078125, 0.03125, 0.25, 0.5, 1.0, 3.0, 1024.0, 4096.0]
SECONDS_HISTOGRAMS = [  # the i-th takes SECONDS[:9 - i]
    ("gdnserve_time_to_first_token_seconds", TTFT_BUCKETS),
    ("gdnserve_inter_token_latency_seconds", ITL_BUCKETS),
    ("gdnserve_e2e_request_latency_seconds", REQUEST_BUCKETS),
    ("gdnserve_request_queue_time_seconds", REQUEST_BUCKETS),
    ("gdnserve_request_prefill_time_seconds", REQUEST_BUCKETS),
    ("gdnserve_request_decode_time_seconds", REQUEST_BUCKETS),
    ("gdnserve_engine_step_seconds", ENGINE_STEP_BUCKETS),
]
HISTOGRAMS = {name: (buckets, SECONDS[:9 - i]) for i, (name, buckets) in enumerate(SECONDS_HISTOGRAMS)}
HISTOGRAMS["gdnserve_iteration_tokens_total"] = (ITERATION_TOKEN_BUCKETS, [1, 7, 64, 100, 20000])
GAUGES = {
    "gdnserve_num_requests_running": 3,
    "gdnserve_num_requests_waiting": 2,
    "gdnserve_state_slots_used": 3,
    "gdnserve_state_slots_total": 8,
    "gdnserve_state_bytes_per_sequence": 1572864,
}
COUNTERS = {"gdnserve_prompt_tokens_total": 1234, "gdnserve_generation_tokens_total": 567}
REQUEST_SUCCESS = {"stop": 3, "length": 2, "eos": 0, "cancelled": 1}
REQUEST_ERRORS = {"INVALID_ARGUMENT": 2, "RESOURCE_EXHAUSTED": 1}

# Every family as exposed (# TYPE name type). Counters end in _total in the
# text, as vLLM's prometheus_client exposes them (vllm:prompt_tokens_total).
EXPECTED_TYPES = {
    **{name: "gauge" for name in GAUGES},
    **{name: "histogram" for name in HISTOGRAMS},
    **{name: "counter" for name in COUNTERS},
    "gdnserve_request_success_total": "counter",
    "gdnserve_request_errors_total": "counter",
    "gdnserve_build_info": "gauge",
    # State reuse (issue 10): refreshed from the engine at scrape time, 0 in the dump.
    "gdnserve_prefix_cache_queries_total": "counter",
    "gdnserve_prefix_cache_hits_total": "counter",
    "gdnserve_prefix_cache_bytes": "gauge",
    "gdnserve_sessions": "gauge",
    "gdnserve_session_bytes": "gauge",
}

# Text format 0.0.4, the shapes this exporter writes.
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABELS = rf"\{{[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE})*\}}"
VALUE = r"(?:[+-]?Inf|NaN|-?[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"
SAMPLE_RE = re.compile(rf"({NAME})(?:{LABELS})? {VALUE}")
HELP_RE = re.compile(rf"# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*")
TYPE_RE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> str:
    dump = tmp_path_factory.mktemp("metrics") / "metrics.txt"
    result = subprocess.run(
        [BIN, "--gtest_filter=ServingMetricsDump.KnownWorkload"],
        env={**os.environ, "GDNSERVE_METRICS_DUMP": str(dump)},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 test" in result.stdout, f"the dump test did not run:\n{result.stdout}"
    return Path(dump).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def families(text: str) -> dict:
    parsed = list(prometheus_parser.text_string_to_metric_families(text))
    by_name = {}
    for family in parsed:
        assert family.name not in by_name, f"family {family.name} appears twice"
        by_name[family.name] = family
    return by_name


def parsed_name(exposed: str, typ: str) -> str:
    """The parser names a counter family without its _total suffix."""
    return exposed[:-len("_total")] if typ == "counter" else exposed


def cumulative(bounds: list[float], observed: list[float]) -> list[int]:
    return [sum(1 for v in observed if v <= b) for b in bounds] + [len(observed)]


def test_raw_text_follows_the_grammar(text: str):
    assert text.endswith("\n")
    declared: list[str] = []
    current = None
    lines = text[:-1].split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            m = HELP_RE.fullmatch(line)
            assert m, f"bad HELP line {i}: {line!r}"
            current = m.group(1)
            assert current not in declared, f"{current} declared twice"
            declared.append(current)
            assert lines[i + 1].startswith(f"# TYPE {current} "), f"HELP of {current} not followed by its TYPE"
        elif line.startswith("# TYPE "):
            m = TYPE_RE.fullmatch(line)
            assert m and m.group(1) == current, f"bad TYPE line {i}: {line!r}"
            assert EXPECTED_TYPES.get(current) == m.group(2), f"{current}: type {m.group(2)}"
        else:
            m = SAMPLE_RE.fullmatch(line)
            assert m, f"bad sample line {i}: {line!r}"
            name = m.group(1)
            allowed = [current] + ([current + s for s in ("_bucket", "_sum", "_count")]
                                   if EXPECTED_TYPES[current] == "histogram" else [])
            assert name in allowed, f"sample {name} outside its family {current}"
    assert sorted(declared) == sorted(EXPECTED_TYPES)
    # The counter naming vLLM's dashboards query.
    assert "# TYPE gdnserve_prompt_tokens_total counter\n" in text
    assert "gdnserve_prompt_tokens_total{" in text


def test_every_family_and_type(families: dict):
    expected = {parsed_name(name, typ): typ for name, typ in EXPECTED_TYPES.items()}
    assert {name: f.type for name, f in families.items()} == expected
    for family in families.values():
        assert family.documentation, f"{family.name} has no help"


def test_every_sample_is_labelled_with_the_model(families: dict):
    for family in families.values():
        assert family.samples, f"{family.name} has no samples"
        for sample in family.samples:
            assert sample.labels.get("model_name") == MODEL, (family.name, sample.labels)


def test_gauges_and_counters(families: dict):
    for name, value in GAUGES.items():
        [sample] = families[name].samples
        assert sample.labels == {"model_name": MODEL}
        assert sample.value == value, name
    for name, value in COUNTERS.items():
        [sample] = families[parsed_name(name, "counter")].samples
        assert sample.name == name
        assert sample.labels == {"model_name": MODEL}
        assert sample.value == value, name


def test_request_success_and_errors(families: dict):
    success = {s.labels["finished_reason"]: s.value for s in families["gdnserve_request_success"].samples}
    assert success == REQUEST_SUCCESS
    for s in families["gdnserve_request_success"].samples:
        assert s.name == "gdnserve_request_success_total"
        assert set(s.labels) == {"model_name", "finished_reason"}
    errors = {s.labels["code"]: s.value for s in families["gdnserve_request_errors"].samples}
    assert errors == REQUEST_ERRORS


def test_build_info(families: dict):
    [sample] = families["gdnserve_build_info"].samples
    assert sample.labels == {**BUILD, "model_name": MODEL}
    assert sample.value == 1


@pytest.mark.parametrize("name", sorted(HISTOGRAMS))
def test_histogram(families: dict, name: str):
    bounds, observed = HISTOGRAMS[name]
    samples = families[name].samples
    buckets = [s for s in samples if s.name == name + "_bucket"]
    les = [s.labels["le"] for s in buckets]
    assert les[-1] == "+Inf"
    got_bounds = [float(le) for le in les[:-1]]
    if bounds is None:  # engine_step_seconds: gdnserve's own buckets
        assert got_bounds == sorted(set(got_bounds)) and got_bounds
        bounds = got_bounds
    assert got_bounds == bounds, "bucket boundaries differ from vLLM's"
    for s in buckets:
        assert set(s.labels) == {"model_name", "le"}
    assert [s.value for s in buckets] == cumulative(bounds, observed)
    [count] = [s for s in samples if s.name == name + "_count"]
    [total] = [s for s in samples if s.name == name + "_sum"]
    assert count.value == len(observed)
    assert total.value == math.fsum(observed)  # dyadic values: every sum is exact
    assert count.labels == total.labels == {"model_name": MODEL}
    assert len(samples) == len(bounds) + 3
