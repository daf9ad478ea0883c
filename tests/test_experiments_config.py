"""Hydra composition of every experiment config, and bad configs failing at start with the key named."""
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import EXPERIMENTS, ConfigError, register
from experiments.runner import validate

ROOT = Path(__file__).resolve().parents[1]
register()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("data", ["digits", "fashion_mnist", "cifar10", "sphere"])
@pytest.mark.parametrize("model", ["cnn_gap", "cnn_v", "fc"])
def test_every_experiment_composes(name, data, model):
    cfg = validate(_compose([f"experiment={name}", f"data={data}", f"model={model}"]))
    assert cfg.experiment.name == name and cfg.data.name == data


def test_experiment_files_match_the_schema():
    files = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert files == sorted(EXPERIMENTS)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.width=0", "model.width"),
        ("model.depth=1", "model.depth"),
        ("model.readout=max", "model.readout"),
        ("experiment.widths=[0,4]", "experiment.widths"),
        ("experiment.lr_fraction=3", "experiment.lr_fraction"),
        ("dtype=float16", "dtype"),
        ("threads=-1", "threads"),
        ("gram.cv_folds=1", "gram.cv_folds"),
    ],
)
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(_compose([override]))


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.widht=3", "Key 'widht' not in 'ModelConfig'"),
        ("model.width=abc", "could not be converted to Integer"),
        ("data=mnist", "Could not find 'data/mnist'"),
        ("data.n_train=5000", "data.n_train=5000"),
        ("model.width=0", "model.width: must be >= 1"),
    ],
)
def test_run_py_fails_at_start_with_a_clear_message(override, words, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), override, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert not (tmp_path / "results.csv").exists()


def test_device_auto_gives_each_job_its_own_gpu(monkeypatch):
    import torch

    from experiments.common import resolve_device, set_threads

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", job_num=3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [resolve_device("auto", j) for j in (0, 1, 5)] == [torch.device("cuda", i) for i in (0, 1, 1)]
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        numba = pytest.importorskip("numba")
        assert numba.get_num_threads() == 1
    finally:
        set_threads(before)
