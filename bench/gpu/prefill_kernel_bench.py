"""GDN-2 prefill op throughput: our kernels vs flash-linear-attention's chunk_gdn2.

    prefill_kernel_bench.py --lib build/engine-only/kernels/cuda/libgdn_cuda_capi.so [--json FILE]

Issue 6's shapes (H = HV = 16, K = V = 128; sequences x tokens: 1 x 65536,
8 x 8192, 32 x 2048, 256 x 512), packed with cu_seqlens, fresh zero states in
slots, raw gate inputs (gates, q/k L2 norms in the kernels), float32 inputs
and outputs (what the engine passes) unless a row says bf16. Timed (median of
CUDA-event timings after a warm-up): ours token by token (Gdn2Recurrent), our
one-pass float32 chunkwise kernel (Gdn2Chunked), our tensor-core chunkwise
kernel (Gdn2ChunkedWY) in TF32 and in split TF32 x 3 (and in TF32 on the
inputs rounded to bf16, bf16 output), fla-core 0.6.0
`chunk_gdn2` (Triton) on the same float32 inputs and on bf16 inputs, and
fla's pure-PyTorch `naive_chunk_gdn2` (gates and norms applied first in
PyTorch) as the floor-of-effort baseline: it materialises C x C x K decay
tensors, so it runs on at most 2048 tokens and its time is scaled to the
shape's tokens (it is linear in them). Outputs and final states are compared
with ours token by token on the float32 inputs (a bf16 row's error includes
its inputs' rounding). Also prints the op's floors on the measured copy
bandwidth (bytes: inputs q, k, g, b, v, w and output once, state in and out
once per sequence), for float32 and for bf16 inputs and outputs, and each
time over both.

The library's C ABI: gdn2_cuda_abi_version() 2 or later takes bf16 I/O (the
tcbf16 row); an older library (a baseline built before it) runs the rest.
"""
import argparse
import ctypes
import sys

import torch

from gpu_bench_util import copy_bandwidth, rel_err, write_json


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, help="path to libgdn_cuda_capi.so")
    ap.add_argument("--shapes", default="1x65536,8x8192,32x2048,256x512", help="sequences x tokens, comma-separated")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impls", default="all",
                    help="all, or a comma list of: recurrent, onepass, tc, tc3, tile16, tile32, tile64 (tc with that "
                         "value tile), tcbf16 (tc on bf16 inputs and output), fla, naive")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    impls = set(args.impls.split(","))

    def want(name: str) -> bool:
        return "all" in impls or name in impls

    lib = ctypes.CDLL(args.lib)
    fn = lib.gdn2_cuda_prefill
    P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    # ABI 2 added the trailing bf16_io argument; a library without the version
    # symbol is ABI 1 (a baseline built before it) and gets no such argument.
    abi = lib.gdn2_cuda_abi_version() if hasattr(lib, "gdn2_cuda_abi_version") else 1
    fn.argtypes = [I32, P, P, I64, P, I64, P, I64, P, I64, P, I64, P, P, F32, I32, I32, I32, I32, P, I64, P, P, I32,
                   I64, P, I64, P, I64, P, I32] + ([I32] if abi >= 2 else [])
    fn.restype = ctypes.c_int
    wsb = lib.gdn2_cuda_chunked_wy_workspace_bytes
    wsb.argtypes = [I64, I32, I32, I32, I32, I32]
    wsb.restype = ctypes.c_int64
    try:
        from fla.ops.gdn2 import chunk_gdn2
    except Exception as e:  # noqa: BLE001
        print(f"fla chunk_gdn2 unavailable: {e}", file=sys.stderr)
        chunk_gdn2 = None
    try:
        from fla.ops.gdn2 import naive_chunk_gdn2
    except Exception:  # noqa: BLE001
        naive_chunk_gdn2 = None

    torch.manual_seed(0)
    dev = "cuda"
    H = HV = 16
    K = V = 128
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"H=HV={H}, K=V={K}, float32 in and out unless named bf16, raw gates, fresh zero states")
    rows = []
    for shape in args.shapes.split(","):
        N, L = (int(x) for x in shape.split("x"))
        T = N * L
        q = torch.randn(T, H, K, device=dev)
        k = torch.randn(T, H, K, device=dev)
        v = torch.randn(T, HV, V, device=dev)
        g = torch.randn(T, H, K, device=dev)
        b_raw = torch.randn(T, H, K, device=dev)
        w_raw = torch.randn(T, HV, V, device=dev)
        a_log = torch.log(torch.linspace(1, 16, H, device=dev))
        dt_bias = torch.randn(H * K, device=dev) * 0.5 - 2
        cu = torch.arange(0, T + 1, L, device=dev, dtype=torch.int64)
        start = cu.to(torch.int32)
        slots = torch.arange(N, device=dev, dtype=torch.int32)
        scale = K ** -0.5
        ws_bytes = wsb(T, N, H, HV, K, V)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        # Floors: every input and the output once (float32 or bf16), state in + out once per sequence.

        def floor_for(elem_bytes: int) -> float:  # q, k, g, b (K each), v, w, o (V each); float32 state
            return (T * elem_bytes * (H * K * 4 + HV * V * 3) + N * HV * V * K * 4 * 2) / bw
        floor_s, floor_bf16_s = floor_for(4), floor_for(2)

        results = {}
        outs = {}

        def ours(kernel: int, tile: int = 0, bf16: bool = False):
            pool = torch.zeros(N, HV, V, K, device=dev)
            dtype = torch.bfloat16 if bf16 else torch.float32
            out = torch.empty(T, HV, V, device=dev, dtype=dtype)
            xq, xk, xv, xg, xb, xw = (x.to(dtype) for x in (q, k, v, g, b_raw, w_raw))

            def run():
                pool.zero_()
                io = (int(bf16),) if abi >= 2 else ()
                rc = fn(kernel, xq.data_ptr(), xk.data_ptr(), H * K, xv.data_ptr(), HV * V, xg.data_ptr(), H * K,
                        xb.data_ptr(), H * K, xw.data_ptr(), HV * V, a_log.data_ptr(), dt_bias.data_ptr(),
                        scale, H, HV, K, V, pool.data_ptr(), HV * V * K, start.data_ptr(), slots.data_ptr(), N, T,
                        out.data_ptr(), HV * V, ws.data_ptr(), ws_bytes, stream, tile, *io)
                if rc != 0:
                    raise RuntimeError(f"gdn2_cuda_prefill kernel {kernel}: CUDA error {rc}")
            return run, out, pool

        variants = [("ours token-by-token", 0, 0, "recurrent"), ("ours chunk (one pass)", 1, 0, "onepass"),
                    ("ours chunk TC (tf32)", 2, 0, "tc"), ("ours chunk TC (3xtf32)", 3, 0, "tc3")]
        variants += [(f"ours chunk TC (tf32, tile {v})", 2, v, f"tile{v}") for v in (16, 32, 64)]
        variants = [x + (False,) for x in variants] + [("ours chunk TC (tf32, bf16 io)", 2, 0, "tcbf16", True)]
        for name, kernel, tile, key, bf16 in variants:
            if not want(key) or (tile and "all" in impls):
                continue
            if bf16 and abi < 2:
                print(f"{shape} {name}: skipped (the library's C ABI {abi} has no bf16 I/O)", file=sys.stderr)
                continue
            run, out, pool = ours(kernel, tile, bf16)
            try:
                results[name] = timed(run, args.reps if kernel else 1)
                run()
                torch.cuda.synchronize()
                outs[name] = (out.float(), pool.clone())
            except RuntimeError as e:
                print(f"{shape} {name}: {e}", file=sys.stderr)
        bg, wg = torch.sigmoid(b_raw), torch.sigmoid(w_raw)

        def fla_op(op, dtype=torch.float32):  # activated erase/write gates, raw decay
            init = torch.zeros(N, HV, V, K, device=dev)
            x = [t.to(dtype)[None] for t in (q, k, v, g, bg, wg)]
            return op(*x, scale=scale, initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=True,
                      use_gate_in_kernel=True, cu_seqlens=cu, state_v_first=True, A_log=a_log, dt_bias=dt_bias)

        if chunk_gdn2 is not None and want("fla"):
            for name, dtype in [("fla chunk_gdn2", torch.float32), ("fla chunk_gdn2 (bf16 io)", torch.bfloat16)]:
                print(f"{shape} {name}: running (Triton compiles and autotunes on first use: minutes on a machine "
                      "without its cache)", file=sys.stderr, flush=True)

                def fla():
                    return fla_op(chunk_gdn2, dtype)
                try:
                    with torch.inference_mode():
                        results[name] = timed(fla, args.reps)
                        o, st = fla()
                    torch.cuda.synchronize()
                    outs[name] = (o[0].float(), st.float())
                except Exception as e:  # noqa: BLE001
                    print(f"{shape} {name}: {e}", file=sys.stderr)
        if naive_chunk_gdn2 is not None and want("naive"):
            # Equal lengths: a [n, L'] batch of the first sequences (L' <= 2048 tokens of each).
            n_seq = max(1, min(N, 2048 // L))
            L2 = min(L, 2048)

            def first(x):
                return x[:N * L].view(N, L, *x.shape[1:])[:n_seq, :L2]

            def l2(x):
                return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)
            gl = -torch.exp(a_log)[:, None] * torch.nn.functional.softplus(g + dt_bias.view(H, K))
            nq, nk = l2(first(q)), l2(first(k))
            ng, nb, nv, nw = first(gl), first(bg), first(v), first(wg)

            def naive():
                return naive_chunk_gdn2(nq, nk, nv, ng, nb, nw, scale=scale, output_final_state=True)
            try:
                with torch.inference_mode():
                    sec = timed(naive, 1)
                    o, _ = naive()
                results["torch naive_chunk_gdn2"] = sec * T / (n_seq * L2)
                ref0 = outs.get("ours token-by-token")
                if ref0 is not None:
                    expect = ref0[0].view(N, L, HV, V)[:n_seq, :L2]
                    print(f"{shape} naive_chunk_gdn2 on {n_seq} x {L2} tokens: {sec * 1e3:.1f} ms, out err "
                          f"{rel_err(o.float(), expect):.1e}")
            except Exception as e:  # noqa: BLE001
                print(f"{shape} naive_chunk_gdn2: {e}", file=sys.stderr)

        ref = outs.get("ours token-by-token")
        print(f"\n{N} x {L} tokens ({T} in all); op floor {floor_s * 1e3:.3f} ms = {T / floor_s / 1e6:.1f} M tokens/s "
              f"(bf16 io: {floor_bf16_s * 1e3:.3f} ms)")
        print(f"{'implementation':>30} {'ms':>10} {'M tok/s':>9} {'x floor':>8} {'x bf16 fl':>9} {'out err':>9} "
              f"{'state err':>9}")
        row = dict(sequences=N, tokens_per_sequence=L, floor_seconds=floor_s, floor_bf16_seconds=floor_bf16_s,
                   copy_bytes_per_s=bw, results={})
        for name, sec in results.items():
            oe = se = float("nan")
            if ref is not None and name in outs:
                oe = rel_err(outs[name][0].reshape(T, HV, V), ref[0])
                se = rel_err(outs[name][1], ref[1])
            print(f"{name:>30} {sec * 1e3:>10.3f} {T / sec / 1e6:>9.2f} {sec / floor_s:>8.1f} "
                  f"{sec / floor_bf16_s:>9.1f} {oe:>9.1e} {se:>9.1e}")
            row["results"][name] = dict(seconds=sec, out_rel_err=oe, state_rel_err=se)
        rows.append(row)
        if args.json:  # after every shape: a run cut short by a time limit keeps the shapes it finished
            write_json(args.json, H, K, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
