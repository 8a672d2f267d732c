"""The sanity check over several baselines: which rows rank filters whatever the training run.

    python docs/measurements/2026-11-26-sanity-baselines/compare.py docs/measurements/2026-11-26-sanity-baselines/*/

Each argument is one baseline's folder: ``sanity/``, the sanity study's per-task CSVs (``mapex
sanity``'s output), and the baseline's ``metrics.json``. Printed: the report's
``sanity_baselines`` table (``mapex.report.sanity_over_baselines``, which the pipeline writes to
``results/tables/sanity_baselines.md`` when ``sanity.extra_baseline_seeds`` names further
baselines), each baseline labelled with its folder and test top-1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mapex.report import sanity_over_baselines, sanity_over_baselines_markdown, sanity_table


def main(folders: list[Path]) -> None:
    tables = {}
    for folder in folders:
        top1 = json.loads((folder / "metrics.json").read_text())["top1"]
        tables[f"{folder.name} ({100 * top1:.1f} %)"] = sanity_table(sorted((folder / "sanity").glob("*.csv")))
    print(sanity_over_baselines_markdown(sanity_over_baselines(tables)), end="")


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
