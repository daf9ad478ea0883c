"""Reference backend: the paper's recursion written plainly over full P x P tensors.

One image pair at a time, every Sigma, K, Kdot and Theta held as a P x P matrix (P = H * W),
the patch trace applied to the 4-D (H, W, H, W) view.  Per-image quantities come from the full
self recursion Sigma(x, x), as in the paper's script.  Slow and memory-hungry on purpose: it is
the test oracle and the benchmark baseline, not a tool.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .architecture import Architecture
from .arccos import relu_step


def patch_trace_4d(a: torch.Tensor, q: int) -> torch.Tensor:
    """T(A)[(i,j),(i',j')] = sum_{|s|,|t| <= q//2} A[(i+s,j+t),(i'+s,j'+t)], zero outside; a: (H, W, H, W)."""
    r = q // 2
    h, w = a.shape[0], a.shape[1]
    ap = F.pad(a, (r, r) * 4)
    out = torch.zeros_like(a)
    for s in range(q):
        for t in range(q):
            out += ap[s : s + h, t : t + w, s : s + h, t : t + w]
    return out


def _sigma0(x: torch.Tensor, y: torch.Tensor, q: int) -> torch.Tensor:
    c, h, w = x.shape
    gram = x.reshape(c, h * w).T @ y.reshape(c, h * w)
    return patch_trace_4d(gram.reshape(h, w, h, w), q).reshape(h * w, h * w)


def _trace(a: torch.Tensor, h: int, w: int, q: int) -> torch.Tensor:
    return patch_trace_4d(a.reshape(h, w, h, w), q).reshape(h * w, h * w)


def prepare(x: torch.Tensor, arch: Architecture) -> list[list[torch.Tensor]]:
    """Per image, the list over h = 1..L of sqrt(diag Sigma^(h-1)(x, x)), each of shape (P,)."""
    out = []
    for img in x:
        _, h, w = img.shape
        p = h * w
        eye = torch.eye(p, dtype=torch.bool, device=img.device)
        sig = _sigma0(img, img, arch.filter_size)
        stds = []
        for layer in range(1, arch.n_relu_layers + 1):
            std = torch.diagonal(sig).clamp_min(0).sqrt()
            stds.append(std)
            if layer == arch.n_relu_layers:
                break
            k, _ = relu_step(sig, std[:, None], std[None, :], arch.relu_scale, exact=eye)
            sig = _trace(k, h, w, arch.filter_size)
        out.append(stds)
    return out


def pair(
    x: torch.Tensor,
    y: torch.Tensor,
    std_x: list[torch.Tensor],
    std_y: list[torch.Tensor],
    arch: Architecture,
    kind: str,
    same: bool,
) -> torch.Tensor:
    """The kernel value for one image pair x, y of shape (C, H, W)."""
    _, h, w = x.shape
    q, n_layers = arch.filter_size, arch.n_relu_layers
    eye = torch.eye(h * w, dtype=torch.bool, device=x.device) if same else None
    sig = _sigma0(x, y, q)
    theta = torch.zeros_like(sig) if arch.fix_first_last else sig.clone()
    for layer in range(1, n_layers + 1):
        k, kdot = relu_step(sig, std_x[layer - 1][:, None], std_y[layer - 1][None, :], arch.relu_scale, exact=eye)
        if layer < n_layers:
            theta = _trace(kdot * theta + k, h, w, q)
            sig = _trace(k, h, w, q)
        else:
            theta = kdot * theta + (0.0 if arch.fix_first_last else k)
            sig = k
    final = theta if kind == "ntk" else sig
    return torch.trace(final) if arch.readout == "flatten" else final.mean()


def tile(x1, s1, x2, s2, arch: Architecture, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two image blocks, one pair at a time (upper triangle only when symmetric)."""
    out = torch.zeros(len(x1), len(x2), dtype=x1.dtype, device=x1.device)
    for i in range(len(x1)):
        for j in range(i if symmetric else 0, len(x2)):
            out[i, j] = pair(x1[i], x2[j], s1[i], s2[j], arch, kind, same=symmetric and i == j)
    if symmetric:
        out = torch.triu(out) + torch.triu(out, 1).T
    return out
