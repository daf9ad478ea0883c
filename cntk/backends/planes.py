"""Default torch backend: the recursion evolved on spatial-offset planes (docs/conventions.md, "Offset planes").

The patch trace shifts both pixels of an entry by the same (s, t), so the entries of fixed offset
d = p' - p form a plane that evolves alone: plane_d[i, j] = A[(i, j), (i, j) + d], an H x W array
(zero where (i, j) + d leaves the image), and the patch trace becomes a q x q box sum on each
plane.  The ReLU step needs the per-image diagonals Sigma(x, x)[p, p], which live on the zero
plane of the self pair, where rho = 1 exactly: they are computed once per image in O(P L).

- flatten readout (CNTK-V) needs the zero plane alone: O(P L) per pair;
- GAP needs every plane, (2H-1)(2W-1) of them, about P^2 numbers per pair (folded layout, see
  ``pairs``), and pairs are evaluated ``batch_size`` at a time, so memory never grows with N.

Networks: the chain form of ``cntk.layers`` (conv layers of one filter size, any activation of
the vocabulary, biases, trained or frozen layers, then GAP or flatten and the dense readout); the
activation rules are the vocabulary's own.  Pooled networks go to the reference backend (an output
plane of a k x k pool gathers (2k - 1)^2 input planes: ``cntk.layers.AvgPool``).  Works on any
torch device and dtype.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from cntk.backends.chain import Chain, chain, family_chain
from cntk.network import Network

NAME = "planes"
PRIORITY = 10


def supports(net: Network, device: torch.device) -> str | None:
    """CNN chains (no pooling), on any device."""
    return family_chain(net, "cnn")


def box_sum(a: torch.Tensor, q: int) -> torch.Tensor:
    """q x q box sum over the last two dims with zero padding (the patch trace on a plane)."""
    r = q // 2
    if r == 0:
        return a
    ap = F.pad(a, (r, r, r, r))
    h, w = a.shape[-2], a.shape[-1]
    rows = sum(ap[..., s : s + h, :] for s in range(q))
    return sum(rows[..., t : t + w] for t in range(q))


def prepare(x: torch.Tensor, net: Network | Chain, shapes=None) -> torch.Tensor:
    """sqrt(Sigma^(h-1)(x, x)[p, p]) for h = 1..L: shape (N, L, H, W).

    On the self pair's zero plane rho = 1, so K^(h) = E[phi(u)^2] (the activation's ``self_k``)
    there and Sigma^(h) = s box(K^(h)) + bias variance: a closed form, once per image.
    """
    c = net if isinstance(net, Chain) else chain(net)
    q, n_layers = c.filter_size, c.n_act_layers
    var = _first(box_sum((x * x).sum(1), q), c, x.shape[1])
    stds = []
    for layer in range(1, n_layers + 1):
        var = var.clamp_min(0)
        stds.append(var.sqrt())
        if layer < n_layers:
            var = box_sum(c.acts[layer - 1].self_k(var) * c.scale(layer), q)
            if c.b2[layer]:
                var = var + c.b2[layer]
    return torch.stack(stds, 1)


def _first(sig: torch.Tensor, c: Chain, channels: int) -> torch.Tensor:
    """The first layer's scale and bias on the raw (box-summed) input Gram."""
    s0 = c.scale(0, channels)
    sig = sig if s0 == 1.0 else sig * s0
    return sig + c.b2[0] if c.b2[0] else sig


@lru_cache(maxsize=64)
def _fold_index(n: int, r: int, all_offsets: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (or column) maps of the folded plane layout along one axis of length n.

    Planes of offset d >= 0 and d - n (< 0) have complementary valid ranges, [0, n - d) and
    [n - d, n), so they share one fold of length n + r, with r zero separator entries between
    them that keep the q x q box sum from mixing the two (they are re-zeroed by every ReLU step,
    where the image's variance is 0).  Fold f, entry u: the x index and the y index (x index +
    offset), with n (a zero pad entry) for separators.  Only fold 0, offset 0, when not all_offsets.
    Cached: built once per shape.
    """
    folds = n if all_offsets else 1
    xi = torch.full((folds, n + r), n, dtype=torch.long)
    yi = torch.full((folds, n + r), n, dtype=torch.long)
    for f in range(folds):
        for u in range(n + r):
            if u < n - f:
                xi[f, u], yi[f, u] = u, u + f
            elif u >= n - f + r:
                xi[f, u], yi[f, u] = u - r, u - r + f - n
    return xi, yi


def _fold(a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., F_h, F_w, H + r, W + r): a gathered at the folded indices, 0 at separators."""
    ap = F.pad(a, (0, 1, 0, 1))
    return ap[..., rows[:, None, :, None], cols[None, :, None, :]]


def pairs(
    x: torch.Tensor,
    sx: torch.Tensor,
    y: torch.Tensor,
    sy: torch.Tensor,
    same: torch.Tensor,
    c: Chain,
    kind: str,
) -> torch.Tensor:
    """Kernel values of B pairs (x[b], y[b]): x, y (B, C, H, W); sx, sy (B, L, H, W); same (B,) bool.

    Planes are held in a folded layout (B, F_h, F_w, H + r, W + r), r = q // 2: F_h = F_w = 1
    (the zero plane) for the flatten readout, F_h = H, F_w = W (all (2H-1)(2W-1) planes, two per
    fold) for GAP, so GAP holds (1 + r/H)(1 + r/W) P^2 numbers per pair instead of P^2.  Entries
    that are no pixel pair (separators, padding) are kept at 0 after every activation (``valid``),
    also for activations whose kernels are not 0 at zero variance.
    """
    q, n_layers = c.filter_size, c.n_act_layers
    h, w, r = x.shape[-2], x.shape[-1], q // 2
    every = c.readout == "gap"
    xr, yr = (t.to(x.device) for t in _fold_index(h, r, every))
    xc, yc = (t.to(x.device) for t in _fold_index(w, r, every))
    sig = _first(box_sum((_fold(x, xr, xc) * _fold(y, yr, yc)).sum(1), q), c, x.shape[1])
    fx, fy = _fold(sx, xr, xc), _fold(sy, yr, yc)  # (B, L, F_h, F_w, H + r, W + r)
    valid = (xr < h)[:, None, :, None] & (yr < h)[:, None, :, None] & (xc < w)[None, :, None, :] & (yc < w)[None, :, None, :]
    zero_plane = torch.zeros(sig.shape[1:], dtype=torch.bool, device=x.device)
    zero_plane[0, 0, :h, :w] = True
    exact = same[:, None, None, None, None] & zero_plane
    theta = sig if c.trainable[0] else torch.zeros_like(sig)
    zero = torch.zeros((), dtype=sig.dtype, device=sig.device)
    for layer in range(1, n_layers + 1):
        k, kdot = c.acts[layer - 1].pair(sig, fx[:, layer - 1], fy[:, layer - 1], c.scale(layer), exact=exact)
        k, kdot = torch.where(valid, k, zero), torch.where(valid, kdot, zero)
        trained = c.trainable[layer]
        if layer < n_layers:
            theta = box_sum(kdot * theta + k if trained else kdot * theta, q)
            sig = box_sum(k, q)
            if c.b2[layer]:
                sig = sig + c.b2[layer]
                theta = theta + c.b2[layer] if trained else theta
        else:
            theta = kdot * theta + k if trained else kdot * theta
            sig = k
    final = theta if kind == "ntk" else sig
    total = final.flatten(1).sum(1)
    total = total if c.readout == "flatten" else total / (h * w) ** 2
    bias = c.b2[n_layers]
    return total + bias if bias and (kind == "nngp" or c.trainable[n_layers]) else total


def bytes_per_pair(shape: tuple[int, int, int], net: Network, itemsize: int) -> int:
    """Rough peak working memory of one pair in ``pairs`` (about 10 live plane-sized tensors)."""
    c = chain(net)
    ch, h, w = shape
    r = c.filter_size // 2
    folds = 1 if c.readout == "flatten" else h * w
    return (10 + ch + 2 * c.n_act_layers) * folds * (h + r) * (w + r) * itemsize


def tile(x1, s1, x2, s2, net: Network, shapes, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two image blocks, ``batch_size`` pairs per vectorised step."""
    c = chain(net)
    n1, n2 = len(x1), len(x2)
    if symmetric:
        ii, jj = torch.triu_indices(n1, n2, device=x1.device)
    else:
        ii, jj = torch.meshgrid(torch.arange(n1, device=x1.device), torch.arange(n2, device=x1.device), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.zeros(n1, n2, dtype=x1.dtype, device=x1.device)
    for start in range(0, len(ii), batch_size):
        i, j = ii[start : start + batch_size], jj[start : start + batch_size]
        same = (i == j) if symmetric else torch.zeros(len(i), dtype=torch.bool, device=x1.device)
        out[i, j] = pairs(x1[i], s1[i], x2[j], s2[j], same, c, kind)
    if symmetric:
        out = out + torch.triu(out, 1).T
    return out
