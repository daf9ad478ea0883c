"""Kernel-side predictions: kernel regression and the linearised network after t steps of GD.

For full-batch GD on 0.5 * ||f(X) - Y||^2 with learning rate lr, the network linearised around its
initialisation (f0, constant kernel K) evolves in function space as
f_{t+1}(X) = f_t(X) - lr K (f_t(X) - Y), so after t steps

    f_t(X_test) = f0(X_test) + K_test,train K^{-1} (I - (I - lr K)^t) (Y - f0(X_train))

and under gradient flow (time t in units of steps) (I - lr K)^t becomes exp(-lr t K).  With
K = U diag(lam) U^T the matrix K^{-1}(I - (I - lr K)^t) is U diag((1 - (1 - lr lam)^t) / lam) U^T,
which stays finite as lam -> 0 (its limit is lr t) and gives kernel regression (pseudo-inverse)
at t = inf.  Everything is computed in float64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import cntk


def _as_2d(name: str, y: torch.Tensor, rows: int) -> torch.Tensor:
    y = torch.as_tensor(y).to(torch.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows},) or ({rows}, K), got {tuple(y.shape)}")
    return y


def _check_kernels(k_train: torch.Tensor, k_test_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if k_train.ndim != 2 or k_train.shape[0] != k_train.shape[1]:
        raise ValueError(f"k_train must be square (N, N), got shape {tuple(k_train.shape)}")
    if k_test_train.ndim != 2 or k_test_train.shape[1] != k_train.shape[0]:
        raise ValueError(f"k_test_train must be (M, {k_train.shape[0]}), got shape {tuple(k_test_train.shape)}")
    for name, k in (("k_train", k_train), ("k_test_train", k_test_train)):
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"{name} contains NaN or inf")
    k = k_train.to(torch.float64)
    return (k + k.T) / 2, k_test_train.to(device=k.device, dtype=torch.float64)


def gd_predictions(
    k_train: torch.Tensor,
    k_test_train: torch.Tensor,
    y_train: torch.Tensor,
    lr: float,
    steps: int | float | Sequence[int | float],
    *,
    f0_train: torch.Tensor | None = None,
    f0_test: torch.Tensor | None = None,
    flow: bool = False,
) -> torch.Tensor:
    """Predictions of the linearised net on the test inputs after ``steps`` GD steps (module docstring).

    k_train (N, N), k_test_train (M, N): the kernel (pass k_train twice for train predictions).
    y_train (N,) or (N, K); f0_train (N[, K]) and f0_test (M[, K]): the initial function (default 0,
    the centred / kappa -> 0 setting).  steps: a number or a sequence (float('inf') allowed, giving
    kernel regression).  flow: gradient flow exp(-lr t K) instead of discrete GD.
    Returns float64 (M[, K]) for a single step count, (S, M[, K]) for a sequence.
    """
    k, kt = _check_kernels(k_train, k_test_train)
    n, m = k.shape[0], kt.shape[0]
    squeeze = torch.as_tensor(y_train).ndim == 1
    y = _as_2d("y_train", y_train, n).to(k.device)
    f0a = torch.zeros_like(y) if f0_train is None else _as_2d("f0_train", f0_train, n).to(k.device)
    f0b = torch.zeros(m, y.shape[1], dtype=torch.float64, device=k.device) if f0_test is None else _as_2d(
        "f0_test", f0_test, m).to(k.device)
    if f0a.shape[1] != y.shape[1] or f0b.shape[1] != y.shape[1]:
        raise ValueError(f"f0_train / f0_test must have {y.shape[1]} outputs like y_train")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    single = isinstance(steps, (int, float))
    ts = [float(steps)] if single else [float(t) for t in steps]
    if any(not t >= 0 for t in ts):
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    if not flow and any(math.isfinite(t) and not t.is_integer() for t in ts):
        raise ValueError(f"discrete GD takes whole steps (or inf), got {steps!r}: use flow=True for continuous time")

    lam, u = torch.linalg.eigh(k)
    tol = max(float(lam[-1]), 0.0) * n * torch.finfo(torch.float64).eps
    if not flow and lr * float(lam[-1]) >= 2:
        raise ValueError(f"lr * lambda_max = {lr * float(lam[-1]):.4g} >= 2: discrete GD on this kernel diverges")
    coeffs_u = u.T @ (y - f0a)  # (N, K)
    basis = kt @ u  # (M, N)
    live = lam > tol
    safe = torch.where(live, lam, torch.ones_like(lam))
    x = lr * safe
    out = []
    for t in ts:
        if math.isinf(t):
            c = torch.where(live, 1.0 / safe, torch.zeros_like(lam))
        else:
            if flow:
                frac = -torch.expm1(-x * t)
            else:  # 1 - (1 - x)^t, accurately for small x
                small = x < 0.5
                frac = torch.where(small, -torch.expm1(t * torch.log1p(-torch.where(small, x, 0.0 * x))), 1 - (1 - x) ** t)
            c = torch.where(live, frac / safe, torch.full_like(lam, lr * t))
        pred = f0b + basis @ (c[:, None] * coeffs_u)
        out.append(pred[:, 0] if squeeze else pred)
    return out[0] if single else torch.stack(out)


def kernel_predictions(
    k_train: torch.Tensor,
    k_test_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    ridge: float = 0.0,
    f0_train: torch.Tensor | None = None,
    f0_test: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel regression (``cntk.kernel_regression``, ridge relative to the mean diagonal) on the
    residual Y - f0_train, plus f0_test: the t -> infinity limit of GD on the linearised net.
    Returns float64 (M,) or (M, K) like y_train."""
    k, kt = _check_kernels(k_train, k_test_train)
    n, m = k.shape[0], kt.shape[0]
    squeeze = torch.as_tensor(y_train).ndim == 1
    y = _as_2d("y_train", y_train, n).to(k.device)
    f0a = torch.zeros_like(y) if f0_train is None else _as_2d("f0_train", f0_train, n).to(k.device)
    f0b = 0.0 if f0_test is None else _as_2d("f0_test", f0_test, m).to(k.device)
    pred = f0b + cntk.kernel_regression(k, y - f0a, ridge=ridge).predict(kt)
    return pred[:, 0] if squeeze else pred
