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

Adding an activation with a closed form: subclass ``Activation`` here (``pair``: its scaled K and
Kdot; ``self_k``: E[phi(u)^2]; ``finite``: phi itself) and add it to ``ACTIVATIONS``; the
reference and planes backends and the finite nets take it from here; fused backends list the
activations they compile (their ``supports``), so nothing is ever silently computed as another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .arccos import relu_step


class NetworkError(ValueError):
    """An impossible network description; ``field`` names the offending part."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------------------
# activations


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity with closed-form kernels."""

    NAME: ClassVar[str] = ""

    def pair(self, cov: torch.Tensor, std_x: torch.Tensor, std_y: torch.Tensor, scale: float,
             exact: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale E[phi(u) phi(v)], scale E[phi'(u) phi'(v)]) elementwise; arguments broadcast."""
        raise NotImplementedError

    def self_k(self, var: torch.Tensor) -> torch.Tensor:
        """E[phi(u)^2] for u ~ N(0, var): the diagonal of the next nngp on a self pair."""
        raise NotImplementedError

    def finite(self, h: torch.Tensor) -> torch.Tensor:
        """phi(h) in the finite net."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.NAME


@dataclass(frozen=True)
class ReLU(Activation):
    """max(x, 0): the arc-cosine kernels of degree 1 and 0 (``cntk.arccos``); relu'(0) = 0."""

    NAME: ClassVar[str] = "relu"

    def pair(self, cov, std_x, std_y, scale, exact=None):
        return relu_step(cov, std_x, std_y, scale, exact=exact)

    def self_k(self, var):
        return var * 0.5

    def finite(self, h):
        return torch.relu(h)


@dataclass(frozen=True)
class ABReLU(Activation):
    """a min(x, 0) + b max(x, 0) (leaky ReLU: a = slope, b = 1) = (b - a) relu(x) + a x, so
    E[phi phi] = (b - a)^2 E[relu relu] + a b cov and E[phi' phi'] = (b - a)^2 E[relu' relu'] + a b.
    The finite net computes phi'(0) = a (torch.where(x > 0, b x, a x)): where one variance is 0,
    E[phi' phi'] = a (a + b) / 2 (a^2 where both are), as that net gives."""

    NAME: ClassVar[str] = "abrelu"
    a: float = 0.0
    b: float = 1.0

    def pair(self, cov, std_x, std_y, scale, exact=None):
        a, b = float(self.a), float(self.b)
        k, kd = relu_step(cov, std_x, std_y, scale * (b - a) ** 2, exact=exact)
        norm = std_x * std_y
        pos = norm > 0
        c = torch.minimum(torch.maximum(cov, -norm), norm)  # = rho * norm: the true cov, also on exact pairs
        if exact is not None:
            c = torch.where(exact, norm, c)
        k = k + (scale * a * b) * c
        one_zero = (std_x > 0) | (std_y > 0)
        zero_kd = torch.where(one_zero, torch.full_like(norm, scale * a * (a + b) / 2), torch.full_like(norm, scale * a * a))
        kd = torch.where(pos, kd + scale * a * b, zero_kd)
        return k, kd

    def self_k(self, var):
        return var * ((self.a * self.a + self.b * self.b) * 0.5)

    def finite(self, h):
        return torch.where(h > 0, self.b * h, self.a * h)


def LeakyReLU(slope: float = 0.01) -> ABReLU:  # noqa: N802 - a constructor, named like the layer
    """max(x, 0) + slope min(x, 0): ABReLU(a=slope, b=1)."""
    return ABReLU(a=slope, b=1.0)


@dataclass(frozen=True)
class Erf(Activation):
    """erf(x): E[erf(u) erf(v)] = (2 / pi) asin(2 c / sqrt((1 + 2 s_x)(1 + 2 s_y))) and
    E[erf'(u) erf'(v)] = (4 / pi) / sqrt((1 + 2 s_x)(1 + 2 s_y) - 4 c^2) (Williams 1997); no
    singularity at zero variance (erf'(0) = 2 / sqrt(pi))."""

    NAME: ClassVar[str] = "erf"

    def pair(self, cov, std_x, std_y, scale, exact=None):
        vx, vy = std_x * std_x, std_y * std_y
        if exact is not None:
            cov = torch.where(exact, std_x * std_y, cov)
        d = torch.sqrt((1 + 2 * vx) * (1 + 2 * vy))
        arg = (2 * cov / d).clamp(-1.0, 1.0)
        k = torch.asin(arg) * (scale * 2 / math.pi)
        kd = (scale * 4 / math.pi) / torch.sqrt(((1 + 2 * vx) * (1 + 2 * vy) - 4 * cov * cov).clamp_min(1e-300))
        return k, kd

    def self_k(self, var):
        return torch.asin(2 * var / (1 + 2 * var)) * (2 / math.pi)

    def finite(self, h):
        return torch.erf(h)


ACTIVATIONS: dict[str, type[Activation]] = {c.NAME: c for c in (ReLU, ABReLU, Erf)}


def activation(name: str, **params: float) -> Activation:
    """The activation called ``name`` ("relu", "abrelu" with a, b; "erf")."""
    if name not in ACTIVATIONS:
        raise NetworkError("activation", f"unknown activation {name!r}: use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](**params)


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


@dataclass(frozen=True)
class Layer:
    """One layer: its finite half (``init``, ``apply``) and its kernel rule (``rule``)."""

    KIND: ClassVar[str] = ""
    TRAINABLE: ClassVar[bool] = False

    def out_shape(self, s: Shape) -> Shape:
        return s

    def init(self, s: Shape, n_out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Parameters drawn N(0, 1) in float32 on the CPU from ``gen`` for ``n_out`` output channels
        (none for parameter-free layers)."""
        return {}

    def apply(self, params: dict[str, torch.Tensor], a: torch.Tensor, s: Shape) -> torch.Tensor:
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

    def init(self, s, n_out, gen):
        out = self.channels or n_out
        p = {"weight": torch.randn(out, s.channels, self.q, self.q, generator=gen, dtype=torch.float32)}
        if self.b_var is not None:
            p["bias"] = torch.randn(out, generator=gen, dtype=torch.float32)
        return p

    def apply(self, params, a, s):
        h = F.conv2d(a * self.multiplier(s), params["weight"], padding=self.q // 2)
        if self.b_var is not None:
            h = h + math.sqrt(self.b_var) * params["bias"][:, None, None]
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

    def init(self, s, n_out, gen):
        p = {"weight": torch.randn(n_out, s.channels, generator=gen, dtype=torch.float32)}
        if self.b_var is not None:
            p["bias"] = torch.randn(n_out, generator=gen, dtype=torch.float32)
        return p

    def apply(self, params, a, s):
        h = (a * self.multiplier(s)) @ params["weight"].T
        if self.b_var is not None:
            h = h + math.sqrt(self.b_var) * params["bias"]
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

    def apply(self, params, a, s):
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

    def apply(self, params, a, s):
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

    def apply(self, params, a, s):
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

    def apply(self, params, a, s):
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


def paper_cnn(depth: int = 3, readout: str = "gap", *, fix_first_last: bool = False, filter_size: int = 3,
              act: Activation | None = None, b_var: float | None = None) -> Network:
    """The paper's CNN-GAP / CNN-V (depth = conv layers + 1), with c_sigma = 2 (ReLU); ``act`` and
    ``b_var`` give the same family with another activation or with biases."""
    q, act = filter_size, act or ReLU()
    layers: list[Layer] = [Conv(q, w_var=None, b_var=b_var, trainable=not fix_first_last), Act(act)]
    for _ in range(depth - 2):
        layers += [Conv(q, w_var=2.0, b_var=b_var), Act(act)]
    layers += [GlobalAvgPool() if readout == "gap" else Flatten(),
               Dense(w_var=2.0 / q**2, b_var=b_var, trainable=not fix_first_last)]
    return Network(tuple(layers), f"CNN-{'GAP' if readout == 'gap' else 'V'}")


def fc_net(depth: int = 3, *, fix_first_last: bool = False, act: Activation | None = None,
           b_var: float | None = None) -> Network:
    """The fully-connected net of the paper's Sec. 3 (depth = hidden layers + 1), c_sigma = 2."""
    act = act or ReLU()
    layers: list[Layer] = [Dense(w_var=None, b_var=b_var, trainable=not fix_first_last), Act(act)]
    for _ in range(depth - 2):
        layers += [Dense(w_var=2.0, b_var=b_var), Act(act)]
    layers += [Dense(w_var=2.0, b_var=b_var, trainable=not fix_first_last)]
    return Network(tuple(layers), "FC")


MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}  # conv layers per stage (neural-tangents' Myrtle example)


def myrtle(depth: int = 5, *, filter_size: int = 3, act: Activation | None = None,
           b_var: float | None = None) -> Network:
    """Myrtle-style pooled CNN (Shankar et al. 2020): conv-ReLU stages with 2 x 2 average pooling
    between them, then global average pooling and a dense readout; ``depth`` 5, 7 or 10 sets the
    convolutions per stage (2, 1, 1), (2, 2, 2), (3, 3, 3).  Inputs must be divisible by 4."""
    if depth not in MYRTLE_STAGES:
        raise NetworkError("depth", f"myrtle depth must be one of {sorted(MYRTLE_STAGES)}, got {depth}")
    q, act = filter_size, act or ReLU()
    layers: list[Layer] = []
    for stage, n in enumerate(MYRTLE_STAGES[depth]):
        for i in range(n):
            first = stage == 0 and i == 0
            layers += [Conv(q, w_var=None if first else 2.0, b_var=b_var), Act(act)]
        if stage < 2:
            layers.append(AvgPool(2))
    layers += [GlobalAvgPool(), Dense(w_var=2.0 / q**2, b_var=b_var)]
    return Network(tuple(layers), f"Myrtle-{depth}")


# ---------------------------------------------------------------------------------------------
# the chain form that fast backends compute


@dataclass(frozen=True)
class Chain:
    """A network of the form  W_1 phi W_2 phi ... W_L phi [GAP | Flatten] W_readout  with one filter
    size and no pooling: what the offset-plane backends compute.  Per weight layer (L + 1, the
    readout last): its scale (None: unit weights, else w_std^2 / q^2 -- the first divided by the
    input channels at run time), bias variance, trainable; per activation layer (L): the activation."""

    family: str
    readout: str  # "gap" | "flatten" | "none" (fc)
    filter_size: int
    w2: tuple[float | None, ...]  # w_var per weight layer (None: unit weights)
    b2: tuple[float, ...]
    trainable: tuple[bool, ...]
    acts: tuple[Activation, ...]

    @property
    def n_relu_layers(self) -> int:
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
    def relu_scale(self) -> float:
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
        return (self.w2[0] is None and all(isinstance(a, ReLU) and type(a) is ReLU for a in self.acts)
                and not any(self.b2) and math.isclose(self.relu_scale, 2.0 / (self.filter_size**2 if self.family == "cnn" else 1))
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
    if any(isinstance(l, AvgPool) for l in body):
        return "it has AvgPool layers (pooling is computed by the reference backend only)"
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
                 tuple(w.trainable for w in ws), tuple(a.fn for a in acts))


# ---------------------------------------------------------------------------------------------
# the reference rules, applied


def initial_state(x: torch.Tensor, y: torch.Tensor, same: torch.Tensor | None) -> PairState:
    """The raw input state of pairs (x[b], y[b]): images (B, C, H, W) -> (B, H, W, H, W); vectors (B, D) -> (B,)."""
    same = same if same is not None and bool(same.any()) else None
    if x.ndim == 4:
        b, c, h, w = x.shape
        g = torch.einsum("bcp,bcq->bpq", x.reshape(b, c, h * w), y.reshape(b, c, h * w)).reshape(b, h, w, h, w)
        return PairState(g, torch.zeros_like(g), None, None, same, True, c)
    g = (x * y).sum(1)
    return PairState(g, torch.zeros_like(g), None, None, same, True, x.shape[1])


def apply_rules(net: Network, state: PairState, shapes: list[Shape],
                var_x: list[torch.Tensor], var_y: list[torch.Tensor]) -> PairState:
    """Run every layer's rule; ``var_x`` / ``var_y``: the self pairs' nngp diagonals before each
    activation, in order (from ``self_variances``)."""
    k = 0
    for layer, s in zip(net.layers, shapes):
        if isinstance(layer, Act):
            state = replace(state, var_x=var_x[k], var_y=var_y[k])
            k += 1
        state = layer.rule(state, s)
    return state


def self_variances(net: Network, x: torch.Tensor, shapes: list[Shape]) -> list[torch.Tensor]:
    """For each activation layer, the nngp diagonal of every input's self pair before it: (N, H, W)
    or (N,).  Computed by the rules themselves on (x, x) with rho = 1 on the diagonal."""
    st = initial_state(x, x, torch.ones(len(x), dtype=torch.bool, device=x.device))
    out = []
    for layer, s in zip(net.layers, shapes):
        if isinstance(layer, Act):
            diag = _diag(st.nngp) if st.nngp.ndim == 5 else st.nngp
            out.append(diag)
            st = replace(st, var_x=diag, var_y=diag)
        st = layer.rule(st, s)
    return out


def as_network(obj: Any) -> Network:
    """A ``Network`` from a Network or anything with ``network()`` (e.g. ``cntk.Architecture``)."""
    if isinstance(obj, Network):
        return obj
    if hasattr(obj, "network"):
        return obj.network()
    raise ValueError(f"expected a cntk.Network or cntk.Architecture, got {type(obj).__name__}")
