"""Theorem 3.1: the empirical NTK at initialisation converges to the exact kernel as width grows.

For every readout, depth, width and seed: the relative Frobenius error
||Theta_m - Theta|| / ||Theta|| and the largest entrywise error |Theta_m - Theta| on n_points
training images scaled to unit norm (the theorem's assumption ||x|| <= 1).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cntk
import finite_nets

from .common import architecture, by_group, model_inputs, net_name, save_figure, style, theorem_31_error, width_series
from .config import Config
from .data import Dataset


def run(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    x = data.x_train[: e.n_points].to(device=device, dtype=dtype)
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None]
    rows = []
    grid = [(r, d) for r in e.readouts for d in e.depths]
    jobs = len(grid) * len(e.widths) * len(e.seeds)
    with tqdm(total=jobs, desc="ntk_convergence", disable=not cfg.progress) as bar:
        for readout, depth in grid:
            arch = architecture(cfg.model, readout=readout, depth=depth)
            xin = model_inputs(x, arch)
            t0 = time.perf_counter()
            exact = cntk.kernel(xin, None, arch, "ntk")
            t_exact = time.perf_counter() - t0
            for width in e.widths:
                for seed in e.seeds:
                    t0 = time.perf_counter()
                    net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xin.shape[1:]))
                    net = net.to(device=device, dtype=dtype)
                    emp = finite_nets.empirical_ntk(net, xin)
                    emp = emp.reshape(len(xin), len(xin))
                    rows.append({
                        "readout": readout, "depth": depth, "width": width, "seed": seed,
                        "n_points": len(xin),
                        "rel_fro_error": float((emp - exact).norm() / exact.norm()),
                        "max_abs_error": float((emp - exact).abs().max()),
                        "exact_max_entry": float(exact.abs().max()),
                        "seconds_empirical": time.perf_counter() - t0,
                        "seconds_exact": t_exact,
                    })
                    bar.update()
    return rows


def plot(doc: dict, out_dir: str | Path) -> tuple[list[Path], list[dict]]:
    """Log-log error vs width with seed spread, fitted slopes (95 % CI), and the theorem's bound."""
    style()
    import matplotlib.pyplot as plt

    rows, e = doc["rows"], doc["config"]["experiment"]
    groups = by_group(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    summary = []
    for gi, ((readout, depth), sel) in enumerate(groups):
        for ax, key in zip(axes, ("rel_fro_error", "max_abs_error")):
            fit = width_series(ax, sel, key, f"C{gi % 10}", net_name(readout, depth), band=True)
            summary.append({"readout": readout, "depth": depth, "metric": key, **fit,
                            "n_points": len(sel), "widths": len({r["width"] for r in sel})})
    for di, depth in enumerate(sorted({d for (_, d), _ in groups})):
        widths = sorted({r["width"] for r in rows if r["depth"] == depth})
        bound = theorem_31_error(np.array(widths), depth - 1, e["delta"], e["bound_constant"])
        axes[1].plot(widths, bound, ["--", "-.", ":"][di % 3], color="black", lw=1,
                     label=f"Thm 3.1 guarantee (L+1)ε, depth {depth}")
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
    n_pts = rows[0]["n_points"] if rows else 0
    fig.text(
        0.5, -0.06,
        f"{doc['config']['data']['name']}, {n_pts} inputs scaled to ||x|| = 1 (the theorem's assumption); "
        f"points = seeds, band = seed range. Bound: (L+1)(C L^6 log(L/δ)/m)^(1/4), C = {e['bound_constant']:g} "
        f"(not given by the theorem), δ = {e['delta']:g}; stated for fully-connected nets.",
        ha="center", fontsize=7, wrap=True,
    )
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ntk_convergence")
    plt.close(fig)
    return paths, summary
