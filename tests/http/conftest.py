"""Fixtures for the HTTP API tests: a server process per configuration.

GDNSERVE_HTTP_SERVER: the binary to test (default: the http_test_server of a
build under build/); the real gdnserve works too once it serves --http-port
(it is then also given --grpc-port 0). GDNSERVE_TEST_MODELS: the generated
test models (tools/gen_model.py --suite tests); generated into a temporary
directory when unset.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "tiny"


def _find_server() -> str:
    if os.environ.get("GDNSERVE_HTTP_SERVER"):
        return os.environ["GDNSERVE_HTTP_SERVER"]
    found = sorted((p for p in (ROOT / "build").glob("**/http_test_server") if p.is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.exit("GDNSERVE_HTTP_SERVER is unset and there is no build/**/http_test_server", 2)
    return str(found[-1])


SERVER_BIN = _find_server()
IS_TEST_SERVER = Path(SERVER_BIN).name == "http_test_server"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    root = os.environ.get("GDNSERVE_TEST_MODELS")
    if not root:
        root = tmp_path_factory.mktemp("models")
        subprocess.run([sys.executable, str(ROOT / "tools/gen_model.py"), "--suite", "tests", "--out", str(root)],
                       check=True, capture_output=True)
    path = Path(root) / MODEL_NAME
    assert (path / "config.json").exists(), f"no test model at {path}"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running server process and helpers to talk to it."""

    def __init__(self, model: Path, args: list[str], log_path: Path, wait_ready: bool = True, tls: bool = False):
        self.port = free_port()
        self.tls = tls
        cmd = [SERVER_BIN, "--model", str(model), "--host", "127.0.0.1", "--http-port", str(self.port),
               "--threads", "1", *args]
        if not IS_TEST_SERVER:
            cmd += ["--grpc-port", "0"]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self._clients = []
        self.wait_up(ready=wait_ready)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_up(self, ready: bool, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        path = "/readyz" if ready else "/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.request("GET", path)[0] == 200:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"server not {'ready' if ready else 'up'} after {timeout} s:\n{self.log()}")

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        if self.tls:
            import ssl
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=ssl._create_unverified_context())
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """One request on a fresh connection: (status, headers (lower-case names), body)."""
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def post_json(self, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
        status, _, data = self.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        return status, json.loads(data)

    def openai(self, api_key: str = "none"):
        import openai
        client = openai.OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0, timeout=60)
        self._clients.append(client)
        return client

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        # Idle keep-alive connections would hold the server's workers (and so
        # its exit) for up to the keep-alive timeout.
        for client in self._clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(model_dir, tmp_path_factory):
    """start_server(*flags, wait_ready=True, tls=False, model=None) -> Server; all are stopped at the end.

    model: another test model's name (e.g. "tiny_gva"), next to the default one."""
    servers: list[Server] = []

    def start(*args: str, wait_ready: bool = True, tls: bool = False, model: str | None = None) -> Server:
        log = tmp_path_factory.mktemp("server") / "server.log"
        path = model_dir if model is None else model_dir.parent / model
        s = Server(path, list(args), log, wait_ready=wait_ready, tls=tls)
        servers.append(s)
        return s

    yield start
    for s in servers:
        rc = s.stop()
        assert rc == 0, f"server exited with {rc}:\n{s.log()}"


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The shared server: no API key, defaults, a cap large enough for long requests."""
    return start_server("--max-seqs", "4", "--max-tokens-cap", "200000")
