"""Tiled Gram computation (experiment=gram) against one single-process kernel call: entries/s and
the scaling with Hydra jobs, measured side by side in one run on this machine.

    .venv/bin/python benchmarks/gram_scaling.py                      # Fashion-MNIST CNTK-GAP depth 6
    .venv/bin/python benchmarks/gram_scaling.py --n 64 --depth 3     # shorter

Settings (each on the same inputs: N train + N test Fashion-MNIST images, float32, fresh store):
- single process: ``cntk.kernel(x_train)`` (upper triangle) and ``cntk.kernel(x_test, x_train)`` in
  this process, with all cores, no tiles, no files;
- ``run.py experiment=gram`` with J jobs x T threads per job, through the basic launcher (J = 1) or
  joblib (``hydra/launcher=local_parallel``, J > 1); J x T > cores is the oversubscribed case, which
  is what ``threads=0`` gives every job when J jobs share a machine.

Entries are the distinct kernel entries (train upper triangle with diagonal, plus test x train).
"wall" divides them by the whole command's wall time (Python, Hydra and data start-up, numba
loading its cached code, tile writes); "compute" by the slowest job's summed tile times.  Every
tiled store is checked against the single-process matrix (max relative difference).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(n: int, depth: int, readout: str):
    import torch

    from experiments.harness.common import model_inputs
    from experiments.harness.config import ModelConfig
    from experiments.harness.data import data_config, load

    data = load(data_config("fashion_mnist", n_train=n, n_test=n))
    arch = ModelConfig(depth=depth, readout=readout).architecture()
    return (model_inputs(data.x_train.to(torch.float32), arch), model_inputs(data.x_test.to(torch.float32), arch),
            arch)


def single_process(n: int, depth: int, readout: str, cores: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Seconds of the two direct kernel calls (after a warm-up), and their matrices."""
    import cntk
    from experiments.harness.common import set_threads

    set_threads(cores)
    xtr, xte, arch = _inputs(n, depth, readout)
    cntk.kernel(xtr[:2], None, arch, progress=False)  # load / compile the fused code
    t0 = time.perf_counter()
    ktr = cntk.kernel(xtr, None, arch, progress=False)
    kte = cntk.kernel(xte, xtr, arch, progress=False)
    return time.perf_counter() - t0, ktr.numpy(), kte.numpy()


def tiled(n: int, depth: int, readout: str, tile: int, jobs: int, threads: int, work: Path) -> dict:
    """Run the gram sweep as a user would; wall seconds, slowest job's compute seconds, the store."""
    store = work / f"store_j{jobs}_t{threads}"
    sweep = work / f"sweep_j{jobs}_t{threads}"
    cmd = [sys.executable, "run.py", "-m", "experiment=gram", "data=fashion_mnist", f"data.n_train={n}",
           f"data.n_test={n}", f"model.depth={depth}", f"model.readout={readout}", "dtype=float32",
           f"experiment.tile={tile}", f"experiment.store={store}", f"experiment.num_jobs={jobs}",
           f"experiment.job={','.join(str(j) for j in range(jobs))}", f"threads={threads}", "progress=false",
           f"hydra.sweep.dir={sweep}"]
    if jobs > 1:
        cmd += ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={jobs}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    per_job: dict[int, float] = {}
    for results in sweep.glob("*/results.csv"):
        with open(results) as f:
            for row in csv.DictReader(f):
                per_job[int(row["job"])] = per_job.get(int(row["job"]), 0.0) + float(row["seconds"])
    if len(per_job) != jobs:
        raise RuntimeError(f"expected {jobs} job results in {sweep}, found {len(per_job)}")
    return {"wall": wall, "compute": max(per_job.values()), "store": store}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="train and test images each (default 96)")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--readout", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--tile", type=int, default=24)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from cntk.store.tiles import TileStore
    from experiments.harness.common import available_cores

    cores = available_cores()
    n, entries = args.n, args.n * (args.n + 1) // 2 + args.n * args.n
    print(f"# Fashion-MNIST CNTK-{'GAP' if args.readout == 'gap' else 'V'} depth {args.depth}, {n} train + {n} test, "
          f"float32, tile {args.tile}; {entries} entries; {cores} cores; {platform.processor() or platform.machine()}")
    load = os.getloadavg()[0]
    secs, ktr, kte = single_process(n, args.depth, args.readout, cores)
    rows = [{"setting": "single process (cntk.kernel)", "jobs": 1, "threads": cores, "wall_s": secs,
             "compute_s": secs, "max_rel_diff": 0.0}]
    settings = [(1, cores), (1, 1), (cores, 1), (cores, cores)] if cores > 1 else [(1, 1)]
    with tempfile.TemporaryDirectory(prefix="gram_scaling_") as tmp:
        for jobs, threads in settings:
            r = tiled(n, args.depth, args.readout, args.tile, jobs, threads, Path(tmp))
            a = TileStore.load(r["store"] / "train").assemble()
            b = TileStore.load(r["store"] / "test_train").assemble()
            diff = max(np.abs(a - ktr).max() / np.abs(ktr).max(), np.abs(b - kte).max() / np.abs(kte).max())
            rows.append({"setting": f"gram, {jobs} job{'s' if jobs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                         "jobs": jobs, "threads": threads, "wall_s": r["wall"], "compute_s": r["compute"],
                         "max_rel_diff": float(diff)})
            shutil.rmtree(r["store"])
    base = entries / rows[0]["compute_s"]
    one = next((entries / r["compute_s"] for r in rows if r["jobs"] == 1 and r["threads"] == 1), None)
    print("\n| setting | wall s | entries/s (wall) | entries/s (compute) | vs single process | vs 1 job x 1 thread | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eps = entries / r["compute_s"]
        print(f"| {r['setting']} | {r['wall_s']:.1f} | {entries / r['wall_s']:.1f} | {eps:.1f} | {eps / base:.2f}x | "
              f"{'' if one is None else f'{eps / one:.2f}x'} | {r['max_rel_diff']:.1e} |")
    print(f"\nload average before / after: {load:.2f} / {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"entries": entries, "cores": cores, "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
