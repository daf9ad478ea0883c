"""Kernel regression on a finished gram store, for one or more ridge values: float64 Cholesky
(GPU when present) when K_train fits in gram.max_dense_gb, else block-Jacobi preconditioned CG
streaming the tiles.  Reports accuracy and the solve's residual; the sweep table puts the paper's
CIFAR-10 Table 1 numbers beside ours."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import cntk
from cntk.solvers import solve_cg, solve_dense
from cntk.tiles import TileStore

from .common import architecture, model_inputs
from .config import Config
from .data import Dataset
from .results import write_atomic

# Arora et al. 2019, Table 1 (CIFAR-10, full data, no ridge), test accuracy in %
PAPER_TABLE1 = {
    "gap": {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08},
    "flatten": {3: 64.47, 4: 65.52, 6: 66.03, 11: 65.90, 21: 64.09},
}


def run(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.gram
    root = Path(g.store)
    train, test = TileStore.load(root / "train"), TileStore.load(root / "test_train")
    arch = architecture(cfg.model)
    xtr = model_inputs(data.x_train.to(dtype), arch)
    xte = model_inputs(data.x_test.to(dtype), arch)
    train.check_inputs(xtr, None)
    test.check_inputs(xte, xtr)
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = train.meta.n_rows
    dense = g.solver == "cholesky" or (g.solver == "auto" and n * n * 8 / 2**30 <= g.max_dense_gb)
    k_train = torch.from_numpy(train.assemble()).double() if dense else None
    k_test = torch.from_numpy(test.assemble()).double()
    rows = []
    for ridge in g.ridges:
        t0 = time.perf_counter()
        sol = (solve_dense(k_train, y, ridge, device) if dense
               else solve_cg(train, y, ridge, device, tol=g.cg_tol, max_iter=g.cg_max_iter))
        pred = k_test.to(sol.alpha) @ sol.alpha
        rows.append({
            "readout": cfg.model.readout, "depth": cfg.model.depth, "kind": g.kind, "ridge": ridge,
            "n_train": n, "n_test": len(xte), "accuracy": cntk.accuracy(pred.cpu(), data.y_test),
            "solver": sol.method, "residual": sol.residual, "iterations": sol.iterations, "jitter": sol.jitter,
            "seconds": time.perf_counter() - t0,
            "paper_cifar10": PAPER_TABLE1.get(cfg.model.readout, {}).get(cfg.model.depth, float("nan")),
        })
    return rows


def plot(doc: dict, out_dir: str | Path):
    """table.md / summary: best-ridge accuracy per (readout, depth), the paper's CIFAR-10 numbers beside."""
    rows = doc["rows"]
    best = {}
    for r in rows:
        key = (r["readout"], r["depth"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    data = doc["config"]["data"]["name"]
    lines = [f"| kernel | depth | {data} accuracy (%) | best ridge | n_train / n_test | paper CIFAR-10 (%) |",
             "|---|---|---|---|---|---|"]
    summary = []
    for (readout, depth), r in sorted(best.items()):
        name = "CNTK-GAP" if readout == "gap" else "CNTK-V"
        paper = r["paper_cifar10"]
        lines.append(f"| {name} | {depth} | {100 * r['accuracy']:.2f} | {r['ridge']:g} | {r['n_train']} / {r['n_test']} | "
                     f"{'' if np.isnan(paper) else f'{paper:.2f}'} |")
        summary.append({"kernel": name, "depth": depth, "accuracy": r["accuracy"], "ridge": r["ridge"],
                        "n_train": r["n_train"], "n_test": r["n_test"], "paper_cifar10": paper})
    write_atomic(Path(out_dir) / "table.md", "\n".join(lines) + "\n")
    return [], summary
