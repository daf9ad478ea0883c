"""Graph layers (neural-tangents stax's FanOut / parallel / FanInSum / Identity) and LayerNorm, both
halves each, as the layers of ``cntk.layers``.

Conventions: after ``FanOut(n)`` the state (finite: the activation tensor; kernel: the ``PairState``;
shapes: the ``Shape``) is a tuple of n; ``Parallel(b_1, .., b_n)`` applies the layer sequence b_i to
element i; ``FanInSum()`` sums the tuple.  Branches have independent weights, so on the kernel side
nngp, ntk and the self variances add (as neural-tangents does).  A Parallel's parameters are named
``b{branch}_{layer}_{name}`` (no dots: nn.Module names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .errors import NetworkError
from .core_layers import Layer, PairState, Shape, _eye, _outer


def resolve(layer: Layer, s, width: int, n_out: int | None = None):
    """``layer``'s output shape with ``width`` channels for a weight layer (``n_out`` if given: the
    readout); a tuple of shapes after FanOut / Parallel.  NetworkError when it does not fit."""
    if isinstance(s, tuple) and not layer.GRAPH:
        raise NetworkError("layers", f"{layer.describe()} receives {len(s)} branches: sum them with FanInSum first")
    o = layer.out_shape(s, width) if layer.GRAPH else layer.out_shape(s)
    if isinstance(o, Shape) and o.channels == -1:
        n = n_out or width
        o = Shape(n, o.height, o.width, fan_in=n if not o.image else 0)
    return o


def walk(layers, s, width: int) -> list:
    """The input shape of every layer of a sequence and the output's (len + 1)."""
    out = [s]
    for layer in layers:
        s = resolve(layer, s, width)
        out.append(s)
    return out


@dataclass(frozen=True)
class Identity(Layer):
    """The identity (a residual's skip branch)."""

    KIND: ClassVar[str] = "graph"

    def apply(self, params, a, s, parameterisation="ntk"):
        return a

    def rule(self, st, s):
        return st


@dataclass(frozen=True)
class FanOut(Layer):
    """n copies of the input: a tuple of n."""

    KIND: ClassVar[str] = "graph"
    GRAPH: ClassVar[bool] = True
    n: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise NetworkError("layers", f"FanOut n (the number of branches) must be a positive integer, got {self.n!r}")

    def out_shape(self, s, width=1):
        if isinstance(s, tuple):
            raise NetworkError("layers", "FanOut of branches: sum them with FanInSum first")
        return (s,) * self.n

    def apply(self, params, a, s, parameterisation="ntk"):
        return (a,) * self.n

    def rule(self, st, s):
        return (st,) * self.n

    def describe(self):
        return f"FanOut({self.n})"


@dataclass(frozen=True, init=False)
class Parallel(Layer):
    """Branch i (a sequence of layers) applied to element i of the tuple."""

    KIND: ClassVar[str] = "graph"
    GRAPH: ClassVar[bool] = True
    branches: tuple[tuple[Layer, ...], ...] = ()

    def __init__(self, *branches) -> None:
        bs = tuple(tuple(b) if isinstance(b, (list, tuple)) else (b,) for b in branches)
        if not bs or not all(b for b in bs):
            raise NetworkError("layers", "Parallel takes branches, each a non-empty sequence of layers (Identity() "
                                         "for a skip)")
        for i, b in enumerate(bs):
            for j, l in enumerate(b):
                if not isinstance(l, Layer):
                    raise NetworkError("layers", f"Parallel branch {i}, layer {j} is {l!r} ({type(l).__name__}), not a "
                                                 "layer of cntk.layers")
        object.__setattr__(self, "branches", bs)

    def branch_shapes(self, s, width: int = 1) -> list[list]:
        if not isinstance(s, tuple) or len(s) != len(self.branches):
            got = f"{len(s)} branches" if isinstance(s, tuple) else "one input"
            raise NetworkError("layers", f"Parallel with {len(self.branches)} branches receives {got}: "
                                         f"FanOut({len(self.branches)}) before it")
        return [walk(b, si, width) for b, si in zip(self.branches, s)]

    def out_shape(self, s, width=1):
        return tuple(sh[-1] for sh in self.branch_shapes(s, width))

    def _items(self, s, width):
        for i, (b, shapes) in enumerate(zip(self.branches, self.branch_shapes(s, width))):
            for j, (layer, sh) in enumerate(zip(b, shapes)):
                yield f"b{i}_{j}_", layer, sh

    def init(self, s, n_out, gen):
        return {pre + k: v for pre, l, sh in self._items(s, n_out) for k, v in l.init(sh, n_out, gen).items()}

    def multipliers(self, s, width=1):
        return {pre + k: v for pre, l, sh in self._items(s, width) for k, v in l.multipliers(sh).items()}

    def param_trainable(self, name: str) -> bool:
        i, j = (int(v[1:] if v.startswith("b") else v) for v in name.split("_")[:2])
        return bool(getattr(self.branches[i][j], "trainable", True))

    def apply(self, params, a, s, parameterisation="ntk"):
        width = next((int(v.shape[0]) for k, v in params.items() if k.endswith("_weight")
                      and getattr(self.branches[int(k.split("_")[0][1:])][int(k.split("_")[1])], "channels", None)
                      is None), 1)
        out = list(a)
        for pre, layer, sh in self._items(s, width):
            i = int(pre.split("_")[0][1:])
            p = {k[len(pre):]: v for k, v in params.items() if k.startswith(pre)}
            out[i] = layer.apply(p, out[i], sh, parameterisation)
        return tuple(out)

    def rule(self, st, s):
        out = list(st)
        for pre, layer, sh in self._items(s, 1):
            i = int(pre.split("_")[0][1:])
            out[i] = layer.rule(out[i], sh)
        return tuple(out)

    def describe(self):
        return "Parallel(" + " | ".join(" -> ".join(l.describe() for l in b) for b in self.branches) + ")"


@dataclass(frozen=True)
class FanInSum(Layer):
    """The sum of the branches (same shape each)."""

    KIND: ClassVar[str] = "graph"
    GRAPH: ClassVar[bool] = True

    def out_shape(self, s, width=1):
        if not isinstance(s, tuple):
            raise NetworkError("layers", "FanInSum without branches: FanOut(n) and Parallel before it")
        if len({(v.channels, v.height, v.width) for v in s}) != 1:
            raise NetworkError("layers", "FanInSum of branches of different shapes: "
                                         + ", ".join(f"{v.channels} x {v.height} x {v.width}" for v in s))
        return s[0]

    def apply(self, params, a, s, parameterisation="ntk"):
        out = a[0]
        for t in a[1:]:
            out = out + t
        return out

    def rule(self, st, s):
        def add(name):
            vals = [getattr(t, name) for t in st]
            if any(v is None for v in vals):
                return None
            out = vals[0]
            for v in vals[1:]:
                out = out + v
            return out

        return replace(st[0], nngp=add("nngp"), ntk=add("ntk"), var_x=add("var_x"), var_y=add("var_y"),
                       cov_x=add("cov_x"), cov_y=add("cov_y"), raw=False, gaussian=all(t.gaussian for t in st))


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalisation over channels: finite, per pixel (h - mean_c h) / sqrt(var_c h + eps); kernel
    (neural-tangents' ``LayerNorm(axis=channel)``): nngp(p, p') / sqrt(var_x(p) var_y(p')), ntk alike,
    variances 1 (0 where the input's variance is 0: the finite net outputs 0 there).  Its input must
    be Gaussian (right after a weight layer, or a sum / pooling of such)."""

    KIND: ClassVar[str] = "norm"
    eps: float = 1e-12

    def __post_init__(self) -> None:
        e = self.eps
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e > 0):
            raise NetworkError("eps", f"LayerNorm eps must be a finite number > 0, got {e!r}")

    def apply(self, params, a, s, parameterisation="ntk"):
        mean = a.mean(1, keepdim=True)
        var = (a - mean).square().mean(1, keepdim=True)
        return (a - mean) / torch.sqrt(var + self.eps)

    def rule(self, st: PairState, s):
        if not st.gaussian:
            raise NetworkError("layers", "LayerNorm needs Gaussian inputs: put it right after Conv / Dense")
        sqrt = lambda v: v.clamp_min(0).sqrt()  # noqa: E731

        def norm(t, vx, vy, exact):
            a, b = _outer(vx, vy, sqrt)
            d = a * b
            pos = d > 0
            out = torch.where(pos, t / torch.where(pos, d, torch.ones_like(d)), torch.zeros_like(t))
            return out if exact is None else torch.where(exact & pos, torch.ones_like(out), out)

        def side(v, c):
            one = (v > 0).to(v.dtype)
            return one, (None if c is None else norm(c, v, v, _eye(c)))

        return replace(st, nngp=norm(st.nngp, st.var_x, st.var_y, st.exact),
                       ntk=norm(st.ntk, st.var_x, st.var_y, None), gaussian=False, **st.sides(side))

    def describe(self):
        return "LayerNorm"


GRAPH_LAYERS = (Identity, FanOut, Parallel, FanInSum)
__all__ = ["FanInSum", "FanOut", "Identity", "LayerNorm", "Parallel", "resolve", "walk"]
