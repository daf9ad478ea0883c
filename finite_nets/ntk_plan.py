"""Plan and layout of the structured empirical NTK: the contraction of every trainable layer (the
cheaper by a flop count), the bytes a sample's features and its forward/backward pass take, and the
feature store (``_Store``) in the layout of each layer's contraction."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from finite_nets.ntk_gemm import _n_sym_blocks
from finite_nets.paper_net import FiniteNet


@dataclass
class _Plan:
    layers: list[int]  # trainable conv / dense layers
    gram: list[bool]  # per trainable layer: the Gram contraction (else the Jacobian one)
    readout: bool  # V trainable


@dataclass
class _Store:
    """Features of a block of n samples, per trainable layer, in the layout of its contraction:
    cnn jacobian: a (n, c, H + 2r, W + 2r) zero-padded, g (n, K, m, H, W);
    cnn gram: a (n, P, c), g (K, n, P, m); fc: a (n, c), g (n, K, m).  feats: readout input (n, F)."""

    a: list[torch.Tensor]
    g: list[torch.Tensor]
    feats: torch.Tensor | None


def _sym_saving(n: int) -> float:
    """Fraction of a symmetric n x n product that the upper-block scheme multiplies."""
    nb = _n_sym_blocks(n)
    return (nb + 1) / (2 * nb)



_N_GRAM_SYM_BLOCKS = 4  # a symmetric Gram block is split 4 x 4: 10 of the 16 pair blocks are computed

# memory passes of the Gram contraction (patch trace, product, sum), per P x P entry, counted as this
# many multiply-adds: on a 2-core AVX-512 CPU a pass costs 50-90 of a GEMM's multiply-adds, and 50
# puts the switch where the measured times cross (8x8 images, 64 samples: width 512)
_GRAM_PASS_MACS = 50.0


def _plan(model: FiniteNet, shape: tuple[int, ...], n1: int, n2: int, sym: bool, full: bool, contraction: str) -> _Plan:
    cnn = model.arch.family == "cnn"
    q2 = model.arch.filter_size**2 if cnn else 1
    p = shape[1] * shape[2] if cnn else 1
    m, k = model.width, model.out_dim
    kp = k * k if full else k
    layers = [i for i, w in enumerate(model.weights) if w.requires_grad]
    gram = []
    for layer in layers:
        c = shape[0] if layer == 0 else m
        if contraction != "auto":
            gram.append(contraction == "gram")
            continue
        pairs = n1 * n2 * (_sym_saving(n1) if sym else 1.0)
        per_sample = (n1 if sym else n1 + n2) * k * m * c * q2 * p
        jac = per_sample + pairs * kp * m * c * q2
        if cnn:
            nb = min(n1, _N_GRAM_SYM_BLOCKS)
            gpairs = n1 * n2 * ((nb + 1) / (2 * nb) if sym else 1.0)
            grm = gpairs * p * p * (c + kp * m + _GRAM_PASS_MACS * (12 + 4 * kp))
        else:
            grm = n1 * n2 * (c + kp * m)
        gram.append(grm < jac)
    return _Plan(layers, gram, bool(model.readout.requires_grad))


def _stored_bytes(model: FiniteNet, plan: _Plan, shape: tuple[int, ...], item: int) -> int:
    """Bytes per sample of the kept features."""
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    p = shape[1] * shape[2] if cnn else 1
    pp = (shape[1] + 2 * r) * (shape[2] + 2 * r) if cnn else 1
    total = 0
    for layer, gram in zip(plan.layers, plan.gram):
        c = shape[0] if layer == 0 else m
        total += (c * (p if gram else pp) if cnn else c) + k * m * p
    if plan.readout:
        total += m * p if cnn and model.arch.readout == "flatten" else m
    return total * item


def _transient_bytes(model: FiniteNet, plan: _Plan, shape: tuple[int, ...], item: int) -> int:
    """Bytes per sample of the forward/backward pass beyond the kept features (upper bound)."""
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    pp = (shape[1] + 2 * r) * (shape[2] + 2 * r) if cnn else 1
    kept = len(model.weights) - (plan.layers[0] if plan.layers else len(model.weights))
    return item * pp * (shape[0] + m * (kept + 3 + 3 * k))


def _allocate(model: FiniteNet, plan: _Plan, x: torch.Tensor) -> _Store:
    n, shape = len(x), tuple(x.shape[1:])
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    kw = dict(dtype=x.dtype, device=x.device)
    a, g = [], []
    for layer, gram in zip(plan.layers, plan.gram):
        c = shape[0] if layer == 0 else m
        if not cnn:
            a.append(torch.empty(n, c, **kw))
            g.append(torch.empty(n, k, m, **kw))
            continue
        h, w = shape[1], shape[2]
        if gram:
            a.append(torch.empty(n, h * w, c, **kw))
            g.append(torch.empty(k, n, h * w, m, **kw))
        else:
            a.append(torch.zeros(n, c, h + 2 * r, w + 2 * r, **kw))  # the zero border is the SAME padding
            g.append(torch.empty(n, k, m, h, w, **kw))
    feats = None
    if plan.readout:
        f = m * shape[1] * shape[2] if cnn and model.arch.readout == "flatten" else m
        feats = torch.empty(n, f, **kw)
    return _Store(a, g, feats)
