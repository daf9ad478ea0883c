"""One pass for every depth and both kernels (``cntk.kernels``) against the separate calls it replaces,
interleaved in one run on the same images, with the largest relative difference between them.

    python benchmarks/one_pass.py                          # 28 x 28 x 1, GAP and flatten, depths 3, 6, 11
    python benchmarks/one_pass.py --n 24 --repeats 3 --dtype float64

Each side: a symmetric Gram of n standardised-noise images; separate = one ``cntk.kernel`` call per
(depth, kind).  Best of the repeats (first call per process compiles: a warm-up runs first).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import cntk  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--depths", default="3,6,11")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    x = torch.randn(args.n, 1, args.size, args.size, generator=torch.Generator().manual_seed(0),
                    dtype=getattr(torch, args.dtype))
    print(f"{args.n} images {args.size}x{args.size}x1, {args.dtype}, depths {depths} x (ntk, nngp), "
          f"{torch.get_num_threads()} threads")
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
        diff = max(float(((one[key].double() - sep[key].double()).abs() / sep[key].double().abs()).max()) for key in sep)
        print(f"| {readout} | {backend} | {best['one']:.3f} | {best['sep']:.3f} | {best['one'] / best['sep']:.3f} | "
              f"{diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
