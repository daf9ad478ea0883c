"""Public entry point: ``kernel(x1, x2, arch, kind)`` with input checks, tiling and backends."""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from tqdm.auto import tqdm

from . import fc, planes, reference
from .architecture import Architecture

KINDS = ("ntk", "nngp")
_CNN_BACKENDS: dict[str, ModuleType] = {"planes": planes, "reference": reference}
# Fused backends live in their own modules and need optional packages; loaded on first use.
# Each module may define ``supports(device: torch.device) -> bool``.
_OPTIONAL_BACKENDS = {"numba": "cntk.fused_cpu", "triton": "cntk.fused_triton"}
_UNAVAILABLE: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name in _CNN_BACKENDS:
        return _CNN_BACKENDS[name]
    if name in _UNAVAILABLE or name not in _OPTIONAL_BACKENDS:
        return None
    try:
        module = importlib.import_module(_OPTIONAL_BACKENDS[name])
    except ImportError as err:  # the optional package (numba, triton) or the module is missing
        _UNAVAILABLE[name] = str(err)
        return None
    _CNN_BACKENDS[name] = module
    return module


def available_backends() -> list[str]:
    """Names accepted by ``kernel(..., backend=...)`` besides "auto" (optional ones that import)."""
    return [n for n in (*_CNN_BACKENDS, *_OPTIONAL_BACKENDS) if _load(n) is not None]


def register_backend(name: str, module: ModuleType) -> None:
    """Add a CNN backend: a module with ``prepare(x, arch)`` and ``tile(x1, s1, x2, s2, arch, kind,
    symmetric, batch_size)`` (and optionally ``bytes_per_pair(shape, arch, itemsize)`` and
    ``supports(device)``)."""
    _CNN_BACKENDS[name] = module


def _supports(module: ModuleType, device: torch.device) -> bool:
    check = getattr(module, "supports", None)
    return True if check is None else bool(check(device))


def _auto_backend(device: torch.device) -> str:
    """Fastest available backend for the device: triton on CUDA, numba on CPU, else planes."""
    for name in ("triton",) if device.type == "cuda" else ("numba",):
        module = _load(name)
        if module is not None and _supports(module, device):
            return name
    return "planes"


def _check_input(name: str, x: object, arch: Architecture) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = "(N, C, H, W)" if arch.family == "cnn" else "(N, D)"
    if x.ndim != (4 if arch.family == "cnn" else 2):
        raise ValueError(f"{name} must have shape {want} for a {arch.family} architecture, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}: convert it with .double() or .float()")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values: clean or impute the inputs first")
    return x


def kernel(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    arch: Architecture,
    kind: str = "ntk",
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    memory_mb: float = 1024.0,
    tile_size: int = 256,
    progress: bool | None = None,
) -> torch.Tensor:
    """Exact infinite-width kernel matrix of ``arch`` between x1 and x2.

    x1: (N1, C, H, W) for cnn, (N1, D) for fc; float32 or float64.  x2: same trailing shape,
    dtype and device, or None for x1 itself (then only the upper triangle is computed and the
    self pairs use rho = 1 exactly).  kind: "ntk" or "nngp".
    backend: "auto" (fastest available for the device), or a name from ``available_backends()``.
    device: where to compute (default: x1's device); the result comes back on x1's device.
    batch_size: pairs evaluated together; default chosen so that one step's working memory stays
        under ``memory_mb`` MiB, so memory is bounded by this setting, never by N.
    tile_size: images per tile side; a progress bar over tiles is shown when ``progress`` is True,
        or by default when there is more than one tile.
    Returns an (N1, N2) tensor in x1's dtype.
    """
    if not isinstance(arch, Architecture):
        raise ValueError(f"arch must be a cntk.Architecture, got {type(arch).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {KINDS}")
    _check_input("x1", x1, arch)
    symmetric = x2 is None
    if not symmetric:
        _check_input("x2", x2, arch)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x1 and x2 must agree in every dimension but N: {tuple(x1.shape)} vs {tuple(x2.shape)}")
        if x2.dtype != x1.dtype:
            raise ValueError(f"x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}")
    if backend != "auto" and _load(backend) is None:
        why = f" ({_UNAVAILABLE[backend]})" if backend in _UNAVAILABLE else ""
        raise ValueError(f"backend {backend!r} is not available{why}: use 'auto' or one of {available_backends()}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")

    out_device = x1.device
    dev = torch.device(device) if device is not None else x1.device
    a = x1.to(dev)
    b = a if symmetric else x2.to(dev)
    if arch.family == "fc":
        impl: ModuleType = fc
    else:
        name = _auto_backend(dev) if backend == "auto" else backend
        impl = _CNN_BACKENDS[name]
        if not _supports(impl, dev):
            raise ValueError(f"backend {name!r} does not run on device {dev}: use backend='auto'")
    if batch_size is None:
        per_pair = getattr(impl, "bytes_per_pair", None)
        batch_size = (
            max(1, int(memory_mb * 2**20 // per_pair(tuple(a.shape[1:]), arch, a.element_size()))) if per_pair else 1
        )

    n1, n2 = len(a), len(b)
    out = torch.zeros(n1, n2, dtype=a.dtype, device=dev)
    if n1 == 0 or n2 == 0:
        return out.to(out_device)
    starts1 = range(0, n1, tile_size)
    tiles = [(r, c) for r in starts1 for c in range(r if symmetric else 0, n2, tile_size)]
    total = sum(_n_pairs(r, c, n1, n2, tile_size, symmetric) for r, c in tiles)
    show = progress if progress is not None else len(tiles) > 1
    with torch.no_grad(), tqdm(total=total, disable=not show, unit="pair", desc=f"{kind} {arch.family}") as bar:
        for r in starts1:
            xa = a[r : r + tile_size]
            sa = impl.prepare(xa, arch)
            for c in (c for rr, c in tiles if rr == r):
                xb = b[c : c + tile_size]
                if symmetric and c == r:
                    out[r : r + len(xa), c : c + len(xb)] = impl.tile(xa, sa, xa, sa, arch, kind, True, batch_size)
                else:
                    sb = impl.prepare(xb, arch)  # O(n P L): negligible beside the tile's pairs
                    block = impl.tile(xa, sa, xb, sb, arch, kind, False, batch_size)
                    out[r : r + len(xa), c : c + len(xb)] = block
                    if symmetric:
                        out[c : c + len(xb), r : r + len(xa)] = block.T
                bar.update(_n_pairs(r, c, n1, n2, tile_size, symmetric))
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("kernel produced non-finite values: inputs overflow this dtype; use float64 or rescale")
    return out.to(out_device)


def _n_pairs(r: int, c: int, n1: int, n2: int, t: int, symmetric: bool) -> int:
    h, w = min(t, n1 - r), min(t, n2 - c)
    return h * (h + 1) // 2 if symmetric and r == c else h * w



__all__ = ["kernel", "available_backends", "register_backend", "KINDS"]
