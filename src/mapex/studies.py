"""The studies around the main comparison: sanity check, per-layer sensitivity, multiple samples, latency.

Every accuracy a study uses to *choose* something (the Map-EX variant, the best baseline) is
measured on the task's validation split, never on the test split.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from mapex import experiment
from mapex.data.task import TaskData
from mapex.models import conv_layers
from mapex.pipeline import Row, row

log = logging.getLogger("mapex")
Scores = dict[str, torch.Tensor]


class _Evaluator:
    """Validation top-1 of pruned copies of one task model, with the loaders built once.

    With ``recalibrate_bn`` > 0, every model's BatchNorm statistics are first re-estimated on that
    many batches of the task's training images (no weight changes; "adaptive BN", Li et al.,
    EagleEye, ECCV 2020): a pruned network keeps statistics measured for channels it lost, which
    alone can drop it to chance and hide what its criterion kept.
    """

    def __init__(
        self, params: dict[str, Any], model: nn.Module, task: TaskData, on: torch.device, recalibrate_bn: int = 0
    ) -> None:
        import itertools

        self.params, self.model, self.on = params, model.cpu(), on
        batch_size = params["statistics"]["batch_size"]
        self.val = experiment.loader(params, task.task_val, False, batch_size, 0)
        train = experiment.loader(params, task.task_train, False, batch_size, 0)
        self.calibration = list(itertools.islice(train, recalibrate_bn))

    def accuracy(self, model: nn.Module) -> float:
        """Under the ``amp`` param's autocast, as the fine-tuning's validation passes are."""
        from mapex.evaluate import accuracy, recalibrate_batchnorm
        from mapex.io import autocast

        model.to(self.on)
        with autocast(self.on, self.params["amp"]):
            if self.calibration:
                recalibrate_batchnorm(model, self.calibration, self.on)
            return accuracy(model, self.val, self.on, progress=False)["top1"]

    def pruned(
        self, spec: Row, scores: Scores, ratio: float, seed: int, keep: dict[str, int] | None = None
    ) -> tuple[float, dict[str, int]]:
        """Validation top-1 of the task model pruned by ``scores``, and its filters per conv."""
        pruned = copy.deepcopy(self.model)
        report = experiment.prune_task_model(self.params, pruned, spec, scores, ratio, seed, keep=keep)
        return self.accuracy(pruned), report.filters_after


def scored_study(
    params: dict[str, Any], data_dir: str | Path, model_path: str | Path, task_name: str | None, section: str, study
) -> pd.DataFrame:
    """``study`` over the rows of ``params[section]``, each scored on the first seed's N samples per class."""
    from mapex.data import balanced_subset

    task_name, task = experiment.load_task(params, data_dir, task_name)
    model = experiment.load_task_model(params, task, model_path)
    on = experiment.device(params)
    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    scores = {
        name: experiment.compute_scores(params, model, row(params, name), samples, seed, on)
        for name in params[section]["criteria"]
    }
    return study(params, model, task, task_name, scores, on)


def negated(scores: Scores) -> Scores:
    """Scores whose ranking is reversed: pruning by them keeps the bottom-scored filters."""
    return {name: -value for name, value in scores.items()}


def sanity_study(
    params: dict[str, Any],
    model: nn.Module,
    task: TaskData,
    task_name: str,
    scores: dict[str, Scores],
    on: torch.device,
) -> pd.DataFrame:
    """Validation top-1 before fine-tuning, at each of ``sanity.ratios``: each row's top-scored filters
    kept, its bottom-scored filters kept, and ``sanity.random_draws`` random prunings at the top
    case's shapes (BatchNorm statistics re-estimated first, see :class:`_Evaluator`).

    A criterion ranks filters only if top > random > bottom beyond the random draws' spread;
    the report decides that. Random draws are shared by rows whose top case has the same shapes
    (every local-ranking row at a ratio), so each is drawn once.
    """
    evaluator = _Evaluator(params, model, task, on, params["sanity"]["recalibrate_bn"])
    seed = params["seeds"][0]
    draws = params["sanity"]["random_draws"]
    random_spec = Row("random", "random")
    random_cache: dict[tuple, list[float]] = {}
    records = []
    for ratio in params["sanity"]["ratios"]:
        for name, row_scores in scores.items():
            spec = row(params, name)
            top, shapes = evaluator.pruned(spec, row_scores, ratio, seed)
            bottom, _ = evaluator.pruned(spec, negated(row_scores), ratio, seed)
            key = (ratio, tuple(sorted(shapes.items())))
            if key not in random_cache:
                random_cache[key] = [
                    _random_accuracy(evaluator, random_spec, ratio, draw, shapes) for draw in range(draws)
                ]
            cases = [("top", 0, top), ("bottom", 0, bottom)]
            cases += [("random", draw, value) for draw, value in enumerate(random_cache[key])]
            records += [
                {"task": task_name, "criterion": name, "ratio": ratio, "case": case, "draw": draw, "val_top1": value}
                for case, draw, value in cases
            ]
            log.info(
                "sanity %s r=%s: top %.3f bottom %.3f random %s",
                name,
                ratio,
                top,
                bottom,
                [round(v, 3) for v in random_cache[key]],
            )
    return pd.DataFrame.from_records(records)


def _random_accuracy(evaluator: _Evaluator, spec: Row, ratio: float, draw: int, shapes: dict[str, int]) -> float:
    criterion = experiment.make_criterion(spec, draw)
    scores = criterion.compute(evaluator.model)
    return evaluator.pruned(spec, scores, ratio, draw, keep=shapes)[0]


def sensitivity_study(
    params: dict[str, Any],
    model: nn.Module,
    task: TaskData,
    task_name: str,
    scores: dict[str, Scores],
    on: torch.device,
) -> pd.DataFrame:
    """Per prunable group and row: validation top-1 after removing ``sensitivity.fraction`` of that
    group's channels alone (by the row's scores), and the drop from the unpruned task model."""
    from mapex.prune import kept_count, prunable_groups

    evaluator = _Evaluator(params, model, task, on, params["sensitivity"]["recalibrate_bn"])
    fraction = params["sensitivity"]["fraction"]
    seed = params["seeds"][0]
    reference = evaluator.accuracy(copy.deepcopy(evaluator.model))
    channels = {name: conv.out_channels for name, conv in conv_layers(evaluator.model)}
    example = torch.zeros(1, 3, *experiment.input_size(params))
    records = []
    for group in prunable_groups(copy.deepcopy(evaluator.model), example):
        keep = {name: kept_count(channels[name], fraction) for name in group}
        for name, row_scores in scores.items():
            top1, _ = evaluator.pruned(row(params, name), row_scores, fraction, seed, keep=keep)
            records.append(
                {
                    "task": task_name,
                    "criterion": name,
                    "layer": group[0],
                    "convs": len(group),
                    "channels": channels[group[0]],
                    "val_top1": top1,
                    "drop": reference - top1,
                }
            )
        log.info("sensitivity %s: %s", group[0], {r["criterion"]: round(r["drop"], 3) for r in records[-len(scores) :]})
    return pd.DataFrame.from_records(records)


def samples_study(
    params: dict[str, Any], model: nn.Module, task: TaskData, on: torch.device, checkpoints: Path
) -> pd.DataFrame:
    """Pruning in multiple samples: scores from N images per class against scores from all of them
    (Spearman), and test top-1 of the model pruned with them, before and after the usual fine-tuning."""
    from mapex.data import balanced_subset
    from mapex.evaluate import accuracy
    from mapex.statistics import rank_correlation

    study = params["samples_study"]
    spec = row(params, study["criterion"])
    test_loader = experiment.loader(params, task.task_test, False, params["statistics"]["batch_size"], 0)
    reference = experiment.compute_scores(params, model, spec, task.task_train, 0, on)
    records = []
    for seed in study["seeds"]:
        for n in study["n_per_class"]:
            subset = balanced_subset(task.task_train, n, seed)
            scores = experiment.compute_scores(params, model, spec, subset, seed, on)
            pruned = copy.deepcopy(model).cpu()
            experiment.prune_task_model(params, pruned, spec, scores, study["ratio"], seed)
            before = accuracy(pruned.to(on), test_loader, on)["top1"]
            experiment.fit_model(
                params,
                pruned,
                params["finetune"],
                seed,
                task.task_train,
                task.task_val,
                checkpoints / f"n{n}_s{seed}",
                on,
            )
            records.append(
                {
                    "criterion": study["criterion"],
                    "n_per_class": n,
                    "seed": seed,
                    "spearman": rank_correlation(scores, reference),
                    "top1_before_finetune": before,
                    "top1": accuracy(pruned, test_loader, on)["top1"],
                }
            )
            log.info("samples study: N=%d seed=%d -> %s", n, seed, records[-1])
    return pd.DataFrame.from_records(records)


def response_map_arrays(params: dict[str, Any], task: TaskData, model: nn.Module) -> dict[str, Any]:
    """The response-maps figure's data: a batch of test images (RGB in [0, 1]) with their boxes
    (rows ``image, x0, y0, x1, y1``) and titles, and the mean responses of the top- and bottom-scored
    filters of the focus row (:data:`mapex.pipeline.FOCUS`) at two layers, a third and two thirds deep."""
    import numpy as np

    from mapex.data import balanced_subset
    from mapex.data.transforms import unnormalise
    from mapex.pipeline import FOCUS
    from mapex.statistics import response_maps

    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    scores = experiment.compute_scores(params, model, row(params, FOCUS), samples, seed, experiment.device(params))
    names = list(scores)
    layers = list(dict.fromkeys([names[len(names) // 3], names[(2 * len(names)) // 3]]))
    loader = experiment.loader(params, task.task_test, False, params["response_maps"]["images"], 0)
    images, labels, boxes = next(iter(loader))
    maps, titles = response_maps(model, images, scores, layers)
    box_rows = [[i, *box.tolist()] for i, image_boxes in enumerate(boxes) for box in image_boxes]
    test = task.task_test
    return {
        "images": unnormalise(images).numpy(),
        "boxes": np.asarray(box_rows, dtype=np.float32).reshape(-1, 5),
        "maps": maps.numpy(),
        "panel_titles": np.asarray(titles),
        "image_titles": np.asarray([test.names.get(test.classes[int(y)], test.classes[int(y)]) for y in labels]),
    }


def shape_key(filters_after: dict[str, int]) -> str:
    """A short id of a pruned architecture: equal for models whose every conv keeps the same count."""
    import hashlib

    text = ",".join(f"{name}={count}" for name, count in sorted(filters_after.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def latency_by_shape(
    params: dict[str, Any],
    runs: Iterable[dict[str, Any]],
    load_model: Callable[[str], nn.Module],
    reference: nn.Module,
    onnx_dir: Path | None = None,
) -> pd.DataFrame:
    """CPU latency of each distinct pruned architecture, once, interleaved with the unpruned model.

    ``runs`` are evaluation records (with ``run``, ``task``, ``seed``, ``criterion``, ``ratio``,
    ``filters_after``, ``macs``, ``params``); ``load_model(run)`` loads that run's model. Models
    of identical shapes have identical latency, so each shape is timed once: per repetition, one
    forward pass of the unpruned model, then one of the pruned model, alternating, and the median
    of each (``evaluate.latency_reps`` repetitions after warm-up), as deployed (BN folded). The
    speedup is their ratio in one process.

    With ``onnx_dir``, the shapes of the first task's first seed (one per row and ratio) are also
    exported to ``onnx_dir/<run>.onnx`` and timed under ONNX Runtime the same way (the other
    shapes, e.g. global ranking's per-seed ones, are not: each export costs seconds).
    """
    from mapex.evaluate import interleaved_latency
    from mapex.models import count_macs_and_params

    runs = list(runs)
    shapes: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run["criterion"] != "none":
            shapes.setdefault((run["ratio"], shape_key(run["filters_after"])), []).append(run)
    size = experiment.input_size(params)
    reference_macs, _ = count_macs_and_params(reference, size)
    exported = _representatives(runs) if onnx_dir is not None else set()
    reference_session = _session(reference, onnx_dir / "unpruned.onnx", size) if exported else None
    records = []
    for (ratio, key), members in sorted(shapes.items()):
        chosen = next((m for m in members if m["run"] in exported), members[0])
        model = load_model(chosen["run"])
        record: dict[str, Any] = {
            "ratio": ratio,
            "shape": key,
            "rows": ";".join(sorted({m["criterion"] for m in members})),
            "runs": len(members),
            "macs": chosen["macs"],
            "params": chosen["params"],
            "mac_reduction": reference_macs / chosen["macs"],
        }
        session = _session(model, onnx_dir / f"{chosen['run']}.onnx", size) if chosen["run"] in exported else None
        for batch in params["evaluate"]["latency_batches"]:
            record.update(
                _speed(
                    interleaved_latency(reference, model, batch, size, params["evaluate"]["latency_reps"]), "cpu", batch
                )
            )
            if session is not None:
                record.update(_speed(_ort_latency(reference_session, session, batch, size, params), "ort", batch))
        records.append(record)
        log.info("latency %s", record)
    return pd.DataFrame.from_records(records)


def _representatives(runs: list[dict[str, Any]]) -> set[str]:
    """The runs of the first task and first seed (one model per row and ratio)."""
    first = runs[0]
    return {run["run"] for run in runs if run["task"] == first["task"] and run["seed"] == first["seed"]}


def _session(model: nn.Module, path: Path, size: tuple[int, int]):
    import onnxruntime

    from mapex.evaluate import ort_options
    from mapex.export import export_onnx

    export_onnx(model, path, size)
    return onnxruntime.InferenceSession(str(path), ort_options(), providers=["CPUExecutionProvider"])


def _ort_latency(reference, session, batch: int, size: tuple[int, int], params: dict[str, Any]) -> tuple[float, float]:
    from mapex.evaluate import interleaved_latency_ort

    return interleaved_latency_ort(reference, session, batch, size, params["evaluate"]["latency_reps"])


def _speed(times: tuple[float, float], backend: str, batch: int) -> dict[str, float]:
    unpruned, pruned = times
    return {
        f"latency_ms_{backend}_b{batch}": pruned,
        f"latency_ms_{backend}_b{batch}_unpruned": unpruned,
        f"speedup_{backend}_b{batch}": unpruned / pruned,
    }
