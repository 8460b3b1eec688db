"""Session state over HTTP (README "Reusing state"): GET/PUT
/v1/sessions/{id}/state and DELETE /v1/sessions/{id}, the counterparts of
gRPC ExportState / ImportState; usage.prompt_tokens_details.cached_tokens;
the per-session history limit.

The test model is random per run: these tests compare runs with each other
and count tokens, never expect particular text; ignore_eos fixes counts."""

from __future__ import annotations

import json
import random
import signal
import struct
import time
import urllib.parse
import zlib

VOCAB = 512  # tools/gen_model.py's "tiny" (and "tiny_gva")
OCTET = {"Content-Type": "application/octet-stream"}


def ids(seed: int, n: int) -> list[int]:
    return random.Random(seed).choices(range(3, VOCAB), k=n)


def completion(server, headers=None, **body):
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0, "ignore_eos": True, **body}
    return server.post_json("/v1/completions", body, headers)


def state_path(session_id: str) -> str:
    return "/v1/sessions/" + urllib.parse.quote(session_id, safe="") + "/state"


def export(server, session_id: str, headers=None) -> bytes:
    status, head, blob = server.request("GET", state_path(session_id), headers=headers)
    assert status == 200, blob
    assert head["content-type"] == "application/octet-stream"
    return blob


def put(server, session_id: str, blob: bytes, headers=None) -> tuple[int, dict]:
    status, _, body = server.request("PUT", state_path(session_id), blob, {**OCTET, **(headers or {})})
    return status, json.loads(body)


def header(blob: bytes) -> dict:
    """The fields of engine/state_blob.h's header."""
    return {"magic": blob[:8], "version": struct.unpack_from("<I", blob, 8)[0],
            "tokens": struct.unpack_from("<Q", blob, 24)[0], "pending": struct.unpack_from("<i", blob, 32)[0],
            "floats": struct.unpack_from("<Q", blob, 40)[0]}


def resealed(blob: bytearray) -> bytes:
    """The blob with its CRC-32 recomputed (a well-formed blob with edited fields)."""
    return bytes(blob[:-4]) + struct.pack("<I", zlib.crc32(bytes(blob[:-4])))


def stream_usage(server, body) -> dict:
    """A streamed completion's usage chunk (stream_options.include_usage)."""
    body = {"model": "tiny", "temperature": 0, "ignore_eos": True, **body, "stream": True,
            "stream_options": {"include_usage": True}}
    status, _, data = server.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    assert status == 200, data
    events = [line[len(b"data: "):] for line in data.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == []
    return usage["usage"]


def test_state_moves_between_processes(start_server):
    """Export on one server, import on another, continue: the same greedy
    tokens, logprobs and usage as continuing where the session was made."""
    a = start_server("--max-seqs", "2")
    b = start_server("--max-seqs", "2")
    status, first = completion(a, prompt=ids(1, 20), max_tokens=6, session_id="mv")
    assert status == 200, first
    status, second = completion(a, prompt=ids(2, 5), max_tokens=5, session_id="mv", session_continue=True)
    assert status == 200, second

    blob = export(a, "mv")
    h = header(blob)
    history = second["usage"]["prompt_tokens"] + second["usage"]["completion_tokens"]
    assert h["magic"] == b"GDNSTATE" and h["version"] == 1
    assert h["tokens"] == history - 1 and 0 <= h["pending"] < VOCAB  # the last token is drawn, not fed yet
    assert len(blob) == 48 + 4 * (h["tokens"] + h["floats"]) + 4

    status, imported = put(b, "moved", blob)
    assert status == 200, imported
    assert imported == {"id": "moved", "object": "session", "num_tokens": h["tokens"]}
    assert export(b, "moved") == blob  # stored as sent

    turn = dict(prompt=ids(3, 7), max_tokens=12, session_continue=True, logprobs=1)
    status, stayed = completion(a, session_id="mv", **turn)
    assert status == 200, stayed
    status, moved = completion(b, session_id="moved", **turn)
    assert status == 200, moved
    assert moved["choices"][0]["logprobs"]["tokens"] == stayed["choices"][0]["logprobs"]["tokens"]
    assert moved["choices"][0]["logprobs"]["token_logprobs"] == stayed["choices"][0]["logprobs"]["token_logprobs"]
    assert moved["choices"][0]["text"] == stayed["choices"][0]["text"]
    assert moved["usage"] == stayed["usage"]
    assert moved["usage"]["prompt_tokens"] == history + 7
    assert moved["usage"]["completion_tokens"] == 12
    assert moved["usage"]["prompt_tokens_details"]["cached_tokens"] == h["tokens"]


def test_import_refuses_corrupt_and_foreign_blobs(server, start_server):
    status, r = completion(server, prompt=ids(4, 10), session_id="blob-src")
    assert status == 200, r
    blob = export(server, "blob-src")

    def refused(data: bytes, code: str, why: str, target=server) -> None:
        status, err = put(target, "blob-dst", data)
        assert status == 400, err
        assert err["error"]["code"] == code, err
        assert why in err["error"]["message"], err
        assert err["error"]["message"].startswith("state blob: "), err

    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    refused(bytes(flipped), "invalid_state", "checksum")
    refused(blob[:-10], "invalid_state", "truncated")
    refused(blob + b"\0", "invalid_state", "does not match its header")
    refused(b"", "invalid_state", "not a gdnserve state")
    refused(b"PNG\r\n\x1a\n" + blob[8:], "invalid_state", "not a gdnserve state")
    future = bytearray(blob)
    struct.pack_into("<I", future, 8, 2)
    refused(resealed(future), "invalid_state", "version 2")
    other_hash = bytearray(blob)
    other_hash[16] ^= 0xFF
    refused(resealed(other_hash), "incompatible_state", "different model")
    bad_token = bytearray(blob)
    struct.pack_into("<i", bad_token, 48, VOCAB + 7)
    refused(resealed(bad_token), "invalid_state", "outside the vocabulary")

    # A real blob of another model (tiny_gva: another config and state shape).
    gva = start_server("--max-seqs", "1", model="tiny_gva")
    refused(blob, "incompatible_state", "different model", target=gva)
    status, r = gva.post_json("/v1/completions", {"prompt": ids(5, 6), "max_tokens": 2, "session_id": "g"})
    assert status == 200, r
    refused(export(gva, "g"), "incompatible_state", "different model")

    # Nothing was stored by the refused imports.
    status, _, body = server.request("GET", state_path("blob-dst"))
    assert status == 404, body
    status, err = completion(server, prompt=ids(6, 2), session_id="blob-dst", session_continue=True)
    assert status == 404, err


def test_session_routes_need_the_key_respect_the_body_limit_and_delete(start_server):
    s = start_server("--api-key", "sekret", "--max-body-bytes", "4096")
    auth = {"Authorization": "Bearer sekret"}
    sid = "a b/c%"  # any id the JSON field takes; URL-encoded in the path
    status, r = completion(s, headers=auth, prompt=ids(7, 8), session_id=sid)
    assert status == 200, r
    path = state_path(sid)

    for method, body in (("GET", None), ("PUT", b"x" * 100), ("DELETE", None)):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            target = "/v1/sessions/" + urllib.parse.quote(sid, safe="") if method == "DELETE" else path
            status, head, data = s.request(method, target, body, headers)
            assert status == 401, (method, data)
            assert head.get("www-authenticate") == "Bearer"

    blob = export(s, sid, headers=auth)
    assert len(blob) > 4096  # the tiny model's state alone is 6400 bytes
    status, err = put(s, "copy", blob, headers=auth)
    assert status == 413, err
    assert err["error"]["code"] == "request_too_large"
    assert "--max-body-bytes" in err["error"]["message"]
    assert "a state blob of this model is" in err["error"]["message"]

    status, _, data = s.request("GET", state_path("nobody"), headers=auth)
    assert status == 404 and "nobody" in json.loads(data)["error"]["message"]
    status, _, data = s.request("GET", "/v1/sessions/" + "x" * 300 + "/state", headers=auth)
    assert status == 400 and "256" in json.loads(data)["error"]["message"]

    delete = "/v1/sessions/" + urllib.parse.quote(sid, safe="")
    status, _, data = s.request("DELETE", delete, headers=auth)
    assert status == 200, data
    assert json.loads(data) == {"id": sid, "object": "session", "deleted": True}
    status, _, data = s.request("DELETE", delete, headers=auth)
    assert status == 404, data
    status, _, data = s.request("GET", path, headers=auth)
    assert status == 404, data
    status, err = completion(s, headers=auth, prompt=ids(8, 2), session_id=sid, session_continue=True)
    assert status == 404, err


def test_cached_tokens_cold_prefix_hit_and_session(start_server):
    s = start_server("--prefix-cache-bytes", str(1 << 24), "--prefix-cache-interval", "64")
    client = s.openai()
    prefix = ids(9, 150)

    def details(usage):
        return usage.prompt_tokens_details.cached_tokens

    cold = client.completions.create(model="tiny", prompt=prefix, max_tokens=3, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert cold.usage.prompt_tokens == 150 and details(cold.usage) == 0
    # The same 150 tokens again: snapshots were taken at 64 and 128.
    again = client.completions.create(model="tiny", prompt=prefix, max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert details(again.usage) == 128
    assert again.choices[0].text == cold.choices[0].text
    # A longer prompt sharing them, streamed: the usage chunk says the same.
    usage = stream_usage(s, {"prompt": prefix + ids(10, 40), "max_tokens": 3})
    assert usage["prompt_tokens"] == 190 and usage["prompt_tokens_details"]["cached_tokens"] == 128

    # Chat: a long system message shared by two conversations.
    system = " ".join(f"rule{i}" for i in range(120))
    chats = []
    for i, stream in enumerate((False, True)):
        args = dict(model="tiny", max_tokens=3, temperature=0,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}])
        if stream:
            chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
            chats.append(chunks[-1].usage)
        else:
            chats.append(client.chat.completions.create(**args).usage)
    assert chats[0].prompt_tokens > 128 and details(chats[0]) == 0
    assert details(chats[1]) > 0 and details(chats[1]) % 64 == 0 and details(chats[1]) < chats[1].prompt_tokens

    # A session: a continue restores everything but the pending token.
    status, first = completion(s, prompt=ids(11, 20), max_tokens=5, session_id="ct")
    assert status == 200 and first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    status, more = completion(s, prompt=ids(12, 4), max_tokens=5, session_id="ct", session_continue=True)
    assert status == 200, more
    assert more["usage"]["prompt_tokens"] == 20 + 5 + 4
    assert more["usage"]["prompt_tokens_details"]["cached_tokens"] == 20 + 5 - 1
    usage = stream_usage(s, {"prompt": ids(13, 3), "max_tokens": 5, "session_id": "ct", "session_continue": True})
    assert usage["prompt_tokens"] == 29 + 5 + 3
    assert usage["prompt_tokens_details"]["cached_tokens"] == 29 + 5 - 1


def test_session_history_is_capped(server, start_server):
    """A session holds at most --max-prompt-tokens + --max-tokens-cap tokens
    (80 here), so its memory is one state plus 4 bytes per token of that."""
    s = start_server("--max-prompt-tokens", "64", "--max-tokens-cap", "16")
    status, r = completion(s, prompt=ids(14, 30), max_tokens=16, session_id="cap")
    assert status == 200, r  # the session holds 46 tokens
    status, err = completion(s, prompt=ids(15, 20), max_tokens=16, session_id="cap", session_continue=True)
    assert status == 400, err  # 46 + 20 + 16 > 80
    assert err["error"]["param"] == "max_tokens"
    assert "session limit of 80" in err["error"]["message"] and "cap" in err["error"]["message"]
    status, r = completion(s, prompt=ids(15, 20), max_tokens=14, session_id="cap", session_continue=True)
    assert status == 200, r
    assert r["usage"]["prompt_tokens"] == 66 and r["usage"]["completion_tokens"] == 14

    blob = export(s, "cap")
    h = header(blob)
    assert h["tokens"] == 79 and h["pending"] >= 0  # 80 tokens: the limit, reached
    assert len(blob) == 48 + 4 * (79 + h["floats"]) + 4
    status, err = completion(s, prompt=ids(16, 1), max_tokens=1, session_id="cap", session_continue=True)
    assert status == 400 and "session limit of 80" in err["error"]["message"], err
    assert export(s, "cap") == blob  # the refused turn left the session as it was

    # A blob with a longer history than this server allows is refused.
    status, r = completion(server, prompt=ids(17, 90), max_tokens=4, session_id="cap-long")
    assert status == 200, r
    status, err = put(s, "cap-long", export(server, "cap-long"))
    assert status == 400, err
    assert err["error"]["code"] == "incompatible_state"
    assert "94 tokens exceeds this server's session limit of 80" in err["error"]["message"]


def test_sessions_can_be_exported_and_imported_while_draining(start_server):
    """After SIGTERM new generations get 503, but sessions can still be moved
    off the replica (gRPC ExportState answers then too)."""
    s = start_server("--max-tokens-cap", "200000", "--drain-timeout-ms", "3000")
    status, r = completion(s, prompt=ids(18, 12), max_tokens=3, session_id="leaving")
    assert status == 200, r
    conn = s.connection()  # a long generation keeps the drain going
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"}, body=json.dumps(
        {"prompt": "long", "max_tokens": 150000, "ignore_eos": True, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: {")
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while s.request("GET", "/readyz")[0] != 503:
        assert time.monotonic() < deadline, "/readyz did not turn 503"
        time.sleep(0.02)
    assert completion(s, prompt=ids(19, 2), max_tokens=1)[0] == 503
    blob = export(s, "leaving")
    assert header(blob)["tokens"] == 12 + 3 - 1
    status, r = put(s, "leaving-copy", blob)
    assert status == 200, r
    conn.close()
    assert s.proc.wait(30) == 0
