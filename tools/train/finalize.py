#!/usr/bin/env python3
"""After the training runs: picks the run with the best held-out loss, exports it, and
computes what the engine is checked against, all in PyTorch float32 (TF32 off)
on the exported BF16 weights (exactly what the engine loads).

    finalize.py --runs DIR --data build/traindata --out OUT

OUT/ckpt/: the chosen run's checkpoint (export.py format);
OUT/train_log.jsonl: every run's log; OUT/metrics.json: the numbers below;
OUT/agreement.npz: ids_i [T_i] (BOS first) and logits_i [T_i, vocab] float32 for
three held-out sequences, to compare with the engine's gdn_dump_logits.
metrics.json: heldout_perplexity, the engine's `gdnserve-generate --perplexity`
quantity (BOS + the whole held-out text as one sequence, mean next-token NLL over
all its tokens), computed in one go and in pieces of 512 with the state
carried; windowed held-out and training losses; PyTorch vs tools/reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "reference"))
sys.path.insert(0, str(HERE.parent / "common"))
import export  # noqa: E402
import gdn2_ref  # noqa: E402
import safetensors_np  # noqa: E402
from model import GDN2Config, GDN2LM  # noqa: E402
from train import batch_at  # noqa: E402

BOS = 1


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@torch.no_grad()
def nll_sequence(model: GDN2LM, ids: torch.Tensor, piece: int = 0) -> tuple[float, int]:
    """Mean NLL of ids[1:] given the prefix, one sequence (ids [T]); piece > 0: prefill in pieces with state."""
    x = ids[:-1][None]
    total, state = 0.0, None
    pieces = [x] if piece <= 0 else list(torch.split(x, piece, dim=1))
    pos = 0
    for p in pieces:
        logits, state = model(p, state)
        y = ids[1 + pos:1 + pos + p.shape[1]]
        total += F.cross_entropy(logits[0].double(), y, reduction="sum").item()
        pos += p.shape[1]
    return total / (ids.numel() - 1), ids.numel() - 1


@torch.no_grad()
def windowed(model: GDN2LM, ids: torch.Tensor, seq: int, batch: int = 16) -> float:
    n = ids.numel() // seq
    starts = torch.arange(n, device=ids.device) * seq
    total = 0.0
    for i in range(0, n, batch):
        x, y = batch_at(ids, starts[i:i + batch], seq)
        logits, _ = model(x)
        total += F.cross_entropy(logits.double().flatten(0, 1), y.flatten(), reduction="sum").item()
    return total / (n * seq)


@torch.no_grad()
def greedy(model: GDN2LM, sp, prompt: str, n: int) -> str:
    ids = [BOS] + sp.encode(prompt)
    dev = next(model.parameters()).device
    logits, state = model(torch.tensor([ids], device=dev))
    out = []
    for _ in range(n):
        t = int(logits[0, -1].argmax())
        if t == 2:
            break
        out.append(t)
        logits, state = model(torch.tensor([[t]], device=dev), state)
    return sp.decode(out)


@torch.no_grad()
def finalize(ckpt_dir: Path, data: Path, out: Path, summaries: list[dict]) -> dict:
    """Everything below the module docstring's OUT/ckpt line, for the checkpoint in ckpt_dir."""
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    weights, _, _, state = export.load_checkpoint(ckpt_dir)
    cfg = GDN2Config.from_json(state["config"])
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(data / "tokenizer.model"))
    held = torch.from_numpy(np.load(data / "heldout_ids.npy").astype(np.int64)).to(dev)
    train = torch.from_numpy(np.load(data / "train_ids.npy").astype(np.int64)).to(dev)
    metrics = {"runs": summaries, "checkpoint_state": state}

    with tempfile.TemporaryDirectory() as tmp:
        export.export_model(weights, cfg.to_json(), tmp, "BF16", data / "tokenizer.model")
        exported = safetensors_np.load_model(tmp)  # BF16 -> float32, exactly the engine's values
        model = GDN2LM(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.from_numpy(exported[n]))
        model.to(dev).eval()

        # Agreement sequences and the float64 reference on the first one.
        spans = [(0, 127), (20000, 255), (41000, 383)]
        arrays = {}
        for i, (s, n) in enumerate(spans):
            ids = torch.cat([torch.tensor([BOS], device=dev), held[s:s + n]])
            logits, _ = model(ids[None])
            arrays[f"ids_{i}"] = ids.cpu().numpy().astype(np.int32)
            arrays[f"logits_{i}"] = logits[0].cpu().numpy().astype(np.float32)
        np.savez(out / "agreement.npz", **arrays)
        ref = gdn2_ref.RefModel.load(tmp)
        ref_logits, _ = ref.forward(arrays["ids_0"])
        metrics["pytorch_f32_vs_reference_f64_rel"] = rel(arrays["logits_0"], ref_logits)
        print(f"pytorch f32 vs reference f64 (128 tokens): {metrics['pytorch_f32_vs_reference_f64_rel']:.3e}",
              flush=True)

    # Held-out perplexity exactly as the engine's --perplexity mode (BOS + whole text, one sequence).
    full = torch.cat([torch.tensor([BOS], device=dev), held])
    nll, n = nll_sequence(model, full)
    nll512, _ = nll_sequence(model, full, piece=512)
    metrics.update({"heldout_tokens": n, "heldout_nll": nll, "heldout_perplexity": float(np.exp(nll)),
                    "heldout_nll_pieces512": nll512})
    seq = state["hparams"]["seq"]
    metrics["heldout_windowed_loss_f32"] = windowed(model, held, seq)
    metrics["train_windowed_loss_f32_first400k"] = windowed(model, train[: 400 * seq], seq)
    samples = {}
    for prompt in ("In the beginning", "And the LORD said unto Moses,", "A computer", "Love is"):
        samples[prompt] = greedy(model, sp, prompt, 48)
    metrics["pytorch_greedy_samples"] = samples
    metrics["finalize_seconds"] = time.time() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("runs", "checkpoint_state")}, indent=1),
          flush=True)
    return metrics


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="directory of train.py run directories")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs, out, data = Path(args.runs), Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [json.loads(s.read_text()) for s in sorted(runs.glob("*/summary.json"))]
    with open(out / "train_log.jsonl", "w") as f:
        for log in sorted(runs.glob("*/log.jsonl")):
            f.write(log.read_text())
    ok = [s for s in summaries if (runs / s["run"] / "ckpt" / "weights_0.safetensors").exists()]
    best = min(ok, key=lambda s: s["best"]["eval_loss"])
    print(f"chosen: {best['run']}", flush=True)
    shutil.copytree(runs / best["run"] / "ckpt", out / "ckpt", dirs_exist_ok=True)
    finalize(out / "ckpt", data, out, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
