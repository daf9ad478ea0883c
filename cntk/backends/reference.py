"""Reference backend: every layer's own rule (``cntk.layers``, ``cntk.graph``) on full P x P states,
plainly.

A batch of pairs at a time, every nngp / ntk held as a (H, W, H, W) tensor per pair, each layer's
``rule`` applied in turn (the patch trace on the 4-D view, pooling by block means, the readouts by
the mean / the trace); the state carries each side's self variances and every rule updates them
(rho = 1 exactly on a self pair's diagonal, as in the paper's script).  Per image it precomputes the
raw input's statistics only: the self Gram's diagonal (and, for networks that pool before an
activation, the whole self Gram, whose evolution the state then carries).  It computes every network
the vocabulary can describe, pooling and graphs included; slow and memory-hungry on purpose: it is
the test oracle and the benchmark baseline, and the backend of pooled and graph networks.
"""
from __future__ import annotations

import torch

from cntk.core_layers import PairState, Shape, _diag
from cntk.network import Network

NAME = "reference"
PRIORITY = 0  # the slowest: chosen only when no other backend computes the network


def _gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4:
        b, c, h, w = x.shape
        return torch.einsum("bcp,bcq->bpq", x.reshape(b, c, h * w), y.reshape(b, c, h * w)).reshape(b, h, w, h, w)
    return (x * y).sum(1)


def self_stats(x: torch.Tensor, full: bool = False) -> list[torch.Tensor]:
    """[the self Gram's diagonal (N, H, W) or (N,)] (+ [the whole self Gram (N, H, W, H, W)] if ``full``)."""
    g = _gram(x, x)
    if x.ndim == 4:
        return [_diag(g), g] if full else [_diag(g)]
    return [g]


def initial_state(x: torch.Tensor, y: torch.Tensor, same: torch.Tensor | None,
                  sx: list[torch.Tensor] | None = None, sy: list[torch.Tensor] | None = None) -> PairState:
    """The raw input state of pairs (x[b], y[b]): images (B, C, H, W) -> (B, H, W, H, W); vectors
    (B, D) -> (B,); ``sx`` / ``sy``: their ``self_stats`` (computed here when None)."""
    same = same if same is not None and bool(same.any()) else None
    sx = self_stats(x) if sx is None else sx
    sy = self_stats(y) if sy is None else sy
    g = _gram(x, y)
    return PairState(g, torch.zeros_like(g), sx[0], sy[0], same, True, x.shape[1],
                     cov_x=sx[1] if len(sx) > 1 else None, cov_y=sy[1] if len(sy) > 1 else None)


def apply_rules(net: Network, state: PairState, shapes: list[Shape]) -> PairState:
    """Run every layer's rule in turn (each updates the cross terms and both sides' variances)."""
    for layer, s in zip(net.layers, shapes):
        state = layer.rule(state, s)
    return state


def supports(net: Network, device: torch.device) -> str | None:
    """Every network, on every device."""
    return None


def prepare(x: torch.Tensor, net: Network, shapes) -> list[torch.Tensor]:
    """Each image's raw ``self_stats`` (the whole self Gram where ``net.needs_self_cov``), in chunks."""
    full = net.needs_self_cov
    if len(x) == 0:
        return []
    p = x.shape[-1] * x.shape[-2] if x.ndim == 4 else 1
    chunk = max(1, int(2**24 // max(1, p * p)))
    parts = [self_stats(x[i : i + chunk], full) for i in range(0, len(x), chunk)]
    return [torch.cat([part[k] for part in parts]) for k in range(len(parts[0]))]


def bytes_per_pair(shape, net: Network, itemsize: int) -> int:
    """About eight live (H W)^2 tensors per pair (three times that where the self Grams travel along)."""
    p = shape[1] * shape[2] if len(shape) == 3 else 1
    return (24 if net.needs_self_cov else 8) * p * p * itemsize + 64


def tile(x1, s1, x2, s2, net: Network, shapes, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two blocks (upper triangle only when symmetric), ``batch_size`` pairs at a time."""
    n1, n2 = len(x1), len(x2)
    if symmetric:
        ii, jj = torch.triu_indices(n1, n2, device=x1.device)
    else:
        ii, jj = (g.reshape(-1) for g in torch.meshgrid(torch.arange(n1, device=x1.device),
                                                          torch.arange(n2, device=x1.device), indexing="ij"))
    out = torch.zeros(n1, n2, dtype=x1.dtype, device=x1.device)
    for start in range(0, len(ii), batch_size):
        i, j = ii[start : start + batch_size], jj[start : start + batch_size]
        same = (i == j) if symmetric else torch.zeros(len(i), dtype=torch.bool, device=x1.device)
        st = apply_rules(net, initial_state(x1[i], x2[j], same, [v[i] for v in s1], [v[j] for v in s2]), shapes)
        out[i, j] = st.ntk if kind == "ntk" else st.nngp
    if symmetric:
        out = out + torch.triu(out, 1).T
    return out
