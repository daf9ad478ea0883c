"""The kernel matrix beyond one process: train x train (upper triangle) and test x train in tiles
on disk (cntk.store.tiles), each Hydra job computing its round-robin share, resumable after a kill.

    python run.py -m experiment=gram experiment.job=0,1,2,3 experiment.num_jobs=4 hydra/launcher=local_parallel

The store is tied to its inputs' identity (data set, chosen indices, preprocessing, raw bytes:
experiments/harness/data.py), so any threads=, launcher or job count computes, resumes and solves it.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from cntk.architecture import Architecture
from cntk.store.atomic import write_atomic
from cntk.store.tiles import TileStore
from experiments.harness.runner import ENDING

from experiments.harness.config import Config as RunConfig, ConfigError, ExperimentConfig, check
from experiments.harness.data import Dataset


@dataclass
class StoreConfig(ExperimentConfig):
    """A kernel matrix on disk: where, and which kernel (the rest comes from data / model / dtype)."""

    AXES: ClassVar[dict[str, str]] = {"model.readout": "readout", "model.depth": "depth", "experiment.kind": "kind"}
    REFUSED: ClassVar[dict[str, str]] = {"model.width": "the exact kernel has no width (it is the infinite-width "
                                                        "limit): remove model.width"}
    store: str | None = None  # default: stores/DATA-SLUG-NTRAINxNTEST-KIND-DTYPE[-seedS], SLUG: Architecture.slug
    kind: str = "ntk"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kind in ("ntk", "nngp"), "experiment.kind", f"must be ntk or nngp, got {self.kind!r}")


@dataclass
class Config(StoreConfig):
    NAME: ClassVar[str] = "gram"
    PARTITION: ClassVar[tuple[str, ...]] = ("experiment.job", "experiment.num_jobs")
    name: str = "gram"
    tile: int = 256  # images per tile side
    job: int = 0  # this job's index: it computes tiles job, job + num_jobs, ...
    num_jobs: int = 1
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.tile >= 1, "experiment.tile", f"must be >= 1, got {self.tile}")
        check(self.num_jobs >= 1, "experiment.num_jobs", f"must be >= 1, got {self.num_jobs}")
        check(0 <= self.job < self.num_jobs, "experiment.job",
              f"must be in [0, experiment.num_jobs={self.num_jobs}), got {self.job}")


def store_path(cfg: RunConfig | dict[str, Any]) -> Path:
    """experiment.store, or the default name made of everything that identifies the matrix: the data,
    the architecture (``Architecture.slug``), the sizes, the kernel and the dtype."""
    get = (lambda k: _dig(cfg, k)) if isinstance(cfg, dict) else (lambda k: _attr(cfg, k))
    if get("experiment.store"):
        return Path(get("experiment.store"))
    name = [get("data.name"), _architecture(cfg).slug, f"{get('data.n_train')}x{get('data.n_test')}",
            get("experiment.kind"), get("dtype")]
    name += [f"seed{get('data.seed')}"] * bool(get("data.seed"))
    return Path("stores") / "-".join(str(p) for p in name)


def _architecture(cfg: RunConfig | dict[str, Any]) -> Architecture:
    if not isinstance(cfg, dict):
        return cfg.model.architecture()
    model = cfg.get("model") or {}
    return Architecture(**{f.name: model[f.name] for f in dataclasses.fields(Architecture) if f.name in model})


def _attr(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _dig(doc: dict, key: str) -> Any:
    for part in key.split("."):
        doc = (doc or {}).get(part)
    return doc


def open_stores(cfg: RunConfig, data: Dataset, dtype: torch.dtype):
    """(train store, test x train store or None, train inputs, test inputs) for this config."""
    arch = cfg.model.architecture()
    xtr = arch.inputs(data.x_train.to(dtype))
    xte = arch.inputs(data.x_test.to(dtype))
    root = store_path(cfg)
    ids = data.identity("train"), data.identity("test")
    try:
        train = TileStore.open(root / "train", xtr, None, arch, cfg.experiment.kind, cfg.experiment.tile, (ids[0], None))
        test = (TileStore.open(root / "test_train", xte, xtr, arch, cfg.experiment.kind, cfg.experiment.tile, (ids[1], ids[0]))
                if len(xte) else None)
        labels = root / "labels.npz"
        if not labels.exists():
            buf = io.BytesIO()
            np.savez(buf, y_train=data.y_train.numpy(), y_test=data.y_test.numpy())
            write_atomic(labels, buf.getvalue())
    except OSError as err:
        raise ConfigError(_unwritable(err, root)) from None
    return train, test, xtr, xte


def _unwritable(err: OSError, where: Path) -> str:
    """One line for a store that cannot be written (full disk, permissions): advice that keeps the
    finished tiles (they stay valid wherever the folder goes)."""
    return (f"experiment.store: cannot write to {err.filename or where} ({err.strerror or err}): free space or fix "
            "the permissions and rerun the same command (finished tiles are kept), or move the store folder to "
            "another disk and set experiment.store to its new path")


def tiles_done(root: str | Path) -> int:
    """Finished tiles under a store folder (0 when it does not exist)."""
    root = Path(root)
    return sum(len(TileStore.load(p).status()["done"]) for p in (root / "train", root / "test_train")
               if (p / "meta.json").exists())


def interrupt_note(configs: list[dict[str, Any]]) -> str:
    """What an interrupted sweep of gram jobs (their configs) kept: the tiles of their stores."""
    stores = {str(store_path(c)) for c in configs}
    return f"{sum(tiles_done(s) for s in stores)} tiles kept, rerun the same command to resume"


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.experiment
    train, test, xtr, xte = open_stores(cfg, data, dtype)
    tasks = [(train, "train", ij, xtr, None) for ij in train.meta.tiles()]
    if test is not None:
        tasks += [(test, "test_train", ij, xte, xtr) for ij in test.meta.tiles()]
    mine = tasks[g.job :: g.num_jobs]
    rows = []
    try:
        for store, name, (i, j), r, c in tqdm(mine, desc=f"gram job {g.job}/{g.num_jobs}", unit="tile",
                                              disable=not cfg.progress):
            t0 = time.perf_counter()
            try:
                before = store.compute_tile(i, j, r, c, device=device, backend=g.backend)
            except OSError as err:
                raise ConfigError(_unwritable(err, store.path)) from None
            seconds = time.perf_counter() - t0
            if ENDING["signal"] is not None:  # a Ctrl-C / SIGTERM whose KeyboardInterrupt a library swallowed
                raise KeyboardInterrupt
            rs, cs = store.bounds(i, j)
            n = (rs.stop - rs.start) * (cs.stop - cs.start)
            if store.meta.symmetric and i == j:
                n = (rs.stop - rs.start) * (rs.stop - rs.start + 1) // 2
            rows.append({
                "store": str(store.path), "block": name, "tile_row": i, "tile_col": j, "job": g.job,
                "tile_sha256": store.checksum(i, j),
                "num_jobs": g.num_jobs, "state_before": before, "entries": 0 if before == "done" else n,
                "seconds": seconds, "readout": cfg.model.readout, "depth": cfg.model.depth, "kind": g.kind,
            })
    except KeyboardInterrupt:
        from experiments.harness.runner import Interrupted

        raise Interrupted(f"{tiles_done(store_path(cfg))} tiles kept, rerun the same command to resume") from None
    return rows


def plot(doc: dict, out_dir: str | Path):
    """No figure: per store and job, tiles computed or skipped and entries per second."""
    rows = doc["rows"]
    summary = []
    groups = sorted({(str(Path(r["store"]).parent), r.get("job", 0)) for r in rows})
    for store, job in groups:
        sel = [r for r in rows if (str(Path(r["store"]).parent), r.get("job", 0)) == (store, job)]
        entries = sum(r["entries"] for r in sel)
        seconds = sum(r["seconds"] for r in sel if r["state_before"] != "done")
        summary.append({"store": store, "job": job, "tiles": len(sel),
                        "computed": sum(r["state_before"] != "done" for r in sel),
                        "skipped": sum(r["state_before"] == "done" for r in sel), "entries": entries,
                        "compute_seconds": round(seconds, 3),
                        "entries_per_s": round(entries / seconds, 2) if seconds > 0 else float("nan")})
    return [], summary


def smoke(tmp: Path) -> list[list[str]]:
    return [["experiment=gram", "data.n_train=12", "data.n_test=6", "experiment.tile=8", f"experiment.store={tmp / 'store'}"]]
