"""The override rule: every key a user overrides either changes what is computed (and shows in the
result rows) or is refused at start with one line naming the key to use instead.

- ``model.readout`` / ``model.depth`` / ``model.width`` (set directly, or by choosing ``model=NAME``,
  whose file sets family and readout) become the one-value grid of an experiment that sweeps
  ``experiment.readouts`` / ``depths`` / ``widths``; setting both is refused.
- Model keys that change nothing for the architecture (``Architecture.unused_fields``: an fc net
  has no readout and no filter) are refused.
- An experiment's ``REFUSED`` keys (e.g. ``model.width`` for the exact-kernel ``gram``) are refused.
- An experiment key that another key of the same experiment leaves unread (its ``DEPENDS``, e.g.
  ``experiment.cg_tol`` with ``experiment.solver=cholesky``) is refused when set explicitly while
  idle, naming both keys and the remedy.
- Every overridden key (except where and how fast to run: device, threads, progress) becomes a
  column of every result row of its job, with its value; a sweep's aggregation separates rows
  by every such key whose value differs between jobs (``settings``), except the experiment's AXES
  (already row columns: width, depth, readout, seed) and PARTITION keys (work split over jobs).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from cntk.architecture import Architecture
from cntk.errors import NetworkError

from experiments import CONF_DIR
from experiments.harness.config import ConfigError, GridExperiment, dependencies

ENVIRONMENT_KEYS = ("device", "threads", "progress")  # where and how fast, not what
GROUPS = ("data", "model", "experiment")
GRID = {"readout": "readouts", "depth": "depths", "width": "widths"}


@dataclass(frozen=True)
class Override:
    key: str  # "model.depth", or a group name for a group choice ("model", "data")
    value: str  # as typed
    is_group: bool


def parse(task_overrides: list[str] | tuple[str, ...]) -> list[Override]:
    """The task overrides of one job (Hydra's ``overrides.task``: sweeps already expanded)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = ov.key_or_group
        if key.startswith("hydra") or ov.is_delete():
            continue
        out.append(Override(key, ov.get_value_element_as_str(), key in GROUPS or "/" in key))
    return out


def explicit_keys(overrides: list[Override]) -> set[str]:
    """Config keys the user set: direct overrides, and the fields a chosen model file sets."""
    keys = set()
    for ov in overrides:
        if not ov.is_group:
            keys.add(ov.key)
        elif ov.key == "model":
            path = CONF_DIR / "model" / f"{ov.value}.yaml"
            fields = yaml.safe_load(path.read_text()) if path.exists() else {}
            keys |= {f"model.{k}" for k in (fields or {}) if k != "defaults"}
    return keys


def apply(dcfg: DictConfig, overrides: list[Override], schema: type) -> DictConfig:
    """The config with explicit model keys turned into one-value grids; refuses what has no effect."""
    explicit = explicit_keys(overrides)
    name = OmegaConf.select(dcfg, "experiment.name")
    for key in sorted(explicit):
        if key in schema.REFUSED:
            raise ConfigError(f"{key}: {schema.REFUSED[key]}")
    if "data.n_val" in explicit and not schema.USES_VALIDATION:
        raise ConfigError(f"data.n_val: {name} chooses no hyperparameter on a validation split: remove data.n_val")
    unused = _unused_fields(dcfg)
    for key in [f"model.{f}" for f in unused] + ["experiment.readouts"] * ("readout" in unused):
        if key in explicit and (key != "experiment.readouts" or issubclass(schema, GridExperiment)):
            raise ConfigError(f"{key}: model.family={OmegaConf.select(dcfg, 'model.family')} nets have no "
                              f"{' or '.join(unused)}: remove it")
    if not issubclass(schema, GridExperiment):
        return _refuse_idle(dcfg, explicit, schema)
    dcfg = dcfg.copy()
    with open_dict(dcfg):
        for field, axis in GRID.items():
            if f"model.{field}" in explicit:
                if f"experiment.{axis}" in explicit:
                    raise ConfigError(f"model.{field}: {name} sweeps experiment.{axis}, which is set too: keep one "
                                      f"(model.{field}=V is the same as experiment.{axis}=[V])")
                dcfg.experiment[axis] = [dcfg.model[field]]
        if "readout" in unused:
            dcfg.experiment.readouts = [dcfg.model.readout]  # one pass: the net has no readout choice
    return _refuse_idle(dcfg, explicit, schema)


def _refuse_idle(dcfg: DictConfig, explicit: set[str], schema: type) -> DictConfig:
    """Refuse an explicit experiment key that its master (schema.DEPENDS) leaves unread."""
    for key, need in dependencies(schema):
        if f"experiment.{key}" in explicit:
            value = _plain(OmegaConf.select(dcfg, f"experiment.{need.master}"))
            if need.idles(value):
                raise ConfigError(need.refusal(key, value))
    return dcfg


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _unused_fields(dcfg: DictConfig) -> tuple[str, ...]:
    """The model fields that change nothing for this architecture (``Architecture.unused_fields``);
    none when the model config is impossible (its own check names the key later)."""
    model = OmegaConf.to_container(dcfg.model, resolve=True)
    try:
        return Architecture(**{f.name: model[f.name] for f in dataclasses.fields(Architecture) if f.name in model}).unused_fields
    except (NetworkError, TypeError, ValueError):
        return ()


def columns(dcfg: DictConfig, overrides: list[Override], choices: dict[str, str] | None = None) -> dict[str, Any]:
    """The override columns of this job's rows: key -> value (a group choice -> the option's name;
    lists as JSON text so that they compare and print as one value)."""
    out: dict[str, Any] = {}
    for ov in overrides:
        if ov.key in ENVIRONMENT_KEYS or ov.key == "experiment":
            continue
        out[ov.key] = (choices or {}).get(ov.key, ov.value) if ov.is_group else _cell(OmegaConf.select(dcfg, ov.key))
    return out


def _cell(value: Any) -> Any:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def value_of(doc: dict[str, Any], key: str) -> Any:
    """The value of ``key`` in one job's results document (config and group choices)."""
    if key in doc.get("choices", {}):
        return doc["choices"][key]
    node: Any = doc["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return _cell(node)


def settings(docs: list[dict[str, Any]], schema: type) -> list[str]:
    """Keys overridden in some job whose value differs between jobs and that are not already told
    apart by a row column (AXES) or split the work of one computation (PARTITION)."""
    keys: list[str] = []
    for d in docs:
        keys += [k for k in d.get("overrides", {}) if k not in keys]
    ignore = set(schema.AXES) | set(schema.PARTITION) | set(ENVIRONMENT_KEYS)
    return [k for k in keys if k not in ignore and len({json.dumps(value_of(d, k), default=str) for d in docs}) > 1]


def label(values: dict[str, Any]) -> str:
    """'key=value, key=value' of a row's settings ('' when there are none)."""
    return ", ".join(f"{k}={v}" for k, v in values.items())
