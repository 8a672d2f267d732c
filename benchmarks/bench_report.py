"""Time the report's bootstrap tables at full size, and the vectorised bootstrap against a plain loop.

    python benchmarks/bench_report.py                      # 4 tasks x 10 rows x 3 ratios x 3 seeds, 250 images
    python benchmarks/bench_report.py --tasks 6 --seeds 5

Part 1 builds synthetic runs (``tests/fixtures_report.run_record``, random per-image correctness)
and times :func:`mapex.report.summary_table` and :func:`mapex.report.comparisons_table` with the
default number of resamples. Part 2 times :func:`mapex.uncertainty.resampled_means` against a
Python loop that indexes the resampled ``[seeds, images]`` matrix one resample at a time, with the
same draws (so both give the same numbers, which is checked), in the same process, interleaved,
and prints the ratio.
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_report import run_record, write_run  # noqa: E402
from mapex import report  # noqa: E402
from mapex.uncertainty import N_RESAMPLES, resample_counts, resampled_means  # noqa: E402

ROWS = ("map-ex", "map", "l1", "bn-scale", "apoz", "hrank", "taylor", "random", "l1-global", "map-ex-contrast")


def synthetic_runs(folder: Path, tasks: int, seeds: int, images: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for t in range(tasks):
        for name in ROWS:
            base = "map-ex" if name.startswith("map-ex") else name.removesuffix("-global")
            for ratio in (0.3, 0.5, 0.7):
                for s in range(seeds):
                    correct = rng.uniform(size=images) < rng.uniform(0.6, 0.8)
                    record = run_record(
                        f"t{t}",
                        name,
                        ratio,
                        s,
                        0.0,
                        base_criterion=base,
                        global_=name.endswith("global"),
                        val_top1=float(rng.uniform(0.6, 0.8)),
                        correct=correct,
                    )
                    paths.append(write_run(folder, record))
    return paths


def loop_means(block: np.ndarray, seed_counts: np.ndarray, image_counts: np.ndarray) -> np.ndarray:
    """The reference: materialise each resampled matrix and take its mean."""
    seeds_idx, images_idx = np.arange(block.shape[0]), np.arange(block.shape[1])
    return np.array(
        [
            block[np.ix_(np.repeat(seeds_idx, sc.astype(int)), np.repeat(images_idx, ic.astype(int)))].mean()
            for sc, ic in zip(seed_counts, image_counts)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        paths = synthetic_runs(Path(folder), args.tasks, args.seeds, args.images)
        start = time.perf_counter()
        runs = report.load_runs(paths)
        loaded = time.perf_counter()
        summary = report.summary_table(runs)
        summarised = time.perf_counter()
        comparisons = report.comparisons_table(runs)
        compared = time.perf_counter()
    print(
        f"{len(paths)} runs x {args.images} images, {N_RESAMPLES} resamples: load {loaded - start:.2f} s, "
        f"summary {summarised - loaded:.2f} s ({len(summary)} intervals), "
        f"comparisons {compared - summarised:.2f} s ({len(comparisons)} intervals)"
    )

    block = (np.random.default_rng(1).uniform(size=(args.seeds, args.images)) < 0.7).astype(float)
    resamples = 1000
    seed_counts, image_counts = resample_counts("bench", args.seeds, args.images, resamples)
    fast_times, loop_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fast = resampled_means(block, "bench", resamples)
        fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = loop_means(block, seed_counts, image_counts)
        loop_times.append(time.perf_counter() - start)
    assert np.allclose(fast, slow), "the vectorised and the loop bootstrap disagree"
    fast_s, loop_s = min(fast_times), min(loop_times)
    print(
        f"one interval, {resamples} resamples of [{args.seeds}, {args.images}]: vectorised {fast_s * 1e3:.2f} ms, "
        f"loop {loop_s * 1e3:.1f} ms (min of {args.repeats}): {loop_s / fast_s:.0f}x faster "
        f"(medians {stats.median(loop_times) / stats.median(fast_times):.0f}x)"
    )


if __name__ == "__main__":
    main()
