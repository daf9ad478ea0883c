"""Finite-width networks in the NTK parameterisation whose infinite-width limit is ``cntk.kernel``.

CNN family (``arch.family == "cnn"``), width m, L = arch.depth - 1 conv layers, q = filter size,
c = c_sigma = 2, all weights i.i.d. N(0, 1), no biases, q x q convolutions, stride 1, zero
("SAME") padding q // 2:

    h_1 = conv(x, W_1)                                  W_1: (m, C, q, q), unscaled
    h_l = sqrt(c / (q^2 m)) * conv(relu(h_{l-1}), W_l)  W_l: (m, m, q, q), l = 2..L
    a   = sqrt(c / (q^2 m)) * relu(h_L)                 (m, H, W)
    flatten ("CNN-V"):  f = kappa * V @ vec(a)          V: (out_dim, m H W)
    GAP:                f = kappa * V @ mean_p a[:, p]  V: (out_dim, m)

Fully-connected family (``"fc"``), inputs (D,): h_1 = W_1 x, h_l = sqrt(c / m) W_l relu(h_{l-1}),
f = kappa * sqrt(c / m) V relu(h_L).

Why the limit is ``cntk.kernel`` (constants included): conditioned on the layer below, each channel
of h_l is a centred Gaussian process over pixels with covariance
(c / (q^2 m)) sum_{channels, patch offsets} relu(h) relu(h') -> T((c / q^2) E[relu relu]) = T(K^(l-1)),
which is the paper's Sigma^(l-1) = T(K^(l-1)) with the c_sigma / q^2 factor inside K; the first
layer gives Sigma^(0) = T(x^T x') because W_1 is unscaled.  Each layer's weight-gradient inner
product is (scale^2) sum_{p,p'} <dh, dh'>_{p,p'} <patch, patch'>_{p,p'}, whose limit is the
Kdot * Theta + K step of the recursion; the readout gives sum_p K^(L)[p, p] (trace: CNTK-V) or
mean_{p,p'} K^(L)[p, p'] (CNTK-GAP).  Hence the empirical NTK tends to kappa^2 * cntk.kernel(...,
"ntk") and the output covariance at init to kappa^2 * cntk.kernel(..., "nngp").  With
``arch.fix_first_last`` W_1 and V are frozen (requires_grad False); the empirical NTK over the
trainable weights tends to the paper's "fix" kernel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cntk import Architecture
from cntk.api import as_device

from .checks import check_dtype_device, default_device, positive_int


class FiniteNet(nn.Module):
    """A bias-free ReLU CNN (or MLP) of ``arch`` at width m in the NTK parameterisation (module docstring).

    Parameters: ``weights`` (a ParameterList, W_1..W_L) and ``readout`` (V, (out_dim, features)).
    forward(x): x (N, C, H, W) for cnn ((N, D) for fc) in the model's dtype and device -> (N, out_dim).
    For GAP any H, W is accepted; flatten needs exactly ``input_shape``.
    """

    def __init__(
        self,
        arch: Architecture,
        width: int,
        *,
        input_shape: Sequence[int],
        out_dim: int = 1,
        output_scale: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(arch, Architecture):
            raise ValueError(f"arch must be a cntk.Architecture, got {type(arch).__name__}")
        if arch.family not in ("cnn", "fc") or arch.activation != "relu" or arch.bias_var:
            raise ValueError(f"FiniteNet is the paper's family (ReLU, no bias, cnn or fc); {arch} is not: "
                             "use finite_nets.build, which builds any network (finite_nets.layer_net.LayerNet)")
        width = positive_int("width", width)
        out_dim = positive_int("out_dim", out_dim)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(output_scale, (int, float)) or not math.isfinite(output_scale) or output_scale <= 0:
            raise ValueError(f"output_scale (kappa) must be a finite number > 0, got {output_scale!r}")
        dtype = dtype or torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        want = 3 if arch.family == "cnn" else 1
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != want or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            form = "(C, H, W)" if want == 3 else "(D,)"
            raise ValueError(f"input_shape must be {form} positive integers for a {arch.family} net, got {input_shape!r}")

        self.arch, self.width, self.out_dim = arch, width, out_dim
        self.output_scale = float(output_scale)
        self.input_shape = shape
        q = arch.filter_size
        m = width
        # scale of every layer's input after the first, and of the readout's input
        self.hidden_scale = math.sqrt(arch.act_scale / m)  # sqrt(c/(q^2 m)) for cnn, sqrt(c/m) for fc
        gen = torch.Generator().manual_seed(seed)
        dev = as_device(device) if device is not None else default_device()

        def normal(*s: int) -> nn.Parameter:
            # drawn in float32 on the CPU (3x faster than float64 at large widths), then cast: a seed
            # names the same weights on every device and in both dtypes
            return nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float32).to(device=dev, dtype=dtype))

        c_in = shape[0]
        if arch.family == "cnn":
            layers = [normal(m, c_in, q, q)] + [normal(m, m, q, q) for _ in range(arch.n_act_layers - 1)]
            features = m if arch.readout == "gap" else m * shape[1] * shape[2]
        else:
            layers = [normal(m, c_in)] + [normal(m, m) for _ in range(arch.n_act_layers - 1)]
            features = m
        self.weights = nn.ParameterList(layers)
        self.readout = normal(out_dim, features)
        if arch.fix_first_last:
            self.weights[0].requires_grad_(False)
            self.readout.requires_grad_(False)

    # ------------------------------------------------------------------ forward

    def layer_scale(self, layer: int) -> float:
        """Multiplier of layer ``layer``'s (0-based) pre-activation: 1 for the first, sqrt(c/(q^2 m)) after."""
        return 1.0 if layer == 0 else self.hidden_scale

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Raise ValueError unless x is a batch this net accepts (shape, dtype, device).

        Metadata only, so it also runs under torch.func transforms; finiteness is checked by
        ``empirical_ntk`` and the training functions, not by every forward."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        cnn = self.arch.family == "cnn"
        form = "(N, C, H, W)" if cnn else "(N, D)"
        if x.ndim != len(self.input_shape) + 1:
            raise ValueError(f"{name} must have shape {form} for a {self.arch.family} net, got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_shape[0]:
            raise ValueError(f"{name} has inputs of shape {tuple(x.shape[1:])}, but this net needs "
                             f"{self.input_shape[0]} {'channels' if cnn else 'features'} "
                             f"(input_shape {self.input_shape})")
        if cnn and self.arch.readout == "flatten" and tuple(x.shape[2:]) != self.input_shape[1:]:
            raise ValueError(
                f"{name} has inputs of shape {tuple(x.shape[1:])}, but this flatten-readout net needs "
                f"{self.input_shape} (the size it was built for; a GAP net takes any H, W)"
            )
        if cnn and min(x.shape[2:]) < 1:
            raise ValueError(f"{name} has an empty spatial dimension: shape {tuple(x.shape)}")
        return check_dtype_device(x, self.readout, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.propagate(x, list(self.weights), self.readout)[0]

    def propagate(
        self,
        x: torch.Tensor,
        weights: Sequence[torch.Tensor],
        readout: torch.Tensor,
        perturb: dict[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The forward pass with explicit weights (for torch.func), no input checks.

        perturb: optional {layer: tensor} added to that layer's pre-activation h (zeros in use: their
        gradients are df/dh).  Returns (f (N, out_dim), layer inputs [x, relu(h_1), ...] each
        multiplied by its layer scale (so h_l = conv(input_l, W_l)), readout features (N, F)
        already multiplied by kappa and the readout scale (so f = features @ V^T)).
        """
        cnn = self.arch.family == "cnn"
        pad = self.arch.filter_size // 2
        a = x
        inputs = []
        for layer, w in enumerate(weights):
            a = a * self.layer_scale(layer) if layer else a
            inputs.append(a)
            h = F.conv2d(a, w, padding=pad) if cnn else a @ w.T
            if perturb is not None and layer in perturb:
                h = h + perturb[layer]
            a = torch.relu(h)
        if cnn:
            a = a.mean((2, 3)) if self.arch.readout == "gap" else a.flatten(1)
        features = a * (self.hidden_scale * self.output_scale)
        return features @ readout.T, inputs, features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's input times its scale and kappa: f = features @ readout.T (empirical NNGP)."""
        self.check_input(x)
        return self.propagate(x, list(self.weights), self.readout)[2]

    def extra_repr(self) -> str:
        a = self.arch
        return (
            f"family={a.family}, depth={a.depth}, readout={a.readout}, fix_first_last={a.fix_first_last}, "
            f"width={self.width}, input_shape={self.input_shape}, out_dim={self.out_dim}, output_scale={self.output_scale}"
        )
