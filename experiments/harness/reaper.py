"""Orphan reaper of a local sweep: ``python -m experiments.harness.reaper PID``.

Started by run.py (in its own session) when a multirun launches jobs as processes of this machine
(joblib's loky workers, submitit's local jobs).  Every 0.2 s it records the processes descended
from PID; when PID is gone (killed by SIGKILL, SIGTERM or Ctrl-C, or ended normally) it kills the
recorded ones still alive, so that no worker keeps computing or idling.  Linux (/proc) only; a
no-op elsewhere.  Processes are identified by (pid, start time), so a reused pid is never killed.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.2


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie is already dead
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of root."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = starts[pid]
        todo += children.get(pid, [])
    return out


def watch(root: int) -> int:
    """Record root's descendants until root is gone, then kill the survivors; returns how many."""
    if not Path("/proc").is_dir():
        return 0
    first = _stat(root)
    if first is None:
        return 0
    known: dict[int, int] = {}
    me = os.getpid()
    while (st := _stat(root)) is not None and st[1] == first[1]:
        known.update({p: s for p, s in descendants(root).items() if p != me})
        known = {p: s for p, s in known.items() if (now := _stat(p)) is not None and now[1] == s}
        time.sleep(POLL_S)
    killed = 0
    for pid, start in known.items():
        now = _stat(pid)
        if now is not None and now[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    sys.exit(0 if watch(int(sys.argv[1])) >= 0 else 1)
