"""Theorem 3.2: a wide net trained by full-batch GD predicts like the kernel predictor.

For every readout, depth, width and seed: the net (NTK parameterisation, output scale kappa,
optionally centred: f - f0) is trained by full-batch GD on 0.5 * ||f(X) - Y||^2 with
lr = lr_fraction / lambda_max(initial empirical NTK); at every recorded step its test
predictions are compared with the linearised net on the exact kernel after the same number of
steps at the same lr (finite_nets.gd_predictions), and at the end with kernel regression
(t -> infinity).  Also the relative kernel drift ||Theta_T - Theta_0|| / ||Theta_0||.
Targets: a scalar regression target, +1 for the first half of the classes, -1 otherwise.
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
from .common import by_group, common, model_inputs, save_figure, series_name, style, width_series
from .config import Config as RunConfig, GridExperiment, check
from .data import Dataset


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "prediction_equivalence"
    name: str = "prediction_equivalence"
    steps: int = 300  # full-batch GD steps
    lr_fraction: float = 1.0  # learning rate = lr_fraction / lambda_max(initial NTK)
    output_scale: float = 1.0  # kappa of Theorem 3.2
    centered: bool = True  # train f - f0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 1, "experiment.steps", f"must be >= 1, got {self.steps}")
        check(0 < self.lr_fraction < 2, "experiment.lr_fraction", f"must be in (0, 2) for stable GD, got {self.lr_fraction}")
        check(self.output_scale > 0, "experiment.output_scale", f"must be > 0, got {self.output_scale}")


def _eval_steps(steps: int) -> list[int]:
    pts = np.unique(np.round(np.geomspace(1, steps, 12)).astype(int))
    return sorted({0, *pts.tolist(), steps})


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    kappa = e.output_scale
    y = torch.where(data.y_train < data.num_classes // 2, 1.0, -1.0).to(torch.float64)
    steps_list = _eval_steps(e.steps)
    setting = {"steps": e.steps, "lr_fraction": e.lr_fraction, "output_scale": kappa, "centered": e.centered,
               "n_train": len(data.x_train), "n_test": len(data.x_test)}

    def prepare(arch):
        xtr = model_inputs(data.x_train, arch).to(device=device, dtype=dtype)
        xte = model_inputs(data.x_test, arch).to(device=device, dtype=dtype)
        k = kappa**2 * cntk.kernel(xtr, None, arch).double()
        kt = kappa**2 * cntk.kernel(xte, xtr, arch).double()
        return (xtr, xte, k, kt, finite_nets.kernel_predictions(k, kt, y)), []

    def measure(ctx, arch, width, seed):
        xtr, xte, k, kt, f_inf = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xtr.shape[1:]), output_scale=kappa,
                                dtype=dtype, device=device)
        res = finite_nets.train_gd(net, xtr, y.to(dtype), xte, steps=e.steps, lr_fraction=e.lr_fraction,
                                   centered=e.centered, eval_steps=steps_list, drift_steps=[e.steps])
        f_net = res.test_predictions[..., 0].double().cpu()  # (S, M)
        f_lin = finite_nets.gd_predictions(k, kt, y, res.lr, res.eval_steps).cpu()  # (S, M)
        scale = f_lin.pow(2).mean(1).sqrt().clamp_min(1e-300)
        diff = (f_net - f_lin).pow(2).mean(1).sqrt() / scale
        rows = [{**setting, "step": step, "rel_test_diff": float(diff[s]),
                 "max_abs_test_diff": float((f_net[s] - f_lin[s]).abs().max()), "train_loss": float(res.loss[step])}
                for s, step in enumerate(res.eval_steps)]
        rows[-1].update(drift=float(res.drift[-1]), lr_times_lambda_max=res.lr * res.lambda_max,
                        rel_diff_to_kernel_regression=float((f_net[-1] - f_inf.cpu()).pow(2).mean().sqrt()
                                                            / f_inf.pow(2).mean().sqrt()),
                        seconds=time.perf_counter() - t0)
        return rows

    return sweep.run(cfg, prepare, measure)


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    finals = [r for r in rows if "drift" in r]
    groups = by_group(finals)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    summary = []
    for gi, ((readout, depth), sel) in enumerate(groups):
        for ax, key in ((axes[0], "rel_test_diff"), (axes[1], "drift")):
            fit = width_series(ax, sel, key, f"C{gi % 10}", series_name(sel))
            summary.append({"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "metric": key,
                            **fit})
    ws = sorted({r["width"] for r in finals})
    if ws:
        ref = np.array(ws, float)
        d0 = np.median([r["drift"] for r in finals if r["width"] == ws[0]])
        axes[1].plot(ref, d0 * (ref / ref[0]) ** -0.5, ":", color="gray", label=r"$\propto m^{-1/2}$ (theory's rate)")
        axes[1].plot(ref, d0 * (ref / ref[0]) ** -1.0, "--", color="gray", lw=0.8, label=r"$\propto m^{-1}$")
    (readout, depth), first = groups[0]
    sel = [r for r in rows if (r["readout"], r["depth"], r.get("setting", "")) == (readout, depth, first[0].get("setting", ""))]
    widths = sorted({r["width"] for r in sel})
    for wi, w in enumerate(widths):
        steps = sorted({r["step"] for r in sel if r["width"] == w and r["step"] > 0})
        mean = [np.mean([r["rel_test_diff"] for r in sel if r["width"] == w and r["step"] == s]) for s in steps]
        axes[2].plot(steps, mean, "-", color=plt.get_cmap("viridis")(wi / max(1, len(widths) - 1)), label=f"m = {w}")
    axes[0].set_ylabel("RMS(f_net - f_lin) / RMS(f_lin), test, end of training")
    axes[1].set_ylabel(r"kernel drift $\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$")
    axes[2].set_ylabel("RMS(f_net - f_lin) / RMS(f_lin), test")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width m")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[2].set_xscale("log")
    axes[2].set_xlabel(f"GD step ({series_name(first)}, seed mean)")
    axes[0].set_title("Trained net vs kernel predictor")
    axes[1].set_title("Kernel drift during training")
    axes[2].set_title("Along training time")
    fig.text(0.5, -0.05,
             f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test, full-batch GD, "
             f"{common(rows, 'steps')} steps, lr = {common(rows, 'lr_fraction', 'g')}/λmax, "
             f"κ = {common(rows, 'output_scale', 'g')}, centred (f - f0): {common(rows, 'centered')}; "
             "f_lin = linearised net on the exact CNTK after the same steps; points = seeds.",
             ha="center", fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "prediction_equivalence")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=prediction_equivalence", "experiment.widths=[8,16,32]", "experiment.seeds=[0]",
             "experiment.steps=3", "data.n_train=6", "data.n_test=4"]]
