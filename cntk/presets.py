"""Ready-made networks of the layer vocabulary: the paper's CNN-GAP / CNN-V, its fully-connected
net, Myrtle-style pooled CNNs and pre-activation ResNets."""
from __future__ import annotations

from .activations import Activation, ReLU
from .errors import NetworkError
from .graph import FanInSum, FanOut, Identity, Parallel
from .core_layers import Act, Conv, Dense, Layer
from .network import Network
from .pooling import AvgPool, Flatten, GlobalAvgPool


def paper_cnn(depth: int = 3, readout: str = "gap", *, fix_first_last: bool = False, filter_size: int = 3,
              act: Activation | None = None, b_var: float | None = None) -> Network:
    """The paper's CNN-GAP / CNN-V (depth = conv layers + 1), with c_sigma = 2 (ReLU); ``act`` and
    ``b_var`` give the same family with another activation or with biases."""
    q, act = filter_size, act or ReLU()
    layers: list[Layer] = [Conv(q, w_var=None, b_var=b_var, trainable=not fix_first_last), Act(act)]
    for _ in range(depth - 2):
        layers += [Conv(q, w_var=2.0, b_var=b_var), Act(act)]
    layers += [GlobalAvgPool() if readout == "gap" else Flatten(),
               Dense(w_var=2.0 / q**2, b_var=b_var, trainable=not fix_first_last)]
    return Network(tuple(layers), f"CNN-{'GAP' if readout == 'gap' else 'V'}")


def fc_net(depth: int = 3, *, fix_first_last: bool = False, act: Activation | None = None,
           b_var: float | None = None) -> Network:
    """The fully-connected net of the paper's Sec. 3 (depth = hidden layers + 1), c_sigma = 2."""
    act = act or ReLU()
    layers: list[Layer] = [Dense(w_var=None, b_var=b_var, trainable=not fix_first_last), Act(act)]
    for _ in range(depth - 2):
        layers += [Dense(w_var=2.0, b_var=b_var), Act(act)]
    layers += [Dense(w_var=2.0, b_var=b_var, trainable=not fix_first_last)]
    return Network(tuple(layers), "FC")


MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}  # conv layers per stage (neural-tangents' Myrtle example)


def myrtle(depth: int = 5, *, filter_size: int = 3, act: Activation | None = None,
           b_var: float | None = None) -> Network:
    """Myrtle-style pooled CNN (Shankar et al. 2020): conv-ReLU stages with 2 x 2 average pooling
    between them, then global average pooling and a dense readout; ``depth`` 5, 7 or 10 sets the
    convolutions per stage (2, 1, 1), (2, 2, 2), (3, 3, 3).  Inputs must be divisible by 4."""
    if depth not in MYRTLE_STAGES:
        raise NetworkError("depth", f"myrtle depth must be one of {sorted(MYRTLE_STAGES)}, got {depth}")
    q, act = filter_size, act or ReLU()
    layers: list[Layer] = []
    for stage, n in enumerate(MYRTLE_STAGES[depth]):
        for i in range(n):
            first = stage == 0 and i == 0
            layers += [Conv(q, w_var=None if first else 2.0, b_var=b_var), Act(act)]
        if stage < 2:
            layers.append(AvgPool(2))
    layers += [GlobalAvgPool(), Dense(w_var=2.0 / q**2, b_var=b_var)]
    return Network(tuple(layers), f"Myrtle-{depth}")


def resnet(n_blocks: int = 2, *, filter_size: int = 3, act: Activation | None = None, b_var: float | None = None,
           readout: str = "gap") -> Network:
    """WideResNet-style CNN with pre-activation residual blocks (neural-tangents' WideResnetBlock
    with no channel change): Conv(q, unit weights), then ``n_blocks`` x
    [FanOut(2), Parallel([phi, Conv(w_var=2), phi, Conv(w_var=2 / n_blocks)], [Identity()]), FanInSum()],
    then phi, GAP | Flatten, Dense(w_var=2 / q^2).  Variances: with ReLU a block maps the variance v to
    v (1 + 1 / n_blocks) (the branch's last layer is scaled by 1 / n_blocks), so after all blocks it
    is at most e times the first layer's, for any ``n_blocks``."""
    if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or n_blocks < 1:
        raise NetworkError("depth", f"resnet needs n_blocks >= 1, got {n_blocks!r}")
    if readout not in ("gap", "flatten"):
        raise NetworkError("readout", f"unknown readout {readout!r}: use 'gap' or 'flatten'")
    q, act = filter_size, act or ReLU()
    layers: list[Layer] = [Conv(q, w_var=None, b_var=b_var)]
    branch = (Act(act), Conv(q, w_var=2.0, b_var=b_var), Act(act), Conv(q, w_var=2.0 / n_blocks, b_var=b_var))
    for _ in range(n_blocks):
        layers += [FanOut(2), Parallel(branch, (Identity(),)), FanInSum()]
    layers += [Act(act), GlobalAvgPool() if readout == "gap" else Flatten(), Dense(w_var=2.0 / q**2, b_var=b_var)]
    return Network(tuple(layers), f"ResNet-{n_blocks}-{'GAP' if readout == 'gap' else 'V'}")
