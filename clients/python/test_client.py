"""Tests of the Python client against the in-process fake server (fake_server.py):
no model and no gdnserve binary needed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_server  # noqa: E402
import gdnserve_client as gc  # noqa: E402
from gdnserve_client import _stubs  # noqa: E402

PATTERN = fake_server.PATTERN


@pytest.fixture(scope="module")
def server():
    srv, service, port = fake_server.serve(0, max_workers=16)
    yield service, port
    srv.stop(0)


@pytest.fixture
def client(server):
    _, port = server
    with gc.Client(f"127.0.0.1:{port}", timeout=10) as c:
        yield c


# --- requests --------------------------------------------------------------


def test_build_request_sets_only_given_fields():
    req = gc.build_request("hi", temperature=0.0, max_tokens=5, stop="x", seed=7)
    assert req.WhichOneof("prompt") == "text" and req.text == "hi"
    # 0 is a value, not "unset": greedy must reach the server.
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0.0
    assert req.sampling.seed == 7
    for unset in ("top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        assert not req.sampling.HasField(unset), unset
    assert req.stop.max_tokens == 5 and list(req.stop.stop) == ["x"]
    assert not gc.build_request("hi").stop.HasField("max_tokens")


def test_build_request_token_ids_and_lists():
    req = gc.build_request([5, 6, 7], stop=["a", "b"], stop_token_ids=[9], n=2, logprobs=3, ignore_eos=True)
    assert req.WhichOneof("prompt") == "token_ids" and list(req.token_ids.ids) == [5, 6, 7]
    assert list(req.stop.stop) == ["a", "b"] and list(req.stop.stop_token_ids) == [9]
    assert req.n == 2 and req.sampling.logprobs == 3 and req.stop.ignore_eos
    with pytest.raises(TypeError):
        gc.build_request(b"bytes")
    with pytest.raises(TypeError):
        gc.build_request("hi", temprature=1.0)  # a typo is an error, not ignored


def test_finish_reason_names():
    assert gc.finish_reason_name(gc.pb.FINISH_REASON_LENGTH) == "length"
    assert gc.finish_reason_name(gc.pb.FINISH_REASON_CANCELLED) == "cancelled"
    assert gc.finish_reason_name(gc.pb.FINISH_REASON_UNSPECIFIED) is None


def test_stubs_are_current():
    stamp = (_stubs.GENERATED_DIR / "STAMP").read_text()
    assert _stubs._stamp(_stubs.proto_root()) == stamp


# --- streaming -------------------------------------------------------------


def test_generate_streams_deltas(server, client):
    service, _ = server
    stream = client.generate("Hello", max_tokens=10, temperature=0.0, request_id="r1")
    deltas = list(stream)
    assert len(deltas) == 10  # one token per message in the fake
    assert "".join(deltas) == PATTERN[:10] == stream.text
    assert stream.finish_reason == "length"
    assert len(stream.token_ids) == 10
    assert stream.prompt_tokens == 1 + len("Hello") and stream.completion_tokens == 10
    assert stream.request_id == "r1"
    assert service.requests[-1].sampling.temperature == 0.0


def test_generate_stop_string(client):
    stream = client.generate("Hello", max_tokens=30, stop=["fox", "zzz"])
    assert "".join(stream) == "The quick brown "
    assert stream.finish_reason == "stop"


def test_generate_eos_and_ignore_eos(client):
    stream = client.generate("eos please", max_tokens=8)
    assert "".join(stream) == PATTERN[:3] and stream.finish_reason == "eos"
    stream = client.generate("eos please", max_tokens=8, ignore_eos=True)
    assert "".join(stream) == PATTERN[:8] and stream.finish_reason == "length"


def test_generate_token_id_prompt_and_logprobs(client):
    stream = client.generate([10, 11, 12], max_tokens=4, logprobs=2)
    assert "".join(stream) == PATTERN[:4]
    assert stream.prompt_tokens == 3
    assert len(stream.logprobs) == 4 and len(stream.logprobs[0].top) == 2


def test_stream_raw_responses_with_n(client):
    responses = list(client.stream("Hi", max_tokens=6, n=3))
    texts = {}
    finished = {}
    for r in responses:
        for d in r.samples:
            texts[d.index] = texts.get(d.index, "") + d.text
            if d.finish_reason:
                finished[d.index] = d.finish_reason
    assert texts == {i: PATTERN[4 * i : 4 * i + 6] for i in range(3)}
    assert finished == {i: gc.pb.FINISH_REASON_LENGTH for i in range(3)}
    assert responses[-1].usage.completion_tokens == 18
    assert not any(r.HasField("usage") for r in responses[:-1])


def test_generate_refuses_n_above_one(client):
    with pytest.raises(ValueError, match="stream"):
        client.generate("Hi", n=2)


def test_cancel_mid_stream(server, client):
    service, _ = server
    service.cancel_seen.clear()
    stream = client.generate("slow one", max_tokens=50)
    first = next(stream)
    assert first == "T"
    stream.cancel()
    with pytest.raises(gc.CancelledError):
        next(stream)
    assert service.cancel_seen.wait(5), "the server never saw the cancellation"


def test_abandoned_stream_is_cancelled(server, client):
    service, _ = server
    service.cancel_seen.clear()
    with client.generate("slow one", max_tokens=50) as stream:
        next(stream)
    assert service.cancel_seen.wait(5)


# --- unary -----------------------------------------------------------------


def test_complete(client):
    c = client.complete("Hello", max_tokens=9, n=2, request_id="c1")
    assert c.text == PATTERN[:9] and c.finish_reason == "length"
    assert [s.index for s in c.samples] == [0, 1]
    assert c.samples[1].text == PATTERN[4:13]
    assert c.samples[1].token_ids == fake_server.encode(PATTERN[4:13])
    assert c.prompt_tokens == 6 and c.completion_tokens == 18 and c.request_id == "c1"


def test_tokenize_detokenize_model_info(client):
    assert client.tokenize("hi") == fake_server.encode("hi")
    assert client.tokenize("hi", add_bos=True) == [fake_server.BOS] + fake_server.encode("hi")
    assert client.detokenize(fake_server.encode("héllo")) == "héllo"
    info = client.model_info()
    assert info.vocab_size == fake_server.VOCAB and info.model_name == "fake"


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.complete(""),
        lambda c: list(c.generate("")),
        lambda c: list(c.stream("")),
        lambda c: c.complete("x", max_tokens=0),
        lambda c: c.complete("x", temperature=-1.0),
        lambda c: c.detokenize([100000]),
        lambda c: c.complete([1, 2, 100000]),
    ],
)
def test_invalid_argument(client, call):
    with pytest.raises(gc.InvalidArgumentError) as e:
        call(client)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details  # names the field
    assert isinstance(e.value, ValueError) and isinstance(e.value, gc.GdnserveError)
    assert str(e.value).startswith("INVALID_ARGUMENT: ")


def test_resource_exhausted_and_other_codes(client):
    with pytest.raises(gc.ResourceExhaustedError, match="queue full"):
        list(client.generate("overload"))
    with pytest.raises(gc.ResourceExhaustedError):
        client.complete("overload")
    with pytest.raises(gc.GdnserveError) as e:
        client.complete("internal")
    assert type(e.value) is gc.GdnserveError and e.value.code == grpc.StatusCode.INTERNAL
    assert e.value.details == "fake internal error"


def test_deadline(client):
    t0 = time.monotonic()
    with pytest.raises(gc.DeadlineExceededError) as e:
        client.complete("slow", max_tokens=20, timeout=0.2)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(gc.DeadlineExceededError):
        list(client.generate("slow", max_tokens=20, timeout=0.2))
    assert time.monotonic() - t0 < 5


def test_unavailable():
    # A port nobody listens on: bind one, then close it.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with gc.Client(f"127.0.0.1:{port}", timeout=5) as c:
        with pytest.raises(gc.UnavailableError) as e:
            c.model_info()
        assert isinstance(e.value, ConnectionError)
        with pytest.raises(gc.UnavailableError):
            list(c.generate("hi"))
