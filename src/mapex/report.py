"""Tables and figures from result files only (run JSONs, study CSVs, response-map npz).

Nothing here imports a model: the report can be rebuilt on a laptop from ``results/`` alone.
Rows (criteria and their variants) are never listed by hand; whatever names appear in the files
are reported, in the order of :func:`criterion_order` ("none" first, then the focus row, then the
rest alphabetically). Every output is written atomically through :mod:`mapex.io`; figures go out
as ``<stem>.png`` and ``<stem>.pdf`` together.

Every accuracy and every comparison carries a 95 % interval from :mod:`mapex.uncertainty`: a
bootstrap over test images and seeds, paired (same seed, same image) for differences, and pooled
over tasks with equal weight. :func:`build_report` is the one entry point: it writes every table
and figure whose inputs it is given.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mapex.io import UserError, atomic_path, read_json, write_json, write_text  # noqa: E402
from mapex.pipeline import FOCUS, MAP_EX_FAMILY, UNPRUNED  # noqa: E402
from mapex.uncertainty import LEVEL, N_RESAMPLES, RNG_SEED, bootstrap_interval, t_interval  # noqa: E402

RANDOM = "random"
"""Row every other row is compared with at the same task and ratio."""
POOLED = "pooled"
"""Task name of the equal-weight average over tasks."""

_CI = f"{LEVEL:.0%} CI"
_BOOTSTRAP_NOTE = (
    f"{_CI}: percentile bootstrap, {N_RESAMPLES} resamples (fixed RNG seed {RNG_SEED}) drawing "
    "seeds and test images with replacement; pooled = each task resampled on its own, "
    "tasks averaged with equal weight."
)

_NUMBER = (int, float)
_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "criterion": str,
    "base_criterion": str,
    "global": bool,
    "ratio": _NUMBER,
    "seed": int,
    "top1": _NUMBER,
    "top5": _NUMBER,
    "n": int,
    "val_top1": _NUMBER,
    "top1_before_finetune": _NUMBER,
    "params": _NUMBER,
    "macs": _NUMBER,
    "params_removed": _NUMBER,
    "macs_removed": _NUMBER,
    "filters_before": dict,
    "filters_after": dict,
    "size_bytes": _NUMBER,
    "env": dict,
    "predictions": dict,
}
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "arch": str,
    "best_epoch": int,
}


@dataclass(frozen=True)
class Metric:
    """A summary column: ``key`` in the CSV, ``source`` run field × ``scale``, a header with units."""

    key: str
    source: str
    scale: float
    header: str
    digits: int


_SUMMARY_METRICS: tuple[Metric, ...] = (
    Metric("val_top1_pct", "val_top1", 100.0, "Val top-1 (%)", 1),
    Metric("top1_before_finetune_pct", "top1_before_finetune", 100.0, "Top-1 before fine-tune (%)", 1),
    Metric("params_m", "params", 1e-6, "Params (M)", 2),
    Metric("macs_m", "macs", 1e-6, "MACs (M)", 1),
    Metric("macs_removed_pct", "macs_removed", 100.0, "MACs removed (%)", 1),
)
"""Means (equal weight over tasks) beside the test top-1 and its interval."""

_OURS_COLOUR = "#d62728"
_OTHER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_MARKERS = ("s", "^", "v", "D", "P", "X", "<", ">", "h")


# ----------------------------------------------------------------------------- loading runs


def load_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per run file; a missing or invalid file, or a missing or mistyped field, is a UserError.

    The per-image predictions become a boolean ``correct`` array. The files must describe one
    architecture, hold each (task, row, ratio, seed) once, give each row one base criterion and
    one ``global`` flag, and list the same test labels in the same order for every run of a task:
    the paired comparisons rest on it.
    """
    rows = [_read_run(Path(path)) for path in paths]
    if not rows:
        raise UserError("no run files given to the report")
    runs = pd.DataFrame(rows)
    _check_unique_runs(runs)
    _check_row_definitions(runs)
    _check_same_test_images(runs)
    archs = sorted(runs["arch"].dropna().unique()) if "arch" in runs else []
    if len(archs) > 1:
        raise UserError(f"run files mix architectures {archs}; report one architecture at a time")
    return runs.drop(columns="labels")


def _read_run(path: Path) -> dict:
    record = read_json(path)
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(record).__name__}")
    for field, kind in _REQUIRED_FIELDS.items():
        if field not in record:
            raise UserError(f"{path}: missing field '{field}'")
        _check_type(path, field, record[field], kind)
    for field, kind in _OPTIONAL_FIELDS.items():
        if record.get(field) is not None:
            _check_type(path, field, record[field], kind)
    for field in ("filters_before", "filters_after"):
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in record[field].values()):
            raise UserError(f"{path}: field '{field}' must map layer names to integer filter counts")
    labels, correct = _read_predictions(path, record)
    keep = {**_REQUIRED_FIELDS, **_OPTIONAL_FIELDS}
    fields = {k: v for k, v in record.items() if k in keep and k != "predictions"}
    return {**fields, "ratio": float(record["ratio"]), "labels": labels, "correct": correct, "path": str(path)}


def _check_type(path: Path, field: str, value: object, kind: type | tuple[type, ...]) -> None:
    wants_bool = kind is bool
    if isinstance(value, bool) != wants_bool or not isinstance(value, kind):
        raise UserError(f"{path}: field '{field}' has the wrong type ({type(value).__name__}: {value!r})")


def _read_predictions(path: Path, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, correct)`` from ``predictions``; they must match ``n`` and ``top1``."""
    predictions = record["predictions"]
    arrays = []
    for key in ("label", "pred"):
        values = predictions.get(key)
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UserError(f"{path}: field 'predictions.{key}' must be a list of integers")
        arrays.append(np.asarray(values, dtype=np.int64))
    labels, preds = arrays
    if not len(labels) == len(preds) == record["n"]:
        raise UserError(
            f"{path}: 'predictions' has {len(labels)} labels and {len(preds)} predictions "
            f"for n = {record['n']} test images"
        )
    correct = labels == preds
    if record["n"] and abs(correct.mean() - record["top1"]) > 0.5 / record["n"]:
        raise UserError(
            f"{path}: field 'top1' ({record['top1']}) disagrees with its predictions ({correct.mean():.4f} right)"
        )
    return labels, correct


def _check_unique_runs(runs: pd.DataFrame) -> None:
    duplicated = runs[runs.duplicated(["task", "criterion", "ratio", "seed"], keep=False)]
    if not duplicated.empty:
        raise UserError(f"the same task, row, ratio and seed appear in several files: {sorted(duplicated['path'])}")


def _check_row_definitions(runs: pd.DataFrame) -> None:
    for name, part in runs.groupby("criterion"):
        definitions = part[["base_criterion", "global"]].drop_duplicates()
        if len(definitions) > 1:
            raise UserError(
                f"row '{name}' has several definitions (base_criterion, global) "
                f"{sorted(map(tuple, definitions.values.tolist()))}: {sorted(part['path'])[:2]}"
            )


def _check_same_test_images(runs: pd.DataFrame) -> None:
    for task, part in runs.groupby("task"):
        first_labels, first_path = part["labels"].iloc[0], part["path"].iloc[0]
        for labels, path in zip(part["labels"], part["path"]):
            if not np.array_equal(labels, first_labels):
                raise UserError(
                    f"{path}: test labels of task '{task}' differ from those of {first_path}; "
                    "every run of a task must predict the same test images in the same order"
                )


def criterion_order(names: Iterable[str], focus: str = FOCUS) -> list[str]:
    """Unique names: "none" first, then ``focus``, then the rest alphabetically."""
    unique = set(names)
    return [n for n in (UNPRUNED, focus) if n in unique] + sorted(unique - {UNPRUNED, focus})


def task_order(tasks: Iterable[str]) -> list[str]:
    """Unique task names alphabetically, "pooled" last."""
    unique = set(tasks)
    return sorted(unique - {POOLED}) + ([POOLED] if POOLED in unique else [])


def _with_pooled(blocks: Mapping[str, np.ndarray]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Each task on its own, then all of them as "pooled"."""
    for task in sorted(blocks):
        yield task, {task: blocks[task]}
    yield POOLED, dict(blocks)


def _correct_matrix(runs: pd.DataFrame, seeds: Sequence[int]) -> np.ndarray:
    """``[seeds, images]`` 0/1 matrix of the runs of one task and row, in the order of ``seeds``."""
    by_seed = dict(zip(runs["seed"], runs["correct"]))
    return np.stack([by_seed[s] for s in seeds]).astype(float)


# ----------------------------------------------------------------------------- summary table


def summary_table(
    runs: pd.DataFrame, focus: str = FOCUS, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED
) -> pd.DataFrame:
    """Per task and pooled, per row and ratio: test top-1 with its interval and the size metrics.

    Columns: ``task, criterion, base_criterion, global, ratio, n_tasks, n_seeds,
    top1_pct_mean, top1_pct_low, top1_pct_high`` then ``<metric>_mean`` for each of
    ``_SUMMARY_METRICS`` and ``macs_m_std`` (over runs). Pooled means weight tasks equally.
    """
    rows = []
    for (criterion, ratio), cell in runs.groupby(["criterion", "ratio"], sort=False):
        blocks = {task: _correct_matrix(part, sorted(part["seed"])) for task, part in cell.groupby("task")}
        for scope, scoped in _with_pooled(blocks):
            part = cell[cell["task"].isin(scoped)]
            interval = bootstrap_interval(scoped, n_resamples, seed)
            rows.append(
                {
                    "task": scope,
                    "criterion": criterion,
                    "base_criterion": part["base_criterion"].iloc[0],
                    "global": bool(part["global"].iloc[0]),
                    "ratio": ratio,
                    "n_tasks": len(scoped),
                    "n_seeds": part["seed"].nunique(),
                    "top1_pct_mean": 100 * interval.mean,
                    "top1_pct_low": 100 * interval.low,
                    "top1_pct_high": 100 * interval.high,
                    **_task_weighted_means(part),
                    "macs_m_std": part["macs"].std() * 1e-6,
                }
            )
    return _sort_rows(pd.DataFrame(rows), focus)


def _task_weighted_means(runs: pd.DataFrame) -> dict[str, float]:
    """``<metric>_mean`` of each summary metric: mean over seeds per task, then over tasks."""
    per_task = runs.groupby("task")[[m.source for m in _SUMMARY_METRICS]].mean().mean()
    return {f"{m.key}_mean": float(per_task[m.source]) * m.scale for m in _SUMMARY_METRICS}


def _sort_rows(table: pd.DataFrame, focus: str = FOCUS) -> pd.DataFrame:
    """Tasks in :func:`task_order`; in each, the reference first, then by ratio and row order."""
    row_rank = {name: i for i, name in enumerate(criterion_order(table["criterion"], focus))}
    task_rank = {name: i for i, name in enumerate(task_order(table["task"]))}
    key = pd.DataFrame(
        {
            "task": table["task"].map(task_rank),
            "not_reference": table["criterion"] != UNPRUNED,
            "ratio": table["ratio"],
            "rank": table["criterion"].map(row_rank),
        }
    )
    return table.loc[key.sort_values(list(key.columns), kind="stable").index].reset_index(drop=True)


def summary_markdown(table: pd.DataFrame, environment: str = "") -> str:
    """The summary as Markdown: pooled first, then one section per task, then the environment."""
    sections = [f"Test top-1 is the mean over seeds with its {_BOOTSTRAP_NOTE} Other columns are means."]
    for task in _pooled_first(table["task"]):
        part = table[table["task"] == task]
        cells = pd.DataFrame(
            {
                "Row": part["criterion"],
                "Ratio": part["ratio"].map(lambda r: f"{r:g}"),
                "Seeds": part["n_seeds"].astype(int).astype(str),
                f"Top-1 (%) [{_CI}]": [
                    _interval_cell(m, lo, hi, 1)
                    for m, lo, hi in zip(part["top1_pct_mean"], part["top1_pct_low"], part["top1_pct_high"])
                ],
            }
        )
        for metric in _SUMMARY_METRICS:
            cells[metric.header] = part[f"{metric.key}_mean"].map(lambda v, d=metric.digits: _number(v, d))
        sections += [_scope_title(task, part["n_tasks"].max()), markdown_cells(cells)]
    if environment:
        sections.append(environment)
    return "\n\n".join(sections) + "\n"


def _pooled_first(tasks: Iterable[str]) -> list[str]:
    ordered = task_order(tasks)
    return ordered[-1:] + ordered[:-1] if POOLED in ordered else ordered


def _scope_title(task: str, n_tasks: int) -> str:
    return f"### pooled over {int(n_tasks)} task(s)" if task == POOLED else f"### task {task}"


def _interval_cell(mean: float, low: float, high: float, digits: int) -> str:
    """ "75.6 [72.1, 79.0]"; "–" where there is no value."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _number(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_cells(cells: pd.DataFrame) -> str:
    """Already formatted string cells as a Markdown table (tabulate when installed, else a plain pipe table)."""
    if importlib.util.find_spec("tabulate") is not None:
        return cells.to_markdown(index=False, disable_numparse=True)
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.astype(str).itertuples(index=False)]
    return "\n".join(lines)


def environment_line(runs: pd.DataFrame) -> str:
    """ "Environment: ..." with each distinct ``env`` of the runs and how many runs had it.

    Nested dicts (e.g. ``{"versions": {"torch": "2.5.0"}}``) are shown by their own keys.
    """
    described = runs["env"].map(lambda env: ", ".join(_key_values(env)))
    counts = described.value_counts(sort=False)
    parts = [f"{text} ({count} runs)" if len(counts) > 1 else text for text, count in counts.items()]
    return "Environment: " + "; ".join(parts)


def _key_values(mapping: Mapping) -> list[str]:
    pairs = []
    for key in sorted(mapping):
        value = mapping[key]
        pairs += _key_values(value) if isinstance(value, Mapping) else [f"{key}={value}"]
    return pairs


# ----------------------------------------------------------------------------- comparisons table


def comparisons_table(
    runs: pd.DataFrame, focus: str = FOCUS, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED
) -> pd.DataFrame:
    """Paired differences in test top-1, per task and pooled, per ratio, with their intervals.

    Two kinds of comparison: ``"<focus> − best baseline"``, the best baseline being the non-Map-EX
    row (base criterion not in :data:`MAP_EX_FAMILY`, not "none") with the highest mean
    ``val_top1`` at that task and ratio (ties: the first in :func:`criterion_order`); and
    ``"<row> − random"`` for every other row at the ratio. Pairs are the seeds both rows ran and
    the task's test images. Columns: ``task, ratio, comparison, row, against, n_tasks, n_seeds,
    diff_pct_mean, diff_pct_low, diff_pct_high, excludes_zero`` (differences in points).
    """
    pairs = _comparison_pairs(runs, focus)
    rows = []
    for (ratio, comparison, row), group in _group_pairs(pairs):
        blocks = {pair["task"]: pair["block"] for pair in group}
        against = {pair["task"]: pair["against"] for pair in group}
        seeds = {pair["task"]: pair["n_seeds"] for pair in group}
        for scope, scoped in _with_pooled(blocks):
            interval = bootstrap_interval(scoped, n_resamples, seed)
            rows.append(
                {
                    "task": scope,
                    "ratio": ratio,
                    "comparison": comparison,
                    "row": row,
                    "against": _against_text(against, scoped),
                    "n_tasks": len(scoped),
                    "n_seeds": min(seeds[t] for t in scoped),
                    "diff_pct_mean": 100 * interval.mean,
                    "diff_pct_low": 100 * interval.low,
                    "diff_pct_high": 100 * interval.high,
                    "excludes_zero": interval.excludes_zero,
                }
            )
    if not rows:
        return pd.DataFrame(
            columns=[
                "task",
                "ratio",
                "comparison",
                "row",
                "against",
                "n_tasks",
                "n_seeds",
                "diff_pct_mean",
                "diff_pct_low",
                "diff_pct_high",
                "excludes_zero",
            ]
        )
    table = pd.DataFrame(rows)
    table["criterion"] = table["row"]
    return _sort_rows(table, focus).drop(columns="criterion")


def _comparison_pairs(runs: pd.DataFrame, focus: str) -> list[dict]:
    """One dict per (task, ratio, comparison): the rows compared and the paired difference matrix."""
    pairs = []
    for (task, ratio), cell in runs[runs["criterion"] != UNPRUNED].groupby(["task", "ratio"]):
        names = set(cell["criterion"])
        best = best_baseline(cell, focus)
        if focus in names and best is not None:
            pairs.append(_pair(task, ratio, f"{focus} − best baseline", focus, best, cell))
        if RANDOM in names:
            pairs += [
                _pair(task, ratio, f"{row} − {RANDOM}", row, RANDOM, cell)
                for row in criterion_order(names - {RANDOM}, focus)
            ]
    return pairs


def best_baseline(cell: pd.DataFrame, focus: str = FOCUS) -> str | None:
    """Of one task and ratio's runs, the non-Map-EX row with the best mean validation top-1."""
    candidates = cell[
        ~cell["base_criterion"].isin({*MAP_EX_FAMILY, UNPRUNED})
        & (cell["criterion"] != focus)
        & (cell["criterion"] != UNPRUNED)
    ]
    if candidates.empty:
        return None
    val = candidates.groupby("criterion")["val_top1"].mean()
    order = criterion_order(val.index, focus)
    return max(order, key=lambda name: (val[name], -order.index(name)))


def _pair(task: str, ratio: float, comparison: str, row: str, against: str, cell: pd.DataFrame) -> dict:
    ours, theirs = cell[cell["criterion"] == row], cell[cell["criterion"] == against]
    seeds = sorted(set(ours["seed"]) & set(theirs["seed"]))
    if not seeds:
        raise UserError(
            f"task '{task}', ratio {ratio:g}: rows '{row}' and '{against}' share no seed "
            f"({sorted(ours['seed'])} vs {sorted(theirs['seed'])}); they cannot be paired"
        )
    block = _correct_matrix(ours, seeds) - _correct_matrix(theirs, seeds)
    return {
        "task": task,
        "ratio": ratio,
        "comparison": comparison,
        "row": row,
        "against": against,
        "n_seeds": len(seeds),
        "block": block,
    }


def _group_pairs(pairs: list[dict]) -> Iterator[tuple[tuple[float, str, str], list[dict]]]:
    keys = sorted({(p["ratio"], p["comparison"], p["row"]) for p in pairs})
    for key in keys:
        yield key, [p for p in pairs if (p["ratio"], p["comparison"], p["row"]) == key]


def _against_text(against: Mapping[str, str], tasks: Iterable[str]) -> str:
    """The row compared with: one name, or "l1 (t0); hrank (t1)" when tasks chose differently."""
    chosen = {task: against[task] for task in tasks}
    if len(set(chosen.values())) == 1:
        return next(iter(chosen.values()))
    return "; ".join(f"{name} ({task})" for task, name in sorted(chosen.items()))


def comparisons_markdown(table: pd.DataFrame) -> str:
    """The comparisons as Markdown, pooled first, then each task, then the README sentences."""
    sections = [
        f"Paired differences in test top-1 (points), mean over seeds and test images, with the {_BOOTSTRAP_NOTE} "
        "The best baseline is chosen per task and ratio on validation top-1, never on test."
    ]
    for task in _pooled_first(table["task"]):
        part = table[table["task"] == task]
        cells = pd.DataFrame(
            {
                "Ratio": part["ratio"].map(lambda r: f"{r:g}"),
                "Comparison": part["comparison"],
                "Against": part["against"],
                "Seeds": part["n_seeds"].astype(int).astype(str),
                f"Difference (points) [{_CI}]": [
                    _interval_cell(m, lo, hi, 1)
                    for m, lo, hi in zip(part["diff_pct_mean"], part["diff_pct_low"], part["diff_pct_high"])
                ],
                "Excludes 0": part["excludes_zero"].map({True: "yes", False: "no"}),
            }
        )
        sections += [_scope_title(task, part["n_tasks"].max()), markdown_cells(cells)]
    sections.append(comparison_sentences(table))
    return "\n\n".join(sections) + "\n"


def comparison_sentences(table: pd.DataFrame, task: str = POOLED) -> str:
    """README-ready Markdown: the comparisons of ``task`` whose interval excludes 0, then those whose does not."""
    part = table[table["task"] == task]
    scope = (
        (f"pooled over {int(part['n_tasks'].max())} task(s)" if task == POOLED else f"task {task}")
        if len(part)
        else task
    )
    lines = []
    for excludes, heading in (
        (True, f"Differences whose {_CI} excludes 0 ({scope})"),
        (False, f"Differences whose {_CI} includes 0, not shown to differ ({scope})"),
    ):
        chosen = part[part["excludes_zero"] == excludes]
        lines.append(f"**{heading}:**")
        lines += [_sentence(row) for _, row in chosen.iterrows()] or ["- none."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _sentence(row: pd.Series) -> str:
    against = f" ({row['against']})" if "best baseline" in row["comparison"] else ""
    return (
        f"- At ratio {row['ratio']:g}, {row['comparison']}{against}: {row['diff_pct_mean']:+.1f} points "
        f"[{row['diff_pct_low']:+.1f}, {row['diff_pct_high']:+.1f}], {int(row['n_seeds'])} seeds."
    )


# ----------------------------------------------------------------------------- sanity table


_SANITY_CASES = ("top", "bottom", "random")


def sanity_table(csv_paths: Sequence[Path]) -> pd.DataFrame:
    """Top / bottom / random validation top-1 per task (and pooled) × criterion × ratio, and ``ranks``.

    ``csv_paths`` (the study writes one per task) have columns ``task, criterion, ratio, case,
    draw, val_top1`` (``case`` in top, bottom, random; accuracies as fractions). ``ranks`` is true
    when the top case's mean is above the largest random draw and the bottom case's mean below the smallest one. Pooled:
    draw ``k`` is the mean over tasks of each task's draw ``k`` (likewise top and bottom), then
    the same rule. Columns: ``task, criterion, ratio, n_tasks, top_pct, bottom_pct,
    random_mean_pct, random_min_pct, random_max_pct, random_std_pct, n_random, ranks``.
    """
    frame = pd.concat([_read_sanity_csv(Path(path)) for path in csv_paths], ignore_index=True)
    pooled = (
        frame.groupby(["criterion", "ratio", "case", "draw"], as_index=False)
        .agg(val_top1=("val_top1", "mean"), n_tasks=("task", "nunique"))
        .assign(task=POOLED)
    )
    rows = [
        _sanity_row(key, part)
        for key, part in pd.concat([frame.assign(n_tasks=1), pooled]).groupby(["task", "criterion", "ratio"])
    ]
    return _sort_rows(pd.DataFrame(rows))


def _read_sanity_csv(path: Path) -> pd.DataFrame:
    frame = _read_csv(path, ("task", "criterion", "ratio", "case", "draw", "val_top1"))
    bad = sorted(set(frame["case"].astype(str)) - set(_SANITY_CASES))
    if bad:
        raise UserError(f"{path}: column 'case' has values {bad}; expected {list(_SANITY_CASES)}")
    frame = frame.assign(
        task=frame["task"].astype(str),
        criterion=frame["criterion"].astype(str),
        ratio=_numeric(path, frame, "ratio"),
        val_top1=_numeric(path, frame, "val_top1"),
    )
    for (task, criterion, ratio), part in frame.groupby(["task", "criterion", "ratio"]):
        missing = [case for case in _SANITY_CASES if case not in set(part["case"])]
        if missing:
            raise UserError(f"{path}: task '{task}', criterion '{criterion}', ratio {ratio:g} lacks case {missing}")
    return frame


def _numeric(path: Path, frame: pd.DataFrame, column: str, optional: bool = False) -> pd.Series:
    """``frame[column]`` as floats; a value that is not a number is an error, an empty cell too unless ``optional``."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & (frame[column].notna() if optional else True)
    if bad.any():
        raise UserError(f"{path}: column '{column}' has non-numeric value {frame.loc[bad, column].iloc[0]!r}")
    return values.astype(float)


def _sanity_row(key: tuple[str, str, float], part: pd.DataFrame) -> dict:
    task, criterion, ratio = key
    by_case = {case: 100 * part.loc[part["case"] == case, "val_top1"] for case in _SANITY_CASES}
    top, bottom, random = by_case["top"].mean(), by_case["bottom"].mean(), by_case["random"]
    return {
        "task": task,
        "criterion": criterion,
        "ratio": ratio,
        "n_tasks": int(part["n_tasks"].max()),
        "top_pct": top,
        "bottom_pct": bottom,
        "random_mean_pct": random.mean(),
        "random_min_pct": random.min(),
        "random_max_pct": random.max(),
        "random_std_pct": random.std() if len(random) > 1 else float("nan"),
        "n_random": len(random),
        "ranks": bool(top > random.max() and bottom < random.min()),
    }


def sanity_markdown(table: pd.DataFrame) -> str:
    sections = [
        "Validation top-1 (%) after keeping the top-scored, the bottom-scored or random filters. "
        "**ranks** = yes when top is above the largest random draw and bottom below the smallest "
        "(top > max(random) and bottom < min(random)); pooled draw k = mean over tasks of draw k."
    ]
    for task in _pooled_first(table["task"]):
        part = table[table["task"] == task]
        cells = pd.DataFrame(
            {
                "Criterion": part["criterion"],
                "Ratio": part["ratio"].map(lambda r: f"{r:g}"),
                "Top": part["top_pct"].map(lambda v: _number(v, 1)),
                "Random mean": part["random_mean_pct"].map(lambda v: _number(v, 1)),
                "Random min–max": [
                    f"{lo:.1f}–{hi:.1f}" for lo, hi in zip(part["random_min_pct"], part["random_max_pct"])
                ],
                "Random std": part["random_std_pct"].map(lambda v: _number(v, 2)),
                "Draws": part["n_random"].astype(int).astype(str),
                "Bottom": part["bottom_pct"].map(lambda v: _number(v, 1)),
                "ranks": part["ranks"].map({True: "yes", False: "no"}),
            }
        )
        sections += [_scope_title(task, part["n_tasks"].max()), markdown_cells(cells)]
    return "\n\n".join(sections) + "\n"


_BASELINE_MEASURES = {
    "margin": "top − random mean: how much better than random the filters it keeps are",
    "bottom_gap": "random mean − bottom: how much worse than random it is to prune its top-scored filters",
    "ranked_ratios": "ratios of the study at which it ranks (top > every random draw > bottom)",
}


def sanity_over_baselines(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each row's sanity check on several independently trained baselines, pooled over tasks.

    ``tables`` maps a baseline's label to its :func:`sanity_table`. Per baseline and row: the
    margin and the bottom gap (points, averaged over the study's ratios) and the number of ratios
    at which the row ranks. Over the baselines, which are the sample (independent trainings): the
    mean, its Student's t interval (none with one baseline) and on how many baselines the value is
    positive. Columns: ``criterion, measure``, one per baseline, ``n_baselines, mean, low, high,
    positive``.
    """
    per_baseline = {label: _sanity_measures(table) for label, table in tables.items()}
    rows = []
    for criterion in criterion_order(set().union(*(frame.index for frame in per_baseline.values()))):
        for measure in _BASELINE_MEASURES:
            values = {
                label: frame.at[criterion, measure] for label, frame in per_baseline.items() if criterion in frame.index
            }
            interval = t_interval(list(values.values()))
            rows.append(
                {
                    "criterion": criterion,
                    "measure": measure,
                    **values,
                    "n_baselines": len(values),
                    "mean": interval.mean,
                    "low": interval.low,
                    "high": interval.high,
                    "positive": sum(value > 0 for value in values.values()),
                }
            )
    return pd.DataFrame(rows)


def _sanity_measures(table: pd.DataFrame) -> pd.DataFrame:
    """Per row of one baseline's pooled sanity table: mean margin and bottom gap, and the ratios it ranks at."""
    pooled = table[table["task"] == POOLED]
    return (
        pooled.assign(
            margin=pooled["top_pct"] - pooled["random_mean_pct"],
            bottom_gap=pooled["random_mean_pct"] - pooled["bottom_pct"],
            ranked_ratios=pooled["ranks"].astype(int),
        )
        .groupby("criterion")
        .agg(margin=("margin", "mean"), bottom_gap=("bottom_gap", "mean"), ranked_ratios=("ranked_ratios", "sum"))
    )


def sanity_over_baselines_markdown(table: pd.DataFrame) -> str:
    labels = list(table.columns[table.columns.get_loc("measure") + 1 : table.columns.get_loc("n_baselines")])
    lines = [
        f"The sanity check (pooled over tasks, averaged over its ratios) on {len(labels)} independently trained "
        f"baseline(s): {', '.join(labels)}. Mean over the baselines with its {LEVEL:.0%} Student's t interval "
        "(the baselines are the sample; none with one baseline); **positive** = on how many baselines it is above 0."
    ]
    lines += [f"- **{measure}**: {meaning}." for measure, meaning in _BASELINE_MEASURES.items()]
    sections = ["\n".join(lines)]
    for measure in _BASELINE_MEASURES:
        part = table[table["measure"] == measure]
        digits = 0 if measure == "ranked_ratios" else 1
        cells = pd.DataFrame(
            {
                "Criterion": part["criterion"],
                **{label: [_number(v, digits) for v in part[label]] for label in labels},
                "Mean": part["mean"].map(lambda v: _number(v, 1)),
                f"{LEVEL:.0%} interval": [_bracket(lo, hi) for lo, hi in zip(part["low"], part["high"])],
                "Positive": [f"{p}/{n}" for p, n in zip(part["positive"], part["n_baselines"])],
            }
        )
        sections += [f"### {measure}", markdown_cells(cells)]
    return "\n\n".join(sections) + "\n"


def _bracket(low: float, high: float) -> str:
    return "—" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"


# ----------------------------------------------------------------------------- latency table


_LATENCY_COLUMN = re.compile(r"^latency_ms_(?P<backend>[a-z0-9]+)_b(?P<batch>\d+)$")


def latency_table(csv_path: Path, unpruned_macs: float | None = None) -> pd.DataFrame:
    """Speedup per ratio and pruned shape, with the MAC reduction beside it.

    ``csv_path`` has one row per (ratio, shape): ``ratio, shape, rows, macs, params`` and, per
    measured backend and batch B, ``latency_ms_<backend>_b<B>`` and ``latency_ms_<backend>_b<B>_unpruned``
    (any batches; e.g. ``cpu`` and ``ort``). Rows sharing a shape share one measurement, so a
    (ratio, shape) given twice is an error. ``speedup_<backend>_b<B>`` = unpruned / pruned
    latency; ``mac_reduction`` = ``unpruned_macs`` / ``macs`` (left empty without it). Only ``cpu``
    columns must be filled for every shape: the latency study times other backends (ONNX Runtime)
    on some shapes only, and leaves the others empty.
    """
    path = Path(csv_path)
    frame = _read_csv(path, ("ratio", "shape", "rows", "macs", "params"))
    measured = [c for c in frame.columns if _LATENCY_COLUMN.match(c)]
    if not measured:
        raise UserError(f"{path}: no latency_ms_<backend>_b<B> column")
    missing = [f"{c}_unpruned" for c in measured if f"{c}_unpruned" not in frame]
    if missing:
        raise UserError(f"{path}: missing columns {missing}")
    repeated = frame[frame.duplicated(["ratio", "shape"], keep=False)]
    if not repeated.empty:
        raise UserError(
            f"{path}: ratio {repeated['ratio'].iloc[0]:g}, shape '{repeated['shape'].iloc[0]}' appears "
            "more than once; rows with one shape share one latency"
        )
    table = pd.DataFrame(
        {
            "ratio": _numeric(path, frame, "ratio"),
            "shape": frame["shape"].astype(str),
            "rows": frame["rows"].astype(str).str.split(";").map(lambda names: ", ".join(n.strip() for n in names)),
            "macs_m": _numeric(path, frame, "macs") * 1e-6,
            "params_m": _numeric(path, frame, "params") * 1e-6,
        }
    )
    table["mac_reduction"] = (unpruned_macs * 1e-6 / table["macs_m"]) if unpruned_macs else np.nan
    for column in sorted(measured, key=_latency_sort_key):
        optional = not column.startswith("latency_ms_cpu_")
        pruned = _numeric(path, frame, column, optional)
        unpruned = _numeric(path, frame, f"{column}_unpruned", optional)
        table[column] = pruned
        table[f"{column}_unpruned"] = unpruned
        table[column.replace("latency_ms_", "speedup_")] = unpruned / pruned
    return table.sort_values(["ratio", "shape"], kind="stable").reset_index(drop=True)


def _latency_sort_key(column: str) -> tuple[str, int]:
    match = _LATENCY_COLUMN.match(column)
    return match["backend"], int(match["batch"])


def latency_markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame(
        {
            "Ratio": table["ratio"].map(lambda r: f"{r:g}"),
            "Shape": table["shape"],
            "Rows (same shape, one measurement)": table["rows"],
            "MACs (M)": table["macs_m"].map(lambda v: _number(v, 1)),
            "MAC reduction (×)": table["mac_reduction"].map(lambda v: _number(v, 2)),
        }
    )
    for column in [c for c in table.columns if _LATENCY_COLUMN.match(c)]:
        match = _LATENCY_COLUMN.match(column)
        label = f"{match['backend'].upper()} b{match['batch']}"
        cells[f"{label} (ms)"] = table[column].map(lambda v: _number(v, 2))
        cells[f"{label} speedup (×)"] = table[column.replace("latency_ms_", "speedup_")].map(lambda v: _number(v, 2))
    note = (
        "Latency of each pruned shape against the unpruned model, measured once per shape: rows whose "
        "pruned networks have the same layer widths share it. MAC reduction = unpruned MACs / MACs."
    )
    return f"{note}\n\n{markdown_cells(cells)}\n"


# ----------------------------------------------------------------------------- shared look


def _styles(names: Iterable[str], focus: str = FOCUS) -> dict[str, dict]:
    """Line style per series: the focus row thick and red, "none" black, the rest from a fixed palette."""
    styles: dict[str, dict] = {}
    others = 0
    for name in criterion_order(names, focus):
        if name == focus:
            styles[name] = dict(color=_OURS_COLOUR, marker="o", linewidth=2.8, markersize=7, zorder=5)
        elif name == UNPRUNED:
            styles[name] = dict(color="black", marker="*", linewidth=1.5, markersize=9, zorder=4)
        else:
            styles[name] = dict(
                color=_OTHER_COLOURS[others % len(_OTHER_COLOURS)],
                marker=_MARKERS[others % len(_MARKERS)],
                linewidth=1.4,
                markersize=5,
                zorder=3,
            )
            others += 1
    return styles


def _error(part: pd.DataFrame, column: str) -> np.ndarray | pd.Series:
    """Error bar of ``<column>_mean``: ``[mean − low, high − mean]`` from an interval, else the std."""
    if f"{column}_low" in part:
        mean = part[f"{column}_mean"].to_numpy()
        return np.vstack([mean - part[f"{column}_low"].to_numpy(), part[f"{column}_high"].to_numpy() - mean])
    return part[f"{column}_std"].fillna(0.0)


def _errorbar_series(
    ax: Axes,
    stats: pd.DataFrame,
    x: str,
    y: str,
    styles: dict[str, dict],
    group: str = "criterion",
    xerr: str | None = None,
    dodge: float = 0.0,
) -> None:
    """One line with error bars per ``group`` value, in ``styles`` order.

    ``stats`` holds ``<y>_mean`` and either ``<y>_low``/``<y>_high`` (an interval) or ``<y>_std``
    per row (and ``<xerr>`` if given); a missing std (one seed) draws no bar. ``dodge`` shifts
    the series apart along x so that equal values (e.g. the same width in every criterion) stay
    visible.
    """
    shown = [name for name in styles if stats.loc[stats[group] == name, f"{y}_mean"].notna().any()]
    for i, name in enumerate(shown):
        part = stats[stats[group] == name].sort_values(x)
        ax.errorbar(
            part[x] + (i - (len(shown) - 1) / 2) * dodge,
            part[f"{y}_mean"],
            yerr=_error(part, y),
            xerr=None if xerr is None else part[xerr].fillna(0.0),
            label=_label(name),
            capsize=3,
            elinewidth=1,
            **styles[name],
        )


def _label(name: str) -> str:
    return f"unpruned ({UNPRUNED})" if name == UNPRUNED else name


def _decorate(ax: Axes, xlabel: str, ylabel: str, title: str | None = None, legend: bool = True) -> None:
    """Axis labels (with units), a light grid, the title, and a legend outside the data on the right."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _save(fig: Figure, out_stem: Path) -> None:
    """Write ``<out_stem>.png`` and ``<out_stem>.pdf`` atomically, then close the figure."""
    out_stem = Path(out_stem)
    for fmt in ("png", "pdf"):
        with atomic_path(out_stem.with_name(f"{out_stem.name}.{fmt}")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _panel_title(task: str, n_tasks: int) -> str:
    return f"pooled over {int(n_tasks)} tasks" if task == POOLED else f"task {task}"


# ----------------------------------------------------------------------------- run figures


def plot_accuracy_vs_ratio(summary: pd.DataFrame, out_stem: Path, focus: str = FOCUS) -> None:
    """Test top-1 against the pruning ratio with 95 % CI bars, one panel per task and one pooled.

    ``summary`` is :func:`summary_table`'s output; the unpruned model is a dashed line with its
    interval as a band.
    """
    scopes = _pooled_first(summary["task"])
    styles = _styles(summary["criterion"], focus)
    fig, axes = plt.subplots(1, len(scopes), figsize=(4.2 * len(scopes) + 2.5, 4.5), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], scopes):
        part = summary[summary["task"] == task]
        reference = part[part["criterion"] == UNPRUNED]
        if not reference.empty:
            ref = reference.iloc[0]
            ax.axhspan(ref["top1_pct_low"], ref["top1_pct_high"], color="black", alpha=0.08, linewidth=0)
            ax.axhline(ref["top1_pct_mean"], color="black", linestyle="--", linewidth=1.2, label=_label(UNPRUNED))
        pruned = part[part["criterion"] != UNPRUNED]
        _errorbar_series(ax, pruned, "ratio", "top1_pct", {k: v for k, v in styles.items() if k != UNPRUNED})
        ax.set_xticks(sorted(pruned["ratio"].unique()))
        _decorate(
            ax,
            "Pruning ratio (fraction of filters removed)",
            "Test top-1 accuracy (%)" if ax is axes[0, 0] else "",
            _panel_title(task, part["n_tasks"].max()),
            legend=ax is axes[0, -1],
        )
    fig.suptitle(f"Accuracy after pruning and fine-tuning (mean over seeds, {_CI})")
    _save(fig, out_stem)


def plot_accuracy_vs_macs(summary: pd.DataFrame, out_stem: Path, focus: str = FOCUS) -> None:
    """Pooled test top-1 (95 % CI) against the remaining MACs (± std); the unpruned model as a star."""
    pooled = summary[summary["task"] == POOLED]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _errorbar_series(ax, pooled, "macs_m_mean", "top1_pct", _styles(pooled["criterion"], focus), xerr="macs_m_std")
    _decorate(
        ax,
        "Multiply-accumulates per image (M)",
        "Test top-1 accuracy (%)",
        f"Accuracy against compute ({_panel_title(POOLED, pooled['n_tasks'].max())}, {_CI})",
    )
    _save(fig, out_stem)


def plot_filters_per_layer(runs: pd.DataFrame, out_stem: Path, ratio: float | None = None, focus: str = FOCUS) -> None:
    """Filters kept per conv layer by each row at ``ratio`` (default: the middle pruned ratio).

    Mean ± std over tasks and seeds. Layers are in the order of the first run's
    ``filters_before``; the unpruned widths are drawn as grey bars behind the lines.
    """
    pruned = runs[runs["criterion"] != UNPRUNED]
    if pruned.empty:
        raise UserError("no pruned runs to draw filters per layer from")
    ratios = sorted(pruned["ratio"].unique())
    ratio = ratios[(len(ratios) - 1) // 2] if ratio is None else float(ratio)
    at_ratio = pruned[np.isclose(pruned["ratio"], ratio)]
    if at_ratio.empty:
        raise UserError(f"no pruned runs at ratio {ratio:g}; ratios present: {[f'{r:g}' for r in ratios]}")
    layers = list(at_ratio["filters_before"].iloc[0])
    stats = _filters_stats(at_ratio, layers)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.4 * len(layers) + 3), 4.8))
    ax.bar(
        range(len(layers)),
        [at_ratio["filters_before"].iloc[0][name] for name in layers],
        width=0.8,
        color="0.88",
        edgecolor="0.55",
        label="unpruned",
        zorder=1,
    )
    styles = _styles(at_ratio["criterion"], focus)
    _errorbar_series(ax, stats, "layer", "filters", styles, dodge=0.6 / len(styles))
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    title = f"Filters kept per layer at pruning ratio {ratio:g}"
    if len(styles) > 1 and (stats.groupby("layer")["filters_mean"].nunique() == 1).all():
        title += "\n(every row keeps the same count: the ratio applies layer by layer)"
    _decorate(ax, "Conv layer", "Filters kept (count)", title)
    _save(fig, out_stem)


def _filters_stats(runs: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Long table ``criterion, layer (index), filters_mean, filters_std`` over the runs' tasks and seeds."""
    long = pd.DataFrame(
        [
            {"criterion": crit, "layer": i, "filters": after.get(name, np.nan)}
            for crit, after in zip(runs["criterion"], runs["filters_after"])
            for i, name in enumerate(layers)
        ]
    )
    stats = long.groupby(["criterion", "layer"])["filters"].agg(["mean", "std"])
    return stats.add_prefix("filters_").reset_index()


def plot_paired_differences(comparisons: pd.DataFrame, out_stem: Path, focus: str = FOCUS) -> None:
    """Forest plot of :func:`comparisons_table`: one panel per task and pooled, a zero line, 95 % CIs.

    Filled markers: the interval excludes 0; open markers: it does not.
    """
    if comparisons.empty:
        raise UserError("no comparisons to draw: the runs have neither a best baseline nor a random row")
    scopes = _pooled_first(comparisons["task"])
    entries = comparisons[["ratio", "comparison", "row"]].drop_duplicates().reset_index(drop=True)
    position = {tuple(e): len(entries) - 1 - i for i, e in enumerate(entries.itertuples(index=False))}
    styles = _styles(comparisons["row"], focus)
    fig, axes = plt.subplots(
        1, len(scopes), figsize=(3.6 * len(scopes) + 3.5, 0.3 * len(entries) + 1.6), sharey=True, squeeze=False
    )
    for ax, task in zip(axes[0], scopes):
        part = comparisons[comparisons["task"] == task]
        for _, row in part.iterrows():
            y = position[(row["ratio"], row["comparison"], row["row"])]
            colour = styles[row["row"]]["color"]
            ax.errorbar(
                row["diff_pct_mean"],
                y,
                capsize=3,
                elinewidth=1.2,
                color=colour,
                marker="o",
                xerr=[[row["diff_pct_mean"] - row["diff_pct_low"]], [row["diff_pct_high"] - row["diff_pct_mean"]]],
                markerfacecolor=colour if row["excludes_zero"] else "white",
            )
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1.0)
        ax.set_yticks(list(position.values()), [f"r={r:g}  {c}" for r, c, _ in position])
        _decorate(ax, "Difference in test top-1 (points)", "", _panel_title(task, part["n_tasks"].max()), legend=False)
    fig.suptitle(f"Paired differences ({_CI}, bootstrap over seeds and test images)")
    _save(fig, out_stem)


def plot_sanity_check(sanity: pd.DataFrame, out_stem: Path, focus: str = FOCUS) -> None:
    """Top, bottom and the random draws' spread per criterion; rows: pooled then tasks, columns: ratios."""
    scopes = _pooled_first(sanity["task"])
    ratios = sorted(sanity["ratio"].unique())
    names = criterion_order(sanity["criterion"], focus)
    fig, axes = plt.subplots(
        len(scopes),
        len(ratios),
        figsize=((0.8 * len(names) + 1.8) * len(ratios) + 2.5, 3.4 * len(scopes)),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for (i, task), (j, ratio) in ((a, b) for a in enumerate(scopes) for b in enumerate(ratios)):
        ax = axes[i, j]
        part = sanity[(sanity["task"] == task) & np.isclose(sanity["ratio"], ratio)].set_index("criterion")
        x = np.arange(len(names))
        present = [name in part.index for name in names]
        rows = part.reindex(names)
        ax.vlines(x, rows["random_min_pct"], rows["random_max_pct"], color="0.6", linewidth=6, label="random (min–max)")
        ax.scatter(x, rows["random_mean_pct"], color="0.3", marker="_", s=150, zorder=3, label="random mean")
        ax.scatter(x, rows["top_pct"], color="#2ca02c", marker="^", s=45, zorder=4, label="top-scored kept")
        ax.scatter(x, rows["bottom_pct"], color="#9467bd", marker="v", s=45, zorder=4, label="bottom-scored kept")
        ticks = [f"{n}\n{'ranks' if rows.loc[n, 'ranks'] else 'no'}" if ok else n for n, ok in zip(names, present)]
        ax.set_xticks(
            x, ticks, rotation=0 if len(names) <= 4 else 45, ha="center" if len(names) <= 4 else "right", fontsize=8
        )
        ax.set_xlim(-0.6, len(names) - 0.4)
        _decorate(
            ax,
            "",
            "Validation top-1 (%)" if j == 0 else "",
            f"{_panel_title(task, part['n_tasks'].max() if len(part) else 1)}, ratio {ratio:g}",
            legend=(i, j) == (0, len(ratios) - 1),
        )
    fig.suptitle("Sanity check: top-scored > random > bottom-scored filters kept")
    _save(fig, out_stem)


def plot_layer_sensitivity(csv_paths: Sequence[Path], out_stem: Path, focus: str = FOCUS) -> None:
    """Heatmap layers × criteria of the drop in validation top-1 (points), mean over tasks.

    ``csv_paths`` (one per task) have columns ``task, criterion, layer, channels, val_top1, drop``
    (fractions); layers keep their order of first appearance. Several channel counts of a layer are averaged.
    """
    frame = pd.concat([_read_sensitivity_csv(Path(path)) for path in csv_paths], ignore_index=True)
    layers = list(dict.fromkeys(frame["layer"]))
    names = criterion_order(frame["criterion"], focus)
    grid = frame.groupby(["layer", "criterion"])["drop_pct"].mean().unstack().reindex(index=layers, columns=names)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 0.32 * len(layers) + 1.8))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="magma_r")
    fig.colorbar(image, ax=ax, label="Drop in validation top-1 (points)")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    if grid.size <= 400:
        threshold = np.nanmean(grid.to_numpy())
        for (r, c), value in np.ndenumerate(grid.to_numpy()):
            if not math.isnan(value):
                ax.text(
                    c,
                    r,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > threshold else "black",
                )
    ax.set_title(f"Per-layer sensitivity (mean over {frame['task'].nunique()} task(s))")
    ax.set_xlabel("Criterion")
    ax.set_ylabel("Conv layer")
    _save(fig, out_stem)


# ----------------------------------------------------------------------------- study figures


def plot_response_maps(npz_path: Path, out_stem: Path) -> None:
    """Grid of task images (with boxes) and response maps of chosen layers (box drawn on each).

    The ``.npz`` file holds:

    - ``images``: float ``[n, 3, H, W]`` in ``[0, 1]`` (already un-normalised for display);
    - ``boxes``: float ``[m, 5]``, one row per box: ``image_index, x0, y0, x1, y1`` in the image's
      pixels, half-open (several or no boxes per image are fine);
    - ``maps``: float ``[n, P, H, W]``: for each image, ``P`` response maps upsampled to the image
      size (e.g. mean activation of the top- and bottom-scored filters of a few layers);
    - ``panel_titles``: str ``[P]``, the column titles (e.g. ``"layer2.1.conv2\\ntop 10% filters"``);
    - ``image_titles`` (optional): str ``[n]``, row labels (e.g. class names).

    The maps of one row share one colour scale (0 to the row's largest value, or the row's range
    when it has negative values), so the top- and bottom-scored filters of an image compare directly.
    """
    data = _read_npz(Path(npz_path), ("images", "boxes", "maps", "panel_titles"))
    images, boxes, maps = data["images"], np.asarray(data["boxes"], float).reshape(-1, 5), data["maps"]
    titles = [str(t) for t in data["panel_titles"]]
    shapes_ok = images.ndim == 4 and maps.ndim == 4 and images.shape[0] == maps.shape[0]
    if not shapes_ok or maps.shape[1] < 1 or len(titles) != maps.shape[1]:
        raise UserError(
            f"{npz_path}: expected images [n,3,H,W], maps [n,P,H,W] with P >= 1 and P panel titles; "
            f"found images {images.shape}, maps {maps.shape}, {len(titles)} titles"
        )
    n, panels = maps.shape[:2]
    # WordNet-style names ("ladybug, ladybeetle, lady beetle, ...") are cut to their first synonym.
    row_titles = [str(t).split(",")[0] for t in data["image_titles"]] if "image_titles" in data else [""] * n
    fig, axes = plt.subplots(n, panels + 1, figsize=(2.2 * (panels + 1) + 0.8, 2.2 * n + 0.4), squeeze=False)
    for i in range(n):
        own_boxes = boxes[boxes[:, 0] == i, 1:]
        axes[i, 0].imshow(np.clip(np.transpose(images[i], (1, 2, 0)), 0.0, 1.0))
        axes[i, 0].set_ylabel(row_titles[i])
        low, high = min(0.0, float(maps[i].min())), float(maps[i].max())
        for j in range(panels):
            shown = axes[i, j + 1].imshow(maps[i, j], cmap="viridis", vmin=low, vmax=max(high, low + 1e-12))
        fig.colorbar(shown, ax=list(axes[i]), fraction=0.02, pad=0.01, label="response (a.u.)")
        for ax in axes[i]:
            _draw_boxes(ax, own_boxes)
    for j, title in enumerate(["image + box"] + titles):
        axes[0, j].set_title(title, fontsize=9)
    fig.suptitle("Response maps: top- and bottom-scored filters")
    _save(fig, out_stem)


def _read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .npz file ({err})") from err
    missing = [key for key in keys if key not in data]
    if missing:
        raise UserError(f"{path}: missing arrays {missing}")
    return data


def _draw_boxes(ax: Axes, boxes: np.ndarray) -> None:
    """Half-open pixel boxes on an ``imshow`` axis (pixel ``p`` is drawn over ``[p-0.5, p+0.5]``)."""
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#ff3030", linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_samples_study(csv_path: Path, out_stem: Path) -> None:
    """Spearman correlation and top-1 against N samples per class (log x), mean ± std over seeds.

    ``csv_path`` has columns ``criterion, n_per_class, seed, spearman, top1`` and optionally
    ``top1_before_finetune``; accuracies are fractions and may be empty. Top-1 before and after
    fine-tuning get a panel each.
    """
    study = _read_csv(Path(csv_path), ("criterion", "n_per_class", "seed", "spearman", "top1"))
    panels = [("spearman", "Spearman ρ with all samples")]
    if "top1_before_finetune" in study:
        panels.append(("top1_before_finetune_pct", "Test top-1 after pruning,\nbefore fine-tuning (%)"))
    panels.append(("top1_pct", "Test top-1 after pruning\nand fine-tuning (%)"))
    study = study.assign(
        spearman=pd.to_numeric(study["spearman"], errors="coerce"),
        top1_pct=pd.to_numeric(study["top1"], errors="coerce") * 100.0,
        top1_before_finetune_pct=pd.to_numeric(study.get("top1_before_finetune", np.nan), errors="coerce") * 100.0,
    )
    metrics = [metric for metric, _ in panels]
    stats = study.groupby(["criterion", "n_per_class"])[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats = stats.reset_index()
    styles = _styles(study["criterion"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharex=True)
    sizes = sorted(stats["n_per_class"].unique())
    for ax, (metric, label) in zip(axes, panels):
        _errorbar_series(ax, stats, "n_per_class", metric, styles)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:g}" for n in sizes])
        ax.minorticks_off()
        if stats[f"{metric}_mean"].isna().all():
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="0.4")
        _decorate(ax, "Samples per class N (log scale)", label, legend=ax is axes[-1])
    fig.suptitle("Pruning in multiple samples")
    _save(fig, out_stem)


def _read_sensitivity_csv(path: Path) -> pd.DataFrame:
    frame = _read_csv(path, ("task", "criterion", "layer", "channels", "val_top1", "drop"))
    return frame.assign(
        drop_pct=_numeric(path, frame, "drop") * 100.0,
        criterion=frame["criterion"].astype(str),
        layer=frame["layer"].astype(str),
    )


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing columns {missing}")
    return frame


def plot_training_curves(history_csvs: Iterable[Path], out_stem: Path) -> None:
    """Train and validation top-1 per epoch, mean ± std over the given histories (e.g. seeds).

    Each CSV has columns ``epoch, train_top1, val_top1`` (fractions; ``val_top1`` empty where the epoch
    was not validated); other columns are ignored.
    """
    frames = [_read_csv(Path(p), ("epoch", "train_top1", "val_top1")) for p in history_csvs]
    if not frames:
        raise UserError("no training histories given to the report")
    long = pd.concat(frames).melt(
        id_vars="epoch", value_vars=["train_top1", "val_top1"], var_name="split", value_name="top1"
    )
    long = long.dropna(subset=["top1"])  # the epochs a fit did not validate (train.validate_last)
    long = long.assign(
        split=long["split"].map({"train_top1": "train", "val_top1": "validation"}),
        top1_pct=long["top1"].astype(float) * 100.0,
    )
    stats = long.groupby(["split", "epoch"])["top1_pct"].agg(["mean", "std"]).add_prefix("top1_pct_").reset_index()
    fig, ax = plt.subplots(figsize=(7, 4))
    _errorbar_series(ax, stats, "epoch", "top1_pct", _styles(stats["split"]), group="split")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _decorate(ax, "Epoch", "Top-1 accuracy (%)", "Training curves")
    _save(fig, out_stem)


# ----------------------------------------------------------------------------- the whole report


def metrics_for_dvc(summary: pd.DataFrame, comparisons: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """``dvc metrics show`` view: pooled top-1 (with interval) and MACs per row and ratio, and the
    pooled paired differences."""
    pooled = summary[summary["task"] == POOLED]
    columns = ("top1_pct_mean", "top1_pct_low", "top1_pct_high", "macs_m_mean")
    compared = comparisons[comparisons["task"] == POOLED]
    return {
        "summary": {
            f"{row['criterion']}/r{row['ratio']:g}": {c: round(float(row[c]), 4) for c in columns}
            for _, row in pooled.iterrows()
        },
        "comparisons": {
            f"r{row['ratio']:g}/{row['comparison'].replace(' − ', ' vs ')}": {
                c: round(float(row[c]), 4) for c in ("diff_pct_mean", "diff_pct_low", "diff_pct_high")
            }
            for _, row in compared.iterrows()
        },
    }


def build_report(
    run_paths: Iterable[Path],
    out_dir: Path,
    focus_row: str = FOCUS,
    sanity_csvs: Mapping[str, Sequence[Path]] | None = None,
    sensitivity_csvs: Sequence[Path] = (),
    latency_csv: Path | None = None,
    samples_csv: Path | None = None,
    response_maps: Path | None = None,
    history: Sequence[Path] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = RNG_SEED,
) -> list[Path]:
    """Every table and figure whose inputs are given, under ``out_dir/tables`` and ``out_dir/figures``.

    Always: ``summary``, ``comparisons`` (CSV + Markdown), ``summary.json`` (for DVC), and the
    figures ``accuracy_vs_ratio``, ``accuracy_vs_macs``, ``filters_per_layer`` and
    ``paired_differences``. With their inputs: ``sanity`` (table + ``sanity_check`` figure, from
    the first baseline of ``sanity_csvs``, which maps each baseline's label to its study CSVs) and
    ``sanity_baselines`` (:func:`sanity_over_baselines`, from all of them),
    ``latency`` (table), ``layer_sensitivity``, ``samples_study``, ``response_maps`` and
    ``training_curves``. ``focus_row`` names the Map-EX row compared with the best baseline.
    Returns the files written.
    """
    runs = load_runs(run_paths)
    if focus_row not in set(runs["criterion"]):
        raise UserError(
            f"focus row '{focus_row}' is in no run file; rows present: {criterion_order(runs['criterion'])}"
        )
    tables, figures = Path(out_dir) / "tables", Path(out_dir) / "figures"
    summary = summary_table(runs, focus_row, n_resamples, seed)
    comparisons = comparisons_table(runs, focus_row, n_resamples, seed)
    written = _write_table(summary, summary_markdown(summary, environment_line(runs)), tables / "summary")
    written += _write_table(comparisons, comparisons_markdown(comparisons), tables / "comparisons")
    write_json(tables / "summary.json", metrics_for_dvc(summary, comparisons))
    written.append(tables / "summary.json")
    plots = {
        "accuracy_vs_ratio": lambda stem: plot_accuracy_vs_ratio(summary, stem, focus_row),
        "accuracy_vs_macs": lambda stem: plot_accuracy_vs_macs(summary, stem, focus_row),
        "filters_per_layer": lambda stem: plot_filters_per_layer(runs, stem, focus=focus_row),
    }
    if not comparisons.empty:
        plots["paired_differences"] = lambda stem: plot_paired_differences(comparisons, stem, focus_row)
    if sanity_csvs:
        by_baseline = {label: sanity_table(csvs) for label, csvs in sanity_csvs.items()}
        sanity = next(iter(by_baseline.values()))
        written += _write_table(sanity, sanity_markdown(sanity), tables / "sanity")
        over = sanity_over_baselines(by_baseline)
        written += _write_table(over, sanity_over_baselines_markdown(over), tables / "sanity_baselines")
        plots["sanity_check"] = lambda stem: plot_sanity_check(sanity, stem, focus_row)
    if latency_csv is not None:
        latency = latency_table(Path(latency_csv), _unpruned_macs(runs))
        written += _write_table(latency, latency_markdown(latency), tables / "latency")
    if sensitivity_csvs:
        plots["layer_sensitivity"] = lambda stem: plot_layer_sensitivity(sensitivity_csvs, stem, focus_row)
    if samples_csv is not None:
        plots["samples_study"] = lambda stem: plot_samples_study(Path(samples_csv), stem)
    if response_maps is not None:
        plots["response_maps"] = lambda stem: plot_response_maps(Path(response_maps), stem)
    if history:
        plots["training_curves"] = lambda stem: plot_training_curves([Path(p) for p in history], stem)
    for name, plot in plots.items():
        plot(figures / name)
        written += [figures / f"{name}.png", figures / f"{name}.pdf"]
    return written


def _write_table(table: pd.DataFrame, markdown: str, stem: Path) -> list[Path]:
    csv_path, md_path = stem.with_name(f"{stem.name}.csv"), stem.with_name(f"{stem.name}.md")
    write_text(csv_path, table.to_csv(index=False))
    write_text(md_path, markdown)
    return [csv_path, md_path]


def _unpruned_macs(runs: pd.DataFrame) -> float | None:
    reference = runs.loc[runs["criterion"] == UNPRUNED, "macs"]
    return float(reference.mean()) if len(reference) else None
