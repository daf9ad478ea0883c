"""cntk.kernels: every depth and both kinds in one pass equal the separate cntk.kernel calls."""
import pytest
import torch

import cntk
from cntk import activations as A, presets as P
from cntk.depths import network_at, prefix_layers

FAMILIES = {
    "paper-gap": cntk.Architecture(readout="gap"),
    "paper-v-fix": cntk.Architecture(readout="flatten", fix_first_last=True),
    "erf-gap-bias": lambda d: P.paper_cnn(d, "gap", act=A.Erf(), b_var=0.2),
    "abrelu-v-bias-fix": lambda d: P.paper_cnn(d, "flatten", act=A.ABReLU(a=0.2, b=1.0), b_var=0.1, fix_first_last=True),
}


@pytest.fixture(scope="module")
def images():
    x = torch.randn(7, 2, 6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[0] = 0  # zero variance
    return x


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("cross", [False, True])
def test_one_pass_equals_separate_calls(images, name, cross):
    arch = FAMILIES[name]
    x2 = images[:3] * 0.5 if cross else None  # collinear pairs too (rho = 1 outside self pairs)
    ks = cntk.kernels(images, x2, arch, depths=(3, 4, 7))
    assert set(ks) == {(d, k) for d in (3, 4, 7) for k in cntk.KINDS}
    for (d, kind), k in ks.items():
        ref = cntk.kernel(images, x2, network_at(arch, d), kind)  # the same backend, one call per (depth, kind)
        assert k.dtype == images.dtype and k.shape == ref.shape
        assert float((k - ref).abs().max() / ref.abs().max()) < 1e-12, (d, kind)


def test_float32_and_a_single_kind(images):
    ks = cntk.kernels(images.float(), None, cntk.Architecture(), depths=(3, 5), kinds=("nngp",))
    assert set(ks) == {(3, "nngp"), (5, "nngp")}
    for (d, kind), k in ks.items():
        ref = cntk.kernel(images, None, cntk.Architecture(depth=d), kind)
        assert k.dtype == torch.float32
        assert float(((k.double() - ref).abs() / ref.abs().clamp_min(1e-300))[ref != 0].max()) < 1e-5


def test_networks_that_are_not_prefixes_fall_back_to_separate_calls(images):
    net = {3: P.paper_cnn(3, "gap"), 4: P.paper_cnn(4, "gap", act=A.Erf())}
    assert "not the first layers" in prefix_layers(net)
    ks = cntk.kernels(images, None, lambda d: net[d], depths=(3, 4), kinds=("ntk",))
    for d in (3, 4):
        assert torch.equal(ks[d, "ntk"], cntk.kernel(images, None, net[d], "ntk"))


def test_a_backend_without_one_pass_gives_the_same_numbers(images):
    ks = cntk.kernels(images, None, cntk.Architecture(), depths=(3, 4), backend="planes")
    for (d, kind), k in ks.items():
        assert torch.equal(k, cntk.kernel(images, None, cntk.Architecture(depth=d), kind, backend="planes"))


@pytest.mark.parametrize("kw, match", [
    (dict(depths=()), "non-empty sequence of distinct depths"),
    (dict(depths=(3, 3)), "distinct depths"),
    (dict(depths=3), "distinct depths"),
    (dict(depths=(1, 3)), "depth must be >= 2"),
    (dict(depths=(3,), kinds=("ntk", "gp")), "kinds must be"),
])
def test_bad_requests_are_refused_in_one_line(images, kw, match):
    with pytest.raises(ValueError, match=match):
        cntk.kernels(images, None, cntk.Architecture(), **kw)


def test_bad_inputs_are_refused_like_kernel(images):
    with pytest.raises(ValueError, match="must agree in every dimension"):
        cntk.kernels(images, images[:, :1], cntk.Architecture(), depths=(3,))
    with pytest.raises(ValueError, match="NaN or inf"):
        cntk.kernels(images * float("nan"), None, cntk.Architecture(), depths=(3,))


def test_pooled_networks_fall_back_to_one_depth_at_a_time():
    """Myrtle-5 is not a prefix of Myrtle-7 layer by layer (their pools differ): kernels() still equals
    the reference at each depth, never the readout of another network."""
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    arch = cntk.Architecture(family="myrtle", depth=7)
    got = cntk.kernels(x, None, arch, depths=(5, 7), kinds=("ntk", "nngp"))
    for (d, k), v in got.items():
        ref = cntk.kernel(x, None, cntk.Architecture(family="myrtle", depth=d), k, backend="reference")
        torch.testing.assert_close(v, ref, rtol=1e-12, atol=0)
