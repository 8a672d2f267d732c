"""The sanity check over several baselines: which rows rank filters whatever the training run.

    python docs/measurements/2026-11-26-sanity-baselines/compare.py docs/measurements/2026-11-26-sanity-baselines/*/

Each argument is one baseline's folder: ``sanity/``, the sanity study's per-task CSVs (``mapex
sanity``'s output), and the baseline's ``metrics.json``. Per baseline and row, pooled over the
tasks and averaged over the study's ratios: the **margin** (top-scored filters kept minus the mean
of the random prunings at the same shapes, as in the README) and the **bottom gap** (that random
mean minus the bottom-scored filters kept: how much worse than random it is to prune the filters
the row scores highest), and the ratios at which the row ranks (top above every random draw, bottom
below every one). Over the baselines: the mean of each with its 95 % t-interval (the baselines are
the sample: independent trainings), and how many baselines have it positive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from mapex.report import POOLED, sanity_table

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365}
"""Student's t 97.5 % quantiles by degrees of freedom (no SciPy in the project's environment)."""


def per_row(folder: Path) -> pd.DataFrame:
    table = sanity_table(sorted((folder / "sanity").glob("*.csv")))
    pooled = table[table["task"] == POOLED].assign(
        margin=lambda t: t["top_pct"] - t["random_mean_pct"],
        bottom_gap=lambda t: t["random_mean_pct"] - t["bottom_pct"],
    )
    return pooled.groupby("criterion").agg(
        margin=("margin", "mean"),
        bottom_gap=("bottom_gap", "mean"),
        ranks_at=("ratio", lambda r: "/".join(f"{x:g}" for x in r[pooled.loc[r.index, "ranks"]]) or "none"),
    )


def over_baselines(values: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95 % t-interval and count of positive values of each row over the columns (baselines)."""
    n = values.shape[1]
    mean, half = values.mean(axis=1), T_975[n - 1] * values.std(axis=1) / n**0.5
    positive = (values > 0).sum(axis=1).astype(str) + f"/{n}"
    return pd.DataFrame({"mean": mean, "low": mean - half, "high": mean + half, "positive": positive})


def main(folders: list[Path]) -> None:
    tables = {}
    for folder in folders:
        top1 = json.loads((folder / "metrics.json").read_text())["top1"]
        tables[f"{folder.name} ({100 * top1:.1f} %)"] = per_row(folder)
    columns = {key: pd.DataFrame({name: t[key] for name, t in tables.items()}) for key in next(iter(tables.values()))}
    order = columns["margin"].mean(axis=1).sort_values(ascending=False).index
    pd.set_option("display.width", 200)
    for key, title in (("margin", "margin (points)"), ("bottom_gap", "bottom gap (points)")):
        print(f"{title} per baseline (test top-1 of the baseline):")
        print(columns[key].loc[order].round(1).to_string())
        print(f"\nover the {len(folders)} baselines: mean {title}, 95 % t-interval, baselines where it is positive")
        print(over_baselines(columns[key]).loc[order].round(1).to_string(), end="\n\n")
    print("ratios at which the row ranks (top > every random draw, bottom < every one):")
    print(columns["ranks_at"].loc[order].to_string())


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
