"""torch.compile (inductor, CPU) of the planes backend against the numba backend, same inputs.

    .venv/bin/python benchmarks/compile_check.py            # flatten (about 4 minutes: compilation)
    .venv/bin/python benchmarks/compile_check.py --gap      # also GAP (its compilation took > 10 min)

32x32x3 images, depth 4, float32, NTK, a cross kernel; entries/s of the best of 3 calls after the
first (compiling) call.  Results are recorded in benchmarks/README.md ("Compiler choice").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import cntk  # noqa: E402
from cntk.backends import chain as chain_form, planes  # noqa: E402


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gap", action="store_true", help="also compile and time the GAP readout")
    args = ap.parse_args()
    torch.manual_seed(0)
    for readout, n in [("flatten", 64)] + ([("gap", 4)] if args.gap else []):
        arch = cntk.Architecture(depth=4, readout=readout)
        chain = chain_form.chain(arch.network())
        x, y = torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32)
        sx, sy = planes.prepare(x, arch), planes.prepare(y, arch)
        ii, jj = (g.reshape(-1) for g in torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
        same = torch.zeros(len(ii), dtype=torch.bool)
        compiled = torch.compile(planes.pairs, dynamic=False)
        with torch.no_grad():
            t = time.perf_counter()
            compiled(x[ii], sx[ii], y[jj], sy[jj], same, chain, "ntk")
            first = time.perf_counter() - t
            eager = best(lambda: planes.pairs(x[ii], sx[ii], y[jj], sy[jj], same, chain, "ntk"))
            comp = best(lambda: compiled(x[ii], sx[ii], y[jj], sy[jj], same, chain, "ntk"))
        cntk.kernel(x[:1], y[:8], arch, backend="numba", progress=False)  # JIT (disk cache) warm-up
        fused = best(lambda: cntk.kernel(x, y, arch, backend="numba", progress=False))
        e = n * n
        print(
            f"{readout}: {e} entries: planes eager {e / eager:,.1f}/s, planes torch.compile {e / comp:,.1f}/s "
            f"(first call incl. compilation {first:.0f} s), numba {e / fused:,.1f}/s"
        )


if __name__ == "__main__":
    main()
