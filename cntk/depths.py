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

The paper's "fix" (``fix_first_last``: first layer and readout frozen) comes from the same pass too,
with ``fixes=(False, True)`` (keys (depth, kind, fix)):

    >>> ks = cntk.kernels(x, None, cntk.Architecture(readout="gap"), depths=(3, 6), fixes=(False, True))
    >>> kf = ks[6, "ntk", True]           # cntk.kernel(x, None, Architecture(depth=6, fix_first_last=True), "ntk")

Theta is linear in Theta^(0) and in the K terms each trained layer adds, so Theta with a frozen first
layer is Theta - D, D the first layer's share: D^(0) = Theta^(0) and D^(h+1) = box(Kdot^(h) D^(h)), with
no K term.  The pass carries D beside Theta (one more box sum and multiply per entry and layer) and
reads off Kdot Theta - Kdot D, without the readout's K (it is frozen), at every kept layer.
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
    """The (depth, kind) kernel from the raw readout sums of activation ``layer`` of chain c; a chain
    cd whose first layer is frozen where c's is trained takes off the first layer's share (the sums
    of Kdot D, ``tile_multi(fix=True)``, after the 2 L sums of K and Kdot Theta + kf K)."""
    k, t = raw[..., 2 * layer], raw[..., 2 * layer + 1]
    bias = cd.b2[-1]
    if kind == "nngp":
        return k + bias
    added = c.trainable[layer + 1]  # the pass added K to Kdot Theta where the deepest chain trains layer + 1
    if c.trainable[0] and not cd.trainable[0]:  # Kdot (Theta - D), then the readout's own terms
        kdt = (t - k if added else t) - raw[..., 2 * c.n_act_layers + layer]
        return kdt + k + bias if cd.trainable[-1] else kdt
    if cd.trainable[-1]:  # a trained readout: Kdot Theta + K (+ its bias)
        return (t if added else t + k) + bias
    return t - k if added else t


def _first_frozen(c: Chain, cd: Chain) -> bool:
    """Whether cd is c but for a frozen first layer (and any readout): what the D sums read off."""
    same = dataclasses.replace(cd, trainable=c.trainable) == c
    return same and c.trainable[0] and not cd.trainable[0] and cd.trainable[1:-1] == c.trainable[1:-1]


def kernels(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    arch: Architecture | Callable[[int], Any],
    *,
    depths: Sequence[int],
    kinds: Sequence[str] = KINDS,
    fixes: Sequence[bool] | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    memory_mb: float = 1024.0,
    tile_size: int = 256,
    progress: bool | None = None,
) -> dict[tuple, torch.Tensor]:
    """{(depth, kind): (N1, N2) kernel} for every requested depth and kind, each equal to
    ``cntk.kernel(x1, x2, network_at(arch, depth), kind)``; one pass where the backend can
    (module docstring).  ``fixes`` (an Architecture only), e.g. (False, True): {(depth, kind, fix): ...},
    each equal to the same call with ``dataclasses.replace(arch, fix_first_last=fix)``, every fix from
    the same pass.  Other arguments as ``cntk.kernel``."""
    if isinstance(depths, (int, str)) or not depths or len(set(depths)) != len(depths):
        raise ValueError(f"depths must be a non-empty sequence of distinct depths, got {depths!r}")
    if isinstance(kinds, str) or not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of {KINDS}, got {kinds!r}")
    if fixes is not None:
        if (isinstance(fixes, (bool, str)) or not fixes or any(not isinstance(f, (bool, np.bool_)) for f in fixes)
                or len(set(fixes)) != len(fixes)):
            raise ValueError(f"fixes must be a non-empty sequence of distinct booleans, got {fixes!r}")
        if not isinstance(arch, Architecture):
            raise ValueError(f"fixes needs a cntk.Architecture (its fix_first_last), got {type(arch).__name__}")
    variants = {None: arch} if fixes is None else {
        bool(f): dataclasses.replace(arch, fix_first_last=bool(f)) for f in fixes}
    try:
        all_nets = {(int(d), f): network_at(a, int(d)) for f, a in variants.items() for d in depths}
    except ValueError as err:  # NetworkError / ArchitectureError: an impossible depth (or fix)
        raise ValueError(str(err)) from None
    key = (lambda d, k, f: (d, k)) if fixes is None else (lambda d, k, f: (d, k, f))
    # the pass runs the variant with a trained first layer; the others are read off it (_readouts)
    run = False if False in variants else next(iter(variants))
    nets = {d: n for (d, f), n in all_nets.items() if f == run}
    deepest = max(nets)
    net = nets[deepest]
    shapes = check_inputs(x1, x2, net)
    common = dict(backend=backend, device=device, memory_mb=memory_mb, tile_size=tile_size, progress=progress)
    dev = as_device(device) if device is not None else x1.device
    impl = choose_backend(net, dev, backend, input_shape=tuple(x1.shape[1:]), itemsize=x1.element_size(),
                          memory_mb=memory_mb)
    layers = prefix_layers(nets)
    n2 = len(x1) if x2 is None else len(x2)
    c = None if isinstance(layers, str) else chain(net)
    frozen = {f for f in variants if f != run}  # variants read off the D sums
    if c is not None and not all(_first_frozen(chain(nets[d]), chain(all_nets[d, f])) for d in nets for f in frozen):
        c = None  # not what the D sums read off: separate calls
    if not hasattr(impl, "tile_multi") or c is None or len(x1) == 0 or n2 == 0:
        return {key(d, k, f): kernel(x1, x2, n, k, **common) for (d, f), n in all_nets.items() for k in kinds}
    keep = np.zeros(c.n_act_layers, dtype=np.int64)
    keep[list(layers.values())] = 1
    ntk = "ntk" in kinds
    fix = ntk and bool(frozen)
    a = x1.to(dev)
    symmetric = x2 is None
    b = a if symmetric else x2.to(dev)
    what = f"{'+'.join(kinds)}{' fix' * fix} depths {sorted(nets)}"
    raw = tiled(a, b, symmetric, tile_size, progress, what, torch.float64,
                lambda xa: impl.prepare(xa, net, shapes),
                lambda xa, sa, xb, sb, sym: impl.tile_multi(xa, sa, xb, sb, net, shapes, keep, ntk, sym, tile_size**2,
                                                            **({"fix": True} if fix else {})))
    return {key(d, k, f): _readouts(raw, c, chain(n), layers[d], k).to(dtype=x1.dtype, device=x1.device)
            for (d, f), n in all_nets.items() for k in kinds}


__all__ = ["kernels", "network_at", "prefix_layers"]
