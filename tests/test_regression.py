import pytest
import torch

import cntk


def test_paper_targets():
    y = cntk.paper_targets(torch.tensor([2, 0]), 3)
    assert y.tolist() == [[-0.1, -0.1, 0.9], [0.9, -0.1, -0.1]] and y.dtype == torch.float64
    with pytest.raises(ValueError, match="labels must lie"):
        cntk.paper_targets(torch.tensor([3]), 3)


def test_interpolates_training_data_without_ridge(digits):
    x, labels = digits[:40], torch.arange(40) % 10
    k = cntk.kernel(x, None, cntk.Architecture(depth=3, readout="gap"))
    y = cntk.paper_targets(labels, 10)
    model = cntk.kernel_regression(k, y)
    torch.testing.assert_close(model.predict(k), y, rtol=0, atol=1e-8)
    assert cntk.accuracy(model.predict(k), labels) == 1.0 and model.jitter == 0.0


def test_ridge_shrinks_the_fit(digits):
    k = cntk.kernel(digits[:30], None, cntk.Architecture(depth=3, readout="flatten"))
    y = cntk.paper_targets(torch.arange(30) % 10, 10)
    free = cntk.kernel_regression(k, y).predict(k)
    ridged = cntk.kernel_regression(k, y, ridge=1.0).predict(k)
    assert (ridged - y).norm() > 10 * (free - y).norm()
    with pytest.raises(ValueError, match="ridge"):
        cntk.kernel_regression(k, y, ridge=-1)


def test_singular_matrix_gets_jitter_with_a_warning(digits):
    k5 = cntk.kernel(digits[:5], None, cntk.Architecture(depth=3, readout="gap"))
    idx = torch.arange(10) % 5
    k = k5[idx][:, idx]  # duplicated rows and columns: exactly singular
    with pytest.warns(UserWarning, match="jitter"):
        model = cntk.kernel_regression(k, cntk.paper_targets(torch.arange(10) % 5, 5))
    assert model.jitter > 0 and torch.isfinite(model.alpha).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="square"):
        cntk.kernel_regression(torch.eye(3)[:2], torch.zeros(2))
    with pytest.raises(ValueError, match="rows"):
        cntk.kernel_regression(torch.eye(3), torch.zeros(2))
