"""The paper's Table 1 at this machine's scale: exact CNTK-V / CNTK-GAP kernel regression vs the
finite CNN-V / CNN-GAP trained by minibatch SGD, at several depths, on a class-balanced subset."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cntk
import finite_nets

from .common import architecture, model_inputs, save_figure, style
from .config import Config
from .data import Dataset
from .results import write_atomic


def run(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    rows = []
    grid = [(r, d) for r in e.readouts for d in e.depths]
    y = cntk.paper_targets(data.y_train, data.num_classes)
    with tqdm(total=len(grid) * (1 + len(e.widths) * len(e.seeds)), desc="kernel_vs_network",
              disable=not cfg.progress) as bar:
        for readout, depth in grid:
            arch = architecture(cfg.model, readout=readout, depth=depth)
            xtr = model_inputs(data.x_train, arch).to(device=device, dtype=dtype)
            xte = model_inputs(data.x_test, arch).to(device=device, dtype=dtype)
            t0 = time.perf_counter()
            k = cntk.kernel(xtr, None, arch, progress=False)
            kt = cntk.kernel(xte, xtr, arch, progress=False)
            model = cntk.kernel_regression(k, y, ridge=e.ridge)
            acc = cntk.accuracy(model.predict(kt).cpu(), data.y_test)
            rows.append({"method": "kernel", "readout": readout, "depth": depth, "width": 0, "seed": -1,
                         "accuracy": acc, "seconds": time.perf_counter() - t0, "jitter": model.jitter})
            bar.update()
            for width in e.widths:
                for seed in e.seeds:
                    t0 = time.perf_counter()
                    net = finite_nets.build(arch, width, seed=seed, input_shape=tuple(xtr.shape[1:]),
                                            out_dim=data.num_classes, dtype=dtype, device=device)
                    res = finite_nets.train_sgd(net, xtr, data.y_train, xte, data.y_test, epochs=e.sgd_epochs,
                                                batch_size=e.sgd_batch_size, lr_fraction=e.sgd_lr_fraction, seed=seed)
                    rows.append({"method": "network", "readout": readout, "depth": depth, "width": width,
                                 "seed": seed, "accuracy": res.test_accuracy, "seconds": time.perf_counter() - t0,
                                 "lr": res.lr, "final_train_loss": res.train_loss[-1]})
                    bar.update()
    return rows


def _label(method: str, readout: str, width: int) -> str:
    base = ("CNTK-" if method == "kernel" else "CNN-") + ("GAP" if readout == "gap" else "V")
    return base if method == "kernel" else f"{base} (m = {width}, SGD)"


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    series = sorted({(r["method"], r["readout"], r["width"]) for r in rows})
    depths = sorted({r["depth"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    summary = []
    for method, readout, width in series:
        means, stds = [], []
        for d in depths:
            acc = [100 * r["accuracy"] for r in rows
                   if (r["method"], r["readout"], r["width"], r["depth"]) == (method, readout, width, d)]
            means.append(np.mean(acc) if acc else np.nan)
            stds.append(np.std(acc) if len(acc) > 1 else 0.0)
            if acc:
                summary.append({"model": _label(method, readout, width), "depth": d, "accuracy_mean": np.mean(acc) / 100,
                                "accuracy_std": (np.std(acc) if len(acc) > 1 else 0.0) / 100, "seeds": len(acc)})
        style_ = "-o" if method == "kernel" else "--s"
        color = "C0" if readout == "gap" else "C1"
        ax.errorbar(depths, means, yerr=stds, fmt=style_, color=color, ms=5, capsize=3,
                    label=_label(method, readout, width))
    d = doc["config"]["data"]
    ax.set_xlabel("depth (conv layers + 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(depths)
    ax.set_title(f"Exact kernels vs finite nets: {d['name']}, {d['n_train']} train / {d['n_test']} test")
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
