"""Errors at the start, one line naming the cause: layer parameters when a layer is built, image
sizes the finite nets take, and experiments that refuse impossible data before any work."""
from __future__ import annotations

import math

import pytest
import torch

import cntk
import finite_nets
from cntk import activations as A
from cntk import layers as L
from cntk.errors import NetworkError

BAD_LAYERS = [
    (lambda: A.ABReLU(a=float("nan")), "ABReLU.a"),
    (lambda: A.ABReLU(a="x"), "ABReLU.a"),
    (lambda: A.ABReLU(b=True), "ABReLU.b"),
    (lambda: A.Sin(b=math.inf), "Sin.b"),
    (lambda: A.Sin(c=None), "Sin.c"),
    (lambda: A.activation("sin", d=1.0), "takes no parameter"),
    (lambda: L.Conv(q="3"), "Conv q"),
    (lambda: L.Conv(q=2), "Conv q"),
    (lambda: L.Conv(w_var=float("nan")), "Conv w_var"),
    (lambda: L.Conv(channels=0), "Conv channels"),
    (lambda: L.Conv(trainable="no"), "Conv trainable"),
    (lambda: L.Dense(b_var=-1.0), "Dense b_var"),
    (lambda: L.AvgPool(k=0), "AvgPool k"),
    (lambda: L.AvgPool(k=2.0), "AvgPool k"),
    (lambda: L.LayerNorm(eps=-1), "LayerNorm eps"),
    (lambda: L.LayerNorm(eps=float("nan")), "LayerNorm eps"),
    (lambda: L.FanOut(0), "FanOut n"),
    (lambda: L.Act("relu"), "Act fn"),
    (lambda: L.Parallel((L.Conv(), "x")), "Parallel branch 0, layer 1"),
    (lambda: L.Network((L.Conv(), L.Act(), "relu", L.GlobalAvgPool(), L.Dense())), "layer 2 is 'relu'"),
    (lambda: L.Network((L.Conv(), A.ReLU(), L.GlobalAvgPool(), L.Dense())), "wrap it as Act"),
]


@pytest.mark.parametrize("make,words", BAD_LAYERS)
def test_bad_layer_parameters_fail_when_built(make, words):
    with pytest.raises(NetworkError) as info:
        make()
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and words in msg and "\n" not in msg


def test_good_layers_still_build():
    A.ABReLU(a=-0.5, b=2), A.Sin(a=2, b=0.5, c=1.0), L.LayerNorm(eps=1e-6), L.Conv(5, w_var=None, channels=3)
    net = L.Network([L.Conv(), L.Act(A.LeakyReLU(0.1)), L.GlobalAvgPool(), L.Dense()])  # a list is kept as a tuple
    assert isinstance(net.layers, tuple) and hash(net)


def _gap_net():
    return L.Network((L.Conv(3, w_var=None), L.Act(A.Erf()), L.AvgPool(2), L.Conv(), L.Act(), L.GlobalAvgPool(), L.Dense()))


def test_gap_layernet_takes_any_size_its_pooling_divides():
    net = finite_nets.build(_gap_net(), 4, input_shape=(2, 8, 8), dtype=torch.float64, device="cpu")
    for hw in (8, 6, 12):
        assert net(torch.randn(3, 2, hw, hw, dtype=torch.float64)).shape == (3, 1)
    assert finite_nets.empirical_ntk(net, torch.randn(2, 2, 6, 10, dtype=torch.float64)).shape == (2, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 7, 7\).*divisible by 2"):
        net(torch.randn(3, 2, 7, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\), but this net needs \(N, 2, H, W\)"):
        net(torch.randn(3, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["relu", "erf"])  # FiniteNet and LayerNet
def test_flatten_net_reports_the_given_shape_and_the_needed_one(activation):
    arch = cntk.Architecture(depth=3, readout="flatten", activation=activation)
    net = finite_nets.build(arch, 4, input_shape=(3, 8, 8), dtype=torch.float64, device="cpu")
    for call in (lambda x: net(x), lambda x: finite_nets.empirical_ntk(net, x)):
        with pytest.raises(ValueError) as info:
            call(torch.randn(2, 3, 7, 7, dtype=torch.float64))
        msg = str(info.value)
        assert "(3, 7, 7)" in msg and "8, 8" in msg and "(1, 3, 7, 7)" not in msg and "\n" not in msg


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gap_net_takes_other_sizes(activation):
    arch = cntk.Architecture(depth=3, readout="gap", activation=activation)
    net = finite_nets.build(arch, 4, input_shape=(3, 8, 8), dtype=torch.float64, device="cpu")
    assert net(torch.randn(2, 3, 7, 5, dtype=torch.float64)).shape == (2, 1)


def test_myrtle_builds_both_parameterisations():
    for par in ("ntk", "standard"):
        net = finite_nets.build(cntk.Architecture(family="myrtle", depth=5), 2, input_shape=(1, 8, 8), out_dim=3,
                                dtype=torch.float64, device="cpu", parameterisation=par)
        assert net(torch.randn(2, 1, 8, 8, dtype=torch.float64)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# experiments refuse before any work


def _cfg(experiment: str, **data):
    from experiments.harness.config import register
    from experiments.harness.runner import prepare

    register()
    from hydra import compose, initialize_config_dir
    from pathlib import Path

    overrides = [f"experiment={experiment}", "device=cpu"] + [f"data.{k}={v}" for k, v in data.items()]
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        dcfg = compose("config", overrides=overrides)
    return prepare(dcfg, overrides[1:])[0]


class _Data:  # only what the checks read before any work
    def __init__(self, n_train, n_test, n_val=0):
        self.x_train, self.x_test = torch.zeros(n_train, 1, 8, 8), torch.zeros(n_test, 1, 8, 8)
        self.x_val = torch.zeros(n_val, 1, 8, 8)
        self.y_train = torch.zeros(n_train, dtype=torch.long)
        self.y_test = torch.zeros(n_test, dtype=torch.long)
        self.num_classes = 2


@pytest.mark.parametrize("name,data,key", [
    ("monte_carlo_vs_exact", _Data(4, 0), "data.n_test"),
    ("prediction_equivalence", _Data(4, 0), "data.n_test"),
    ("kernel_vs_network", _Data(4, 0, 2), "data.n_test"),
    ("ntk_convergence", _Data(1, 0), "data.n_train"),
])
def test_experiments_refuse_missing_points_before_any_work(name, data, key, monkeypatch):
    from experiments import get
    from experiments.harness.config import ConfigError

    monkeypatch.setattr(cntk, "kernel", lambda *a, **k: pytest.fail("kernel work before the check"))
    cfg = _cfg(name)
    with pytest.raises(ConfigError, match=f"^{key}: .*got [01]\\)$"):
        get(name).run(cfg, data, torch.device("cpu"), torch.float64)
