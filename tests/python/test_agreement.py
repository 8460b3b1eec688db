"""The C++ engine's logits equal the float64 reference (DESIGN.md 1.4, invariant 6).

Needs GDNSERVE_DUMP_LOGITS, the path of the dump binary (tests/tools/dump_logits.cc):
    $GDNSERVE_DUMP_LOGITS --model DIR --ids 3,4,5 --out FILE.npy [--mode prefill|decode] [--split 2,5]
which writes float32 [T, vocab] logits of every position. Modes compared here:
prefill (one chunkwise prefill), split (prefill in pieces ending at interior
offsets, carrying the state) and decode (first token prefilled, then one
recurrent step per token).

Models come from GDNSERVE_TEST_MODELS (made by `gen_model.py --suite tests`) or,
when unset, are generated here. Ids are fresh random sequences; the seed is
printed and GDNSERVE_TEST_SEED replays it. Tolerance: norm-wise relative error
<= 1e-4 over the whole [T, vocab] tensor and for every position.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for sub in ("tools", "tools/common", "tools/reference"):
    sys.path.insert(0, str(ROOT / sub))
import gdn2_ref  # noqa: E402
import gen_model  # noqa: E402

DUMP = os.environ.get("GDNSERVE_DUMP_LOGITS")
pytestmark = pytest.mark.skipif(
    not DUMP, reason="GDNSERVE_DUMP_LOGITS is unset: point it at the gdn_dump_logits binary "
                     "(tests/tools/dump_logits.cc) to compare the C++ engine with tools/reference")

MODELS = gen_model.SUITES["tests"]
LENGTHS = (1, 7, 63, 64, 65, 130, 200)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def seed() -> int:
    s = int(os.environ.get("GDNSERVE_TEST_SEED") or int.from_bytes(os.urandom(4), "little") >> 1)
    print(f"test_agreement: seed={s} (GDNSERVE_TEST_SEED={s} replays)")
    return s


@pytest.fixture(scope="module")
def model_dirs(seed: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the test-suite models (GDNSERVE_TEST_MODELS, or generated with `seed`)."""
    if os.environ.get("GDNSERVE_TEST_MODELS"):
        return Path(os.environ["GDNSERVE_TEST_MODELS"])
    out = tmp_path_factory.mktemp("models")
    for name in MODELS:
        gen_model.write_model(out / name, name, seed)
    return out


@pytest.fixture(scope="module")
def reference(model_dirs: Path, seed: int):
    """(model name, length) -> (ids [T], reference logits [T, vocab] float64), cached.

    The ids depend only on (seed, model, length), so every mode is compared on the same sequence.
    """
    assert os.access(DUMP, os.X_OK), f"GDNSERVE_DUMP_LOGITS={DUMP} is not an executable file (not built?)"
    models, cache = {}, {}

    def get(name: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        if (name, length) not in cache:
            if name not in models:
                models[name] = gdn2_ref.RefModel.load(model_dirs / name)
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), length])
            ids = rng.integers(0, models[name].cfg.vocab_size, length)
            cache[name, length] = ids, models[name].forward(ids)[0]
        return cache[name, length]

    return get


def run_dump(model_dir: Path, ids: np.ndarray, out: Path, mode: str, split: list[int]) -> np.ndarray:
    """Runs the C++ dump binary; returns its logits [T, vocab]."""
    cmd = [DUMP, "--model", str(model_dir), "--ids", ",".join(map(str, ids)), "--out", str(out), "--mode", mode]
    if split:
        cmd += ["--split", ",".join(map(str, split))]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"exit status {run.returncode}: {' '.join(cmd)}\n{run.stderr}"
    return np.load(out)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mode", ["prefill", "split", "decode"])
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_reference(reference, model_dirs: Path, seed: int, tmp_path: Path,
                                  name: str, mode: str, length: int):
    if mode == "split" and length < 2:
        pytest.skip("a single token cannot be split")
    ids, ref = reference(name, length)
    split = []
    if mode == "split":
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), length, 1])
        split = sorted(rng.choice(np.arange(1, length), min(3, length - 1), replace=False).tolist())
    cpp = run_dump(model_dirs / name, ids, tmp_path / "logits.npy", "decode" if mode == "decode" else "prefill",
                   split)

    assert cpp.dtype == np.float32 and cpp.shape == ref.shape, \
        f"got {cpp.dtype}{cpp.shape}, want float32{ref.shape}"
    assert np.isfinite(cpp).all(), "non-finite logits"
    err = float(np.linalg.norm(cpp - ref) / np.linalg.norm(ref))
    per_pos = np.linalg.norm(cpp - ref, axis=1) / np.linalg.norm(ref, axis=1)
    worst = int(np.argmax(per_pos))
    print(f"{name} {mode}{split or ''} T={length}: relative error {err:.2e}, "
          f"worst position {worst}: {per_pos[worst]:.2e}")
    assert err <= TOLERANCE, f"relative error {err:.2e} > {TOLERANCE}"
    assert per_pos[worst] <= TOLERANCE, f"position {worst}: relative error {per_pos[worst]:.2e} > {TOLERANCE}"
