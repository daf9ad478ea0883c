"""The shared loop of the grid experiments: readout x depth (one architecture each) x width x seed,
with one progress bar.  Written once; experiments supply what to do per architecture and per point."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from cntk import Architecture

from experiments.harness.config import Config

Rows = list[dict[str, Any]]
log = logging.getLogger("experiments")


def hidden_weights(arch: Architecture, width: int) -> int:
    """Weights of the net's m x m hidden layers, (L - 1) q^2 m^2 (q = 1 for fc): what its cost grows with."""
    q2 = arch.filter_size**2 if arch.family == "cnn" else 1
    return (arch.n_act_layers - 1) * q2 * width * width


def architectures(cfg: Config) -> list[tuple[str, int, Architecture]]:
    """(readout label, depth, architecture) for every readout x depth of the grid; the readout label
    of an fc net is "none" (it has no readout choice)."""
    out = []
    for readout in cfg.experiment.readouts:
        for depth in cfg.experiment.depths:
            arch = cfg.model.architecture(readout=readout, depth=depth)
            out.append(("none" if arch.family == "fc" else readout, depth, arch))
    return out


def run(cfg: Config, prepare: Callable[[Architecture], tuple[Any, Rows]],
        measure: Callable[[Any, Architecture, int, int], dict | Rows], *, prepare_steps: int = 0) -> Rows:
    """For every architecture: ``ctx, rows = prepare(arch)`` (e.g. the exact kernel, and rows that
    belong to the architecture alone); then for every width and seed ``measure(ctx, arch, width,
    seed)`` -> a row or a list of rows.  Every row gets family, readout, depth (and width and seed
    for the measured ones).  ``prepare_steps``: progress-bar units one prepare call counts for.
    Widths whose net exceeds ``experiment.max_weights`` (``hidden_weights``) are skipped, with a log line."""
    e = cfg.experiment
    archs = architectures(cfg)
    rows: Rows = []
    total = len(archs) * (prepare_steps + len(e.widths) * len(e.seeds))
    with tqdm(total=total, desc=e.name, disable=not cfg.progress) as bar:
        for readout, depth, arch in archs:
            where = {"family": arch.family, "readout": readout, "depth": depth}
            ctx, own = prepare(arch)
            rows += [{**where, **r} for r in own]
            bar.update(prepare_steps)
            for width in e.widths:
                if e.max_weights and hidden_weights(arch, width) > e.max_weights:
                    log.info("skipped %s depth %d width %d: %d hidden weights > experiment.max_weights=%d", readout,
                             depth, width, hidden_weights(arch, width), e.max_weights)
                    bar.update(len(e.seeds))
                    continue
                for seed in e.seeds:
                    out = measure(ctx, arch, width, seed)
                    rows += [{**where, "width": width, "seed": seed, **r} for r in ([out] if isinstance(out, dict) else out)]
                    bar.update()
    return rows
