"""Helpers shared by the GPU kernel benchmarks in bench/gpu (PyTorch on CUDA)."""
import json

import torch


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second (best of 10)."""
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda").fill_(1.0)
    b = torch.empty_like(a)
    best = float("inf")
    for i in range(12):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        if i >= 2:
            best = min(best, e0.elapsed_time(e1) * 1e-3)
    return 2 * a.numel() * 4 / best


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| in float64 (Frobenius norms)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def write_json(path: str, H: int, K: int, rows: list) -> None:
    """A kernel benchmark's report: the card, the head shape and one dict per row."""
    with open(path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), H=H, K=K, rows=rows), f, indent=2)
