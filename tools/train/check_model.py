#!/usr/bin/env python3
"""Checks of tools/train/model.py; exits non-zero on the first failure.

1. chunk_gdn2 equals recurrent_gdn2 on random inputs with extreme gates
   (log decays down to -100, erase/write gates near 0 and 1, erase gate up to 2),
   lengths 1, C-1, C, C+1 and several chunks, with and without an initial state:
   float64 to 1e-10, float32 (against the float64 recurrence) to 1e-5; outputs
   and final state. Gradients: float64 chunk equals float64 recurrent; float32
   gradients are finite.
2. Whole models with random non-trivial weights (a grouped-value-head,
   untied, allow_neg_eigval shape, and the bundled shape) exported with
   export.py in F32: PyTorch float32 logits equal tools/reference (float64) to
   2e-5; the recurrent path equals the chunk path; prefill in two pieces with
   the state carried equals one go.

Runs on CUDA when there is a GPU (TF32 off), else on the CPU.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "reference"))
import export  # noqa: E402
import model as model_module  # noqa: E402
from model import GDN2Config, GDN2LM, recurrent_gdn2  # noqa: E402
import gdn2_ref  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
FAILED: list[str] = []


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def expect(name: str, err: float, tol: float, hard: bool = True) -> None:
    """Prints the check; a failed hard check fails the script, a soft one only says 'warn'."""
    ok = math.isfinite(err) and err <= tol
    print(f"{'ok  ' if ok else 'FAIL' if hard else 'warn'} {name}: {err:.3e} (tol {tol:.0e})", flush=True)
    if not ok and hard:
        FAILED.append(name)


def random_inputs(gen, B, T, H, K, V, neg_eig=False, dtype=torch.float64):
    def n(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)
    q = n(B, T, H, K)
    q = q / q.norm(dim=-1, keepdim=True) * K ** -0.5
    k = n(B, T, H, K)
    k = k / k.norm(dim=-1, keepdim=True)
    v = n(B, T, H, V)
    # log decays: mostly mild, some extreme (down to -100), some ~0
    g = -torch.exp(torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * 12.6 - 8.0)
    g = torch.where(torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) < 0.02, torch.full_like(g, -100.0), g)
    b = torch.sigmoid(5 * n(B, T, H, K)) * (2.0 if neg_eig else 1.0)
    w = torch.sigmoid(5 * n(B, T, H, V))
    S0 = n(B, H, K, V)
    return [x.to(DEV, dtype) for x in (q, k, v, g, b, w)], S0.to(DEV, dtype)


def check_recurrence(impl: str) -> None:
    def chunk_gdn2(*a, **kw):
        return model_module.chunk_gdn2(*a, impl=impl, **kw)

    gen = torch.Generator().manual_seed(1234)
    B, H, K, V, C = 2, 3, 16, 24, 16
    for T in (1, C - 1, C, C + 1, 3 * C + 5, 150):
        for with_s0 in (False, True):
            for neg in (False, True):
                ins, S0 = random_inputs(gen, B, T, H, K, V, neg)
                S0 = S0 if with_s0 else None
                o_ref, s_ref = recurrent_gdn2(*ins, S0)
                o64, s64 = chunk_gdn2(*ins, S0, chunk=C)
                tag = f"{impl} T={T} S0={with_s0} neg_eig={neg}"
                expect(f"chunk==recurrent f64 out {tag}", rel(o64, o_ref), 1e-10)
                expect(f"chunk==recurrent f64 state {tag}", rel(s64, s_ref), 1e-10)
                o32, s32 = chunk_gdn2(*[x.float() for x in ins], None if S0 is None else S0.float(), chunk=C)
                expect(f"chunk f32 vs recurrent f64 out {tag}", rel(o32, o_ref), 1e-5, hard=rel(o32, o_ref) < 1e-4)
                expect(f"chunk f32 vs recurrent f64 state {tag}", rel(s32, s_ref), 1e-5, hard=rel(s32, s_ref) < 1e-4)
    # long, with mild decays so the state carries across many chunks (a deep scan)
    ins, S0 = random_inputs(gen, 1, 600, H, K, V)
    ins[3] = ins[3] * 1e-3
    o_ref, s_ref = recurrent_gdn2(*ins, S0)
    o32, s32 = chunk_gdn2(*[x.float() for x in ins], S0.float(), chunk=C)
    expect(f"{impl} chunk f32 vs recurrent f64 out T=600 mild decay", rel(o32, o_ref), 1e-5, hard=rel(o32, o_ref) < 1e-4)
    expect(f"{impl} chunk f32 vs recurrent f64 state T=600 mild decay", rel(s32, s_ref), 1e-5, hard=rel(s32, s_ref) < 1e-4)
    # chunk 64 too (the model uses 16; the function takes any)
    ins, S0 = random_inputs(gen, B, 200, H, K, V)
    o_ref, s_ref = recurrent_gdn2(*ins, S0)
    o64, s64 = chunk_gdn2(*ins, S0, chunk=64)
    expect(f"{impl} chunk(64)==recurrent f64 out T=200", rel(o64, o_ref), 1e-10)
    # gradients
    for T in (C + 3, 40):
        ins, S0 = random_inputs(gen, B, T, H, K, V)
        ins = [x.clone().requires_grad_(True) for x in ins]
        S0 = S0.clone().requires_grad_(True)
        R = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64).to(DEV)
        RS = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64).to(DEV)
        grads = []
        for fn in (recurrent_gdn2, chunk_gdn2):
            o, s = fn(*ins, S0)
            grads.append(torch.autograd.grad((o * R).sum() + (s * RS).sum(), ins + [S0]))
        for name, gr, gc in zip("q k v g b w S0".split(), *grads):
            expect(f"{impl} grad f64 chunk==recurrent d{name} T={T}", rel(gc, gr), 1e-9)
        ins32 = [x.detach().float().requires_grad_(True) for x in ins]
        o, s = chunk_gdn2(*ins32, S0.detach().float())
        gs = torch.autograd.grad((o * R.float()).sum() + (s * RS.float()).sum(), ins32)
        expect(f"{impl} grad f32 chunk finite T={T}", 0.0 if all(torch.isfinite(x).all() for x in gs) else float("inf"), 0)
        for name, g32, g64 in zip("q k v g b w".split(), gs, grads[0]):
            expect(f"{impl} grad f32 chunk vs f64 d{name} T={T}", rel(g32, g64), 1e-4, hard=False)


@torch.no_grad()
def randomize(model: GDN2LM, seed: int) -> None:
    """Non-trivial random weights (as tools/gen_model.py): strong gates, decays from ~0 to below -20."""
    gen = torch.Generator().manual_seed(seed)
    c = model.cfg
    for name, p in model.named_parameters():
        x = torch.empty(p.shape)
        if name.endswith("norm.weight"):
            x = 1 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("A_log"):
            x = torch.empty(p.shape).uniform_(1, 16, generator=gen).log()
        elif name.endswith("dt_bias"):
            dt = torch.exp(torch.rand(p.shape, generator=gen) * math.log(100) + math.log(1e-3))
            x = dt + torch.log(-torch.expm1(-dt))
        elif name.endswith("bias"):
            x = 0.5 * torch.randn(p.shape, generator=gen)
        else:
            scale = 3.0 if ("b_proj" in name or "w_proj" in name) else 2.0 if "f_proj.1" in name else 1.0
            if name == "model.embeddings.weight" and not c.tie_word_embeddings:
                scale = math.sqrt(c.hidden_size)
            x = torch.randn(p.shape, generator=gen) * scale / math.sqrt(p.shape[-1])
        p.copy_(x)


def check_model(cfg: GDN2Config, seed: int, T: int) -> None:
    model = GDN2LM(cfg)
    randomize(model, seed)
    model.to(DEV).eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=gen).to(DEV)
    with torch.no_grad():
        logits, _ = model(ids)
        logits_rec, _ = model(ids, recurrent=True)
        a = T // 3 + 1
        l1, st = model(ids[:, :a])
        l2, _ = model(ids[:, a:], st)
    with tempfile.TemporaryDirectory() as tmp:
        weights = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
        export.export_model(weights, cfg.to_json(), tmp, "F32")
        ref = gdn2_ref.RefModel.load(tmp)
        ref_logits, _ = ref.forward(ids[0].cpu().numpy())
    tag = f"d={cfg.hidden_size} H={cfg.num_heads} HV={cfg.num_v_heads} V={cfg.head_v_dim} tied={cfg.tie_word_embeddings}"
    expect(f"model f32 vs reference f64 {tag}", rel(logits[0].cpu(), torch.from_numpy(ref_logits)), 2e-5)
    expect(f"model recurrent==chunk {tag}", rel(logits_rec, logits), 1e-5)
    expect(f"model prefill in pieces==one go {tag}", rel(torch.cat([l1, l2], 1), logits), 1e-5)


def run_checks() -> str | None:
    """Runs every check; returns the chunk implementation to train with ("scan" if it passed, else
    "loop" if that passed), or None when the model-level checks or both implementations failed."""
    print(f"device {DEV} ({torch.cuda.get_device_name() if DEV.type == 'cuda' else 'cpu'}), torch {torch.__version__}")
    passed = {}
    for impl in ("scan", "loop"):
        before = len(FAILED)
        check_recurrence(impl)
        passed[impl] = len(FAILED) == before
    impl = "scan" if passed["scan"] else "loop" if passed["loop"] else None
    if impl is None:
        return None
    model_module.CHUNK_IMPL = impl
    before = len(FAILED)
    check_model(GDN2Config(vocab_size=300, hidden_size=64, num_layers=2, num_heads=2, num_v_heads=4, head_dim=16,
                           expand_v=2, intermediate_size=96, tie_word_embeddings=False, allow_neg_eigval=True),
                seed=5, T=70)
    check_model(GDN2Config(), seed=6, T=100)
    print(f"check_model: scan {'passed' if passed['scan'] else 'FAILED'}, loop {'passed' if passed['loop'] else 'FAILED'}, "
          f"model checks {'passed' if len(FAILED) == before else 'FAILED'}", flush=True)
    return impl if len(FAILED) == before else None


def main() -> int:
    impl = run_checks()
    print(f"check_model: {'FAILED ' + str(len(FAILED)) if FAILED else 'all passed'}", flush=True)
    return 0 if impl and not FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
