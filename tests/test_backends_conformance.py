"""One conformance suite, run over every registered backend and every network it declares it
computes: equal to the reference (every layer's own rule) to 1e-10 in float64, zero variance
finite and equal to the reference, tiling and batching without effect, float32 within 1e-5 of
float64.  A backend asked for a network it cannot compute refuses in one line; "auto" picks the
fastest one that can.  Triton runs under its CPU interpreter (TRITON_INTERPRET=1) here;
CNTK_TEST_DEVICE=cuda runs the suite on a GPU (benchmarks/gpu_kernels.py --check does).
"""
import os

import pytest
import torch

import cntk
from cntk import activations as A, graph as G, layers as L, presets as P

DEVICE = os.environ.get("CNTK_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: torch's intra-op threads only contend

# name -> (network, input shape): the paper's family, its variants, the new layers, the presets
NETWORKS = {
    "paper-gap-d3": (cntk.Architecture(depth=3, readout="gap"), (2, 5, 5)),
    "paper-v-d4-fix": (cntk.Architecture(depth=4, readout="flatten", fix_first_last=True), (3, 4, 6)),
    "paper-gap-q5": (cntk.Architecture(depth=3, readout="gap", filter_size=5), (1, 6, 5)),
    "paper-v-q1": (cntk.Architecture(depth=3, readout="flatten", filter_size=1), (2, 4, 4)),
    "abrelu-gap": (P.paper_cnn(4, "gap", act=A.ABReLU(a=0.2, b=1.0)), (2, 5, 5)),
    "leaky-v-bias-fix": (P.paper_cnn(4, "flatten", act=A.LeakyReLU(0.1), b_var=0.5, fix_first_last=True), (2, 5, 4)),
    "bias-gap": (P.paper_cnn(3, "gap", b_var=0.3), (1, 6, 6)),
    "erf-gap": (P.paper_cnn(3, "gap", act=A.Erf()), (2, 5, 5)),
    "erf-v-bias": (P.paper_cnn(3, "flatten", act=A.Erf(), b_var=0.2), (1, 5, 6)),
    "fc": (cntk.Architecture(family="fc", depth=4), (12,)),
    "fc-abrelu-bias": (P.fc_net(4, act=A.ABReLU(a=-0.3, b=1.5), b_var=0.1), (9,)),
    "fc-erf": (P.fc_net(3, act=A.Erf()), (7,)),
    "myrtle-5": (P.myrtle(5), (1, 8, 8)),
    "pool-erf-bias-gap": (L.Network((L.Conv(3, w_var=None, b_var=0.2), L.Act(A.Erf()), L.AvgPool(2), L.Conv(3, b_var=0.2),
                                     L.Act(A.Erf()), L.GlobalAvgPool(), L.Dense(w_var=2 / 9, b_var=0.2)), "pool-erf"), (2, 8, 6)),
    "pool-abrelu-v-bias": (L.Network((L.Conv(3, w_var=None, b_var=0.1), L.Act(A.ABReLU(a=0.2, b=1.0)), L.AvgPool(2),
                                      L.Conv(3, b_var=0.1, trainable=False), L.Act(A.ABReLU(a=0.2, b=1.0)), L.AvgPool(2),
                                      L.Flatten(), L.Dense(w_var=2 / 9, b_var=0.1)), "pool-abrelu-V"), (1, 8, 8)),
    "gelu-gap": (P.paper_cnn(3, "gap", act=A.Gelu()), (2, 5, 5)),
    "sin-v-bias": (P.paper_cnn(3, "flatten", act=A.Sin(a=1.2, b=0.8, c=0.3), b_var=0.2), (1, 5, 4)),
    "fc-gelu": (P.fc_net(3, act=A.Gelu()), (7,)),
    "pool-sin-bias-gap": (L.Network((L.Conv(3, w_var=None, b_var=0.1), L.Act(A.Sin(a=1.2, b=0.8, c=0.3)), L.AvgPool(2),
                                     L.Conv(3, b_var=0.1), L.Act(A.Sin(a=1.2, b=0.8, c=0.3)), L.GlobalAvgPool(),
                                     L.Dense(w_var=2 / 9, b_var=0.1)), "pool-sin"), (1, 6, 6)),
    "resnet-2-gap": (P.resnet(2), (2, 5, 5)),
    "resnet-1-v-bias": (P.resnet(1, readout="flatten", b_var=0.1, act=A.Erf()), (1, 5, 4)),
    "layernorm-gelu": (L.Network((L.Conv(3, w_var=None), G.LayerNorm(), L.Act(A.Gelu()), L.Conv(3), G.LayerNorm(),
                                  L.Act(A.Sin()), L.GlobalAvgPool(), L.Dense(w_var=2 / 9)), "LN"), (2, 5, 5)),
    "pool-layernorm": (L.Network((L.Conv(3, w_var=None), L.Act(), L.AvgPool(2), L.Conv(3), G.LayerNorm(), L.Act(),
                                  L.GlobalAvgPool(), L.Dense(w_var=2 / 9)), "pool-LN"), (1, 4, 4)),
    "fc-layernorm": (L.Network((L.Dense(w_var=None), G.LayerNorm(), L.Act(), L.Dense(), L.Act(), L.Dense()), "fc-LN"), (6,)),
}

# two activations in one chain: the planes backend computes it, the numba kernel compiles one for every layer
MIXED = L.Network((L.Conv(3, w_var=None), L.Act(A.Gelu()), L.Conv(3), L.Act(A.Sin()), L.GlobalAvgPool(),
                   L.Dense(w_var=2 / 9)), "gelu-sin")


def _backend_cases():
    """Every (backend, network) the backend declares it computes (Triton: in its interpreter)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if DEVICE == "cpu" else (old or "")
    try:
        for backend in cntk.available_backends():
            module = cntk.api._load(backend)
            for name, (net, shape) in NETWORKS.items():
                if module.supports(cntk.layers.as_network(net), torch.device(DEVICE)) is None:
                    yield pytest.param(backend, name, id=f"{backend}-{name}")
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


CASES = list(_backend_cases())


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """Triton's kernels run in its CPU interpreter in these tests (read at launch time)."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(backend: str, name: str):
    net, shape = NETWORKS[name]
    n = 2 if backend in ("reference", "triton") else 4  # the slow ones get fewer inputs
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(n - 1, *shape, generator=g, dtype=torch.float64)
    return net, x.to(DEVICE), y.to(DEVICE)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


@pytest.mark.parametrize("backend, name", CASES)
def test_matches_the_reference(backend, name):
    net, x, y = _case(backend, name)
    for kind in cntk.KINDS:
        for a, b in ((x, None), (x, y)):
            ref = cntk.kernel(a, b, net, kind, backend="reference")
            got = cntk.kernel(a, b, net, kind, backend=backend)
            assert got.dtype == torch.float64 and got.shape == ref.shape and got.device == a.device
            assert _rel(got, ref) < 1e-10, (kind, b is None, _rel(got, ref))


@pytest.mark.parametrize("backend, name", CASES)
def test_zero_variance_is_finite_and_exact(backend, name):
    """An all-zero input and inputs with black borders (variance 0 at some pixels): no NaN, and
    the reference's value, which is the finite net's limit (phi'(0) as torch computes it).  With a
    bias, a constant input makes rho = 1 off the diagonal too, where arccos's square-root
    conditioning turns rounding into ~1e-10: 1e-8 there."""
    net, x, _ = _case(backend, name)
    x = x.clone()
    x[0] = 0
    if x.ndim == 4:
        x[1, :, : x.shape[2] // 2] = 0
    else:
        x[1, : x.shape[1] // 2] = 0
    tol = 1e-8 if any(getattr(w, "b_var", None) for w in cntk.layers.as_network(net).layers) else 1e-10
    for kind in cntk.KINDS:
        got = cntk.kernel(x, None, net, kind, backend=backend)
        assert bool(torch.isfinite(got).all())
        assert _rel(got, cntk.kernel(x, None, net, kind, backend="reference")) < tol


@pytest.mark.parametrize("backend, name", CASES)
def test_tiling_and_batching_do_not_change_the_result(backend, name):
    net, x, y = _case(backend, name)
    whole = cntk.kernel(x, None, net, backend=backend)
    assert _rel(cntk.kernel(x, None, net, backend=backend, tile_size=1, batch_size=1), whole) < 1e-13
    cross = cntk.kernel(x, y, net, backend=backend)
    assert _rel(cntk.kernel(x, y, net, backend=backend, tile_size=2, batch_size=3), cross) < 1e-13
    # the symmetric Gram's off-diagonal block is the cross kernel of the two parts
    assert _rel(whole[:1, 1:], cntk.kernel(x[:1], x[1:], net, backend=backend)) < 1e-12


@pytest.mark.parametrize("backend, name", CASES)
def test_float32_within_1e5_of_float64(backend, name):
    net, x, _ = _case(backend, name)
    for kind in cntk.KINDS:
        k64 = cntk.kernel(x, None, net, kind, backend=backend)
        k32 = cntk.kernel(x.float(), None, net, kind, backend=backend)
        assert k32.dtype == torch.float32
        assert float(((k32.double() - k64).abs() / k64.abs()).max()) < 1e-5


def test_every_backend_and_network_is_covered():
    # every backend that computes on this device (on a GPU, the CPU-only numba kernel does not)
    on_device = {b for b in cntk.available_backends()
                 if DEVICE == "cpu" or DEVICE in getattr(cntk.api._load(b), "AUTO_DEVICES", (DEVICE,))}
    assert {b for b, _ in (c.values for c in CASES)} == on_device
    assert {n for _, n in (c.values for c in CASES)} == set(NETWORKS)


def test_auto_picks_the_fastest_backend_that_computes_the_network():
    paper = cntk.Architecture(depth=3)
    assert cntk.choose_backend(paper, "cpu").NAME == ("numba" if "numba" in cntk.available_backends() else "planes")
    fused = "numba" if "numba" in cntk.available_backends() else "planes"
    assert cntk.choose_backend(P.paper_cnn(3, "gap", act=A.Gelu()), "cpu").NAME == fused  # numba: ReLU / ABReLU / Erf / Gelu / Sin
    assert cntk.choose_backend(P.paper_cnn(3, "flatten", act=A.Sin(a=1.2, b=0.8, c=0.3)), "cpu").NAME == fused
    assert cntk.choose_backend(MIXED, "cpu").NAME == "planes"  # numba: one activation for every layer
    assert cntk.backends_for(P.myrtle(5))[-2:] == ["planes", "reference"]  # pooling
    assert cntk.backends_for(P.resnet(1)) == ["reference"]  # a graph
    assert cntk.choose_backend(P.fc_net(3), "cpu").NAME == "vector"
    assert all(cntk.backends_for(net)[-1] == "reference" for net, _ in NETWORKS.values())


@pytest.mark.parametrize("backend, net, words", [
    ("numba", MIXED, "compiles ReLU, ABReLU, Erf, Gelu and Sin, one for every layer"),
    ("planes", L.Network((L.Conv(3, w_var=None), L.AvgPool(2), L.Act(), L.GlobalAvgPool(), L.Dense()), "conv-pool"),
     "AvgPool does not follow an activation"),
    ("vector", cntk.Architecture(depth=3), "convolutional"),
    ("planes", P.fc_net(3), "fully connected"),
    ("planes", P.resnet(1), "graph network"),
])
def test_a_backend_refuses_what_it_cannot_compute(backend, net, words):
    if backend not in cntk.available_backends():
        pytest.skip(f"{backend} is not installed")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64) if net.family == "cnn" else torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"backend '{backend}' cannot compute this network.*{words}.*backends that can"):
        cntk.kernel(x, None, net, backend=backend)


def test_progress_bar_is_shown_for_tiled_work(capsys, digits):
    cntk.kernel(digits[:6], None, cntk.Architecture(depth=3, readout="flatten"), tile_size=2)
    assert "pair" in capsys.readouterr().err


def test_output_dtype_and_device_follow_the_input(digits):
    k = cntk.kernel(digits[:3].float(), digits[3:5].float(), cntk.Architecture(depth=3), "nngp")
    assert k.dtype == torch.float32 and k.shape == (3, 2) and k.device == digits.device
