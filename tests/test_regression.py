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


def test_leave_one_out_cross_validation_matches_the_closed_form():
    """folds = n is leave-one-out, whose held-out predictions have a closed form:
    f_-i(x_i) = y_i - alpha_i / G^-1_ii with G = K + lambda I (constant diagonal, so the relative ridge
    is the same lambda for every fold)."""
    from cntk.solve.regression import cross_validate_ridge

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 60, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    k = x @ x.T  # unit diagonal, positive definite
    w = torch.randn(60, 3, generator=g, dtype=torch.float64)
    labels = (x @ w + 0.3 * torch.randn(30, 3, generator=g, dtype=torch.float64)).argmax(1)
    ridges = [0.0, 0.1, 1.0]
    got = cross_validate_ridge(k, labels, 3, ridges, folds=30)
    y = cntk.paper_targets(labels, 3)
    want = []
    for ridge in ridges:
        ginv = torch.linalg.inv(k + ridge * torch.eye(30, dtype=torch.float64))
        loo = y - (ginv @ y) / ginv.diagonal()[:, None]
        want.append(cntk.accuracy(loo, labels))
    assert got == pytest.approx(want) and len(set(want)) > 1  # the ridges differ, so the check can fail
    with pytest.raises(ValueError, match="folds"):
        cross_validate_ridge(k, labels, 3, ridges, folds=1)
