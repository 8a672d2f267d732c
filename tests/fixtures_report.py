"""Synthetic result files for the report tests, in the formats the CLI writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYERS = {"conv1": 16, "layer1.0.conv1": 16, "layer2.0.conv1": 32, "layer3.0.conv1": 64}


def run_record(criterion: str, ratio: float, seed: int, top1: float, latency_b64: float, **extra) -> dict:
    """A complete run record; sizes shrink with ``ratio`` so that every metric is known by hand."""
    kept = 1.0 - ratio
    record = {
        "criterion": criterion, "ratio": ratio, "seed": seed, "arch": "tiny-cnn",
        "top1": top1, "top5": 0.99, "n_test": 250,
        "params": 1_000_000 * kept, "macs": 50_000_000 * kept, "size_bytes": 4_000_000 * kept,
        "latency_ms_cpu_b1": 2.0, "latency_ms_cpu_b64": latency_b64,
        "params_removed": ratio, "macs_removed": ratio,
        "filters_before": dict(LAYERS),
        "filters_after": {name: (n if name == "conv1" else round(n * kept) + seed) for name, n in LAYERS.items()},
        "top1_before_finetune": top1 / 2,
    }
    return {**record, **extra}


def write_run(folder: Path, record: dict) -> Path:
    """Write ``record`` where the CLI would: ``<folder>/<criterion>/r<ratio>/s<seed>.json``."""
    path = folder / record["criterion"] / f"r{record['ratio']}" / f"s{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def standard_runs(folder: Path, extra_criterion: str | None = None) -> list[Path]:
    """"none" + map-ex + l1 (+ ``extra_criterion``) at ratios 0.3 and 0.6, seeds 0 and 1.

    top1 = base − ratio/10 + seed/50; CPU b64 latency = 100·(1 − ratio) + 10·seed ms.
    """
    records = [run_record("none", 0.0, s, 0.80 + s / 50, 100.0 + 10 * s) for s in (0, 1)]
    bases = {"map-ex": 0.78, "l1": 0.70, **({extra_criterion: 0.60} if extra_criterion else {})}
    records += [
        run_record(crit, ratio, s, base - ratio / 10 + s / 50, 100.0 * (1 - ratio) + 10 * s)
        for crit, base in bases.items() for ratio in (0.3, 0.6) for s in (0, 1)
    ]
    return [write_run(folder, r) for r in records]


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
    np.savez(path, images=images, boxes=np.array(boxes, float), maps=maps,
             panel_titles=np.array(["layer3.0.conv1\ntop 10% filters", "layer3.0.conv1\nbottom 10% filters"]),
             image_titles=np.array([f"class {i}" for i in range(n)]))
    return path


def write_history(path: Path, seed: int) -> Path:
    """A training history: ``epoch,train_top1,val_top1,train_loss``."""
    lines = ["epoch,train_top1,val_top1,train_loss"]
    lines += [f"{e},{0.3 + 0.1 * e + seed / 100:.3f},{0.25 + 0.08 * e:.3f},{2.0 / (e + 1):.3f}" for e in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path
