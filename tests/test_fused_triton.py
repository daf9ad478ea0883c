"""The fused Triton backend ("triton") against the plain reference recursion, run on the CPU by
Triton's interpreter (TRITON_INTERPRET=1, set by a fixture for these tests only).

cntk.fused_triton reads TRITON_INTERPRET when it launches a kernel, not when it is imported, so it
does not matter whether triton or the module were imported earlier in the session (conftest's
``available_backends()`` imports it at collection time).  The interpreter runs the same kernel
source as the GPU, in numpy: float64 is exact to rounding (tolerance 1e-10, measured <= 1e-15).
float32 in the interpreter uses correctly rounded division and square roots where the GPU uses
2-ulp ones: measured worst 6.2e-7 against float64 here (digits, depth 21, every entry, diagonal
included); the GPU's fast operations were simulated at 1.3e-6.  We assert the project's float32
contract, 1e-5 (tests/test_cntk_precision.py), with that margin; benchmarks/gpu_kernels.py
--check repeats these checks on a GPU.
"""
import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the fused GPU backend is optional")

import cntk  # noqa: E402
from cntk import fused_triton  # noqa: E402


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """Run Triton kernels in its CPU interpreter for each test, and restore the environment after."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _entrywise(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b).abs() / b.abs()).max())


# shape -> (depth, fix, kind) cases: depths 2..5, fix on and off, ntk and nngp for every readout
# (the interpreter is slow: a few cases per shape keep this file near half a minute on 2 cores)
CASES = {
    (1, 4, 4): [(2, False, "ntk"), (4, False, "nngp")],
    (2, 5, 3): [(3, True, "ntk"), (5, False, "ntk")],
    (3, 6, 6): [(3, True, "ntk"), (4, True, "nngp")],
}


@pytest.mark.parametrize("shape", list(CASES), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_float64_matches_reference(shape, readout):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    for depth, fix, kind in CASES[shape]:
        arch = cntk.Architecture(depth=depth, readout=readout, fix_first_last=fix)
        for a, b in [(x, None), (x, y)]:
            ref = cntk.kernel(a, b, arch, kind, backend="reference")
            got = cntk.kernel(a, b, arch, kind, backend="triton")
            assert got.dtype == torch.float64 and got.shape == ref.shape
            assert _rel(got, ref) < 1e-10, (depth, fix, kind, b is None, _rel(got, ref))
            if b is None:
                assert torch.equal(got, got.T)


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


def test_filter_size_5_and_nngp_cross_kernel():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    y = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    for readout in ("gap", "flatten"):
        arch = cntk.Architecture(depth=3, readout=readout, filter_size=5)
        for kind in cntk.KINDS:
            ref = cntk.kernel(x, y, arch, kind, backend="reference")
            assert _rel(cntk.kernel(x, y, arch, kind, backend="triton"), ref) < 1e-10


def test_zero_images_give_zero_not_nan():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    x[1, 0, 1:3, 1:3] = 1.0  # one blank image, one with a small bright patch
    arch = cntk.Architecture(depth=4, readout="gap")
    got = cntk.kernel(x, None, arch, backend="triton")
    ref = cntk.kernel(x, None, arch, backend="reference")
    assert torch.isfinite(got).all() and got[0].abs().max() == 0
    assert _rel(got, ref) < 1e-10


def test_tiling_and_batching_do_not_change_the_result(digits):
    x = digits[:4]
    arch = cntk.Architecture(depth=3, readout="flatten")
    whole = cntk.kernel(x, None, arch, backend="triton")
    tiled = cntk.kernel(x, None, arch, backend="triton", tile_size=2, batch_size=2, progress=False)
    assert _rel(tiled, whole) < 1e-13
    assert _rel(whole, cntk.kernel(x, None, arch, backend="reference")) < 1e-10


def test_supports_follows_the_interpreter_switch(monkeypatch):
    assert fused_triton.supports(torch.device("cpu"))
    assert "triton" in cntk.available_backends()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not fused_triton.supports(torch.device("cpu"))
    assert not fused_triton.supports("meta")
    with pytest.raises(ValueError, match="does not run on device"):
        cntk.kernel(torch.ones(1, 1, 3, 3), None, cntk.Architecture(depth=2), backend="triton")
    if not torch.cuda.is_available():
        assert cntk.api._auto_backend(torch.device("cpu")) != "triton"


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
