"""Summarizes bench/run_server_bench.sh: server output tokens/s and latency
percentiles per concurrency next to the engine's raw decode throughput at the
same batch; prints a markdown table and writes bench/server_overhead.png.

usage: summarize_server.py OUT_DIR
"""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    raw = json.load(open(os.path.join(out, "engine_raw.json")))
    raw_tps = {r["batch"]: r["batch"] / r["step_seconds"] for r in raw["decode"]}
    runs = sorted((json.load(open(p)) for p in glob.glob(os.path.join(out, "server_c*.json"))),
                  key=lambda r: r["concurrency"])
    print("| streams | server output tok/s | engine raw tok/s (same batch) | server / raw | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms |")
    print("|---|---|---|---|---|---|")
    xs, server, engine = [], [], []
    for r in runs:
        c = r["concurrency"]
        t, i = r["ttft_ms"], r["itl_ms"]
        ratio = r["output_tokens_per_s"] / raw_tps[c] if c in raw_tps else float("nan")
        print(f"| {c} | {r['output_tokens_per_s']:.1f} | {raw_tps.get(c, float('nan')):.1f} | {ratio:.2f} | "
              f"{t['p50']:.0f} / {t['p90']:.0f} / {t['p99']:.0f} | {i['p50']:.1f} / {i['p90']:.1f} / {i['p99']:.1f} |")
        xs.append(c)
        server.append(r["output_tokens_per_s"])
        engine.append(raw_tps.get(c, float("nan")))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, engine, "k--o", label="engine raw decode (bench_cpu_engine)")
    ax.plot(xs, server, "o-", label="gdnserve under gdnserve-bench")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams (decode batch)")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"CPU server overhead, {raw['parameters'] / 1e6:.0f}M-parameter GDN-2")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_overhead.png")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
