"""Where every pipeline output lives, which runs the params ask for, and what each row of the study is.

A *row* of the study is a name in ``prune.criteria`` (or ``sanity.criteria``,
``sensitivity.criteria``): either a registered criterion (``l1``, ``map-ex``, ...) with the options
``criterion_options`` gives it, or a named entry of ``variants`` (a registered criterion, some of
its options, and optionally global ranking). The row named ``map-ex`` is always the default
Map-EX variant: the one ``criterion_options.map-ex`` configures.

The Snakemake rules and dvc.yaml spell the same paths; `tests/test_pipeline.py` checks that the
two orchestrators expand to the same commands and outputs, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNPRUNED = "none"
FOCUS = "map-ex"
MAP_EX_FAMILY = ("map-ex", "map")
"""Base criteria that are Map-EX or its ablation: never a candidate for the best baseline."""
VARIANT_KEYS = ("criterion", "global", "scratch")


@dataclass(frozen=True)
class Row:
    """One row of the study: a registered criterion, its options, and the ranking scope."""

    name: str
    criterion: str
    options: dict[str, Any] = field(default_factory=dict)
    global_ranking: bool = False
    scratch: bool = False  # the pruned architecture re-initialised, then trained with the fine-tuning budget


def ratio_tag(ratio: float) -> str:
    """The ratio as it appears in paths and in DVC's rendering of ``${item.ratio}`` (0.3 -> '0.3')."""
    return format(float(ratio), "g") if ratio else "0"


def task_names(params: dict[str, Any]) -> list[str]:
    return [task["name"] for task in params["data"]["tasks"]]


def task_classes(params: dict[str, Any], task: str) -> list[str]:
    """The class ids of the task called ``task``."""
    from mapex.io import UserError

    for entry in params["data"]["tasks"]:
        if entry["name"] == task:
            return list(entry["classes"])
    raise UserError(f"unknown task '{task}'; data.tasks has {', '.join(task_names(params))}")


def row(params: dict[str, Any], name: str) -> Row:
    """The :class:`Row` called ``name`` (``none`` is the unpruned reference)."""
    from mapex.io import UserError

    if name == UNPRUNED:
        return Row(UNPRUNED, UNPRUNED)
    variants = params.get("variants") or {}
    if name in variants:
        spec = variants[name]
        criterion = spec["criterion"]
        own = {key: value for key, value in spec.items() if key not in VARIANT_KEYS}
        global_ranking = spec.get("global", params["prune"]["global"])
        scratch = spec.get("scratch", False)
    else:
        criterion, own, global_ranking, scratch = name, {}, params["prune"]["global"], False
    from mapex.criteria import CRITERIA

    if criterion not in CRITERIA:
        raise UserError(
            f"criterion '{name}' is neither a registered criterion ({', '.join(sorted(CRITERIA))}) "
            "nor a key of variants"
        )
    options = {**(params.get("criterion_options") or {}).get(criterion, {}), **own}
    return Row(name, criterion, options, bool(global_ranking), bool(scratch))


def check_rows(params: dict[str, Any]) -> None:
    """Every row named anywhere resolves, and every variant's options are its criterion's (one-line errors)."""
    from mapex.criteria import criterion_options, get_criterion
    from mapex.io import UserError

    for name in params.get("variants") or {}:
        if name == UNPRUNED or _is_registered(name):
            raise UserError(f"variants.{name}: a variant may not take the name of a registered criterion")
    names = [
        *params["prune"]["criteria"],
        *params["sanity"]["criteria"],
        *params["sensitivity"]["criteria"],
        params["samples_study"]["criterion"],
        *(params.get("variants") or {}),
    ]
    for name in names:
        spec = row(params, name)
        allowed = criterion_options(spec.criterion)
        for option, value in spec.options.items():
            if option not in allowed:
                raise UserError(
                    f"{name}: criterion '{spec.criterion}' has no option '{option}' "
                    f"(it takes {', '.join(allowed) or 'none'})"
                )
            if value not in allowed[option]:
                raise UserError(f"{name}: {option} '{value}' is not one of {', '.join(allowed[option])}")
        try:
            get_criterion(spec.criterion, **spec.options)  # combinations of options the criterion refuses
        except UserError as err:
            raise UserError(f"{name}: {err}") from None


def _is_registered(name: str) -> bool:
    from mapex.criteria import CRITERIA

    return name in CRITERIA


def run_ids(params: dict[str, Any]) -> list[str]:
    """``task/criterion/r<ratio>/s<seed>``: per task, the unpruned runs, then every row x ratio x seed."""
    seeds = params["seeds"]
    runs = []
    for task in task_names(params):
        runs += [f"{task}/{UNPRUNED}/r0/s{seed}" for seed in seeds]
        for name in params["prune"]["criteria"]:
            for ratio in params["prune"]["ratios"]:
                runs += [f"{task}/{name}/r{ratio_tag(ratio)}/s{seed}" for seed in seeds]
    return runs


def scored_rows(params: dict[str, Any]) -> list[str]:
    """Rows whose scores the studies need, in first-mention order."""
    names = [*params["prune"]["criteria"], *params["sanity"]["criteria"], *params["sensitivity"]["criteria"]]
    return list(dict.fromkeys(names))
