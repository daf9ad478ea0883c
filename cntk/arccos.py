"""The ReLU step of the recursion: arc-cosine kernels of degree 0 and 1.

For a centred Gaussian pair (u, v) with variances s_x, s_y and covariance c, and
rho = c / sqrt(s_x s_y), theta = arccos(rho):

    K    = scale * sqrt(s_x s_y) * (sin(theta) + (pi - theta) cos(theta)) / (2 pi)   # scale*E[relu(u) relu(v)]
    Kdot = scale * (pi - theta) / (2 pi)                                             # scale*E[relu'(u) relu'(v)]

Zero variance (s_x = 0 or s_y = 0): the finite net's pre-activation is exactly 0 there, so
K = 0 and Kdot = 0 (torch's relu'(0) = 0), never 0/0 = NaN.

Self pairs: where the two arguments are the same pixel of the same image, rho = 1 exactly;
pass ``exact`` there so that float32 rounding of rho (a hair below 1, where arccos is
ill-conditioned) does not reach the kernel.
"""
from __future__ import annotations

import math

import torch

_INV_2PI = 1.0 / (2.0 * math.pi)


def relu_step(
    cov: torch.Tensor,
    std_x: torch.Tensor,
    std_y: torch.Tensor,
    scale: float,
    exact: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (K, Kdot) elementwise; all arguments broadcast together.

    cov: Sigma(x, y) entries; std_x, std_y: sqrt of Sigma(x, x)[p, p] and Sigma(y, y)[p', p'];
    exact: optional boolean mask of entries where rho = 1 holds exactly (self pairs, p = p').
    """
    norm = std_x * std_y
    positive = norm > 0
    rho = cov / torch.where(positive, norm, torch.ones_like(norm))
    rho = rho.clamp(-1.0, 1.0)
    if exact is not None:
        rho = torch.where(exact, torch.ones_like(rho), rho)
    theta = torch.arccos(rho)
    sin_theta = torch.sqrt((1.0 - rho) * (1.0 + rho))
    kdot = (math.pi - theta) * (scale * _INV_2PI)
    k = norm * (sin_theta + (math.pi - theta) * rho) * (scale * _INV_2PI)
    zero = torch.zeros((), dtype=k.dtype, device=k.device)
    return torch.where(positive, k, zero), torch.where(positive, kdot, zero)
