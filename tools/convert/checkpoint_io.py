"""Reading training checkpoints tensor by tensor, and writing gdnserve safetensors streamed.

Sources (`open_checkpoint`):
- `*.safetensors` (F32 / BF16 / F16), one file or a directory of them (with or without a
  `model.safetensors.index.json`);
- `*.pth` / `*.pt` / `*.ckpt` / `*.bin` PyTorch pickles, only when torch is importable. Loaded
  with `weights_only=True` (no code runs) and memory-mapped where torch allows; the state dict
  is found under "model" (what lit_gpt / Lightning Fabric's `fabric.save(path, {"model": ...})`
  writes), "state_dict", or at the top level.

Every tensor is a `SourceTensor`: name, shape and a `load()` that reads it then (float32), so a
multi-GB checkpoint is never held in memory twice. Wrapper prefixes that training frameworks add
(`_forward_module.`, `_orig_mod.`, `module.`, `_fsdp_wrapped_module.`,
`_checkpoint_wrapped_module.`) are removed from names.

`write_model` writes a gdnserve model directory's tensors in a given order: one
`model.safetensors`, or shards of at most `max_shard_bytes` plus `model.safetensors.index.json`
(the layout of tools/common/safetensors_np.py, which reads them back).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import safetensors_np  # noqa: E402

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
WRAPPER_PREFIXES = ("_forward_module.", "_orig_mod.", "module.")
WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class ConvertError(ValueError):
    """A checkpoint, config or tokenizer that cannot be converted; the message says which part."""


@dataclass(frozen=True)
class SourceTensor:
    """A tensor of the source checkpoint, read on demand."""
    name: str
    shape: tuple[int, ...]
    dtype: str                      # "F32", "BF16", "F16" (safetensors names)
    load: Callable[[], np.ndarray]  # -> float32 array of `shape`

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (4 if self.dtype == "F32" else 2)


def clean_name(name: str) -> str:
    """Removes the wrapper prefixes/infixes of DDP, FSDP, torch.compile and Fabric from a name."""
    for infix in WRAPPER_INFIXES:
        name = name.replace(infix, "")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _add(out: dict[str, SourceTensor], t: SourceTensor, where: str) -> None:
    name = clean_name(t.name)
    if name in out:
        raise ConvertError(f"{where}: tensor {name} appears twice (after removing wrapper prefixes)")
    out[name] = SourceTensor(name, t.shape, t.dtype, t.load)


# ----------------------------------------------------------------------------- safetensors

def _safetensors_file(path: Path, out: dict[str, SourceTensor], only: set[str] | None = None) -> set[str]:
    """Adds the tensors of one file (those named in `only`, if given); returns the names found."""
    found: set[str] = set()
    try:
        header, _, data_start = safetensors_np.read_header(path)
    except (safetensors_np.SafetensorsError, OSError) as e:
        raise ConvertError(str(e)) from None
    for name, entry in header.items():
        if only is not None and name not in only:
            continue
        found.add(name)
        begin, end = entry["data_offsets"]
        dtype, shape = entry["dtype"], tuple(entry["shape"])

        def load(path=path, begin=begin, end=end, dtype=dtype, shape=shape) -> np.ndarray:
            storage = safetensors_np.STORAGE[dtype]
            raw = np.fromfile(path, dtype=storage, count=(end - begin) // storage.itemsize,
                              offset=data_start + begin)
            return safetensors_np.decode(raw.reshape(shape), dtype).astype(np.float32, copy=False)

        _add(out, SourceTensor(name, shape, dtype, load), str(path))
    return found


def _safetensors_dir(path: Path, out: dict[str, SourceTensor]) -> None:
    index = path / safetensors_np.INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConvertError(f"{index}: no valid weight_map ({e})") from None
        by_shard: dict[str, set[str]] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, set()).add(name)
        for shard, names in sorted(by_shard.items()):
            if Path(shard).name != shard or not (path / shard).exists():
                raise ConvertError(f"{index}: shard {shard!r} is not a file in {path}")
            missing = sorted(names - _safetensors_file(path / shard, out, names))
            if missing:
                raise ConvertError(f"{index}: tensor {missing[0]} is not in its shard {shard}")
        return
    for f in sorted(path.glob("*.safetensors")):
        _safetensors_file(f, out)


# ----------------------------------------------------------------------------- torch

def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


_TORCH_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def _find_state_dict(obj, path: Path) -> Mapping:
    import torch
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict", "model_state_dict", "module"):
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            return inner.state_dict()
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ConvertError(f"{path}: no state dict found (top-level keys: {sorted(map(str, obj))[:10]})")


def _torch_file(path: Path, out: dict[str, SourceTensor], unsafe_pickle: bool) -> None:
    try:
        import torch
    except ImportError:
        raise ConvertError(
            f"{path}: a PyTorch checkpoint needs torch, which is not installed here. Install it "
            "(CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu) or save "
            "the state dict as safetensors where torch is available "
            "(safetensors.torch.save_file(state_dict, 'model.safetensors')).") from None
    kwargs = {"map_location": "cpu", "weights_only": not unsafe_pickle}
    try:
        try:
            obj = torch.load(path, mmap=True, **kwargs)
        except RuntimeError as e:  # legacy (non-zip) format: no mmap
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, **kwargs)
    except Exception as e:  # noqa: BLE001 (torch raises many types; all mean "cannot read")
        hint = ("" if unsafe_pickle else " If the file comes from a source you trust and holds "
                "non-tensor Python objects, --unsafe-pickle loads it with weights_only=False.")
        raise ConvertError(f"{path}: torch.load failed: {type(e).__name__}: {e}.{hint}") from None
    state = _find_state_dict(obj, path)
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue  # e.g. an int counter stored beside the weights
        dtype = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise ConvertError(f"{path}: tensor {clean_name(name)} has dtype {t.dtype}; "
                               "expected float32, bfloat16 or float16")

        def load(t=t) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).contiguous().numpy()

        _add(out, SourceTensor(name, tuple(t.shape), dtype, load), str(path))


# ----------------------------------------------------------------------------- entry

def open_checkpoint(path: str | os.PathLike, unsafe_pickle: bool = False) -> dict[str, SourceTensor]:
    """All tensors of the checkpoint at `path` (a file or a directory), by cleaned name."""
    path = Path(path)
    out: dict[str, SourceTensor] = {}
    if not path.exists():
        raise ConvertError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / safetensors_np.INDEX_FILE).exists() or any(path.glob("*.safetensors")):
            _safetensors_dir(path, out)
        else:
            pickles = sorted(f for f in path.iterdir() if f.suffix in TORCH_SUFFIXES)
            if any(path.glob("*.distcp")):
                raise ConvertError(f"{path}: a sharded (distributed) checkpoint: consolidate it into one file "
                                   "first, e.g. python -m lightning.fabric.utilities.consolidate_checkpoint "
                                   f"{path}")
            if len(pickles) != 1:
                raise ConvertError(f"{path}: expected *.safetensors files or exactly one PyTorch checkpoint "
                                   f"({'/'.join(TORCH_SUFFIXES)}), found {[p.name for p in pickles] or 'none'}")
            _torch_file(pickles[0], out, unsafe_pickle)
    elif path.suffix == ".safetensors":
        _safetensors_file(path, out)
    elif path.suffix in TORCH_SUFFIXES:
        _torch_file(path, out, unsafe_pickle)
    else:
        raise ConvertError(f"{path}: unknown checkpoint type (expected .safetensors, "
                           f"{', '.join(TORCH_SUFFIXES)} or a directory)")
    if not out:
        raise ConvertError(f"{path}: no tensors found")
    return out


# ----------------------------------------------------------------------------- writer

@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: its gdnserve name, shape, and a function producing its float32 values."""
    name: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """Progress of a long write: a `log` line at every 10% (writes under `quiet_below` bytes stay silent)."""

    def __init__(self, total_bytes: int, log: Callable[[str], None] | None, quiet_below: int = 256 << 20):
        self.total, self.done, self.log = total_bytes, 0, log
        self.enabled = log is not None and total_bytes >= quiet_below
        self.next_mark, self.start = 10, time.time()

    def advance(self, nbytes: int, name: str) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        pct = 100 * self.done / max(self.total, 1)
        if pct >= self.next_mark or self.done >= self.total:
            self.log(f"{pct:3.0f}%  {human_bytes(self.done)} / {human_bytes(self.total)}  "
                     f"{time.time() - self.start:.0f} s  {name}")
            while self.next_mark <= pct:
                self.next_mark += 10


def print_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plan_shards(tensors: list[OutTensor], itemsize: int, max_shard_bytes: int) -> list[list[OutTensor]]:
    """Cuts `tensors` (in order) into consecutive groups of at most max_shard_bytes each
    (a single tensor larger than that gets a shard of its own)."""
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t.shape, dtype=np.int64)) * itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    return groups


def _write_file(path: Path, tensors: list[OutTensor], dtype: str, metadata: Mapping[str, str],
                progress: Progress) -> None:
    storage = safetensors_np.STORAGE[dtype]
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for t in tensors:
        nbytes = int(np.prod(t.shape, dtype=np.int64)) * storage.itemsize
        header[t.name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for t in tensors:
                x = np.asarray(t.produce(), dtype=np.float32)
                if x.shape != t.shape:
                    raise ConvertError(f"internal: {t.name} produced shape {list(x.shape)}, planned {list(t.shape)}")
                enc = safetensors_np.encode(x, dtype)
                if dtype == "F16" and np.any(np.isinf(enc) & np.isfinite(x)):
                    raise ConvertError(f"tensor {t.name} has values beyond float16's range (|x| > 65504): "
                                       "use --dtype bf16 or f32")
                f.write(np.ascontiguousarray(enc).tobytes())
                progress.advance(enc.nbytes, t.name)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_model(out_dir: Path, tensors: list[OutTensor], dtype: str, max_shard_bytes: int,
                metadata: Mapping[str, str], log: Callable[[str], None] | None = print_err) -> list[Path]:
    """Writes `tensors` as out_dir/model.safetensors, or as shards plus the index when they
    exceed max_shard_bytes. Old model*.safetensors files and index in out_dir are removed first.
    Returns the paths written."""
    for old in list(out_dir.glob("model*.safetensors")) + [out_dir / safetensors_np.INDEX_FILE]:
        old.unlink(missing_ok=True)
    itemsize = safetensors_np.STORAGE[dtype].itemsize
    groups = plan_shards(tensors, itemsize, max_shard_bytes)
    total = sum(int(np.prod(t.shape, dtype=np.int64)) * itemsize for t in tensors)
    progress = Progress(total, log)
    if len(groups) == 1:
        path = out_dir / safetensors_np.SINGLE_FILE
        _write_file(path, tensors, dtype, metadata, progress)
        return [path]
    paths, weight_map = [], {}
    for i, group in enumerate(groups):
        path = out_dir / safetensors_np.shard_name(i, len(groups))
        _write_file(path, group, dtype, metadata, progress)
        paths.append(path)
        weight_map.update({t.name: path.name for t in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / safetensors_np.INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return paths + [out_dir / safetensors_np.INDEX_FILE]
