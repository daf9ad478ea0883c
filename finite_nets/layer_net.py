"""The finite net of any ``cntk.Network``: every layer's finite half (``cntk.layers``: init and apply)
composed, at width m, in the NTK parameterisation of the vocabulary or in the standard one (the
same N(0, 1) draws times each layer's multipliers, no multipliers in the forward pass: the same
function at initialisation, the per-weight steps of practice in training).

Its empirical NTK (``finite_nets.empirical_ntk``, the exact jacrev contraction) tends to
kappa^2 ``cntk.kernel(x, x', net, "ntk")`` as m grows, and its empirical NNGP (``empirical_nngp``:
the readout's conditional output covariance given the hidden layers) to kappa^2 ``"nngp"``: the
generic convergence check (tests/test_layers_convergence.py) measures both for every preset and
layer.  Graph networks (FanOut / Parallel / FanInSum) pass tuples of tensors between layers; a
Parallel's parameters are registered as ``b{branch}_{layer}_{name}``.  The paper's own family also has ``FiniteNet`` (models.py), whose structured empirical NTK
is faster; ``finite_nets.build`` picks it where it applies.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cntk.graph import Parallel
from cntk.core_layers import Dense, check_parameterisation
from cntk.network import Network, _flat
from cntk.pooling import Flatten
from cntk.errors import NetworkError

from finite_nets.checks import check_dtype_device, positive_int


class LayerNet(nn.Module):
    """``net`` at ``width`` channels (units): forward(x) (N, ...) -> (N, out_dim), times kappa
    (``output_scale``).  Weights and biases are drawn N(0, 1) in float32 on the CPU from ``seed``, layer
    by layer in order, then cast; frozen layers (``trainable=False``) have requires_grad False.
    ``parameterisation``: "ntk" (the theorems') or "standard" (module docstring)."""

    def __init__(self, net: Network, width: int, *, input_shape: Sequence[int], out_dim: int = 1,
                 output_scale: float = 1.0, seed: int = 0, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None, parameterisation: str = "ntk") -> None:
        super().__init__()
        if not isinstance(net, Network):
            raise ValueError(f"net must be a cntk.Network, got {type(net).__name__}")
        positive_int("width", width), positive_int("out_dim", out_dim)
        if not isinstance(output_scale, (int, float)) or not math.isfinite(output_scale) or output_scale <= 0:
            raise ValueError(f"output_scale (kappa) must be a finite number > 0, got {output_scale!r}")
        try:
            self.parameterisation = check_parameterisation(parameterisation)
            self.shapes = net.shapes(tuple(input_shape), width, out_dim)
        except NetworkError as err:
            raise ValueError(str(err)) from None
        dtype = dtype or torch.get_default_dtype()
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net, self.width, self.out_dim, self.output_scale = net, width, out_dim, float(output_scale)
        self.input_shape = tuple(int(v) for v in input_shape)
        # a net of layers that each take any image size (GAP readout, no Flatten) takes any H, W that its
        # pooling divides; a Flatten fixes the size it was built for
        self.any_size = self.input_shape.__len__() == 3 and not any(isinstance(l, Flatten) for l in _flat(net.layers))
        self._shapes = {self.input_shape: self.shapes}
        gen = torch.Generator().manual_seed(seed)
        self.layer_params = nn.ModuleList()
        last = len(net.layers) - 1
        for i, (layer, s) in enumerate(zip(net.layers, self.shapes)):
            holder = nn.Module()
            scale = ({} if self.parameterisation != "standard" else
                     layer.multipliers(s, width) if isinstance(layer, Parallel) else layer.multipliers(s))
            for name, t in layer.init(s, out_dim if i == last else width, gen).items():
                t = t.to(device=dev, dtype=dtype) * scale.get(name, 1.0)
                trainable = layer.param_trainable(name) if isinstance(layer, Parallel) else getattr(layer, "trainable", True)
                p = nn.Parameter(t, requires_grad=bool(trainable))
                holder.register_parameter(name, p)
            self.layer_params.append(holder)

    @property
    def readout(self) -> nn.Parameter:
        """The readout's weight (out_dim, features)."""
        return self.layer_params[-1].weight

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Raise ValueError (one line: the shape given and the one needed) unless x is a batch this net
        takes: (N, *input_shape), or for a net without Flatten (N, C, H, W) of any H, W its pooling divides."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        self.shapes_for(x, name)
        return check_dtype_device(x, self.readout, name)

    def shapes_for(self, x: torch.Tensor, name: str = "x") -> list:
        """The layers' shapes for the batch x (metadata only: also under torch.func transforms)."""
        given = tuple(int(v) for v in x.shape[1:])
        if given in self._shapes:
            return self._shapes[given]
        need = ", ".join(map(str, self.input_shape))
        if not self.any_size or len(given) != 3 or given[0] != self.input_shape[0]:
            what = (f"(N, {self.input_shape[0]}, H, W) (any H, W its pooling divides)" if self.any_size
                    else f"(N, {need})" + (" (its Flatten fixes the image size)" if len(self.input_shape) == 3 else ""))
            raise ValueError(f"{name} has inputs of shape {given}, but this net needs {what}")
        try:
            self.net.check_input_shape(given)
            shapes = self.net.shapes(given, self.width, self.out_dim)
        except NetworkError as err:
            raise ValueError(f"{name} has inputs of shape {given}, which this net cannot take: {err}") from None
        self._shapes[given] = shapes
        return shapes

    def _params(self, i: int) -> dict[str, torch.Tensor]:
        return dict(self.layer_params[i].named_parameters(recurse=False))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's input times its weight multiplier and kappa: f = features @ readout.T (+ bias)."""
        self.check_input(x)
        a = x
        for i, (layer, s) in enumerate(zip(self.net.layers[:-1], self.shapes_for(x))):
            a = layer.apply(self._params(i), a, s, self.parameterisation)
        return a * (self._readout_multipliers()["weight"] * self.output_scale)

    def _readout_multipliers(self) -> dict[str, float]:
        m = self.net.layers[-1].multipliers(self.shapes[-2])  # the readout's fan-in: channels, whatever H, W
        return m if self.parameterisation == "ntk" else {k: 1.0 for k in m}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x) @ self.readout.T
        ro: Dense = self.net.layers[-1]
        if ro.b_var is not None:
            bias = self._params(len(self.net.layers) - 1)["bias"]
            f = f + (self._readout_multipliers()["bias"] * self.output_scale) * bias
        return f

    def extra_repr(self) -> str:
        return (f"{self.net.describe()}, width={self.width}, out_dim={self.out_dim}, output_scale={self.output_scale}, "
                f"parameterisation={self.parameterisation}")


def empirical_nngp(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """The output covariance of ``model`` over its readout weights (and bias) given the hidden layers:
    features(x1) . features(x2) (+ kappa^2 b_var): (N1, N2).  Tends to kappa^2 cntk.kernel(..., "nngp")
    as width grows.  For a LayerNet, or a FiniteNet (paper family)."""
    with torch.no_grad():
        f1 = model.features(x1)
        f2 = f1 if x2 is None else model.features(x2)
        out = f1 @ f2.T
        ro = getattr(getattr(model, "net", None), "layers", [None])[-1]
        if isinstance(ro, Dense) and ro.b_var is not None:
            out = out + ro.b_var * model.output_scale**2
    return out


__all__ = ["LayerNet", "empirical_nngp"]
