"""Plots CPU decode step time against the memory floor from bench_cpu_engine's JSON.

usage: plot_cpu.py REPORT.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    report = json.load(open(sys.argv[1]))
    rows = report["decode"]
    batch = [r["batch"] for r in rows]
    step_ms = [r["step_seconds"] * 1e3 for r in rows]
    floor_ms = [r["floor_seconds"] * 1e3 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(batch, step_ms, "o-", label="measured step time")
    ax.plot(batch, floor_ms, "k--", label="memory floor (weights + 2x state, copy bandwidth)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decode batch (sequences)")
    ax.set_ylabel("ms per step")
    ax.set_ylim(bottom=0)
    ax.set_title(f"CPU decode, {report['parameters'] / 1e6:.0f}M-parameter GDN-2 ({report['copy_bytes_per_s'] / 1e9:.0f} GB/s copy)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
