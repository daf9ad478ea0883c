"""Intervals and paired tests for accuracies on one test set.

- ``bootstrap_accuracy``: the accuracy (averaged over seeds when several models are given) and a
  percentile bootstrap interval over test images: the images are resampled, each seed's model
  keeps its own predictions, so the interval is the test set's sampling noise of the seed mean.
- ``bootstrap_two_level`` / ``bootstrap_two_level_difference``: where several seeds of a finite
  net are summarised, each resample draws the S seeds and the M test images with replacement,
  independently, so the interval holds both sources of noise: which test set, and which seeds.
- ``wilson``: the Wilson score interval of one deterministic model's accuracy (k right of M test
  images: a binomial proportion; scipy's ``binomtest(k, n).proportion_ci(method="wilson")``).
- ``mcnemar``: the exact (binomial) two-sided McNemar test of two classifiers on the same test
  images: only the discordant images count (b: A right and B wrong, c: the reverse),
  p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]).
- ``holm`` / ``holm_by_family``: Holm-Bonferroni step-down adjusted p values (statsmodels'
  ``multipletests(method="holm")``), which control the family-wise error rate within each family.
Correctness vectors travel in result rows as strings of '0' / '1' (``encode`` / ``decode``).
"""
from __future__ import annotations

import gc
from collections.abc import Hashable, Sequence

import numpy as np


def encode(correct) -> str:
    """A boolean vector (test images classified correctly) as a '0'/'1' string."""
    return "".join("1" if c else "0" for c in np.asarray(correct, dtype=bool).ravel())


def decode(text: str) -> np.ndarray:
    return np.frombuffer(str(text).encode(), dtype=np.uint8) == ord("1")


def bootstrap_accuracy(correct: Sequence, level: float = 0.95, resamples: int = 4000, seed: int = 0
                       ) -> tuple[float, float, float]:
    """(accuracy, low, high): correct is (M,) or (S, M) booleans (S models on the same M images);
    the accuracy is the mean over models and images; the interval resamples the images."""
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    if c.size == 0:
        return float("nan"), float("nan"), float("nan")
    per_image = c.mean(0)  # (M,): fraction of the models right on each image (or any per-image score)
    m = len(per_image)
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for start in range(0, resamples, 500):  # chunks bound the memory at 500 x M
        k = min(500, resamples - start)
        stats[start : start + k] = per_image[rng.integers(0, m, size=(k, m))].mean(1)
    alpha = (1 - level) / 2
    return float(per_image.mean()), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def bootstrap_difference(correct_a: Sequence, correct_b: Sequence, level: float = 0.95, resamples: int = 4000,
                         seed: int = 0) -> tuple[float, float, float]:
    """(acc A - acc B, low, high) on the same M test images, paired: each resample draws images and
    keeps both sides' predictions on them.  correct_a / correct_b: (M,) or (S, M) (seed means)."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float)).mean(0)
    b = np.atleast_2d(np.asarray(correct_b, dtype=float)).mean(0)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions must cover the same test images: {a.shape} vs {b.shape}")
    return bootstrap_accuracy(a - b, level, resamples, seed)


def mcnemar(correct_a: Sequence, correct_b: Sequence) -> dict[str, float]:
    """Exact McNemar test on paired predictions: {'b', 'c', 'p', 'diff'} (diff = acc A - acc B)."""
    from scipy.stats import binom

    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired predictions must cover the same test images: {a.shape} vs {b_.shape}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else min(1.0, 2 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "p": p, "diff": float(a.mean() - b_.mean()) if a.size else float("nan")}


def majority(correct: Sequence) -> np.ndarray:
    """Per image: right for most of S seeds' models ((S, M) -> (M,)), the paired unit of a seed ensemble."""
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    return c.mean(0) > 0.5


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of a binomial proportion k / n; (nan, nan) for n = 0."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k = {k}, n = {n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_accuracy(correct: Sequence, level: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high) of one deterministic model: correct is (M,) booleans; Wilson interval."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 1:
        raise ValueError(f"one model's correctness must be (M,), got shape {c.shape}")
    if c.size == 0:
        return float("nan"), float("nan"), float("nan")
    return (float(c.mean()), *wilson(int(c.sum()), c.size, level))


def _seeds_by_images(correct: Sequence, name: str) -> np.ndarray:
    """(S, M) float array from (M,) (one deterministic model: S = 1) or (S, M)."""
    c = np.asarray(correct, dtype=float)
    if c.ndim not in (1, 2) or c.size == 0:
        raise ValueError(f"{name} must be a non-empty (M,) or (S, M) array, got shape {c.shape}")
    return np.atleast_2d(c)


def _two_level_stats(a: np.ndarray, b: np.ndarray | None, resamples: int, seed: int) -> np.ndarray:
    """(resamples,) bootstrap statistics: mean of a (minus mean of b) over resampled seeds x images.
    a (S_a, M), b (S_b, M) or None.  Each side's seeds are drawn with replacement on their own (an
    S = 1 side is fixed); the M images are drawn once per resample and shared by both sides (paired)."""
    rng = np.random.default_rng(seed)
    m = a.shape[1]
    out = np.empty(resamples)

    def seed_mean(c: np.ndarray, k: int) -> np.ndarray:  # (k, M): per image, the mean over k draws of S seeds
        s = len(c)
        if s == 1:
            return np.broadcast_to(c, (k, m))
        counts = np.zeros((k, s))
        np.add.at(counts, (np.arange(k)[:, None], rng.integers(0, s, size=(k, s))), 1.0)
        return counts @ c / s

    for start in range(0, resamples, 500):  # chunks bound the memory at 500 x M
        k = min(500, resamples - start)
        per_image = seed_mean(a, k) - (seed_mean(b, k) if b is not None else 0.0)
        images = rng.integers(0, m, size=(k, m))
        out[start : start + k] = np.take_along_axis(per_image, images, axis=1).mean(1)
    return out


def _percentile(estimate: float, draws: np.ndarray, level: float) -> tuple[float, float, float]:
    alpha = (1 - level) / 2
    return float(estimate), float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def bootstrap_two_level(correct: Sequence, level: float = 0.95, resamples: int = 4000, seed: int = 0
                        ) -> tuple[float, float, float]:
    """(accuracy, low, high): correct is (S, M) booleans (S seeds' models on the same M images); the
    accuracy is the mean over seeds and images; each resample draws S seeds and M images with
    replacement, independently (percentile interval).  With S = 1 it is the images-only bootstrap."""
    c = _seeds_by_images(correct, "correct")
    return _percentile(c.mean(), _two_level_stats(c, None, resamples, seed), level)


def bootstrap_two_level_difference(correct_a: Sequence, correct_b: Sequence, level: float = 0.95,
                                   resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(acc A - acc B, low, high): correct_a (S_a, M), correct_b (S_b, M) or (M,) (a deterministic
    kernel: nothing of it is resampled but its images).  Each side's seeds are resampled on their
    own; the images are resampled jointly for both sides (paired)."""
    a, b = _seeds_by_images(correct_a, "correct_a"), _seeds_by_images(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired predictions must cover the same test images: {a.shape[1]} vs {b.shape[1]} images")
    return _percentile(a.mean() - b.mean(), _two_level_stats(a, b, resamples, seed), level)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p values ((n,) -> (n,), same order; monotone in the raw
    order, capped at 1), by statsmodels' ``multipletests(method="holm")``."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p values must be a flat sequence, got shape {p.shape}")
    if p.size == 0:
        return p.copy()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p values must lie in [0, 1], got {p.tolist()}")
    gc.freeze()  # statsmodels' Holm branch calls gc.collect(): ~0.1 s a call with torch's heap, unless frozen
    try:
        return np.asarray(multipletests(p, method="holm")[1], dtype=float)
    finally:
        gc.unfreeze()


def holm_by_family(pvalues: Sequence[float], families: Sequence[Hashable]) -> np.ndarray:
    """Holm-adjusted p values, each family (equal labels) adjusted on its own: (n,), (n,) -> (n,)."""
    p = np.asarray(pvalues, dtype=float)
    if len(families) != len(p):
        raise ValueError(f"one family label per p value: {len(families)} labels for {len(p)} p values")
    out = np.empty(len(p))
    for family in dict.fromkeys(families):
        idx = np.array([i for i, f in enumerate(families) if f == family])
        out[idx] = holm(p[idx])
    return out
