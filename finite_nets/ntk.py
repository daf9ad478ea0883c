"""Empirical NTK Theta(x, x')_{k k'} = sum over trainable parameters of df_k(x)/dtheta . df_k'(x')/dtheta.

Two exact methods, both bounded in memory by ``memory_mb`` (chunks over samples, pairs and
weight entries; never the full Jacobian of the data set):

- ``"structured"`` (FiniteNet only): one batched forward pass and one backward pass (written out
  layer by layer: conv2d forward, conv_transpose2d backward, ReLU masks; K outputs ride in the
  batch, no vmap, one cotangent per output) give every trainable layer's scaled input a_l and
  output cotangent g_l = df/dh_l.  Nothing goes through autograd.  A layer h = conv(a, W)
  contributes sum_{p,p'} <g(x)_p, g(x')_p'> <patch(a(x))_p, patch(a(x'))_p'>, evaluated per layer
  as the cheaper (by a flop count) of two exact contractions:

  ``"jacobian"``: per-sample weight gradients J_n = g_n (K m x P) @ im2col(a_n)^T (P x c q^2),
  one large matrix product per sample, chunked over input channels (and weight rows when needed),
  then the kernel J1 @ J2^T of the flattened (N, D) gradients, chunk by chunk of D:
  2 N K m c q^2 P flops per layer for the gradients + 2 N1 N2 K m c q^2 for the kernel (about
  5/8 of that for a symmetric kernel of >= 128 samples: only the upper blocks are multiplied).
  ``"gram"``: P x P Gram matrices of g and of a (as (N P, m) @ (m, N P) products, channels-last),
  the latter patch-traced (separably: rows, then columns), then one elementwise product and sum:
  2 N1 N2 P^2 (c + K m) flops (10/16 of that for a symmetric kernel: upper pair blocks only)
  + O(N1 N2 P^2) memory passes.  Gram wins for wide nets on small images (8x8 at width >= ~512),
  the Jacobian otherwise.

  Layouts: activations are stored zero-padded NCHW for the Jacobian layers (im2col per sample is
  one strided copy that stays in cache), channels-last (N, P, c) for the Gram layers; cotangents
  (N, K, m, H, W) and (K, N, P, m) respectively.  With K = 1 there is one backward pass with
  ones, nothing vmapped.

  Execution (CPU): the forward/backward passes of sample chunks and the contraction chunks are
  independent tasks, run on torch.get_num_threads() Python threads with every op single-threaded
  and the results summed in task order (reproducible bit for bit).  On a shared CPU this matters:
  with OpenMP teams a preempted thread stalls its partner at every barrier (3x slower measured with
  one other 2-thread job on 2 cores); independent tasks only slow down by the CPU share lost.
  CUDA runs the same tasks in order on its stream.

- ``"jacrev"`` (any nn.Module): torch.func.vmap(jacrev(functional_call)) per chunk of samples and
  group of parameters, then dot products.  The generic fallback.

Arithmetic: float64 in float64 throughout.  float32 inputs: every product is float32 with float32
accumulation (convolutions over c q^2 terms, per-sample gradients over P, Gram products over c or m,
and the kernel contraction J1 J2^T in GEMMs of at most K_CHUNK = 8192 terms each); the partial
kernels of those GEMMs, layers and chunks are summed in float64 (N1 x N2 numbers: free).  float32
GEMMs over 4.7 million terms (half a layer's D at width 1024) put the kernel of a 32x32 width-1024
CNN-GAP 1e-4 (relative) off its float64 value; in chunks of 8192, 2e-7.  On the CPU the convolutions run in oneDNN and the
matrix products in oneDNN's fp32 GEMM (``torch.ops.mkldnn._linear_pointwise``, AVX-512 where MKL's
sgemm runs its AVX2 path on non-Intel CPUs: about 2x here) with torch.mm (MKL) as the fallback; on
CUDA, cuBLAS / cuDNN with TF32 switched off for the duration of the call (IEEE fp32), so a float32
kernel is the same on every device up to fp32 rounding.

Memory (structured): ``memory_mb`` (default: a quarter of the memory available on the device
when called, see ``default_memory_mb``) bounds the working memory beyond the weights.  A scratch
share (a quarter of it, at most 256 MiB: larger chunks are no faster) holds the contraction's
chunks and the forward/backward pass of a chunk of samples; the rest holds the features.  When the
features of all inputs fit they are computed once, so the per-sample work (forward, backward,
per-sample gradients) grows linearly in N; only when they do not fit do x1 and x2 go in blocks,
x2's features being recomputed for every block of x1.
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from finite_nets.paper_net import FiniteNet

METHODS = ("auto", "structured", "jacrev")
CONTRACTIONS = ("auto", "gram", "jacobian")
OUTPUTS = ("auto", "per_output", "full")

SCRATCH_CAP = 256 * 2**20  # bytes: contraction chunks and the forward/backward passes in flight
K_CHUNK = 8192  # terms of one float32 GEMM sum in the kernel contraction; the partial sums add up in float64
_TASK_THREADS: int | None = None  # CPU tasks at once (None: torch.get_num_threads()); 1: OpenMP inside each op


# ---------------------------------------------------------------------------------------------
# memory and arithmetic


def _available_bytes() -> int | None:
    """Memory available to this process now: MemAvailable, capped by a cgroup v2 limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                used = int(fh.read().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def default_memory_mb(device: str | torch.device | None = None) -> float:
    """The default working-memory budget of ``empirical_ntk`` (MiB): a quarter of the memory available
    now on the CPU (MemAvailable, within a cgroup limit), half of the free memory of a CUDA device;
    at least 256; 1024 when it cannot be read."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
            return max(256.0, free / 2**20 / 2)
        except (RuntimeError, AssertionError):
            return 1024.0
    avail = _available_bytes()
    return 1024.0 if avail is None else max(256.0, avail / 2**20 / 4)


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


# ---------------------------------------------------------------------------------------------
# structured method: plan, features (one forward and one backward pass), contractions


@dataclass
class _Plan:
    layers: list[int]  # trainable conv / dense layers
    gram: list[bool]  # per trainable layer: the Gram contraction (else the Jacobian one)
    readout: bool  # V trainable


@dataclass
class _Store:
    """Features of a block of n samples, per trainable layer, in the layout of its contraction:
    cnn jacobian: a (n, c, H + 2r, W + 2r) zero-padded, g (n, K, m, H, W);
    cnn gram: a (n, P, c), g (K, n, P, m); fc: a (n, c), g (n, K, m).  feats: readout input (n, F)."""

    a: list[torch.Tensor]
    g: list[torch.Tensor]
    feats: torch.Tensor | None


def _sym_saving(n: int) -> float:
    """Fraction of a symmetric n x n product that the upper-block scheme multiplies."""
    nb = _n_sym_blocks(n)
    return (nb + 1) / (2 * nb)


def _n_sym_blocks(n: int) -> int:
    return 1 if n < 128 else min(4, n // 64)


_N_GRAM_SYM_BLOCKS = 4  # a symmetric Gram block is split 4 x 4: 10 of the 16 pair blocks are computed

# memory passes of the Gram contraction (patch trace, product, sum), per P x P entry, counted as this
# many multiply-adds: on a 2-core AVX-512 CPU a pass costs 50-90 of a GEMM's multiply-adds, and 50
# puts the switch where the measured times cross (8x8 images, 64 samples: width 512)
_GRAM_PASS_MACS = 50.0


def _plan(model: FiniteNet, shape: tuple[int, ...], n1: int, n2: int, sym: bool, full: bool, contraction: str) -> _Plan:
    cnn = model.arch.family == "cnn"
    q2 = model.arch.filter_size**2 if cnn else 1
    p = shape[1] * shape[2] if cnn else 1
    m, k = model.width, model.out_dim
    kp = k * k if full else k
    layers = [i for i, w in enumerate(model.weights) if w.requires_grad]
    gram = []
    for layer in layers:
        c = shape[0] if layer == 0 else m
        if contraction != "auto":
            gram.append(contraction == "gram")
            continue
        pairs = n1 * n2 * (_sym_saving(n1) if sym else 1.0)
        per_sample = (n1 if sym else n1 + n2) * k * m * c * q2 * p
        jac = per_sample + pairs * kp * m * c * q2
        if cnn:
            nb = min(n1, _N_GRAM_SYM_BLOCKS)
            gpairs = n1 * n2 * ((nb + 1) / (2 * nb) if sym else 1.0)
            grm = gpairs * p * p * (c + kp * m + _GRAM_PASS_MACS * (12 + 4 * kp))
        else:
            grm = n1 * n2 * (c + kp * m)
        gram.append(grm < jac)
    return _Plan(layers, gram, bool(model.readout.requires_grad))


def _stored_bytes(model: FiniteNet, plan: _Plan, shape: tuple[int, ...], item: int) -> int:
    """Bytes per sample of the kept features."""
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    p = shape[1] * shape[2] if cnn else 1
    pp = (shape[1] + 2 * r) * (shape[2] + 2 * r) if cnn else 1
    total = 0
    for layer, gram in zip(plan.layers, plan.gram):
        c = shape[0] if layer == 0 else m
        total += (c * (p if gram else pp) if cnn else c) + k * m * p
    if plan.readout:
        total += m * p if cnn and model.arch.readout == "flatten" else m
    return total * item


def _transient_bytes(model: FiniteNet, plan: _Plan, shape: tuple[int, ...], item: int) -> int:
    """Bytes per sample of the forward/backward pass beyond the kept features (upper bound)."""
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    pp = (shape[1] + 2 * r) * (shape[2] + 2 * r) if cnn else 1
    kept = len(model.weights) - (plan.layers[0] if plan.layers else len(model.weights))
    return item * pp * (shape[0] + m * (kept + 3 + 3 * k))


def _allocate(model: FiniteNet, plan: _Plan, x: torch.Tensor) -> _Store:
    n, shape = len(x), tuple(x.shape[1:])
    cnn = model.arch.family == "cnn"
    m, k = model.width, model.out_dim
    r = model.arch.filter_size // 2
    kw = dict(dtype=x.dtype, device=x.device)
    a, g = [], []
    for layer, gram in zip(plan.layers, plan.gram):
        c = shape[0] if layer == 0 else m
        if not cnn:
            a.append(torch.empty(n, c, **kw))
            g.append(torch.empty(n, k, m, **kw))
            continue
        h, w = shape[1], shape[2]
        if gram:
            a.append(torch.empty(n, h * w, c, **kw))
            g.append(torch.empty(k, n, h * w, m, **kw))
        else:
            a.append(torch.zeros(n, c, h + 2 * r, w + 2 * r, **kw))  # the zero border is the SAME padding
            g.append(torch.empty(n, k, m, h, w, **kw))
    feats = None
    if plan.readout:
        f = m * shape[1] * shape[2] if cnn and model.arch.readout == "flatten" else m
        feats = torch.empty(n, f, **kw)
    return _Store(a, g, feats)


def _fill(model: FiniteNet, plan: _Plan, store: _Store, x: torch.Tensor, i0: int) -> None:
    """One forward and one backward pass of the chunk x, written into store[i0 : i0 + len(x)]."""
    cnn = model.arch.family == "cnn"
    weights = [w.detach() for w in model.weights]
    v = model.readout.detach()
    n_layers, k, m = len(weights), model.out_dim, model.width
    n = len(x)
    i1 = i0 + n
    pos = {layer: i for i, layer in enumerate(plan.layers)}
    low = plan.layers[0] if plan.layers else n_layers  # lowest layer whose cotangent is needed
    hs = model.hidden_scale
    r = model.arch.filter_size // 2

    def store_input(layer: int, padded: torch.Tensor) -> None:
        i = pos[layer]
        if cnn and plan.gram[i]:
            hh, ww = padded.shape[2] - 2 * r, padded.shape[3] - 2 * r
            store.a[i][i0:i1].view(n, hh, ww, -1).copy_(padded[:, :, r : r + hh, r : r + ww].permute(0, 2, 3, 1))
        elif not cnn:
            store.a[i][i0:i1].copy_(padded)

    def padded_buffer(layer: int, c: int, hh: int, ww: int) -> torch.Tensor:
        if layer in pos and not plan.gram[pos[layer]]:
            return store.a[pos[layer]][i0:i1]  # written in place, zero border already there
        return x.new_zeros(n, c, hh + 2 * r, ww + 2 * r)

    # forward: ins[l] = layer l's scaled input (padded for cnn), kept where the backward or the store needs it
    ins: dict[int, torch.Tensor] = {}
    if cnn:
        hh, ww = x.shape[2], x.shape[3]
        cur = padded_buffer(0, x.shape[1], hh, ww)
        cur[:, :, r : r + hh, r : r + ww] = x
    else:
        cur = x
    for layer, w in enumerate(weights):
        if layer in pos:
            store_input(layer, cur)
        if layer > low:
            ins[layer] = cur
        h = F.conv2d(cur, w) if cnn else cur @ w.T
        del cur
        h.clamp_(min=0)  # relu(h_layer)
        if layer + 1 < n_layers:
            if cnn:
                cur = padded_buffer(layer + 1, m, hh, ww)
                torch.mul(h, hs, out=cur[:, :, r : r + hh, r : r + ww])
            else:
                cur = h.mul_(hs)
            del h
        else:
            last = h
    s = hs * model.output_scale
    if plan.readout:
        if cnn:
            f = last.mean((2, 3)) if model.arch.readout == "gap" else last.flatten(1)
        else:
            f = last
        torch.mul(f, s, out=store.feats[i0:i1])
    if not plan.layers:
        return
    # backward: g = df/dh_layer for every output (n, K, m, ...), from the top down to the lowest trainable layer
    mask = last > 0
    del last
    if not cnn:
        g = mask[:, None] * (v * s)[None]
    elif model.arch.readout == "gap":
        g = mask[:, None] * (v * (s / (hh * ww)))[None, :, :, None, None]
    else:
        g = mask[:, None] * (v.view(k, m, hh, ww) * s)[None]
    del mask
    for layer in range(n_layers - 1, low - 1, -1):
        if layer in pos:
            i = pos[layer]
            if cnn and plan.gram[i]:
                store.g[i][:, i0:i1].view(k, n, hh, ww, m).copy_(g.permute(1, 0, 3, 4, 2))
            else:
                store.g[i][i0:i1].copy_(g)
        if layer == low:
            break
        a = ins.pop(layer)
        if cnn:
            g = F.conv_transpose2d(g.reshape(n * k, m, hh, ww), weights[layer], padding=r)
            g = g.view(n, k, -1, hh, ww).mul_(model.layer_scale(layer))
            g.mul_((a[:, :, r : r + hh, r : r + ww] > 0)[:, None])
        else:
            g = (g @ weights[layer]).mul_(model.layer_scale(layer))
            g.mul_((a > 0)[:, None])
        del a


def _run(tasks: list, threads: int):
    """Run independent tasks, yielding their results in submission order (so every sum is taken in the
    same order whatever the scheduling: results are reproducible bit for bit).  threads > 1: a pool of
    that many threads, each op single-threaded (the caller has set torch's threads to 1): no OpenMP
    barrier anywhere, so a thread that the OS preempts on a shared, oversubscribed CPU delays only its
    own task (with OpenMP teams one preempted thread stalls the other: 3x slower measured under load)."""
    if threads <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task()
        return

    def call(task):
        with torch.no_grad():  # grad mode is per thread
            return task()

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(call, task) for task in tasks]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _features(model: FiniteNet, plan: _Plan, x: torch.Tensor, chunk: int, threads: int) -> _Store:
    store = _allocate(model, plan, x)
    tasks = [partial(_fill, model, plan, store, x[i : i + chunk], i) for i in range(0, len(x), chunk)]
    for _ in _run(tasks, threads):
        pass
    return store


# --- contractions.  Layout of a kernel block: acc (K, n1, n2) per output, (n1 K, n2 K) for "full".
# --- Every contraction is a list of tasks; a task returns (where, tensor) to be added to acc: where is
# --- None (a whole partial acc), ("block", i0, i1, j0, j1) or "readout".  With `same` (a symmetric
# --- block) only the entries i <= j are complete; _mirror completes the rest.


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


def _kernel_of(j1: torch.Tensor, j2: torch.Tensor, full: bool, same: bool) -> torch.Tensor:
    """j1 (n1, K, D), j2 (n2, K, D): one chunk of the flattened per-sample gradients -> its partial acc."""
    n1, k, d = j1.shape
    n2 = len(j2)
    if full:
        acc = j1.new_zeros(n1 * k, n2 * k, dtype=torch.float64)
        _add_nt(acc, j1.view(n1 * k, d), j2.view(n2 * k, d), same, k)
    else:
        acc = j1.new_zeros(k, n1, n2, dtype=torch.float64)
        for kk in range(k):
            _add_nt(acc[kk], j1[:, kk], j2[:, kk], same, 1)
    return acc


def _im2col(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """a (..., c, h + q - 1, w + q - 1) zero-padded -> (..., c q^2, h w), index (c, di, dj) as in the weights."""
    lead = a.shape[:-3]
    return a.unfold(-2, h, 1).unfold(-2, w, 1).reshape(*lead, -1, h * w)


def _per_sample(g: torch.Tensor, a: torch.Tensor, q: int) -> torch.Tensor:
    """Per-sample weight gradients: g (n, K, rows, H, W), a (n, cc, H + 2r, W + 2r) -> (n, K, rows cc q^2)."""
    n, k, rows, h, w = g.shape
    if _onednn(g):  # one oneDNN GEMM per sample; its im2col stays in cache
        out = g.new_empty(n, k, rows * a.shape[1] * q * q)
        for s in range(n):
            u = _im2col(a[s], h, w)
            out[s].view(k * rows, -1).copy_(_mm_nt(g[s].reshape(k * rows, h * w), u))
        return out
    u = _im2col(a, h, w)  # (n, cc q^2, P)
    return torch.bmm(g.reshape(n, k * rows, h * w), u.transpose(1, 2)).view(n, k, -1)


def _jacobian_conv_task(a1, g1, a2, g2, q, full, same, c0, c1, r0, r1):
    j1 = _per_sample(g1[:, :, r0:r1], a1[:, c0:c1], q)
    j2 = j1 if same else _per_sample(g2[:, :, r0:r1], a2[:, c0:c1], q)
    return None, _kernel_of(j1, j2, full, same)


def _jacobian_conv(a1, g1, a2, g2, q: int, full: bool, same: bool, scratch: int, threads: int) -> list:
    """Tasks: chunks (input channels x weight rows) of the per-sample weight gradients and their kernel."""
    n1, k, m, h, w = g1.shape
    c, item = a1.shape[1], a1.element_size()
    ne = n1 if same else n1 + len(a2)
    batched = not _onednn(g1)  # the bmm route keeps every sample's im2col of the chunk
    per_row = ne * q * q * item * k  # bytes of one weight entry (row, channel) of J over all samples
    per_channel = m * per_row + (ne * q * q * h * w * item if batched else 0)
    cc = int(min(-(-c // threads), max(1, scratch // per_channel)))  # >= `threads` tasks per layer
    rows = m if scratch >= per_channel else int(min(m, max(1, scratch // per_row)))
    return [partial(_jacobian_conv_task, a1, g1, a2, g2, q, full, same, c0, c0 + cc, r0, r0 + rows)
            for c0 in range(0, c, cc) for r0 in range(0, m, rows)]


def _jacobian_fc_task(a1, g1, a2, g2, full, same, c0, c1):
    j1 = (g1[:, :, :, None] * a1[:, None, None, c0:c1]).reshape(len(a1), g1.shape[1], -1)
    j2 = j1 if same else (g2[:, :, :, None] * a2[:, None, None, c0:c1]).reshape(len(a2), g2.shape[1], -1)
    return None, _kernel_of(j1, j2, full, same)


def _jacobian_fc(a1, g1, a2, g2, full: bool, same: bool, scratch: int) -> list:
    n1, k, m = g1.shape
    c, item = a1.shape[1], a1.element_size()
    ne = n1 if same else n1 + len(a2)
    cc = int(min(c, max(1, scratch // (ne * k * m * item))))
    return [partial(_jacobian_fc_task, a1, g1, a2, g2, full, same, c0, c0 + cc) for c0 in range(0, c, cc)]


def _patch_trace(t: torch.Tensor, q: int) -> torch.Tensor:
    """T(t)[(i,j),(i',j')] = sum_{|s|,|u| <= q//2} t[(i+s,j+u),(i'+s,j'+u)], zero outside; t: (b1, H, W, b2, H, W).
    Separable: the shifts along rows, then along columns."""
    r = q // 2
    out = t
    for d1, d2 in ((1, 4), (2, 5)):
        size = out.shape[d1]
        res = out.clone()
        for s in range(-r, r + 1):
            lo, hi = max(0, -s), size - max(0, s)
            if s == 0 or hi <= lo:
                continue
            src = out.narrow(d1, lo + s, hi - lo).narrow(d2, lo + s, hi - lo)
            res.narrow(d1, lo, hi - lo).narrow(d2, lo, hi - lo).add_(src)
        out = res
    return out


def _gram_conv_task(a1, g1, a2, g2, hw, q, full, i0, i1, j0, j1):
    k, _, p, m = g1.shape
    c = a1.shape[2]
    h, w = hw
    bi, bj = i1 - i0, j1 - j0
    act = _mm_nt(a1[i0:i1].reshape(-1, c), a2[j0:j1].reshape(-1, c)).view(bi, h, w, bj, h, w)
    act = _patch_trace(act, q).view(bi, p, bj, p)
    out = act.new_empty((bi, k, bj, k) if full else (k, bi, bj))
    for kk in range(k):
        for ll in range(k) if full else (kk,):
            val = _mm_nt(g1[kk, i0:i1].reshape(-1, m), g2[ll, j0:j1].reshape(-1, m)).view(bi, p, bj, p)
            val = val.mul_(act).sum((1, 3))
            if full:
                out[:, kk, :, ll] = val
            else:
                out[kk] = val
    return ("block", i0, i1, j0, j1), out


def _gram_conv(a1, g1, a2, g2, hw: tuple[int, int], q: int, full: bool, same: bool, scratch: int) -> list:
    """Tasks: blocks of pairs of sum_{p,p'} <g_p, g'_p'> T(<a_p, a'_p'>); a (n, P, c) channels-last, g (K, n, P, m)."""
    k, n1, p, m = g1.shape
    n2, item = len(a2), a1.element_size()
    b = max(1, math.isqrt(max(1, scratch // (4 * p * p * item))))  # four P x P buffers per pair
    if same:  # upper blocks only: at least _N_GRAM_SYM_BLOCKS blocks a side
        b = min(b, -(-n1 // min(n1, _N_GRAM_SYM_BLOCKS)))
    b1, b2 = min(n1, b), min(n2, b)
    tasks = []
    for i0 in range(0, n1, b1):
        for j0 in range(i0 if same else 0, n2, b2):
            tasks.append(partial(_gram_conv_task, a1, g1, a2, g2, hw, q, full, i0, min(n1, i0 + b1), j0, min(n2, j0 + b2)))
    return tasks


def _gram_fc_task(a1, g1, a2, g2, full):
    k = g1.shape[1]
    act = _mm_nt(a1, a2)
    acc = act.new_zeros((len(a1) * k, len(a2) * k) if full else (k, len(a1), len(a2)), dtype=torch.float64)
    full_view = acc.view(len(a1), k, len(a2), k) if full else None
    for kk in range(k):
        for ll in range(k) if full else (kk,):
            val = _mm_nt(g1[:, kk], g2[:, ll]) * act
            if full:
                full_view[:, kk, :, ll] = val
            else:
                acc[kk] = val
    return None, acc


def _readout_task(f1, f2):
    acc = f1.new_zeros(len(f1), len(f2), dtype=torch.float64)
    _add_nt(acc, f1, f2, False, 1)
    return "readout", acc


def _mirror(out: torch.Tensor) -> torch.Tensor:
    """(n, n, K[, K]) whose entries i <= j are complete -> the exactly symmetric kernel."""
    n = out.shape[0]
    full = out.ndim == 4
    swapped = out.transpose(0, 1).transpose(2, 3) if full else out.transpose(0, 1)
    upper = torch.ones(n, n, dtype=torch.bool, device=out.device).triu()
    res = torch.where(upper.view(n, n, *([1] * (out.ndim - 2))), out, swapped)
    if full:
        idx = torch.arange(n, device=out.device)
        d = res[idx, idx]
        res[idx, idx] = (d + d.transpose(1, 2)) / 2
    return res


def _contract(model: FiniteNet, plan: _Plan, fa: _Store, fb: _Store, shape, same: bool, full: bool, scratch: int,
              threads: int) -> torch.Tensor:
    """Kernel block (n1, n2, K[, K]) of two feature stores (exactly symmetric when `same`)."""
    ref = fa.feats if fa.feats is not None else fa.a[0]
    n1 = len(ref)
    n2 = len(fb.feats if fb.feats is not None else fb.a[0])
    k = model.out_dim
    q = model.arch.filter_size
    cnn = model.arch.family == "cnn"
    share = max(1, scratch // threads)  # tasks in flight at once
    tasks = []
    for i, gram in enumerate(plan.gram):
        a1, g1, a2, g2 = fa.a[i], fa.g[i], fb.a[i], fb.g[i]
        if not cnn:
            tasks += [partial(_gram_fc_task, a1, g1, a2, g2, full)] if gram else _jacobian_fc(a1, g1, a2, g2, full, same, share)
        elif gram:
            tasks += _gram_conv(a1, g1, a2, g2, shape[1:], q, full, same, share)
        else:
            tasks += _jacobian_conv(a1, g1, a2, g2, q, full, same, share, threads)
    if plan.readout:
        tasks.append(partial(_readout_task, fa.feats, fb.feats))
    acc = ref.new_zeros((n1 * k, n2 * k) if full else (k, n1, n2), dtype=torch.float64)
    full_view = acc.view(n1, k, n2, k) if full else None
    for where, val in _run(tasks, threads):
        if where is None:
            acc += val
        elif where == "readout":
            if full:
                full_view.diagonal(dim1=1, dim2=3).add_(val[:, :, None])
            else:
                acc += val[None]
        else:
            _, i0, i1, j0, j1 = where
            if full:
                full_view[i0:i1, :, j0:j1, :] += val
            else:
                acc[:, i0:i1, j0:j1] += val
    out = full_view.permute(0, 2, 1, 3) if full else acc.permute(1, 2, 0)
    return _mirror(out) if same else out


def _structured(model: FiniteNet, x1, x2, full: bool, contraction: str, budget: int) -> torch.Tensor:
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2, k = len(x1), len(xb), model.out_dim
    shape = tuple(x1.shape[1:])
    item = x1.element_size()
    plan = _plan(model, shape, n1, n2, symmetric, full, contraction)
    out = torch.zeros((n1, n2, k, k) if full else (n1, n2, k), dtype=x1.dtype, device=x1.device)
    if not plan.layers and not plan.readout:
        return out
    threads = (_TASK_THREADS or torch.get_num_threads()) if x1.device.type == "cpu" else 1
    stored = max(1, _stored_bytes(model, plan, shape, item))
    scratch = max(1, min(budget // 4, SCRATCH_CAP))
    # samples per forward/backward pass: `threads` passes in flight, and at least `threads` of them
    chunk = max(1, int(scratch // threads // _transient_bytes(model, plan, shape, item)))
    chunk = min(chunk, max(1, -(-max(n1, n2) // threads)))
    room = max(0, budget - scratch)
    if (n1 if symmetric else n1 + n2) * stored <= room:
        block = max(n1, n2)  # every feature computed once and kept: per-sample work linear in N
    else:  # blocks of x1 against blocks of x2; x2's features are recomputed for every block of x1
        block = max(1, int(room // (2 * stored)))
    torch_threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)  # one thread per op, `threads` tasks at once (see _run)
    try:
        fixed = None  # x2's features when x2 fits in one block: computed once for every block of x1
        for i in range(0, n1, block):
            fa = _features(model, plan, x1[i : i + block], chunk, threads)
            ia = slice(i, i + block)
            for j in range(i if symmetric else 0, n2, block):
                same = symmetric and i == j
                if same:
                    fb = fa
                elif block >= n2:  # x2 in one block: computed once
                    if fixed is None:
                        fixed = _features(model, plan, xb, chunk, threads)
                    fb = fixed
                else:
                    fb = _features(model, plan, xb[j : j + block], chunk, threads)
                blk = _contract(model, plan, fa, fb, shape, same, full, scratch, threads)
                jb = slice(j, j + block)
                out[ia, jb] = blk
                if symmetric and not same:
                    out[jb, ia] = blk.transpose(0, 1).transpose(2, 3) if full else blk.transpose(0, 1)
                del fb, blk
            del fa
    finally:
        if threads > 1:
            torch.set_num_threads(torch_threads)
    return out


# ---------------------------------------------------------------------------------------------
# generic method


def _jacrev(model: nn.Module, x1, x2, full: bool, budget: int) -> torch.Tensor:
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    with torch.no_grad():
        k = model(x1[:1]).reshape(1, -1).shape[1]
    n1, n2 = len(x1), len(xb)
    out = torch.zeros((n1, n2, k, k) if full else (n1, n2, k), dtype=x1.dtype, device=x1.device)
    if not trainable:
        return out
    item = x1.element_size()
    # groups of parameters whose per-sample Jacobian fits in a quarter of the budget
    groups: list[list[str]] = [[]]
    size = 0
    for name, p in trainable.items():
        if groups[-1] and (size + p.numel()) * k * item > budget // 4:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += p.numel()
    for group in groups:
        numel = sum(trainable[n].numel() for n in group)
        chunk = max(1, int(budget // 4 // (numel * k * item)))
        rest = {n: p for n, p in trainable.items() if n not in group}

        def f(params, x, rest=rest):
            y = torch.func.functional_call(model, {**params, **rest, **fixed}, (x[None],))
            return y.reshape(-1)

        jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))
        pg = {n: trainable[n] for n in group}

        def flat(x):  # (K, n, numel)
            j = jac(pg, x)
            return torch.cat([j[n].reshape(len(x), k, -1) for n in group], dim=2).transpose(0, 1)

        cache_ok = n2 * numel * k * item <= budget // 4
        cache: dict[int, torch.Tensor] = {}
        for i in range(0, n1, chunk):
            ja = flat(x1[i : i + chunk])
            if symmetric and cache_ok:
                cache[i] = ja
            for j in range(i if symmetric else 0, n2, chunk):
                if symmetric and i == j:
                    jb = ja
                elif j in cache:
                    jb = cache[j]
                else:
                    jb = flat(xb[j : j + chunk])
                    if cache_ok:
                        cache[j] = jb
                if full:
                    blk = torch.einsum("kid,ljd->ijkl", ja, jb)
                else:
                    blk = torch.bmm(ja, jb.transpose(1, 2)).permute(1, 2, 0)
                out[i : i + chunk, j : j + chunk] += blk
                if symmetric and i != j:
                    out[j : j + chunk, i : i + chunk] += blk.transpose(0, 1).transpose(2, 3) if full else blk.transpose(0, 1)
    return out


# ---------------------------------------------------------------------------------------------
# public


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
