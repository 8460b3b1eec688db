"""Checks of the Python side itself: safetensors_np, gen_model.py and the float64 reference.

Randomized tests print their seed; set GDNSERVE_TEST_SEED to replay one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]
for sub in ("tools", "tools/common", "tools/reference"):
    sys.path.insert(0, str(ROOT / sub))
import gdn2_ref  # noqa: E402
import gen_model  # noqa: E402
import safetensors_np as st  # noqa: E402


@pytest.fixture(scope="module")
def seed() -> int:
    s = int(os.environ.get("GDNSERVE_TEST_SEED") or int.from_bytes(os.urandom(4), "little") >> 1)
    print(f"test_reference: seed={s} (GDNSERVE_TEST_SEED={s} replays)")
    return s


@pytest.fixture
def rng(seed: int, request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator per test, derived from the seed and the test's name."""
    return np.random.default_rng([seed, zlib.crc32(request.node.name.encode())])


@pytest.fixture(scope="module")
def models(seed: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, gdn2_ref.RefModel]:
    """The test-suite presets generated with `seed` and loaded by the reference."""
    out = tmp_path_factory.mktemp("models")
    for name in gen_model.SUITES["tests"]:
        gen_model.write_model(out / name, name, seed)
    return {name: gdn2_ref.RefModel.load(out / name) for name in gen_model.SUITES["tests"]}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Norm-wise relative error ||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- safetensors_np

@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_safetensors_round_trip(tmp_path: Path, rng: np.random.Generator, dtype: str):
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
               "b.weight": rng.standard_normal((7,)).astype(np.float32) * 100,
               "empty": np.zeros((0, 4), np.float32),
               "scalar": np.float32(rng.standard_normal()).reshape(())}
    path = tmp_path / "x.safetensors"
    st.save_file(tensors, path, dtype, metadata={"format": "pt", "seed": 3})
    header, metadata, data_start = st.read_header(path)
    assert metadata == {"format": "pt", "seed": "3"}
    assert data_start % 8 == 0
    assert list(header) == list(tensors)
    loaded = st.load_file(path)
    assert list(loaded) == list(tensors)
    for name, x in tensors.items():
        want = st.bf16_bits_to_f32(st.f32_to_bf16_bits(x)) if dtype == "BF16" else x.astype(st.STORAGE[dtype])
        assert loaded[name].shape == x.shape
        np.testing.assert_array_equal(loaded[name], want)
    if dtype == "BF16":  # 8 significant bits: relative rounding error <= 2^-8
        np.testing.assert_allclose(loaded["a"], tensors["a"], rtol=2.0 ** -8, atol=0)


def test_bf16_rounding_is_nearest_even(rng: np.random.Generator):
    one = 1.0
    cases = {
        one + 2.0 ** -8: one,                       # tie -> even (down)
        one + 3 * 2.0 ** -8: one + 2.0 ** -6,       # tie -> even (up)
        one + 2.0 ** -8 + 2.0 ** -20: one + 2.0 ** -7,  # above the tie
        -(one + 2.0 ** -8 + 2.0 ** -20): -(one + 2.0 ** -7),
        3.4028234663852886e38: np.inf,              # largest float32 rounds past the largest bf16
        np.inf: np.inf, -np.inf: -np.inf, 0.0: 0.0,
    }
    for x, want in cases.items():
        assert st.bf16_bits_to_f32(st.f32_to_bf16_bits(np.float32(x))) == np.float32(want), x
    assert np.isnan(st.bf16_bits_to_f32(st.f32_to_bf16_bits(np.float32(np.nan))))
    assert st.f32_to_bf16_bits(np.float32(-0.0)) == 0x8000
    # Random values, subnormals included: the result is the nearer of the two bf16 neighbours
    # (ties to even bits).
    x = (rng.standard_normal(100_000) * np.exp(rng.uniform(-100, 80, 100_000))).astype(np.float32)
    bits = x.view(np.uint32)
    low = (bits & 0xFFFF0000).view(np.float32).astype(np.float64)
    high = ((bits & 0xFFFF0000) + 0x10000).view(np.float32).astype(np.float64)
    got = st.bf16_bits_to_f32(st.f32_to_bf16_bits(x)).astype(np.float64)
    d_low, d_high = np.abs(x - low), np.abs(high - x)
    want = np.where(d_low < d_high, low, np.where(d_high < d_low, high,
                    np.where((bits >> 16) & 1, high, low)))
    np.testing.assert_array_equal(got, want)


def test_sharded_round_trip(tmp_path: Path, rng: np.random.Generator):
    tensors = {f"t{i}": rng.standard_normal((int(rng.integers(1, 50)), 3)).astype(np.float32) for i in range(10)}
    paths = st.save_model(tensors, tmp_path, "BF16", shards=3)
    assert {p.name for p in paths} == {st.INDEX_FILE} | {st.shard_name(i, 3) for i in range(3)}
    weight_map = json.loads((tmp_path / st.INDEX_FILE).read_text())["weight_map"]
    assert set(weight_map) == set(tensors) and len(set(weight_map.values())) == 3
    loaded = st.load_model(tmp_path)
    assert set(loaded) == set(tensors)
    for name, x in tensors.items():
        np.testing.assert_array_equal(loaded[name], st.bf16_bits_to_f32(st.f32_to_bf16_bits(x)))


def test_corrupt_files_are_errors(tmp_path: Path):
    path = tmp_path / "x.safetensors"
    st.save_file({"a": np.ones((4, 4), np.float32)}, path)
    data = path.read_bytes()
    for bad in (data[:-1], data[:5], data[:8] + b"x" + data[9:], b"\xff" * 8 + data[8:]):
        path.write_bytes(bad)
        with pytest.raises(st.SafetensorsError):
            st.load_file(path)


# ----------------------------------------------------------------------------- reference model

@pytest.mark.parametrize("name", ["tiny", "tiny_gva", "tiny_sharded"])
def test_continuing_from_state_equals_one_go(models, rng: np.random.Generator, name: str):
    model = models[name]
    ids = rng.integers(0, model.cfg.vocab_size, 70)
    whole, whole_state = model.forward(ids)
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), 3, replace=False))
    pieces, state = [], None
    for begin, end in zip([0, *cuts], [*cuts, len(ids)]):
        logits, state = model.forward(ids[begin:end], state)
        pieces.append(logits)
    err = rel_err(np.concatenate(pieces), whole)
    print(f"{name}: cuts {cuts.tolist()}: relative error {err:.2e}")
    assert err < 1e-12
    for a, b in zip(state, whole_state):
        np.testing.assert_allclose(a.S, b.S, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.conv, b.conv, rtol=1e-12, atol=1e-14)


def test_forward_does_not_modify_the_given_state(models, rng: np.random.Generator):
    model = models["tiny"]
    _, state = model.forward(rng.integers(0, model.cfg.vocab_size, 5))
    before = [(s.S.copy(), s.conv.copy()) for s in state]
    first, _ = model.forward([7], state)
    again, _ = model.forward([7], state)
    np.testing.assert_array_equal(first, again)
    for (S, conv), s in zip(before, state):
        np.testing.assert_array_equal(S, s.S)
        np.testing.assert_array_equal(conv, s.conv)


def random_unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_reduces_to_the_delta_rule(rng: np.random.Generator):
    """b = w = beta and no decay: S_t = (I - beta k k^T) S_{t-1} + beta k v^T, o_t = S_t^T q_t."""
    T, HV, K, V = 20, 3, 8, 6
    q, k = rng.standard_normal((T, HV, K)), random_unit(rng, (T, HV, K))
    v = rng.standard_normal((T, HV, V))
    beta = rng.uniform(0, 1, (T, HV))
    S0 = rng.standard_normal((HV, K, V))
    o, S = gdn2_ref.recurrence(q, k, v, np.zeros((T, HV, K)), np.repeat(beta[..., None], K, -1),
                               np.repeat(beta[..., None], V, -1), S0)
    for h in range(HV):
        S_h = S0[h]
        for t in range(T):
            kk = k[t, h][:, None]
            S_h = (np.eye(K) - beta[t, h] * kk @ kk.T) @ S_h + beta[t, h] * kk @ v[t, h][None, :]
            np.testing.assert_allclose(o[t, h], S_h.T @ q[t, h], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(S[h], S_h, rtol=1e-12, atol=1e-12)


def test_matches_the_product_form(rng: np.random.Generator):
    """General gates: S_t = (I - k (b*k)^T) Diag(exp(g)) S_{t-1} + k (w*v)^T (DESIGN.md 1.2)."""
    T, HV, K, V = 20, 2, 8, 16
    q, k, v = rng.standard_normal((T, HV, K)), random_unit(rng, (T, HV, K)), rng.standard_normal((T, HV, V))
    g = -np.exp(rng.uniform(-8, 4, (T, HV, K)))  # decays from ~1 down to exp(-55)
    b, w = rng.uniform(0, 2, (T, HV, K)), rng.uniform(0, 1, (T, HV, V))
    S0 = rng.standard_normal((HV, K, V))
    o, S = gdn2_ref.recurrence(q, k, v, g, b, w, S0)
    for h in range(HV):
        S_h = S0[h]
        for t in range(T):
            kk = k[t, h][:, None]
            S_h = ((np.eye(K) - kk @ (b[t, h] * k[t, h])[None, :]) @ np.diag(np.exp(g[t, h])) @ S_h
                   + kk @ (w[t, h] * v[t, h])[None, :])
            np.testing.assert_allclose(o[t, h], S_h.T @ q[t, h], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(S[h], S_h, rtol=1e-11, atol=1e-12)


def test_grouped_value_heads_share_key_head_j_div_group(models, rng: np.random.Generator):
    """tiny_gva (H=2, HV=4) equals the same model with each key head copied for its value heads."""
    model = models["tiny_gva"]
    c = model.cfg
    head_of = np.arange(c.num_v_heads) // (c.num_v_heads // c.num_heads)
    rows = (head_of[:, None] * c.head_dim + np.arange(c.head_dim)).ravel()  # expanded key channel -> source
    expanded = dict(model.w)
    for i in range(c.num_layers):
        a = f"model.layers.{i}.attn."
        for n in ("q_proj.weight", "k_proj.weight", "b_proj.weight", "f_proj.1.weight", "dt_bias",
                  "q_conv1d.weight", "k_conv1d.weight"):
            expanded[a + n] = model.w[a + n][rows]
        expanded[a + "A_log"] = model.w[a + "A_log"][head_of]
    wide = gdn2_ref.RefModel(dataclasses.replace(c, num_heads=c.num_v_heads), expanded)
    ids = rng.integers(0, c.vocab_size, 40)
    err = rel_err(wide.forward(ids)[0], model.forward(ids)[0])
    assert err < 1e-12, err


def test_generated_models_have_nontrivial_dynamics(models, rng: np.random.Generator):
    """Gates over all layers (on normed embeddings) span decades of decay and (0, 1); logits spread."""
    for name, model in models.items():
        c = model.cfg
        ids = rng.integers(0, c.vocab_size, 64)
        logits, _ = model.forward(ids)
        emb = model.w["model.embeddings.weight"][ids]
        layers = [model.mixer_inputs(i, gdn2_ref.rms_norm(emb, model.w[f"model.layers.{i}.attn_norm.weight"],
                                                          c.norm_eps), model.initial_state()[i].conv)[0]
                  for i in range(c.num_layers)]
        g, b, w = (np.concatenate([getattr(m, x).ravel() for m in layers]) for x in "gbw")
        b = b / (2.0 if c.allow_neg_eigval else 1.0)
        print(f"{name}: g in [{g.min():.1f}, {g.max():.1e}], b in [{b.min():.3f}, {b.max():.3f}], "
              f"w in [{w.min():.3f}, {w.max():.3f}], logits std {logits.std(axis=1).mean():.2f}")
        assert g.min() < -5 and g.max() > -1e-2             # decays over orders of magnitude
        assert b.min() < 0.05 and b.max() > 0.95
        assert w.min() < 0.05 and w.max() > 0.95
        assert 0.3 < logits.std(axis=1).mean() < 3          # neither uniform nor one-hot
        assert np.abs(np.diff(logits, axis=0)).mean() > 0.1  # positions differ


def test_config_and_weights_are_validated(models, tmp_path: Path):
    model = models["tiny"]
    raw = gen_model.config_of(gen_model.PRESETS["tiny"])
    bad_fields = {"colour": 1, "num_v_heads": 3, "expand_v": 0.3, "layer_types": ["gdn2", "swa"],
                  "tie_word_embeddings": 1, "architecture": "gdn", "eos_token_id": 512}
    for field, value in bad_fields.items():
        with pytest.raises(gdn2_ref.ModelError, match=f"'{field}'"):
            gdn2_ref.parse_config({**raw, field: value})
    with pytest.raises(gdn2_ref.ModelError, match="'hidden_size'"):
        gdn2_ref.parse_config({k: v for k, v in raw.items() if k != "hidden_size"})

    (tmp_path / "config.json").write_text(json.dumps(raw))
    weights = {n: x.astype(np.float32) for n, x in model.w.items()}
    bad_shape = {**weights, "model.layers.1.attn.o_norm.weight": np.ones(3, np.float32)}
    missing = {n: x for n, x in weights.items() if n != "model.layers.1.attn.A_log"}
    extra = {**weights, "model.layers.1.attn.o_norm.bias": np.ones(16, np.float32)}
    for tensors, pattern in ((bad_shape, "model.layers.1.attn.o_norm.weight"),
                             (missing, "model.layers.1.attn.A_log"), (extra, "model.layers.1.attn.o_norm.bias")):
        st.save_file(tensors, tmp_path / "model.safetensors")
        with pytest.raises(gdn2_ref.ModelError, match=re.escape(pattern)):
            gdn2_ref.RefModel.load(tmp_path)


def test_cli_writes_float32_logits(models, tmp_path: Path, seed: int):
    model_dir = tmp_path / "tiny"
    gen_model.write_model(model_dir, "tiny", seed)
    out = tmp_path / "logits.npy"
    assert gdn2_ref.main(["--model", str(model_dir), "--ids", "3,4,5,6", "--out", str(out)]) == 0
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (4, models["tiny"].cfg.vocab_size)
    np.testing.assert_allclose(logits, models["tiny"].forward([3, 4, 5, 6])[0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- gen_model.py

def run_gen(*args: str) -> str:
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_model.py"), *args],
                         capture_output=True, text=True, check=True)
    return run.stdout


def test_generator_is_deterministic(tmp_path: Path, seed: int):
    outputs = [run_gen("--suite", "tests", "--out", str(tmp_path / d), "--seed", str(seed)) for d in ("a", "b")]
    assert f"gen_model: seed={seed}" in outputs[0]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 11  # 3 x (config, tokenizer) + 2 single files + 2 shards + 1 index
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other = run_gen("--preset", "tiny", "--out", str(tmp_path / "c"), "--seed", str(seed + 1))
    assert f"seed={seed + 1}" in other
    assert (tmp_path / "c/model.safetensors").read_bytes() != (tmp_path / "a/tiny/model.safetensors").read_bytes()
    random_seed = re.search(r"gen_model: seed=(\d+)", run_gen("--preset", "tiny", "--out", str(tmp_path / "d")))
    assert random_seed, "a run without --seed must print the seed it drew"


@pytest.mark.parametrize("vocab", [512, 8500])
def test_tokenizer_piece_count_equals_vocab(tmp_path: Path, vocab: int):
    gen_model.train_tokenizer(tmp_path, vocab)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.get_piece_size() == vocab and sp.bos_id() == 1 and sp.eos_id() == 2
    ids = sp.encode("Hello, world! Grüße 漢字")
    assert max(ids) < min(vocab, gen_model.MAX_TRAINED_VOCAB)  # padding pieces are never produced
    assert sp.decode(ids) == "Hello, world! Grüße 漢字"
