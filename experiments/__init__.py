"""Hydra experiments: each module has ``run(cfg, data, device, dtype) -> rows`` and
``plot(results_doc, out_dir) -> (figure paths, summary rows)``; run.py composes them."""
from __future__ import annotations

import importlib
from types import ModuleType


def get(name: str) -> ModuleType:
    """The experiment module called ``name`` (see experiments.config.EXPERIMENTS)."""
    from .config import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: use one of {EXPERIMENTS}")
    return importlib.import_module(f"{__name__}.{name}")
