"""Kernel regression on a finished gram store, for one or more ridge values: float64 Cholesky
(GPU when present) when K_train fits in experiment.max_dense_gb, else block-Jacobi preconditioned
CG streaming the tiles.  Rows keep which test images each solve classifies correctly.

Which ridge: the accuracy with no ridge (the paper's setting) and with the ridge chosen by
experiment.cv_folds-fold cross-validation on the training kernel (never on the test set).
Cross-validation needs K_train in memory (the Cholesky path); on the CG path it is skipped.

The report (``report``: this module's plot, and ``python -m experiments.harness.table1_report`` over several
solve sweeps) gives every accuracy a 95 % bootstrap interval over test images, and paired tests
(exact McNemar, and a paired bootstrap interval of the difference) for the comparisons the paper
makes: GAP vs V, CNTK vs CNN-GP (NNGP), and depth to depth, each between kernels solved on the
same training and test images, on the cross-validated-ridge predictions.  The paper's CIFAR-10
numbers are listed in their own table and panel, never on the axis of ours.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
from cntk.solve.regression import cross_validate_ridge
from cntk.solve.solvers import solve_cg, solve_dense
from cntk.store.tiles import TileStore

from experiments.harness import stats
from experiments.harness.common import save_figure, style
from experiments.harness.config import Config as RunConfig, ConfigError, Needs, check
from experiments.harness.data import Dataset
from .gram import StoreConfig, store_path
from experiments.harness.results import write_atomic

# Arora et al. 2019, Table 1 (CIFAR-10, full data, no ridge), test accuracy in %; the CNTK-GAP
# column is computed with "fix" (first and last layer not trained), the CNTK-V column without.
PAPER_TABLE1 = {
    "gap": {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08},
    "flatten": {3: 64.47, 4: 65.52, 6: 66.03, 11: 65.90, 21: 64.09},
}


@dataclass
class Config(StoreConfig):
    """Kernel regression on the store that experiment=gram made with the same data / model / dtype /
    experiment.kind (or experiment.store)."""

    NAME: ClassVar[str] = "solve"
    AXES: ClassVar[dict[str, str]] = {**StoreConfig.AXES, "model.fix_first_last": "fix_first_last",
                                      "data.n_train": "n_train", "data.n_test": "n_test"}
    _CG: ClassVar[Needs] = Needs("solver", idle=("cholesky",), use="cg", why="only the cg solver reads it")
    _DENSE: ClassVar[Needs] = Needs("solver", idle=("cg",), use="cholesky", why="cross-validation needs K_train in "
                                    "memory: the cholesky path only")
    DEPENDS: ClassVar[dict[str, Needs | tuple[Needs, ...]]] = {
        "cg_tol": _CG,
        "cg_max_iter": _CG,
        "max_dense_gb": Needs("solver", idle=("cholesky", "cg"), use="auto",
                              why="only solver=auto reads it, to choose between cholesky and cg"),
        "cv_folds": _DENSE,
        "cv_seed": (_DENSE, Needs("cv_folds", idle=(0,), use=5, why="only cross-validation reads it")),
    }
    name: str = "solve"
    ridges: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1])  # relative to mean diag K
    solver: str = "auto"  # cholesky | cg | auto (cholesky when K_train fits in max_dense_gb)
    max_dense_gb: float = 8.0
    cg_tol: float = 1e-10
    cg_max_iter: int = 5000
    cv_folds: int = 5  # the ridge is chosen by this many folds of the training kernel (0: off)
    cv_seed: int = 0  # which folds

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.ridges) > 0 and min(self.ridges) >= 0, "experiment.ridges", f"must be >= 0, got {self.ridges}")
        check(self.cv_folds == 0 or self.cv_folds >= 2, "experiment.cv_folds",
              f"must be 0 (off) or >= 2, got {self.cv_folds}")
        check(self.solver in ("auto", "cholesky", "cg"), "experiment.solver",
              f"must be auto, cholesky or cg, got {self.solver!r}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.experiment
    root = store_path(cfg)
    if len(data.x_test) == 0:
        raise ConfigError("data.n_test: solve reports test accuracy and needs test images (got 0); make the store "
                          "with data.n_test > 0")
    train, test = TileStore.load(root / "train"), TileStore.load(root / "test_train")
    arch = cfg.model.architecture()
    for store in (train, test):
        store.check_matrix(arch, g.kind, dtype)
    xtr = arch.inputs(data.x_train.to(dtype))
    xte = arch.inputs(data.x_test.to(dtype))
    ids = data.identity("train"), data.identity("test")
    train.check_inputs(xtr, None, (ids[0], None))
    test.check_inputs(xte, xtr, (ids[1], ids[0]))
    y = cntk.paper_targets(data.y_train, data.num_classes)
    n = train.meta.n_rows
    dense = g.solver == "cholesky" or (g.solver == "auto" and n * n * 8 / 2**30 <= g.max_dense_gb)
    k_train = torch.from_numpy(train.assemble()).double() if dense else None
    k_test = torch.from_numpy(test.assemble()).double()
    cv = (cross_validate_ridge(k_train.to(device), data.y_train, data.num_classes, g.ridges, g.cv_folds, g.cv_seed)
          if dense and g.cv_folds and g.cv_folds <= n else [float("nan")] * len(g.ridges))
    cost = {k: train.cost()[k] + test.cost()[k] for k in ("entries", "seconds", "timed_tiles", "tiles")}
    rows = []
    for ridge, cv_accuracy in zip(g.ridges, cv):
        t0 = time.perf_counter()
        sol = (solve_dense(k_train, y, ridge, device) if dense
               else solve_cg(train, y, ridge, device, tol=g.cg_tol, max_iter=g.cg_max_iter))
        pred = (k_test.to(sol.alpha) @ sol.alpha).cpu()
        correct = (pred.argmax(1) == data.y_test).numpy()
        rows.append({
            "family": arch.family, "variant": arch.variant, "readout": cfg.model.readout, "depth": cfg.model.depth,
            "kind": g.kind,
            "fix_first_last": cfg.model.fix_first_last, "ridge": ridge, "n_train": n, "n_test": len(xte),
            "accuracy": float(correct.mean()), "correct": stats.encode(correct),
            "cv_accuracy": cv_accuracy, "cv_folds": g.cv_folds if not np.isnan(cv_accuracy) else 0,
            "solver": sol.method, "residual": sol.residual, "iterations": sol.iterations, "jitter": sol.jitter,
            "seconds": time.perf_counter() - t0, "kernel_dtype": train.meta.dtype,
            "kernel_entries": cost["entries"], "kernel_seconds": cost["seconds"],
            "kernel_timed_tiles": f"{cost['timed_tiles']}/{cost['tiles']}",
        })
    return rows


# ---------------------------------------------------------------------------------------------
# report


def kernel_name(kind: str, readout: str, fix: bool) -> str:
    """CNTK-V, CNN-GP-GAP (fix), ...; a readout key "gap [myrtle]" names its variant the same way."""
    base_readout, _, rest = readout.partition(" ")
    base = ("CNTK-" if kind == "ntk" else "CNN-GP-") + ("GAP" if base_readout == "gap" else "V")
    return base + (" (fix)" if fix and kind == "ntk" else "") + (f" {rest}" if rest else "")


def _kernels(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(setting, n_train, n_test, kind, readout, fix, depth) -> its rows by ridge."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        readout = r["readout"] + (f" [{r['variant']}]" if r.get("variant") else "")  # variants never pool
        key = (r.get("setting", ""), r["n_train"], r["n_test"], r.get("kind", "ntk"), readout,
               bool(r.get("fix_first_last", False)), r["depth"])
        out.setdefault(key, []).append(r)
    order = lambda k: (str(k[0]), -k[1], -k[2], k[3] != "ntk", k[4] != "gap", not k[5], k[6])  # noqa: E731
    return {k: sorted(v, key=lambda r: r["ridge"]) for k, v in sorted(out.items(), key=lambda kv: order(kv[0]))}


def _cv_row(group: list[dict]) -> dict | None:
    """The row of the cross-validated ridge: the smallest ridge with the best CV accuracy."""
    scored = [r for r in group if not np.isnan(r.get("cv_accuracy", float("nan")))]
    return max(scored, key=lambda r: r["cv_accuracy"]) if scored else None  # max keeps the first (smallest)


def summarize(rows: list[dict]) -> list[dict]:
    """One row per kernel: accuracy with no ridge and with the CV ridge, each with its interval; cost."""
    out = []
    for (setting, n_train, n_test, kind, readout, fix, depth), group in _kernels(rows).items():
        zero = next((r for r in group if r["ridge"] == 0), None)
        cv = _cv_row(group)
        s = {"setting": setting, "n_train": n_train, "n_test": n_test, "kernel": kernel_name(kind, readout, fix),
             "kind": kind, "readout": readout, "fix_first_last": fix, "depth": depth}
        for name, row in (("no_ridge", zero), ("cv_ridge", cv)):
            acc, lo, hi = stats.bootstrap_accuracy(stats.decode(row["correct"])) if row and "correct" in row else (
                (row["accuracy"], float("nan"), float("nan")) if row else (float("nan"),) * 3)
            s.update({f"accuracy_{name}": acc, f"{name}_lo": lo, f"{name}_hi": hi})
        s.update(cv_ridge=cv["ridge"] if cv else float("nan"), cv_accuracy=cv["cv_accuracy"] if cv else float("nan"),
                 kernel_seconds=group[0].get("kernel_seconds", float("nan")),
                 kernel_entries=group[0].get("kernel_entries", float("nan")),
                 correct=(cv or zero or {}).get("correct", ""))
        out.append(s)
    return out


def comparisons(summary: list[dict]) -> list[dict]:
    """Paired tests between kernels solved on the same data (CV-ridge predictions): GAP vs V,
    CNTK vs CNN-GP, and each kernel's depth against the next depth."""
    out = []
    by_key = {(s["setting"], s["n_train"], s["n_test"], s["kind"], s["readout"], s["fix_first_last"], s["depth"]): s
              for s in summary if s["correct"]}

    def add(what: str, a: dict, b: dict) -> None:
        ca, cb = stats.decode(a["correct"]), stats.decode(b["correct"])
        d, lo, hi = stats.bootstrap_difference(ca, cb)
        t = stats.mcnemar(ca, cb)
        out.append({"comparison": what, "data": f"{a['n_train']} / {a['n_test']}" + (f" [{a['setting']}]" if a["setting"] else ""),
                    "a": f"{a['kernel']}, depth {a['depth']}", "b": f"{b['kernel']}, depth {b['depth']}",
                    "accuracy_a": ca.mean(), "accuracy_b": cb.mean(), "diff": d, "diff_lo": lo, "diff_hi": hi,
                    "a_only_right": t["b"], "b_only_right": t["c"], "mcnemar_p": t["p"]})

    for (setting, ntr, nte, kind, readout, fix, depth), a in by_key.items():
        if readout == "gap":  # GAP vs V: the same kind (and the NTK's fix variants against each other, or V without)
            for vfix in (fix, False):
                b = by_key.get((setting, ntr, nte, kind, "flatten", vfix, depth))
                if b:
                    add("GAP vs V", a, b)
                    break
        if kind == "ntk":
            b = by_key.get((setting, ntr, nte, "nngp", readout, False, depth))
            if b:
                add("CNTK vs CNN-GP", a, b)
        deeper = sorted(k[-1] for k in by_key if k[:-1] == (setting, ntr, nte, kind, readout, fix) and k[-1] > depth)
        if deeper:
            add("depth vs next depth", a, by_key[(setting, ntr, nte, kind, readout, fix, deeper[0])])
    return out


def report(rows: list[dict], out_dir: str | Path, name: str = "table1") -> tuple[list[Path], list[dict]]:
    """table.md (accuracies with intervals, cost), tests.md (paired comparisons), paper.md (the
    paper's CIFAR-10 column) and the figure ``name``.png; returns (figure paths, summary)."""
    summary = summarize(rows)
    tests = comparisons(summary)
    data = ", ".join(sorted({str(r.get("data", "")) for r in rows}))
    lines = [f"| kernel | depth | {data} train / test | no ridge % [95 % CI] | CV ridge % [95 % CI] | CV ridge | "
             "cost: kernel entries, seconds (entries/s) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        cells = []
        for key in ("no_ridge", "cv_ridge"):
            acc, lo, hi = s[f"accuracy_{key}"], s[f"{key}_lo"], s[f"{key}_hi"]
            cells.append("" if np.isnan(acc) else f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        sec, ent = s["kernel_seconds"], s["kernel_entries"]
        cost = f"{int(ent):,}, {sec:,.0f} s ({ent / sec:,.0f}/s)" if sec and sec == sec and ent else "not timed"
        tag = f" [{s['setting']}]" if s["setting"] else ""
        lines.append(f"| {s['kernel']}{tag} | {s['depth']} | "
                     f"{s['n_train']} / {s['n_test']} | {cells[0]} | {cells[1]} | "
                     f"{'' if np.isnan(s['cv_ridge']) else format(s['cv_ridge'], 'g')} | {cost} |")
    write_atomic(Path(out_dir) / "table.md", "\n".join(lines) + "\n")
    tl = ["| comparison | train / test | A | B | A % | B % | A - B, points [95 % CI] | only A right | only B right | "
          "McNemar p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        tl.append(f"| {t['comparison']} | {t['data']} | {t['a']} | {t['b']} | {100 * t['accuracy_a']:.1f} | "
                  f"{100 * t['accuracy_b']:.1f} | {100 * t['diff']:+.1f} [{100 * t['diff_lo']:+.1f}, {100 * t['diff_hi']:+.1f}] "
                  f"| {t['a_only_right']} | {t['b_only_right']} | {t['mcnemar_p']:.2g} |")
    write_atomic(Path(out_dir) / "tests.md", "\n".join(tl) + "\n")
    pl = ["| paper (CIFAR-10, 50,000 train / 10,000 test, no ridge) | " + " | ".join(f"depth {d}" for d in (3, 4, 6, 11, 21))
          + " |", "|---|---|---|---|---|---|"]
    for readout, label in (("flatten", "CNTK-V"), ("gap", "CNTK-GAP (fix)")):
        pl.append(f"| {label} | " + " | ".join(f"{PAPER_TABLE1[readout][d]:.2f}" for d in (3, 4, 6, 11, 21)) + " |")
    write_atomic(Path(out_dir) / "paper.md", "\n".join(pl) + "\n")
    paths = _figure(summary, data, out_dir, name)
    return paths, [{k: v for k, v in s.items() if k != "correct"} for s in summary] + [
        {"comparison": t["comparison"], **{k: v for k, v in t.items() if k != "comparison"}} for t in tests]


def _figure(summary: list[dict], data: str, out_dir: str | Path, name: str) -> list[Path]:
    """Accuracy (CV ridge, 95 % interval) against depth, one panel per training / test size; the
    paper's CIFAR-10 numbers in a panel of their own."""
    sizes = sorted({(s["setting"], s["n_train"], s["n_test"]) for s in summary}, key=lambda k: (str(k[0]), -k[1]))
    if not any(len({s["depth"] for s in summary if (s["setting"], s["n_train"], s["n_test"]) == z}) > 1 for z in sizes):
        return []
    style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5.2 * (len(sizes) + 1), 4.2), squeeze=False)
    axes = axes[0]
    kernels = list(dict.fromkeys(s["kernel"] for s in summary))
    for ax, size in zip(axes, sizes):
        for ki, kernel in enumerate(kernels):
            sel = sorted((s for s in summary if s["kernel"] == kernel and (s["setting"], s["n_train"], s["n_test"]) == size),
                         key=lambda s: s["depth"])
            if not sel:
                continue
            d = [s["depth"] for s in sel]
            acc = np.array([100 * s["accuracy_cv_ridge"] for s in sel])
            err = np.array([[100 * (s["accuracy_cv_ridge"] - s["cv_ridge_lo"]), 100 * (s["cv_ridge_hi"] - s["accuracy_cv_ridge"])]
                            for s in sel]).T
            style_ = "-o" if "CNTK" in kernel else "--s"
            ax.errorbar(d, acc, yerr=err, fmt=style_, color=f"C{ki % 10}", ms=4, capsize=3, label=kernel)
        ax.set_xscale("log")
        ticks = sorted({s["depth"] for s in summary if (s["setting"], s["n_train"], s["n_test"]) == size})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("depth")
        ax.set_ylabel("test accuracy (%), CV ridge")
        ax.set_title(f"{data}: {size[1]} train / {size[2]} test" + (f" [{size[0]}]" if size[0] else ""), fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for readout, label, color in (("flatten", "CNTK-V", "C7"), ("gap", "CNTK-GAP (fix)", "C8")):
        d = sorted(PAPER_TABLE1[readout])
        ax.plot(d, [PAPER_TABLE1[readout][x] for x in d], "-^", color=color, label=label)
    ax.set_xscale("log")
    ax.set_xticks([3, 4, 6, 11, 21], ["3", "4", "6", "11", "21"])
    ax.minorticks_off()
    ax.set_xlabel("depth")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("The paper: CIFAR-10, 50,000 train (own axis)", fontsize=9)
    ax.legend(fontsize=7)
    fig.text(0.5, -0.04, "Error bars: 95 % bootstrap intervals over test images.  Paired tests (McNemar, paired bootstrap) "
             "for GAP vs V, CNTK vs CNN-GP and depth to depth are in tests.md; accuracy with no ridge in table.md.",
             ha="center", fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, name)
    plt.close(fig)
    return paths


def plot(doc: dict, out_dir: str | Path):
    return report(doc["rows"], out_dir)


def smoke(tmp: Path) -> list[list[str]]:
    common_ = ["data.n_train=12", "data.n_test=6", f"experiment.store={tmp / 'store'}"]
    return [["experiment=gram", "experiment.tile=8", *common_], ["experiment=solve", "experiment.ridges=[0.0,0.01]",
                                                                 "experiment.cv_folds=2", *common_]]
