"""Minimal numpy reader and writer for safetensors files and model directories.

File layout: an 8-byte little-endian u64 N, N bytes of JSON header, then the
tensor data. The header maps each tensor name to
{"dtype": "F32"|"F16"|"BF16", "shape": [...], "data_offsets": [begin, end]}
(offsets relative to the start of the data) and may hold "__metadata__", a
str -> str map. numpy has no bfloat16: BF16 is stored as uint16 and converted
by hand (round-to-nearest-even on the way in, a 16-bit shift on the way out).

A model directory holds either `model.safetensors` or shards plus
`model.safetensors.index.json` ({"metadata": {...}, "weight_map": {name: shard file}}).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# Storage dtype of each safetensors dtype (BF16 as raw bits).
STORAGE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsError(ValueError):
    """A malformed, truncated or inconsistent safetensors file or index."""


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bfloat16 bits of the same shape, rounding to nearest even.

    NaN stays NaN (quiet, sign kept); overflow past the largest bf16 rounds to inf.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = np.where(np.isnan(x.reshape(-1)), (bits >> 16) | 0x0040, rounded)
    return rounded.astype(np.uint16).reshape(x.shape)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 array of the same shape (exact)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.reshape(-1).astype(np.uint32) << 16).view(np.float32).reshape(bits.shape)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """Float array -> the storage array of safetensors dtype `dtype` (same shape)."""
    if dtype == "BF16":
        return f32_to_bf16_bits(x)
    if dtype not in STORAGE:
        raise SafetensorsError(f"unsupported dtype {dtype!r}")
    return np.asarray(x, dtype=STORAGE[dtype])


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage array -> numpy values: F32 -> float32, F16 -> float16, BF16 -> float32."""
    return bf16_bits_to_f32(raw) if dtype == "BF16" else raw


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike, dtype: str = "F32",
              metadata: Mapping[str, str] | None = None) -> None:
    """Writes float arrays `tensors` (in mapping order) to `path`, each stored as `dtype`."""
    if dtype not in STORAGE:
        raise SafetensorsError(f"unsupported dtype {dtype!r}")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, x in tensors.items():
        nbytes = int(np.prod(x.shape, dtype=np.int64)) * STORAGE[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for x in tensors.values():
            f.write(encode(x, dtype).tobytes())


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsError(f"duplicate key in header: {key}")
        out[key] = value
    return out


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """Reads and validates a header: (tensor entries, metadata, byte offset of the data)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: truncated (no header length)")
        n = int.from_bytes(prefix, "little")
        if n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} exceeds file size {size}")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    data_size = size - 8 - n
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in STORAGE
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise SafetensorsError(f"{path}: malformed header entry for tensor {name}")
        begin, end = entry["data_offsets"]
        nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * STORAGE[entry["dtype"]].itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise SafetensorsError(f"{path}: tensor {name}: data_offsets {entry['data_offsets']} "
                                   f"do not match {entry['dtype']}{entry['shape']}")
        if end > data_size:
            raise SafetensorsError(f"{path}: tensor {name}: data past the end of the file (truncated?)")
    return header, metadata, 8 + n


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of `path` (decoded as in `decode`), in header order."""
    header, _, data_start = read_header(path)
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        storage = STORAGE[entry["dtype"]]
        raw = np.fromfile(path, dtype=storage, count=(end - begin) // storage.itemsize, offset=data_start + begin)
        out[name] = decode(raw.reshape(entry["shape"]), entry["dtype"])
    return out


def shard_name(i: int, n: int) -> str:
    """File name of shard i (0-based) of n, as Hugging Face names them."""
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def save_model(tensors: Mapping[str, np.ndarray], model_dir: str | os.PathLike, dtype: str = "F32",
               shards: int = 1, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Writes `tensors` into `model_dir`: one model.safetensors, or `shards` files plus the index.

    Tensors keep their order and are cut into contiguous groups of about equal byte size.
    Returns the paths written.
    """
    model_dir = Path(model_dir)
    if shards == 1:
        save_file(tensors, model_dir / SINGLE_FILE, dtype, metadata)
        return [model_dir / SINGLE_FILE]
    if not 1 <= shards <= len(tensors):
        raise SafetensorsError(f"cannot cut {len(tensors)} tensors into {shards} shards")
    sizes = [int(np.prod(x.shape, dtype=np.int64)) * STORAGE[dtype].itemsize for x in tensors.values()]
    total, start = sum(sizes), 0
    groups: list[dict[str, np.ndarray]] = [{} for _ in range(shards)]
    for (name, x), nbytes in zip(tensors.items(), sizes):
        groups[min(shards - 1, (2 * start + nbytes) * shards // (2 * max(total, 1)))][name] = x  # by midpoint
        start += nbytes
    if any(not g for g in groups):
        raise SafetensorsError(f"cannot cut these tensors into {shards} non-empty shards")
    paths, weight_map = [], {}
    for i, group in enumerate(groups):
        paths.append(model_dir / shard_name(i, shards))
        save_file(group, paths[-1], dtype, metadata)
        weight_map.update({name: paths[-1].name for name in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return paths + [model_dir / INDEX_FILE]


def load_model(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads all tensors of a model directory (single file preferred over an index)."""
    model_dir = Path(model_dir)
    if (model_dir / SINGLE_FILE).exists():
        return load_file(model_dir / SINGLE_FILE)
    index_path = model_dir / INDEX_FILE
    if not index_path.exists():
        raise SafetensorsError(f"{model_dir}: neither {SINGLE_FILE} nor {INDEX_FILE}")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SafetensorsError(f"{index_path}: no valid weight_map ({e})") from None
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise SafetensorsError(f"{index_path}: shard {shard!r} is not a file name in the directory")
        for name, x in load_file(model_dir / shard).items():
            if weight_map.get(name) != shard:
                raise SafetensorsError(f"{shard}: tensor {name} is not mapped to this shard in {INDEX_FILE}")
            out[name] = x
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise SafetensorsError(f"{INDEX_FILE}: tensor {missing[0]} is not in its shard {weight_map[missing[0]]}")
    return out
