"""Aspect ratio, trained: does L / m alone set how far a fully trained net is from kernel regression?

The trained half of experiments/aspect_ratio.py (same grid, same refusals: m = L / ratio for every
depth and ratio of experiment.ratios, families fc and cnn x experiment.readouts, a net per
(seed, depth, width) of its own, inputs k x k mean pooled by experiment.downsample and scaled to
||x|| = 1; see that module).  Hanin & Nica (2019) and Roberts, Yaida & Hanin (2022): the finite-width
corrections of a deep ReLU net are controlled by L / m -- the initial kernel's fluctuation
(Theta0 - Theta = O((L/m)^1/2) in norm) and its change during training (O(L/m)).  Here every net is
trained by gradient flow (finite_nets.train_flow, exponential integrator with error control) on
0.5 ||f(X) - Y||^2, centred (kappa = 1, f - f0 trained), until the loss is <= experiment.loss_tol
times its initial value, and the trained net's test predictions are split by its own linearisation
at init (experiments/harness/trained_split.py, shared with prediction_equivalence):

    f_net - f_KR = (f_net - lin(Theta0)) + (lin(Theta0) - f_KR),

f_KR kernel regression on the exact CNTK (no ridge), lin(Theta0) = Theta0(x, X) Theta0(X, X)^-1 Y the
net linearised at its init and trained to t = infinity.  Per (family, readout, L, ratio, seed), each
as RMS over the test points relative to RMS(f_KR):
  rel_lin_kr                     RMS(lin(Theta0) - f_KR): the initial kernel's fluctuation, expected ~ (L/m)^1/2;
  rel_net_lin                    RMS(f_net - lin(Theta0)): training's nonlinearity, expected ~ L/m;
  rel_diff_to_kernel_regression  RMS(f_net - f_KR) (Theorem 3.2's quantity; ~ (L/m)^1/2 where lin - KR dominates);
  drift                          ||Theta_T - Theta_0||_F / ||Theta_0||_F on the training points, expected ~ L/m;
  final_rel_loss, converged      the final loss / initial (converged: <= loss_tol); flow_error, flow_ok,
                                 rtol_used, flow_tries as in prediction_equivalence (a run whose integrator
                                 error estimate exceeds flow_error_bound x rel_net_lin is repeated once at
                                 rtol / 10; still above: flow_ok = False, left out of the net - lin fit).
Seed ensembles (one "ensemble" row per point; S seeds): the mean over seeds of f_lin and of f_net
against f_KR cancels the random O((L/m)^1/2) part and leaves the systematic one (O(L/m): lin(Theta0)
is nonlinear in Theta0, so E lin(Theta0) - f_KR is second order in the fluctuation):
  ens_lin_kr = RMS(mean_s f_lin,s - f_KR), ens_net_kr = RMS(mean_s f_net,s - f_KR),
  ens_net_lin = RMS(mean_s (f_net,s - f_lin,s)), all / RMS(f_KR);
with, for each, aspect_ratio.ensemble_stats' split: <q>_fluct_var (unbiased per-seed variance V around
the seed mean), <q>_bias_sq (unbiased B^2 = ens^2 - V / S) and <q>_noise = sqrt(V / S), the part of ens
that the S seeds leave; bias_resolved_<q>: B^2 > V / S (the systematic part is most of ens^2; else the
ensemble value is mostly seed noise, drawn hollow).

Summary (summary.csv): kind "point" (per family, L, ratio: the seed means with 95 % bootstrap intervals,
the ensemble values, converged nets); kind "fit" (per family and quantity: the log-log slope in L / m
pooled over depths with its 95 % interval, and the joint fit log q = a + b log(L/m) + c log L, whose
depth term c is 0 under the collapse, with the expected slope b); kind "collapse" (per family,
per-seed quantity and ratio with >= 2 depths: max / min of the seed means across depths, its bootstrap
interval, the permutation p-value of aspect_ratio.spread_test on the per-seed values, and that p
Holm-corrected within the family and quantity); kind "skipped" (max_weights; cnn_max_weights for the
CNNs, whose every weight is used at every pixel: an 8x8 image makes a CNN weight ~64x an fc one).

What would falsify the collapse: a joint-fit c whose 95 % interval excludes 0, or Holm-corrected
spread tests below 0.05 with spread intervals above 1.  As in aspect_ratio, an O(1) number of layers
adds L-independent O(1/m) terms, so a small negative c at small L is the expected finite-depth
correction; a positive one is not.

Measured (default run, 207 s here: digits, 30 train / 100 test, L = 2, 4, 8, L / m = 1/64, 1/16, 1/4,
4 seeds; CNN-V L = 4 at m = 256 and L = 8 at m = 128, 512 skipped by cnn_max_weights): CNN-V, all 24
nets converged: slope in L / m of lin - KR 0.48 [0.42, 0.55] (expected 0.5), depth term c -0.01
[-0.17, 0.15]; net - lin 0.57 [0.49, 0.65] (not the expected 1: ReLU, as in prediction_equivalence),
c 0.05 [-0.13, 0.24]; drift 0.96 [0.79, 1.12], c 0.24 [-0.14, 0.61].  fc: 21 of 36 nets converged
(none at L / m = 1/4 but one, none at L = 2, m = 32), and on those c = 0.35 [0.21, 0.48] (lin - KR),
0.37 [0.19, 0.55] (net - lin), -0.37 [-0.64, -0.10] (drift): at L / m = 1/64 lin - KR is 0.34, 0.47,
0.53 at L = 2, 4, 8 (Holm p 0.008).  The seed ensembles of 4 seeds sit at their noise floor
sqrt(V / S) (the systematic part resolved at 0 of 6 CNN-V points, 0-1 of 5 fc points): they do not
measure the O(L / m) bias here.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

import cntk
import finite_nets

from experiments import aspect_ratio as ar
from experiments.harness import stats
from experiments.harness.common import common, loglog_fit, save_figure, style
from experiments.harness.config import Config as RunConfig, ConfigError, check
from experiments.harness.data import Dataset
from experiments.harness.trained_split import FlowKeys, initial_ntk, linearised_limit, rms, train_checked

log = logging.getLogger("experiments")

# per-seed quantities: (column, expected slope in L / m, why, rows fitted)
SEED_QUANTITIES = (
    ("rel_lin_kr", 0.5, "Θ0 − Θ = O((L/m)^1/2)", "converged"),
    ("rel_net_lin", 1.0, "kernel change in training O(L/m)", "flow_ok"),
    ("rel_diff_to_kernel_regression", 0.5, "lin − KR dominates", "converged"),
    ("drift", 1.0, "kernel change in training O(L/m)", "converged"),
)
# seed-ensemble quantities: (name, expected slope where the systematic part is resolved, why)
ENSEMBLE_QUANTITIES = (
    ("lin_kr", 1.0, "E lin(Θ0) − KR: 2nd order in Θ0 − Θ"),
    ("net_lin", 1.0, "kernel change in training O(L/m)"),
    ("net_kr", 1.0, "sum of the two"),
)
LABELS = {
    "rel_lin_kr": "lin(Θ0) − KR, per seed", "rel_net_lin": "net − lin(Θ0), per seed",
    "rel_diff_to_kernel_regression": "net − KR, per seed", "drift": "kernel drift ‖Θ_T − Θ_0‖/‖Θ_0‖",
    "ens_lin_kr": "mean_s lin(Θ0) − KR (seed ensemble)", "ens_net_lin": "mean_s (net − lin(Θ0)) (seed ensemble)",
    "ens_net_kr": "mean_s net − KR (seed ensemble)", "final_rel_loss": "final loss / initial",
}


@dataclass
class Config(FlowKeys, ar.Config):
    """Nets trained to loss_tol by gradient flow against kernel regression over aspect_ratio's
    depth x (L / m) grid (centred, kappa = 1)."""

    NAME: ClassVar[str] = "aspect_ratio_trained"
    REFUSED: ClassVar[dict[str, str]] = {k: v.replace("aspect_ratio sets", "aspect_ratio_trained sets")
                                         for k, v in ar.Config.REFUSED.items() if k != "data.n_test"}
    name: str = "aspect_ratio_trained"
    depths: list[int] = field(default_factory=lambda: [3, 5, 9])  # L = 2, 4, 8
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    cnn_max_weights: int = 0  # the CNNs' cap on hidden weights (0: max_weights applies to them too)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_flow()
        check(self.cnn_max_weights >= 0, "experiment.cnn_max_weights",
              f"must be >= 0 (0: experiment.max_weights applies), got {self.cnn_max_weights}")


def cap(cfg_e, arch: cntk.Architecture) -> int:
    """The hidden-weight cap of ``arch`` (0: none): cnn_max_weights for CNNs when set, else max_weights."""
    return cfg_e.cnn_max_weights if arch.takes_images and cfg_e.cnn_max_weights else cfg_e.max_weights


# ---------------------------------------------------------------------------------------------
# the measurement


def ensemble(f_kr: torch.Tensor, f_lin: list[torch.Tensor], f_net: list[torch.Tensor]) -> dict:
    """The seed-ensemble columns (module docstring) from the seeds' test predictions.  Every
    quantity goes through aspect_ratio.ensemble_stats against f_KR (norms relative to ||f_KR|| are
    RMS relative to RMS(f_KR)); net - lin(Theta0) enters as f_KR + (f_net,s - f_lin,s), so that its
    'error' against f_KR is f_net,s - f_lin,s itself."""
    out = {}
    for name, emps in (("lin_kr", f_lin), ("net_kr", f_net),
                       ("net_lin", [f_kr + (a - b) for a, b in zip(f_net, f_lin)])):
        st = ar.ensemble_stats(emps, f_kr)
        s = st["n_seeds"]
        out.update({f"ens_{name}": st["ens_rel_error"], f"{name}_fluct_var": st["fluct_var"],
                    f"{name}_bias_sq": st["bias_sq"], f"{name}_noise": math.sqrt(max(st["fluct_var"], 0.0) / s),
                    f"bias_resolved_{name}": bool(st["bias_sq"] > st["fluct_var"] / s)})
    return out


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    if cfg.model.family != "cnn":  # the families come from experiment.families; the model's would be ignored
        raise ConfigError(f"model.family: {e.name} trains every family of experiment.families={e.families} in one "
                          f"run and takes none from the model: set experiment.families=[{cfg.model.family}] instead")
    if len(data.x_train) < 2:
        raise ConfigError(f"data.n_train: {e.name} needs at least 2 training images (got {len(data.x_train)})")
    if len(data.x_test) == 0:
        raise ConfigError(f"data.n_test: {e.name} compares predictions on test points and needs test images (got 0)")
    xtr0 = ar.prepare_inputs(data.x_train, e.downsample).to(device=device, dtype=dtype)
    xte0 = ar.prepare_inputs(data.x_test, e.downsample).to(device=device, dtype=dtype)
    y = torch.where(data.y_train < data.num_classes // 2, 1.0, -1.0).to(torch.float64)
    side = int(min(xtr0.shape[-2:]))
    widths = ar.grid(e.depths, e.ratios)
    archs = ar.nets(cfg)
    for _, _, arch in archs:  # every net buildable before any work (width 1 is cheap)
        try:
            finite_nets.build(arch, 1, input_shape=tuple(arch.inputs(xtr0[:1]).shape[1:]), dtype=dtype, device="cpu")
        except ValueError as err:
            raise ConfigError(f"model.family: the finite net of {arch.name} cannot be built: {str(err).splitlines()[0]}") from None
    const = {"n_train": len(xtr0), "n_test": len(xte0), "image_side": side, "downsample": e.downsample,
             "bootstrap": e.bootstrap, "max_weights": e.max_weights, "cnn_max_weights": e.cnn_max_weights,
             "loss_tol": e.loss_tol, "rtol": e.rtol, "flow_error_bound": e.flow_error_bound, "max_steps": e.max_steps,
             "route": "centred", "kappa": 1.0, "activation": cfg.model.activation}
    rows: list[dict] = []
    with tqdm(total=len(archs) * len(e.ratios) * len(e.seeds), desc=e.name, disable=not cfg.progress) as bar:
        for readout, depth, arch in archs:
            xtr, xte = arch.inputs(xtr0), arch.inputs(xte0)
            shape = tuple(xtr.shape[1:])
            t0 = time.perf_counter()
            k = cntk.kernel(xtr, None, arch, "ntk").double().cpu()
            kt = cntk.kernel(xte, xtr, arch, "ntk").double().cpu()
            f_kr = linearised_limit(k, kt, y)
            t_exact = time.perf_counter() - t0
            kr_rms = max(rms(f_kr), 1e-300)
            ev = torch.linalg.eigvalsh(k)
            rf = ar.rf_side(arch)
            where = {"family": arch.family, "readout": readout, "depth": depth, "L": depth - 1, "net": arch.name,
                     "rf_side": rf, "rf_saturated": bool(rf and rf >= side), "kernel_condition": float(ev[-1] / ev[0]),
                     **const}
            for ratio in e.ratios:
                m = widths[depth, ratio]
                point = {**where, "ratio": str(ratio), "ratio_value": (depth - 1) / m, "width": m,
                         "hidden_weights": arch.hidden_weights(shape, m)}
                limit = cap(e, arch)
                if limit and point["hidden_weights"] > limit:
                    key = "cnn_max_weights" if limit == e.cnn_max_weights and arch.takes_images else "max_weights"
                    reason = f"{point['hidden_weights']} hidden weights > experiment.{key}={limit}"
                    log.info("skipped %s width %d: %s", arch.name, m, reason)
                    rows.append({**point, "kind": "skipped", "reason": reason})
                    bar.update(len(e.seeds))
                    continue
                f_lins, f_nets, mine = [], [], []
                for seed in e.seeds:
                    t0 = time.perf_counter()
                    ns = ar.net_seed(seed, depth, m)
                    net = finite_nets.build(arch, m, seed=ns, input_shape=shape, dtype=dtype, device=device)
                    th_tr, th_te = initial_ntk(net, xtr, xte)  # before training (train_flow trains a copy)
                    tr = train_checked(net, xtr, y, xte, th_tr, th_te, kr_rms, loss_tol=e.loss_tol, rtol=e.rtol,
                                       max_steps=e.max_steps, centred=True, bound=e.flow_error_bound)
                    res, f_net = tr.res, tr.f_net[-1]
                    f_lins.append(tr.f_lin0)
                    f_nets.append(f_net)
                    mine.append({**point, "kind": "seed", "seed": seed, "net_seed": ns,
                                 "rel_diff_to_kernel_regression": rms(f_net - f_kr) / kr_rms,
                                 "rel_lin_kr": rms(tr.f_lin0 - f_kr) / kr_rms, "rel_net_lin": tr.net_lin,
                                 "drift": res.drift[-1], "final_rel_loss": res.relative_loss, "converged": res.converged,
                                 "flow_error": tr.err, "flow_error_rel": tr.err_rel,
                                 "flow_ok": tr.err_rel <= e.flow_error_bound, "rtol_used": tr.rtol,
                                 "flow_tries": tr.tries, "flow_steps": len(res.times) - 1,
                                 "rejected_steps": res.rejected, "lambda_max": res.lambda_max,
                                 "seconds": time.perf_counter() - t0, "seconds_exact": t_exact})
                    del net
                    bar.update()
                ens = ensemble(f_kr, f_lins, f_nets)
                rows += mine
                rows.append({**point, "kind": "ensemble", "seeds": len(e.seeds), **ens,
                             "converged_nets": sum(r["converged"] for r in mine)})
    return rows


# ---------------------------------------------------------------------------------------------
# statistics of the rows


def _fitted(rows: list[dict], which: str) -> list[dict]:
    """The seed rows a fit uses: converged nets (the t = infinity quantities need the flow's end), and
    for net - lin(Theta0) also flow_ok (its integrator error below flow_error_bound of it)."""
    return [r for r in rows if r["converged"] and (which == "converged" or r.get("flow_ok", True))]


def summarise(rows: list[dict]) -> list[dict]:
    """The summary rows (module docstring): point, fit, collapse, skipped."""
    out: list[dict] = []
    for (setting, fam, readout), sel in ar.panels(rows):
        seeds = [r for r in sel if r.get("kind") == "seed"]
        ens = [r for r in sel if r.get("kind") == "ensemble"]
        head = {"setting": setting, "family": fam, "readout": readout, "net": ar._family_name(sel[0])}
        resamples = int(sel[0].get("bootstrap", 1000))
        rng = np.random.default_rng(0)
        for r in sel:
            if r.get("kind") == "skipped":
                out.append({**head, "kind": "skipped", "L": r["L"], "ratio": r["ratio"], "width": r["width"],
                            "reason": r["reason"]})
        by_point = ar._by(seeds, "L", "ratio")
        for r in sorted(ens, key=lambda r: (r["L"], r["ratio_value"])):
            pts = by_point.get((r["L"], r["ratio"]), [])
            cols = {}
            for key, *_ in SEED_QUANTITIES:  # the seed means over converged nets (as the fits)
                v = [p[key] for p in pts if p["converged"]]
                lo, hi = ar.bootstrap_mean(v, resamples, rng)
                cols.update({key: float(np.mean(v)) if v else float("nan"), f"{key}_lo": lo, f"{key}_hi": hi})
            out.append({**head, "kind": "point", "L": r["L"], "ratio": r["ratio"], "ratio_value": r["ratio_value"],
                        "width": r["width"], "seeds": len(pts), **cols,
                        **{k: r[k] for k in r if k.startswith(("ens_", "bias_resolved_")) or k.endswith(("_bias_sq", "_noise"))},
                        "converged_nets": r["converged_nets"], "max_final_rel_loss": max(p["final_rel_loss"] for p in pts),
                        "flow_ok_nets": sum(bool(p["flow_ok"]) for p in pts), "rf_side": r["rf_side"],
                        "image_side": r["image_side"], "rf_saturated": r["rf_saturated"]})
        fits = [(key, expected, why, _fitted(seeds, which)) for key, expected, why, which in SEED_QUANTITIES]
        whole = [r for r in ens if r["converged_nets"] == r["seeds"]]  # every seed of the point converged
        fits += [(f"ens_{name}", expected, why, whole) for name, expected, why in ENSEMBLE_QUANTITIES]
        for key, expected, why, pts in fits:
            pts = [p for p in pts if p[key] > 0]
            fit = loglog_fit([p["ratio_value"] for p in pts], [p[key] for p in pts])
            jf = ar.joint_fit([p["ratio_value"] for p in pts], [p["L"] for p in pts], [p[key] for p in pts])
            extra = {}
            if key.startswith("ens_"):
                extra["bias_resolved_points"] = sum(bool(p[f"bias_resolved_{key[4:]}"]) for p in pts)
            out.append({**head, "kind": "fit", "quantity": key, "points": len(pts),
                        "left_out": (len(seeds) if key.startswith("rel_") or key == "drift" else len(ens)) - len(pts),
                        "slope": fit["slope"],
                        "slope_lo": fit["slope_lo"], "slope_hi": fit["slope_hi"], "intercept": fit["intercept"],
                        **{f"joint_{k}": v for k, v in jf.items()}, "expected_slope": expected, "expected_because": why,
                        "depths_L": " ".join(str(L) for L in sorted({p["L"] for p in pts})), **extra})
        for key, _, _, which in SEED_QUANTITIES:
            tests = []
            for (ratio,), pts in sorted(ar._by(_fitted(seeds, which), "ratio").items(), key=lambda kv: ar.pts_ratio(kv[1])):
                by_L = ar._by(pts, "L")
                Ls = sorted(k[0] for k in by_L)
                if len(Ls) < 2:
                    continue
                groups = [np.array([p[key] for p in by_L[(L,)]]) for L in Ls]
                tests.append({**head, "kind": "collapse", "quantity": key, "ratio": ratio,
                              "ratio_value": pts[0]["ratio_value"], "depths_L": " ".join(map(str, Ls)),
                              "mean_by_L": "; ".join(f"L={L}: {g.mean():.3g}" for L, g in zip(Ls, groups)),
                              **ar.spread_test(groups, resamples),
                              "saturated_L": " ".join(str(L) for L in Ls if by_L[(L,)][0]["rf_saturated"])})
            ps = [t["perm_p"] for t in tests]
            if tests and all(np.isfinite(ps)):
                for t, h in zip(tests, stats.holm(ps)):
                    t["holm_p"] = float(h)
            out += tests
    return out


# ---------------------------------------------------------------------------------------------
# figure

PANELS = (("rel_lin_kr", "ens_lin_kr"), ("rel_net_lin", "ens_net_lin"),
          ("rel_diff_to_kernel_regression", "ens_net_kr"), ("drift", "final_rel_loss"))


def plot(doc: dict, out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    """aspect_ratio_trained.png: for every family two columns (per seed | seed ensemble) and four rows
    (lin − KR, net − lin, net − KR; drift and final loss), against L / m, one colour per depth."""
    style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = doc["rows"]
    summary = summarise(rows)
    groups = ar.panels(rows)
    all_L = sorted({r["L"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colour = {L: cmap(i / max(1, len(all_L) - 1) * 0.9) for i, L in enumerate(all_L)}
    markers = dict(zip(all_L, "osD^v<>ph*"))
    ncol = 2 * max(1, len(groups))
    fig, axes = plt.subplots(len(PANELS), ncol, figsize=(4.3 * ncol + 2.4, 3.9 * len(PANELS)), squeeze=False)
    handles = {}
    for g, ((setting, fam, readout), sel) in enumerate(groups):
        name = ar._family_name(sel[0]) + (f" [{setting}]" if setting else "")
        same = lambda s: (s["setting"], s["family"], s["readout"]) == (setting, fam, readout)  # noqa: E731
        fits = {s["quantity"]: s for s in summary if s["kind"] == "fit" and same(s)}
        seeds = [r for r in sel if r.get("kind") == "seed"]
        ens = [r for r in sel if r.get("kind") == "ensemble"]
        Ls = sorted({r["L"] for r in seeds})
        for row, pair in enumerate(PANELS):
            for half, key in enumerate(pair):
                ax = axes[row, 2 * g + half]
                for j, L in enumerate(Ls):
                    jitter = 1.06 ** (j - (len(Ls) - 1) / 2)  # equal L / m side by side
                    c, mk = colour[L], markers[L]
                    if key.startswith("ens_"):
                        mine = sorted((r for r in ens if r["L"] == L), key=lambda r: r["ratio_value"])
                        x = np.array([r["ratio_value"] for r in mine]) * jitter
                        yv = np.array([r[key] for r in mine])
                        ok = np.array([r[f"bias_resolved_{key[4:]}"] for r in mine], bool)
                        ax.scatter(x, yv, s=42, marker=mk, facecolors=[c if o else "white" for o in ok], edgecolors=c,
                                   lw=1.3, zorder=3)
                        ax.plot(x, yv, "-", color=c, lw=0.6, alpha=0.6)
                        ax.plot(x, [r[f"{key[4:]}_noise"] for r in mine], "_", color=c, ms=9, mew=1.2, alpha=0.8)
                    else:
                        mine = [r for r in seeds if r["L"] == L]
                        ax.scatter([r["ratio_value"] * jitter for r in mine], [max(r[key], 1e-300) for r in mine],
                                   s=9, color=c, alpha=0.35, lw=0)
                        by = ar._by([r for r in mine if r["converged"]] if key != "final_rel_loss" else mine, "ratio")
                        pts = sorted(by.values(), key=ar.pts_ratio)  # the means: over converged nets
                        x = np.array([p[0]["ratio_value"] for p in pts]) * jitter
                        yv = np.array([np.mean([r[key] for r in p]) for p in pts])
                        sat = [p[0]["rf_saturated"] for p in pts]
                        ax.scatter(x, yv, s=42, marker=mk, facecolors=[c if not s else "white" for s in sat],
                                   edgecolors=c, lw=1.3, zorder=3)
                        ax.plot(x, yv, "-", color=c, lw=0.6, alpha=0.6)
                        bad = [r for r in mine if not r["converged"]]  # every per-seed panel: red x
                        ax.scatter([r["ratio_value"] * jitter for r in bad], [r[key] for r in bad], s=60,
                                       marker="x", color="red", zorder=4)
                    handles.setdefault(L, Line2D([], [], marker=mk, ls="-", lw=0.6, color=c, mfc=c, mec=c))
                fit = fits.get(key)
                title = f"{name}: {LABELS[key]}"
                if fit and np.isfinite(fit["slope"]):
                    xs = np.array(sorted({r["ratio_value"] for r in seeds}), float)
                    ax.plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "--", color="black", lw=1)
                    title += (f"\nslope in L/m {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}] "
                              f"(expected {fit['expected_slope']:g})")
                    if np.isfinite(fit.get("joint_c", float("nan"))):
                        title += f"\ndepth term c {fit['joint_c']:.2f} [{fit['joint_c_lo']:.2f}, {fit['joint_c_hi']:.2f}]"
                    if key.startswith("ens_"):
                        title += f"; bias resolved at {fit['bias_resolved_points']}/{fit['points']}"
                elif key == "final_rel_loss":
                    title += f"\nconverged {sum(r['converged'] for r in seeds)}/{len(seeds)} (red x: not)"
                ax.set_title(title, fontsize=7.5)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("L / m (aspect ratio)")
        skipped = [r for r in sel if r.get("kind") == "skipped"]
        if skipped:
            axes[-1, 2 * g].text(0.02, 0.02, "skipped (weight cap): " + ", ".join(f"L={r['L']} m={r['width']}"
                                                                                  for r in skipped),
                                 transform=axes[-1, 2 * g].transAxes, fontsize=6.5, va="bottom")
    for row, pair in enumerate(PANELS):
        axes[row, 0].set_ylabel("RMS / RMS(f_KR), test" if row < 3 else "‖Θ_T − Θ_0‖ / ‖Θ_0‖")
    order = sorted(handles)
    extra = [Line2D([], [], ls="--", color="black", lw=1), Line2D([], [], marker="o", ls="", mfc="white", mec="gray"),
             Line2D([], [], marker="_", ls="", color="gray", ms=9)]
    fig.legend([handles[L] for L in order] + extra,
               [f"L = {L}" for L in order] + ["log-log fit over all depths",
                                              "hollow: per seed, receptive field covers the image;\n"
                                              "ensemble, systematic part not resolved (B² ≤ V/S)",
                                              "ensemble: seed-noise part sqrt(V/S)"],
               loc="center left", bbox_to_anchor=(1.0, 0.85), fontsize=8, title="hidden layers L")
    sat = sorted({(r["L"], r["rf_side"]) for r in rows if r.get("rf_side")})
    side = common(rows, "image_side")
    seeds = [r for r in rows if r.get("kind") == "seed"]
    fig.text(0.5, -0.04,
             f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test images "
             f"(downsample {common(rows, 'downsample')}, side {side}), ||x|| = 1, targets ±1, float64; centred (κ = 1) "
             f"nets trained by gradient flow until loss ≤ {common(rows, 'loss_tol', 'g')} x initial: "
             f"{sum(r['converged'] for r in seeds)} of {len(seeds)} nets; largest final loss / initial "
             f"{max((r['final_rel_loss'] for r in seeds), default=float('nan')):.2g}.  Per seed: seeds (light) and their mean; "
             "means and fits over converged nets (red x: not converged); ensemble: RMS of the seed-mean prediction's "
             "difference, / RMS(f_KR), fitted where every seed converged.  Depth term c: log q = a + b log(L/m) "
             "+ c log L, 95 % interval (c = 0: L/m alone).  Receptive field side (q-1)L+1 of the CNNs: "
             + (", ".join(f"L={L}: {rf}" for L, rf in sat) or "none") + f" against image side {side}.",
             ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "aspect_ratio_trained")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=aspect_ratio_trained", "data=digits", "data.n_train=6", "data.n_test=5",
             "experiment.families=[fc,cnn]", "experiment.readouts=[gap]", "experiment.depths=[3,5]",
             "experiment.ratios=[1/2,1/4]", "experiment.seeds=[0,1]", "experiment.downsample=1",
             "experiment.bootstrap=50", "experiment.max_steps=60"]]
