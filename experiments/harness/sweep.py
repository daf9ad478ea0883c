"""The shared loop of the grid experiments: readout x depth (one architecture each) x width x seed,
with one progress bar.  Written once; experiments supply what to do per architecture and per point."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from cntk import Architecture

from experiments.harness.config import Config, ConfigError

Rows = list[dict[str, Any]]
log = logging.getLogger("experiments")


def architectures(cfg: Config) -> list[tuple[str, int, Architecture]]:
    """(readout label, depth, architecture) for every readout x depth of the grid; the readout label
    of an fc net is "none" (it has no readout choice)."""
    out = []
    for readout in cfg.experiment.readouts:
        for depth in cfg.experiment.depths:
            arch = cfg.model.architecture(readout=readout, depth=depth)
            out.append((arch.readout_label, depth, arch))
    return out


def run(cfg: Config, prepare: Callable[[Architecture], tuple[Any, Rows]],
        measure: Callable[[Any, Architecture, int, int], dict | Rows], *, input_shape: tuple[int, ...],
        prepare_steps: int = 0) -> Rows:
    """For every architecture: ``ctx, rows = prepare(arch)`` (e.g. the exact kernel, and rows that
    belong to the architecture alone); then for every width and seed ``measure(ctx, arch, width,
    seed)`` -> a row or a list of rows.  Every row gets family, readout, depth, net (the architecture's
    label; and width and seed for the measured ones).  ``prepare_steps``: progress-bar units one
    prepare call counts for.  Widths whose net on ``input_shape`` (one image, as the data has it)
    holds more hidden weights than ``experiment.max_weights`` (``Architecture.hidden_weights``) are
    skipped, with a log line."""
    e = cfg.experiment
    archs = architectures(cfg)
    rows: Rows = []
    total = len(archs) * (prepare_steps + len(e.widths) * len(e.seeds))
    with tqdm(total=total, desc=e.name, disable=not cfg.progress) as bar:
        for readout, depth, arch in archs:
            where = {"family": arch.family, "readout": readout, "depth": depth, "net": arch.name}
            shape = tuple(arch.inputs(torch.zeros(1, *input_shape)).shape[1:])
            if err := arch.input_shape_error(shape):  # before any work, naming the key
                raise ConfigError(f"model.family: {err} (the data's inputs)")
            ctx, own = prepare(arch)
            rows += [{**where, **r} for r in own]
            bar.update(prepare_steps)
            for width in e.widths:
                weights = arch.hidden_weights(shape, width)
                if e.max_weights and weights > e.max_weights:
                    log.info("skipped %s width %d: %d hidden weights > experiment.max_weights=%d", arch.name, width,
                             weights, e.max_weights)
                    bar.update(len(e.seeds))
                    continue
                for seed in e.seeds:
                    out = measure(ctx, arch, width, seed)
                    rows += [{**where, "width": width, "seed": seed, **r} for r in ([out] if isinstance(out, dict) else out)]
                    bar.update()
    return rows


def refuse_unbuildable(cfg: Config, data: Any, dtype: torch.dtype, parameterisations=("ntk",)) -> None:
    """Build every architecture's finite net at width 1 (cheap) before any kernel work: a net the finite
    side cannot build is refused at start, naming the model key."""
    from cntk.errors import NetworkError
    import finite_nets
    from experiments.harness.config import ModelConfig

    for _, _, arch in architectures(cfg):
        shape = tuple(arch.inputs(torch.zeros(1, *data.x_train.shape[1:])).shape[1:])
        for par in parameterisations:
            try:
                finite_nets.build(arch, 1, input_shape=shape, dtype=dtype, device="cpu", parameterisation=par)
            except (NetworkError, ValueError) as err:
                key = getattr(err, "field", "family")
                key = key if key in ModelConfig.__dataclass_fields__ else "family"
                raise ConfigError(f"model.{key}: the finite net of {arch.name} ({par} parameterisation) cannot be "
                                  f"built: {str(err).splitlines()[0]}") from None
