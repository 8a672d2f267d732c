"""Tables and figures from result files only (run JSONs, study CSVs, response-map npz).

Nothing here imports a model: the report can be rebuilt on a laptop from ``results/`` alone.
Criteria are never listed by hand; whatever names appear in the files are reported, in the
order of :func:`criterion_order` ("none" first, then "map-ex", then the rest alphabetically).
Every output is written atomically through :mod:`mapex.io`; figures go out as ``<stem>.png``
and ``<stem>.pdf`` together.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mapex.io import UserError, atomic_path, read_json, write_text  # noqa: E402

REFERENCE = "none"
"""Criterion name of the unpruned, fine-tuned model (ratio 0)."""
OURS = "map-ex"
"""Criterion drawn first and highlighted."""

FIGURE_CAPTIONS: dict[str, str] = {
    "accuracy_vs_ratio": "Test top-1 accuracy after fine-tuning against the fraction of filters removed, "
    "mean ± std over seeds; the dashed line is the unpruned fine-tuned model.",
    "accuracy_vs_macs": "Test top-1 accuracy against the multiply-accumulates that remain after pruning, "
    "mean ± std over seeds in both axes; the star is the unpruned fine-tuned model.",
    "filters_per_layer": "Filters kept in each conv layer by each criterion at one pruning ratio "
    "(mean ± std over seeds), against the unpruned widths in grey.",
    "response_maps": "Task images with their boxes, and the mean response maps of the highest- and "
    "lowest-scored filters of a few layers, with the box drawn on each.",
    "samples_study": "Pruning in multiple samples: rank correlation of the filter scores from N samples "
    "per class with those from all samples, and test top-1 of the model pruned with them, before and after "
    "the usual fine-tuning (mean ± std over seeds).",
    "training_curves": "Training and validation top-1 accuracy per epoch (mean ± std over the given histories).",
}
"""Figure stem -> one-sentence caption, for the workflow's report ``.rst`` files."""

_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "criterion": str,
    "ratio": (int, float),
    "seed": int,
    "top1": (int, float),
    "params": (int, float),
    "macs": (int, float),
    "size_bytes": (int, float),
    "latency_ms_cpu_b1": (int, float),
    "latency_ms_cpu_b64": (int, float),
    "params_removed": (int, float),
    "macs_removed": (int, float),
    "filters_before": dict,
    "filters_after": dict,
}
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "arch": str,
    "top5": (int, float),
    "n_test": int,
    "top1_before_finetune": (int, float),
    "latency_ms_cuda_b1": (int, float),
    "latency_ms_cuda_b64": (int, float),
}


@dataclass(frozen=True)
class Metric:
    """One column of the summary: ``key`` in the CSV, ``source`` field × ``scale``, a header with units."""

    key: str
    source: str
    scale: float
    header: str
    digits: int


_METRICS: tuple[Metric, ...] = (
    Metric("top1_pct", "top1", 100.0, "Top-1 (%)", 1),
    Metric("top1_before_finetune_pct", "top1_before_finetune", 100.0, "Top-1 before fine-tune (%)", 1),
    Metric("params_m", "params", 1e-6, "Params (M)", 2),
    Metric("macs_m", "macs", 1e-6, "MACs (M)", 1),
    Metric("size_mb", "size_bytes", 1e-6, "Size (MB)", 2),
    Metric("latency_cpu_b1_ms", "latency_ms_cpu_b1", 1.0, "CPU latency b1 (ms)", 2),
    Metric("latency_cpu_b64_ms", "latency_ms_cpu_b64", 1.0, "CPU latency b64 (ms)", 1),
    Metric("latency_cuda_b1_ms", "latency_ms_cuda_b1", 1.0, "GPU latency b1 (ms)", 2),
    Metric("latency_cuda_b64_ms", "latency_ms_cuda_b64", 1.0, "GPU latency b64 (ms)", 2),
    Metric("speedup_cpu_b64", "speedup_cpu_b64", 1.0, "CPU speedup b64 (×)", 2),
    Metric("params_removed_pct", "params_removed", 100.0, "Params removed (%)", 1),
    Metric("macs_removed_pct", "macs_removed", 100.0, "MACs removed (%)", 1),
)
"""Optional metrics (top-1 before fine-tuning, GPU latency) appear only when some run has them."""

_OURS_COLOUR = "#d62728"
_OTHER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")
_MARKERS = ("s", "^", "v", "D", "P", "X", "<", ">", "h")


# ----------------------------------------------------------------------------- loading runs


def load_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per run file; a missing or invalid file, or a missing or mistyped field, is a UserError.

    The run files must describe one architecture and hold each (criterion, ratio, seed) once,
    since the summary averages over seeds and would silently mix anything else.
    """
    rows = [_read_run(Path(path)) for path in paths]
    if not rows:
        raise UserError("no run files given to the report")
    runs = pd.DataFrame(rows)
    _check_unique_runs(runs)
    archs = sorted(runs["arch"].dropna().unique()) if "arch" in runs else []
    if len(archs) > 1:
        raise UserError(f"run files mix architectures {archs}; report one architecture at a time")
    return runs


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
    keep = {**_REQUIRED_FIELDS, **_OPTIONAL_FIELDS}
    return {**{k: v for k, v in record.items() if k in keep}, "ratio": float(record["ratio"]), "path": str(path)}


def _check_type(path: Path, field: str, value: object, kind: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"{path}: field '{field}' has the wrong type ({type(value).__name__}: {value!r})")


def _check_unique_runs(runs: pd.DataFrame) -> None:
    duplicated = runs[runs.duplicated(["criterion", "ratio", "seed"], keep=False)]
    if not duplicated.empty:
        raise UserError(f"the same criterion, ratio and seed appear in several files: {sorted(duplicated['path'])}")


def criterion_order(names: Iterable[str]) -> list[str]:
    """Unique names: "none" first, then "map-ex", then the rest alphabetically."""
    unique = set(names)
    return [n for n in (REFERENCE, OURS) if n in unique] + sorted(unique - {REFERENCE, OURS})


# ----------------------------------------------------------------------------- tables


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over seeds, ddof=1) of every metric, one row per criterion × ratio.

    Columns: ``criterion, ratio, n_seeds`` then ``<metric>_mean, <metric>_std`` for each metric
    of ``_METRICS`` with at least one value. The speedup of a run is the mean batch-64 CPU
    latency of the "none" runs divided by the run's own; without a "none" run it is left out.
    """
    per_run = _per_run_metrics(runs)
    metrics = [m.key for m in _present_metrics(per_run)]
    grouped = per_run.groupby(["criterion", "ratio"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "n_seeds", grouped.size())
    return _sort_rows(table.reset_index())


def _per_run_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    reference = runs.loc[runs["criterion"] == REFERENCE, "latency_ms_cpu_b64"]
    runs = runs.assign(speedup_cpu_b64=reference.mean() / runs["latency_ms_cpu_b64"] if len(reference) else np.nan)
    columns = {m.key: runs[m.source].astype(float) * m.scale for m in _METRICS if m.source in runs}
    return pd.concat([runs[["criterion", "ratio", "seed"]], pd.DataFrame(columns)], axis=1)


def _present_metrics(table: pd.DataFrame) -> list[Metric]:
    """The metrics with at least one value (plain or as ``_mean``) in ``table``."""
    present = []
    for metric in _METRICS:
        column = metric.key if metric.key in table else f"{metric.key}_mean"
        if column in table and table[column].notna().any():
            present.append(metric)
    return present


def _sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(criterion_order(table["criterion"]))}
    key = pd.DataFrame({
        "not_reference": table["criterion"] != REFERENCE,
        "ratio": table["ratio"],
        "rank": table["criterion"].map(rank),
    })
    return table.loc[key.sort_values(["not_reference", "ratio", "rank"]).index].reset_index(drop=True)


def write_tables(runs: pd.DataFrame, out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Write the summary as CSV (raw means and stds) and Markdown ("71.2 ± 1.3"); return it."""
    table = summary_table(runs)
    write_text(out_csv, table.to_csv(index=False))
    write_text(out_md, markdown_table(table) + "\n")
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table with "mean ± std" cells and units in the headers."""
    cells = pd.DataFrame({
        "Criterion": table["criterion"],
        "Ratio": table["ratio"].map(lambda r: f"{r:g}"),
        "Seeds": table["n_seeds"].astype(int).astype(str),
    })
    for metric in _present_metrics(table):
        means, stds = table[f"{metric.key}_mean"], table[f"{metric.key}_std"]
        cells[metric.header] = [_mean_std(m, s, metric.digits) for m, s in zip(means, stds)]
    if importlib.util.find_spec("tabulate") is not None:
        return cells.to_markdown(index=False, disable_numparse=True)
    return _plain_markdown(cells)


def _mean_std(mean: float, std: float, digits: int) -> str:
    """"71.2 ± 1.3"; just the mean for a single seed; "–" where there is no value."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _plain_markdown(cells: pd.DataFrame) -> str:
    """A pipe table, for environments without ``tabulate``."""
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.astype(str).itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- shared look


def _styles(names: Iterable[str]) -> dict[str, dict]:
    """Line style per series: map-ex thick and red, "none" black, the rest from a fixed palette."""
    styles: dict[str, dict] = {}
    others = 0
    for name in criterion_order(names):
        if name == OURS:
            styles[name] = dict(color=_OURS_COLOUR, marker="o", linewidth=2.8, markersize=7, zorder=5)
        elif name == REFERENCE:
            styles[name] = dict(color="black", marker="*", linewidth=1.5, markersize=9, zorder=4)
        else:
            styles[name] = dict(color=_OTHER_COLOURS[others % len(_OTHER_COLOURS)],
                                marker=_MARKERS[others % len(_MARKERS)], linewidth=1.4, markersize=5, zorder=3)
            others += 1
    return styles


def _errorbar_series(ax: Axes, stats: pd.DataFrame, x: str, y: str, styles: dict[str, dict],
                     group: str = "criterion", xerr: str | None = None, dodge: float = 0.0) -> None:
    """One line with error bars per ``group`` value, in ``styles`` order.

    ``stats`` holds ``<y>_mean`` and ``<y>_std`` (and ``<xerr>`` if given) per row;
    a missing std (one seed) draws no bar. ``dodge`` shifts the series apart along x so that
    equal values (e.g. the same width in every criterion) stay visible.
    """
    shown = [name for name in styles if stats.loc[stats[group] == name, f"{y}_mean"].notna().any()]
    for i, name in enumerate(shown):
        part = stats[stats[group] == name].sort_values(x)
        ax.errorbar(part[x] + (i - (len(shown) - 1) / 2) * dodge, part[f"{y}_mean"],
                    yerr=part[f"{y}_std"].fillna(0.0),
                    xerr=None if xerr is None else part[xerr].fillna(0.0),
                    label=_label(name), capsize=3, elinewidth=1, **styles[name])


def _label(name: str) -> str:
    return f"unpruned ({REFERENCE})" if name == REFERENCE else name


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


# ----------------------------------------------------------------------------- run figures


def plot_accuracy_vs_ratio(runs: pd.DataFrame, out_stem: Path) -> None:
    """Test top-1 against the pruning ratio, one line per criterion; the unpruned model dashed."""
    table = summary_table(runs)
    styles = _styles(runs["criterion"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    reference = table[table["criterion"] == REFERENCE]
    if not reference.empty:
        mean, std = reference["top1_pct_mean"].iloc[0], reference["top1_pct_std"].fillna(0.0).iloc[0]
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
        ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=_label(REFERENCE))
    _errorbar_series(ax, table[table["criterion"] != REFERENCE], "ratio", "top1_pct",
                     {k: v for k, v in styles.items() if k != REFERENCE})
    ax.set_xticks(sorted(table.loc[table["criterion"] != REFERENCE, "ratio"].unique()))
    _decorate(ax, "Pruning ratio (fraction of filters removed per layer)", "Test top-1 accuracy (%)",
              "Accuracy after pruning and fine-tuning")
    _save(fig, out_stem)


def plot_accuracy_vs_macs(runs: pd.DataFrame, out_stem: Path) -> None:
    """Test top-1 against the remaining MACs, x and y error bars; the unpruned model as a star."""
    table = summary_table(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _errorbar_series(ax, table, "macs_m_mean", "top1_pct", _styles(runs["criterion"]), xerr="macs_m_std")
    _decorate(ax, "Multiply-accumulates per image (M)", "Test top-1 accuracy (%)", "Accuracy against compute")
    _save(fig, out_stem)


def plot_filters_per_layer(runs: pd.DataFrame, out_stem: Path, ratio: float | None = None) -> None:
    """Filters kept per conv layer by each criterion at ``ratio`` (default: the middle pruned ratio).

    Layers are in the order of the first run's ``filters_before``; the unpruned widths are
    drawn as grey bars behind the lines.
    """
    pruned = runs[runs["criterion"] != REFERENCE]
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
    ax.bar(range(len(layers)), [at_ratio["filters_before"].iloc[0][name] for name in layers],
           width=0.8, color="0.88", edgecolor="0.55", label="unpruned", zorder=1)
    styles = _styles(at_ratio["criterion"])
    _errorbar_series(ax, stats, "layer", "filters", styles, dodge=0.6 / len(styles))
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    title = f"Filters kept per layer at pruning ratio {ratio:g}"
    if len(styles) > 1 and (stats.groupby("layer")["filters_mean"].nunique() == 1).all():
        title += "\n(every criterion keeps the same count: the ratio applies layer by layer)"
    _decorate(ax, "Conv layer", "Filters kept (count)", title)
    _save(fig, out_stem)


def _filters_stats(runs: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Long table ``criterion, layer (index), filters_mean, filters_std`` over the runs' seeds."""
    long = pd.DataFrame([
        {"criterion": crit, "layer": i, "filters": after.get(name, np.nan)}
        for crit, after in zip(runs["criterion"], runs["filters_after"])
        for i, name in enumerate(layers)
    ])
    stats = long.groupby(["criterion", "layer"])["filters"].agg(["mean", "std"])
    return stats.add_prefix("filters_").reset_index()


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
        raise UserError(f"{npz_path}: expected images [n,3,H,W], maps [n,P,H,W] with P >= 1 and P panel titles; "
                        f"found images {images.shape}, maps {maps.shape}, {len(titles)} titles")
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

    Each CSV has columns ``epoch, train_top1, val_top1`` (fractions); other columns are ignored.
    """
    frames = [_read_csv(Path(p), ("epoch", "train_top1", "val_top1")) for p in history_csvs]
    if not frames:
        raise UserError("no training histories given to the report")
    long = pd.concat(frames).melt(id_vars="epoch", value_vars=["train_top1", "val_top1"],
                                  var_name="split", value_name="top1")
    long = long.assign(split=long["split"].map({"train_top1": "train", "val_top1": "validation"}),
                       top1_pct=long["top1"].astype(float) * 100.0)
    stats = long.groupby(["split", "epoch"])["top1_pct"].agg(["mean", "std"]).add_prefix("top1_pct_").reset_index()
    fig, ax = plt.subplots(figsize=(7, 4))
    _errorbar_series(ax, stats, "epoch", "top1_pct", _styles(stats["split"]), group="split")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _decorate(ax, "Epoch", "Top-1 accuracy (%)", "Training curves")
    _save(fig, out_stem)
