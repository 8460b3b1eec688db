"""Tests of the C++ clients (gdnserve-cli, gdnserve-bench) against the in-process
fake server (fake_server.py). The binaries are looked up in $GDNSERVE_BIN_DIR,
then in build/*/clients/ of the repository; the tests skip when there are none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fake_server  # noqa: E402

PATTERN = fake_server.PATTERN


def find_binary(name: str) -> Path | None:
    if os.environ.get("GDNSERVE_BIN_DIR"):
        candidates = [Path(os.environ["GDNSERVE_BIN_DIR"]) / name]
    else:  # the newest build of the repository
        candidates = sorted(HERE.parents[1].glob(f"build/*/clients/{name}"), key=lambda p: p.stat().st_mtime)[::-1]
    for p in candidates:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


CLI = find_binary("gdnserve-cli")
BENCH = find_binary("gdnserve-bench")


@pytest.fixture(scope="module")
def server():
    # 300 threads: every open stream of the 256-stream bench holds one.
    srv, service, port = fake_server.serve(0, max_workers=300)
    yield service, f"127.0.0.1:{port}"
    srv.stop(0)


def run(binary, addr, *args, timeout=60):
    return subprocess.run([str(binary), f"--addr={addr}", *args], capture_output=True, text=True, timeout=timeout)


needs_cli = pytest.mark.skipif(CLI is None, reason="gdnserve-cli not built")
needs_bench = pytest.mark.skipif(BENCH is None, reason="gdnserve-bench not built")


@needs_cli
def test_cli_streams_text_and_summary(server):
    service, addr = server
    r = run(CLI, addr, "--max_tokens=10", "--temperature=0", "Hello", "world")
    assert r.returncode == 0, r.stderr
    assert r.stdout == PATTERN[:10] + "\n"
    assert "finish: length" in r.stderr and "completion 10 tokens" in r.stderr
    req = service.requests[-1]
    assert req.text == "Hello world"
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0
    assert not req.sampling.HasField("top_p") and not req.sampling.HasField("seed")


@needs_cli
def test_cli_flags_reach_the_request(server):
    service, addr = server
    # Dashed names work as the server's do; a value that looks like a flag is left alone.
    r = run(CLI, addr, "--max-tokens=40", "--stop=fox", "--stop", "lazy,a\\,b", "--stop", "-x-y",
            "--stop_token_ids=7,8", "--top_k=5", "--top-p", "0.5", "--min_p=0.1", "--repetition_penalty=1.1",
            "--presence_penalty=0.5", "--frequency-penalty=-0.5", "--seed=42", "--ignore-eos", "--request_id=abc",
            "Hi")
    assert r.returncode == 0, r.stderr
    req = service.requests[-1]
    assert list(req.stop.stop) == ["fox", "lazy", "a,b", "-x-y"]
    assert list(req.stop.stop_token_ids) == [7, 8] and req.stop.ignore_eos and req.stop.max_tokens == 40
    s = req.sampling
    assert (s.top_k, s.seed) == (5, 42)
    assert s.top_p == pytest.approx(0.5) and s.min_p == pytest.approx(0.1)
    assert s.repetition_penalty == pytest.approx(1.1)
    assert (s.presence_penalty, s.frequency_penalty) == (pytest.approx(0.5), pytest.approx(-0.5))
    assert req.request_id == "abc"
    assert r.stdout == "The quick brown \n" and "finish: stop" in r.stderr


@needs_cli
def test_cli_json_lines(server):
    _, addr = server
    r = run(CLI, addr, "--json", "--max_tokens=4", "--n=2", "--logprobs=1", "Hi")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 4
    text = {0: "", 1: ""}
    for msg in lines:
        for d in msg["samples"]:
            text[d.get("index", 0)] += d.get("text", "")
            assert len(d["logprobs"]) == 1
    assert text == {0: PATTERN[:4], 1: PATTERN[4:8]}
    assert lines[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8}


@needs_cli
def test_cli_n_samples_and_complete(server):
    _, addr = server
    r = run(CLI, addr, "--max_tokens=5", "--n=2", "Hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"--- sample 0 ---\n{PATTERN[:5]}\n--- sample 1 ---\n{PATTERN[4:9]}\n"
    r = run(CLI, addr, "--complete", "--max_tokens=5", "Hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == PATTERN[:5] + "\n" and "finish: length" in r.stderr
    r = run(CLI, addr, "--complete", "--json", "--max_tokens=5", "--prompt_ids=5,6", "")
    assert r.returncode == 2  # both a PROMPT and --prompt_ids
    r = run(CLI, addr, "--complete", "--json", "--max_tokens=5", "--prompt_ids=5,6")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["usage"]["prompt_tokens"] == 2


@needs_cli
def test_cli_errors_print_code_and_message(server):
    _, addr = server
    r = run(CLI, addr, "")
    assert r.returncode == 1
    assert "INVALID_ARGUMENT: prompt: empty" in r.stderr
    r = run(CLI, addr, "overload")
    assert r.returncode == 1 and "RESOURCE_EXHAUSTED: queue full" in r.stderr
    r = run(CLI, addr, "--timeout_ms=200", "slow")
    assert r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stderr
    r = run(CLI, addr, "--max_tokens=0", "x")
    assert r.returncode == 1 and "INVALID_ARGUMENT: stop.max_tokens" in r.stderr
    r = run(CLI, addr)
    assert r.returncode == 2 and "no PROMPT" in r.stderr


@needs_cli
def test_cli_ctrl_c_cancels(server):
    service, addr = server
    service.cancel_seen.clear()
    p = subprocess.Popen([str(CLI), f"--addr={addr}", "--max_tokens=50", "slow"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while service.running == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.7)  # a token or so has been printed
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 130, err
    assert out.startswith("T") and "cancelled" in err
    assert service.cancel_seen.wait(5), "the server never saw the cancellation"


@needs_cli
def test_cli_tokenize_detokenize_info(server):
    _, addr = server
    r = run(CLI, addr, "--tokenize=hi", "--add_bos")
    assert r.returncode == 0, r.stderr
    ids = [fake_server.BOS] + fake_server.encode("hi")
    assert r.stdout.splitlines()[0] == f"3 tokens: {','.join(map(str, ids))}"
    r = run(CLI, addr, "--detokenize=" + ",".join(map(str, fake_server.encode("héllo"))))
    assert r.returncode == 0 and r.stdout == "héllo\n"
    r = run(CLI, addr, "--info")
    assert r.returncode == 0 and "vocab_size                 259" in r.stdout
    r = run(CLI, addr, "--info", "--json")
    assert json.loads(r.stdout)["model_name"] == "fake"
    r = run(CLI, addr, "--help")
    assert "--temperature" in r.stdout + r.stderr and "--tokenize" in r.stdout + r.stderr


@needs_bench
def test_bench_256_streams(server, tmp_path):
    service, addr = server
    out = tmp_path / "bench.json"
    r = run(BENCH, addr, "--concurrency=256", "--requests=512", "--prompt-tokens=16", "--output-tokens=6",
            f"--json-out={out}", timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["requests_ok"] == 512 and res["requests_failed"] == 0 and res["errors"] == {}
    assert res["total_output_tokens"] == 512 * 6 and res["short_outputs"] == 0
    assert res["ttft_ms"]["count"] == 512 and res["itl_ms"]["count"] == 512 * 5
    assert 0 < res["ttft_ms"]["p50"] <= res["ttft_ms"]["p90"] <= res["ttft_ms"]["p99"]
    assert res["output_tokens_per_s"] > 0 and res["requests_per_s"] > 0
    for line in ("TTFT", "ITL", "TPOT", "E2E", "requests   512 ok, 0 failed"):
        assert line in r.stdout
    # Token-id prompts of the asked length, ids in [3, vocab).
    req = service.requests[-1]
    assert len(req.token_ids.ids) == 16 and all(3 <= i < fake_server.VOCAB for i in req.token_ids.ids)
    assert req.stop.max_tokens == 6 and req.stop.ignore_eos


@needs_bench
def test_bench_counts_errors_by_code(server):
    _, addr = server
    # The fake refuses prompts over 4096 tokens.
    r = run(BENCH, addr, "--concurrency=4", "--requests=8", "--prompt_tokens=5000", "--output_tokens=2",
            "--json_out=-")
    assert r.returncode == 1  # nothing succeeded
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["errors"]["INVALID_ARGUMENT"]["count"] == 8
    assert "error INVALID_ARGUMENT: 8" in r.stdout


@needs_bench
def test_bench_duration(server):
    _, addr = server
    t0 = time.monotonic()
    r = run(BENCH, addr, "--concurrency=8", "--duration_s=1", "--prompt_tokens=4", "--output_tokens=3",
            "--json_out=-")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["requests_ok"] > 8 and res["requests_failed"] == 0
    assert time.monotonic() - t0 < 30
