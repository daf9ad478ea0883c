"""The structured fast path behind the same interface: ``FiniteNet`` (the paper family's net) and
``LayerNet`` of ``arch.network()`` (the generic finite net) built from the same architecture, width,
seed and input shape are the same function: the same weights drawn in the same order, the same
outputs, the same empirical NTK (structured vs jacrev) and NNGP, to 1e-12 in float64."""
import pytest
import torch

import cntk
import finite_nets
from finite_nets import FiniteNet, LayerNet, empirical_nngp

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    # name: (Architecture keywords, input shape, width)
    "cnn-gap": (dict(family="cnn", depth=4, readout="gap"), (2, 8, 8), 16),
    "cnn-v": (dict(family="cnn", depth=3, readout="flatten"), (1, 6, 6), 16),
    "cnn-gap-fix": (dict(family="cnn", depth=4, readout="gap", fix_first_last=True), (2, 6, 6), 24),
    "cnn-v-fix": (dict(family="cnn", depth=3, readout="flatten", fix_first_last=True), (1, 6, 6), 16),
    "cnn-gap-q5": (dict(family="cnn", depth=3, readout="gap", filter_size=5), (1, 6, 6), 16),
    "fc": (dict(family="fc", depth=4), (7,), 32),
    "fc-fix": (dict(family="fc", depth=3, fix_first_last=True), (5,), 32),
}
TOL = 1e-12


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _pair(name):
    kwargs, shape, width = CASES[name]
    arch = cntk.Architecture(**kwargs)
    kw = dict(input_shape=shape, out_dim=2, output_scale=0.7, seed=5, dtype=torch.float64, device="cpu")
    fast = finite_nets.build(arch, width, **kw)
    generic = LayerNet(arch.network(), width, **kw)
    assert isinstance(fast, FiniteNet)
    return fast, generic, shape


@pytest.mark.parametrize("name", CASES)
def test_same_weights_outputs_ntk_nngp(name):
    fast, generic, shape = _pair(name)
    # one seed stream, one draw order: W_1..W_L then V, the same tensors, frozen alike
    mine = [*fast.weights, fast.readout]
    theirs = list(generic.parameters())
    assert [tuple(p.shape) for p in mine] == [tuple(p.shape) for p in theirs]
    assert all(torch.equal(p, q) for p, q in zip(mine, theirs))
    assert [p.requires_grad for p in mine] == [p.requires_grad for p in theirs]

    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(fast(x1), generic(x1)) < TOL
        assert _rel(fast.features(x1), generic.features(x1)) < TOL
    # structured (FiniteNet) against jacrev (LayerNet): symmetric full and cross per-output kernels
    full_fast = finite_nets.empirical_ntk(fast, x1, outputs="full")
    full_generic = finite_nets.empirical_ntk(generic, x1, outputs="full")
    assert _rel(full_fast, full_generic) < TOL
    cross_fast = finite_nets.empirical_ntk(fast, x1, x2, outputs="per_output")
    cross_generic = finite_nets.empirical_ntk(generic, x1, x2, outputs="per_output")
    assert _rel(cross_fast, cross_generic) < TOL
    assert _rel(empirical_nngp(fast, x1), empirical_nngp(generic, x1)) < TOL
    assert _rel(empirical_nngp(fast, x1, x2), empirical_nngp(generic, x1, x2)) < TOL


def test_same_gd_run():
    """Training goes through the same interface: a few GD steps agree (the lr comes from each net's own NTK)."""
    fast, generic, shape = _pair("cnn-gap")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)
    a = finite_nets.train_gd(fast, x, y, steps=3, drift_steps=[3])
    b = finite_nets.train_gd(generic, x, y, steps=3, drift_steps=[3])
    assert abs(a.lr - b.lr) < TOL * a.lr
    assert _rel(a.loss, b.loss) < TOL
    assert _rel(a.train_predictions, b.train_predictions) < TOL
    assert _rel(a.drift, b.drift) < 1e-9  # a difference of kernels: rounding relative to the drift itself
