"""Bootstrap intervals over test images and seeds, for accuracies and paired differences.

One experiment cell (a task, a row, a pruning ratio) is a 0/1 matrix ``[seeds, images]``: whether
the run of that seed got that test image right. Its accuracy is the matrix mean. The uncertainty
has two sources, the finite test set and the seed-to-seed spread of fine-tuning, so each bootstrap
resample draws the seeds with replacement *and* the test images with replacement (a two-way, or
"pigeonhole", bootstrap) and takes the mean of the resampled matrix. The 95 % interval is the
percentile interval of :data:`N_RESAMPLES` such means, drawn from a generator with a fixed seed.

Paired differences (row A − row B at the same task and ratio) resample A and B with the *same*
draws, pairing the same seed and the same image. The mean is linear, so this equals resampling
the difference matrix ``A − B`` with one set of draws, which is how it is computed. The draws of a
task depend only on the task's name, the matrix shape and the seed, never on the row: every row of
a task sees the same draws, and any comparison of two rows is paired.

Several tasks are pooled with equal weight: each task is resampled on its own (independent draws),
the resampled task means are averaged, and the interval is taken over those averages.

Measured coverage of the nominal 95 % interval of a paired difference (300 simulated experiments
of 250 images, 500 resamples each; ``simulated_paired_experiment`` in ``tests/test_uncertainty.py``):
0.98-0.99 with 5 seeds and no or 1-point seed-level shifts, since the two-way bootstrap counts the
image × seed noise twice and is conservative; 0.93 with 3 seeds and 2-point shifts; but 0.82 with
3 seeds and 5-point shifts (0.92 with 5 seeds): a handful of seeds resampled with replacement
understates a large seed variance (by a factor (S − 1) / S, and the percentile interval of S values
is coarse). More seeds, not more resamples, is the remedy.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_RESAMPLES = 4000
"""Bootstrap resamples per interval: the 2.5 % and 97.5 % quantiles rest on 100 resamples each."""
RNG_SEED = 0
"""Seed of every bootstrap draw: the same inputs give the same intervals."""
LEVEL = 0.95
"""Coverage of the percentile intervals."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def bootstrap_interval(
    blocks: Mapping[str, np.ndarray], n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED, level: float = LEVEL
) -> Interval:
    """Equal-weight mean over tasks of each task's ``[seeds, images]`` matrix mean, with its interval.

    ``blocks`` maps a task name to its matrix (0/1 correctness, or a paired difference of two
    such matrices). Tasks are resampled independently, each with the draws of
    :func:`resample_counts`.
    """
    if not blocks:
        raise ValueError("bootstrap_interval needs at least one task")
    per_task = [
        resampled_means(np.asarray(block, dtype=float), task, n_resamples, seed) for task, block in blocks.items()
    ]
    pooled = np.mean(per_task, axis=0)
    low, high = np.quantile(pooled, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    point = float(np.mean([np.mean(block) for block in blocks.values()]))
    return Interval(point, float(low), float(high))


def resampled_means(block: np.ndarray, task: str, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED) -> np.ndarray:
    """``[n_resamples]`` means of ``block`` [seeds, images] under the task's seed and image draws.

    With counts ``c`` (seeds) and ``d`` (images) of one resample, the resampled matrix's mean is
    ``c · block · d / (seeds · images)``; all resamples at once are two matrix products.
    """
    if block.ndim != 2 or 0 in block.shape:
        raise ValueError(f"expected a non-empty [seeds, images] matrix, found shape {block.shape}")
    n_seeds, n_images = block.shape
    seed_counts, image_counts = resample_counts(task, n_seeds, n_images, n_resamples, seed)
    per_seed = block @ image_counts.T  # [seeds, resamples]
    return np.einsum("rs,sr->r", seed_counts, per_seed) / (n_seeds * n_images)


@lru_cache(maxsize=32)
def resample_counts(
    task: str, n_seeds: int, n_images: int, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed and each image is drawn in each resample: ``[R, seeds]`` and ``[R, images]``.

    Every resample draws ``n_seeds`` seeds and ``n_images`` images with replacement. The generator
    is seeded from ``seed``, the task's name and the shape only, so rows of one task share their
    draws (paired) while different tasks get independent ones. The arrays are cached: treat them
    as read-only.
    """
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), n_seeds, n_images])
    seed_counts = _counts(rng, n_seeds, n_resamples)
    image_counts = _counts(rng, n_images, n_resamples)
    seed_counts.flags.writeable = image_counts.flags.writeable = False
    return seed_counts, image_counts


def _counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """``[n_resamples, n]`` float counts of ``n`` draws with replacement from ``range(n)`` per resample."""
    draws = rng.integers(0, n, size=(n_resamples, n)) + (np.arange(n_resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(float)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student's t interval of independent ``values`` (e.g. one per independently trained
    baseline); with fewer than two values the bounds are NaN."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    half = student_t_quantile(level, len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def student_t_quantile(level: float, df: int) -> float:
    """The ``t`` with P(|T| < t) = ``level`` for Student's t with ``df`` degrees of freedom (the
    two-sided interval's multiplier: 12.706 for ``df`` 1 at 95 %), by bisection (SciPy is not a dependency)."""
    low, high = 0.0, 1.0
    while _t_central_probability(high, df) < level:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central_probability(middle, df) < level else (low, middle)
    return (low + high) / 2


def _t_central_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz and Stegun, 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    series, term = 1.0, 1.0
    if df % 2 == 0:  # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … up to cos^(df-2) θ)
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        return math.sin(theta) * series
    if df == 1:
        return 2 * theta / math.pi
    for k in range(1, (df - 1) // 2):  # 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + … up to cos^(df-3) θ))
        term *= cos2 * (2 * k) / (2 * k + 1)
        series += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
