#!/usr/bin/env python3
"""Sum ncu's per-kernel times into a table: where one profiled step's device time goes.

Reads the output of
    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv PROGRAM ...
(the program's own lines first, then one CSV row per kernel launch and metric; the header row
starts with "ID"), sums gpu__time_duration by kernel name (templates and arguments cut off,
names shortened) and prints the total, the kernel count and the top N by time:
    RESULT ncu_step kernels=<n> total_ms=<t>
Used by scripts/gpu_check.sh's profile stage; docs/gpu.md says what the step is.

usage: ncu_summary.py LOG [TOP=30]
"""
import csv
import re
import sys

# ncu names its time units either way (2026-12-04 on the H200, ncu 2025.3: "ns")
UNITS = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3,
         "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def short(name):
    """The kernel's name without its namespaces, template arguments and parameter list."""
    name = name.strip().replace("(anonymous namespace)::", "")
    depth, out = 0, []
    for ch in name:  # drop <...>, nested
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    name = "".join(out).split("(")[0].strip()  # the parameter list
    if name.startswith("void "):
        name = name[5:]
    return name.split("::")[-1].strip() or name


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    lines = open(sys.argv[1], errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit("ncu_summary: no CSV header (a line starting with \"ID\") in " + sys.argv[1])
    rows = list(csv.reader(l for l in lines[start:] if l.startswith('"')))
    head = rows[0]
    try:
        k, mn, mu, mv = (head.index(c) for c in
                         ("Kernel Name", "Metric Name", "Metric Unit", "Metric Value"))
    except ValueError:
        sys.exit("ncu_summary: unexpected CSV header: " + ", ".join(head))
    total, count, by = 0.0, 0, {}
    for r in rows[1:]:
        if len(r) <= max(k, mn, mu, mv) or r[mn] != "gpu__time_duration.sum":
            continue
        if r[mu] not in UNITS:  # a total of nan would read as a result
            sys.exit(f"ncu_summary: unknown time unit {r[mu]!r} in {sys.argv[1]}")
        ms = float(r[mv].replace(",", "")) * UNITS[r[mu]]
        name = short(r[k])
        t, n = by.get(name, (0.0, 0))
        by[name] = (t + ms, n + 1)
        total += ms
        count += 1
    print(f"one profiled step: {count} kernels, {total:.3f} ms of kernel time (ncu, serialised)")
    print(f"  {'kernel':58s} {'launches':>8s} {'ms':>9s} {'share':>6s}")
    for name, (t, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {name[:58]:58s} {n:8d} {t:9.3f} {100 * t / total if total else 0:5.1f}%")
    print(f"RESULT ncu_step kernels={count} total_ms={total:.3f}")


if __name__ == "__main__":
    main()
