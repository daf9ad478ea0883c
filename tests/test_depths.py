"""cntk.kernels: every depth and both kinds in one pass equal the separate cntk.kernel calls."""
import dataclasses

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


FIX_ARCHS = {
    "paper-gap": cntk.Architecture(readout="gap"),
    "paper-v": cntk.Architecture(readout="flatten"),
    "erf-gap-bias": cntk.Architecture(readout="gap", activation="erf", bias_var=0.2),
    "abrelu-v-bias": cntk.Architecture(readout="flatten", activation="abrelu", abrelu_a=0.2, bias_var=0.1),
}


def _no_separate_calls(monkeypatch):
    """Any fallback to one cntk.kernel call per (depth, kind, fix) fails the test: one pass only."""
    def refuse(*a, **k):
        raise AssertionError("a separate cntk.kernel call: the one pass was not used")

    monkeypatch.setattr(cntk.depths, "kernel", refuse)


@pytest.mark.parametrize("name", FIX_ARCHS)
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("tile_size", [256, 4])
def test_fix_is_read_off_the_same_pass(images, name, cross, tile_size, monkeypatch):
    """fixes=(False, True): every (depth, kind, fix) equals the separate cntk.kernel call with that
    fix_first_last (the paper's "fix": first layer and readout frozen), from one pass (no separate call),
    also split over tiles (tile_size 4 of 7 images)."""
    arch = FIX_ARCHS[name]
    x2 = images[:3] * 0.5 if cross else None
    with monkeypatch.context() as m:
        _no_separate_calls(m)
        ks = cntk.kernels(images, x2, arch, depths=(3, 4, 7), fixes=(False, True), tile_size=tile_size)
    assert set(ks) == {(d, k, f) for d in (3, 4, 7) for k in cntk.KINDS for f in (False, True)}
    for (d, kind, fix), k in ks.items():
        ref = cntk.kernel(images, x2, network_at(dataclasses.replace(arch, fix_first_last=fix), d), kind)
        assert k.dtype == images.dtype and k.shape == ref.shape
        assert float((k - ref).abs().max() / ref.abs().max()) < 1e-12, (d, kind, fix)
    assert not torch.allclose(ks[7, "ntk", True], ks[7, "ntk", False])  # the fix is another kernel


def test_fix_agrees_with_the_reference_backend(images):
    """The algebra (Theta with a frozen first layer = Theta - D) against the plain P x P recursion (to
    1e-10, as backends are compared: rho near 1 rounds differently in two correct implementations)."""
    other = torch.randn(3, *images.shape[1:], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(readout=readout, depth=5)
        ks = cntk.kernels(images, other, arch, depths=(3, 5), kinds=("ntk",), fixes=(True, False))
        for d in (3, 5):
            for fix in (False, True):
                ref = cntk.kernel(images, other, dataclasses.replace(arch, depth=d, fix_first_last=fix), "ntk",
                                  backend="reference")
                assert float((ks[d, "ntk", fix] - ref).abs().max() / ref.abs().max()) < 1e-10, (readout, d, fix)


def test_fix_in_float32_within_1e_5_of_float64(images, monkeypatch):
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(readout=readout)
        with monkeypatch.context() as m:
            _no_separate_calls(m)
            k32 = cntk.kernels(x.float(), None, arch, depths=(3, 6), kinds=("ntk",), fixes=(False, True))
        for (d, kind, fix), k in k32.items():
            ref = cntk.kernel(x, None, dataclasses.replace(arch, depth=d, fix_first_last=fix), kind)
            assert k.dtype == torch.float32
            assert float(((k.double() - ref).abs() / ref.abs()).max()) < 1e-5, (readout, d, fix)


def test_one_fix_alone_and_the_old_keys(images):
    """fixes=(True,) alone: keys (depth, kind, True) equal to the fix network's calls; fixes=None keeps
    the (depth, kind) keys of the architecture as given (its own fix_first_last)."""
    arch = cntk.Architecture(readout="flatten")
    ks = cntk.kernels(images, None, arch, depths=(3, 5), fixes=(True,))
    assert set(ks) == {(d, k, True) for d in (3, 5) for k in cntk.KINDS}
    for (d, kind, _), k in ks.items():
        ref = cntk.kernel(images, None, cntk.Architecture(readout="flatten", depth=d, fix_first_last=True), kind)
        assert float((k - ref).abs().max() / ref.abs().max()) < 1e-12
    old = cntk.kernels(images, None, dataclasses.replace(arch, fix_first_last=True), depths=(3, 5))
    assert set(old) == {(d, k) for d in (3, 5) for k in cntk.KINDS}
    assert all(torch.equal(old[d, k], ks[d, k, True]) for d, k in old)


def test_fix_on_a_backend_without_one_pass_gives_the_same_numbers(images):
    ks = cntk.kernels(images, None, cntk.Architecture(), depths=(3, 4), kinds=("ntk",), fixes=(False, True),
                      backend="planes")
    for (d, kind, fix), k in ks.items():
        ref = cntk.kernel(images, None, cntk.Architecture(depth=d, fix_first_last=fix), kind, backend="planes")
        assert torch.equal(k, ref)


@pytest.mark.parametrize("arch, kw, match", [
    (cntk.Architecture(), dict(fixes=()), "fixes must be a non-empty sequence of distinct booleans"),
    (cntk.Architecture(), dict(fixes=True), "fixes must be"),
    (cntk.Architecture(), dict(fixes=(True, True)), "distinct booleans"),
    (cntk.Architecture(), dict(fixes=("fix",)), "distinct booleans"),
    (lambda d: P.paper_cnn(d, "gap"), dict(fixes=(False, True)), "fixes needs a cntk.Architecture"),
    (cntk.Architecture(), dict(depths=(2, 3), fixes=(False, True)), "fix_first_last with depth 2"),
    (cntk.Architecture(family="myrtle", depth=5), dict(depths=(5,), fixes=(False, True)), "myrtle preset trains"),
])
def test_bad_fixes_are_refused_in_one_line(images, arch, kw, match):
    kw = {"depths": (3,), **kw}
    with pytest.raises(ValueError, match=match) as err:
        cntk.kernels(images, None, arch, **kw)
    assert "\n" not in str(err.value)
