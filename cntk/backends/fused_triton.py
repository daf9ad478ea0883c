"""Fused Triton backend ("triton"): the whole L-layer recursion of one (pair, offset fold) in one program.

Semantics are those of ``cntk.backends.planes`` (docs/conventions.md, "Offset planes"):
the patch trace never mixes entries of different spatial offset, so the P x P recursion splits into
independent planes; CNTK-V needs the zero-offset plane only, CNTK-GAP sums all of them / P^2.

Folds.  Pair the x pixel (u, v) with the y pixel ((u + f_h) mod H, (v + f_w) mod W): for a fixed
fold (f_h, f_w) in [0, H) x [0, W) this is an H x W array that holds the four offset planes
(f_h or f_h - H) x (f_w or f_w - W) side by side, and the H * W folds together hold every one of
the P^2 pixel pairs exactly once.  The patch trace on a fold is a q x q box sum in which a
neighbour (u + s, v + t) counts only when both its x pixel and its y pixel are inside the image
(exactly the zero padding of the definition), which also keeps the four planes of a fold apart.
So a fold is an (H, W) block with no wasted entries: CNTK-GAP does P^2 entry updates per layer
and pair, the minimum, and CNTK-V uses fold (0, 0) alone.

Programs.  A persistent grid (as many programs as fit on the SMs, from the compiled kernel's
register count) loops over work items: (pair, group of fold blocks).  A fold block is FB folds
held as an (FB, BH, BW) tensor (BH, BW the next powers of two of H, W; FB = 1 for 32 x 32 images,
16 for 8 x 8: about 1024 entries), and the program keeps its Sigma and Theta in registers for
all L layers.  The box sum goes through a small per-program scratch area in global memory
(2 x 4 x FB x BH x BW numbers, 32 KiB for 32 x 32 float32, rewritten every layer so it stays in
L1/L2): store, barrier, q - 1 shifted masked loads along columns, store, barrier, q - 1 shifted
loads along rows; consecutive box sums alternate between the two halves, so two barriers per box
sum suffice.  Per-image sqrt-diagonals come from ``planes.prepare``.  Each item writes one
float64 partial sum; a torch sum over the pair's partials gives the kernel value (deterministic,
no atomics; without pools no P^2 intermediate in main memory: it holds only the inputs, the
(N, L, H, W) statistics, the partials and the scratch; pools: see below).  symmetric / ntk / fix
are runtime flags, so one compiled kernel serves every depth of a given image shape, filter size
and dtype.

Precision.  The ReLU step is that of ``cntk.arccos`` with pi - arccos(rho) computed as
arccos(-rho) by an in-kernel arccos (Triton's interpreter has no libdevice): asin on [0, 1/2] by
a polynomial fitted for each dtype (relative error 1e-9 for float32, 5e-18 for float64), with
acos(x) = 2 asin(sqrt((1 - |x|) / 2)) for |x| > 1/2.  Self pairs use rho = 1 exactly on their
zero-offset fold.  Zero variance gives K = Kdot = 0.

Pools (docs/triton_pooling.md).  A chain with k x k average pools after activations (Myrtle) runs
as one launch per stage (``Chain.stages``), over the same batch of pairs: 3 for Myrtle-5/7/10,
one more when a pool comes right before the readout (a stage with no activation, which reads
the pooled planes out as they are).  A stage's programs hold FB folds of that stage, as above;
stage s holds only the folds of its window of offsets |d| <= m_s (``planes.windows``: every offset
for GAP, for the flatten readout the k m_{s+1} + k - 1 that the next stage gathers), fold indices
0..2m mapped onto folds 0..m and H - m..H - 1.  A stage that is not the last stores its last
activation's K and Kdot Theta + K planes (K alone for NNGP) in a global buffer, laid out
[pair][K | T][fold index][u][v]; the next stage's programs start by gathering, for each of their
entries, the k^4 source entries of its pixel pair ((2k - 1)^2 source planes per output plane)
from that buffer, dividing by k^4, and box-summing (``_pool_gather``).  Gather rather than an
atomic scatter into a pooled buffer: each output entry is written once, by one program, in a
fixed order (deterministic, no zeroing pass, no float64 atomics), at the cost of a buffer of
unpooled planes: 2 n_folds_s h_s w_s numbers per pair for each stage but the last, and a launch
holds two consecutive ones (Myrtle on 32 x 32: 8.5 MiB per pair in float32, 17 MiB in float64,
``bytes_per_pair``; pairs per launch follow ``memory_mb``).  Per-image diagonals come from
``planes.self_stds`` (the self pairs' own windowed recursion, O(N)), stage s in the top-left
h_s x w_s corner of (N, L, H, W); self pairs use rho = 1 on fold index 0 (the zero plane) of every
stage.  POOL (the k that feeds the stage, 1: the inputs) and WRITE are constexprs, so the
unpooled kernel carries no pooling code.

Networks: the paper's own family (``Chain.paper_family``: ReLU, c_sigma = 2, no bias, all layers
trained or the paper's fix), with or without average pools after activations; others go to the
CPU backends (``supports``).

Availability: importing needs triton (ImportError otherwise, handled by ``cntk.api``); CUDA
devices are supported, and CPU tensors only when TRITON_INTERPRET=1 (Triton's interpreter, for
tests).  The mode is read when a kernel is launched, not when this module is imported.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types

import torch
import triton
import triton.language as tl

from cntk.backends import planes
from cntk.backends.chain import Chain, chain
from cntk.network import Network

__all__ = ["prepare", "tile", "supports", "bytes_per_pair"]
NAME = "triton"
PRIORITY = 40
AUTO_DEVICES = ("cuda",)  # "auto" never picks the CPU interpreter (a test tool)

# asin(s) = s + s z P(z), z = s^2, s in [0, 1/2]; P fitted (Chebyshev nodes, 50-digit arithmetic)
# to a relative error of 1.0e-9 (degree 5, float32) and 5.1e-18 (degree 12, float64) in asin.
_P32 = [
    0.16666666337430908, 0.07500094543497424, 0.04459940152851218,
    0.03110066273549457, 0.017149238357677253, 0.03369084720283012,
]
_P64 = [
    0.16666666666666669, 0.07499999999998433, 0.04464285714635543, 0.030381944138531247,
    0.02237217294214989, 0.017352392720869973, 0.013971212973552933, 0.011479177415184906,
    0.01032281435018578, 0.005457506718640358, 0.01740087944269402, -0.014851887071247204,
    0.028757851367421566,
]
PI = tl.constexpr(math.pi)
HALF_PI = tl.constexpr(math.pi / 2)
A0 = tl.constexpr(_P64[0])
A1 = tl.constexpr(_P64[1])
A2 = tl.constexpr(_P64[2])
A3 = tl.constexpr(_P64[3])
A4 = tl.constexpr(_P64[4])
A5 = tl.constexpr(_P64[5])
A6 = tl.constexpr(_P64[6])
A7 = tl.constexpr(_P64[7])
A8 = tl.constexpr(_P64[8])
A9 = tl.constexpr(_P64[9])
A10 = tl.constexpr(_P64[10])
A11 = tl.constexpr(_P64[11])
A12 = tl.constexpr(_P64[12])
B0 = tl.constexpr(_P32[0])
B1 = tl.constexpr(_P32[1])
B2 = tl.constexpr(_P32[2])
B3 = tl.constexpr(_P32[3])
B4 = tl.constexpr(_P32[4])
B5 = tl.constexpr(_P32[5])

# Tuning knobs (read at launch): programs per SM of the persistent grid, warps per program.
_ENV_PROGRAMS = "CNTK_TRITON_PROGRAMS_PER_SM"
_ENV_WARPS = "CNTK_TRITON_NUM_WARPS"
# float32 division and square root: the GPU's fast ones (2 ulp; default) or IEEE-rounded ones ("1").
# Simulated 2-ulp errors in rho, sin and arccos keep every entry within 1.3e-6 of float64 at
# depth 21 (against 7.6e-7 with exact rounding), so the fast ones are the default.
_ENV_IEEE = "CNTK_TRITON_IEEE"
# work items per program of the persistent grid (load balance against the number of partial sums)
_ITEMS_PER_PROGRAM = 16


# ---------------------------------------------------------------------------------------------
# Device code.  Plain functions here; ``_kernel()`` turns them into Triton JIT (or interpreted)
# functions in a private namespace, according to TRITON_INTERPRET at launch time.
# ---------------------------------------------------------------------------------------------


def _sqrt(x, IEEE: tl.constexpr):
    """Square root: tl.sqrt (float32: the GPU's approximate one, float64: correctly rounded), or
    the correctly rounded float32 one when IEEE."""
    if IEEE:
        return tl.math.sqrt_rn(x)
    else:
        return tl.sqrt(x)


def _acos(x, F64: tl.constexpr, IEEE: tl.constexpr):
    """arccos(x) for x in [-1, 1], elementwise, to about 1 ulp of x's dtype."""
    ax = tl.abs(x)
    big = ax > 0.5
    z = tl.where(big, 0.5 * (1.0 - ax), x * x)
    s = tl.where(big, _sqrt(z, IEEE), ax)
    if F64:
        p = A12 * z + A11
        p = p * z + A10
        p = p * z + A9
        p = p * z + A8
        p = p * z + A7
        p = p * z + A6
        p = p * z + A5
        p = p * z + A4
        p = p * z + A3
        p = p * z + A2
        p = p * z + A1
        p = p * z + A0
    else:
        p = B5 * z + B4
        p = p * z + B3
        p = p * z + B2
        p = p * z + B1
        p = p * z + B0
    a = s + s * (z * p)  # asin(s)
    neg = x < 0
    return tl.where(big, tl.where(neg, PI - 2.0 * a, 2.0 * a), HALF_PI - tl.where(neg, -a, a))


def _relu_step(cov, sx, sy, exact, scale_c: tl.constexpr, F64: tl.constexpr, IEEE: tl.constexpr):
    """(K, Kdot) of cntk.arccos.relu_step; scale_c = the chain's act_scale / (2 pi), a constexpr so that it
    enters float64 kernels in full precision (a float argument would be passed as float32)."""
    norm = sx * sy
    pos = norm > 0
    if IEEE:
        rho = tl.math.div_rn(cov, tl.where(pos, norm, 1.0))
    else:
        rho = cov / tl.where(pos, norm, 1.0)  # float32 on NVIDIA: div.full, 2 ulp
    rho = tl.minimum(tl.maximum(rho, -1.0), 1.0)
    rho = tl.where(exact, 1.0, rho)
    pmt = _acos(-rho, F64, IEEE)  # pi - arccos(rho)
    sin_t = _sqrt((1.0 - rho) * (1.0 + rho), IEEE)
    kdot = tl.where(pos, pmt * scale_c, 0.0)
    k = tl.where(pos, norm * (sin_t + pmt * rho) * scale_c, 0.0)
    return k, kdot


def _box_sum(a, b, sb, off, u, yr, v, yc, H, W,
             N: tl.constexpr, BW: tl.constexpr, Q: tl.constexpr, TWO: tl.constexpr):
    """q x q masked box sum of a (and of b when TWO) on a block of folds, through the scratch at sb.

    The neighbour (u + s, v + t) of a fold entry counts when its x pixel (u + s, v + t) and its y
    pixel (yr + s, yc + t) are both inside the image.  a, b: (FB, BH, BW); off: the entries' own
    offsets in one scratch slab of N = FB * BH * BW numbers; slabs at sb: [a, b, a's column pass,
    b's column pass].  Callers alternate between two such areas (sb), so that one barrier before
    each pass suffices: a thread writes an area only after every thread passed the two barriers
    of the box sum in between, hence finished reading that area.
    """
    R: tl.constexpr = Q // 2
    p = sb + off
    tl.store(p, a)
    if TWO:
        tl.store(p + N, b)
    tl.debug_barrier()
    ra = a
    rb = b
    for t in tl.static_range(Q):
        if t != R:
            d = t - R
            m = (v + d >= 0) & (v + d < W) & (yc + d >= 0) & (yc + d < W) & (u >= 0)
            ra += tl.load(p + d, mask=m, other=0.0)
            if TWO:
                rb += tl.load(p + (N + d), mask=m, other=0.0)
    tl.store(p + 2 * N, ra)
    if TWO:
        tl.store(p + 3 * N, rb)
    tl.debug_barrier()
    oa = ra
    ob = rb
    for s in tl.static_range(Q):
        if s != R:
            d = s - R
            m = (u + d >= 0) & (u + d < H) & (yr + d >= 0) & (yr + d < H) & (v >= 0)
            oa += tl.load(p + (2 * N + d * BW), mask=m, other=0.0)
            if TWO:
                ob += tl.load(p + (3 * N + d * BW), mask=m, other=0.0)
    return oa, ob


def _pool_gather(src, u, yr, v, yc, inimg, sh, sw, smh, smw, snfh, snfw, ntk, K: tl.constexpr):
    """The k x k average pool of the previous stage's (K, Kdot Theta + K) planes at this stage's fold
    entries: the entry of x pixel (u, v), y pixel (yr, yc) averages the k^4 source entries of x pixel
    (k u + a, k v + b), y pixel (k yr + a', k yc + b'), a, a', b, b' < k (a gather: (2k - 1)^2 source
    planes per output plane, no atomics).  src: this pair's source block, [K planes, T planes], each
    (snfh * snfw, sh, sw) in the previous stage's fold layout (window smh, smw); a source entry lies
    on fold ((k yr + a' - k u - a) mod sh, ...) at position (k u + a, k v + b).  T is read only when
    ntk."""
    blk = snfh * snfw * sh * sw
    with_t = (u * 0 + ntk) != 0  # a tensor: the interpreter passes plain ints
    # tl.full, not tl.zeros: a @jit function of triton.language.standard (see the readout's tl.reduce)
    kp = tl.full(inimg.shape, 0.0, src.dtype.element_ty)
    tp = tl.full(inimg.shape, 0.0, src.dtype.element_ty)
    for a in tl.static_range(K):
        xs = u * K + a
        for a2 in tl.static_range(K):
            dr = yr * K + a2 - xs
            fh = tl.where(dr < 0, dr + sh, dr)
            okr = (fh <= smh) | (fh >= sh - smh)
            ih = tl.where(fh <= smh, fh, fh - sh + snfh)
            rbase = ih * snfw
            for b in tl.static_range(K):
                xc = v * K + b
                for b2 in tl.static_range(K):
                    dc = yc * K + b2 - xc
                    fw = tl.where(dc < 0, dc + sw, dc)
                    okc = (fw <= smw) | (fw >= sw - smw)
                    iw = tl.where(fw <= smw, fw, fw - sw + snfw)
                    idx = ((rbase + iw) * sh + xs) * sw + xc
                    m = inimg & okr & okc
                    kp += tl.load(src + idx, mask=m, other=0.0)
                    tp += tl.load(src + (blk + idx), mask=m & with_t, other=0.0)
    return kp / (K * K * K * K), tp / (K * K * K * K)


def _cntk_kernel(x_ptr, y_ptr, sx_ptr, sy_ptr, ii_ptr, jj_ptr, part_ptr, scratch_ptr, src_ptr, dst_ptr,
                 n_items, n_groups, fold_group, n_folds, n_layers, C, H, W, symmetric, ntk, fix_first, fix_last,
                 layer0, n_stats, img_h, img_w, mh, mw, nfh, nfw, sh, sw, smh, smw, snfh, snfw,
                 SCALE: tl.constexpr, Q: tl.constexpr, FB: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                 F64: tl.constexpr, IEEE: tl.constexpr, POOL: tl.constexpr, WRITE: tl.constexpr):
    """Persistent programs; item = (pair, group of fold_group blocks of FB folds).  One stage of the
    chain (all of it when unpooled): H x W pixels, n_layers activations from global layer layer0,
    the folds of the offset window (mh, mw) (nfh x nfw of them, n_folds in all).

    POOL = 1: the stage starts from the inputs (the first stage); POOL = k: from the k x k pool of
    the previous stage's planes at src_ptr (sh x sw pixels, window (smh, smw), snfh x snfw folds).
    WRITE: store the last activation's (K, Kdot Theta + K) planes at dst_ptr for the next stage;
    else sum the readout into one float64 partial per item (part_ptr).  n_layers = 0 (a pool right
    before the readout) reads the pooled planes out as they are.

    symmetric, ntk, fix_first, fix_last are runtime 0/1 flags (uniform branches), not constexprs,
    so that one compiled kernel serves every depth of a given stage shape, filter size and dtype.
    """
    N: tl.constexpr = FB * BH * BW
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    base = scratch_ptr + pid.to(tl.int64) * (8 * N)
    fb = tl.arange(0, FB)[:, None, None]
    u = tl.arange(0, BH)[None, :, None]
    v = tl.arange(0, BW)[None, None, :]
    off = (fb * BH + u) * BW + v
    xoff = u * img_w + v
    img_hw = img_h * img_w
    for item in range(pid, n_items, nprog):
        pair = item // n_groups
        grp = item - pair * n_groups
        i = tl.load(ii_ptr + pair).to(tl.int64)
        j = tl.load(jj_ptr + pair).to(tl.int64)
        acc = tl.full([1], 0.0, tl.float64)
        for g in range(fold_group):
            first = (grp * fold_group + g) * FB
            if first < n_folds:
                tl.debug_barrier()  # the scratch's last readers (previous fold) are done
                f = first + fb
                fi = f // nfw
                fj = f - fi * nfw
                fh = tl.where(fi <= mh, fi, fi - nfh + H)  # fold index -> fold (offset mod H)
                fw = tl.where(fj <= mw, fj, fj - nfw + W)
                yr = u + fh
                yr = tl.where(yr >= H, yr - H, yr)
                yc = v + fw
                yc = tl.where(yc >= W, yc - W, yc)
                inimg = (u < H) & (v < W) & (f < n_folds)
                yoff = yr * img_w + yc
                exact = (f == 0) & (i == j) & (symmetric != 0)  # a self pair's zero plane: rho = 1
                if POOL == 1:
                    xb = x_ptr + i * C * H * W
                    yb = y_ptr + j * C * H * W
                    s0 = tl.load(xb + xoff, mask=inimg, other=0.0) * tl.load(yb + yoff, mask=inimg, other=0.0)
                    for c in range(1, C):
                        xc = tl.load(xb + c * H * W + xoff, mask=inimg, other=0.0)
                        ycv = tl.load(yb + c * H * W + yoff, mask=inimg, other=0.0)
                        s0 += xc * ycv
                    sig, _unused = _box_sum(s0, s0, base, off, u, yr, v, yc, H, W, N, BW, Q, False)
                    theta = tl.where(fix_first != 0, 0.0, sig)
                else:
                    src = src_ptr + pair.to(tl.int64) * ((1 + ntk) * snfh * snfw * sh * sw)
                    kp, tp = _pool_gather(src, u, yr, v, yc, inimg, sh, sw, smh, smw, snfh, snfw, ntk, POOL)
                    if ntk != 0:
                        sig, theta = _box_sum(kp, tp, base, off, u, yr, v, yc, H, W, N, BW, Q, True)
                    else:
                        sig, _unused = _box_sum(kp, kp, base, off, u, yr, v, yc, H, W, N, BW, Q, False)
                        theta = sig
                sxb = sx_ptr + (i * n_stats + layer0) * img_hw
                syb = sy_ptr + (j * n_stats + layer0) * img_hw
                for layer in range(n_layers - 1):
                    sb = base + ((layer + 1) % 2) * (4 * N)  # alternate scratch areas
                    sxl = tl.load(sxb + layer * img_hw + xoff, mask=inimg, other=0.0)
                    syl = tl.load(syb + layer * img_hw + yoff, mask=inimg, other=0.0)
                    k, kdot = _relu_step(sig, sxl, syl, exact, SCALE, F64, IEEE)
                    if ntk != 0:
                        sig, theta = _box_sum(k, kdot * theta + k, sb, off, u, yr, v, yc, H, W, N, BW, Q, True)
                    else:
                        sig, _unused = _box_sum(k, k, sb, off, u, yr, v, yc, H, W, N, BW, Q, False)
                last = n_layers - 1  # -1 when the stage has no activation: masked
                has = (u * 0 + n_layers) > 0  # a tensor: the interpreter passes plain ints
                lm = inimg & has
                sxl = tl.load(sxb + last * img_hw + xoff, mask=lm, other=0.0)
                syl = tl.load(syb + last * img_hw + yoff, mask=lm, other=0.0)
                k, kdot = _relu_step(sig, sxl, syl, exact, SCALE, F64, IEEE)
                t = kdot * theta + tl.where(fix_last != 0, 0.0, k)
                if POOL != 1:  # no activation in this stage: the pooled planes themselves
                    k = tl.where(has, k, kp)
                    t = tl.where(has, t, tp)
                if WRITE:
                    dst = dst_ptr + pair.to(tl.int64) * ((1 + ntk) * n_folds * H * W)
                    doff = (f * H + u) * W + v
                    tl.store(dst + doff, k, mask=inimg)
                    tl.store(dst + (n_folds * H * W + doff), t, mask=inimg & ((u * 0 + ntk) != 0))
                else:
                    final = tl.where(ntk != 0, t, k)
                    final = tl.where(inimg, final, 0.0).to(tl.float64)
                    # tl.reduce with Triton's own sum combiner rather than tl.sum: tl.sum is a @jit
                    # function of triton.language.standard, which the interpreter cannot call when
                    # triton was imported before TRITON_INTERPRET was set; the interpreter
                    # recognises this combiner and sums with numpy.  _sum_combine is bound per
                    # mode by _kernel() (the JIT needs a JITFunction of it)
                    final = tl.reduce(final, 2, _sum_combine)
                    final = tl.reduce(final, 1, _sum_combine)
                    acc += tl.reduce(final, 0, _sum_combine)
        tl.store(part_ptr + (tl.full([1], 0, tl.int64) + item), acc)


_NO_SPECIALIZE = ("n_items", "n_groups", "fold_group", "n_folds", "n_layers", "C", "H", "W", "symmetric", "ntk",
                  "fix_first", "fix_last", "layer0", "n_stats", "img_h", "img_w", "mh", "mw", "nfh", "nfw",
                  "sh", "sw", "smh", "smw", "snfh", "snfw")
_DEVICE_FUNCS = ("_sqrt", "_acos", "_relu_step", "_box_sum", "_pool_gather", "_cntk_kernel")
_BUILT: dict[bool, object] = {}
# The readout's sum combiner, rebound in each mode's namespace by _kernel(): the interpreter knows
# Triton's own object by identity; the JIT compiler needs a JITFunction, and Triton (3.9 at least)
# makes that object an InterpretedFunction when it was imported under TRITON_INTERPRET=1.
_sum_combine = tl.standard._sum_combine


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _kernel(interpret: bool):
    """The launchable kernel for this mode: JIT-compiled, or Triton's CPU interpreter."""
    if interpret not in _BUILT:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction as wrap
        else:
            from triton.runtime.jit import JITFunction as wrap
        ns = dict(globals())  # a private namespace: the interpreter adds its own names to it
        combine = _sum_combine
        if not interpret and not isinstance(combine, wrap):
            combine = wrap(combine.fn)
        ns["_sum_combine"] = combine
        for name in _DEVICE_FUNCS:
            fn = globals()[name]
            copy = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
            # FunctionType copies no annotations: without them the JIT sees no tl.constexpr parameter
            # (the interpreter does not care, a GPU compile fails: "arange's arguments must be ...")
            copy.__annotations__ = dict(fn.__annotations__)
            copy.__kwdefaults__ = fn.__kwdefaults__
            copy.__module__ = fn.__module__
            copy.__doc__ = fn.__doc__
            # integer arguments are not specialised (on == 1, % 16): one compilation per shape and dtype
            extra = {"do_not_specialize": _NO_SPECIALIZE} if name == "_cntk_kernel" and not interpret else {}
            ns[name] = wrap(copy, **extra)
        _BUILT[interpret] = ns["_cntk_kernel"]
    return _BUILT[interpret]


# ---------------------------------------------------------------------------------------------
# Host side: the backend interface of cntk.backends.planes.
# ---------------------------------------------------------------------------------------------


def _paper_family(c: Chain) -> bool:
    """The paper's family, AvgPool(k) after activations allowed (Myrtle): ReLU, c_sigma = 2, no bias."""
    return dataclasses.replace(c, pools=()).paper_family


def supports(net: Network, device: torch.device | str) -> str | None:
    """CUDA devices (when torch sees one), the CPU only under TRITON_INTERPRET=1 (the interpreter);
    the paper's family of networks, with or without average pools (Myrtle)."""
    device = torch.device(device)
    ok = (_interpreting() or torch.cuda.is_available()) if device.type == "cuda" else (
        device.type == "cpu" and _interpreting())
    if not ok:
        return "it runs on CUDA devices (on the CPU only under TRITON_INTERPRET=1)"
    c = chain(net)
    if isinstance(c, str):
        return c
    if c.family != "cnn" or not _paper_family(c):
        return ("it computes the paper's family only (ReLU, c_sigma = 2, no bias, fix or not; "
                "AvgPool after activations allowed)")
    return None


def prepare(x: torch.Tensor, net: Network, shapes=None) -> torch.Tensor:
    """Per-image sqrt-diagonals, (N, L, H, W): those of ``cntk.backends.planes`` (for pooled chains
    ``planes.self_stds``: stage s in the top-left h_s x w_s corner)."""
    return planes.prepare(x, net)


@dataclasses.dataclass(frozen=True)
class _StagePlan:
    """One launch: a stage of h x w pixels, its activations [layer0, layer0 + n_layers), the folds of
    its offset window (mh, mw) (nfh x nfw fold indices), the pool k that feeds it (1: the inputs)."""

    h: int
    w: int
    mh: int
    mw: int
    layer0: int
    n_layers: int
    pool_in: int

    @property
    def nfh(self) -> int:
        return min(self.h, 2 * self.mh + 1)

    @property
    def nfw(self) -> int:
        return min(self.w, 2 * self.mw + 1)

    @property
    def n_folds(self) -> int:
        return self.nfh * self.nfw


def _stage_plans(c: Chain, h: int, w: int) -> list[_StagePlan]:
    """The launches of an h x w input: one per stage (``Chain.stages``), windows of ``planes.windows``."""
    stages = c.stages(h, w)
    counts = [0] * len(stages)
    for layer in range(c.n_act_layers):
        counts[c.stage_of(layer)] += 1
    out, layer0, k_in = [], 0, 1
    for (sh, sw, k), (mh, mw), n in zip(stages, planes.windows(c, h, w, c.readout == "gap"), counts):
        out.append(_StagePlan(sh, sw, mh, mw, layer0, n, k_in))
        layer0, k_in = layer0 + n, k
    return out


def bytes_per_pair(shape: tuple[int, int, int], net: Network, itemsize: int) -> int:
    """Main memory per pair of one launch: at most one float64 partial per fold, plus indices; with
    pools, the (K, Kdot Theta + K) planes of consecutive stages (the one read and the one written)."""
    _, h, w = shape
    c = chain(net)
    plans = _stage_plans(c, h, w)
    held = [2 * p.n_folds * p.h * p.w * itemsize for p in plans[:-1]] + [0]
    peak = max(a + b for a, b in zip([0] + held, held))
    return plans[-1].n_folds * 8 + 16 + peak


_PROGRAMS_PER_SM: dict[tuple, int] = {}


def _programs_per_sm(kern, args: tuple, consts: dict, warps: int, device: torch.device) -> int:
    """Resident programs per SM of the compiled kernel (registers permitting), for the persistent grid."""
    if os.environ.get(_ENV_PROGRAMS):
        return max(1, int(os.environ[_ENV_PROGRAMS]))
    key = (device.index, warps, args[0].dtype, tuple(sorted(consts.items())))
    if key not in _PROGRAMS_PER_SM:
        per_sm = max(1, 32 // warps)
        try:
            compiled = kern.warmup(*args, grid=(1,), num_warps=warps, **consts)
            compiled._init_handles()
            regs = max(1, int(compiled.n_regs))
            props = torch.cuda.get_device_properties(device)
            reg_file = getattr(props, "regs_per_multiprocessor", 65536) or 65536
            max_threads = getattr(props, "max_threads_per_multi_processor", 2048) or 2048
            per_sm = max(1, min(reg_file // (regs * 32 * warps), max_threads // (32 * warps)))
        except Exception:  # an older Triton without warmup / n_regs: keep the default
            pass
        _PROGRAMS_PER_SM[key] = per_sm
    return _PROGRAMS_PER_SM[key]


def _pairs(x1, s1, x2, s2, ii, jj, arch: Chain, kind: str, symmetric: bool) -> torch.Tensor:
    """Kernel values of the pairs (x1[ii], x2[jj]) as float64: one launch per stage (one in all
    without pools); a stage's last (K, Kdot Theta + K) planes go to a buffer that the next one pools."""
    n_pairs = len(ii)
    _, c, h0, w0 = x1.shape
    ntk = kind == "ntk"
    interpret = _interpreting() or x1.device.type != "cuda"
    kern = _kernel(interpret)
    plans = _stage_plans(arch, h0, w0)
    src, prev = x1, None  # src: a stage's input buffer (unused by the first stage)
    for s, st in enumerate(plans):
        last_stage = s == len(plans) - 1
        dst = (torch.empty(n_pairs * (1 + ntk) * st.n_folds * st.h * st.w, dtype=x1.dtype, device=x1.device)
               if not last_stage else x1)
        holds_last_layer = st.layer0 + st.n_layers == arch.n_act_layers and st.n_layers > 0
        part = _launch(kern, interpret, x1, s1, x2, s2, ii, jj, src, dst, st, prev, arch, ntk, symmetric,
                       c, h0, w0, fix_last=arch.fix_first_last and holds_last_layer, write=not last_stage)
        src, prev = dst, st
    total = part.sum(1)
    st = plans[-1]
    return total if arch.readout == "flatten" else total / float(st.h * st.w) ** 2


def _launch(kern, interpret, x1, s1, x2, s2, ii, jj, src, dst, st: _StagePlan, prev: _StagePlan | None,
            arch: Chain, ntk: bool, symmetric: bool, c: int, h0: int, w0: int, fix_last: bool, write: bool):
    """One stage's launch over all pairs: the persistent grid, its fold blocks and its partials."""
    n_pairs = len(ii)
    h, w = st.h, st.w
    bh, bw = triton.next_power_of_2(h), triton.next_power_of_2(w)
    n_folds = st.n_folds
    # folds per block: about 1024 entries on a GPU (one 32 x 32 fold, or 16 folds of 8 x 8), up
    # to 4096 in the interpreter, whose cost is per operation, not per entry
    fb = max(1, min(triton.next_power_of_2(n_folds), (4096 if interpret else 1024) // (bh * bw)))
    warps = int(os.environ.get(_ENV_WARPS, 0)) or max(1, min(16, (fb * bh * bw) // 128))
    n_blocks = -(-n_folds // fb)
    consts = dict(
        SCALE=arch.act_scale / (2 * math.pi), Q=arch.filter_size, FB=fb, BH=bh, BW=bw, F64=x1.dtype == torch.float64,
        IEEE=x1.dtype == torch.float32 and os.environ.get(_ENV_IEEE, "") == "1",
        POOL=1 if prev is None else st.pool_in, WRITE=write,
    )
    pv = prev or st  # the source stage's geometry (unused by the first stage)
    scratch_per_program = 8 * fb * bh * bw
    launch = {} if interpret else {"num_warps": warps}

    def plan(nprog: int) -> tuple[int, tuple]:
        # blocks per item: enough items to keep every program busy, few partials when pairs are many
        fold_group = max(1, min(n_blocks, (n_pairs * n_blocks) // (_ITEMS_PER_PROGRAM * nprog)))
        n_groups = -(-n_blocks // fold_group)
        nprog = max(1, min(nprog, n_pairs * n_groups))
        part = torch.empty(n_pairs, n_groups, dtype=torch.float64, device=x1.device)
        scratch = torch.empty(nprog * scratch_per_program, dtype=x1.dtype, device=x1.device)
        return nprog, (x1, x2, s1, s2, ii, jj, part, scratch, src, dst,
                       n_pairs * n_groups, n_groups, fold_group, n_folds, st.n_layers, c, h, w,
                       int(symmetric), int(ntk), int(not arch.trainable[0]), int(fix_last),
                       st.layer0, arch.n_act_layers, h0, w0, st.mh, st.mw, st.nfh, st.nfw,
                       pv.h, pv.w, pv.mh, pv.mw, pv.nfh, pv.nfw)

    if interpret:
        nprog, args = plan(3)  # programs run one after another: a few, to exercise the persistent loop
    else:
        sms = torch.cuda.get_device_properties(x1.device).multi_processor_count
        nprog, args = plan(sms * max(1, 32 // warps))
        wanted = sms * _programs_per_sm(kern, args, consts, warps, x1.device)
        if wanted != nprog:
            nprog, args = plan(wanted)
    kern[(nprog,)](*args, **consts, **launch)
    return args[6]


def tile(x1, s1, x2, s2, net: Network, shapes, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two image blocks (upper triangle and mirror when symmetric), ``batch_size`` per launch."""
    arch = chain(net)
    if x1.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the triton backend computes in float32 or float64, got {x1.dtype}")
    if kind not in ("ntk", "nngp"):
        raise ValueError(f"unknown kind {kind!r}: use 'ntk' or 'nngp'")
    n1, n2 = len(x1), len(x2)
    dev = x1.device
    out = torch.zeros(n1, n2, dtype=x1.dtype, device=dev)
    if n1 == 0 or n2 == 0:
        return out
    x1, x2 = x1.contiguous(), x2.contiguous()
    s1, s2 = s1.to(x1.dtype).contiguous(), s2.to(x1.dtype).contiguous()
    if symmetric:
        ii, jj = torch.triu_indices(n1, n2, device=dev)
    else:
        ii, jj = torch.meshgrid(torch.arange(n1, device=dev), torch.arange(n2, device=dev), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
    ii, jj = ii.to(torch.int32), jj.to(torch.int32)
    step = max(1, min(int(batch_size), 1 << 22))
    for start in range(0, len(ii), step):
        i, j = ii[start : start + step], jj[start : start + step]
        vals = _pairs(x1, s1, x2, s2, i.contiguous(), j.contiguous(), arch, kind, symmetric)
        out[i.long(), j.long()] = vals.to(x1.dtype)
    if symmetric:
        out = out + torch.triu(out, 1).T
    return out
