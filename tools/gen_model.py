#!/usr/bin/env python3
"""Deterministic random GDN-2 models for tests and benchmarks.

    gen_model.py --preset NAME --out DIR [--seed N] [--dtype f32|bf16|f16] [--shards N] [--tokenizer FILE]
    gen_model.py --suite tests --out DIR [--seed N] [--tokenizer FILE]  # DIR/tiny, DIR/tiny_gva, DIR/tiny_sharded
    gen_model.py --preset NAME --out DIR --tokenizer-only  # just DIR/tokenizer.model
    gen_model.py --list                                 # presets and their sizes

Each model directory gets config.json, model.safetensors (or shards and an
index) and a tokenizer.model trained by tools/train_tokenizer.sh (needs
spm_train), or copied from --tokenizer FILE (a tokenizer.model with exactly
the preset's vocab_size pieces, e.g. one written here by --tokenizer-only, for
a machine without spm_train). The seed is random unless given and is printed
("gen_model: seed=N"); the same seed gives byte-identical files (the
tokenizer's recorded training paths are normalised).

Only numpy is needed besides the standard library. Single-file models are
written tensor by tensor (the 1.3B preset: a few GB of memory, progress per
layer).

The initialisation gives non-trivial dynamics: log decays g from about -1e-4 to
-20 (a few below -50), erase/write gates from near 0 to near 1, logits with std of order 1.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS / "common"))
import safetensors_np  # noqa: E402


@dataclass(frozen=True)
class Preset:
    """Architecture and storage of a generated model (config.json fields, DEVELOPERS.md)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_v_heads: int | None = None  # None: num_heads
    expand_v: int = 1
    conv_size: int = 4
    tie_word_embeddings: bool = False
    allow_neg_eigval: bool = False
    dtype: str = "f32"
    shards: int = 1
    big: bool = False  # several GB; never part of a suite


PRESETS = {
    "tiny": Preset(hidden_size=64, num_layers=2, num_heads=2, head_dim=16, intermediate_size=128, vocab_size=512),
    "tiny_gva": Preset(hidden_size=64, num_layers=2, num_heads=2, num_v_heads=4, head_dim=16, expand_v=2,
                       intermediate_size=128, vocab_size=512, tie_word_embeddings=True,
                       allow_neg_eigval=True, dtype="bf16"),
    "tiny_sharded": Preset(hidden_size=64, num_layers=2, num_heads=2, head_dim=16, intermediate_size=128,
                           vocab_size=512, dtype="f16", shards=2),
    # ~108M parameters, for benchmarks.
    "mid": Preset(hidden_size=768, num_layers=12, num_heads=6, head_dim=128, intermediate_size=2048,
                  vocab_size=4096, dtype="bf16"),
    # The official GDN-2 1.3B shape (~1.45B parameters with the untied lm_head; 2.9 GB in bf16).
    "gdn2_1.3b": Preset(hidden_size=2304, num_layers=18, num_heads=16, head_dim=128, intermediate_size=6208,
                        vocab_size=32000, dtype="bf16", big=True),
}
SUITES = {"tests": ("tiny", "tiny_gva", "tiny_sharded")}
DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}

# Initialisation scales (see the module docstring for the dynamics they aim at).
GATE_SCALE = 3.0    # b~, w~ ~ N(0, 3^2): sigmoid spans ~0.003 .. ~0.997
DECAY_SCALE = 2.0   # f ~ N(0, 2^2) before dt_bias: with A in [1, 16], g reaches below -20
NORM_NOISE = 0.1    # norm weights ~ 1 + N(0, 0.1^2)


def config_of(p: Preset) -> dict:
    """config.json contents of preset p (every field written explicitly)."""
    return {
        "architecture": "gdn2",
        "vocab_size": p.vocab_size,
        "hidden_size": p.hidden_size,
        "num_layers": p.num_layers,
        "num_heads": p.num_heads,
        "num_v_heads": p.num_v_heads or p.num_heads,
        "head_dim": p.head_dim,
        "expand_v": p.expand_v,
        "intermediate_size": p.intermediate_size,
        "conv_size": p.conv_size,
        "norm_eps": 1e-5,
        "tie_word_embeddings": p.tie_word_embeddings,
        "allow_neg_eigval": p.allow_neg_eigval,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def tensor_specs(p: Preset) -> dict[str, tuple[tuple[int, ...], str, float]]:
    """Every tensor of preset p in checkpoint order: name -> (shape, init, scale).

    init "normal": N(0, (scale / sqrt(fan_in))^2) with fan_in the last dim (nn.Linear [out, in]);
    "norm": 1 + N(0, NORM_NOISE^2); "bias": N(0, scale^2); "A_log": log U(1, 16);
    "dt_bias": softplus^-1(dt), dt log-uniform in [1e-3, 1e-1].
    """
    d, H, K, W, I = p.hidden_size, p.num_heads, p.head_dim, p.conv_size, p.intermediate_size
    V, HV = K * p.expand_v, p.num_v_heads or p.num_heads
    kd, vd = H * K, HV * V
    # Embedding std 1; when tied it is also lm_head, and std d^-1/2 keeps the logits' std of order 1.
    specs = {"model.embeddings.weight": ((p.vocab_size, d), "normal", 1.0 if p.tie_word_embeddings else d ** 0.5)}
    for i in range(p.num_layers):
        a, m = f"model.layers.{i}.attn.", f"model.layers.{i}.mlp."
        specs.update({
            f"model.layers.{i}.attn_norm.weight": ((d,), "norm", 0),
            a + "q_proj.weight": ((kd, d), "normal", 1.0),
            a + "k_proj.weight": ((kd, d), "normal", 1.0),
            a + "v_proj.weight": ((vd, d), "normal", 1.0),
            a + "b_proj.weight": ((kd, d), "normal", GATE_SCALE),
            a + "w_proj.weight": ((vd, d), "normal", GATE_SCALE),
            a + "f_proj.0.weight": ((V, d), "normal", 1.0),
            a + "f_proj.1.weight": ((kd, V), "normal", DECAY_SCALE),
            a + "g_proj.0.weight": ((V, d), "normal", 1.0),
            a + "g_proj.1.weight": ((vd, V), "normal", 1.0),
            a + "g_proj.1.bias": ((vd,), "bias", 0.5),
            a + "q_conv1d.weight": ((kd, 1, W), "normal", 1.0),
            a + "k_conv1d.weight": ((kd, 1, W), "normal", 1.0),
            a + "v_conv1d.weight": ((vd, 1, W), "normal", 1.0),
            a + "A_log": ((H,), "A_log", 0),
            a + "dt_bias": ((kd,), "dt_bias", 0),
            a + "o_norm.weight": ((V,), "norm", 0),
            a + "o_proj.weight": ((d, vd), "normal", 1.0),
            f"model.layers.{i}.mlp_norm.weight": ((d,), "norm", 0),
            m + "gate_proj.weight": ((I, d), "normal", 1.0),
            m + "up_proj.weight": ((I, d), "normal", 1.0),
            m + "down_proj.weight": ((d, I), "normal", 1.0),
        })
    specs["model.norm.weight"] = ((d,), "norm", 0)
    if not p.tie_word_embeddings:
        specs["lm_head.weight"] = ((p.vocab_size, d), "normal", 1.0)
    return specs


def make_tensor(rng: np.random.Generator, shape: tuple[int, ...], init: str, scale: float) -> np.ndarray:
    """One random float32 tensor (see tensor_specs), drawn from rng."""
    if init == "normal":
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(scale / np.sqrt(shape[-1]))
        return x
    if init == "norm":
        return 1 + rng.standard_normal(shape, dtype=np.float32) * np.float32(NORM_NOISE)
    if init == "bias":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    if init == "A_log":
        return np.log(rng.uniform(1, 16, shape)).astype(np.float32)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))  # dt_bias
    return (dt + np.log(-np.expm1(-dt))).astype(np.float32)


def make_weights(p: Preset, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights of preset p (see tensor_specs), drawn from rng in checkpoint order."""
    return {name: make_tensor(rng, shape, init, scale) for name, (shape, init, scale) in tensor_specs(p).items()}


def _encode_fast(x: np.ndarray, dtype: str) -> np.ndarray:
    """safetensors_np.encode, with BF16 rounding in uint32 (same bits; ~10x faster) when x has no NaN."""
    if dtype != "BF16" or np.isnan(x).any():
        return safetensors_np.encode(x, dtype)
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Round to nearest even. No overflow: non-NaN bits are at most 0xFF800000 (-inf).
    r = bits >> 16
    r &= 1
    r += np.uint32(0x7FFF)
    r += bits
    r >>= 16
    return r.astype(np.uint16)


def _write_single_file(p: Preset, rng: np.random.Generator, path: Path, dtype: str,
                       metadata: dict[str, str], progress: bool) -> int:
    """Draws preset p's tensors in checkpoint order and writes each as soon as it is made.

    The same bytes as make_weights + safetensors_np.save_file (header, order, alignment,
    rounding), without holding the model in memory. Returns the parameter count.
    """
    specs = tensor_specs(p)
    item = safetensors_np.STORAGE[dtype].itemsize
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for name, (shape, _, _) in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * item
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned
    t0, n, layers_done = time.monotonic(), 0, 0
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, (shape, init, scale) in specs.items():
            x = make_tensor(rng, shape, init, scale)
            n += x.size
            f.write(_encode_fast(x, dtype).tobytes())
            del x
            if progress and name.endswith(".mlp.down_proj.weight"):  # the last tensor of a layer
                layers_done += 1
                print(f"gen_model: layer {layers_done}/{p.num_layers} written, {n / 1e9:.2f}B parameters, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
    if progress:
        print(f"gen_model: {path} ({(8 + len(blob) + offset) / 1e9:.2f} GB) written in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    return n


def parameter_count(p: Preset) -> int:
    return sum(int(np.prod(shape)) for shape, _, _ in tensor_specs(p).values())


# ----------------------------------------------------------------------------- tokenizer
# SentencePiece's model is a protobuf (ModelProto). It is edited at the wire level so
# that no protobuf package is needed: ModelProto.pieces = 1, .trainer_spec = 2;
# SentencePiece.piece = 1, .score = 2 (float), .type = 3 (UNUSED = 5);
# TrainerSpec.input = 1, .model_prefix = 2, .vocab_size = 4.

MAX_TRAINED_VOCAB = 8000  # the training corpus supports about 360 .. 9000 pieces


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = buf[pos]
        n |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return n, pos


def _pb_fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Protobuf message -> [(field number, wire type, encoded value bytes)]."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        start, wire = pos, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            start, pos = pos, pos + n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        fields.append((key >> 3, wire, buf[start:pos]))
    return fields


def _pb_encode(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        out += (_varint(len(value)) + value) if wire == 2 else value
    return bytes(out)


def tokenizer_vocab(path: Path) -> int:
    """Number of pieces in a SentencePiece tokenizer.model."""
    return sum(1 for number, _, _ in _pb_fields(path.read_bytes()) if number == 1)


def copy_tokenizer(src: Path, out_dir: Path, vocab: int) -> None:
    """Copies a prebuilt tokenizer.model into out_dir after checking it has `vocab` pieces."""
    try:
        n = tokenizer_vocab(src)
    except (OSError, ValueError, IndexError) as e:
        raise RuntimeError(f"--tokenizer {src}: not a readable tokenizer.model ({e})") from None
    if n != vocab:
        raise RuntimeError(f"--tokenizer {src}: {n} pieces, the model's vocab_size is {vocab}")
    if src.resolve() != (out_dir / "tokenizer.model").resolve():
        shutil.copyfile(src, out_dir / "tokenizer.model")


def train_tokenizer(out_dir: Path, vocab: int) -> None:
    """Writes out_dir/tokenizer.model with exactly `vocab` pieces (bos 1, eos 2, byte fallback).

    Trains with tools/train_tokenizer.sh (at most MAX_TRAINED_VOCAB pieces; the rest are
    UNUSED pieces that never appear in an encoding) and replaces the training paths it records
    by fixed strings so that the file is reproducible.
    """
    trained = min(vocab, MAX_TRAINED_VOCAB)
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["bash", str(TOOLS / "train_tokenizer.sh"), tmp, str(trained)],
                             capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"train_tokenizer.sh {trained} failed: {run.stderr.strip()}")
        fields = _pb_fields((Path(tmp) / "tokenizer.model").read_bytes())
    spec_fields = {1: b"common-licenses", 2: b"tokenizer"}
    for i, (number, wire, value) in enumerate(fields):
        if number == 2:  # trainer_spec
            spec = [(n, wt, spec_fields.get(n, v)) for n, wt, v in _pb_fields(value) if n != 4]
            fields[i] = (2, 2, _pb_encode(spec + [(4, 0, _varint(vocab))]))
    names = {_pb_fields(v)[0][2] for n, _, v in fields if n == 1}
    extra = [(1, 2, _pb_encode([(1, 2, f"<unused{j}>".encode()), (2, 5, struct.pack("<f", 0.0)), (3, 0, b"\x05")]))
             for j in range(vocab - trained)]
    if names & {_pb_fields(v)[0][2] for _, _, v in extra}:
        raise RuntimeError("tokenizer: an <unusedN> padding piece collides with a trained piece")
    last_piece = max(i for i, (n, _, _) in enumerate(fields) if n == 1)
    fields[last_piece + 1:last_piece + 1] = extra
    (out_dir / "tokenizer.model").write_bytes(_pb_encode(fields))


# ----------------------------------------------------------------------------- driver

def write_model(out_dir: Path, name: str, seed: int, dtype: str | None = None, shards: int | None = None,
                tokenizer: Path | None = None) -> None:
    """Generates preset `name` into out_dir (created; existing model files replaced).

    The weights depend only on (seed, name), so a preset alone and inside a suite are identical.
    tokenizer: a prebuilt tokenizer.model to copy (checked against the vocab size) instead of
    training one.
    """
    p = PRESETS[name]
    dtype, shards = dtype or p.dtype, shards or p.shards
    out_dir.mkdir(parents=True, exist_ok=True)
    # The tokenizer first: a wrong --tokenizer fails before minutes of weights.
    if tokenizer is not None:
        copy_tokenizer(tokenizer, out_dir, p.vocab_size)
    else:
        train_tokenizer(out_dir, p.vocab_size)
    for old in list(out_dir.glob("model*.safetensors")) + [out_dir / safetensors_np.INDEX_FILE]:
        old.unlink(missing_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    metadata = {"format": "pt", "generator": "gdnserve tools/gen_model.py", "preset": name, "seed": str(seed)}
    if shards == 1:
        n = _write_single_file(p, rng, out_dir / safetensors_np.SINGLE_FILE, DTYPES[dtype], metadata, p.big)
    else:
        weights = make_weights(p, rng)
        safetensors_np.save_model(weights, out_dir, DTYPES[dtype], shards, metadata)
        n = sum(x.size for x in weights.values())
    (out_dir / "config.json").write_text(json.dumps(config_of(p), indent=2) + "\n")
    print(f"gen_model: {out_dir}: preset {name}, {n / 1e6:.2f}M parameters, {dtype}, {shards} file(s)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except RuntimeError as e:  # a bad --tokenizer, a failed tokenizer training
        print(f"gen_model: error: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Generate deterministic random GDN-2 models.")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=sorted(PRESETS))
    what.add_argument("--suite", choices=sorted(SUITES), help="several presets, one subdirectory each")
    what.add_argument("--list", action="store_true", help="print the presets and exit")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="storage dtype (default: the preset's)")
    ap.add_argument("--shards", type=int, help="number of safetensors files (default: the preset's)")
    ap.add_argument("--tokenizer", type=Path, metavar="FILE",
                    help="copy this tokenizer.model (vocab_size pieces) instead of training one with spm_train")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="with --preset: write only OUT/tokenizer.model (trained here, to carry elsewhere)")
    args = ap.parse_args(argv)
    if args.list:
        for name, p in PRESETS.items():
            print(f"{name:14s} {parameter_count(p) / 1e6:9.2f}M params  {p.dtype:4s}  vocab {p.vocab_size}"
                  + ("  (big)" if p.big else ""))
        return 0
    if not args.out:
        ap.error("--out is required")
    if args.suite and (args.dtype or args.shards):
        ap.error("--dtype and --shards apply to --preset only")
    if args.shards is not None and args.shards < 1:
        ap.error("--shards must be at least 1")
    if args.tokenizer_only and not args.preset:
        ap.error("--tokenizer-only needs --preset")
    if args.tokenizer is not None and not args.tokenizer.is_file():
        ap.error(f"--tokenizer {args.tokenizer}: no such file")
    if args.tokenizer_only:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        vocab = PRESETS[args.preset].vocab_size
        if args.tokenizer is not None:
            copy_tokenizer(args.tokenizer, out, vocab)
        else:
            train_tokenizer(out, vocab)
        print(f"gen_model: {out / 'tokenizer.model'}: {vocab} pieces (preset {args.preset})")
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    print(f"gen_model: seed={seed}", flush=True)
    out = Path(args.out)
    if args.preset:
        if PRESETS[args.preset].big:
            print(f"gen_model: {args.preset} is big ({parameter_count(PRESETS[args.preset]) / 1e9:.2f}B "
                  "parameters): a minute or more, 3 GB on disk in bf16", flush=True)
        write_model(out, args.preset, seed, args.dtype, args.shards, args.tokenizer)
    else:
        for name in SUITES[args.suite]:
            write_model(out / name, name, seed, tokenizer=args.tokenizer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
