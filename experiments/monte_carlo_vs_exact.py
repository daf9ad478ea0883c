"""Kernel regression with the empirical (finite-width, Monte Carlo) NTK of one random net vs the
exact kernel: test accuracy and kernel error vs width (the paper's point that the Monte Carlo
approximation costs accuracy)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cntk
import finite_nets

from .common import architecture, by_group, model_inputs, net_name, save_figure, style, width_series
from .config import Config
from .data import Dataset


def run(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = len(data.x_train)
    rows = []
    grid = [(r, d) for r in e.readouts for d in e.depths]
    with tqdm(total=len(grid) * len(e.widths) * len(e.seeds), desc="monte_carlo_vs_exact",
              disable=not cfg.progress) as bar:
        for readout, depth in grid:
            arch = architecture(cfg.model, readout=readout, depth=depth)
            x = model_inputs(torch.cat([data.x_train, data.x_test]), arch).to(device=device, dtype=dtype)
            exact = cntk.kernel(x, None, arch, progress=False).double()
            exact_acc = cntk.accuracy(cntk.kernel_regression(exact[:n, :n], y, ridge=e.ridge).predict(exact[n:, :n]).cpu(),
                                      data.y_test)
            for width in e.widths:
                for seed in e.seeds:
                    t0 = time.perf_counter()
                    net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(x.shape[1:]), dtype=dtype,
                                            device=device)
                    emp = finite_nets.empirical_ntk(net, x).double()
                    model = cntk.kernel_regression(emp[:n, :n], y, ridge=e.ridge)
                    rows.append({
                        "readout": readout, "depth": depth, "width": width, "seed": seed,
                        "accuracy_empirical": cntk.accuracy(model.predict(emp[n:, :n]).cpu(), data.y_test),
                        "accuracy_exact": exact_acc,
                        "kernel_rel_error": float((emp - exact).norm() / exact.norm()),
                        "jitter": model.jitter, "seconds": time.perf_counter() - t0,
                    })
                    bar.update()
    return rows


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    summary = []
    for gi, ((readout, depth), sel) in enumerate(by_group(rows)):
        color, name = f"C{gi % 10}", net_name(readout, depth)
        width_series(axes[0], sel, "accuracy_empirical", color, f"empirical NTK, {name}", scale=100, slope=False)
        axes[0].axhline(100 * sel[0]["accuracy_exact"], color=color, ls="--", lw=1, label=f"exact kernel, {name}")
        width_series(axes[1], sel, "kernel_rel_error", color, name)
        for w in sorted({r["width"] for r in sel}):
            at = [r for r in sel if r["width"] == w]
            summary.append({"readout": readout, "depth": depth, "width": w,
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
    d = doc["config"]["data"]
    axes[0].set_title("Monte Carlo (one net) vs exact kernel")
    axes[1].set_title("Kernel error")
    fig.text(0.5, -0.04, f"{d['name']}, {d['n_train']} train / {d['n_test']} test, no ridge unless set; "
             "points = seeds (one random net each)", ha="center", fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "monte_carlo_vs_exact")
    plt.close(fig)
    return paths, summary
