"""bench/gpu/sass_segments.py: a kernel's SASS counters cut at its barriers.

On a small Nsight Compute-style CSV (two kernels, the first listed twice as
ncu does per profiled launch) the pieces must split at BAR and EXIT, carry
their instruction and stall shares, name their top opcodes and stall
reasons, and a kernel filter must pick one kernel.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "bench" / "gpu" / "sass_segments.py"
HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed", "stall_long_sb",
          "stall_barrier", "stall_long_sb (Not Issued)"]


def write_csv(path: Path) -> None:
    # Kernel A: 1060 executions before its barrier (all loads, long_sb stalls;
    # ncu writes thousands with a comma), 40 after it (math, barrier stalls at
    # the exit); kernel B: one piece.
    a = [["0x0", "      LDG.E R2, [R4.64]", "30", "1,050", "30", "0", "0"],
         ["0x10", "      LDG.E R3, [R4.64+0x4]", "0", "10", "0", "0", "0"],
         ["0x20", "      BAR.SYNC.DEFER_BLOCKING 0x0", "0", "0", "0", "0", "0"],
         ["0x30", "      FFMA R5, R2, R3, R5", "0", "30", "0", "0", "0"],
         ["0x40", "      @P0 EXIT", "10", "10", "0", "10", "0"]]
    b = [["0x0", "      HMMA.1688.F32.TF32 R8, R2, R4, R8", "5", "7", "5", "0", "0"],
         ["0x10", "      EXIT", "0", "1", "0", "0", "0"]]
    with path.open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for name, rows in [("void KernelA(int)", a), ("void KernelA(int)", a), ("void KernelB(float)", b)]:
            w.writerow(["Kernel Name", name])
            w.writerow(HEADER)
            w.writerows(rows)


def run(*args: str) -> str:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, check=True).stdout


def test_pieces_split_at_barriers(tmp_path: Path) -> None:
    path = tmp_path / "sass.csv"
    write_csv(path)
    out = run(str(path))
    assert out.count("== void KernelA") == 1, out  # the repeated launch is reported once
    assert "1,100 executed" in out, out
    assert "== void KernelB" in out, out
    lines = [line for line in out.splitlines() if "% stall" in line]
    assert len(lines) == 3, out
    first, second, third = lines
    assert "+00000-+00020 exec  96.4% stall  75.0%" in first and "LDG.E:100" in first and "long_sb:100" in first, first
    assert "+00030-+00040 exec   3.6% stall  25.0%" in second and "FFMA:75" in second and "barrier:100" in second, second
    assert "exec 100.0%" in third and "HMMA.1688.F32.TF32:87" in third, third
    assert "stalls: long_sb:75.0% barrier:25.0%" in out, out


def test_kernel_filter_and_missing_kernel(tmp_path: Path) -> None:
    path = tmp_path / "sass.csv"
    write_csv(path)
    out = run(str(path), "--kernel", "KernelB")
    assert "KernelA" not in out and "KernelB" in out, out
    missing = subprocess.run([sys.executable, str(TOOL), str(path), "--kernel", "Nope"], capture_output=True,
                             text=True)
    assert missing.returncode != 0 and "no kernel" in missing.stderr
