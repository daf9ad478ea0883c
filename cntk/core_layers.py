"""The layer base (``Layer``, ``Shape``, ``PairState``) and the weight and activation layers (``Conv``,
``Dense``, ``Act``): every layer defined once, its finite half and its infinite-width half side by
side.  Users take the whole vocabulary from ``cntk.layers``.

Conventions (NTK parameterisation, as the paper; the same as ``cntk.Architecture``):
- weights and biases are i.i.d. N(0, 1); a layer multiplies its weights by sqrt(w_var / fan_in)
  (fan_in = q^2 x input channels for a q x q convolution, the input channels for a dense layer,
  the channels before a Flatten) and its bias by sqrt(b_var) (w_var, b_var: neural-tangents'
  W_std^2, b_std^2).  ``w_var=None`` means unit weights with no fan-in scaling (the paper's first
  layer: Sigma^(0) = T(x . x')).
- The kernel state of a pair of inputs (``PairState``) is (nngp, ntk): per pixel pair (p, p') of
  the current feature map the covariance of one channel of the pre-activations (nngp, "Sigma") and
  their tangent kernel (ntk, "Theta"), plus each side's self variances Sigma(x, x)[p, p] and
  Sigma(y, y)[p', p'], which every rule updates too (Conv: s times the q x q box sum of the variance
  map + b_var).  Before the first layer it is the raw input Gram x . x' (summed over channels),
  ntk = 0, and the variances are sum_c x_c(p)^2.
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

Pooling and readouts live in ``cntk.pooling``, graph layers (FanOut, Parallel, FanInSum, Identity)
and LayerNorm in ``cntk.graph``, the ``Network`` in ``cntk.network``, activations in
``cntk.activations``, ready-made networks in ``cntk.presets``, and the backends that compute a
network's kernel in ``cntk.backends``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

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
    """B pairs (x_b, y_b), as neural-tangents' ``Kernel`` with its cov1 / cov2: nngp and ntk of shape
    (B, H, W, H, W) on images, (B,) on vectors; var_x, var_y: the self pairs' nngp diagonals
    Sigma(x, x)[p, p], (B, H, W) or (B,), updated by every layer's rule alongside the cross terms;
    same: (B,) whether the pair is an input with itself (then rho = 1 exactly where p = p'), or None;
    raw: still the raw input Gram (sum over ``channels`` input channels); gaussian: the state of
    Gaussian pre-activations (right after a weight layer, or a sum / pooling of such: what LayerNorm
    needs).  cov_x, cov_y: the self pairs' full nngp (B, H, W, H, W), carried only where the
    diagonals do not close (pooling followed by an activation or LayerNorm), else None."""

    nngp: torch.Tensor
    ntk: torch.Tensor
    var_x: torch.Tensor | None
    var_y: torch.Tensor | None
    same: torch.Tensor | None
    raw: bool
    channels: int
    gaussian: bool = False
    cov_x: torch.Tensor | None = None
    cov_y: torch.Tensor | None = None

    def sides(self, f) -> dict:
        """{var_x, var_y, cov_x, cov_y} with ``f(var, cov) -> (var, cov)`` applied to each side."""
        (vx, cx), (vy, cy) = f(self.var_x, self.cov_x), f(self.var_y, self.cov_y)
        return {"var_x": vx, "var_y": vy, "cov_x": cx, "cov_y": cy}

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


def box_sum(v: torch.Tensor, q: int) -> torch.Tensor:
    """The diagonal of the patch trace: q x q box sum of a variance map (..., H, W), zero outside
    (the same additions in the same order as ``patch_trace`` on p = p')."""
    r = q // 2
    if r == 0:
        return v
    h, w = v.shape[-2], v.shape[-1]
    vp = F.pad(v, (r, r) * 2)
    out = torch.zeros_like(v)
    for s in range(q):
        for t in range(q):
            out += vp[..., s : s + h, t : t + w]
    return out


def _eye(a: torch.Tensor) -> torch.Tensor:
    h, w = a.shape[1], a.shape[2]
    return torch.eye(h * w, dtype=torch.bool, device=a.device).reshape(1, h, w, h, w)


def _outer(vx: torch.Tensor, vy: torch.Tensor, f) -> tuple[torch.Tensor, torch.Tensor]:
    """f(var) of both sides shaped to broadcast against the cross nngp: images (B,H,W,1,1) / (B,1,1,H,W)."""
    if vx.ndim == 3:
        return f(vx)[:, :, :, None, None], f(vy)[:, None, None, :, :]
    return f(vx), f(vy)


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
            raise NetworkError(name, f"{type(layer).__name__} {name} must be a finite number > 0 or None, got {v!r}")


def _check_flag(layer, name: str = "trainable") -> None:
    v = getattr(layer, name)
    if not isinstance(v, bool):
        raise NetworkError(name, f"{type(layer).__name__} {name} must be True or False, got {v!r}")


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
    GRAPH: ClassVar[bool] = False  # takes / gives tuples of states (cntk.graph)

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
            raise NetworkError("filter_size", f"Conv q (filter_size) must be a positive odd integer, got {self.q!r}")
        _check_var(self)
        _check_flag(self)
        c = self.channels
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise NetworkError("channels", f"Conv channels must be a positive integer or None (the net's width), got {c!r}")

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
        sc, b = self.scale(s, st.raw), (self.b_var or 0.0)
        nngp = sc * patch_trace(st.nngp, self.q) + b
        ntk = sc * patch_trace(st.ntk, self.q)
        ntk = ntk + nngp if self.trainable else ntk

        def side(v, c):  # Sigma_xx(p, p) after the conv: s * (q x q box sum of the variance map) + b
            if c is not None:
                c = sc * patch_trace(c, self.q) + b
                return _diag(c), c
            return (None if v is None else sc * box_sum(v, self.q) + b), None

        return replace(st, nngp=nngp, ntk=ntk, raw=False, gaussian=True, **st.sides(side))

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
        _check_flag(self)

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
        sc, b = self.scale(s, st.raw), (self.b_var or 0.0)
        nngp = sc * st.nngp + b
        ntk = sc * st.ntk
        side = lambda v, c: (None if v is None else sc * v + b, None)  # noqa: E731
        return replace(st, nngp=nngp, ntk=ntk + nngp if self.trainable else ntk, raw=False, gaussian=True,
                       **st.sides(side))

    def describe(self):
        return f"Dense({_describe_vars(self)})"


@dataclass(frozen=True)
class Act(Layer):
    """An activation layer (``Activation``)."""

    KIND: ClassVar[str] = "activation"
    fn: Activation = field(default_factory=ReLU)

    def __post_init__(self) -> None:
        if not isinstance(self.fn, Activation):
            hint = (f": use Act(cntk.activations.activation({self.fn!r}))" if isinstance(self.fn, str) else
                    f": use Act({self.fn.__name__}())" if isinstance(self.fn, type) and issubclass(self.fn, Activation)
                    else "")
            raise NetworkError("activation", f"Act fn must be an activation of cntk.activations (e.g. ReLU()), "
                                             f"got {self.fn!r}{hint}")

    def apply(self, params, a, s, parameterisation="ntk"):
        return self.fn.finite(a)

    def rule(self, st, s):
        if st.raw:
            raise NetworkError("layers", "an activation directly on the inputs: start with Conv or Dense")
        if st.var_x is None or st.var_y is None:
            raise RuntimeError("the state lost its self variances (pooling without cov_x / cov_y)")
        std = lambda v: v.clamp_min(0).sqrt()  # noqa: E731
        sx, sy = _outer(st.var_x, st.var_y, std)
        k, kd = self.fn.pair(st.nngp, sx, sy, 1.0, exact=st.exact)

        def side(v, c):  # the self pair, rho = 1 exactly on its diagonal
            if c is not None:
                a, b = _outer(v, v, std)
                c = self.fn.pair(c, a, b, 1.0, exact=_eye(c))[0]
                return _diag(c), c
            sv = std(v)
            return self.fn.pair(v, sv, sv, 1.0, exact=torch.ones_like(v, dtype=torch.bool))[0], None

        return replace(st, nngp=k, ntk=kd * st.ntk, gaussian=False, **st.sides(side))

    def describe(self):
        return self.fn.name if not isinstance(self.fn, ABReLU) else f"abrelu(a={self.fn.a:g}, b={self.fn.b:g})"

