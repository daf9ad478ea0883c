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


def test_holm_textbook_example_and_errors():
    """Holm by hand: sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> the
    running maximum 0.02, 0.03, 0.06, 0.06, back in the input order."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.3, 0.9]) == pytest.approx([0.6, 0.9]) and len(stats.holm([])) == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.1, 1.5])


def test_holm_is_monotone_and_between_raw_and_bonferroni():
    p = np.random.default_rng(4).random(40) ** 3
    adj = stats.holm(p)
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all()  # a smaller raw p never gets a larger adjusted p
    assert (adj >= p).all() and (adj <= np.minimum(1, 40 * p) + 1e-12).all()


def test_holm_by_family_adjusts_each_family_on_its_own():
    p = [0.01, 0.04, 0.03, 0.005, 0.01, 0.04]
    adj = stats.holm_by_family(p, ["a", "a", "a", "a", "b", "b"])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02, 0.02, 0.04])
    assert not np.allclose(adj, stats.holm(p))  # one family of six would adjust more
    with pytest.raises(ValueError, match="one family label per p value"):
        stats.holm_by_family(p, ["a"])


def test_wilson_interval_known_values():
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(95, 100) == pytest.approx((0.8883, 0.9785), abs=1e-4)
    acc, lo, hi = stats.wilson_accuracy(np.r_[np.ones(95, bool), np.zeros(5, bool)])
    assert (acc, lo, hi) == pytest.approx((0.95, 0.8883, 0.9785), abs=1e-4)
    with pytest.raises(ValueError, match="one model"):
        stats.wilson_accuracy(np.ones((2, 5), bool))


def _seed_spread(rng, accuracies, m=1000):
    return rng.random((len(accuracies), m)) < np.asarray(accuracies)[:, None]


def test_two_level_bootstrap_widens_with_seed_variance_only():
    rng = np.random.default_rng(5)
    spread = _seed_spread(rng, [0.55, 0.9, 0.7, 0.6, 0.85])  # seeds far apart: seed noise dominates
    acc, lo, hi = stats.bootstrap_two_level(spread, resamples=1000)
    _, ilo, ihi = stats.bootstrap_accuracy(spread, resamples=1000)
    assert acc == pytest.approx(spread.mean()) and lo <= acc <= hi
    assert hi - lo > 3 * (ihi - ilo)
    same = np.repeat(spread[:1], 5, axis=0)  # identical seeds: only the images vary
    _, lo, hi = stats.bootstrap_two_level(same, resamples=1000)
    _, ilo, ihi = stats.bootstrap_accuracy(same, resamples=1000)
    assert 0.85 < (hi - lo) / (ihi - ilo) < 1.15


def test_two_level_difference_against_a_deterministic_kernel():
    rng = np.random.default_rng(6)
    kernel = rng.random(800) < 0.8
    d, lo, hi = stats.bootstrap_two_level_difference(np.repeat(kernel[None], 3, 0), kernel, resamples=500)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)  # images resampled jointly: the same predictions never differ
    nets = kernel[None] ^ (rng.random((4, 800)) < np.array([0.02, 0.3, 0.05, 0.25])[:, None])
    d, lo, hi = stats.bootstrap_two_level_difference(nets, kernel, resamples=500)
    _, ilo, ihi = stats.bootstrap_difference(nets, kernel, resamples=500)
    assert lo <= d <= hi and hi - lo > 2 * (ihi - ilo)
    with pytest.raises(ValueError, match="same test images"):
        stats.bootstrap_two_level_difference(nets, kernel[:10])
