"""One pass for every depth and both kernels (``cntk.kernels``) against the separate calls it replaces,
interleaved in one run on the same images, with the largest relative difference between them; then
the same with the paper's "fix" NTK read off the same pass (``fixes=(False, True)``), and the
per-entry cost of that fix readout against the one pass without it.

    python benchmarks/one_pass.py                          # 28 x 28 x 1, GAP and flatten, depths 3, 6, 11
    python benchmarks/one_pass.py --n 24 --repeats 3 --dtype float64

Each side: a symmetric Gram of n standardised-noise images; separate = one ``cntk.kernel`` call per
(depth, kind) (and per fix: (ntk, nngp) unfixed, ntk fixed; the fixed NNGP is the unfixed one).  The
fix overhead: a --block x --block cross block at the deepest depth, GAP, one pass with and without
the fix readout.  Best of the repeats (first call per process compiles: a warm-up runs first).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import cntk  # noqa: E402

FIXED = (("ntk", False), ("nngp", False), ("ntk", True))  # the kernels of Table 1's GAP half per depth


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _diff(one: dict, sep: dict) -> float:
    return max(float(((one[k].double() - sep[k].double()).abs() / sep[k].double().abs()).max()) for k in sep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--depths", default="3,6,11")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--block", type=int, default=16, help="side of the cross block of the fix overhead")
    args = ap.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, 1, args.size, args.size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.n} images {args.size}x{args.size}x1, {args.dtype}, depths {depths}, "
          f"{torch.get_num_threads()} threads, load average {load:.2f}")
    print("\n(ntk, nngp) per depth:\n")
    print("| readout | backend | one pass s | separate calls s | one pass / separate | max rel. difference |")
    print("|---|---|---:|---:|---:|---:|")
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(readout=readout)
        backend = cntk.choose_backend(arch, "cpu").NAME
        cntk.kernels(x[:2], None, arch, depths=depths, progress=False)  # compile / load
        best = {"one": float("inf"), "sep": float("inf")}
        for _ in range(args.repeats):
            t = time.perf_counter()
            one = cntk.kernels(x, None, arch, depths=depths, progress=False)
            best["one"] = min(best["one"], time.perf_counter() - t)
            t = time.perf_counter()
            sep = {(d, k): cntk.kernel(x, None, cntk.depths.network_at(arch, d), k, progress=False)
                   for d in depths for k in cntk.KINDS}
            best["sep"] = min(best["sep"], time.perf_counter() - t)
        print(f"| {readout} | {backend} | {best['one']:.3f} | {best['sep']:.3f} | {best['one'] / best['sep']:.3f} | "
              f"{_diff(one, sep):.1e} |", flush=True)
    print("\n(ntk, nngp, ntk fix) per depth, fixes=(False, True):\n")
    print("| readout | backend | one pass s | separate calls s | one pass / separate | max rel. difference |")
    print("|---|---|---:|---:|---:|---:|")
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(readout=readout)
        backend = cntk.choose_backend(arch, "cpu").NAME
        cntk.kernels(x[:2], None, arch, depths=depths, fixes=(False, True), progress=False)  # compile / load
        best = {"one": float("inf"), "sep": float("inf")}
        for _ in range(args.repeats):
            t = time.perf_counter()
            one = cntk.kernels(x, None, arch, depths=depths, fixes=(False, True), progress=False)
            best["one"] = min(best["one"], time.perf_counter() - t)
            t = time.perf_counter()
            sep = {(d, k, f): cntk.kernel(x, None, dataclasses.replace(arch, depth=d, fix_first_last=f), k, progress=False)
                   for d in depths for k, f in FIXED}
            best["sep"] = min(best["sep"], time.perf_counter() - t)
        print(f"| {readout} | {backend} | {best['one']:.3f} | {best['sep']:.3f} | {best['one'] / best['sep']:.3f} | "
              f"{_diff(one, sep):.1e} |", flush=True)
    # the fix readout's own cost: the deepest GAP network, a cross block, one pass with and without it
    b = args.block
    a, c = (torch.randn(b, 1, args.size, args.size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
            for seed in (1, 2))
    arch = cntk.Architecture(readout="gap", depth=max(depths))
    top = (max(depths),)
    runs = {"without": lambda: cntk.kernels(a, c, arch, depths=top, kinds=("ntk",), progress=False),
            "with": lambda: cntk.kernels(a, c, arch, depths=top, kinds=("ntk",), fixes=(False, True), progress=False)}
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):  # interleaved
        for k, fn in runs.items():
            best[k] = min(best[k], _best(fn, 1)[0])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    entries = len(a) * len(c)
    print(f"\nfix readout overhead: GAP depth {max(depths)}, {len(a)}x{len(c)} cross block, ntk: one pass "
          f"{best['without']:.3f} s ({best['without'] / entries * 1e3:.1f} ms/entry), with the fix readout "
          f"{best['with']:.3f} s ({best['with'] / entries * 1e3:.1f} ms/entry): x{best['with'] / best['without']:.3f} "
          f"(load average {load:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
