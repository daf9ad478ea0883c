"""Bad input gives a clear ValueError (or TrainingDiverged for unstable GD), never a silent wrong answer."""
import pytest
import torch

import cntk
import finite_nets


pytestmark = pytest.mark.usefixtures("one_thread")


GAP = cntk.Architecture(family="cnn", depth=3, readout="gap")
FLAT = cntk.Architecture(family="cnn", depth=3, readout="flatten")
FC = cntk.Architecture(family="fc", depth=3)


def _net(arch=GAP, shape=(1, 8, 8), **kw):
    return finite_nets.build(arch, 8, input_shape=shape, dtype=torch.float64, device="cpu", **kw)


@pytest.mark.parametrize("width", [0, -3, 2.5, True, "64", None])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        finite_nets.build(GAP, width, input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"out_dim": 0}, "out_dim"),
        ({"output_scale": 0.0}, "output_scale"),
        ({"output_scale": float("nan")}, "output_scale"),
        ({"seed": 1.5}, "seed"),
        ({"dtype": torch.float16}, "dtype"),
        ({"input_shape": (8, 8)}, "input_shape"),
        ({"input_shape": (1, 0, 8)}, "input_shape"),
        ({"input_shape": None}, "input_shape"),
    ],
)
def test_bad_build_arguments(kw, match):
    args = {"input_shape": (1, 8, 8), **kw}
    with pytest.raises(ValueError, match=match):
        finite_nets.build(GAP, 8, **args)


def test_arch_must_be_architecture():
    with pytest.raises(ValueError, match="cntk.Architecture"):
        finite_nets.build({"family": "cnn"}, 8, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"\(D,\)"):
        finite_nets.build(FC, 8, input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    "arch,x,match",
    [
        (GAP, torch.zeros(2, 8, 8, dtype=torch.float64), r"\(N, C, H, W\)"),
        (GAP, torch.zeros(2, 3, 8, 8, dtype=torch.float64), "channels"),
        (FLAT, torch.zeros(2, 1, 6, 6, dtype=torch.float64), "flatten"),
        (GAP, torch.zeros(2, 1, 8, 8, dtype=torch.float32), "dtype"),
    ],
)
def test_wrong_input_shapes(arch, x, match):
    net = _net(arch)
    with pytest.raises(ValueError, match=match):
        net(x)
    with pytest.raises(ValueError, match=match):
        finite_nets.empirical_ntk(net, x)


def test_gap_accepts_other_image_sizes():
    net = _net(GAP)
    assert net(torch.rand(2, 1, 5, 7, dtype=torch.float64)).shape == (2, 1)


def test_ntk_bad_arguments():
    net = _net()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    for kw, match in [({"outputs": "diag"}, "outputs"), ({"method": "vjp"}, "method"),
                      ({"contraction": "fast"}, "contraction"), ({"memory_mb": 0}, "memory_mb")]:
        with pytest.raises(ValueError, match=match):
            finite_nets.empirical_ntk(net, x, **kw)
    with pytest.raises(ValueError, match="every dimension"):
        finite_nets.empirical_ntk(net, x, torch.rand(3, 1, 6, 6, dtype=torch.float64))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        finite_nets.empirical_ntk(net, bad)
    with pytest.raises(ValueError, match="nn.Module"):
        finite_nets.empirical_ntk(lambda z: z, x)


def test_training_bad_arguments_and_divergence():
    net = _net(out_dim=1)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_train"):
        finite_nets.train_gd(net, x, y[:4], steps=1)
    with pytest.raises(ValueError, match="lr_fraction"):
        finite_nets.train_gd(net, x, y, steps=1, lr_fraction=2.5)
    with pytest.raises(ValueError, match="eval_steps"):
        finite_nets.train_gd(net, x, y, steps=3, eval_steps=[5])
    with pytest.raises(ValueError, match="steps"):
        finite_nets.train_gd(net, x, y, steps=-1)
    # far above 2 / lambda_max (narrow ReLU nets survive a few times 2 / lambda_max: catapult dynamics)
    wide = finite_nets.build(GAP, 64, input_shape=(1, 8, 8), dtype=torch.float64, device="cpu")
    lam = finite_nets.largest_eigenvalue(wide, x)
    with pytest.raises(finite_nets.TrainingDiverged, match="diverged at step"):
        finite_nets.train_gd(wide, x, y, steps=50, lr=100.0 / lam)
    with pytest.raises(ValueError, match="classes"):
        finite_nets.train_sgd(net, x, torch.zeros(6), x, torch.zeros(6))


def test_linearized_bad_arguments():
    k = torch.eye(3, dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="diverges"):
        finite_nets.gd_predictions(k, k, y, lr=2.5, steps=3)
    with pytest.raises(ValueError, match="square"):
        finite_nets.gd_predictions(k[:2], k, y, lr=0.5, steps=3)
    with pytest.raises(ValueError, match="whole steps"):
        finite_nets.gd_predictions(k, k, y, lr=0.5, steps=1.5)
    with pytest.raises(ValueError, match="y_train"):
        finite_nets.gd_predictions(k, k, y[:2], lr=0.5, steps=3)
