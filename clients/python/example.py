"""Streams a completion from a running gdnserve, then prints why it stopped.

    .venv/bin/python clients/python/example.py [--addr localhost:50051] [--max_tokens 64] "Once upon a time"
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gdnserve_client import Client, GdnserveError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("--addr", default="localhost:50051")
    ap.add_argument("--max_tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args()

    with Client(args.addr, timeout=120) as client:
        try:
            info = client.model_info()
            print(f"[{info.model_name} on {info.device}, vocab {info.vocab_size}]", file=sys.stderr)
            stream = client.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature)
            print(args.prompt, end="", flush=True)
            for text in stream:
                print(text, end="", flush=True)
            print()
        except GdnserveError as e:  # e.code is the grpc.StatusCode, e.details the server's message
            print(f"\nerror: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # leaving the with block closes the channel, cancelling the call
            print("\ncancelled", file=sys.stderr)
            return 130
    print(
        f"[finish: {stream.finish_reason}, prompt {stream.prompt_tokens} tokens, "
        f"completion {stream.completion_tokens} tokens]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
