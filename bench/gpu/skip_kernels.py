"""Patches a copy of the engine so that a decode step can leave kernels out.

    bash scripts/make_baseline.sh HEAD && python3 bench/gpu/skip_kernels.py .baseline
    (on the GPU machine, after building .baseline as ab_engine.sh does)
    GDN_SKIP=RmsNorm,Gemm:fg_up .baseline/build/engine-only/bench/bench_cuda_engine --only decode

For attributing a decode step's time (bench/RESULTS.md, seventh session):
the step's kernels do the same work whatever their inputs hold, so a build
that skips some of them times what is left; its outputs are wrong, which is
why this only ever patches a copy (never the tree it runs from). In
CudaBackend::Layer, every `GDN_CUDA_RETURN(cuda::NAME(...))` statement is
skipped when NAME is in the comma-separated GDN_SKIP, and every
`Gemm(..., lw.WEIGHT, ...)` when `Gemm:WEIGHT` is. Prints what it can skip.
"""
import os
import re
import sys


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 1
    tree = sys.argv[1]
    if os.path.realpath(tree) == os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..")):
        print("skip_kernels: refusing to patch the tree it runs from; patch a copy (.baseline)", file=sys.stderr)
        return 1
    path = os.path.join(tree, "engine", "cuda_backend.cc")
    src = open(path).read()
    if "SkipKernel(" in src:
        print("skip_kernels: already patched")
        return 0
    start = src.index("absl::Status CudaBackend::Layer(")
    end = src.index("\n}\n", start)
    body = src[start:end]
    names = []

    def kernel(m: re.Match) -> str:
        names.append(m.group(2))
        return f'{m.group(1)}if (!SkipKernel("{m.group(2)}")) GDN_CUDA_RETURN(cuda::{m.group(2)}('

    body = re.sub(r"(\n\s*)GDN_CUDA_RETURN\(cuda::(\w+)\(", kernel, body)

    def gemm(m: re.Match) -> str:
        names.append("Gemm:" + m.group(3))
        return f'{m.group(1)}SkipKernel("Gemm:{m.group(3)}") ? absl::OkStatus() : Gemm({m.group(2)}lw.{m.group(3)}'

    body = re.sub(r"(absl::Status s = )Gemm\(([^;]*?)lw\.(\w+)", gemm, body)
    helper = (
        "#include <cstdlib>\n#include <string>\n"
        "namespace {\n"
        "// GDN_SKIP (bench/gpu/skip_kernels.py): kernels a decode step leaves out.\n"
        "bool SkipKernel(const char* name) {\n"
        '  static const char* env = std::getenv("GDN_SKIP");\n'
        "  std::string skip = \",\", key = \",\";\n"
        '  skip += env ? env : "";\n'
        "  skip += ',';\n"
        "  key += name;\n"
        "  key += ',';\n"
        "  return skip.find(key) != std::string::npos;\n"
        "}\n"
        "}  // namespace\n"
    )
    src = helper + src[:start] + body + src[end:]
    open(path, "w").write(src)
    print("skip_kernels: GDN_SKIP takes " + ",".join(dict.fromkeys(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
