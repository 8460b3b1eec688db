#!/usr/bin/env python3
"""Converts an official GDN-2 training checkpoint (lit_gpt layout) to a gdnserve model directory.

    convert_litgpt.py --checkpoint PATH --tokenizer tokenizer.model --out DIR
                      [--config lit_config.json | --config gdn2_1.3B] [--dtype bf16|f32|f16]
                      [--allow-neg-eigval] [--max-shard-size 2GB] [--unsafe-pickle] [--quiet]

PATH is a `.safetensors` file, a directory of them, or a PyTorch checkpoint (`.pth`, `.pt`,
`.ckpt`, `.bin`: needs torch; Lightning Fabric's {"model": state_dict, ...} is understood). The
output holds config.json, model.safetensors (shards plus an index above --max-shard-size) and a
copy of tokenizer.model. What the layout is and how it maps: litgpt_layout.py and README.md.

--config is a lit_gpt config json (the `Config` dataclass fields, e.g. json.dump(asdict(config)))
or the name of an official preset (gdn2_1.3B, swa_gdn2_1.3B, gdn2_plus_1.3B, swa_gdn2_plus_1.3B).
Without it, `lit_config.json` next to the checkpoint is used if present; otherwise everything is
read off the tensors and norm_eps is taken as 1e-5 (the official value).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[0] / "common"))
sys.path.insert(0, str(HERE.parents[0] / "reference"))
import checkpoint_io  # noqa: E402
import gdn2_ref  # noqa: E402
import litgpt_layout as layout  # noqa: E402
import safetensors_np  # noqa: E402
from checkpoint_io import ConvertError, print_err  # noqa: E402

DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}
DEFAULT_MAX_SHARD = 2 * 1000 ** 3


# ----------------------------------------------------------------------------- tokenizer

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        n |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return n, pos


def _fields(buf: bytes):
    """Protobuf message -> (field number, wire type, value): ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield key >> 3, wire, value


def tokenizer_info(path: Path) -> tuple[int, int, int]:
    """(number of pieces, bos id, eos id) of a SentencePiece model, read at the protobuf level.

    ModelProto.pieces = 1, .trainer_spec = 2; TrainerSpec.bos_id = 41, .eos_id = 42 (defaults 1, 2;
    -1 when disabled).
    """
    try:
        buf = path.read_bytes()
        pieces, bos, eos = 0, 1, 2
        for number, wire, value in _fields(buf):
            if number == 1 and wire == 2:
                pieces += 1
            elif number == 2 and wire == 2:
                for n, w, v in _fields(value):
                    if n in (41, 42) and w == 0:
                        v = v - (1 << 64) if v >= 1 << 63 else v  # int32 -1 is a 10-byte varint
                        bos, eos = (v, eos) if n == 41 else (bos, v)
    except (OSError, ValueError) as e:
        raise ConvertError(f"tokenizer {path}: not a readable SentencePiece model ({e})") from None
    if pieces == 0:
        raise ConvertError(f"tokenizer {path}: not a SentencePiece model (no pieces)")
    return pieces, bos, eos


# ----------------------------------------------------------------------------- config

def load_config(spec: str | None, checkpoint: Path) -> tuple[dict | None, str]:
    """The raw lit_gpt config (or None) and where it came from."""
    if spec is None:
        near = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if (near / "lit_config.json").exists():
            spec = str(near / "lit_config.json")
        else:
            return None, "none"
    if spec in layout.PRESETS:
        return dict(layout.PRESETS[spec]), f"preset {spec}"
    path = Path(spec)
    if not path.exists():
        raise ConvertError(f"--config {spec}: neither a file nor a preset ({', '.join(layout.PRESETS)})")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConvertError(f"{path}: reading YAML needs PyYAML; or pass the config as JSON") from None
            return yaml.safe_load(path.read_text()), str(path)
        return json.loads(path.read_text()), str(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: {e}") from None


def gdnserve_config(g: layout.Geometry, norm_eps: float, allow_neg_eigval: bool, bos: int, eos: int) -> dict:
    """config.json of DEVELOPERS.md for geometry g (every field written)."""
    expand_v = g.V // g.K if g.V % g.K == 0 else g.V / g.K
    return {
        "architecture": "gdn2",
        "vocab_size": g.vocab,
        "hidden_size": g.d,
        "num_layers": g.n_layer,
        "num_heads": g.H,
        "num_v_heads": g.HV,
        "head_dim": g.K,
        "expand_v": expand_v,
        "intermediate_size": g.I,
        "conv_size": g.W,
        "norm_eps": norm_eps,
        "tie_word_embeddings": g.tied,
        "allow_neg_eigval": allow_neg_eigval,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }


# ----------------------------------------------------------------------------- driver

def convert(checkpoint: str | Path, out: str | Path, tokenizer: str | Path, config: str | None = None,
            dtype: str = "bf16", allow_neg_eigval: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD,
            unsafe_pickle: bool = False, log: Callable[[str], None] | None = print_err) -> dict:
    """Converts; returns the config.json written. Raises ConvertError with a message naming the
    tensor, layer, field or file at fault. `log` gets notes and progress (None: silent)."""
    say = log or (lambda _msg: None)
    checkpoint, out, tokenizer = Path(checkpoint), Path(out), Path(tokenizer)
    start = time.time()
    if dtype not in DTYPES:
        raise ConvertError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")

    # 1. The lit_gpt config: block structure and layer kinds (hybrids are refused here).
    raw, cfg_from = load_config(config, checkpoint)
    cfg = None
    if raw is not None:
        cfg, notes = layout.parse_config(raw, cfg_from)
        for n in notes:
            say(n)
        kinds = dict(enumerate(cfg.layer_kinds))
        layout.check_pure_gdn2(kinds, f"config {cfg_from}: gdn2_per_layer={cfg.gdn2_per_layer}, "
                                      f"gdn2_plus_per_layer={cfg.gdn2_plus_per_layer}")

    # 2. The tensors: hybrid layers, geometry, then every name and shape.
    if not tokenizer.is_file():
        raise ConvertError(f"tokenizer {tokenizer} does not exist")
    tensors = checkpoint_io.open_checkpoint(checkpoint, unsafe_pickle)
    total = sum(t.nbytes for t in tensors.values())
    say(f"{checkpoint}: {len(tensors)} tensors, {checkpoint_io.human_bytes(total)}; config: {cfg_from}")
    attention = layout.layer_kinds_from_tensors(tensors)
    if attention:
        indices = layout.layer_indices(tensors)
        layout.check_pure_gdn2({i: attention.get(i, "gdn2") for i in indices},
                               "it holds attn.attn / attn.proj softmax-attention weights")
    g = layout.infer_geometry(tensors, cfg)
    layout.check_tensors(tensors, g)
    if g.tied:
        say("no lm_head.weight in the checkpoint: tie_word_embeddings = true (logits use transformer.wte)")

    # 3. Vocabulary, tokenizer and norms.
    pieces, bos, eos = tokenizer_info(tokenizer)
    if pieces > g.vocab:
        raise ConvertError(f"tokenizer {tokenizer} has {pieces} pieces but the model's embedding "
                           f"(transformer.wte.weight) has only {g.vocab} rows")
    if cfg and cfg.padded_vocab_size > cfg.vocab_size:
        say(f"vocab_size {cfg.vocab_size} is padded to {g.vocab} embedding rows (lit_gpt padded_vocab_size)")
    if cfg and pieces != cfg.vocab_size:
        say(f"note: the tokenizer has {pieces} pieces, the config's vocab_size is {cfg.vocab_size}")
    if pieces < g.vocab:
        say(f"the tokenizer's {pieces} pieces use ids 0..{pieces - 1} of the {g.vocab} embedding rows")
    for what, tok_id, default in (("bos", bos, 1), ("eos", eos, 2)):
        if not 0 <= tok_id < pieces:
            say(f"note: the tokenizer has no {what} piece (id {tok_id}); writing {what}_token_id = {default}")
    bos = bos if 0 <= bos < pieces else 1
    eos = eos if 0 <= eos < pieces else 2
    norm_eps = cfg.norm_eps if cfg else layout.MIXER_NORM_EPS
    if not cfg:
        say(f"no lit_gpt config: norm_eps = {norm_eps} assumed (the official value); pass --config otherwise")
    if norm_eps != layout.MIXER_NORM_EPS:
        raise ConvertError(f"config norm_eps = {norm_eps}: the GDN-2 mixer's o_norm always uses eps "
                           f"{layout.MIXER_NORM_EPS} (GatedDeltaNet2's default, not taken from the config), and "
                           "gdnserve's config.json has one norm_eps for all norms")

    ours = gdnserve_config(g, norm_eps, allow_neg_eigval, bos, eos)
    try:
        parsed = gdn2_ref.parse_config(ours)
    except gdn2_ref.ModelError as e:
        raise ConvertError(f"the checkpoint's shapes give an invalid gdnserve config: {e}") from None
    mapped = layout.mapping(g)
    want = gdn2_ref.expected_shapes(parsed)
    if {m.name: m.shape for m in mapped} != want:  # the two tables of DEVELOPERS.md must agree
        raise ConvertError("internal: the converted tensor set differs from gdn2_ref.expected_shapes")

    # 4. Write.
    src_dir = (checkpoint if checkpoint.is_dir() else checkpoint.parent).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == src_dir:
        raise ConvertError(f"--out {out} is the checkpoint's own directory: choose another one")
    items = [checkpoint_io.OutTensor(m.name, m.shape, layout.produce(m, tensors)) for m in mapped]
    metadata = {"format": "pt", "converter": "gdnserve tools/convert/convert_litgpt.py",
                "source": checkpoint.name}
    paths = checkpoint_io.write_model(out, items, DTYPES[dtype], max_shard_bytes, metadata, log)
    (out / "config.json").write_text(json.dumps(ours, indent=2) + "\n")
    if tokenizer.resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer, out / "tokenizer.model")
    verify_written(out, want)
    size = sum(p.stat().st_size for p in paths)
    say(f"{out}: {g.n_layer} layers, d={g.d}, H={g.H}x{g.K}, HV={g.HV}x{g.V}, W={g.W}, I={g.I}, "
        f"vocab {g.vocab} (tokenizer {pieces}), {'tied' if g.tied else 'untied'} lm_head, {dtype}, "
        f"{len([p for p in paths if p.suffix == '.safetensors'])} file(s), {checkpoint_io.human_bytes(size)}, "
        f"{time.time() - start:.1f} s")
    return ours


def verify_written(out: Path, want: dict[str, tuple[int, ...]]) -> None:
    """Re-reads the written headers: every expected tensor present once, with its shape."""
    index = out / safetensors_np.INDEX_FILE
    files = ([out / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
             if index.exists() else [out / safetensors_np.SINGLE_FILE])
    seen: dict[str, tuple[int, ...]] = {}
    for f in files:
        header, _, _ = safetensors_np.read_header(f)
        seen.update({name: tuple(e["shape"]) for name, e in header.items()})
    if seen != want:
        raise ConvertError(f"internal: {out} does not hold the expected tensors after writing")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 2GB, 500MB, 1GiB)")
    unit = (m.group(2) or "B").upper().rstrip("B")
    scale = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30}[unit]
    return int(float(m.group(1)) * scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert an official GDN-2 (lit_gpt) checkpoint to a gdnserve model "
                                             "directory.")
    ap.add_argument("--checkpoint", required=True,
                    help=".safetensors file or directory, or a PyTorch .pth/.pt/.ckpt (needs torch)")
    ap.add_argument("--config", help="lit_gpt config json, or a preset name: " + ", ".join(layout.PRESETS))
    ap.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer.model (copied into --out)")
    ap.add_argument("--out", required=True, help="output model directory (created)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="storage dtype (default bf16)")
    ap.add_argument("--allow-neg-eigval", action="store_true",
                    help="the model was trained with GatedDeltaNet2(allow_neg_eigval=True) (erase gate x2); "
                         "the official Block leaves it False and checkpoints do not record it")
    ap.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD,
                    help="largest safetensors file before sharding (default 2GB)")
    ap.add_argument("--unsafe-pickle", action="store_true",
                    help="torch.load with weights_only=False (runs the pickle's code: trusted files only)")
    ap.add_argument("--quiet", action="store_true", help="print errors only")
    args = ap.parse_args(argv)
    log = None if args.quiet else (lambda msg: print_err(f"convert_litgpt: {msg}"))
    try:
        convert(args.checkpoint, args.out, args.tokenizer, args.config, args.dtype, args.allow_neg_eigval,
                args.max_shard_size, args.unsafe_pickle, log)
    except (ConvertError, safetensors_np.SafetensorsError, OSError) as e:
        print_err(f"convert_litgpt: error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
