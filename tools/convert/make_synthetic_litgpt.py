#!/usr/bin/env python3
"""Writes a tiny random checkpoint in the official GDN-2 training layout (lit_gpt), for tests.

    make_synthetic_litgpt.py --out DIR [--seed N] [--dtype f32|bf16|f16] [--tied] [--pack-mlp]
                             [--num-v-heads 4 --expand-v 2] [--gdn2-per-layer 2] [--no-pth] [--no-tokenizer]

DIR gets:
- lit_model.safetensors: the state dict of lit_gpt's GPT with GatedDeltaNet2 mixers, names and
  order as `GPT.state_dict()` gives them (lm_head, transformer.wte, transformer.h.{i}.*,
  transformer.ln_f);
- lit_model.pth (only when torch is importable): the same tensors as Lightning Fabric saves them,
  {"model": state_dict, "iter_num": 0, "step_count": 0};
- lit_config.json: a lit_gpt `Config` with every field (as json.dump(asdict(config)) writes it);
  vocab_size 500 padded to 512 by padding_multiple 64, as lit_gpt pads;
- tokenizer.model: a SentencePiece model with exactly vocab_size pieces (tools/train_tokenizer.sh).

The mixer geometry (heads, head dims, conv size) is not a lit_gpt config field: the official Block
builds GatedDeltaNet2 with its defaults (16 x 128). Here it is small and set by the flags; the
converter reads it off the tensor shapes. --gdn2-per-layer N > 1 makes a hybrid whose other layers
are lit_gpt CausalSelfAttention (attn.attn fused qkv, attn.proj), like swa_gdn2_1.3B. The seed is
random unless given and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "common"))
import safetensors_np  # noqa: E402

DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}
GATE_SCALE = 3.0   # b~, w~ ~ N(0, 3^2 / fan_in * |x|^2): sigmoids from near 0 to near 1
DECAY_SCALE = 2.0  # decay pre-activations large enough that some log decays reach below -20
NORM_NOISE = 0.1   # norm weights 1 + N(0, 0.1^2)


@dataclass(frozen=True)
class Synth:
    """Shape of a synthetic checkpoint."""
    n_layer: int = 2
    n_embd: int = 64
    num_heads: int = 2          # GatedDeltaNet2 num_heads (key heads)
    head_dim: int = 16
    num_v_heads: int | None = None
    expand_v: int = 1
    conv_size: int = 4
    intermediate_size: int = 96
    vocab_size: int = 500
    padding_multiple: int = 64
    tied: bool = False          # leave lm_head out (the converter then ties it to wte)
    pack_mlp: bool = False      # xformers-style mlp.swiglu.w12 = [w1; w2]
    gdn2_per_layer: int = 1     # > 1: layers with i % gdn2_per_layer != 0 are softmax attention
    attn_head_size: int = 16    # head size of those attention layers (n_head = n_embd / it)

    @property
    def padded_vocab_size(self) -> int:
        m = self.padding_multiple
        return self.vocab_size if self.vocab_size % m == 0 else self.vocab_size + m - self.vocab_size % m


def litgpt_config(s: Synth, name: str = "gdn2_synthetic") -> dict:
    """The lit_gpt Config of s with every dataclass field, as asdict() writes it."""
    n_head = s.n_embd // s.attn_head_size
    return {
        "org": "gdnserve", "name": name, "block_size": 4096, "vocab_size": s.vocab_size,
        "padding_multiple": s.padding_multiple, "padded_vocab_size": s.padded_vocab_size,
        "n_layer": s.n_layer, "n_head": n_head, "n_embd": s.n_embd, "rotary_percentage": 1.0,
        "parallel_residual": False, "bias": False, "local_window": 2048, "mlp": True,
        "gdn2_per_layer": s.gdn2_per_layer, "gdn2_plus_per_layer": -1, "nope": False, "mamba_init": True,
        "n_query_groups": n_head, "shared_attention_norm": False, "_norm_class": "FusedRMSNorm",
        "norm_eps": 1e-5, "_mlp_class": "LLaMAMLP", "intermediate_size": s.intermediate_size,
        "condense_ratio": 1,
    }


def make_tensors(s: Synth, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights named and ordered as lit_gpt's GPT.state_dict()."""
    d, H, K, W, I = s.n_embd, s.num_heads, s.head_dim, s.conv_size, s.intermediate_size
    V, HV = K * s.expand_v, s.num_v_heads or s.num_heads
    kd, vd, vocab = H * K, HV * V, s.padded_vocab_size

    def linear(out: int, inp: int, scale: float = 1.0) -> np.ndarray:  # nn.Linear weight [out, in]
        return rng.standard_normal((out, inp), dtype=np.float32) * np.float32(scale / np.sqrt(inp))

    def norm(n: int) -> np.ndarray:
        return 1 + rng.standard_normal(n, dtype=np.float32) * np.float32(NORM_NOISE)

    t: dict[str, np.ndarray] = {}
    if not s.tied:
        t["lm_head.weight"] = linear(vocab, d)
    # With a tied head the embedding is also the output layer: std d^-1/2 keeps logits of order 1.
    t["transformer.wte.weight"] = linear(vocab, d, 1.0 if s.tied else np.sqrt(d))
    for i in range(s.n_layer):
        p = f"transformer.h.{i}."
        t[p + "norm_1.weight"] = norm(d)
        if s.gdn2_per_layer > 1 and i % s.gdn2_per_layer:
            t[p + "attn.attn.weight"] = linear(3 * d, d)  # (n_head + 2 * n_query_groups) * head_size rows
            t[p + "attn.proj.weight"] = linear(d, d)
        else:
            # nn.Module.state_dict(): the module's own parameters first, then its submodules.
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), kd))
            t[p + "attn.A_log"] = np.log(rng.uniform(1, 16, H)).astype(np.float32)
            t[p + "attn.dt_bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
            t[p + "attn.q_proj.weight"] = linear(kd, d)
            t[p + "attn.k_proj.weight"] = linear(kd, d)
            t[p + "attn.v_proj.weight"] = linear(vd, d)
            t[p + "attn.q_conv1d.weight"] = linear(kd, W).reshape(kd, 1, W)  # depthwise Conv1d [C, 1, W]
            t[p + "attn.k_conv1d.weight"] = linear(kd, W).reshape(kd, 1, W)
            t[p + "attn.v_conv1d.weight"] = linear(vd, W).reshape(vd, 1, W)
            t[p + "attn.f_proj.0.weight"] = linear(V, d)
            t[p + "attn.f_proj.1.weight"] = linear(kd, V, DECAY_SCALE)
            t[p + "attn.b_proj.weight"] = linear(kd, d, GATE_SCALE)
            t[p + "attn.w_proj.weight"] = linear(vd, d, GATE_SCALE)
            t[p + "attn.g_proj.0.weight"] = linear(V, d)
            t[p + "attn.g_proj.1.weight"] = linear(vd, V)
            t[p + "attn.g_proj.1.bias"] = rng.standard_normal(vd, dtype=np.float32) * np.float32(0.5)
            t[p + "attn.o_norm.weight"] = norm(V)
            t[p + "attn.o_proj.weight"] = linear(d, vd)
        t[p + "norm_2.weight"] = norm(d)
        w1, w2 = linear(I, d), linear(I, d)
        if s.pack_mlp:
            t[p + "mlp.swiglu.w12.weight"] = np.concatenate([w1, w2])
        else:
            t[p + "mlp.swiglu.w1.weight"], t[p + "mlp.swiglu.w2.weight"] = w1, w2
        t[p + "mlp.swiglu.w3.weight"] = linear(d, I)
    t["transformer.ln_f.weight"] = norm(d)
    return t


def round_to(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The float32 values the tensors have once stored as safetensors dtype `dtype`."""
    return {n: safetensors_np.decode(safetensors_np.encode(x, dtype), dtype).astype(np.float32)
            for n, x in tensors.items()}


def save_pth(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> bool:
    """Writes a Fabric-style {"model": state_dict} .pth when torch is importable; returns whether it did."""
    try:
        import torch
    except ImportError:
        return False
    tdtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
    state = {n: torch.from_numpy(np.ascontiguousarray(x)).to(tdtype) for n, x in tensors.items()}
    torch.save({"model": state, "iter_num": 0, "step_count": 0}, path)
    return True


def write(out: Path, s: Synth, seed: int, dtype: str = "f32", pth: bool = True, tokenizer: bool = True) -> None:
    """Writes the checkpoint files of s into out (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = make_tensors(s, np.random.default_rng(seed))
    meta = {"format": "pt", "generator": "gdnserve tools/convert/make_synthetic_litgpt.py", "seed": str(seed)}
    safetensors_np.save_file(tensors, out / "lit_model.safetensors", DTYPES[dtype], meta)
    (out / "lit_config.json").write_text(json.dumps(litgpt_config(s), indent=2) + "\n")
    wrote_pth = pth and save_pth(tensors, out / "lit_model.pth", DTYPES[dtype])
    if tokenizer:
        import gen_model
        gen_model.train_tokenizer(out, s.vocab_size)
    n = sum(x.size for x in tensors.values())
    print(f"make_synthetic_litgpt: {out}: {n / 1e6:.3f}M parameters, {dtype}, "
          f"lit_model.safetensors{' + lit_model.pth' if wrote_pth else ''}, lit_config.json"
          f"{', tokenizer.model' if tokenizer else ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Tiny random GDN-2 checkpoint in the official lit_gpt layout.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--n-layer", type=int, default=Synth.n_layer)
    ap.add_argument("--n-embd", type=int, default=Synth.n_embd)
    ap.add_argument("--num-heads", type=int, default=Synth.num_heads)
    ap.add_argument("--head-dim", type=int, default=Synth.head_dim)
    ap.add_argument("--num-v-heads", type=int)
    ap.add_argument("--expand-v", type=int, default=Synth.expand_v)
    ap.add_argument("--conv-size", type=int, default=Synth.conv_size)
    ap.add_argument("--intermediate-size", type=int, default=Synth.intermediate_size)
    ap.add_argument("--vocab-size", type=int, default=Synth.vocab_size)
    ap.add_argument("--padding-multiple", type=int, default=Synth.padding_multiple)
    ap.add_argument("--tied", action="store_true", help="no lm_head (tied to transformer.wte)")
    ap.add_argument("--pack-mlp", action="store_true", help="mlp.swiglu.w12 instead of w1 and w2")
    ap.add_argument("--gdn2-per-layer", type=int, default=1, help="> 1: a hybrid with attention layers")
    ap.add_argument("--no-pth", action="store_true", help="skip lit_model.pth even when torch is importable")
    ap.add_argument("--no-tokenizer", action="store_true")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    print(f"make_synthetic_litgpt: seed={seed}", flush=True)
    s = Synth(n_layer=args.n_layer, n_embd=args.n_embd, num_heads=args.num_heads, head_dim=args.head_dim,
              num_v_heads=args.num_v_heads, expand_v=args.expand_v, conv_size=args.conv_size,
              intermediate_size=args.intermediate_size, vocab_size=args.vocab_size,
              padding_multiple=args.padding_multiple, tied=args.tied, pack_mlp=args.pack_mlp,
              gdn2_per_layer=args.gdn2_per_layer)
    write(Path(args.out), s, seed, args.dtype, pth=not args.no_pth, tokenizer=not args.no_tokenizer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
