"""Theorem 3.1: the empirical NTK at initialisation converges to the exact kernel as width grows.

For every readout, depth, width and seed: the relative Frobenius error
||Theta_m - Theta|| / ||Theta|| and the largest entrywise error |Theta_m - Theta| on the
data.n_train training images scaled to unit norm (the theorem's assumption ||x|| <= 1).
"""
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
from .common import by_group, common, model_inputs, save_figure, series_name, style, theorem_31_error, width_series
from .config import Config as RunConfig, GridExperiment, check
from .data import Dataset


@dataclass
class Config(GridExperiment):
    """Theorem 3.1 over widths, seeds, depths and readouts, on data.n_train images."""

    NAME: ClassVar[str] = "ntk_convergence"
    REFUSED: ClassVar[dict[str, str]] = {"data.n_test": "ntk_convergence measures the kernel on data.n_train training "
                                                        "images and has no test set: remove data.n_test"}
    name: str = "ntk_convergence"
    delta: float = 0.05  # failure probability drawn with the theorem's width bound
    bound_constant: float = 1.0  # the theorem's unspecified constant, drawn as this value

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.delta < 1, "experiment.delta", f"must be in (0, 1), got {self.delta}")
        check(self.bound_constant > 0, "experiment.bound_constant", f"must be > 0, got {self.bound_constant}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    x = data.x_train.to(device=device, dtype=dtype)
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None]
    if len(x) < 2:
        raise ValueError("ntk_convergence needs data.n_train >= 2 images")

    def prepare(arch):
        xin = model_inputs(x, arch)
        t0 = time.perf_counter()
        exact = cntk.kernel(xin, None, arch, "ntk")
        return (xin, exact, time.perf_counter() - t0), []

    def measure(ctx, arch, width, seed):
        xin, exact, t_exact = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xin.shape[1:]), dtype=dtype, device=device)
        emp = finite_nets.empirical_ntk(net, xin).reshape(len(xin), len(xin))
        return {"n_points": len(xin), "delta": e.delta, "bound_constant": e.bound_constant,
                "rel_fro_error": float((emp - exact).norm() / exact.norm()),
                "max_abs_error": float((emp - exact).abs().max()),
                "exact_max_entry": float(exact.abs().max()),
                "seconds_empirical": time.perf_counter() - t0, "seconds_exact": t_exact}

    return sweep.run(cfg, prepare, measure)


def plot(doc: dict, out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    """Log-log error vs width with seed spread, fitted slopes (95 % CI), and the theorem's bound."""
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    groups = by_group(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    summary = []
    bounds = {}
    for gi, ((readout, depth), sel) in enumerate(groups):
        for ax, key in zip(axes, ("rel_fro_error", "max_abs_error")):
            fit = width_series(ax, sel, key, f"C{gi % 10}", series_name(sel), band=True)
            summary.append({"setting": sel[0].get("setting", ""), "family": sel[0].get("family", "cnn"),
                            "readout": readout, "depth": depth, "metric": key, **fit,
                            "n_points": len(sel), "widths": len({r["width"] for r in sel})})
        bounds[(depth, sel[0]["delta"], sel[0]["bound_constant"])] = sorted({r["width"] for r in sel})
    for di, ((depth, delta, const), widths) in enumerate(sorted(bounds.items())):
        bound = theorem_31_error(np.array(widths), depth - 1, delta, const)
        what = f", δ = {delta:g}, C = {const:g}" if len({k[1:] for k in bounds}) > 1 else ""
        axes[1].plot(widths, bound, ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))][di % 4], color="black", lw=1,
                     label=f"Thm 3.1 guarantee (L+1)ε, depth {depth}{what}")
    all_w = sorted({r["width"] for r in rows})
    ref = np.array(all_w, float)
    y0 = np.median([r["rel_fro_error"] for r in rows if r["width"] == all_w[0]])
    axes[0].plot(ref, y0 * (ref / ref[0]) ** -0.5, ":", color="gray", label=r"$\propto m^{-1/2}$")
    axes[0].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$")
    axes[1].set_ylabel(r"$\max_{x,x'} |\Theta_m(x,x') - \Theta(x,x')|$")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width m (channels per conv layer)")
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_title("Relative error of the empirical NTK at init")
    axes[1].set_title("Entrywise error vs Theorem 3.1")
    fig.text(
        0.5, -0.06,
        f"{common(rows, 'data')}, {common(rows, 'n_points')} inputs scaled to ||x|| = 1 (the theorem's assumption); "
        f"points = seeds, band = seed range. Bound: (L+1)(C L^6 log(L/δ)/m)^(1/4), C = {common(rows, 'bound_constant', 'g')} "
        f"(not given by the theorem), δ = {common(rows, 'delta', 'g')}; stated for fully-connected nets.",
        ha="center", fontsize=7, wrap=True,
    )
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ntk_convergence")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=ntk_convergence", "experiment.widths=[4,8,16]", "experiment.seeds=[0,1]", "data.n_train=3"]]
