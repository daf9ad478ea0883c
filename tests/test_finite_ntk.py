"""The empirical NTK is exact: every method equals an independent per-sample autograd computation."""
import pytest
import torch
from torch import nn

import cntk
import finite_nets


pytestmark = pytest.mark.usefixtures("one_thread")


def autograd_ntk(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Independent oracle: loop over samples and outputs, torch.autograd.grad, dot products -> (N1, N2, K, K)."""
    params = [p for p in net.parameters() if p.requires_grad]

    def jacobian(x):
        rows = []
        for i in range(len(x)):
            f = net(x[i : i + 1]).reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(f[k], params, retain_graph=True)])
                for k in range(len(f))
            ]))
        return torch.stack(rows)  # (N, K, D)

    return torch.einsum("ikd,jld->ijkl", jacobian(x1), jacobian(x2))


CASES = [
    # family, readout, fix, out_dim, depth
    ("cnn", "gap", False, 1, 4),
    ("cnn", "flatten", False, 3, 3),
    ("cnn", "gap", True, 2, 4),
    ("cnn", "flatten", True, 1, 3),
    ("fc", "gap", False, 2, 4),
    ("fc", "gap", True, 1, 3),
]
VARIANTS = [("structured", "gram"), ("structured", "jacobian"), ("structured", "auto"), ("jacrev", "auto")]


def _net(family, readout, fix, out_dim, depth, width=6):
    arch = cntk.Architecture(family=family, depth=depth, readout=readout, fix_first_last=fix)
    shape = (2, 5, 6) if family == "cnn" else (7,)
    net = finite_nets.build(arch, width, input_shape=shape, out_dim=out_dim, output_scale=0.7, seed=3,
                            dtype=torch.float64, device="cpu")
    return net, shape


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("method,contraction", VARIANTS)
def test_matches_autograd_loop(case, method, contraction):
    net, shape = _net(*case)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    x1[0, ..., :2] = 0.0  # zero pre-activations somewhere: relu'(0) = 0 on both sides
    ref = autograd_ntk(net, x1, x2)
    ref_sym = autograd_ntk(net, x1, x1)
    kw = dict(method=method, contraction=contraction)
    full = finite_nets.empirical_ntk(net, x1, x2, outputs="full", **kw)
    per = finite_nets.empirical_ntk(net, x1, x2, outputs="per_output", **kw)
    sym = finite_nets.empirical_ntk(net, x1, outputs="full", **kw)
    tiny = finite_nets.empirical_ntk(net, x1, outputs="full", memory_mb=1e-3, **kw)  # one sample / row per chunk
    scale = ref.abs().max()
    assert full.shape == (4, 3, case[3], case[3])
    assert float((full - ref).abs().max() / scale) < 1e-13
    assert float((per - ref.diagonal(dim1=2, dim2=3)).abs().max() / scale) < 1e-13
    assert float((sym - ref_sym).abs().max() / ref_sym.abs().max()) < 1e-13
    assert float((tiny - ref_sym).abs().max() / ref_sym.abs().max()) < 1e-13
    assert torch.equal(sym, sym.transpose(0, 1).transpose(2, 3))  # exactly symmetric


def test_output_shapes_and_frozen_count():
    net, shape = _net("cnn", "gap", False, 1, 3)
    x = torch.rand(3, *shape, dtype=torch.float64)
    assert finite_nets.empirical_ntk(net, x).shape == (3, 3)
    assert finite_nets.empirical_ntk(net, x, outputs="per_output").shape == (3, 3, 1)
    multi, _ = _net("cnn", "gap", False, 4, 3)
    assert finite_nets.empirical_ntk(multi, x).shape == (3, 3, 4)
    assert finite_nets.empirical_ntk(multi, x[:2], x).shape == (2, 3, 4)
    # fix_first_last freezes exactly W_1 and V; the fix kernel is smaller by their contributions
    fixed, _ = _net("cnn", "gap", True, 1, 3)
    trainable = {n for n, p in fixed.named_parameters() if p.requires_grad}
    assert trainable == {"weights.1"}
    assert bool((finite_nets.empirical_ntk(fixed, x).diagonal() < finite_nets.empirical_ntk(net, x).diagonal()).all())


def test_generic_module_jacrev():
    """Any nn.Module (here with a bias and a buffer) goes through torch.func.jacrev."""
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double()
    net.register_buffer("unused", torch.ones(1))
    x1, x2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    ref = autograd_ntk(net, x1, x2)
    got = finite_nets.empirical_ntk(net, x1, x2, outputs="full")
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-13
    with pytest.raises(ValueError, match="structured"):
        finite_nets.empirical_ntk(net, x1, method="structured")


def test_float32_close_to_float64():
    arch = cntk.Architecture(depth=4, readout="gap")
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    n64 = finite_nets.build(arch, 32, input_shape=(1, 8, 8), dtype=torch.float64, device="cpu")
    n32 = finite_nets.build(arch, 32, input_shape=(1, 8, 8), dtype=torch.float32, device="cpu")
    assert torch.equal(n64.weights[1].float(), n32.weights[1])  # one seed, one net, both dtypes
    t64, t32 = finite_nets.empirical_ntk(n64, x), finite_nets.empirical_ntk(n32, x.float())
    assert t32.dtype == torch.float32
    assert float((t32.double() - t64).abs().max() / t64.abs().max()) < 1e-5


# --- the fast path: threads, memory, float32, features computed once (issue 13)


@pytest.mark.parametrize("contraction", ["gram", "jacobian"])
def test_task_pool_matches_sequential_and_oracle(monkeypatch, contraction):
    """Several tasks at once (the CPU pool), tiny chunks: still the autograd oracle; the pool restores
    torch's thread count and repeats bit for bit (results are summed in task order)."""
    from finite_nets import ntk_structured

    net, shape = _net("cnn", "flatten", False, 2, 4)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(9, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    ref = autograd_ntk(net, x1, x2)
    before = torch.get_num_threads()
    monkeypatch.setattr(ntk_structured, "_TASK_THREADS", 3)
    pools = []
    run = ntk_structured._run
    monkeypatch.setattr(ntk_structured, "_run", lambda tasks, threads: (pools.append(threads), run(tasks, threads))[1])
    kw = dict(outputs="full", contraction=contraction, memory_mb=0.05)
    cross = finite_nets.empirical_ntk(net, x1, x2, **kw)
    sym = finite_nets.empirical_ntk(net, x1, **kw)
    assert pools and set(pools) == {3}  # the patch reached the driver
    assert torch.get_num_threads() == before
    assert float((cross - ref).abs().max() / ref.abs().max()) < 1e-13
    sym_ref = autograd_ntk(net, x1, x1)
    assert float((sym - sym_ref).abs().max() / sym_ref.abs().max()) < 1e-13
    assert torch.equal(sym, finite_nets.empirical_ntk(net, x1, **kw))


def test_features_computed_once_when_they_fit(monkeypatch):
    """Per-sample work linear in N: every sample goes through one forward/backward pass unless memory forces blocks."""
    from finite_nets import ntk_structured

    net, shape = _net("cnn", "gap", False, 1, 4, width=8)
    x = torch.randn(12, *shape, dtype=torch.float64)
    seen = []
    fill = ntk_structured._fill
    monkeypatch.setattr(ntk_structured, "_fill", lambda model, plan, store, xc, i0: (seen.append(len(xc)), fill(model, plan, store, xc, i0)))
    finite_nets.empirical_ntk(net, x)
    assert sum(seen) == 12
    seen.clear()
    finite_nets.empirical_ntk(net, x[:7], x[7:])
    assert sum(seen) == 12
    seen.clear()
    small = finite_nets.empirical_ntk(net, x, memory_mb=0.01)  # blocks: x2's features recomputed per block
    assert sum(seen) > 12
    assert torch.allclose(small, finite_nets.empirical_ntk(net, x), rtol=1e-13, atol=0)


def test_default_memory_budget(monkeypatch):
    from finite_nets import ntk_memory

    mb = ntk_memory.default_memory_mb("cpu")
    assert 256 <= mb < 2**30
    # a quarter of what is available, at least 256 MiB, 1024 MiB when unknown (the probe patched where it lives)
    for avail, want in ((8 * 2**30, 2048.0), (2**20, 256.0), (None, 1024.0)):
        monkeypatch.setattr(ntk_memory, "_available_bytes", lambda avail=avail: avail)
        assert ntk_memory.default_memory_mb("cpu") == want
    monkeypatch.undo()
    net, shape = _net("cnn", "gap", False, 1, 3)
    x = torch.randn(3, *shape, dtype=torch.float64)
    assert torch.equal(finite_nets.empirical_ntk(net, x), finite_nets.empirical_ntk(net, x, memory_mb=None))


@pytest.mark.parametrize("contraction", ["gram", "jacobian"])
def test_float32_accumulation_close_to_float64(monkeypatch, contraction):
    """float32 (oneDNN GEMMs on the CPU, or torch.mm) within 1e-5 of float64 on a 16x16 net with both readouts."""
    from finite_nets import ntk_gemm

    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(depth=4, readout=readout)
        n64 = finite_nets.build(arch, 48, input_shape=(3, 16, 16), dtype=torch.float64, device="cpu")
        n32 = finite_nets.build(arch, 48, input_shape=(3, 16, 16), dtype=torch.float32, device="cpu")
        t64 = finite_nets.empirical_ntk(n64, x, contraction=contraction)
        t32 = finite_nets.empirical_ntk(n32, x.float(), contraction=contraction)
        assert float((t32.double() - t64).abs().max() / t64.abs().max()) < 1e-5
        monkeypatch.setattr(ntk_gemm, "_ONEDNN_GEMM", False)  # the torch.mm fallback
        assert not ntk_gemm._onednn(x.float())
        plain = finite_nets.empirical_ntk(n32, x.float(), contraction=contraction)
        monkeypatch.setattr(ntk_gemm, "_ONEDNN_GEMM", None)
        assert float((plain.double() - t64).abs().max() / t64.abs().max()) < 1e-5


def test_cuda_calls_run_in_ieee_fp32():
    """On CUDA the call switches TF32 off (cuBLAS and cuDNN) and restores the user's flags afterwards."""
    from finite_nets import ntk_gemm

    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with ntk_gemm._ieee_fp32(torch.device("cuda")):
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
