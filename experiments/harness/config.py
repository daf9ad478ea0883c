"""Structured configs (Hydra / OmegaConf schemas) shared by every experiment.

One schema per config-group option: each data set has its own (``data.shape`` exists for
``sphere`` only), the model has one, and every experiment module defines its own ``Config``
(a subclass of ``ExperimentConfig`` or ``GridExperiment`` below) with exactly the fields it reads.
A typo, a wrong type or an impossible value fails at start with one line naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore

from cntk.architecture import READOUTS, Architecture, ArchitectureError


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


def check(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError(f"{key}: {msg}") unless ok."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


# -- data ---------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """A seeded, class-balanced subset of a data set (the first ``num_classes`` classes)."""

    NAME: ClassVar[str] = ""
    name: str = ""
    n_train: int = 100
    n_test: int = 100
    n_val: int = 0  # validation images from the training pool, disjoint from the training subset
    num_classes: int = 10
    seed: int = 0  # which images: the subsets (and digits' train/test pool split) are drawn from it

    def __post_init__(self) -> None:
        check(self.name == self.NAME, "data.name", f"choose the data set with data={self.name} (a group option), "
              f"not data.name")
        check(self.n_train >= 1, "data.n_train", f"must be >= 1, got {self.n_train}")
        check(self.n_test >= 0, "data.n_test", f"must be >= 0, got {self.n_test}")
        check(self.n_val >= 0, "data.n_val", f"must be >= 0, got {self.n_val}")
        check(2 <= self.num_classes <= 10, "data.num_classes", f"must be in 2..10, got {self.num_classes}")


@dataclass
class ImageDataConfig(DataConfig):
    """Real images: pixels scaled to [0, 1], then per-channel standardisation with training statistics."""

    standardize: bool = True


@dataclass
class DigitsConfig(ImageDataConfig):
    NAME: ClassVar[str] = "digits"
    name: str = "digits"


@dataclass
class FileDataConfig(ImageDataConfig):
    root: str | None = None  # where the files are (default: per data set, see experiments/harness/data.py)
    download: bool = False  # fetch and checksum-verify when the files are missing (needs internet)


@dataclass
class FashionMnistConfig(FileDataConfig):
    NAME: ClassVar[str] = "fashion_mnist"
    name: str = "fashion_mnist"


@dataclass
class Cifar10Config(FileDataConfig):
    NAME: ClassVar[str] = "cifar10"
    name: str = "cifar10"


@dataclass
class SphereConfig(DataConfig):
    """Synthetic points uniform on the unit sphere, labelled by a random linear teacher (no
    standardisation: the points keep ||x|| = 1)."""

    NAME: ClassVar[str] = "sphere"
    name: str = "sphere"
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])  # (C, H, W) of its points

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.shape) == 3 and min(self.shape) >= 1, "data.shape", f"must be [C, H, W], got {self.shape}")


DATA_SCHEMAS: dict[str, type[DataConfig]] = {c.NAME: c for c in (DigitsConfig, FashionMnistConfig, Cifar10Config,
                                                                 SphereConfig)}


# -- model --------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The architecture (one description builds the finite net and its exact kernel) and a width.
    Experiments that sweep depth, readout or width (``experiment.depths`` ...) take an explicit
    ``model.depth`` / ``model.readout`` / ``model.width`` as a one-value grid (experiments/harness/overrides.py)."""

    family: str = "cnn"  # cnn | fc | myrtle
    depth: int = 3
    readout: str = "gap"
    fix_first_last: bool = False
    filter_size: int = 3
    activation: str = "relu"  # relu | abrelu | erf
    abrelu_a: float = 0.0  # abrelu: a min(x, 0) + b max(x, 0)
    abrelu_b: float = 1.0
    bias_var: float = 0.0  # variance of every layer's bias (0: none, the paper)
    width: int = 256

    def __post_init__(self) -> None:
        self.architecture()  # cntk.Architecture's own checks, reported under model.<field>
        check(self.width >= 1, "model.width", f"must be >= 1, got {self.width}")

    def architecture(self, **override: Any) -> Architecture:
        """The one architecture description for both the finite net and its exact kernel."""
        fields = {k: getattr(self, k) for k in ("family", "depth", "readout", "fix_first_last", "filter_size",
                                                 "activation", "abrelu_a", "abrelu_b", "bias_var")}
        try:
            return Architecture(**{**fields, **override})
        except ArchitectureError as err:
            raise ConfigError(f"model.{err.field}: {err}") from None


# -- experiments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """When an experiment key is read, by the value of another key of the same experiment (its
    master); declared in the experiment's ``DEPENDS`` and enforced by the override rule
    (experiments/harness/overrides.py).

    master: the other key (a field of the same experiment config, e.g. "solver");
    idle:   the master's values under which the key is not read; a list-valued master (e.g.
            "routes") leaves it unread when every entry is one of them;
    use:    a value of the master under which the key is read (for a list-valued master: the entry
            to add), named in the refusal as the remedy;
    why:    what reads the key, for the refusal ("only the cg solver reads it").
    """

    master: str
    idle: tuple[Any, ...]
    use: Any
    why: str

    def idles(self, value: Any) -> bool:
        """Whether the master's ``value`` leaves the key unread (values outside ``idle``, valid or
        not, never do: the master's own check judges them)."""
        if isinstance(value, (list, tuple)):
            return len(value) > 0 and all(v in self.idle for v in value)
        return value in self.idle

    def refusal(self, key: str, value: Any) -> str:
        """The one-line refusal of an explicit ``experiment.<key>`` while the master has ``value``."""
        if isinstance(value, (list, tuple)):
            shown, remedy = "[" + ",".join(map(str, value)) + "]", f"add {self.use} to experiment.{self.master}"
        else:
            shown, remedy = value, f"set experiment.{self.master}={self.use}"
        return f"experiment.{key}: idle with experiment.{self.master}={shown} ({self.why}): drop the override or {remedy}"


def dependencies(schema: type) -> list[tuple[str, Needs]]:
    """An experiment schema's DEPENDS as (key, Needs) pairs; a key or master that is not a field of
    the schema (a stale name after a rename) is an error."""
    fields = {f.name for f in dataclasses.fields(schema)}
    out = []
    for key, needs in schema.DEPENDS.items():
        for need in needs if isinstance(needs, tuple) else (needs,):
            for name in (key, need.master):
                if name not in fields:
                    raise TypeError(f"{schema.__module__}.{schema.__name__}.DEPENDS names {name!r}, not a key of "
                                    f"experiment={schema.NAME}")
            out.append((key, need))
    return out


@dataclass
class ExperimentConfig:
    """Base of every experiment's schema.  Subclasses set NAME and add their own fields.

    Class attributes (not config keys) tell the override rule (experiments/harness/overrides.py) how the
    experiment uses the shared keys:
      AXES: override key -> result-row column it becomes (swept inside a run, or across jobs;
            rows of different values are never pooled because the column tells them apart);
      PARTITION: keys that split one computation across jobs (rows of all values belong together);
      REFUSED: key -> why it has no effect here and what to use instead (refused at start).
      DEPENDS: own key -> Needs (or a tuple of them): the key is read only when another own key
            allows it (experiment.cg_tol: only the cg solver); an explicit override of the key
            while its master leaves it unread is refused at start, naming both.
      USES_VALIDATION: whether it chooses hyperparameters on data.n_val validation images
            (else data.n_val is refused).
    """

    NAME: ClassVar[str] = ""
    USES_VALIDATION: ClassVar[bool] = False
    AXES: ClassVar[dict[str, str]] = {}
    PARTITION: ClassVar[tuple[str, ...]] = ()
    REFUSED: ClassVar[dict[str, str]] = {}
    DEPENDS: ClassVar[dict[str, "Needs | tuple[Needs, ...]"]] = {}
    name: str = ""

    def __post_init__(self) -> None:
        check(self.name == self.NAME, "experiment.name", f"choose the experiment with experiment={self.name} "
              "(a group option), not experiment.name")

    def check_with(self, cfg: "Config") -> None:
        """Checks that need the rest of the config (data, model); raise ConfigError naming the key."""


@dataclass
class GridExperiment(ExperimentConfig):
    """An experiment over the grid readout x depth x width x seed (experiments/harness/sweep.py runs it).
    An explicit ``model.readout`` / ``model.depth`` / ``model.width`` becomes the one-value list."""

    AXES: ClassVar[dict[str, str]] = {
        "experiment.readouts": "readout", "experiment.depths": "depth", "experiment.widths": "width",
        "experiment.seeds": "seed", "model.readout": "readout", "model.depth": "depth", "model.width": "width",
        "model": "family", "model.family": "family",  # rows carry family and readout: never pooled across them
    }
    widths: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    depths: list[int] = field(default_factory=lambda: [3])
    readouts: list[str] = field(default_factory=lambda: ["gap", "flatten"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_weights: int = 0  # skip (depth, width) whose m x m hidden layers hold more weights than this (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_weights >= 0, "experiment.max_weights", f"must be >= 0 (0: no cap), got {self.max_weights}")
        check(len(self.widths) > 0 and min(self.widths) >= 1, "experiment.widths",
              f"widths must be >= 1, got {self.widths}")
        check(len(self.depths) > 0 and min(self.depths) >= 2, "experiment.depths",
              f"depths must be >= 2 (conv layers + 1, the paper's convention), got {self.depths}")
        bad = [r for r in self.readouts if r not in READOUTS]
        check(len(self.readouts) > 0 and not bad, "experiment.readouts", f"unknown readout(s) {bad}: use {READOUTS}")
        check(len(self.seeds) > 0, "experiment.seeds", "needs at least one seed")
        for key, values in (("widths", self.widths), ("depths", self.depths), ("readouts", self.readouts),
                            ("seeds", self.seeds)):
            check(len(set(values)) == len(values), f"experiment.{key}", f"repeats a value: {values}")


# -- the whole config ---------------------------------------------------------------------------


@dataclass
class Config:
    data: Any = None  # one of DATA_SCHEMAS, chosen by data=NAME
    model: ModelConfig = field(default_factory=ModelConfig)
    experiment: Any = None  # the chosen experiment module's Config, chosen by experiment=NAME
    device: str = "auto"  # auto: one GPU per job when CUDA is present, else cpu
    dtype: str = "float64"
    threads: int = 0  # CPU threads of this job (numba and torch); 0: this job's share of the cores
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.dtype in ("float32", "float64"), "dtype", f"must be float32 or float64, got {self.dtype!r}")
        check(self.threads >= 0, "threads", f"must be >= 0 (0: this job's share of the cores), got {self.threads}")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device",
              "use auto, cpu or cuda[:N]")


def register() -> None:
    """Register the schemas with Hydra's ConfigStore: ``schema_config`` (conf/config.yaml),
    ``schema_model``, ``schema_data_NAME`` and ``schema_experiment_NAME`` (the group files extend
    them).  Stored outside the groups, so that ``--help`` lists only real options."""
    from experiments import get, names

    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    cs.store(name="schema_model", node=ModelConfig)
    for name, schema in DATA_SCHEMAS.items():
        cs.store(name=f"schema_data_{name}", node=schema)
    for name in names():
        cs.store(name=f"schema_experiment_{name}", node=get(name).Config)
