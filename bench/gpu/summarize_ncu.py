#!/usr/bin/env python3
"""Summarize an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,
dram__bytes_write.sum` log: time, DRAM bytes and bandwidth per kernel kind.

  summarize_ncu.py LOG.csv [--split N] [--labels a,b] [--first N]

--split N cuts the profiled launches into N equal consecutive parts (e.g. the
same decode step profiled once without and once with CUDA graphs) and
summarizes each. Lines before the CSV header (the program's own output) are
skipped; the program's wall-clock step time is printed when it is found there.
"""
import argparse
import collections
import csv
import io
import re
import sys


def parse(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find('"ID","Process ID"')
    if start < 0:
        sys.exit(f"summarize_ncu: no ncu CSV header in {path}")
    prologue, body = text[:start], text[start:]
    rows = collections.OrderedDict()
    for r in csv.DictReader(io.StringIO(body)):
        key = int(r["ID"])
        k = rows.setdefault(key, {"name": r["Kernel Name"], "ns": 0.0, "bytes": 0.0})
        unit, val = r["Metric Unit"], float(r["Metric Value"].replace(",", ""))
        scale = {"ns": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "nsecond": 1,
                 "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
        if r["Metric Name"] == "gpu__time_duration.sum":
            k["ns"] = val * scale
        else:
            k["bytes"] += val * scale
    return prologue, list(rows.values())


def kind(name):
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    n = name.split("(")[0].split("<")[0].strip()
    n = re.sub(r"^void ", "", n)
    if "gemv" in name.lower() or "gemm" in name.lower() or n.startswith(("sm90_", "sm80_", "cutlass", "ampere", "nvjet")):
        return "GEMM/GEMV (cuBLAS): " + n[:48]
    return n.split("::")[-1][:60]


def report(kernels, label, first):
    total = sum(k["ns"] for k in kernels)
    groups = collections.OrderedDict()
    for k in kernels:
        g = groups.setdefault(kind(k["name"]), [0, 0.0, 0.0])
        g[0] += 1
        g[1] += k["ns"]
        g[2] += k["bytes"]
    print(f"== {label}: {len(kernels)} kernels, {total / 1e3:.1f} us of kernel time (each timed alone)")
    print(f"{'kernel':64} {'n':>4} {'us':>9} {'share':>6} {'GB/s':>7}")
    for name, (n, ns, b) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:64} {n:4d} {ns / 1e3:9.1f} {100 * ns / total:5.1f}% {b / ns if ns else 0:7.0f}")
    if first:
        print(f"-- the first {first} launches in order (us, MB moved, GB/s):")
        for k in kernels[:first]:
            print(f"   {kind(k['name']):64} {k['ns'] / 1e3:8.1f} {k['bytes'] / 1e6:8.2f} "
                  f"{k['bytes'] / k['ns'] if k['ns'] else 0:7.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--split", type=int, default=1)
    ap.add_argument("--labels", default="")
    ap.add_argument("--first", type=int, default=0, help="also list the first N launches of each part in order")
    a = ap.parse_args()
    prologue, kernels = parse(a.log)
    for line in prologue.splitlines():
        if re.match(r"^\s*\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+\s*$", line) or "CUDA graphs" in line:
            print(line)
    labels = a.labels.split(",") if a.labels else [f"part {i + 1}" for i in range(a.split)]
    per = len(kernels) // a.split
    for i in range(a.split):
        report(kernels[i * per:(i + 1) * per], labels[i] if i < len(labels) else f"part {i + 1}", a.first)


if __name__ == "__main__":
    main()
