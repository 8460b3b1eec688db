#!/usr/bin/env python3
"""Checkpoints of tools/train and their export to a gdnserve model directory (numpy only).

A checkpoint is a directory of four safetensors files (each under 16 MB for the
bundled model's size, so it fits the device machine's return limits):
- weights_0.safetensors, weights_1.safetensors: the float32 parameters, cut in
  two by bytes; weights_0's metadata "state" holds the training state as JSON
  (step, total steps, config, hyper-parameters, evaluation);
- adam_m.safetensors, adam_v.safetensors: AdamW's first and second moments, in
  BF16 (rounded; the price of the size limit), keyed by parameter name.

    export.py --ckpt DIR --out MODEL_DIR --tokenizer tokenizer.model [--dtype bf16]

writes MODEL_DIR/config.json, model.safetensors and tokenizer.model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import safetensors_np  # noqa: E402

DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}


def save_checkpoint(ckpt_dir: str | Path, weights: dict[str, np.ndarray], adam_m: dict[str, np.ndarray] | None,
                    adam_v: dict[str, np.ndarray] | None, state: dict) -> None:
    """weights: name -> float32 array (checkpoint names); moments keyed the same; state: JSON-able."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    sizes = np.cumsum([weights[n].nbytes for n in names])
    cut = int(np.searchsorted(sizes, sizes[-1] / 2)) + 1
    parts = [names[:cut], names[cut:]]
    meta = {"state": json.dumps(state)}
    for i, part in enumerate(parts):
        tmp = ckpt_dir / f"weights_{i}.safetensors.tmp"
        safetensors_np.save_file({n: weights[n] for n in part}, tmp, "F32", meta if i == 0 else None)
        tmp.replace(ckpt_dir / f"weights_{i}.safetensors")
    for name, moments in (("adam_m", adam_m), ("adam_v", adam_v)):
        if moments is not None:
            tmp = ckpt_dir / f"{name}.safetensors.tmp"
            safetensors_np.save_file(moments, tmp, "BF16")
            tmp.replace(ckpt_dir / f"{name}.safetensors")


def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None,
                                                   dict[str, np.ndarray] | None, dict]:
    """(weights, adam_m or None, adam_v or None, state) of a checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    _, meta, _ = safetensors_np.read_header(ckpt_dir / "weights_0.safetensors")
    state = json.loads(meta["state"])
    weights = {}
    for i in range(2):
        weights.update(safetensors_np.load_file(ckpt_dir / f"weights_{i}.safetensors"))
    moments = []
    for name in ("adam_m", "adam_v"):
        path = ckpt_dir / f"{name}.safetensors"
        moments.append(safetensors_np.load_file(path) if path.exists() else None)
    return weights, moments[0], moments[1], state


def export_model(weights: dict[str, np.ndarray], config: dict, out_dir: str | Path, dtype: str = "BF16",
                 tokenizer: str | Path | None = None) -> Path:
    """Writes config.json, model.safetensors (weights stored as `dtype`) and a copy of `tokenizer`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    safetensors_np.save_model({n: np.asarray(x, dtype=np.float32) for n, x in weights.items()}, out_dir, dtype)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.model")
    return out_dir


def main() -> int:
    ap = argparse.ArgumentParser(description="Export a tools/train checkpoint to a gdnserve model directory.")
    ap.add_argument("--ckpt", required=True, help="checkpoint directory")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.model to copy")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    args = ap.parse_args()
    weights, _, _, state = load_checkpoint(args.ckpt)
    export_model(weights, state["config"], args.out, DTYPES[args.dtype], args.tokenizer)
    n = sum(x.size for x in weights.values())
    print(f"export: step {state['step']}, {n / 1e6:.2f}M parameters -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
