"""The layer vocabulary in one namespace, for users: the base and weight layers (``cntk.core_layers``),
pooling and readouts (``cntk.pooling``), graph layers and LayerNorm (``cntk.graph``) and ``Network``
(``cntk.network``).  Activations are in ``cntk.activations``, ready-made networks in ``cntk.presets``.

    >>> import torch, cntk
    >>> from cntk import activations as A, layers as L
    >>> net = L.Network((L.Conv(3, w_var=None), L.Act(A.Erf()), L.GlobalAvgPool(), L.Dense(w_var=2 / 9)))
    >>> k = cntk.kernel(torch.rand(3, 1, 6, 6, dtype=torch.float64), None, net)

The library's own modules import from those modules, never from this one (no import circle).
"""
from .core_layers import (
    PARAMETERISATIONS,
    Act,
    Conv,
    Dense,
    Layer,
    PairState,
    Shape,
    check_parameterisation,
    patch_trace,
)
from .errors import NetworkError
from .graph import FanInSum, FanOut, Identity, LayerNorm, Parallel
from .network import Network, as_network
from .pooling import AvgPool, Flatten, GlobalAvgPool

__all__ = [
    "PARAMETERISATIONS", "Act", "AvgPool", "Conv", "Dense", "FanInSum", "FanOut", "Flatten", "GlobalAvgPool",
    "Identity", "Layer", "LayerNorm", "Network", "NetworkError", "PairState", "Parallel", "Shape", "as_network",
    "check_parameterisation", "patch_trace",
]
