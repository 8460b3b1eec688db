"""The HTTP front end under concurrent load, for the TSan build.

tests/http checks behaviour one request (or two) at a time; this drives the
server's threads at once so that ThreadSanitizer (scripts/sanitize.sh tsan
runs it against a TSan http_test_server) sees them interleave: CLIENTS
threads, each on its own connections, for SECONDS, mixing streamed and
whole completions and chat (n = 1-2), clients that drop the connection
mid-stream or right after sending, /metrics, /readyz and /v1/models scrapes,
invalid bodies, and completions on a few shared sessions (saved, continued
and replaced concurrently); a queue small enough that some requests get 429. Then
SIGTERM with streams running and queued while new requests keep coming.

Checks: only the statuses each kind may get, every 200 stream ends with
[DONE], the server is idle afterwards (running, waiting, slots 0), its
counters agree with what was sent, the drain ends every stream with [DONE]
and refuses new work (503 or a closed port), exit code 0.

GDNSERVE_HTTP_STRESS_SECONDS (default 8), GDNSERVE_HTTP_STRESS_CLIENTS (24),
GDNSERVE_HTTP_STRESS_SEED (printed).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from conftest import MODEL_NAME, Server  # noqa: E402  (tests/http's server launcher)

SECONDS = float(os.environ.get("GDNSERVE_HTTP_STRESS_SECONDS", "8"))
CLIENTS = int(os.environ.get("GDNSERVE_HTTP_STRESS_CLIENTS", "24"))
SEED = int(os.environ.get("GDNSERVE_HTTP_STRESS_SEED", random.randrange(1 << 30)))
WORDS = "in the beginning god created heaven and earth light darkness water spirit face deep".split()
GENERATION_KINDS = ("stream", "chat_stream", "whole", "chat_whole", "session", "drop_mid_stream", "drop_after_send",
                    "invalid")
KINDS = GENERATION_KINDS + ("scrape",)


@pytest.fixture(scope="module")
def model() -> Path:
    root = os.environ.get("GDNSERVE_TEST_MODELS")
    if not root:
        pytest.skip("GDNSERVE_TEST_MODELS is unset (run through ctest)")
    return Path(root) / MODEL_NAME


def metrics(server: Server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    status, _, body = server.request("GET", "/metrics")
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = dict(s.labels)
            labels.pop("model_name", None)
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def total(m: dict, name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 24)))


def body_for(kind: str, rng: random.Random) -> tuple[str, dict]:
    chat = kind.startswith("chat") or (kind.startswith("drop") and rng.random() < 0.5)
    body: dict = {"model": MODEL_NAME, "max_tokens": rng.randint(1, 24), "ignore_eos": rng.random() < 0.5,
                  "stream": kind.endswith("stream"), "n": rng.choice((1, 1, 2))}
    if rng.random() < 0.5:
        body.update(temperature=1.0, seed=rng.randrange(1 << 20))
    if kind.startswith("drop"):
        body.update(stream=True, max_tokens=300, ignore_eos=True)
    if kind == "session":  # a few sessions shared by all clients: saved, continued, replaced at once
        body.update(session_id=f"stress-{rng.randrange(3)}", stream=rng.random() < 0.5, n=1)
        if rng.random() < 0.5:
            body["session_continue"] = True
    if chat:
        body["messages"] = [{"role": "user", "content": prompt(rng)}]
        return "/v1/chat/completions", body
    body["prompt"] = prompt(rng)
    return "/v1/completions", body


def read_events(resp) -> list[bytes]:
    return [line for line in resp.read().split(b"\n") if line.startswith(b"data: ")]


def drop(conn: http.client.HTTPConnection, resp=None) -> None:
    """Closes the connection with an RST, as a client that died would."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if resp is not None:
        resp.close()
    conn.close()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = Counter()  # kind -> requests sent
        self.status = Counter()  # (kind, status) -> responses read
        self.failures: list[str] = []

    def add(self, kind: str, status: int | None = None) -> None:
        with self.lock:
            self.sent[kind] += 1
            if status is not None:
                self.status[(kind, status)] += 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def one_request(server: Server, kind: str, rng: random.Random, tally: Tally) -> int | None:
    """Sends one request of this kind; returns the status read, if any."""
    if kind == "scrape":
        path = rng.choice(("/metrics", "/readyz", "/v1/models", "/healthz"))
        status, _, body = server.request("GET", path)
        tally.add(kind, status)
        if status != 200:
            tally.fail(f"GET {path}: {status} {body[:200]!r}")
        return
    path, body = body_for(kind, rng)
    raw = json.dumps(body)
    if kind == "invalid":
        raw = rng.choice((raw[: len(raw) // 2], json.dumps({**body, "temperature": -1}), "[]"))
    conn = server.connection(timeout=60)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        if kind == "drop_after_send":
            tally.add(kind)
            drop(conn)
            return
        resp = conn.getresponse()
        if kind == "drop_mid_stream":
            tally.add(kind, resp.status)
            if resp.status == 200:
                resp.readline()  # the first event (or a heartbeat)
            drop(conn, resp)
            return resp.status
        tally.add(kind, resp.status)
        allowed = {400} if kind == "invalid" else {200, 404, 429} if kind == "session" else {200, 429}
        if resp.status not in allowed:
            tally.fail(f"{kind} {path}: {resp.status} {resp.read()[:300]!r}")
        elif resp.status == 200 and body["stream"]:
            events = read_events(resp)
            if not events or events[-1] != b"data: [DONE]":
                tally.fail(f"{kind} {path}: stream did not end with [DONE]: {events[-3:]!r}")
        else:
            json.loads(resp.read())
        return resp.status
    finally:
        conn.close()


def client(server: Server, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        kind = rng.choices(KINDS, weights=(20, 15, 10, 10, 10, 8, 5, 10, 12))[0]
        try:
            if one_request(server, kind, rng, tally) == 429:
                time.sleep(rng.uniform(0.05, 0.2))  # back off, as Retry-After asks (less, to keep the queue full)
        except Exception as e:  # noqa: BLE001 -- any client-side failure is a test failure
            tally.fail(f"{kind}: {type(e).__name__}: {e}")


def wait_for(predicate, timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    m = {n: v for (n, _), v in metrics(server).items() if "num_requests" in n or "slots" in n}
    raise AssertionError(f"timed out waiting for {what}: {m}\n{server.log()[-3000:]}")


def test_concurrent_mixed_load_then_sigterm(model, tmp_path):
    print(f"http stress: seed={SEED} clients={CLIENTS} seconds={SECONDS}")
    s = Server(model, ["--max-seqs", "4", "--max-queue", "16", "--max-tokens-cap", "200000",
                       "--http-max-connections", str(CLIENTS + 16), "--drain-timeout-ms", "1500"],
               tmp_path / "server.log")
    try:
        # ---- mixed load
        tally = Tally()
        until = time.monotonic() + SECONDS
        threads = [threading.Thread(target=client, args=(s, SEED + i, until, tally)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        print("http stress: sent", dict(tally.sent), "statuses", dict(tally.status))
        assert not tally.failures, "\n".join(tally.failures[:20])
        assert tally.status[("stream", 200)] > 0 and tally.status[("whole", 200)] > 0

        # Dropped streams are cancelled, so the server goes idle.
        def idle() -> bool:
            m = metrics(s)
            return all(total(m, f"gdnserve_{n}") == 0
                       for n in ("num_requests_running", "num_requests_waiting", "state_slots_used"))
        wait_for(idle, 30, "the server to be idle after the load", s)
        m = metrics(s)
        # Every generation request the server read reaches exactly one counter.
        read = sum(n for (k, _), n in tally.status.items() if k in GENERATION_KINDS)
        sent = sum(n for k, n in tally.sent.items() if k in GENERATION_KINDS)
        counted = total(m, "gdnserve_request_success_total") + total(m, "gdnserve_request_errors_total")
        assert read <= counted <= sent, (read, counted, sent)
        rejected = sum(n for (k, st), n in tally.status.items() if st == 429)
        errors = m.get(("gdnserve_request_errors_total", frozenset({("code", "RESOURCE_EXHAUSTED")})), 0)
        assert rejected <= errors <= rejected + tally.sent["drop_after_send"] + tally.sent["drop_mid_stream"]
        invalid = m.get(("gdnserve_request_errors_total", frozenset({("code", "INVALID_ARGUMENT")})), 0)
        assert invalid == tally.status[("invalid", 400)], (invalid, tally.status[("invalid", 400)])

        # ---- SIGTERM with streams running and queued, new requests arriving
        # 8 long requests: the first 4 run, the rest wait; two are not streamed.
        whole = {2, 6}
        long_requests = []
        for i in range(8):
            body = {"model": MODEL_NAME, "prompt": "long", "max_tokens": 150000, "ignore_eos": True,
                    "stream": i not in whole}
            conn = s.connection(timeout=60)
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            long_requests.append(conn)
            if i == 3:
                wait_for(lambda: total(metrics(s), "gdnserve_num_requests_running") == 4, 30, "4 running", s)
        wait_for(lambda: total(metrics(s), "gdnserve_num_requests_waiting") == 4, 30, "4 waiting", s)
        results: dict[int, object] = {}

        def finish(i: int, conn) -> None:
            try:
                resp = conn.getresponse()
                results[i] = (resp.status, resp.read())
            except Exception as e:  # noqa: BLE001
                results[i] = e
            finally:
                conn.close()  # an idle keep-alive connection would hold a worker, and so the exit, for 5 s

        readers = [threading.Thread(target=finish, args=(i, c)) for i, c in enumerate(long_requests)]
        for t in readers:
            t.start()
        s.proc.send_signal(signal.SIGTERM)
        refused = Counter()  # what the requests sent during the drain got

        def knock(i: int) -> None:
            r = random.Random(SEED + 1000 + i)
            while s.proc.poll() is None:
                try:
                    if r.random() < 0.3:
                        outcome = f"GET /readyz {s.request('GET', '/readyz')[0]}"
                    else:
                        path, body = body_for(r.choice(("stream", "whole", "chat_whole")), r)
                        status, _, raw = s.request("POST", path, json.dumps(body),
                                                   {"Content-Type": "application/json"})
                        outcome = status
                        if status not in (503, 200):  # 200: admitted before the drain began
                            tally.fail(f"during drain: {status} {raw[:200]!r}")
                except (OSError, http.client.HTTPException):
                    outcome = "closed"
                with tally.lock:
                    refused[outcome] += 1
                time.sleep(0.01)

        knockers = [threading.Thread(target=knock, args=(i,)) for i in range(4)]
        for t in knockers:
            t.start()
        rc = s.proc.wait(30)
        for t in readers + knockers:
            t.join(30)
        print("http stress: during drain", dict(refused))
        print("http stress: long requests", {i: r[0] if isinstance(r, tuple) else r for i, r in sorted(results.items())})
        assert rc == 0, s.log()[-4000:]
        assert not tally.failures, "\n".join(tally.failures[:20])
        assert refused[503] > 0, refused
        for i in range(len(long_requests)):
            assert isinstance(results.get(i), tuple), (i, results.get(i))
            status, raw = results[i]
            if i in whole:
                assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] == "abort", (i, status, raw)
            else:
                events = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
                assert status == 200 and events and events[-1] == b"data: [DONE]", (i, status, events[-3:])
    finally:
        rc = s.stop()
    assert rc == 0, s.log()[-4000:]
