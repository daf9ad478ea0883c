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
import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the fused GPU backend is optional")

import cntk  # noqa: E402
from cntk.backends import fused_triton


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


def test_compiled_kernel_declares_its_constexpr_parameters():
    """The JIT copy of the kernel keeps its annotations: without them Triton treats SCALE, Q, FB, BH,
    BW, F64 and IEEE as runtime values and the GPU compile fails (the interpreter never notices)."""
    params = {p.name: p.is_constexpr for p in fused_triton._kernel(False).params}
    assert [n for n, c in params.items() if c] == ["SCALE", "Q", "FB", "BH", "BW", "F64", "IEEE"]


@pytest.mark.parametrize("dtype, shape", [(torch.float32, (3, 32, 32)), (torch.float64, (2, 6, 5))])
def test_kernel_compiles_for_hopper_without_a_gpu(monkeypatch, dtype, shape):
    """The launch path (argument binding, specialisation, Triton's frontend, LLVM and ptxas) down to
    sm_90 machine code, on the CPU: Triton's active driver is replaced by one that names an H100/H200
    target, and ``warmup`` compiles without launching.  Catches what the interpreter cannot: code
    that only the GPU compiler rejects."""
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
    args = (x, x, s, s, ij, ij, torch.zeros(3, 1, dtype=torch.float64), torch.zeros(8 * fb * bh * bw, dtype=dtype),
            3, 1, 2, h * w, 3, c, h, w, 1, 1, 0)
    compiled = kern.warmup(*args, grid=(1,), num_warps=8, SCALE=1 / math.pi, Q=3, FB=fb, BH=bh, BW=bw,
                           F64=dtype == torch.float64, IEEE=False)
    assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
