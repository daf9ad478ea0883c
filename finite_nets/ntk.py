"""Empirical NTK Theta(x, x')_{k k'} = sum over trainable parameters of df_k(x)/dtheta . df_k'(x')/dtheta.

Two exact methods, both bounded in memory by ``memory_mb`` (chunks over samples, pairs and weight
entries; never the full Jacobian of the data set):

- ``"structured"`` (FiniteNet only, ``ntk_structured``): one batched forward and one backward pass
  written out layer by layer give every trainable layer's input and output cotangent; each layer's
  contribution is the cheaper (by a flop count, ``ntk_plan``) of two exact contractions
  (``ntk_contract``): ``"jacobian"`` (per-sample weight gradients, then J1 J2^T) or ``"gram"`` (P x P
  Gram matrices of cotangents and patch-traced activations).  Tasks run on torch.get_num_threads()
  Python threads, summed in task order (reproducible bit for bit).
- ``"jacrev"`` (any nn.Module, ``ntk_jacrev``): torch.func.vmap(jacrev(functional_call)) per chunk of
  samples and group of parameters, then dot products.  The generic fallback.

Arithmetic: float64 in float64 throughout.  float32 inputs: every product is float32 with float32
accumulation (convolutions over c q^2 terms, per-sample gradients over P, Gram products over c or m,
and the kernel contraction J1 J2^T in GEMMs of at most ``ntk_gemm.K_CHUNK`` = 8192 terms each); the
partial kernels of those GEMMs, layers and chunks are summed in float64 (N1 x N2 numbers: free).  On
the CPU the convolutions run in oneDNN and the matrix products in oneDNN's fp32 GEMM with torch.mm
(MKL) as the fallback; on CUDA, cuBLAS / cuDNN with TF32 switched off for the duration of the call
(IEEE fp32), so a float32 kernel is the same on every device up to fp32 rounding (``ntk_gemm``).

Memory: ``memory_mb`` (default: a quarter of the memory available on the device when called,
``ntk_memory.default_memory_mb``) bounds the working memory beyond the weights; the structured method
keeps the features of all inputs when they fit, else goes in blocks (``ntk_structured``).
"""
from __future__ import annotations

import torch
from torch import nn

from finite_nets.ntk_gemm import _ieee_fp32
from finite_nets.ntk_jacrev import _jacrev
from finite_nets.ntk_memory import default_memory_mb
from finite_nets.ntk_structured import _structured
from finite_nets.paper_net import FiniteNet

METHODS = ("auto", "structured", "jacrev")
CONTRACTIONS = ("auto", "gram", "jacobian")
OUTPUTS = ("auto", "per_output", "full")


def _prepare_input(name: str, x: object, model: nn.Module, ref: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
    x = x.to(ref.device)
    if isinstance(model, FiniteNet):
        model.check_input(x, name)
    elif x.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but the model has {ref.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    outputs: str = "auto",
    method: str = "auto",
    contraction: str = "auto",
    memory_mb: float | None = None,
) -> torch.Tensor:
    """Empirical NTK of ``model`` over its trainable parameters (requires_grad), exact to rounding.

    x1: (N1, ...) inputs; x2: (N2, ...) or None for x1 itself (symmetry used; the result is
    exactly symmetric).  Inputs are moved to the model's device; their dtype must be the model's.
    outputs: "auto" gives (N1, N2) for a one-output model and the per-output kernels
        Theta_kk (N1, N2, K) otherwise; "per_output" always (N1, N2, K); "full" the cross-output
        kernel (N1, N2, K, K) (off-diagonal k != k' vanishes as width -> infinity).
    method: "structured" (FiniteNet only: layer-wise contraction, see module docstring), "jacrev"
        (any module: torch.func.vmap(jacrev)), or "auto" (structured when possible).
    contraction: for "structured", "gram", "jacobian" or "auto" (cheaper by flop count, per layer).
    memory_mb: working-memory budget (MiB) beyond the model itself; None (default): a quarter of the
        memory available on the model's device now (``default_memory_mb``).  The features of all
        inputs are kept when they fit (then every sample is propagated once), else x2's are
        recomputed per block of x1.
    float32 is accumulated in float32 (module docstring; TF32 is off on CUDA during the call).
    Returns a tensor in the model's dtype, on x1's device.  For a FiniteNet of width m the result
    tends to kappa^2 * cntk.kernel(x1, x2, model.arch, "ntk") (per output) as m grows.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if outputs not in OUTPUTS:
        raise ValueError(f"unknown outputs {outputs!r}: use one of {OUTPUTS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    if contraction not in CONTRACTIONS:
        raise ValueError(f"unknown contraction {contraction!r}: use one of {CONTRACTIONS}")
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    structured = isinstance(model, FiniteNet)
    if method == "structured" and not structured:
        raise ValueError("method='structured' needs a finite_nets.FiniteNet: use method='jacrev' for other modules")
    ref = next(iter(model.parameters()), None)
    if ref is None:
        raise ValueError("model has no parameters")
    out_device = x1.device if isinstance(x1, torch.Tensor) else ref.device
    x1 = _prepare_input("x1", x1, model, ref)
    if x2 is not None:
        x2 = _prepare_input("x2", x2, model, ref)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x1 and x2 must agree in every dimension but N: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    full = outputs == "full"
    if memory_mb is None:
        memory_mb = default_memory_mb(ref.device)
    budget = int(memory_mb * 2**20)
    if len(x1) == 0 or (x2 is not None and len(x2) == 0):
        k = model.out_dim if structured else 1
        shape = (len(x1), len(x1) if x2 is None else len(x2), *((k, k) if full else (k,)))
        theta = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    elif structured and method != "jacrev":
        with torch.no_grad(), _ieee_fp32(ref.device):
            theta = _structured(model, x1, x2, full, contraction, budget)
    else:
        with _ieee_fp32(ref.device):
            theta = _jacrev(model, x1, x2, full, budget)
    if outputs == "auto" and theta.shape[2] == 1:
        theta = theta[:, :, 0]
    return theta.to(out_device)


def largest_eigenvalue(model: nn.Module, x: torch.Tensor, *, memory_mb: float | None = None) -> float:
    """lambda_max of the full empirical NTK on x: the (N K) x (N K) matrix over samples and outputs,
    the operator that drives full-batch GD on the squared loss (stable for lr < 2 / lambda_max)."""
    theta = empirical_ntk(model, x, outputs="full", memory_mb=memory_mb)
    n, k = theta.shape[0], theta.shape[2]
    mat = theta.permute(0, 2, 1, 3).reshape(n * k, n * k).to(torch.float64)
    return float(torch.linalg.eigvalsh(mat)[-1])
