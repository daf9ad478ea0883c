"""The interval and paired-test code on simulated data with known answers."""
import numpy as np
import pytest

from experiments.harness import stats


def test_bootstrap_interval_covers_the_true_accuracy_at_its_level():
    """200 simulated test sets of 400 images from a classifier with accuracy 0.8: the 95 % interval
    covers 0.8 in about 95 % of them (binomial SE of the coverage at 200 trials: 1.5 points)."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        correct = rng.random(400) < 0.8
        acc, lo, hi = stats.bootstrap_accuracy(correct, resamples=1000, seed=trial)
        assert lo <= acc <= hi and acc == correct.mean()
        hits += lo <= 0.8 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_of_seed_means_and_paired_differences():
    rng = np.random.default_rng(2)
    a = rng.random((3, 2000)) < 0.9  # three seeds of one model
    acc, lo, hi = stats.bootstrap_accuracy(a)
    assert acc == pytest.approx(a.mean()) and hi - lo < 0.03  # 2000 images: about +-1.3 points
    b = a[0] ^ (rng.random(2000) < 0.02)  # a near-copy: the paired difference is tight around ~0
    d, dlo, dhi = stats.bootstrap_difference(a[0], b)
    assert dlo <= d <= dhi and dhi - dlo < 0.02
    with pytest.raises(ValueError, match="same test images"):
        stats.bootstrap_difference(a[0], b[:10])


def test_mcnemar_exact_values_and_null_rate():
    a = np.array([1] * 10 + [0] * 0 + [1] * 80 + [0] * 10, bool)  # b = 10 discordant for A
    b = np.array([0] * 10 + [1] * 0 + [1] * 80 + [0] * 10, bool)
    t = stats.mcnemar(a, b)
    assert (t["b"], t["c"]) == (10, 0) and t["p"] == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar(a, a)["p"] == 1.0
    # under the null (two equally good classifiers) p < 0.05 in at most about 5 % of trials
    rng = np.random.default_rng(3)
    rejections = sum(stats.mcnemar(rng.random(300) < 0.8, rng.random(300) < 0.8)["p"] < 0.05 for _ in range(300))
    assert rejections / 300 <= 0.08
    # and it detects a real 5-point difference on 2000 images
    assert stats.mcnemar(rng.random(2000) < 0.85, rng.random(2000) < 0.80)["p"] < 0.01


def test_correctness_strings_round_trip():
    c = np.array([True, False, True, True])
    assert stats.encode(c) == "1011" and (stats.decode("1011") == c).all()
