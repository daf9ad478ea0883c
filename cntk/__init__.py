"""Exact infinite-width kernels (CNTK-V, CNTK-GAP, fully-connected NTK; NTK and NNGP) in PyTorch.

    >>> import torch, cntk
    >>> arch = cntk.Architecture(family="cnn", depth=4, readout="gap")
    >>> k = cntk.kernel(torch.randn(5, 3, 8, 8, dtype=torch.float64), None, arch)   # (5, 5)
"""
from .api import KINDS, available_backends, kernel, register_backend
from .architecture import Architecture
from .regression import KernelRegression, accuracy, fit as kernel_regression, paper_targets

__all__ = [
    "Architecture",
    "KINDS",
    "KernelRegression",
    "accuracy",
    "available_backends",
    "kernel",
    "kernel_regression",
    "paper_targets",
    "register_backend",
]
