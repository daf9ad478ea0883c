"""Fully-connected NTK / NNGP (Jacot et al.; Arora et al. Sec. 3): the recursion with scalars.

Sigma^(0)(x, y) = x . y (first layer weights N(0, 1), unscaled); each ReLU step carries
c_sigma = 2; no patch trace.  Vectorised over all pairs of a tile: O(D + L) per pair.
"""
from __future__ import annotations

import torch

from .architecture import Architecture
from .arccos import relu_step


def prepare(x: torch.Tensor, arch: Architecture) -> torch.Tensor:
    """sqrt(Sigma^(h-1)(x, x)) for h = 1..L: shape (N, L).  On the self pair rho = 1, so
    Sigma^(h)(x, x) = (c_sigma / 2) Sigma^(h-1)(x, x)."""
    var = (x * x).sum(1)
    factors = (arch.relu_scale / 2) ** torch.arange(arch.n_relu_layers, dtype=x.dtype, device=x.device)
    return (var[:, None] * factors).sqrt()


def tile(x1, s1, x2, s2, arch: Architecture, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two blocks of vectors x1 (n1, D), x2 (n2, D)."""
    n_layers = arch.n_relu_layers
    sig = x1 @ x2.T
    exact = torch.eye(len(x1), dtype=torch.bool, device=x1.device) if symmetric else None
    theta = torch.zeros_like(sig) if arch.fix_first_last else sig
    for layer in range(1, n_layers + 1):
        k, kdot = relu_step(sig, s1[:, layer - 1, None], s2[None, :, layer - 1], arch.relu_scale, exact=exact)
        theta = kdot * theta if (layer == n_layers and arch.fix_first_last) else kdot * theta + k
        sig = k
    out = theta if kind == "ntk" else sig
    return (out + out.T) / 2 if symmetric else out
