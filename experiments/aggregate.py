"""Aggregate a Hydra sweep: read every job's results, report missing or failed jobs, draw the
sweep's figures from the merged rows.

    python -m experiments.aggregate multirun/2026-11-27/10-00-00

Also runs by itself at the end of every ``python run.py -m ...`` (a Hydra callback).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from . import get, results

log = logging.getLogger("experiments.aggregate")


def collect(sweep_dir: str | Path) -> dict[str, Any]:
    """All job folders of a sweep: merged rows, per-job status, and the expected job count."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder: pass the sweep folder (multirun/DATE/TIME)")
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: (len(p.name), p.name))
    expected = _expected_jobs(sweep_dir)
    found, failed, docs = [], [], []
    for job in jobs:
        overrides = _overrides(job)
        try:
            doc = results.load(job)
        except (OSError, json.JSONDecodeError) as err:
            failed.append({"job": job.name, "overrides": overrides, "why": f"no readable results.json ({type(err).__name__})"})
            continue
        for row in doc["rows"]:
            row.update({"sweep_job": job.name, **results.flat_provenance(doc["provenance"])})
        docs.append(doc)
        found.append(job.name)
    missing = max(0, expected - len(jobs)) if expected is not None else 0
    rows = [r for d in docs for r in d["rows"]]
    return {"docs": docs, "rows": rows, "ok": found, "failed": failed, "missing": missing, "expected": expected}


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    try:
        return list(yaml.safe_load(path.read_text()) or [])
    except OSError:
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


def aggregate(sweep_dir: str | Path) -> dict[str, Any]:
    """Write aggregated results.csv, summary.csv and figures into the sweep folder; return the status."""
    sweep_dir = Path(sweep_dir)
    info = collect(sweep_dir)
    for f in info["failed"]:
        log.warning("job %s failed: %s (overrides: %s)", f["job"], f["why"], " ".join(f["overrides"]))
    if info["missing"]:
        log.warning("%d of %d jobs have no folder (never started or lost)", info["missing"], info["expected"])
    if not info["docs"]:
        raise RuntimeError(f"no job of {sweep_dir} has results: nothing to aggregate")
    names = {d["config"]["experiment"]["name"] for d in info["docs"]}
    if len(names) > 1:
        raise RuntimeError(f"{sweep_dir} mixes experiments {sorted(names)}: aggregate one experiment per sweep")
    first = info["docs"][0]
    merged = {"config": first["config"], "provenance": first["provenance"], "rows": info["rows"]}
    results.write_csv(sweep_dir / results.RESULTS_CSV, info["rows"])
    results.write_atomic(sweep_dir / results.RESULTS_JSON, json.dumps(merged, indent=1, default=float))
    paths, summary = get(names.pop()).plot(merged, sweep_dir)
    if summary:
        results.write_csv(sweep_dir / "summary.csv", summary)
    status = [{"job": j, "status": "ok"} for j in info["ok"]]
    status += [{"job": f["job"], "status": "failed", "why": f["why"], "overrides": " ".join(f["overrides"])}
               for f in info["failed"]]
    results.write_csv(sweep_dir / "jobs.csv", status)
    info["figures"] = paths
    return info


class AggregateCallback(Callback):
    """Aggregates a multirun when it ends (all launchers: basic, joblib, submitit)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            info = aggregate(sweep_dir)
        except Exception as err:  # a failed aggregation must not hide the jobs' own results
            log.error("aggregation of %s failed: %s", sweep_dir, err)
            return
        log.info("aggregated %d jobs (%d failed, %d missing) into %s", len(info["ok"]), len(info["failed"]),
                 info["missing"], sweep_dir)


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
    print(f"{len(info['ok'])} jobs ok, {len(info['failed'])} failed, {info['missing']} missing; "
          f"figures: {', '.join(str(p) for p in info['figures'])}")
    return 1 if info["failed"] or info["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
