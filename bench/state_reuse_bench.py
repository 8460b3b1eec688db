#!/usr/bin/env python3
"""State reuse benchmark (issue 10) against a running gdnserve.

  chat:   a 20-turn greedy chat, each turn sent (a) through a session with only
          the new tokens and (b) as the full history; TTFT per turn.
  prefix: requests sharing a long token prefix with distinct suffixes; TTFT
          and usage.cached_prompt_tokens (run against servers with and without
          --prefix-cache-bytes to compare).

  bench/state_reuse_bench.py --addr localhost:50051 --mode chat|prefix [--json out.json]
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python"))
import grpc  # noqa: E402
from gdnserve_client._stubs import load as load_stubs  # noqa: E402

pb, pb_grpc = load_stubs()


def ttft(stub, req):
    """Streams one request; returns (ttft seconds, token ids, usage)."""
    t0 = time.perf_counter()
    first = None
    tokens, usage = [], None
    for msg in stub.Generate(req, timeout=600):
        if first is None and any(s.token_ids for s in msg.samples):
            first = time.perf_counter() - t0
        for s in msg.samples:
            if s.index == 0:
                tokens.extend(s.token_ids)
        if msg.HasField("usage"):
            usage = msg.usage
    return first, tokens, usage


def request(ids, max_tokens, session=None, cont=False):
    r = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids))
    r.sampling.temperature = 0
    r.stop.max_tokens = max_tokens
    r.stop.ignore_eos = True
    if session:
        r.session_id = session
        r.session_continue = cont
    return r


def chat(stub, vocab, args):
    rng = random.Random(1)
    history, rows = [], []
    for turn in range(args.turns):
        user = [rng.randrange(3, vocab) for _ in range(args.turn_tokens)]
        t_full, full, _ = ttft(stub, request(history + user, args.gen))
        t_sess, sess, usage = ttft(stub, request(user, args.gen, "bench-chat", turn > 0))
        rows.append({"turn": turn + 1, "history_tokens": len(history) + len(user), "ttft_full_s": t_full,
                     "ttft_session_s": t_sess, "cached": usage.cached_prompt_tokens, "same_tokens": full == sess})
        history = history + user + full
        print(f"turn {turn + 1:2d}: history {len(history):6d}  TTFT full {t_full * 1e3:8.1f} ms  "
              f"session {t_sess * 1e3:8.1f} ms  cached {usage.cached_prompt_tokens}  same {full == sess}")
    return rows


def prefix(stub, vocab, args):
    rng = random.Random(2)
    shared = [rng.randrange(3, vocab) for _ in range(args.prefix_tokens)]
    rows = []
    for i in range(args.requests):
        suffix = [rng.randrange(3, vocab) for _ in range(args.suffix_tokens)]
        t, _, usage = ttft(stub, request(shared + suffix, args.gen))
        rows.append({"i": i, "ttft_s": t, "cached": usage.cached_prompt_tokens})
    warm = [r["ttft_s"] for r in rows[1:]]
    hits = sum(r["cached"] for r in rows) / (len(rows) * (args.prefix_tokens + args.suffix_tokens))
    print(f"prefix {args.prefix_tokens} + suffix {args.suffix_tokens}: first TTFT {rows[0]['ttft_s'] * 1e3:.1f} ms, "
          f"later median {statistics.median(warm) * 1e3:.1f} ms, token hit rate {hits:.2%}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="localhost:50051")
    ap.add_argument("--mode", choices=["chat", "prefix"], required=True)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--turn-tokens", type=int, default=64)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=4096)
    ap.add_argument("--suffix-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    opts = [("grpc.max_receive_message_length", 256 << 20)]
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(args.addr, options=opts))
    vocab = stub.GetModelInfo(pb.GetModelInfoRequest()).vocab_size
    rows = chat(stub, vocab, args) if args.mode == "chat" else prefix(stub, vocab, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
