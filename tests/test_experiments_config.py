"""Hydra composition of every experiment config, discovery, and bad configs failing at start with
one line naming the key."""
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Ahead, selected_params
from hydra import compose, initialize_config_dir

import experiments
from experiments.harness.config import ConfigError, ExperimentConfig, register
from experiments.harness.runner import prepare

ROOT = Path(__file__).resolve().parents[1]
register()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _validate(overrides):
    return prepare(_compose(overrides), overrides)[0]


@pytest.mark.parametrize("name", experiments.names())
@pytest.mark.parametrize("data", ["digits", "fashion_mnist", "cifar10", "sphere"])
@pytest.mark.parametrize("model", sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
def test_every_experiment_composes(name, data, model):
    cfg = _validate([f"experiment={name}", f"data={data}", f"model={model}"])
    assert cfg.experiment.name == name and cfg.data.name == data and type(cfg.experiment).NAME == name


def test_experiments_are_discovered_from_their_files():
    """Each conf/experiment/NAME.yaml has a module with its own schema, run, plot and smoke test."""
    files = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert experiments.names() == files and len(files) >= 6
    for name in files:
        module = experiments.get(name)
        assert issubclass(module.Config, ExperimentConfig) and module.Config.NAME == name
        assert callable(module.run) and callable(module.plot) and callable(module.smoke)
        assert f"/schema_experiment_{name}@experiment" in (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()


def test_help_lists_only_real_options():
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True, timeout=120)
    groups = proc.stdout.split("== Config ==")[0]
    assert f"experiment: {', '.join(experiments.names())}" in groups and "schema" not in groups and "base_" not in groups


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.width=0"], "model.width"),
        (["model.depth=1"], "model.depth"),
        (["model.readout=max"], "model.readout"),
        (["experiment.widths=[0,4]"], "experiment.widths"),
        (["experiment=prediction_equivalence", "experiment.loss_tol=3"], "experiment.loss_tol"),
        (["experiment=kernel_vs_network", "data.n_val=0"], "data.n_val"),
        (["experiment=kernel_vs_network", "experiment.parameterisations=[mup]"], "experiment.parameterisations"),
        (["data.n_val=10"], "data.n_val"),  # ntk_convergence chooses nothing on a validation split
        (["dtype=float16"], "dtype"),
        (["threads=-1"], "threads"),
        (["experiment=solve", "experiment.cv_folds=1"], "experiment.cv_folds"),
        (["experiment.name=gram"], "experiment.name"),
        (["data.name=sphere"], "data.name"),
        (["model.depth=5", "experiment.depths=[3]"], "model.depth"),
        (["data.n_test=4"], "data.n_test"),  # ntk_convergence has no test set
        (["experiment=gram", "model.width=8"], "model.width"),  # the exact kernel has no width
        (["model=fc", "model.readout=flatten"], "model.readout"),
        (["model=fc", "model.filter_size=5"], "model.filter_size"),
    ],
)
def test_impossible_or_ineffective_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ": "):
        _validate(overrides)


def _start(override, tmp):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), override, f"hydra.run.dir={tmp}"],
                          capture_output=True, text=True, cwd=tmp, timeout=120), tmp


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """run.py with every selected bad override, started together (each ends at start, a few at a time)."""
    overrides = selected_params(request, "test_run_py_fails_at_start_with_one_line", "override")
    dirs = {o: tmp_path_factory.mktemp("start") for o in overrides}
    ahead = Ahead(lambda o: _start(o, dirs[o]), overrides)
    yield ahead
    ahead.close()


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.widht=3", "model.widht is not a setting of this config"),
        ("experiment.tile=64", "experiment.tile is not a setting of this config"),  # a gram key, not ntk_convergence's
        ("data.shape=[1,4,4]", "data.shape is not a setting of this config"),  # sphere's key, not digits'
        ("model.width=abc", "could not be converted to Integer"),
        ("data=mnist", "Could not find 'data/mnist'"),
        ("data.n_train=5000", "data.n_train=5000"),
        ("model.width=0", "model.width: must be >= 1"),
    ],
)
def test_run_py_fails_at_start_with_one_line(override, words, started):
    proc, tmp_path = started.get(override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], proc.stderr
    assert not any("Traceback" in ln or "Error executing job" in ln for ln in lines), proc.stderr
    assert not (tmp_path / "results.csv").exists()


def test_device_auto_gives_each_job_its_own_gpu_and_jobs_share_the_cores(monkeypatch):
    import torch

    from experiments.harness import common
    from experiments.harness.common import resolve_device, set_threads
    from experiments.harness.runner import job_threads

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", job_num=3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [resolve_device("auto", j) for j in (0, 1, 5)] == [torch.device("cuda", i) for i in (0, 1, 1)]
    monkeypatch.setattr(common, "available_cores", lambda: 8)
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    submitit = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 3}
    assert job_threads(0, joblib) == 4 and job_threads(0, {**joblib, "n_jobs": -1}) == 1
    assert job_threads(0, submitit) == 3 and job_threads(0, None) == 8 and job_threads(5, joblib) == 5
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        numba = pytest.importorskip("numba")
        assert numba.get_num_threads() == 1
    finally:
        set_threads(before)


def test_the_width_cap_and_the_labels_come_from_the_architecture():
    """experiment.max_weights counts the net's own hidden weights (Myrtle-5: three 3 x 3 m x m convs,
    9 m^2 each, not m^2), and figures label each architecture by its own name."""
    from cntk import Architecture
    from experiments.harness.common import row_name

    m = 16
    assert Architecture(family="myrtle", depth=5).hidden_weights((1, 8, 8), m) >= 3 * 9 * m * m
    assert Architecture(depth=3).hidden_weights((1, 8, 8), m) >= 9 * m * m
    assert Architecture(family="fc", depth=4).hidden_weights((64,), m) >= 2 * m * m
    assert Architecture(family="fc").input_shape_error((1, 8, 8)) and Architecture().input_shape_error((1, 8, 8)) is None
    names = {Architecture(readout="flatten", depth=6).name: "CNN-V, depth 6", Architecture().name: "CNN-GAP, depth 3",
             Architecture(family="fc").name: "FC, depth 3", Architecture(family="myrtle", depth=7).name: "Myrtle-7",
             Architecture(family="fc", activation="erf", bias_var=0.1).name: "FC, depth 3 [erf, bias 0.1]"}
    assert all(got == want for got, want in names.items()), names
    assert row_name({"family": "cnn", "readout": "flatten", "depth": 4}) == "CNN-V, depth 4"  # rows without a net column
    assert row_name({"family": "fc", "readout": "none", "depth": 3}) == "FC, depth 3"
