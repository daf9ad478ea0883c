"""Kernel regression on a finished gram store, for one or more ridge values: float64 Cholesky
(GPU when present) when K_train fits in gram.max_dense_gb, else block-Jacobi preconditioned CG
streaming the tiles.  Reports accuracy and the solve's residual; the sweep table puts the paper's
CIFAR-10 Table 1 numbers beside ours.

Which ridge: the table gives the accuracy with no ridge (the paper's setting) and with the ridge
chosen by gram.cv_folds-fold cross-validation on the training kernel (never on the test set).
Cross-validation needs K_train in memory (the Cholesky path); on the CG path it is skipped."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import cntk
from cntk.regression import cross_validate_ridge
from cntk.solvers import solve_cg, solve_dense
from cntk.tiles import TileStore

from dataclasses import dataclass, field
from typing import ClassVar

from .common import common, model_inputs, save_figure, style
from .config import Config as RunConfig, ConfigError, check
from .data import Dataset
from .gram import StoreConfig, store_path
from .results import write_atomic

# Arora et al. 2019, Table 1 (CIFAR-10, full data, no ridge), test accuracy in %
PAPER_TABLE1 = {
    "gap": {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08},
    "flatten": {3: 64.47, 4: 65.52, 6: 66.03, 11: 65.90, 21: 64.09},
}


@dataclass
class Config(StoreConfig):
    """Kernel regression on the store that experiment=gram made with the same data / model / dtype /
    experiment.kind (or experiment.store)."""

    NAME: ClassVar[str] = "solve"
    name: str = "solve"
    ridges: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1])  # relative to mean diag K
    solver: str = "auto"  # cholesky | cg | auto (cholesky when K_train fits in max_dense_gb)
    max_dense_gb: float = 8.0
    cg_tol: float = 1e-10
    cg_max_iter: int = 5000
    cv_folds: int = 5  # the ridge is chosen by this many folds of the training kernel (0: off)
    cv_seed: int = 0  # which folds

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.ridges) > 0 and min(self.ridges) >= 0, "experiment.ridges", f"must be >= 0, got {self.ridges}")
        check(self.cv_folds == 0 or self.cv_folds >= 2, "experiment.cv_folds",
              f"must be 0 (off) or >= 2, got {self.cv_folds}")
        check(self.solver in ("auto", "cholesky", "cg"), "experiment.solver",
              f"must be auto, cholesky or cg, got {self.solver!r}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.experiment
    root = store_path(cfg)
    train, test = TileStore.load(root / "train"), TileStore.load(root / "test_train")
    arch = cfg.model.architecture()
    xtr = model_inputs(data.x_train.to(dtype), arch)
    xte = model_inputs(data.x_test.to(dtype), arch)
    ids = data.identity("train"), data.identity("test")
    train.check_inputs(xtr, None, (ids[0], None))
    test.check_inputs(xte, xtr, (ids[1], ids[0]))
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = train.meta.n_rows
    dense = g.solver == "cholesky" or (g.solver == "auto" and n * n * 8 / 2**30 <= g.max_dense_gb)
    k_train = torch.from_numpy(train.assemble()).double() if dense else None
    k_test = torch.from_numpy(test.assemble()).double()
    cv = (cross_validate_ridge(k_train.to(device), data.y_train, data.num_classes, g.ridges, g.cv_folds, g.cv_seed)
          if dense and g.cv_folds and g.cv_folds <= n else [float("nan")] * len(g.ridges))
    rows = []
    for ridge, cv_accuracy in zip(g.ridges, cv):
        t0 = time.perf_counter()
        sol = (solve_dense(k_train, y, ridge, device) if dense
               else solve_cg(train, y, ridge, device, tol=g.cg_tol, max_iter=g.cg_max_iter))
        pred = k_test.to(sol.alpha) @ sol.alpha
        rows.append({
            "readout": cfg.model.readout, "depth": cfg.model.depth, "kind": g.kind, "ridge": ridge,
            "n_train": n, "n_test": len(xte), "accuracy": cntk.accuracy(pred.cpu(), data.y_test),
            "cv_accuracy": cv_accuracy, "cv_folds": g.cv_folds if not np.isnan(cv_accuracy) else 0,
            "solver": sol.method, "residual": sol.residual, "iterations": sol.iterations, "jitter": sol.jitter,
            "seconds": time.perf_counter() - t0,
            "paper_cifar10": PAPER_TABLE1.get(cfg.model.readout, {}).get(cfg.model.depth, float("nan"))
            if g.kind == "ntk" else float("nan"),
        })
    return rows


def _choices(rows: list[dict]) -> list[tuple[tuple[str, int], list[dict], dict | None, dict | None]]:
    """Per (setting, kind, readout, depth), sorted: its rows by ridge, the no-ridge row and the row of
    the cross-validated ridge (the smallest ridge with the best CV accuracy); None where absent."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("setting", ""), r.get("kind", "ntk"), r["readout"], r["depth"]), []).append(r)
    out = []
    for key, group in sorted(groups.items()):
        group = sorted(group, key=lambda r: r["ridge"])
        zero = next((r for r in group if r["ridge"] == 0), None)
        scored = [r for r in group if not np.isnan(r.get("cv_accuracy", float("nan")))]
        cv = max(scored, key=lambda r: r["cv_accuracy"]) if scored else None  # max keeps the first (smallest)
        out.append((key, group, zero, cv))
    return out


def _value(row: dict | None, key: str) -> float:
    return float("nan") if row is None else row[key]


def plot(doc: dict, out_dir: str | Path):
    """table.md / summary: accuracy with no ridge and with the cross-validated ridge per
    (readout, depth), the paper's CIFAR-10 numbers beside."""
    data = common(doc["rows"], "data")
    lines = [f"| kernel | depth | {data}, no ridge (%) | {data}, CV ridge (%) | CV ridge | CV accuracy (%) | "
             "n_train / n_test | paper CIFAR-10 (%) |", "|---|---|---|---|---|---|---|---|"]
    summary = []
    for (setting, kind, readout, depth), group, zero, cv in _choices(doc["rows"]):
        first = group[0]
        kernel = ("CNTK-" if kind == "ntk" else "CNN-GP-") + ("GAP" if readout == "gap" else "V")
        summary.append({"kernel": kernel + (f" [{setting}]" if setting else ""), "depth": depth,
                        "accuracy_no_ridge": _value(zero, "accuracy"), "accuracy_cv_ridge": _value(cv, "accuracy"),
                        "cv_ridge": _value(cv, "ridge"), "cv_accuracy": _value(cv, "cv_accuracy"),
                        "n_train": first["n_train"], "n_test": first["n_test"], "paper_cifar10": first["paper_cifar10"]})
        s = summary[-1]
        cells = [f"{100 * s[k]:.2f}" if not np.isnan(s[k]) else "" for k in ("accuracy_no_ridge", "accuracy_cv_ridge")]
        cells += ["" if cv is None else format(cv["ridge"], "g"), "" if cv is None else f"{100 * cv['cv_accuracy']:.2f}",
                  f"{s['n_train']} / {s['n_test']}", "" if np.isnan(s["paper_cifar10"]) else f"{s['paper_cifar10']:.2f}"]
        lines.append(f"| {s['kernel']} | {depth} | " + " | ".join(cells) + " |")
    write_atomic(Path(out_dir) / "table.md", "\n".join(lines) + "\n")
    return _figure(summary, data, out_dir), summary


def _figure(summary: list[dict], data: str, out_dir: str | Path) -> list[Path]:
    """Accuracy vs depth per kernel: ours (no ridge, CV ridge) and the paper's CIFAR-10 column."""
    depths = sorted({s["depth"] for s in summary})
    if len(depths) < 2:
        return []
    style()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, kernel in enumerate(dict.fromkeys(s["kernel"] for s in summary)):
        color = f"C{i % 10}"
        sel = sorted((s for s in summary if s["kernel"] == kernel), key=lambda s: s["depth"])
        if not sel:
            continue
        d = [s["depth"] for s in sel]
        for key, fmt, what in (("accuracy_no_ridge", "-o", "no ridge"), ("accuracy_cv_ridge", ":^", "CV ridge")):
            acc = [100 * s[key] for s in sel]
            if not all(np.isnan(acc)):
                ax.plot(d, acc, fmt, color=color, ms=5, label=f"{kernel}, {data}, {what}")
        ax.plot(d, [s["paper_cifar10"] for s in sel], "--s", color=color, alpha=0.5, ms=4,
                label=f"{kernel}, paper (CIFAR-10, full)")
    n = summary[0]
    ax.set_xscale("log")
    ax.set_xticks(depths, [str(x) for x in depths])
    ax.minorticks_off()
    ax.set_xlabel("depth")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Table 1: {data}, {n['n_train']} train / {n['n_test']} test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "table1")
    plt.close(fig)
    return paths


def smoke(tmp: Path) -> list[list[str]]:
    common_ = ["data.n_train=12", "data.n_test=6", f"experiment.store={tmp / 'store'}"]
    return [["experiment=gram", "experiment.tile=8", *common_], ["experiment=solve", "experiment.ridges=[0.0,0.01]",
                                                                 "experiment.cv_folds=2", *common_]]
