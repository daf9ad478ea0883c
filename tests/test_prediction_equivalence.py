"""prediction_equivalence's decomposition net - KR = (lin(Theta0) - KR) + (net - lin(Theta0)), fast:

(a) on a tiny lazy setting the trained net is nearer its own linearisation at init than that is to
    kernel regression on the exact kernel, and net - lin(Theta0) falls with width;
(b) lin(Theta) with the exact kernel substituted for Theta0 is kernel regression (f_KR), whatever
    the kernel's scale; with the net's own Theta0 it is kernel regression on Theta0 plus f0 terms;
(c) kappa sqrt(m), the lazy flag and the integrator's error check are recorded per row.
"""
import math

from pathlib import Path

import pytest
from conftest import run_experiment
import torch

import cntk
import finite_nets
from experiments.harness.config import ConfigError, register
from experiments.prediction_equivalence import Config, flow_error, initial_ntk, kappas, linearised_limit
from finite_nets.flow import train_flow

ROOT = Path(__file__).resolve().parents[1]
register()


_run = run_experiment


def _digits(n_train=10, n_test=20):
    from experiments.harness.config import DigitsConfig
    from experiments.harness.data import load

    data = load(DigitsConfig(n_train=n_train, n_test=n_test))
    y = torch.where(data.y_train < data.num_classes // 2, 1.0, -1.0).to(torch.float64)
    return data, y


def _rms(v):
    return float(v.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    data, y = _digits()
    arch = cntk.Architecture(family="cnn", depth=2, readout="flatten")
    xtr, xte = arch.inputs(data.x_train).double(), arch.inputs(data.x_test).double()
    k, kt = cntk.kernel(xtr, None, arch).double(), cntk.kernel(xte, xtr, arch).double()
    return arch, xtr, xte, y, k, kt, linearised_limit(k, kt, y)


def test_the_net_is_nearer_its_linearisation_than_that_is_to_kernel_regression(setting, one_thread):
    arch, xtr, xte, y, k, kt, f_kr = setting
    out = {}
    for width in (64, 2048):
        net = finite_nets.build(arch, width, seed=0, input_shape=tuple(xtr.shape[1:]), dtype=torch.float64, device="cpu")
        th_tr, th_te = initial_ntk(net, xtr, xte)
        res = train_flow(net, xtr, y, xte, loss_tol=1e-6, rtol=1e-2, centered=True)
        assert res.converged
        f_net, f_lin = res.test_predictions[-1, :, 0], linearised_limit(th_tr, th_te, y)
        out[width] = (_rms(f_net - f_lin) / _rms(f_kr), _rms(f_lin - f_kr) / _rms(f_kr))
    (nl_small, _), (nl_large, lk_large) = out[64], out[2048]
    assert nl_large < lk_large, out  # at large width the fluctuation of Theta0 dominates net - KR
    assert nl_large < 0.5 * nl_small, out  # and training's nonlinearity falls with width (~m^-0.6..-1 over 32x)


def test_lin_with_the_exact_kernel_is_kernel_regression(setting):
    arch, xtr, xte, y, k, kt, f_kr = setting
    ref = cntk.kernel_regression(k, y[:, None]).predict(kt)[:, 0]
    assert torch.allclose(f_kr, ref, rtol=1e-8, atol=1e-10)
    assert torch.allclose(linearised_limit(0.01**2 * k, 0.01**2 * kt, y), f_kr, rtol=1e-7, atol=1e-9)  # kappa^2 K
    # the t = infinity limit of the linearised flow on the same kernel
    assert torch.allclose(finite_nets.gd_predictions(k, kt, y, 1.0, math.inf, flow=True), f_kr, rtol=1e-7, atol=1e-9)
    # with f0: f0(x) + K(x, X) K^-1 (Y - f0(X)); it interpolates the targets on the training points
    f0a, f0b = 0.1 * torch.randn(len(y), dtype=torch.float64), 0.1 * torch.randn(len(xte), dtype=torch.float64)
    got = linearised_limit(k, kt, y, f0_train=f0a, f0_test=f0b)
    assert torch.allclose(got, f0b + kt @ torch.linalg.solve(k, y - f0a), rtol=1e-6, atol=1e-8)
    assert torch.allclose(linearised_limit(k, k, y, f0_train=f0a, f0_test=f0a), y, atol=1e-6)
    # the empirical NTK of a wide net is near the exact kernel, so lin(Theta0) near f_KR
    net = finite_nets.build(arch, 1024, seed=1, input_shape=tuple(xtr.shape[1:]), dtype=torch.float64, device="cpu")
    th_tr, th_te = initial_ntk(net, xtr, xte)
    assert th_tr.shape == k.shape and th_te.shape == kt.shape and th_tr.dtype == torch.float64
    assert _rms(linearised_limit(th_tr, th_te, y) - f_kr) / _rms(f_kr) < 0.2


def test_rows_record_laziness_and_the_integrator_check(tmp_path, one_thread, quick_figures):
    out = _run(["experiment=prediction_equivalence", "experiment.widths=[16,64]", "experiment.seeds=[0]",
                "experiment.depths=[2]", "experiment.small_kappa=[0.1]", "experiment.lazy_threshold=2",
                "data.n_train=6", "data.n_test=8", "progress=false", "threads=1"], tmp_path)
    finals = [r for r in out["rows"] if r.get("final")]
    assert len(finals) == 4
    for r in finals:
        assert r["kappa_sqrt_m"] == pytest.approx(r["kappa"] * math.sqrt(r["width"]))
        assert r["lazy"] == (r["kappa_sqrt_m"] >= 2)
        assert r["flow_error_rel"] == pytest.approx(r["flow_error"] / r["rel_net_lin"])
        assert r["flow_ok"] == (r["flow_error_rel"] <= r["flow_error_bound"])
        assert r["rtol_used"] == pytest.approx(r["rtol"] / 10 ** (r["flow_tries"] - 1))
        assert {"rel_net_lin", "rel_lin_kr", "rel_f0_part"} <= set(r)
    assert {(r["route"], r["lazy"]) for r in finals} == {("centred", True), ("small_kappa", False)}  # 0.1 * 8 < 2
    metrics = {(s["route"], s["metric"], s["fitted_rows"]) for s in out["summary"]}
    assert ("centred", "rel_net_lin", "lazy_flow_ok") in metrics and ("centred", "rel_lin_kr", "all") in metrics
    lazy_drift = next(s for s in out["summary"] if (s["route"], s["metric"]) == ("small_kappa", "drift"))
    assert lazy_drift["points"] == 0  # non-lazy rows are kept out of the m^-1 comparison


def test_small_kappa_takes_a_number_or_a_list():
    assert kappas(0.01) == [0.01] and kappas([0.01, 0.1]) == [0.01, 0.1]
    for bad in ([], [0.1, 0.1], [0.0], 2.0):
        with pytest.raises(ConfigError, match="^experiment.small_kappa: "):
            Config(small_kappa=bad)
    with pytest.raises(ConfigError, match="^experiment.lazy_threshold: "):
        Config(lazy_threshold=0)


def test_flow_error_accumulates_the_defects():
    class Res:
        loss = [0.5 * 4.0, 0.5 * 1.0, 0.5 * 0.25]  # ||r|| = 2, 1, 0.5
        errors = [0.01, 0.02]
    assert flow_error(Res()) == pytest.approx((0.01 * 2 + 0.02 * 1) / 2)
