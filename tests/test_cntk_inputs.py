"""Bad input gets a clear ValueError naming the problem."""
import pytest
import torch

import cntk

CNN = cntk.Architecture(depth=3)
FC = cntk.Architecture(family="fc", depth=3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cntk.kernel(torch.rand(2, 8, 8), None, CNN), r"shape \(N, C, H, W\)"),
        (lambda: cntk.kernel(torch.rand(2, 1, 8, 8), None, FC), r"shape \(N, D\)"),
        (lambda: cntk.kernel(torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8), CNN), "agree in every dimension"),
        (lambda: cntk.kernel(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 7), CNN), "agree in every dimension"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4).double(), CNN), "same dtype"),
        (lambda: cntk.kernel(torch.tensor([[[[float("nan")]]]]), None, CNN), "NaN or inf"),
        (lambda: cntk.kernel(torch.full((1, 1, 2, 2), float("inf")), None, CNN), "NaN or inf"),
        (lambda: cntk.kernel(torch.ones(2, 1, 4, 4, dtype=torch.int64), None, CNN), "float32 or float64"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4), None, CNN, kind="cnngp"), "unknown kind"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4), None, CNN, backend="cupy"), "not available"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4), None, "cnn"), "cntk.Architecture"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4).numpy(), None, CNN), "torch.Tensor"),
        (lambda: cntk.kernel(torch.rand(2, 1, 4, 4), None, CNN, batch_size=0), "batch_size"),
        (lambda: cntk.Architecture(depth=1), "depth must be >= 2"),
        (lambda: cntk.Architecture(depth=3.0), "integer"),
        (lambda: cntk.Architecture(readout="max"), "unknown readout"),
        (lambda: cntk.Architecture(family="rnn"), "unknown family"),
        (lambda: cntk.Architecture(filter_size=4), "odd"),
        (lambda: cntk.Architecture(depth=2, fix_first_last=True), "freezes every layer"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_batch_gives_empty_matrix():
    assert cntk.kernel(torch.rand(0, 1, 4, 4), torch.rand(3, 1, 4, 4), CNN).shape == (0, 3)


@pytest.mark.parametrize("device, match", [("tpu", "unknown device 'tpu'"), (3.5, "unknown device 3.5")])
def test_an_unknown_device_is_one_line(device, match):
    with pytest.raises(ValueError, match=match):
        cntk.kernel(torch.rand(2, 1, 6, 6), None, cntk.Architecture(), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line():
    import finite_nets

    with pytest.raises(ValueError, match="sees no CUDA device; use device='cpu'"):
        cntk.kernel(torch.rand(2, 1, 6, 6), None, cntk.Architecture(), device="cuda")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        finite_nets.build(cntk.Architecture(), 8, input_shape=(1, 6, 6), device="cuda")
