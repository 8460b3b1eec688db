"""The gdnserve extension fields session_id / session_continue on the
OpenAI-compatible endpoints (README "Reusing state")."""

from __future__ import annotations


def completion(server, **body):
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0, **body}
    return server.post_json("/v1/completions", body)


def test_session_continue_and_unknown_session(server):
    status, first = completion(server, prompt="Once upon a time", session_id="http-s1")
    assert status == 200, first
    status, more = completion(server, prompt=" and then", session_id="http-s1", session_continue=True)
    assert status == 200, more
    # The usage counts the whole history: the first prompt, its 4 tokens, the new ones.
    assert more["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 4

    status, err = completion(server, prompt="x", session_id="http-nope", session_continue=True)
    assert status == 404, err
    assert "http-nope" in err["error"]["message"]


def test_session_fields_are_validated(server):
    status, err = completion(server, prompt="x", session_continue=True)
    assert status == 400 and "session_continue" in err["error"]["message"]
    status, err = completion(server, prompt="x", session_id=5)
    assert status == 400 and "session_id" in err["error"]["message"]
    status, err = server.post_json("/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "session_id": "c", "session_continue": True})
    assert status == 400 and "session_continue" in err["error"]["message"]
    status, ok = server.post_json("/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "session_id": "c"})
    assert status == 200, ok
