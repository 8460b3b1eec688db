#!/usr/bin/env python3
"""Plots a training log of tools/train (log.jsonl / train_log.jsonl) as a PNG.

    plot_loss.py --log models/gdn2-tiny/train_log.jsonl --out models/gdn2-tiny/loss.png

One colour per run: training loss per logged batch (thin; dropout on) and held-out
loss at each evaluation (thick, dots); the chosen checkpoint (lowest held-out loss
over all runs) is circled. Needs matplotlib (requirements-train.txt).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="gdn2-tiny: GDN-2, 7.1M parameters, KJV Bible + fortunes")
    args = ap.parse_args()
    train, evals, hp = defaultdict(list), defaultdict(list), {}
    with open(args.log) as f:
        for line in f:
            r = json.loads(line)
            if r["event"] == "train":
                train[r["run"]].append((r["step"], r["loss"]))
            elif r["event"] == "eval":
                evals[r["run"]].append((r["step"], r["eval_loss"]))
            elif r["event"] == "start":
                hp[r["run"]] = r["hparams"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    best = None
    for i, run in enumerate(sorted(set(train) | set(evals))):
        c = colours[i % len(colours)]
        label = run
        if run in hp:
            label += f" (dropout {hp[run]['dropout']}, batch {hp[run]['batch']}x{hp[run]['seq']})"
        if train[run]:
            s, l = zip(*train[run])
            ax.plot(s, l, color=c, lw=0.8, alpha=0.6, label=f"{label}: training batch loss")
        if evals[run]:
            s, l = zip(*evals[run])
            ax.plot(s, l, color=c, lw=2, marker="o", ms=3, label=f"{label}: held-out loss")
            j = min(range(len(l)), key=l.__getitem__)
            if best is None or l[j] < best[2]:
                best = (run, s[j], l[j], c)
    if best:
        ax.plot([best[1]], [best[2]], "o", ms=12, mfc="none", mec="black")
        ax.annotate(f"exported: run {best[0]}, step {best[1]}\nheld-out {best[2]:.3f}", (best[1], best[2]),
                    textcoords="offset points", xytext=(-150, 40), arrowprops={"arrowstyle": "->"})
    ax.set_xlabel("step (32 x 1024 tokens)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_ylim(2.0, 7.0)
    ax.grid(alpha=0.3)
    ax.set_title(args.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"plot_loss: {args.out}")


if __name__ == "__main__":
    main()
