"""The kernel matrix beyond one process: train x train (upper triangle) and test x train in tiles
on disk (cntk.store.tiles), each Hydra job computing its round-robin share, resumable after a kill.

    python run.py -m experiment=gram experiment.job=0,1,2,3 experiment.num_jobs=4 hydra/launcher=local_parallel

Several kernels in one pass: ``experiment.kind=both`` (NTK and NNGP) and ``experiment.depths=[3,6]``
(depths besides ``model.depth``) fill one store per (depth, kind), each exactly the store a
single-kernel run with that ``model.depth`` and ``experiment.kind`` would make (``solve`` reads
it with those settings), from one recursion per tile (``cntk.kernels``).  ``experiment.also_fix=true``
(with model.fix_first_last=false) fills in the same pass the NTK stores of the paper's "fix"
(first layer and readout frozen) at every depth, each exactly the store of a separate run with
``model.fix_first_last=true experiment.kind=ntk`` (its NNGP is the unfixed one: no store for it);
with experiment.store they are its depthD-ntk-fix subfolders.

The store is tied to its inputs' identity (data set, chosen indices, preprocessing, raw bytes:
experiments/harness/data.py), so any threads=, launcher or job count computes, resumes and solves it.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from cntk.architecture import Architecture, ArchitectureError
from cntk.depths import kernels as cntk_kernels
from cntk.store.atomic import write_atomic
from cntk.store.tiles import TileStore, compute_tile_group
from experiments.harness.runner import ENDING

from experiments.harness.config import Config as RunConfig, ConfigError, ExperimentConfig, check
from experiments.harness.data import Dataset


@dataclass
class StoreConfig(ExperimentConfig):
    """A kernel matrix on disk: where, and which kernel (the rest comes from data / model / dtype)."""

    AXES: ClassVar[dict[str, str]] = {"model.readout": "readout", "model.depth": "depth", "experiment.kind": "kind"}
    REFUSED: ClassVar[dict[str, str]] = {"model.width": "the exact kernel has no width (it is the infinite-width "
                                                        "limit): remove model.width"}
    KINDS: ClassVar[tuple[str, ...]] = ("ntk", "nngp")
    store: str | None = None  # default: stores/DATA-SLUG-NTRAINxNTEST-KIND-DTYPE[-seedS], SLUG: Architecture.slug
    kind: str = "ntk"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kind in self.KINDS, "experiment.kind", f"must be {' or '.join(self.KINDS)}, got {self.kind!r}")


@dataclass
class Config(StoreConfig):
    NAME: ClassVar[str] = "gram"
    PARTITION: ClassVar[tuple[str, ...]] = ("experiment.job", "experiment.num_jobs")
    KINDS: ClassVar[tuple[str, ...]] = ("ntk", "nngp", "both")
    name: str = "gram"
    depths: list[int] = field(default_factory=list)  # more depths filled in the same pass as model.depth
    tile: int = 256  # images per tile side
    job: int = 0  # this job's index: it computes tiles job, job + num_jobs, ...
    num_jobs: int = 1
    backend: str = "auto"
    also_fix: bool = False  # also the NTK stores of model.fix_first_last=true, every depth, same pass

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.tile >= 1, "experiment.tile", f"must be >= 1, got {self.tile}")
        check(all(isinstance(d, int) and not isinstance(d, bool) for d in self.depths), "experiment.depths",
              f"must be a list of integer depths, got {self.depths!r}")
        check(len(set(self.depths)) == len(self.depths), "experiment.depths", f"has repeats: {self.depths!r}")
        check(self.num_jobs >= 1, "experiment.num_jobs", f"must be >= 1, got {self.num_jobs}")
        check(0 <= self.job < self.num_jobs, "experiment.job",
              f"must be in [0, experiment.num_jobs={self.num_jobs}), got {self.job}")


def readouts(cfg: RunConfig | dict[str, Any]) -> list[tuple[int, str, bool]]:
    """The (depth, kind, fix_first_last) kernels a config fills: model.depth and experiment.depths
    (gram), times experiment.kind (both: NTK and NNGP), with model.fix_first_last; with
    experiment.also_fix (gram) also (depth, "ntk", True) for every depth."""
    get = (lambda k: _dig(cfg, k)) if isinstance(cfg, dict) else (lambda k: _attr(cfg, k))
    kind, arch = get("experiment.kind"), _architecture(cfg)
    exp = cfg.get("experiment") or {} if isinstance(cfg, dict) else cfg.experiment
    more = exp.get("depths") if isinstance(exp, dict) else getattr(exp, "depths", None)
    also_fix = bool(exp.get("also_fix") if isinstance(exp, dict) else getattr(exp, "also_fix", False))
    depths = [arch.depth] + [int(d) for d in (more or []) if int(d) != arch.depth]  # solve has no experiment.depths
    out = [(d, k, arch.fix_first_last) for d in depths for k in (("ntk", "nngp") if kind == "both" else (kind,))]
    return out + [(d, "ntk", True) for d in depths] * (also_fix and not arch.fix_first_last)


def store_path(cfg: RunConfig | dict[str, Any], readout: tuple | None = None) -> Path:
    """Where the kernel ``readout`` = (depth, kind[, fix_first_last]) of this config lives (default:
    model.depth, experiment.kind and model.fix_first_last): experiment.store (with a DEPTH-KIND[-fix]
    subfolder when the config fills more than one kernel, -fix for the stores of experiment.also_fix),
    or the default name made of everything that identifies the matrix: the data, the architecture at
    that depth and fix (``Architecture.slug``), the sizes, the kernel and the dtype."""
    get = (lambda k: _dig(cfg, k)) if isinstance(cfg, dict) else (lambda k: _attr(cfg, k))
    arch = _architecture(cfg)
    depth, kind, fix = (*(readout or (arch.depth, get("experiment.kind"))), arch.fix_first_last)[:3]
    if get("experiment.store"):
        root = Path(get("experiment.store"))
        sub = f"depth{depth}-{kind}" + "-fix" * (fix != arch.fix_first_last)
        return root / sub if len(readouts(cfg)) > 1 else root
    name = [get("data.name"), dataclasses.replace(arch, depth=depth, fix_first_last=fix).slug,
            f"{get('data.n_train')}x{get('data.n_test')}", kind, get("dtype")]
    name += [f"seed{get('data.seed')}"] * bool(get("data.seed"))
    return Path("stores") / "-".join(str(p) for p in name)


def store_paths(cfg: RunConfig | dict[str, Any]) -> list[Path]:
    """Every store a config fills (one per ``readouts``)."""
    return [store_path(cfg, r) for r in readouts(cfg)]


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


def open_stores(cfg: RunConfig, data: Dataset, dtype: torch.dtype, readout: tuple | None = None):
    """(train store, test x train store or None, train inputs, test inputs) of one kernel of this
    config (``readout`` = (depth, kind[, fix_first_last]); default: model.depth, experiment.kind and
    model.fix_first_last)."""
    base = cfg.model.architecture()
    depth, kind, fix = (*(readout or (cfg.model.depth, cfg.experiment.kind)), base.fix_first_last)[:3]
    arch = dataclasses.replace(base, depth=depth, fix_first_last=fix)
    xtr = arch.inputs(data.x_train.to(dtype))
    xte = arch.inputs(data.x_test.to(dtype))
    root = store_path(cfg, (depth, kind, fix))
    ids = data.identity("train"), data.identity("test")
    tile = cfg.experiment.tile
    try:
        train = TileStore.open(root / "train", xtr, None, arch, kind, tile, (ids[0], None))
        test = TileStore.open(root / "test_train", xte, xtr, arch, kind, tile, (ids[1], ids[0])) if len(xte) else None
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
    stores = {str(p) for c in configs for p in store_paths(c)}
    return f"{sum(tiles_done(s) for s in stores)} tiles kept, rerun the same command to resume"


def _check_also_fix(cfg: RunConfig) -> None:
    """experiment.also_fix needs an unfixed model whose fix variant exists at every depth (one line)."""
    if not cfg.experiment.also_fix:
        return
    base = cfg.model.architecture()
    check(not base.fix_first_last, "experiment.also_fix", "adds the stores of model.fix_first_last=true to an "
          "unfixed model's; with model.fix_first_last=true set experiment.also_fix=false")
    for depth in {base.depth, *cfg.experiment.depths}:
        try:
            dataclasses.replace(base, depth=depth, fix_first_last=True)
        except ArchitectureError as err:
            raise ConfigError(f"experiment.also_fix: no fix variant at depth {depth} ({err})") from None


def compute_tiles(stores: list[TileStore], i: int, j: int, rows: torch.Tensor, cols: torch.Tensor | None,
                  **kernel_options) -> list[str]:
    """``compute_tile_group`` where the stores also differ in fix_first_last (experiment.also_fix): tile
    (i, j) of every store that lacks it in one pass (``cntk.kernels(..., fixes=(False, True))``);
    each store's state before."""
    fix_of = [bool(s.meta.arch.get("fix_first_last")) for s in stores]
    if len(set(fix_of)) == 1:
        return compute_tile_group(stores, i, j, rows, cols, **kernel_options)
    states = [s.state(i, j) for s in stores]
    todo = [(s, f) for s, f, state in zip(stores, fix_of, states) if state != "done"]
    if len({f for _, f in todo}) <= 1:  # what is left needs one fix only
        if todo:
            compute_tile_group([s for s, _ in todo], i, j, rows, cols, **kernel_options)
        return states

    def key(s: TileStore) -> dict:
        m = dataclasses.asdict(s.meta)
        m["arch"] = {k: v for k, v in m["arch"].items() if k not in ("depth", "fix_first_last")}
        return {k: v for k, v in m.items() if k != "kind"}

    if any(key(s) != key(todo[0][0]) for s, _ in todo):
        raise ValueError(f"the stores of {todo[0][0].path.parent} differ in more than depth, kind and fix_first_last: "
                         "they cannot share one pass")
    lead = todo[0][0]
    arch = Architecture(**{**lead.meta.arch, "fix_first_last": False})
    depths = sorted({s.readout()[0] for s, _ in todo})
    kinds = [k for k in ("ntk", "nngp") if any(s.readout()[1] == k for s, _ in todo)]
    rs, cs = lead.bounds(i, j)
    other = None if lead.meta.symmetric and i == j else (rows if cols is None else cols)[cs]
    t0 = time.perf_counter()
    blocks = cntk_kernels(rows[rs], other, arch, depths=depths, kinds=kinds, fixes=(False, True), progress=False,
                          **kernel_options)
    share = (time.perf_counter() - t0) / len(todo)
    for s, f in todo:
        s.write_tile(i, j, blocks[(*s.readout(), f)].cpu().numpy(), seconds=share)
    return states


def run(cfg: RunConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> list[dict]:
    g = cfg.experiment
    _check_also_fix(cfg)
    kernels = readouts(cfg)
    opened = [open_stores(cfg, data, dtype, r) for r in kernels]  # [(train, test, xtr, xte)] per kernel
    xtr, xte = opened[0][2], opened[0][3]
    trains, tests = [o[0] for o in opened], [o[1] for o in opened]
    tasks = [(trains, "train", ij, xtr, None) for ij in trains[0].meta.tiles()]
    if tests[0] is not None:
        tasks += [(tests, "test_train", ij, xte, xtr) for ij in tests[0].meta.tiles()]
    mine = tasks[g.job :: g.num_jobs]
    rows = []
    try:
        for stores, name, (i, j), r, c in tqdm(mine, desc=f"gram job {g.job}/{g.num_jobs}", unit="tile",
                                               disable=not cfg.progress):
            t0 = time.perf_counter()
            try:
                before = compute_tiles(stores, i, j, r, c, device=device, backend=g.backend)
            except OSError as err:
                raise ConfigError(_unwritable(err, stores[0].path)) from None
            seconds = time.perf_counter() - t0
            if ENDING["signal"] is not None:  # a Ctrl-C / SIGTERM whose KeyboardInterrupt a library swallowed
                raise KeyboardInterrupt
            rs, cs = stores[0].bounds(i, j)
            n = (rs.stop - rs.start) * (cs.stop - cs.start)
            if stores[0].meta.symmetric and i == j:
                n = (rs.stop - rs.start) * (rs.stop - rs.start + 1) // 2
            share = sum(b != "done" for b in before)
            for store, state, (depth, kind, fix) in zip(stores, before, kernels):
                rows.append({
                    "store": str(store.path), "block": name, "tile_row": i, "tile_col": j, "job": g.job,
                    "tile_sha256": store.checksum(i, j),
                    "num_jobs": g.num_jobs, "state_before": state, "entries": 0 if state == "done" else n,
                    "seconds": seconds / share if share and state != "done" else 0.0,
                    "readout": cfg.model.readout, "depth": depth, "kind": kind, "fix_first_last": fix,
                    "pass_kernels": share,
                })
    except KeyboardInterrupt:
        from experiments.harness.runner import Interrupted

        raise Interrupted(f"{sum(tiles_done(p) for p in store_paths(cfg))} tiles kept, rerun the same command to "
                          "resume") from None
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
