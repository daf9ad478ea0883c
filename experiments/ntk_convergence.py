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
    """ntk_convergence.png (errors against width; one row of panels per family and readout) and,
    with three or more depths, ntk_convergence_depth.png (error and needed width against depth)."""
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    groups = by_group(rows)
    families = sorted({(r.get("family", "cnn"), r["readout"]) for r in rows})
    fig, grid = plt.subplots(len(families), 3, figsize=(18, 6.4 * len(families)), squeeze=False)
    summary = []
    cmap = plt.get_cmap("viridis")
    depths = sorted({r["depth"] for r in rows})
    many = len(depths) > 6
    ws = np.array(sorted({r["width"] for r in rows}), float)
    for fi, (fam, readout) in enumerate(families):
        axes = grid[fi]
        mine = [(key, sel) for key, sel in groups if key[0] == readout and sel[0].get("family", "cnn") == fam]
        for gi, ((_, depth), sel) in enumerate(mine):
            color = cmap(depths.index(depth) / max(1, len(depths) - 1)) if len(depths) > 2 else f"C{gi % 10}"
            marker = {"gap": "o", "flatten": "s", "none": "^"}.get(readout, "o")
            for ax, key in zip(axes, ("rel_fro_error", "rel_max_error", "max_abs_error")):
                fit = width_series(ax, sel, key, color, series_name(sel), band=not many)
                ax.lines[-1].set_marker(marker)
                summary.append({"setting": sel[0].get("setting", ""), "family": fam, "readout": readout, "depth": depth,
                                "metric": key, **fit, "points": len(sel), "widths": len({r["width"] for r in sel}),
                                "seeds": len({r["seed"] for r in sel}), "exact_max_entry": sel[0]["exact_max_entry"]})
        here = [r for _, sel in mine for r in sel]
        if len(ws) > 1:
            for ax, key in zip(axes[:2], ("rel_fro_error", "rel_max_error")):
                y0 = float(np.exp(np.mean([math.log(r[key]) for r in here if r["width"] == ws[0]] or [0.0])))
                ax.plot(ws, y0 * (ws / ws[0]) ** -0.5, ":", color="gray", lw=1.2, label=r"$\propto m^{-1/2}$ (CLT at init)")
                ax.plot(ws, y0 * (ws / ws[0]) ** -0.25, "--", color="black", lw=1,
                        label=r"$\propto m^{-1/4}$: Thm 3.1's slope (no constant given)")
        for di, depth in enumerate(sorted({r["depth"] for r in here})):
            sel = [r for r in here if r["depth"] == depth]
            bound = theorem_31_error(ws, depth - 1, sel[0]["delta"], sel[0]["bound_constant"])
            axes[2].plot(ws, bound, linestyle=["--", "-.", ":", (0, (5, 1, 1, 1))][di % 4], color="black", lw=1,
                         label=f"Thm 3.1 (L+1)ε at C = {sel[0]['bound_constant']:g}, depth {depth}")
        axes[0].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$")
        axes[1].set_ylabel(r"$\max|\Theta_m - \Theta| \,/\, \max|\Theta|$")
        axes[2].set_ylabel(r"$\max_{x,x'} |\Theta_m(x,x') - \Theta(x,x')|$ (absolute)")
        name = re.sub(r", depth \d+", "", row_name(here[0])) if here else fam
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width m (channels per conv layer, units per fc layer)")
            ax.legend(fontsize=6 if many else 6.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                      borderaxespad=0.0)  # below the axes: no point hidden
        axes[0].set_title(f"{name}: relative error (kernel's own scale)")
        axes[1].set_title(f"{name}: relative entrywise error")
        axes[2].set_title(f"{name}: absolute entrywise error, bound at C = 1")
    fig.text(
        0.5, -0.02 / len(families),
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


def depth_growth(by_depth: dict[int, list[dict]], width: int, key: str = "rel_fro_error") -> dict[str, float]:
    """At one measured width: the slope b of log(error) on log L over every seed's point (L = depth - 1)
    with its 95 % t interval, and the needed-width exponent 2b it implies when the asymptotic
    m^-1/2 law is imposed (m_eps = m (error / eps)^2: no extrapolation of a fitted width slope)."""
    pts = [(d - 1, r[key]) for d, rows in by_depth.items() for r in rows if r["width"] == width]
    fit = loglog_fit([p[0] for p in pts], [p[1] for p in pts])
    return {"width": width, "growth": fit["slope"], "growth_lo": fit["slope_lo"], "growth_hi": fit["slope_hi"],
            "imposed_exponent": 2 * fit["slope"], "imposed_exponent_lo": 2 * fit["slope_lo"],
            "imposed_exponent_hi": 2 * fit["slope_hi"], "points": len(pts)}


def _depth_figure(rows: list[dict], out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    import matplotlib.pyplot as plt

    eps, resamples = rows[0]["eps"], int(rows[0]["bootstrap"])
    series: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        series.setdefault((r.get("setting", ""), r.get("family", "cnn"), r["readout"]), {}).setdefault(r["depth"], []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    summary = []
    first_line = True
    for si, (key, by_depth) in enumerate(sorted(series.items(), key=lambda kv: tuple(map(str, kv[0])))):
        depths = sorted(by_depth)
        if len(depths) < 3:
            continue
        color = f"C{si % 10}"
        name = re.sub(r", depth \d+", "", row_name(by_depth[depths[0]][0])) + (f" [{key[0]}]" if key[0] else "")
        common_w = sorted(set.intersection(*({r["width"] for r in by_depth[d]} for d in depths)))
        L = np.array([d - 1 for d in depths], float)
        if common_w:  # (a) measured: the error against depth at the largest width every depth has
            w = common_w[-1]
            g = depth_growth(by_depth, w)
            err = np.array([np.mean([r["rel_fro_error"] for r in by_depth[d] if r["width"] == w]) for d in depths])
            for d in depths:
                pts = [r["rel_fro_error"] for r in by_depth[d] if r["width"] == w]
                axes[0].scatter([d - 1] * len(pts), pts, s=9, color=color, alpha=0.5)
            axes[0].plot(L, err, "-", color=color, lw=1,
                         label=f"{name}, m = {w}: error ∝ L^{g['growth']:.2f} [{g['growth_lo']:.2f}, {g['growth_hi']:.2f}]")
            sq = np.array([np.mean([r["rel_fro_error"] ** 2 for r in by_depth[d] if r["width"] == w]) for d in depths])
            m_imposed = w * sq / eps**2  # (b) the m^-1/2 law imposed: E[error^2] ∝ 1/m
            axes[1].plot(L, m_imposed, "-o", color=color, ms=4,
                         label=f"{name}: exponent {g['imposed_exponent']:.2f} [{g['imposed_exponent_lo']:.2f}, "
                               f"{g['imposed_exponent_hi']:.2f}]")
            summary.append({"setting": key[0], "family": key[1], "readout": key[2], "metric": "depth_growth",
                            "eps": eps, **g})
        need = [width_needed(by_depth[d], eps) for d in depths]  # (c) the crossing where measured, no extrapolation
        measured = [(li, mi) for li, (mi, extra) in zip(L, need) if not extra and np.isfinite(mi)]
        fit = depth_exponent({d: by_depth[d] for d, (mi, extra) in zip(depths, need) if not extra}, eps, resamples)
        if measured:
            lm, mm = np.array(measured).T
            label = (f"{name}: exponent {fit['exponent']:.2f} [{fit['exponent_lo']:.2f}, {fit['exponent_hi']:.2f}]"
                     if len(measured) >= 3 else f"{name}: {len(measured)} depth(s) measured, no exponent")
            axes[2].plot(lm, mm, "-o", color=color, ms=4, label=label)
        for d, (mi, extra) in zip(depths, need):
            summary.append({"setting": key[0], "family": key[1], "readout": key[2], "depth": d, "metric": "width_needed",
                            "eps": eps, "width_needed": mi if not extra else float("nan"), "extrapolated": extra,
                            **{k: (v if len(measured) >= 3 else float("nan")) for k, v in fit.items()}})
        if first_line and common_w:
            first_line = False
            anchor = m_imposed[0]
            axes[1].plot(L, anchor * (L / L[0]) ** 6, "--", color="black", lw=1,
                         label=r"$\propto L^6$: Thm 3.1's sufficient width (slope only; any slope below it is consistent)")
            axes[1].plot(L, anchor * (L / L[0]) ** 1, ":", color="gray", lw=1.2,
                         label=r"$\propto L$: relative fluctuations $\sim\sqrt{L/m}$ (Hanin & Nica 2019)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("L = depth - 1 (hidden layers)")
        ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)  # outside the axes
    axes[0].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$ (points: seeds)")
    axes[1].set_ylabel(f"width for ε = {eps:g}, m^-1/2 imposed")
    axes[2].set_ylabel(f"width where the fit crosses ε = {eps:g}")
    axes[0].set_title("Measured: error against depth at the largest common width")
    axes[1].set_title("Needed width with the CLT law m^-1/2 imposed")
    axes[2].set_title("Needed width where ε lies within the measured errors")
    fig.text(0.5, -0.1,
             f"{common(rows, 'data')}, {common(rows, 'n_points')} inputs, ||x|| = 1.  Left: per-seed errors and their mean at the "
             "largest width every depth has; growth exponent: log-log fit over every seed's point, 95 % t interval.  Middle: "
             "m_ε = m E[error^2] / ε^2, i.e. the asymptotic m^-1/2 law imposed, not fitted; its exponent is twice the growth "
             "exponent.  Right: the crossing of the per-depth width fit with ε only where ε lies within the seed-mean errors of "
             f"the measured widths (no extrapolation); an exponent only with 3 or more such depths ({resamples} bootstrap "
             "resamples of the seeds).  CNN receptive fields are 2L + 1 pixels wide: on small images deep layers see the "
             "whole image, which mixes spatial decorrelation with depth.",
             ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ntk_convergence_depth")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=ntk_convergence", "experiment.widths=[4,8,16]", "experiment.seeds=[0,1]", "data.n_train=3"]]
