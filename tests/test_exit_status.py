"""Exit statuses and records that pipelines can trust: a sweep with a failing job exits 1 after
aggregating the others; SIGTERM (a scheduler's time limit) ends a run or a sweep like Ctrl-C, with
job.json status 'terminated', one line on stderr and exit status 143."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive

ROOT = Path(__file__).resolve().parents[1]
# a gram run far too long to finish in a test (5050 train tiles), stopped after a few tiles
LONG_GRAM = ["experiment=gram", "data.n_train=200", "data.n_test=16", "model.depth=4", "experiment.tile=2",
             "progress=false"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _start(args, cwd):
    # Ctrl-C's default meaning, as in a terminal (a shell without job control starts it ignored)
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the signal: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    assert condition(), "the run did not get going in time"


def test_a_sweep_with_a_failing_job_exits_1_after_aggregating_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "model.depth=1,3", "experiment.widths=[4,8,16]",
                           "experiment.seeds=[0]", "data.n_train=3", "progress=false", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"1 of 2 jobs failed: see {sweep / 'jobs.csv'}; exit status 1"
    assert "Traceback" not in proc.stderr
    assert sorted(j["status"] for j in _rows(sweep / "jobs.csv")) == ["failed", "ok"]
    # the good job's results were aggregated before the non-zero exit
    assert {r["depth"] for r in _rows(sweep / "results.csv")} == {"3"} and (sweep / "summary.csv").exists()


def test_sigterm_ends_a_run_like_ctrl_c_with_status_terminated_and_143(tmp_path):
    store, out = tmp_path / "store", tmp_path / "a"
    proc = _start([*LONG_GRAM, f"experiment.store={store}", f"hydra.run.dir={out}"], tmp_path)
    _wait_for(lambda: len(list((store / "train" / "tiles").glob("*.sha256"))) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated: "), err
    assert "tiles kept, rerun the same command to resume" in lines[0]
    status = json.loads((out / "job.json").read_text())
    assert status["status"] == "terminated" and "tiles kept" in status["error"]
    assert int(lines[0].split()[1]) >= 3 and not list((store / "train" / "tiles").glob("*.tmp"))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the sweep's parent finds its jobs in /proc (Linux)")
def test_sigterm_to_a_sweeps_parent_reaches_its_jobs_and_aggregates(tmp_path):
    """SIGTERM to the parent of a joblib sweep only (`kill PID`): the parent passes it on, every job
    writes job.json 'terminated', jobs.csv records them, one line, exit status 143."""
    from experiments.harness.reaper import descendants

    store, sweep = tmp_path / "store", tmp_path / "sweep"
    proc = _start(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", *LONG_GRAM,
                   f"experiment.store={store}", "experiment.job=0,1", "experiment.num_jobs=2",
                   f"hydra.sweep.dir={sweep}"], tmp_path)

    # both jobs computing tiles (job 0 takes r0_c0, r0_c2, ...; job 1 r0_c1, ...): past their imports,
    # where an interrupt can abort a C++ extension's callback (triton) whatever handles it
    tiles = store / "train" / "tiles"
    _wait_for(lambda: (tiles / "r0_c0.sha256").exists() and (tiles / "r0_c1.sha256").exists(), proc)
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=90)[1]
    assert proc.returncode == 143, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated: "), err
    for job in ("0", "1"):
        assert json.loads((sweep / job / "job.json").read_text())["status"] == "terminated"
    assert [j["status"] for j in _rows(sweep / "jobs.csv")] == ["terminated", "terminated"]
    deadline = time.time() + 5  # and no worker outlives the sweep
    while time.time() < deadline and alive(workers):
        time.sleep(0.1)
    assert not alive(workers)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the sweep's parent finds its jobs in /proc (Linux)")
def test_ctrl_c_of_a_submitit_local_sweep_is_one_line(tmp_path):
    """Ctrl-C reaches the whole process group (parent, submitit's controllers, the jobs): one line,
    no controller tracebacks, every job's job.json 'interrupted' in jobs.csv, exit status 130."""
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=submitit_local", *LONG_GRAM,
                             f"experiment.store={store}", "experiment.job=0,1", "experiment.num_jobs=2",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setpgrp()))
    tiles = store / "train" / "tiles"
    _wait_for(lambda: (tiles / "r0_c0.sha256").exists() and (tiles / "r0_c1.sha256").exists(), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    err = proc.communicate(timeout=90)[1]
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "rerun the same command" in lines[0], err
    assert [j["status"] for j in _rows(sweep / "jobs.csv")] == ["interrupted", "interrupted"]


def test_sigterm_handler_records_the_signal_and_raises_keyboard_interrupt():
    from experiments.harness import runner

    previous = runner.install_signal_handlers()
    saved = dict(runner.ENDING)
    try:
        runner.ENDING.update(signal=None, at=0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert runner.terminated() and runner.ending_word() == "terminated"
        os.kill(os.getpid(), signal.SIGTERM)  # the same ending signalled again (a parent passing it on): ignored
        time.sleep(0.05)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        runner.ENDING.update(saved)


def test_sweep_verdict_counts_every_job_not_ok(tmp_path):
    from experiments.harness import aggregate

    saved = dict(aggregate.SWEEP)
    try:
        aggregate.SWEEP.update(dir=str(tmp_path), jobs=[{"status": "ok"}, {"status": "failed"}, {"status": "terminated"}],
                               missing=1, error=None)
        code, line = aggregate.sweep_verdict()
        assert code == 1 and line.startswith("3 of 4 jobs failed (failed, missing, terminated): see ")
        aggregate.SWEEP.update(jobs=[{"status": "ok"}], missing=0)
        assert aggregate.sweep_verdict() == (0, "")
        aggregate.SWEEP.update(error="aggregation of X failed: boom")
        assert aggregate.sweep_verdict() == (1, "aggregation of X failed: boom; exit status 1")
    finally:
        aggregate.SWEEP.clear()
        aggregate.SWEEP.update(saved)
