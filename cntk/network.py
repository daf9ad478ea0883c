"""``Network``: a sequence of layers of ``cntk.layers`` / ``cntk.graph``, the last a Dense readout;
what ``finite_nets.build`` and ``cntk.kernel`` take."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .activations import Activation
from .errors import NetworkError
from .graph import FanInSum, FanOut, Identity, LayerNorm, Parallel, resolve
from .core_layers import Act, Conv, Dense, Layer, Shape
from .pooling import AvgPool, Flatten, GlobalAvgPool


def _flat(layers) -> list[Layer]:
    """Every layer in order, branches inlined."""
    out = []
    for l in layers:
        out.append(l)
        if isinstance(l, Parallel):
            for b in l.branches:
                out += _flat(b)
    return out


def _ends_fresh(branch) -> bool:
    """Whether a branch ends with its own weight layer (then only linear, parameter-free layers)."""
    for l in reversed(branch):
        if isinstance(l, (Conv, Dense)):
            return True
        if not isinstance(l, (Identity, AvgPool, GlobalAvgPool, Flatten)):
            return False
    return False


def _check_graph(layers, arity: int = 1, gaussian: bool = False) -> tuple[int, bool]:
    """Walk the arity (1, or n branches) and Gaussian-ness (what LayerNorm needs) of a sequence; a
    FanInSum must sum uncorrelated branches (all but one end with their own weight layer)."""
    g, fresh = [gaussian] * arity, [False] * arity
    for l in layers:
        if isinstance(l, FanOut):
            if len(g) != 1:
                raise NetworkError("layers", "FanOut of branches: sum them with FanInSum first")
            g, fresh = g * l.n, [False] * l.n
        elif isinstance(l, Parallel):
            if len(g) != len(l.branches):
                raise NetworkError("layers", f"Parallel with {len(l.branches)} branches receives "
                                             f"{len(g) if len(g) > 1 else 'one input (no FanOut)'}"
                                             f"{' branches' if len(g) > 1 else ''}")
            g = [_check_graph(b, 1, gi)[1] for b, gi in zip(l.branches, g)]
            fresh = [_ends_fresh(b) for b in l.branches]
        elif isinstance(l, FanInSum):
            if len(g) == 1:
                raise NetworkError("layers", "FanInSum without FanOut: there are no branches to sum")
            if sum(not f for f in fresh) > 1:
                raise NetworkError("layers", "FanInSum of correlated branches: the kernel adds branches as independent, "
                                             "so all but one must end with their own Conv / Dense (as in a residual block)")
            g, fresh = [all(g)], [False]
        else:
            if len(g) != 1:
                raise NetworkError("layers", f"{l.describe()} receives {len(g)} branches: sum them with FanInSum first")
            if isinstance(l, LayerNorm) and not g[0]:
                raise NetworkError("layers", "LayerNorm needs Gaussian inputs: put it right after Conv / Dense "
                                             "(or a sum of such branches)")
            if isinstance(l, (Conv, Dense)):
                g = [True]
            elif isinstance(l, (Act, LayerNorm)):
                g = [False]
    return len(g), g[0]


@dataclass(frozen=True)
class Network:
    """A network: layers in order (graph layers allowed), the last a Dense readout.  ``name``: a
    label for figures; ``slug``: a stable identifier for file names."""

    layers: tuple[Layer, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not isinstance(self.layers, tuple):
            raise NetworkError("layers", f"Network layers must be a tuple or list of layers, got "
                                         f"{type(self.layers).__name__}")
        for i, l in enumerate(self.layers):
            if not isinstance(l, Layer):
                hint = " (an activation: wrap it as Act(...))" if isinstance(l, Activation) else ""
                raise NetworkError("layers", f"Network layer {i} is {l!r} ({type(l).__name__}), not a layer of "
                                             f"cntk.layers{hint}")
        if not isinstance(self.name, str):
            raise NetworkError("name", f"Network name must be a string, got {self.name!r}")
        if not self.layers or not isinstance(self.layers[-1], Dense):
            raise NetworkError("layers", "a network ends with its Dense readout")
        if not isinstance(self.layers[0], (Conv, Dense)):
            raise NetworkError("layers", "a network starts with Conv (images) or Dense (vectors)")
        if not any(isinstance(l, Act) for l in _flat(self.layers)):
            raise NetworkError("layers", "a network needs at least one activation")
        if _check_graph(self.layers)[0] != 1:
            raise NetworkError("layers", "the branches are never summed: FanInSum before the readout")

    @property
    def input_kind(self) -> str:
        """"image" ((C, H, W) inputs) or "vector" ((D,) inputs)."""
        return "image" if isinstance(self.layers[0], Conv) else "vector"

    @property
    def family(self) -> str:
        """"cnn" (image inputs) or "fc" (vector inputs): ``input_kind`` under its older name."""
        return "cnn" if self.input_kind == "image" else "fc"

    @property
    def readout(self) -> str:
        kinds = [type(l).__name__ for l in self.layers if l.KIND == "readout"]
        return "gap" if kinds[-1:] == ["GlobalAvgPool"] else "flatten" if kinds else "none"

    @property
    def is_graph(self) -> bool:
        return any(l.GRAPH for l in self.layers)

    @property
    def needs_self_cov(self) -> bool:
        """Whether the self pairs' full nngp must be carried (pooling before an activation / LayerNorm)."""
        flat = _flat(self.layers)
        pools = [i for i, l in enumerate(flat) if isinstance(l, GlobalAvgPool) or (isinstance(l, AvgPool) and l.k > 1)]
        return bool(pools) and any(isinstance(l, (Act, LayerNorm)) for l in flat[pools[0]:])

    def shapes(self, input_shape, width: int = 1, out_dim: int = 1) -> list:
        """The input shape of every layer and the output's (len(layers) + 1), with ``width`` channels
        for hidden layers (a tuple of shapes between FanOut and FanInSum); raises NetworkError (naming
        the layer) when the input does not fit."""
        s = Shape.of(input_shape)
        if (self.input_kind == "image") != s.image:
            raise NetworkError("input_shape", f"a {self.family} network needs "
                                              f"{'(C, H, W)' if self.input_kind == 'image' else '(D,)'}"
                                              f" inputs, got {tuple(input_shape)}")
        out = [s]
        for i, layer in enumerate(self.layers):
            s = resolve(layer, s, width, out_dim if i == len(self.layers) - 1 else None)
            out.append(s)
        return out

    def check_input_shape(self, input_shape) -> None:
        """None, or a one-line NetworkError saying what inputs the network needs."""
        label = self.name or "this network"
        s = tuple(input_shape)
        if self.input_kind == "image" and len(s) != 3 or self.input_kind == "vector" and len(s) != 1:
            want = "images (C, H, W)" if self.input_kind == "image" else "vectors (D,)"
            raise NetworkError("input_shape", f"{label} needs {want}, got shape {s}")
        k = 1
        for l in self.layers:  # pooling on the trunk divides the image
            if isinstance(l, AvgPool):
                k *= l.k
        if k > 1 and (s[1] % k or s[2] % k):
            raise NetworkError("input_shape", f"{label} needs images whose height and width are divisible by {k}, "
                                              f"got {s[1]} x {s[2]}")
        self.shapes(s)

    def hidden_weights(self, input_shape, width: int) -> int:
        """The number of weights of every hidden weight layer (branches included, readout and biases
        excluded) at ``width``."""
        def count(layers, shapes) -> int:
            n = 0
            for l, s, o in zip(layers, shapes, shapes[1:]):
                if isinstance(l, Conv):
                    n += l.q * l.q * s.channels * o.channels
                elif isinstance(l, Dense):
                    n += s.channels * o.channels
                elif isinstance(l, Parallel):
                    n += sum(count(b, sh) for b, sh in zip(l.branches, l.branch_shapes(s, width)))
            return n

        shapes = self.shapes(input_shape, width)
        return count(self.layers[:-1], shapes[:-1])

    def describe(self) -> str:
        return " -> ".join(l.describe() for l in self.layers)

    @property
    def slug(self) -> str:
        """A short stable lowercase identifier for file names and labels: the name (or input kind), the
        depth and 8 hex digits of ``describe()`` (which names every layer and its settings), e.g.
        "cnn-gap-d3-1a2b3c4d"; ``cntk.Architecture.slug`` gives the paper family's readable form."""
        base = re.sub(r"[^a-z0-9]+", "-", (self.name or self.input_kind).lower()).strip("-") or "net"
        return f"{base}-d{self.depth}-{hashlib.sha1(self.describe().encode()).hexdigest()[:8]}"

    @property
    def depth(self) -> int:
        """Weight layers, readout included, branches counted (the paper's depth for its CNNs)."""
        return sum(isinstance(l, (Conv, Dense)) for l in _flat(self.layers))


def as_network(obj: Any) -> Network:
    """A ``Network`` from a Network or anything with ``network()`` (e.g. ``cntk.Architecture``)."""
    if isinstance(obj, Network):
        return obj
    if hasattr(obj, "network"):
        return obj.network()
    raise ValueError(f"expected a cntk.Network or cntk.Architecture, got {type(obj).__name__}")
