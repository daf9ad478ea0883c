"""Every experiment found in conf/experiment/ end to end through run.py at its smallest size; sweeps
that survive failing jobs, keep settings apart and every job's config; Ctrl-C and killed sweeps;
atomic results files."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Ahead, alive, run_experiment, selected_params

import experiments

ROOT = Path(__file__).resolve().parents[1]


def run_py(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "progress=false"], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _smoke(name, tmp):
    """The experiment's smoke runs through run.py in ``tmp``, one after another; the last run's folder.
    threads=1: two of these run side by side (conftest's Ahead), one per core."""
    tmp.mkdir()
    runs = experiments.get(name).smoke(tmp)
    for i, overrides in enumerate(runs):
        run_py(*overrides, "threads=1", f"hydra.run.dir={tmp / f'run{i}'}", cwd=tmp)
    return tmp / f"run{len(runs) - 1}"


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """Every selected experiment's smoke runs, started together when the first case asks."""
    base = tmp_path_factory.mktemp("smoke")
    ahead = Ahead(lambda name: _smoke(name, base / name),
                  selected_params(request, "test_every_experiment_runs_end_to_end", "name"))
    yield ahead
    ahead.close()


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_runs_end_to_end(name, smoke_runs):
    out = smoke_runs.get(name)
    rows = _rows(out / "results.csv")
    assert rows and all(r["experiment"] == name for r in rows)
    for col in ("git_commit", "torch", "device", "run_wall_seconds"):
        assert rows[0][col], col
    doc = json.loads((out / "results.json").read_text())
    assert doc["experiment"] == name and doc["provenance"]["versions"]["torch"] and doc["overrides"]
    assert json.loads((out / "job.json").read_text())["status"] == "ok"
    for png in out.glob("*.png"):
        assert png.stat().st_size > 10_000 and png.with_suffix(".pdf").exists()
    assert (out / "run.log").exists() and not list(out.glob(".*.tmp"))


def test_provenance_names_the_commit_the_run_started_from():
    """A commit made in the checkout while a run goes on is not the code the run imported: the
    results name the commit at the start, and the one at the end beside it only where it moved."""
    import torch

    from experiments.harness import results

    now = results.git_commit()
    same = results.provenance(torch.device("cpu"), 1, now)
    assert same["git_commit"] == now and "git_commit_at_end" not in same
    moved = results.provenance(torch.device("cpu"), 1, "0" * 40)
    assert moved["git_commit"] == "0" * 40 and moved["git_commit_at_end"] == now


KVN = ["experiment=kernel_vs_network", "experiment.seeds=[0]", "experiment.epochs=1", "experiment.standard_lrs=[0.01]",
       "experiment.ntk_lr_fractions=[0.5]", "experiment.ntk_routes=[centred]", "data.n_train=20", "data.n_val=10",
       "data.n_test=10", "threads=1"]


def test_kernel_vs_network_trains_the_kernels_own_layers(tmp_path, one_thread, quick_figures):
    """erf with biases: both parameterisations train erf nets with biases (the kernel's layers); Myrtle
    runs, and experiment.max_weights counts its own 3 x 3 hidden weights.  In this process (run.py
    itself is run above): the rows are what is checked."""
    import cntk
    import finite_nets

    for sub in ("erf", "myrtle"):
        (tmp_path / sub).mkdir()
    run_experiment([*KVN, "model.activation=erf", "model.bias_var=0.1", "experiment.widths=[4]", "experiment.depths=[3]",
                    "experiment.readouts=[gap]", "progress=false"], tmp_path / "erf")
    rows = json.loads((tmp_path / "erf" / "results.json").read_text())["rows"]
    arch = cntk.Architecture(activation="erf", bias_var=0.1)
    nets = {r["method"]: r for r in rows if r["method"].endswith("_net")}
    assert set(nets) == {"ntk_net", "standard_net"} and all(r["net"] == arch.name for r in rows)
    for par in ("ntk", "standard"):
        net = finite_nets.build(arch, 4, input_shape=(1, 8, 8), out_dim=10, parameterisation=par, device="cpu")
        assert nets[f"{par}_net"]["weights"] == sum(p.numel() for p in net.parameters())
    no_bias = finite_nets.build(cntk.Architecture(), 4, input_shape=(1, 8, 8), out_dim=10, device="cpu")
    assert nets["ntk_net"]["weights"] > sum(p.numel() for p in no_bias.parameters())  # the biases are trained
    hidden = cntk.Architecture(family="myrtle", depth=5).hidden_weights((1, 8, 8), 8)
    run_experiment([*KVN, "model=myrtle", "experiment.widths=[4,8]", f"experiment.max_weights={hidden - 1}",
                    "progress=false"], tmp_path / "myrtle")
    rows = json.loads((tmp_path / "myrtle" / "results.json").read_text())["rows"]
    assert {r["width"] for r in rows if r["method"].endswith("_net")} == {4} and rows[0]["net"] == "Myrtle-5"


TINY = ["experiment.widths=[4,8,16]", "experiment.seeds=[0]", "data.n_train=3"]


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """joblib sweep over model.depth=1,3 (one impossible) and a store path that is a file (a runtime
    error): the good job runs, every failure is in jobs.csv and its run.log, aggregation runs."""
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "hydra/launcher=local_parallel", "model.depth=1,3", *TINY, f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("1 of 2 jobs failed")
    jobs = {j["overrides"].split("model.depth=")[1].split()[0]: j for j in _rows(sweep / "jobs.csv")}
    assert jobs["3"]["status"] == "ok" and jobs["1"]["status"] == "failed"
    assert jobs["1"]["error"].startswith("model.depth: depth must be >= 2")
    failed = sweep / jobs["1"]["job"]
    assert "model.depth: depth must be >= 2" in (failed / "run.log").read_text()
    assert {r["depth"] for r in _rows(sweep / "results.csv")} == {"3"} and (sweep / "ntk_convergence.png").exists()

    (tmp_path / "a_file").write_text("not a folder")
    sweep2 = tmp_path / "sweep2"
    proc = run_py("-m", "experiment=gram", "data.n_train=6", "data.n_test=2",
                  f"experiment.store={tmp_path / 'a_file' / 'store'},{tmp_path / 'ok_store'}",
                  f"hydra.sweep.dir={sweep2}", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    status = sorted(j["status"] for j in _rows(sweep2 / "jobs.csv"))
    assert status == ["failed", "ok"] and (sweep2 / "results.csv").exists()
    bad = next(j for j in _rows(sweep2 / "jobs.csv") if j["status"] == "failed")
    assert "a_file" in bad["error"] and "a_file" in (sweep2 / bad["job"] / "run.log").read_text()
    # aggregating by hand reports the failure and keeps the finished job
    proc = subprocess.run([sys.executable, "-m", "experiments.harness.aggregate", str(sweep2)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "1 jobs ok, 1 failed" in proc.stdout


def test_settings_are_never_pooled_and_every_job_config_is_kept(tmp_path):
    """Two kappas in one sweep: two fits, each labelled; rows carry the override; both configs kept."""
    sweep = tmp_path / "sweep"
    run_py("-m", "experiment=prediction_equivalence", "experiment.small_kappa=0.1,1.0", "experiment.routes=[small_kappa]",
           "experiment.widths=[8,16,32]", "experiment.seeds=[0]", "experiment.max_steps=5", "data.n_train=6",
           "data.n_test=4", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    rows = _rows(sweep / "results.csv")
    assert {r["experiment.small_kappa"] for r in rows} == {"0.1", "1.0"}
    assert {r["setting"] for r in rows} == {"experiment.small_kappa=0.1", "experiment.small_kappa=1.0"}
    summary = _rows(sweep / "summary.csv")
    assert sorted({s["setting"] for s in summary}) == ["experiment.small_kappa=0.1", "experiment.small_kappa=1.0"]
    doc = json.loads((sweep / "results.json").read_text())
    assert doc["settings"] == ["experiment.small_kappa"]
    assert sorted(j["config"]["experiment"]["small_kappa"] for j in doc["jobs"]) == [0.1, 1.0]
    # seeds split over jobs are replicates, not settings: one fit over both jobs' seeds
    sweep2 = tmp_path / "sweep2"
    run_py("-m", "experiment.seeds=[0],[1]", *TINY[:1], "data.n_train=3", "experiment.readouts=[gap]",
           f"hydra.sweep.dir={sweep2}", cwd=tmp_path)
    summary = _rows(sweep2 / "summary.csv")
    assert {s["setting"] for s in summary} == {""} and {s["points"] for s in summary} == {"6"}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_killing_a_sweep_leaves_no_worker(tmp_path):
    """SIGKILL of a joblib sweep's parent: its workers (busy or idle) are gone within seconds and
    stop writing tiles."""
    from experiments.harness.reaper import descendants

    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local_parallel",
                             "hydra.launcher.n_jobs=3", "experiment=gram", "data.n_train=200", "data.n_test=16",
                             "model.depth=4", "experiment.tile=2", f"experiment.store={store}", "experiment.job=0,1",
                             "experiment.num_jobs=2", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    tiles = store / "train" / "tiles"
    while time.time() < deadline and len(list(tiles.glob("*.sha256"))) < 20:
        time.sleep(0.05)
    workers = descendants(proc.pid)
    assert len(workers) >= 3, "the sweep's workers must be running before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while alive(workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(workers), f"workers still running 5 s after the kill: {alive(workers)}"
    done = len(list(tiles.glob("*.sha256")))
    time.sleep(1.0)
    assert len(list(tiles.glob("*.sha256"))) == done < 20000


def test_ctrl_c_ends_with_one_line_and_resumes(tmp_path):
    store = tmp_path / "store"
    args = ["experiment=gram", "data.n_train=200", "data.n_test=16", "model.depth=4", "experiment.tile=2",
            f"experiment.store={store}", "progress=false"]
    # a shell without job control starts background jobs with SIGINT ignored, and Popen passes that
    # on: give the run Ctrl-C's default meaning, as in a terminal
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'a'}"],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((store / "train" / "tiles").glob("*.sha256"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "tiles kept, rerun the same command to resume" in last, err
    assert "Traceback" not in err
    kept = int(last.split()[1])
    assert kept >= 5 and json.loads((tmp_path / "a" / "job.json").read_text())["status"] == "interrupted"


def test_a_crashing_run_leaves_no_results_file(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import experiments.ntk_convergence as exp
    from experiments.harness.config import register
    from experiments.harness.runner import execute

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
    from experiments.harness import results

    results.write_atomic(tmp_path / "r.csv", "old")

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        results.write_atomic(tmp_path / "r.csv", "new content")
    assert (tmp_path / "r.csv").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
