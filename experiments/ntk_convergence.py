"""Theorem 3.1: the empirical NTK at initialisation converges to the exact kernel as width grows,
and the width it needs grows with depth.

For every family / readout, depth, width and seed, on the data.n_train training images scaled to
unit norm (the theorem's assumption ||x|| <= 1): the relative Frobenius error
||Theta_m - Theta||_F / ||Theta||_F, the relative entrywise error max|Theta_m - Theta| / max|Theta|
(both on the kernel's own scale, so readouts and depths compare: a CNN-GAP kernel's entries are
about P times smaller than CNN-V's) and the absolute entrywise error max|Theta_m - Theta|.

The theorem: m >= C L^6 / eps^4 log(L / delta) gives |Theta_m - Theta| <= (L + 1) eps w.p. 1 - delta
for fully-connected nets (L hidden layers); C is not given, so only the bound's slopes are
testable: error ~ m^(-1/4) at fixed depth, and the width needed for a fixed error ~ L^6.  The
sharper known picture: the relative fluctuation of the empirical NTK at init grows like
sqrt(L / m) (Hanin & Nica 2019: the variance ~ exp(c L / m) - 1), i.e. error ~ m^(-1/2) and a
needed width ~ L.  With three or more depths the depth figure fits the needed width's exponent.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
import finite_nets

from experiments.harness import sweep
from experiments.harness.common import (
    by_group,
    common,
    loglog_fit,
    row_name,
    save_figure,
    series_name,
    style,
    theorem_31_error,
    width_series,
)
from experiments.harness.config import Config as RunConfig, GridExperiment, check
from experiments.harness.data import Dataset


@dataclass
class Config(GridExperiment):
    """Theorem 3.1 over widths, seeds, depths and readouts, on data.n_train images."""

    NAME: ClassVar[str] = "ntk_convergence"
    REFUSED: ClassVar[dict[str, str]] = {"data.n_test": "ntk_convergence measures the kernel on data.n_train training "
                                                        "images and has no test set: remove data.n_test"}
    name: str = "ntk_convergence"
    delta: float = 0.05  # failure probability in the theorem's bound
    bound_constant: float = 1.0  # the theorem's unspecified constant C, drawn at this value (slope only)
    eps: float = 0.1  # relative Frobenius error whose needed width the depth figure reports
    bootstrap: int = 400  # resamples of the seeds for the needed width's interval

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.delta < 1, "experiment.delta", f"must be in (0, 1), got {self.delta}")
        check(self.bound_constant > 0, "experiment.bound_constant", f"must be > 0, got {self.bound_constant}")
        check(0 < self.eps < 1, "experiment.eps", f"must be in (0, 1), got {self.eps}")
        check(self.bootstrap >= 0, "experiment.bootstrap", f"must be >= 0, got {self.bootstrap}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from experiments.harness.config import ConfigError

    e = cfg.experiment
    if len(data.x_train) < 2:  # before any work: a kernel error needs a Gram matrix of two or more points
        raise ConfigError(f"data.n_train: ntk_convergence needs at least 2 training images (got {len(data.x_train)})")
    sweep.refuse_unbuildable(cfg, data, dtype)
    x = data.x_train.to(device=device, dtype=dtype)
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None]
    const = {"n_points": len(x), "delta": e.delta, "bound_constant": e.bound_constant, "eps": e.eps,
             "bootstrap": e.bootstrap, "max_weights": e.max_weights}

    def prepare(arch):
        xin = arch.inputs(x)
        t0 = time.perf_counter()
        exact = cntk.kernel(xin, None, arch, "ntk")
        return (xin, exact, time.perf_counter() - t0), []

    def measure(ctx, arch, width, seed):
        xin, exact, t_exact = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xin.shape[1:]), dtype=dtype, device=device)
        emp = finite_nets.empirical_ntk(net, xin).reshape(len(xin), len(xin))
        diff = (emp - exact).abs()
        return {**const, "rel_fro_error": float((emp - exact).norm() / exact.norm()),
                "rel_max_error": float(diff.max() / exact.abs().max()), "max_abs_error": float(diff.max()),
                "exact_max_entry": float(exact.abs().max()), "hidden_weights": arch.hidden_weights(tuple(xin.shape[1:]), width),
                "seconds_empirical": time.perf_counter() - t0, "seconds_exact": t_exact}

    return sweep.run(cfg, prepare, measure, input_shape=tuple(x.shape[1:]))


# ---------------------------------------------------------------------------------------------
# width needed for a relative error eps, against depth


def width_needed(rows: list[dict], eps: float, key: str = "rel_fro_error") -> tuple[float, bool]:
    """(m_eps, extrapolated): the width where the log-log fit of ``key`` on width crosses eps, and
    whether eps lies outside the range of the seed-mean errors over the measured widths (then m_eps
    is the fit's extrapolation; single seeds are too noisy at depth to bound it)."""
    fit = loglog_fit([r["width"] for r in rows], [r[key] for r in rows])
    if not np.isfinite(fit["slope"]) or fit["slope"] >= 0:
        return float("nan"), True
    m = math.exp((math.log(eps) - fit["intercept"]) / fit["slope"])
    means = [np.mean([r[key] for r in rows if r["width"] == w]) for w in {r["width"] for r in rows}]
    return m, not (min(means) <= eps <= max(means))


def depth_exponent(groups: dict[int, list[dict]], eps: float, resamples: int, seed: int = 0) -> dict[str, float]:
    """Fit log m_eps = a + b log L over depths (L = depth - 1 hidden layers); the interval of b from a
    bootstrap that resamples the seeds at every depth and width.  Needs 3 or more depths."""
    depths = sorted(groups)
    if len(depths) < 3:
        return {"exponent": float("nan"), "exponent_lo": float("nan"), "exponent_hi": float("nan")}

    def fit(sample: dict[int, list[dict]]) -> float:
        pts = [(math.log(d - 1), math.log(m)) for d in depths if np.isfinite(m := width_needed(sample[d], eps)[0])]
        if len(pts) < 3:
            return float("nan")
        lx, ly = np.array(pts).T
        return float(np.polyfit(lx, ly, 1)[0])

    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        sample = {}
        for d in depths:
            rows = []
            for w in sorted({r["width"] for r in groups[d]}):
                at = [r for r in groups[d] if r["width"] == w]
                rows += [at[i] for i in rng.integers(0, len(at), len(at))]
            sample[d] = rows
        boots.append(fit(sample))
    boots = np.array([b for b in boots if np.isfinite(b)])
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if len(boots) > 10 else (float("nan"), float("nan")))
    return {"exponent": fit(groups), "exponent_lo": float(lo), "exponent_hi": float(hi)}


# ---------------------------------------------------------------------------------------------
# figures


def plot(doc: dict, out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    """ntk_convergence.png (errors against width) and, with three or more depths,
    ntk_convergence_depth.png (errors and needed width against depth)."""
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    groups = by_group(rows)
    many = len(groups) > 6
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    summary = []
    cmap = plt.get_cmap("viridis")
    depths = sorted({r["depth"] for r in rows})
    for gi, ((readout, depth), sel) in enumerate(groups):
        fam = sel[0].get("family", "cnn")
        color = cmap(depths.index(depth) / max(1, len(depths) - 1)) if many else f"C{gi % 10}"
        marker = {"gap": "o", "flatten": "s", "none": "^"}.get(readout, "o")
        for ax, key in zip(axes, ("rel_fro_error", "rel_max_error", "max_abs_error")):
            fit = width_series(ax, sel, key, color, series_name(sel), band=not many)
            ax.lines[-1].set_marker(marker)
            summary.append({"setting": sel[0].get("setting", ""), "family": fam, "readout": readout, "depth": depth,
                            "metric": key, **fit, "points": len(sel), "widths": len({r["width"] for r in sel}),
                            "seeds": len({r["seed"] for r in sel}), "exact_max_entry": sel[0]["exact_max_entry"]})
    ws = np.array(sorted({r["width"] for r in rows}), float)
    if len(ws) > 1:
        for ax, key in zip(axes[:2], ("rel_fro_error", "rel_max_error")):
            y0 = float(np.exp(np.mean([math.log(r[key]) for r in rows if r["width"] == ws[0]])))
            ax.plot(ws, y0 * (ws / ws[0]) ** -0.5, ":", color="gray", lw=1.2, label=r"$\propto m^{-1/2}$ (CLT at init)")
            ax.plot(ws, y0 * (ws / ws[0]) ** -0.25, "--", color="black", lw=1,
                    label=r"$\propto m^{-1/4}$: Thm 3.1's slope (no constant given)")
    for di, depth in enumerate(depths):
        sel = [r for r in rows if r["depth"] == depth]
        bound = theorem_31_error(ws, depth - 1, sel[0]["delta"], sel[0]["bound_constant"])
        axes[2].plot(ws, bound, linestyle=["--", "-.", ":", (0, (5, 1, 1, 1))][di % 4], color="black", lw=1,
                     label=f"Thm 3.1 (L+1)ε at C = {sel[0]['bound_constant']:g}, depth {depth}")
    axes[0].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$")
    axes[1].set_ylabel(r"$\max|\Theta_m - \Theta| \,/\, \max|\Theta|$")
    axes[2].set_ylabel(r"$\max_{x,x'} |\Theta_m(x,x') - \Theta(x,x')|$ (absolute)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width m (channels per conv layer, units per fc layer)")
        ax.legend(fontsize=5.5 if many else 7, ncol=2 if many else 1, loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)  # outside the axes: no point hidden
    axes[0].set_title("Relative error (kernel's own scale)")
    axes[1].set_title("Relative entrywise error")
    axes[2].set_title("Absolute entrywise error and the bound at C = 1")
    fig.text(
        0.5, -0.07,
        f"{common(rows, 'data')}, {common(rows, 'n_points')} inputs scaled to ||x|| = 1 (the theorem's assumption); "
        "points = seeds, band = seed range; slopes: log-log fits with 95 % CI.  Theorem 3.1 (fully-connected nets) bounds "
        "the absolute error by (L+1)(C L^6 log(L/δ)/m)^(1/4) with C not given: only its slope -1/4 is testable, and a curve "
        f"below the line drawn at C = {common(rows, 'bound_constant', 'g')}, δ = {common(rows, 'delta', 'g')} tests nothing "
        "(C is free).  The relative panels compare readouts and depths; the absolute one does not (CNN-GAP entries are "
        "about P times smaller than CNN-V's).",
        ha="center", fontsize=7, wrap=True,
    )
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ntk_convergence")
    plt.close(fig)
    if len(depths) >= 3:
        more, depth_summary = _depth_figure(rows, out_dir)
        paths += more
        summary += depth_summary
    return paths, summary


def _depth_figure(rows: list[dict], out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    import matplotlib.pyplot as plt

    eps, resamples = rows[0]["eps"], int(rows[0]["bootstrap"])
    series: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        series.setdefault((r.get("setting", ""), r.get("family", "cnn"), r["readout"]), {}).setdefault(r["depth"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    summary = []
    for si, (key, by_depth) in enumerate(sorted(series.items(), key=lambda kv: tuple(map(str, kv[0])))):
        depths = sorted(by_depth)
        if len(depths) < 3:
            continue
        color = f"C{si % 10}"
        first = by_depth[depths[0]]
        name = re.sub(r", depth \d+", "", row_name(first[0])) + (f" [{key[0]}]" if key[0] else "")
        common_w = sorted(set.intersection(*({r["width"] for r in by_depth[d]} for d in depths)))
        if common_w:
            w = common_w[-1]
            err = [np.mean([r["rel_fro_error"] for r in by_depth[d] if r["width"] == w]) for d in depths]
            axes[0].plot([d - 1 for d in depths], err, "-o", color=color, ms=4, label=f"{name}, m = {w}")
        need = [width_needed(by_depth[d], eps) for d in depths]
        fit = depth_exponent(by_depth, eps, resamples)
        L = np.array([d - 1 for d in depths], float)
        m = np.array([n[0] for n in need])
        for li, (mi, extra) in zip(L, need):
            axes[1].scatter(li, mi, s=28, color=color, facecolors="none" if extra else color, zorder=3)
        label = f"{name}: exponent {fit['exponent']:.2f} [{fit['exponent_lo']:.2f}, {fit['exponent_hi']:.2f}]"
        axes[1].plot(L, m, "-", color=color, lw=1, label=label)
        for d, (mi, extra) in zip(depths, need):
            summary.append({"setting": key[0], "family": key[1], "readout": key[2], "depth": d, "metric": "width_needed",
                            "eps": eps, "width_needed": mi, "extrapolated": extra, **fit})
        if si == 0 and np.isfinite(m).any():
            ok = np.isfinite(m)
            anchor_l, anchor_m = L[ok][0], m[ok][0]
            axes[1].plot(L, anchor_m * (L / anchor_l) ** 6, "--", color="black", lw=1,
                         label=r"$\propto L^6$: Theorem 3.1 at fixed ε (slope only)")
            axes[1].plot(L, anchor_m * (L / anchor_l) ** 1, ":", color="gray", lw=1.2,
                         label=r"$\propto L$: relative fluctuations $\sim\sqrt{L/m}$ (Hanin & Nica 2019)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("L = depth - 1 (hidden layers)")
        ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)  # outside the axes: no point hidden
    axes[0].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$ (seed mean)")
    axes[1].set_ylabel(f"width needed for relative error {eps:g}")
    axes[0].set_title("Relative error against depth, at the largest width")
    axes[1].set_title(f"Width needed for ε = {eps:g} against depth")
    ymin, ymax = axes[1].get_ylim()
    axes[1].set_ylim(ymin, min(ymax, 1e9))
    fig.text(0.5, -0.07,
             f"{common(rows, 'data')}, {common(rows, 'n_points')} inputs, ||x|| = 1.  Needed width: where the per-depth log-log "
             f"fit of the relative Frobenius error crosses ε (filled: ε within the seed-mean errors of the measured widths; hollow: extrapolated).  "
             f"Exponent: fit of log m_ε on log L, 95 % interval from {resamples} bootstrap resamples of the seeds.  "
             "Reference lines share the first point; only their slopes mean anything.",
             ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ntk_convergence_depth")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=ntk_convergence", "experiment.widths=[4,8,16]", "experiment.seeds=[0,1]", "data.n_train=3"]]
