"""Empirical NTK benchmark: finite_nets.empirical_ntk against neural-tangents and against the machine's matmul.

For each workload (a FiniteNet, its inputs, the symmetric N x N empirical NTK, float32, CPU) it prints:
our seconds (best of the repeats), the same workload in neural-tangents 0.6.5
(``nt.empirical_ntk_fn(..., trace_axes=(), vmap_axes=0)``, implementations 1, 2 and 3, best of each,
best of the three) with the ratio, the flop floor (one forward pass, one backward pass, the per-sample
weight gradients of every Jacobian-contracted layer, the P x P Gram products of every Gram-contracted
layer) divided by our time, the throughput of a plain torch.mm of the same total flops in the same run,
and the peak RSS of each side (every side runs in its own process; ours includes torch itself).

Ours and theirs are interleaved: each neural-tangents implementation gets one warm process (compiled,
one warm-up call), and every timed call of it is preceded by a timed call of ours (one warm process
for the workload).  ``cat /proc/loadavg`` is printed before and after every workload.  A
neural-tangents process is stopped (and reported as failed) above --peer-max-rss GiB of resident
memory or --peer-timeout seconds per call; an implementation more than --slow-factor times slower than
the best one before it is timed once.  Both kernels are compared (max relative difference).

    python benchmarks/empirical_ntk.py --mm-full              # the five workloads: 45 minutes on 2 busy cores
    python benchmarks/empirical_ntk.py --quick                # smoke run: small nets, one repeat, 2 minutes
    python benchmarks/empirical_ntk.py --workloads gap-w1024-32x32 --repeats 3 --impls 1,3
    python benchmarks/empirical_ntk.py --methods              # our methods vs a per-sample autograd loop (one net)
    python benchmarks/empirical_ntk.py --large                # large widths: time, peak memory, error vs cntk.kernel
    python benchmarks/empirical_ntk.py --large --device cuda  # the same on a GPU (peak GPU memory too); --methods too

neural-tangents runs from ``benchmarks/.peer-venv`` (built by benchmarks/peer_neural_tangents.sh; not a
project dependency, never run in CI); without it the neural-tangents columns are left empty.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_PYTHON = Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"  # benchmarks/peer_neural_tangents.sh

# name: readout, depth (conv layers + 1), width, N, channels, side, data
WORKLOADS = {
    "gap-w256-16x16": ("gap", 4, 256, 128, 3, 16, "random"),
    "gap-w1024-32x32": ("gap", 4, 1024, 32, 3, 32, "random"),
    "flatten-w1024-32x32": ("flatten", 4, 1024, 32, 3, 32, "random"),
    "gap-w2048-digits": ("gap", 4, 2048, 64, 1, 8, "digits"),
    "gap-depth11-w512-16x16": ("gap", 11, 512, 32, 3, 16, "random"),
}
QUICK = {  # the same shapes, smaller
    "gap-w256-16x16": ("gap", 4, 64, 32, 3, 16, "random"),
    "gap-w1024-32x32": ("gap", 4, 128, 8, 3, 32, "random"),
    "flatten-w1024-32x32": ("flatten", 4, 128, 8, 3, 32, "random"),
    "gap-w2048-digits": ("gap", 4, 512, 32, 1, 8, "digits"),
    "gap-depth11-w512-16x16": ("gap", 11, 64, 8, 3, 16, "random"),
}

# Run by the neural-tangents environment as a worker: the same net (our weights mapped to stax's NTK
# parameterisation: W_std = sqrt(C q^2) first, sqrt(c_sigma) = sqrt(2) hidden, readout sqrt(2 / q^2)
# (GAP) or sqrt(2 P / q^2) (flatten)), the same inputs; one implementation per process, compiled and
# warmed up, then one timed call per "run" line on stdin.
PEER_CODE = r"""
import json, resource, sys, time
import numpy as np, jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
d = np.load(sys.argv[1]); readout, impl = sys.argv[2], int(sys.argv[3])
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
fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))
t0 = time.perf_counter()
k = fn(x, None, params).block_until_ready()
print(json.dumps({"ready": True, "first_call_s": time.perf_counter() - t0,
                  "version": "neural-tangents %s, jax %s" % (nt.__version__, jax.__version__)}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        t0, c0 = time.perf_counter(), time.process_time()
        k = fn(x, None, params).block_until_ready()
        print(json.dumps({"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}), flush=True)
    elif cmd[0] == "save":
        np.save(cmd[1], np.asarray(k, dtype=np.float64).reshape(k.shape[0], k.shape[1]))
        print(json.dumps({"saved": cmd[1]}), flush=True)
    else:
        break
print(json.dumps({"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
"""


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------------ workloads


def build_workload(spec, dtype: str = "float32", device: str = "cpu"):
    import torch

    import cntk
    import finite_nets

    readout, depth, width, n, c, side, data = spec
    arch = cntk.Architecture(family="cnn", depth=depth, readout=readout)
    net = finite_nets.build(arch, width, input_shape=(c, side, side), seed=0, dtype=getattr(torch, dtype), device=device)
    if data == "digits":
        from sklearn.datasets import load_digits

        x = torch.tensor(load_digits().images[:n], dtype=torch.float64)[:, None] / 16.0
        x = (x - x.mean()) / x.std()
    else:
        x = torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return net, x.to(device=device, dtype=getattr(torch, dtype))


def floor_flops(spec) -> dict:
    """Flops of one forward pass, one backward pass (input gradients down to the first trainable layer),
    and per layer, as finite_nets.empirical_ntk's cost model chooses it (symmetric kernel, one output),
    the per-sample weight gradients (Jacobian layers) or the P x P Gram products (Gram layers).  The
    Jacobian layers' kernel contraction J J^T is not counted (the issue's floor)."""
    from types import SimpleNamespace

    import cntk
    from finite_nets import ntk_plan

    readout, depth, width, n, c, side, _ = spec
    arch = cntk.Architecture(family="cnn", depth=depth, readout=readout)
    stand_in = SimpleNamespace(arch=arch, width=width, out_dim=1, readout=SimpleNamespace(requires_grad=True),
                               weights=[SimpleNamespace(requires_grad=True)] * (depth - 1))
    plan = ntk_plan._plan(stand_in, (c, side, side), n, n, True, False, "auto")
    p, q2, m = side * side, arch.filter_size**2, width
    chans = [c] + [m] * (depth - 2)
    fwd = sum(2 * n * ci * m * q2 * p for ci in chans)
    bwd = sum(2 * n * ci * m * q2 * p for ci in chans[1:])
    grads = sum(2 * n * m * ci * q2 * p for ci, g in zip(chans, plan.gram) if not g)
    gram = sum(2 * 0.5 * n * n * p * p * (ci + m) for ci, g in zip(chans, plan.gram) if g)
    return {"forward": fwd, "backward": bwd, "per_sample_grads": grads, "gram": gram, "total": fwd + bwd + grads + gram,
            "gram_layers": sum(plan.gram)}


# ------------------------------------------------------------------------------------------ workers


def ours_worker(spec_json: str) -> None:
    """Persistent worker: builds the workload, one warm-up call, then one timed call per 'run' line."""
    import numpy as np
    import torch

    import finite_nets

    spec = json.loads(spec_json)
    net, x = build_workload(spec)
    t0 = time.perf_counter()
    k = finite_nets.empirical_ntk(net, x)
    print(json.dumps({"ready": True, "first_call_s": time.perf_counter() - t0,
                      "version": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            t0, c0 = time.perf_counter(), time.process_time()
            k = finite_nets.empirical_ntk(net, x)
            print(json.dumps({"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}), flush=True)
        elif cmd[0] == "save":
            np.save(cmd[1], k.double().numpy())
            print(json.dumps({"saved": cmd[1]}), flush=True)
        else:
            break
    print(json.dumps({"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)


class Worker:
    """A child process speaking one JSON line per command."""

    def __init__(self, argv: list[str], timeout: float, max_rss_gib: float = float("inf")):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.timeout, self.max_rss_gib = timeout, max_rss_gib
        self.info = self._read()

    def rss_gib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
        except OSError:
            pass
        return 0.0

    def _read(self) -> dict:
        t0, why = time.monotonic(), None
        while True:  # wait for a line, watching the time and the child's memory
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                break
            if time.monotonic() - t0 > self.timeout:
                why = f"timed out after {self.timeout:.0f} s"
            elif self.rss_gib() > self.max_rss_gib:
                why = f"stopped: resident memory above {self.max_rss_gib:.0f} GiB"
            if why:
                self.kill()
                raise RuntimeError(why)
        line = self.proc.stdout.readline()
        if not line:
            self.kill()
            err = [e for e in self.proc.stderr.read().strip().splitlines() if e.strip()]
            errors = [e for e in err if "Error" in e or "error:" in e]
            raise RuntimeError((errors or err or [f"exit status {self.proc.returncode}"])[-1].strip())
        while not line.lstrip().startswith("{"):  # skip anything a library prints on stdout
            line = self.proc.stdout.readline()
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> float | None:
        try:
            rss = self.ask("quit")["rss_gib"]
        except (RuntimeError, BrokenPipeError, KeyError):
            rss = None
        self.kill()
        return rss

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def mm_throughput(total_flops: float, size: int = 4096) -> float:
    """GFLOP/s of plain float32 torch.mm: square products of `size`, as many as the given total flops."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    reps = max(1, round(total_flops / (2 * size**3)))
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return reps * 2 * size**3 / (time.perf_counter() - t0) / 1e9


def onednn_throughput(size: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of the float32 GEMM that empirical_ntk uses on the CPU (oneDNN), for reference."""
    import torch

    from finite_nets import ntk_gemm

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    ntk_gemm._mm_nt(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        ntk_gemm._mm_nt(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def export_for_peer(spec, path: Path) -> None:
    import numpy as np

    net, x = build_workload(spec)
    arrays = {f"w{i}": w.detach().numpy() for i, w in enumerate(net.weights)}
    np.savez(path, x=x.numpy(), v=net.readout.detach().numpy(), n_layers=len(net.weights), **arrays)


def run_workload(name: str, spec, args, tmp: Path) -> dict:
    import numpy as np

    print(f"\n## {name}: CNN-{'V' if spec[0] == 'flatten' else 'GAP'} depth {spec[1]} ({spec[1] - 1} conv), width {spec[2]}, "
          f"{spec[3]} x {spec[5]}x{spec[5]}x{spec[4]} ({spec[6]}), symmetric {spec[3]}x{spec[3]} kernel, float32", flush=True)
    print(f"load average before: {loadavg()}", flush=True)
    flops = floor_flops(spec)
    row = {"name": name, "spec": spec, "flops": flops, "ours": [], "peer": {}, "mm": [], "load_before": loadavg()}
    ours = Worker([sys.executable, __file__, "--worker", json.dumps(spec)], args.timeout)
    row["ours_version"] = ours.info["version"]
    peer_ok = args.peer and Path(args.peer).exists()
    impls = [int(i) for i in args.impls.split(",")] if peer_ok else []
    if peer_ok:
        export_for_peer(spec, tmp / f"{name}.npz")
    rounds = impls or [None]
    best_peer = float("inf")  # best time of the neural-tangents implementations timed before this one
    for impl in rounds:
        peer, reps = None, args.repeats
        if impl is not None:
            try:
                peer = Worker([args.peer, "-c", PEER_CODE, str(tmp / f"{name}.npz"), spec[0], str(impl)], args.peer_timeout,
                              args.peer_max_rss)
                row["peer_version"] = peer.info["version"]
                first = peer.info["first_call_s"]
                row["peer"][impl] = {"s": [], "cpu_s": [], "first_call_s": first}
            except RuntimeError as e:
                row["peer"][impl] = {"s": [], "error": str(e)[:160]}
                print(f"  neural-tangents implementation {impl}: failed ({str(e)[:160]})", flush=True)
        for r in range(reps):
            if peer is not None and r and min(row["peer"][impl]["s"]) > args.slow_factor * best_peer:
                row["peer"][impl]["note"] = f"more than {args.slow_factor:g}x the best implementation: timed once"
                break  # hopeless: one timed call is enough
            t = ours.ask("run")
            row["ours"].append(t["s"])
            row.setdefault("ours_cpu_s", []).append(t["cpu_s"])
            msg = f"  ours {t['s']:.2f} s (CPU {t['cpu_s']:.1f} s)"
            if peer is not None:
                try:
                    tp = peer.ask("run")
                    row["peer"][impl]["s"].append(tp["s"])
                    row["peer"][impl]["cpu_s"].append(tp["cpu_s"])
                    msg += f" | neural-tangents impl {impl} {tp['s']:.2f} s (CPU {tp['cpu_s']:.1f} s)"
                except RuntimeError as e:
                    row["peer"][impl]["error"] = str(e)[:160]
                    msg += f" | neural-tangents impl {impl} failed ({str(e)[:100]})"
                    peer = None
            print(msg, flush=True)
        if impl is not None and row["peer"][impl]["s"]:
            best_peer = min(best_peer, *row["peer"][impl]["s"])
        if peer is not None:
            if args.check:
                peer.ask(f"save {tmp / f'{name}-nt{impl}.npy'}")
            row["peer"][impl]["rss_gib"] = peer.close()
        row["mm"].append(mm_throughput(flops["total"] if args.mm_full else min(flops["total"], 2e12)))
    if args.check:
        ours.ask(f"save {tmp / f'{name}-ours.npy'}")
    row["ours_rss_gib"] = ours.close()
    row["ours_first_call_s"] = ours.info["first_call_s"]
    if args.check:
        k = np.load(tmp / f"{name}-ours.npy")
        for impl in row["peer"]:
            f = tmp / f"{name}-nt{impl}.npy"
            if f.exists():
                kp = np.load(f)
                row["peer"][impl]["max_rel_diff"] = float(np.abs(kp - k).max() / np.abs(k).max())
    row["load_after"] = loadavg()
    best_ours = min(row["ours"])
    print(f"  best ours {best_ours:.2f} s; floor {flops['total'] / 1e12:.3f} TFLOP -> {flops['total'] / best_ours / 1e9:.0f} GFLOP/s; "
          f"torch.mm {max(row['mm']):.0f} GFLOP/s; peak RSS ours {row['ours_rss_gib']:.2f} GiB", flush=True)
    for impl, p in row["peer"].items():
        if p["s"]:
            print(f"  neural-tangents impl {impl}: best {min(p['s']):.2f} s (first call {p['first_call_s']:.1f} s), "
                  f"peak RSS {p.get('rss_gib') or float('nan'):.2f} GiB, max rel diff vs ours {p.get('max_rel_diff', float('nan')):.1e}",
                  flush=True)
    print(f"load average after: {row['load_after']}", flush=True)
    return row


def table(rows: list[dict], mm_full: bool) -> None:
    print("\n| workload | ours s | neural-tangents s (impl) | ours / theirs | floor TFLOP | ours GFLOP/s | torch.mm GFLOP/s "
          "| fraction of torch.mm | peak RSS ours / theirs GiB | load before -> after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ours = min(r["ours"])
        peer = [(min(p["s"]), impl, p.get("rss_gib")) for impl, p in r["peer"].items() if p["s"]]
        fl = r["flops"]["total"]
        mm = max(r["mm"])
        if peer:
            ts, impl, rss = min(peer)
            theirs = f"{ts:.2f} ({impl})"
            ratio = f"{ours / ts:.2f}"
            rss_t = f"{rss:.2f}" if rss else "?"
        else:
            theirs, ratio, rss_t = "-", "-", "-"
        failed = [str(i) for i, p in r["peer"].items() if not p["s"]]
        if failed:
            theirs += f"; impl {','.join(failed)} failed"
        slow = [str(i) for i, p in r["peer"].items() if p.get("note")]
        if slow:
            theirs += f"; impl {','.join(slow)} timed once"
        print(f"| {r['name']} | {ours:.2f} | {theirs} | {ratio} | {fl / 1e12:.3f} | {fl / ours / 1e9:.0f} | {mm:.0f} | "
              f"{fl / ours / 1e9 / mm:.0%} | {r['ours_rss_gib']:.2f} / {rss_t} | {r['load_before'].split()[0]} -> "
              f"{r['load_after'].split()[0]} |")
    print("\nfloor = one forward + one backward pass + per-sample weight gradients (Jacobian layers) or the P x P Gram "
          "products (Gram layers); ours GFLOP/s = floor / our best time; torch.mm = plain float32 square products "
          f"(4096), {'the same total flops' if mm_full else 'the same total flops up to 2 TFLOP'}, best of the rounds "
          "of the same run; best of the repeats everywhere.")


def benchmark(args) -> None:
    import torch

    names = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    source = QUICK if args.quick else WORKLOADS
    print(f"# empirical NTK benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (quick)' if args.quick else ''}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"repeats {args.repeats}; neural-tangents implementations {args.impls if args.peer else 'not run'}")
    print(f"load average at start: {loadavg()}", flush=True)
    print(f"oneDNN float32 GEMM (4096, what empirical_ntk's products use): {onednn_throughput():.0f} GFLOP/s; "
          f"torch.mm (MKL): {mm_throughput(0):.0f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_workload(name, source[name], args, Path(tmp)))
    table(rows, args.mm_full)
    print(f"\nload average at end: {loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------------------ other modes


def per_sample_loop(net, x):
    """Baseline: one forward and backward per sample (torch.autograd.grad), stacked gradients, J J^T."""
    import torch

    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        out = net(x[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    jac = torch.stack(rows)
    return jac @ jac.T


def methods(args) -> None:
    """Every method of empirical_ntk against a per-sample autograd loop on one net (time and agreement)."""
    import torch

    import finite_nets

    spec = (args.readout, args.depth, args.width, args.n, args.channels, args.size, "random")
    net, x = build_workload(spec, args.dtype, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{spec}, {args.dtype}, {args.device} ({where}); load average {loadavg()}")
    cases = {
        "per-sample loop (autograd)": lambda: per_sample_loop(net, x),
        "jacrev (torch.func)": lambda: finite_nets.empirical_ntk(net, x, method="jacrev"),
        "structured, gram": lambda: finite_nets.empirical_ntk(net, x, contraction="gram"),
        "structured, jacobian": lambda: finite_nets.empirical_ntk(net, x, contraction="jacobian"),
        "structured, auto": lambda: finite_nets.empirical_ntk(net, x),
    }
    ref = None
    print("| method | wall s | max rel. diff vs loop |\n|---|---:|---:|")
    for name, fn in cases.items():
        if any(s in name for s in args.skip):
            continue
        fn()
        _sync(args.device)
        t0 = time.perf_counter()
        k = fn().double().reshape(len(x), len(x))
        _sync(args.device)
        dt = time.perf_counter() - t0
        ref = k if ref is None else ref
        print(f"| {name} | {dt:.3f} | {float((k - ref).abs().max() / ref.abs().max()):.1e} |", flush=True)
    print(f"load average now {loadavg()}")


LARGE = [
    # (readout, depth, width, n, channels, size)
    ("gap", 3, 4096, 16, 1, 8),
    ("flatten", 3, 4096, 16, 1, 8),
    ("gap", 4, 512, 16, 3, 32),
    ("flatten", 4, 512, 16, 3, 32),
]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def one_case(spec: str, dtype: str, device: str = "cpu") -> dict:
    import torch

    import cntk
    import finite_nets

    readout, depth, width, n, c, s = json.loads(spec)
    arch = cntk.Architecture(family="cnn", depth=depth, readout=readout)
    t0 = time.perf_counter()
    net = finite_nets.build(arch, width, input_shape=(c, s, s), dtype=getattr(torch, dtype), device=device)
    _sync(device)
    t1 = time.perf_counter()
    x = torch.rand(n, c, s, s, dtype=getattr(torch, dtype), generator=torch.Generator().manual_seed(0)).to(device)
    theta = finite_nets.empirical_ntk(net, x)
    _sync(device)
    t2 = time.perf_counter()
    exact = cntk.kernel(x.double(), None, arch, backend="planes")
    err = float((theta.double() - exact).norm() / exact.norm())
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"readout": readout, "depth": depth, "width": width, "n": n, "image": f"{s}x{s}x{c}", "dtype": dtype,
            "build_s": round(t1 - t0, 2), "ntk_s": round(t2 - t1, 2), "rel_error_vs_cntk": round(err, 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "peak_gpu_gib": round(gpu_peak, 2)}


def large(args) -> None:
    print(f"large widths, {args.dtype}, {args.device}; each case in a fresh process (peak RSS is per process); "
          f"load average {loadavg()}")
    print("| readout | depth | width | n | image | build s | NTK s | rel. error vs cntk.kernel | peak RSS GiB | "
          "peak GPU GiB |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for case in LARGE:
        out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case), "--dtype", args.dtype,
                              "--device", args.device], capture_output=True, text=True)
        if out.returncode:
            print(f"| {case} failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['readout']} | {r['depth']} | {r['width']} | {r['n']} | {r['image']} | {r['build_s']} | {r['ntk_s']} | "
              f"{r['rel_error_vs_cntk']} | {r['peak_rss_gib']} | {r['peak_gpu_gib']} |")
    print(f"load average now {loadavg()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: the workloads' shapes at small width and N, one repeat")
    p.add_argument("--workloads", default="all", help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per side and neural-tangents implementation "
                                                             "(default 2, --quick 1)")
    p.add_argument("--impls", default="1,3,2", help="neural-tangents implementations to time, in this order (best of "
                                                    "them is compared)")
    p.add_argument("--slow-factor", type=float, default=3.0,
                   help="a neural-tangents implementation whose first timed call took more than this times the "
                        "best neural-tangents time so far is timed once")
    p.add_argument("--peer", default=str(PEER_PYTHON) if PEER_PYTHON.exists() else "",
                   help="python of the neural-tangents environment ('' to skip; default benchmarks/.peer-venv)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one of our calls may take")
    p.add_argument("--peer-timeout", type=float, default=300.0,
                   help="seconds one neural-tangents call may take (compilation + warm-up included); beyond: 'failed'")
    p.add_argument("--peer-max-rss", type=float, default=12.0,
                   help="GiB of resident memory a neural-tangents process may reach; beyond: stopped, 'failed'")
    p.add_argument("--mm-full", action="store_true", help="time torch.mm over the full floor flops (default: up to 2 TFLOP)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip comparing the two kernels")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--methods", action="store_true", help="our methods against a per-sample autograd loop, one net")
    p.add_argument("--large", action="store_true", help="large widths: time, peak memory, error vs cntk.kernel")
    # --methods / --large net
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--readout", default="gap", choices=["gap", "flatten"])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="--methods / --large: where our side runs")
    p.add_argument("--skip", nargs="*", default=["gram"], help="--methods: skip methods whose name contains these words")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.worker:
        ours_worker(args.worker)
    elif args.case:
        print(json.dumps(one_case(args.case, args.dtype, args.device)))
    elif args.methods:
        methods(args)
    elif args.large:
        large(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
