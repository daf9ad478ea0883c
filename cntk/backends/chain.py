"""The chain form of a network, the shape that the offset-plane backends (planes, vector, numba,
triton) compute: weight layers and activations alternating, one filter size, optional k x k average
pools after activations, one readout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cntk.activations import Activation, ReLU
from cntk.core_layers import Act, Conv, Dense
from cntk.pooling import AvgPool, GlobalAvgPool

if TYPE_CHECKING:  # chain() is called by cntk.network: a run-time import would be a circle
    from cntk.network import Network


@dataclass(frozen=True)
class Chain:
    """A network of the form  W_1 phi [P] W_2 phi [P] ... W_L phi [P] [GAP | Flatten] W_readout  with one
    filter size, where P is an optional k x k stride-k average pool: what the offset-plane backends
    compute.  Per weight layer (L + 1, the readout last): its scale (None: unit weights, else
    w_std^2 / q^2 -- the first divided by the input channels at run time), bias variance, trainable;
    per activation layer (L): the activation and the pool size after it (``pools``, 1: none;
    consecutive pools multiply).  A pool splits the recursion into stages (``stages``)."""

    family: str
    readout: str  # "gap" | "flatten" | "none" (fc)
    filter_size: int
    w2: tuple[float | None, ...]  # w_var per weight layer (None: unit weights)
    b2: tuple[float, ...]
    trainable: tuple[bool, ...]
    acts: tuple[Activation, ...]
    pools: tuple[int, ...] = ()  # per activation layer, the pool size after it; () = all 1

    @property
    def pooled(self) -> bool:
        """Whether any activation is followed by a pool (k > 1)."""
        return any(k > 1 for k in self.pools)

    def pool_after(self, layer: int) -> int:
        """The pool size after activation ``layer`` (0-based), 1 for none."""
        return self.pools[layer] if self.pools else 1

    def stages(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(height, width, pool size after it) of every stage of an h x w input: a stage ends with
        a pool (k > 1) or with the last activation (k = 1 then); a pool right before the readout
        adds a final stage of no activation layers (k = 1)."""
        out = []
        for layer in range(len(self.acts)):
            k = self.pool_after(layer)
            if k > 1:
                out.append((h, w, k))
                h, w = h // k, w // k
        out.append((h, w, 1))
        return out

    def stage_of(self, layer: int) -> int:
        """The stage of activation ``layer`` (0-based): the pools before it."""
        return sum(1 for i in range(layer) if self.pool_after(i) > 1)

    @property
    def n_act_layers(self) -> int:
        return len(self.acts)

    @property
    def depth(self) -> int:
        return len(self.acts) + 1

    def scale(self, layer: int, channels: int = 1) -> float:
        """s of weight layer ``layer`` (0-based; L is the readout): w_var / q^2 (the readout: w_var);
        ``channels``: the input's C for layer 0."""
        w2 = self.w2[layer]
        q2 = self.filter_size**2 if self.family == "cnn" and layer < len(self.acts) else 1
        if w2 is None:
            return 1.0
        return w2 / (q2 * (channels if layer == 0 else 1))

    @property
    def act_scale(self) -> float:
        """The scale every activation step multiplies by, when all layers after the first share it
        (the paper's c_sigma / q^2); NaN otherwise."""
        s = {self.scale(i) for i in range(1, len(self.w2))}
        return s.pop() if len(s) == 1 else float("nan")

    @property
    def fix_first_last(self) -> bool:
        return not self.trainable[0] and not self.trainable[-1] and all(self.trainable[1:-1])

    @property
    def paper_family(self) -> bool:
        """The paper's own family: unit first layer, ReLU, c_sigma = 2, no bias, all trained or "fix"."""
        return (not self.pooled and self.w2[0] is None and all(isinstance(a, ReLU) and type(a) is ReLU for a in self.acts)
                and not any(self.b2) and math.isclose(self.act_scale, 2.0 / (self.filter_size**2 if self.family == "cnn" else 1))
                and (all(self.trainable) or self.fix_first_last))


def family_chain(net: Network, family: str) -> str | None:
    """None when ``net`` is a chain of ``family`` ("cnn" or "fc"), else the reason it is not."""
    c = chain(net)
    if isinstance(c, str):
        return c
    if c.family != family:
        return ("it is fully connected (the vector backend computes those)" if c.family == "fc"
                else "it is convolutional (the image backends compute those)")
    return None


def chain(net: Network) -> Chain | str:
    """``net`` in chain form, or the reason it is not one."""
    if net.is_graph:
        return "it is a graph network (FanOut / Parallel / FanInSum): the reference backend computes those"
    layers = list(net.layers)
    readout = "none"
    if net.family == "cnn":
        ro = [i for i, l in enumerate(layers) if l.KIND == "readout"]
        if len(ro) != 1 or ro[0] != len(layers) - 2:
            return "the readout (GlobalAvgPool or Flatten) must come right before the last Dense"
        readout = "gap" if isinstance(layers[ro[0]], GlobalAvgPool) else "flatten"
        body = layers[: ro[0]]
    else:
        body = layers[:-1]
    body, pools = _strip_pools(body)
    if isinstance(body, str):
        return body
    weights, acts = body[0::2], body[1::2]
    if len(weights) != len(acts) or not all(isinstance(a, Act) for a in acts) or not all(
            isinstance(w, Conv if net.family == "cnn" else Dense) for w in weights):
        return "it is not an alternation of weight layers and activations"
    if net.family == "cnn":
        qs = {w.q for w in weights}
        if len(qs) != 1 or any(w.channels for w in weights):
            return "its convolutions differ in filter size or fix their channels"
        q = qs.pop()
    else:
        q = 1
    if any(w.w_var is None for w in weights[1:]) or layers[-1].w_var is None:
        return "only the first layer may have unit (unscaled) weights"
    ws = [*weights, layers[-1]]
    return Chain(net.family, readout, q, tuple(w.w_var for w in ws), tuple(w.b_var or 0.0 for w in ws),
                 tuple(w.trainable for w in ws), tuple(a.fn for a in acts), pools if any(k > 1 for k in pools) else ())


def _strip_pools(body: list) -> tuple[list, tuple[int, ...]] | tuple[str, None]:
    """The body without its AvgPool layers and the pool size after every activation (1: none), or
    the reason (a pool anywhere but after an activation) as the first element."""
    out: list = []
    pools: list[int] = []
    for l in body:
        if isinstance(l, AvgPool):
            if not out or not isinstance(out[-1], Act):
                return "its AvgPool does not follow an activation (the chain form pools after activations)", None
            pools[-1] *= l.k
            continue
        out.append(l)
        if isinstance(l, Act):
            pools.append(1)
    return out, tuple(pools)
