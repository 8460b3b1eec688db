"""Decode kernel alone: gdnserve's CUDA recurrence vs flash-linear-attention.

Runs, on identical inputs and in-place slot states, gdnserve's GDN-2
recurrence kernel (kernels/cuda, through the C ABI of libgdn_cuda_capi.so)
and fla-core 0.6.0's Triton `fused_recurrent_gdn2` (continuous-batching mode:
ssm_state_indices, in-place final state, state stored [V, K], gates and q/k
norms in the kernel). One token for each of B sequences whose states sit at
scattered slots of a pool. Checks that the outputs and states agree, then
times both (CUDA graphs of back-to-back launches, CUDA events) and reports
achieved bandwidth next to the device copy bandwidth measured in the same run.

By default each call in a timed graph works on its own copy of the slot pool,
enough copies that together they exceed the L2 cache several times: the
states come from DRAM, as in the engine, where about 2.7 GB of weights stream
between two visits to a layer's states. --warm times every call on the same
pool instead (at small batches the states then stay in L2, and a kernel that
streams its state past L2, as ours does on purpose, looks slower than it is).

    python3 bench/gpu/decode_kernel_bench.py --lib build/engine-only/kernels/cuda/libgdn_cuda_capi.so \
        [--batches 1,64,256] [--heads 16] [--head-dim 128] [--warm] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import sys

import torch

from gpu_bench_util import copy_bandwidth, rel_err, write_json


def graph_time(fn, calls: int = 10, replays: int = 20) -> float:
    """Seconds per call, from a CUDA graph of `calls` back-to-back calls fn(i), i = 0..calls-1, replayed
    `replays` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(replays):
        g.replay()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1e-3 / (calls * replays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, help="path to libgdn_cuda_capi.so")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--rows", default="0,2,4,8",
                    help="decode variants (state rows a warp; 0: the engine's choice), each timed")
    ap.add_argument("--warm", action="store_true", help="every timed call on the same pool (states may sit in L2)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.lib)
    fn = lib.gdn2_cuda_recurrent
    P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    fn.argtypes = [P, P, I64, P, I64, P, I64, P, I64, P, I64, P, P, I32, F32, I32, I32, I32, I32, P, I64, P, P, I32,
                   I64, P, I64, P, I32]
    fn.restype = ctypes.c_int
    from fla.ops.gdn2.fused_recurrent import fused_recurrent_gdn2_fwd

    torch.manual_seed(0)
    dev = "cuda"
    H = HV = args.heads
    K = V = args.head_dim
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"H=HV={H}, K=V={K}, one token per sequence, float32 state [V, K] in a slot pool, float32 inputs")
    print(f"{'batch':>6} {'ours us':>9} {'ours GB/s':>10} {'% copy':>7} {'fla us':>9} {'fla GB/s':>10} {'% copy':>7}"
          f" {'speed-up':>9} {'out err':>9} {'state err':>9}")
    rows = []
    for B in [int(x) for x in args.batches.split(",")]:
        slots_total = 2 * B + 3
        pool = (torch.randn(slots_total, HV, V, K, device=dev) * 0.1).contiguous()
        slots = torch.randperm(slots_total, device=dev)[:B].to(torch.int32).contiguous()
        q = torch.randn(1, B, H, K, device=dev)
        k = torch.randn(1, B, H, K, device=dev)
        v = torch.randn(1, B, HV, V, device=dev)
        g = torch.randn(1, B, HV, K, device=dev)
        b_raw = torch.randn(1, B, HV, K, device=dev)
        w_raw = torch.randn(1, B, HV, V, device=dev)
        b, w = torch.sigmoid(b_raw), torch.sigmoid(w_raw)  # fla takes activated erase/write gates
        a_log = torch.log(torch.linspace(1, 16, HV, device=dev))
        dt_bias = torch.randn(HV * K, device=dev) * 0.5 - 2
        cu = torch.arange(B + 1, device=dev, dtype=torch.int64)
        start = cu.to(torch.int32)
        out_ours = torch.empty(1, B, HV, V, device=dev)
        out_fla = torch.empty(1, B, HV, V, device=dev)
        pool_ours, pool_fla = pool.clone(), pool.clone()
        scale = K ** -0.5
        # Timed calls rotate over `copies` pools: with --warm one; else enough that the states the calls
        # touch (B per pool) add up to 4x the L2 cache.
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        touched = B * HV * V * K * 4
        copies = 1 if args.warm else min(256, max(1, -(-4 * l2 // touched)))
        rot_ours = [pool.clone() for _ in range(copies)]
        rot_fla = [pool.clone() for _ in range(copies)]
        calls = max(10, copies)

        def ours(p=pool_ours, rows_per_warp=0):
            rc = fn(q.data_ptr(), k.data_ptr(), H * K, v.data_ptr(), HV * V, g.data_ptr(), HV * K,
                    b_raw.data_ptr(), HV * K, w_raw.data_ptr(), HV * V, a_log.data_ptr(), dt_bias.data_ptr(), 0,
                    scale, H, HV, K, V, p.data_ptr(), HV * V * K, start.data_ptr(), slots.data_ptr(), B, B,
                    out_ours.data_ptr(), HV * V, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
                    rows_per_warp)
            if rc != 0:
                raise RuntimeError(f"gdn2_cuda_recurrent: CUDA error {rc}")

        def fla(p=pool_fla):
            fused_recurrent_gdn2_fwd(q, k, v, g, b, w, A_log=a_log, dt_bias=dt_bias, initial_state=p, scale=scale,
                                     inplace_final_state=True, state_v_first=True, cu_seqlens=cu,
                                     ssm_state_indices=slots, use_qk_l2norm_in_kernel=True,
                                     use_gate_in_kernel=True, out=out_fla)

        ours()
        fla()
        torch.cuda.synchronize()
        out_err = rel_err(out_ours, out_fla)
        state_err = rel_err(pool_ours, pool_fla)
        t_fla = graph_time(lambda i: fla(rot_fla[i % copies]), calls)
        # Each decode variant: same result (checked), its own time.
        variants = {}
        for rpw in [int(x) for x in args.rows.split(",")]:
            pv = pool.clone()
            ours(pv, rpw)
            fla_ref = pool.clone()
            fla(fla_ref)
            torch.cuda.synchronize()
            err = rel_err(pv, fla_ref)
            if err > 1e-4:
                print(f"MISMATCH rows_per_warp {rpw} at batch {B}: states {err:.2e}", file=sys.stderr)
            variants[rpw] = graph_time(lambda i, rpw=rpw: ours(rot_ours[i % copies], rpw), calls)
        t_ours = variants.get(0, min(variants.values()))
        state_bytes = B * HV * V * K * 4 * 2
        io_bytes = B * 4 * (2 * H * K + 2 * HV * K + 3 * HV * V)
        moved = state_bytes + io_bytes
        r = dict(batch=B, ours_s=t_ours, fla_s=t_fla, bytes=moved, copy_bytes_per_s=bw, out_rel_err=out_err,
                 pool_copies=copies, cold_l2=not args.warm,
                 state_rel_err=state_err, variants_s={str(k_): v_ for k_, v_ in variants.items()})
        rows.append(r)
        print(f"{B:>6} {t_ours * 1e6:>9.1f} {moved / t_ours / 1e9:>10.0f} {100 * moved / t_ours / bw:>6.0f}%"
              f" {t_fla * 1e6:>9.1f} {moved / t_fla / 1e9:>10.0f} {100 * moved / t_fla / bw:>6.0f}%"
              f" {t_fla / t_ours:>8.2f}x {out_err:>9.1e} {state_err:>9.1e}   variants (rows a warp: us) "
              + " ".join(f"{k_}:{v_ * 1e6:.1f}" for k_, v_ in variants.items()))
        if out_err > 1e-4 or state_err > 1e-4:
            print(f"MISMATCH at batch {B}: outputs {out_err:.2e}, states {state_err:.2e}", file=sys.stderr)
    if args.json:
        write_json(args.json, H, K, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
