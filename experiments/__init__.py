"""Hydra experiments, discovered from ``conf/experiment/*.yaml``: each file NAME.yaml has a module
``experiments/NAME.py`` that defines

    Config                         its schema: a dataclass extending experiments.harness.config.ExperimentConfig
                                   (or GridExperiment), NAME set, with the fields it reads and their checks
    run(cfg, data, device, dtype)  -> result rows (list of dicts)
    plot(doc, out_dir)             -> (figure paths, summary rows), from a results document alone
    smoke(tmp)                     -> the runs (lists of overrides) of its smallest end-to-end test

and may define

    interrupt_note(configs)        -> what an interrupted sweep of its jobs (their configs, as dicts)
                                      kept, in one line (e.g. gram: the tiles on disk)

Adding an experiment: write experiments/NAME.py and conf/experiment/NAME.yaml (its defaults list
starts with ``/schema_experiment_NAME@experiment``) and a test; nothing else is listed anywhere.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def names() -> list[str]:
    """Every experiment: the option files of the ``experiment`` config group."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def get(name: str) -> ModuleType:
    """The experiment module called ``name``."""
    if name not in names():
        raise ValueError(f"unknown experiment {name!r}: use one of {names()}")
    return importlib.import_module(f"{__name__}.{name}")
