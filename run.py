"""Hydra entry point.

    python run.py                                   # default: ntk_convergence on digits
    python run.py experiment=kernel_vs_network data=fashion_mnist
    python run.py -m experiment.seeds=[0],[1],[2]   # a sweep; aggregated at the end
    python -m experiments.harness.aggregate multirun/DATE/TIME

Every run writes results.csv / results.json (config, overrides, git commit, versions, device, wall
time), figures (PNG and PDF), summary.csv, job.json (how it ended) and run.log into its Hydra
output folder.  Bad input ends with one line on stderr and exit status 2; Ctrl-C with one line and
exit status 130; SIGTERM (a scheduler's time limit) like Ctrl-C, with job.json status 'terminated'
and exit status 143.  In a sweep a failing job is recorded (job.json, run.log, the sweep's jobs.csv)
and the other jobs go on; the sweep is aggregated at the end whatever failed, and then exits with
status 1 and a last line "N of M jobs failed: see .../jobs.csv; exit status 1" when any job did not
end 'ok' (or the aggregation failed).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.harness import aggregate
from experiments.harness.config import register
from experiments.harness.runner import (Interrupted, ending_word, execute, install_process_handlers, job_signals,
                                        one_line, terminated, write_status)

register()
log = logging.getLogger("experiments")
FAILURE: list[BaseException] = []  # a single run's error, re-raised by cli() (Hydra would add its own line)
USER_WANTS_TRACEBACK = bool(os.environ.get("CNTK_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR"))
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises; cli() prints one line


def _to_log_file(message: str, exc_info: bool) -> None:
    """The error into this job's run.log only (the console gets one line from cli())."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("experiments", logging.ERROR, __file__, 0, message, None,
                                             sys.exc_info() if exc_info else None))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out, task = hc.runtime.output_dir, list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    t0 = time.perf_counter()
    with job_signals():  # SIGTERM like Ctrl-C also in a launcher's job process (joblib worker, submitit task)
        _job(cfg, hc, out, task, multirun, t0)


def _job(cfg: DictConfig, hc: DictConfig, out: str, task: list[str], multirun: bool, t0: float) -> None:
    try:
        execute(cfg, out, job_num=OmegaConf.select(hc, "job.num", default=0) or 0, task_overrides=task,
                choices={k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")},
                launcher=OmegaConf.to_container(hc.launcher, resolve=True))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (status 'terminated')
        note = str(err) if isinstance(err, Interrupted) else f"SIG{'TERM' if terminated() else 'INT'}"
        write_status(out, ending_word(), task, time.perf_counter() - t0, note)
        raise
    except Exception as err:
        message = one_line(err)
        write_status(out, "failed", task, time.perf_counter() - t0, message)
        expected = _expected(err)
        if multirun:  # record it and let the other jobs run
            log.error("job failed: %s", message, exc_info=not expected)
            return
        _to_log_file(f"failed: {message}", exc_info=not expected)
        FAILURE.append(err)
        return
    write_status(out, "ok", task, time.perf_counter() - t0)


def _expected(err: BaseException) -> bool:
    """Bad input or environment (one line is the whole story), not a bug (traceback wanted)."""
    from experiments.harness.config import ConfigError

    return isinstance(err, (ConfigError, OSError, ValueError))


def _hydra_message(err: BaseException) -> str:
    """One line for Hydra's own composition errors (unknown key, bad value, missing option)."""
    text = str(err).strip()
    cause = err.__cause__ or err.__context__
    if "Could not override '" in text and cause is not None and "not in" in str(cause):
        key = text.split("'")[1]
        return (f"{key} is not a setting of this config (a typo, or a key of another experiment, data set or "
                f"model): `python run.py [experiment=NAME] --cfg job` lists the settings")
    text = text.split("Config search path")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("full_key", "object_type",
                                                                                                 "reference_type"))]
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in text:
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(lines)


def _run() -> tuple[int, str]:
    """(exit status, last line) of main()."""
    try:
        main()
        if FAILURE:
            raise FAILURE[0]
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (runner's handlers)
        note = str(err) if isinstance(err, Interrupted) else aggregate.interrupt_note(aggregate.SWEEP["dir"])
        return (143, f"terminated: {note}") if terminated() else (130, f"interrupted: {note}")
    except Exception as err:
        if USER_WANTS_TRACEBACK:
            raise
        hydra_error = type(err).__module__.startswith(("hydra", "omegaconf"))
        return 2, f"error: {_hydra_message(err) if hydra_error else one_line(err)} (CNTK_TRACEBACK=1 shows the traceback)"
    return 0, ""


def cli() -> int:
    install_process_handlers()
    code, line = 2, ""
    try:
        code, line = _run()
    finally:
        if code in (130, 143):  # ending: a second SIGTERM must not cut the aggregation short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if aggregate.SWEEP["dir"] and not aggregate.SWEEP["aggregated"]:  # interrupted, or the launcher itself broke
            try:
                aggregate.run_end_of_sweep(aggregate.SWEEP["dir"])
            except KeyboardInterrupt:
                line = f"{line}; aggregation interrupted" if line else "interrupted during aggregation"
                code = code or 130
    if code == 0:
        code, line = aggregate.sweep_verdict()  # a sweep whose jobs failed: 1, after aggregating the others
    if line:
        print(line, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(cli())
