"""Gradient flow to full training (finite_nets.train_flow): the same trajectory as small-step GD,
exact for a net that is linear in its trainable weights, and converged to the stated tolerance."""
import math

import pytest
import torch

import cntk
import finite_nets
from finite_nets.flow import FlowDidNotConverge, train_flow


@pytest.fixture(scope="module")
def data(digits):
    x = (digits[:14] - digits[:200].mean()) / digits[:200].std()
    y = torch.linspace(-1, 1, 10, dtype=torch.float64)
    return x[:10], y, x[10:]


def test_flow_follows_small_step_gd(data, one_thread):
    """GD with lr = 0.02 / lambda_max for 500 steps is the flow up to time 10 / lambda_max (to O(lr));
    the integrator, stopped at the same time, lands on the same parameters."""
    x, y, xt = data
    net = finite_nets.build(cntk.Architecture(depth=3, readout="flatten"), 64, input_shape=(1, 8, 8),
                            dtype=torch.float64, device="cpu")
    lam = finite_nets.largest_eigenvalue(net, x)
    gd = finite_nets.train_gd(net, x, y, xt, steps=500, lr=0.02 / lam)
    flow = train_flow(net, x, y, xt, max_time=10 / lam, rtol=1e-4, loss_tol=1e-12)
    assert flow.times[-1] == pytest.approx(10 / lam) and flow.test_predictions is not None
    a, b = gd.test_predictions[-1, :, 0], flow.test_predictions[-1, :, 0]
    assert float((a - b).norm() / a.norm()) < 5e-3
    assert float(gd.loss[-1]) == pytest.approx(flow.loss[-1], rel=2e-2)
    # and the integrator took far fewer steps than GD
    assert len(flow.times) - 1 < 100


def test_flow_is_exact_for_a_net_linear_in_its_weights(data, one_thread):
    """Only the readout trainable (depth 3 with fix_first_last freezes W_1 and V; here: freeze all but
    the readout): f is linear in the weights, so one step reaches any time and the residual is
    exp(-Theta t) r exactly."""
    x, y, _ = data
    net = finite_nets.build(cntk.Architecture(depth=2, readout="gap"), 256, input_shape=(1, 8, 8),
                            dtype=torch.float64, device="cpu")
    net.weights[0].requires_grad_(False)
    run = train_flow(net, x, y, loss_tol=1e-10, rtol=1e-8)
    assert run.converged and run.rejected == 0 and max(run.errors) < 1e-8
    theta = finite_nets.empirical_ntk(net, x)
    r0 = (run.train_predictions[0, :, 0] - y).double()
    lam, u = torch.linalg.eigh(theta.double())
    t = run.times[3]
    expect = y + u @ (torch.exp(-lam * t) * (u.T @ r0))
    torch.testing.assert_close(run.train_predictions[3, :, 0].double(), expect, rtol=1e-9, atol=1e-9)


def test_flow_reaches_the_tolerance_and_reports_when_it_cannot(data, one_thread):
    x, y, _ = data
    net = finite_nets.build(cntk.Architecture(depth=2, readout="flatten"), 128, input_shape=(1, 8, 8),
                            dtype=torch.float64, device="cpu")
    run = train_flow(net, x, y, loss_tol=1e-8, centered=True)
    assert run.converged and run.relative_loss <= 1e-8 and run.loss[0] > 0
    short = train_flow(net, x, y, loss_tol=1e-8, max_steps=2)
    assert not short.converged and len(short.times) == 3
    with pytest.raises(FlowDidNotConverge, match="raise max_steps"):
        train_flow(net, x, y, loss_tol=1e-8, max_steps=2, strict=True)
    with pytest.raises(ValueError, match="loss_tol"):
        train_flow(net, x, y, loss_tol=2.0)
    with pytest.raises(ValueError, match="NaN"):
        train_flow(net, x, y * math.nan)
