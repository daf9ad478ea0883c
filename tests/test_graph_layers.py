"""Graph layers (FanOut / Parallel / FanInSum / Identity), LayerNorm, Gelu and Sin, the resnet preset
and the network identity helpers; and the paper family's reference kernel unchanged by the state that
carries its own self variances (against the old driver, which injected them before each activation)."""
import math

import pytest
import torch

import cntk
from cntk import activations as A, graph as G, layers as L, presets as P
from cntk.backends import reference as R
from cntk.core_layers import _diag
from cntk.errors import NetworkError
from finite_nets.layer_net import LayerNet


def _old_kernel(net, x, kind):
    """The previous reference driver: self variances from the rules run on (x, x), injected before
    every activation (the cross terms then follow the same rules)."""
    shapes = net.shapes(tuple(x.shape[1:]))
    st = R.initial_state(x, x, torch.ones(len(x), dtype=torch.bool))
    variances = []
    for layer, s in zip(net.layers, shapes):
        if isinstance(layer, L.Act):
            variances.append(_diag(st.nngp) if st.nngp.ndim == 5 else st.nngp)
            st.var_x = st.var_y = variances[-1]
        st = layer.rule(st, s)
    n = len(x)
    out = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            st = R.initial_state(x[i : i + 1], x[j : j + 1], torch.tensor([i == j]))
            k = 0
            for layer, s in zip(net.layers, shapes):
                if isinstance(layer, L.Act):
                    st.var_x, st.var_y = variances[k][i : i + 1], variances[k][j : j + 1]
                    st.cov_x = st.cov_y = None
                    k += 1
                st = layer.rule(st, s)
            out[i, j] = (st.ntk if kind == "ntk" else st.nngp)[0]
    return out


@pytest.mark.parametrize("arch, shape", [
    (cntk.Architecture(depth=4, readout="gap"), (2, 6, 6)),
    (cntk.Architecture(depth=3, readout="flatten", fix_first_last=True), (1, 5, 7)),
    (P.paper_cnn(3, "gap", act=A.Erf(), b_var=0.2), (2, 5, 5)),
    (P.myrtle(5), (1, 8, 8)),
    (P.fc_net(4, act=A.ABReLU(a=0.2, b=1.0)), (9,)),
])
def test_paper_family_reference_is_unchanged(arch, shape):
    net = L.as_network(arch)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0] = 0
    for kind in cntk.KINDS:
        new = cntk.kernel(x, None, net, kind, backend="reference")
        old = _old_kernel(net, x, kind)
        assert float((new - old).abs().max() / old.abs().max()) < 1e-13
        if "planes" in cntk.backends_for(net):
            planes = cntk.kernel(x, None, net, kind, backend="planes")
            assert float((new - planes).abs().max() / planes.abs().max()) < 1e-13


def _mc(act, vx, vy, rho, n=400_000):
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(2))
    u = math.sqrt(vx) * z1
    v = math.sqrt(vy) * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
    uu, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
    du = torch.autograd.grad(act.finite(uu).sum(), uu)[0]
    dv = torch.autograd.grad(act.finite(vv).sum(), vv)[0]
    fu, fv = act.finite(u), act.finite(v)
    return (fu * fv).mean(), (du * dv).mean(), (fu * fu).mean()


@pytest.mark.parametrize("act", [A.Gelu(), A.Sin(), A.Sin(a=1.3, b=0.7, c=0.4)], ids=["gelu", "sin", "sin-abc"])
@pytest.mark.parametrize("vx, vy, rho", [(1.0, 2.0, 0.5), (0.3, 1.5, -0.8), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0),
                                         (2.0, 2.0, 1.0)])
def test_new_activations_match_monte_carlo(act, vx, vy, rho):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    k, kd = act.pair(t(rho * math.sqrt(vx * vy)), t(math.sqrt(vx)), t(math.sqrt(vy)), 1.0,
                     exact=t(rho == 1.0).bool())
    self_k = act.self_k(t(vx))
    assert all(bool(torch.isfinite(v)) for v in (k, kd, self_k))
    mk, mkd, mself = _mc(act, vx, vy, rho)
    assert abs(float(k - mk)) < 0.01 and abs(float(kd - mkd)) < 0.01 and abs(float(self_k - mself)) < 0.01
    assert A.activation(act.NAME).NAME == act.NAME


def test_fan_in_sum_adds_independent_branches():
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    head, tail = (L.Conv(3, w_var=None), L.Act()), (L.Act(), L.GlobalAvgPool(), L.Dense(w_var=0.5))
    two = L.Network((*head, G.FanOut(2), G.Parallel([L.Conv(3, w_var=1.0)], [L.Conv(3, w_var=1.5)]), G.FanInSum(), *tail))
    one = L.Network((*head, L.Conv(3, w_var=2.5), *tail))
    skip = L.Network((*head, G.FanOut(2), G.Parallel([L.Conv(1, w_var=2.0)], [G.Identity()]), G.FanInSum(), *tail))
    scaled = L.Network((*head, L.Conv(1, w_var=3.0), *tail))
    for kind in cntk.KINDS:
        assert torch.allclose(cntk.kernel(x, None, two, kind), cntk.kernel(x, None, one, kind), rtol=1e-12)
    # a skip beside a fresh 1 x 1 conv: K + 2 K, as one 1 x 1 conv of w_var 3 (nngp; the ntk differs: the skip has no weights)
    assert torch.allclose(cntk.kernel(x, None, skip, "nngp"), cntk.kernel(x, None, scaled, "nngp"), rtol=1e-12)


@pytest.mark.parametrize("layers, words", [
    ((L.Conv(3, w_var=None), L.Act(), G.FanInSum(), L.GlobalAvgPool(), L.Dense()), "FanInSum without FanOut"),
    ((L.Conv(3, w_var=None), G.FanOut(2), G.Parallel([L.Act()], [L.Act()], [L.Act()]), G.FanInSum(),
      L.GlobalAvgPool(), L.Dense()), "Parallel with 3 branches receives 2"),
    ((L.Conv(3, w_var=None), G.FanOut(2), L.Act(), G.FanInSum(), L.GlobalAvgPool(), L.Dense()), "receives 2 branches"),
    ((L.Conv(3, w_var=None), G.FanOut(2), G.Parallel([L.Act()], [L.Act()]), L.GlobalAvgPool(), L.Dense()),
     "receives 2 branches"),
    ((L.Conv(3, w_var=None), L.Act(), G.LayerNorm(), L.GlobalAvgPool(), L.Dense()), "LayerNorm needs Gaussian"),
    ((L.Conv(3, w_var=None), L.Act(), G.FanOut(2), G.Parallel([G.Identity()], [L.Conv(3), L.Act()]), G.FanInSum(),
      L.GlobalAvgPool(), L.Dense()), "FanInSum of correlated branches"),
    ((L.Conv(3, w_var=None), L.Act(), G.FanOut(2), G.FanInSum(), L.GlobalAvgPool(), L.Dense()), "correlated"),
])
def test_malformed_graphs_are_refused_in_one_line(layers, words):
    with pytest.raises(NetworkError, match=words) as err:
        L.Network(layers)
    assert "\n" not in str(err.value)


def test_shape_mismatch_at_fan_in_sum():
    net = L.Network((L.Conv(3, w_var=None), L.Act(), G.FanOut(2), G.Parallel([L.Conv(3), L.AvgPool(2)], [G.Identity()]),
                     G.FanInSum(), L.GlobalAvgPool(), L.Dense()))
    with pytest.raises(NetworkError, match="FanInSum of branches of different shapes"):
        net.shapes((1, 8, 8))
    with pytest.raises(ValueError, match="different shapes"):
        cntk.kernel(torch.randn(2, 1, 8, 8, dtype=torch.float64), None, net)


def test_resnet_shapes_names_and_identity():
    net = P.resnet(2)
    shapes = net.shapes((1, 8, 8), width=16)
    assert isinstance(shapes[2], tuple) and len(shapes[2]) == 2 and shapes[3][0].channels == 16
    assert net.depth == 6 and net.readout == "gap" and net.input_kind == "image" and net.family == "cnn"
    assert net.hidden_weights((1, 8, 8), 16) == 9 * 1 * 16 + 4 * 9 * 16 * 16
    assert P.myrtle(5).hidden_weights((1, 8, 8), 16) == 9 * 1 * 16 + 3 * 9 * 16 * 16
    slugs = {L.as_network(cntk.Architecture(**kw)).slug for kw in (
        dict(depth=3), dict(depth=3, fix_first_last=True), dict(depth=3, activation="erf"), dict(depth=3, bias_var=0.1),
        dict(depth=4), dict(depth=3, readout="flatten"))}
    assert len(slugs) == 6  # every setting its own slug
    assert L.as_network(cntk.Architecture(depth=3)).slug.startswith("cnn-gap-d3-")
    assert L.as_network(cntk.Architecture(family="fc", depth=3)).slug.startswith("fc-d3-")
    assert net.slug.startswith("resnet-2-gap-d6-") and net.slug == P.resnet(2).slug != P.resnet(1).slug
    assert P.resnet(2, readout="flatten").input_kind == "image" and P.fc_net(3).input_kind == "vector"
    with pytest.raises(NetworkError, match="Myrtle-5 needs images whose height and width are divisible by 4, got 7 x 7"):
        P.myrtle(5).check_input_shape((1, 7, 7))
    with pytest.raises(NetworkError, match="needs vectors"):
        P.fc_net(3).check_input_shape((1, 7, 7))
    assert P.myrtle(5).check_input_shape((3, 8, 8)) is None


@pytest.mark.parametrize("parameterisation", ["ntk", "standard"])
def test_layer_net_of_a_graph(parameterisation):
    net = L.Network((L.Conv(3, w_var=None), G.LayerNorm(), G.FanOut(2),
                     G.Parallel([L.Act(A.Gelu()), L.Conv(3, trainable=False, b_var=0.1)], [G.Identity()]), G.FanInSum(),
                     L.Act(A.Sin()), L.Flatten(), L.Dense(w_var=0.5)))
    kw = dict(input_shape=(2, 6, 6), seed=0, dtype=torch.float64, device="cpu")
    twin = LayerNet(net, 8, parameterisation=parameterisation, **kw)
    names = dict(twin.named_parameters())
    assert "layer_params.3.b0_1_weight" in names and not names["layer_params.3.b0_1_weight"].requires_grad
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(twin(x), LayerNet(net, 8, **kw)(x), rtol=1e-10)  # the same function at initialisation
