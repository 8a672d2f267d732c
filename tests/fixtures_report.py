"""Synthetic result files for the report tests, in the formats the pipeline writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYERS = {"conv1": 16, "layer1.0.conv1": 16, "layer2.0.conv1": 32, "layer3.0.conv1": 64}
TASKS = {"t0": 20, "t1": 40}
"""Task name -> number of test images."""
TASK_OFFSET = {"t0": 0.0, "t1": -0.10}
SEEDS = (0, 1, 2)
RATIOS = (0.3, 0.6)
ENV = {"cpu": "test-cpu", "device": "cpu", "threads": 2, "torch": "2.5.0"}

# row -> (base criterion, global, test accuracy at ratio 0.3 and seed 0 in t0, validation accuracy)
ROWS = {
    "map-ex": ("map-ex", False, 0.80, 0.70),
    "l1": ("l1", False, 0.70, 0.75),
    "bn-scale": ("bn-scale", False, 0.75, 0.60),
    "l1-global": ("l1", True, 0.65, 0.65),
    "random": ("random", False, 0.50, 0.50),
}
"""bn-scale is better than l1 on test but worse on validation: the best baseline is l1."""


def correct_pattern(n: int, accuracy: float, seed: int) -> np.ndarray:
    """``round(accuracy · n)`` right answers out of ``n``, at image positions that move with the seed."""
    k = round(accuracy * n)
    return (np.arange(n) + 7 * seed) % n < k


def run_record(
    task: str,
    criterion: str,
    ratio: float,
    seed: int,
    accuracy: float,
    n: int = 20,
    base_criterion: str | None = None,
    global_: bool = False,
    val_top1: float | None = None,
    correct: np.ndarray | None = None,
    **extra,
) -> dict:
    """A complete run record; its predictions are right on ``correct`` (default :func:`correct_pattern`).

    Sizes shrink with ``ratio`` so that every metric is known by hand; global rows keep more
    filters in early layers and fewer in late ones.
    """
    correct = correct_pattern(n, accuracy, seed) if correct is None else np.asarray(correct, bool)
    labels = np.arange(len(correct)) % 5
    preds = np.where(correct, labels, (labels + 1) % 5)
    kept = 1.0 - ratio
    factors = np.linspace(1.4, 0.6, len(LAYERS)) if global_ else np.ones(len(LAYERS))
    record = {
        "task": task,
        "criterion": criterion,
        "base_criterion": base_criterion or criterion,
        "global": global_,
        "ratio": ratio,
        "seed": seed,
        "arch": "tiny-cnn",
        "top1": float(correct.mean()),
        "top5": 0.99,
        "n": len(correct),
        "val_top1": accuracy if val_top1 is None else val_top1,
        "top1_before_finetune": float(correct.mean()) / 2,
        "params": 1_000_000 * kept,
        "macs": 50_000_000 * kept,
        "size_bytes": 4_000_000 * kept,
        "params_removed": ratio,
        "macs_removed": ratio,
        "best_epoch": 1,
        "filters_before": dict(LAYERS),
        "filters_after": {
            name: (n_filters if name == "conv1" else min(n_filters, round(n_filters * kept * f)))
            for (name, n_filters), f in zip(LAYERS.items(), factors)
        },
        "env": dict(ENV),
        "predictions": {"label": labels.tolist(), "pred": preds.tolist()},
    }
    return {**record, **extra}


def write_run(folder: Path, record: dict) -> Path:
    """Write ``record`` as ``<folder>/<task>/<criterion>/r<ratio>/s<seed>.json``."""
    path = (
        folder / record.get("task", "no-task") / record["criterion"] / f"r{record['ratio']}" / f"s{record['seed']}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def row_accuracy(base: float, task: str, ratio: float, seed: int) -> float:
    """Test accuracy of a standard run: ``base`` − 0.05 at ratio 0.6, + 0.05 per seed, + the task offset."""
    return round(base - (0.05 if ratio > 0.5 else 0.0) + 0.05 * seed + TASK_OFFSET[task], 2)


def standard_runs(folder: Path, extra_criterion: str | None = None) -> list[Path]:
    """Tasks t0 (20 images) and t1 (40), seeds 0–2: "none" at ratio 0 and every row of ``ROWS``
    (+ ``extra_criterion``, like l1) at ratios 0.3 and 0.6, accuracies from :func:`row_accuracy`."""
    rows = dict(ROWS, **({extra_criterion: ("l1", False, 0.60, 0.55)} if extra_criterion else {}))
    records = []
    for task, n in TASKS.items():
        records += [run_record(task, "none", 0.0, s, row_accuracy(0.90, task, 0.0, s), n) for s in SEEDS]
        records += [
            run_record(task, name, ratio, s, row_accuracy(test, task, ratio, s), n, base, global_, val)
            for name, (base, global_, test, val) in rows.items()
            for ratio in RATIOS
            for s in SEEDS
        ]
    return [write_run(folder, r) for r in records]


def write_sanity_csv(path: Path, map_ex_top: float = 0.80) -> Path:
    """map-ex ranks (top 80 %, random draws 50–58 %, bottom 30 %); l1 does not (top 55 %), in t0 and t1."""
    lines = ["task,criterion,ratio,case,draw,val_top1"]
    for task in TASKS:
        for criterion, top in (("map-ex", map_ex_top), ("l1", 0.55)):
            for ratio in RATIOS:
                lines.append(f"{task},{criterion},{ratio},top,0,{top}")
                lines.append(f"{task},{criterion},{ratio},bottom,0,0.30")
                lines += [f"{task},{criterion},{ratio},random,{d},{0.50 + 0.02 * d:.2f}" for d in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_latency_csv(path: Path) -> Path:
    """Two shapes at 0.3 (layer-wise rows share one; the global row has its own) and one at 0.6, batches 1 and 32."""
    lines = [
        "ratio,shape,rows,macs,params,latency_ms_cpu_b1,latency_ms_cpu_b1_unpruned,"
        "latency_ms_cpu_b32,latency_ms_cpu_b32_unpruned",
        "0.3,w30,map-ex;l1;bn-scale;random,35000000,700000,1.5,2.0,40.0,100.0",
        "0.3,g30,l1-global,25000000,600000,1.0,2.0,50.0,100.0",
        "0.6,w60,map-ex;l1;bn-scale;random,20000000,400000,1.0,2.0,25.0,100.0",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sensitivity_csv(path: Path) -> Path:
    """Drops: map-ex 0.01 · (layer index + 1), l1 twice that, t1's drops 0.02 higher than t0's."""
    lines = ["task,criterion,layer,channels,val_top1,drop"]
    for task, extra in (("t0", 0.0), ("t1", 0.02)):
        for criterion, scale in (("map-ex", 0.01), ("l1", 0.02)):
            for i, layer in enumerate(LAYERS):
                drop = scale * (i + 1) + extra
                lines.append(f"{task},{criterion},{layer},{LAYERS[layer] // 2},{0.8 - drop:.3f},{drop:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_samples_csv(path: Path) -> Path:
    """A multiple-samples study: map-ex and map, N in 1, 4, 16, seeds 0 and 1; top1 empty at N=1."""
    lines = ["criterion,n_per_class,seed,spearman,top1_before_finetune,top1"]
    for crit, offset in (("map-ex", 0.0), ("map", -0.1)):
        for n in (1, 4, 16):
            for seed in (0, 1):
                top1 = "" if n == 1 else f"{0.6 + 0.05 * np.log2(n) + offset + seed / 100:.3f}"
                before = f"{0.3 + 0.02 * np.log2(n) + offset:.3f}"
                lines.append(f"{crit},{n},{seed},{0.5 + 0.1 * np.log2(n) + offset + seed / 50:.3f},{before},{top1}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_response_npz(path: Path, n: int = 2, size: int = 32) -> Path:
    """Images with a bright square object, its box, and two maps (strong inside the box, weak)."""
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.full((n, 3, size, size), 0.3)
    maps = np.zeros((n, 2, size, size))
    boxes = []
    for i in range(n):
        x0, y0, x1, y1 = 4 + 4 * i, 6, 20 + 4 * i, 26
        inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        images[i, 0][inside] = 0.9
        maps[i, 0] = np.exp(-(((xx - (x0 + x1) / 2) ** 2 + (yy - (y0 + y1) / 2) ** 2) / 40.0))
        maps[i, 1] = 0.1 * (~inside)
        boxes.append([i, x0, y0, x1, y1])
    np.savez(
        path,
        images=images,
        boxes=np.array(boxes, float),
        maps=maps,
        panel_titles=np.array(["layer3.0.conv1\ntop 10% filters", "layer3.0.conv1\nbottom 10% filters"]),
        image_titles=np.array([f"class {i}" for i in range(n)]),
    )
    return path


def write_history(path: Path, seed: int) -> Path:
    """A training history: ``epoch,train_top1,val_top1,train_loss``."""
    lines = ["epoch,train_top1,val_top1,train_loss"]
    lines += [f"{e},{0.3 + 0.1 * e + seed / 100:.3f},{0.25 + 0.08 * e:.3f},{2.0 / (e + 1):.3f}" for e in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path
