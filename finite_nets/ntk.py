"""Empirical NTK Theta(x, x')_{k k'} = sum over trainable parameters of df_k(x)/dtheta . df_k'(x')/dtheta.

Two exact methods, both bounded in memory by ``memory_mb`` (chunks over samples, pairs and
weight rows; never the full Jacobian of the data set):

- ``"structured"`` (FiniteNet only): one forward pass and one backward pass (torch.func.vjp,
  vmapped over outputs) per chunk of samples give every layer's scaled input a_l and output
  cotangent g_l = df/dh_l.  A layer h = conv(a, W) contributes
  sum_{p,p'} <g(x)_p, g(x')_p'> <patch(a(x))_p, patch(a(x'))_p'>, evaluated per layer and block as
  the cheaper (by a flop count) of two exact contractions:
  ``"gram"``: P x P Gram matrices of g and of a, the latter patch-traced: O(P^2 (m + c)) per pair;
  ``"jacobian"``: per-sample weight gradients g @ unfold(a)^T, then their dot products:
  O(m c q^2 P) per sample + O(m c q^2) per pair.
  Gram wins for wide nets on small images (8x8, width >= ~1000), the Jacobian otherwise.
  No weight gradient ever goes through autograd.
- ``"jacrev"`` (any nn.Module): torch.func.vmap(jacrev(functional_call)) per chunk of samples and
  group of parameters, then dot products.  The generic fallback.

Memory (structured): when the features of all inputs fit in memory_mb / 2 they are computed once
(in chunks) and kept; otherwise x1 goes in blocks and x2's features are recomputed per block.
Inside a layer the Jacobian contraction is chunked over weight rows (and over samples for the
unfolded patches), the Gram contraction over pairs.  Working memory is thus O(memory_mb) beyond
the weights, whatever N, width or image size.  Cost: for exact empirical NTKs the floor is about
one forward and two backward passes over the data plus the contraction; the structured method
does exactly that, batched, with the symmetric contraction halved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import FiniteNet

METHODS = ("auto", "structured", "jacrev")
CONTRACTIONS = ("auto", "gram", "jacobian")
OUTPUTS = ("auto", "per_output", "full")


# ---------------------------------------------------------------------------------------------
# structured method


@dataclass
class _Features:
    """Per chunk of n samples: for each trainable layer its scaled input (n, c, H, W) / (n, c)
    and its output cotangents (K, n, m, H, W) / (K, n, m); the readout input (n, F) or None."""

    inputs: list[torch.Tensor]
    cotangents: list[torch.Tensor]
    readout: torch.Tensor | None


def _features(model: FiniteNet, x: torch.Tensor) -> _Features:
    weights = [w.detach() for w in model.weights]
    readout = model.readout.detach()
    layers = [i for i, w in enumerate(model.weights) if w.requires_grad]
    n, k = len(x), model.out_dim
    shape = (n, model.width, *x.shape[2:])
    zeros = tuple(torch.zeros(shape, dtype=x.dtype, device=x.device) for _ in layers)

    def fn(*eps: torch.Tensor):
        out, inputs, feats = model.propagate(x, weights, readout, dict(zip(layers, eps)))
        return out, ([inputs[i] for i in layers], feats)

    if layers:
        _, vjp_fn, (inputs, feats) = torch.func.vjp(fn, *zeros, has_aux=True)
        basis = torch.eye(k, dtype=x.dtype, device=x.device)[:, None, :].expand(k, n, k)
        cots = list(torch.func.vmap(vjp_fn)(basis)) if k > 1 else [c[None] for c in vjp_fn(basis[0])]
    else:
        _, _, feats = model.propagate(x, weights, readout)
        inputs, cots = [], []
    return _Features(list(inputs), cots, feats if model.readout.requires_grad else None)


def _feature_bytes(model: FiniteNet, sample_shape: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """(stored, transient) bytes per sample: the features kept for the contraction, and the extra
    working memory of the forward/backward pass that produces them (saved activations, vmapped
    cotangents)."""
    p = 1
    for s in sample_shape[1:]:
        p *= s
    m, k, c0 = model.width, model.out_dim, sample_shape[0]
    n_layers = len(model.weights)
    feat = m if model.arch.family == "fc" or model.arch.readout == "gap" else m * p
    stored = c0 * p + (n_layers - 1) * m * p + n_layers * k * m * p + feat
    transient = n_layers * (3 + k) * m * p
    return itemsize * stored, itemsize * transient


def _concat(parts: list[_Features]) -> _Features:
    if len(parts) == 1:
        return parts[0]
    return _Features(
        [torch.cat(t, 0) for t in zip(*(f.inputs for f in parts))],
        [torch.cat(t, 1) for t in zip(*(f.cotangents for f in parts))],
        None if parts[0].readout is None else torch.cat([f.readout for f in parts], 0),
    )


def _patch_trace(t: torch.Tensor, q: int) -> torch.Tensor:
    """T(t)[(i,j),(i',j')] = sum_{|s|,|u| <= q//2} t[(i+s,j+u),(i'+s,j'+u)], zero outside; t: (b1, H, W, b2, H, W)."""
    r = q // 2
    h, w = t.shape[1], t.shape[2]
    out = t.clone()
    for s in range(-r, r + 1):
        for u in range(-r, r + 1):
            i0, i1, j0, j1 = max(0, -s), h - max(0, s), max(0, -u), w - max(0, u)
            if (s == 0 and u == 0) or i1 <= i0 or j1 <= j0:
                continue
            out[:, i0:i1, j0:j1, :, i0:i1, j0:j1] += t[:, i0 + s : i1 + s, j0 + u : j1 + u, :, i0 + s : i1 + s, j0 + u : j1 + u]
    return out


def _pixel_gram(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u: (n1, c, H, W), v: (n2, c, H, W) -> (n1, H, W, n2, H, W) of sum_c u[i, c, p] v[j, c, p']."""
    n1, c, h, w = u.shape
    n2 = v.shape[0]
    uu = u.permute(0, 2, 3, 1).reshape(n1 * h * w, c)
    vv = v.permute(0, 2, 3, 1).reshape(n2 * h * w, c)
    return (uu @ vv.T).view(n1, h, w, n2, h, w)


def _gram_layer(a1, g1, a2, g2, q: int, full: bool, budget: int) -> torch.Tensor:
    """Layer contribution via Gram matrices; returns (n1, n2, K) or (n1, n2, K, K)."""
    k, n1, n2 = g1.shape[0], len(a1), len(a2)
    if a1.ndim == 2:  # fully connected: <g, g'> <a, a'>
        act = a1 @ a2.T
        if full:
            return torch.einsum("kim,ljm->ijkl", g1, g2) * act[:, :, None, None]
        return torch.einsum("kim,kjm->ijk", g1, g2) * act[:, :, None]
    p = a1.shape[2] * a1.shape[3]
    out = a1.new_zeros((n1, n2, k, k) if full else (n1, n2, k))
    pairs = max(1, budget // (4 * p * p * a1.element_size()))  # four P x P buffers per pair
    b2 = min(n2, pairs)
    b1 = max(1, min(n1, pairs // b2))
    for i in range(0, n1, b1):
        for j in range(0, n2, b2):
            act = _patch_trace(_pixel_gram(a1[i : i + b1], a2[j : j + b2]), q)
            for kk in range(k):
                for ll in range(k) if full else (kk,):
                    val = (_pixel_gram(g1[kk, i : i + b1], g2[ll, j : j + b2]) * act).sum((1, 2, 4, 5))
                    if full:
                        out[i : i + b1, j : j + b2, kk, ll] = val
                    else:
                        out[i : i + b1, j : j + b2, kk] = val
    return out


def _sym_gram(j: torch.Tensor) -> torch.Tensor:
    """j: (K, n, D) -> (n, n, K) of j_k j_k^T, computing only the upper blocks (about 5/8 of the work)."""
    k, n, _ = j.shape
    out = j.new_empty(n, n, k)
    step = max(1, -(-n // 4))
    for a in range(0, n, step):
        for b in range(a, n, step):
            blk = torch.bmm(j[:, a : a + step], j[:, b : b + step].transpose(1, 2)).permute(1, 2, 0)
            out[a : a + step, b : b + step] = blk
            if b != a:
                out[b : b + step, a : a + step] = blk.transpose(0, 1)
    return out


def _jacobian_layer(a1, g1, a2, g2, q: int, full: bool, budget: int, same: bool) -> torch.Tensor:
    """Layer contribution via per-sample weight gradients g @ unfold(a)^T, chunked over weight rows
    (and over samples for the unfolded patches when those do not fit)."""
    k, n1, n2, m = g1.shape[0], len(a1), len(a2), g1.shape[2]
    item = a1.element_size()
    cnn = a1.ndim == 4

    def patches(a):  # (n, c q^2, P), or (n, c, 1) for fc
        return F.unfold(a, q, padding=q // 2) if cnn else a[:, :, None]

    cols = a1.shape[1] * (q * q if cnn else 1)
    p = a1.shape[2] * a1.shape[3] if cnn else 1
    samples = n1 if same else n1 + n2
    keep = samples * cols * p * item <= budget // 4
    u1 = patches(a1) if keep else None
    u2 = u1 if same else (patches(a2) if keep else None)
    sub = max(1, budget // 4 // (cols * p * item))  # samples per unfold when not kept
    rows = max(1, min(m, budget // 2 // (samples * k * cols * item)))

    def jac(g, a, u, r):  # (K, n, rows * cols)
        n = len(a)
        if u is not None:
            return (g[:, :, r : r + rows].reshape(k, n, -1, p) @ u.transpose(1, 2)[None]).reshape(k, n, -1)
        parts = []
        for s in range(0, n, sub):
            us = patches(a[s : s + sub])
            gs = g[:, s : s + sub, r : r + rows].reshape(k, len(us), -1, p)
            parts.append((gs @ us.transpose(1, 2)[None]).reshape(k, len(us), -1))
        return torch.cat(parts, 1)

    out = a1.new_zeros((n1, n2, k, k) if full else (n1, n2, k))
    for r in range(0, m, rows):
        j1 = jac(g1, a1, u1, r)
        j2 = j1 if same else jac(g2, a2, u2, r)
        if full:
            out += torch.einsum("kid,ljd->ijkl", j1, j2)
        elif same:
            out += _sym_gram(j1)
        else:
            out += torch.bmm(j1, j2.transpose(1, 2)).permute(1, 2, 0)
    return out


def _layer_costs(n1: int, n2: int, a: torch.Tensor, g: torch.Tensor, q: int, full: bool, same: bool) -> tuple[float, float]:
    """Multiply-adds of the gram and jacobian contractions for one layer and block."""
    k, m, c = g.shape[0], g.shape[2], a.shape[1]
    p = a.shape[2] * a.shape[3] if a.ndim == 4 else 1
    q2 = q * q if a.ndim == 4 else 1
    kp = k * k if full else k
    pairs = n1 * n2
    gram = pairs * p * p * (c + kp * m + q2)
    jac = (n1 if same else n1 + n2) * k * m * c * q2 * p + pairs * kp * m * c * q2
    return float(gram), float(jac)


def _contract(model: FiniteNet, fa: _Features, fb: _Features, same: bool, full: bool, contraction: str, budget: int):
    n1 = len(fa.inputs[0]) if fa.inputs else len(fa.readout)
    n2 = len(fb.inputs[0]) if fb.inputs else len(fb.readout)
    k = model.out_dim
    q = model.arch.filter_size
    dtype = fa.readout.dtype if fa.readout is not None else fa.inputs[0].dtype
    device = fa.readout.device if fa.readout is not None else fa.inputs[0].device
    out = torch.zeros((n1, n2, k, k) if full else (n1, n2, k), dtype=dtype, device=device)
    for a1, g1, a2, g2 in zip(fa.inputs, fa.cotangents, fb.inputs, fb.cotangents):
        method = contraction
        if method == "auto":
            gram, jac = _layer_costs(n1, n2, a1, g1, q, full, same)
            method = "gram" if gram <= jac else "jacobian"
        if method == "gram":
            out += _gram_layer(a1, g1, a2, g2, q, full, budget)
        else:
            out += _jacobian_layer(a1, g1, a2, g2, q, full, budget, same)
    if fa.readout is not None:
        r = fa.readout @ fb.readout.T
        if full:
            out.diagonal(dim1=2, dim2=3).add_(r[:, :, None])
        else:
            out += r[:, :, None]
    return out


def _structured(model: FiniteNet, x1, x2, full: bool, contraction: str, budget: int) -> torch.Tensor:
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2, k = len(x1), len(xb), model.out_dim
    stored, transient = _feature_bytes(model, tuple(x1.shape[1:]), x1.element_size())
    chunk = max(1, int(budget // 4 // (stored + transient)))  # samples per forward/backward pass

    def features(x: torch.Tensor) -> _Features:
        return _concat([_features(model, x[i : i + chunk]) for i in range(0, len(x), chunk)])

    if (n1 if symmetric else n1 + n2) * stored <= budget // 2:
        block = max(n1, n2)  # every feature computed once and kept
    else:  # blocks of x1 against blocks of x2; x2's features are recomputed for every block of x1
        block = max(1, int(budget // 4 // stored))
    out = torch.zeros((n1, n2, k, k) if full else (n1, n2, k), dtype=x1.dtype, device=x1.device)
    for i in range(0, n1, block):
        fa = features(x1[i : i + block])
        ia = slice(i, i + block)
        for j in range(i if symmetric else 0, n2, block):
            same = symmetric and i == j
            fb = fa if same else features(xb[j : j + block])
            blk = _contract(model, fa, fb, same, full, contraction, budget)
            jb = slice(j, j + block)
            swapped = blk.transpose(0, 1).transpose(2, 3) if full else blk.transpose(0, 1)
            if same:
                out[ia, jb] = (blk + swapped) / 2  # exact symmetry; the halves differ by rounding only
            else:
                out[ia, jb] = blk
                if symmetric:
                    out[jb, ia] = swapped
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
    memory_mb: float = 1024.0,
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
    memory_mb: working-memory budget (MiB) for features and contractions, beyond the model itself.
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
    if not memory_mb > 0:
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
    budget = int(memory_mb * 2**20)
    if len(x1) == 0 or (x2 is not None and len(x2) == 0):
        k = model.out_dim if structured else 1
        shape = (len(x1), len(x1) if x2 is None else len(x2), *((k, k) if full else (k,)))
        theta = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    elif structured and method != "jacrev":
        theta = _structured(model, x1, x2, full, contraction, budget)
    else:
        theta = _jacrev(model, x1, x2, full, budget)
    if outputs == "auto" and theta.shape[2] == 1:
        theta = theta[:, :, 0]
    return theta.to(out_device)


def largest_eigenvalue(model: nn.Module, x: torch.Tensor, *, memory_mb: float = 1024.0) -> float:
    """lambda_max of the full empirical NTK on x: the (N K) x (N K) matrix over samples and outputs,
    the operator that drives full-batch GD on the squared loss (stable for lr < 2 / lambda_max)."""
    theta = empirical_ntk(model, x, outputs="full", memory_mb=memory_mb)
    n, k = theta.shape[0], theta.shape[2]
    mat = theta.permute(0, 2, 1, 3).reshape(n * k, n * k).to(torch.float64)
    return float(torch.linalg.eigvalsh(mat)[-1])
