"""``build``: the finite net of any network description."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from cntk import Architecture
from cntk.api import as_device
from cntk.network import Network

from .checks import default_device
from .layer_net import LayerNet
from .paper_net import FiniteNet


def build(
    arch: Architecture | Network,
    width: int,
    *,
    input_shape: Sequence[int],
    seed: int = 0,
    out_dim: int = 1,
    output_scale: float = 1.0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    parameterisation: str = "ntk",
) -> "FiniteNet | LayerNet":
    """The finite net of ``arch`` (a ``cntk.Architecture`` or any ``cntk.Network``) at ``width`` channels
    (hidden units for fc) in the NTK parameterisation.

    The paper's family (``Architecture`` with ReLU, no bias, cnn or fc) gives a ``FiniteNet``, whose
    structured empirical NTK is fast; any other network a ``LayerNet`` (finite_nets.layer_net: every
    layer's finite half from ``cntk.layers``), whose empirical NTK is the exact jacrev contraction.
    Both compute the same function for the same seed.
    input_shape: (C, H, W) for image networks (H, W fix a flatten readout's size; GAP accepts any
        H, W), (D,) for fc.  seed: weights are drawn in float32 on the CPU from this seed, then cast,
        so a seed names the same net on every device and in both dtypes.  out_dim: outputs (e.g.
        classes).  output_scale: kappa of Theorem 3.2, multiplies the output (the NTK by kappa^2).
        dtype: default torch's default; device: default CUDA when available, else CPU.
    parameterisation: "ntk" (the theorems') or "standard" (the same draws times the layers'
        multipliers, none in the forward pass: the CNN of practice; always a ``LayerNet``).
    Its empirical NTK tends to kappa^2 cntk.kernel(x, x', arch, "ntk") as width grows.
    """
    device = as_device(device) if device is not None else default_device()
    if (parameterisation == "ntk" and isinstance(arch, Architecture) and arch.family in ("cnn", "fc")
            and arch.activation == "relu" and not arch.bias_var):
        return FiniteNet(arch, width, input_shape=input_shape, out_dim=out_dim, output_scale=output_scale, seed=seed,
                         dtype=dtype, device=device)
    net = arch.network() if isinstance(arch, Architecture) else arch
    if not isinstance(net, Network):
        raise ValueError(f"arch must be a cntk.Architecture or cntk.Network, got {type(arch).__name__}")
    return LayerNet(net, width, input_shape=input_shape, out_dim=out_dim, output_scale=output_scale, seed=seed,
                    dtype=dtype, device=device, parameterisation=parameterisation)
