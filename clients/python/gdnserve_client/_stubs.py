"""Python stubs of proto/gdnserve/v1/generation.proto, made with grpcio-tools.

The stubs are not checked in: they are generated into gdnserve_client/_generated/
(git-ignored) on first import, and again whenever the .proto file, protobuf or
grpcio-tools changes (a stamp file records what they were made from), so they
always match the installed protobuf runtime. `clients/python/gen_stubs.sh` (which runs
this file as a script) does the same ahead of time, e.g. for a read-only install.

The .proto is looked up in $GDNSERVE_PROTO_ROOT, then in the repository's proto/
next to this package. Without one, stubs generated earlier are used as they are.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PROTO_FILE = "gdnserve/v1/generation.proto"
PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PACKAGE_DIR / "_generated"
_STAMP = "STAMP"


def proto_root() -> Path | None:
    """The directory holding gdnserve/v1/generation.proto, or None."""
    candidates = []
    if os.environ.get("GDNSERVE_PROTO_ROOT"):
        candidates.append(Path(os.environ["GDNSERVE_PROTO_ROOT"]))
    # repo/clients/python/gdnserve_client -> repo/proto
    candidates.append(PACKAGE_DIR.parents[2] / "proto")
    for root in candidates:
        if (root / PROTO_FILE).is_file():
            return root
    return None


def _stamp(root: Path) -> str:
    import google.protobuf
    from grpc_tools import grpc_version

    digest = hashlib.sha256((root / PROTO_FILE).read_bytes()).hexdigest()
    return (
        f"proto sha256 {digest}\n"
        f"protobuf {google.protobuf.__version__}\n"
        f"grpcio-tools {grpc_version.VERSION}\n"
    )


def _current(root: Path) -> bool:
    stamp = GENERATED_DIR / _STAMP
    return stamp.is_file() and stamp.read_text() == _stamp(root)


def generate(root: Path, force: bool = False) -> None:
    """Generates the stubs from root/PROTO_FILE into GENERATED_DIR."""
    if not force and _current(root):
        return
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:
        raise ImportError(
            "gdnserve_client needs grpcio-tools to generate its stubs "
            "(pip install grpcio-tools; see clients/README.md)"
        ) from e

    # Built in a temporary folder beside the final one, then renamed into place,
    # so that a concurrent import never sees half-written stubs.
    tmp = Path(tempfile.mkdtemp(prefix="._generated.", dir=PACKAGE_DIR))
    try:
        out = tmp / "protoc"
        out.mkdir()
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--proto_path={well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(root / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {root / PROTO_FILE}")
        pkg = tmp / "pkg"
        pkg.mkdir()
        made = out / Path(PROTO_FILE).parent
        for f in made.iterdir():
            text = f.read_text()
            # protoc writes absolute imports ("from gdnserve.v1 import
            # generation_pb2"); the modules live inside this package instead.
            text = text.replace("from gdnserve.v1 import generation_pb2", "from . import generation_pb2")
            (pkg / f.name).write_text(text)
        (pkg / "__init__.py").write_text(f"# Generated from {PROTO_FILE} by gdnserve_client._stubs; do not edit.\n")
        (pkg / _STAMP).write_text(_stamp(root))

        old = None
        if GENERATED_DIR.exists():
            old = Path(tempfile.mkdtemp(prefix="._old.", dir=PACKAGE_DIR))
            try:
                GENERATED_DIR.rename(old / "_generated")
            except FileNotFoundError:
                pass  # another process moved it first
        try:
            pkg.rename(GENERATED_DIR)
        except OSError:
            if not _current(root):  # another process installed other stubs meanwhile
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> tuple[ModuleType, ModuleType]:
    """(generation_pb2, generation_pb2_grpc), generated first where needed."""
    root = proto_root()
    if root is not None:
        generate(root)
    elif not (GENERATED_DIR / "generation_pb2.py").is_file():
        raise ImportError(
            f"gdnserve_client: no generated stubs in {GENERATED_DIR} and no {PROTO_FILE} to make them from; "
            "set GDNSERVE_PROTO_ROOT to the repository's proto/ folder"
        )
    pkg = __package__ or "gdnserve_client"
    pb2 = importlib.import_module(f"{pkg}._generated.generation_pb2")
    pb2_grpc = importlib.import_module(f"{pkg}._generated.generation_pb2_grpc")
    return pb2, pb2_grpc


def main() -> int:
    root = proto_root()
    if root is None:
        print(f"no {PROTO_FILE} found; set GDNSERVE_PROTO_ROOT", file=sys.stderr)
        return 1
    generate(root, force="--force" in sys.argv[1:])
    print(f"stubs of {root / PROTO_FILE} in {GENERATED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
