"""tools/convert: official GDN-2 (lit_gpt) checkpoints -> gdnserve model directories.

A synthetic checkpoint of the official layout (tools/convert/make_synthetic_litgpt.py) is
converted; the converted directory, run by tools/reference (RefModel), must give the logits of an
independent numpy forward written here directly on the lit_gpt-named tensors, following the
official modules (lit_gpt GPT / Block / LLaMAMLP+SwiGLU, GatedDeltaNet2 with its fused-projection
path, fla's ShortConvolution = depthwise nn.Conv1d and FusedRMSNormSwishGate) and the matrix form
of the recurrence, S <- (I - k (b*k)^T) Diag(exp g) S + k (w*v)^T. Tolerance 1e-5 relative
(float64 on both sides, on the weights as stored in the output dtype).

Also: .pth checkpoints and the PyTorch implementation (tools/train/model.py) when torch is
importable; the C++ engine on the converted directories when GDNSERVE_DUMP_LOGITS is set (1e-4);
and the errors for unknown / missing / wrongly shaped tensors and hybrid layers, which must name
the tensor or layer. The seed is printed; GDNSERVE_TEST_SEED replays it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]
for sub in ("tools", "tools/common", "tools/reference", "tools/convert"):
    sys.path.insert(0, str(ROOT / sub))
import checkpoint_io  # noqa: E402
import convert_litgpt  # noqa: E402
import gdn2_ref  # noqa: E402
import gen_model  # noqa: E402
import make_synthetic_litgpt as synth  # noqa: E402
import safetensors_np as st  # noqa: E402
from checkpoint_io import ConvertError  # noqa: E402
from make_synthetic_litgpt import Synth  # noqa: E402

DUMP = os.environ.get("GDNSERVE_DUMP_LOGITS")
TOLERANCE = 1e-5
CPP_TOLERANCE = 1e-4
PYTHON = sys.executable


@pytest.fixture(scope="module")
def seed() -> int:
    s = int(os.environ.get("GDNSERVE_TEST_SEED") or int.from_bytes(os.urandom(4), "little") >> 1)
    print(f"test_convert: seed={s} (GDNSERVE_TEST_SEED={s} replays)")
    return s


@pytest.fixture
def rng(seed: int, request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(request.node.name.encode())])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece model of 500 pieces (Synth's vocab_size; lit_gpt pads it to 512)."""
    out = tmp_path_factory.mktemp("tok")
    gen_model.train_tokenizer(out, Synth.vocab_size)
    return out / "tokenizer.model"


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- independent forward

def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


def softplus(x):  # torch.nn.functional.softplus(beta=1, threshold=20)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def rmsnorm(x, weight, eps):  # lit_gpt RMSNorm / FusedRMSNorm, fla's RMSNorm
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def short_conv(x, weight):
    """fla ShortConvolution = nn.Conv1d(C, C, W, groups=C, padding=W-1) on [C, T], first T outputs, then SiLU."""
    T, W = x.shape[0], weight.shape[2]
    xp = np.concatenate([np.zeros((W - 1, x.shape[1])), x, np.zeros((W - 1, x.shape[1]))])
    y = np.stack([(xp[t:t + W] * weight[:, 0, :].T).sum(0) for t in range(T + W - 1)])  # cross-correlation
    return silu(y[:T])


def l2norm(x):  # fla l2norm (use_qk_l2norm_in_kernel=True)
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def gdn2_mixer(t: dict, p: str, h: np.ndarray, s: Synth, norm_eps: float) -> np.ndarray:
    """lit_gpt/gdn2.py GatedDeltaNet2.forward (GDN2_FUSED_PROJ=1 path), recurrent, on h [T, d]."""
    H, K, HV = s.num_heads, s.head_dim, s.num_v_heads or s.num_heads
    V = K * s.expand_v
    kd, vd, T = H * K, HV * V, h.shape[0]
    names = ["q_proj", "k_proj", "v_proj", "b_proj", "w_proj", "f_proj.0", "g_proj.0"]
    w_cat = np.concatenate([t[p + n + ".weight"] for n in names])
    q_raw, k_raw, v_raw, b_raw, w_raw, f0, g0 = np.split(h @ w_cat.T, np.cumsum([kd, kd, vd, kd, vd, V]), axis=-1)
    f_pre = f0 @ t[p + "f_proj.1.weight"].T
    z = g0 @ t[p + "g_proj.1.weight"].T + t[p + "g_proj.1.bias"]
    q = short_conv(q_raw, t[p + "q_conv1d.weight"])
    k = short_conv(k_raw, t[p + "k_conv1d.weight"])
    v = short_conv(v_raw, t[p + "v_conv1d.weight"])
    g = -np.repeat(np.exp(t[p + "A_log"]), K) * softplus(f_pre + t[p + "dt_bias"])
    b, w = sigmoid(b_raw), sigmoid(w_raw)
    q, k, g, b = (x.reshape(T, H, K) for x in (q, k, g, b))
    v, w, z = (x.reshape(T, HV, V) for x in (v, w, z))
    q, k, g, b = (np.repeat(x, HV // H, axis=1) for x in (q, k, g, b))  # "h d -> (h g) d"
    q, k = l2norm(q) * K ** -0.5, l2norm(k)
    S = np.zeros((HV, K, V))
    eye = np.eye(K)
    o = np.empty((T, HV, V))
    for i in range(T):
        for j in range(HV):
            A = eye - np.outer(k[i, j], b[i, j] * k[i, j])
            S[j] = A @ (np.exp(g[i, j])[:, None] * S[j]) + np.outer(k[i, j], w[i, j] * v[i, j])
            o[i, j] = S[j].T @ q[i, j]
    o = rmsnorm(o, t[p + "o_norm.weight"], norm_eps) * silu(z)  # FusedRMSNormSwishGate
    return o.reshape(T, vd) @ t[p + "o_proj.weight"].T


def litgpt_forward(tensors: dict, ids, s: Synth, norm_eps: float = 1e-5) -> np.ndarray:
    """lit_gpt GPT.forward on the lit_gpt-named tensors (float64): logits [T, padded_vocab]."""
    t = {n: np.asarray(x, dtype=np.float64) for n, x in tensors.items()}
    x = t["transformer.wte.weight"][np.asarray(ids)]
    for i in range(s.n_layer):
        p = f"transformer.h.{i}."
        x = x + gdn2_mixer(t, p + "attn.", rmsnorm(x, t[p + "norm_1.weight"], norm_eps), s, norm_eps)
        n2 = rmsnorm(x, t[p + "norm_2.weight"], norm_eps)
        if p + "mlp.swiglu.w12.weight" in t:
            x1, x2 = np.split(n2 @ t[p + "mlp.swiglu.w12.weight"].T, 2, axis=-1)
        else:
            x1, x2 = n2 @ t[p + "mlp.swiglu.w1.weight"].T, n2 @ t[p + "mlp.swiglu.w2.weight"].T
        x = x + (silu(x1) * x2) @ t[p + "mlp.swiglu.w3.weight"].T
    x = rmsnorm(x, t["transformer.ln_f.weight"], norm_eps)
    return x @ t.get("lm_head.weight", t["transformer.wte.weight"]).T


# ----------------------------------------------------------------------------- helpers

def write_checkpoint(out: Path, tensors: dict, s: Synth, dtype: str = "F32", config: dict | None = None) -> Path:
    """Writes lit_model.safetensors and lit_config.json into out; returns the checkpoint path."""
    out.mkdir(parents=True, exist_ok=True)
    st.save_file(tensors, out / "lit_model.safetensors", dtype)
    (out / "lit_config.json").write_text(json.dumps(config or synth.litgpt_config(s)))
    return out / "lit_model.safetensors"


def run_dump(model_dir: Path, ids, out: Path) -> np.ndarray:
    cmd = [DUMP, "--model", str(model_dir), "--ids", ",".join(map(str, ids)), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"exit status {run.returncode}: {' '.join(cmd)}\n{run.stderr}"
    return np.load(out)


VARIANTS = {
    # name: (shape, checkpoint dtype, output dtype, max shard bytes)
    "f32": (Synth(), "F32", "f32", convert_litgpt.DEFAULT_MAX_SHARD),
    "gva_tied_packed_bf16": (Synth(n_layer=3, num_v_heads=4, expand_v=2, tied=True, pack_mlp=True),
                             "BF16", "bf16", convert_litgpt.DEFAULT_MAX_SHARD),
    "conv3_sharded_f16": (Synth(n_layer=3, conv_size=3, intermediate_size=80), "F32", "f16", 150_000),
}


# ----------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_logits_match_litgpt_forward(variant: str, tokenizer: Path, tmp_path: Path,
                                               rng: np.random.Generator, seed: int):
    s, ckpt_dtype, out_dtype, max_shard = VARIANTS[variant]
    tensors = synth.make_tensors(s, rng)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, s, ckpt_dtype)
    logs: list[str] = []
    cfg = convert_litgpt.convert(ckpt, tmp_path / "out", tokenizer, dtype=out_dtype,
                                 max_shard_bytes=max_shard, log=logs.append)
    print("\n".join(logs))

    # The config: geometry read off the tensors, vocabulary padded as lit_gpt pads it.
    HV = s.num_v_heads or s.num_heads
    assert cfg == {**cfg, "vocab_size": 512, "hidden_size": s.n_embd, "num_layers": s.n_layer,
                   "num_heads": s.num_heads, "num_v_heads": HV, "head_dim": s.head_dim, "expand_v": s.expand_v,
                   "intermediate_size": s.intermediate_size, "conv_size": s.conv_size, "norm_eps": 1e-5,
                   "tie_word_embeddings": s.tied, "allow_neg_eigval": False,
                   "bos_token_id": 1, "eos_token_id": 2}, cfg
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == cfg
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    if max_shard < convert_litgpt.DEFAULT_MAX_SHARD:
        assert len(shards) >= 2 and (tmp_path / "out" / st.INDEX_FILE).exists()
        assert all(p.stat().st_size <= max_shard + 4096 for p in shards)
    else:
        assert not shards and (tmp_path / "out" / st.SINGLE_FILE).exists()

    ids = rng.integers(0, 512, 9)  # ids past the tokenizer's 500 pieces hit padded rows too
    stored = synth.round_to(tensors, ckpt_dtype)                       # what the checkpoint holds
    expected = litgpt_forward(synth.round_to(stored, convert_litgpt.DTYPES[out_dtype]), ids, s)
    model = gdn2_ref.RefModel.load(tmp_path / "out")
    got, _ = model.forward(ids)
    err = rel_err(got, expected)
    print(f"{variant}: reference on the converted dir vs the lit_gpt forward: relative error {err:.2e}")
    assert err <= TOLERANCE, f"relative error {err:.2e} > {TOLERANCE}"

    if DUMP:
        cpp = run_dump(tmp_path / "out", ids, tmp_path / "cpp.npy")
        err = rel_err(cpp, got)
        print(f"{variant}: C++ engine vs reference: relative error {err:.2e}")
        assert cpp.shape == got.shape and err <= CPP_TOLERANCE, f"relative error {err:.2e} > {CPP_TOLERANCE}"


def test_cli_end_to_end(tmp_path: Path, seed: int):
    """The README commands: make a synthetic checkpoint, convert its directory (lit_config.json found)."""
    ck, out = tmp_path / "ck", tmp_path / "out"
    run = subprocess.run([PYTHON, str(ROOT / "tools/convert/make_synthetic_litgpt.py"), "--out", str(ck),
                          "--seed", str(seed), "--dtype", "bf16", "--no-pth"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"seed={seed}" in run.stdout
    run = subprocess.run([PYTHON, str(ROOT / "tools/convert/convert_litgpt.py"), "--checkpoint", str(ck),
                          "--tokenizer", str(ck / "tokenizer.model"), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "lit_config.json" in run.stderr and "bf16" in run.stderr
    header, _, _ = st.read_header(out / st.SINGLE_FILE)
    assert {e["dtype"] for e in header.values()} == {"BF16"}
    tensors = st.load_file(ck / "lit_model.safetensors")
    ids = [1, 7, 42, 499]
    want = litgpt_forward(tensors, ids, Synth())
    assert rel_err(gdn2_ref.RefModel.load(out).forward(ids)[0], want) <= TOLERANCE


def test_wrapper_prefixes_are_removed(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """Names saved through DDP / torch.compile / Fabric / FSDP wrappers convert like plain ones."""
    s = Synth(n_layer=1)
    tensors = synth.make_tensors(s, rng)
    wrapped = {("_forward_module._orig_mod." + n).replace("transformer.h.0.", "transformer.h.0._fsdp_wrapped_module."):
               x for n, x in tensors.items()}
    ckpt = write_checkpoint(tmp_path / "ckpt", wrapped, s)
    convert_litgpt.convert(ckpt, tmp_path / "out", tokenizer, dtype="f32", log=None)
    ids = [5, 6, 7]
    assert rel_err(gdn2_ref.RefModel.load(tmp_path / "out").forward(ids)[0],
                   litgpt_forward(tensors, ids, s)) <= TOLERANCE


def test_tokenizer_info_matches_sentencepiece(tokenizer: Path):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert convert_litgpt.tokenizer_info(tokenizer) == (sp.get_piece_size(), sp.bos_id(), sp.eos_id())


def test_official_presets():
    """The gdn2_1.3B preset: 18 pure GDN-2 layers, d 2304, SwiGLU 6208, vocab 32000 (already a multiple of 64)."""
    import litgpt_layout
    cfg, notes = litgpt_layout.parse_config(litgpt_layout.PRESETS["gdn2_1.3B"], "gdn2_1.3B")
    assert not notes
    assert (cfg.n_layer, cfg.n_embd, cfg.intermediate_size, cfg.vocab_size, cfg.padded_vocab_size) == \
        (18, 2304, 6208, 32000, 32000)
    assert cfg.layer_kinds == ("gdn2",) * 18
    swa, _ = litgpt_layout.parse_config(litgpt_layout.PRESETS["swa_gdn2_1.3B"], "swa")
    assert swa.layer_kinds[:4] == ("gdn2", "attention", "gdn2", "attention")


# ----------------------------------------------------------------------------- torch (optional)

def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (optional: .pth checkpoints)")


def test_pth_checkpoint(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """A Fabric-style {"model": state_dict} .pth (bf16) converts to the same tensors as its safetensors twin."""
    _torch()
    s = Synth(num_v_heads=4)
    tensors = synth.make_tensors(s, rng)
    write_checkpoint(tmp_path / "ck", tensors, s, "BF16")
    assert synth.save_pth(tensors, tmp_path / "ck" / "lit_model.pth", "BF16")
    convert_litgpt.convert(tmp_path / "ck" / "lit_model.pth", tmp_path / "a", tokenizer, dtype="f32", log=None)
    convert_litgpt.convert(tmp_path / "ck" / "lit_model.safetensors", tmp_path / "b", tokenizer, dtype="f32",
                           log=None)
    a, b = st.load_model(tmp_path / "a"), st.load_model(tmp_path / "b")
    assert list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a)


def test_pytorch_implementation_agrees(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """tools/train/model.py (gdnserve's PyTorch GDN-2) on the converted weights = the lit_gpt forward."""
    torch = _torch()
    try:
        sys.path.insert(0, str(ROOT / "tools/train"))
        from model import GDN2LM, GDN2Config
    except ImportError as e:
        pytest.skip(f"tools/train/model.py not importable: {e}")
    s = Synth(num_v_heads=4, expand_v=2, tied=True)
    tensors = synth.make_tensors(s, rng)
    cfg = convert_litgpt.convert(write_checkpoint(tmp_path / "ck", tensors, s), tmp_path / "out", tokenizer,
                                 dtype="f32", log=None)
    model = GDN2LM(GDN2Config.from_json(cfg)).double()
    model.load_state_dict({n: torch.from_numpy(x.astype(np.float64)) for n, x in
                           st.load_model(tmp_path / "out").items()}, strict=True)
    ids = rng.integers(0, 512, 20)
    with torch.no_grad():
        got = model(torch.from_numpy(ids)[None], recurrent=True)[0][0].numpy()
    err = rel_err(got, litgpt_forward(tensors, ids, s))
    print(f"tools/train/model.py vs the lit_gpt forward: relative error {err:.2e}")
    assert err <= TOLERANCE


# ----------------------------------------------------------------------------- errors

def convert_error(tmp_path: Path, tokenizer: Path, tensors: dict, s: Synth, config: dict | None = None,
                  with_config: bool = True, **kw) -> str:
    ck = tmp_path / "ck"
    path = write_checkpoint(ck, tensors, s, config=config)
    if not with_config:
        (ck / "lit_config.json").unlink()
    with pytest.raises(ConvertError) as e:
        convert_litgpt.convert(path, tmp_path / "out", tokenizer, log=None, **kw)
    print(e.value)
    return str(e.value)


def test_error_unknown_tensor(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth()
    t = synth.make_tensors(s, rng)
    t["transformer.h.1.attn.r_proj.weight"] = np.zeros((4, 64), np.float32)
    t["transformer.h.0.attn.q_conv1d.bias"] = np.zeros(32, np.float32)
    msg = convert_error(tmp_path, tokenizer, t, s)
    assert "unknown tensor transformer.h.1.attn.r_proj.weight" in msg
    assert "unknown tensor transformer.h.0.attn.q_conv1d.bias (short-conv bias" in msg


def test_error_missing_tensor(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth()
    t = synth.make_tensors(s, rng)
    del t["transformer.h.1.attn.b_proj.weight"]
    msg = convert_error(tmp_path, tokenizer, t, s)
    assert "missing tensor transformer.h.1.attn.b_proj.weight (expected shape [32, 64])" in msg


def test_error_missing_layer(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """The config says 3 layers, the checkpoint has 2: every tensor of layer 2 is named missing."""
    s = Synth()
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s,
                        config=synth.litgpt_config(replace(s, n_layer=3)))
    assert "missing tensor transformer.h.2.norm_1.weight" in msg


def test_error_bad_shape(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth()
    t = synth.make_tensors(s, rng)
    t["transformer.h.1.attn.dt_bias"] = t["transformer.h.1.attn.dt_bias"][:31]
    t["transformer.h.0.attn.k_proj.weight"] = np.concatenate([t["transformer.h.0.attn.k_proj.weight"]] * 2)
    msg = convert_error(tmp_path, tokenizer, t, s)
    assert "tensor transformer.h.1.attn.dt_bias has shape [31], expected [32]" in msg
    assert "tensor transformer.h.0.attn.k_proj.weight has shape [64, 64], expected [32, 64]" in msg
    assert "GatedDeltaNet2Plus" in msg


def test_error_config_disagrees_with_tensors(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth()
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s,
                        config={**synth.litgpt_config(s), "intermediate_size": 128})
    assert "intermediate_size = 128" in msg and "transformer.h.0.mlp.swiglu.w1.weight" in msg


def test_error_hybrid_from_config(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """swa_gdn2-style hybrid: layers 1 and 3 are sliding-window attention."""
    s = Synth(n_layer=4, gdn2_per_layer=2)
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s)
    assert "layer 1 (transformer.h.1) is a sliding-window softmax attention" in msg
    assert "not supported yet" in msg and "gdn2_per_layer=2" in msg and "1, 3" in msg


def test_error_hybrid_from_tensors(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    """No config: the attention layers are recognised by their attn.attn / attn.proj weights."""
    s = Synth(n_layer=4, gdn2_per_layer=2)
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s, with_config=False)
    assert "layer 1 (transformer.h.1) is a sliding-window softmax attention" in msg
    assert "attn.attn / attn.proj" in msg and "not supported yet" in msg


@pytest.mark.parametrize("preset,layer,kind", [("swa_gdn2_1.3B", 1, "sliding-window softmax attention"),
                                               ("gdn2_plus_1.3B", 0, "GatedDeltaNet2Plus")])
def test_error_hybrid_presets(tokenizer: Path, tmp_path: Path, rng: np.random.Generator,
                              preset: str, layer: int, kind: str):
    """Refused from the config alone, before any tensor is read."""
    s = Synth()
    path = write_checkpoint(tmp_path / "ck", synth.make_tensors(s, rng), s)
    with pytest.raises(ConvertError) as e:
        convert_litgpt.convert(path, tmp_path / "out", tokenizer, config=preset, log=None)
    msg = str(e.value)
    assert f"layer {layer} (transformer.h.{layer}) is a" in msg and kind in msg and "not supported yet" in msg


def test_error_tokenizer_larger_than_vocab(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth(vocab_size=256)
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s)
    assert "500 pieces" in msg and "256 rows" in msg


def test_error_norm_eps(tokenizer: Path, tmp_path: Path, rng: np.random.Generator):
    s = Synth()
    msg = convert_error(tmp_path, tokenizer, synth.make_tensors(s, rng), s,
                        config={**synth.litgpt_config(s), "norm_eps": 1e-6})
    assert "norm_eps" in msg and "o_norm" in msg


def test_cli_error_exit_status(tokenizer: Path, tmp_path: Path, rng: np.random.Generator,
                               capsys: pytest.CaptureFixture):
    s = Synth()
    t = synth.make_tensors(s, rng)
    del t["transformer.ln_f.weight"]
    path = write_checkpoint(tmp_path / "ck", t, s)
    status = convert_litgpt.main(["--checkpoint", str(path), "--tokenizer", str(tokenizer),
                                  "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1 and "error:" in err and "missing tensor transformer.ln_f.weight" in err


def test_pth_without_torch_is_a_clear_error(tokenizer: Path, tmp_path: Path):
    if checkpoint_io.torch_available():
        pytest.skip("torch is installed")
    (tmp_path / "model.pth").write_bytes(b"PK\x03\x04")
    with pytest.raises(ConvertError, match="needs torch"):
        convert_litgpt.convert(tmp_path / "model.pth", tmp_path / "out", tokenizer, log=None)
