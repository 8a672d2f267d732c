"""The two-way (seeds × test images) bootstrap of mapex.uncertainty."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mapex.uncertainty import (
    Interval,
    bootstrap_interval,
    resample_counts,
    resampled_means,
    student_t_quantile,
    t_interval,
)


def correctness(rng: np.random.Generator, probabilities: np.ndarray, n_seeds: int) -> np.ndarray:
    return (rng.uniform(size=(n_seeds, probabilities.size)) < probabilities).astype(float)


def test_vectorised_means_equal_a_slow_loop_over_the_same_draws() -> None:
    block = correctness(np.random.default_rng(0), np.linspace(0.2, 0.9, 40), n_seeds=3)
    seed_counts, image_counts = resample_counts("t", 3, 40, 200)
    fast = resampled_means(block, "t", 200)
    for r in range(200):
        seeds = np.repeat(np.arange(3), seed_counts[r].astype(int))
        images = np.repeat(np.arange(40), image_counts[r].astype(int))
        assert fast[r] == pytest.approx(block[np.ix_(seeds, images)].mean(), abs=1e-12)


def test_every_resample_draws_as_many_seeds_and_images_as_there_are() -> None:
    seed_counts, image_counts = resample_counts("t", 3, 250, 500)
    assert seed_counts.shape == (500, 3) and image_counts.shape == (500, 250)
    assert (seed_counts.sum(axis=1) == 3).all() and (image_counts.sum(axis=1) == 250).all()
    # with replacement: some images are drawn twice, some never
    assert (image_counts == 0).any(axis=1).all() and (image_counts >= 2).any(axis=1).all()


def test_draws_are_fixed_per_task_and_independent_between_tasks() -> None:
    first, again = resample_counts("a", 3, 50, 100), resample_counts.__wrapped__("a", 3, 50, 100)
    other = resample_counts("b", 3, 50, 100)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_exact_bootstrap_distribution_of_a_two_by_two_matrix() -> None:
    """All 2 × 2 × 2 × 2 equally likely seed and image draws, enumerated by hand."""
    block = np.array([[1.0, 0.0], [1.0, 1.0]])
    exact = [
        block[np.ix_(s, i)].mean()
        for s in itertools.product(range(2), repeat=2)
        for i in itertools.product(range(2), repeat=2)
    ]
    means = resampled_means(block, "t", 20_000)
    assert means.mean() == pytest.approx(np.mean(exact), abs=0.01)
    assert means.var() == pytest.approx(np.var(exact), rel=0.05)
    for value in set(exact):
        assert np.mean(means == value) == pytest.approx(np.mean(np.isclose(exact, value)), abs=0.015)


def test_one_seed_reduces_to_the_binomial_standard_error() -> None:
    """One seed, n images at accuracy p: the bootstrap s.e. of the mean is sqrt(p (1 − p) / n)."""
    block = np.zeros((1, 250))
    block[0, :175] = 1.0  # p = 0.7
    interval = bootstrap_interval({"t": block})
    se = np.sqrt(0.7 * 0.3 / 250)
    assert interval.mean == pytest.approx(0.7)
    assert interval.low == pytest.approx(0.7 - 1.96 * se, abs=0.006)
    assert interval.high == pytest.approx(0.7 + 1.96 * se, abs=0.006)


def test_constant_matrices_give_a_zero_width_interval() -> None:
    assert bootstrap_interval({"t": np.full((3, 10), 0.5)}) == Interval(0.5, 0.5, 0.5)


def test_tasks_are_pooled_with_equal_weight() -> None:
    small, large = np.ones((2, 10)), np.zeros((2, 1000))
    interval = bootstrap_interval({"a": small, "b": large})
    assert interval.mean == pytest.approx(0.5)
    assert interval == Interval(0.5, 0.5, 0.5)


def test_pooling_independent_tasks_narrows_the_interval() -> None:
    rng = np.random.default_rng(1)
    blocks = {f"t{k}": correctness(rng, np.full(250, 0.7), 3) for k in range(4)}
    one = bootstrap_interval({"t0": blocks["t0"]})
    pooled = bootstrap_interval(blocks)
    # four independent tasks: about half the width of one
    assert (pooled.high - pooled.low) == pytest.approx((one.high - one.low) / 2, rel=0.25)


def test_same_seed_same_interval() -> None:
    block = correctness(np.random.default_rng(2), np.full(100, 0.6), 3)
    assert bootstrap_interval({"t": block}) == bootstrap_interval({"t": block.copy()})
    assert bootstrap_interval({"t": block}, seed=1) != bootstrap_interval({"t": block})


def test_excludes_zero() -> None:
    assert Interval(0.1, 0.02, 0.2).excludes_zero and Interval(-0.1, -0.2, -0.01).excludes_zero
    assert not Interval(0.1, -0.02, 0.2).excludes_zero


def test_malformed_block_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        resampled_means(np.ones(5), "t")
    with pytest.raises(ValueError, match="at least one task"):
        bootstrap_interval({})


def simulated_paired_experiment(
    rng: np.random.Generator, n_seeds: int, n_images: int, seed_sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows A and B whose true accuracy difference over the image population is exactly 0.05.

    Each image has a base accuracy p ~ U(0.2, 0.7) and a gain d in {−0.10, 0, +0.25} (equally
    likely, mean 0.05) for A; both rows share the image's per-seed noise (paired, as runs with
    the same data are), and each run gets its own seed-level shift with std ``seed_sd``.
    """
    base = rng.uniform(0.2, 0.7, n_images)
    gain = rng.choice([-0.10, 0.0, 0.25], n_images)
    noise = rng.uniform(size=(n_seeds, n_images))
    shift_a, shift_b = (rng.normal(0.0, seed_sd, (n_seeds, 1)) for _ in range(2))
    return (noise < base + gain + shift_a).astype(float), (noise < base + shift_b).astype(float)


@pytest.mark.parametrize("n_seeds, seed_sd", [(5, 0.01), (3, 0.02)])
def test_paired_intervals_cover_the_true_difference_about_95_percent_of_the_time(n_seeds: int, seed_sd: float) -> None:
    rng = np.random.default_rng(3)
    experiments = 300
    covered = 0
    for _ in range(experiments):
        a, b = simulated_paired_experiment(rng, n_seeds, 250, seed_sd)
        interval = bootstrap_interval({"sim": a - b}, n_resamples=500)
        covered += interval.low <= 0.05 <= interval.high
    # 300 experiments: a coverage of 0.95 has a standard error of 0.013
    assert 0.92 <= covered / experiments <= 0.995


@pytest.mark.parametrize(
    ("level", "df", "expected"),
    [(0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 3, 3.182), (0.95, 6, 2.447), (0.95, 29, 2.045), (0.99, 3, 5.841)],
)
def test_student_t_quantile_matches_the_tables(level, df, expected):
    assert student_t_quantile(level, df) == pytest.approx(expected, abs=5e-4)


def test_student_t_quantile_tends_to_the_normal_one():
    assert student_t_quantile(0.95, 2000) == pytest.approx(1.961, abs=1e-3)


def test_t_interval_of_three_values_by_hand():
    """Mean 2, standard deviation 1: half-width 4.303 / √3."""
    interval = t_interval([1.0, 2.0, 3.0])
    assert (interval.mean, interval.low, interval.high) == pytest.approx((2.0, 2 - 2.4843, 2 + 2.4843), abs=1e-3)


def test_t_interval_of_one_value_has_no_bounds():
    interval = t_interval([0.7])
    assert interval.mean == 0.7 and np.isnan(interval.low) and np.isnan(interval.high)
