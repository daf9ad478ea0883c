"""The contractions of the structured empirical NTK: per layer, the Jacobian one (per-sample weight
gradients, then J1 J2^T) or the Gram one (P x P Grams of cotangents and patch-traced activations),
and the readout's; each a list of independent tasks (run and summed by ``ntk_structured._contract``).

Layout of a kernel block: acc (K, n1, n2) per output, (n1 K, n2 K) for "full".  A task returns
(where, tensor) to be added to acc: where is None (a whole partial acc), ("block", i0, i1, j0, j1) or
"readout".  With `same` (a symmetric block) only the entries i <= j are complete; ``_mirror``
completes the rest.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from finite_nets.ntk_gemm import _add_nt, _mm_nt, _onednn
from finite_nets.ntk_plan import _N_GRAM_SYM_BLOCKS


def _kernel_of(j1: torch.Tensor, j2: torch.Tensor, full: bool, same: bool) -> torch.Tensor:
    """j1 (n1, K, D), j2 (n2, K, D): one chunk of the flattened per-sample gradients -> its partial acc."""
    n1, k, d = j1.shape
    n2 = len(j2)
    if full:
        acc = j1.new_zeros(n1 * k, n2 * k, dtype=torch.float64)
        _add_nt(acc, j1.view(n1 * k, d), j2.view(n2 * k, d), same, k)
    else:
        acc = j1.new_zeros(k, n1, n2, dtype=torch.float64)
        for kk in range(k):
            _add_nt(acc[kk], j1[:, kk], j2[:, kk], same, 1)
    return acc


def _im2col(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """a (..., c, h + q - 1, w + q - 1) zero-padded -> (..., c q^2, h w), index (c, di, dj) as in the weights."""
    lead = a.shape[:-3]
    return a.unfold(-2, h, 1).unfold(-2, w, 1).reshape(*lead, -1, h * w)


def _per_sample(g: torch.Tensor, a: torch.Tensor, q: int) -> torch.Tensor:
    """Per-sample weight gradients: g (n, K, rows, H, W), a (n, cc, H + 2r, W + 2r) -> (n, K, rows cc q^2)."""
    n, k, rows, h, w = g.shape
    if _onednn(g):  # one oneDNN GEMM per sample; its im2col stays in cache
        out = g.new_empty(n, k, rows * a.shape[1] * q * q)
        for s in range(n):
            u = _im2col(a[s], h, w)
            out[s].view(k * rows, -1).copy_(_mm_nt(g[s].reshape(k * rows, h * w), u))
        return out
    u = _im2col(a, h, w)  # (n, cc q^2, P)
    return torch.bmm(g.reshape(n, k * rows, h * w), u.transpose(1, 2)).view(n, k, -1)


def _jacobian_conv_task(a1, g1, a2, g2, q, full, same, c0, c1, r0, r1):
    j1 = _per_sample(g1[:, :, r0:r1], a1[:, c0:c1], q)
    j2 = j1 if same else _per_sample(g2[:, :, r0:r1], a2[:, c0:c1], q)
    return None, _kernel_of(j1, j2, full, same)


def _jacobian_conv(a1, g1, a2, g2, q: int, full: bool, same: bool, scratch: int, threads: int) -> list:
    """Tasks: chunks (input channels x weight rows) of the per-sample weight gradients and their kernel."""
    n1, k, m, h, w = g1.shape
    c, item = a1.shape[1], a1.element_size()
    ne = n1 if same else n1 + len(a2)
    batched = not _onednn(g1)  # the bmm route keeps every sample's im2col of the chunk
    per_row = ne * q * q * item * k  # bytes of one weight entry (row, channel) of J over all samples
    per_channel = m * per_row + (ne * q * q * h * w * item if batched else 0)
    cc = int(min(-(-c // threads), max(1, scratch // per_channel)))  # >= `threads` tasks per layer
    rows = m if scratch >= per_channel else int(min(m, max(1, scratch // per_row)))
    return [partial(_jacobian_conv_task, a1, g1, a2, g2, q, full, same, c0, c0 + cc, r0, r0 + rows)
            for c0 in range(0, c, cc) for r0 in range(0, m, rows)]


def _jacobian_fc_task(a1, g1, a2, g2, full, same, c0, c1):
    j1 = (g1[:, :, :, None] * a1[:, None, None, c0:c1]).reshape(len(a1), g1.shape[1], -1)
    j2 = j1 if same else (g2[:, :, :, None] * a2[:, None, None, c0:c1]).reshape(len(a2), g2.shape[1], -1)
    return None, _kernel_of(j1, j2, full, same)


def _jacobian_fc(a1, g1, a2, g2, full: bool, same: bool, scratch: int) -> list:
    n1, k, m = g1.shape
    c, item = a1.shape[1], a1.element_size()
    ne = n1 if same else n1 + len(a2)
    cc = int(min(c, max(1, scratch // (ne * k * m * item))))
    return [partial(_jacobian_fc_task, a1, g1, a2, g2, full, same, c0, c0 + cc) for c0 in range(0, c, cc)]


def _patch_trace(t: torch.Tensor, q: int) -> torch.Tensor:
    """T(t)[(i,j),(i',j')] = sum_{|s|,|u| <= q//2} t[(i+s,j+u),(i'+s,j'+u)], zero outside; t: (b1, H, W, b2, H, W).
    Separable: the shifts along rows, then along columns."""
    r = q // 2
    out = t
    for d1, d2 in ((1, 4), (2, 5)):
        size = out.shape[d1]
        res = out.clone()
        for s in range(-r, r + 1):
            lo, hi = max(0, -s), size - max(0, s)
            if s == 0 or hi <= lo:
                continue
            src = out.narrow(d1, lo + s, hi - lo).narrow(d2, lo + s, hi - lo)
            res.narrow(d1, lo, hi - lo).narrow(d2, lo, hi - lo).add_(src)
        out = res
    return out


def _gram_conv_task(a1, g1, a2, g2, hw, q, full, i0, i1, j0, j1):
    k, _, p, m = g1.shape
    c = a1.shape[2]
    h, w = hw
    bi, bj = i1 - i0, j1 - j0
    act = _mm_nt(a1[i0:i1].reshape(-1, c), a2[j0:j1].reshape(-1, c)).view(bi, h, w, bj, h, w)
    act = _patch_trace(act, q).view(bi, p, bj, p)
    out = act.new_empty((bi, k, bj, k) if full else (k, bi, bj))
    for kk in range(k):
        for ll in range(k) if full else (kk,):
            val = _mm_nt(g1[kk, i0:i1].reshape(-1, m), g2[ll, j0:j1].reshape(-1, m)).view(bi, p, bj, p)
            val = val.mul_(act).sum((1, 3))
            if full:
                out[:, kk, :, ll] = val
            else:
                out[kk] = val
    return ("block", i0, i1, j0, j1), out


def _gram_conv(a1, g1, a2, g2, hw: tuple[int, int], q: int, full: bool, same: bool, scratch: int) -> list:
    """Tasks: blocks of pairs of sum_{p,p'} <g_p, g'_p'> T(<a_p, a'_p'>); a (n, P, c) channels-last, g (K, n, P, m)."""
    k, n1, p, m = g1.shape
    n2, item = len(a2), a1.element_size()
    b = max(1, math.isqrt(max(1, scratch // (4 * p * p * item))))  # four P x P buffers per pair
    if same:  # upper blocks only: at least _N_GRAM_SYM_BLOCKS blocks a side
        b = min(b, -(-n1 // min(n1, _N_GRAM_SYM_BLOCKS)))
    b1, b2 = min(n1, b), min(n2, b)
    tasks = []
    for i0 in range(0, n1, b1):
        for j0 in range(i0 if same else 0, n2, b2):
            tasks.append(partial(_gram_conv_task, a1, g1, a2, g2, hw, q, full, i0, min(n1, i0 + b1), j0, min(n2, j0 + b2)))
    return tasks


def _gram_fc_task(a1, g1, a2, g2, full):
    k = g1.shape[1]
    act = _mm_nt(a1, a2)
    acc = act.new_zeros((len(a1) * k, len(a2) * k) if full else (k, len(a1), len(a2)), dtype=torch.float64)
    full_view = acc.view(len(a1), k, len(a2), k) if full else None
    for kk in range(k):
        for ll in range(k) if full else (kk,):
            val = _mm_nt(g1[:, kk], g2[:, ll]) * act
            if full:
                full_view[:, kk, :, ll] = val
            else:
                acc[kk] = val
    return None, acc


def _readout_task(f1, f2):
    acc = f1.new_zeros(len(f1), len(f2), dtype=torch.float64)
    _add_nt(acc, f1, f2, False, 1)
    return "readout", acc


def _mirror(out: torch.Tensor) -> torch.Tensor:
    """(n, n, K[, K]) whose entries i <= j are complete -> the exactly symmetric kernel."""
    n = out.shape[0]
    full = out.ndim == 4
    swapped = out.transpose(0, 1).transpose(2, 3) if full else out.transpose(0, 1)
    upper = torch.ones(n, n, dtype=torch.bool, device=out.device).triu()
    res = torch.where(upper.view(n, n, *([1] * (out.ndim - 2))), out, swapped)
    if full:
        idx = torch.arange(n, device=out.device)
        d = res[idx, idx]
        res[idx, idx] = (d + d.transpose(1, 2)) / 2
    return res
