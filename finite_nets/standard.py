"""The same architectures in the standard parameterisation: the CNN a practitioner trains.

Same layers as ``FiniteNet`` (bias-free q x q SAME convolutions, ReLU, GAP or flatten, a linear
readout; fc: dense layers), but the scale lives in the initial weights, not in the forward pass:
PyTorch's Kaiming-normal init for ReLU (std sqrt(2 / fan_in), fan_in = q^2 C) for every conv /
dense layer and std 1 / sqrt(fan_in) for the readout.  The hidden pre-activations have the same
scale as ``FiniteNet``'s (whose multiplier sqrt(c_sigma / (q^2 m)) is this std); what differs is
training: every weight gets a step of the same size, so the layers' gradients scale differently
with width and wide nets are not pinned to the kernel regime (the parameterisation of practice,
trained with cross-entropy and SGD with momentum).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cntk import Architecture

from finite_nets.checks import check_dtype_device, positive_int


class StandardNet(nn.Module):
    """A bias-free ReLU CNN (or MLP) of ``arch`` at ``width`` in the standard parameterisation.

    forward(x): (N, C, H, W) for cnn ((N, D) for fc) -> (N, out_dim).  ``arch.fix_first_last``
    freezes the first layer and the readout, as in ``FiniteNet``.
    """

    def __init__(self, arch: Architecture, width: int, *, input_shape: Sequence[int], out_dim: int = 10,
                 seed: int = 0, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> None:
        super().__init__()
        if not isinstance(arch, Architecture):
            raise ValueError(f"arch must be a cntk.Architecture, got {type(arch).__name__}")
        positive_int("width", width), positive_int("out_dim", out_dim)
        shape = tuple(input_shape)
        if len(shape) != (3 if arch.family == "cnn" else 1):
            raise ValueError(f"input_shape must be (C, H, W) for cnn or (D,) for fc, got {input_shape!r}")
        self.arch, self.width, self.out_dim, self.input_shape = arch, width, out_dim, shape
        gen = torch.Generator().manual_seed(seed)
        q = arch.filter_size

        def normal(std: float, *s: int) -> nn.Parameter:
            w = torch.randn(*s, generator=gen, dtype=torch.float32) * std
            return nn.Parameter(w.to(device=device, dtype=dtype or torch.get_default_dtype()))

        c = shape[0]
        if arch.family == "cnn":
            sizes = [(width, c)] + [(width, width)] * (arch.n_act_layers - 1)
            self.weights = nn.ParameterList([normal(math.sqrt(2 / (q * q * i)), o, i, q, q) for o, i in sizes])
            features = width if arch.readout == "gap" else width * shape[1] * shape[2]
        else:
            sizes = [(width, c)] + [(width, width)] * (arch.n_act_layers - 1)
            self.weights = nn.ParameterList([normal(math.sqrt(2 / i), o, i) for o, i in sizes])
            features = width
        self.readout = normal(1 / math.sqrt(features), out_dim, features)
        if arch.fix_first_last:
            self.weights[0].requires_grad_(False)
            self.readout.requires_grad_(False)

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != len(self.input_shape) + 1 or x.shape[1] != self.input_shape[0]:
            raise ValueError(f"{name} must be a batch of inputs shaped {self.input_shape}, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return check_dtype_device(x, self.readout, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.arch.filter_size // 2
        a = x
        for w in self.weights:
            a = torch.relu(F.conv2d(a, w, padding=pad) if self.arch.family == "cnn" else a @ w.T)
        if self.arch.family == "cnn":
            a = a.mean((2, 3)) if self.arch.readout == "gap" else a.flatten(1)
        return a @ self.readout.T


def build_standard(arch: Architecture, width: int, *, input_shape: Sequence[int], out_dim: int = 10, seed: int = 0,
                   dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> StandardNet:
    """``StandardNet`` of ``arch`` at ``width`` (module docstring); weights drawn in float32 on the CPU
    from ``seed``, then cast and moved."""
    return StandardNet(arch, width, input_shape=input_shape, out_dim=out_dim, seed=seed, dtype=dtype, device=device)
