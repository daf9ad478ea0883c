"""Kernel regression with the empirical (finite-width, Monte Carlo) NTK of one random net vs the
exact kernel: test accuracy and kernel error vs width (the paper's point that the Monte Carlo
approximation costs accuracy).  The exact kernel's accuracy gets a Wilson 95 % interval, the seeds' a
two-level bootstrap (seeds and test images resampled);
each net is compared with the exact kernel on the same test images (exact McNemar test per seed,
and a paired two-level bootstrap interval of the accuracy difference of the seed mean; Holm over
the run's per-seed tests)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
import finite_nets

from experiments.harness import stats, sweep
from experiments.harness.common import (
    by_group,
    common,
    save_figure,
    series_name,
    style,
    width_series,
)
from experiments.harness.config import Config as RunConfig, GridExperiment, check
from experiments.harness.data import Dataset


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "monte_carlo_vs_exact"
    name: str = "monte_carlo_vs_exact"
    ridge: float = 0.0  # kernel regression ridge, relative to the mean diagonal

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ridge >= 0, "experiment.ridge", f"must be >= 0, got {self.ridge}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from experiments.harness.config import ConfigError

    e = cfg.experiment
    if len(data.x_test) == 0:  # before any work: the figure is test accuracy
        raise ConfigError("data.n_test: monte_carlo_vs_exact measures kernel regression's test accuracy and needs "
                          f"test images (got {len(data.x_test)})")
    sweep.refuse_unbuildable(cfg, data, dtype)
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = len(data.x_train)
    sizes = {"n_train": n, "n_test": len(data.x_test), "ridge": e.ridge}

    def correct(k):
        pred = cntk.kernel_regression(k[:n, :n], y, ridge=e.ridge).predict(k[n:, :n]).cpu()
        return (pred.argmax(1) == data.y_test).numpy()

    def prepare(arch):
        x = arch.inputs(torch.cat([data.x_train, data.x_test])).to(device=device, dtype=dtype)
        t0 = time.perf_counter()
        exact = cntk.kernel(x, None, arch, progress=cfg.progress).double()
        c = correct(exact)
        return (x, exact, c), [{"method": "exact", "width": 0, "seed": -1, **sizes, "accuracy": float(c.mean()),
                                "correct": stats.encode(c), "seconds": time.perf_counter() - t0}]

    def measure(ctx, arch, width, seed):
        x, exact, exact_c = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(x.shape[1:]), dtype=dtype, device=device)
        emp = finite_nets.empirical_ntk(net, x).double()
        c = correct(emp)
        return {"method": "empirical", **sizes, "accuracy": float(c.mean()), "correct": stats.encode(c),
                "accuracy_exact": float(exact_c.mean()), "kernel_rel_error": float((emp - exact).norm() / exact.norm()),
                "seconds": time.perf_counter() - t0}

    return sweep.run(cfg, prepare, measure, input_shape=tuple(data.x_train.shape[1:]), prepare_steps=1)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (setting, readout, depth, width): the seed-mean accuracy of empirical-kernel regression with
    its bootstrap interval, the paired difference to the exact kernel and McNemar p per seed."""
    out = []
    for (readout, depth), sel in by_group(rows):
        exact = next((r for r in sel if r["method"] == "exact"), None)
        ec = stats.decode(exact["correct"]) if exact else None
        if exact:
            acc, lo, hi = stats.wilson_accuracy(ec)
            out.append({"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "width": 0,
                        "method": "exact", "accuracy": acc, "acc_lo": lo, "acc_hi": hi})
        emp = [r for r in sel if r["method"] == "empirical"]
        for w in sorted({r["width"] for r in emp}):
            at = sorted((r for r in emp if r["width"] == w), key=lambda r: r["seed"])
            c = np.stack([stats.decode(r["correct"]) for r in at])
            acc, lo, hi = stats.bootstrap_two_level(c)
            row = {"setting": sel[0].get("setting", ""), "readout": readout, "depth": depth, "width": w,
                   "method": "empirical", "seeds": len(at), "accuracy": acc, "acc_lo": lo, "acc_hi": hi,
                   "kernel_rel_error_mean": float(np.mean([r["kernel_rel_error"] for r in at]))}
            if ec is not None:
                d, dlo, dhi = stats.bootstrap_two_level_difference(c, ec)
                row.update(diff_to_exact=d, diff_lo=dlo, diff_hi=dhi,
                           mcnemar_raw=[stats.mcnemar(ci, ec)["p"] for ci in c])
            out.append(row)
    _holm_per_setting(out)
    return out


def _holm_per_setting(out: list[dict]) -> None:
    """Holm over every per-seed McNemar test (empirical vs exact) of one setting: raw and adjusted p
    as 'p1 / p2 / ...' strings."""
    tests = [(i, k) for i, r in enumerate(out) for k in range(len(r.get("mcnemar_raw", [])))]
    if not tests:
        return
    adjusted = stats.holm_by_family([out[i]["mcnemar_raw"][k] for i, k in tests], [out[i]["setting"] for i, k in tests])
    for (i, k), a in zip(tests, adjusted):
        out[i].setdefault("holm", []).append(a)
    for r in out:
        if "mcnemar_raw" in r:
            r["mcnemar_p"] = " / ".join(f"{p:.2g}" for p in r.pop("mcnemar_raw"))
            r["holm_p"] = " / ".join(f"{p:.2g}" for p in r.pop("holm"))


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    summary = summarize(rows)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for gi, ((readout, depth), sel) in enumerate(by_group(rows)):
        color, name = f"C{gi % 10}", series_name(sel)
        key = (sel[0].get("setting", ""), readout, depth)
        mine = [s for s in summary if (s["setting"], s["readout"], s["depth"]) == key]
        exact = next((s for s in mine if s["method"] == "exact"), None)
        emp = [s for s in mine if s["method"] == "empirical"]
        if emp:
            w = [s["width"] for s in emp]
            acc = np.array([100 * s["accuracy"] for s in emp])
            err = np.array([[100 * (s["accuracy"] - s["acc_lo"]), 100 * (s["acc_hi"] - s["accuracy"])] for s in emp]).T
            axes[0].errorbar(w, acc, yerr=err, fmt="-o", ms=4, capsize=3, color=color, label=f"empirical NTK, {name}")
            for r in sel:
                if r["method"] == "empirical":
                    axes[0].scatter(r["width"], 100 * r["accuracy"], s=8, color=color, alpha=0.35)
            if "diff_to_exact" in emp[0]:
                d = np.array([100 * s["diff_to_exact"] for s in emp])
                derr = np.array([[100 * (s["diff_to_exact"] - s["diff_lo"]), 100 * (s["diff_hi"] - s["diff_to_exact"])]
                                 for s in emp]).T
                axes[1].errorbar(w, d, yerr=derr, fmt="-o", ms=4, capsize=3, color=color, label=name)
        if exact:
            axes[0].axhline(100 * exact["accuracy"], color=color, ls="--", lw=1, label=f"exact kernel, {name}")
            axes[0].axhspan(100 * exact["acc_lo"], 100 * exact["acc_hi"], color=color, alpha=0.08, lw=0)
        width_series(axes[2], [r for r in sel if r["method"] == "empirical"], "kernel_rel_error", color, name)
    axes[1].axhline(0, color="black", lw=0.8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width m")
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08), borderaxespad=0.0)  # outside the axes: no point hidden
    axes[2].set_yscale("log")
    axes[0].set_ylabel("test accuracy of kernel regression (%)")
    axes[1].set_ylabel("empirical minus exact, points (paired)")
    axes[2].set_ylabel(r"$\|\Theta_m - \Theta\|_F / \|\Theta\|_F$ (train + test)")
    axes[0].set_title("Monte Carlo (one random net) vs exact kernel")
    axes[1].set_title("Paired difference on the same test images")
    axes[2].set_title("Kernel error")
    fig.text(0.5, -0.05, f"{common(rows, 'data')}, {common(rows, 'n_train')} train / {common(rows, 'n_test')} test, ridge "
             f"{common(rows, 'ridge', 'g')} x mean diag.  Mean over seeds (one random net each) with two-level bootstrap 95 % intervals "
             "(seeds and test images resampled); points: seeds; dashed + band: exact kernel (Wilson interval).  Middle: accuracy difference of the seed mean to "
             "the exact kernel, paired; McNemar p per seed, raw and Holm-adjusted over the run, in summary.csv.",
             ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "monte_carlo_vs_exact")
    plt.close(fig)
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=monte_carlo_vs_exact", "experiment.widths=[4,8]", "experiment.seeds=[0]",
             "data.n_train=12", "data.n_test=6"]]
