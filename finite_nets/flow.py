"""Gradient flow of a finite net to full training, by an exponential integrator with error control.

Theorem 3.2 (Arora et al. 2019) is about the net trained by gradient flow on
L = 0.5 * ||f(X) - Y||^2 until convergence, d theta / dt = -J(theta)^T (f(X) - Y).  Plain GD with
lr = 1 / lambda_max needs about lambda_max / lambda_min steps (1e4 on 30 digits) to fit the
kernel's smallest modes.  ``train_flow`` integrates the same ODE with steps of any length:

    exponential Euler with the tangent kernel frozen over a step (a Rosenbrock-type method): with
    r = f(X) - Y, Theta = J J^T = U diag(lam) U^T the empirical NTK on the training inputs,
        theta <- theta - J^T U diag((1 - exp(-lam h)) / lam) U^T r          (one vector-Jacobian product)
    which is exact for a net that is linear in its parameters (then r(t + h) = exp(-Theta h) r),
    so that its only error is the change of the tangent kernel during the step.  That error is
    measured after every step: err = ||r_new - exp(-Theta h) r|| / ||r||; a step with err > rtol is
    rejected and retried shorter; an accepted one sets the next length h * clip(0.9 sqrt(rtol / err),
    0.5, 4) (the method's local error is O(h^2)).

The first step is 1 / lambda_max (one GD step at lr = 1 / lambda_max), and steps grow as the fast
modes die out, so the whole flow to ``loss_tol`` (relative to the initial loss) costs tens of steps
instead of ~1e4.  Each accepted step costs one empirical NTK on the training inputs, one backward
and one forward pass.  tests/test_finite_flow.py checks it against small-step GD on the same net.
``centered`` trains f - f0 (f0 the function at init, fixed), kappa is the model's ``output_scale``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from .ntk import empirical_ntk
from .training import _check_x, _check_y, _predict


class FlowDidNotConverge(RuntimeError):
    """The flow did not reach loss_tol within max_steps (the run is still returned by ``train_flow``
    with ``converged=False`` unless ``strict``)."""


@dataclass
class FlowRun:
    """Result of ``train_flow``.  Predictions are centred (f - f0) when ``centered``; K = out_dim.

    times (S,): the accepted times (0 first), in the flow's own units (lr = 1 per unit).
    loss (S,): 0.5 ||f(X) - Y||^2 at those times.  train_predictions (S, N, K), test_predictions
    (S, M, K) or None.  drift (S,): ||Theta_t - Theta_0||_F / ||Theta_0||_F of the per-output
    empirical NTK on the training inputs.  lambda_max: of the initial NTK (all outputs).
    converged: loss[-1] <= loss_tol * loss[0].  rejected: steps retried shorter.
    """

    model: torch.nn.Module
    times: list[float]
    loss: list[float]
    train_predictions: torch.Tensor
    test_predictions: torch.Tensor | None
    drift: list[float]
    ntk0: torch.Tensor
    f0_train: torch.Tensor
    f0_test: torch.Tensor | None
    lambda_max: float
    converged: bool
    rejected: int
    centered: bool
    errors: list[float] = field(default_factory=list)

    @property
    def relative_loss(self) -> float:
        return self.loss[-1] / self.loss[0] if self.loss[0] > 0 else 0.0


def train_flow(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor | None = None,
    *,
    loss_tol: float = 1e-6,
    rtol: float = 1e-3,
    max_steps: int = 400,
    max_time: float = math.inf,
    centered: bool = False,
    strict: bool = False,
    inplace: bool = False,
    memory_mb: float | None = None,
) -> FlowRun:
    """Gradient flow on 0.5 * sum of squared errors until loss <= loss_tol * initial loss (module docstring).

    y_train: (N,) or (N, out_dim).  rtol: accepted relative defect per step (the integrator's
    accuracy).  max_steps: accepted steps at most; max_time: stop there instead (e.g. to follow
    early times).  strict: raise FlowDidNotConverge instead of returning ``converged=False``.
    The model is copied first unless ``inplace``.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "out_dim") or not hasattr(model, "check_input"):
        raise ValueError(f"model must be a finite_nets.FiniteNet or LayerNet, got {type(model).__name__}")
    if not 0 < loss_tol < 1:
        raise ValueError(f"loss_tol must be in (0, 1) (a fraction of the initial loss), got {loss_tol}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    net = model if inplace else copy.deepcopy(model)
    x_train = _check_x("x_train", x_train, net)
    x_test = None if x_test is None else _check_x("x_test", x_test, net)
    y = _check_y(y_train, x_train, net.out_dim)
    n, k = len(x_train), net.out_dim
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opts = {} if memory_mb is None else {"memory_mb": memory_mb}

    def kernel() -> torch.Tensor:  # (N K, N K) float64, the "full" empirical NTK
        theta = empirical_ntk(net, x_train, outputs="full", **opts).reshape(n, n, k, k)
        return theta.permute(0, 2, 1, 3).reshape(n * k, n * k).double()

    def per_output(theta: torch.Tensor) -> torch.Tensor:
        return theta.reshape(n, k, n, k).diagonal(dim1=1, dim2=3)  # (N, N, K)

    f0_train = _predict(net, x_train)
    f0_test = None if x_test is None else _predict(net, x_test)
    off_train = f0_train if centered else torch.zeros_like(f0_train)
    off_test = None if x_test is None else (f0_test if centered else torch.zeros_like(f0_test))

    theta = kernel()
    ntk0 = per_output(theta)
    lam_max = float(torch.linalg.eigvalsh(theta)[-1])
    if not lam_max > 0:
        raise ValueError("the initial empirical NTK is zero on x_train: nothing to train")
    out = (_predict(net, x_train) - off_train)
    r = (out - y).double().reshape(-1)
    times, losses, train_preds, test_preds, drift, errors = [0.0], [0.5 * float(r @ r)], [out.clone()], [], [0.0], []
    if x_test is not None:
        test_preds.append(_predict(net, x_test) - off_test)
    h, t, rejected = 1.0 / lam_max, 0.0, 0
    target = loss_tol * losses[0]
    while losses[-1] > target and len(times) <= max_steps and t < max_time:
        lam, u = torch.linalg.eigh(theta)
        lam = lam.clamp_min(0)
        h = min(h, max_time - t)
        coeff = u.T @ r
        decay = torch.exp(-lam * h)
        phi = torch.where(lam * h > 1e-12, -torch.expm1(-lam * h) / torch.where(lam > 0, lam, 1.0), torch.full_like(lam, h))
        c = (u @ (phi * coeff)).to(x_train.dtype).reshape(n, k)
        r_pred = u @ (decay * coeff)
        saved = [p.detach().clone() for p in params]
        f = net(x_train)
        grads = torch.autograd.grad((f * c).sum(), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(g)
        out = _predict(net, x_train) - off_train
        r_new = (out - y).double().reshape(-1)
        norm = max(float(r.norm()), torch.finfo(torch.float64).tiny)
        err = float((r_new - r_pred).norm()) / norm
        if not math.isfinite(err) or err > rtol:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            rejected += 1
            h *= max(0.1, 0.9 * math.sqrt(rtol / err)) if math.isfinite(err) and err > 0 else 0.1
            if rejected > 50 * max_steps:
                break
            continue
        t += h
        r = r_new
        theta = kernel()
        times.append(t)
        losses.append(0.5 * float(r @ r))
        errors.append(err)
        train_preds.append(out.clone())
        if x_test is not None:
            test_preds.append(_predict(net, x_test) - off_test)
        drift.append(float((per_output(theta) - ntk0).norm() / ntk0.norm()))
        h *= min(4.0, max(0.5, 0.9 * math.sqrt(rtol / err))) if err > 0 else 4.0
    converged = losses[-1] <= target
    if strict and not converged:
        raise FlowDidNotConverge(f"gradient flow stopped at loss {losses[-1]:.3g} = {losses[-1] / losses[0]:.3g} x "
                                 f"initial after {len(times) - 1} steps (t = {t:.4g}): raise max_steps or loss_tol")
    return FlowRun(
        model=net, times=times, loss=losses, train_predictions=torch.stack(train_preds),
        test_predictions=torch.stack(test_preds) if test_preds else None, drift=drift, ntk0=ntk0,
        f0_train=f0_train, f0_test=f0_test, lambda_max=lam_max, converged=converged, rejected=rejected,
        centered=centered, errors=errors,
    )
