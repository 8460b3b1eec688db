#!/usr/bin/env python3
"""Independent float64 numpy reference of a whole GDN-2 model, in the recurrent form.

Follows ../shared/DESIGN.md section 1.2 and DEVELOPERS.md "Exact conventions"
literally: every token updates the state S [K, V] of each value head one at a
time, exactly the definition, with no chunking. Weights (F32, BF16 or F16) are
upcast to float64 and all arithmetic is float64, so the result is the
"true" value that float32 backends are measured against.

Shapes: T tokens, d hidden, H key heads of dim K, HV value heads of dim V,
key_dim = H*K, value_dim = HV*V, conv kernel W, C = 2*key_dim + value_dim conv channels.

    model = RefModel.load("models/tiny")
    logits, state = model.forward([3, 4, 5])      # logits [3, vocab] float64
    more, state = model.forward([6], state)       # continues the same sequence

CLI: gdn2_ref.py --model DIR --ids 3,4,5 --out logits.npy  (float32 [T, vocab])
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import safetensors_np  # noqa: E402


class ModelError(ValueError):
    """Invalid config.json or weights; the message names the field or tensor."""


# ----------------------------------------------------------------------------- config

_REQUIRED = object()
# field -> (allowed python types, default)
_FIELDS = {
    "architecture": ((str,), _REQUIRED),
    "vocab_size": ((int,), _REQUIRED),
    "hidden_size": ((int,), _REQUIRED),
    "num_layers": ((int,), _REQUIRED),
    "num_heads": ((int,), _REQUIRED),
    "num_v_heads": ((int,), None),  # None: num_heads
    "head_dim": ((int,), _REQUIRED),
    "expand_v": ((int, float), 1),
    "intermediate_size": ((int,), _REQUIRED),
    "conv_size": ((int,), 4),
    "norm_eps": ((int, float), 1e-5),
    "tie_word_embeddings": ((bool,), False),
    "allow_neg_eigval": ((bool,), False),
    "bos_token_id": ((int,), 1),
    "eos_token_id": ((int,), 2),
    "layer_types": ((list,), None),  # None: all "gdn2"
}


@dataclass(frozen=True)
class Config:
    """A validated config.json (DEVELOPERS.md "config.json")."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int      # H
    num_v_heads: int    # HV
    head_dim: int       # K
    head_v_dim: int     # V = head_dim * expand_v
    intermediate_size: int
    conv_size: int      # W
    norm_eps: float
    tie_word_embeddings: bool
    allow_neg_eigval: bool
    bos_token_id: int
    eos_token_id: int

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.num_v_heads * self.head_v_dim


def parse_config(raw: dict) -> Config:
    """Validates a parsed config.json; raises ModelError naming the first bad field."""
    if not isinstance(raw, dict):
        raise ModelError("config.json: not a JSON object")
    for name in raw:
        if name not in _FIELDS:
            raise ModelError(f"config.json: unknown field '{name}'")
    c = {}
    for name, (types, default) in _FIELDS.items():
        if name not in raw:
            if default is _REQUIRED:
                raise ModelError(f"config.json: missing field '{name}'")
            c[name] = default
            continue
        value = raw[name]
        # bool is a subclass of int: accept it only where bool is the type.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ModelError(f"config.json: field '{name}' has the wrong type ({type(value).__name__})")
        c[name] = value

    def bad(name: str, why: str) -> ModelError:
        return ModelError(f"config.json: field '{name}' {why} (got {c[name]!r})")

    if c["architecture"] != "gdn2":
        raise bad("architecture", 'must be "gdn2"')
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim",
                 "intermediate_size", "conv_size"):
        if c[name] < 1:
            raise bad(name, "must be positive")
    if c["num_v_heads"] is None:
        c["num_v_heads"] = c["num_heads"]
    if c["num_v_heads"] < 1 or c["num_v_heads"] % c["num_heads"]:
        raise bad("num_v_heads", "must be a positive multiple of num_heads")
    head_v = c["head_dim"] * c["expand_v"]
    if c["expand_v"] <= 0 or head_v != int(head_v):
        raise bad("expand_v", "must be positive with head_dim * expand_v an integer")
    if not c["norm_eps"] > 0:
        raise bad("norm_eps", "must be positive")
    for name in ("bos_token_id", "eos_token_id"):
        if not 0 <= c[name] < c["vocab_size"]:
            raise bad(name, "must be a token id below vocab_size")
    types = c["layer_types"]
    if types is not None:
        if len(types) != c["num_layers"]:
            raise bad("layer_types", "must have num_layers entries")
        for t in types:
            if t == "swa":
                raise bad("layer_types", 'has "swa": not supported yet')
            if t != "gdn2":
                raise bad("layer_types", 'entries must be "gdn2"')
    return Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_layers"],
        num_heads=c["num_heads"], num_v_heads=c["num_v_heads"], head_dim=c["head_dim"],
        head_v_dim=int(head_v), intermediate_size=c["intermediate_size"], conv_size=c["conv_size"],
        norm_eps=float(c["norm_eps"]), tie_word_embeddings=c["tie_word_embeddings"],
        allow_neg_eigval=c["allow_neg_eigval"], bos_token_id=c["bos_token_id"],
        eos_token_id=c["eos_token_id"])


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `cfg` must hold, with its shape (DEVELOPERS.md "Tensors")."""
    d, kd, vd, V, W, I = (cfg.hidden_size, cfg.key_dim, cfg.value_dim, cfg.head_v_dim,
                          cfg.conv_size, cfg.intermediate_size)
    shapes = {"model.embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,),
            p + "attn.q_proj.weight": (kd, d),
            p + "attn.k_proj.weight": (kd, d),
            p + "attn.v_proj.weight": (vd, d),
            p + "attn.b_proj.weight": (kd, d),
            p + "attn.w_proj.weight": (vd, d),
            p + "attn.f_proj.0.weight": (V, d),
            p + "attn.f_proj.1.weight": (kd, V),
            p + "attn.g_proj.0.weight": (V, d),
            p + "attn.g_proj.1.weight": (vd, V),
            p + "attn.g_proj.1.bias": (vd,),
            p + "attn.q_conv1d.weight": (kd, 1, W),
            p + "attn.k_conv1d.weight": (kd, 1, W),
            p + "attn.v_conv1d.weight": (vd, 1, W),
            p + "attn.A_log": (cfg.num_heads,),
            p + "attn.dt_bias": (kd,),
            p + "attn.o_norm.weight": (V,),
            p + "attn.o_proj.weight": (d, vd),
            p + "mlp_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (I, d),
            p + "mlp.up_proj.weight": (I, d),
            p + "mlp.down_proj.weight": (d, I),
        })
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


# ----------------------------------------------------------------------------- math

def softplus(x: np.ndarray) -> np.ndarray:
    """x for x > 20, else log1p(exp(x)) (the convention, elementwise)."""
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow, elementwise."""
    return np.exp(-np.logaddexp(0.0, -x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; x [..., n], weight [n]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def causal_conv(x: np.ndarray, weight: np.ndarray, conv_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal depthwise conv1d without bias (no activation).

    x [T, C] inputs; weight [C, W]; conv_state [W-1, C], the W-1 inputs before x (row 0 oldest).
    y_t[c] = sum_j weight[c, j] * x_{t-W+1+j}[c]. Returns y [T, C] and the new conv state [W-1, C].
    """
    T, W = x.shape[0], weight.shape[1]
    padded = np.concatenate([conv_state, x], axis=0)  # [W-1+T, C]; padded[t + j] = x_{t-W+1+j}
    y = sum(weight[:, j] * padded[j:j + T] for j in range(W))
    return y, padded[T:].copy()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x / sqrt(sum x^2 + 1e-6) over the last axis."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def recurrence(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, b: np.ndarray,
               w: np.ndarray, S0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The GDN-2 recurrence (DESIGN.md 1.2), one token at a time, for every value head.

    q, k, g, b [T, HV, K]: query, key, log decay, erase gate, already mapped to value heads;
    v, w [T, HV, V]: values and write gate; S0 [HV, K, V]: the state before the first token.
    Per token and head: S <- Diag(exp(g)) S; u = S^T (b*k); S <- S + k (w*v - u)^T; o = S^T q.
    Returns o [T, HV, V] and the final state [HV, K, V] (S0 is not modified).
    """
    S = S0.copy()
    o = np.empty_like(v)
    for t in range(q.shape[0]):
        S *= np.exp(g[t])[:, :, None]
        u = np.einsum("hkv,hk->hv", S, b[t] * k[t])
        S += k[t][:, :, None] * (w[t] * v[t] - u)[:, None, :]
        o[t] = np.einsum("hkv,hk->hv", S, q[t])
    return o, S


@dataclass
class LayerState:
    """State of one sequence in one layer: S [HV, K, V] and the conv state [W-1, C] (q, k, v channels)."""
    S: np.ndarray
    conv: np.ndarray


@dataclass
class MixerInputs:
    """Everything the recurrence and the output gate need, for T tokens of one layer.

    q, k, g, b [T, H, K] per key head; v, w, z [T, HV, V] per value head.
    """
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray
    b: np.ndarray
    w: np.ndarray
    z: np.ndarray


# ----------------------------------------------------------------------------- model

class RefModel:
    """A GDN-2 model held as float64 weights; forward in the recurrent form."""

    def __init__(self, cfg: Config, weights: dict[str, np.ndarray]):
        """cfg: validated config; weights: name -> array with the shapes of `expected_shapes`."""
        self.cfg = cfg
        self.w = {name: np.asarray(x, dtype=np.float64) for name, x in weights.items()}

    @classmethod
    def load(cls, model_dir: str | Path) -> "RefModel":
        """Loads config.json and model.safetensors (or a sharded index); validates names and shapes."""
        model_dir = Path(model_dir)
        try:
            raw = json.loads((model_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"config.json: {e}") from None
        cfg = parse_config(raw)
        weights = safetensors_np.load_model(model_dir)
        shapes = expected_shapes(cfg)
        for name, shape in shapes.items():
            if name not in weights:
                raise ModelError(f"missing tensor {name}")
            if tuple(weights[name].shape) != shape:
                raise ModelError(f"tensor {name} has shape {list(weights[name].shape)}, expected {list(shape)}")
        for name in weights:
            if name not in shapes:
                raise ModelError(f"unexpected tensor {name}")
        return cls(cfg, weights)

    def initial_state(self) -> list[LayerState]:
        """Zero state of a fresh sequence, one LayerState per layer."""
        c = self.cfg
        channels = 2 * c.key_dim + c.value_dim
        return [LayerState(np.zeros((c.num_v_heads, c.head_dim, c.head_v_dim)),
                           np.zeros((c.conv_size - 1, channels))) for _ in range(c.num_layers)]

    def mixer_inputs(self, layer: int, h: np.ndarray, conv_state: np.ndarray) -> tuple[MixerInputs, np.ndarray]:
        """Projections, short conv, q/k normalisation and gates of layer `layer`.

        h [T, d] is the pre-normed input, conv_state [W-1, C]. Returns the inputs and the new conv state.
        """
        c, p = self.cfg, f"model.layers.{layer}.attn."
        W = self.w
        T, H, HV, K, V = h.shape[0], c.num_heads, c.num_v_heads, c.head_dim, c.head_v_dim
        lin = lambda name, x: x @ W[p + name].T  # noqa: E731  (nn.Linear, weight [out, in])
        pre = np.concatenate([lin("q_proj.weight", h), lin("k_proj.weight", h), lin("v_proj.weight", h)], axis=1)
        conv_w = np.concatenate([W[p + n][:, 0, :] for n in ("q_conv1d.weight", "k_conv1d.weight",
                                                               "v_conv1d.weight")], axis=0)  # [C, W]
        qkv, new_conv = causal_conv(pre, conv_w, conv_state)
        qkv = silu(qkv)
        q = l2_normalize(qkv[:, :c.key_dim].reshape(T, H, K)) * K ** -0.5
        k = l2_normalize(qkv[:, c.key_dim:2 * c.key_dim].reshape(T, H, K))
        v = qkv[:, 2 * c.key_dim:].reshape(T, HV, V)
        f = lin("f_proj.1.weight", lin("f_proj.0.weight", h)) + W[p + "dt_bias"]
        g = -np.exp(W[p + "A_log"])[None, :, None] * softplus(f.reshape(T, H, K))
        b = sigmoid(lin("b_proj.weight", h)).reshape(T, H, K) * (2.0 if c.allow_neg_eigval else 1.0)
        w = sigmoid(lin("w_proj.weight", h)).reshape(T, HV, V)
        z = (lin("g_proj.1.weight", lin("g_proj.0.weight", h)) + W[p + "g_proj.1.bias"]).reshape(T, HV, V)
        return MixerInputs(q=q, k=k, v=v, g=g, b=b, w=w, z=z), new_conv

    def _mixer(self, layer: int, h: np.ndarray, st: LayerState) -> tuple[np.ndarray, LayerState]:
        """GDN-2 mixer: h [T, d] -> y [T, d], and the layer's new state."""
        c, p = self.cfg, f"model.layers.{layer}.attn."
        m, conv = self.mixer_inputs(layer, h, st.conv)
        head_of = np.arange(c.num_v_heads) // (c.num_v_heads // c.num_heads)  # value head -> key head
        o, S = recurrence(m.q[:, head_of], m.k[:, head_of], m.v, m.g[:, head_of], m.b[:, head_of], m.w, st.S)
        o = rms_norm(o, self.w[p + "o_norm.weight"], c.norm_eps) * silu(m.z)
        y = o.reshape(h.shape[0], c.value_dim) @ self.w[p + "o_proj.weight"].T
        return y, LayerState(S, conv)

    def _mlp(self, layer: int, h: np.ndarray) -> np.ndarray:
        """SwiGLU: h [T, d] -> down(silu(gate(h)) * up(h)) [T, d]."""
        p = f"model.layers.{layer}.mlp."
        gate, up = h @ self.w[p + "gate_proj.weight"].T, h @ self.w[p + "up_proj.weight"].T
        return (silu(gate) * up) @ self.w[p + "down_proj.weight"].T

    def forward(self, ids, state: list[LayerState] | None = None,
                log: Callable[[str], None] | None = None) -> tuple[np.ndarray, list[LayerState]]:
        """Runs tokens `ids` (T >= 1) from `state` (None: a fresh sequence).

        Returns logits [T, vocab] float64 for every position and the state after the last token;
        the given state is not modified. `log`, if given, is called with a progress line per layer.
        """
        c = self.cfg
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size})")
        state = self.initial_state() if state is None else state
        x = self.w["model.embeddings.weight"][ids]  # [T, d]
        new_state = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            y, st = self._mixer(i, rms_norm(x, self.w[p + "attn_norm.weight"], c.norm_eps), state[i])
            x = x + y
            x = x + self._mlp(i, rms_norm(x, self.w[p + "mlp_norm.weight"], c.norm_eps))
            new_state.append(st)
            if log:
                log(f"layer {i + 1}/{c.num_layers} done")
        head = self.w["model.embeddings.weight" if c.tie_word_embeddings else "lm_head.weight"]
        logits = rms_norm(x, self.w["model.norm.weight"], c.norm_eps) @ head.T
        return logits, new_state


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GDN-2 float64 reference forward (recurrent form).")
    ap.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    ap.add_argument("--ids", required=True, help="comma-separated token ids, e.g. 3,4,5")
    ap.add_argument("--out", required=True, help="output .npy: float32 logits [T, vocab] of every position")
    args = ap.parse_args(argv)
    err = lambda msg: print(f"gdn2_ref: {msg}", file=sys.stderr)  # noqa: E731
    try:
        ids = [int(s) for s in args.ids.split(",") if s.strip()]
        start = time.time()
        model = RefModel.load(args.model)
        c = model.cfg
        err(f"loaded {args.model}: {c.num_layers} layers, d={c.hidden_size}, H={c.num_heads}, "
            f"HV={c.num_v_heads}, K={c.head_dim}, V={c.head_v_dim}, vocab={c.vocab_size} "
            f"({time.time() - start:.1f} s)")
        start = time.time()
        logits, _ = model.forward(ids, log=err)
    except (ValueError, OSError) as e:
        err(str(e))
        return 1
    np.save(args.out, logits.astype(np.float32))
    err(f"{len(ids)} tokens in {time.time() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
