"""Memory probing for ``empirical_ntk``: what the device has available now, and the default budget."""
from __future__ import annotations

import os

import torch


def _available_bytes() -> int | None:
    """Memory available to this process now: MemAvailable, capped by a cgroup v2 limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                used = int(fh.read().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def default_memory_mb(device: str | torch.device | None = None) -> float:
    """The default working-memory budget of ``empirical_ntk`` (MiB): a quarter of the memory available
    now on the CPU (MemAvailable, within a cgroup limit), half of the free memory of a CUDA device;
    at least 256; 1024 when it cannot be read."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
            return max(256.0, free / 2**20 / 2)
        except (RuntimeError, AssertionError):
            return 1024.0
    avail = _available_bytes()
    return 1024.0 if avail is None else max(256.0, avail / 2**20 / 4)
