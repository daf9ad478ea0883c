"""One architecture description for both the exact kernel and the finite net.

Conventions (Arora et al. 2019, design.md section 2): ReLU, c_sigma = 2, q x q filters (q = 3),
stride 1, zero ("SAME") padding, no bias.  ``depth`` counts the conv (or hidden) layers plus the
readout, so a net of depth d has L = d - 1 ReLU layers.  ``fix_first_last`` is the paper's "fix":
the first and the last layer are not trained.
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("cnn", "fc")
READOUTS = ("gap", "flatten")
ACTIVATIONS = ("relu",)
C_SIGMA = 2.0


class ArchitectureError(ValueError):
    """An impossible architecture; ``field`` names the offending attribute."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Architecture:
    """A bias-free ReLU network, described once.

    family: "cnn" (conv layers on (C, H, W) images) or "fc" (dense layers on (D,) vectors).
    depth: number of conv/hidden layers + 1 (the paper's convention); at least 2.
    readout: "gap" (global average pooling, then a linear readout) or "flatten" (the paper's
        vanilla CNTK-V); ignored for "fc".
    fix_first_last: the paper's "fix": first and last layer frozen.
    filter_size: q, odd, the conv filter is q x q.
    """

    family: str = "cnn"
    depth: int = 3
    readout: str = "gap"
    fix_first_last: bool = False
    filter_size: int = 3
    activation: str = "relu"

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

    @property
    def n_relu_layers(self) -> int:
        """L = depth - 1: the number of conv (or hidden) ReLU layers."""
        return self.depth - 1

    @property
    def relu_scale(self) -> float:
        """The factor c_sigma / q^2 of every ReLU step (c_sigma for fc nets, which have no patches)."""
        if self.family == "fc":
            return C_SIGMA
        return C_SIGMA / self.filter_size**2
