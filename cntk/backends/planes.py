"""Default torch backend: the recursion evolved on spatial-offset planes (docs/conventions.md, "Offset planes").

The patch trace shifts both pixels of an entry by the same (s, t), so the entries of fixed offset
d = p' - p form a plane that evolves alone: plane_d[i, j] = A[(i, j), (i, j) + d], an H x W array
(zero where (i, j) + d leaves the image), and the patch trace becomes a q x q box sum on each
plane.  The ReLU step needs the per-image diagonals Sigma(x, x)[p, p], which live on the zero
plane of the self pair, where rho = 1 exactly: they are computed once per image in O(P L).

- flatten readout (CNTK-V) needs the zero plane alone: O(P L) per pair;
- GAP needs every plane, (2H-1)(2W-1) of them, about P^2 numbers per pair (folded layout, see
  ``pairs``), and pairs are evaluated ``batch_size`` at a time, so memory never grows with N.

Average pools (k x k, stride k, after an activation) split the recursion into stages: planes
evolve alone within a stage, and at a pool the output plane D gathers the input planes
k D + (-(k-1) .. k-1) per axis ((2k - 1)^2 of them, ``_pool``).  The per-image diagonals after a
pool need the self pair's planes near zero offset, so pooled chains compute them by the self
pairs' own recursion on that window of planes (``self_stds``, O(N)); the flatten readout then keeps
the window of offsets the later stages gather instead of the zero plane alone.

Networks: the chain form of ``cntk.layers`` (conv layers of one filter size, any activation of
the vocabulary, biases, trained or frozen layers, average pools after activations, then GAP or
flatten and the dense readout, e.g. the Myrtle presets); the activation rules are the
vocabulary's own.  Works on any torch device and dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from cntk.backends.chain import Chain, chain, family_chain
from cntk.network import Network

NAME = "planes"
PRIORITY = 10


def supports(net: Network, device: torch.device) -> str | None:
    """CNN chains (AvgPool after activations included), on any device."""
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
    """sqrt(Sigma^(h-1)(x, x)[p, p]) for h = 1..L: shape (N, L, H, W); with pools, a layer of a
    stage of h_s x w_s pixels fills the top-left h_s x w_s corner (zeros elsewhere).

    On the self pair's zero plane rho = 1, so K^(h) = E[phi(u)^2] (the activation's ``self_k``)
    there and Sigma^(h) = s box(K^(h)) + bias variance: a closed form, once per image.  A pool
    breaks it (the pooled diagonal averages the self pair's planes near zero offset), so pooled
    chains run the self pairs' own recursion on that window of planes (``self_stds``).
    """
    c = net if isinstance(net, Chain) else chain(net)
    if c.pooled:
        return self_stds(x, c)
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


def self_stds(x: torch.Tensor, c: Chain, chunk_entries: int = 1 << 23) -> torch.Tensor:
    """``prepare`` for pooled chains: (N, L, H, W), each image's self pair through the recursion on the
    planes of offset |d| <= (the pools still to come) - 1 per stage, the stds read off its zero
    planes (where rho = 1 exactly).  O(N) work, in chunks of about ``chunk_entries`` plane entries."""
    n, _, h, w = x.shape
    lay = _layouts(c, h, w, False, x.device)
    out = torch.zeros(n, c.n_act_layers, h, w, dtype=x.dtype, device=x.device)
    per = lay[0].valid.numel()
    step = max(1, chunk_entries // per)
    for i in range(0, n, step):
        xi = x[i : i + step]
        same = torch.ones(len(xi), dtype=torch.bool, device=x.device)
        _recursion(xi, xi, None, None, same, c, lay, False, out[i : i + step])
    return out


def _first(sig: torch.Tensor, c: Chain, channels: int) -> torch.Tensor:
    """The first layer's scale and bias on the raw (box-summed) input Gram."""
    s0 = c.scale(0, channels)
    sig = sig if s0 == 1.0 else sig * s0
    return sig + c.b2[0] if c.b2[0] else sig


@lru_cache(maxsize=256)
def _axis_layout(n: int, r: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (or column) maps of the plane layout along one axis of length n that holds the offsets
    |d| <= m: fold f, entry u -> the x index and the y index (x index + offset), n (a zero pad entry)
    for entries that are no pixel pair.  Cached: built once per shape.

    All offsets (m = n - 1): planes of offset d >= 0 and d - n (< 0) have complementary valid
    ranges, [0, n - d) and [n - d, n), so they share one fold of length n + r, with r zero separator
    entries between them that keep the q x q box sum from mixing the two (they are re-zeroed by every
    activation step).  A window (m < n - 1): one fold of length n per offset -m..m.
    """
    if m >= n - 1:
        xi = torch.full((n, n + r), n, dtype=torch.long)
        yi = torch.full((n, n + r), n, dtype=torch.long)
        for f in range(n):
            for u in range(n + r):
                if u < n - f:
                    xi[f, u], yi[f, u] = u, u + f
                elif u >= n - f + r:
                    xi[f, u], yi[f, u] = u - r, u - r + f - n
        return xi, yi
    u = torch.arange(n)[None, :]
    yi = u + torch.arange(-m, m + 1)[:, None]
    ok = (yi >= 0) & (yi < n)
    return torch.where(ok, u, n), torch.where(ok, yi, n)


@lru_cache(maxsize=256)
def _locate(n: int, r: int, m: int) -> torch.Tensor:
    """(n + 1, n + 1): the flat index (fold * U + entry) of the pixel pair (x, y) in ``_axis_layout(n, r, m)``;
    F * U (one past the end: a zero pad entry) for pairs outside the layout or with index n."""
    xi, yi = _axis_layout(n, r, m)
    ok = (xi < n) & (yi < n)
    loc = torch.full((n + 1, n + 1), xi.numel(), dtype=torch.long)
    loc[xi[ok], yi[ok]] = torch.arange(xi.numel()).reshape(xi.shape)[ok]
    return loc


@lru_cache(maxsize=256)
def _pool_index(n: int, r: int, m: int, m_out: int, k: int) -> torch.Tensor:
    """(F', U', k^2) flat source indices of a k x k stride-k pool along one axis: the output entry
    (fold, u) of ``_axis_layout(n // k, r, m_out)``, pixel pair (x', y'), is the mean over a, a' < k
    of the source entries (k x' + a, k y' + a') of ``_axis_layout(n, r, m)`` (m >= k m_out + k - 1)."""
    loc = _locate(n, r, m)
    xo, yo = _axis_layout(n // k, r, m_out)
    bad = ((xo >= n // k) | (yo >= n // k))[..., None]
    a = torch.arange(k)
    sx = torch.where(bad, n, k * xo[..., None] + a)
    sy = torch.where(bad, n, k * yo[..., None] + a)
    return loc[sx[..., :, None], sy[..., None, :]].reshape(*xo.shape, k * k)


def _fold(a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., F_h, F_w, U_h, U_w): a gathered at the layout's indices, 0 at pad entries."""
    ap = F.pad(a, (0, 1, 0, 1))
    return ap[..., rows[:, None, :, None], cols[None, :, None, :]]


def _gather2(t: torch.Tensor, ih: torch.Tensor, iw: torch.Tensor) -> torch.Tensor:
    """t (B, F_h, F_w, U_h, U_w) as (B, F_h U_h + 1, F_w U_w + 1) (a zero row and column last), taken at
    the flat indices ih (..., A) and iw (..., C) and summed over A and C: (B, *ih.shape[:-1], *iw.shape[:-1])."""
    b, fh, fw, uh, uw = t.shape
    a = F.pad(t.permute(0, 1, 3, 2, 4).reshape(b, fh * uh, fw * uw), (0, 1, 0, 1))
    a = a[:, ih.reshape(-1)].reshape(b, -1, ih.shape[-1], fw * uw + 1).sum(2)
    a = a[:, :, iw.reshape(-1)].reshape(b, a.shape[1], -1, iw.shape[-1]).sum(3)
    return a.reshape(b, *ih.shape[:-1], *iw.shape[:-1])


@dataclass(frozen=True)
class _Stage:
    """The plane layout of one stage (h x w pixels, offsets within the window (mh, mw)): row and
    column maps, the valid entries and the zero-offset ones (F_h, F_w, U_h, U_w), the flat indices
    of the zero plane (h,), (w,), and of the pool from the previous stage into this one (or None)."""

    h: int
    w: int
    xr: torch.Tensor
    yr: torch.Tensor
    xc: torch.Tensor
    yc: torch.Tensor
    valid: torch.Tensor
    zero: torch.Tensor
    zh: torch.Tensor
    zw: torch.Tensor
    ph: torch.Tensor | None
    pw: torch.Tensor | None


def windows(c: Chain, h: int, w: int, every: bool) -> list[tuple[int, int]]:
    """The offset window (mh, mw) each stage holds: every offset of the last stage (GAP) or its zero
    plane (flatten, self pairs), and before a k-pool the k m + k - 1 that the next window gathers."""
    st = c.stages(h, w)
    mh, mw = (st[-1][0] - 1, st[-1][1] - 1) if every else (0, 0)
    out = [(mh, mw)]
    for sh, sw, k in reversed(st[:-1]):
        mh, mw = min(sh - 1, k * mh + k - 1), min(sw - 1, k * mw + k - 1)
        out.append((mh, mw))
    return out[::-1]


@lru_cache(maxsize=64)
def _layouts(c: Chain, h: int, w: int, every: bool, device: torch.device) -> tuple[_Stage, ...]:
    """Every stage's ``_Stage`` for h x w inputs (cached per chain, shape and device)."""
    r = c.filter_size // 2
    out: list[_Stage] = []
    prev = None
    for (sh, sw, k), (mh, mw) in zip(c.stages(h, w), windows(c, h, w, every)):
        xr, yr = _axis_layout(sh, r, mh)
        xc, yc = _axis_layout(sw, r, mw)
        vr, vc = (xr < sh) & (yr < sh), (xc < sw) & (yc < sw)
        zr, zc = vr & (xr == yr), vc & (xc == yc)
        ph = pw = None
        if prev is not None:
            (ph_, pw_, pk), (pmh, pmw) = prev
            ph, pw = _pool_index(ph_, r, pmh, mh, pk), _pool_index(pw_, r, pmw, mw, pk)
        zh, zw = _locate(sh, r, mh).diagonal()[:sh], _locate(sw, r, mw).diagonal()[:sw]
        t = [xr, yr, xc, yc, vr[:, None, :, None] & vc[None, :, None, :], zr[:, None, :, None] & zc[None, :, None, :],
             zh, zw, ph, pw]
        out.append(_Stage(sh, sw, *(None if v is None else v.to(device) for v in t)))
        prev = (sh, sw, k), (mh, mw)
    return tuple(out)


def _pool(t: torch.Tensor, st: _Stage) -> torch.Tensor:
    """Pool a previous stage's planes t (B, F_h, F_w, U_h, U_w) into stage ``st``'s layout (the k x k
    mean: (2k - 1)^2 source planes per output plane)."""
    return _gather2(t, st.ph, st.pw).permute(0, 1, 3, 2, 4) / float(st.ph.shape[-1] * st.pw.shape[-1])


def _recursion(x: torch.Tensor, y: torch.Tensor, sx: torch.Tensor | None, sy: torch.Tensor | None,
               same: torch.Tensor, c: Chain, lay: tuple[_Stage, ...], ntk: bool,
               stds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma, Theta) after the last activation (and pool) of B pairs, in the last stage's layout
    (Theta None unless ``ntk``).  x, y (B, C, H, W); sx, sy (B, L, H, W) the per-image stds, stage s
    maps in the top-left h_s x w_s corner; sx None: self pairs (x = y), whose stds are read off their
    own zero planes and written into ``stds``."""
    q, n_layers = c.filter_size, c.n_act_layers
    st = lay[0]
    sig = _first(box_sum((_fold(x, st.xr, st.xc) * _fold(y, st.yr, st.yc)).sum(1), q), c, x.shape[1])
    theta = (sig if c.trainable[0] else torch.zeros_like(sig)) if ntk else None
    zero = torch.zeros((), dtype=sig.dtype, device=sig.device)
    stage = 0
    for layer in range(1, n_layers + 1):
        st = lay[stage]
        if sx is None:
            std = _gather2(sig, st.zh[:, None], st.zw[:, None]).clamp_min(0).sqrt()  # (B, h, w)
            stds[:, layer - 1, : st.h, : st.w] = std
            fx, fy = _fold(std, st.xr, st.xc), _fold(std, st.yr, st.yc)
        else:
            fx = _fold(sx[:, layer - 1, : st.h, : st.w], st.xr, st.xc)
            fy = _fold(sy[:, layer - 1, : st.h, : st.w], st.yr, st.yc)
        exact = same[:, None, None, None, None] & st.zero
        k, kdot = c.acts[layer - 1].pair(sig, fx, fy, c.scale(layer), exact=exact)
        k, kdot = torch.where(st.valid, k, zero), torch.where(st.valid, kdot, zero)
        trained = c.trainable[layer]
        t = (kdot * theta + k if trained else kdot * theta) if ntk else None
        if c.pool_after(layer - 1) > 1:
            stage += 1
            k, t = _pool(k, lay[stage]), (_pool(t, lay[stage]) if ntk else None)
        if layer == n_layers:
            return k, t
        sig = box_sum(k, q)
        theta = box_sum(t, q) if ntk else None
        if c.b2[layer]:
            sig = sig + c.b2[layer]
            theta = theta + c.b2[layer] if ntk and trained else theta
    raise AssertionError("a chain has at least one activation")


def pairs(
    x: torch.Tensor,
    sx: torch.Tensor,
    y: torch.Tensor,
    sy: torch.Tensor,
    same: torch.Tensor,
    c: Chain,
    kind: str,
) -> torch.Tensor:
    """Kernel values of B pairs (x[b], y[b]): x, y (B, C, H, W); sx, sy (B, L, H, W) (``prepare``);
    same (B,) bool.

    Planes are held in a folded layout (B, F_h, F_w, U_h, U_w) per stage (``_axis_layout``): all
    (2h-1)(2w-1) planes, two per fold of h + r, for GAP, so GAP holds (1 + r/H)(1 + r/W) P^2 numbers
    per pair instead of P^2; the zero plane alone for the flatten readout without pools (O(P L) per
    pair); with pools, the window of offsets the later stages gather.  Entries that are no pixel
    pair (separators, padding) are kept at 0 after every activation (``valid``), also for
    activations whose kernels are not 0 at zero variance.  A k x k pool maps each stage's planes to
    the next one's (``_pool``).
    """
    h, w = x.shape[-2], x.shape[-1]
    lay = _layouts(c, h, w, c.readout == "gap", x.device)
    sig, theta = _recursion(x, y, sx, sy, same, c, lay, kind == "ntk")
    total = (theta if kind == "ntk" else sig).flatten(1).sum(1)
    total = total if c.readout == "flatten" else total / (lay[-1].h * lay[-1].w) ** 2
    bias = c.b2[c.n_act_layers]
    return total + bias if bias and (kind == "nngp" or c.trainable[c.n_act_layers]) else total


def _entries(c: Chain, h: int, w: int, every: bool) -> int:
    """The most plane entries per pair of any stage's layout."""
    r = c.filter_size // 2
    return max(_axis_layout(sh, r, mh)[0].numel() * _axis_layout(sw, r, mw)[0].numel()
               for (sh, sw, _), (mh, mw) in zip(c.stages(h, w), windows(c, h, w, every)))


def bytes_per_pair(shape: tuple[int, int, int], net: Network, itemsize: int) -> int:
    """Rough peak working memory of one pair in ``pairs`` (about 10 live plane-sized tensors)."""
    c = chain(net)
    ch, h, w = shape
    return (10 + ch + 2 * c.n_act_layers) * _entries(c, h, w, c.readout == "gap") * itemsize


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
