"""The kernel matrix beyond one process: train x train (upper triangle) and test x train in tiles
on disk (cntk.tiles), each Hydra job computing its round-robin share, resumable after a kill.

    python run.py -m experiment=gram gram.job=0,1,2,3 gram.num_jobs=4 hydra/launcher=local_parallel
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cntk.tiles import TileStore
from cntk.atomic import write_atomic

from .common import architecture, model_inputs
from .config import Config
from .data import Dataset


def open_stores(cfg: Config, data: Dataset, dtype: torch.dtype):
    """(train store, test x train store or None, train inputs, test inputs) for this config."""
    arch = architecture(cfg.model)
    xtr = model_inputs(data.x_train.to(dtype), arch)
    xte = model_inputs(data.x_test.to(dtype), arch)
    root = Path(cfg.gram.store)
    train = TileStore.open(root / "train", xtr, None, arch, cfg.gram.kind, cfg.gram.tile)
    test = TileStore.open(root / "test_train", xte, xtr, arch, cfg.gram.kind, cfg.gram.tile) if len(xte) else None
    labels = root / "labels.npz"
    if not labels.exists():
        import io

        buf = io.BytesIO()
        np.savez(buf, y_train=data.y_train.numpy(), y_test=data.y_test.numpy())
        write_atomic(labels, buf.getvalue())
    return train, test, xtr, xte


def run(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.gram
    train, test, xtr, xte = open_stores(cfg, data, dtype)
    tasks = [(train, "train", ij, xtr, None) for ij in train.meta.tiles()]
    if test is not None:
        tasks += [(test, "test_train", ij, xte, xtr) for ij in test.meta.tiles()]
    mine = tasks[g.job :: g.num_jobs]
    rows = []
    for store, name, (i, j), r, c in tqdm(mine, desc=f"gram job {g.job}/{g.num_jobs}", unit="tile",
                                          disable=not cfg.progress):
        t0 = time.perf_counter()
        before = store.compute_tile(i, j, r, c, device=device, backend=g.backend)
        seconds = time.perf_counter() - t0
        rs, cs = store.bounds(i, j)
        n = (rs.stop - rs.start) * (cs.stop - cs.start)
        if store.meta.symmetric and i == j:
            n = (rs.stop - rs.start) * (rs.stop - rs.start + 1) // 2
        rows.append({
            "store": str(store.path), "block": name, "tile_row": i, "tile_col": j, "job": g.job,
            "num_jobs": g.num_jobs, "state_before": before, "entries": 0 if before == "done" else n,
            "seconds": seconds, "readout": cfg.model.readout, "depth": cfg.model.depth,
        })
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
