"""The paper's family of networks as a preset of the layer vocabulary (``cntk.layers``): one
description for both the exact kernel and the finite net.

Conventions (Arora et al. 2019; docs/conventions.md): ReLU, c_sigma = 2, q x q filters (q = 3),
stride 1, zero ("SAME") padding, no bias.  ``depth`` counts the conv (or hidden) layers plus the
readout, so a net of depth d has L = d - 1 ReLU layers.  ``fix_first_last`` is the paper's "fix":
the first and the last layer are not trained.  Beyond the paper: ``activation`` ("relu", "abrelu"
with slopes abrelu_a / abrelu_b, "erf"), ``bias_var`` (bias variance of every layer; 0: none) and
the ``myrtle`` family (Shankar et al. 2020: pooled conv stages, GAP; depth 5, 7 or 10).
``network()`` gives the layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from cntk.errors import NetworkError

FAMILIES = ("cnn", "fc", "myrtle")
READOUTS = ("gap", "flatten")
ACTIVATIONS = ("relu", "abrelu", "erf")
C_SIGMA = 2.0


class ArchitectureError(NetworkError):
    """An impossible architecture; ``field`` names the offending attribute."""


@dataclass(frozen=True)
class Architecture:
    """A bias-free ReLU network, described once.

    family: "cnn" (conv layers on (C, H, W) images), "fc" (dense layers on (D,) vectors) or
        "myrtle" (pooled conv stages on images; depth 5, 7 or 10; GAP readout).
    depth: number of conv/hidden layers + 1 (the paper's convention); at least 2.
    readout: "gap" (global average pooling, then a linear readout) or "flatten" (the paper's
        vanilla CNTK-V); ignored for "fc".
    fix_first_last: the paper's "fix": first and last layer frozen.
    filter_size: q, odd, the conv filter is q x q.
    activation: "relu" (the paper), "abrelu" (abrelu_a min(x, 0) + abrelu_b max(x, 0)), "erf".
    bias_var: the variance of every layer's bias (0: no bias, the paper).
    """

    family: str = "cnn"
    depth: int = 3
    readout: str = "gap"
    fix_first_last: bool = False
    filter_size: int = 3
    activation: str = "relu"
    abrelu_a: float = 0.0
    abrelu_b: float = 1.0
    bias_var: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ArchitectureError("family", f"unknown family {self.family!r}: use one of {FAMILIES}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int):
            raise ArchitectureError("depth", f"depth must be an integer >= 2, got {self.depth!r}")
        if self.depth < 2:
            raise ArchitectureError(
                "depth",
                f"depth must be >= 2 (conv/hidden layers + 1 readout, the paper's convention), got {self.depth}"
            )
        if self.readout not in READOUTS:
            raise ArchitectureError("readout", f"unknown readout {self.readout!r}: use one of {READOUTS}")
        if self.activation not in ACTIVATIONS:
            raise ArchitectureError("activation", f"unknown activation {self.activation!r}: only {ACTIVATIONS} have exact kernels here")
        if not isinstance(self.filter_size, int) or self.filter_size < 1 or self.filter_size % 2 == 0:
            raise ArchitectureError("filter_size", f"filter_size must be a positive odd integer, got {self.filter_size!r}")
        if self.fix_first_last and self.depth == 2:
            raise ArchitectureError(
                "fix_first_last",
                "fix_first_last with depth 2 freezes every layer (the NTK is 0): use depth >= 3 or fix_first_last=False"
            )
        if self.family == "myrtle":
            from cntk.presets import MYRTLE_STAGES

            if self.depth not in MYRTLE_STAGES:
                raise ArchitectureError("depth", f"myrtle depth must be one of {sorted(MYRTLE_STAGES)}, got {self.depth}")
            if self.readout != "gap":
                raise ArchitectureError("readout", "myrtle networks end with global average pooling: use readout gap")
            if self.fix_first_last:
                raise ArchitectureError("fix_first_last", "the myrtle preset trains every layer: use fix_first_last=False")
        if self.activation != "abrelu" and (self.abrelu_a, self.abrelu_b) != (0.0, 1.0):
            raise ArchitectureError("abrelu_a", "abrelu_a / abrelu_b shape the abrelu activation only: set activation=abrelu")
        for name in ("abrelu_a", "abrelu_b", "bias_var"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ArchitectureError(name, f"{name} must be a finite number, got {v!r}")
        if self.bias_var < 0:
            raise ArchitectureError("bias_var", f"bias_var must be >= 0 (0: no bias), got {self.bias_var}")

    @property
    def n_act_layers(self) -> int:
        """L = depth - 1: the number of conv (or hidden) ReLU layers."""
        return self.depth - 1

    def network(self):
        """This architecture in the layer vocabulary (``cntk.layers``): the preset it names."""
        from cntk import activations, presets

        act = {"relu": activations.ReLU(), "erf": activations.Erf(),
               "abrelu": activations.ABReLU(a=float(self.abrelu_a), b=float(self.abrelu_b))}[self.activation]
        b_var = float(self.bias_var) if self.bias_var else None
        if self.family == "fc":
            return presets.fc_net(self.depth, fix_first_last=self.fix_first_last, act=act, b_var=b_var)
        if self.family == "myrtle":
            return presets.myrtle(self.depth, filter_size=self.filter_size, act=act, b_var=b_var)
        return presets.paper_cnn(self.depth, self.readout, fix_first_last=self.fix_first_last,
                                filter_size=self.filter_size, act=act, b_var=b_var)

    @property
    def act_scale(self) -> float:
        """The factor c_sigma / q^2 of every ReLU step (c_sigma for fc nets, which have no patches)."""
        if self.family == "fc":
            return C_SIGMA
        return C_SIGMA / self.filter_size**2
