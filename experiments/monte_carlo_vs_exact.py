"""Kernel regression with the empirical (finite-width, Monte Carlo) NTK of one random net vs the
exact kernel: test accuracy and kernel error vs width (the paper's point that the Monte Carlo
approximation costs accuracy)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
import finite_nets

from . import sweep
from .common import by_group, common, model_inputs, save_figure, series_name, style, width_series
from .config import Config as RunConfig, GridExperiment, check
from .data import Dataset


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "monte_carlo_vs_exact"
    name: str = "monte_carlo_vs_exact"
    ridge: float = 0.0  # kernel regression ridge, relative to the mean diagonal

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ridge >= 0, "experiment.ridge", f"must be >= 0, got {self.ridge}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = len(data.x_train)
    sizes = {"n_train": n, "n_test": len(data.x_test), "ridge": e.ridge}

    def prepare(arch):
        x = model_inputs(torch.cat([data.x_train, data.x_test]), arch).to(device=device, dtype=dtype)
        exact = cntk.kernel(x, None, arch, progress=False).double()
        pred = cntk.kernel_regression(exact[:n, :n], y, ridge=e.ridge).predict(exact[n:, :n]).cpu()
        return (x, exact, cntk.accuracy(pred, data.y_test)), []

    def measure(ctx, arch, width, seed):
        x, exact, exact_acc = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(x.shape[1:]), dtype=dtype, device=device)
        emp = finite_nets.empirical_ntk(net, x).double()
        model = cntk.kernel_regression(emp[:n, :n], y, ridge=e.ridge)
        return {**sizes, "accuracy_empirical": cntk.accuracy(model.predict(emp[n:, :n]).cpu(), data.y_test),
                "accuracy_exact": exact_acc, "kernel_rel_error": float((emp - exact).norm() / exact.norm()),
                "jitter": model.jitter, "seconds": time.perf_counter() - t0}

    return sweep.run(cfg, prepare, measure)


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    summary = []
    for gi, ((readout, depth), sel) in enumerate(by_group(rows)):
        color, name = f"C{gi % 10}", series_name(sel)
        width_series(axes[0], sel, "accuracy_empirical", color, f"empirical NTK, {name}", scale=100, slope=False)
        axes[0].axhline(100 * sel[0]["accuracy_exact"], color=color, ls="--", lw=1, label=f"exact kernel, {name}")
        width_series(axes[1], sel, "kernel_rel_error", color, name)
        for w in sorted({r["width"] for r in sel}):
            at = [r for r in sel if r["width"] == w]
            summary.append({"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "width": w,
                            "accuracy_empirical_mean": float(np.mean([r["accuracy_empirical"] for r in at])),
                            "accuracy_exact": sel[0]["accuracy_exact"],
                            "kernel_rel_error_mean": float(np.mean([r["kernel_rel_error"] for r in at]))})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width m")
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[0].set_ylabel("test accuracy of kernel regression (%)")
    axes[1].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$ (train + test)")
    axes[0].set_title("Monte Carlo (one net) vs exact kernel")
    axes[1].set_title("Kernel error")
    fig.text(0.5, -0.04, f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test, "
             f"ridge {common(rows, 'ridge', 'g')} x mean diag; "
             "points = seeds (one random net each)", ha="center", fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "monte_carlo_vs_exact")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=monte_carlo_vs_exact", "experiment.widths=[4,8]", "experiment.seeds=[0]",
             "data.n_train=12", "data.n_test=6"]]
