"""Activations with closed-form kernels, one class each, and the registry of their names.

An activation phi gives, for a pair of centred Gaussians (u, v) with covariance
[[s_x^2, c], [c, s_y^2]], the two expectations the kernel recursion needs:
K = E[phi(u) phi(v)] and Kdot = E[phi'(u) phi'(v)] (``pair``), the self variance E[phi(u)^2]
(``self_k``), and phi itself for the finite net (``finite``).  Where a variance is 0 the finite
net's pre-activation is exactly 0 and phi'(0) is what torch computes there, never NaN.

Adding an activation: subclass ``Activation`` here and add it to ``ACTIVATIONS``; the reference,
planes and vector backends and the finite nets take it from here, and ``cntk.Architecture`` /
the Hydra ``model.activation`` key accept its NAME.  Fused backends list the activations they
compile (their ``supports``), so nothing is ever silently computed as another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .arccos import relu_step
from .errors import NetworkError


def _check_real(name: str, value: object) -> None:
    """NetworkError (one line, naming the parameter) unless ``value`` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NetworkError(name, f"{name} must be a finite real number, got {value!r}")


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity with closed-form kernels."""

    NAME: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # every parameter of a closed form is a finite real number
            _check_real(f"{type(self).__name__}.{f.name}", getattr(self, f.name))

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


@dataclass(frozen=True)
class Gelu(Activation):
    """x Phi(x) (exact erf form; neural-tangents' ``stax.Gelu(approximate=False)``).  With
    d^2 = (1 + s_x^2)(1 + s_y^2) - c^2 (>= 1: no singularity at zero variance) and A = atan2(c, d):
    E[phi phi] = c / 4 + (c A + (c^2 + s_x^2 s_y^2 d^2) / ((1 + s_x^2)(1 + s_y^2) d)) / (2 pi) and
    E[phi' phi'] = 1 / 4 + A / (2 pi) + c (1 / d^2 + (1 - s_x^2 s_y^2) / ((1 + s_x^2)(1 + s_y^2)) + 1) / (2 pi d)."""

    NAME: ClassVar[str] = "gelu"

    def pair(self, cov, std_x, std_y, scale, exact=None):
        vx, vy = std_x * std_x, std_y * std_y
        if exact is not None:
            cov = torch.where(exact, std_x * std_y, cov)
        prod, prod1 = vx * vy, (vx + 1) * (vy + 1)
        d2 = prod1 - cov * cov
        d = torch.sqrt(d2)
        ang = torch.atan2(cov, d)
        k = ((cov * cov + prod * d2) / (prod1 * d) + cov * ang) / (2 * math.pi) + 0.25 * cov
        kd = (1 / d2 + (1 - prod) / prod1 + 1) * cov / d / (2 * math.pi) + 0.25 + ang / (2 * math.pi)
        return k * scale, kd * scale

    def self_k(self, var):
        r = torch.sqrt(1 + 2 * var)
        return var * ((var / ((var + 1) * r) + torch.atan2(var, r) / 2) / math.pi + 0.25)

    def finite(self, h):
        return torch.nn.functional.gelu(h)


@dataclass(frozen=True)
class Sin(Activation):
    """a sin(b x + c) (neural-tangents' ``stax.Sin``): with S = (s_x^2 + s_y^2) / 2,
    E[phi phi] = a^2 / 2 (e^{b^2 (c_xy - S)} - e^{-b^2 (c_xy + S)} cos 2c),
    E[phi' phi'] = a^2 b^2 / 2 (e^{b^2 (c_xy - S)} + e^{-b^2 (c_xy + S)} cos 2c); smooth at zero variance."""

    NAME: ClassVar[str] = "sin"
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def pair(self, cov, std_x, std_y, scale, exact=None):
        a, b, c = float(self.a), float(self.b), float(self.c)
        if exact is not None:
            cov = torch.where(exact, std_x * std_y, cov)
        half = 0.5 * (std_x * std_x + std_y * std_y)
        s1 = torch.exp(b * b * (cov - half))
        s2 = torch.exp(-b * b * (cov + half)) * math.cos(2 * c)
        return (scale * a * a / 2) * (s1 - s2), (scale * a * a * b * b / 2) * (s1 + s2)

    def self_k(self, var):
        a, b, c = float(self.a), float(self.b), float(self.c)
        return (a * a / 2) * (1 - torch.exp(-2 * b * b * var) * math.cos(2 * c))

    def finite(self, h):
        return self.a * torch.sin(self.b * h + self.c)


ACTIVATIONS: dict[str, type[Activation]] = {c.NAME: c for c in (ReLU, ABReLU, Erf, Gelu, Sin)}


def activation(name: str, **params: float) -> Activation:
    """The activation called ``name`` ("relu", "abrelu" with a, b; "erf"; "gelu"; "sin" with a, b, c)."""
    if name not in ACTIVATIONS:
        raise NetworkError("activation", f"unknown activation {name!r}: use one of {sorted(ACTIVATIONS)}")
    unknown = sorted(set(params) - {f.name for f in fields(ACTIVATIONS[name])})
    if unknown:
        raise NetworkError("activation", f"activation {name!r} takes no parameter(s) {unknown}: it takes "
                                         f"{[f.name for f in fields(ACTIVATIONS[name])] or 'none'}")
    return ACTIVATIONS[name](**params)
