"""Structured configs (Hydra / OmegaConf schemas): a typo, a wrong type or an impossible value
fails at start with one line naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from cntk.architecture import READOUTS, Architecture, ArchitectureError

DATASETS = ("digits", "fashion_mnist", "cifar10", "sphere")
EXPERIMENTS = ("ntk_convergence", "prediction_equivalence", "kernel_vs_network", "monte_carlo_vs_exact", "gram", "solve")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class DataConfig:
    """A seeded, class-balanced subset of a data set, with the paper's preprocessing."""

    name: str = "digits"
    n_train: int = 100
    n_test: int = 100
    num_classes: int = 10  # the first num_classes classes are used
    root: str | None = None  # where the files are (default: per data set, see experiments/data.py)
    download: bool = False  # fetch and checksum-verify when the files are missing (needs internet)
    standardize: bool = True  # per-channel, with training-set statistics
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])  # sphere only: (C, H, W) of its points
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.name in DATASETS, "data.name", f"unknown data set {self.name!r}: use one of {DATASETS}")
        _check(self.n_train >= 1, "data.n_train", f"must be >= 1, got {self.n_train}")
        _check(self.n_test >= 0, "data.n_test", f"must be >= 0, got {self.n_test}")
        _check(2 <= self.num_classes <= 10, "data.num_classes", f"must be in 2..10, got {self.num_classes}")
        _check(len(self.shape) == 3 and min(self.shape) >= 1, "data.shape", f"must be [C, H, W], got {self.shape}")


@dataclass
class ModelConfig:
    """The architecture (one description builds the finite net and its exact kernel) and a width."""

    family: str = "cnn"
    depth: int = 3
    readout: str = "gap"
    fix_first_last: bool = False
    filter_size: int = 3
    activation: str = "relu"
    width: int = 256

    def __post_init__(self) -> None:
        self.architecture()  # cntk.Architecture's own checks, reported under model.<field>
        _check(self.width >= 1, "model.width", f"must be >= 1, got {self.width}")

    def architecture(self, **override) -> Architecture:
        """The one architecture description for both the finite net and its exact kernel."""
        fields = {k: getattr(self, k) for k in ("family", "depth", "readout", "fix_first_last", "filter_size",
                                                 "activation")}
        try:
            return Architecture(**{**fields, **override})
        except ArchitectureError as err:
            raise ConfigError(f"model.{err.field}: {err}") from None


@dataclass
class ExperimentConfig:
    """What to measure.  Lists are swept inside one run; a Hydra multirun sweeps them across jobs
    (e.g. ``-m experiment.seeds=[0],[1],[2]``)."""

    name: str = "ntk_convergence"
    widths: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    depths: list[int] = field(default_factory=lambda: [3])
    readouts: list[str] = field(default_factory=lambda: ["gap", "flatten"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_points: int = 12  # inputs whose kernel is measured (ntk_convergence)
    steps: int = 300  # full-batch GD steps (prediction_equivalence)
    lr_fraction: float = 1.0  # learning rate = lr_fraction / lambda_max(initial NTK)
    output_scale: float = 1.0  # kappa of Theorem 3.2
    centered: bool = True  # subtract the initial function (prediction_equivalence)
    ridge: float = 0.0  # kernel regression ridge, relative to the mean diagonal
    sgd_epochs: int = 30  # kernel_vs_network: finite nets trained by minibatch SGD
    sgd_batch_size: int = 64
    sgd_lr_fraction: float = 0.5  # SGD lr = fraction * batch / lambda_max(initial NTK on a batch)
    delta: float = 0.05  # failure probability drawn with the theorem's width bound
    bound_constant: float = 1.0  # the theorem's unspecified constant, drawn as this value

    def __post_init__(self) -> None:
        _check(self.name in EXPERIMENTS, "experiment.name", f"unknown experiment {self.name!r}: use one of {EXPERIMENTS}")
        _check(len(self.widths) > 0 and min(self.widths) >= 1, "experiment.widths", f"widths must be >= 1, got {self.widths}")
        _check(len(self.depths) > 0 and min(self.depths) >= 2, "experiment.depths", f"depths must be >= 2, got {self.depths}")
        bad = [r for r in self.readouts if r not in READOUTS]
        _check(len(self.readouts) > 0 and not bad, "experiment.readouts", f"unknown readout(s) {bad}: use {READOUTS}")
        _check(len(self.seeds) > 0, "experiment.seeds", "needs at least one seed")
        _check(self.n_points >= 2, "experiment.n_points", f"must be >= 2, got {self.n_points}")
        _check(self.steps >= 1, "experiment.steps", f"must be >= 1, got {self.steps}")
        _check(0 < self.lr_fraction < 2, "experiment.lr_fraction", f"must be in (0, 2) for stable GD, got {self.lr_fraction}")
        _check(self.output_scale > 0, "experiment.output_scale", f"must be > 0, got {self.output_scale}")
        _check(self.ridge >= 0, "experiment.ridge", f"must be >= 0, got {self.ridge}")
        _check(self.sgd_epochs >= 1 and self.sgd_batch_size >= 1 and 0 < self.sgd_lr_fraction < 2, "experiment.sgd_*", "epochs and batch size must be >= 1, sgd_lr_fraction in (0, 2)")
        _check(0 < self.delta < 1, "experiment.delta", f"must be in (0, 1), got {self.delta}")


@dataclass
class GramConfig:
    """The tiled kernel matrix of train (upper triangle) and test x train, on disk (experiment=gram),
    and its kernel regression (experiment=solve)."""

    store: str = "stores/${data.name}-${model.readout}-d${model.depth}-${data.n_train}x${data.n_test}-${gram.kind}-${dtype}"
    tile: int = 256  # images per tile side
    job: int = 0  # this job's index: it computes tiles job, job + num_jobs, ...
    num_jobs: int = 1
    kind: str = "ntk"
    backend: str = "auto"
    ridges: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1])  # relative to mean diag K
    solver: str = "auto"  # cholesky | cg | auto (cholesky when K_train fits in gram.max_dense_gb)
    max_dense_gb: float = 8.0
    cg_tol: float = 1e-10
    cg_max_iter: int = 5000
    cv_folds: int = 5  # experiment=solve chooses the ridge by this many folds of the training kernel (0: off)

    def __post_init__(self) -> None:
        _check(self.tile >= 1, "gram.tile", f"must be >= 1, got {self.tile}")
        _check(self.num_jobs >= 1, "gram.num_jobs", f"must be >= 1, got {self.num_jobs}")
        _check(0 <= self.job < self.num_jobs, "gram.job", f"must be in [0, gram.num_jobs={self.num_jobs}), got {self.job}")
        _check(self.kind in ("ntk", "nngp"), "gram.kind", f"must be ntk or nngp, got {self.kind!r}")
        _check(len(self.ridges) > 0 and min(self.ridges) >= 0, "gram.ridges", f"must be >= 0, got {self.ridges}")
        _check(self.cv_folds == 0 or self.cv_folds >= 2, "gram.cv_folds", f"must be 0 (off) or >= 2, got {self.cv_folds}")
        _check(self.solver in ("auto", "cholesky", "cg"), "gram.solver", f"must be auto, cholesky or cg, got {self.solver!r}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    gram: GramConfig = field(default_factory=GramConfig)
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    dtype: str = "float64"
    threads: int = 0  # CPU threads of this job (numba and torch); 0: the cores this process may use
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "float64"), "dtype", f"must be float32 or float64, got {self.dtype!r}")
        _check(self.threads >= 0, "threads", f"must be >= 0 (0: all cores this job may use), got {self.threads}")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device", "use auto, cpu or cuda[:N]")


def register() -> None:
    """Register the schemas: conf/config.yaml extends ``base_config``, each group file its schema."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="experiment", name="base_experiment", node=ExperimentConfig)
