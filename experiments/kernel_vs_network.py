"""The paper's Table 1 at this machine's scale: exact CNTK-V / CNTK-GAP kernel regression vs the
finite CNN-V / CNN-GAP trained by minibatch SGD, at several depths, on a class-balanced subset."""
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
from .common import common, model_inputs, save_figure, style
from .config import Config as RunConfig, GridExperiment, check
from .data import Dataset
from .results import write_atomic


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "kernel_vs_network"
    name: str = "kernel_vs_network"
    ridge: float = 0.0  # kernel regression ridge, relative to the mean diagonal
    sgd_epochs: int = 30
    sgd_batch_size: int = 64
    sgd_lr_fraction: float = 0.5  # SGD lr = fraction * batch / lambda_max(initial NTK on a batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ridge >= 0, "experiment.ridge", f"must be >= 0, got {self.ridge}")
        check(self.sgd_epochs >= 1, "experiment.sgd_epochs", f"must be >= 1, got {self.sgd_epochs}")
        check(self.sgd_batch_size >= 1, "experiment.sgd_batch_size", f"must be >= 1, got {self.sgd_batch_size}")
        check(0 < self.sgd_lr_fraction < 2, "experiment.sgd_lr_fraction", f"must be in (0, 2), got {self.sgd_lr_fraction}")


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    y = cntk.paper_targets(data.y_train, data.num_classes)
    sizes = {"n_train": len(data.x_train), "n_test": len(data.x_test)}

    def prepare(arch):
        xtr = model_inputs(data.x_train, arch).to(device=device, dtype=dtype)
        xte = model_inputs(data.x_test, arch).to(device=device, dtype=dtype)
        t0 = time.perf_counter()
        k = cntk.kernel(xtr, None, arch, progress=False)
        kt = cntk.kernel(xte, xtr, arch, progress=False)
        model = cntk.kernel_regression(k, y, ridge=e.ridge)
        acc = cntk.accuracy(model.predict(kt).cpu(), data.y_test)
        return (xtr, xte), [{"method": "kernel", "width": 0, "seed": -1, **sizes, "accuracy": acc,
                             "seconds": time.perf_counter() - t0, "jitter": model.jitter}]

    def measure(ctx, arch, width, seed):
        xtr, xte = ctx
        t0 = time.perf_counter()
        net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xtr.shape[1:]), out_dim=data.num_classes,
                                dtype=dtype, device=device)
        res = finite_nets.train_sgd(net, xtr, data.y_train, xte, data.y_test, epochs=e.sgd_epochs,
                                    batch_size=e.sgd_batch_size, lr_fraction=e.sgd_lr_fraction, seed=seed)
        return {"method": "network", **sizes, "accuracy": res.test_accuracy, "seconds": time.perf_counter() - t0,
                "lr": res.lr, "final_train_loss": res.train_loss[-1]}

    return sweep.run(cfg, prepare, measure, prepare_steps=1)


def _label(method: str, readout: str, width: int, setting: str = "") -> str:
    base = ("CNTK-" if method == "kernel" else "CNN-") + ("GAP" if readout == "gap" else "V")
    base = base if method == "kernel" else f"{base} (m = {width}, SGD)"
    return f"{base} [{setting}]" if setting else base


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    series = sorted({(r.get("setting", ""), r["method"], r["readout"], r["width"]) for r in rows})
    depths = sorted({r["depth"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    summary = []
    for si, (setting, method, readout, width) in enumerate(series):
        means, stds = [], []
        for d in depths:
            acc = [100 * r["accuracy"] for r in rows if (r.get("setting", ""), r["method"], r["readout"], r["width"],
                                                         r["depth"]) == (setting, method, readout, width, d)]
            means.append(np.mean(acc) if acc else np.nan)
            stds.append(np.std(acc) if len(acc) > 1 else 0.0)
            if acc:
                summary.append({"model": _label(method, readout, width, setting), "depth": d, "accuracy_mean": np.mean(acc) / 100,
                                "accuracy_std": (np.std(acc) if len(acc) > 1 else 0.0) / 100, "seeds": len(acc)})
        style_ = "-o" if method == "kernel" else "--s"
        color = f"C{si % 10}"
        ax.errorbar(depths, means, yerr=stds, fmt=style_, color=color, ms=5, capsize=3,
                    label=_label(method, readout, width, setting))
    ax.set_xlabel("depth (conv layers + 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(depths)
    ax.set_title(f"Exact kernels vs finite nets: {common(rows, 'data')}, {common(rows, 'n_train')} train / "
                 f"{common(rows, 'n_test')} test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "kernel_vs_network")
    plt.close(fig)
    lines = ["| model | " + " | ".join(f"depth {x}" for x in depths) + " |", "|---|" + "---|" * len(depths)]
    for label in dict.fromkeys(s["model"] for s in summary):
        cells = []
        for x in depths:
            hit = next((s for s in summary if s["model"] == label and s["depth"] == x), None)
            if hit is None:
                cells.append("")
            elif hit["seeds"] > 1:
                cells.append(f"{100 * hit['accuracy_mean']:.2f} ± {100 * hit['accuracy_std']:.2f}")
            else:
                cells.append(f"{100 * hit['accuracy_mean']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    write_atomic(Path(out_dir) / "table.md", "\n".join(lines) + "\n")
    return paths, summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=kernel_vs_network", "experiment.widths=[4]", "experiment.depths=[3]", "experiment.sgd_epochs=1",
             "data.n_train=20", "data.n_test=10"]]
