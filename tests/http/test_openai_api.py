"""The official openai client against the OpenAI-compatible endpoints.

Streamed (SSE) responses concatenate to the non-streamed text for the same
request: greedy, and seeded sampling with n > 1.
"""

from __future__ import annotations

import openai
import pytest

from conftest import MODEL_NAME

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


def collect_completion_stream(stream) -> tuple[dict[int, str], dict[int, str], object]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in stream:
        assert chunk.object == "text_completion"
        assert chunk.model == MODEL_NAME
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    return texts, finish, usage


def collect_chat_stream(stream) -> tuple[dict[int, str], dict[int, str], object]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    roles: dict[int, str] = {}
    usage = None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role is not None:
                assert c.index not in texts, "the role comes first"
                roles[c.index] = c.delta.role
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    assert set(roles.values()) <= {"assistant"} and set(roles) == set(texts)
    return texts, finish, usage


def test_models(server):
    models = server.openai().models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert server.openai().models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError):
        server.openai().models.retrieve("other")


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "n": 3}],
                         ids=["greedy", "seeded-n3"])
def test_completions_stream_equals_whole(server, sampling):
    client = server.openai()
    # ignore_eos: the test model is random (a fresh seed each run), so its
    # greedy answer may be EOS at once or pieces that decode to no text; 24
    # generated tokens keep the comparison from being empty against empty.
    args = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, extra_body={"ignore_eos": True}, **sampling)
    whole = client.completions.create(**args)
    assert whole.object == "text_completion"
    assert whole.id.startswith("cmpl-")
    n = sampling.get("n", 1)
    assert [c.index for c in whole.choices] == list(range(n))
    texts, finish, usage = collect_completion_stream(
        client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    for c in whole.choices:
        assert c.finish_reason == "length"
        assert texts[c.index] == c.text
        assert finish[c.index] == c.finish_reason
    assert usage == whole.usage
    assert whole.usage.prompt_tokens > 0
    assert whole.usage.completion_tokens == 24 * n
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 99, "n": 2}],
                         ids=["greedy", "seeded-n2"])
def test_chat_stream_equals_whole(server, sampling):
    client = server.openai()
    args = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=20, extra_body={"ignore_eos": True}, **sampling)
    whole = client.chat.completions.create(**args)
    assert whole.object == "chat.completion"
    assert whole.id.startswith("chatcmpl-")
    texts, finish, usage = collect_chat_stream(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    for c in whole.choices:
        assert c.message.role == "assistant"
        assert texts[c.index] == c.message.content
        assert finish[c.index] == c.finish_reason
        assert not c.message.content.startswith(" "), "the default template strips the answer's leading space"
    assert usage == whole.usage
    assert whole.usage.completion_tokens == 20 * sampling.get("n", 1)


def test_stream_without_usage(server):
    chunks = list(server.openai().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, stream=True))
    assert chunks and all(c.usage is None for c in chunks)


def test_model_may_be_omitted_and_max_completion_tokens(server):
    status, body = server.post_json("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 3,
                                                             "ignore_eos": True})
    assert status == 200, body
    assert body["model"] == MODEL_NAME
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_token_id_prompt_and_extensions(server):
    client = server.openai()
    r = client.completions.create(model=MODEL_NAME, prompt=[1, 20, 30, 40], max_tokens=5, temperature=0.7, seed=3,
                                  extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
                                              "ignore_eos": True})
    assert r.usage.prompt_tokens == 4
    assert r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_stop_string(server):
    client = server.openai()
    base = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = next((base[i:i + 2] for i in range(3, len(base) - 2) if base[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip(f"no usable stop string in {base!r}")
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == base[:base.index(stop)]


def test_completion_logprobs(server):
    r = server.openai().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2,
                                           extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(x <= 0 for x in lp.token_logprobs)
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert tok in top and 1 <= len(top) <= 3
        assert top[tok] >= max(top.values()) - 1e-5, "greedy picks the most likely token"
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_streamed_and_whole(server):
    client = server.openai()
    args = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
                extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**args).choices[0].logprobs.content
    assert len(whole) == 5
    for entry in whole:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0 and isinstance(entry.bytes, list)
    streamed = [e for chunk in client.chat.completions.create(**args, stream=True)
                for c in chunk.choices if c.logprobs is not None for e in c.logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in whole]


def test_client_errors(server):
    client = server.openai()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    err = e.value.response.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model" and "gpt-4" in err["message"]

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x", top_p=1.5)
    err = e.value.response.json()["error"]
    assert err["param"] == "top_p" and err["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=10**6)
    assert e.value.response.json()["error"]["param"] == "max_tokens"

    # Errors come before the stream starts: a stream request fails with a status too.
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="x", n=0, stream=True)
