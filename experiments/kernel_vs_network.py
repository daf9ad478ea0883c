"""RQ3 at this machine's scale: exact kernel regression (CNTK-V / CNTK-GAP, or any model= the kernel
computes) against finite nets of increasing width, each trained well.

Finite nets of exactly the kernel's layers (``finite_nets.build``: the model's activation, biases,
pooling), in two parameterisations:
  - ``ntk``: the kernel's own twin (NTK parameterisation), MSE to the paper's 0.9 / -0.1 targets,
    minibatch SGD with momentum, by one of two routes to the kernel's setting: centred (f - f0,
    kappa = 1) or a small output scale kappa (uncentred); lr = fraction x B / lambda_max of the
    batch NTK;
  - ``standard``: the net of practice (standard parameterisation: the same initial function, the
    layers' multipliers folded into the initial weights), cross-entropy, SGD with momentum, an
    absolute learning rate.
Every hyperparameter (route / kappa, learning rate, number of epochs) is chosen per parameterisation,
architecture and width on ``data.n_val`` validation images carved from the training pool (never on
the test set): one run per grid point (seed 0) for ``epochs`` epochs, the best validation accuracy
over the grid and the epochs decides (ties go to the later epoch: the more fully trained net); then
every seed is trained with the choice (a seed whose training diverges with it takes the next best
setting of the ranking; ``choice_rank`` in its row says so).  Kernel
regression (no ridge, as in the paper) uses the same training images.  Rows keep which test images
each model classifies correctly, for bootstrap intervals and paired (McNemar) tests.

``redraw_train``: seed s is a whole replicate -- initialisation s *and* training draw s (the
training subset drawn anew from the pool, ``data.load(..., train_draw=s)``; draw 0 is the subset
``data.seed`` gives, and the test images are the same for every draw), with the exact kernel
recomputed on every draw, so that the intervals cover which images were trained on, not only the
initialisation; each net is paired with the kernel of its own draw.  Selection stays on draw 0.
"""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import cntk
import finite_nets
from cntk.errors import NetworkError

from experiments.harness import stats, sweep
from experiments.harness.common import common, row_name, save_figure, style
from experiments.harness.config import Config as RunConfig, ConfigError, GridExperiment, Needs, check
from experiments.harness.data import Dataset, load
from experiments.harness.results import write_atomic

PARAMETERISATIONS = ("ntk", "standard")
ROUTES = ("centred", "small_kappa")


@dataclass
class Config(GridExperiment):
    NAME: ClassVar[str] = "kernel_vs_network"
    USES_VALIDATION: ClassVar[bool] = True
    _NTK: ClassVar[Needs] = Needs("parameterisations", idle=("standard",), use="ntk",
                                  why="only the ntk-parameterised nets read it")
    DEPENDS: ClassVar[dict[str, Needs | tuple[Needs, ...]]] = {
        "ntk_routes": _NTK,
        "ntk_lr_fractions": _NTK,
        "small_kappa": (_NTK, Needs("ntk_routes", idle=("centred",), use="small_kappa",
                                    why="only the small_kappa route of the ntk nets reads it")),
        "standard_lrs": Needs("parameterisations", idle=("ntk",), use="standard",
                              why="only the standard-parameterised nets read it"),
        "redraw_train": Needs("seeds", idle=(0,), use=1, why="only a seed s > 0 trains on another draw (draw 0 is "
                              "data.seed's subset)"),
    }
    name: str = "kernel_vs_network"
    parameterisations: list[str] = field(default_factory=lambda: list(PARAMETERISATIONS))
    epochs: int = 30  # at most: the number of epochs is chosen on the validation split
    batch_size: int = 32
    momentum: float = 0.9
    ntk_routes: list[str] = field(default_factory=lambda: list(ROUTES))  # grid of the ntk parameterisation
    small_kappa: float = 0.1
    ntk_lr_fractions: list[float] = field(default_factory=lambda: [0.5, 1.0])  # lr = fraction * B / lambda_max
    standard_lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1])
    ridge: float = 0.0  # kernel regression ridge, relative to the mean diagonal (the paper: 0)
    redraw_train: bool = False  # seed s also trains on training draw s (a fresh subset; kernel per draw)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [p for p in self.parameterisations if p not in PARAMETERISATIONS]
        check(len(self.parameterisations) > 0 and not bad, "experiment.parameterisations",
              f"unknown parameterisation(s) {bad}: use {list(PARAMETERISATIONS)}")
        bad = [r for r in self.ntk_routes if r not in ROUTES]
        check(len(self.ntk_routes) > 0 and not bad, "experiment.ntk_routes", f"unknown route(s) {bad}: use {list(ROUTES)}")
        check(self.epochs >= 1, "experiment.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "experiment.batch_size", f"must be >= 1, got {self.batch_size}")
        check(0 <= self.momentum < 1, "experiment.momentum", f"must be in [0, 1), got {self.momentum}")
        check(0 < self.small_kappa <= 1, "experiment.small_kappa", f"must be in (0, 1], got {self.small_kappa}")
        check(len(self.ntk_lr_fractions) > 0 and all(0 < f < 2 for f in self.ntk_lr_fractions),
              "experiment.ntk_lr_fractions", f"each must be in (0, 2), got {self.ntk_lr_fractions}")
        check(len(self.standard_lrs) > 0 and all(lr > 0 for lr in self.standard_lrs), "experiment.standard_lrs",
              f"each must be > 0, got {self.standard_lrs}")
        check(self.ridge >= 0, "experiment.ridge", f"must be >= 0, got {self.ridge}")


    def check_with(self, cfg) -> None:
        check(cfg.data.n_val > 0, "data.n_val", "kernel_vs_network chooses learning rate, epochs and kappa on a "
              "validation split of the training pool: set data.n_val > 0")


def _grid(e: Config, parameterisation: str) -> list[dict]:
    if parameterisation == "ntk":
        return [{"route": r, "lr_fraction": f} for r, f in itertools.product(e.ntk_routes, e.ntk_lr_fractions)]
    return [{"lr": lr} for lr in e.standard_lrs]


def _weights(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    e = cfg.experiment
    if data.x_val is None or len(data.x_val) == 0:
        raise ConfigError("data.n_val: kernel_vs_network chooses learning rate, epochs and kappa on a validation "
                          "split of the training pool: set data.n_val > 0")
    if len(data.x_test) == 0:  # before any work: the figure is test accuracy
        raise ConfigError("data.n_test: kernel_vs_network compares test accuracies and needs test images (got 0)")
    sizes = {"n_train": len(data.x_train), "n_val": len(data.x_val), "n_test": len(data.x_test)}
    def draw_of(seed: int) -> int:  # with redraw_train, seed s trains on draw s (same test images); draw 0 is ``data``
        return seed if e.redraw_train else 0

    kernel_draws = sorted({draw_of(s) for s in e.seeds})
    draws = {0: data, **{d: load(cfg.data, train_draw=d) for d in kernel_draws if d}}

    def prepare(arch):
        def inputs(part: Dataset) -> tuple:  # (train, validation, test) as the architecture reads them
            return tuple(arch.inputs(x).to(device=device, dtype=dtype) for x in (part.x_train, part.x_val, part.x_test))

        ctx = {"x": {}, "chosen": {}}
        rows = []
        for d in kernel_draws:
            part = draws[d]
            ctx["x"][d] = inputs(part)
            xtr, _, xte = ctx["x"][d]
            t0 = time.perf_counter()
            k = cntk.kernel(xtr, None, arch, progress=False)
            kt = cntk.kernel(xte, xtr, arch, progress=False)
            model = cntk.kernel_regression(k, cntk.paper_targets(part.y_train, data.num_classes), ridge=e.ridge)
            pred = model.predict(kt).cpu()
            correct = (pred.argmax(1) == part.y_test).numpy()
            rows.append({"method": "kernel", "width": 0, "seed": -1, "train_draw": d,
                         "train_indices_sha256": part.provenance["train"]["indices_sha256"], **sizes,
                         "accuracy": float(correct.mean()), "correct": stats.encode(correct),
                         "seconds": time.perf_counter() - t0, "jitter": model.jitter})
        if 0 not in ctx["x"]:  # selection is on draw 0 (its validation images) whichever seeds run
            ctx["x"][0] = inputs(data)
        return ctx, rows

    def make(parameterisation, arch, width, seed, shape, hp):
        """The finite net of exactly the kernel's layers, in ``parameterisation``."""
        kappa = (1.0 if hp["route"] == "centred" else e.small_kappa) if parameterisation == "ntk" else 1.0
        return finite_nets.build(arch, width, input_shape=shape, out_dim=data.num_classes, seed=seed, output_scale=kappa,
                                 dtype=dtype, device=device, parameterisation=parameterisation)

    def train(parameterisation, net, hp, xtr, ytr, x_eval, y_eval, epochs, seed):
        opts = dict(epochs=epochs, batch_size=e.batch_size, momentum=e.momentum, seed=seed)
        if parameterisation == "ntk":
            return finite_nets.train_sgd(net, xtr, ytr, x_eval, y_eval, loss="mse",
                                         lr_fraction=hp["lr_fraction"], centered=hp["route"] == "centred", **opts)
        return finite_nets.train_sgd(net, xtr, ytr, x_eval, y_eval, loss="cross_entropy", lr=hp["lr"], **opts)

    def choose(ctx, parameterisation, arch, width):
        """The grid ranked by validation accuracy (seed 0 runs), each with its best epoch, best first
        (ties keep the grid's order); selection rows."""
        xtr, xva, _ = ctx["x"][0]
        ranked, rows = [], []
        for hp in _grid(e, parameterisation):
            net = make(parameterisation, arch, width, 0, tuple(xtr.shape[1:]), hp)
            t0 = time.perf_counter()
            try:
                res = train(parameterisation, net, hp, xtr, data.y_train, xva, data.y_val, e.epochs, 0)
                curve = res.test_accuracy_per_epoch
            except finite_nets.TrainingDiverged:
                curve = [0.0]
            epoch = len(curve) - 1 - int(np.argmax(curve[::-1]))  # the last best epoch: ties go to more training
            rows.append({"method": f"{parameterisation}_selection", "width": width, "seed": 0, "train_draw": 0, **sizes, **hp,
                         "val_accuracy": curve[epoch], "epochs": epoch + 1, "seconds": time.perf_counter() - t0})
            ranked.append(({**hp, "epochs": epoch + 1}, curve[epoch]))
        ranked.sort(key=lambda r: -r[1])  # stable: ties keep the grid's order
        return ranked, rows

    def measure(ctx, arch, width, seed):
        draw = draw_of(seed)
        xtr, _, xte = ctx["x"][draw]
        part = draws[draw]
        shape = tuple(xtr.shape[1:])
        out = []
        for par in e.parameterisations:
            if (par, width) not in ctx["chosen"]:
                ranked, rows = choose(ctx, par, arch, width)
                ctx["chosen"][par, width] = ranked
                out += [{**r, "seed": -1} for r in rows]
            t0 = time.perf_counter()
            # the validation's choice; should it diverge for this seed, the next best one (recorded)
            for rank, (hp, val) in enumerate(ctx["chosen"][par, width]):
                try:
                    res = train(par, make(par, arch, width, seed, shape, hp), hp, xtr, part.y_train, xte, part.y_test,
                                hp["epochs"], seed)
                    break
                except finite_nets.TrainingDiverged:
                    continue
            else:
                raise finite_nets.TrainingDiverged(f"every {par} setting of the grid diverged at width {width}, seed {seed}")
            kappa = (1.0 if hp.get("route") == "centred" else e.small_kappa) if par == "ntk" else None
            out.append({"method": f"{par}_net", "train_draw": draw, **sizes, **hp, "choice_rank": rank, "kappa": kappa,
                        "val_accuracy": val, "accuracy": res.test_accuracy, "correct": stats.encode(res.test_correct.numpy()),
                        "final_train_loss": res.final_train_loss, "train_accuracy": res.train_accuracy,
                        "loss": "mse" if par == "ntk" else "cross_entropy", "lr_used": res.lr,
                        "weights": _weights(res.model), "seconds": time.perf_counter() - t0})
        return out

    sweep.refuse_unbuildable(cfg, data, dtype, e.parameterisations)
    return sweep.run(cfg, prepare, measure, input_shape=tuple(data.x_train.shape[1:]), prepare_steps=1)


# ---------------------------------------------------------------------------------------------
# figure and tables


LABELS = {"kernel": "exact kernel (CNTK)", "ntk_net": "NTK-param. twin, MSE", "standard_net": "standard CNN, cross-entropy"}


def _draw(row: dict) -> int:
    return int(row.get("train_draw") or 0)  # results written before training draws: draw 0


def _cells(rows: list[dict]) -> dict:
    """(setting, readout, depth) -> {"kernel": {train draw: row}, ("ntk_net" | "standard_net", width): [rows]}."""
    cells: dict = {}
    for r in rows:
        key = (r.get("setting", ""), r["readout"], r["depth"])
        cell = cells.setdefault(key, {})
        cell.setdefault("net", row_name(r))
        if r["method"] == "kernel":
            if _draw(r) in cell.setdefault("kernel", {}):
                raise ValueError(f"two kernel rows of training draw {_draw(r)} for {key}: results of different runs "
                                 "pooled into one setting")
            cell["kernel"][_draw(r)] = r
        elif r["method"].endswith("_net"):
            cell.setdefault((r["method"], r["width"]), []).append(r)
    return cells


def _interval_name(seeds: int, redrawn: bool = False) -> str:
    if seeds == 1:
        return "bootstrap over images (1 seed)"
    return "two-level bootstrap (seed+training draw x images)" if redrawn else "two-level bootstrap (seeds x images)"


def _holm_per_setting(out: list[dict]) -> None:
    """Holm within each family = one setting (data set) of the run: all its network-vs-kernel McNemar
    tests (every readout, depth, method, width and seed).  Turns each row's raw ``_p`` list into the
    strings ``mcnemar_p`` and ``holm_p`` (per seed), with ``holm_family_size`` and ``holm_survivors``."""
    tested = [s for s in out if "_p" in s]
    families = [s["setting"] for s in tested for _ in s["_p"]]
    adjusted = iter(stats.holm_by_family([p for s in tested for p in s["_p"]], families))
    for s in tested:
        raw = s.pop("_p")
        holm = [float(next(adjusted)) for _ in raw]
        s.update(mcnemar_p=" / ".join(f"{x:.2g}" for x in raw), holm_p=" / ".join(f"{x:.2g}" for x in holm),
                 holm_family_size=families.count(s["setting"]), holm_survivors=sum(x < 0.05 for x in holm))


def summarize(rows: list[dict]) -> list[dict]:
    """Per (setting, readout, depth, method, width): accuracy over seeds with its interval (the kernel
    on one training draw: Wilson; on D draws: two-level bootstrap over draws and test images; S seeds
    of nets: two-level bootstrap over seeds and test images), the paired difference to the exact
    kernel (per image and seed: the net minus the kernel of the seed's own training draw; two-level
    bootstrap of those differences over seeds and the shared images), and the McNemar p per seed
    against its draw's kernel, with its Holm-adjusted p (family: every network-vs-kernel test of the
    setting)."""
    out = []
    for (setting, readout, depth), cell in sorted(_cells(rows).items(), key=lambda kv: tuple(map(str, kv[0]))):
        kern = cell.get("kernel") or {}
        kcs = {d: stats.decode(r["correct"]) for d, r in kern.items()}
        if kern:
            if len(kern) == 1:
                acc, lo, hi = stats.wilson_accuracy(next(iter(kcs.values())))
                interval = "Wilson"
            else:
                acc, lo, hi = stats.bootstrap_two_level(np.stack([kcs[d] for d in sorted(kcs)]))
                interval = "two-level bootstrap (training draws x images)"
            out.append({"setting": setting, "net": cell["net"], "readout": readout, "depth": depth, "method": "kernel", "width": 0,
                        "seeds": 1, "train_draws": len(kern), "accuracy": acc, "acc_lo": lo, "acc_hi": hi,
                        "interval": interval, "n_test": next(iter(kern.values()))["n_test"]})
        for key in sorted(k for k in cell if k not in ("kernel", "net")):
            method, width = key
            sel = sorted(cell[key], key=lambda r: r["seed"])
            c = np.stack([stats.decode(r["correct"]) for r in sel])
            acc, lo, hi = stats.bootstrap_two_level(c)
            redrawn = len({_draw(r) for r in sel}) > 1
            row = {"setting": setting, "net": cell["net"], "readout": readout, "depth": depth, "method": method, "width": width,
                   "seeds": len(sel), "train_draws": len({_draw(r) for r in sel}), "accuracy": acc, "acc_lo": lo,
                   "acc_hi": hi, "interval": _interval_name(len(sel), redrawn),
                   "n_test": sel[0]["n_test"],
                   "chosen": ", ".join(f"{k}={sel[0][k]}" for k in ("route", "kappa", "lr_fraction", "lr", "epochs")
                                       if sel[0].get(k) is not None),
                   "val_accuracy": sel[0]["val_accuracy"],
                   "fallbacks": sum(r.get("choice_rank", 0) > 0 for r in sel),
                   "max_final_train_loss": max(r["final_train_loss"] for r in sel),
                   "min_train_accuracy": min(r["train_accuracy"] for r in sel)}
            missing = sorted({_draw(r) for r in sel} - set(kcs))
            if kcs and missing:
                raise ValueError(f"{cell['net']}: nets trained on training draw(s) {missing} have no kernel of that draw "
                                 "in the results: the run is incomplete or pooled from different runs")
            if kcs:
                kc = np.stack([kcs[_draw(r)] for r in sel])  # (S, M): each seed's own draw's kernel
                d, dlo, dhi = stats.bootstrap_two_level(c.astype(float) - kc)  # replicates resampled as pairs
                row.update(diff_to_kernel=d, diff_lo=dlo, diff_hi=dhi, kernel_accuracy=float(kc.mean()),
                           _p=[stats.mcnemar(ci, ki)["p"] for ci, ki in zip(c, kc)])
            out.append(row)
    _holm_per_setting(out)
    return out


def _net_title(row: dict, doc: dict) -> str:
    """The panel's net named by every model setting of its row (activation, bias, family / preset):
    ``cntk.Architecture(...).name`` of the row's model columns over the run's config."""
    model = dict((doc.get("config") or {}).get("model") or {})
    model.update((row.get("config") or {}).get("model") or {} if isinstance(row.get("config"), dict) else {})
    model.update({k[len("model."):]: v for k, v in row.items() if k.startswith("model.")})
    keys = ("fix_first_last", "filter_size", "activation", "abrelu_a", "abrelu_b", "bias_var")
    fields = {k: model[k] for k in keys if k in model}
    fields.update(family=row.get("family", model.get("family", "cnn")), depth=int(row["depth"]))
    if row.get("readout") in ("gap", "flatten"):
        fields["readout"] = row["readout"]
    try:
        return cntk.Architecture(**fields).name
    except (NetworkError, TypeError, ValueError):
        return row_name(row)


def plot(doc: dict, out_dir: str | Path):
    style()
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    summary = summarize(rows)
    panels = sorted({(s["setting"], s["readout"], s["depth"]) for s in summary}, key=lambda k: tuple(map(str, k)))
    readouts = sorted({p[:2] for p in panels}, key=lambda k: tuple(map(str, k)))
    depths = sorted({p[2] for p in panels})
    fig, axes = plt.subplots(len(readouts), len(depths), figsize=(max(10.0, 4.2 * len(depths)), 3.4 * len(readouts)),
                             squeeze=False, sharey=True)
    colors = {"ntk_net": "C0", "standard_net": "C3"}
    for (setting, readout, depth) in panels:
        ax = axes[readouts.index((setting, readout)), depths.index(depth)]
        sel = [s for s in summary if (s["setting"], s["readout"], s["depth"]) == (setting, readout, depth)]
        kern = next((s for s in sel if s["method"] == "kernel"), None)
        for method in ("ntk_net", "standard_net"):
            pts = sorted((s for s in sel if s["method"] == method), key=lambda s: s["width"])
            if not pts:
                continue
            w = [s["width"] for s in pts]
            acc = np.array([100 * s["accuracy"] for s in pts])
            err = np.array([[100 * (s["accuracy"] - s["acc_lo"]), 100 * (s["acc_hi"] - s["accuracy"])] for s in pts]).T
            ax.errorbar(w, acc, yerr=err, fmt="-o", ms=4, capsize=3, color=colors[method], label=LABELS[method])
            for r in rows:
                if r["method"] == method and (r.get("setting", ""), r["readout"], r["depth"]) == (setting, readout, depth):
                    ax.scatter(r["width"], 100 * r["accuracy"], s=8, color=colors[method], alpha=0.35)
        if kern:
            ax.axhline(100 * kern["accuracy"], color="black", lw=1.2, label=LABELS["kernel"])
            ax.axhspan(100 * kern["acc_lo"], 100 * kern["acc_hi"], color="black", alpha=0.08, lw=0)
        ax.set_xscale("log", base=2)
        title = _net_title(next(r for r in rows if (r.get("setting", ""), r["readout"], r["depth"])
                                == (setting, readout, depth)), doc)
        ax.set_title(title + (f" [{setting}]" if setting else ""), fontsize=9)
        ax.set_xlabel("width m")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()  # one legend above the panels: no point hidden
    fig.legend(handles, labels, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(1, len(labels)))
    trained = []
    for method, what in (("ntk_net", "NTK twins (MSE)"), ("standard_net", "standard CNNs (cross-entropy)")):
        nets = [r for r in rows if r["method"] == method]
        if nets:
            trained.append(f"{what}: final training loss ≤ {max(r['final_train_loss'] for r in nets):.3g}, training "
                           f"accuracy ≥ {100 * min(r['train_accuracy'] for r in nets):.1f} %")
    n_train, n_val, n_test = (common(rows, k) for k in ("n_train", "n_val", "n_test"))
    draws = len({_draw(r) for r in rows if r["method"] == "kernel"})
    replicate = (f"seeds, each with its own training draw of {n_train} images ({draws} draws), and test images resampled"
                 if draws > 1 else "seeds and test images resampled")
    kernel_band = (f"mean over the {draws} draws, band: its two-level bootstrap interval" if draws > 1
                   else "band: its Wilson interval")
    fig.tight_layout()
    fig.text(0.5, 0.0,
             f"{common(rows, 'data')}: {n_train} training images, {n_test} test images; hyperparameters (route / κ, lr, "
             f"epochs) chosen on {n_val} validation images from the training pool.  Lines: mean over seeds with a 95 % "
             f"two-level bootstrap interval ({replicate}); points: seeds; black: kernel regression "
             f"({kernel_band}).\n"
             f"Trained to (every net): {'; '.join(trained)}.\nRegime: small data ({n_train} images), where kernels are "
             "known to match or beat CNNs (Arora et al. 2020); the paper's CIFAR-10 finding (CNN-GAP about 5-6 points "
             "above CNTK-GAP) is a 50,000-image result.",
             ha="center", va="top", fontsize=7)
    paths = save_figure(fig, out_dir, "kernel_vs_network")
    plt.close(fig)
    write_atomic(Path(out_dir) / "table.md", _table(summary))
    return paths, summary


def _pct(s: dict, key: str = "accuracy", lo: str = "acc_lo", hi: str = "acc_hi") -> str:
    return f"{100 * s[key]:.1f} [{100 * s[lo]:.1f}, {100 * s[hi]:.1f}]"


def _table(summary: list[dict]) -> str:
    """table.md: a header saying which interval each row has and what Holm's families are; one row per model."""
    families = {s["setting"]: s["holm_family_size"] for s in summary if "holm_family_size" in s}
    redrawn = any(s.get("train_draws", 1) > 1 for s in summary)
    lines = [("Intervals: the kernel on D training draws: two-level bootstrap 95 % (draws and test images); the nets "
              "(S seeds, seed s initialised with s and trained on training draw s): two-level bootstrap 95 % (each "
              "resample draws S seeds and the test images with replacement); minus kernel: per seed, the net minus "
              "the kernel of its own draw, resampled the same way (paired on draws and images)."
              if redrawn else
              "Intervals: the kernel (one deterministic model): Wilson 95 %; the nets (S seeds): two-level bootstrap 95 % "
              "(each resample draws S seeds and the test images with replacement); minus kernel: the same, paired on "
              "the images."),
             "McNemar per seed against the kernel" + (" of its draw" if redrawn else "") + "; Holm family: every network-vs-kernel test of the run"
             + "".join(f"{' [' + k + ']' if k else ''} (m = {m})" for k, m in families.items())
             + "; Holm p < 0.05 survives.", "",
             "| net | depth | width | accuracy % [95 % CI] | interval | minus kernel, points [95 % CI] "
             "| McNemar p vs kernel (per seed) | Holm p (family) | chosen on validation | val % | final train loss (max) "
             "| train acc % (min) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        name = re.sub(r", depth \d+", "", s["net"])
        name += f" [{s['setting']}]" if s["setting"] else ""
        if s["method"] == "kernel":
            lines.append(f"| {name.replace('CNN', 'CNTK')} (kernel) | {s['depth']} | ∞ | {_pct(s)} | {s['interval']} "
                         "| | | | no ridge | | | |")
            continue
        diff = f"{100 * s['diff_to_kernel']:+.1f} [{100 * s['diff_lo']:+.1f}, {100 * s['diff_hi']:+.1f}]" if "diff_to_kernel" in s else ""
        lines.append(f"| {name}, {'NTK twin' if s['method'] == 'ntk_net' else 'standard'} | {s['depth']} | {s['width']} "
                     f"| {_pct(s)} | {s['interval']} | {diff} | {s.get('mcnemar_p', '')} | {s.get('holm_p', '')} "
                     f"| {s['chosen']} | {100 * s['val_accuracy']:.1f} "
                     f"| {s['max_final_train_loss']:.3g} | {100 * s['min_train_accuracy']:.1f} |")
    return "\n".join(lines) + "\n"


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=kernel_vs_network", "experiment.widths=[4]", "experiment.depths=[3]", "experiment.seeds=[0]",
             "experiment.epochs=1", "experiment.standard_lrs=[0.01]", "experiment.ntk_lr_fractions=[0.5]",
             "data.n_train=20", "data.n_val=10", "data.n_test=10"]]
