"""A net trained by gradient flow to full training, split against kernel regression by its own
linearisation at init (shared by experiments/prediction_equivalence.py and
experiments/aspect_ratio_trained.py):

    f_net - f_KR = (f_net - lin(Theta0)) + (lin(Theta0) - f_KR)

lin(Theta) is the net linearised with tangent kernel Theta and trained to t = infinity, i.e.
f0(x) + Theta(x, X) Theta(X, X)^-1 (Y - f0(X)) (f0 = 0 when centred): with the exact kernel it is f_KR,
with the net's own empirical NTK at init Theta0 it is lin(Theta0).  ``train_checked`` trains by
finite_nets.train_flow and repeats the run once at rtol / 10 when the integrator's accumulated error
estimate (``flow_error``) exceeds ``bound`` x RMS(net - lin(Theta0)) (the smallest measured part).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

import finite_nets
from finite_nets.flow import FlowRun, train_flow

from experiments.harness.config import check


@dataclass
class FlowKeys:
    """The gradient-flow keys of an experiment that trains by ``train_checked`` (a base of its Config;
    the experiment's __post_init__ calls ``check_flow``)."""

    loss_tol: float = 1e-6  # train until loss <= loss_tol * initial loss
    rtol: float = 1e-2  # the gradient-flow integrator's accepted relative defect per step (first try)
    flow_error_bound: float = 0.25  # the integrator's error estimate / rel_net_lin must be <= this (else rtol / 10, once)
    max_steps: int = 400  # integrator steps at most (a run that stops early is reported as not converged)

    def check_flow(self) -> None:
        check(0 < self.loss_tol < 1, "experiment.loss_tol", f"must be in (0, 1), got {self.loss_tol}")
        check(0 < self.rtol < 1, "experiment.rtol", f"must be in (0, 1), got {self.rtol}")
        check(self.flow_error_bound > 0, "experiment.flow_error_bound", f"must be > 0, got {self.flow_error_bound}")
        check(self.max_steps >= 1, "experiment.max_steps", f"must be >= 1, got {self.max_steps}")


def initial_ntk(net: torch.nn.Module, x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The empirical NTK of ``net`` (as it is: call before training) in float64: Theta0(X, X) (N, N)
    and Theta0(x, X) (M, N)."""
    net64 = net if next(net.parameters()).dtype == torch.float64 else copy.deepcopy(net).double()
    xtr, xte = x_train.double(), x_test.double()
    return (finite_nets.empirical_ntk(net64, xtr).double().cpu(),
            finite_nets.empirical_ntk(net64, xte, xtr).double().cpu())


def linearised_limit(theta_train: torch.Tensor, theta_test_train: torch.Tensor, y: torch.Tensor,
                     f0_train: torch.Tensor | None = None, f0_test: torch.Tensor | None = None) -> torch.Tensor:
    """lin(Theta): the net linearised with tangent kernel Theta, trained to t = infinity:
    f0(x) + Theta(x, X) Theta(X, X)^-1 (Y - f0(X)) (f0 = 0: centred).  With the exact kernel and
    f0 = 0 it is f_KR; with the net's own Theta0 and f0 it is lin(Theta0)."""
    return finite_nets.kernel_predictions(theta_train, theta_test_train, y, f0_train=f0_train, f0_test=f0_test)


def flow_error(res) -> float:
    """The integrator's accumulated defect sum_s err_s ||r_s|| / ||r_0|| (err_s its per-step defect,
    r the training residual): an estimate of its global error in units of the signal."""
    r = [math.sqrt(2 * max(loss, 0.0)) for loss in res.loss]
    return sum(e * rs for e, rs in zip(res.errors, r[:-1])) / max(r[0], 1e-300)


def rms(v: torch.Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


@dataclass
class Trained:
    """One checked training run: ``res`` the flow, ``f_net`` (S, M) its test predictions at the
    accepted times (float64, cpu), ``f0`` the f0_train / f0_test keywords of ``linearised_limit``
    (empty when centred), ``f_lin0`` = lin(Theta0) on the test points, ``net_lin`` =
    RMS(f_net(T) - lin(Theta0)) / kr_rms, ``err`` = flow_error, ``err_rel`` = err / net_lin, and the
    rtol of the kept run with the number of runs (``tries``: 1, or 2 after one retry at rtol / 10)."""

    res: FlowRun
    f_net: torch.Tensor
    f0: dict
    f_lin0: torch.Tensor
    net_lin: float
    err: float
    err_rel: float
    rtol: float
    tries: int


def train_checked(net: torch.nn.Module, x_train: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
                  theta_train: torch.Tensor, theta_test_train: torch.Tensor, kr_rms: float, *, loss_tol: float,
                  rtol: float, max_steps: int, centred: bool, bound: float) -> Trained:
    """Train (a copy of) ``net`` by gradient flow until loss <= loss_tol x initial; split off
    lin(Theta0) (``theta_*``: the net's empirical NTK at init, from ``initial_ntk``); repeat once at
    rtol / 10 when the integrator's error estimate exceeds ``bound`` x RMS(net - lin(Theta0))."""
    tries = 0
    while True:
        tries += 1
        res = train_flow(net, x_train, y.to(x_train.dtype), x_test, loss_tol=loss_tol, rtol=rtol, max_steps=max_steps,
                         centered=centred)
        f_net = res.test_predictions[..., 0].double().cpu()  # (S, M)
        f0 = {} if centred else {"f0_train": res.f0_train[:, 0].double().cpu(),
                                 "f0_test": res.f0_test[:, 0].double().cpu()}
        f_lin0 = linearised_limit(theta_train, theta_test_train, y, **f0)  # lin(Theta0), t = infinity
        net_lin = rms(f_net[-1] - f_lin0) / kr_rms
        err = flow_error(res)
        err_rel = err / max(net_lin, 1e-300)
        if err_rel <= bound or tries > 1:
            return Trained(res, f_net, f0, f_lin0, net_lin, err, err_rel, rtol, tries)
        rtol /= 10
