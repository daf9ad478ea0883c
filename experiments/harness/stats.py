"""Intervals and paired tests for accuracies on one test set.

- ``bootstrap_accuracy``: the accuracy (averaged over seeds when several models are given) and a
  percentile bootstrap interval over test images: the images are resampled, each seed's model
  keeps its own predictions, so the interval is the test set's sampling noise of the seed mean.
- ``mcnemar``: the exact (binomial) two-sided McNemar test of two classifiers on the same test
  images: only the discordant images count (b: A right and B wrong, c: the reverse),
  p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]).
Correctness vectors travel in result rows as strings of '0' / '1' (``encode`` / ``decode``).
"""
from __future__ import annotations

from collections.abc import Sequence

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
