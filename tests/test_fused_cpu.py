"""The fused CPU backend ("numba", cntk/backends/fused_cpu.py) equals the plain P x P reference recursion.

test_backends_conformance.py and test_cntk_precision.py run every backend, this one included,
against the reference (filter sizes, fix, the new layers, zero variance, tiling, float32); here
what is particular to it: pair blocks that straddle the B-lane blocks of the kernel (more than B
images, self pairs in every lane), tiny and degenerate images, thread counts, forked children,
the arc-cosine polynomials, and the backend's wiring into ``cntk.kernel``.
"""
import itertools

import numpy as np
import pytest
import torch

import cntk

fused = pytest.importorskip("cntk.backends.fused_cpu")  # numba is a project dependency; skip cleanly without it


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max()
    return float((a - b).abs().max() / scale) if scale > 0 else float((a - b).abs().max())


def _images(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("readout", cntk.architecture.READOUTS)
def test_many_images_across_lane_blocks(readout):
    """11 x 11 symmetric (a self pair in every lane position, partial last block) and 11 x 19 cross."""
    x, y = _images(11, (2, 4, 5), 3), _images(19, (2, 4, 5), 4)
    arch = cntk.Architecture(depth=4, readout=readout)
    for a, b in [(x, None), (x, y), (y[:3], x)]:
        ref = cntk.kernel(a, b, arch, backend="reference")
        got = cntk.kernel(a, b, arch, backend="numba")
        assert _rel(got, ref) < 1e-10
    sym = cntk.kernel(x, None, arch, backend="numba")
    assert torch.equal(sym, sym.T)
    # every lane position of the self pairs: the diagonal equals the reference's one by one
    diag = torch.stack([cntk.kernel(x[i : i + 1], None, arch, backend="reference")[0, 0] for i in range(11)])
    assert _rel(sym.diagonal(), diag) < 1e-12


def test_tiny_and_odd_shapes():
    """1 x 1 images, single rows and columns, a filter wider than the image.  (Not 1 x 1 x 1: there
    rho = +-1 for every pair, where arccos is ill-conditioned and any two correct implementations
    differ by rounding, about 3e-9 here; planes does too.)"""
    for shape, q in [((3, 1, 1), 3), ((3, 1, 7), 3), ((2, 6, 1), 5), ((1, 2, 2), 5)]:
        x, y = _images(3, shape, 5), _images(2, shape, 6)
        for readout, kind in itertools.product(cntk.architecture.READOUTS, cntk.KINDS):
            arch = cntk.Architecture(depth=3, readout=readout, filter_size=q)
            for a, b in [(x, None), (x, y)]:
                ref = cntk.kernel(a, b, arch, kind, backend="reference")
                assert _rel(cntk.kernel(a, b, arch, kind, backend="numba"), ref) < 1e-10, (shape, q, readout, kind)


def test_float32_is_computed_in_float32_and_close(digits):
    x = digits[:9]
    arch = cntk.Architecture(depth=6, readout="gap")
    k64 = cntk.kernel(x, None, arch, backend="numba")
    k32 = cntk.kernel(x.float(), None, arch, backend="numba")
    assert k32.dtype == torch.float32
    assert ((k32.double() - k64).abs() / k64.abs()).max() < 1e-5
    assert ((k32.double() - k64).abs() / k64.abs()).max() > 1e-12  # really float32 arithmetic


def test_thread_count_and_batching_do_not_change_the_result(digits):
    import numba

    x, y = digits[:10], digits[200:213]
    arch = cntk.Architecture(depth=4, readout="gap")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = cntk.kernel(x, y, arch, backend="numba")
        numba.set_num_threads(before)
        many = cntk.kernel(x, y, arch, backend="numba")
    finally:
        numba.set_num_threads(before)
    assert _rel(many, one) < 1e-14
    assert _rel(cntk.kernel(x, y, arch, backend="numba", batch_size=3, tile_size=4), one) < 1e-14


def test_wiring():
    assert "numba" in cntk.available_backends()
    arch = cntk.Architecture(depth=3)
    net = arch.network()
    assert fused.supports(net, torch.device("cpu")) is None and "CPU only" in fused.supports(net, torch.device("meta"))
    assert cntk.choose_backend(arch, "cpu").NAME == "numba"
    assert 0 < fused.bytes_per_pair((3, 32, 32), arch, 4) < 1024  # memory does not grow with P^2
    x = _images(2, (1, 4, 4), 7)
    assert torch.equal(cntk.kernel(x, None, arch), cntk.kernel(x, None, arch, backend="numba"))
    assert cntk.kernel(x[:0], x, arch, backend="numba").shape == (0, 2)


def _gram_sum(queue, x, arch):
    queue.put(float(cntk.kernel(x, None, arch, backend="numba").sum()))


def test_works_in_a_forked_child_after_use_in_the_parent():
    """The worker pool does not survive fork(); the backend must build a new one in the child."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    x, arch = _images(20, (1, 5, 5), 8), cntk.Architecture(depth=3)
    want = float(cntk.kernel(x, None, arch, backend="numba").sum())  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_gram_sum, args=(queue, x, arch))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0 and queue.get(timeout=10) == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arc_cosine_approximation_is_accurate(dtype):
    """The polynomial (pi - arccos, sqrt(1 - rho^2)) against numpy on a dense grid including +-1 and +-1/2."""
    from numba import njit

    @njit
    def run(rho, pt, sn):
        for i in range(rho.shape[0]):
            pt[i], sn[i] = fused._arc(rho[i])

    rho = np.concatenate([np.linspace(-1, 1, 20001), [-0.5, 0.5, np.nextafter(0.5, 1), -np.nextafter(0.5, 1)]])
    rho = rho.astype(dtype)
    pt, sn = np.empty_like(rho), np.empty_like(rho)
    run(rho, pt, sn)
    r64 = rho.astype(np.float64)
    want_pt, want_sn = np.arccos(-r64), np.sqrt((1 - r64) * (1 + r64))  # pi - arccos(r) = arccos(-r)
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(pt - want_pt) / np.maximum(want_pt, 1e-300)) < 8 * eps
    assert np.max(np.abs(sn - want_sn)) < 8 * eps


@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_erf_is_compiled_and_matches_the_reference(digits, readout):
    """Erf runs in the fused kernel (its own row step and self-variance recursion): equal to the
    reference in float64, float32 within 1e-5 of float64 on every entry (diagonal and black
    borders included), biases and frozen layers included."""
    from cntk import activations as A, presets as P

    net = P.paper_cnn(6, readout, act=A.Erf(), b_var=0.1, fix_first_last=readout == "flatten")
    assert cntk.choose_backend(net, "cpu").NAME == "numba"
    x = digits[:5]
    for kind in cntk.KINDS:
        k64 = cntk.kernel(x, None, net, kind, backend="numba")
        ref = cntk.kernel(x, None, net, kind, backend="reference")
        assert float(((k64 - ref).abs() / ref.abs()).max()) < 1e-12
        k32 = cntk.kernel(x.float(), None, net, kind, backend="numba")
        assert float(((k32.double() - k64).abs() / k64.abs()).max()) < 1e-5


@pytest.mark.parametrize("act", ["gelu", "sin", "odd-sin"])
def test_gelu_and_sin_are_compiled_and_match_the_reference(act):
    """Gelu and Sin run in the fused kernel (their own row steps and self-variance recursions): GAP,
    flatten (frozen first and last layers) and pooled nets with biases equal the reference in float64,
    symmetric Grams are symmetric, float32 within 1e-5 of float64 on every entry (black borders, i.e.
    zero variance, and the diagonal included; an odd Sin, c = 0, too, whose cross entries are small)."""
    from cntk import activations as A, layers as L, presets as P

    phi = {"gelu": A.Gelu(), "sin": A.Sin(a=1.2, b=0.8, c=0.3), "odd-sin": A.Sin()}[act]
    pooled = L.Network((L.Conv(3, w_var=None, b_var=0.1), L.Act(phi), L.AvgPool(2), L.Conv(3, b_var=0.1),
                        L.Act(phi), L.GlobalAvgPool(), L.Dense(w_var=2 / 9, b_var=0.1)), "pool")
    nets = [P.paper_cnn(3, "gap", act=phi, b_var=0.1), P.paper_cnn(3, "flatten", act=phi, b_var=0.2, fix_first_last=True),
            pooled][: 1 if act == "odd-sin" else 3]
    x, y = _images(3, (2, 6, 6), 11), _images(2, (2, 6, 6), 12)
    x[0, :, :2] = 0
    for net in nets:
        assert cntk.choose_backend(net, "cpu").NAME == "numba"
        for kind in cntk.KINDS:
            for a, b in [(x, None), (x, y)]:
                got = cntk.kernel(a, b, net, kind, backend="numba")
                assert _rel(got, cntk.kernel(a, b, net, kind, backend="reference")) < 1e-12, (net.name, kind)
            sym = cntk.kernel(x, None, net, kind, backend="numba")
            assert torch.equal(sym, sym.T)
            k32 = cntk.kernel(x.float(), None, net, kind, backend="numba")
            assert float(((k32.double() - sym).abs() / sym.abs()).max()) < 1e-5, (net.name, kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_polynomials_are_accurate(dtype):
    """e^x and e^x - 1 of the Sin step (vectorisable polynomials) against numpy for x <= 0, within a
    few ulps of their own size (e^x - 1 near 0 too); below the clamp e^x is a tiny normal number."""
    from numba import njit

    @njit
    def run(x, e, m):
        for i in range(x.shape[0]):
            e[i] = fused._exp_neg(x[i])
            m[i] = fused._expm1_neg(x[i])

    x = np.concatenate([-np.logspace(-30, 2.8, 4001), np.linspace(-3, -1e-3, 4001), [-0.5 * np.log(2), -80.0]])
    x = np.concatenate([[0.0], x.astype(dtype)]).astype(dtype)
    e, m = np.empty_like(x), np.empty_like(x)
    run(x, e, m)
    assert e[0] == 1 and m[0] == 0
    x64 = x[1:].astype(np.float64)
    e, m = e[1:], m[1:]
    eps = np.finfo(dtype).eps
    ok = x64 > (-86 if dtype == np.float32 else -700)
    assert np.max(np.abs(e - np.exp(x64))[ok] / np.exp(x64)[ok]) < 4 * eps
    assert np.max(np.abs(m - np.expm1(x64)) / np.abs(np.expm1(x64))) < 4 * eps
    assert np.all(e[~ok] > 0) and np.all(np.isfinite(e))


def test_pooled_networks_across_lane_blocks():
    """Myrtle-5 (stages of planes pooled into the next stage's per-thread buffers) and a pool right
    before a flatten readout: 11 x 11 symmetric (a self pair in every lane position) and a cross
    block equal the reference; float32 within 1e-5 of float64 on every entry; ``cntk.kernels``'
    one-pass readouts are refused, not computed wrongly."""
    from cntk import layers as L, presets as P

    x, y = _images(11, (2, 8, 8), 9), _images(3, (2, 8, 8), 10)
    pool_v = L.Network((L.Conv(3, w_var=None), L.Act(), L.Conv(3), L.Act(), L.AvgPool(2), L.Flatten(),
                        L.Dense(w_var=2 / 9)), "pool-V")
    for net in (P.myrtle(5), pool_v):
        assert cntk.choose_backend(net, "cpu").NAME == "numba"
        for a, b in [(x, None), (y, x)]:
            assert _rel(cntk.kernel(a, b, net, backend="numba"), cntk.kernel(a, b, net, backend="reference")) < 1e-10
    k64 = cntk.kernel(x, None, P.myrtle(5), backend="numba")
    k32 = cntk.kernel(x.float(), None, P.myrtle(5), backend="numba")
    assert float(((k32.double() - k64).abs() / k64.abs()).max()) < 1e-5
    with pytest.raises(ValueError, match="one readout per pass"):
        fused.tile_multi(x, fused.prepare(x, P.myrtle(5)), x, fused.prepare(x, P.myrtle(5)), P.myrtle(5), None,
                         np.ones(4, np.int64), True, True, 64)


@pytest.mark.parametrize("act", ["relu", "abrelu", "erf", "gelu", "sin"])
def test_tile_multi_fix_columns_are_the_first_layers_share(act):
    """tile_multi(fix=True): columns 2 L + h hold the sums of Kdot D, so that column 2 h + 1 minus K and
    minus them is the NTK of the network with its first layer and readout frozen (the paper's fix), for
    every activation the kernel compiles; 11 x 11 symmetric (a self pair in every lane) and a cross
    block; the first 2 L columns equal those of the pass without the fix."""
    import dataclasses

    from cntk.depths import network_at

    x, y = _images(11, (2, 4, 5), 11), _images(3, (2, 4, 5), 12)
    # Architecture's abrelu_a / abrelu_b set Sin's a and b (a = 0 by default: a zero network)
    extra = {"abrelu": dict(abrelu_a=0.2)}.get(act, {})
    readout = "flatten" if act == "sin" else "gap"
    arch = cntk.Architecture(depth=4, readout=readout, activation=act, bias_var=0.1, **extra)
    net = arch.network()
    n_layers = 3
    keep = np.ones(n_layers, np.int64)
    for a, b, sym in [(x, x, True), (y, x, False)]:
        sa, sb = fused.prepare(a, net), fused.prepare(b, net)
        raw = fused.tile_multi(a, sa, b, sb, net, None, keep, True, sym, 64, fix=True)
        plain = fused.tile_multi(a, sa, b, sb, net, None, keep, True, sym, 64)
        assert raw.shape[-1] == 3 * n_layers and _rel(raw[..., : 2 * n_layers], plain) < 1e-14
        for layer in range(n_layers):
            got = raw[..., 2 * layer + 1] - raw[..., 2 * layer] - raw[..., 2 * n_layers + layer]
            if layer == 0:  # depth 2 with fix freezes every layer: an NTK of 0
                assert float(got.abs().max() / raw[..., 1].abs().max()) < 1e-14
                continue
            ref = cntk.kernel(a, None if sym else b, network_at(dataclasses.replace(arch, fix_first_last=True), layer + 2),
                              "ntk", backend="numba")
            assert _rel(got, ref) < 1e-12, (act, sym, layer)
    with pytest.raises(ValueError, match="fix readouts need"):
        fused.tile_multi(x, fused.prepare(x, net), x, fused.prepare(x, net), net, None, keep, False, True, 64, fix=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_relu_step_is_accurate(dtype):
    """The rows' ReLU step (``_rho_at`` then ``_relu_at``: rho by the inverse stds in float32, the
    arc-cosine of ``_arc``) against numpy on a dense grid of rho, with stds that are not 1, and
    K = Kdot = 0 at zero variance."""
    from numba import njit

    @njit
    def run(cov, nx, ny, ix, iy, k, kd):
        for i in range(cov.shape[0]):
            rho = fused._rho_at(cov[i], nx[i], ny[i], ix[i], iy[i])
            k[i], kd[i] = fused._relu_at(rho, nx[i] * ny[i], cov.dtype.type(1.0))

    rho = np.concatenate([np.linspace(-1, 1, 20001), [-0.5, 0.5, np.nextafter(0.5, 1), -np.nextafter(0.5, 1)]])
    nx = np.full_like(rho, 1.7)
    ny = np.full_like(rho, 0.6)
    nx[:3], ny[:3] = 0.0, [0.0, 1.0, 0.0]  # zero variance
    nx[3:5], ny[3:5] = [2.0, 0.0], [0.0, 3.0]
    cov = (rho * nx * ny).astype(dtype)
    nx, ny = nx.astype(dtype), ny.astype(dtype)
    ix = np.where(nx > 0, 1 / np.where(nx > 0, nx, 1), 0).astype(dtype)
    iy = np.where(ny > 0, 1 / np.where(ny > 0, ny, 1), 0).astype(dtype)
    k, kd = np.empty_like(cov), np.empty_like(cov)
    run(cov, nx, ny, ix, iy, k, kd)
    if dtype == np.float32:  # the kernel's own rho (two float32 multiplies), so that only the arc-cosine is tested
        r = np.clip(((cov * ix) * iy).astype(np.float64), -1, 1)
    else:
        r = np.clip(cov / np.where(nx * ny > 0, nx * ny, 1), -1, 1)
    norm = nx.astype(np.float64) * ny
    pt = np.arccos(-r)
    want_k = norm * (np.sqrt((1 - r) * (1 + r)) + pt * r)
    want_kd = np.where(norm > 0, pt, 0.0)
    eps = np.finfo(dtype).eps
    assert np.all(k[:5] == 0) and np.all(kd[:5] == 0)
    assert np.max(np.abs(k - want_k) / norm.max()) < 16 * eps
    assert np.max(np.abs(kd - want_kd) / np.maximum(want_kd, 1e-300)) < 16 * eps


@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_fused_float32_within_1e5_of_float64_every_entry(readout):
    """The fused float32 path against float64 on larger images with exact zeros (MNIST-like: ReLU of a
    Gaussian), more images than lanes (self pairs in several lane positions): every entry, the
    diagonal included, within 1e-5 relative, NTK and NNGP, shallow and deep."""
    g = torch.Generator().manual_seed(11)
    x = torch.relu(torch.randn(10, 1, 12, 12, generator=g, dtype=torch.float64))
    for depth in (3, 11):
        arch = cntk.Architecture(depth=depth, readout=readout)
        for kind in cntk.KINDS:
            k64 = cntk.kernel(x, None, arch, kind, backend="numba")
            k32 = cntk.kernel(x.float(), None, arch, kind, backend="numba").double()
            rel = ((k32 - k64).abs() / k64.abs()).max().item()
            diag = ((k32 - k64).diagonal().abs() / k64.diagonal().abs()).max().item()
            assert rel < 1e-5 and diag < 1e-5, (depth, kind, rel, diag)
