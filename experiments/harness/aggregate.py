"""Aggregate a Hydra sweep: every job's status in jobs.csv, the merged rows (each job's override
columns kept, rows of different settings told apart by a ``setting`` column), every job's config,
and the sweep's figures drawn from the merged rows.

    python -m experiments.harness.aggregate multirun/2026-11-27/10-00-00

Also runs by itself at the end of every ``python run.py -m ...`` (a Hydra callback), whatever
failed; run.py runs it too when the launcher itself breaks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from experiments import get, names
from experiments.harness import overrides, results, runner
from experiments.harness.runner import JOB_STATUS

log = logging.getLogger("experiments.harness.aggregate")
# the running sweep of this process (run.py): its folder, whether aggregated, the reaper's pid, and
# after aggregation the jobs' statuses ("jobs": jobs.csv's rows, "missing") or the aggregation's error
SWEEP: dict[str, Any] = {"dir": None, "aggregated": False, "reaper": None, "jobs": None, "missing": 0, "error": None,
                         "parent": None}
SETTLE_S = {signal.SIGTERM: 10.0, signal.SIGINT: 3.0}  # how long a sweep's parent waits for its jobs' job.json


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: (len(p.name), p.name))


def collect(sweep_dir: str | Path) -> dict[str, Any]:
    """Every job folder of a sweep: its status row (jobs.csv) and, for finished jobs, its document."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder: pass the sweep folder (multirun/DATE/TIME)")
    status, docs = [], []
    for job in _job_dirs(sweep_dir):
        row = {"job": job.name, "overrides": " ".join(_overrides(job)), "status": "", "error": ""}
        try:
            state = json.loads((job / JOB_STATUS).read_text())
        except (OSError, json.JSONDecodeError):
            state = None
        try:
            doc = results.load(job)
        except (OSError, json.JSONDecodeError):
            doc = None
        if doc is not None and (state is None or state.get("status") == "ok"):
            row["status"] = "ok"
            doc["job"] = job.name
            docs.append(doc)
        elif state is not None:
            row["status"], row["error"] = state.get("status", "failed"), state.get("error", "")
        else:
            row["status"], row["error"] = "no result", "killed, lost, or still running (no job.json, no results.json)"
        status.append(row)
    expected = _expected_jobs(sweep_dir)
    missing = max(0, expected - len(status)) if expected is not None else 0
    return {"docs": docs, "jobs": status, "missing": missing, "expected": expected}


def _overrides(job: Path) -> list[str]:
    try:
        return list(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def _expected_jobs(sweep_dir: Path) -> int | None:
    """Jobs the sweep asked for, from multirun.yaml's task overrides (comma sweeps only)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    cfg = yaml.safe_load(path.read_text())
    params = dict(((cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    for override in ((cfg.get("hydra") or {}).get("overrides") or {}).get("task") or []:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    total = 1
    for value in params.values():
        total *= _count_choices(str(value))
    return total


def _count_choices(value: str) -> int:
    """Top-level commas of a Hydra sweep value: '[0],[1],[2]' -> 3, '[0,1]' -> 1, '1,2' -> 2."""
    depth, n = 0, 1
    for ch in value:
        depth += ch in "[({"
        depth -= ch in "])}"
        n += ch == "," and depth == 0
    return n


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document of a sweep's finished jobs: every job's config, choices, overrides and
    provenance under ``jobs``; the rows with their job, provenance, the values of every setting
    that varies between jobs and a ``setting`` label ('' when none varies)."""
    names = {d.get("experiment") or d["config"]["experiment"]["name"] for d in docs}
    if len(names) > 1:
        raise RuntimeError(f"the sweep mixes experiments {sorted(names)}: aggregate one experiment per sweep")
    name = names.pop()
    varying = overrides.settings(docs, get(name).Config)
    rows = []
    for d in docs:
        values = {k: overrides.value_of(d, k) for k in varying}
        for row in d["rows"]:
            rows.append({**row, **values, "setting": overrides.label(values), "sweep_job": d["job"],
                         **results.flat_provenance(d["provenance"])})
    jobs = [{k: d.get(k) for k in ("job", "config", "choices", "overrides", "provenance")} for d in docs]
    return {"experiment": name, "settings": varying, "jobs": jobs, "rows": rows}


def aggregate(sweep_dir: str | Path) -> dict[str, Any]:
    """Write jobs.csv (always), and results.csv / results.json / summary.csv / figures of the
    finished jobs into the sweep folder; return the status."""
    sweep_dir = Path(sweep_dir)
    info = collect(sweep_dir)
    for j in info["jobs"]:
        if j["status"] != "ok":
            log.warning("job %s %s: %s (overrides: %s)", j["job"], j["status"], j["error"], j["overrides"])
    if info["missing"]:
        log.warning("%d of %d jobs have no folder (never started or lost)", info["missing"], info["expected"])
    results.write_csv(sweep_dir / "jobs.csv", info["jobs"] + [
        {"job": "", "overrides": "", "status": "missing", "error": f"{info['missing']} jobs never started"}
    ] * bool(info["missing"]))
    info["figures"] = []
    if not info["docs"]:
        raise RuntimeError(f"no job of {sweep_dir} finished: nothing to aggregate (see {sweep_dir / 'jobs.csv'})")
    merged = merge(info["docs"])
    results.save(sweep_dir, {**merged, "provenance": info["docs"][0]["provenance"]})
    paths, summary = get(merged["experiment"]).plot(results.load(sweep_dir), sweep_dir)
    if summary:
        results.write_csv(sweep_dir / "summary.csv", summary)
    info["figures"], info["settings"] = paths, merged["settings"]
    return info


def interrupt_note(sweep_dir: str | Path | None) -> str:
    """What an interrupted sweep kept: what its experiment says (an experiment module's optional
    ``interrupt_note(configs)``, given its jobs' configs; e.g. gram's tiles kept), else its finished jobs."""
    if sweep_dir is None or not Path(sweep_dir).is_dir():
        return "nothing written"
    jobs = _job_dirs(Path(sweep_dir))
    configs: dict[str, list[dict]] = {}
    for job in jobs:
        try:
            cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        name = (cfg.get("experiment") or {}).get("name")
        if name in names():
            configs.setdefault(name, []).append(cfg)
    hooks = {name: getattr(get(name), "interrupt_note", None) for name in configs}
    notes = [hooks[name](cfgs) for name, cfgs in sorted(configs.items()) if hooks[name]]
    if notes:
        return "; ".join(notes)
    done = sum((j / results.RESULTS_JSON).exists() for j in jobs)
    return f"{done} of {len(jobs)} started jobs finished (results in {sweep_dir}); rerun the same command to redo the sweep"


def _local_processes(launcher: dict[str, Any]) -> bool:
    target = str(launcher.get("_target_", ""))
    return "Joblib" in target or "LocalLauncher" in target


def _start_reaper(launcher: dict[str, Any]) -> None:
    """Launchers that run jobs as processes of this machine (joblib, submitit local): a watcher in
    its own session kills every process this one started if this one dies (even by SIGKILL)."""
    if _local_processes(launcher):
        SWEEP["reaper"] = subprocess.Popen([sys.executable, "-m", "experiments.harness.reaper", str(os.getpid())],
                                           start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL).pid


def _quiet_launchers(launcher: dict[str, Any]) -> None:
    """What a Ctrl-C of a local sweep would print besides our one line, silenced where we can:
    joblib's resource tracker warns of the semaphores of the workers it lost (a process of its own:
    PYTHONWARNINGS reaches it); submitit's local controllers (``python -m submitit.local._local``)
    print a KeyboardInterrupt traceback each: they are started with SIGINT ignored (the job itself
    gets it back, see runner.install_signal_handlers) and end when their job ends."""
    target = str(launcher.get("_target_", ""))
    if "Joblib" in target:
        quiet = "ignore:resource_tracker:UserWarning"
        if quiet not in os.environ.get("PYTHONWARNINGS", ""):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    if "LocalLauncher" in target:
        try:
            from submitit.local import local
        except ImportError:
            return
        if getattr(local.start_controller, "_cntk_quiet", False):
            return
        original = local.start_controller

        def start_controller(*args, **kwargs):
            from experiments.harness.runner import JOB_SIGINT_ENV

            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # ignored by whoever started us: keep it so
                return original(*args, **kwargs)
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.environ[JOB_SIGINT_ENV] = "1"
            try:
                return original(*args, **kwargs)
            finally:
                os.environ.pop(JOB_SIGINT_ENV, None)
                signal.signal(signal.SIGINT, old)

        start_controller._cntk_quiet = True
        local.start_controller = start_controller


def _job_processes() -> dict[int, int]:
    """This process's descendants but the reaper (loky workers, submitit controllers and tasks)."""
    from experiments.harness.reaper import descendants

    try:
        procs = descendants(os.getpid())
    except OSError:
        return {}
    procs.pop(SWEEP["reaper"], None)
    return procs


def settle(signum: int) -> None:
    """The sweep's parent got SIGTERM or SIGINT: pass it on to its job processes (those that had it
    already, from a terminal's Ctrl-C or a scheduler, take the second as the same one: runner.GRACE_S;
    submitit's controllers ignore SIGINT and pass SIGTERM on), then wait (SETTLE_S at most) until
    every started job has written its job.json or its processes are gone, so that the launcher's own
    cleanup (joblib kills its workers at once) does not lose them."""
    from experiments.harness.reaper import _stat

    sweep_dir = SWEEP["dir"]
    if not sweep_dir or SWEEP.get("parent") != os.getpid() or not Path("/proc").is_dir():
        return
    procs = _job_processes()
    for pid in procs:
        try:
            os.kill(pid, signum)
        except OSError:
            pass
    deadline = time.monotonic() + SETTLE_S.get(signum, 3.0)
    while time.monotonic() < deadline:
        alive = [p for p, start in procs.items() if (st := _stat(p)) is not None and st[1] == start]
        jobs = _job_dirs(Path(sweep_dir)) if Path(sweep_dir).is_dir() else []
        if not alive or all((j / JOB_STATUS).exists() for j in jobs):
            return
        time.sleep(0.05)


class AggregateCallback(Callback):
    """Starts the orphan reaper when a multirun starts; aggregates it when it ends."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        SWEEP.update(dir=str(config.hydra.sweep.dir), aggregated=False, jobs=None, missing=0, error=None,
                     parent=os.getpid())
        launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        _start_reaper(launcher)
        _quiet_launchers(launcher)
        if _local_processes(launcher) and settle not in runner.ON_SIGNAL:
            runner.ON_SIGNAL.append(settle)

    def on_multirun_end(self, config, **kwargs) -> None:
        run_end_of_sweep(config.hydra.sweep.dir)


def run_end_of_sweep(sweep_dir: str | Path) -> None:
    """Aggregate once, logging (never raising) what went wrong."""
    SWEEP["aggregated"] = True
    try:
        info = aggregate(sweep_dir)
    except Exception as err:  # a failed aggregation must not hide the jobs' own results
        log.error("aggregation of %s: %s", sweep_dir, err)
        try:
            info = collect(sweep_dir)
            SWEEP.update(jobs=info["jobs"], missing=info["missing"])
        except Exception:
            pass
        if not SWEEP["jobs"] or all(j["status"] == "ok" for j in SWEEP["jobs"]):
            SWEEP["error"] = f"aggregation of {sweep_dir} failed: {err}"
        return
    SWEEP.update(jobs=info["jobs"], missing=info["missing"])
    bad = sum(j["status"] != "ok" for j in info["jobs"])
    log.info("aggregated %d jobs (%d not ok, %d missing) into %s%s", len(info["docs"]), bad, info["missing"], sweep_dir,
             f"; settings told apart: {', '.join(info['settings'])}" if info.get("settings") else "")


def sweep_verdict() -> tuple[int, str]:
    """After a sweep's aggregation: (1, a line saying how many jobs failed / what broke) or (0, '')."""
    if SWEEP["jobs"] is None and not SWEEP["error"]:
        return 0, ""
    jobs = SWEEP["jobs"] or []
    bad = sum(j["status"] != "ok" for j in jobs) + SWEEP["missing"]
    where = Path(SWEEP["dir"]) / "jobs.csv"
    if bad:
        kinds = sorted({j["status"] for j in jobs if j["status"] != "ok"} | ({"missing"} if SWEEP["missing"] else set()))
        what = "failed" if kinds == ["failed"] else f"failed ({', '.join(kinds)})"
        return 1, f"{bad} of {len(jobs) + SWEEP['missing']} jobs {what}: see {where}; exit status 1"
    if SWEEP["error"]:
        return 1, f"{SWEEP['error']}; exit status 1"
    return 0, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun folder, e.g. multirun/2026-11-27/10-00-00")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        info = aggregate(args.sweep_dir)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = sum(j["status"] != "ok" for j in info["jobs"])
    print(f"{len(info['docs'])} jobs ok, {bad} failed, {info['missing']} missing; "
          f"figures: {', '.join(str(p) for p in info['figures'])}")
    return 1 if bad or info["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
