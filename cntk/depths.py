"""Every depth and both kernels of one network family in one pass.

    >>> import torch, cntk
    >>> x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    >>> ks = cntk.kernels(x, None, cntk.Architecture(readout="gap"), depths=(3, 6, 11))
    >>> k6 = ks[6, "nngp"]                # (6, 6): cntk.kernel(x, None, Architecture(depth=6), "nngp")

The paper's networks are prefixes of each other: the network of depth d has the first d - 1 weight
layers and activations of the deepest one, then its readout (whose scale equals that of the next
convolution, c_sigma / q^2).  One recursion to the deepest depth passes through every shallower
network's last activation, and the NNGP (the readout of K) comes with the NTK (the readout of
Kdot Theta + K).  A backend with ``tile_multi`` (numba) reads every requested readout off that one
pass; elsewhere, or for networks that are not such prefixes, each (depth, kind) is a separate
``cntk.kernel`` call: the same numbers, more time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cntk.api import KINDS, as_device, check_inputs, choose_backend, kernel, tiled
from cntk.architecture import Architecture
from cntk.backends.chain import Chain, chain
from cntk.network import Network, as_network


def network_at(arch: Architecture | Callable[[int], Any], depth: int) -> Network:
    """The network of ``arch`` at ``depth``: an Architecture with its depth replaced, or ``arch(depth)``."""
    if isinstance(arch, Architecture):
        return dataclasses.replace(arch, depth=depth).network()
    if callable(arch):
        return as_network(arch(depth))
    raise ValueError(f"arch must be a cntk.Architecture or a function depth -> network, got {type(arch).__name__}")


def prefix_layers(nets: dict[int, Network]) -> dict[int, int] | str:
    """{depth: index of its last activation in the deepest chain} when every network is a prefix of the
    deepest (same layers, then a readout of the same scale), else the reason it is not."""
    deepest = max(nets)
    c = chain(nets[deepest])
    if isinstance(c, str):
        return c
    out = {}
    for d, net in nets.items():
        cd = chain(net)
        if isinstance(cd, str):
            return cd
        if c.pooled or cd.pooled:  # the readout sums of one pass are per activation layer, not per stage
            return "pooled networks (their readouts follow a pool) are computed one depth at a time"
        n = cd.n_act_layers
        same = (cd.family, cd.readout, cd.filter_size) == (c.family, c.readout, c.filter_size)
        prefix = (cd.acts == c.acts[:n] and cd.w2[:n] == c.w2[:n] and cd.b2[:n] == c.b2[:n]
                  and cd.trainable[:n] == c.trainable[:n] and cd.scale(n) == c.scale(n))
        if not (same and prefix):
            return f"the network of depth {d} is not the first layers of the depth-{deepest} one plus a readout"
        out[d] = n - 1
    return out


def _readouts(raw: torch.Tensor, c: Chain, cd: Chain, layer: int, kind: str) -> torch.Tensor:
    """The (depth, kind) kernel from the raw readout sums of activation ``layer`` of chain c."""
    k, t = raw[..., 2 * layer], raw[..., 2 * layer + 1]
    bias = cd.b2[-1]
    if kind == "nngp":
        return k + bias
    added = c.trainable[layer + 1]  # the pass added K to Kdot Theta where the deepest chain trains layer + 1
    if cd.trainable[-1]:  # a trained readout: Kdot Theta + K (+ its bias)
        return (t if added else t + k) + bias
    return t - k if added else t


def kernels(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    arch: Architecture | Callable[[int], Any],
    *,
    depths: Sequence[int],
    kinds: Sequence[str] = KINDS,
    backend: str = "auto",
    device: str | torch.device | None = None,
    memory_mb: float = 1024.0,
    tile_size: int = 256,
    progress: bool | None = None,
) -> dict[tuple[int, str], torch.Tensor]:
    """{(depth, kind): (N1, N2) kernel} for every requested depth and kind, each equal to
    ``cntk.kernel(x1, x2, network_at(arch, depth), kind)``; one pass where the backend can
    (module docstring).  Other arguments as ``cntk.kernel``."""
    if isinstance(depths, (int, str)) or not depths or len(set(depths)) != len(depths):
        raise ValueError(f"depths must be a non-empty sequence of distinct depths, got {depths!r}")
    if isinstance(kinds, str) or not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of {KINDS}, got {kinds!r}")
    try:
        nets = {int(d): network_at(arch, int(d)) for d in depths}
    except ValueError as err:  # NetworkError / ArchitectureError: an impossible depth
        raise ValueError(str(err)) from None
    deepest = max(nets)
    net = nets[deepest]
    shapes = check_inputs(x1, x2, net)
    common = dict(backend=backend, device=device, memory_mb=memory_mb, tile_size=tile_size, progress=progress)
    dev = as_device(device) if device is not None else x1.device
    impl = choose_backend(net, dev, backend, input_shape=tuple(x1.shape[1:]), itemsize=x1.element_size(),
                          memory_mb=memory_mb)
    layers = prefix_layers(nets)
    n2 = len(x1) if x2 is None else len(x2)
    if not hasattr(impl, "tile_multi") or isinstance(layers, str) or len(x1) == 0 or n2 == 0:
        return {(d, k): kernel(x1, x2, nets[d], k, **common) for d in nets for k in kinds}
    c = chain(net)
    keep = np.zeros(c.n_act_layers, dtype=np.int64)
    keep[list(layers.values())] = 1
    ntk = "ntk" in kinds
    a = x1.to(dev)
    symmetric = x2 is None
    b = a if symmetric else x2.to(dev)
    raw = tiled(a, b, symmetric, tile_size, progress, f"{'+'.join(kinds)} depths {sorted(nets)}", torch.float64,
                lambda xa: impl.prepare(xa, net, shapes),
                lambda xa, sa, xb, sb, sym: impl.tile_multi(xa, sa, xb, sb, net, shapes, keep, ntk, sym, tile_size**2))
    return {(d, k): _readouts(raw, c, chain(nets[d]), layers[d], k).to(dtype=x1.dtype, device=x1.device)
            for d in nets for k in kinds}


__all__ = ["kernels", "network_at", "prefix_layers"]
