"""PyTorch GDN-2 language model in gdnserve's format (training and evaluation).

Follows ../shared/DESIGN.md section 1 and DEVELOPERS.md "Exact conventions";
parameter names are the checkpoint tensor names of DEVELOPERS.md "Tensors", so
`model.state_dict()` is a gdnserve checkpoint (without lm_head.weight when the
embeddings are tied).

The recurrence runs in float32 (float64 if its inputs are float64) whatever
autocast says, in one of two forms that compute the same function:
- `recurrent_gdn2`: the definition, one token at a time (for tests);
- `chunk_gdn2`: the chunkwise form of DESIGN 1.3 with chunks of C tokens
  (default 16). Intra-chunk decays exp(G_t - G_i) (i <= t) are formed pairwise,
  so no exponent is ever positive however negative the log decays are; the
  unit lower-triangular system is solved with a triangular solve; the chunks'
  affine state transitions are then composed by a parallel (log-depth) scan
  (or, impl="loop", chained one chunk after another).

Shapes: B batch, T tokens, d hidden, H key heads of dim K, HV value heads of
dim V, key_dim = H*K, value_dim = HV*V.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GDN2Config:
    """The fields of config.json (DEVELOPERS.md), every one written on export."""
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    num_v_heads: int = 4
    head_dim: int = 64
    expand_v: int = 1
    intermediate_size: int = 704
    conv_size: int = 4
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    allow_neg_eigval: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    architecture: str = field(default="gdn2")

    @property
    def head_v_dim(self) -> int:
        return self.head_dim * self.expand_v

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.num_v_heads * self.head_v_dim

    def to_json(self) -> dict:
        d = asdict(self)
        return {"architecture": d.pop("architecture"), **d}

    @classmethod
    def from_json(cls, raw: dict) -> "GDN2Config":
        raw = dict(raw)
        raw.pop("layer_types", None)
        return cls(**raw)


# ----------------------------------------------------------------------------- recurrence

def recurrent_gdn2(q, k, v, g, b, w, S0=None):
    """The GDN-2 recurrence (DESIGN 1.2), token by token.

    q, k, g, b [B, T, H, K]; v, w [B, T, H, V] (value heads already matched to key heads);
    S0 [B, H, K, V] or None (zeros). Returns o [B, T, H, V] and the final state [B, H, K, V].
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V) if S0 is None else S0.clone()
    outs = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[..., None]
        u = torch.einsum("bhkv,bhk->bhv", S, b[:, t] * k[:, t])
        S = S + k[:, t][..., None] * (w[:, t] * v[:, t] - u)[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, dim=1), S


def chunk_gdn2(q, k, v, g, b, w, S0=None, chunk: int = 16, impl: str | None = None):
    """The same function as `recurrent_gdn2`, chunkwise (DESIGN 1.3); see the module docstring.

    impl "scan" (default, CHUNK_IMPL): the chunks' state transitions S_{c+1} = P_c S_c + Q_c are
    composed by a log-depth parallel scan, so the whole sequence is a few dozen batched kernels;
    "loop": one chunk after another."""
    impl = impl or CHUNK_IMPL
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk
    pad = (-T) % C
    if pad:  # padded tokens: k = b = w = v = 0 and g = 0 leave the state unchanged
        q, k, v, g, b, w = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g, b, w))
    n = (T + pad) // C

    def chunks(x):  # [B, n*C, H, D] -> [B, H, n, C, D]
        return x.reshape(B, n, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    q, k, v, g, b, w = map(chunks, (q, k, v, g, b, w))
    G = torch.cumsum(g, dim=3)                       # inclusive, <= 0, non-increasing in t
    e = b * k
    z = w * v
    idx = torch.arange(C, device=q.device)
    incl = idx[:, None] >= idx[None, :]              # i <= t
    strict = idx[:, None] > idx[None, :]             # i < t
    diff = G[..., :, None, :] - G[..., None, :, :]   # [B, H, n, C(t), C(i), K] = G_t - G_i
    decay = torch.exp(torch.where(incl[:, :, None], diff, float("-inf")))
    kd = k[..., None, :, :] * decay                  # k_i * exp(G_t - G_i)
    A = torch.einsum("bhntk,bhntik->bhnti", e, kd).masked_fill(~strict, 0.0)
    M = torch.einsum("bhntk,bhntik->bhnti", q, kd)   # lower incl. diagonal (decay is 0 above)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    L = A + eye
    U = torch.linalg.solve_triangular(L, z, upper=False, unitriangular=True)                     # T Z
    Wm = torch.linalg.solve_triangular(L, e * torch.exp(G), upper=False, unitriangular=True)     # T E~
    Qt = q * torch.exp(G)
    Kh = (k * torch.exp(G[..., -1:, :] - G)).transpose(-1, -2)                                   # [.., K, C]
    gC = torch.exp(G[..., -1, :])                                                                # [B, H, n, K]
    if S0 is None:
        S0 = q.new_zeros(B, H, K, V)
    if impl == "loop":
        S = S0
        outs = []
        for c in range(n):
            N = U[:, :, c] - Wm[:, :, c] @ S
            outs.append(Qt[:, :, c] @ S + M[:, :, c] @ N)
            S = gC[:, :, c, :, None] * S + Kh[:, :, c] @ N
        o = torch.stack(outs, dim=2)                 # [B, H, n, C, V]
    else:
        # S_{c+1} = P_c S_c + Q_c with P_c = Diag(exp(G_C)) - K^^T T E~, Q_c = K^^T T Z.
        P = torch.diag_embed(gC) - Kh @ Wm           # [B, H, n, K, K]
        Q = Kh @ U                                   # [B, H, n, K, V]
        d = 1
        while d < n:  # inclusive scan: afterwards (P_c, Q_c) maps S_0 to the state after chunk c
            Pn = P[:, :, d:] @ P[:, :, :-d]
            Qn = P[:, :, d:] @ Q[:, :, :-d] + Q[:, :, d:]
            P = torch.cat([P[:, :, :d], Pn], dim=2)
            Q = torch.cat([Q[:, :, :d], Qn], dim=2)
            d *= 2
        S_end = P @ S0[:, :, None] + Q               # state after each chunk
        S_start = torch.cat([S0[:, :, None], S_end[:, :, :-1]], dim=2)
        N = U - Wm @ S_start
        o = Qt @ S_start + M @ N
        S = S_end[:, :, -1]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, V)[:, :T]
    return o, S


CHUNK_IMPL = "scan"


# ----------------------------------------------------------------------------- modules

def rms_norm(x, weight, eps: float):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, in float32 (float64 stays float64)."""
    x = x if x.dtype == torch.float64 else x.float()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


@dataclass
class LayerState:
    """One layer's state of B sequences: S [B, HV, K, V] float32, conv [B, W-1, 2*key_dim+value_dim]."""
    S: torch.Tensor
    conv: torch.Tensor


class GDN2Mixer(nn.Module):
    def __init__(self, cfg: GDN2Config):
        super().__init__()
        self.cfg = cfg
        d, kd, vd, V, W = cfg.hidden_size, cfg.key_dim, cfg.value_dim, cfg.head_v_dim, cfg.conv_size
        self.q_proj = nn.Linear(d, kd, bias=False)
        self.k_proj = nn.Linear(d, kd, bias=False)
        self.v_proj = nn.Linear(d, vd, bias=False)
        self.b_proj = nn.Linear(d, kd, bias=False)
        self.w_proj = nn.Linear(d, vd, bias=False)
        self.f_proj = nn.Sequential(nn.Linear(d, V, bias=False), nn.Linear(V, kd, bias=False))
        self.g_proj = nn.Sequential(nn.Linear(d, V, bias=False), nn.Linear(V, vd, bias=True))
        self.q_conv1d = nn.Conv1d(kd, kd, W, groups=kd, bias=False)
        self.k_conv1d = nn.Conv1d(kd, kd, W, groups=kd, bias=False)
        self.v_conv1d = nn.Conv1d(vd, vd, W, groups=vd, bias=False)
        self.A_log = nn.Parameter(torch.zeros(cfg.num_heads))
        self.dt_bias = nn.Parameter(torch.zeros(kd))
        self.o_norm = RMSNorm(V, cfg.norm_eps)
        self.o_proj = nn.Linear(vd, d, bias=False)

    def initial_state(self, batch: int, device) -> LayerState:
        c = self.cfg
        return LayerState(torch.zeros(batch, c.num_v_heads, c.head_dim, c.head_v_dim, device=device),
                          torch.zeros(batch, c.conv_size - 1, 2 * c.key_dim + c.value_dim, device=device))

    def forward(self, h, state: LayerState | None = None, recurrent: bool = False, chunk: int = 16):
        """h [B, T, d] (pre-normed) -> y [B, T, d], new LayerState."""
        c = self.cfg
        B, T, _ = h.shape
        H, HV, K, V = c.num_heads, c.num_v_heads, c.head_dim, c.head_v_dim
        if state is None:
            state = self.initial_state(B, h.device)
        pre = torch.cat([self.q_proj(h), self.k_proj(h), self.v_proj(h)], dim=-1)        # [B, T, C]
        conv_w = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight], dim=0)
        padded = torch.cat([state.conv.to(pre.dtype), pre], dim=1)                         # [B, W-1+T, C]
        qkv = F.silu(F.conv1d(padded.transpose(1, 2), conv_w.to(pre.dtype), groups=conv_w.shape[0]))
        qkv = qkv.transpose(1, 2)
        new_conv = padded[:, T:] if pre.dtype == torch.float64 else padded[:, T:].float()
        f = self.f_proj(h)
        bt, wt, z = self.b_proj(h), self.w_proj(h), self.g_proj(h)
        dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=h.device.type, enabled=False):
            qkv = qkv.to(dtype)
            q = qkv[..., :c.key_dim].reshape(B, T, H, K)
            k = qkv[..., c.key_dim:2 * c.key_dim].reshape(B, T, H, K)
            v = qkv[..., 2 * c.key_dim:].reshape(B, T, HV, V)
            q = q / torch.sqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6) * K ** -0.5
            k = k / torch.sqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
            f = f.to(dtype) + self.dt_bias.to(dtype)
            g = -torch.exp(self.A_log.to(dtype))[:, None] * F.softplus(f.reshape(B, T, H, K), beta=1.0, threshold=20.0)
            b = torch.sigmoid(bt.to(dtype)).reshape(B, T, H, K) * (2.0 if c.allow_neg_eigval else 1.0)
            w = torch.sigmoid(wt.to(dtype)).reshape(B, T, HV, V)
            if HV != H:  # value head j uses key head j // (HV/H)
                q, k, g, b = (x.repeat_interleave(HV // H, dim=2) for x in (q, k, g, b))
            S0 = state.S.to(dtype)
            if recurrent:
                o, S = recurrent_gdn2(q, k, v, g, b, w, S0)
            else:
                o, S = chunk_gdn2(q, k, v, g, b, w, S0, chunk=chunk)
            o = rms_norm(o, self.o_norm.weight, c.norm_eps) * F.silu(z.to(dtype).reshape(B, T, HV, V))
        y = self.o_proj(o.reshape(B, T, c.value_dim))
        return y, LayerState(S, new_conv)


class SwiGLU(nn.Module):
    def __init__(self, cfg: GDN2Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GDN2Config):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = GDN2Mixer(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)


class Backbone(nn.Module):
    def __init__(self, cfg: GDN2Config):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class GDN2LM(nn.Module):
    """model.* and lm_head.* as in DEVELOPERS.md; forward(ids [B, T]) -> logits [B, T, vocab] float32."""

    def __init__(self, cfg: GDN2Config, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.dropout = dropout

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Training initialisation (small projections, GDN-style decays, open output gate)."""
        gen = torch.Generator().manual_seed(seed)
        c = self.cfg
        out_std = 0.02 / math.sqrt(2 * c.num_layers)
        for name, p in self.named_parameters():
            cpu = torch.empty(p.shape)
            if name.endswith("norm.weight"):
                cpu.fill_(1.0)
            elif name.endswith("A_log"):  # A ~ U(1, 16)
                cpu.uniform_(1.0, 16.0, generator=gen).log_()
            elif name.endswith("dt_bias"):  # softplus(dt_bias) = dt, log-uniform in [1e-3, 1e-1]
                dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                cpu.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith("g_proj.1.bias"):
                cpu.fill_(1.0)  # silu(1) = 0.73: the output gate starts open
            elif "conv1d" in name:
                bound = 1.0 / math.sqrt(c.conv_size)
                cpu.uniform_(-bound, bound, generator=gen)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                cpu.normal_(0.0, out_std, generator=gen)
            else:
                cpu.normal_(0.0, 0.02, generator=gen)
            p.copy_(cpu)

    def head_weight(self):
        return self.model.embeddings.weight if self.lm_head is None else self.lm_head.weight

    def initial_state(self, batch: int, device) -> list[LayerState]:
        return [blk.attn.initial_state(batch, device) for blk in self.model.layers]

    def forward(self, ids, state: list[LayerState] | None = None, recurrent: bool = False, chunk: int = 16):
        """ids [B, T] -> logits [B, T, vocab] float32 (float64 for a model cast with .double()), new states.

        `state` (None: fresh sequences) is the list of per-layer states a previous call returned."""
        x = self.model.embeddings(ids)
        new_state = []
        for i, blk in enumerate(self.model.layers):
            y, st = blk.attn(blk.attn_norm(x), None if state is None else state[i], recurrent=recurrent, chunk=chunk)
            x = x + F.dropout(y, self.dropout, self.training)
            x = x + F.dropout(blk.mlp(blk.mlp_norm(x)), self.dropout, self.training)
            new_state.append(st)
        logits = F.linear(self.model.norm(x), self.head_weight())
        return (logits if logits.dtype == torch.float64 else logits.float()), new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
