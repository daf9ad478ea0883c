"""Theorem 3.2: a sufficiently wide net, fully trained by gradient flow, predicts like kernel
regression with its exact NTK.

For every readout, depth, width, seed and route to the theorem's setting the net (NTK
parameterisation) is trained by gradient flow on 0.5 ||f(X) - Y||^2 until the training loss is at
most ``loss_tol`` times its initial value (finite_nets.train_flow: an exponential integrator with
error control, so the kernel's slowest modes cost tens of steps, not lambda_max / lambda_min GD
steps).  Routes (the theorem needs the initial output to vanish):
  - ``small_kappa``: output scale kappa = ``small_kappa``, uncentred: the theorem's own route
    (its error has an O(kappa) term from f0, and the width it needs grows as kappa falls);
  - ``centred``: kappa = 1, training f - f0 (the initial function subtracted).
Measured on the test points: RMS(f_net - f_KR) / RMS(f_KR), f_KR = kernel regression on the exact
CNTK (t = infinity, no ridge); the relative kernel drift ||Theta_T - Theta_0|| / ||Theta_0||; and
along training, the net against the linearised net on the exact kernel at the same time t (early-time
linearisation, Lee et al. 2019).  Targets: +1 for the first half of the classes, -1 otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
import finite_nets
from finite_nets.flow import train_flow

from experiments.harness import sweep
from experiments.harness.common import (
    by_group,
    common,
    save_figure,
    series_name,
    style,
    width_series,
)
from experiments.harness.config import Config as RunConfig, GridExperiment, Needs, check
from experiments.harness.data import Dataset

ROUTES = ("centred", "small_kappa")


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "prediction_equivalence"
    DEPENDS: ClassVar[dict[str, Needs]] = {
        "small_kappa": Needs("routes", idle=("centred",), use="small_kappa", why="only the small_kappa route reads it"),
    }
    name: str = "prediction_equivalence"
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    small_kappa: float = 0.01  # kappa of the small_kappa route
    loss_tol: float = 1e-6  # train until loss <= loss_tol * initial loss
    rtol: float = 1e-2  # the gradient-flow integrator's accepted relative defect per step
    max_steps: int = 400  # integrator steps at most (a run that stops early is reported as not converged)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [r for r in self.routes if r not in ROUTES]
        check(len(self.routes) > 0 and not bad, "experiment.routes", f"unknown route(s) {bad}: use {list(ROUTES)}")
        check(0 < self.small_kappa <= 1, "experiment.small_kappa", f"must be in (0, 1], got {self.small_kappa}")
        check(0 < self.loss_tol < 1, "experiment.loss_tol", f"must be in (0, 1), got {self.loss_tol}")
        check(0 < self.rtol < 1, "experiment.rtol", f"must be in (0, 1), got {self.rtol}")
        check(self.max_steps >= 1, "experiment.max_steps", f"must be >= 1, got {self.max_steps}")


def _weights(net: torch.nn.Module) -> int:
    """Trainable parameters of the finite net (one output), counted on the net itself."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from experiments.harness.config import ConfigError

    e = cfg.experiment
    if len(data.x_test) == 0:  # before any work: the net is compared with kernel regression on test points
        raise ConfigError("data.n_test: prediction_equivalence compares predictions on test points and needs "
                          f"test images (got {len(data.x_test)})")
    sweep.refuse_unbuildable(cfg, data, dtype)
    y = torch.where(data.y_train < data.num_classes // 2, 1.0, -1.0).to(torch.float64)
    routes = {"centred": (1.0, True), "small_kappa": (e.small_kappa, False)}
    base = {"n_train": len(data.x_train), "n_test": len(data.x_test), "loss_tol": e.loss_tol, "rtol": e.rtol,
            "max_weights": e.max_weights}

    def prepare(arch):
        xtr = arch.inputs(data.x_train).to(device=device, dtype=dtype)
        xte = arch.inputs(data.x_test).to(device=device, dtype=dtype)
        k = cntk.kernel(xtr, None, arch).double().cpu()
        kt = cntk.kernel(xte, xtr, arch).double().cpu()
        ev = torch.linalg.eigvalsh(k)
        return (xtr, xte, k, kt, finite_nets.kernel_predictions(k, kt, y), float(ev[-1] / ev[0])), []

    def measure(ctx, arch, width, seed):
        xtr, xte, k, kt, f_kr, cond = ctx
        rows = []
        for route in e.routes:
            kappa, centred = routes[route]
            t0 = time.perf_counter()
            net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xtr.shape[1:]), output_scale=kappa,
                                    dtype=dtype, device=device)
            res = train_flow(net, xtr, y.to(dtype), xte, loss_tol=e.loss_tol, rtol=e.rtol, max_steps=e.max_steps,
                             centered=centred)
            f_net = res.test_predictions[..., 0].double().cpu()  # (S, M)
            # linearised net on the exact kernel (kappa^2 K: the net's NTK scale), same flow time
            f0 = {} if centred else {"f0_train": res.f0_train[:, 0].double().cpu(), "f0_test": res.f0_test[:, 0].double().cpu()}
            f_lin = finite_nets.gd_predictions(kappa**2 * k, kappa**2 * kt, y, 1.0, res.times, flow=True, **f0)
            lin_rms = f_lin.pow(2).mean(1).sqrt().clamp_min(1e-300)
            along = (f_net - f_lin).pow(2).mean(1).sqrt() / lin_rms
            where = {**base, "route": route, "kappa": kappa, "centered": centred}
            for s, t in enumerate(res.times):
                if s:  # t = 0: the net is the linearised net
                    rows.append({**where, "time": t, "lr_time": t * res.lambda_max, "rel_diff_to_linearised": float(along[s]),
                                 "train_loss": res.loss[s]})
            rows.append({**where, "final": True, "time": res.times[-1],
                         "rel_diff_to_kernel_regression": float((f_net[-1] - f_kr).pow(2).mean().sqrt()
                                                                / f_kr.pow(2).mean().sqrt()),
                         "rel_diff_to_linearised": float(along[-1]), "drift": res.drift[-1],
                         "initial_loss": res.loss[0], "final_rel_loss": res.relative_loss, "converged": res.converged,
                         "flow_steps": len(res.times) - 1, "rejected_steps": res.rejected, "lambda_max": res.lambda_max,
                         "kernel_condition": cond, "weights": _weights(net),
                         "seconds": time.perf_counter() - t0})
        return rows

    return sweep.run(cfg, prepare, measure, input_shape=tuple(data.x_train.shape[1:]))


def _route_name(route: str, kappa: float) -> str:
    return "centred, κ = 1" if route == "centred" else f"κ = {kappa:g}, uncentred"


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    finals = [r for r in rows if r.get("final")]
    groups = by_group(finals, ("readout", "depth", "route"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    summary = []
    styles = {"centred": "-", "small_kappa": "--"}
    for gi, ((readout, depth, route), sel) in enumerate(groups):
        label = f"{series_name(sel)}, {_route_name(route, sel[0]['kappa'])}"
        color = f"C{gi % 10}"
        for ax, key in ((axes[0], "rel_diff_to_kernel_regression"), (axes[1], "drift")):
            fit = width_series(ax, sel, key, color, label)
            ax.lines[-1].set_linestyle(styles[route])
            summary.append({"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "route": route,
                            "kappa": sel[0]["kappa"], "metric": key, **fit, "widths": len({r["width"] for r in sel}),
                            "seeds": len({r["seed"] for r in sel}),
                            "max_final_rel_loss": max(r["final_rel_loss"] for r in sel),
                            "all_converged": all(r["converged"] for r in sel),
                            "kernel_condition": sel[0]["kernel_condition"]})
    ws = sorted({r["width"] for r in finals})
    if len(ws) > 1:
        ref = np.array(ws, float)
        d0 = float(np.median([r["drift"] for r in finals if r["width"] == ws[0]]))
        axes[1].plot(ref, d0 * (ref / ref[0]) ** -0.5, ":", color="gray", lw=1.2,
                     label=r"$\propto m^{-1/2}$: the $O(1/\sqrt{m})$ bound (Jacot et al. 2018; Arora et al. 2019)")
        axes[1].plot(ref, d0 * (ref / ref[0]) ** -1.0, "-.", color="black", lw=0.8,
                     label=r"$\propto m^{-1}$: NTK change in training (Dyer & Gur-Ari 2020; Huang & Yau 2020)")
    # early-time linearisation: one series (the first group), net vs linearised net at the same time
    (readout, depth, route), first = groups[0]
    key = lambda r: (r.get("setting", ""), r["readout"], r["depth"], r["route"])  # noqa: E731
    along = [r for r in rows if not r.get("final") and key(r) == key(first[0])]
    widths = sorted({r["width"] for r in along})
    cmap = plt.get_cmap("viridis")
    for wi, w in enumerate(widths):
        for si, seed in enumerate(sorted({r["seed"] for r in along if r["width"] == w})):
            pts = sorted((r["lr_time"], r["rel_diff_to_linearised"]) for r in along if (r["width"], r["seed"]) == (w, seed))
            axes[2].plot(*zip(*pts), "-", color=cmap(wi / max(1, len(widths) - 1)), lw=1, alpha=0.8,
                         label=f"m = {w}" if si == 0 else None)
    axes[0].set_ylabel(r"RMS$(f_{net} - f_{KR})$ / RMS$(f_{KR})$ on test points")
    axes[1].set_ylabel(r"kernel drift $\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$")
    axes[2].set_ylabel(r"RMS$(f_{net}(t) - f_{lin}(t))$ / RMS$(f_{lin}(t))$, test")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width m")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)  # outside the axes: no point hidden
    axes[2].set_xscale("log")
    axes[2].set_xlabel(r"time $t \cdot \lambda_{max}$ (= GD steps at lr $1/\lambda_{max}$)"
                       f"; {series_name(first)}, {_route_name(route, first[0]['kappa'])}, one line per seed")
    axes[0].set_title("Theorem 3.2: fully trained net vs kernel regression")
    axes[1].set_title("Kernel drift during training")
    axes[2].set_title("Early-time linearisation (Lee et al. 2019)")
    loss = max(r["final_rel_loss"] for r in finals)
    unconverged = sum(not r["converged"] for r in finals)
    conds = ", ".join(f"{series_name(s)}: {s[0]['kernel_condition']:.3g}" for _, s in by_group(finals))
    fig.text(0.5, -0.09,
             f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test points, targets ±1; "
             f"gradient flow (exponential integrator, rtol {common(rows, 'rtol', 'g')}) until loss ≤ "
             f"{common(rows, 'loss_tol', 'g')} x initial: reached by {len(finals) - unconverged} of {len(finals)} nets "
             f"(largest final loss / initial: {loss:.2g}).  f_KR: kernel regression on the exact CNTK, no ridge "
             f"(t = ∞).  Points = seeds; slopes: log-log fit over all seeds, 95 % CI.\n"
             f"Condition number of the exact kernel on the training points: {conds}; Theorem 3.2's width grows "
             f"with 1/λ_min and 1/κ.  Widths skipped above {common(rows, 'max_weights')} hidden weights (0: none).",
             ha="center", fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "prediction_equivalence")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=prediction_equivalence", "experiment.widths=[8,16,32]", "experiment.seeds=[0]",
             "experiment.max_steps=20", "data.n_train=6", "data.n_test=4"]]
