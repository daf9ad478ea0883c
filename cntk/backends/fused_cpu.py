"""Fused CPU backend ("numba"): the offset-plane recursion, all layers of a plane in cache, compiled.

Same mathematics and conventions as ``planes`` (see its docstring and docs/conventions.md): the
entries of a pair's P x P matrices with a fixed spatial offset d = (di, dj) form a plane that
evolves alone through every layer; on the plane's valid rectangle, (H - |di|) x (W - |dj|) pixels
of x whose partner pixel (i + di, j + dj) lies inside y, the patch trace is a q x q box sum with
zero padding.  This module runs the whole L-layer recursion of one plane in a few small buffers,
adds the last layer's entries to the pair's total and moves on: nothing of size P^2 is ever
stored, and memory does not grow with the number of pairs.

- flatten readout (CNTK-V): the zero plane only, O(P L) per pair;
- GAP: all (2H - 1)(2W - 1) planes, P^2 entries in total per pair, divided by P^2;
- symmetric tiles: upper triangle only; the self pairs' zero plane uses rho = 1 exactly (the
  ``exact`` of ``arccos.relu_step``), which keeps float32 within 1e-5 of float64;
- zero variance (std_x * std_y == 0): K = Kdot = 0, never NaN.

Layout.  Pairs are evaluated B = 8 at a time: one image of x1 against 8 consecutive images of x2,
which are stored lane-interleaved (..., H, W, 8), so every plane buffer is (rows, columns, 8 lanes)
and every inner loop runs over whole rows of columns x lanes: long, contiguous, unit-stride loops
that LLVM vectorises (AVX2/AVX-512), with unsigned indices (no negative-index wraparound), and
every array of the row loops without its owner (``_unowned``: numba's reference counts on them cost
a NULL test, not an atomic pair per row).  Per layer, row u of Sigma and Theta is box-summed from the
previous layer's K and Kdot Theta + K planes (double-buffered), and the activation step
(``_relu_row``, ``_erf_row``, ``_gelu_row``, ``_sin_row``; chosen once per row, outside the loops)
writes the next planes; the last layer is summed row by row.  The ReLU rows run in two passes (rho
into a scratch row, then the step): one entry's chain of dependent operations is long, and a single
loop ran at its latency (benchmarks/README.md, "Two passes per row").

Arithmetic.  pi - arccos(rho) and sqrt(1 - rho^2) (``_arc``): in float32 arccos(|rho|) = sqrt(1 - |rho|)
A(|rho|) with a polynomial A of degree 6 and sqrt(1 - rho^2) one hardware square root (no branch
select, 2.4e-7 relative); in float64 polynomials (Chebyshev fits, about 1 ulp: asin of degree 11,
sqrt(1 - z) of degree 12) around one hardware square root.  rho is formed by multiplies with inverse
std maps in float32 and by the IEEE division in float64 (``_rho``).  With 3 x 3 filters (the paper's
family) the ReLU row is fused with the box sums' horizontal half (``_relu_box_row``; benchmarks/README.md,
"The fused ReLU row").  e^x and e^x - 1 (x <= 0, Sin) are Taylor polynomials after the usual reduction
x = n ln 2 + r, with 2^n built from the bits (``_exp_red``, about 1 ulp); no libm call is
left in a row loop, so every row step vectorises.  Divisions and square roots are IEEE (fast-math
only contracts FMAs).  Every constant is cast to the input dtype, so float32 is computed in float32
throughout; the per-pair totals are accumulated in float64.

Networks.  The chain form of ``cntk.layers`` with one activation for every layer: ReLU or
ABReLU (a min(x, 0) + b max(x, 0) = (b - a) relu(x) + a x: the ReLU rows scaled by (b - a)^2 plus a
second pass for the a b terms, skipped for ReLU), Erf, Gelu (its arctangent is an arc-sine:
atan2(c, d) = asin(c / sqrt((1 + v_x)(1 + v_y)))) or Sin (a sin(b x + c), written without a difference
of nearly equal exponentials), with the closed forms of ``cntk.activations``; per-layer scales and
biases, trained or frozen layers, and k x k average pools after activations (Myrtle); mixed
activations go to ``planes`` / ``reference`` (``supports``).

Pools.  A pooled chain runs in stages (``_run_pooled``, one work item per block of B pairs): each
plane of a stage runs the stage's layers as above, and its last layer's rows are scattered, divided
by k^4, into the next stage's (fewer, smaller) planes held in a per-thread buffer (``_scatter_row``:
the entry of x pixel p and offset e lands in plane ((p + e) // k - p // k) at pixel p // k); the next
stage's planes then start from those buffers (``_load_plane``).  Per thread that is two
(2 h_s - 1)(2 w_s - 1) h_s w_s B buffers for stage s >= 1 (Myrtle on 32x32: 31^2 planes of 16x16,
about 16 MB in float32).  Per-image diagonals come from ``planes.self_stds`` (the self pairs' own
windowed recursion, O(N)).  The flatten readout keeps, per stage, the window of offsets that the
later stages gather (``planes.windows``).

Threads.  Work items (a block of 8 pairs, and for GAP with few pairs a cost-balanced group of
planes) are cut into a few chunks per thread and run by ``nogil`` compiled code on a thread pool of
``numba.get_num_threads()`` workers: dynamic scheduling, and no parfor compilation (a prange
version costs about 8 s more of first-call compilation per dtype).  Kernels compile on first use
per dtype (about 10 s on 2 cores) and are cached on disk (``cache=True``), so later processes load
them in about a second.
"""
from __future__ import annotations

import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from cntk.activations import ABReLU, Erf, Gelu, ReLU, Sin
from cntk.backends import planes
from cntk.backends.chain import Chain, chain, family_chain
from cntk.network import Network, as_network

NAME = "numba"
PRIORITY = 30
AUTO_DEVICES = ("cpu",)  # a CPU kernel

_B = 8  # pairs per block: one SIMD lane each (8 float32 fill an AVX2 register)

# Fast-math limited to FMA contraction (and signed zeros): divisions and square roots stay IEEE, as in
# the torch backends, so that rho rounds the same way where arccos is ill-conditioned (rho near 1);
# no nnan/ninf: the selects on zero variance keep their meaning.
_FM = {"nsz", "contract"}
# Row steps that divide by a value the compiler cannot prove nonzero (Erf, Gelu) compile with
# error_model="numpy": numba's default Python error model tests every such divisor and raises
# ZeroDivisionError, a branch that keeps LLVM from vectorising the loop (measured: 6x slower).

# asin(s) = s + s z P(z), z = s^2 in [0, 1/4] (float64): Chebyshev fit (mpmath, 50 digits) of
# P(z) = (asin(sqrt z) - sqrt z) / z^1.5 of degree 11; relative error of asin 5.6e-17.
# arccos(a) = sqrt(1 - a) A(a) for a in [0, 1] (float32 only): least-squares fit of degree 6 at 4000
# Chebyshev nodes of A(a) = arccos(a) / sqrt(1 - a), which is analytic on [0, 1]; arccos of it within
# 2.4e-7 relative on [0, 1] in float32 arithmetic (about 2 ulp, most of it the rounding of the square root).
_A32 = (1.57079615083173, -0.2145836960799178, 0.08873732884404091, -0.048724402258775404, 0.02674933123807084,
        -0.011012386108654031, 0.002251368253841351)
_P64 = (
    0.1666666666666665, 0.07500000000020764, 0.044642857103423646, 0.03038194736709848,
    0.02237204763174451, 0.017355259955786323, 0.013929652902326633, 0.011875494382636922,
    0.0078029494773533175, 0.01603551434914882, -0.010749050339697808, 0.028169218060881414,
)

# sqrt(1 - z) = Q(z) for z in [0, 1/4], same kind of fit, relative error 2.0e-17 (float64 only).
_Q64 = (
    1.0, -0.4999999999999815, -0.1250000000041244, -0.06249999963931342, -0.0390625163329017,
    -0.02734331164089207, -0.020515325325567758, -0.016027596302914372, -0.01375441009387522,
    -0.007446828865423663, -0.021194963521473254, 0.017190548009281534, -0.034308838583332474,
)


def _cst(like, value):  # pragma: no cover - replaced by the overload inside jitted code
    return value


@overload(_cst)
def _cst_ol(like, value):
    """``value`` cast to the dtype of ``like`` (an array or a float), so float32 stays float32."""
    t = like.dtype if isinstance(like, types.Array) else like

    def impl(like, value):
        return t(value)

    return impl


@njit(fastmath=_FM, cache=True, inline="always")
def _asin_poly(z):
    """P(z) of the float64 asin fit (``_P64``), Estrin's scheme."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11 = _P64
    z2 = z * z
    z4 = z2 * z2
    z8 = z4 * z4
    lo = (c0 + z * c1) + z2 * (c2 + z * c3)
    mid = (c4 + z * c5) + z2 * (c6 + z * c7)
    hi = (c8 + z * c9) + z2 * (c10 + z * c11)
    return lo + z4 * mid + z8 * hi


@njit(fastmath=_FM, cache=True, inline="always")
def _sqrt_1m(z):
    """sqrt(1 - z) for z in [0, 1/4], float64: a polynomial (``_Q64``; a vsqrtpd costs as much as a dozen FMAs)."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 = _Q64
    z2 = z * z
    z4 = z2 * z2
    z8 = z4 * z4
    lo = (c0 + z * c1) + z2 * (c2 + z * c3)
    mid = (c4 + z * c5) + z2 * (c6 + z * c7)
    hi = (c8 + z * c9) + z2 * (c10 + z * c11) + z4 * c12
    return lo + z4 * mid + z8 * hi


@intrinsic
def _pow2(typingctx, t):
    """2^n from t = n + M, M = 1.5 2^m (m the mantissa width: 52, 23), the integer n in t's low mantissa
    bits (n + bias >= 1): integer operations on t's bits, which vectorise (no libm ldexp)."""
    if t == types.float32:
        ity, fty, shift, base = ir.IntType(32), ir.FloatType(), 23, struct.unpack("<i", struct.pack("<f", 1.5 * 2.0**23))[0] - 127
    elif t == types.float64:
        ity, fty, shift, base = ir.IntType(64), ir.DoubleType(), 52, struct.unpack("<q", struct.pack("<d", 1.5 * 2.0**52))[0] - 1023
    else:
        return None

    def codegen(context, builder, signature, args):
        bits = builder.sub(builder.bitcast(args[0], ity), ir.Constant(ity, base))  # n + bias
        return builder.bitcast(builder.shl(bits, ir.Constant(ity, shift)), fty)

    return t(t), codegen


@intrinsic
def _unowned(typingctx, arr):
    """arr's data, shape and strides without its owner (a NULL meminfo), so that numba's reference
    counting of it costs a NULL test instead of an atomic increment and decrement.  Numba counts a
    reference for every array variable bound in a row loop (views, array choices, the arguments of
    inlined row functions); on the owned arrays those atomic pairs took about 30 % of the depth-11 time
    (benchmarks/README.md, "Two passes per row").  Only for arrays whose owner outlives every use: the
    arguments of the non-inlined ``_plane_block``, held by its caller."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        from numba.np.arrayobj import make_array, populate_array

        src = make_array(signature.args[0])(context, builder, args[0])
        out = make_array(signature.return_type)(context, builder)
        populate_array(out, data=src.data, shape=cgutils.unpack_tuple(builder, src.shape),
                       strides=cgutils.unpack_tuple(builder, src.strides), itemsize=src.itemsize, meminfo=None)
        return out._getvalue()

    return arr(arr), codegen


def _exp_red(x):  # pragma: no cover
    raise NotImplementedError


@overload(_exp_red)
def _exp_red_ol(x):
    """(r, q(r), t) with e^x = (1 + r q(r)) 2^n for x <= 0, in x's precision, branch-free: x = n ln 2 + r,
    |r| <= ln(2) / 2, t = n + 1.5 2^m (``_pow2``); 1 + r q(r) is the Taylor polynomial of e^r (degree 7 in
    float32, 13 in float64: truncation below 1e-8 and 1e-17 relative).  x is clamped to -86 (float32) /
    -700 (float64), where e^x is below 1e-37 / 1e-304, so that 2^n stays a normal number.  (math.exp would
    be a scalar libm call: numba has no SVML here.)"""
    if x == types.float32:
        dt, lo, deg, ln2hi, ln2lo = np.float32, -86.0, 7, 0.693145751953125, 1.428606765330187e-06
    else:
        dt, lo, deg, ln2hi, ln2lo = np.float64, -700.0, 13, 0.6931471803691238, 1.9082149292705877e-10
    lo, ln2hi, ln2lo = dt(lo), dt(ln2hi), dt(ln2lo)
    log2e, magic = dt(1.0 / math.log(2.0)), dt(1.5 * 2.0 ** (23 if dt is np.float32 else 52))
    c = tuple(dt(1.0 / math.factorial(k)) for k in range(1, deg + 1))  # q(r) = sum_k r^(k-1) / k!
    if deg == 7:
        c1, c2, c3, c4, c5, c6, c7 = c

        def impl32(x):
            x = max(x, lo)
            t = x * log2e + magic  # n + magic: n = x / ln 2 rounded to nearest
            nf = t - magic
            r = (x - nf * ln2hi) - nf * ln2lo
            r2 = r * r
            r4 = r2 * r2
            q = ((c1 + r * c2) + r2 * (c3 + r * c4)) + r4 * ((c5 + r * c6) + r2 * c7)
            return r, q, t

        return impl32
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = c

    def impl64(x):
        x = max(x, lo)
        t = x * log2e + magic
        nf = t - magic
        r = (x - nf * ln2hi) - nf * ln2lo
        r2 = r * r
        r4 = r2 * r2
        r8 = r4 * r4
        q = (((c1 + r * c2) + r2 * (c3 + r * c4)) + r4 * ((c5 + r * c6) + r2 * (c7 + r * c8))
             + r8 * (((c9 + r * c10) + r2 * (c11 + r * c12)) + r4 * c13))
        return r, q, t

    return impl64


@njit(fastmath=_FM, cache=True, inline="always")
def _exp_neg(x):
    """e^x for x <= 0, vectorisable (``_exp_red``)."""
    r, q, t = _exp_red(x)
    return (_cst(x, 1.0) + r * q) * _pow2(t)


@njit(fastmath=_FM, cache=True, inline="always")
def _expm1_neg(x):
    """e^x - 1 for x <= 0, vectorisable, accurate also near 0: r q(r) where n = 0 (|x| <= ln(2) / 2, r = x),
    else e^x - 1 (e^x <= 0.71 there: no cancellation)."""
    one = _cst(x, 1.0)
    r, q, t = _exp_red(x)
    small = x >= _cst(x, -0.5 * math.log(2.0))
    return r * q if small else (one + r * q) * _pow2(t) - one


@njit(fastmath=_FM, cache=True, inline="always")
def _arc64(rho):
    """(pi - arccos(rho), sqrt(1 - rho^2)) for rho in [-1, 1], float64, branch-free (selects only).

    With a = |rho|: for a <= 1/2, z = a^2, arccos(a) = pi/2 - asin(a), sqrt(1 - rho^2) = sqrt(1 - z);
    for a > 1/2, z = (1 - a) / 2, s = sqrt(z), arccos(a) = 2 asin(s), sqrt(1 - rho^2) = 2 s sqrt(1 - z);
    z <= 1/4 in both, where the asin and sqrt(1 - z) fits hold.  pi - arccos(rho) = arccos(-rho)."""
    half = _cst(rho, 0.5)
    one = _cst(rho, 1.0)
    pi = _cst(rho, math.pi)
    a = abs(rho)
    big = a > half
    z = half * (one - a) if big else a * a
    sq = math.sqrt(z)
    s = sq if big else a
    p = s + s * z * _asin_poly(z)  # asin(s)
    acos_a = (p + p) if big else (_cst(rho, 0.5 * math.pi) - p)  # arccos(|rho|)
    pt = (pi - acos_a) if rho >= _cst(rho, 0.0) else acos_a
    q = _sqrt_1m(z)
    m = (sq + sq) if big else one
    sn = m * q
    return pt, sn


def _arc(rho):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_arc)
def _arc_ol(rho):
    """(pi - arccos(rho), sqrt(1 - rho^2)) for rho in [-1, 1], in rho's precision.  float64: ``_arc64``.
    float32, no branch and no select but the sign's: with a = |rho|, arccos(a) = sqrt(1 - a) A(a) (``_A32``:
    1 - a is exact for a >= 1/2, so arccos keeps its relative accuracy near a = 1), pi - arccos(rho) is
    pi - arccos(a) for rho >= 0 and arccos(a) below, and sqrt(1 - rho^2) the square root of the FMA 1 - a a
    (one rounding: accurate also near a = 1).  A short dependency chain and few operations: the ReLU
    rows are bound by how many entries the out-of-order core holds in flight (benchmarks/README.md,
    "Two passes per row")."""
    if rho != types.float32:
        def impl64(rho):
            return _arc64(rho)

        return impl64
    zero, one, pi = np.float32(0.0), np.float32(1.0), np.float32(math.pi)
    c0, c1, c2, c3, c4, c5, c6 = (np.float32(v) for v in _A32)

    def impl32(rho):
        a = abs(rho)
        acos_a = math.sqrt(one - a) * (c0 + a * (c1 + a * (c2 + a * (c3 + a * (c4 + a * (c5 + a * c6))))))
        pt = acos_a if rho < zero else pi - acos_a
        return pt, math.sqrt(one - a * a)

    return impl32


def _rho(cov, norm, pos, ix, iy):  # pragma: no cover
    raise NotImplementedError


@overload(_rho)
def _rho_ol(cov, norm, pos, ix, iy):
    """cov / (nx ny) before clamping.  float32: (cov / nx) / ny as (cov ix) iy with the inverse stds
    ix, iy (0 for a zero std: then rho = 0), two multiplies instead of a division (the divider, which
    also takes the square roots, is as busy as the multiply pipes); |cov ix| <= ny by Cauchy-Schwarz,
    so no overflow but a self pair's +huge (to +inf, clamped to 1; its ix = iy > 0).  float64: the
    IEEE division, exact to the other backends' rounding where arccos is ill-conditioned (ix, iy
    unused, their loads eliminated)."""
    if cov == types.float32:
        def impl32(cov, norm, pos, ix, iy):
            return (cov * ix) * iy

        return impl32
    one = np.float64(1.0)

    def impl64(cov, norm, pos, ix, iy):
        return cov / (norm if pos else one)

    return impl64


@njit(fastmath=_FM, cache=True, inline="always")
def _rho_at(cov, nx, ny, ix, iy):
    """rho = cov / (nx ny) clamped to [-1, 1] (``_rho``: by the inverse stds ix, iy in float32, 0 where a
    std is 0).  A self pair's zero plane passes cov = +huge (clamped to rho = 1 exactly)."""
    one = _cst(cov, 1.0)
    norm = nx * ny
    return min(max(_rho(cov, norm, norm > _cst(cov, 0.0), ix, iy), -one), one)


@njit(fastmath=_FM, cache=True, inline="always")
def _relu_at(rho, norm, c):
    """(K, Kdot) of ``arccos.relu_step`` for one entry from its clamped rho (``_rho_at``) and norm = nx ny;
    c = scale / (2 pi).  Where norm = 0, rho is finite (0 or clamped), so K = 0 without a select; Kdot = 0
    by one."""
    pt, sn = _arc(rho)
    kd = pt * c if norm > _cst(rho, 0.0) else _cst(rho, 0.0)
    k = norm * (sn + pt * rho) * c
    return k, kd


@njit(fastmath=_FM, cache=True, inline="always")
def _box_row(src, u, sb, q, vsr, dst, n):
    """Row u of the q x q box sum of src (block layout, rows of stride sb, zero border of q // 2
    around the interior): dst[k] for k < n = ww * B, interior columns only.  vsr: one-row scratch."""
    usb = np.uint64(sb)
    b0 = np.uint64(u * sb)
    if q == 3:
        b1 = b0 + usb
        b2 = b1 + usb
        for k in range(usb):
            vsr[k] = src[b0 + k] + src[b1 + k] + src[b2 + k]
        ub = np.uint64(_B)
        ub2 = ub + ub
        for k in range(np.uint64(n)):
            dst[k] = vsr[k] + vsr[k + ub] + vsr[k + ub2]
        return
    for k in range(usb):
        vsr[k] = src[b0 + k]
    for t in range(1, q):
        bt = np.uint64((u + t) * sb)
        for k in range(usb):
            vsr[k] += src[bt + k]
    for k in range(np.uint64(n)):
        dst[k] = vsr[k]
    for t in range(1, q):
        off = np.uint64(t * _B)
        for k in range(np.uint64(n)):
            dst[k] += vsr[k + off]


@njit(fastmath=_FM, cache=True, inline="always")
def _relu_row(sg, tr, se, ie, xo, s2b, i2b, yo, n, c, kf, rr, dk, dt, do):
    """One row of the ReLU step for the B lanes: K into dk[do + k] and Kdot * Theta + kf * K into
    dt[do + k], k < n.  sg, tr: the row of Sigma and Theta; se[xo + k], s2b[yo + k]: the stds of x
    and y, ie, i2b their inverses; rr: a row of scratch.  Two passes: rho into rr, then the step.  One
    entry's chain of dependent operations is long (about 50 cycles), and an out-of-order core holds
    only a few entries' worth of operations in flight, so a single loop ran at the chain's latency, not
    at the pipes' throughput; two shorter loops keep more entries in flight (benchmarks/README.md, "Two
    passes per row").  One loop pair for every case (nngp just ignores dt): each extra copy costs
    seconds of compilation.  Inlined into the plane loop: a call passes every array as seven words on
    the stack, which cost as much as the arithmetic of a short row."""
    un = np.uint64(n)
    for k in range(un):
        rr[k] = _rho_at(sg[k], se[xo + k], s2b[yo + k], ie[xo + k], i2b[yo + k])
    for k in range(un):
        kk, kd = _relu_at(rr[k], se[xo + k] * s2b[yo + k], c)
        dk[do + k] = kk
        dt[do + k] = kd * tr[k] + kf * kk


@njit(fastmath=_FM, cache=True, inline="always")
def _vsum3(src, u, sb, dst, scl, one):
    """dst[k] = scl (src[u][k] + src[u + 1][k] + src[u + 2][k]) for the sb values of a block-layout row
    (row stride sb): the vertical half of a 3 x 3 box sum (``_relu_box_row`` does the horizontal one)."""
    usb = np.uint64(sb)
    b0 = np.uint64(u * sb)
    b1 = b0 + usb
    b2 = b1 + usb
    if scl == one:
        for k in range(usb):
            dst[k] = src[b0 + k] + src[b1 + k] + src[b2 + k]
    else:
        for k in range(usb):
            dst[k] = (src[b0 + k] + src[b1 + k] + src[b2 + k]) * scl


@njit(fastmath=_FM, cache=True, inline="always")
def _rho_box_pass(vs, sb2, se, ie, xo, s2b, i2b, yo, n, rr):
    """The first pass of the fused rows: rr[k] = rho of Sigma = vs[k] + vs[k + B] + vs[k + 2 B] + sb2
    (the horizontal half of the 3 x 3 box sum of the vertical sums vs, ``_vsum3``), k < n (``_rho_at``)."""
    ub = np.uint64(_B)
    ub2 = ub + ub
    for k in range(np.uint64(n)):
        rr[k] = _rho_at((vs[k] + vs[k + ub] + vs[k + ub2]) + sb2, se[xo + k], s2b[yo + k], ie[xo + k], i2b[yo + k])


@njit(fastmath=_FM, cache=True, inline="always")
def _relu_box_row(vs, vt, sb2, tb2, se, ie, xo, s2b, i2b, yo, n, c, rr, dk, dt, do):
    """``_relu_row`` (with kf = 1) fused with the horizontal half of the 3 x 3 box sums: Sigma = vs[k] +
    vs[k + B] + vs[k + 2 B] + sb2 and Theta = the same of vt plus tb2, from the vertical sums vs, vt
    (``_vsum3``), in the same two passes (rho into rr, then the step).  The additions go to the adder
    pipes while the arc-cosine keeps the multipliers busy, and Sigma and Theta never make a round trip
    through memory."""
    ub = np.uint64(_B)
    ub2 = ub + ub
    un = np.uint64(n)
    _rho_box_pass(vs, sb2, se, ie, xo, s2b, i2b, yo, n, rr)
    for k in range(un):
        th = (vt[k] + vt[k + ub] + vt[k + ub2]) + tb2
        kk, kd = _relu_at(rr[k], se[xo + k] * s2b[yo + k], c)
        dk[do + k] = kk
        dt[do + k] = kd * th + kk


@njit(fastmath=_FM, cache=True, inline="always")
def _relu_box_fix_row(vs, vt, vd, sb2, tb2, db2, kf, se, ie, xo, s2b, i2b, yo, n, c, rr, dk, dt, dd, do):
    """``_relu_box_row`` with the one-pass fix readout (``_plane_block``'s dbufs): also D's vertical sums
    vd (plus db2) through the same Kdot, dd = Kdot D, and dt = Kdot Theta + kf K."""
    ub = np.uint64(_B)
    ub2 = ub + ub
    un = np.uint64(n)
    _rho_box_pass(vs, sb2, se, ie, xo, s2b, i2b, yo, n, rr)
    for k in range(un):
        th = (vt[k] + vt[k + ub] + vt[k + ub2]) + tb2
        dv = (vd[k] + vd[k + ub] + vd[k + ub2]) + db2
        kk, kd = _relu_at(rr[k], se[xo + k] * s2b[yo + k], c)
        dk[do + k] = kk
        dt[do + k] = kd * th + kf * kk
        dd[do + k] = kd * dv


@njit(fastmath=_FM, cache=True)
def _abrelu_row(sg, tr, se, xo, s2b, yo, n, c2, za, zb, kf, dk, dt, do):
    """The a b terms of ABReLU added to a row that ``_relu_row`` wrote with (b - a)^2 scales:
    K += c2 cov and Kdot Theta + kf K += kd Theta + kf c2 cov, with c2 = s a b, cov the clamped
    Sigma (a self pair's +huge becomes its rho = 1 covariance), kd = c2 where both variances are
    positive, za = s a (a + b) / 2 where one is zero and zb = s a^2 where both are."""
    zero = _cst(sg, 0.0)
    for k in range(np.uint64(n)):
        nx = se[xo + k]
        ny = s2b[yo + k]
        norm = nx * ny
        cv = min(max(sg[k], -norm), norm)
        kd = c2 if norm > zero else (za if (nx > zero or ny > zero) else zb)
        dk[do + k] += c2 * cv
        dt[do + k] += kd * tr[k] + kf * (c2 * cv)


@njit(fastmath=_FM, cache=True, error_model="numpy")  # no zero-division check: it kept the loop scalar
def _erf_row(sg, tr, se, xo, s2b, yo, n, c, kf, dk, dt, do):
    """One row of the Erf step: K = c asin(rho) and Kdot = 2 c / sqrt((1 + 2 v_x)(1 + 2 v_y) - 4 cov^2)
    with rho = 2 cov / sqrt((1 + 2 v_x)(1 + 2 v_y)), c = s 2 / pi; cov clamped to [-nx ny, nx ny] (a
    self pair's +huge becomes its true variance).  |rho| < 1 always: no singularity, never NaN."""
    one = _cst(sg, 1.0)
    two = _cst(sg, 2.0)
    half_pi = _cst(sg, 0.5 * math.pi)
    for k in range(np.uint64(n)):
        nx = se[xo + k]
        ny = s2b[yo + k]
        norm = nx * ny
        cv = min(max(sg[k], -norm), norm)
        inv = one / math.sqrt((one + two * nx * nx) * (one + two * ny * ny))
        rho = min(max(two * cv * inv, -one), one)
        pt, sn = _arc(rho)
        kk = c * (pt - half_pi)
        kd = two * c * inv / sn
        dk[do + k] = kk
        dt[do + k] = kd * tr[k] + kf * kk


@njit(fastmath=_FM, cache=True, error_model="numpy")  # no zero-division check: it kept the loop scalar
def _gelu_row(sg, tr, se, xo, s2b, yo, n, c, kf, dk, dt, do):
    """One row of the Gelu step (``activations.Gelu``), c = s / (2 pi): with v = s_x^2, s_y^2, P = v_x v_y,
    P1 = (1 + v_x)(1 + v_y), d^2 = P1 - cov^2 = (1 + v_x + v_y) + (nx ny - cov)(nx ny + cov) >= 1 (a sum of
    non-negative terms: no cancellation, also on a self pair) and A = atan2(cov, d) = asin(rho), rho =
    cov / sqrt(P1), so that pi / 2 + A = pi - arccos(rho) (``_arc``):
    K = c ((cov^2 + P d^2) / (P1 d) + cov (pi / 2 + A)) and Kdot = c ((1 / d^2 + (1 - P) / P1 + 1) cov / d
    + pi / 2 + A).  cov clamped to [-nx ny, nx ny] (a self pair's +huge becomes its true variance);
    |rho| < 1 and d >= 1 always: smooth at zero variance, never NaN."""
    one = _cst(sg, 1.0)
    for k in range(np.uint64(n)):
        nx = se[xo + k]
        ny = s2b[yo + k]
        norm = nx * ny
        cv = min(max(sg[k], -norm), norm)
        vx = nx * nx
        vy = ny * ny
        prod1 = (one + vx) * (one + vy)
        d2 = ((one + vx) + vy) + (norm - cv) * (norm + cv)
        d = math.sqrt(d2)
        rho = min(max(cv / math.sqrt(prod1), -one), one)
        pt, _ = _arc(rho)
        kk = c * ((cv * cv + norm * norm * d2) / (prod1 * d) + cv * pt)
        kd = c * ((one / d2 + (one - norm * norm) / prod1 + one) * cv / d + pt)
        dk[do + k] = kk
        dt[do + k] = kd * tr[k] + kf * kk


@njit(fastmath=_FM, cache=True)
def _sin_row(sg, tr, se, xo, s2b, yo, n, c, b2, opc, omc, kf, dk, dt, do):
    """One row of the Sin step (``activations.Sin``, a sin(b x + c)): K = s a^2 / 2 (e1 - cos 2c e2) and
    Kdot = s a^2 b^2 / 2 (e1 + cos 2c e2), e1 = e^{b^2 (cov - S)}, e2 = e^{-b^2 (cov + S)}, S = (v_x + v_y) / 2,
    computed as K = c (omc C + opc T), Kdot = c b2 (opc C + omc T) with c = s a^2 / 4, opc = 1 + cos 2c =
    2 cos^2 c, omc = 1 - cos 2c = 2 sin^2 c, C = e1 + e2 and T = e1 - e2 = sign(cov) (P - Q), where
    P = e^{-b^2 ((nx ny - |cov|) + (nx - ny)^2 / 2)}, Q = P e^{-2 b^2 |cov|} and P - Q = -P expm1(-2 b^2 |cov|):
    every exponent a sum of non-positive terms and no difference of nearly equal exponentials (an odd
    Sin, c = 0, has K = c opc T, small where cov is: computed to its own relative precision), all in
    vectorisable polynomials (``_exp_neg``, ``_expm1_neg``).  cov clamped to [-nx ny, nx ny] (a self
    pair's +huge becomes its true variance: P = 1 exactly); smooth at zero variance, never NaN."""
    half = _cst(sg, 0.5)
    zero = _cst(sg, 0.0)
    for k in range(np.uint64(n)):
        nx = se[xo + k]
        ny = s2b[yo + k]
        norm = nx * ny
        cv = min(max(sg[k], -norm), norm)
        acv = abs(cv)
        dd = nx - ny
        p = _exp_neg(-b2 * ((norm - acv) + half * dd * dd))
        m = _expm1_neg(-(b2 + b2) * acv)
        diff = -(p * m)  # P - Q >= 0
        cc = (p + p) + p * m  # P + Q
        tt = diff if cv >= zero else -diff
        kk = c * (omc * cc + opc * tt)
        kd = c * b2 * (opc * cc + omc * tt)
        dk[do + k] = kk
        dt[do + k] = kd * tr[k] + kf * kk


@njit(fastmath=_FM, cache=True)
def _zero_border(buf, hh, ww, r):
    """Zero the border (r rows above and below, r columns left and right) of a block-layout plane."""
    zero = _cst(buf, 0.0)
    s_ = ww + 2 * r
    sb = np.uint64(s_ * _B)
    rb = np.uint64(r * _B)
    top = np.uint64(r) * sb
    for k in range(top):
        buf[k] = zero
    bottom = np.uint64((hh + r) * s_ * _B)
    for k in range(top):
        buf[bottom + k] = zero
    right = np.uint64((r + ww) * _B)
    for u in range(hh):
        o = np.uint64((u + r) * s_ * _B)
        for k in range(rb):
            buf[o + k] = zero
            buf[o + right + k] = zero


@njit(fastmath=_FM, cache=True)
def _plane_block(xe, se, ie, x2b, s2b, i2b, shape, cb, di, dj, exl, q, prm, ntk, act, keep, bufs, rows, lacc, tot,
                 pool=None, dbufs=None):
    """Add to tot[0, lane] the sum over the plane of offset (di, dj) of the last layer's Theta (ntk) or
    Sigma (nngp) of the pair (x1[a], x2[cb * B + lane]), for the B lanes of block cb at once.
    Several readouts in one pass (keep an array, tot of 2 L rows): for every layer h with keep[h] and
    the last, the plane sums of K^(h) into tot[2 h] and of Kdot Theta + kf K into tot[2 h + 1] (lacc:
    their row accumulators).  keep=None (a single readout) compiles without any of that: numba prunes
    the ``keep is not None`` branches of that specialisation.

    xe (C, H, W, B), se (L, H, W, B): x1[a] and its std maps, each value repeated B times (flat);
    x2b (NB, C, H, W, B), s2b (NB, L, H, W, B): lane-interleaved blocks of x2 and its std maps
    (flat); ie, i2b: the inverse std maps (0 where the std is 0; the ReLU step's rho, ``_rho``), laid
    out as se, s2b; shape = (C, H, W, L); exl: the lane whose image is x1[a] itself, or -1.
    prm (7, L + 1) per layer: the ReLU-part constant s (b - a)^2 / (2 pi), the ABReLU constants c2,
    za, zb (0 for ReLU), whether the next weight layer is trained, the bias variance of weight layer
    ``layer``, and (column 0 of row 6) the first layer's scale and (row 6, column 1) whether it is trained.
    act: 0 for the ReLU family (ReLU, ABReLU), 1 for Erf (row 0 is then s 2 / pi), 2 for Gelu (row 0
    s / (2 pi)), 3 for Sin (row 0 s a^2 / 4, rows 1 to 3 b^2, 2 cos^2 c and 2 sin^2 c: ``_sin_row``); the
    ABReLU pass runs for act 0 only.

    Planes are in the block layout: row u, column v, lane l at (u * S + v) * B + l, S = ww + q - 1,
    interior shifted by q // 2 with a zero border.  Layer by layer, K and Kdot Theta + K of layer h
    go to one pair of plane buffers while row u of Sigma^(h) and Theta^(h) is box-summed, row by
    row, from the other pair (one-row scratch, L1 resident); the last layer's rows are summed.

    pool (pooled chains; None compiles without it): (hs, ws, l0, l1, mh, mw, src, dst, kp, mh2, mw2),
    one stage of hs x ws pixels whose planes |di| <= mh, |dj| <= mw run activation layers l0..l1-1:
    from the raw images when l0 = 0, else from src, the pooled K and Kdot Theta + K of this stage
    (``_scatter_row`` layout); when kp > 1 the last layer's rows are pooled into dst (the next stage,
    window mh2, mw2) instead of summed.  The std maps se, s2b keep the canvas stride H x W.

    dbufs (the paper's "fix" read off the same pass; with keep, ntk and a trained first layer; None
    compiles without it): (5, size) scratch, two plane buffers, a row of D, a row of ones and a row of
    Kdot D.  D is the first layer's share of Theta: D^(0) = Theta^(0) = Sigma^(0) and D^(h+1) =
    box(Kdot^(h) D^(h)), no K or bias term, so that Theta with the first layer frozen is Theta - D at
    every layer.  The activation step then runs with Theta = 1 and kf = 0 (it writes Kdot), and
    Kdot Theta + kf K and Kdot D are formed here; the plane sums of Kdot^(h) D^(h) go to tot[2 L + h]."""
    n_c, h, w, n_layers = shape
    r = q // 2
    hs, ws, l0, l1, kp = _stage_dims(pool, h, w, n_layers)
    i0 = max(0, -di)
    j0 = max(0, -dj)
    hh = hs - abs(di)
    ww = ws - abs(dj)
    s_ = ww + 2 * r
    sb = s_ * _B
    n = ww * _B
    un = np.uint64(n)
    zero = _cst(xe, 0.0)
    one = _cst(xe, 1.0)
    # every array of the row loops without its owner (``_unowned``): no atomic reference counts per row
    xe, se, ie, x2b, s2b, i2b = _unowned(xe), _unowned(se), _unowned(ie), _unowned(x2b), _unowned(s2b), _unowned(i2b)
    bufs, rows, lacc, prm = _unowned(bufs), _unowned(rows), _unowned(lacc), _unowned(prm)
    pka, pkb, pta, ptb = bufs[0], bufs[1], bufs[2], bufs[3]
    sg, tr, vsr, rk, rt, acc = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
    for buf in (pka, pkb, pta, ptb):
        _zero_border(buf, hh, ww, r)
    if dbufs is not None:
        dbu = _unowned(dbufs)  # (a new name: rebinding dbufs would defeat the pruning of its None branches)
        pda, pdb, drow, ones, rd = dbu[0], dbu[1], dbu[2], dbu[3], dbu[4]
        _zero_border(pda, hh, ww, r)
        _zero_border(pdb, hh, ww, r)
        for k in range(un):
            ones[k] = one
    raw_rows = hh
    if pool is not None:
        if pool[2] > 0:  # the pooled K and Kdot Theta + K of this plane into the interiors
            _load_plane(pool[6], (di + pool[4]) * (2 * pool[5] + 1) + dj + pool[5], hs, ws, i0, j0, hh, ww, r, pka, pta)
            raw_rows = 0
    # Sigma0 products sum_c x[c, p] y[c, p + d], before the box sum, into pka's interior
    for u in range(raw_rows):
        po = np.uint64(((u + r) * s_ + r) * _B)
        for ch in range(n_c):
            xo = np.uint64(((ch * h + i0 + u) * w + j0) * _B)
            yo = np.uint64((((cb * n_c + ch) * h + i0 + u + di) * w + j0 + dj) * _B)
            if ch == 0:
                for k in range(un):
                    pka[po + k] = xe[xo + k] * x2b[yo + k]
            else:
                for k in range(un):
                    pka[po + k] += xe[xo + k] * x2b[yo + k]
    for k in range(un):
        acc[k] = zero
        tr[k] = zero
    if keep is not None:
        for layer in range(n_layers):
            if keep[layer] != 0 or layer == n_layers - 1:
                for k in range(un):
                    lacc[2 * layer, k] = zero
                    lacc[2 * layer + 1, k] = zero
                if dbufs is not None:
                    for k in range(un):
                        lacc[2 * n_layers + layer, k] = zero
    # a self pair's zero plane (lane exl): rho = 1 exactly, by a Sigma that clamps to it
    exact = exl >= 0 and di == 0 and dj == 0
    huge = _cst(xe, 1e30)
    s0 = prm[6, 0]
    t0 = prm[6, 1] != zero
    for layer in range(l0, l1):
        last = layer == l1 - 1
        c = prm[0, layer]
        c2 = prm[1, layer]
        za = prm[2, layer]
        zb = prm[3, layer]
        ab = act == 0 and (c2 != zero or za != zero or zb != zero)  # Sin keeps its own constants in rows 1-3
        kf = prm[4, layer]  # 0 when the next weight layer is frozen (the paper's fix: Theta^(L) without K^(L))
        kft = kf
        if dbufs is not None:
            kf = zero  # the activation step writes Kdot (Theta = 1, kf = 0); Kdot Theta + kft K below
        b2 = prm[5, layer]
        tb = b2 if (layer == 0 and t0) or (layer > 0 and prm[4, layer - 1] != zero) else zero  # a trained bias
        # ReLU with 3 x 3 filters (the paper's family): the box sums' horizontal half fused into the ReLU
        # step (``_relu_box_row``), sg and tr holding the vertical sums; a self pair's zero plane, ABReLU,
        # a frozen first layer's Theta^(0) = 0, a frozen next layer (kf = 0) and other filter sizes take
        # the general path below.
        fuse = (act == 0 and not ab and not exact and q == 3 and not (ntk and layer == 0 and not t0)
                and (kf == one or not ntk))
        sfirst = s0 if layer == 0 else one
        tfirst = b2 if layer == 0 else tb  # Theta^(0) = Sigma^(0): vt = vs, the same bias
        vt = tr if ntk and layer > 0 else sg  # (array choices out of the row loop: each costs an atomic incref)
        # Theta^(0) = Sigma^(0), or 0 when the first layer is frozen (tr stays zero)
        theta = sg if (ntk and layer == 0 and t0 and not exact) else tr
        ffix = False  # the fused row with the fix readout (``_relu_box_fix_row``): D's vertical sums in drow
        if dbufs is not None:  # the activation step sees Theta = 1 (it writes Kdot); tin: the true Theta
            tin = theta
            theta = ones
            ffix = act == 0 and not ab and not exact and q == 3 and t0
            vd = sg if layer == 0 else drow  # D^(0) = Theta^(0) = Sigma^(0), its bias; no bias after
            dfirst = b2 if layer == 0 else zero
        for u in range(hh):
            if fuse or ffix:
                _vsum3(pka, u, sb, sg, sfirst, one)
                if ntk and layer > 0:
                    _vsum3(pta, u, sb, tr, one, one)
                if ffix and layer > 0:
                    _vsum3(pda, u, sb, drow, one, one)
            else:
                _box_row(pka, u, sb, q, vsr, sg, n)
                if layer == 0 and s0 != one:
                    for k in range(un):
                        sg[k] *= s0
                if b2 != zero:
                    for k in range(un):
                        sg[k] += b2
                if exact:
                    if ntk and layer == 0 and t0:  # Theta^(0) = Sigma^(0): keep the true values
                        for k in range(un):
                            tr[k] = sg[k]
                    for v in range(ww):
                        sg[v * _B + exl] = huge
                if ntk and layer > 0:
                    _box_row(pta, u, sb, q, vsr, tr, n)
                    if tb != zero:
                        for k in range(un):
                            tr[k] += tb
            xo = np.uint64(((layer * h + i0 + u) * w + j0) * _B)
            yo = np.uint64((((cb * n_layers + layer) * h + i0 + u + di) * w + j0 + dj) * _B)
            if dbufs is not None and not ffix:
                dsrc = tin  # D^(0) = Theta^(0)
                if layer > 0:
                    _box_row(pda, u, sb, q, vsr, drow, n)
                    dsrc = drow
            if last:
                if act == 1:
                    _erf_row(sg, theta, se, xo, s2b, yo, n, c, kf, rk, rt, np.uint64(0))
                elif act == 2:
                    _gelu_row(sg, theta, se, xo, s2b, yo, n, c, kf, rk, rt, np.uint64(0))
                elif act == 3:
                    _sin_row(sg, theta, se, xo, s2b, yo, n, c, c2, za, zb, kf, rk, rt, np.uint64(0))
                elif fuse:
                    _relu_box_row(sg, vt, b2, tfirst, se, ie, xo, s2b, i2b, yo, n, c, vsr, rk, rt,
                                  np.uint64(0))
                elif ffix:
                    _relu_box_fix_row(sg, vt, vd, b2, tfirst, dfirst, kft, se, ie, xo, s2b, i2b, yo, n, c, vsr, rk, rt, rd,
                                      np.uint64(0))
                else:
                    _relu_row(sg, theta, se, ie, xo, s2b, i2b, yo, n, c, kf, vsr, rk, rt, np.uint64(0))
                if ab:
                    _abrelu_row(sg, theta, se, xo, s2b, yo, n, c2, za, zb, kf, rk, rt, np.uint64(0))
                if dbufs is not None:
                    if not ffix:
                        _fix_row(tin, dsrc, kft, rk, rt, rd, np.uint64(0), un)
                    _add_one(lacc, 2 * n_layers + layer, rd, np.uint64(0), un)
                if keep is not None:
                    _add_row(lacc, 2 * layer, rk, rt, np.uint64(0), un, ntk)
                elif pool is not None and kp > 1:
                    _scatter_row(rk, rt, ntk, i0 + u, di, j0, dj, ww, kp, hs // kp, ws // kp, pool[9], pool[10], pool[7])
                else:
                    fin = rt if ntk else rk
                    for k in range(un):
                        acc[k] += fin[k]
            else:
                po = np.uint64(((u + r) * s_ + r) * _B)
                if act == 1:
                    _erf_row(sg, theta, se, xo, s2b, yo, n, c, kf, pkb, ptb, po)
                elif act == 2:
                    _gelu_row(sg, theta, se, xo, s2b, yo, n, c, kf, pkb, ptb, po)
                elif act == 3:
                    _sin_row(sg, theta, se, xo, s2b, yo, n, c, c2, za, zb, kf, pkb, ptb, po)
                elif fuse:
                    _relu_box_row(sg, vt, b2, tfirst, se, ie, xo, s2b, i2b, yo, n, c, vsr, pkb, ptb,
                                  po)
                elif ffix:
                    _relu_box_fix_row(sg, vt, vd, b2, tfirst, dfirst, kft, se, ie, xo, s2b, i2b, yo, n, c, vsr, pkb, ptb, pdb,
                                      po)
                else:
                    _relu_row(sg, theta, se, ie, xo, s2b, i2b, yo, n, c, kf, vsr, pkb, ptb, po)
                if ab:
                    _abrelu_row(sg, theta, se, xo, s2b, yo, n, c2, za, zb, kf, pkb, ptb, po)
                if dbufs is not None:
                    if not ffix:
                        _fix_row(tin, dsrc, kft, pkb, ptb, pdb, po, un)
                    if keep[layer] != 0:
                        _add_one(lacc, 2 * n_layers + layer, pdb, po, un)
                if keep is not None:
                    if keep[layer] != 0:
                        _add_row(lacc, 2 * layer, pkb, ptb, po, un, ntk)
        pka, pkb = pkb, pka
        pta, ptb = ptb, pta
        if dbufs is not None:
            pda, pdb = pdb, pda
    if keep is not None:
        for layer in range(n_layers):
            if keep[layer] != 0 or layer == n_layers - 1:
                for j in range(2 * layer, 2 * layer + 2):
                    _fold_into(lacc[j], ww, tot, j)
                if dbufs is not None:
                    _fold_into(lacc[2 * n_layers + layer], ww, tot, 2 * n_layers + layer)
        return
    if pool is not None and kp > 1:
        return
    # pairwise fold of the ww positions of acc, then into the lanes' float64 totals
    ub = np.uint64(_B)
    m = ww
    while m > 1:
        half = m // 2
        keep = m - half
        off = np.uint64(keep * _B)
        for k in range(np.uint64(half * _B)):
            acc[k] += acc[k + off]
        m = keep
    for lane in range(ub):
        tot[0, lane] += np.float64(acc[lane])


@njit(cache=True)
def _stage_dims(pool, h, w, n_layers):
    """(hs, ws, first layer, end layer, pool size) of ``_plane_block``'s stage: the whole chain when pool is None."""
    if pool is None:
        return h, w, 0, n_layers, 1
    return pool[0], pool[1], pool[2], pool[3], pool[8]


@njit(fastmath=_FM, cache=True)
def _load_plane(src, plane, hs, ws, i0, j0, hh, ww, r, pk, pt):
    """Copy plane ``plane`` of a stage's pooled buffers (``_scatter_row``) into the interiors of the
    block-layout planes pk (K) and pt (Kdot Theta + K): row u is the x pixel row i0 + u."""
    half = np.uint64(src.shape[0] // 2)
    s_ = ww + 2 * r
    un = np.uint64(ww * _B)
    for u in range(hh):
        po = np.uint64(((u + r) * s_ + r) * _B)
        so = np.uint64(((plane * hs + i0 + u) * ws + j0) * _B)
        for k in range(un):
            pk[po + k] = src[so + k]
            pt[po + k] = src[half + so + k]


@njit(fastmath=_FM, cache=True)
def _scatter_row(rk, rt, ntk, xi, di, j0, dj, ww, kp, hs2, ws2, mh2, mw2, dst):
    """Pool one row of a plane (x pixel row xi, offset (di, dj)) into the next stage: the entry of x
    pixel (xi, xj) and y pixel (xi + di, xj + dj) adds 1 / kp^4 of K (rk) and Kdot Theta + K (rt) to
    the next stage's plane (D_i, D_j) = ((xi + di) // kp - xi // kp, ...) at x pixel (xi // kp, xj // kp)
    when |D_i| <= mh2 and |D_j| <= mw2.  dst: K planes then Theta planes, each ((2 mh2 + 1)(2 mw2 + 1),
    hs2, ws2, B), the planes in x pixel coordinates (zero where the partner pixel leaves the image)."""
    half = np.uint64(dst.shape[0] // 2)
    inv = _cst(rk, 1.0 / float(kp) ** 4)
    pi = (xi + di) // kp - xi // kp
    if abs(pi) > mh2:
        return
    row = (pi + mh2) * (2 * mw2 + 1)
    xpi = xi // kp
    for v in range(ww):
        xj = j0 + v
        pj = (xj + dj) // kp - xj // kp
        if abs(pj) > mw2:
            continue
        o = np.uint64((((row + pj + mw2) * hs2 + xpi) * ws2 + xj // kp) * _B)
        src = np.uint64(v * _B)
        for lane in range(np.uint64(_B)):
            dst[o + lane] += rk[src + lane] * inv
        if ntk:
            for lane in range(np.uint64(_B)):
                dst[half + o + lane] += rt[src + lane] * inv


@njit(fastmath=_FM, cache=True, inline="always")
def _add_row(lacc, j, dk, dt, do, un, ntk):
    """lacc[j] += the row of K at dk[do:], lacc[j + 1] += the row of Kdot Theta + kf K at dt[do:]."""
    for k in range(un):
        lacc[j, k] += dk[do + k]
    if ntk:
        for k in range(un):
            lacc[j + 1, k] += dt[do + k]


@njit(fastmath=_FM, cache=True, inline="always")
def _fix_row(tin, dsrc, kf, dk, dt, de, do, un):
    """From Kdot at dt[do:] (an activation step run with Theta = 1, kf = 0): dt = Kdot Theta + kf K (K at
    dk[do:], Theta the row tin) and de = Kdot D (D the row dsrc)."""
    for k in range(un):
        kd = dt[do + k]
        dt[do + k] = kd * tin[k] + kf * dk[do + k]
        de[do + k] = kd * dsrc[k]


@njit(fastmath=_FM, cache=True, inline="always")
def _add_one(lacc, j, src, so, un):
    """lacc[j] += the row at src[so:]."""
    for k in range(un):
        lacc[j, k] += src[so + k]


def _dscratch(fix, size, like):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_dscratch)
def _dscratch_ol(fix, size, like):
    """``_plane_block``'s dbufs: None when fix is None (that specialisation compiles without the fix
    readout), else (5, size) scratch of like's dtype."""
    if isinstance(fix, (types.NoneType, types.Omitted)):
        return lambda fix, size, like: None

    def impl(fix, size, like):
        return np.zeros((5, size), dtype=like.dtype)

    return impl


@njit(fastmath=_FM, cache=True)
def _fold_into(a, ww, tot, j):
    """Pairwise fold of the ww positions of row a (ww * B), then into tot[j, lane] (float64)."""
    m = ww
    while m > 1:
        half = m // 2
        keep = m - half
        off = np.uint64(keep * _B)
        for k in range(np.uint64(half * _B)):
            a[k] += a[k + off]
        m = keep
    for lane in range(np.uint64(_B)):
        tot[j, lane] += np.float64(a[lane])


@njit(fastmath=_FM, cache=True)
def _spread(src, a, dst):
    """dst[k * B + lane] = src[a * n + k] for every lane, n = len(dst) // B (image a, repeated B times)."""
    n = dst.shape[0] // _B
    base = np.uint64(a * n)
    ub = np.uint64(_B)
    for k in range(np.uint64(n)):
        val = src[base + k]
        for lane in range(ub):
            dst[k * ub + lane] = val


@njit(fastmath=_FM, cache=True)
def _inverse(s, inv):
    """inv[k] = 1 / s[k], 0 where s[k] = 0 (stds are >= 0): the float32 ReLU step's rho (``_rho``)."""
    zero = _cst(s, 0.0)
    one = _cst(s, 1.0)
    for k in range(s.shape[0]):
        inv[k] = one / s[k] if s[k] > zero else zero


@njit(fastmath=_FM, cache=True, nogil=True)
def _run_items(x1, s1, x2b, s2b, i2b, shape, ia, icb, exl, dis, djs, gstart, q, prm, ntk, act, keep, fix, lo, hi, out):
    """Work items lo..hi-1 (item = block * n_groups + group): out[blk, g, j, lane] = sum over the
    planes of group g of the pair (x1[ia[blk]], x2[icb[blk] * B + lane]), readout j of ``_plane_block``
    (one readout, j = 0, when keep is None; fix not None: also the fix readouts, ``dbufs``); i2b: the
    inverse of s2b (``_inverse``).  Releases the GIL."""
    n_groups = gstart.shape[0] - 1
    n_c, h, w, n_layers = shape
    size = (h + q - 1) * (w + q - 1) * _B
    row = (w + q - 1) * _B
    bufs = np.empty((4, size), dtype=x1.dtype)
    rows = np.empty((6, row), dtype=x1.dtype)
    n_out = out.shape[2]
    lacc = np.empty((n_out, row), dtype=x1.dtype)
    tot = np.empty((n_out, _B), dtype=np.float64)
    xe = np.empty(n_c * h * w * _B, dtype=x1.dtype)
    se = np.empty(n_layers * h * w * _B, dtype=x1.dtype)
    dbufs = _dscratch(fix, size, x1)
    ie = np.empty_like(se)
    current = -1
    for item in range(lo, hi):
        blk = item // n_groups
        g = item - blk * n_groups
        if ia[blk] != current:
            current = ia[blk]
            _spread(x1, current, xe)
            _spread(s1, current, se)
            _inverse(se, ie)
        tot[:] = 0.0
        for k in range(gstart[g], gstart[g + 1]):
            _plane_block(
                xe, se, ie, x2b, s2b, i2b, shape, icb[blk], dis[k], djs[k], exl[blk], q, prm, ntk, act, keep, bufs,
                rows, lacc, tot, None, dbufs
            )
        for j in range(n_out):
            for lane in range(_B):
                out[blk, g, j, lane] = tot[j, lane]


@njit(fastmath=_FM, cache=True, nogil=True)
def _run_pooled(x1, s1, x2b, s2b, i2b, shape, ia, icb, exl, sinfo, dis, djs, pstart, q, prm, ntk, act, lo, hi, out):
    """Pooled chains: work items lo..hi-1, one block of B pairs each (out[blk, 0, 0, lane]), run stage
    by stage.  sinfo (S, 9) per stage: hs, ws, first and end activation layer, window mh, mw, the pool
    size after it (1: the last stage), the offset and length in a per-thread buffer of its input planes
    (the pooled K and Kdot Theta + K, ``_scatter_row``; length 0 for stage 0); its planes are
    dis / djs[pstart[s] : pstart[s + 1]]; i2b: the inverse of s2b (``_inverse``).  Releases the GIL."""
    n_c, h, w, n_layers = shape
    n_st = sinfo.shape[0]
    size = (h + q - 1) * (w + q - 1) * _B
    row = (w + q - 1) * _B
    bufs = np.empty((4, size), dtype=x1.dtype)
    rows = np.empty((6, row), dtype=x1.dtype)
    lacc = np.empty((1, row), dtype=x1.dtype)
    tot = np.empty((1, _B), dtype=np.float64)
    xe = np.empty(n_c * h * w * _B, dtype=x1.dtype)
    se = np.empty(n_layers * h * w * _B, dtype=x1.dtype)
    ie = np.empty_like(se)
    pbuf = np.empty(sinfo[n_st - 1, 7] + sinfo[n_st - 1, 8], dtype=x1.dtype)
    zero = _cst(x1, 0.0)
    current = -1
    for blk in range(lo, hi):
        if ia[blk] != current:
            current = ia[blk]
            _spread(x1, current, xe)
            _spread(s1, current, se)
            _inverse(se, ie)
        tot[:] = 0.0
        for st in range(n_st):
            src = pbuf[sinfo[st, 7] : sinfo[st, 7] + sinfo[st, 8]]
            nxt = min(st + 1, n_st - 1)
            dst = pbuf[sinfo[nxt, 7] : sinfo[nxt, 7] + (sinfo[nxt, 8] if st + 1 < n_st else 0)]
            dst[:] = zero
            if sinfo[st, 2] == sinfo[st, 3]:  # no activation: a pool right before the readout, sum its planes
                _sum_lanes(src, src.shape[0] // 2 if ntk else 0, src.shape[0] // 2, tot)
                continue
            pool = (sinfo[st, 0], sinfo[st, 1], sinfo[st, 2], sinfo[st, 3], sinfo[st, 4], sinfo[st, 5], src, dst,
                    sinfo[st, 6], sinfo[nxt, 4], sinfo[nxt, 5])
            for k in range(pstart[st], pstart[st + 1]):
                _plane_block(xe, se, ie, x2b, s2b, i2b, shape, icb[blk], dis[k], djs[k], exl[blk], q, prm, ntk, act,
                             None, bufs, rows, lacc, tot, pool)
        for lane in range(_B):
            out[blk, 0, 0, lane] = tot[0, lane]


@njit(cache=True)
def _sum_lanes(a, start, n, tot):
    """tot[0, lane] += the sum of a[start + k * B + lane] over k < n / B, in float64."""
    for k in range(n):
        tot[0, k % _B] += np.float64(a[start + k])


def _stage_table(c: Chain, h: int, w: int, gap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sinfo, dis, djs, pstart) of ``_run_pooled`` for h x w inputs (the windows of ``planes.windows``)."""
    stages, wins = c.stages(h, w), planes.windows(c, h, w, gap)
    layers = [c.stage_of(layer) for layer in range(c.n_act_layers)]
    sinfo = np.zeros((len(stages), 9), dtype=np.int64)
    dis, djs, pstart, off = [], [], [0], 0
    for s, ((hs, ws, k), (mh, mw)) in enumerate(zip(stages, wins)):
        l0 = layers.index(s) if s in layers else c.n_act_layers  # none: a pool right before the readout
        length = 0 if s == 0 else 2 * (2 * mh + 1) * (2 * mw + 1) * hs * ws * _B
        sinfo[s] = (hs, ws, l0, l0 + layers.count(s), mh, mw, k, off, length)
        off += length
        di, dj = np.meshgrid(np.arange(-mh, mh + 1), np.arange(-mw, mw + 1), indexing="ij")
        dis.append(di.reshape(-1))
        djs.append(dj.reshape(-1))
        pstart.append(pstart[-1] + di.size)
    return sinfo, np.concatenate(dis).astype(np.int64), np.concatenate(djs).astype(np.int64), np.array(pstart, np.int64)


def supports(net: Network, device: torch.device) -> str | None:
    """CPU; CNN chains whose activations are all one and the same ReLU, ABReLU, Erf, Gelu or Sin."""
    if torch.device(device).type != "cpu":
        return "it runs on the CPU only"
    reason = family_chain(net, "cnn")
    if reason is not None:
        return reason
    c = chain(net)
    if len(set(c.acts)) != 1 or not isinstance(c.acts[0], (ReLU, ABReLU, Erf, Gelu, Sin)):
        return (f"it compiles ReLU, ABReLU, Erf, Gelu and Sin, one for every layer (got "
                f"{', '.join(sorted({a.name for a in c.acts}))})")
    return None


def _act_code(c: Chain) -> int:
    """The compiled activation: 0 the ReLU family, 1 Erf, 2 Gelu, 3 Sin."""
    act = c.acts[0]
    return 1 if isinstance(act, Erf) else 2 if isinstance(act, Gelu) else 3 if isinstance(act, Sin) else 0


def params(c: Chain, channels: int, dtype) -> np.ndarray:
    """The (7, L + 1) constants of ``_plane_block`` for chain c (module docstring)."""
    n = c.n_act_layers
    prm = np.zeros((7, n + 1), dtype=dtype)
    act = c.acts[0]
    a, b = (float(act.a), float(act.b)) if isinstance(act, ABReLU) else (0.0, 1.0)
    for layer in range(n):
        s = c.scale(layer + 1)
        if isinstance(act, Erf):
            prm[0, layer] = s * 2.0 / math.pi
        elif isinstance(act, Gelu):
            prm[0, layer] = s / (2.0 * math.pi)
        elif isinstance(act, Sin):
            prm[0, layer] = s * float(act.a) ** 2 / 4
            prm[1, layer] = float(act.b) ** 2
            prm[2, layer] = 2.0 * math.cos(float(act.c)) ** 2
            prm[3, layer] = 2.0 * math.sin(float(act.c)) ** 2
        else:
            prm[0, layer] = s * (b - a) ** 2 / (2.0 * math.pi) if (a, b) != (0.0, 1.0) else s / (2.0 * math.pi)
            prm[1, layer] = s * a * b
            prm[2, layer] = s * a * (a + b) / 2
            prm[3, layer] = s * a * a
        prm[4, layer] = 1.0 if c.trainable[layer + 1] else 0.0
        prm[5, layer] = c.b2[layer]
    prm[6, 0] = c.scale(0, channels)
    prm[6, 1] = 1.0 if c.trainable[0] else 0.0
    return prm


@njit(fastmath=_FM, cache=True, nogil=True)
def _prepare_kernel(x, q, n_layers, coef, bias, s0, act, aux, out):
    """out[n, h - 1] = sqrt(Sigma^(h-1)(x, x)[p, p]) (flat (N, L, H, W)), the closed form of
    ``planes.prepare``: on the self pair's zero plane rho = 1, so Sigma^(h) = box(coef[h - 1]
    E[phi(u)^2] / var ... ) + bias[h] there, E[phi(u)^2] = ``self_k(v)``: act 0 (ReLU family) coef = the
    next layer's scale times E[phi(u)^2] / v; act 1 (Erf) coef = the next layer's scale, times
    (2 / pi) asin(2 v / (1 + 2 v)); act 2 (Gelu) coef = the scale, times v ((v / ((v + 1) r) + atan2(v, r) / 2)
    / pi + 1 / 4), r = sqrt(1 + 2 v); act 3 (Sin) coef = the scale times a^2 / 2, times
    1 - e^{-2 b^2 v} cos 2c = 2 sin^2 c - cos 2c expm1(-2 b^2 v) (aux = (b^2, cos 2c, 2 sin^2 c): no
    cancellation at small v when cos 2c > 0).
    Sigma^(0) = s0 box(x . x) + bias[0].  x: flat (N, C, H, W); shape taken from out."""
    n_img, _, h, w = out.shape
    n_c = x.shape[0] // (n_img * h * w)
    r = q // 2
    s_ = w + 2 * r
    us = np.uint64(s_)
    uw = np.uint64(w)
    zero = _cst(x, 0.0)
    one = _cst(x, 1.0)
    two = _cst(x, 2.0)
    two_pi = _cst(x, 2.0 / math.pi)
    quarter = _cst(x, 0.25)
    half = _cst(x, 0.5)
    inv_pi = _cst(x, 1.0 / math.pi)
    sb2 = aux[0]
    c2c = aux[1]
    omc = aux[2]
    pad = np.zeros((h + 2 * r) * s_, dtype=x.dtype)  # zero border of width r, row stride s_
    vsr = np.empty(s_, dtype=x.dtype)
    flat = out.reshape(-1)
    for img in range(n_img):
        for i in range(h):
            po = np.uint64((i + r) * s_ + r)
            for ch in range(n_c):
                xo = np.uint64(((img * n_c + ch) * h + i) * w)
                if ch == 0:
                    for j in range(uw):
                        pad[po + j] = x[xo + j] * x[xo + j]
                else:
                    for j in range(uw):
                        pad[po + j] += x[xo + j] * x[xo + j]
        for layer in range(n_layers):
            # box sum row by row into the output (var), then sqrt in place; the next layer's input
            # (scale / 2) var goes back into pad's interior once all rows are done
            for i in range(h):
                b0 = np.uint64(i * s_)
                for j in range(us):
                    vsr[j] = pad[b0 + j]
                for t in range(1, q):
                    bt = np.uint64((i + t) * s_)
                    for j in range(us):
                        vsr[j] += pad[bt + j]
                oo = np.uint64(((img * n_layers + layer) * h + i) * w)
                for j in range(uw):
                    flat[oo + j] = vsr[j]
                for t in range(1, q):
                    ut = np.uint64(t)
                    for j in range(uw):
                        flat[oo + j] += vsr[j + ut]
            base = np.uint64((img * n_layers + layer) * h * w)
            scl = s0 if layer == 0 else _cst(x, 1.0)
            b2 = bias[layer]
            cf = coef[layer]
            for i in range(h):
                po = np.uint64((i + r) * s_ + r)
                oo = base + np.uint64(i * w)
                if act == 1:  # one loop each: a branch inside would keep the ReLU loop from vectorising
                    for j in range(uw):
                        var = max(flat[oo + j] * scl + b2, zero)
                        pad[po + j] = cf * two_pi * math.asin(two * var / (one + two * var))
                        flat[oo + j] = math.sqrt(var)
                elif act == 2:
                    for j in range(uw):
                        var = max(flat[oo + j] * scl + b2, zero)
                        rt = math.sqrt(one + two * var)
                        pad[po + j] = cf * var * ((var / ((var + one) * rt) + half * math.atan2(var, rt)) * inv_pi
                                                  + quarter)
                        flat[oo + j] = math.sqrt(var)
                elif act == 3:
                    for j in range(uw):
                        var = max(flat[oo + j] * scl + b2, zero)
                        pad[po + j] = cf * (omc - c2c * math.expm1(-two * sb2 * var))
                        flat[oo + j] = math.sqrt(var)
                else:
                    for j in range(uw):
                        var = max(flat[oo + j] * scl + b2, zero)
                        pad[po + j] = var * cf
                        flat[oo + j] = math.sqrt(var)


def prepare(x: torch.Tensor, net: Network | Chain, shapes=None) -> torch.Tensor:
    """sqrt(Sigma^(h-1)(x, x)[p, p]) for h = 1..L, shape (N, L, H, W), as ``planes.prepare`` (in
    compiled code: a few small torch ops per image cost more than this whole loop)."""
    c = net if isinstance(net, Chain) else chain(net)
    if c.pooled:  # the self pairs' windowed recursion (O(N)): torch is fast enough
        return planes.prepare(x.to("cpu"), c)
    a = _np(x)
    n = c.n_act_layers
    out = np.empty((a.shape[0], n, a.shape[2], a.shape[3]), dtype=a.dtype)
    act = c.acts[0]
    half = (float(act.a) ** 2 + float(act.b) ** 2) / 2 if isinstance(act, ABReLU) else 0.5
    aux = np.zeros(3, dtype=a.dtype)
    if isinstance(act, (Erf, Gelu)):
        coef = np.array([c.scale(layer + 1) for layer in range(n)], dtype=a.dtype)
    elif isinstance(act, Sin):
        coef = np.array([c.scale(layer + 1) * float(act.a) ** 2 / 2 for layer in range(n)], dtype=a.dtype)
        aux[:] = (float(act.b) ** 2, math.cos(2.0 * float(act.c)), 2.0 * math.sin(float(act.c)) ** 2)
    else:
        coef = np.array([c.scale(layer + 1) * half if half != 0.5 else c.scale(layer + 1) / 2 for layer in range(n)],
                        dtype=a.dtype)
    bias = np.array([c.b2[layer] for layer in range(n)], dtype=a.dtype)
    if out.size:
        _prepare_kernel(a.reshape(-1), c.filter_size, n, coef, bias, a.dtype.type(c.scale(0, a.shape[1])),
                        _act_code(c), aux, out)
    return torch.from_numpy(out)


def bytes_per_pair(shape: tuple[int, int, int], net: Network, itemsize: int) -> int:
    """Memory that grows with the pairs of one call: block indices and per-group totals, tens of bytes.
    The rest is per worker thread and independent of the pairs: four (H + q - 1)(W + q - 1) x B plane
    buffers and the (C + L) H W x B spread image of x1 (B = 8), so the default batch is a whole tile;
    pooled chains add the next stages' plane buffers (module docstring, "Pools"), one per worker
    thread and needed by any pair: counted here, so that ``memory_mb`` refuses them when they do not fit."""
    c = chain(as_network(net))
    if isinstance(c, str) or not c.pooled:
        return 64
    sinfo = _stage_table(c, shape[1], shape[2], c.readout == "gap")[0]
    return 64 + int(sinfo[-1, 7] + sinfo[-1, 8]) * itemsize * _threads()


def _planes(h: int, w: int, gap: bool) -> tuple[np.ndarray, np.ndarray]:
    if not gap:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    di, dj = np.meshgrid(np.arange(-(h - 1), h), np.arange(-(w - 1), w), indexing="ij")
    return di.reshape(-1).astype(np.int64), dj.reshape(-1).astype(np.int64)


def _groups(dis: np.ndarray, djs: np.ndarray, h: int, w: int, q: int, n_groups: int) -> np.ndarray:
    """Boundaries of n_groups contiguous plane ranges of about equal cost."""
    cost = (h - np.abs(dis) + q).astype(np.float64) * (w - np.abs(djs) + q)
    cum = np.concatenate([[0.0], np.cumsum(cost)])
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_groups) / n_groups)
    return np.unique(np.concatenate([[0], cuts, [len(dis)]])).astype(np.int64)


def _interleave(t: np.ndarray, n_blocks: int) -> np.ndarray:
    """(N, ...) -> (n_blocks, ..., B): image n at block n // B, lane n % B; zero images pad the end."""
    padded = np.zeros((n_blocks * _B, *t.shape[1:]), dtype=t.dtype)
    padded[: len(t)] = t
    return np.ascontiguousarray(np.moveaxis(padded.reshape(n_blocks, _B, *t.shape[1:]), 1, -1))


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _threads() -> int:
    """Worker threads: numba's thread count (NUMBA_NUM_THREADS, ``numba.set_num_threads``)."""
    return max(1, int(numba.get_num_threads()))


def _pool(n: int) -> ThreadPoolExecutor:
    """The worker pool, rebuilt when the thread count changes or in a forked child (whose copy of
    the parent's pool has no threads)."""
    global _POOL
    if _POOL is None or _POOL[:2] != (os.getpid(), n):
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="cntk-numba"))
    return _POOL[2]


def block_values(x1, s1, x2b, s2b, ia, icb, exl, c: Chain, kind: str, keep: np.ndarray | None = None,
                 fix: bool = False) -> np.ndarray:
    """(n_blocks, B) float64 kernel values of the pairs (x1[ia[k]], x2[icb[k] * B + lane]); numpy in and out.
    With ``keep`` (one flag per activation layer): (n_blocks, 2 L, B), the readout sums of every kept
    layer and the last (``_plane_block``; GAP already divided by P^2, no readout bias); with ``fix``
    (NTK, a trained first layer) (n_blocks, 3 L, B): rows 2 L + h the sums of Kdot D (``_plane_block``'s
    dbufs), the first layer's share of rows 2 h + 1.

    Work items (block, group of planes) are cut into a few chunks per thread and run by nogil
    compiled code on a thread pool (dynamic scheduling: a slow core does not hold the others)."""
    _, _, h, w = x1.shape
    gap = c.readout == "gap"
    if c.pooled:
        if keep is not None:
            raise ValueError("the numba backend computes one readout per pass of a pooled network")
        return _pooled_values(x1, s1, x2b, s2b, ia, icb, exl, c, kind)
    if fix and (keep is None or kind != "ntk" or not c.trainable[0]):
        raise ValueError("the fix readouts need keep, the NTK and a trained first layer")
    dis, djs = _planes(h, w, gap)
    n_threads = _threads()
    n_blocks = len(ia)
    want = 1 if not gap else min(len(dis), max(1, -(-4 * n_threads // max(n_blocks, 1))))
    gstart = _groups(dis, djs, h, w, c.filter_size, want)
    n_items = n_blocks * (len(gstart) - 1)
    groups = len(gstart) - 1
    out = np.zeros((n_blocks, groups, 1 if keep is None else (3 if fix else 2) * c.n_act_layers, _B))
    if n_items == 0:
        return out.sum(1)[:, 0] if keep is None else out.sum(1)
    shape = (x1.shape[1], h, w, s1.shape[1])
    args = (
        x1.reshape(-1), s1.reshape(-1), x2b.reshape(-1), s2b.reshape(-1), _inverse_of(s2b), shape, ia, icb, exl,
        dis, djs, gstart, c.filter_size, params(c, x1.shape[1], x1.dtype), kind == "ntk", _act_code(c),
        None if keep is None else keep.astype(np.int64), True if fix else None,
    )
    n_chunks = min(n_items, 4 * n_threads) if n_threads > 1 else 1
    cuts = [k * n_items // n_chunks for k in range(n_chunks + 1)]
    if n_chunks == 1:
        _run_items(*args, 0, n_items, out)
    else:
        jobs = [_pool(n_threads).submit(_run_items, *args, lo, hi, out) for lo, hi in zip(cuts[:-1], cuts[1:])]
        for job in jobs:
            job.result()
    vals = out.sum(1)
    vals = vals / float(h * w) ** 2 if gap else vals
    if keep is not None:
        return vals
    vals = vals[:, 0]
    bias = c.b2[-1]  # the readout's bias
    return vals + bias if bias and (kind == "nngp" or c.trainable[-1]) else vals


def _pooled_values(x1, s1, x2b, s2b, ia, icb, exl, c: Chain, kind: str) -> np.ndarray:
    """``block_values`` of a pooled chain: one work item per block, its stages in turn (``_run_pooled``)."""
    _, _, h, w = x1.shape
    sinfo, dis, djs, pstart = _stage_table(c, h, w, c.readout == "gap")
    n_blocks = len(ia)
    out = np.zeros((n_blocks, 1, 1, _B))
    n_threads = _threads()
    args = (x1.reshape(-1), s1.reshape(-1), x2b.reshape(-1), s2b.reshape(-1), _inverse_of(s2b),
            (x1.shape[1], h, w, s1.shape[1]), ia, icb, exl, sinfo, dis, djs, pstart, c.filter_size,
            params(c, x1.shape[1], x1.dtype), kind == "ntk", _act_code(c))
    n_chunks = max(1, min(n_blocks, 4 * n_threads)) if n_threads > 1 else 1
    cuts = [k * n_blocks // n_chunks for k in range(n_chunks + 1)]
    if n_chunks == 1:
        _run_pooled(*args, 0, n_blocks, out)
    else:
        for job in [_pool(n_threads).submit(_run_pooled, *args, lo, hi, out) for lo, hi in zip(cuts[:-1], cuts[1:])]:
            job.result()
    vals = out[:, 0, 0]
    hf, wf = int(sinfo[-1, 0]), int(sinfo[-1, 1])
    vals = vals / float(hf * wf) ** 2 if c.readout == "gap" else vals
    bias = c.b2[-1]
    return vals + bias if bias and (kind == "nngp" or c.trainable[-1]) else vals


def _inverse_of(s: np.ndarray) -> np.ndarray:
    """1 / s flat, 0 where s = 0 (``_inverse``)."""
    inv = np.empty(s.size, dtype=s.dtype)
    _inverse(s.reshape(-1), inv)
    return inv


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


def tile(x1, s1, x2, s2, net: Network, shapes, kind: str, symmetric: bool, batch_size: int) -> torch.Tensor:
    """All pairs of two image blocks (upper triangle only when symmetric).  Pairs go in blocks of B
    (one x1 image against B consecutive x2 images, one SIMD lane each), about ``batch_size`` pairs
    (at least one block) per parallel call."""
    c = chain(net)
    return _pairs(x1, s1, x2, s2, symmetric, batch_size,
                  lambda *a: block_values(*a, c, kind)[:, None, :])[..., 0].to(x1.dtype)


def tile_multi(x1, s1, x2, s2, net: Network, shapes, keep: np.ndarray, ntk: bool, symmetric: bool,
               batch_size: int, fix: bool = False) -> torch.Tensor:
    """(n1, n2, 2 L) float64: for every activation layer h with keep[h] (and the last), the readout
    sums of K^(h) and of Kdot Theta + kf K (``_plane_block``) of every pair, in one pass.  With ``fix``
    (ntk, a trained first layer): (n1, n2, 3 L), column 2 L + h the sums of Kdot^(h) D^(h), the first
    layer's share of column 2 h + 1 (so that column 2 h + 1 minus it is the sum with the first layer
    frozen, the paper's "fix")."""
    c = chain(net)
    return _pairs(x1, s1, x2, s2, symmetric, batch_size,
                  lambda *a: block_values(*a, c, "ntk" if ntk else "nngp", keep=keep, fix=fix))


def _pairs(x1, s1, x2, s2, symmetric: bool, batch_size: int, values) -> torch.Tensor:
    """(n1, n2, R) float64 from ``values(x1, s1, x2b, s2b, ia, icb, exl) -> (n_blocks, R, B)``, the
    pairs laid out in lane blocks (upper triangle and mirror when symmetric)."""
    n1, n2 = len(x1), len(x2)
    a, sa = _np(x1), _np(s1)
    n_blocks = -(-n2 // _B)
    x2b = _interleave(_np(x2), n_blocks)
    s2b = _interleave(_np(s2), n_blocks)
    if symmetric:
        ia = np.concatenate([np.full(n_blocks - i // _B, i) for i in range(n1)]).astype(np.int64)
        icb = np.concatenate([np.arange(i // _B, n_blocks) for i in range(n1)]).astype(np.int64)
        exl = np.where(icb == ia // _B, ia % _B, -1).astype(np.int64)
    else:
        ia, icb = (g.reshape(-1).astype(np.int64) for g in np.meshgrid(np.arange(n1), np.arange(n_blocks), indexing="ij"))
        exl = np.full(len(ia), -1, dtype=np.int64)
    parts = []
    step = max(1, int(batch_size) // _B)
    for start in range(0, len(ia), step):
        sl = slice(start, start + step)
        parts.append(values(a, sa, x2b, s2b, ia[sl], icb[sl], exl[sl]))
    vals = np.moveaxis(np.concatenate(parts), 1, 2) if parts else np.zeros((0, _B, 1))
    cols = icb[:, None] * _B + np.arange(_B)
    rows = np.broadcast_to(ia[:, None], cols.shape)
    keep = (cols < n2) & (cols >= rows) if symmetric else cols < n2
    out = np.zeros((n1, n2, vals.shape[2]), dtype=np.float64)
    out[rows[keep], cols[keep]] = vals[keep]
    if symmetric:
        out[cols[keep], rows[keep]] = vals[keep]
    return torch.from_numpy(out).to(device=x1.device)
