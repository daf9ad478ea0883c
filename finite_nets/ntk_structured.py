"""The structured empirical NTK of a ``FiniteNet``: one batched forward pass and one backward pass
(written out layer by layer: conv2d forward, conv_transpose2d backward, ReLU masks; K outputs ride in
the batch, no vmap, one cotangent per output) give every trainable layer's scaled input a_l and output
cotangent g_l = df/dh_l.  Nothing goes through autograd.  A layer h = conv(a, W) contributes
sum_{p,p'} <g(x)_p, g(x')_p'> <patch(a(x))_p, patch(a(x'))_p'>, evaluated per layer as the cheaper (by
a flop count, ``ntk_plan._plan``) of two exact contractions (``ntk_contract``):

``"jacobian"``: per-sample weight gradients J_n = g_n (K m x P) @ im2col(a_n)^T (P x c q^2), one large
matrix product per sample, chunked over input channels (and weight rows when needed), then the kernel
J1 @ J2^T of the flattened (N, D) gradients, chunk by chunk of D: 2 N K m c q^2 P flops per layer for
the gradients + 2 N1 N2 K m c q^2 for the kernel (about 5/8 of that for a symmetric kernel of >= 128
samples: only the upper blocks are multiplied).
``"gram"``: P x P Gram matrices of g and of a (as (N P, m) @ (m, N P) products, channels-last), the
latter patch-traced (separably: rows, then columns), then one elementwise product and sum:
2 N1 N2 P^2 (c + K m) flops (10/16 of that for a symmetric kernel: upper pair blocks only)
+ O(N1 N2 P^2) memory passes.  Gram wins for wide nets on small images (8x8 at width >= ~512), the
Jacobian otherwise.

Layouts: activations are stored zero-padded NCHW for the Jacobian layers (im2col per sample is one
strided copy that stays in cache), channels-last (N, P, c) for the Gram layers; cotangents
(N, K, m, H, W) and (K, N, P, m) respectively.  With K = 1 there is one backward pass with ones,
nothing vmapped.

Execution (CPU): the forward/backward passes of sample chunks and the contraction chunks are
independent tasks, run on torch.get_num_threads() Python threads with every op single-threaded and
the results summed in task order (reproducible bit for bit).  On a shared CPU this matters: with
OpenMP teams a preempted thread stalls its partner at every barrier (3x slower measured with one
other 2-thread job on 2 cores); independent tasks only slow down by the CPU share lost.  CUDA runs
the same tasks in order on its stream.

Memory: the budget bounds the working memory beyond the weights.  A scratch share (a quarter of it,
at most ``SCRATCH_CAP``: larger chunks are no faster) holds the contraction's chunks and the
forward/backward pass of a chunk of samples; the rest holds the features.  When the features of all
inputs fit they are computed once, so the per-sample work (forward, backward, per-sample gradients)
grows linearly in N; only when they do not fit do x1 and x2 go in blocks, x2's features being
recomputed for every block of x1.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F

from finite_nets.ntk_contract import _gram_conv, _gram_fc_task, _jacobian_conv, _jacobian_fc, _mirror, _readout_task
from finite_nets.ntk_plan import _allocate, _Plan, _plan, _Store, _stored_bytes, _transient_bytes
from finite_nets.paper_net import FiniteNet

SCRATCH_CAP = 256 * 2**20  # bytes: contraction chunks and the forward/backward passes in flight
_TASK_THREADS: int | None = None  # CPU tasks at once (None: torch.get_num_threads()); 1: OpenMP inside each op


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
