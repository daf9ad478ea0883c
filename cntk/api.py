"""Public entry point: ``kernel(x1, x2, net, kind)`` with input checks, tiling and a registry of
backends that declare which networks they compute.

A backend is a module with
    NAME, PRIORITY                                  (higher: faster, tried first by "auto")
    supports(net, device) -> str | None             None, or the reason it cannot compute ``net`` there
    prepare(x, net, shapes) -> per-image statistics
    tile(x1, s1, x2, s2, net, shapes, kind, symmetric, batch_size) -> (n1, n2) block
    bytes_per_pair(input_shape, net, itemsize) -> working memory of one pair (optional)
    AUTO_DEVICES: device types "auto" may pick it for (optional; default: every device it supports)
``backend="auto"`` takes the highest-priority registered backend that supports the network on the
device; a named backend that does not is an error naming the reason and the ones that can.
Nothing is ever computed as another network.
"""
from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

import torch
from tqdm.auto import tqdm

from cntk.backends import planes, reference, vector
from cntk.network import Network, as_network
from cntk.errors import NetworkError

KINDS = ("ntk", "nngp")
_BACKENDS: dict[str, ModuleType] = {m.NAME: m for m in (reference, planes, vector)}
# Fused backends live in their own modules and need optional packages; loaded on first use.
_OPTIONAL_BACKENDS = {"numba": "cntk.backends.fused_cpu", "triton": "cntk.backends.fused_triton"}
_UNAVAILABLE: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in _UNAVAILABLE or name not in _OPTIONAL_BACKENDS:
        return None
    try:
        module = importlib.import_module(_OPTIONAL_BACKENDS[name])
    except ImportError as err:  # the optional package (numba, triton) or the module is missing
        _UNAVAILABLE[name] = str(err)
        return None
    _BACKENDS[name] = module
    return module


def available_backends() -> list[str]:
    """Names accepted by ``kernel(..., backend=...)`` besides "auto" (optional ones that import)."""
    names = dict.fromkeys((*_BACKENDS, *_OPTIONAL_BACKENDS))
    return [n for n in names if n not in _UNAVAILABLE and _load(n) is not None]


def register_backend(module: ModuleType) -> None:
    """Add a backend module (the protocol is this module's docstring)."""
    for attr in ("NAME", "PRIORITY", "supports", "prepare", "tile"):
        if not hasattr(module, attr):
            raise ValueError(f"a backend module needs {attr}: see cntk.api's docstring")
    _BACKENDS[module.NAME] = module


def backends_for(net: Any, device: str | torch.device = "cpu", *, auto: bool = False) -> list[str]:
    """The backends that compute ``net`` on ``device``, fastest first (``auto``: only those that
    "auto" may pick there, e.g. not Triton's CPU interpreter)."""
    net, dev = as_network(net), as_device(device)
    mods = [m for m in (_load(n) for n in available_backends()) if m is not None]
    ok = [m for m in sorted(mods, key=lambda m: -m.PRIORITY) if m.supports(net, dev) is None]
    if auto:
        ok = [m for m in ok if dev.type in getattr(m, "AUTO_DEVICES", (dev.type,))]
    return [m.NAME for m in ok]


def as_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or ValueError (one line) for a name torch does not know or a
    device type this torch build cannot use (e.g. "cuda" on a CPU-only build)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: this torch ({torch.__version__}) sees no CUDA device; "
                         "use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


class MemoryBudgetError(ValueError):
    """One pair's working memory exceeds ``memory_mb``: refused before any work."""


def pair_bytes(module: ModuleType, net: Network, input_shape: tuple[int, ...], itemsize: int) -> int:
    """Working memory of one pair on backend ``module`` (0 when it does not say)."""
    per_pair = getattr(module, "bytes_per_pair", None)
    return int(per_pair(tuple(input_shape), net, itemsize)) if per_pair else 0


def choose_backend(net: Any, device: str | torch.device, backend: str = "auto", *,
                   input_shape: tuple[int, ...] | None = None, itemsize: int = 8,
                   memory_mb: float | None = None) -> ModuleType:
    """The backend module that computes ``net`` on ``device``: the fastest that supports it
    ("auto"), or the named one; a named one that cannot is a ValueError saying why.  With
    ``input_shape`` and ``memory_mb``, a backend whose one pair needs more than ``memory_mb`` MiB is
    skipped ("auto") or refused (named) with ``MemoryBudgetError``, naming what it needs and the
    backends that fit."""
    net, dev = as_network(net), as_device(device)
    budget = None if memory_mb is None or input_shape is None else memory_mb * 2**20

    def fits(m: ModuleType) -> bool:
        return budget is None or pair_bytes(m, net, input_shape, itemsize) <= budget

    if backend == "auto":
        names = backends_for(net, dev, auto=True)  # reference supports everything
        for name in names:
            if fits(_load(name)):
                return _load(name)
        module = _load(names[0])
    else:
        module = _load(backend)
        if module is None:
            why = f" ({_UNAVAILABLE[backend]})" if backend in _UNAVAILABLE else ""
            raise ValueError(f"backend {backend!r} is not available{why}: use 'auto' or one of {available_backends()}")
        reason = module.supports(net, dev)
        if reason is not None:
            raise ValueError(f"backend {backend!r} cannot compute this network on {dev}: {reason}; backends that can: "
                             f"{backends_for(net, dev)}")
    if not fits(module):
        need = pair_bytes(module, net, input_shape, itemsize) / 2**20
        others = [n for n in backends_for(net, dev) if fits(_load(n))]
        hint = (f"backend {others[0]!r} fits (backend='auto' picks it)" if others else
                f"raise memory_mb to at least {math.ceil(need)} or use smaller images")
        raise MemoryBudgetError(f"one pair of {tuple(input_shape)} inputs needs about {need:,.0f} MiB on backend "
                                f"{module.NAME!r}, over memory_mb={memory_mb:g}: {hint}")
    return module


def _check_input(name: str, x: object, net: Network) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = "(N, C, H, W)" if net.family == "cnn" else "(N, D)"
    if x.ndim != (4 if net.family == "cnn" else 2):
        raise ValueError(f"{name} must have shape {want} for a {net.family} network, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}: convert it with .double() or .float()")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values: clean or impute the inputs first")
    return x


def check_inputs(x1: torch.Tensor, x2: torch.Tensor | None, net: Network) -> list:
    """ValueError (one line) unless x1 (and x2) are inputs ``net`` takes; returns its layer shapes."""
    _check_input("x1", x1, net)
    if x2 is not None:
        _check_input("x2", x2, net)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x1 and x2 must agree in every dimension but N: {tuple(x1.shape)} vs {tuple(x2.shape)}")
        if x2.dtype != x1.dtype:
            raise ValueError(f"x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}")
    try:
        return net.shapes(tuple(x1.shape[1:]))
    except NetworkError as err:
        raise ValueError(str(err)) from None


def kernel(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    arch: Any,
    kind: str = "ntk",
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    memory_mb: float = 1024.0,
    tile_size: int = 256,
    progress: bool | None = None,
) -> torch.Tensor:
    """Exact infinite-width kernel matrix of the network ``arch`` between x1 and x2.

    arch: a ``cntk.Network`` (``cntk.layers``) or a ``cntk.Architecture`` (the paper's family).
    x1: (N1, C, H, W) for convolutional networks, (N1, D) for fully-connected ones; float32 or
    float64.  x2: same trailing shape, dtype and device, or None for x1 itself (then only the upper
    triangle is computed and the self pairs use rho = 1 exactly).  kind: "ntk" or "nngp".
    backend: "auto" (the fastest backend that computes this network on the device), or a name
    from ``available_backends()``.  device: where to compute (default: x1's device); the result
    comes back on x1's device.  batch_size: pairs evaluated together; default chosen so that one
    step's working memory stays under ``memory_mb`` MiB, so memory is bounded by this setting,
    never by N; a backend whose single pair would exceed it is skipped by "auto" and refused when
    named (``MemoryBudgetError``, before any work).  tile_size: images per tile side; a progress bar over tiles is shown when
    ``progress`` is True, or by default when there is more than one tile.
    Returns an (N1, N2) tensor in x1's dtype.
    """
    try:
        net = as_network(arch)
    except (ValueError, NetworkError) as err:
        raise ValueError(str(err)) from None
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {KINDS}")
    shapes = check_inputs(x1, x2, net)
    symmetric = x2 is None
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not math.isfinite(memory_mb) \
            or memory_mb <= 0:
        raise ValueError(f"memory_mb must be a finite number of MiB > 0, got {memory_mb!r}")

    dev = as_device(device) if device is not None else x1.device
    out_device = x1.device
    impl = choose_backend(net, dev, backend, input_shape=tuple(x1.shape[1:]), itemsize=x1.element_size(),
                          memory_mb=memory_mb)
    a = x1.to(dev)
    b = a if symmetric else x2.to(dev)
    if batch_size is None:
        per_pair = pair_bytes(impl, net, tuple(a.shape[1:]), a.element_size())
        batch_size = max(1, int(memory_mb * 2**20 // per_pair)) if per_pair else 1

    out = tiled(a, b, symmetric, tile_size, progress, f"{kind} {net.family}", a.dtype,
                lambda xa: impl.prepare(xa, net, shapes),
                lambda xa, sa, xb, sb, sym: impl.tile(xa, sa, xb, sb, net, shapes, kind, sym, batch_size)[..., None])
    return out[..., 0].to(out_device)


def tiled(a: torch.Tensor, b: torch.Tensor, symmetric: bool, tile_size: int, progress: bool | None, desc: str,
          dtype: torch.dtype, prepare, tile) -> torch.Tensor:
    """(N1, N2, R) from tiles of at most ``tile_size`` images a side: ``prepare(x) -> stats`` per
    block, ``tile(xa, sa, xb, sb, symmetric) -> (n_a, n_b, R)``; only the upper triangle's tiles when
    ``symmetric`` (mirrored); a progress bar over pairs; non-finite values are an error."""
    n1, n2 = len(a), len(b)
    out = None
    if n1 == 0 or n2 == 0:
        return torch.zeros(n1, n2, 1, dtype=dtype, device=a.device)
    starts1 = range(0, n1, tile_size)
    tiles = [(r, c) for r in starts1 for c in range(r if symmetric else 0, n2, tile_size)]
    total = sum(_n_pairs(r, c, n1, n2, tile_size, symmetric) for r, c in tiles)
    show = progress if progress is not None else len(tiles) > 1
    with torch.no_grad(), tqdm(total=total, disable=not show, unit="pair", desc=desc) as bar:
        for r in starts1:
            xa = a[r : r + tile_size]
            sa = prepare(xa)
            for c in (c for rr, c in tiles if rr == r):
                xb = b[c : c + tile_size]
                if symmetric and c == r:
                    block = tile(xa, sa, xa, sa, True)
                else:
                    block = tile(xa, sa, xb, prepare(xb), False)  # O(n P L): negligible beside the pairs
                if out is None:
                    out = torch.zeros(n1, n2, block.shape[-1], dtype=dtype, device=a.device)
                out[r : r + len(xa), c : c + len(xb)] = block.to(dtype)
                if symmetric and c != r:
                    out[c : c + len(xb), r : r + len(xa)] = block.transpose(0, 1).to(dtype)
                bar.update(_n_pairs(r, c, n1, n2, tile_size, symmetric))
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("kernel produced non-finite values: inputs overflow this dtype; use float64 or rescale")
    return out


def _n_pairs(r: int, c: int, n1: int, n2: int, t: int, symmetric: bool) -> int:
    h, w = min(t, n1 - r), min(t, n2 - c)
    return h * (h + 1) // 2 if symmetric and r == c else h * w


__all__ = ["kernel", "available_backends", "backends_for", "choose_backend", "register_backend", "KINDS", "MemoryBudgetError"]
