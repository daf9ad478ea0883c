"""Small shared pieces of the experiments: device, dtype, row labels, fits, figure style."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from cntk.architecture import READOUTS, Architecture, ArchitectureError

from experiments.harness.results import write_atomic


def resolve_device(name: str, job_num: int = 0) -> torch.device:
    """``auto``: CPU without CUDA; else one GPU per job, cuda:(job_num mod visible GPUs), so that
    joblib jobs on a multi-GPU machine spread over its GPUs (a SLURM job sees only its own GPU)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", job_num % torch.cuda.device_count())
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is present: use device=auto or device=cpu")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def model_inputs(x: torch.Tensor, arch: Architecture) -> torch.Tensor:
    """``arch.inputs(x)`` (kept for callers outside experiments/, e.g. benchmarks/gram_scaling.py)."""
    return arch.inputs(x)


def loglog_fit(widths, errors) -> dict[str, float]:
    """Least-squares slope of log(error) on log(width) with a 95 % confidence interval."""
    from scipy import stats

    lx, ly = np.log(np.asarray(widths, float)), np.log(np.asarray(errors, float))
    n = len(lx)
    if n < 3 or np.ptp(lx) == 0:
        return {"slope": float("nan"), "slope_lo": float("nan"), "slope_hi": float("nan"), "intercept": float("nan")}
    res = stats.linregress(lx, ly)
    half = stats.t.ppf(0.975, n - 2) * res.stderr
    return {"slope": res.slope, "slope_lo": res.slope - half, "slope_hi": res.slope + half, "intercept": res.intercept}


def theorem_31_error(width: np.ndarray, n_layers: int, delta: float, constant: float) -> np.ndarray:
    """Arora et al. Theorem 3.1: width m >= C L^6 / eps^4 log(L / delta) guarantees
    |Theta_m - Theta| <= (L + 1) eps for inputs with ||x|| <= 1, w.p. 1 - delta; solved for the
    error: (L + 1) (C L^6 log(L / delta) / m)^(1/4).  C is not given by the theorem."""
    L = n_layers
    return (L + 1) * (constant * L**6 * math.log(max(L, 2) / delta) / np.asarray(width, float)) ** 0.25


def style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """PNG (200 dpi) and PDF, each written atomically."""
    import io

    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=200, bbox_inches="tight")
        path = Path(out_dir) / f"{name}.{ext}"
        write_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: what SLURM or taskset granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Cap this job's CPU threads (torch, and numba when installed); 0 means ``available_cores()``.
    Several jobs on one machine (hydra/launcher=local_parallel) should share the cores:
    threads = cores / jobs.  Returns the count set."""
    n = threads or available_cores()
    try:
        import numba

        # numba first: launching its OpenMP threading layer resets OpenMP's thread count, torch's too
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # it cannot go above its start-up count
    except ImportError:
        pass
    torch.set_num_threads(n)
    return n


def row_name(row: dict) -> str:
    """The label of the net a result row measured (``Architecture.name``, kept in its ``net`` column;
    rebuilt from family, readout and depth for rows written before that column)."""
    if row.get("net"):
        return row["net"]
    readout = row.get("readout")
    try:
        arch = Architecture(family=row.get("family", "cnn"), depth=int(row["depth"]),
                            readout=readout if readout in READOUTS else "gap")
    except ArchitectureError:
        return f"{row.get('family', 'cnn')} {readout}, depth {row['depth']}"
    return arch.name


def series_name(rows: list[dict]) -> str:
    """The legend label of a group of rows: its net, and its setting when a sweep varied one."""
    r = rows[0]
    name = row_name(r)
    return f"{name} [{r['setting']}]" if r.get("setting") else name


def by_group(rows: list[dict], keys: tuple[str, ...] = ("readout", "depth")) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped by their setting (what a sweep varied, experiments/harness/overrides.py) and ``keys``,
    sorted: no fit or mean ever pools rows of different settings."""
    full = ("setting", "family", *keys)
    key = lambda r: tuple(str(r.get(k, "")) if k in ("setting", "family") else r[k] for k in full)  # noqa: E731
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return [(k[2:], groups[k]) for k in sorted(groups, key=lambda k: tuple(map(str, k[:2])) + k[2:])]


def common(rows: list[dict], key: str, fmt: str = "") -> str:
    """The value of ``key`` shared by all rows, formatted; 'varies (see legend)' when rows differ."""
    values = {json.dumps(r.get(key), default=str) for r in rows}
    if len(values) != 1:
        return "varies (see legend)"
    value = rows[0].get(key)
    return format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)


def width_series(ax, rows: list[dict], key: str, color, label: str, *, scale: float = 1.0, band: bool = False,
                 slope: bool = True) -> dict[str, float]:
    """One series against width: every seed as a point, the seed mean as a line (with the seed
    range as a band), and the log-log slope with its 95 % CI in the label.  Returns the fit."""
    widths = sorted({r["width"] for r in rows})
    vals = [np.array([scale * r[key] for r in rows if r["width"] == w]) for w in widths]
    fit = loglog_fit([r["width"] for r in rows], [r[key] for r in rows])
    ax.scatter([r["width"] for r in rows], [scale * r[key] for r in rows], s=10, color=color, alpha=0.35)
    if slope and np.isfinite(fit["slope"]):
        label += f": slope {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]"
    ax.plot(widths, [v.mean() for v in vals], "-o", color=color, ms=4, label=label)
    if band and len(vals[0]) > 1:
        ax.fill_between(widths, [v.min() for v in vals], [v.max() for v in vals], color=color, alpha=0.15, lw=0)
    return fit
