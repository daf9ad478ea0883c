"""The layer vocabulary: every layer defined once, its finite half and its infinite-width half side
by side, composed into a ``Network`` that both ``finite_nets.build`` and ``cntk.kernel`` take.

Conventions (NTK parameterisation, as the paper; the same as ``cntk.Architecture``):
- weights and biases are i.i.d. N(0, 1); a layer multiplies its weights by sqrt(w_var / fan_in)
  (fan_in = q^2 x input channels for a q x q convolution, the input channels for a dense layer,
  the channels before a Flatten) and its bias by sqrt(b_var) (w_var, b_var: neural-tangents'
  W_std^2, b_std^2).  ``w_var=None`` means unit weights with no fan-in scaling (the paper's first
  layer: Sigma^(0) = T(x . x')).
- The kernel state of a pair of inputs is (nngp, ntk): per pixel pair (p, p') of the current
  feature map the covariance of one channel of the pre-activations (nngp, "Sigma") and their
  tangent kernel (ntk, "Theta").  Before the first layer it is the raw input Gram x . x' (summed
  over channels) and ntk = 0.
- Conv(q): nngp' = s T_q(nngp) + b_var with s = w_var / q^2 (w_var / (q^2 C) on the raw input,
  1 for unit weights) and T_q the patch trace (stride 1, zero "SAME" padding); ntk' = s T_q(ntk) +
  nngp' when the layer is trained, s T_q(ntk) when frozen (the paper's "fix").
- Dense: the same with q = 1 on vectors (after GlobalAvgPool / Flatten, or on (N, D) inputs).
- Activation phi: nngp' = E[phi(u) phi(v)], ntk' = E[phi'(u) phi'(v)] ntk, (u, v) centred Gaussian
  with covariance [[Sigma(x,x)_pp, Sigma(x,y)_pp'], [., Sigma(y,y)_p'p']]; closed forms only.
  Where a variance is 0 the finite net's pre-activation is exactly 0 and phi'(0) is what torch
  computes there (ReLU: 0), never NaN.  On a self pair's diagonal rho = 1 exactly (``exact``).
- AvgPool(k), stride k: both sides averaged over k x k blocks; GlobalAvgPool: the mean over all
  pixel pairs; Flatten: the sum over p = p' (the trace; the dense layer after it takes the
  channels as fan_in, so that CNN-V is the paper's trace of Theta).
With these the paper's CNN is Conv(q, unit) ReLU [Conv(q, w_var=2) ReLU]* GAP|Flatten
Dense(w_var=2 / q^2): c_sigma = 2 in every layer after the first (``paper_cnn``).

Activations live in ``cntk.activations``, ready-made networks in ``cntk.presets``, and the
backends that compute a network's kernel in ``cntk.backends``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .activations import ABReLU, Activation, ReLU
from .errors import NetworkError


# ---------------------------------------------------------------------------------------------
# shapes


@dataclass(frozen=True)
class Shape:
    """An image (channels, height, width) or a vector (channels,); ``fan_in``: the channels a dense
    layer divides by (for a flattened image: its channels, not channels x pixels)."""

    channels: int
    height: int = 0
    width: int = 0
    fan_in: int = 0

    @property
    def image(self) -> bool:
        return self.height > 0

    @classmethod
    def of(cls, input_shape) -> "Shape":
        s = tuple(int(v) for v in input_shape)
        if len(s) == 3:
            return cls(s[0], s[1], s[2])
        if len(s) == 1:
            return cls(s[0], fan_in=s[0])
        raise NetworkError("input_shape", f"input_shape must be (C, H, W) or (D,), got {input_shape!r}")


# ---------------------------------------------------------------------------------------------
# the kernel state of a batch of pairs (the dense representation of the reference backend)


@dataclass
class PairState:
    """B pairs: nngp and ntk of shape (B, H, W, H, W) on images, (B,) on vectors; var_x, var_y:
    the self pairs' nngp diagonals (B, H, W) or (B,); same: (B,) whether the pair is an input with
    itself (then rho = 1 exactly where p = p'), or None; raw: still the raw input Gram (sum over
    ``channels`` input channels)."""

    nngp: torch.Tensor
    ntk: torch.Tensor
    var_x: torch.Tensor | None
    var_y: torch.Tensor | None
    same: torch.Tensor | None
    raw: bool
    channels: int

    @property
    def exact(self) -> torch.Tensor | None:
        """Where rho = 1 exactly: the p = p' entries of self pairs (same shape as nngp), or None."""
        if self.same is None:
            return None
        if self.nngp.ndim == 1:
            return self.same
        b, h, w = self.nngp.shape[:3]
        eye = torch.eye(h * w, dtype=torch.bool, device=self.nngp.device).reshape(1, h, w, h, w)
        return self.same[:, None, None, None, None] & eye


def patch_trace(a: torch.Tensor, q: int) -> torch.Tensor:
    """T(A)[(i,j),(i',j')] = sum_{|s|,|t| <= q//2} A[(i+s,j+t),(i'+s,j'+t)], zero outside; a: (..., H, W, H, W)."""
    r = q // 2
    if r == 0:
        return a
    h, w = a.shape[-4], a.shape[-3]
    ap = F.pad(a, (r, r) * 4)
    out = torch.zeros_like(a)
    for s in range(q):
        for t in range(q):
            out += ap[..., s : s + h, t : t + w, s : s + h, t : t + w]
    return out


def _diag(a: torch.Tensor) -> torch.Tensor:
    """(B, H, W, H, W) -> (B, H, W): the p = p' entries."""
    b, h, w = a.shape[0], a.shape[1], a.shape[2]
    return a.reshape(b, h * w, h * w).diagonal(dim1=1, dim2=2).reshape(b, h, w)


# ---------------------------------------------------------------------------------------------
# layers


def _check_var(layer) -> None:
    for name in ("w_var", "b_var"):
        v = getattr(layer, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)):
            raise NetworkError(name, f"{name} must be a finite number > 0 or None, got {v!r}")


def _describe_vars(layer) -> str:
    w = "unit" if layer.w_var is None else f"w_var={layer.w_var:.4g}"
    b = f", b_var={layer.b_var:g}" if layer.b_var is not None else ""
    return f"{w}{b}{'' if layer.trainable else ', frozen'}"


PARAMETERISATIONS = ("ntk", "standard")


def check_parameterisation(parameterisation: str) -> str:
    if parameterisation not in PARAMETERISATIONS:
        raise NetworkError("parameterisation", f"unknown parameterisation {parameterisation!r}: use one of "
                                               f"{PARAMETERISATIONS}")
    return parameterisation


def _forward_multipliers(layer: "Layer", s: Shape, parameterisation: str) -> dict[str, float]:
    """What the forward pass multiplies each parameter's term by: the multipliers (NTK), or 1 (standard)."""
    m = layer.multipliers(s)
    return m if parameterisation == "ntk" else {k: 1.0 for k in m}


@dataclass(frozen=True)
class Layer:
    """One layer: its finite half (``init``, ``apply``) and its kernel rule (``rule``)."""

    KIND: ClassVar[str] = ""
    TRAINABLE: ClassVar[bool] = False

    def out_shape(self, s: Shape) -> Shape:
        return s

    def init(self, s: Shape, n_out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Parameters for ``n_out`` output channels (none for parameter-free layers), drawn N(0, 1) in
        float32 on the CPU from ``gen``.  The standard parameterisation multiplies each by its
        ``multipliers`` (after the cast to the net's dtype): the same function at initialisation."""
        return {}

    def multipliers(self, s: Shape) -> dict[str, float]:
        """Each parameter's multiplier in the NTK parameterisation (applied in the forward pass there,
        folded into the initial values in the standard one)."""
        return {}

    def apply(self, params: dict[str, torch.Tensor], a: torch.Tensor, s: Shape,
              parameterisation: str = "ntk") -> torch.Tensor:
        raise NotImplementedError

    def rule(self, st: PairState, s: Shape) -> PairState:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Conv(Layer):
    """q x q convolution, stride 1, zero padding q // 2, ``width`` output channels (the net's width
    unless ``channels`` is set), optional bias."""

    KIND: ClassVar[str] = "conv"
    TRAINABLE: ClassVar[bool] = True
    q: int = 3
    w_var: float | None = 2.0
    b_var: float | None = None
    trainable: bool = True
    channels: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.q, int) or isinstance(self.q, bool) or self.q < 1 or self.q % 2 == 0:
            raise NetworkError("filter_size", f"filter_size must be a positive odd integer, got {self.q!r}")
        _check_var(self)

    def out_shape(self, s: Shape) -> Shape:
        if not s.image:
            raise NetworkError("layers", "Conv needs an image input (C, H, W): use Dense on vectors")
        return Shape(self.channels or -1, s.height, s.width)

    def scale(self, s: Shape, raw: bool) -> float:
        """s of the kernel rule: w_var / q^2 (/ C on the raw input), 1 for unit weights."""
        if self.w_var is None:
            return 1.0
        return self.w_var / (self.q * self.q * (s.channels if raw else 1))

    def multiplier(self, s: Shape) -> float:
        """The finite layer's weight multiplier: sqrt(w_var / (q^2 C_in)), 1 for unit weights."""
        return 1.0 if self.w_var is None else math.sqrt(self.w_var / (self.q * self.q * s.channels))

    def multipliers(self, s):
        return {"weight": self.multiplier(s), "bias": math.sqrt(self.b_var or 0.0)}

    def init(self, s, n_out, gen):
        out = self.channels or n_out
        p = {"weight": torch.randn(out, s.channels, self.q, self.q, generator=gen, dtype=torch.float32)}
        if self.b_var is not None:
            p["bias"] = torch.randn(out, generator=gen, dtype=torch.float32)
        return p

    def apply(self, params, a, s, parameterisation="ntk"):
        m = _forward_multipliers(self, s, parameterisation)
        h = F.conv2d(a * m["weight"], params["weight"], padding=self.q // 2)
        if self.b_var is not None:
            h = h + m["bias"] * params["bias"][:, None, None]
        return h

    def rule(self, st, s):
        sc = self.scale(s, st.raw)
        nngp = sc * patch_trace(st.nngp, self.q) + (self.b_var or 0.0)
        ntk = sc * patch_trace(st.ntk, self.q)
        ntk = ntk + nngp if self.trainable else ntk
        return replace(st, nngp=nngp, ntk=ntk, raw=False)

    def describe(self):
        return f"Conv({self.q}x{self.q}, {_describe_vars(self)})"


@dataclass(frozen=True)
class Dense(Layer):
    """Dense layer on vectors: ``width`` outputs (the net's width), or the net's ``out_dim`` when it is
    the readout (the last layer), optional bias."""

    KIND: ClassVar[str] = "dense"
    TRAINABLE: ClassVar[bool] = True
    w_var: float | None = 2.0
    b_var: float | None = None
    trainable: bool = True

    def __post_init__(self) -> None:
        _check_var(self)

    def out_shape(self, s):
        if s.image:
            raise NetworkError("layers", "Dense needs a vector input: put GlobalAvgPool or Flatten before it")
        return Shape(-1, fan_in=-1)

    def scale(self, s, raw):
        if self.w_var is None:
            return 1.0
        return self.w_var / (s.fan_in if raw else 1)

    def multiplier(self, s):
        return 1.0 if self.w_var is None else math.sqrt(self.w_var / s.fan_in)

    def multipliers(self, s):
        return {"weight": self.multiplier(s), "bias": math.sqrt(self.b_var or 0.0)}

    def init(self, s, n_out, gen):
        p = {"weight": torch.randn(n_out, s.channels, generator=gen, dtype=torch.float32)}
        if self.b_var is not None:
            p["bias"] = torch.randn(n_out, generator=gen, dtype=torch.float32)
        return p

    def apply(self, params, a, s, parameterisation="ntk"):
        m = _forward_multipliers(self, s, parameterisation)
        h = (a * m["weight"]) @ params["weight"].T
        if self.b_var is not None:
            h = h + m["bias"] * params["bias"]
        return h

    def rule(self, st, s):
        sc = self.scale(s, st.raw)
        nngp = sc * st.nngp + (self.b_var or 0.0)
        ntk = sc * st.ntk
        return replace(st, nngp=nngp, ntk=ntk + nngp if self.trainable else ntk, raw=False)

    def describe(self):
        return f"Dense({_describe_vars(self)})"


@dataclass(frozen=True)
class Act(Layer):
    """An activation layer (``Activation``)."""

    KIND: ClassVar[str] = "activation"
    fn: Activation = field(default_factory=ReLU)

    def apply(self, params, a, s, parameterisation="ntk"):
        return self.fn.finite(a)

    def rule(self, st, s):
        if st.raw:
            raise NetworkError("layers", "an activation directly on the inputs: start with Conv or Dense")
        if st.nngp.ndim == 5:
            sx = st.var_x.clamp_min(0).sqrt()[:, :, :, None, None]
            sy = st.var_y.clamp_min(0).sqrt()[:, None, None, :, :]
        else:
            sx, sy = st.var_x.clamp_min(0).sqrt(), st.var_y.clamp_min(0).sqrt()
        k, kd = self.fn.pair(st.nngp, sx, sy, 1.0, exact=st.exact)
        return replace(st, nngp=k, ntk=kd * st.ntk)

    def describe(self):
        return self.fn.name if not isinstance(self.fn, ABReLU) else f"abrelu(a={self.fn.a:g}, b={self.fn.b:g})"


@dataclass(frozen=True)
class AvgPool(Layer):
    """k x k average pooling with stride k (H and W divisible by k).

    Across a pool the offset-plane structure of the fast backends does not carry plane by plane:
    an output offset D gathers the input offsets k D + (-(k-1) .. k-1) in each axis, (2k - 1)^2
    input planes per output plane, and the pooled per-image diagonals need the self pair's planes
    near zero offset, not its zero plane alone.  Hence only the reference backend computes pooled
    networks (the pixel count falls k^2-fold at each pool, which keeps it affordable)."""

    KIND: ClassVar[str] = "pool"
    k: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise NetworkError("pool", f"AvgPool size must be a positive integer, got {self.k!r}")

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

        return replace(st, nngp=pool(st.nngp), ntk=pool(st.ntk))  # a self pair stays one: same carries over

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
        return replace(st, nngp=st.nngp.flatten(1).mean(1), ntk=st.ntk.flatten(1).mean(1))


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
        return replace(st, nngp=_diag(st.nngp).flatten(1).sum(1), ntk=_diag(st.ntk).flatten(1).sum(1))


# ---------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class Network:
    """A network: layers in order, the last a Dense readout.  ``name``: a label for figures."""

    layers: tuple[Layer, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.layers or not isinstance(self.layers[-1], Dense):
            raise NetworkError("layers", "a network ends with its Dense readout")
        if not isinstance(self.layers[0], (Conv, Dense)):
            raise NetworkError("layers", "a network starts with Conv (images) or Dense (vectors)")
        if not any(isinstance(l, Act) for l in self.layers):
            raise NetworkError("layers", "a network needs at least one activation")

    @property
    def family(self) -> str:
        """"cnn" (image inputs) or "fc" (vector inputs)."""
        return "cnn" if isinstance(self.layers[0], Conv) else "fc"

    @property
    def readout(self) -> str:
        kinds = [type(l).__name__ for l in self.layers if l.KIND == "readout"]
        return "gap" if kinds[-1:] == ["GlobalAvgPool"] else "flatten" if kinds else "none"

    def shapes(self, input_shape, width: int = 1, out_dim: int = 1) -> list[Shape]:
        """The input shape of every layer and the output's (len(layers) + 1), with ``width`` channels
        for hidden layers; raises NetworkError (naming the layer) when the input does not fit."""
        s = Shape.of(input_shape)
        if (self.family == "cnn") != s.image:
            raise NetworkError("input_shape", f"a {self.family} network needs {'(C, H, W)' if self.family == 'cnn' else '(D,)'}"
                                              f" inputs, got {tuple(input_shape)}")
        out = [s]
        for i, layer in enumerate(self.layers):
            s = layer.out_shape(s)
            if s.channels == -1:  # a weight layer: width channels, or out_dim for the readout
                n = out_dim if i == len(self.layers) - 1 else width
                s = Shape(n, s.height, s.width, fan_in=n if not s.image else 0)
            out.append(s)
        return out

    def describe(self) -> str:
        return " -> ".join(l.describe() for l in self.layers)

    @property
    def depth(self) -> int:
        """Weight layers, readout included (the paper's depth for its CNNs)."""
        return sum(isinstance(l, (Conv, Dense)) for l in self.layers)


def as_network(obj: Any) -> Network:
    """A ``Network`` from a Network or anything with ``network()`` (e.g. ``cntk.Architecture``)."""
    if isinstance(obj, Network):
        return obj
    if hasattr(obj, "network"):
        return obj.network()
    raise ValueError(f"expected a cntk.Network or cntk.Architecture, got {type(obj).__name__}")
