"""Results files: one row per measured point, written atomically, with full provenance."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from cntk.store.atomic import write_atomic

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"


def git_commit() -> str:
    """HEAD of the repository holding this file, with '+dirty' when tracked files other than the
    committed outputs in figures/ have uncommitted changes (scripts/figures.sh replaces those
    outputs between its runs; they are results, not code)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)figures"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} cores)"


def provenance(device: torch.device, cpu_threads: int, started_commit: str | None = None) -> dict[str, Any]:
    """Versions, device, CPU threads, commit and time of this run.  git_commit is ``started_commit``
    (the tree when the run started: the code it imported) when given; where HEAD or the tree changed
    while it ran, git_commit_at_end says what they became."""
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "hydra-core", "cntk-suite", "numba", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    end = git_commit()
    moved = {"git_commit_at_end": end} if started_commit and end != started_commit else {}
    return {
        "git_commit": started_commit or end,
        **moved,
        "versions": versions,
        "device": device_name(device),
        "cpu_threads": cpu_threads,
        "host": platform.node(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def flat_provenance(prov: dict[str, Any]) -> dict[str, str]:
    """The provenance columns of a results CSV row."""
    return {"git_commit": prov["git_commit"], "torch": prov["versions"].get("torch", ""), "device": prov["device"]}


def save(out_dir: str | Path, doc: dict[str, Any]) -> None:
    """results.csv (one row per point, provenance columns appended) and results.json (the whole
    document: experiment, config, choices, overrides, provenance, rows); each written atomically."""
    prov = flat_provenance(doc["provenance"])
    write_csv(Path(out_dir) / RESULTS_CSV, [{**r, **prov} for r in doc["rows"]])
    write_atomic(Path(out_dir) / RESULTS_JSON, json.dumps(doc, indent=1, default=float))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (columns in order of first appearance), written atomically."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def load(path: str | Path) -> dict[str, Any]:
    """A results.json document (path to the file or to the run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    return json.loads(path.read_text())
