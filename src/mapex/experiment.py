"""The steps of one run, shared by the stages and the studies: task data and model, scores, pruning, fitting.

Each function takes the validated params and the objects it works on; writing result files is the
stages' job (:mod:`mapex.stages`). A *row* (:class:`mapex.pipeline.Row`) names the criterion, its options and the
ranking scope, so every consumer builds the same criterion for the same row.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mapex.data.task import TaskData
from mapex.data.types import BoxIndex
from mapex.io import UserError
from mapex.pipeline import Row

log = logging.getLogger("mapex")
CHECKPOINT_ROOT = Path("work/checkpoints")


def load_task(params: dict[str, Any], data_dir: str | Path, name: str | None = None) -> tuple[str, TaskData]:
    """The task called ``name`` (the first of ``data.tasks`` when None) and its data."""
    from mapex.data.task import load_task_data
    from mapex.pipeline import task_classes, task_names

    name = name or task_names(params)[0]
    return name, load_task_data(params, data_dir, task_classes(params, name))


def load_task_model(params: dict[str, Any], task: TaskData, model_path: str | Path) -> nn.Module:
    """The baseline at ``model_path``, made under these params, restricted to the task's classes."""
    from mapex.prune import load_pruned

    model, _ = load_pruned(model_path, expect={**model_identity(params), "stage": "baseline"})
    return task_model(model, task)


def model_identity(params: dict[str, Any]) -> dict[str, Any]:
    """What every model and scores file made under ``params`` carries in its meta."""
    from mapex.identity import data_fingerprint

    return {"arch": params["model"]["arch"], "stem": params["model"]["stem"], "data": data_fingerprint(params)}


def scores_identity(
    params: dict[str, Any], baseline: str | Path, task: TaskData, task_name: str, row_name: str, spec: Row
) -> dict[str, Any]:
    """What a scores file must carry to be used for a run: the baseline, task and row it was computed for."""
    from mapex.identity import file_fingerprint

    return {
        **model_identity(params),
        "baseline": file_fingerprint(baseline),
        "num_classes": len(task.task_test.classes),
        "task": task_name,
        "criterion": row_name,
        "options": spec.options,
    }


def input_size(params: dict[str, Any]) -> tuple[int, int]:
    size = params["data"]["image_size"]
    return (size, size)


def loader(
    params: dict[str, Any],
    index: BoxIndex,
    train: bool,
    batch_size: int,
    seed: int,
    world=None,
    on: torch.device | None = None,
    boxes: bool = True,
    crop_padding: int = 4,
):
    """The project's loader over ``index`` (augmented and shuffled if ``train``, cropped with
    ``crop_padding``); with a ``world``
    (:class:`mapex.distributed.World`) of several processes, this process's share of each batch.
    ``on`` a GPU: the images are kept and the batches made there (:func:`mapex.data.make_loader`)."""
    from mapex.data import make_loader

    return make_loader(
        index,
        size=params["data"]["image_size"],
        train=train,
        batch_size=batch_size,
        seed=seed,
        num_workers=params["workers"],
        cache=True,
        rank=world.rank if world else 0,
        world=world.size if world else 1,
        boxes=boxes,
        device=on,
        crop_padding=crop_padding,
    )


def device(params: dict[str, Any]) -> torch.device:
    from mapex.io import pick_device

    chosen = pick_device(params["device"])
    log.info("device: %s", chosen)
    return chosen


def task_model(model: nn.Module, task: TaskData) -> nn.Module:
    """The baseline restricted to the task's classes (its logits are the baseline's task logits)."""
    from mapex.models import restrict_classes

    return restrict_classes(model, task.task_class_indices)


def make_criterion(spec: Row, seed: int, scores: dict | None = None):
    """The criterion of ``spec`` with its options (each criterion takes what it needs: ``random`` the seed)."""
    from mapex.criteria import criterion_from_params

    return criterion_from_params(spec.criterion, spec.options, seed, scores)


def compute_scores(
    params: dict[str, Any], model: nn.Module, spec: Row, index: BoxIndex, seed: int, on: torch.device
) -> dict[str, torch.Tensor]:
    """Per-filter scores of ``spec``'s criterion over the images of ``index`` (data-free ones ignore them)."""
    criterion = make_criterion(spec, seed)
    batches = None
    if criterion.needs_data:
        batches = loader(params, index, False, params["statistics"]["batch_size"], seed)
        model.to(on)
    from mapex.io import autocast

    with autocast(on, params["amp"]):
        scores = criterion.compute(model, batches, input_size(params))
    return {name: value.cpu() for name, value in scores.items()}


def prune_task_model(
    params: dict[str, Any],
    model: nn.Module,
    spec: Row,
    scores: dict,
    ratio: float,
    seed: int,
    keep: dict[str, int] | None = None,
):
    """Physically prune ``model`` in place by ``spec``'s scores; returns Torch-Pruning's report.

    ``keep`` fixes the kept filters per conv instead of ``ratio`` (see :func:`mapex.prune.prune_model`).
    """
    from mapex.prune import prune_model

    criterion = make_criterion(spec, seed, scores=scores)
    example = torch.zeros(1, 3, *input_size(params))
    return prune_model(
        model.cpu(),
        criterion,
        ratio,
        example,
        global_pruning=spec.global_ranking,
        round_to=params["prune"].get("round_to"),
        keep=keep,
    )


def train_config(section: dict[str, Any], seed: int, amp: bool = False):
    from mapex.train import TrainConfig

    # Every other fit key of the schema is a TrainConfig field; nproc is the launcher's, the seed the caller's.
    fields = {key: value for key, value in section.items() if key not in ("nproc", "seed")}
    return TrainConfig(**fields, seed=seed, amp=amp)


def fit_model(
    params: dict[str, Any],
    model: nn.Module,
    section: dict[str, Any],
    seed: int,
    train_index: BoxIndex,
    val_index: BoxIndex,
    checkpoint_dir: Path,
    on: torch.device,
    source: str | None = None,
    restart: bool = False,
):
    """Train with one params section (``train`` or ``finetune``); the best epoch is chosen on validation.

    A checkpoint in ``checkpoint_dir`` is resumed only if written for the same data settings and
    ``source`` (a fingerprint of what ``model`` starts from); ``restart`` discards it instead.
    """
    from mapex import distributed
    from mapex.identity import data_fingerprint
    from mapex.train import fit

    config = train_config(section, seed, params["amp"])
    world = distributed.current()
    if config.batch_size % world.size:
        raise UserError(f"batch_size {config.batch_size} is not a multiple of nproc {world.size}")
    train_loader = loader(
        params, train_index, True, config.batch_size, seed, world, on, boxes=False, crop_padding=config.crop_padding
    )
    val_loader = loader(params, val_index, False, config.batch_size, seed, world, on, boxes=False)
    return fit(
        model,
        train_loader,
        val_loader,
        config,
        checkpoint_dir,
        on,
        identity={"data": data_fingerprint(params), "source": source},
        restart=restart,
    )


def checkpoint_dir(out: str | Path) -> Path:
    """Resume state lives apart from the outputs, so neither Snakemake nor DVC deletes it before a rerun."""
    return CHECKPOINT_ROOT / Path(out).with_suffix("").as_posix().replace("/", "__")


def environment(on: torch.device) -> dict[str, Any]:
    """What a number depends on besides the config and seed: CPU, library versions, threads, device.

    Results are bit-identical only for the same values here (see README, "Reproducibility").
    """
    import hashlib
    from importlib.metadata import version

    from mapex.io import cpu_info

    flags = cpu_info("flags")
    return {
        "cpu": cpu_info("model name") or platform.processor() or platform.machine(),
        "cpu_flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:12] if flags else None,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(on),
        "cuda": torch.cuda.get_device_name(on) if on.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "torch_pruning": version("torch-pruning"),
    }
