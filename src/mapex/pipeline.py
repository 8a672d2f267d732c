"""Where every pipeline output lives, and which runs the params ask for.

The Snakemake rules and dvc.yaml spell the same paths; `tests/test_pipeline.py` checks that the
two orchestrators expand to the same commands and outputs, so they cannot drift apart.
"""
from __future__ import annotations

from typing import Any

UNPRUNED = "none"


def ratio_tag(ratio: float) -> str:
    """The ratio as it appears in paths and in DVC's rendering of ``${item.ratio}`` (0.3 -> '0.3')."""
    return format(float(ratio), "g") if ratio else "0"


def run_ids(params: dict[str, Any]) -> list[str]:
    """``criterion/r<ratio>/s<seed>`` for the unpruned runs, then every criterion x ratio x seed."""
    seeds = params["seeds"]
    runs = [f"{UNPRUNED}/r0/s{seed}" for seed in seeds]
    for criterion in params["prune"]["criteria"]:
        for ratio in params["prune"]["ratios"]:
            runs += [f"{criterion}/r{ratio_tag(ratio)}/s{seed}" for seed in seeds]
    return runs
