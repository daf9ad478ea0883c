"""GEMM control for the structured empirical NTK: float32 products in oneDNN on the CPU (torch.mm as
the fallback), float32 sums of at most ``K_CHUNK`` terms added up in float64, the upper-block scheme of
symmetric products, and IEEE fp32 (no TF32) on CUDA.

float32 GEMMs over 4.7 million terms (half a layer's D at width 1024) put the kernel of a 32x32
width-1024 CNN-GAP 1e-4 (relative) off its float64 value; in chunks of 8192, 2e-7.  oneDNN's fp32 GEMM
(``torch.ops.mkldnn._linear_pointwise``) runs AVX-512 where MKL's sgemm runs its AVX2 path on non-Intel
CPUs (about 2x here).
"""
from __future__ import annotations

import contextlib

import torch

K_CHUNK = 8192  # terms of one float32 GEMM sum in the kernel contraction; the partial sums add up in float64

_ONEDNN_GEMM: bool | None = None  # decided on first use: torch.ops.mkldnn._linear_pointwise works here


def _onednn(t: torch.Tensor) -> bool:
    return (
        _ONEDNN_GEMM is not False
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch._C._get_mkldnn_enabled()
    )


def _mm_nt(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T, accumulated in x's dtype.  float32 on the CPU with both operands
    contiguous: oneDNN's fp32 GEMM; otherwise torch.mm (MKL on the CPU; it takes strided operands as
    they are, where oneDNN was measured 40x slower or refused)."""
    global _ONEDNN_GEMM
    if _onednn(x) and x.is_contiguous() and w.is_contiguous():
        try:
            out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            _ONEDNN_GEMM = True
            return out
        except (AttributeError, NotImplementedError):  # no such op in this build
            _ONEDNN_GEMM = False
        except RuntimeError:  # this shape: the fallback, this time only
            pass
    return x @ w.T


@contextlib.contextmanager
def _ieee_fp32(device: torch.device):
    """On CUDA: cuBLAS and cuDNN in IEEE fp32 (no TF32) for the duration; elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    saved = []
    try:
        for obj in (torch.backends.cuda.matmul, torch.backends.cudnn.conv):
            saved.append((obj, obj.fp32_precision))
            obj.fp32_precision = "ieee"
    except (AttributeError, RuntimeError):  # older torch: the legacy flags
        for obj, value in saved:
            obj.fp32_precision = value
        saved = [("legacy", (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))]
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        for obj, value in saved:
            if obj == "legacy":
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = value
            else:
                obj.fp32_precision = value


def _n_sym_blocks(n: int) -> int:
    return 1 if n < 128 else min(4, n // 64)


def _add_nt(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor, same: bool, unit: int) -> None:
    """acc (R1, R2, float64) += x @ w^T, one GEMM per K_CHUNK columns (each a float32 sum of at most
    that many terms), the partial products summed in acc.  same (w is x): only the upper blocks of a
    partition of the rows (at sample boundaries: `unit` rows per sample) are multiplied."""
    n = x.shape[0] // unit
    nb = _n_sym_blocks(n) if same else 1
    bounds = [unit * (n * b // nb) for b in range(nb + 1)] if same else [0, x.shape[0]]
    pack = _onednn(x) and min(x.shape[0], w.shape[0]) >= 64  # enough flops per copied float for oneDNN
    for d0 in range(0, x.shape[1], K_CHUNK):
        xd, wd = x[:, d0 : d0 + K_CHUNK], w[:, d0 : d0 + K_CHUNK]
        if pack:
            xd = xd.contiguous()
            wd = xd if same else wd.contiguous()
        if not same:
            acc += _mm_nt(xd, wd)
            continue
        for bi in range(nb):
            s0, s1 = bounds[bi], bounds[bi + 1]
            for bj in range(bi, nb):
                t0, t1 = bounds[bj], bounds[bj + 1]
                acc[s0:s1, t0:t1] += _mm_nt(xd[s0:s1], xd[t0:t1])
