"""What run.py does with a composed config: apply the override rule, validate, load data, run,
save, plot; and the status file of every job (jobs.csv of a sweep is built from them)."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import get
from experiments.harness import overrides, results
from experiments.harness.common import resolve_device, resolve_dtype, set_threads
from experiments.harness.config import Config, ConfigError
from experiments.harness.data import load

log = logging.getLogger("experiments")
JOB_STATUS = "job.json"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a one-line note of what was kept (e.g. '12 tiles kept, rerun ... to resume')."""


# How this process is being ended: SIGTERM (a scheduler's time limit, `kill`) is handled like Ctrl-C,
# as a KeyboardInterrupt, and told apart by ENDING["signal"] (status 'terminated', exit status 143).
ENDING: dict[str, Any] = {"signal": None, "at": 0.0}
GRACE_S = 2.0  # the same ending signalled again within this time (the terminal's group and a parent) is one signal
JOB_SIGINT_ENV = "CNTK_JOB_SIGINT"  # set for jobs started with SIGINT ignored on purpose (submitit's local controller)
ON_SIGNAL: list = []  # hooks of a sweep's parent, called with the signal before the KeyboardInterrupt (aggregate.settle)
_INSTALLED: dict[int, bool] = {}  # pid -> handlers installed for the life of the process


def terminated() -> bool:
    """Whether this process is ending because of SIGTERM."""
    return ENDING["signal"] == signal.SIGTERM


def ending_word() -> str:
    return "terminated" if terminated() else "interrupted"


def _on_signal(signum: int, frame: Any) -> None:
    now = time.monotonic()
    if ENDING["signal"] is not None and now - ENDING["at"] < GRACE_S:
        return  # already ending: let the cleanup (job.json, aggregation) finish
    if ENDING["signal"] is None:
        ENDING.update(signal=signum, at=now)
    for hook in ON_SIGNAL:
        hook(signum)
    raise KeyboardInterrupt("SIGTERM" if signum == signal.SIGTERM else "SIGINT")


def install_signal_handlers() -> dict[int, Any]:
    """SIGTERM (and SIGINT where Python's Ctrl-C handler or a deliberate ignore was in place) raise
    KeyboardInterrupt, recording which signal; returns the previous handlers. A signal ignored by
    whoever started this process (nohup, a background job) stays ignored. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN and not (sig == signal.SIGINT and os.environ.get(JOB_SIGINT_ENV)):
            continue
        if sig == signal.SIGINT and old not in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL):
            continue  # somebody else's handler
        previous[sig] = signal.signal(sig, _on_signal)
    return previous


@contextmanager
def job_signals():
    """SIGTERM handled like Ctrl-C for the time of one job, in a process whose handlers run.py's cli()
    did not install (a joblib worker, a submitit task); the previous handlers afterwards."""
    if _INSTALLED.get(os.getpid()):
        yield
        return
    previous = install_signal_handlers()
    ENDING.update(signal=None, at=0.0)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def install_process_handlers() -> None:
    """For the whole life of this process (run.py's cli())."""
    install_signal_handlers()
    _INSTALLED[os.getpid()] = True


def validate(dcfg: DictConfig) -> Config:
    """The typed config; raises ConfigError naming the key for impossible values."""
    try:
        return OmegaConf.to_object(dcfg)
    except ConfigError:
        raise
    except ValueError as err:  # OmegaConf wraps __post_init__ errors in its own types
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(err).splitlines()[0]) from err


def prepare(dcfg: DictConfig, task_overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, DictConfig, list]:
    """(typed config, config after the override rule, parsed overrides); raises ConfigError."""
    name = OmegaConf.select(dcfg, "experiment.name")
    try:
        module = get(name)
    except ValueError as err:
        raise ConfigError(f"experiment: {err}") from None
    ovs = overrides.parse(task_overrides)
    dcfg = overrides.apply(dcfg, ovs, module.Config)
    cfg = validate(dcfg)
    cfg.experiment.check_with(cfg)
    return cfg, dcfg, ovs


def job_threads(threads: int, launcher: dict[str, Any] | None) -> int:
    """Threads of this job: ``threads`` when set; else its share of the cores: cores / n_jobs under
    the joblib launcher (jobs at once on this machine), cpus_per_task under submitit, else all."""
    if threads:
        return threads
    from experiments.harness.common import available_cores

    cores, target = available_cores(), str((launcher or {}).get("_target_", "")).lower()
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs") or 1)
        return max(1, cores // (cores if n_jobs < 0 else max(1, n_jobs)))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return max(1, min(cores, int(launcher["cpus_per_task"])))
    return cores


def execute(dcfg: DictConfig, out_dir: str | Path, job_num: int = 0, task_overrides: list[str] | tuple[str, ...] = (),
            choices: dict[str, str] | None = None, launcher: dict[str, Any] | None = None) -> dict:
    """Run the configured experiment and write results.{csv,json}, summary.csv, figures into out_dir.

    task_overrides: the job's overrides (Hydra's overrides.task), for the override rule and the
    rows' override columns; choices: the group options chosen (Hydra's runtime.choices);
    launcher: the launcher config (threads per job); job_num picks the GPU when device=auto."""
    commit = results.git_commit()  # the code this run imports; a commit made while it runs is not it
    cfg, dcfg, ovs = prepare(dcfg, task_overrides)
    threads = set_threads(job_threads(cfg.threads, launcher))
    device, dtype = resolve_device(cfg.device, job_num), resolve_dtype(cfg.dtype)
    exp = get(cfg.experiment.name)
    data = load(cfg.data)
    log.info("experiment %s on %s (%d train / %d test), device %s, %s, %d CPU threads", cfg.experiment.name,
             cfg.data.name, len(data.x_train), len(data.x_test), device, cfg.dtype, threads)
    t0 = time.perf_counter()
    rows = exp.run(cfg, data, device, dtype)
    wall = time.perf_counter() - t0
    columns = overrides.columns(dcfg, ovs, choices)
    rows = [{"experiment": cfg.experiment.name, "data": cfg.data.name, **columns, **r, "run_wall_seconds": round(wall, 3)}
            for r in rows]
    doc = {"experiment": cfg.experiment.name, "config": OmegaConf.to_container(dcfg, resolve=True), "choices": dict(choices or {}), "overrides": columns,
           "provenance": results.provenance(device, threads, commit), "rows": rows}
    results.save(out_dir, doc)
    paths, summary = exp.plot(results.load(out_dir), out_dir)
    if summary:
        results.write_csv(Path(out_dir) / "summary.csv", summary)
    written = [results.RESULTS_CSV, results.RESULTS_JSON] + (["summary.csv"] if summary else []) + [p.name for p in paths]
    log.info("wrote %s into %s (%.1f s)", ", ".join(written), out_dir, wall)
    return {"rows": rows, "figures": paths, "summary": summary}


def write_status(out_dir: str | Path, status: str, task_overrides: list[str], seconds: float, error: str = "") -> None:
    """job.json: how this job ended ('ok', 'failed', 'interrupted' (Ctrl-C), 'terminated' (SIGTERM)), its
    overrides and one-line error."""
    results.write_atomic(Path(out_dir) / JOB_STATUS, json.dumps(
        {"status": status, "error": error, "overrides": list(task_overrides), "seconds": round(seconds, 3)}, indent=1))


def one_line(err: BaseException) -> str:
    """An exception as one line: its message's first line, with the type when the message alone is unclear."""
    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, (ConfigError, FileNotFoundError, PermissionError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
