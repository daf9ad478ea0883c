"""Vector backend: fully-connected chains (Jacot et al.; Arora et al. Sec. 3), the recursion with
scalars: no pixels, no patch trace, the vocabulary's activation rules on (n1, n2) matrices of
pairs.  Vectorised over all pairs of a tile: O(D + L) per pair.
"""
from __future__ import annotations

import torch

from cntk.backends.chain import Chain, chain, family_chain
from cntk.network import Network

NAME = "vector"
PRIORITY = 20


def supports(net: Network, device: torch.device) -> str | None:
    """Fully-connected chains, on any device."""
    return family_chain(net, "fc")


def _first(g: torch.Tensor, c: Chain, dim: int) -> torch.Tensor:
    s0 = c.scale(0, dim)
    g = g if s0 == 1.0 else g * s0
    return g + c.b2[0] if c.b2[0] else g


def prepare(x: torch.Tensor, net: Network | Chain, shapes=None) -> torch.Tensor:
    """sqrt(Sigma^(h-1)(x, x)) for h = 1..L: shape (N, L); on the self pair rho = 1, so
    Sigma^(h)(x, x) = s E[phi(u)^2] + bias variance."""
    c = net if isinstance(net, Chain) else chain(net)
    var = _first((x * x).sum(1), c, x.shape[1])
    stds = []
    for layer in range(1, c.n_act_layers + 1):
        var = var.clamp_min(0)
        stds.append(var.sqrt())
        if layer < c.n_act_layers:
            var = c.acts[layer - 1].self_k(var) * c.scale(layer) + c.b2[layer]
    return torch.stack(stds, 1)


def bytes_per_pair(shape, net: Network, itemsize: int) -> int:
    return 8 * itemsize


def tile(x1, s1, x2, s2, net: Network, shapes, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two blocks of vectors x1 (n1, D), x2 (n2, D)."""
    c = chain(net)
    n_layers = c.n_act_layers
    sig = _first(x1 @ x2.T, c, x1.shape[1])
    exact = torch.eye(len(x1), dtype=torch.bool, device=x1.device) if symmetric else None
    theta = sig if c.trainable[0] else torch.zeros_like(sig)
    for layer in range(1, n_layers + 1):
        k, kdot = c.acts[layer - 1].pair(sig, s1[:, layer - 1, None], s2[None, :, layer - 1], c.scale(layer), exact=exact)
        trained = c.trainable[layer]
        theta = kdot * theta + k if trained else kdot * theta
        sig = k + c.b2[layer] if c.b2[layer] else k
        if c.b2[layer] and trained:
            theta = theta + c.b2[layer]
    out = theta if kind == "ntk" else sig
    return (out + out.T) / 2 if symmetric else out
