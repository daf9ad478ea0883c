"""Theorem 3.2: a sufficiently wide net, fully trained by gradient flow, predicts like kernel
regression with its exact NTK -- and where the remaining difference comes from.

For every readout, depth, width, seed and route to the theorem's setting the net (NTK
parameterisation) is trained by gradient flow on 0.5 ||f(X) - Y||^2 until the training loss is at
most ``loss_tol`` times its initial value (finite_nets.train_flow: an exponential integrator with
error control).  Routes (the theorem needs the initial output to vanish):
  - ``centred``: kappa = 1, training f - f0 (the initial function subtracted);
  - ``small_kappa``: output scale kappa (one value or a list: ``small_kappa``), uncentred: the
    theorem's own route.  It has an O(kappa) random part of f0, and the width it needs grows as
    kappa falls: the net is lazy (its tangent kernel stays put) only when kappa sqrt(m) >> 1
    (Chizat, Oyallon & Bach 2019; the parameters move by ~1 / (kappa sqrt(m)) relative to their size).

Measured on the test points, each relative to RMS(f_KR), f_KR = kernel regression on the exact
CNTK (t = infinity, no ridge), and split in two by lin(Theta0), the net linearised at its own
initialisation and trained to t = infinity, i.e. kernel regression with the *empirical* NTK
Theta0 of the same net at init (uncentred: f_lin(x) = f0(x) + Theta0(x, X) Theta0(X, X)^-1 (Y - f0(X));
centred: f_lin(x) = Theta0(x, X) Theta0(X, X)^-1 Y):
  - ``rel_diff_to_kernel_regression`` = RMS(f_net - f_KR): the theorem's quantity;
  - ``rel_lin_kr`` = RMS(f_lin - f_KR): the initial kernel's fluctuation (and the uncentred f0 part,
    ``rel_f0_part``); expected ~ m^-1/2 (Theta0 - Theta is O(m^-1/2));
  - ``rel_net_lin`` = RMS(f_net - f_lin): what training's nonlinearity adds; expected ~ m^-1 for a
    lazy net (the kernel moves by O(m^-1) during training, Dyer & Gur-Ari 2020; Huang & Yau 2020),
    slower for ReLU, whose kink makes the kernel change less smoothly (run model.activation=erf for
    the smooth control);
  - ``drift`` = ||Theta_T - Theta_0||_F / ||Theta_0||_F on the training points (expected ~ m^-1 when lazy);
  - along training, the net against the linearised net on the exact kernel at the same time t
    (early-time linearisation, Lee et al. 2019).
Laziness: a row is ``lazy`` when kappa sqrt(m) >= ``lazy_threshold`` (decided before training, not
from the outcome, so that the fits are not selected on what they measure); the m^-1 comparisons
(net - lin(Theta0), drift) are fitted on lazy rows only; ``kappa_sqrt_m`` is in every row.
Integrator error: ``flow_error`` = sum over accepted steps of err_s ||r_s|| / ||r_0|| (err_s the
integrator's per-step defect, r the training residual), an estimate of its global error in units of
the signal; against runs at a 100x tighter rtol the test predictions moved by 0.3-0.5 of it (CNN-V
depth 2, widths 64 and 512, kappa 1, 0.1, 0.01).  ``flow_error_rel`` = flow_error / rel_net_lin (the
smallest measured difference); a run above ``flow_error_bound`` is repeated once at rtol / 10, and a
row still above it is flagged ``flow_ok = False`` and left out of the net - lin(Theta0) fit (net - KR
is larger, so the same error is a smaller part of it: fitted on all rows).
Targets: +1 for the first half of the classes, -1 otherwise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

import cntk
import finite_nets

from experiments.harness import sweep
from experiments.harness.common import (
    by_group,
    common,
    loglog_fit,
    save_figure,
    series_name,
    style,
)
from experiments.harness.config import Config as RunConfig, GridExperiment, Needs, check
from experiments.harness.data import Dataset
from experiments.harness.trained_split import (  # noqa: F401 (flow_error: kept importable from here)
    FlowKeys,
    flow_error,
    initial_ntk,
    linearised_limit,
    rms as _rms,
    train_checked,
)

ROUTES = ("centred", "small_kappa")


def kappas(value: Any) -> list[float]:
    """``small_kappa`` as a list (it takes one number or a list of them)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


@dataclass
class Config(FlowKeys, GridExperiment):
    NAME: ClassVar[str] = "prediction_equivalence"
    DEPENDS: ClassVar[dict[str, Needs]] = {
        "small_kappa": Needs("routes", idle=("centred",), use="small_kappa", why="only the small_kappa route reads it"),
    }
    name: str = "prediction_equivalence"
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    # kappa of the small_kappa route: one number, or a list (a sweep inside the run: laziness needs kappa sqrt(m) >> 1)
    small_kappa: Any = field(default_factory=lambda: [0.01, 0.1])
    lazy_threshold: float = 2.0  # a row is lazy when kappa sqrt(m) >= this (the m^-1 fits use lazy rows only)
    # loss_tol, rtol, flow_error_bound, max_steps: FlowKeys (experiments/harness/trained_split.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [r for r in self.routes if r not in ROUTES]
        check(len(self.routes) > 0 and not bad, "experiment.routes", f"unknown route(s) {bad}: use {list(ROUTES)}")
        ks = self.small_kappa if isinstance(self.small_kappa, (list, tuple)) else [self.small_kappa]
        check(len(ks) > 0 and all(isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < k <= 1 for k in ks),
              "experiment.small_kappa", f"must be a number in (0, 1] or a list of them, got {self.small_kappa}")
        check(len(set(ks)) == len(ks), "experiment.small_kappa", f"repeats a value: {self.small_kappa}")
        check(self.lazy_threshold > 0, "experiment.lazy_threshold", f"must be > 0, got {self.lazy_threshold}")
        self.check_flow()


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
    nets = [("centred", 1.0, True)] * ("centred" in e.routes)
    nets += [("small_kappa", k, False) for k in kappas(e.small_kappa)] * ("small_kappa" in e.routes)
    nets = sorted(nets, key=lambda n: e.routes.index(n[0]))
    base = {"n_train": len(data.x_train), "n_test": len(data.x_test), "loss_tol": e.loss_tol, "rtol": e.rtol,
            "max_weights": e.max_weights, "lazy_threshold": e.lazy_threshold, "flow_error_bound": e.flow_error_bound,
            "activation": cfg.model.activation}

    def prepare(arch):
        xtr = arch.inputs(data.x_train).to(device=device, dtype=dtype)
        xte = arch.inputs(data.x_test).to(device=device, dtype=dtype)
        k = cntk.kernel(xtr, None, arch).double().cpu()
        kt = cntk.kernel(xte, xtr, arch).double().cpu()
        ev = torch.linalg.eigvalsh(k)
        return (xtr, xte, k, kt, linearised_limit(k, kt, y), float(ev[-1] / ev[0])), []

    def measure(ctx, arch, width, seed):
        xtr, xte, k, kt, f_kr, cond = ctx
        kr_rms = max(_rms(f_kr), 1e-300)
        rows = []
        for route, kappa, centred in nets:
            t0 = time.perf_counter()
            net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xtr.shape[1:]), output_scale=kappa,
                                    dtype=dtype, device=device)
            th_tr, th_te = initial_ntk(net, xtr, xte)  # before training (train_flow trains a copy)
            tr = train_checked(net, xtr, y, xte, th_tr, th_te, kr_rms, loss_tol=e.loss_tol, rtol=e.rtol,
                               max_steps=e.max_steps, centred=centred, bound=e.flow_error_bound)
            res, f_net, f0, f_lin0, net_lin = tr.res, tr.f_net, tr.f0, tr.f_lin0, tr.net_lin
            err, err_rel, rtol, tries = tr.err, tr.err_rel, tr.rtol, tr.tries
            f0_part = 0.0 if centred else _rms(f_lin0 - linearised_limit(th_tr, th_te, y)) / kr_rms
            # linearised net on the exact kernel (kappa^2 K: the net's NTK scale), same flow time
            f_lin = finite_nets.gd_predictions(kappa**2 * k, kappa**2 * kt, y, 1.0, res.times, flow=True, **f0)
            lin_rms = f_lin.pow(2).mean(1).sqrt().clamp_min(1e-300)
            along = (f_net - f_lin).pow(2).mean(1).sqrt() / lin_rms
            ksm = kappa * math.sqrt(width)
            where = {**base, "route": route, "kappa": kappa, "centered": centred}
            for s, t in enumerate(res.times):
                if s:  # t = 0: the net is the linearised net
                    rows.append({**where, "time": t, "lr_time": t * res.lambda_max, "rel_diff_to_linearised": float(along[s]),
                                 "train_loss": res.loss[s]})
            rows.append({**where, "final": True, "time": res.times[-1],
                         "rel_diff_to_kernel_regression": _rms(f_net[-1] - f_kr) / kr_rms,
                         "rel_lin_kr": _rms(f_lin0 - f_kr) / kr_rms, "rel_net_lin": net_lin, "rel_f0_part": f0_part,
                         "kappa_sqrt_m": ksm, "lazy": ksm >= e.lazy_threshold,
                         "flow_error": err, "flow_error_rel": err_rel, "flow_ok": err_rel <= e.flow_error_bound,
                         "rtol_used": rtol, "flow_tries": tries,
                         "rel_diff_to_linearised": float(along[-1]), "drift": res.drift[-1],
                         "initial_loss": res.loss[0], "final_rel_loss": res.relative_loss, "converged": res.converged,
                         "flow_steps": len(res.times) - 1, "rejected_steps": res.rejected, "lambda_max": res.lambda_max,
                         "kernel_condition": cond, "weights": _weights(net),
                         "seconds": time.perf_counter() - t0})
        return rows

    return sweep.run(cfg, prepare, measure, input_shape=tuple(data.x_train.shape[1:]))


def _route_name(route: str, kappa: float) -> str:
    return "centred, κ = 1" if route == "centred" else f"κ = {kappa:g}, uncentred"


GROUP = ("readout", "depth", "route", "kappa")
# (metric, rows fitted, expected slope or None, what the expectation is)
FITS = (
    ("rel_diff_to_kernel_regression", "all", None, ""),  # the flow error is judged against net - lin, smaller
    ("rel_lin_kr", "all", -0.5, "initial-kernel fluctuation, O(m^-1/2)"),
    ("rel_net_lin", "lazy_flow_ok", -1.0, "lazy training's nonlinearity, O(m^-1)"),
    ("drift", "lazy", -1.0, "NTK change in lazy training, O(m^-1)"),
)


def _subset(rows: list[dict], which: str) -> list[dict]:
    ok = lambda r: r.get("flow_ok", True)  # noqa: E731
    # rows written before the lazy column: judged by the default criterion, kappa sqrt(m) >= 2
    lazy = lambda r: r.get("lazy", r["kappa"] * math.sqrt(r["width"]) >= r.get("lazy_threshold", 2.0))  # noqa: E731
    return [r for r in rows if {"all": True, "flow_ok": ok(r), "lazy": lazy(r), "lazy_flow_ok": lazy(r) and ok(r)}[which]]


def _fit(rows: list[dict], key: str) -> dict:
    fit = loglog_fit([r["width"] for r in rows], [max(r[key], 1e-300) for r in rows])
    return {**fit, "points": len(rows), "widths": len({r["width"] for r in rows}), "seeds": len({r["seed"] for r in rows})}


def _series(ax, sel: list[dict], fitted: list[dict], key: str, color, ls: str, label: str) -> dict:
    """Every seed a point (filled: in the fit, hollow: left out), the seed mean a line; the fit's slope,
    95 % CI and number of points in the label."""
    inside = {id(r) for r in fitted}
    for r in sel:
        filled = id(r) in inside
        ax.scatter(r["width"], r[key], s=12, color=color if filled else "none", edgecolors=color, alpha=0.5, lw=0.8)
    widths = sorted({r["width"] for r in sel})
    ax.plot(widths, [np.mean([r[key] for r in sel if r["width"] == w]) for w in widths], ls, color=color, lw=1.2,
            marker="o", ms=3)
    fit = _fit(fitted, key)
    slope = (f"slope {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}], n = {fit['points']}"
             if np.isfinite(fit["slope"]) else f"no fit ({fit['points']} points)")
    ax.plot([], [], ls, color=color, marker="o", ms=3, label=f"{label}: {slope}")
    return fit


def _reference(ax, finals: list[dict], key: str, exponents: tuple[tuple[float, str, str], ...]) -> None:
    ws = sorted({r["width"] for r in finals})
    if len(ws) < 2:
        return
    ref = np.array(ws, float)
    y0 = float(np.median([r[key] for r in finals if r["width"] == ws[0]]))
    for p, ls, label in exponents:
        ax.plot(ref, y0 * (ref / ref[0]) ** p, ls, color="gray" if p == -0.5 else "black", lw=1.0, label=label)


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    finals = [r for r in rows if r.get("final")]
    for r in finals:  # rows written before this column: computed from kappa and width
        r.setdefault("kappa_sqrt_m", r["kappa"] * math.sqrt(r["width"]))
    groups = by_group(finals, GROUP)
    fig, axes = plt.subplots(2, 3, figsize=(19, 13))
    ax_kr, ax_lin, ax_nl, ax_drift, ax_lazy, ax_early = axes.ravel()
    panels = {"rel_diff_to_kernel_regression": ax_kr, "drift": ax_drift}
    if all("rel_net_lin" in r for r in finals):
        panels.update(rel_lin_kr=ax_lin, rel_net_lin=ax_nl)
    kappa_styles = {k: ls for k, ls in zip(sorted({r["kappa"] for r in finals}, reverse=True), ("-", "--", ":", "-."))}
    summary = []
    for gi, ((readout, depth, route, kappa), sel) in enumerate(groups):
        label = f"{series_name(sel)}, {_route_name(route, kappa)}"
        color, ls = f"C{gi % 10}", kappa_styles.get(kappa, "-")
        for key, which, expected, why in FITS:
            if key not in panels:
                continue
            fitted = _subset(sel, which)
            fit = _series(panels[key], sel, fitted, key, color, ls, label)
            summary.append({"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "route": route,
                            "kappa": kappa, "activation": sel[0].get("activation", "relu"), "metric": key,
                            "fitted_rows": which, **fit, "expected_slope": expected, "expected_because": why,
                            "lazy_rows": len(_subset(sel, "lazy")),
                            "flow_ok_rows": sum(bool(r.get("flow_ok", True)) for r in sel), "rows": len(sel),
                            "max_final_rel_loss": max(r["final_rel_loss"] for r in sel),
                            "all_converged": all(r["converged"] for r in sel),
                            "kernel_condition": sel[0]["kernel_condition"]})
        x = [r["kappa_sqrt_m"] for r in sel]
        ax_lazy.scatter(x, [r["drift"] for r in sel], s=14, color=color, marker="o", alpha=0.6)
        if "rel_net_lin" in panels:
            ax_lazy.scatter(x, [r["rel_net_lin"] for r in sel], s=16, color=color, marker="^", alpha=0.6,
                            facecolors="none")
        ax_lazy.plot([], [], "s", color=color, label=label)
    half = (-0.5, ":", r"$\propto m^{-1/2}$ (expected: $\Theta_0 - \Theta = O(m^{-1/2})$; Jacot et al. 2018, Arora et al. 2019)")
    one = (-1.0, "-.", r"$\propto m^{-1}$ (expected in lazy training: Dyer & Gur-Ari 2020; Huang & Yau 2020)")
    _reference(ax_drift, finals, "drift", (half, one))
    if "rel_net_lin" in panels:
        _reference(ax_lin, finals, "rel_lin_kr", (half,))
        _reference(ax_nl, finals, "rel_net_lin", (one,))
    # early-time linearisation: one series (the first group), net vs linearised net at the same time
    (readout, depth, route, kappa), first = groups[0]
    key = lambda r: (r.get("setting", ""), r["readout"], r["depth"], r["route"], r["kappa"])  # noqa: E731
    along = [r for r in rows if not r.get("final") and key(r) == key(first[0])]
    widths = sorted({r["width"] for r in along})
    cmap = plt.get_cmap("viridis")
    for wi, w in enumerate(widths):
        for si, seed in enumerate(sorted({r["seed"] for r in along if r["width"] == w})):
            pts = sorted((r["lr_time"], r["rel_diff_to_linearised"]) for r in along if (r["width"], r["seed"]) == (w, seed))
            ax_early.plot(*zip(*pts), "-", color=cmap(wi / max(1, len(widths) - 1)), lw=1, alpha=0.8,
                          label=f"m = {w}" if si == 0 else None)
    threshold = common(finals, "lazy_threshold", "g")
    if threshold != "None" and "varies" not in threshold:
        ax_lazy.axvline(float(threshold), color="gray", ls="--", lw=1)
    ax_lazy.plot([], [], "o", color="gray", label="kernel drift (filled circles)")
    ax_lazy.plot([], [], "^", color="gray", mfc="none", label="RMS(net − lin(Θ0)) / RMS(f_KR) (open triangles)")
    ax_lazy.plot([], [], "--", color="gray", label=f"lazy from κ√m ≥ {threshold} (this run's criterion)")
    ax_kr.set_ylabel(r"RMS$(f_{net} - f_{KR})$ / RMS$(f_{KR})$, test")
    ax_lin.set_ylabel(r"RMS$(f_{lin(\Theta_0)} - f_{KR})$ / RMS$(f_{KR})$, test")
    ax_nl.set_ylabel(r"RMS$(f_{net} - f_{lin(\Theta_0)})$ / RMS$(f_{KR})$, test")
    ax_drift.set_ylabel(r"kernel drift $\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$")
    ax_lazy.set_ylabel("drift (circles), net − lin(Θ0) (triangles)")
    ax_early.set_ylabel(r"RMS$(f_{net}(t) - f_{lin}(t))$ / RMS$(f_{lin}(t))$, test")
    for ax in (ax_kr, ax_lin, ax_nl, ax_drift):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width m")
    for ax in axes.ravel():
        ax.set_yscale("log")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), borderaxespad=0.0)  # below the axes
    ax_lazy.set_xscale("log")
    ax_lazy.set_xlabel(r"$\kappa \sqrt{m}$ (lazy training needs $\kappa\sqrt{m} \gg 1$: Chizat et al. 2019)")
    ax_early.set_xscale("log")
    ax_early.set_xlabel(r"time $t \cdot \lambda_{max}$ (= GD steps at lr $1/\lambda_{max}$)"
                        f"\n{series_name(first)}, {_route_name(route, kappa)}, one line per seed")
    ax_kr.set_title("Theorem 3.2: fully trained net vs kernel regression\n(fit: all rows)")
    ax_lin.set_title("Net linearised at init, t = ∞, vs kernel regression\n(the initial kernel's fluctuation; fit: all rows)")
    ax_nl.set_title("Trained net vs its own linearisation at init\n(training's nonlinearity; fit: lazy rows, hollow: left out)")
    ax_drift.set_title("Kernel drift during training\n(fit: lazy rows; hollow: not lazy, left out)")
    ax_lazy.set_title("Where the net becomes lazy: drift and net − lin(Θ0) vs κ√m")
    ax_early.set_title("Early-time linearisation on the exact kernel (Lee et al. 2019)")
    loss = max(r["final_rel_loss"] for r in finals)
    unconverged = sum(not r["converged"] for r in finals)
    bad_flow = sum(not r.get("flow_ok", True) for r in finals)
    retried = sum(r.get("flow_tries", 1) > 1 for r in finals)
    conds = ", ".join(f"{series_name(s)}: {s[0]['kernel_condition']:.3g}" for _, s in by_group(finals))
    fig.text(0.5, -0.035,
             f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test points, targets ±1; "
             f"gradient flow (exponential integrator, rtol {common(rows, 'rtol', 'g')}, once more at rtol / 10 where its "
             f"error estimate exceeded {common(finals, 'flow_error_bound', 'g')} x RMS(net − lin(Θ0)): {retried} nets; "
             f"still above: {bad_flow}, left out of the net fits) until loss ≤ {common(rows, 'loss_tol', 'g')} x initial: "
             f"reached by {len(finals) - unconverged} of {len(finals)} nets (largest final loss / initial: {loss:.2g}).\n"
             f"f_KR: kernel regression on the exact CNTK, no ridge (t = ∞).  lin(Θ0): the same net linearised at its "
             f"initialisation and trained to t = ∞ (kernel regression with its empirical NTK Θ0, plus the f0 terms when "
             f"uncentred).  Points = seeds; slopes: log-log fit, 95 % CI, n points.\n"
             f"Condition number of the exact kernel on the training points: {conds}.  Widths skipped above "
             f"{common(rows, 'max_weights')} hidden weights (0: none).",
             ha="center", fontsize=7)
    fig.tight_layout(h_pad=2.0)
    paths = save_figure(fig, out_dir, "prediction_equivalence")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=prediction_equivalence", "experiment.widths=[8,16,32]", "experiment.seeds=[0]",
             "experiment.max_steps=20", "data.n_train=6", "data.n_test=4"]]
