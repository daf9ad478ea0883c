"""GPU benchmark of the fused Triton backend against the reference and planes backends.

    python benchmarks/gpu_kernels.py --check     # correctness on the GPU first, then the benchmark
    python benchmarks/gpu_kernels.py             # benchmark only
    python benchmarks/gpu_kernels.py --check-only
    python benchmarks/gpu_kernels.py --sweep     # also time num_warps 4 / 8 / 16 for the fused kernel

What it measures, on one GPU in one run: symmetric Gram matrices of 32 x 32 x 3 images
(standardised uniform noise, CIFAR-10's shape), CNTK-GAP and CNTK-V (flatten), NTK, depths 3, 11,
21, float32, through ``cntk.kernel`` (tiling, per-image statistics and all), for backend="triton",
"planes" and "reference".  Time is per distinct pair evaluated (a symmetric Gram of n images
computes n (n + 1) / 2 of them; the other half is mirrored), after a warm-up call that compiles.
Image counts adapt so that each measurement takes about a second.  Accuracy: the largest relative
error of any float32 entry against the float64 reference backend on a few images.

Targets (one H100): GAP depth 21 at most 30 us per entry, flatten at most 0.1 us per entry, and
the time a full CIFAR-10 Gram (60,000 x 60,000 symmetric: 1.8e9 distinct pairs) would take.

--check runs, before the benchmark: the conformance suite on the GPU (every backend against the
reference, zero variance, tiling, float32), then float32 against float64 to 1e-5 at depths 11 and
21 on 32 x 32 images with zero borders.
Total runtime is kept under about 5 minutes (--budget-s); without a CUDA device it exits at once.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import cntk  # noqa: E402

N_CIFAR = 60_000
TARGET_US = {"gap": 30.0, "flatten": 0.1}  # per entry, depth 21, one H100
START = time.perf_counter()
# what is measured; --smoke swaps in tiny CPU settings (Triton's interpreter) to test this script
DEVICE = "cuda"
SHAPE = (3, 32, 32)
DEPTHS = (3, 11, 21)
PLAN = {  # backend -> readout -> (starting n, largest n, seconds aimed at); reference is slow: few pairs
    "triton": {"gap": (32, 512, 1.0), "flatten": (256, 4096, 1.0)},
    "planes": {"gap": (4, 16, 1.0), "flatten": (64, 1024, 1.0)},
    "reference": {"gap": (2, 4, 1.0), "flatten": (2, 4, 1.0)},
}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def images(n: int, shape=None, seed: int = 0, border: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Standardised uniform noise (like preprocessed CIFAR-10); an optional zero border (zero variance)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *(shape or SHAPE), generator=g, dtype=torch.float64)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    if border:
        x[..., :border, :] = 0
        x[..., -border:, :] = 0
        x[..., :, :border] = 0
        x[..., :, -border:] = 0
    return x.to(device=DEVICE, dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entrywise relative error of a against b."""
    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def sync_time(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------ check


def check(budget_end: float) -> bool:
    """Correctness of the triton backend on this GPU; returns True when every case passes."""
    log("check: the conformance suite on the GPU (tests/test_backends_conformance.py, CNTK_TEST_DEVICE=cuda)")
    import subprocess

    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "--tb=line", "-p", "no:cacheprovider",
                            str(Path(__file__).resolve().parents[1] / "tests" / "test_backends_conformance.py")],
                           env={**os.environ, "CNTK_TEST_DEVICE": DEVICE}, capture_output=True, text=True)
    lines = suite.stdout.strip().splitlines() or ["(no output)"]
    for line in lines[:-1]:
        if line.startswith("FAILED") or line.startswith("ERROR"):
            log("  " + line)
    log("  " + lines[-1])
    ok = suite.returncode == 0
    # general filter size
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(depth=4, readout=readout, filter_size=5)
        err = rel(cntk.kernel(x, None, arch, backend="triton"), cntk.kernel(x, None, arch, backend="reference"))
        log(f"  float64 q=5 {readout}: {err:.2e}")
        ok &= err < 1e-10
    # full-size images, many pairs: items of many fold blocks, partial last groups, many programs
    x = images(12, dtype=torch.float64, seed=7)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(depth=3, readout=readout)
        err = rel(cntk.kernel(x, None, arch, backend="triton"), cntk.kernel(x, None, arch, backend="planes"))
        err_cross = rel(cntk.kernel(x[:5], x[5:], arch, backend="triton"),
                        cntk.kernel(x[:5], x[5:], arch, backend="planes"))
        log(f"  float64 {'x'.join(map(str, SHAPE[::-1]))} {readout}, 12 images vs planes: {err:.2e}, "
            f"cross {err_cross:.2e}")
        ok &= err < 1e-10 and err_cross < 1e-10
    # float32 against float64, every entry, diagonal included (rho = 1 on self pairs)
    for depth, readout in itertools.product(DEPTHS[1:], ("gap", "flatten")):
        if time.perf_counter() > budget_end:
            log("  budget reached: float32 checks cut short")
            break
        x = images(3, border=2, dtype=torch.float64, seed=depth)
        arch = cntk.Architecture(depth=depth, readout=readout)
        ref = cntk.kernel(x, None, arch, backend="reference")
        e32 = rel(cntk.kernel(x.float(), None, arch, backend="triton"), ref)
        e64 = rel(cntk.kernel(x, None, arch, backend="triton"), ref)
        line = (f"  {'x'.join(map(str, SHAPE[::-1]))} depth {depth} {readout}: float32 {e32:.2e} "
                f"(tolerance 1e-5), float64 {e64:.2e} (1e-10)")
        if e32 >= 1e-5 and os.environ.get("CNTK_TRITON_IEEE") != "1":
            os.environ["CNTK_TRITON_IEEE"] = "1"
            e_ieee = rel(cntk.kernel(x.float(), None, arch, backend="triton"), ref)
            del os.environ["CNTK_TRITON_IEEE"]
            line += f"; with CNTK_TRITON_IEEE=1: {e_ieee:.2e}"
        log(line)
        ok &= e32 < 1e-5 and e64 < 1e-10
    log(f"check: {'PASSED' if ok else 'FAILED'}")
    return ok


# -------------------------------------------------------------------------------------- benchmark


def per_pair_seconds(backend: str, arch: cntk.Architecture, n0: int, n_max: int, target_s: float) -> tuple[float, int]:
    """Seconds per distinct pair of a symmetric float32 Gram, image count adapted to ~target_s."""

    def run(n: int) -> float:
        x = images(n, seed=n)
        return sync_time(lambda: cntk.kernel(x, None, arch, backend=backend, progress=False))

    run(min(n0, 2))  # warm-up: compilation, allocator
    n = n0
    t = run(n)
    per = t / (n * (n + 1) / 2)
    want = int(((2 * target_s / per) ** 0.5))
    if want > 1.5 * n:
        n = min(n_max, want)
        t = run(n)
        per = t / (n * (n + 1) / 2)
    return per, n


def accuracy(backend: str, arch: cntk.Architecture, ref64: torch.Tensor, x64: torch.Tensor) -> float:
    return rel(cntk.kernel(x64.float(), None, arch, backend=backend, progress=False), ref64)


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def benchmark(budget_end: float, sweep: bool) -> None:
    log(f"benchmark: {'x'.join(map(str, SHAPE[::-1]))}, float32, NTK, symmetric Gram; us per distinct pair")
    plan = PLAN
    pairs_cifar = N_CIFAR * (N_CIFAR + 1) / 2
    rows = []
    x64 = images(3, dtype=torch.float64, seed=123)
    for depth, readout in itertools.product(DEPTHS, ("gap", "flatten")):
        arch = cntk.Architecture(depth=depth, readout=readout)
        ref64 = cntk.kernel(x64, None, arch, backend="reference", progress=False)
        for backend in ("triton", "planes", "reference"):
            if time.perf_counter() > budget_end and backend != "triton":
                rows.append((depth, readout, backend, None, None, None, "skipped: time budget"))
                continue
            n0, n_max, target = plan[backend][readout]
            try:
                per, n = per_pair_seconds(backend, arch, n0, n_max, target)
                err = accuracy(backend, arch, ref64, x64)
                rows.append((depth, readout, backend, per, n, err, ""))
                log(f"  depth {depth:2d} {readout:7s} {backend:9s}: {per * 1e6:10.3f} us/pair (n={n}), "
                    f"float32 max rel err {err:.1e}")
            except Exception as exc:  # keep going: one failing backend must not lose the table
                rows.append((depth, readout, backend, None, None, None, f"error: {type(exc).__name__}: {exc}"[:120]))
                log(f"  depth {depth:2d} {readout:7s} {backend:9s}: {rows[-1][-1]}")
    print()
    print(f"device: {device_name()}  torch {torch.__version__}  triton "
          f"{__import__('triton').__version__}")
    head = (f"{'depth':>5} {'readout':>8} {'backend':>10} {'us/pair':>12} {'pairs/s':>12} {'Gram entries/s':>15} "
            f"{'n':>5} {'f32 rel err':>11} {'vs ref':>9} {'CIFAR-10 Gram':>14}")
    print(head)
    print("-" * len(head))
    ref_us = {(d, r): per for d, r, b, per, *_ in rows if b == "reference" and per}
    for depth, readout, backend, per, n, err, note in rows:
        if per is None:
            print(f"{depth:>5} {readout:>8} {backend:>10}  {note}")
            continue
        n_entries = n * n / (n * (n + 1) / 2)  # Gram entries per distinct pair at this n
        speedup = ref_us.get((depth, readout), float("nan")) / per
        print(f"{depth:>5} {readout:>8} {backend:>10} {per * 1e6:>12.3f} {1 / per:>12.3g} {n_entries / per:>15.3g} "
              f"{n:>5} {err:>11.1e} {speedup:>8.1f}x {fmt_time(per * pairs_cifar):>14}")
    print()
    for readout, target in TARGET_US.items():
        hit = [per for d, r, b, per, *_ in rows if b == "triton" and d == max(DEPTHS) and r == readout and per]
        if hit:
            us = hit[0] * 1e6
            verdict = "meets" if us <= target else "misses"
            print(f"target {readout} depth {max(DEPTHS)}: {us:.3f} us per distinct pair "
                  f"({us / 2:.3f} us per Gram entry "
                  f"counting both triangles) vs {target} us: {verdict} the target (per distinct pair)")
    print(f"CIFAR-10 Gram: {N_CIFAR} x {N_CIFAR} symmetric = {pairs_cifar:.3g} distinct pairs "
          "(the column 'CIFAR-10 Gram' is that count times us/pair, on this one GPU)")
    if sweep:
        print()
        log(f"sweep: num_warps of the fused kernel (CNTK_TRITON_NUM_WARPS), depth {max(DEPTHS)}")
        for readout, warps in itertools.product(("gap", "flatten"), (4, 8, 16)):
            if time.perf_counter() > budget_end:
                log("  budget reached: sweep cut short")
                break
            os.environ["CNTK_TRITON_NUM_WARPS"] = str(warps)
            try:
                arch = cntk.Architecture(depth=max(DEPTHS), readout=readout)
                n0, n_max, target = plan["triton"][readout]
                per, n = per_pair_seconds("triton", arch, n0, n_max, 0.5)
                log(f"  {readout:7s} num_warps={warps:2d}: {per * 1e6:.3f} us/pair (n={n})")
            except Exception as exc:
                log(f"  {readout:7s} num_warps={warps:2d}: error {type(exc).__name__}: {exc}"[:160])
            finally:
                del os.environ["CNTK_TRITON_NUM_WARPS"]


def device_name() -> str:
    if DEVICE != "cuda":
        return "CPU (Triton interpreter: a test of this script, not a measurement)"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.multi_processor_count} SMs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check correctness on the GPU before benchmarking")
    parser.add_argument("--check-only", action="store_true", help="only the correctness check")
    parser.add_argument("--sweep", action="store_true", help="also time num_warps 4, 8, 16 of the fused kernel")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new measurements after this")
    parser.add_argument("--smoke", action="store_true",
                        help="test this script on the CPU: Triton's interpreter, 6x6 images, depths 2-3, tiny n")
    args = parser.parse_args(argv)
    if args.smoke:
        global DEVICE, SHAPE, DEPTHS, PLAN
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, SHAPE, DEPTHS = "cpu", (2, 6, 6), (2, 3)
        PLAN = {b: {r: (2, 3, 0.05) for r in ("gap", "flatten")} for b in ("triton", "planes", "reference")}
    elif not torch.cuda.is_available():
        print("gpu_kernels.py: no CUDA device is available; nothing to measure (run it on a GPU machine).")
        return 0
    if "triton" not in cntk.available_backends():
        why = cntk.api._UNAVAILABLE.get("triton", "unknown reason")
        print(f"gpu_kernels.py: the triton backend does not import here ({why}).")
        return 1
    if os.environ.get("TRITON_INTERPRET") == "1" and not args.smoke:
        print("gpu_kernels.py: TRITON_INTERPRET=1 is set: unset it to time compiled kernels.")
        return 1
    log(f"device {device_name()}")
    budget_end = START + args.budget_s
    ok = True
    if args.check or args.check_only:
        ok = check(START + 0.5 * args.budget_s if not args.check_only else budget_end)
    if not args.check_only:
        benchmark(budget_end, args.sweep)
    log("done")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
