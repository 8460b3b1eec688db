"""A fake gdnserve: the Generation service with no model behind it, for testing
clients (test_client.py, test_cli.py, or by hand: `python fake_server.py --port 50099`).

Tokens are UTF-8 bytes: id = byte + 3 (0 pad, 1 BOS, 2 EOS), vocab 259. Sample i
of a request "generates" PATTERN from offset 4*i, one byte-token per message,
honouring max_tokens, stop strings, stop_token_ids and logprobs. Prompts that
steer it:
  "overload"    RESOURCE_EXHAUSTED          "internal"  INTERNAL
  "eos..."      ends with EOS after 3 tokens unless ignore_eos
  "slow..."     0.5 s per token (for deadlines and cancellation)
  ""            INVALID_ARGUMENT, as are out-of-range parameters and token ids
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gdnserve_client import pb, pb_grpc  # noqa: E402

VOCAB = 259
BOS, EOS, OFFSET = 1, 2, 3
PATTERN = "The quick brown fox jumps over the lazy dog. "
DEFAULT_MAX_TOKENS = 16


def encode(text: str) -> list[int]:
    return [b + OFFSET for b in text.encode()]


def decode(ids) -> str:
    return bytes(i - OFFSET for i in ids if i >= OFFSET).decode(errors="replace")


class FakeGeneration(pb_grpc.GenerationServicer):
    def __init__(self, token_delay_s: float = 0.0, max_tokens_cap: int = 4096, max_prompt_tokens: int = 4096):
        self.token_delay_s = token_delay_s
        self.max_tokens_cap = max_tokens_cap
        self.max_prompt_tokens = max_prompt_tokens
        self.lock = threading.Lock()
        self.requests: list = []  # every GenerateRequest seen, in order
        self.running = 0
        self.finished = 0
        self.cancelled = 0
        self.cancel_seen = threading.Event()  # set when a stream ends without completing

    # --- request checks and the "model" -----------------------------------

    def _prompt_ids(self, req, context) -> list[int]:
        which = req.WhichOneof("prompt")
        if which == "text":
            if not req.text:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: empty")
            ids = [BOS] + encode(req.text)
        elif which == "token_ids":
            ids = list(req.token_ids.ids)
            if not ids:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt.token_ids: empty")
            for i in ids:
                if not 0 <= i < VOCAB:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt.token_ids: {i} is not in [0, {VOCAB})")
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: not set")
        if len(ids) > self.max_prompt_tokens:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt: {len(ids)} tokens > {self.max_prompt_tokens}")
        return ids

    def _plan(self, req, context):
        """(prompt ids, [(token ids, text pieces, finish reason)] per sample)."""
        with self.lock:
            self.requests.append(req)
        prompt = self._prompt_ids(req, context)
        if req.text == "overload":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full: 0 of 0 waiting places free (fake)")
        if req.text == "internal":
            context.abort(grpc.StatusCode.INTERNAL, "fake internal error")
        max_tokens = req.stop.max_tokens if req.stop.HasField("max_tokens") else DEFAULT_MAX_TOKENS
        if not 1 <= max_tokens <= self.max_tokens_cap:
            msg = f"stop.max_tokens: {max_tokens} not in [1, {self.max_tokens_cap}]"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
        n = req.n or 1
        if not 1 <= n <= 16:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"n: {n} not in [1, 16]")
        if req.sampling.HasField("temperature") and req.sampling.temperature < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature: must be >= 0")
        if not 0 <= req.sampling.logprobs <= 20:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sampling.logprobs: not in [0, 20]")
        samples = []
        for i in range(n):
            start = 4 * i
            text = (PATTERN * (max_tokens // len(PATTERN) + 2))[start : start + max_tokens]
            ids = encode(text)
            pieces = list(text)
            finish = pb.FINISH_REASON_LENGTH
            if req.text.startswith("eos") and not req.stop.ignore_eos and len(ids) > 3:
                ids, pieces, finish = ids[:3], pieces[:3], pb.FINISH_REASON_EOS
            stop_ids = set(req.stop.stop_token_ids)
            for pos, tid in enumerate(ids):
                if tid in stop_ids:  # the token ends it and is not emitted as text
                    ids, pieces, finish = ids[: pos + 1], pieces[:pos] + [""], pb.FINISH_REASON_STOP
                    break
            joined = "".join(pieces)
            cut = min((joined.find(s) for s in req.stop.stop if s and s in joined), default=-1)
            if cut >= 0:  # the stop string is not emitted; its tokens are still generated
                k = len(joined[:cut].encode())
                ids, pieces, finish = ids[:k], pieces[:k], pb.FINISH_REASON_STOP
            samples.append((ids, pieces, finish))
        return prompt, samples

    def _delay(self, req) -> float:
        return 0.5 if req.text.startswith("slow") else self.token_delay_s

    @staticmethod
    def _logprobs(req, tid: int) -> list:
        k = req.sampling.logprobs
        if k <= 0:
            return []
        top = [pb.TopLogprob(token_id=tid + j, logprob=-0.5 - j, token=decode([tid + j])) for j in range(k)]
        return [pb.TokenLogprob(token_id=tid, logprob=-0.5, top=top)]

    @staticmethod
    def _sleep(seconds: float, context) -> bool:
        """Sleeps unless the call ends first; False when it did."""
        end = time.monotonic() + seconds
        while context.is_active() and time.monotonic() < end:
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        return context.is_active()

    def _track(self, context) -> dict:
        state = {"completed": False}
        with self.lock:
            self.running += 1

        def on_end():
            with self.lock:
                self.running -= 1
                self.finished += 1
                if not state["completed"]:
                    self.cancelled += 1
                    self.cancel_seen.set()

        context.add_callback(on_end)
        return state

    # --- the service ---------------------------------------------------------

    def Generate(self, req, context):
        prompt, samples = self._plan(req, context)
        state = self._track(context)
        delay = self._delay(req)
        steps = max(1, max(len(ids) for ids, _, _ in samples))
        completion = sum(len(ids) for ids, _, _ in samples)
        for step in range(steps):
            if delay and not self._sleep(delay, context):
                return
            resp = pb.GenerateResponse(request_id=req.request_id)
            for index, (ids, pieces, finish) in enumerate(samples):
                last = max(len(ids), 1) - 1
                if step > last:
                    continue
                d = resp.samples.add(index=index)
                if step < len(ids):
                    d.token_ids.append(ids[step])
                    d.text = pieces[step]
                    d.logprobs.extend(self._logprobs(req, ids[step]))
                if step == last:
                    d.finish_reason = finish
            if step == steps - 1:
                resp.usage.prompt_tokens = len(prompt)
                resp.usage.completion_tokens = completion
                state["completed"] = True
            yield resp

    def Complete(self, req, context):
        prompt, samples = self._plan(req, context)
        state = self._track(context)
        delay = self._delay(req)
        steps = max(len(ids) for ids, _, _ in samples)
        if delay and not self._sleep(delay * steps, context):
            return pb.CompleteResponse()
        resp = pb.CompleteResponse(request_id=req.request_id)
        for index, (ids, pieces, finish) in enumerate(samples):
            s = resp.samples.add(index=index, token_ids=ids, text="".join(pieces), finish_reason=finish)
            for tid in ids:
                s.logprobs.extend(self._logprobs(req, tid))
        resp.usage.prompt_tokens = len(prompt)
        resp.usage.completion_tokens = sum(len(ids) for ids, _, _ in samples)
        state["completed"] = True
        return resp

    def Tokenize(self, req, context):
        ids = ([BOS] if req.add_bos else []) + encode(req.text)
        pieces = ["<s>" if i == BOS else decode([i]) for i in ids]
        return pb.TokenizeResponse(token_ids=ids, pieces=pieces)

    def Detokenize(self, req, context):
        for i in req.token_ids:
            if not 0 <= i < VOCAB:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token_ids: {i} is not in [0, {VOCAB})")
        return pb.DetokenizeResponse(text=decode(req.token_ids))

    def GetModelInfo(self, req, context):
        with self.lock:
            running, finished = self.running, self.finished
        config = {"architecture": "gdn2", "vocab_size": VOCAB, "bos_token_id": BOS, "eos_token_id": EOS}
        return pb.ModelInfo(
            model_name="fake",
            architecture="gdn2",
            config_json=json.dumps(config),
            vocab_size=VOCAB,
            bos_token_id=BOS,
            eos_token_id=EOS,
            device="cpu",
            max_prompt_tokens=self.max_prompt_tokens,
            max_tokens_cap=self.max_tokens_cap,
            max_seqs=64,
            slots_used=running,
            requests_running=running,
            requests_finished=finished,
        )


def serve(port: int = 0, max_workers: int = 64, **kwargs) -> tuple[grpc.Server, FakeGeneration, int]:
    """Starts the fake on 127.0.0.1:port (0: any free port); returns (server, service, port).
    Every open stream holds one of max_workers threads."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    service = FakeGeneration(**kwargs)
    pb_grpc.add_GenerationServicer_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, service, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=50051, help="0: any free port (printed)")
    ap.add_argument("--token_delay_s", type=float, default=0.0, help="sleep before each streamed token")
    ap.add_argument("--max_workers", type=int, default=300, help="threads: the most concurrent streams")
    args = ap.parse_args()
    server, _, port = serve(args.port, args.max_workers, token_delay_s=args.token_delay_s)
    print(f"fake gdnserve listening on 127.0.0.1:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
