"""Pooling and readout layers of the vocabulary (re-exported by ``cntk.layers``): AvgPool(k),
GlobalAvgPool, Flatten; conventions as in ``cntk.layers``."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch.nn.functional as F

from .errors import NetworkError
from .core_layers import Layer, Shape, _diag


@dataclass(frozen=True)
class AvgPool(Layer):
    """k x k average pooling with stride k (H and W divisible by k).

    On offset planes (docs/conventions.md) a pool does not carry plane by plane: an output offset D
    gathers the input offsets k D + (-(k-1) .. k-1) in each axis, (2k - 1)^2 input planes per output
    plane, and the pooled per-image diagonals need the self pair's planes near zero offset, not its
    zero plane alone.  The fast backends (planes, numba) therefore run pooled chains stage by stage,
    folding every plane of a stage into the next stage's planes at each pool, and compute the
    diagonals by each image's own recursion on the planes near zero offset (``planes.self_stds``);
    the rule below, on full P x P matrices, is the reference they are tested against."""

    KIND: ClassVar[str] = "pool"
    k: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise NetworkError("pool", f"AvgPool k (the pool size) must be a positive integer, got {self.k!r}")

    def out_shape(self, s):
        if not s.image or s.height % self.k or s.width % self.k:
            raise NetworkError("pool", f"AvgPool({self.k}) needs images whose height and width are divisible by "
                                       f"{self.k}, got {s.height} x {s.width}")
        return Shape(s.channels, s.height // self.k, s.width // self.k)

    def apply(self, params, a, s, parameterisation="ntk"):
        return F.avg_pool2d(a, self.k, self.k)

    def rule(self, st, s):
        k = self.k

        def pool(t):
            b, h, w = t.shape[0], t.shape[1], t.shape[2]
            return t.reshape(b, h // k, k, w // k, k, h // k, k, w // k, k).mean((2, 4, 6, 8))

        def side(v, c):  # the pooled diagonal needs the self pair's within-block covariances
            if c is not None:
                c = pool(c)
                return _diag(c), c
            return (v if k == 1 else None), None

        # a self pair stays one: same carries over
        return replace(st, nngp=pool(st.nngp), ntk=pool(st.ntk), **st.sides(side))

    def describe(self):
        return f"AvgPool({self.k})"


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """The mean over all pixels (GAP): the kernel is the mean over all pixel pairs."""

    KIND: ClassVar[str] = "readout"

    def out_shape(self, s):
        if not s.image:
            raise NetworkError("layers", "GlobalAvgPool needs an image input")
        return Shape(s.channels, fan_in=s.channels)

    def apply(self, params, a, s, parameterisation="ntk"):
        return a.mean((2, 3))

    def rule(self, st, s):
        side = lambda v, c: (None if c is None else c.flatten(1).mean(1), None)  # noqa: E731
        return replace(st, nngp=st.nngp.flatten(1).mean(1), ntk=st.ntk.flatten(1).mean(1), **st.sides(side))


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten (the paper's vanilla readout): the kernel is the sum over p = p' (the trace); the
    dense layer after it takes the channels as fan_in."""

    KIND: ClassVar[str] = "readout"

    def out_shape(self, s):
        if not s.image:
            raise NetworkError("layers", "Flatten needs an image input")
        return Shape(s.channels * s.height * s.width, fan_in=s.channels)

    def apply(self, params, a, s, parameterisation="ntk"):
        return a.flatten(1)

    def rule(self, st, s):
        side = lambda v, c: (None if v is None else v.flatten(1).sum(1), None)  # noqa: E731
        return replace(st, nngp=_diag(st.nngp).flatten(1).sum(1), ntk=_diag(st.ntk).flatten(1).sum(1),
                       **st.sides(side))
