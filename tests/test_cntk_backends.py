"""Every fast backend equals the plain P x P reference recursion to 1e-10 relative in float64."""
import itertools

import pytest
import torch

import cntk
from conftest import fast_backends

SHAPES = [(1, 5, 5), (3, 4, 6), (2, 7, 3)]  # square and not, 1 and 3 channels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_backend_matches_reference(backend, shape, readout):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    for depth, fix, kind in itertools.product(range(2, 7), [False, True], cntk.KINDS):
        if fix and depth == 2:
            continue
        arch = cntk.Architecture(depth=depth, readout=readout, fix_first_last=fix)
        for a, b in [(x, None), (x, y)]:
            ref = cntk.kernel(a, b, arch, kind, backend="reference")
            got = cntk.kernel(a, b, arch, kind, backend=backend)
            assert got.dtype == torch.float64 and got.shape == ref.shape
            assert _rel(got, ref) < 1e-10, (depth, fix, kind, b is None)


@pytest.mark.parametrize("backend", fast_backends())
def test_tiling_and_batching_do_not_change_the_result(backend, digits):
    x, y = digits[:7], digits[100:105]
    arch = cntk.Architecture(depth=4, readout="gap")
    whole = cntk.kernel(x, None, arch, backend=backend)
    tiled = cntk.kernel(x, None, arch, backend=backend, tile_size=3, batch_size=2)
    assert _rel(tiled, whole) < 1e-13
    cross = cntk.kernel(x, y, arch, backend=backend)
    assert _rel(cntk.kernel(x, y, arch, backend=backend, tile_size=2, batch_size=3), cross) < 1e-13
    # the symmetric Gram's off-diagonal block equals the cross kernel of the two halves
    assert _rel(whole[:3, 3:], cntk.kernel(x[:3], x[3:], arch, backend=backend)) < 1e-12


def test_progress_bar_is_shown_for_tiled_work(capsys, digits):
    cntk.kernel(digits[:6], None, cntk.Architecture(depth=3, readout="flatten"), tile_size=2)
    assert "pair" in capsys.readouterr().err


def test_output_dtype_and_device_follow_the_input(digits):
    arch = cntk.Architecture(depth=3)
    k = cntk.kernel(digits[:3].float(), digits[3:5].float(), arch, "nngp")
    assert k.dtype == torch.float32 and k.shape == (3, 2) and k.device == digits.device
