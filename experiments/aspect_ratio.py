"""Aspect ratio: are the empirical NTK's fluctuations at initialisation set by L / m alone?

Hanin & Nica (2019) and Roberts, Yaida & Hanin (2022): for a deep ReLU net of L hidden layers of
width m, the relative variance of the empirical NTK at initialisation grows like exp(c L / m) - 1,
about c L / m when L / m is small: depth and width enter only through the aspect ratio L / m.  The
depth figure of ntk_convergence only extrapolated this; here the grid is built at fixed L / m.

Grid: family (fc; cnn with each of experiment.readouts) x depth (the paper's convention, L = depth - 1
hidden / conv layers) x ratio L / m (experiment.ratios, fractions such as 1/64) x seed; the width is
m = L / ratio, which must be a whole number >= 1 for every depth and ratio (else refused at start,
naming experiment.ratios).  A net above experiment.max_weights hidden weights is skipped and the skip
is a result row (kind "skipped", with its reason), shown in the figure and the summary.  The inputs:
data.n_train images (experiment.downsample: k x k mean pooling first, e.g. Fashion-MNIST 28 -> 14),
each scaled to ||x|| = 1; fc nets see them flattened.

Per (family, readout, L, m), in float64, with Theta the exact kernel (cntk) and Theta_s the empirical
NTK (finite_nets) of seed s = 1..S, all relative to ||Theta||_F:
  rel_fro_error  e_s = ||Theta_s - Theta|| / ||Theta||; its mean square over seeds, mse = mean_s e_s^2,
                 is "the relative variance" of the figure (it includes the squared bias, below);
  ens_rel_error  ||M - Theta|| / ||Theta||, M = mean_s Theta_s (the seed ensemble);
  fluct_var      S / (S - 1) mean_s ||Theta_s - M||^2 / ||Theta||^2: unbiased for the per-seed variance
                 V = E||Theta_s - E Theta_s||^2 / ||Theta||^2 (the O(1/m), i.e. O(1/sqrt m) in norm, part);
  bias_sq        ens_rel_error^2 - fluct_var / S: unbiased for B^2 = ||E Theta_s - Theta||^2 / ||Theta||^2
                 (the finite-seed correction: E ens_rel_error^2 = B^2 + V / S; it can come out < 0 when
                 B^2 is below the seed noise); mse = ens_rel_error^2 + (S - 1) / S fluct_var exactly.
Every net gets its own seed (net_seed, from seed, L and m), so that nets of one seed are not
correlated across the grid through shared first-layer draws.

Receptive field: L conv layers of q x q filters see (q - 1) L + 1 pixels per side (rf_side); a row is
rf_saturated when that reaches the image side (the centre pixel sees the whole image), recorded per
row and stated in the figure.  fc nets have no receptive field (rf_side = 0).

Summary (summary.csv): kind "point" (per family, L, ratio: mse with a 95 % bootstrap interval over
seeds, fluct_var, bias_sq); kind "collapse" (per family and ratio, across depths: spread = max / min of
mse over the depths, its bootstrap interval over seeds, a permutation p-value for "the depths'
per-seed errors are exchangeable", and the log-log slope of e_s^2 on L at that fixed ratio with its
95 % interval); kind "fit" (per family: the log-log slope of e_s^2 on L / m pooled over depths, and
the joint fit log e^2 = a + b log(L/m) + c log L, whose c is 0 under the collapse); kind
"width_slope" (per family and L: the slope of e_s^2 on m, the contrast: -1 expected).

What would falsify the collapse: at fixed L / m, mse changing with depth by more than the seed noise,
i.e. a permutation p-value < 0.05 with a spread interval above 1, and a depth slope (collapse rows)
or joint-fit c whose 95 % interval excludes 0.  The collapse is asymptotic (L, m -> infinity at
fixed L / m): an O(1) number of layers (the first layer, the readout) adds O(1/m) terms that do not
scale with L, so at small L the prediction is mse ~ c (L + a) / m, i.e. a depth slope below 0 that
fades as L grows; a negative c at small L is that correction, not a failure, and a positive one is
not explained by it.

Measured (default run: Fashion-MNIST downsampled to 14 x 14, 8 images, 8 seeds, L = 2, 4, 8, 16, L / m =
1/64, 1/16, 1/4; CNN L = 16 at m = 1024 skipped by max_weights; 229 s on 2 cores shared with other
work): the depth coefficient c of the joint fit is -0.01 [-0.23, 0.22] (fc), -0.09 [-0.43, 0.25]
(CNN-V), -0.35 [-0.79, 0.09] (CNN-GAP), every interval containing 0, while at fixed L the error falls
with m at slopes -0.6 to -1.7 (fc -0.91 to -1.23): what sets the variance is L / m, not L or m alone.
The slope in L / m is 1.09 [0.94, 1.25] (fc), 0.93 [0.71, 1.16] (CNN-V), 0.80 [0.51, 1.10] (CNN-GAP):
the linear small-L/m regime (mse about 2.5-5 L / m at L / m = 1/64).  These data exclude a depth
exponent at fixed L / m above 0.22 (fc) or 0.25 (CNNs): e.g. ntk_convergence's extrapolated needed
width ~ L^1.45 (fc) would mean mse ~ L^1.45 / m, c = 0.45, outside the fc interval; they do not resolve
depth differences below a factor of about 2-8 per ratio (max / min intervals; one of nine
permutation tests, fc at L / m = 1/4, p = 0.027, is below 0.05, none after a Holm correction).
CNN receptive fields saturate the 14-pixel images at L = 8 and 16 (17 and 33 pixels) and the
collapse holds across that line at the measured precision.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

import cntk
import finite_nets

from experiments.harness.common import common, loglog_fit, row_name, save_figure, style
from experiments.harness.config import Config as RunConfig, ConfigError, GridExperiment, check
from experiments.harness.data import Dataset

log = logging.getLogger("experiments")
FAMILIES = ("fc", "cnn")


def parse_ratio(text: str) -> Fraction:
    """'1/64', '0.25' or '2' as an exact fraction; ConfigError naming experiment.ratios otherwise."""
    try:
        value = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"experiment.ratios: {text!r} is not a number or fraction (write e.g. 1/64)") from None
    check(value > 0, "experiment.ratios", f"L / m must be > 0, got {text}")
    return value


def width_for(depth: int, ratio: Fraction) -> int:
    """m = L / ratio with L = depth - 1; ConfigError naming experiment.ratios unless a whole number >= 1."""
    L = depth - 1
    m = Fraction(L) / ratio
    check(m.denominator == 1 and m >= 1, "experiment.ratios",
          f"L / m = {ratio} at depth {depth} (L = {L}) gives width m = {float(m):g}: it must be a whole number >= 1 "
          "(choose ratios 1/k, or drop that depth)")
    return int(m)


def grid(depths: list[int], ratios: list[str]) -> dict[tuple[int, str], int]:
    """(depth, ratio text) -> width m = (depth - 1) / ratio, for every depth and ratio (refusing any
    that is not a whole number >= 1)."""
    return {(d, r): width_for(d, parse_ratio(r)) for d in depths for r in ratios}


@dataclass
class Config(GridExperiment):
    """Empirical NTK at init against the exact kernel over a depth x (L / m) grid, at fixed aspect ratio."""

    NAME: ClassVar[str] = "aspect_ratio"
    AXES: ClassVar[dict[str, str]] = {**GridExperiment.AXES, "experiment.ratios": "ratio",
                                      "experiment.families": "family"}
    REFUSED: ClassVar[dict[str, str]] = {
        "experiment.widths": "aspect_ratio sets every width from the depth: m = (depth - 1) / ratio: set "
                             "experiment.ratios (e.g. [1/64,1/16]) instead",
        "model.width": "aspect_ratio sets every width from the depth: m = (depth - 1) / ratio: set "
                       "experiment.ratios (e.g. [1/64,1/16]) instead",
        "data.n_test": "aspect_ratio measures the kernel on data.n_train images and has no test set: remove data.n_test",
    }
    name: str = "aspect_ratio"
    families: list[str] = field(default_factory=lambda: ["fc", "cnn"])  # cnn: one net per experiment.readouts
    ratios: list[str] = field(default_factory=lambda: ["1/64", "1/16", "1/4"])  # L / m
    depths: list[int] = field(default_factory=lambda: [3, 5, 9, 17])  # L = 2, 4, 8, 16
    seeds: list[int] = field(default_factory=lambda: list(range(8)))
    downsample: int = 1  # k x k mean pooling of the images before anything (1: as loaded)
    bootstrap: int = 1000  # resamples of the seeds (intervals) and permutations (the collapse test)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [f for f in self.families if f not in FAMILIES]
        check(len(self.families) > 0 and not bad, "experiment.families", f"unknown famil(ies) {bad}: use {list(FAMILIES)}")
        check(len(set(self.families)) == len(self.families), "experiment.families", f"repeats a value: {self.families}")
        check(len(self.ratios) > 0, "experiment.ratios", "needs at least one L / m")
        values = [parse_ratio(r) for r in self.ratios]
        check(len(set(values)) == len(values), "experiment.ratios", f"repeats a value: {self.ratios}")
        check(len(self.seeds) >= 2, "experiment.seeds", f"needs >= 2 seeds (the spread around the seed mean; 4 or more "
              f"for intervals), got {self.seeds}")
        check(self.downsample >= 1, "experiment.downsample", f"must be >= 1, got {self.downsample}")
        check(self.bootstrap >= 0, "experiment.bootstrap", f"must be >= 0, got {self.bootstrap}")
        grid(self.depths, self.ratios)  # every width a whole number >= 1, before any work


# ---------------------------------------------------------------------------------------------
# the measurement


def nets(cfg: RunConfig) -> list[tuple[str, int, cntk.Architecture]]:
    """(readout label, depth, architecture) for every family x readout x depth: fc once per depth
    (readout "none"), cnn once per experiment.readouts entry."""
    e, out = cfg.experiment, []
    for fam in e.families:
        for readout in (e.readouts[:1] if fam == "fc" else e.readouts):
            for depth in e.depths:
                arch = cfg.model.architecture(family=fam, readout=readout, depth=depth)
                out.append((arch.readout_label, depth, arch))
    return out


def ensemble_stats(emps: list[torch.Tensor], exact: torch.Tensor) -> dict:
    """Per-seed relative errors and the seed ensemble's bias / fluctuation split (module docstring)."""
    s = len(emps)
    norm = exact.norm()
    stack = torch.stack(emps)
    mean = stack.mean(0)
    rel = [(t - exact).norm() / norm for t in emps]
    dev = [(t - mean).norm() / norm for t in emps]
    ens = float((mean - exact).norm() / norm)
    fluct = float(sum(d**2 for d in dev)) / (s - 1)
    return {"rel_fro_error": [float(r) for r in rel], "dev_from_mean": [float(d) for d in dev],
            "ens_rel_error": ens, "fluct_var": fluct, "bias_sq": ens**2 - fluct / s,
            "mse": float(np.mean([float(r) ** 2 for r in rel])), "n_seeds": s}


def net_seed(seed: int, depth: int, width: int) -> int:
    """A seed of its own for every (seed, depth, width): nets are not correlated through shared draws."""
    return int(seed) * 1_000_003 + int(depth) * 10_007 + int(width)


def rf_side(arch: cntk.Architecture) -> int:
    """Pixels per side that one output pixel of the last conv layer sees ((q - 1) L + 1); 0 for fc."""
    return (arch.filter_size - 1) * (arch.depth - 1) + 1 if arch.takes_images else 0


def prepare_inputs(x: torch.Tensor, downsample: int) -> torch.Tensor:
    """k x k mean pooling (refused by name unless k divides the image sides), then ||x|| = 1 per image."""
    if downsample > 1:
        h, w = x.shape[-2:]
        if h % downsample or w % downsample:
            raise ConfigError(f"experiment.downsample: {downsample} does not divide the data's {h}x{w} images")
        x = torch.nn.functional.avg_pool2d(x, downsample)
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None]


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    if cfg.model.family != "cnn":  # the families come from experiment.families; the model's would be ignored
        raise ConfigError(f"model.family: aspect_ratio measures every family of experiment.families={e.families} in one "
                          f"run and takes none from the model: set experiment.families=[{cfg.model.family}] instead")
    if len(data.x_train) < 2:
        raise ConfigError(f"data.n_train: aspect_ratio needs at least 2 images (got {len(data.x_train)})")
    x = prepare_inputs(data.x_train, e.downsample).to(device=device, dtype=dtype)
    side = int(min(x.shape[-2:]))
    widths = grid(e.depths, e.ratios)
    archs = nets(cfg)
    for _, _, arch in archs:  # every net buildable before any work (width 1 is cheap)
        try:
            finite_nets.build(arch, 1, input_shape=tuple(arch.inputs(x[:1]).shape[1:]), dtype=dtype, device="cpu")
        except ValueError as err:
            raise ConfigError(f"model.family: the finite net of {arch.name} cannot be built: {str(err).splitlines()[0]}") from None
    const = {"n_points": len(x), "image_side": side, "downsample": e.downsample, "bootstrap": e.bootstrap,
             "max_weights": e.max_weights}
    rows: list[dict] = []
    with tqdm(total=len(archs) * len(e.ratios) * len(e.seeds), desc=e.name, disable=not cfg.progress) as bar:
        for readout, depth, arch in archs:
            xin = arch.inputs(x)
            shape = tuple(xin.shape[1:])
            t0 = time.perf_counter()
            exact = cntk.kernel(xin, None, arch, "ntk").to(torch.float64)
            t_exact = time.perf_counter() - t0
            rf = rf_side(arch)
            where = {"family": arch.family, "readout": readout, "depth": depth, "L": depth - 1, "net": arch.name,
                     "rf_side": rf, "rf_saturated": bool(rf and rf >= side), **const}
            for ratio in e.ratios:
                m = widths[depth, ratio]
                point = {**where, "ratio": str(ratio), "ratio_value": (depth - 1) / m, "width": m,
                         "hidden_weights": arch.hidden_weights(shape, m)}
                if e.max_weights and point["hidden_weights"] > e.max_weights:
                    reason = f"{point['hidden_weights']} hidden weights > experiment.max_weights={e.max_weights}"
                    log.info("skipped %s width %d: %s", arch.name, m, reason)
                    rows.append({**point, "kind": "skipped", "reason": reason})
                    bar.update(len(e.seeds))
                    continue
                emps, secs = [], []
                for seed in e.seeds:
                    t0 = time.perf_counter()
                    net = finite_nets.build(arch, m, seed=net_seed(seed, depth, m), input_shape=shape, dtype=dtype,
                                            device=device)
                    emps.append(finite_nets.empirical_ntk(net, xin).reshape(len(xin), len(xin)).to(torch.float64))
                    del net
                    secs.append(time.perf_counter() - t0)
                    bar.update()
                st = ensemble_stats(emps, exact)
                shared = {k: v for k, v in st.items() if k not in ("rel_fro_error", "dev_from_mean")}
                for i, seed in enumerate(e.seeds):
                    rows.append({**point, "kind": "seed", "seed": seed, "net_seed": net_seed(seed, depth, m),
                                 "rel_fro_error": st["rel_fro_error"][i], "rel_sq_error": st["rel_fro_error"][i] ** 2,
                                 "dev_from_mean": st["dev_from_mean"][i], **shared,
                                 "exact_fro_norm": float(exact.norm()), "seconds_empirical": secs[i],
                                 "seconds_exact": t_exact})
    return rows


# ---------------------------------------------------------------------------------------------
# statistics of the rows


def _family_name(row: dict) -> str:
    return re.sub(r", depth \d+", "", row_name(row))


def panels(rows: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped by (setting, family, readout), in a stable order: one panel each."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r.get("setting", "")), r["family"], r["readout"]), []).append(r)
    return sorted(groups.items())


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def bootstrap_mean(values, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the mean, resampling the values (seeds)."""
    v = np.asarray(values, float)
    if resamples < 10 or len(v) < 2:
        return float("nan"), float("nan")
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def spread_test(groups: list[np.ndarray], resamples: int, seed: int = 0) -> dict[str, float]:
    """Across depths at one ratio (``groups``: per depth, the seeds' e^2): spread = max / min of the
    means; its 95 % bootstrap interval (seeds resampled within each depth); and a permutation p-value
    for exchangeable seeds across depths (the collapse as the null: how often relabelled seeds give a
    spread at least as large)."""
    means = np.array([g.mean() for g in groups])
    spread = float(means.max() / means.min())
    nan = float("nan")
    if resamples < 10 or len(groups) < 2:
        return {"spread": spread, "spread_lo": nan, "spread_hi": nan, "perm_p": nan}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        mb = np.array([g[rng.integers(0, len(g), len(g))].mean() for g in groups])
        boot.append(mb.max() / mb.min())
    pooled = np.concatenate(groups)
    cuts = np.cumsum([len(g) for g in groups])[:-1]
    hits = 0
    for _ in range(resamples):
        parts = np.split(rng.permutation(pooled), cuts)
        mp = np.array([p.mean() for p in parts])
        hits += mp.max() / mp.min() >= spread
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"spread": spread, "spread_lo": float(lo), "spread_hi": float(hi), "perm_p": (1 + hits) / (1 + resamples)}


def joint_fit(ratio_values, depths_L, errors_sq) -> dict[str, float]:
    """OLS of log e^2 = a + b log(L/m) + c log L with 95 % t intervals; c = 0 under the collapse."""
    from scipy import stats

    y = np.log(np.asarray(errors_sq, float))
    X = np.column_stack([np.ones_like(y), np.log(np.asarray(ratio_values, float)), np.log(np.asarray(depths_L, float))])
    n = len(y)
    nan = {k: float("nan") for k in ("b", "b_lo", "b_hi", "c", "c_lo", "c_hi")}
    if n < 4 or np.linalg.matrix_rank(X) < 3:
        return nan
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    s2 = float(resid @ resid) / (n - 3)
    cov = s2 * np.linalg.inv(X.T @ X)
    t = stats.t.ppf(0.975, n - 3)
    out = {}
    for name, i in (("b", 1), ("c", 2)):
        half = t * math.sqrt(cov[i, i])
        out.update({name: float(coef[i]), f"{name}_lo": float(coef[i] - half), f"{name}_hi": float(coef[i] + half)})
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """The summary rows (module docstring): point, collapse, fit, width_slope, skipped."""
    out: list[dict] = []
    for (setting, fam, readout), sel in panels(rows):
        meas = [r for r in sel if r.get("kind") == "seed"]
        head = {"setting": setting, "family": fam, "readout": readout, "net": _family_name(sel[0])}
        resamples = int(sel[0].get("bootstrap", 1000))
        rng = np.random.default_rng(0)
        for r in sel:
            if r.get("kind") == "skipped":
                out.append({**head, "kind": "skipped", "L": r["L"], "ratio": r["ratio"], "width": r["width"],
                            "reason": r["reason"]})
        for (L, ratio), pts in sorted(_by(meas, "L", "ratio").items(), key=lambda kv: (kv[0][0], -pts_ratio(kv[1]))):
            e2 = [p["rel_sq_error"] for p in pts]
            lo, hi = bootstrap_mean(e2, resamples, rng)
            p0 = pts[0]
            out.append({**head, "kind": "point", "L": L, "ratio": ratio, "ratio_value": p0["ratio_value"],
                        "width": p0["width"], "seeds": len(pts), "mse": float(np.mean(e2)), "mse_lo": lo, "mse_hi": hi,
                        "mean_rel_error": float(np.mean([p["rel_fro_error"] for p in pts])),
                        "ens_rel_error": p0["ens_rel_error"], "fluct_var": p0["fluct_var"], "bias_sq": p0["bias_sq"],
                        "rf_side": p0["rf_side"], "image_side": p0["image_side"], "rf_saturated": p0["rf_saturated"]})
        for (ratio,), pts in sorted(_by(meas, "ratio").items(), key=lambda kv: pts_ratio(kv[1])):
            by_L = _by(pts, "L")
            Ls = sorted(k[0] for k in by_L)
            groups = [np.array([p["rel_sq_error"] for p in by_L[(L,)]]) for L in Ls]
            means = [g.mean() for g in groups]
            test = spread_test(groups, resamples) if len(Ls) >= 2 else {}
            fit = loglog_fit([p["L"] for p in pts], [p["rel_sq_error"] for p in pts])
            out.append({**head, "kind": "collapse", "ratio": ratio, "ratio_value": pts[0]["ratio_value"],
                        "depths_L": " ".join(map(str, Ls)), "n_depths": len(Ls),
                        "mse_by_L": "; ".join(f"L={L}: {mv:.3g}" for L, mv in zip(Ls, means)), **test,
                        "depth_slope": fit["slope"], "depth_slope_lo": fit["slope_lo"], "depth_slope_hi": fit["slope_hi"],
                        "saturated_L": " ".join(str(L) for L in Ls if by_L[(L,)][0]["rf_saturated"])})
        if meas:
            fit = loglog_fit([p["ratio_value"] for p in meas], [p["rel_sq_error"] for p in meas])
            jf = joint_fit([p["ratio_value"] for p in meas], [p["L"] for p in meas], [p["rel_sq_error"] for p in meas])
            out.append({**head, "kind": "fit", "points": len(meas), "slope": fit["slope"], "slope_lo": fit["slope_lo"],
                        "slope_hi": fit["slope_hi"], "intercept": fit["intercept"],
                        **{f"joint_{k}": v for k, v in jf.items()}})
        for (L,), pts in sorted(_by(meas, "L").items()):
            fit = loglog_fit([p["width"] for p in pts], [p["rel_sq_error"] for p in pts])
            out.append({**head, "kind": "width_slope", "L": L, "widths": " ".join(str(w) for w in sorted({p['width'] for p in pts})),
                        "slope": fit["slope"], "slope_lo": fit["slope_lo"], "slope_hi": fit["slope_hi"]})
    return out


def pts_ratio(pts: list[dict]) -> float:
    return float(pts[0]["ratio_value"])


# ---------------------------------------------------------------------------------------------
# figure


def plot(doc: dict, out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    """aspect_ratio.png: per family (columns) the relative variance against L / m (the collapse), against
    m (the contrast) and its split into fluctuation and bias, one colour and marker per depth."""
    style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = doc["rows"]
    summary = summarise(rows)
    groups = panels(rows)
    all_L = sorted({r["L"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colour = {L: cmap(i / max(1, len(all_L) - 1) * 0.9) for i, L in enumerate(all_L)}
    markers = dict(zip(all_L, "osD^v<>ph*"))
    ncol = max(1, len(groups))
    fig, axes = plt.subplots(3, ncol, figsize=(4.6 * ncol + 2.2, 12), squeeze=False)
    handles = {}
    for col, ((setting, fam, readout), sel) in enumerate(groups):
        meas = [r for r in sel if r.get("kind") == "seed"]
        name = _family_name(sel[0]) + (f" [{setting}]" if setting else "")
        fit = next((s for s in summary if s["kind"] == "fit" and (s["setting"], s["family"], s["readout"])
                    == (setting, fam, readout)), None)
        points = [s for s in summary if s["kind"] == "point" and (s["setting"], s["family"], s["readout"])
                  == (setting, fam, readout)]
        Ls = sorted({p["L"] for p in points})
        for k, L in enumerate(Ls):
            mine = sorted((p for p in points if p["L"] == L), key=lambda p: p["ratio_value"])
            jitter = 1.06 ** (k - (len(Ls) - 1) / 2)  # equal L / m side by side, not on top of each other
            x = np.array([p["ratio_value"] for p in mine]) * jitter
            y = np.array([p["mse"] for p in mine])
            err = np.array([[p["mse"] - p["mse_lo"], p["mse_hi"] - p["mse"]] for p in mine]).T
            seeds = [r for r in meas if r["L"] == L]
            sat = [p["rf_saturated"] for p in mine]
            face = [colour[L] if not s else "white" for s in sat]
            ax = axes[0, col]
            ax.scatter([r["ratio_value"] * jitter for r in seeds], [r["rel_sq_error"] for r in seeds], s=8,
                       color=colour[L], alpha=0.3, lw=0)
            ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor=colour[L], lw=1, capsize=2)
            ax.scatter(x, y, s=42, marker=markers[L], facecolors=face, edgecolors=colour[L], lw=1.3, zorder=3)
            ax.plot(x, y, "-", color=colour[L], lw=0.6, alpha=0.6)
            handles.setdefault(f"L = {L}", Line2D([], [], marker=markers[L], ls="-", lw=0.6, color=colour[L],
                                                  mfc=colour[L], mec=colour[L]))
            ax = axes[1, col]
            w = np.array([p["width"] for p in mine])
            ax.scatter([r["width"] for r in seeds], [r["rel_sq_error"] for r in seeds], s=8, color=colour[L], alpha=0.3, lw=0)
            ax.errorbar(w, y, yerr=np.nan_to_num(err), fmt="none", ecolor=colour[L], lw=1, capsize=2)
            ax.plot(w, y, "-", color=colour[L], lw=1)
            ax.scatter(w, y, s=42, marker=markers[L], facecolors=face, edgecolors=colour[L], lw=1.3, zorder=3)
            ax = axes[2, col]
            ax.scatter(x, [p["fluct_var"] for p in mine], s=42, marker=markers[L], color=colour[L], zorder=3)
            b = np.array([p["bias_sq"] for p in mine])
            ax.scatter(x[b > 0], b[b > 0], s=42, marker=markers[L], facecolors="white", edgecolors=colour[L], lw=1.3,
                       zorder=3)
        xs = np.array(sorted({p["ratio_value"] for p in points}), float)
        if fit and np.isfinite(fit["slope"]) and len(xs) > 1:
            axes[0, col].plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "--", color="black", lw=1)
            axes[0, col].plot(xs, np.exp(fit["intercept"]) * xs[0] ** (fit["slope"] - 1) * xs, ":", color="gray", lw=1.2)
        collapse = [s for s in summary if s["kind"] == "collapse" and (s["setting"], s["family"], s["readout"])
                    == (setting, fam, readout) and s["n_depths"] >= 2]
        lines = [f"{name}"]
        if fit:
            lines.append(f"slope in L/m {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]; "
                         f"log L at fixed L/m {fit['joint_c']:.2f} [{fit['joint_c_lo']:.2f}, {fit['joint_c_hi']:.2f}]")
        for s in collapse:
            lines.append(f"L/m = {s['ratio']}: max/min {s['spread']:.2f} [{s['spread_lo']:.2f}, {s['spread_hi']:.2f}], "
                         f"p = {s['perm_p']:.2g}")
        axes[0, col].set_title("\n".join(lines), fontsize=7.5)
        widths_slope = [s for s in summary if s["kind"] == "width_slope" and (s["setting"], s["family"], s["readout"])
                        == (setting, fam, readout) and np.isfinite(s["slope"])]
        parts = [f"L={s['L']}: {s['slope']:.2f} [{s['slope_lo']:.2f}, {s['slope_hi']:.2f}]" for s in widths_slope]
        axes[1, col].set_title(f"{name}: against width at fixed L (contrast), slopes\n"
                               + "\n".join("; ".join(parts[i:i + 2]) for i in range(0, len(parts), 2)), fontsize=7.5)
        skipped = [r for r in sel if r.get("kind") == "skipped"]
        axes[2, col].set_title(f"{name}: fluctuation (filled) and bias² (hollow)" + (
            "\nskipped (max_weights): " + ", ".join(f"L={r['L']} m={r['width']}" for r in skipped) if skipped else ""),
            fontsize=7.5)
        for row, xlabel in ((0, "L / m (aspect ratio)"), (1, "width m"), (2, "L / m (aspect ratio)")):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_yscale("log")
            axes[row, col].set_xlabel(xlabel)
    axes[0, 0].set_ylabel(r"relative variance: mean$_s$ $\|\Theta_m - \Theta\|^2 / \|\Theta\|^2$")
    axes[1, 0].set_ylabel(r"mean$_s$ $\|\Theta_m - \Theta\|^2 / \|\Theta\|^2$")
    axes[2, 0].set_ylabel(r"$\|\cdot\|^2/\|\Theta\|^2$: seed variance, bias$^2$")
    order = sorted(handles, key=lambda k: int(k.split("=")[1]))
    extra = [Line2D([], [], ls="--", color="black", lw=1), Line2D([], [], ls=":", color="gray", lw=1.2),
             Line2D([], [], marker="o", ls="", mfc="white", mec="gray")]
    fig.legend([handles[k] for k in order] + extra,
               order + ["log-log fit over all depths", r"$\propto L/m$ (Hanin & Nica, small L/m)",
                        "hollow (top rows): receptive field covers the image"],
               loc="center left", bbox_to_anchor=(1.0, 0.8), fontsize=8, title="hidden layers L")
    sat = sorted({(r["L"], r["rf_side"]) for r in rows if r.get("rf_side")})
    side = common(rows, "image_side")
    fig.text(0.5, -0.035,
             f"{common(rows, 'data')}, {common(rows, 'n_points')} inputs (downsample {common(rows, 'downsample')}, image side "
             f"{side}), ||x|| = 1, float64; points: seeds (light) and their mean with a 95 % bootstrap interval over seeds; "
             "equal L/m drawn side by side (x jittered by a few %).  Collapse: at equal L/m the depths coincide.  "
             "max/min: spread of the seed-mean relative variance across depths at that L/m, 95 % bootstrap interval; p: "
             "permutation test of exchangeable seeds across depths.  Receptive field side (q-1)L+1 of the CNNs: "
             + ", ".join(f"L={L}: {rf}" for L, rf in sat) + f" against image side {side} (saturated where >= side).  "
             "Bottom: seed variance S/(S-1) mean ||Θ_s - mean||² (filled) and bias² = ||mean - Θ||² - variance/S "
             "(hollow; not drawn where < 0).",
             ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "aspect_ratio")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=aspect_ratio", "data=digits", "data.n_train=3", "experiment.families=[fc,cnn]",
             "experiment.readouts=[gap]", "experiment.depths=[3,5]", "experiment.ratios=[1/2,1/4]",
             "experiment.seeds=[0,1,2]", "experiment.downsample=1", "experiment.bootstrap=50"]]
