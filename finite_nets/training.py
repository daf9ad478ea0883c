"""Training the finite nets: full-batch GD as in the theory, and minibatch SGD for classification.

Full-batch GD (``train_gd``): loss 0.5 * sum_i ||f(x_i) - y_i||^2 (a sum, not a mean), plain
steps theta <- theta - lr * grad from the NTK-parameterised init.  In function space one step is
f <- f - lr Theta (f - Y) to first order, stable for lr < 2 / lambda_max(Theta); by default
lr = lr_fraction / lambda_max with lambda_max the largest eigenvalue of the initial empirical NTK on
the training set (all outputs together) and lr_fraction = 1.  kappa (Theorem 3.2) is the model's
``output_scale``; ``centered=True`` trains f(x) - f0(x) with f0 the function at init.
The matching kernel predictions are ``finite_nets.gd_predictions``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cntk

from finite_nets.checks import positive_int
from .ntk import empirical_ntk, largest_eigenvalue


class TrainingDiverged(RuntimeError):
    """The loss became NaN / inf or grew far beyond its initial value."""


@dataclass
class GDRun:
    """Result of ``train_gd``.  Predictions are centred (f - f0) when ``centered``; shapes use K = out_dim.

    loss: (steps + 1,) the loss before step 0, 1, ..., and after the last step.
    train_predictions (S, N, K) and test_predictions (S, M, K) (None without x_test) at ``eval_steps``.
    drift: (len(drift_steps),) ||Theta_t - Theta_0||_F / ||Theta_0||_F of the per-output empirical NTK
        on the training inputs.  ntk0: that initial kernel, (N, N, K).
    f0_train (N, K), f0_test (M, K) or None: the function at init (uncentred).
    """

    model: torch.nn.Module
    lr: float
    lambda_max: float
    loss: torch.Tensor
    eval_steps: list[int]
    train_predictions: torch.Tensor
    test_predictions: torch.Tensor | None
    drift_steps: list[int]
    drift: torch.Tensor
    ntk0: torch.Tensor
    f0_train: torch.Tensor
    f0_test: torch.Tensor | None
    centered: bool


def _check_x(name: str, x: object, model: torch.nn.Module) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    x = x.to(model.readout.device)
    model.check_input(x, name)
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _check_y(y_train: object, x_train: torch.Tensor, out_dim: int) -> torch.Tensor:
    """Targets (N,) or (N, K) as (N, K) in x_train's dtype and device; raises ValueError otherwise."""
    y = torch.as_tensor(y_train).to(device=x_train.device, dtype=x_train.dtype)
    y = y[:, None] if y.ndim == 1 else y
    n = len(x_train)
    if y.shape != (n, out_dim):
        raise ValueError(f"y_train must have shape ({n},) or ({n}, {out_dim}), got {tuple(torch.as_tensor(y_train).shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y_train contains NaN or inf")
    return y


def _steps_list(name: str, values: Iterable[int] | None, steps: int, default: list[int]) -> list[int]:
    out = default if values is None else sorted({int(v) for v in values})
    bad = [v for v in out if not 0 <= v <= steps]
    if bad:
        raise ValueError(f"{name} must lie in [0, steps={steps}], got {bad}")
    return out


def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def train_gd(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor | None = None,
    *,
    steps: int,
    lr: float | None = None,
    lr_fraction: float = 1.0,
    centered: bool = False,
    eval_steps: Iterable[int] | None = None,
    drift_steps: Iterable[int] = (),
    divergence_factor: float = 1e3,
    inplace: bool = False,
    memory_mb: float = 1024.0,
) -> GDRun:
    """Full-batch GD on 0.5 * sum of squared errors (module docstring).

    y_train: (N,) or (N, out_dim) targets.  lr: explicit learning rate, else lr_fraction / lambda_max
    (lr_fraction in (0, 2)).  eval_steps: steps at which train/test predictions are recorded
    (default [0, steps]); drift_steps: steps at which the relative kernel drift is measured.
    Raises TrainingDiverged when the loss is NaN / inf or exceeds divergence_factor times
    max(initial loss, 0.5 ||Y||^2).  The model is copied first unless ``inplace``.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "out_dim") or not hasattr(model, "check_input"):
        raise ValueError(f"model must be a finite_nets.FiniteNet or LayerNet, got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not 0 < lr_fraction < 2:
        raise ValueError(f"lr_fraction must be in (0, 2) (GD is stable for lr < 2 / lambda_max), got {lr_fraction}")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    net = model if inplace else copy.deepcopy(model)
    x_train = _check_x("x_train", x_train, net)
    x_test = None if x_test is None else _check_x("x_test", x_test, net)
    y = _check_y(y_train, x_train, net.out_dim)
    evals = _steps_list("eval_steps", eval_steps, steps, [0, steps])
    drifts = _steps_list("drift_steps", drift_steps, steps, [])

    theta_full = empirical_ntk(net, x_train, outputs="full", memory_mb=memory_mb)
    n, k = theta_full.shape[0], theta_full.shape[2]
    lam = float(torch.linalg.eigvalsh(theta_full.permute(0, 2, 1, 3).reshape(n * k, n * k).double())[-1])
    ntk0 = theta_full.diagonal(dim1=2, dim2=3)  # (N, N, K)
    if lr is None:
        if lam <= 0:
            raise ValueError("the initial empirical NTK is zero on x_train: nothing to train")
        lr = lr_fraction / lam

    f0_train = _predict(net, x_train)
    f0_test = None if x_test is None else _predict(net, x_test)
    off_train = f0_train if centered else torch.zeros_like(f0_train)
    off_test = None if x_test is None else (f0_test if centered else torch.zeros_like(f0_test))
    params = [p for p in net.parameters() if p.requires_grad]
    losses, train_preds, test_preds, drift = [], [], [], []
    scale = None
    for t in range(steps + 1):
        out = net(x_train) - off_train
        loss = 0.5 * ((out - y) ** 2).sum()
        value = float(loss.detach())
        if scale is None:
            scale = max(value, 0.5 * float((y**2).sum()), torch.finfo(y.dtype).tiny)
        if not math.isfinite(value) or value > divergence_factor * scale:
            raise TrainingDiverged(
                f"GD diverged at step {t}: loss {value:.4g} (initial {losses[0] if losses else value:.4g}) with "
                f"lr = {lr:.4g} = {lr * lam:.3g} / lambda_max (GD is stable for lr < 2 / lambda_max): lower lr or lr_fraction"
            )
        losses.append(value)
        if t in evals:
            train_preds.append(out.detach().clone())
            if x_test is not None:
                test_preds.append(_predict(net, x_test) - off_test)
        if t in drifts:
            theta = ntk0 if t == 0 else empirical_ntk(net, x_train, outputs="per_output", memory_mb=memory_mb)
            drift.append(float((theta - ntk0).norm() / ntk0.norm()))
        if t == steps:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return GDRun(
        model=net,
        lr=float(lr),
        lambda_max=lam,
        loss=torch.tensor(losses, dtype=torch.float64),
        eval_steps=evals,
        train_predictions=torch.stack(train_preds),
        test_predictions=torch.stack(test_preds) if test_preds else None,
        drift_steps=drifts,
        drift=torch.tensor(drift, dtype=torch.float64),
        ntk0=ntk0,
        f0_train=f0_train,
        f0_test=f0_test,
        centered=centered,
    )


# ---------------------------------------------------------------------------------------------
# minibatch SGD for classification


@dataclass
class SGDRun:
    """Result of ``train_sgd``: final test accuracy, per-epoch mean training loss and test accuracy,
    the final model's training loss and accuracy on the whole training set, and which test inputs
    it classifies correctly (M,) bool (for paired tests and bootstrap intervals)."""

    model: torch.nn.Module
    lr: float
    test_accuracy: float
    train_loss: list[float]
    test_accuracy_per_epoch: list[float]
    final_train_loss: float = float("nan")
    train_accuracy: float = float("nan")
    test_correct: torch.Tensor | None = None


LOSSES = ("mse", "cross_entropy")


def train_sgd(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    labels_train: torch.Tensor,
    x_test: torch.Tensor,
    labels_test: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float | None = None,
    lr_fraction: float = 0.5,
    loss: str = "mse",
    momentum: float = 0.9,
    seed: int = 0,
    centered: bool = False,
    inplace: bool = False,
    memory_mb: float | None = None,
) -> SGDRun:
    """Minibatch SGD for classification (the paper's finite CNN-V / CNN-GAP baselines), seeded.

    model.out_dim is the number of classes.  loss: "mse" (0.5 * squared error to the paper's
    0.9 / -0.1 targets, summed over classes, mean over the batch) or "cross_entropy" (mean).
    lr: explicit, else lr_fraction * B / lambda_max of the initial empirical NTK on the first
    (shuffled) batch of B samples: the largest stable step of the batch-mean squared loss scaled
    by lr_fraction.  momentum: heavy-ball momentum of torch.optim.SGD (0 for plain SGD).  In the NTK
    parameterisation a small output_scale (kappa ~ 0.1) speeds up learning a lot: the initial
    outputs, whose size is set by the NNGP kernel, no longer dominate the loss.  Shuffling uses a CPU
    torch.Generator seeded by ``seed``.  centered: train f - f0 (f0 the function at init).  model: a
    ``FiniteNet`` or any module with ``out_dim``, ``readout`` and ``check_input`` (e.g. a ``LayerNet``;
    one in the standard parameterisation needs an explicit ``lr``).
    Raises TrainingDiverged on a NaN / inf loss.  The model is copied first unless ``inplace``.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "out_dim") or not hasattr(model, "check_input"):
        raise ValueError(f"model must be a finite_nets.FiniteNet or LayerNet, got {type(model).__name__}")
    if lr is None and getattr(model, "parameterisation", "ntk") != "ntk":
        raise ValueError("lr is needed for a net that is not NTK-parameterised (lr_fraction uses its NTK)")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")
    positive_int("epochs", epochs), positive_int("batch_size", batch_size)
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not 0 < lr_fraction < 2:
        raise ValueError(f"lr_fraction must be in (0, 2), got {lr_fraction}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    num_classes = model.out_dim
    if num_classes < 2:
        raise ValueError("train_sgd classifies: build the model with out_dim = number of classes (>= 2)")
    net = model if inplace else copy.deepcopy(model)
    x_train = _check_x("x_train", x_train, net)
    x_test = _check_x("x_test", x_test, net)
    lab_train = torch.as_tensor(labels_train).long().cpu()
    lab_test = torch.as_tensor(labels_test).long().cpu()
    if lab_train.shape != (len(x_train),) or lab_test.shape != (len(x_test),):
        raise ValueError("labels_train / labels_test must be 1-D with one label per input")
    targets = cntk.paper_targets(lab_train, num_classes).to(device=x_train.device, dtype=x_train.dtype)
    dev_labels = lab_train.to(x_train.device)

    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(x_train), generator=gen) for _ in range(epochs)]
    if lr is None:
        first = orders[0][:batch_size].to(x_train.device)
        opts = {} if memory_mb is None else {"memory_mb": memory_mb}
        lr = lr_fraction * len(first) / largest_eigenvalue(net, x_train[first], **opts)
    off_train = _predict(net, x_train) if centered else torch.zeros(len(x_train), num_classes, dtype=x_train.dtype,
                                                                   device=x_train.device)
    off_test = _predict(net, x_test) if centered else 0.0
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    train_loss, accs = [], []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for i in range(0, len(x_train), batch_size):
            idx = orders[epoch][i : i + batch_size].to(x_train.device)
            out = net(x_train[idx]) - off_train[idx]
            if loss == "mse":
                value = 0.5 * ((out - targets[idx]) ** 2).sum(1).mean()
            else:
                value = F.cross_entropy(out, dev_labels[idx])
            if not bool(torch.isfinite(value)):
                raise TrainingDiverged(f"SGD diverged in epoch {epoch}: loss {float(value.detach())} with lr {lr:.4g}; lower lr")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total += float(value.detach()) * len(idx)
            count += len(idx)
        train_loss.append(total / count)
        accs.append(cntk.accuracy(_predict(net, x_test) - off_test, lab_test))
    with torch.no_grad():
        out = _predict(net, x_train) - off_train
        final = (0.5 * ((out - targets) ** 2).sum(1).mean() if loss == "mse" else F.cross_entropy(out, dev_labels))
        correct = ((_predict(net, x_test) - off_test).argmax(1).cpu() == lab_test)
    return SGDRun(model=net, lr=float(lr), test_accuracy=accs[-1], train_loss=train_loss, test_accuracy_per_epoch=accs,
                  final_train_loss=float(final), train_accuracy=cntk.accuracy(out.cpu(), lab_train),
                  test_correct=correct)
