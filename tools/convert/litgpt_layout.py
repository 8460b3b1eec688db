"""The official GDN-2 training checkpoint layout (lit_gpt) and its map onto gdnserve's.

The official GDN-2 code is lit_gpt-based (Samba / GatedDeltaNet lineage): `lit_gpt/model.py`
builds `GPT` = `transformer.wte` (nn.Embedding [padded_vocab, n_embd]), `transformer.h.{i}`
(`Block`), `transformer.ln_f`, `lm_head` (nn.Linear, no bias, never tied); a `Block` is
`norm_1` -> `attn` -> residual, `norm_2` -> `mlp` -> residual (parallel_residual=False), with
`attn` a `GatedDeltaNet2` (`lit_gpt/gdn2.py`) on layers where `i % gdn2_per_layer == 0`, a
`GatedDeltaNet2Plus` where `i % gdn2_plus_per_layer == 0`, and a sliding-window softmax
`CausalSelfAttention` (fused `attn.attn` qkv + `attn.proj`) elsewhere. Norms are lit_gpt
`RMSNorm`/`FusedRMSNorm` (`weight` only, x * rsqrt(mean(x^2) + eps) * weight). The MLP is
`LLaMAMLP` holding `swiglu` = SwiGLU with `w1`, `w2`, `w3`: w3(silu(w1 x) * w2 x), i.e. w1 = gate,
w2 = up, w3 = down (xformers' packed variant keeps w1 and w2 stacked as `w12`).

`GatedDeltaNet2(hidden_size=config.n_embd)` is built with its defaults for everything else:
16 heads of dim 128, expand_v 1, conv kernel 4, no conv bias, o_norm eps 1e-5,
allow_neg_eigval False. The lit_gpt config therefore does not carry the mixer's geometry; it is
read off the tensors here (A_log [H], q_proj [H*K, d], f_proj.0 [V, d], v_proj [HV*V, d],
q_conv1d [H*K, 1, W]). Its parameters (separate nn.Linear weights; the runtime concatenates
them into one GEMM but stores them apart) have the names gdnserve uses, under `attn.`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from checkpoint_io import ConvertError, SourceTensor

# The official presets (lit_gpt/config.py of the GDN-2 release).
_COMMON_1P3B = dict(org="NVIDIA", block_size=4096, vocab_size=32000, padding_multiple=64, n_layer=18, n_head=18,
                    n_embd=2304, rotary_percentage=1.0, parallel_residual=False, bias=False,
                    _norm_class="FusedRMSNorm", norm_eps=1e-5, _mlp_class="LLaMAMLP", local_window=2048,
                    mamba_init=True)
PRESETS = {
    "gdn2_1.3B": dict(_COMMON_1P3B, name="gdn2_1.3B", gdn2_per_layer=1, intermediate_size=6208),
    "swa_gdn2_1.3B": dict(_COMMON_1P3B, name="swa_gdn2_1.3B", gdn2_per_layer=2, intermediate_size=6784),
    "gdn2_plus_1.3B": dict(_COMMON_1P3B, name="gdn2_plus_1.3B", gdn2_plus_per_layer=1, intermediate_size=3456),
    "swa_gdn2_plus_1.3B": dict(_COMMON_1P3B, name="swa_gdn2_plus_1.3B", gdn2_plus_per_layer=2,
                               intermediate_size=5440),
}

# lit_gpt `Config` fields and their dataclass defaults (a config json written with asdict(config)
# has all of them; a hand-written one may leave some out).
CONFIG_DEFAULTS = {
    "org": "Lightning-AI", "name": "lit-GPT", "block_size": 4096, "vocab_size": 50254, "padding_multiple": 64,
    "padded_vocab_size": None, "n_layer": 16, "n_head": 32, "n_embd": 4096, "rotary_percentage": 0.25,
    "parallel_residual": True, "bias": True, "local_window": -1, "mlp": True, "gdn2_per_layer": -1,
    "gdn2_plus_per_layer": -1, "nope": False, "mamba_init": False, "n_query_groups": None,
    "shared_attention_norm": False, "_norm_class": "LayerNorm", "norm_eps": 1e-5, "_mlp_class": "LLaMAMLP",
    "intermediate_size": None, "condense_ratio": 1,
}
# The GatedDeltaNet2 constructor defaults the official Block relies on.
MIXER_NORM_EPS = 1e-5

LAYER_KIND_TEXT = {
    "attention": "a sliding-window softmax attention (SWA) layer",
    "gdn2_plus": "a GatedDeltaNet2Plus (GDN-2 with Householder products) layer",
}


def find_multiple(n: int, k: int) -> int:
    """lit_gpt.utils.find_multiple: the smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - n % k


@dataclass(frozen=True)
class LitConfig:
    """The parts of a lit_gpt config that matter for a pure GDN-2 model."""
    n_layer: int
    n_embd: int
    vocab_size: int          # the tokenizer's vocabulary
    padded_vocab_size: int   # rows of wte and lm_head
    intermediate_size: int
    norm_eps: float
    layer_kinds: tuple[str, ...]  # per layer: "gdn2", "gdn2_plus" or "attention"
    gdn2_per_layer: int
    gdn2_plus_per_layer: int


def parse_config(raw: Mapping, where: str) -> tuple[LitConfig, list[str]]:
    """Validates a lit_gpt config dict. Returns it and notes (ignored unknown keys).

    Raises ConvertError naming the field for block structures gdnserve cannot express.
    """
    if not isinstance(raw, Mapping):
        raise ConvertError(f"{where}: not a JSON object")
    notes = [f"{where}: ignoring unknown field '{k}'" for k in raw if k not in CONFIG_DEFAULTS]
    c = {**CONFIG_DEFAULTS, **raw}

    def bad(field: str, why: str) -> ConvertError:
        return ConvertError(f"{where}: field '{field}' = {c[field]!r}: {why}")

    for field in ("n_layer", "n_embd", "vocab_size", "padding_multiple", "intermediate_size"):
        if not isinstance(c[field], int) or isinstance(c[field], bool) or c[field] < 1:
            raise bad(field, "must be a positive integer")
    if c["_norm_class"] not in ("RMSNorm", "FusedRMSNorm"):
        raise bad("_norm_class", "GDN-2 models use RMSNorm / FusedRMSNorm (LayerNorm is not supported)")
    if c["_mlp_class"] != "LLaMAMLP":
        raise bad("_mlp_class", "only LLaMAMLP (SwiGLU) is supported")
    if c["parallel_residual"] or c["shared_attention_norm"]:
        field = "parallel_residual" if c["parallel_residual"] else "shared_attention_norm"
        raise bad(field, "gdnserve runs sequential pre-norm blocks (parallel_residual and "
                         "shared_attention_norm must be false)")
    if not c["mlp"]:
        raise bad("mlp", "blocks without an MLP are not supported")
    if c["bias"]:
        raise bad("bias", "MLP biases are not supported (GDN-2 configs set bias=false)")
    if not isinstance(c["norm_eps"], (int, float)) or not c["norm_eps"] > 0:
        raise bad("norm_eps", "must be a positive number")
    padded = c["padded_vocab_size"] or find_multiple(c["vocab_size"], c["padding_multiple"])
    if padded < c["vocab_size"]:
        raise bad("padded_vocab_size", f"is below vocab_size {c['vocab_size']}")
    kinds = []
    for i in range(c["n_layer"]):
        gdn2 = c["gdn2_per_layer"] > 0 and i % c["gdn2_per_layer"] == 0
        plus = c["gdn2_plus_per_layer"] > 0 and i % c["gdn2_plus_per_layer"] == 0
        if gdn2 and plus:
            raise ConvertError(f"{where}: layer {i} matches both gdn2_per_layer and gdn2_plus_per_layer")
        kinds.append("gdn2" if gdn2 else "gdn2_plus" if plus else "attention")
    cfg = LitConfig(n_layer=c["n_layer"], n_embd=c["n_embd"], vocab_size=c["vocab_size"], padded_vocab_size=padded,
                    intermediate_size=c["intermediate_size"], norm_eps=float(c["norm_eps"]),
                    layer_kinds=tuple(kinds), gdn2_per_layer=c["gdn2_per_layer"],
                    gdn2_plus_per_layer=c["gdn2_plus_per_layer"])
    return cfg, notes


def check_pure_gdn2(kinds: Mapping[int, str], why: str) -> None:
    """Raises the 'not supported yet' error for any layer that is not a GDN-2 mixer."""
    other = sorted(i for i, k in kinds.items() if k != "gdn2")
    if not other:
        return
    first = other[0]
    listed = ", ".join(map(str, other[:12])) + (", ..." if len(other) > 12 else "")
    raise ConvertError(
        f"layer {first} (transformer.h.{first}) is {LAYER_KIND_TEXT[kinds[first]]} ({why}): hybrid models with "
        f"layers other than GDN-2 are not supported yet; {len(other)} of {len(kinds)} layers are such "
        f"layers: {listed}")


def layer_kinds_from_tensors(names) -> dict[int, str]:
    """Layers that hold softmax-attention parameters (attn.attn / attn.proj) -> "attention"."""
    out = {}
    for name in names:
        m = re.fullmatch(r"transformer\.h\.(\d+)\.attn\.(attn|proj)\.(weight|bias)", name)
        if m:
            out[int(m.group(1))] = "attention"
    return out


def layer_indices(names) -> list[int]:
    return sorted({int(m.group(1)) for n in names if (m := re.match(r"transformer\.h\.(\d+)\.", n))})


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Geometry:
    """Shapes of a GDN-2 model (DEVELOPERS.md notation)."""
    n_layer: int
    d: int
    vocab: int       # padded vocabulary: rows of wte / lm_head
    H: int           # key heads
    K: int           # key head dim
    HV: int          # value heads
    V: int           # value head dim
    W: int           # conv kernel
    I: int           # SwiGLU hidden size
    tied: bool       # no lm_head in the checkpoint: logits use wte
    packed_mlp: bool  # mlp.swiglu.w12 (= [w1; w2]) instead of w1 and w2

    @property
    def key_dim(self) -> int:
        return self.H * self.K

    @property
    def value_dim(self) -> int:
        return self.HV * self.V


def _shape(tensors: Mapping[str, SourceTensor], name: str, ndim: int) -> tuple[int, ...]:
    if name not in tensors:
        raise ConvertError(f"missing tensor {name} (needed to read the model's shape)")
    shape = tensors[name].shape
    if len(shape) != ndim:
        raise ConvertError(f"tensor {name} has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def infer_geometry(tensors: Mapping[str, SourceTensor], cfg: LitConfig | None) -> Geometry:
    """Reads the geometry off the embedding, layer 0 and the MLP; cross-checks it with the config."""
    vocab, d = _shape(tensors, "transformer.wte.weight", 2)
    p = "transformer.h.0."
    (H,) = _shape(tensors, p + "attn.A_log", 1)
    key_dim = _shape(tensors, p + "attn.q_proj.weight", 2)[0]
    V = _shape(tensors, p + "attn.f_proj.0.weight", 2)[0]
    value_dim = _shape(tensors, p + "attn.v_proj.weight", 2)[0]
    W = _shape(tensors, p + "attn.q_conv1d.weight", 3)[2]
    if H < 1 or key_dim % H:
        raise ConvertError(f"q_proj rows {key_dim} (transformer.h.0.attn.q_proj.weight) are not a multiple of "
                           f"the {H} heads of transformer.h.0.attn.A_log")
    if V < 1 or value_dim % V or (value_dim // V) % H:
        raise ConvertError(f"v_proj rows {value_dim} (transformer.h.0.attn.v_proj.weight) are not a multiple of "
                           f"head_v_dim {V} (rows of f_proj.0) times the {H} key heads")
    packed = p + "mlp.swiglu.w12.weight" in tensors and p + "mlp.swiglu.w1.weight" not in tensors
    if packed:
        rows = _shape(tensors, p + "mlp.swiglu.w12.weight", 2)[0]
        if rows % 2:
            raise ConvertError(f"tensor {p}mlp.swiglu.w12.weight has an odd number of rows ({rows})")
        I = rows // 2
    else:
        I = _shape(tensors, p + "mlp.swiglu.w1.weight", 2)[0]
    indices = layer_indices(tensors)
    n_layer = cfg.n_layer if cfg else (indices[-1] + 1 if indices else 0)
    geom = Geometry(n_layer=n_layer, d=d, vocab=vocab, H=H, K=key_dim // H, HV=value_dim // V, V=V, W=W, I=I,
                    tied="lm_head.weight" not in tensors, packed_mlp=packed)
    if cfg:
        for field, got, tensor in (("n_embd", d, "transformer.wte.weight"),
                                   ("padded_vocab_size", vocab, "transformer.wte.weight"),
                                   ("intermediate_size", I, p + ("mlp.swiglu.w12.weight" if packed
                                                                 else "mlp.swiglu.w1.weight"))):
            want = getattr(cfg, field)
            if got != want:
                raise ConvertError(f"config {field} = {want} but tensor {tensor} has shape "
                                   f"{list(tensors[tensor].shape)} (implies {got})")
    return geom


# ----------------------------------------------------------------------------- name map

# (lit_gpt suffix under transformer.h.{i}., gdnserve suffix under model.layers.{i}., shape of geometry)
_LAYER_MAP: list[tuple[str, str, Callable[[Geometry], tuple[int, ...]]]] = [
    ("norm_1.weight", "attn_norm.weight", lambda g: (g.d,)),
    ("attn.q_proj.weight", "attn.q_proj.weight", lambda g: (g.key_dim, g.d)),
    ("attn.k_proj.weight", "attn.k_proj.weight", lambda g: (g.key_dim, g.d)),
    ("attn.v_proj.weight", "attn.v_proj.weight", lambda g: (g.value_dim, g.d)),
    ("attn.b_proj.weight", "attn.b_proj.weight", lambda g: (g.key_dim, g.d)),
    ("attn.w_proj.weight", "attn.w_proj.weight", lambda g: (g.value_dim, g.d)),
    ("attn.f_proj.0.weight", "attn.f_proj.0.weight", lambda g: (g.V, g.d)),
    ("attn.f_proj.1.weight", "attn.f_proj.1.weight", lambda g: (g.key_dim, g.V)),
    ("attn.g_proj.0.weight", "attn.g_proj.0.weight", lambda g: (g.V, g.d)),
    ("attn.g_proj.1.weight", "attn.g_proj.1.weight", lambda g: (g.value_dim, g.V)),
    ("attn.g_proj.1.bias", "attn.g_proj.1.bias", lambda g: (g.value_dim,)),
    ("attn.q_conv1d.weight", "attn.q_conv1d.weight", lambda g: (g.key_dim, 1, g.W)),
    ("attn.k_conv1d.weight", "attn.k_conv1d.weight", lambda g: (g.key_dim, 1, g.W)),
    ("attn.v_conv1d.weight", "attn.v_conv1d.weight", lambda g: (g.value_dim, 1, g.W)),
    ("attn.A_log", "attn.A_log", lambda g: (g.H,)),
    ("attn.dt_bias", "attn.dt_bias", lambda g: (g.key_dim,)),
    ("attn.o_norm.weight", "attn.o_norm.weight", lambda g: (g.V,)),
    ("attn.o_proj.weight", "attn.o_proj.weight", lambda g: (g.d, g.value_dim)),
    ("norm_2.weight", "mlp_norm.weight", lambda g: (g.d,)),
    # SwiGLU: w3(silu(w1 x) * w2 x)
    ("mlp.swiglu.w1.weight", "mlp.gate_proj.weight", lambda g: (g.I, g.d)),
    ("mlp.swiglu.w2.weight", "mlp.up_proj.weight", lambda g: (g.I, g.d)),
    ("mlp.swiglu.w3.weight", "mlp.down_proj.weight", lambda g: (g.d, g.I)),
]
_PACKED_MLP = "mlp.swiglu.w12.weight"


@dataclass(frozen=True)
class Mapped:
    """One gdnserve tensor: its name and shape, the source tensor, and rows [lo, hi) of it (or all)."""
    name: str
    shape: tuple[int, ...]
    source: str
    rows: tuple[int, int] | None = None


def source_shapes(g: Geometry) -> dict[str, tuple[int, ...]]:
    """Every tensor the lit_gpt checkpoint of geometry g must hold, with its shape."""
    out = {"transformer.wte.weight": (g.vocab, g.d)}
    for i in range(g.n_layer):
        p = f"transformer.h.{i}."
        for src, _, shape in _LAYER_MAP:
            if g.packed_mlp and src in ("mlp.swiglu.w1.weight", "mlp.swiglu.w2.weight"):
                continue
            out[p + src] = shape(g)
        if g.packed_mlp:
            out[p + _PACKED_MLP] = (2 * g.I, g.d)
    out["transformer.ln_f.weight"] = (g.d,)
    if not g.tied:
        out["lm_head.weight"] = (g.vocab, g.d)
    return out


def mapping(g: Geometry) -> list[Mapped]:
    """The gdnserve tensors in checkpoint order (DEVELOPERS.md "Tensors") and where each comes from."""
    out = [Mapped("model.embeddings.weight", (g.vocab, g.d), "transformer.wte.weight")]
    for i in range(g.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        for src, dst, shape in _LAYER_MAP:
            if g.packed_mlp and src == "mlp.swiglu.w1.weight":
                out.append(Mapped(q + dst, shape(g), p + _PACKED_MLP, (0, g.I)))
            elif g.packed_mlp and src == "mlp.swiglu.w2.weight":
                out.append(Mapped(q + dst, shape(g), p + _PACKED_MLP, (g.I, 2 * g.I)))
            else:
                out.append(Mapped(q + dst, shape(g), p + src))
    out.append(Mapped("model.norm.weight", (g.d,), "transformer.ln_f.weight"))
    if not g.tied:
        out.append(Mapped("lm_head.weight", (g.vocab, g.d), "lm_head.weight"))
    return out


def _natural(name: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _hint(name: str) -> str:
    if re.search(r"\.(q|k|v)_conv1d\.bias$", name):
        return " (short-conv bias: conv_bias=True is not supported)"
    if re.search(r"(norm_1|norm_2|ln_f|o_norm)\.bias$", name):
        return " (a norm bias: LayerNorm is not supported, GDN-2 uses RMSNorm)"
    if name.endswith(".bias"):
        return " (a bias the GDN-2 layout does not have: only attn.g_proj.1 has one)"
    return ""


def check_tensors(tensors: Mapping[str, SourceTensor], g: Geometry, max_lines: int = 20) -> None:
    """Raises one ConvertError listing unknown tensors, missing tensors and wrong shapes by name."""
    expected = source_shapes(g)
    problems = []
    for name in sorted(tensors, key=_natural):
        if name not in expected:
            problems.append(f"unknown tensor {name}{_hint(name)}")
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"missing tensor {name} (expected shape {list(shape)})")
        elif tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape)
            extra = ""
            if name.endswith(("attn.k_proj.weight", "attn.b_proj.weight", "attn.v_proj.weight",
                              "attn.w_proj.weight")) and len(got) == 2 and got[0] % shape[0] == 0 \
                    and got[0] > shape[0]:
                extra = (f" (a multiple, {got[0] // shape[0]}x: GatedDeltaNet2Plus layers with Householder "
                         "products are not supported yet)")
            problems.append(f"tensor {name} has shape {list(got)}, expected {list(shape)}{extra}")
    if problems:
        more = f"\n  ... and {len(problems) - max_lines} more" if len(problems) > max_lines else ""
        raise ConvertError("the checkpoint does not match the GDN-2 lit_gpt layout "
                           f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems[:max_lines]) + more)


def produce(mapped: Mapped, tensors: Mapping[str, SourceTensor]) -> Callable[[], np.ndarray]:
    """A function returning the float32 values of gdnserve tensor `mapped`."""
    src = tensors[mapped.source]

    def run() -> np.ndarray:
        x = src.load()
        if mapped.rows is not None:
            x = x[mapped.rows[0]:mapped.rows[1]]
        return x

    return run
