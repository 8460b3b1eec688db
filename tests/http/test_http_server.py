"""Probes, /metrics, security switches, limits and failure modes, with curl,
raw HTTP and prometheus-client's text parser."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import IS_TEST_SERVER, MODEL_NAME

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def curl(url: str, *args: str) -> tuple[int, str]:
    """(status, body) of a curl request."""
    out = subprocess.run([CURL, "-sS", "-k", "-o", "-", "-w", "\n%{http_code}", *args, url], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def metrics(server, headers: dict | None = None) -> dict:
    """{(sample name, frozenset(labels)): value} for the served model's series."""
    status, hdrs, body = server.request("GET", "/metrics", headers=headers)
    assert status == 200, body
    assert hdrs["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = dict(s.labels)
            assert labels.get("model_name") == MODEL_NAME, s
            labels.pop("model_name")
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def open_stream(server, body: dict, headers: dict | None = None):
    """Starts a streamed request; returns (connection, response) once the first event arrived."""
    conn = server.connection()
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    assert resp.readline().startswith(b"data: {")
    return conn, resp


def kill_connection(conn, resp=None) -> None:
    """Closes the socket at once, with an RST, as a client that died would."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if resp is not None:
        resp.close()  # its file object holds the socket open too
    conn.close()


LONG = {"model": MODEL_NAME, "prompt": "long", "max_tokens": 150000, "ignore_eos": True}


# ------------------------------------------------------------------ probes


@needs_curl
def test_health_ready_metrics_with_curl(server):
    assert curl(server.base + "/healthz") == (200, "ok\n")
    assert curl(server.base + "/readyz") == (200, "ready\n")
    status, body = curl(server.base + "/metrics")
    assert status == 200
    assert "# TYPE gdnserve_request_success_total counter" in body
    assert f'gdnserve_state_slots_total{{model_name="{MODEL_NAME}"}} 4' in body
    status, body = curl(server.base + "/v1/completions", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"prompt": "hi", "max_tokens": 2}))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] <= 2


@pytest.mark.skipif(not IS_TEST_SERVER, reason="needs http_test_server's --load-delay-ms")
def test_readyz_while_loading(start_server):
    s = start_server("--load-delay-ms", "1500", wait_ready=False)
    assert s.request("GET", "/healthz")[0] == 200
    status, _, body = s.request("GET", "/readyz")
    assert (status, body) == (503, b"loading\n")
    status, body = s.post_json("/v1/completions", {"prompt": "x"})
    assert status == 503 and body["error"]["code"] == "unavailable"
    s.wait_up(ready=True)
    assert s.request("GET", "/readyz")[0] == 200


# ----------------------------------------------------------------- metrics


def test_metrics_count_the_requests_sent(start_server):
    s = start_server("--max-seqs", "2")
    client = s.openai()
    usages = []
    for i in range(3):
        r = client.completions.create(model=MODEL_NAME, prompt=f"request {i}", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
        usages.append(r.usage)
    for i in range(2):
        stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": str(i)}],
                                                max_tokens=4, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True})
        usages.append([c.usage for c in stream if c.usage is not None][0])
    bad = [{"prompt": "x", "temperature": "hot"}, {"prompt": "x", "n": 99}, "{not json"]
    for body in bad:
        assert s.request("POST", "/v1/completions", body)[0] == 400
    assert s.post_json("/v1/completions", {"model": "nope", "prompt": "x"})[0] == 400

    m = metrics(s)
    requests = len(usages)
    completion = sum(u.completion_tokens for u in usages)
    assert completion == 3 * 5 + 2 * 4
    assert value(m, "gdnserve_request_success_total", finished_reason="length") == requests
    for reason in ("stop", "eos", "cancelled"):
        assert value(m, "gdnserve_request_success_total", finished_reason=reason) == 0
    assert value(m, "gdnserve_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert value(m, "gdnserve_generation_tokens_total") == completion
    # The bad bodies and the unknown model (a 400 naming the field).
    assert value(m, "gdnserve_request_errors_total", code="INVALID_ARGUMENT") == len(bad) + 1
    for h in ("e2e_request_latency", "time_to_first_token", "request_queue_time", "request_prefill_time",
              "request_decode_time"):
        name = f"gdnserve_{h}_seconds"
        assert value(m, name + "_count") == requests, name
        assert value(m, name + "_bucket", le="+Inf") == requests, name
    assert value(m, "gdnserve_inter_token_latency_seconds_count") == completion - requests
    assert value(m, "gdnserve_iteration_tokens_total_count") > 0
    # Every prompt token runs once, and every generated token but each request's last is fed back.
    assert value(m, "gdnserve_iteration_tokens_total_sum") == sum(u.prompt_tokens for u in usages) + completion - requests
    assert value(m, "gdnserve_engine_step_seconds_count") == value(m, "gdnserve_iteration_tokens_total_count")
    assert value(m, "gdnserve_num_requests_running") == 0
    assert value(m, "gdnserve_num_requests_waiting") == 0
    assert value(m, "gdnserve_state_slots_used") == 0
    assert value(m, "gdnserve_state_slots_total") == 2
    assert value(m, "gdnserve_state_bytes_per_sequence") > 0


# ---------------------------------------------------------------- security


def test_api_key(start_server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    s = start_server("--api-key-file", str(key_file), "--metrics-require-auth")
    good = {"Authorization": "Bearer s3cret"}
    # Probes stay open.
    assert s.request("GET", "/healthz")[0] == 200
    assert s.request("GET", "/readyz")[0] == 200
    # /v1/* and (with --metrics-require-auth) /metrics need the key.
    for headers, code in [({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
                          ({"Authorization": "Basic s3cret"}, "invalid_api_key")]:
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")]:
            status, hdrs, body = s.request(method, path, b'{"prompt": "x"}' if method == "POST" else None, headers)
            assert status == 401, (path, headers)
            assert json.loads(body)["error"]["code"] == code
            assert hdrs["www-authenticate"] == "Bearer"
    assert s.request("GET", "/metrics", headers=good)[0] == 200
    assert s.request("GET", "/v1/models", headers={"Authorization": "bearer s3cret"})[0] == 200
    r = s.openai(api_key="s3cret").completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2)
    assert r.usage.completion_tokens <= 2
    with pytest.raises(openai.AuthenticationError):
        s.openai(api_key="nope").completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2)
    # After a 401 to a request with a body, the connection still works: the
    # body was read, not left to be parsed as the next request.
    conn = s.connection()
    for _ in range(2):
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "GET /healthz HTTP/1.1\r\n\r\n" * 500}))
        resp = conn.getresponse()
        assert resp.status == 401 and json.loads(resp.read())["error"]["code"] == "missing_api_key"
        conn.request("GET", "/v1/models", headers=good)
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["data"][0]["id"] == MODEL_NAME
    conn.close()


def test_api_key_leaves_metrics_open_by_default(start_server):
    s = start_server("--api-key", "k")
    assert s.request("GET", "/metrics")[0] == 200
    assert s.request("GET", "/v1/models")[0] == 401


def test_tls(start_server, tmp_path):
    if shutil.which("openssl") is None or CURL is None:
        pytest.skip("needs the openssl and curl commands")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    s = start_server("--tls-cert", str(cert), "--tls-key", str(key), tls=True)
    assert curl(s.base + "/healthz", "--cacert", str(cert)) == (200, "ok\n")
    status, body = curl(s.base + "/v1/completions", "-d", json.dumps({"prompt": "hi", "max_tokens": 2}))
    assert status == 200 and json.loads(body)["object"] == "text_completion"
    # Plain HTTP to the TLS port is not served.
    with pytest.raises(subprocess.CalledProcessError):
        curl(f"http://127.0.0.1:{s.port}/healthz", "--max-time", "5")


def test_bad_tls_files_fail_at_start(model_dir, tmp_path):
    from conftest import SERVER_BIN, free_port
    missing = str(tmp_path / "none.pem")
    r = subprocess.run([SERVER_BIN, "--model", str(model_dir), "--http-port", str(free_port()), "--tls-cert", missing,
                        "--tls-key", missing] + ([] if IS_TEST_SERVER else ["--grpc-port", "0"]),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "TLS" in r.stderr


# ------------------------------------------------------- bad requests, limits


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_bad_json_and_types_name_the_field(server, path):
    chat = path.endswith("chat/completions")
    ok = {"messages": [{"role": "user", "content": "x"}]} if chat else {"prompt": "x"}
    cases = [
        ("{", None, "invalid JSON"),
        ("[]", None, "JSON object"),
        ({**ok, "max_tokens": "many"}, "max_tokens", "integer"),
        ({**ok, "temperature": [1]}, "temperature", "number"),
        ({**ok, "stream": "yes"}, "stream", "boolean"),
        ({**ok, "stop": [1]}, "stop[0]", "string"),
        ({**ok, "n": 1000}, "n", "must be in"),
        ({**ok, "presence_penalty": 3}, "presence_penalty", "[-2, 2]"),
        ({**ok, "top_k": -5}, "top_k", ""),
        ({**ok, "seed": "x"}, "seed", "integer"),
    ]
    if chat:
        cases += [({"messages": [{"role": "user", "content": 1}]}, "messages[0].content", "got integer"),
                  ({"messages": "hi"}, "messages", "list"),
                  ({**ok, "top_logprobs": 3}, "top_logprobs", "logprobs")]
    else:
        cases += [({"prompt": 12}, "prompt", "got integer"), ({"prompt": [1, 10**9]}, "prompt", "out of range"),
                  ({**ok, "echo": True}, "echo", "only false"), ({**ok, "logprobs": 50}, "logprobs", "[0, 20]")]
    for body, param, words in cases:
        status, reply = server.post_json(path, body)
        assert status == 400, (body, reply)
        err = reply["error"]
        assert err["type"] == "invalid_request_error"
        assert err["param"] == param, (body, err)
        assert words in err["message"], (body, err)
        if param is not None:
            assert err["message"].startswith(param + ": "), err


def test_unknown_model_and_routes(server):
    status, body = server.post_json("/v1/chat/completions",
                                    {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert status == 400
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    status, _, raw = server.request("GET", "/v1/nothing")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"


def test_limits(start_server):
    s = start_server("--max-body-bytes", "2000", "--max-header-bytes", "1024")
    status, hdrs, body = s.request("POST", "/v1/completions", json.dumps({"prompt": "x" * 3000}),
                                   {"Content-Type": "application/json"})
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    status, _, body = s.request("GET", "/healthz", headers={"X-Pad": "p" * 2000})
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"
    assert s.post_json("/v1/completions", {"prompt": "x" * 1000, "max_tokens": 1})[0] == 200


@needs_curl
def test_port_in_use_is_a_clear_error(server, model_dir):
    from conftest import SERVER_BIN
    start = time.monotonic()
    r = subprocess.run([SERVER_BIN, "--model", str(model_dir), "--host", "127.0.0.1", "--http-port", str(server.port)]
                       + ([] if IS_TEST_SERVER else ["--grpc-port", "0"]), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert f"127.0.0.1:{server.port}" in r.stderr and "in use" in r.stderr, r.stderr
    assert time.monotonic() - start < 5
    assert curl(server.base + "/healthz") == (200, "ok\n")  # the first server still owns it


# ------------------------------------------------- overload, disconnect, drain


def test_overload_is_429_and_disconnect_cancels(start_server):
    s = start_server("--max-seqs", "1", "--max-queue", "1", "--max-tokens-cap", "200000")
    running = open_stream(s, LONG)  # holds the only slot
    wait_for(lambda: value(metrics(s), "gdnserve_num_requests_running") == 1, what="the first request to run")
    conn = s.connection()  # a queued stream: no event comes until it runs
    conn.request("POST", "/v1/completions", body=json.dumps({**LONG, "stream": True}),
                 headers={"Content-Type": "application/json"})
    wait_for(lambda: value(metrics(s), "gdnserve_num_requests_waiting") == 1, what="the second request to queue")
    status, body = s.post_json("/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 429, body
    assert body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        s.openai().completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)

    # Clients that vanish cancel their requests: the running one at its next
    # token, the queued one when it starts streaming (or at its heartbeat).
    t0 = time.monotonic()
    kill_connection(*running)
    kill_connection(conn)
    wait_for(lambda: value(metrics(s), "gdnserve_request_success_total", finished_reason="cancelled") == 2,
             timeout=15, what="both requests to be cancelled")
    assert time.monotonic() - t0 < 5, "cancelled at the next token, not at the end of the request"
    m = metrics(s)
    assert value(m, "gdnserve_num_requests_running") == 0 and value(m, "gdnserve_state_slots_used") == 0
    assert value(m, "gdnserve_generation_tokens_total") < LONG["max_tokens"]
    assert value(m, "gdnserve_request_errors_total", code="RESOURCE_EXHAUSTED") == 2
    assert s.post_json("/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_sigterm_drains(start_server):
    s = start_server("--max-tokens-cap", "200000", "--drain-timeout-ms", "1500")
    conn, resp = open_stream(s, LONG)
    result = {}

    def read_rest():
        events = [line for line in resp.read().split(b"\n") if line.startswith(b"data: ")]
        result["events"] = events

    reader = threading.Thread(target=read_rest)
    reader.start()
    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: s.request("GET", "/readyz")[0] == 503, what="/readyz to turn 503")
    status, body = s.post_json("/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 503 and body["error"]["code"] == "unavailable"
    reader.join(30)
    conn.close()
    events = result["events"]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"
    assert s.proc.wait(30) == 0
