#!/usr/bin/env python3
"""Where a kernel's instructions and stalls go, between its barriers.

    sass_segments.py SASS.csv [--kernel SUBSTRING] [--min-share 0.3]

SASS.csv: `ncu -i REPORT --page source --csv --print-source sass` of a report
taken with the SourceCounters section (bench/gpu/profile_prefill.sh writes
one). The kernel's instructions are cut at every barrier (BAR) and exit;
each piece prints its share of the executed instructions and of the stall
samples, its most executed opcodes and its top stall reasons, with the SASS
offsets it spans (bytes from the kernel's first instruction), so the pieces map back
to the source's phases (a __syncthreads() ends each; BAR.ARV, an arrive
without a wait, ends one too). Then the kernel's stall reasons overall.
"""
import argparse
import collections
import csv
import sys


def kernels(path):
    """(name, header, rows) for each kernel in the CSV."""
    out, cur = [], None
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for r in csv.reader(f):
            if r and r[0] == "Kernel Name":
                cur = [r[1] if len(r) > 1 else "", None, []]
                out.append(cur)
            elif r and r[0] == "Address" and cur is not None:
                cur[1] = r
            elif cur is not None and cur[1] is not None and r:
                cur[2].append(r)
    return out


def count(text):
    """An ncu counter cell: '1,024' or '' (none) as an int."""
    text = text.replace(",", "").strip()
    return int(float(text)) if text else 0


def opcode(text):
    t = text.split()
    if not t:
        return ""
    return t[1] if t[0].startswith("@") and len(t) > 1 else t[0]


def report(name, hdr, rows, min_share):
    ix = {h: i for i, h in enumerate(hdr)}
    need = ["Address", "Source", "Instructions Executed", "Warp Stall Sampling (All Samples)"]
    missing = [h for h in need if h not in ix]
    if missing:
        sys.exit(f"sass_segments: {name[:60]}: no column {', '.join(missing)} (profile with --section SourceCounters)")
    addr, src, ex, st = (ix[h] for h in need)
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    num = lambda r, i: count(r[i]) if i < len(r) else 0  # noqa: E731
    base = int(rows[0][addr], 16)
    offset = lambda r: int(r[addr], 16) - base  # noqa: E731  (bytes from the kernel's first instruction)
    total = sum(num(r, ex) for r in rows) or 1
    total_st = sum(num(r, st) for r in rows) or 1
    print(f"== {name[:110]}\n   {len(rows)} instructions, {total:,} executed (warp level)")
    start, n, s = 0, 0, 0
    ops, why = collections.Counter(), collections.Counter()
    for i, r in enumerate(rows):
        op = opcode(r[src])
        n += num(r, ex)
        s += num(r, st)
        ops[op] += num(r, ex)
        for h in reasons:
            why[h] += num(r, ix[h])
        if op.startswith("BAR") or op == "EXIT" or i == len(rows) - 1:
            if 100 * n / total >= min_share or 100 * s / total_st >= min_share:
                w = sum(why.values()) or 1
                print(f"   +{offset(rows[start]):05x}-+{offset(r):05x} exec {100 * n / total:5.1f}% "
                      f"stall {100 * s / total_st:5.1f}% | "
                      + " ".join(f"{k}:{100 * v // max(n, 1)}" for k, v in ops.most_common(6)) + " | "
                      + " ".join(f"{k[6:]}:{100 * v // w}" for k, v in why.most_common(3)))
            start, n, s = i + 1, 0, 0
            ops, why = collections.Counter(), collections.Counter()
    overall = collections.Counter()
    for r in rows:
        for h in reasons:
            overall[h] += num(r, ix[h])
    w = sum(overall.values()) or 1
    print("   stalls: " + " ".join(f"{k[6:]}:{100 * v / w:.1f}%" for k, v in overall.most_common(8)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--kernel", default="", help="only kernels whose name contains this")
    ap.add_argument("--min-share", type=float, default=0.3, help="hide pieces below this %% of both totals")
    a = ap.parse_args()
    found = [k for k in kernels(a.csv) if a.kernel in k[0] and k[1] is not None]
    if not found:
        sys.exit(f"sass_segments: no kernel with SASS rows in {a.csv}")
    seen = set()
    for name, hdr, rows in found:
        if name in seen:  # ncu repeats a kernel's page per launch profiled
            continue
        seen.add(name)
        report(name, hdr, rows, a.min_share)


if __name__ == "__main__":
    main()
