"""Reference backend: every layer's own rule (``cntk.layers``) on full P x P states, plainly.

A batch of pairs at a time, every nngp / ntk held as a (H, W, H, W) tensor per pair, each layer's
``rule`` applied in turn (the patch trace on the 4-D view, pooling by block means, the readouts by
the mean / the trace).  Per-image diagonals come from the same rules run on the self pair (x, x)
with rho = 1 exactly on its diagonal, as in the paper's script.  It computes every network the
vocabulary can describe, pooling included; slow and memory-hungry on purpose: it is the test
oracle and the benchmark baseline, and the backend of pooled networks.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from cntk.layers import Act, Network, PairState, Shape, _diag

NAME = "reference"
PRIORITY = 0  # the slowest: chosen only when no other backend computes the network


def initial_state(x: torch.Tensor, y: torch.Tensor, same: torch.Tensor | None) -> PairState:
    """The raw input state of pairs (x[b], y[b]): images (B, C, H, W) -> (B, H, W, H, W); vectors (B, D) -> (B,)."""
    same = same if same is not None and bool(same.any()) else None
    if x.ndim == 4:
        b, c, h, w = x.shape
        g = torch.einsum("bcp,bcq->bpq", x.reshape(b, c, h * w), y.reshape(b, c, h * w)).reshape(b, h, w, h, w)
        return PairState(g, torch.zeros_like(g), None, None, same, True, c)
    g = (x * y).sum(1)
    return PairState(g, torch.zeros_like(g), None, None, same, True, x.shape[1])


def apply_rules(net: Network, state: PairState, shapes: list[Shape],
                var_x: list[torch.Tensor], var_y: list[torch.Tensor]) -> PairState:
    """Run every layer's rule; ``var_x`` / ``var_y``: the self pairs' nngp diagonals before each
    activation, in order (from ``self_variances``)."""
    k = 0
    for layer, s in zip(net.layers, shapes):
        if isinstance(layer, Act):
            state = replace(state, var_x=var_x[k], var_y=var_y[k])
            k += 1
        state = layer.rule(state, s)
    return state


def self_variances(net: Network, x: torch.Tensor, shapes: list[Shape]) -> list[torch.Tensor]:
    """For each activation layer, the nngp diagonal of every input's self pair before it: (N, H, W)
    or (N,).  Computed by the rules themselves on (x, x) with rho = 1 on the diagonal."""
    st = initial_state(x, x, torch.ones(len(x), dtype=torch.bool, device=x.device))
    out = []
    for layer, s in zip(net.layers, shapes):
        if isinstance(layer, Act):
            diag = _diag(st.nngp) if st.nngp.ndim == 5 else st.nngp
            out.append(diag)
            st = replace(st, var_x=diag, var_y=diag)
        st = layer.rule(st, s)
    return out


def supports(net: Network, device: torch.device) -> str | None:
    """Every network, on every device."""
    return None


def prepare(x: torch.Tensor, net: Network, shapes) -> list[torch.Tensor]:
    """For each activation, the self pairs' nngp diagonals: (N, H, W) (vectors: (N,)); in chunks of
    images, each holding (H W)^2 numbers per image."""
    if len(x) == 0:
        return []
    p = x.shape[-1] * x.shape[-2] if x.ndim == 4 else 1
    chunk = max(1, int(2**24 // max(1, p * p)))
    parts = [self_variances(net, x[i : i + chunk], shapes) for i in range(0, len(x), chunk)]
    return [torch.cat([part[k] for part in parts]) for k in range(len(parts[0]))]


def bytes_per_pair(shape, net: Network, itemsize: int) -> int:
    """About eight live (H W)^2 tensors per pair."""
    p = shape[1] * shape[2] if len(shape) == 3 else 1
    return 8 * p * p * itemsize + 64


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
        st = apply_rules(net, initial_state(x1[i], x2[j], same), shapes, [v[i] for v in s1], [v[j] for v in s2])
        out[i, j] = st.ntk if kind == "ntk" else st.nngp
    if symmetric:
        out = out + torch.triu(out, 1).T
    return out
