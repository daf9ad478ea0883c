"""Closed forms, symmetry, PSD, homogeneity and the zero-variance convention."""
import math

import numpy as np
import pytest
import torch

import cntk

ARCHS = [
    cntk.Architecture(family="fc", depth=4),
    cntk.Architecture(family="cnn", depth=4, readout="gap"),
    cntk.Architecture(family="cnn", depth=4, readout="flatten"),
    cntk.Architecture(family="cnn", depth=5, readout="gap", fix_first_last=True),
]


def _inputs(arch, n, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 7) if arch.family == "fc" else (n, 2, 5, 6)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _arccos_closed_form(x, y, same=False):
    """Cho & Saul arc-cosine kernels of degree 1 and 0, written independently in numpy
    (same: y is x, and the diagonal's cosine is exactly 1)."""
    nx, ny = np.linalg.norm(x, axis=1)[:, None], np.linalg.norm(y, axis=1)[None, :]
    cos = np.clip(x @ y.T / (nx * ny), -1, 1)
    if same:
        np.fill_diagonal(cos, 1.0)
    t = np.arccos(cos)
    k1 = nx * ny * (np.sin(t) + (np.pi - t) * cos) / np.pi  # = 2 E[relu(u) relu(v)]
    k0 = (np.pi - t) / np.pi  # = 2 E[relu'(u) relu'(v)]
    return k1, k0


def test_fc_one_hidden_layer_closed_form(rng):
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    k1, k0 = _arccos_closed_form(x, y)
    arch = cntk.Architecture(family="fc", depth=2)
    nngp = cntk.kernel(torch.tensor(x), torch.tensor(y), arch, "nngp").numpy()
    ntk = cntk.kernel(torch.tensor(x), torch.tensor(y), arch, "ntk").numpy()
    np.testing.assert_allclose(nngp, k1, rtol=1e-12)
    np.testing.assert_allclose(ntk, k1 + (x @ y.T) * k0, rtol=1e-12)


def test_fc_two_hidden_layers_closed_form(rng):
    """Depth 3: compose the closed form once more by hand."""
    x = rng.normal(size=(5, 3))
    k1, k0 = _arccos_closed_form(x, x, same=True)
    s1 = k1  # Sigma^(1)
    d = np.sqrt(np.diag(s1))
    cos = np.clip(s1 / np.outer(d, d), -1, 1)
    np.fill_diagonal(cos, 1.0)
    t = np.arccos(cos)
    k2 = np.outer(d, d) * (np.sin(t) + (np.pi - t) * cos) / np.pi
    kd2 = (np.pi - t) / np.pi
    ntk = kd2 * (k0 * (x @ x.T) + k1) + k2
    arch = cntk.Architecture(family="fc", depth=3)
    np.testing.assert_allclose(cntk.kernel(torch.tensor(x), None, arch).numpy(), ntk, rtol=1e-12)
    np.testing.assert_allclose(cntk.kernel(torch.tensor(x), None, arch, "nngp").numpy(), k2, rtol=1e-12)


def test_relu_step_matches_monte_carlo():
    """The arc-cosine step against a Monte Carlo estimate of E[relu relu] and E[relu' relu']."""
    g = torch.Generator().manual_seed(0)
    sx, sy, c = 2.0, 0.5, -0.4
    cov = torch.tensor([[sx, c], [c, sy]], dtype=torch.float64)
    z = torch.randn(2_000_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    k_mc = (z.relu().prod(1)).mean()
    kd_mc = ((z > 0).all(1)).double().mean()
    from cntk.arccos import relu_step

    k, kd = relu_step(torch.tensor(c, dtype=torch.float64), torch.tensor(sx).sqrt(), torch.tensor(sy).sqrt(), 1.0)
    assert abs(float(k) - float(k_mc)) < 3e-3 and abs(float(kd) - float(kd_mc)) < 2e-3


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_symmetric_and_positive_semidefinite(arch):
    x = _inputs(arch, 9, 1)
    for kind in cntk.KINDS:
        k = cntk.kernel(x, None, arch, kind)
        assert torch.equal(k, k.T)
        ev = torch.linalg.eigvalsh(k)
        assert ev.min() > -1e-12 * ev.max(), ev
        # the cross kernel of x with itself (no symmetry used) agrees off the diagonal; on it,
        # computing rho = 1 from rounded sums costs about 1e-9 in float64
        cross = cntk.kernel(x, x, arch, kind)
        off = ~torch.eye(len(x), dtype=torch.bool)
        torch.testing.assert_close(cross[off], k[off], rtol=1e-12, atol=0)
        torch.testing.assert_close(cross.diagonal(), k.diagonal(), rtol=1e-7, atol=0)


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_degree_one_homogeneity(arch):
    x, z = _inputs(arch, 4, 2), _inputs(arch, 3, 3)
    a, b = 2.5, 0.3
    for kind in cntk.KINDS:
        k = cntk.kernel(x, z, arch, kind)
        torch.testing.assert_close(cntk.kernel(a * x, b * z, arch, kind), a * b * k, rtol=1e-12, atol=0)


@pytest.mark.parametrize("arch", ARCHS[1:], ids=str)
def test_all_zero_images_give_zero_not_nan(arch):
    x = _inputs(arch, 4, 4)
    x[1] = 0.0
    for kind in cntk.KINDS:
        for k in (cntk.kernel(x, None, arch, kind), cntk.kernel(x, None, arch, kind, backend="reference")):
            assert torch.isfinite(k).all()
            assert torch.count_nonzero(k[1]) == 0 and torch.count_nonzero(k[:, 1]) == 0
            assert (k.diagonal()[[0, 2, 3]] > 0).all()


def _cnn_v_depth2_by_hand(x, y):
    """CNTK-V, depth 2, written independently: per pixel, patch sums then the arc-cosine step,
    with K = Kdot = 0 where either image's patch variance is 0 (relu'(0) = 0 in the finite net)."""
    def patches(a, b):
        s = np.zeros(a.shape[1:])
        pa, pb = np.pad(a, ((0, 0), (1, 1), (1, 1))), np.pad(b, ((0, 0), (1, 1), (1, 1)))
        h, w = s.shape
        for i in range(h):
            for j in range(w):
                s[i, j] = np.sum(pa[:, i : i + 3, j : j + 3] * pb[:, i : i + 3, j : j + 3])
        return s

    sxy, sxx, syy = patches(x, y), patches(x, x), patches(y, y)
    total = 0.0
    for sab, saa, sbb in zip(sxy.ravel(), sxx.ravel(), syy.ravel()):
        if saa == 0 or sbb == 0:
            continue
        rho = min(1.0, max(-1.0, sab / math.sqrt(saa * sbb)))
        t = math.acos(rho)
        k = (2 / 9) * math.sqrt(saa * sbb) * (math.sin(t) + (math.pi - t) * rho) / (2 * math.pi)
        kd = (2 / 9) * (math.pi - t) / (2 * math.pi)
        total += kd * sab + k
    return total


def test_black_border_digits_follow_the_zero_variance_convention(digits):
    x = digits[[0, 1, 10]]  # real digits: their corner patches are all zero
    sxx = torch.nn.functional.avg_pool2d(x**2, 3, 1, 1)
    assert (sxx == 0).any(), "these inputs must contain zero-variance patches"
    arch = cntk.Architecture(depth=2, readout="flatten")
    k = cntk.kernel(x, None, arch)
    for i in range(3):
        for j in range(3):
            assert k[i, j].item() == pytest.approx(_cnn_v_depth2_by_hand(x[i].numpy(), x[j].numpy()), rel=1e-12)
    for depth in (3, 8):
        for readout in ("gap", "flatten"):
            a = cntk.Architecture(depth=depth, readout=readout)
            assert torch.isfinite(cntk.kernel(digits[:20], None, a)).all()
