"""The fused Triton backend ("triton") against the plain reference recursion, run on the CPU by
Triton's interpreter (TRITON_INTERPRET=1, set by a fixture for these tests only).

cntk.backends.fused_triton reads TRITON_INTERPRET when it launches a kernel, not when it is imported, so it
does not matter whether triton or the module were imported earlier in the session (conftest's
``available_backends()`` imports it at collection time).  The interpreter runs the same kernel
source as the GPU, in numpy: float64 is exact to rounding (tolerance 1e-10, measured <= 1e-15).
float32 in the interpreter uses correctly rounded division and square roots where the GPU uses
2-ulp ones: measured worst 6.2e-7 against float64 here (digits, depth 21, every entry, diagonal
included); the GPU's fast operations were simulated at 1.3e-6.  We assert the project's float32
contract, 1e-5 (tests/test_cntk_precision.py), with that margin; the conformance suite
(tests/test_backends_conformance.py) runs this backend against the reference in the interpreter;
benchmarks/gpu_kernels.py --check runs that suite on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the fused GPU backend is optional")

import cntk  # noqa: E402
from cntk import activations as A, layers as L, presets as P  # noqa: E402
from cntk.backends import fused_triton  # noqa: E402


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """Run Triton kernels in its CPU interpreter for each test, and restore the environment after."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _entrywise(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b).abs() / b.abs()).max())


def test_float32_within_1e5_of_float64_at_depth_21(digits):
    """Real digits (black borders: zero-variance pixels) and standardised ones, every entry."""
    x = digits[[0, 42]]
    worst = 0.0
    standardised = (x - digits.mean()) / digits.std()
    for data, readout in [(x, "gap"), (x, "flatten"), (standardised, "flatten")]:
        arch = cntk.Architecture(depth=21, readout=readout)
        k64 = cntk.kernel(data, None, arch, backend="planes")
        k32 = cntk.kernel(data.float(), None, arch, backend="triton")
        assert k32.dtype == torch.float32
        rel = _entrywise(k32, k64)
        diag = float(((k32.double() - k64).diagonal().abs() / k64.diagonal().abs()).max())
        assert rel < 1e-5 and diag < 1e-5, (readout, rel, diag)
        worst = max(worst, rel)
    print(f"triton (interpreter) float32 vs float64, depth 21: worst entry {worst:.1e}")


def test_supports_follows_the_interpreter_switch(monkeypatch):
    net = cntk.Architecture(depth=2).network()
    assert fused_triton.supports(net, torch.device("cpu")) is None
    assert "triton" in cntk.available_backends()
    assert cntk.choose_backend(net, "cpu").NAME != "triton"  # "auto" never picks the interpreter
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "CUDA" in fused_triton.supports(net, torch.device("cpu"))
    assert fused_triton.supports(net, "meta") is not None
    with pytest.raises(ValueError, match="cannot compute this network on cpu: it runs on CUDA"):
        cntk.kernel(torch.ones(1, 1, 3, 3), None, cntk.Architecture(depth=2), backend="triton")


def test_fold_groups_and_odd_shapes(monkeypatch):
    """Items of several fold blocks, a partial last group, a persistent loop over many items, and
    images with a side of 1 or an odd side that is not a power of two."""
    monkeypatch.setattr(fused_triton, "_ITEMS_PER_PROGRAM", 3)  # 6 pairs x 6 blocks -> groups of 4 blocks
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 1, 9, 9, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 9, 9, generator=g, dtype=torch.float64)
    arch = cntk.Architecture(depth=2, readout="gap")
    assert _rel(cntk.kernel(x, y, arch, backend="triton"), cntk.kernel(x, y, arch, backend="planes")) < 1e-10
    for shape in [(2, 1, 5), (1, 3, 1)]:
        x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
        for readout in ("gap", "flatten"):
            arch = cntk.Architecture(depth=3, readout=readout)
            ref = cntk.kernel(x, None, arch, backend="reference")
            assert _rel(cntk.kernel(x, None, arch, backend="triton"), ref) < 1e-10, (shape, readout)


def test_myrtle5_pooled_matches_the_reference():
    """Myrtle-5 (three stages: 8 x 8, AvgPool(2), 4 x 4, AvgPool(2), 2 x 2, GAP) on 8 x 8 inputs: one
    launch per stage, the pooled planes gathered from the previous stage's buffer.  float64 to
    1e-10 (relative to the block's largest entry), float32 to 1e-5 (every entry), NTK and NNGP, a
    symmetric block (self pairs: rho = 1 on every stage's zero plane) and a cross block."""
    net = P.myrtle(5)
    assert fused_triton.supports(net, torch.device("cpu")) is None
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    for kind in ("ntk", "nngp"):
        for b in (None, y):
            ref = cntk.kernel(x, b, net, kind, backend="reference")
            got = cntk.kernel(x, b, net, kind, backend="triton")
            assert got.shape == ref.shape and _rel(got, ref) < 1e-10, (kind, b is None, _rel(got, ref))
            k32 = cntk.kernel(x.float(), None if b is None else b.float(), net, kind, backend="triton")
            assert k32.dtype == torch.float32 and _entrywise(k32, ref) < 1e-5, (kind, b is None, _entrywise(k32, ref))


def test_pooled_variants_match_the_reference(monkeypatch):
    """The other pooled shapes of the chain form: the flatten readout (each stage holds only the window
    of offsets the later stages gather: fold indices mapped onto folds 0..m and H - m..H - 1), a pool
    right before the readout (a last stage of no activation), "fix", a 3 x 3 pool of non-square
    stages, and items of several fold blocks (float64, NTK, symmetric and cross)."""
    monkeypatch.setattr(fused_triton, "_ITEMS_PER_PROGRAM", 2)
    nets = [
        (L.Network((L.Conv(3, w_var=None), L.Act(), L.Conv(3), L.Act(), L.AvgPool(2), L.Conv(3), L.Act(),
                    L.Flatten(), L.Dense(w_var=2 / 9)), "pool-V"), (1, 8, 8)),
        (L.Network((L.Conv(3, w_var=None, trainable=False), L.Act(), L.AvgPool(2), L.Conv(3), L.Act(), L.AvgPool(2),
                    L.Flatten(), L.Dense(w_var=2 / 9, trainable=False)), "pool-before-readout-fix"), (1, 8, 4)),
        (L.Network((L.Conv(3, w_var=None), L.Act(), L.AvgPool(3), L.Conv(3), L.Act(), L.GlobalAvgPool(),
                    L.Dense(w_var=2 / 9)), "pool3"), (2, 6, 9)),
    ]
    g = torch.Generator().manual_seed(6)
    for net, shape in nets:
        assert fused_triton.supports(net, torch.device("cpu")) is None, net.name
        x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
        y = torch.randn(1, *shape, generator=g, dtype=torch.float64)
        for b in (None, y):
            ref = cntk.kernel(x, b, net, "ntk", backend="reference")
            assert _rel(cntk.kernel(x, b, net, "ntk", backend="triton"), ref) < 1e-10, (net.name, b is None)


def test_supports_pooled_paper_family_only():
    """Pools are accepted in the paper's family (ReLU, c_sigma = 2, no bias); other pooled chains go to
    the CPU backends, with the reason in one line."""
    for depth in (5, 7, 10):
        assert fused_triton.supports(P.myrtle(depth), torch.device("cpu")) is None
    for net in (P.myrtle(5, b_var=0.1), P.myrtle(5, act=A.Erf()),
                L.Network((L.Conv(3, w_var=None), L.Act(), L.AvgPool(2), L.Conv(3, w_var=1.0), L.Act(),
                           L.GlobalAvgPool(), L.Dense(w_var=1 / 9)), "c_sigma-1")):
        assert "paper's family only" in fused_triton.supports(net, torch.device("cpu"))


def test_compiled_kernel_declares_its_constexpr_parameters():
    """The JIT copy of the kernel keeps its annotations: without them Triton treats SCALE, Q, FB, BH,
    BW, F64, IEEE, POOL and WRITE as runtime values and the GPU compile fails (the interpreter never
    notices)."""
    params = {p.name: p.is_constexpr for p in fused_triton._kernel(False).params}
    assert [n for n, c in params.items() if c] == ["SCALE", "Q", "FB", "BH", "BW", "F64", "IEEE", "POOL", "WRITE"]


@pytest.mark.parametrize("dtype, shape, pool, write", [
    (torch.float32, (3, 32, 32), 1, False),  # the unpooled kernel (the paper's CNNs)
    (torch.float64, (2, 6, 5), 1, False),
    (torch.float32, (3, 32, 32), 1, True),  # Myrtle on CIFAR: the first stage writes its planes,
    (torch.float32, (1, 16, 16), 2, True),  # the middle one pools them and writes its own,
    (torch.float32, (1, 8, 8), 2, False),  # the last one pools and reads out
])
def test_kernel_compiles_for_hopper_without_a_gpu(monkeypatch, dtype, shape, pool, write):
    """The launch path (argument binding, specialisation, Triton's frontend, LLVM and ptxas) down to
    sm_90 machine code, on the CPU: Triton's active driver is replaced by one that names an H100/H200
    target, and ``warmup`` compiles without launching.  Catches what the interpreter cannot: code
    that only the GPU compiler rejects.  shape: the stage's (C, H, W); pool: the k x k pool that
    feeds the stage (1: the inputs); write: the stage stores its planes for the next one."""
    import math

    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    monkeypatch.delenv("TRITON_INTERPRET")

    class Hopper:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, *args):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    if not hasattr(driver, "_active"):
        pytest.skip("this Triton keeps its active driver elsewhere")
    monkeypatch.setattr(driver, "_active", Hopper())  # restored after the test (no GPU: no default driver)
    kern = fused_triton._kernel(False)
    c, h, w = shape
    bh, bw = 1 << (h - 1).bit_length(), 1 << (w - 1).bit_length()
    fb = max(1, min(1 << (h * w - 1).bit_length(), 1024 // (bh * bw)))
    x = torch.zeros(2, c, h, w, dtype=dtype)
    s = torch.zeros(2, 3, h, w, dtype=dtype)
    ij = torch.zeros(3, dtype=torch.int32)
    buf = torch.zeros(16, dtype=dtype)  # the stage buffers (never touched: nothing is launched)
    sh, sw = pool * h, pool * w
    args = (x, x, s, s, ij, ij, torch.zeros(3, 1, dtype=torch.float64), torch.zeros(8 * fb * bh * bw, dtype=dtype),
            buf, buf, 3, 1, 2, h * w, 3, c, h, w, 1, 1, 0, 0, 0, 3, h, w, h - 1, w - 1, h, w,
            sh, sw, sh - 1, sw - 1, sh, sw)
    compiled = kern.warmup(*args, grid=(1,), num_warps=8, SCALE=1 / math.pi, Q=3, FB=fb, BH=bh, BW=bw,
                           F64=dtype == torch.float64, IEEE=False, POOL=pool, WRITE=write)
    assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
