"""Kernel regression as in the paper: labels 0.9 / -0.1, K_train alpha = Y solved in float64."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


def paper_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Regression targets of the paper: 0.9 for the true class, -0.1 elsewhere; (N, num_classes) float64."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    y = torch.full((len(labels), num_classes), -0.1, dtype=torch.float64)
    y[torch.arange(len(labels)), labels.long()] = 0.9
    return y


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((predictions.argmax(1).cpu() == torch.as_tensor(labels).cpu()).double().mean())


@dataclass
class KernelRegression:
    """A solved kernel regression: ``alpha`` (N, k) with (K_train + reg I) alpha = Y."""

    alpha: torch.Tensor
    ridge: float
    jitter: float

    def predict(self, k_test_train: torch.Tensor) -> torch.Tensor:
        """Predictions K(test, train) @ alpha, (N_test, k) float64."""
        return k_test_train.to(self.alpha) @ self.alpha


def fit(
    k_train: torch.Tensor,
    targets: torch.Tensor,
    ridge: float = 0.0,
    max_jitter: float = 1e-2,
) -> KernelRegression:
    """Solve (K + ridge * mean(diag K) * I) alpha = targets by Cholesky in float64.

    ridge is relative to the mean diagonal, so it does not depend on the kernel's scale; 0 is the
    paper's setting.  If the matrix is numerically singular (Cholesky fails, or a pivot falls
    below n * eps * mean diagonal), jitter (relative to the mean diagonal)
    is added, starting at 1e-12 and growing tenfold up to ``max_jitter``, with a warning.
    """
    if k_train.ndim != 2 or k_train.shape[0] != k_train.shape[1]:
        raise ValueError(f"k_train must be square, got shape {tuple(k_train.shape)}")
    y = torch.as_tensor(targets).to(torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != k_train.shape[0]:
        raise ValueError(f"targets have {y.shape[0]} rows but k_train has {k_train.shape[0]}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if not bool(torch.isfinite(k_train).all()):
        raise ValueError("k_train contains NaN or inf")
    k = k_train.to(torch.float64)
    k = (k + k.T) / 2
    scale = float(k.diagonal().mean())
    if scale <= 0:
        raise ValueError("k_train has a non-positive mean diagonal: the inputs are all zero or the kernel is wrong")
    eye = torch.eye(len(k), dtype=torch.float64, device=k.device)
    jitter = 0.0
    # a pivot below this is rounding noise: the matrix is singular to working precision
    pivot_floor = torch.finfo(torch.float64).eps * len(k) * scale
    while True:
        chol, info = torch.linalg.cholesky_ex(k + (ridge + jitter) * scale * eye)
        if int(info) == 0 and float(chol.diagonal().min()) ** 2 > pivot_floor:
            break
        jitter = 1e-12 if jitter == 0 else jitter * 10
        if jitter > max_jitter:
            raise torch.linalg.LinAlgError(
                f"kernel matrix is not positive definite even with jitter {max_jitter:g} x mean diagonal: "
                "check for duplicate inputs or pass a larger ridge"
            )
    if jitter:
        warnings.warn(f"kernel matrix numerically singular: added jitter {jitter:g} x mean diagonal", stacklevel=2)
    alpha = torch.cholesky_solve(y.to(k.device), chol)
    return KernelRegression(alpha=alpha, ridge=ridge, jitter=jitter)


def cross_validate_ridge(
    k_train: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ridges: list[float],
    folds: int = 5,
    seed: int = 0,
) -> list[float]:
    """Mean held-out accuracy of each ridge by ``folds``-fold cross-validation on the training kernel
    alone (seeded random folds; paper targets; float64 Cholesky as in ``fit``), so that a ridge can be
    chosen without looking at the test set.  Returns one accuracy per ridge, in order."""
    n = k_train.shape[0]
    if folds < 2 or folds > n:
        raise ValueError(f"folds must be in [2, {n}] (the number of training points), got {folds}")
    labels = torch.as_tensor(labels).cpu()
    k = k_train.to(torch.float64)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    parts = [perm[f::folds] for f in range(folds)]
    correct = [0] * len(ridges)
    for f, val in enumerate(parts):
        tr = torch.cat([p for g, p in enumerate(parts) if g != f])
        k_tr, k_val = k[tr][:, tr], k[val][:, tr]
        targets = paper_targets(labels[tr], num_classes).to(k.device)
        for i, ridge in enumerate(ridges):
            pred = fit(k_tr, targets, ridge=ridge).predict(k_val)
            correct[i] += int((pred.argmax(1).cpu() == labels[val]).sum())
    return [c / n for c in correct]
