"""bench/gpu/skip_kernels.py: the patch that lets a decode step leave kernels out.

It must wrap every kernel launch and every weight GEMM of CudaBackend::Layer as
the engine's code stands (a change to how Layer enqueues its work must not
silently drop a kernel from what GDN_SKIP can attribute), leave the rest of the
file alone, and refuse to patch the source tree it runs from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "bench" / "gpu" / "skip_kernels.py"


def split_layer(text: str) -> tuple[str, str, str]:
    """(before, CudaBackend::Layer's body, after) of cuda_backend.cc's text."""
    start = text.index("absl::Status CudaBackend::Layer(")
    end = text.index("\n}\n", start)
    return text[:start], text[start:end], text[end:]


def test_every_layer_kernel_can_be_skipped(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    src = ROOT / "engine" / "cuda_backend.cc"
    shutil.copy(src, tmp_path / "engine" / "cuda_backend.cc")
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True, check=True)
    names = out.stdout.strip().split(" takes ")[1].split(",")
    for want in ["RmsNorm", "DecodeMixerPrepGemv", "Gdn2Recurrent", "GatedRmsNorm", "GemvBf16SwiGlu",
                 "Gemm:in_proj", "Gemm:o_proj", "Gemm:gate_up", "Gemm:down"]:
        assert want in names, (want, names)
    patched = (tmp_path / "engine" / "cuda_backend.cc").read_text()
    helper_end = patched.index("}  // namespace\n") + len("}  // namespace\n")
    before, layer, after = split_layer(patched[helper_end:])
    # Every single-line kernel launch in Layer is guarded.
    for line in layer.splitlines():
        if re.search(r"^\s*GDN_CUDA_RETURN\(cuda::\w+\(", line):
            raise AssertionError("unguarded launch: " + line)
    # Outside Layer nothing changed but the helper at the top.
    orig_before, _, orig_after = split_layer(src.read_text())
    assert (before, after) == (orig_before, orig_after)
    # A second run leaves it as it is.
    again = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True, check=True)
    assert "already patched" in again.stdout
    assert (tmp_path / "engine" / "cuda_backend.cc").read_text() == patched


def test_refuses_its_own_tree() -> None:
    out = subprocess.run([sys.executable, str(TOOL), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "refusing" in out.stderr
