"""CPU benchmark of the exact CNN kernels: speed, peak memory and error of every backend.

    .venv/bin/python benchmarks/kernels.py            # full table (about 6 minutes on 2 cores)
    .venv/bin/python benchmarks/kernels.py --quick    # depth 3, float32 only (about a minute)
    ./dev.sh bench [options]

Every row is one (image size, depth, readout, backend, dtype), run in its own child process:
- entries/s: kernel entries (image pairs) of a cross kernel ``cntk.kernel(x1, x2, arch)`` (n1 x n2
  random images, no symmetry to exploit) divided by the wall time of that call, after a warm-up call
  (JIT compilation and caches excluded); n1 x n2 grows from 1 x 1 (1 x 8 for numba, which evaluates
  pairs 8 at a time) until one call takes at least a third of ``--seconds``.
- peak MiB: the child's peak resident memory during the timed calls above its resident memory just
  before them (Linux: VmHWM of /proc/self/status after resetting it through /proc/self/clear_refs;
  torch's and numba's allocations included, unlike tracemalloc).
- max rel err: max |k - k_ref| / |k_ref| over the 3 entries of a 2-image Gram matrix (the two self
  pairs included), k_ref from the reference backend in float64 computed in this process.
- vs ref: this row's entries/s over the reference backend's for the same size, depth, readout, dtype.

Then a summary (default backend over reference; flatten over GAP, the O(P) against O(P^2) claim) and
the anchors of docs/anchors.md: neural-tangents 0.6.5 on this kind of 2-core machine, float32, 32x32x3,
3 conv layers (depth 4): 3.6 entries/s (CNN-GAP), about 18,500 entries/s (CNN-Flatten).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"32x32x3": (3, 32, 32), "8x8x1": (1, 8, 8)}
NT_ANCHORS = {"gap": 3.6, "flatten": 18_500.0}  # docs/anchors.md, measured, float32
# backends that evaluate pairs in blocks (numba: one x1 image against 8 x2 images, one SIMD lane each)
# start their rows at 1 x block, so that a 1 x 1 call's idle lanes do not count against them
BLOCK = {"numba": 8}
ERR_IMAGES = 2  # the error set: a 2-image Gram matrix, 2 self pairs (rho = 1 exactly) and 1 cross pair
TARGETS = {"gap": 36.0, "flatten": 55_000.0}  # float32 entries/s for the default backend (the issue)
REFERENCE_SPEEDUP_TARGET = 20.0  # default backend over reference, GAP 32x32x3 depth 4, float64


# ----------------------------------------------------------------------------------------- child side
def _peak_reset() -> int | None:
    """Reset the peak RSS (VmHWM) of this process; return the current RSS in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child(spec: dict) -> dict:
    """Time one row; return entries/s, peak memory and the values on the error set."""
    import torch

    import cntk

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    dtype = getattr(torch, spec["dtype"])
    arch = cntk.Architecture(depth=spec["depth"], readout=spec["readout"])
    shape = tuple(spec["shape"])
    side = spec["max_side"]
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(2 * side, *shape, generator=g, dtype=torch.float64).to(dtype)
    err_set = torch.randn(ERR_IMAGES, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)

    def run(n1: int, n2: int) -> float:
        x1, x2 = pool[:n1], pool[side : side + n2]
        t = time.perf_counter()
        cntk.kernel(x1, x2, arch, backend=spec["backend"], progress=False)
        return time.perf_counter() - t

    # warm-up on tiny images: JIT compilation (or its disk cache), thread pools, torch's lazy init;
    # no image-sized buffer stays resident, so the peak below is the timed calls' own memory
    tiny = torch.randn(2, shape[0], 2, 2, dtype=dtype)
    cntk.kernel(tiny[:1], tiny[1:], arch, backend=spec["backend"], progress=False)
    base = _peak_reset()
    n1, n2 = 1, min(side, BLOCK.get(spec["backend"], 1))
    first = True  # the first full-size call pays page faults and allocator growth: kept only if long
    while True:
        secs = run(n1, n2)
        if secs >= spec["seconds"] / 3 or (n1 >= side and n2 >= side):
            if not first or secs >= spec["seconds"]:
                break
            secs = run(n1, n2)
            break
        first = False
        grow = min(16.0, max(2.0, spec["seconds"] / max(secs, 1e-6)))
        if n2 < side:
            n2 = min(side, max(n2 + 1, int(n2 * grow)))
        else:
            n1 = min(side, max(n1 + 1, int(n1 * grow)))
    peak = _status("VmHWM")
    peak_mib = (peak - base) / 1024 if peak is not None and base is not None else float("nan")
    same_as_truth = spec["backend"] == "reference" and spec["dtype"] == "float64"
    values = None if same_as_truth else cntk.kernel(err_set, None, arch, backend=spec["backend"], progress=False)
    return {
        "entries": n1 * n2,
        "seconds": secs,
        "entries_per_s": n1 * n2 / secs,
        "peak_mib": peak_mib,
        "values": None if values is None else values.double().tolist(),
    }


# ---------------------------------------------------------------------------------------- parent side
def run_child(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True, text=True, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"row {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def truth(shape: tuple[int, int, int], depth: int, readout: str):
    import torch

    import cntk

    x = torch.randn(ERR_IMAGES, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return cntk.kernel(x, None, cntk.Architecture(depth=depth, readout=readout), backend="reference").numpy()


def max_rel_err(values, ref) -> float:
    import numpy as np

    if values is None:  # the reference in float64 is the truth itself
        return 0.0
    v = np.asarray(values)
    iu = np.triu_indices(len(ref))
    return float((np.abs(v - ref)[iu] / np.abs(ref)[iu]).max())


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:,.2f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="depth 3, float32 only, shorter timings")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma list from {list(SIZES)}")
    ap.add_argument("--depths", default=None, help="comma list (default 3,6,11; --quick: 3)")
    ap.add_argument("--readouts", default="gap,flatten")
    ap.add_argument("--backends", default=None, help="comma list (default: reference, planes and the fused CPU ones)")
    ap.add_argument("--dtypes", default=None, help="comma list (default float32,float64; --quick: float32)")
    ap.add_argument("--seconds", type=float, default=None, help="target seconds of the last timed call per row")
    ap.add_argument("--max-side", type=int, default=512, help="largest n1, n2 per row")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads in every row (default: torch's)")
    ap.add_argument("--no-anchors", action="store_true", help="skip the neural-tangents anchor rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    sys.path.insert(0, ROOT)
    import numba
    import torch

    import cntk

    default = cntk.choose_backend(cntk.Architecture(depth=3), "cpu").NAME
    backends = (
        args.backends.split(",")
        if args.backends
        else [b for b in ("reference", "planes", "numba") if b in cntk.available_backends()]
    )
    depths = [int(d) for d in (args.depths or ("3" if args.quick else "3,6,11")).split(",")]
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,float64")).split(",")
    seconds = args.seconds or (0.6 if args.quick else 1.5)
    sizes = args.sizes.split(",")
    readouts = args.readouts.split(",")

    print(f"# cntk kernel benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numba {numba.__version__} "
        f"({numba.config.NUMBA_NUM_THREADS} threads), default CPU backend: {default}"
    )
    print(f"command: {' '.join([os.path.relpath(sys.executable, ROOT), 'benchmarks/kernels.py', *argv])}")
    print(f"load average at start: {load()} (other processes share these cores: see benchmarks/README.md)")
    print()

    def spec(shape, depth, readout, backend, dtype, torch_threads=args.torch_threads):
        return {
            "shape": list(SIZES[shape]) if isinstance(shape, str) else list(shape), "depth": depth,
            "readout": readout, "backend": backend, "dtype": dtype, "seconds": seconds, "max_side": args.max_side,
            "torch_threads": torch_threads,
        }

    head = (
        f"{'image':<8} {'depth':>5} {'readout':<8} {'backend':<10} {'dtype':<8} {'entries/s':>12} "
        f"{'vs ref':>8} {'peak MiB':>9} {'max rel err':>12}"
    )
    print(head)
    print("-" * len(head))
    rates: dict[tuple, float] = {}
    for size in sizes:
        for depth in depths:
            for readout in readouts:
                ref = truth(SIZES[size], depth, readout)
                for dtype in dtypes:
                    for backend in backends:
                        res = run_child(spec(size, depth, readout, backend, dtype))
                        rate = res["entries_per_s"]
                        rates[(size, depth, readout, backend, dtype)] = rate
                        base = rates.get((size, depth, readout, "reference", dtype))
                        vs = f"{rate / base:.1f}x" if base else "-"
                        print(
                            f"{size:<8} {depth:>5} {readout:<8} {backend:<10} {dtype:<8} {fmt_rate(rate):>12} "
                            f"{vs:>8} {res['peak_mib']:>9.1f} {max_rel_err(res['values'], ref):>12.1e}",
                            flush=True,
                        )
    print()
    print(f"## summary (same run): default backend '{default}' over reference, and flatten over GAP")
    for size in sizes:
        for depth in depths:
            for dtype in dtypes:
                parts = []
                for readout in readouts:
                    d, r = rates.get((size, depth, readout, default, dtype)), rates.get((size, depth, readout, "reference", dtype))
                    if d and r:
                        parts.append(f"{readout} {d / r:,.1f}x over reference")
                g, f = rates.get((size, depth, "gap", default, dtype)), rates.get((size, depth, "flatten", default, dtype))
                if g and f:
                    parts.append(f"flatten {f / g:,.0f}x the entries/s of GAP")
                if parts:
                    print(f"{size:<8} depth {depth:>2} {dtype:<8} " + "; ".join(parts))

    if not args.no_anchors:
        print()
        print("## anchors: 32x32x3, 3 conv layers (depth 4), float32, cross kernel, NTK")
        print("neural-tangents 0.6.5, this kind of 2-core machine (docs/anchors.md): GAP 3.6 entries/s, flatten ~18,500")
        print(f"{'readout':<8} {'backend':<10} {'entries/s':>12} {'n-t anchor':>11} {'vs n-t':>8} {'target':>9} {'met':>4}")
        for readout in ("gap", "flatten"):
            res = run_child(spec("32x32x3", 4, readout, default, "float32"))
            rate = res["entries_per_s"]
            ok = "yes" if rate >= TARGETS[readout] else "NO"
            print(
                f"{readout:<8} {default:<10} {fmt_rate(rate):>12} {fmt_rate(NT_ANCHORS[readout]):>11} "
                f"{rate / NT_ANCHORS[readout]:>7.1f}x {fmt_rate(TARGETS[readout]):>9} {ok:>4}",
                flush=True,
            )
        # the reference at its best torch thread count (on a busy machine one thread can be faster)
        refs = {t: run_child(spec("32x32x3", 4, "gap", "reference", "float64", t))["entries_per_s"] for t in (None, 1)}
        ref = max(refs.values())
        ours = run_child(spec("32x32x3", 4, "gap", default, "float64"))["entries_per_s"]
        ok = "yes" if ours / ref >= REFERENCE_SPEEDUP_TARGET else "NO"
        print(
            f"GAP depth 4 float64: reference {fmt_rate(ref)} entries/s (best of torch's default threads: "
            f"{fmt_rate(refs[None])}, 1 thread: {fmt_rate(refs[1])}), {default} {fmt_rate(ours)} entries/s: "
            f"{ours / ref:.1f}x (target {REFERENCE_SPEEDUP_TARGET:.0f}x: {ok})"
        )
    print()
    print(f"load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
