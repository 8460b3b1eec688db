"""Plots the GPU benchmarks of bench/gpu/run_device.sh.

    plot_gpu.py [ENGINE_JSON] [KERNEL_JSON] [--prefill-json JSON] [--op-json JSON] [--out-dir DIR]
                [--baseline-json JSON --baseline-label TEXT]

ENGINE_JSON (default bench/out/engine_bench.json) is bench_cuda_engine's
report, KERNEL_JSON (default bench/out/decode_kernel.json) that of
bench/gpu/decode_kernel_bench.py. Writes DIR/gpu_decode.png (decode step time
vs batch, CUDA graphs on and off, against the memory floor; the decode kernel
alone, ours vs flash-linear-attention, as % of copy bandwidth) and
DIR/gpu_prefill.png (prefill tokens/s vs context length for each GDN-2
kernel in the report, token-by-token and chunkwise; GPU memory vs length).
DIR defaults to the directory of this script (bench/).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def config(r: dict) -> str:
    """The configuration of a decode row: reports before "config" was written
    had graphs off / on only (an early H100 run's graphs-on GEMV rows are
    dropped: that GEMV measured slower and was removed)."""
    if "config" in r:
        return r["config"]
    if r["cuda_graphs"] and r.get("gemv", False):
        return "removed_gemv"
    return "default" if r["cuda_graphs"] else "graphs_off"


def plot_decode(engine: dict, kernel: dict, path: str, baseline: dict = None, baseline_label: str = "") -> None:
    fig, (ax, kx) = plt.subplots(1, 2, figsize=(12, 4.5))

    rows = engine["decode"]
    lines = [(rows, "graphs_off", "s-", "CUDA graphs off"),
             (rows, "cublas_only", "^:", "graphs on, cuBLAS for every GEMM"),
             (rows, "no_pdl", "v:", "graphs on, no programmatic launch"),
             (rows, "default", "o-", "the default (graphs, GEMVs at batches 1-8, PDL)")]
    if baseline:
        lines.insert(0, (baseline["decode"], "default", "x--", baseline_label or "baseline, graphs on"))
    for src, cfg, style, label in lines:
        rs = sorted((r for r in src if config(r) == cfg), key=lambda r: r["batch"])
        if not rs:
            continue
        ax.plot([r["batch"] for r in rs], [r["step_seconds"] * 1e3 for r in rs], style, label=label)
        if src is rows and cfg == "default":
            for r in rs:
                ax.annotate(f"{r['step_seconds'] / r['floor_seconds']:.2f}x", (r["batch"], r["step_seconds"] * 1e3),
                            textcoords="offset points", xytext=(4, -14), fontsize=8)
    fl = sorted({(r["batch"], r["floor_seconds"]) for r in rows})
    ax.plot([b for b, _ in fl], [f * 1e3 for _, f in fl], "k--",
            label="floor: weights + 2 x state at copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xticks([b for b, _ in fl], [str(b) for b, _ in fl])
    ax.set_xlabel("decode batch (sequences)")
    ax.set_ylabel("ms per step (median)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Engine decode step, {engine['parameters'] / 1e9:.2f}B GDN-2 ({engine.get('backend', '')}),\n"
                 f"{engine['device']}, copy {engine['copy_bytes_per_s'] / 1e9:.0f} GB/s; labels: step / floor",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    krows = sorted(kernel["rows"], key=lambda r: r["batch"])
    xs = range(len(krows))
    width = 0.38
    top = 110.0
    for off, key, label in [(-width / 2, "ours_s", "gdnserve"), (width / 2, "fla_s", "fla fused_recurrent_gdn2")]:
        pct = [100 * r["bytes"] / r[key] / r["copy_bytes_per_s"] for r in krows]
        top = max(top, max(pct) * 1.15)
        bars = kx.bar([x + off for x in xs], pct, width, label=label)
        for b, r, p in zip(bars, krows, pct):
            kx.annotate(f"{p:.0f}%\n{r[key] * 1e6:.1f} us", (b.get_x() + b.get_width() / 2, p),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
    kx.set_xticks(list(xs))
    kx.set_xticklabels([str(r["batch"]) for r in krows])
    kx.set_xlabel("batch (sequences, one token each)")
    kx.set_ylabel("% of copy bandwidth (state read + written, I/O)")
    kx.set_ylim(0, top)  # above 100%: a small batch's state stays in L2 across replays
    kx.axhline(100, color="k", ls="--", lw=1)
    kx.set_title(f"Decode recurrence kernel alone, H={kernel['H']}, K=V={kernel['K']}, float32\n"
                 f"{kernel['device']}, copy {krows[0]['copy_bytes_per_s'] / 1e9:.0f} GB/s", fontsize=10)
    kx.legend(fontsize=8, loc="upper left")
    kx.grid(alpha=0.3, axis="y")

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


KERNEL_LABELS = {"recurrent": "token-by-token", "chunked": "chunkwise (f32 SIMT)",
                 "chunked_wy": "chunkwise, tensor cores (default)"}


def plot_prefill(engine: dict, path: str) -> None:
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = engine["prefill"]
    # Reports before the chunkwise kernel have no "kernel" field: token-by-token.
    kernels = sorted({r.get("kernel", "recurrent") for r in rows}, key=lambda k: k != "recurrent")
    seqs = sorted({r["sequences"] for r in rows})
    markers = "os^vD"
    for ki, k in enumerate(kernels):
        for si, s in enumerate(seqs):
            rs = sorted((r for r in rows if r["sequences"] == s and r.get("kernel", "recurrent") == k),
                        key=lambda r: r["tokens"])
            if not rs:
                continue
            n = [r["tokens"] for r in rs]
            style = markers[si % len(markers)] + ("-" if ki == 0 else ":")
            color = f"C{si}"
            label = f"{KERNEL_LABELS.get(k, k)}, {s} seq"
            ax.plot(n, [s * r["tokens"] / r["seconds"] for r in rs], style, color=color, label=label)
            # Label the last point of the first kernel above, the second point of the others below.
            r = rs[-1] if ki == 0 else rs[min(1, len(rs) - 1)]
            ax.annotate(f"{s * r['tokens'] / r['seconds'] / 1e3:.1f}K", (r["tokens"], s * r["tokens"] / r["seconds"]),
                        textcoords="offset points", xytext=(-10, 5) if ki == 0 else (8, -13),
                        ha="right" if ki == 0 else "left", fontsize=8, color=color)
            if ki == 0:
                mx.plot(n, [r["device_bytes_used"] / 1e9 for r in rs], style, color=color, label=f"{s} sequence(s)")
    # The GEMM floor in tokens/s is the same at every length and batch.
    r0 = rows[0]
    floor_tps = r0["sequences"] * r0["tokens"] / r0["gemm_floor_seconds"]
    ax.axhline(floor_tps, color="k", ls="--", label=f"GEMM FLOP floor ({floor_tps / 1e3:.0f}K tokens/s)")
    lengths = sorted({r["tokens"] for r in rows})
    for a in (ax, mx):
        a.set_xscale("log", base=2)
        a.set_xticks(lengths, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
        a.set_xlabel("context length (tokens per sequence)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="center right")
    ax.set_ylim(bottom=0, top=floor_tps * 1.1)
    ax.set_ylabel("prefill tokens/s")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:.0f}K"))
    ax.set_title(f"Prefill by GDN-2 recurrence kernel, {engine['device']},\n"
                 f"bf16 GEMM {engine['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s", fontsize=10)
    mx.set_ylabel("GPU memory in use, GB (whole device)")
    mx.set_ylim(0, max(r["device_bytes_used"] for r in rows) / 1e9 * 1.25)
    state = engine.get("state_bytes_per_sequence")
    mx.set_title("GPU memory after the prefill" +
                 (f"; state {state / 1e6:.1f} MB per sequence at any context" if state else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def plot_prefill_op(op: dict, path: str) -> None:
    """Op time per shape for each implementation in a prefill_kernel_bench.py report, against both floors."""
    rows = op["rows"]
    names = []
    for r in rows:
        names += [n for n in r["results"] if n not in names]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(names))
    xs = range(len(rows))
    for i, name in enumerate(names):
        tps = [r["sequences"] * r["tokens_per_sequence"] / r["results"][name]["seconds"] / 1e6
               if name in r["results"] else 0.0 for r in rows]
        bars = ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], tps, width, label=name)
        for b, r, v in zip(bars, rows, tps):
            if v:
                floor = r["sequences"] * r["tokens_per_sequence"] / r["floor_seconds"] / 1e6
                ax.annotate(f"{floor / v:.1f}x", (b.get_x() + b.get_width() / 2, v), textcoords="offset points",
                            xytext=(0, 2), ha="center", fontsize=7)
    for key, style, label in [("floor_seconds", "k--", "floor, float32 I/O"), ("floor_bf16_seconds", "k:",
                                                                                "floor, bf16 I/O")]:
        ys = [r["sequences"] * r["tokens_per_sequence"] / r[key] / 1e6 for r in rows if key in r]
        if len(ys) == len(rows):
            ax.plot([x for x in xs], ys, style, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{r['sequences']} x {r['tokens_per_sequence']}" for r in rows])
    ax.set_xlabel("sequences x tokens")
    ax.set_ylabel("M tokens/s (H = %d, K = V = %d)" % (op["H"], op["K"]))
    ax.set_yscale("log")
    ax.set_title(f"GDN-2 prefill op, {op['device']}, copy {rows[0]['copy_bytes_per_s'] / 1e9:.0f} GB/s; "
                 f"labels: time / float32-I/O floor", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engine_json", nargs="?", default="bench/out/engine_bench.json")
    ap.add_argument("kernel_json", nargs="?", default="bench/out/decode_kernel.json")
    ap.add_argument("--prefill-json", help="bench_cuda_engine report for the prefill plot (default: ENGINE_JSON)")
    ap.add_argument("--op-json", help="prefill_kernel_bench.py report: also writes gpu_prefill_op.png")
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--baseline-json", help="an earlier bench_cuda_engine report: its default decode line drawn too")
    ap.add_argument("--baseline-label", default="", help="legend label of the baseline line")
    args = ap.parse_args()
    with open(args.engine_json) as f:
        engine = json.load(f)
    with open(args.kernel_json) as f:
        kernel = json.load(f)
    baseline = None
    if args.baseline_json:
        with open(args.baseline_json) as f:
            baseline = json.load(f)
    plot_decode(engine, kernel, os.path.join(args.out_dir, "gpu_decode.png"), baseline, args.baseline_label)
    prefill = engine
    if args.prefill_json:
        with open(args.prefill_json) as f:
            prefill = json.load(f)
    plot_prefill(prefill, os.path.join(args.out_dir, "gpu_prefill.png"))
    if args.op_json:
        with open(args.op_json) as f:
            plot_prefill_op(json.load(f), os.path.join(args.out_dir, "gpu_prefill_op.png"))


if __name__ == "__main__":
    main()
