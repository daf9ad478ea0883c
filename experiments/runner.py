"""What run.py does with a composed config: validate, load data, run, save, plot."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import get, results
from .common import resolve_device, resolve_dtype, set_seed, set_threads
from .config import Config, ConfigError
from .data import load

log = logging.getLogger("experiments")


def validate(dcfg: DictConfig) -> Config:
    """The typed config; raises ConfigError naming the key for impossible values."""
    try:
        return OmegaConf.to_object(dcfg)
    except ConfigError:
        raise
    except ValueError as err:  # OmegaConf wraps __post_init__ errors in its own types
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(err).splitlines()[0]) from err


def execute(dcfg: DictConfig, out_dir: str | Path, job_num: int = 0) -> dict:
    """Run the configured experiment and write results.{csv,json}, summary.csv, figures into out_dir.
    job_num (Hydra's job number in a sweep) picks the GPU when device=auto."""
    cfg = validate(dcfg)
    set_seed(cfg.seed)
    threads = set_threads(cfg.threads)
    device, dtype = resolve_device(cfg.device, job_num), resolve_dtype(cfg.dtype)
    exp = get(cfg.experiment.name)
    data = load(cfg.data)
    log.info("experiment %s on %s (%d train / %d test), device %s, %s, %d CPU threads", cfg.experiment.name,
             cfg.data.name, len(data.x_train), len(data.x_test), device, cfg.dtype, threads)
    t0 = time.perf_counter()
    rows = exp.run(cfg, data, device, dtype)
    wall = time.perf_counter() - t0
    rows = [{"experiment": cfg.experiment.name, "data": cfg.data.name, **r, "run_wall_seconds": round(wall, 3)}
            for r in rows]
    config = OmegaConf.to_container(dcfg, resolve=True)
    results.save(out_dir, rows, config, results.provenance(device, threads))
    paths, summary = exp.plot(results.load(out_dir), out_dir)
    if summary:
        results.write_csv(Path(out_dir) / "summary.csv", summary)
    written = [results.RESULTS_CSV, results.RESULTS_JSON] + (["summary.csv"] if summary else []) + [p.name for p in paths]
    log.info("wrote %s into %s (%.1f s)", ", ".join(written), out_dir, wall)
    return {"rows": rows, "figures": paths, "summary": summary}

