"""A small synchronous client for gdnserve's gRPC API (service gdnserve.v1.Generation).

    from gdnserve_client import Client
    with Client("localhost:50051") as c:
        for text in c.generate("Once upon a time", max_tokens=32, temperature=0):
            print(text, end="", flush=True)

Failed calls raise GdnserveError, or the subclass for its status code
(InvalidArgumentError, ResourceExhaustedError, ...), carrying .code and .details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import grpc

from ._stubs import load as _load_stubs

pb, pb_grpc = _load_stubs()


# --- errors -----------------------------------------------------------------


class GdnserveError(Exception):
    """A call that ended with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        self.details = details or ""
        super().__init__(f"{code.name}: {self.details}" if self.details else code.name)


class InvalidArgumentError(GdnserveError, ValueError):
    """The request was rejected; details name the field."""


class ResourceExhaustedError(GdnserveError):
    """The server's queue is full: retry later."""


class DeadlineExceededError(GdnserveError, TimeoutError):
    """The call's timeout passed."""


class CancelledError(GdnserveError):
    """The call was cancelled (by this client or by the server)."""


class UnavailableError(GdnserveError, ConnectionError):
    """The server cannot be reached, or is shutting down."""


_ERROR_CLASSES = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_from_rpc(e: grpc.RpcError) -> GdnserveError:
    """The GdnserveError (subclass) for a failed grpc call."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return _ERROR_CLASSES.get(code, GdnserveError)(code, details or "")


# --- requests ---------------------------------------------------------------


def finish_reason_name(reason: int) -> str | None:
    """FINISH_REASON_LENGTH -> "length"; UNSPECIFIED (not finished) -> None."""
    if reason == pb.FINISH_REASON_UNSPECIFIED:
        return None
    try:
        name = pb.FinishReason.Name(reason)
    except ValueError:
        return f"finish_reason_{reason}"
    return name.removeprefix("FINISH_REASON_").lower()


def build_request(
    prompt: str | Sequence[int],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    seed: int | None = None,
    logprobs: int = 0,
    stop: str | Iterable[str] | None = None,
    stop_token_ids: Iterable[int] | None = None,
    ignore_eos: bool = False,
    n: int = 1,
    request_id: str = "",
) -> "pb.GenerateRequest":
    """A GenerateRequest. `prompt` is text (tokenized by the server, BOS
    prepended) or a sequence of token ids (used as given). Parameters left None
    are unset, so the server's defaults apply."""
    req = pb.GenerateRequest(n=n, request_id=request_id)
    if isinstance(prompt, str):
        req.text = prompt
    elif isinstance(prompt, (bytes, bytearray)):
        raise TypeError("prompt must be str or a sequence of token ids, not bytes")
    else:
        req.token_ids.ids.extend(int(i) for i in prompt)
    sampling = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "seed": seed,
    }
    for name, value in sampling.items():
        if value is not None:
            setattr(req.sampling, name, value)
    req.sampling.logprobs = logprobs
    if max_tokens is not None:
        req.stop.max_tokens = max_tokens
    if stop is not None:
        req.stop.stop.extend([stop] if isinstance(stop, str) else list(stop))
    if stop_token_ids is not None:
        req.stop.stop_token_ids.extend(stop_token_ids)
    req.stop.ignore_eos = ignore_eos
    return req


# --- results ----------------------------------------------------------------


@dataclass
class SampleResult:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop", "eos", "cancelled"; None: unfinished
    logprobs: list = field(default_factory=list)  # pb.TokenLogprob, one per token when asked


@dataclass
class Completion:
    samples: list[SampleResult]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str = ""

    @property
    def text(self) -> str:
        return self.samples[0].text if self.samples else ""

    @property
    def finish_reason(self) -> str | None:
        return self.samples[0].finish_reason if self.samples else None


class TextStream:
    """The text deltas of one Generate stream of a single sample, as they arrive.

    Iterate it for str deltas; afterwards .text, .token_ids, .finish_reason,
    .prompt_tokens and .completion_tokens hold the whole result. .cancel()
    (or leaving a `with` block early) cancels the call.
    """

    def __init__(self, call):
        self._call = call
        self._result = SampleResult(index=0)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.request_id = ""
        self.done = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            try:
                resp = next(self._call)
            except StopIteration:
                self.done = True
                raise
            except grpc.RpcError as e:
                self.done = True
                raise error_from_rpc(e) from None
            self.request_id = resp.request_id
            if resp.HasField("usage"):
                self.prompt_tokens = resp.usage.prompt_tokens
                self.completion_tokens = resp.usage.completion_tokens
            text = ""
            for d in resp.samples:
                self._result.token_ids.extend(d.token_ids)
                self._result.logprobs.extend(d.logprobs)
                self._result.text += d.text
                text += d.text
                if d.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                    self._result.finish_reason = finish_reason_name(d.finish_reason)
            if text:
                return text

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.cancel()

    @property
    def text(self) -> str:
        return self._result.text

    @property
    def token_ids(self) -> list[int]:
        return self._result.token_ids

    @property
    def finish_reason(self) -> str | None:
        return self._result.finish_reason

    @property
    def logprobs(self) -> list:
        return self._result.logprobs


# --- client -----------------------------------------------------------------


class Client:
    """A connection to one gdnserve. `timeout` (seconds) is the default
    deadline of every call; `wait_for_ready` makes calls wait for the server to
    come up instead of failing with UnavailableError at once."""

    def __init__(
        self,
        addr: str = "localhost:50051",
        *,
        timeout: float | None = None,
        wait_for_ready: bool = False,
        channel: grpc.Channel | None = None,
    ):
        self.addr = addr
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = channel if channel is not None else grpc.insecure_channel(addr)
        self.stub = pb_grpc.GenerationStub(self._channel)  # for calls this class does not wrap

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _opts(self, timeout: float | None) -> dict:
        return {"timeout": timeout if timeout is not None else self.timeout, "wait_for_ready": self.wait_for_ready}

    def _unary(self, method, request, timeout: float | None):
        try:
            return method(request, **self._opts(timeout))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def stream(self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling) -> Iterator:
        """Generate's raw responses (pb.GenerateResponse), any n. The keyword
        arguments are build_request's."""
        call = self.stub.Generate(build_request(prompt, **sampling), **self._opts(timeout))
        try:
            yield from call
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        finally:
            call.cancel()  # no-op once the stream has ended; cancels an abandoned one

    def generate(self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling) -> TextStream:
        """Streams one sample's text deltas (a TextStream). The keyword
        arguments are build_request's; for n > 1 use stream() or complete()."""
        req = build_request(prompt, **sampling)
        if req.n > 1:
            raise ValueError("generate() streams one sample; use stream() or complete() for n > 1")
        return TextStream(self.stub.Generate(req, **self._opts(timeout)))

    def complete(self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling) -> Completion:
        """The whole result at once (unary Complete)."""
        resp = self._unary(self.stub.Complete, build_request(prompt, **sampling), timeout)
        samples = [
            SampleResult(
                index=s.index,
                text=s.text,
                token_ids=list(s.token_ids),
                finish_reason=finish_reason_name(s.finish_reason),
                logprobs=list(s.logprobs),
            )
            for s in resp.samples
        ]
        return Completion(
            samples=sorted(samples, key=lambda s: s.index),
            prompt_tokens=resp.usage.prompt_tokens,
            completion_tokens=resp.usage.completion_tokens,
            request_id=resp.request_id,
        )

    def tokenize(self, text: str, *, add_bos: bool = False, timeout: float | None = None) -> list[int]:
        resp = self._unary(self.stub.Tokenize, pb.TokenizeRequest(text=text, add_bos=add_bos), timeout)
        return list(resp.token_ids)

    def detokenize(self, token_ids: Sequence[int], *, timeout: float | None = None) -> str:
        resp = self._unary(self.stub.Detokenize, pb.DetokenizeRequest(token_ids=list(token_ids)), timeout)
        return resp.text

    def model_info(self, *, timeout: float | None = None) -> "pb.ModelInfo":
        return self._unary(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
