#!/usr/bin/env python3
"""Trains the bundled GDN-2 model (tools/train/model.py) on the data of prepare_data.py.

    train.py --data build/traindata --out RUN_DIR [--steps 1500 --batch 32 --seq 1024 --lr 2e-3
             --dropout 0.1 --time_budget 400 --seed 1 --resume CKPT_DIR]

(tools/train/device_job.py calls train() directly for the bundled model.)

AdamW (betas 0.9/0.95, weight decay on matrices and embeddings), linear warm-up
then cosine decay to lr/10, bf16 autocast (the recurrence itself in float32),
gradient clipping at 1. A sample is BOS followed by `seq` tokens of the
training stream (half start at a document start, half anywhere); the loss is
the mean next-token cross-entropy over the `seq` targets. Held-out loss: the
held-out stream cut into consecutive windows of `seq` tokens, each after a BOS.

Time: after 25 steps the step time is measured and the schedule's length is cut
if `steps` would not end inside `time_budget` seconds (counted from the run's
start); training also stops at the budget whatever happens.

Writes RUN_DIR/log.jsonl (a line per logged step and per evaluation),
RUN_DIR/ckpt/ (the checkpoint at the best held-out loss, export.py's format:
resume from it with --resume) and RUN_DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402
import model as model_module  # noqa: E402
from model import GDN2Config, GDN2LM  # noqa: E402

BOS = 1


def load_ids(path: Path, device) -> torch.Tensor:
    return torch.from_numpy(np.load(path).astype(np.int64)).to(device)


def doc_starts(ids: torch.Tensor, newline_id: int) -> torch.Tensor:
    """Positions right after a blank line (two newline tokens): where documents start."""
    nl = ids == newline_id
    pos = torch.nonzero(nl[:-2] & nl[1:-1]).flatten() + 2
    return torch.cat([torch.zeros(1, dtype=pos.dtype, device=pos.device), pos])


def batch_at(ids: torch.Tensor, starts: torch.Tensor, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs [B, seq] = BOS + ids[s : s+seq-1], targets [B, seq] = ids[s : s+seq]."""
    win = ids[starts[:, None] + torch.arange(seq, device=ids.device)]
    bos = torch.full_like(win[:, :1], BOS)
    return torch.cat([bos, win[:, :-1]], dim=1), win


@torch.no_grad()
def evaluate(model: GDN2LM, ids: torch.Tensor, seq: int, batch: int, autocast: bool) -> float:
    """Mean next-token loss over the consecutive full windows of `seq` tokens of `ids`."""
    was = model.training
    model.eval()
    n = (ids.numel() // seq)
    starts = torch.arange(n, device=ids.device) * seq
    total, count = 0.0, 0
    for i in range(0, n, batch):
        x, y = batch_at(ids, starts[i:i + batch], seq)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was)
    return total / count


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: GDN2LM, wd: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def save(model: GDN2LM, opt: torch.optim.Optimizer, ckpt_dir: Path, state: dict) -> None:
    names = {p: n for n, p in model.named_parameters()}
    weights = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
    m, v = {}, {}
    for p, st in opt.state.items():
        if "exp_avg" in st:
            m[names[p]] = st["exp_avg"].float().cpu().numpy()
            v[names[p]] = st["exp_avg_sq"].float().cpu().numpy()
    export.save_checkpoint(ckpt_dir, weights, m or None, v or None, state)


def restore(model: GDN2LM, opt: torch.optim.Optimizer, ckpt_dir: Path) -> dict:
    weights, m, v, state = export.load_checkpoint(ckpt_dir)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[n]))
    if m is not None:
        for n, p in model.named_parameters():
            opt.state[p] = {"step": torch.tensor(float(state["step"])),
                            "exp_avg": torch.from_numpy(m[n]).to(p.device),
                            "exp_avg_sq": torch.from_numpy(v[n]).to(p.device)}
    return state


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train the bundled GDN-2 model.")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="run")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--eval_every", type=int, default=100)
    ap.add_argument("--log_every", type=int, default=25)
    ap.add_argument("--time_budget", type=float, default=400.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resume", default="")
    # shape
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=704)
    return ap


def train(args: argparse.Namespace, log_path: Path, ckpt_dir: Path) -> dict:
    """One training run; appends to log_path, keeps the best checkpoint in ckpt_dir; returns its summary."""
    t0 = time.time()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    data = Path(args.data)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(data / "tokenizer.model"))
    train_ids, held_ids = load_ids(data / "train_ids.npy", dev), load_ids(data / "heldout_ids.npy", dev)
    starts_doc = doc_starts(train_ids, sp.piece_to_id("<0x0A>"))
    starts_doc = starts_doc[starts_doc <= train_ids.numel() - args.seq]

    cfg = GDN2Config(vocab_size=sp.get_piece_size(), hidden_size=args.hidden, num_layers=args.layers,
                     num_heads=args.heads, num_v_heads=args.heads, head_dim=args.head_dim,
                     intermediate_size=args.intermediate, tie_word_embeddings=True)
    model = GDN2LM(cfg, dropout=args.dropout)
    model.init_weights(seed=args.seed)
    model.to(dev)
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    step, total = 0, args.steps
    best = {"eval_loss": float("inf"), "step": -1}
    if args.resume:
        st = restore(model, opt, Path(args.resume))
        step, total = st["step"], max(st["total_steps"], args.steps)
        best = st.get("best", best)
    hparams = {k: v for k, v in vars(args).items() if k not in ("data", "out", "resume")}
    n_params = model.num_parameters()
    log = open(log_path, "a")

    def emit(rec: dict, echo: bool = True) -> None:
        rec = {"run": args.name, **rec}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if echo:
            print(json.dumps(rec), flush=True)

    emit({"event": "start", "params": n_params, "train_tokens": train_ids.numel(),
          "heldout_tokens": held_ids.numel(), "doc_starts": starts_doc.numel(), "config": cfg.to_json(),
          "hparams": hparams, "chunk_impl": model_module.CHUNK_IMPL})
    gen = torch.Generator(device=dev).manual_seed(args.seed * 1000 + step)
    tokens_per_step = args.batch * args.seq
    ema, timed_from = None, None
    stop_reason = "steps"
    start_step = step
    model.train()
    while step < total:
        if time.time() - t0 > args.time_budget:
            stop_reason = "time"
            break
        if step == start_step + 5:
            torch.cuda.synchronize()
            timed_from = time.time()
        if step == start_step + 25:
            torch.cuda.synchronize()
            per_step = (time.time() - timed_from) / 20
            left = args.time_budget * 0.95 - (time.time() - t0)
            fit = step + int(left / (per_step * 1.05))  # ~5% for evaluations and checkpoints
            emit({"event": "timing", "sec_per_step": per_step, "fits_steps": fit})
            if fit < total:
                emit({"event": "schedule_cut", "from": total, "to": fit})
                total = fit
        lr = lr_at(step, total, args.warmup, args.lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        half = args.batch // 2
        s1 = starts_doc[torch.randint(0, starts_doc.numel(), (half,), device=dev, generator=gen)]
        s2 = torch.randint(0, train_ids.numel() - args.seq + 1, (args.batch - half,), device=dev, generator=gen)
        x, y = batch_at(train_ids, torch.cat([s1, s2]), args.seq)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == total:
            lv = loss.item()
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            emit({"event": "train", "step": step, "loss": lv, "loss_ema": ema, "lr": lr, "grad_norm": gnorm.item(),
                  "tokens": step * tokens_per_step, "elapsed": time.time() - t0}, echo=step % 100 == 0)
        if step % args.eval_every == 0 or step == total:
            ev = evaluate(model, held_ids, args.seq, args.batch, autocast=True)
            emit({"event": "eval", "step": step, "eval_loss": ev, "train_loss_ema": ema,
                  "elapsed": time.time() - t0})
            if not math.isfinite(ev):
                stop_reason = "nan"
                break
            if ev < best["eval_loss"]:
                best = {"eval_loss": ev, "step": step, "train_loss_ema": ema}
                save(model, opt, ckpt_dir, {"step": step, "total_steps": total, "config": cfg.to_json(),
                                            "hparams": hparams, "best": best, "params": n_params,
                                            "tokens_seen": step * tokens_per_step, "elapsed": time.time() - t0,
                                            "chunk_impl": model_module.CHUNK_IMPL,
                                            "device": torch.cuda.get_device_name()})
    summary = {"run": args.name, "steps": step, "total_steps": total, "stop": stop_reason, "best": best,
               "final_train_loss_ema": ema, "params": n_params, "tokens_seen": step * tokens_per_step,
               "epochs": step * tokens_per_step / train_ids.numel(), "elapsed": time.time() - t0,
               "hparams": hparams, "device": torch.cuda.get_device_name()}
    emit({"event": "end", **summary})
    log.close()
    return summary


def main() -> int:
    args = build_parser().parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = train(args, out / "log.jsonl", out / "ckpt")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
