"""A backend of this checkout against the same backend of another checkout (e.g. the commit before a
change), on the paper's family, interleaved in one run: is it any slower?  Both must give the same
kernels (the largest relative difference is printed too).

    python benchmarks/backend_regression.py OTHER_CHECKOUT [--backend numba] [--repeats 3] [--cases paper]
    git worktree add /tmp/before HEAD~1 && python benchmarks/backend_regression.py /tmp/before
    python benchmarks/backend_regression.py /tmp/before --cases mnist   # 28x28x1 float32 GAP, depths 3 and 11

Each measurement runs in its own process (the two checkouts' modules never mix), alternating
A B A B ..., best of the repeats (and of ``--calls`` kernel calls per process); symmetric Gram
matrices of n random images.  Case sets (``--cases``,
comma-separated): ``paper`` (the default: 32 x 32 x 3 float32 / float64, GAP and flatten), ``mnist``
(28 x 28 x 1 float32 GAP, depths 3 and 11: the fused kernel's speed target), ``all``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# (readout, depth, dtype, n images, channels, height = width)
CASES = {
    "paper": [("gap", 4, "float32", 8, 3, 32), ("gap", 11, "float32", 6, 3, 32), ("flatten", 4, "float32", 256, 3, 32),
              ("flatten", 21, "float32", 128, 3, 32), ("gap", 4, "float64", 6, 3, 32),
              ("flatten", 4, "float64", 256, 3, 32)],
    "mnist": [("gap", 3, "float32", 16, 1, 28), ("gap", 11, "float32", 8, 1, 28)],
}
CASES["all"] = CASES["paper"] + CASES["mnist"]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch, cntk
readout, depth, dtype, n = sys.argv[2], int(sys.argv[3]), getattr(torch, sys.argv[4]), int(sys.argv[5])
backend, ch, hw = sys.argv[6], int(sys.argv[8]), int(sys.argv[9])
torch.manual_seed(0)
x = torch.randn(n, ch, hw, hw, dtype=dtype)
arch = cntk.Architecture(depth=depth, readout=readout)
cntk.kernel(x[:2], x[2:4], arch, backend=backend, progress=False)  # compile or load the cache
dt = float("inf")
for _ in range(int(sys.argv[10])):  # best of the calls: one slow second of a shared machine does not count
    t0 = time.perf_counter(); k = cntk.kernel(x, None, arch, backend=backend, progress=False); dt = min(dt, time.perf_counter() - t0)
np.save(sys.argv[7], k.double().numpy())
print(json.dumps({"seconds": dt, "entries": n * (n + 1) // 2}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="the other checkout (a git worktree of another commit)")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--repeats", type=int, default=3, help="worker processes per checkout and case, alternating")
    ap.add_argument("--calls", type=int, default=3, help="timed kernel calls per worker process (best of them)")
    ap.add_argument("--cases", default="paper", help="comma-separated case sets: " + ", ".join(CASES))
    args = ap.parse_args()
    import numpy as np

    cases = [case for name in args.cases.split(",") for case in CASES[name.strip()]]
    here = Path(__file__).resolve().parents[1]
    roots = {"this": here, "other": args.other.resolve()}
    print(f"| case | {args.backend} entries/s, this checkout | other checkout | this / other | max rel. difference |")
    print("|---|---|---|---|---|")
    for readout, depth, dtype, n, ch, hw in cases:
        best = {k: 0.0 for k in roots}
        for _ in range(args.repeats):
            for name, root in roots.items():
                out = subprocess.run([sys.executable, "-c", WORKER, str(root), readout, str(depth), dtype, str(n),
                                      args.backend, f"/tmp/backend_regression_{name}.npy", str(ch), str(hw), str(args.calls)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                best[name] = max(best[name], r["entries"] / r["seconds"])
        a, b = np.load("/tmp/backend_regression_this.npy"), np.load("/tmp/backend_regression_other.npy")
        diff = float(np.abs(a - b).max() / np.abs(b).max())
        print(f"| {readout} depth {depth} {dtype} {hw}x{hw}x{ch} (n = {n}) | {best['this']:,.0f} | "
              f"{best['other']:,.0f} | "
              f"{best['this'] / best['other']:.3f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
