"""Kernel regression on a finished gram store, for one or more ridge values: float64 Cholesky
(GPU when present) when K_train fits in experiment.max_dense_gb, else block-Jacobi preconditioned
CG streaming the tiles.  Rows keep which test images each solve classifies correctly.

Which ridge: the accuracy with no ridge (the paper's setting) and with the ridge chosen by
experiment.cv_folds-fold cross-validation on the training kernel (never on the test set).
Cross-validation needs K_train in memory (the Cholesky path); on the CG path it is skipped.

The report (accuracies with Wilson intervals, paired tests, Holm within families, the figure) is
``experiments.harness.solve_report``; this module's plot calls it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
from cntk.solve.regression import cross_validate_ridge
from cntk.solve.solvers import solve_cg, solve_dense
from cntk.store.tiles import TileStore
from experiments.harness import solve_report, stats
from experiments.harness.config import Config as RunConfig
from experiments.harness.config import ConfigError, Needs, check
from experiments.harness.data import Dataset

from .gram import StoreConfig, store_path


@dataclass
class Config(StoreConfig):
    """Kernel regression on the store that experiment=gram made with the same data / model / dtype /
    experiment.kind (or experiment.store)."""

    NAME: ClassVar[str] = "solve"
    AXES: ClassVar[dict[str, str]] = {**StoreConfig.AXES, "model.fix_first_last": "fix_first_last",
                                      "data.n_train": "n_train", "data.n_test": "n_test"}
    _CG: ClassVar[Needs] = Needs("solver", idle=("cholesky",), use="cg", why="only the cg solver reads it")
    _DENSE: ClassVar[Needs] = Needs("solver", idle=("cg",), use="cholesky", why="cross-validation needs K_train in "
                                    "memory: the cholesky path only")
    DEPENDS: ClassVar[dict[str, Needs | tuple[Needs, ...]]] = {
        "cg_tol": _CG,
        "cg_max_iter": _CG,
        "max_dense_gb": Needs("solver", idle=("cholesky", "cg"), use="auto",
                              why="only solver=auto reads it, to choose between cholesky and cg"),
        "cv_folds": _DENSE,
        "cv_seed": (_DENSE, Needs("cv_folds", idle=(0,), use=5, why="only cross-validation reads it")),
    }
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
    if len(data.x_test) == 0:
        raise ConfigError("data.n_test: solve reports test accuracy and needs test images (got 0); make the store "
                          "with data.n_test > 0")
    train, test = TileStore.load(root / "train"), TileStore.load(root / "test_train")
    arch = cfg.model.architecture()
    for store in (train, test):
        store.check_matrix(arch, g.kind, dtype)
    xtr = arch.inputs(data.x_train.to(dtype))
    xte = arch.inputs(data.x_test.to(dtype))
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
    cost = {k: train.cost()[k] + test.cost()[k] for k in ("entries", "seconds", "timed_tiles", "tiles")}
    rows = []
    for ridge, cv_accuracy in zip(g.ridges, cv):
        t0 = time.perf_counter()
        sol = (solve_dense(k_train, y, ridge, device) if dense
               else solve_cg(train, y, ridge, device, tol=g.cg_tol, max_iter=g.cg_max_iter))
        pred = (k_test.to(sol.alpha) @ sol.alpha).cpu()
        correct = (pred.argmax(1) == data.y_test).numpy()
        rows.append({
            "family": arch.family, "variant": arch.variant, "readout": cfg.model.readout, "depth": cfg.model.depth,
            "kind": g.kind,
            "fix_first_last": cfg.model.fix_first_last, "ridge": ridge, "n_train": n, "n_test": len(xte),
            "accuracy": float(correct.mean()), "correct": stats.encode(correct),
            "cv_accuracy": cv_accuracy, "cv_folds": g.cv_folds if not np.isnan(cv_accuracy) else 0,
            "solver": sol.method, "residual": sol.residual, "iterations": sol.iterations, "jitter": sol.jitter,
            "seconds": time.perf_counter() - t0, "kernel_dtype": train.meta.dtype,
            "kernel_entries": cost["entries"], "kernel_seconds": cost["seconds"],
            "kernel_timed_tiles": f"{cost['timed_tiles']}/{cost['tiles']}",
        })
    return rows


def plot(doc: dict, out_dir: str | Path):
    return solve_report.report(doc["rows"], out_dir)


def smoke(tmp: Path) -> list[list[str]]:
    common_ = ["data.n_train=12", "data.n_test=6", f"experiment.store={tmp / 'store'}"]
    return [["experiment=gram", "experiment.tile=8", *common_], ["experiment=solve", "experiment.ridges=[0.0,0.01]",
                                                                 "experiment.cv_folds=2", *common_]]
