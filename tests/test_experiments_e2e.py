"""Tiny end-to-end runs of every experiment through run.py, a 2-job joblib multirun with its
aggregation, and the atomicity of results files."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "ntk_convergence": ["experiment.widths=[8,16,32]", "experiment.seeds=[0,1]", "experiment.n_points=4",
                        "experiment.readouts=[gap]", "data.n_train=20", "data.n_test=10"],
    "prediction_equivalence": ["experiment.widths=[16,64]", "experiment.seeds=[0]", "experiment.steps=10",
                               "data.n_train=8", "data.n_test=6"],
    "kernel_vs_network": ["experiment.widths=[8]", "experiment.depths=[3]", "experiment.readouts=[gap,flatten]",
                          "experiment.sgd_epochs=2", "data.n_train=30", "data.n_test=20"],
    "monte_carlo_vs_exact": ["experiment.widths=[8,16]", "experiment.seeds=[0]", "data.n_train=20", "data.n_test=10"],
}


def run_py(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "progress=false"], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_end_to_end(name, tmp_path):
    out = tmp_path / "run"
    run_py(f"experiment={name}", *TINY[name], f"hydra.run.dir={out}", cwd=tmp_path)
    rows = _rows(out / "results.csv")
    assert rows and all(r["experiment"] == name for r in rows)
    for col in ("git_commit", "torch", "device", "run_wall_seconds"):
        assert rows[0][col], col
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["experiment"]["name"] == name and doc["provenance"]["versions"]["torch"]
    assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").exists()
    assert (out / "run.log").exists() or any(out.glob("*.log"))
    assert not list(out.glob(".*.tmp"))


def test_joblib_multirun_and_aggregation(tmp_path):
    sweep = tmp_path / "sweep"
    run_py("-m", "hydra/launcher=local_parallel", "experiment.seeds=[0],[1]", *TINY["ntk_convergence"][:1],
           *TINY["ntk_convergence"][2:], f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = _rows(sweep / "jobs.csv")
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    rows = _rows(sweep / "results.csv")
    assert {r["seed"] for r in rows} == {"0", "1"} and (sweep / "ntk_convergence.png").exists()
    # a job whose results are lost is reported, not silently dropped
    (sweep / "1" / "results.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "experiments.aggregate", str(sweep)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "1 failed" in proc.stdout and "job 1 failed" in proc.stderr


def test_a_crashing_run_leaves_no_results_file(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import experiments.ntk_convergence as exp
    from experiments.config import register
    from experiments.runner import execute

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["progress=false"])

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(exp, "run", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_never_leaves_half_a_file(tmp_path, monkeypatch):
    import os

    from experiments import results

    results.write_atomic(tmp_path / "r.csv", "old")

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        results.write_atomic(tmp_path / "r.csv", "new content")
    assert (tmp_path / "r.csv").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
