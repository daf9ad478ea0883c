"""Finite-width twins of the ``cntk`` architectures (NTK parameterisation), their empirical NTK,
training as in the theory, and the kernel-side predictions they are compared with.

    >>> import torch, cntk, finite_nets
    >>> arch = cntk.Architecture(family="cnn", depth=3, readout="gap")
    >>> net = finite_nets.build(arch, 512, input_shape=(1, 8, 8), dtype=torch.float64, device="cpu")
    >>> x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    >>> theta = finite_nets.empirical_ntk(net, x)            # (6, 6), -> cntk.kernel(x, None, arch)
"""
from .flow import FlowRun, train_flow
from finite_nets.layer_net import LayerNet, empirical_nngp
from .linearized import gd_predictions, kernel_predictions
from finite_nets.paper_net import FiniteNet
from finite_nets.builder import build
from finite_nets.checks import default_device
from .ntk import empirical_ntk, largest_eigenvalue
from .training import GDRun, SGDRun, TrainingDiverged, train_gd, train_sgd

__all__ = [
    "FiniteNet",
    "FlowRun",
    "LayerNet",
    "empirical_nngp",
    "train_flow",
    "GDRun",
    "SGDRun",
    "TrainingDiverged",
    "build",
    "default_device",
    "empirical_ntk",
    "gd_predictions",
    "kernel_predictions",
    "largest_eigenvalue",
    "train_gd",
    "train_sgd",
]
