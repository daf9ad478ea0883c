"""The paper's family of networks as a preset of the layer vocabulary (``cntk.layers``): one
description for both the exact kernel and the finite net.

Conventions (Arora et al. 2019; docs/conventions.md): ReLU, c_sigma = 2, q x q filters (q = 3),
stride 1, zero ("SAME") padding, no bias.  ``depth`` counts the conv (or hidden) layers plus the
readout, so a net of depth d has L = d - 1 ReLU layers.  ``fix_first_last`` is the paper's "fix":
the first and the last layer are not trained.  Beyond the paper: ``activation`` (any name of the
registry ``cntk.activations.ACTIVATIONS``; "abrelu" takes slopes abrelu_a / abrelu_b), ``bias_var``
(bias variance of every layer; 0: none) and the ``myrtle`` family (Shankar et al. 2020: pooled
conv stages, GAP; depth 5, 7 or 10).

An architecture answers for itself: ``network()`` (its layers), ``name`` (figure label),
``slug`` (file names), ``variant`` (what sets it apart from the paper's nets), ``readout_label``,
``hidden_weights``, ``check_input_shape`` / ``input_shape_error`` and ``inputs`` (data as it takes them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cntk.activations import ACTIVATIONS, ABReLU
from cntk.errors import NetworkError

FAMILIES = ("cnn", "fc", "myrtle")
READOUTS = ("gap", "flatten")
C_SIGMA = 2.0
ABRELU_PARAMS = {"a": "abrelu_a", "b": "abrelu_b"}  # the activation's parameter -> the Architecture field


class ArchitectureError(NetworkError):
    """An impossible architecture; ``field`` names the offending attribute."""


@dataclass(frozen=True)
class Architecture:
    """A network of the paper's family (by default bias-free ReLU), described once.

    family: "cnn" (conv layers on (C, H, W) images), "fc" (dense layers on (D,) vectors) or
        "myrtle" (pooled conv stages on images; depth 5, 7 or 10; GAP readout).
    depth: number of conv/hidden layers + 1 (the paper's convention); at least 2.
    readout: "gap" (global average pooling, then a linear readout) or "flatten" (the paper's
        vanilla CNTK-V); ignored for "fc".
    fix_first_last: the paper's "fix": first and last layer frozen.
    filter_size: q, odd, the conv filter is q x q.
    activation: a name of ``cntk.activations.ACTIVATIONS``: "relu" (the paper), "abrelu"
        (abrelu_a min(x, 0) + abrelu_b max(x, 0)), "erf", ...
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
            raise ArchitectureError("activation", f"unknown activation {self.activation!r}: only {sorted(ACTIVATIONS)} "
                                                  "have exact kernels here")
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
        if not self._takes_slopes and (self.abrelu_a, self.abrelu_b) != (0.0, 1.0):
            raise ArchitectureError("abrelu_a", "abrelu_a / abrelu_b shape the abrelu activation only: set activation=abrelu")
        for name in ("abrelu_a", "abrelu_b", "bias_var"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ArchitectureError(name, f"{name} must be a finite number, got {v!r}")
        if self.bias_var < 0:
            raise ArchitectureError("bias_var", f"bias_var must be >= 0 (0: no bias), got {self.bias_var}")

    @property
    def _takes_slopes(self) -> bool:
        """Whether the activation is ABReLU (or a subclass), whose slopes a, b abrelu_a / abrelu_b set.
        Other activations with fields of the same names (Sin's amplitude a and frequency b) keep their
        own defaults: abrelu_a = 0 would make Sin the zero function."""
        return issubclass(ACTIVATIONS[self.activation], ABReLU)

    @property
    def n_act_layers(self) -> int:
        """L = depth - 1: the number of conv (or hidden) ReLU layers."""
        return self.depth - 1

    def act(self):
        """The activation, built through the registry ``cntk.activations.ACTIVATIONS``."""
        params = {p: float(getattr(self, f)) for p, f in ABRELU_PARAMS.items()} if self._takes_slopes else {}
        return ACTIVATIONS[self.activation](**params)

    def network(self):
        """This architecture in the layer vocabulary (``cntk.layers``): the preset it names."""
        return self._network

    @cached_property
    def _network(self):
        from cntk import presets

        act, b_var = self.act(), (float(self.bias_var) if self.bias_var else None)
        if self.family == "fc":
            return presets.fc_net(self.depth, fix_first_last=self.fix_first_last, act=act, b_var=b_var)
        if self.family == "myrtle":
            return presets.myrtle(self.depth, filter_size=self.filter_size, act=act, b_var=b_var)
        return presets.paper_cnn(self.depth, self.readout, fix_first_last=self.fix_first_last,
                                 filter_size=self.filter_size, act=act, b_var=b_var)

    @property
    def act_scale(self) -> float:
        """The factor c_sigma / q^2 of every ReLU step (c_sigma for fc nets, which have no patches)."""
        return C_SIGMA / self.filter_size**2 if self.takes_images else C_SIGMA

    # -- what the architecture says about itself (labels, sizes, inputs) ---------------------------

    @property
    def takes_images(self) -> bool:
        """Whether its inputs are images (C, H, W); else vectors (D,)."""
        return self.network().input_kind == "image"

    @property
    def readout_label(self) -> str:
        """"gap" or "flatten"; "none" for an fc net (it has no readout choice)."""
        return self.network().readout

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """Fields that change nothing here (an fc net has no readout and no filter)."""
        return () if self.takes_images else ("readout", "filter_size")

    @property
    def variant(self) -> str:
        """What sets it apart from the paper's CNN-V / CNN-GAP beyond readout, depth and fix: "" for
        the paper's CNNs (ReLU, no bias), else e.g. "myrtle", "abrelu(0.2, 1)", "bias 0.1"."""
        parts = [] if self.family == "cnn" else [self.family]
        if self._takes_slopes:
            parts.append(f"{self.activation}({self.abrelu_a:g}, {self.abrelu_b:g})")
        elif self.activation != "relu":
            parts.append(self.activation)
        if self.bias_var:
            parts.append(f"bias {self.bias_var:g}")
        return ", ".join(parts)

    @property
    def name(self) -> str:
        """A label for figures: 'CNN-GAP, depth 3', 'CNN-V, depth 3', 'FC, depth 3', 'Myrtle-5'; a
        variant beyond the family's name (activation, bias) in brackets, e.g. 'FC, depth 3 [erf]'."""
        net = self.network()
        base = net.name if self.family == "myrtle" else f"{net.name}, depth {self.depth}"
        extra = ", ".join(p for p in self.variant.split(", ") if p and p != self.family)
        return f"{base} [{extra}]" if extra else base

    @property
    def slug(self) -> str:
        """A short stable lowercase id for file names: 'gap-d3', 'flatten-d6-fix', 'fc-d3',
        'myrtle-d5', 'gap-d3-q5-abrelu0.2_1-bias0.1' (the defaults of q, activation and bias omitted)."""
        parts = [self.readout if self.family == "cnn" else self.family, f"d{self.depth}"]
        parts += ["fix"] * bool(self.fix_first_last)
        parts += [f"q{self.filter_size}"] * ("filter_size" not in self.unused_fields and self.filter_size != 3)
        act = f"{self.activation}{self.abrelu_a:g}_{self.abrelu_b:g}" if self._takes_slopes else self.activation
        parts += [act] * (act != "relu")
        parts += [f"bias{self.bias_var:g}"] * bool(self.bias_var)
        return "-".join(parts)

    def hidden_weights(self, input_shape, width: int) -> int:
        """Weights of every hidden weight layer (readout and biases excluded) at ``width``, on inputs of
        ``input_shape``: what a net's cost grows with (``Network.hidden_weights``)."""
        return int(self.network().hidden_weights(tuple(input_shape), width))

    def check_input_shape(self, input_shape) -> None:
        """Raise NetworkError (one line: what this network needs) unless it takes inputs of ``input_shape``."""
        self.network().check_input_shape(tuple(input_shape))

    def input_shape_error(self, input_shape) -> str | None:
        """Why it cannot take inputs of ``input_shape`` (one line), or None when it can."""
        try:
            self.check_input_shape(input_shape)
        except NetworkError as err:
            return str(err)
        return None

    def inputs(self, x):
        """A batch of images (N, C, H, W) as it takes them: flattened to (N, D) for vector networks."""
        return x if self.takes_images else x.flatten(1)

