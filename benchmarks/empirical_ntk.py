"""Empirical NTK throughput: finite_nets.empirical_ntk against a plain per-sample-gradient loop.

Default case (design.md, section 3): CNN-GAP with 3 conv layers (depth 4), width 256, 128 inputs of
16x16x3, the symmetric 128 x 128 kernel, float32 on the CPU.  neural-tangents 0.6.5 took 2.7 s
(jacobian contraction) and 4.2 s (structured derivatives) for it on this kind of 2-core machine.
Every method is timed in the same run, best of ``--repeats``, after one warm-up call.

    python benchmarks/empirical_ntk.py                      # the table
    python benchmarks/empirical_ntk.py --large              # large widths: time and peak memory
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cntk  # noqa: E402
import finite_nets  # noqa: E402

NEURAL_TANGENTS_S = {"jacobian contraction": 2.7, "structured derivatives": 4.2}
PEER_PYTHON = Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"  # benchmarks/peer_neural_tangents.sh

# Run by the neural-tangents environment: the same net (our weights, mapped to stax's NTK
# parameterisation: W_std = sqrt(C q^2) first, sqrt(c_sigma) = sqrt(2) hidden, readout sqrt(2 / q^2)
# (GAP) or sqrt(2 P / q^2) (flatten)), the same inputs, nt.empirical_ntk_fn per implementation.
PEER_CODE = r"""
import json, sys, time
import numpy as np, jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
d = np.load(sys.argv[1]); readout, repeats = sys.argv[2], int(sys.argv[3])
x = jnp.asarray(np.transpose(d["x"], (0, 2, 3, 1)))
ws = [d["w%d" % i] for i in range(int(d["n_layers"]))]
m, c = ws[0].shape[0], ws[0].shape[1]
h, w = x.shape[1], x.shape[2]
layers = [stax.Conv(m, (3, 3), padding="SAME", W_std=float(np.sqrt(9 * c)), b_std=None), stax.Relu()]
for _ in ws[1:]:
    layers += [stax.Conv(m, (3, 3), padding="SAME", W_std=float(np.sqrt(2.0)), b_std=None), stax.Relu()]
if readout == "gap":
    layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=float(np.sqrt(2 / 9)), b_std=None)]
    v = d["v"].T
else:
    layers += [stax.Flatten(), stax.Dense(1, W_std=float(np.sqrt(2 * h * w / 9)), b_std=None)]
    v = d["v"].reshape(1, m, h, w).transpose(0, 2, 3, 1).reshape(1, -1).T
_, apply_fn, _ = stax.serial(*layers)
params = [(jnp.asarray(wi.transpose(2, 3, 1, 0)), None) if i % 2 == 0 else () for i, wi in
          enumerate(sum(([wk, None] for wk in ws), []))] + [(), (jnp.asarray(v), None)]
out = []
for name, impl in (("jacobian contraction", 1), ("structured derivatives", 3)):
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=impl))
    k = fn(x, None, params).block_until_ready()
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        k = fn(x, None, params).block_until_ready()
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    out.append({"name": name, "wall": best, "cpu": cpu, "kernel": np.asarray(k, dtype=np.float64).tolist()})
print(json.dumps({"version": "neural-tangents %s, jax %s" % (nt.__version__, jax.__version__), "rows": out}))
"""


def peer_rows(python: str, net, x: torch.Tensor, readout: str, repeats: int) -> tuple[str, list[dict]]:
    """neural-tangents' empirical NTK of the same net on the same inputs, in its own environment."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.npz"
        arrays = {f"w{i}": w.detach().float().cpu().numpy() for i, w in enumerate(net.weights)}
        np.savez(path, x=x.float().cpu().numpy(), v=net.readout.detach().float().cpu().numpy(),
                 n_layers=len(net.weights), **arrays)
        res = subprocess.run([python, "-c", PEER_CODE, str(path), readout, str(repeats)], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"peer run failed: {res.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    return doc["version"], doc["rows"]


def per_sample_loop(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Baseline: one forward and backward per sample (torch.autograd.grad), stacked gradients, J J^T."""
    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        out = net(x[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    jac = torch.stack(rows)
    return jac @ jac.T


def timed(fn, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Best wall-clock and best process CPU seconds over ``repeats`` calls after a warm-up call."""
    result = fn()  # warm-up (allocations, torch.func tracing)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        if result.is_cuda:
            torch.cuda.synchronize()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, result


def table(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device) if args.device else finite_nets.default_device()
    arch = cntk.Architecture(family="cnn", depth=args.depth, readout=args.readout)
    shape = (args.channels, args.size, args.size)
    net = finite_nets.build(arch, args.width, input_shape=shape, seed=0, dtype=dtype, device=device)
    x = torch.randn(args.n, *shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    print(f"CNN-{args.readout.upper()} depth {args.depth}, width {args.width}, {args.n} x {shape}, {args.dtype}, "
          f"{device}, {torch.get_num_threads()} threads, {n_params:,} parameters, {args.n}x{args.n} kernel; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    methods = {
        "per-sample loop (baseline)": lambda: per_sample_loop(net, x),
        "empirical_ntk jacrev (torch.func)": lambda: finite_nets.empirical_ntk(net, x, method="jacrev", memory_mb=args.memory_mb),
        "empirical_ntk structured, gram": lambda: finite_nets.empirical_ntk(net, x, contraction="gram", memory_mb=args.memory_mb),
        "empirical_ntk structured, jacobian": lambda: finite_nets.empirical_ntk(net, x, contraction="jacobian", memory_mb=args.memory_mb),
        "empirical_ntk (auto)": lambda: finite_nets.empirical_ntk(net, x, memory_mb=args.memory_mb),
    }
    skip = set(args.skip or [])
    rows, ref = [], None
    for name, fn in methods.items():
        if any(s in name for s in skip):
            continue
        wall, cpu, k = timed(fn, args.repeats)
        k = k.reshape(args.n, args.n).double().cpu()
        ref = k if ref is None else ref
        rows.append((name, wall, cpu, float((k - ref).abs().max() / ref.abs().max())))
    peer = args.peer if args.peer is not None else (str(PEER_PYTHON) if PEER_PYTHON.exists() else "")
    if peer and device.type == "cpu" and args.threads in (None, 0):
        version, prows = peer_rows(peer, net, x, args.readout, args.repeats)
        for r in prows:
            k = torch.tensor(r["kernel"], dtype=torch.float64)
            rows.append((f"{version}: {r['name']}", r["wall"], r["cpu"], float((k - ref).abs().max() / ref.abs().max())))
    elif peer:
        print("(neural-tangents rows need --device cpu and default threads: skipped)")
    base = rows[0][1]
    print(f"\n| method | wall s | CPU s | kernel entries / s | speed-up vs loop | max rel. diff vs loop |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, cpu, diff in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.2f} | {args.n * args.n / wall:,.0f} | {base / wall:.2f}x | {diff:.1e} |")
    default_case = (args.width, args.depth, args.readout, args.n, args.size, args.channels) == (256, 4, "gap", 128, 16, 3)
    if default_case:
        for name, s in NEURAL_TANGENTS_S.items():
            print(f"| neural-tangents 0.6.5, {name} (design.md, another run) | {s:.1f} | | {args.n * args.n / s:,.0f} | | |")
    ours = [r[1] for r in rows[1:] if r[0].startswith("empirical_ntk")]
    if default_case and ours:
        print(f"\nbest finite_nets wall time {min(ours):.3f} s vs neural-tangents' 2.7 s of design.md: "
              f"{2.7 / min(ours):.2f}x")
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: on a shared machine wall times are upper bounds")


LARGE = [
    # (readout, depth, width, n, channels, size)
    ("gap", 3, 4096, 16, 1, 8),
    ("flatten", 3, 4096, 16, 1, 8),
    ("gap", 4, 512, 16, 3, 32),
    ("flatten", 4, 512, 16, 3, 32),
]


def one_case(spec: str, dtype: str, memory_mb: float) -> dict:
    readout, depth, width, n, c, s = json.loads(spec)
    arch = cntk.Architecture(family="cnn", depth=depth, readout=readout)
    t0 = time.perf_counter()
    net = finite_nets.build(arch, width, input_shape=(c, s, s), dtype=getattr(torch, dtype), device="cpu")
    t1 = time.perf_counter()
    x = torch.rand(n, c, s, s, dtype=getattr(torch, dtype))
    theta = finite_nets.empirical_ntk(net, x, memory_mb=memory_mb)
    t2 = time.perf_counter()
    exact = cntk.kernel(x.double(), None, arch, backend="planes")
    err = float((theta.double() - exact).norm() / exact.norm())
    return {"readout": readout, "depth": depth, "width": width, "n": n, "image": f"{s}x{s}x{c}", "dtype": dtype,
            "build_s": round(t1 - t0, 2), "ntk_s": round(t2 - t1, 2), "rel_error_vs_cntk": round(err, 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def large(args: argparse.Namespace) -> None:
    print(f"large widths, {args.dtype}, memory_mb={args.memory_mb}; each case in a fresh process (peak RSS is per process)")
    print("| readout | depth | width | n | image | build s | NTK s | rel. error vs cntk.kernel | peak RSS GiB |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for case in LARGE:
        out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case), "--dtype", args.dtype,
                              "--memory-mb", str(args.memory_mb)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {case} failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['readout']} | {r['depth']} | {r['width']} | {r['n']} | {r['image']} | {r['build_s']} | {r['ntk_s']} | "
              f"{r['rel_error_vs_cntk']} | {r['peak_rss_gib']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--readout", default="gap", choices=["gap", "flatten"])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--memory-mb", type=float, default=1024.0)
    p.add_argument("--skip", nargs="*", default=["gram"],
                   help="skip methods whose name contains any of these words (default: gram, which is ~50x slower "
                        "than the jacobian contraction at 16x16; pass --skip with no words to run everything)")
    p.add_argument("--peer", default=None,
                   help="python of an environment with neural-tangents 0.6.5 to time in the same run (default: "
                        "benchmarks/.peer-venv/bin/python when present, see peer_neural_tangents.sh; '' to skip)")
    p.add_argument("--large", action="store_true", help="large-width cases: time and peak memory")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.dtype, args.memory_mb)))
    elif args.large:
        large(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
