"""Exact infinite-width kernels (NTK and NNGP) in PyTorch: the paper's CNTK-V and CNTK-GAP
(``Architecture``), and any network of the layer vocabulary (``cntk.layers``: Conv, Dense, Act with
the activations of ``cntk.activations``, AvgPool, GlobalAvgPool, Flatten, LayerNorm and the graph
layers FanOut, Parallel, FanInSum, Identity; presets in ``cntk.presets``).

    >>> import torch, cntk
    >>> arch = cntk.Architecture(family="cnn", depth=4, readout="gap")
    >>> k = cntk.kernel(torch.randn(5, 3, 8, 8, dtype=torch.float64), None, arch)   # (5, 5)
"""
from . import layers
from .api import KINDS, available_backends, backends_for, choose_backend, kernel, register_backend
from .architecture import Architecture
from .depths import kernels
from .network import Network
from cntk.solve.regression import KernelRegression, accuracy, fit as kernel_regression, paper_targets

__all__ = [
    "Architecture",
    "KINDS",
    "KernelRegression",
    "Network",
    "accuracy",
    "available_backends",
    "backends_for",
    "choose_backend",
    "kernel",
    "kernels",
    "kernel_regression",
    "layers",
    "paper_targets",
    "register_backend",
]
