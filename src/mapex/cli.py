"""The ``mapex`` command: one subcommand per pipeline stage.

Snakemake rules and dvc.yaml stages call these subcommands and nothing else, so the two
orchestrators run exactly the same code. This module owns arguments, paths, reading params and
writing result files; the domain work lives in the modules it calls.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mapex.io import UserError

log = logging.getLogger("mapex")


# ----------------------------------------------------------------------------- shared helpers
def _params(args: argparse.Namespace) -> dict[str, Any]:
    from mapex.config import load_params

    return load_params(args.params)


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _task(params: dict[str, Any], args: argparse.Namespace):
    """The data of ``--task`` (the first task where a stage takes none)."""
    from mapex.data.task import load_task_data
    from mapex.pipeline import task_classes, task_names

    name = getattr(args, "task", None) or task_names(params)[0]
    return name, load_task_data(params, args.data, task_classes(params, name))


def _task_model(params: dict[str, Any], task, model_path: str | Path):
    """The baseline at ``model_path``, made under these params, restricted to the task's classes."""
    from mapex.experiment import task_model
    from mapex.prune import load_pruned

    model, _ = load_pruned(model_path, expect={**_identity(params), "stage": "baseline"})
    return task_model(model, task)


def _identity(params: dict[str, Any]) -> dict[str, Any]:
    """What every model and scores file made under ``params`` carries in its meta."""
    from mapex.identity import data_fingerprint

    return {"arch": params["model"]["arch"], "stem": params["model"]["stem"], "data": data_fingerprint(params)}


def _save_fitted(model, result, out: Path, history: Path, meta: dict[str, Any]) -> None:
    """The best epoch's model and the per-epoch history; the resume checkpoints are then dropped."""
    import shutil

    import pandas as pd

    from mapex.experiment import checkpoint_dir
    from mapex.io import write_text
    from mapex.prune import save_pruned

    model.load_state_dict(result.best_state)
    model.to("cpu")
    write_text(history, pd.DataFrame(result.history).to_csv(index=False))
    save_pruned(model, out, {**meta, "best_epoch": result.best_epoch})
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


# ----------------------------------------------------------------------------- subcommands
def cmd_fetch(args: argparse.Namespace) -> None:
    from mapex.data import fetch

    dp = _params(args)["data"]
    root = fetch(dp["source"], dp["sha256"], Path(args.out))
    log.info("dataset ready at %s", root)


def cmd_data_check(args: argparse.Namespace) -> int:
    from mapex.data.check import check_dataset
    from mapex.data.formats import ProblemPolicy

    policy = ProblemPolicy.from_json(args.problems) if args.problems else None
    report = check_dataset(Path(args.path), args.format, policy=policy)
    print(report.format_text())
    if args.json:
        from mapex.io import write_json

        write_json(args.json, report.to_dict())
    return 1 if report.has_errors else 0


def cmd_train(args: argparse.Namespace) -> None:
    from mapex import experiment
    from mapex.evaluate import evaluate_model
    from mapex.identity import fingerprint
    from mapex.io import seed_everything, write_json
    from mapex.models import build_model

    params = _params(args)
    _, task = _task(params, args)
    mp, seed = params["model"], params["train"]["seed"]
    seed_everything(seed)  # the initial weights too
    model = build_model(mp["arch"], len(task.source_classes), stem=mp["stem"], pretrained=mp["pretrained"])
    on = experiment.device(params)
    result = experiment.fit_model(
        params,
        model,
        params["train"],
        seed,
        task.source_train,
        task.source_val,
        experiment.checkpoint_dir(args.out),
        on,
        source=fingerprint(mp),
        restart=args.restart,
    )
    _save_fitted(
        model,
        result,
        Path(args.out),
        Path(args.history),
        {**_identity(params), "classes": task.source_classes, "stage": "baseline", "seed": seed},
    )
    test_loader = experiment.loader(params, task.source_test, False, params["train"]["batch_size"], seed)
    metrics = evaluate_model(
        model,
        test_loader,
        on,
        experiment.input_size(params),
        latency_batches=tuple(params["evaluate"]["latency_batches"]),
        latency_reps=params["evaluate"]["latency_reps"],
    )
    metrics.update(
        best_epoch=result.best_epoch,
        n_classes=len(task.source_classes),
        skipped_samples=task.skipped,
        val_top1=max(h["val_top1"] for h in result.history),
        env=experiment.environment(on),
    )
    write_json(args.metrics, metrics)


def cmd_scores(args: argparse.Namespace) -> None:
    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.identity import file_fingerprint
    from mapex.pipeline import row
    from mapex.prune import save_scores

    params = _params(args)
    spec = row(params, args.criterion)
    task_name, task = _task(params, args)
    n = params["statistics"]["samples_per_class"]
    samples = balanced_subset(task.task_train, n, args.seed)
    model = _task_model(params, task, args.model)
    started = time.perf_counter()
    scores = experiment.compute_scores(params, model, spec, samples, args.seed, experiment.device(params))
    meta = {
        **_identity(params),
        "baseline": file_fingerprint(args.model),
        "num_classes": len(task.task_test.classes),
        "criterion": args.criterion,
        "base_criterion": spec.criterion,
        "options": spec.options,
        "task": task_name,
        "n_per_class": n,
        "n_images": len(samples.samples),
        "seed": args.seed,
        "seconds": time.perf_counter() - started,
    }
    save_scores(args.out, scores, meta)


def cmd_run(args: argparse.Namespace) -> None:
    """Prune, fine-tune and evaluate one run: one process, so the data and model load once."""
    from mapex import experiment
    from mapex.evaluate import accuracy, file_size
    from mapex.identity import file_fingerprint, fingerprint
    from mapex.io import write_json
    from mapex.pipeline import UNPRUNED, row
    from mapex.prune import load_scores

    params = _params(args)
    spec = row(params, args.criterion)
    task_name, task = _task(params, args)
    model = _task_model(params, task, args.model)
    on = experiment.device(params)
    report = None
    if spec.criterion != UNPRUNED:
        if args.scores is None:
            raise UserError(f"criterion '{args.criterion}' needs --scores")
        scores, _ = load_scores(
            args.scores,
            expect={
                **_identity(params),
                "baseline": file_fingerprint(args.model),
                "num_classes": len(task.task_test.classes),
                "task": task_name,
                "criterion": args.criterion,
                "options": spec.options,
            },
        )
        report = experiment.prune_task_model(params, model, spec, scores, args.ratio, args.seed)
    if spec.scratch:
        from mapex.models import reinitialise

        reinitialise(model, args.seed)
    test_loader = experiment.loader(params, task.task_test, False, params["finetune"]["batch_size"], 0)
    before = accuracy(model.to(on), test_loader, on)
    source = fingerprint([file_fingerprint(args.model), args.scores and file_fingerprint(args.scores), args.ratio])
    result = experiment.fit_model(
        params,
        model,
        params["finetune"],
        args.seed,
        task.task_train,
        task.task_val,
        experiment.checkpoint_dir(args.out),
        on,
        source=source,
        restart=args.restart,
    )
    meta = {
        **_identity(params),
        "classes": task.task_test.classes,
        "task": task_name,
        "criterion": args.criterion,
        "ratio": args.ratio,
        "seed": args.seed,
        "stage": "finetuned",
    }
    _save_fitted(model, result, Path(args.out), Path(args.history), meta)
    after = accuracy(model.to(on), test_loader, on, predictions=True)
    pruning = report.to_dict() if report else {}
    macs, n_params = (report.macs_after, report.params_after) if report else _count(model, params)
    write_json(
        args.metrics,
        {
            **after,
            **{key: meta[key] for key in ("task", "criterion", "ratio", "seed", "arch")},
            "base_criterion": spec.criterion,
            "options": spec.options,
            "global": spec.global_ranking,
            "scratch": spec.scratch,
            "val_top1": result.history[result.best_epoch - 1]["val_top1"],
            "best_epoch": result.best_epoch,
            "top1_before_finetune": before["top1"],
            "size_bytes": file_size(args.out),
            "params": n_params,
            "macs": macs,
            "params_removed": pruning.get("params_removed", 0.0),
            "macs_removed": pruning.get("macs_removed", 0.0),
            "filters_before": pruning.get("filters_before", {}),
            "filters_after": pruning.get("filters_after", {}),
            "env": experiment.environment(on),
        },
    )


def _count(model, params: dict[str, Any]) -> tuple[int, int]:
    """(MACs, params) of an unpruned model, counted as :func:`mapex.prune.prune_model` counts them."""
    import torch

    from mapex.experiment import input_size
    from mapex.prune import count_macs_and_params

    return count_macs_and_params(model.cpu(), torch.zeros(1, 3, *input_size(params)))


def _study(args: argparse.Namespace, section: str, study) -> None:
    """A study over the rows of params[section]: their scores on the first seed's N samples per class."""
    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.pipeline import row

    params = _params(args)
    task_name, task = _task(params, args)
    model = _task_model(params, task, args.model)
    on = experiment.device(params)
    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    scores = {
        name: experiment.compute_scores(params, model, row(params, name), samples, seed, on)
        for name in params[section]["criteria"]
    }
    _write_csv(args.out, study(params, model, task, task_name, scores, on))


def _write_csv(path: str | Path, table) -> None:
    from mapex.io import write_text

    write_text(path, table.to_csv(index=False))


def cmd_sanity(args: argparse.Namespace) -> None:
    from mapex.studies import sanity_study

    _study(args, "sanity", sanity_study)


def cmd_sensitivity(args: argparse.Namespace) -> None:
    from mapex.studies import sensitivity_study

    _study(args, "sensitivity", sensitivity_study)


def cmd_diagnose(args: argparse.Namespace) -> None:
    """Per conv layer: whole-image receptive fields, constant Map-EX weights, score spread per variant."""
    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.diagnostics import diagnose

    params = _params(args)
    _, task = _task(params, args)
    model = _task_model(params, task, args.model).to(experiment.device(params))
    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    batches = experiment.loader(params, samples, False, params["statistics"]["batch_size"], seed)
    _write_csv(args.out, diagnose(model, batches, experiment.input_size(params)).reset_index())


def cmd_samples(args: argparse.Namespace) -> None:
    """Pruning in multiple samples (on the first task)."""
    import shutil

    from mapex import experiment, studies

    params = _params(args)
    _, task = _task(params, args)
    checkpoints = experiment.checkpoint_dir(args.out)  # a killed study resumes its fine-tuning runs
    table = studies.samples_study(
        params, _task_model(params, task, args.model), task, experiment.device(params), checkpoints
    )
    _write_csv(args.out, table)
    shutil.rmtree(checkpoints, ignore_errors=True)


def cmd_latency(args: argparse.Namespace) -> None:
    """CPU latency of every distinct pruned architecture of the study, against the unpruned model."""
    from mapex import studies
    from mapex.io import read_json
    from mapex.pipeline import run_ids

    params = _params(args)
    _, task = _task(params, args)
    runs = []
    for run in run_ids(params):
        record = read_json(Path(args.runs) / f"{run}.json")
        runs.append({**record, "run": run})
    table = studies.latency_by_shape(
        params,
        runs,
        lambda run: _model_of(args.models, run, params),
        _task_model(params, task, args.model),
        Path(args.onnx) if args.onnx else None,
    )
    _write_csv(args.out, table)


def _model_of(models_dir: str | Path, run: str, params: dict[str, Any]):
    from mapex.prune import load_pruned

    return load_pruned(Path(models_dir) / f"{run}.pt", expect={**_identity(params), "stage": "finetuned"})[0]


def cmd_export(args: argparse.Namespace) -> None:
    from mapex.experiment import input_size
    from mapex.export import export_onnx
    from mapex.prune import load_pruned

    model, _ = load_pruned(args.model)
    export_onnx(model, args.out, input_size(_params(args)))


def cmd_report(args: argparse.Namespace) -> None:
    from mapex import report
    from mapex.pipeline import FOCUS, run_ids, task_names

    params = _params(args)
    tasks = task_names(params)
    report.build_report(
        [Path(args.runs) / f"{run}.json" for run in run_ids(params)],
        Path(args.out),
        focus_row=FOCUS,
        sanity_csvs=[Path(args.sanity) / f"{task}.csv" for task in tasks] if args.sanity else [],
        sensitivity_csvs=[Path(args.sensitivity) / f"{task}.csv" for task in tasks] if args.sensitivity else [],
        latency_csv=args.latency,
        samples_csv=args.samples,
        response_maps=args.response_maps,
        history=[args.history] if args.history else None,
    )


def cmd_response_maps(args: argparse.Namespace) -> None:
    """Mean responses of the top- and bottom-scored Map-EX filters of a few layers, for the figure."""
    import numpy as np

    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.pipeline import FOCUS, row
    from mapex.statistics import response_maps

    params = _params(args)
    _, task = _task(params, args)
    model = _task_model(params, task, args.model)
    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    scores = experiment.compute_scores(params, model, row(params, FOCUS), samples, seed, experiment.device(params))
    layers = _display_layers(list(scores))
    loader = experiment.loader(params, task.task_test, False, params["response_maps"]["images"], 0)
    images, labels, boxes = next(iter(loader))
    maps, titles = response_maps(model, images, scores, layers)
    box_rows = [[i, *box.tolist()] for i, image_boxes in enumerate(boxes) for box in image_boxes]
    names = task.task_test.names
    _save_npz(
        args.out,
        images=_unnormalise(images).numpy(),
        boxes=np.asarray(box_rows, dtype=np.float32).reshape(-1, 5),
        maps=maps.numpy(),
        panel_titles=np.asarray(titles),
        image_titles=np.asarray(
            [names.get(task.task_test.classes[int(y)], task.task_test.classes[int(y)]) for y in labels]
        ),
    )


def _display_layers(conv_names: list[str]) -> list[str]:
    """Two conv layers to show: at a third and two thirds of the network's depth."""
    return list(dict.fromkeys([conv_names[len(conv_names) // 3], conv_names[(2 * len(conv_names)) // 3]]))


def _unnormalise(images):
    import torch

    from mapex.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def _save_npz(path, **arrays) -> None:
    import numpy as np

    from mapex.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


# ----------------------------------------------------------------------------- parser
def _add(sub, name: str, func: Callable, help: str, *options: tuple[str, dict]) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    for flag, kwargs in options:
        parser.add_argument(flag, **kwargs)
    return parser


PARAMS = ("--params", {"default": "params.yaml", "help": "params file (default: params.yaml)"})
DATA = ("--data", {"required": True, "help": "fetched dataset folder"})
OUT = ("--out", {"required": True, "help": "output file"})
MODEL = ("--model", {"required": True, "help": "model file"})
SEED = ("--seed", {"type": int, "required": True})
THREADS = ("--threads", {"type": int, "default": None, "help": "CPU threads for torch (default: all)"})
TASK = ("--task", {"default": None, "help": "task name from data.tasks (default: the first)"})
CRITERION = ("--criterion", {"required": True, "help": "a row: a registered criterion or a key of variants"})
RESTART = ("--restart", {"action": "store_true", "help": "discard a checkpoint left by an earlier run"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mapex", description="Task-driven CNN pruning (Map-EX) pipeline stages.")
    parser.add_argument("--log", help="also append log lines to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(
        sub,
        "fetch",
        cmd_fetch,
        "Download (or copy) the dataset archive, verify its sha256, extract atomically.",
        PARAMS,
        ("--out", {"required": True, "help": "dataset folder to create"}),
    )

    data = sub.add_parser("data", help="Dataset tools.", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _add(
        data_sub,
        "check",
        cmd_data_check,
        "Validate a box-labelled dataset and print a summary of it.",
        ("path", {"help": "dataset root folder"}),
        ("--format", {"required": True, "choices": ["tiny-imagenet", "voc", "coco", "yolo", "csv"]}),
        ("--problems", {"help": 'JSON policy per problem kind, e.g. \'{"no-box": "error"}\''}),
        ("--json", {"help": "also write the summary as JSON to this file"}),
    )

    _add(
        sub,
        "train",
        cmd_train,
        "Train the baseline on all source classes; evaluate it on the test split.",
        PARAMS,
        DATA,
        OUT,
        THREADS,
        RESTART,
        ("--metrics", {"required": True}),
        ("--history", {"required": True}),
    )
    _add(
        sub,
        "scores",
        cmd_scores,
        "Per-filter scores of one criterion over N task samples per class.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        SEED,
        THREADS,
        TASK,
        CRITERION,
    )
    _add(
        sub,
        "run",
        cmd_run,
        "Prune the task model by a criterion's scores, fine-tune it, evaluate it on test.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        SEED,
        THREADS,
        TASK,
        CRITERION,
        RESTART,
        ("--ratio", {"type": float, "required": True}),
        ("--scores", {"default": None}),
        ("--history", {"required": True}),
        ("--metrics", {"required": True, "help": "evaluation JSON to write"}),
    )
    _add(
        sub,
        "sanity",
        cmd_sanity,
        "Sanity check: top- vs bottom-scored vs random filters kept, before fine-tuning.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
        TASK,
    )
    _add(
        sub,
        "sensitivity",
        cmd_sensitivity,
        "Per-layer sensitivity: one group pruned at a time, per criterion.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
        TASK,
    )
    _add(
        sub,
        "diagnose",
        cmd_diagnose,
        "Why Map-EX may rank by noise: per-layer field coverage and score spread.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
        TASK,
    )
    _add(
        sub,
        "samples",
        cmd_samples,
        "Pruning in multiple samples: score rank correlation and accuracy against N.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
    )
    _add(
        sub,
        "response-maps",
        cmd_response_maps,
        "Response maps of the top/bottom Map-EX filters on a few test images.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
    )
    _add(
        sub,
        "latency",
        cmd_latency,
        "CPU latency of each distinct pruned architecture against the unpruned model.",
        PARAMS,
        DATA,
        MODEL,
        OUT,
        THREADS,
        ("--runs", {"required": True, "help": "folder of evaluation files"}),
        ("--models", {"required": True, "help": "folder of fine-tuned models"}),
        (
            "--onnx",
            {
                "default": None,
                "help": "also export the first task's first-seed models here and time them under ONNX Runtime",
            },
        ),
    )
    _add(sub, "export", cmd_export, "Export a (pruned) model to ONNX, batch axis dynamic.", PARAMS, MODEL, OUT)
    _add(
        sub,
        "report",
        cmd_report,
        "Tables and figures from the evaluation files the params ask for.",
        PARAMS,
        ("--runs", {"required": True, "help": "folder of evaluation files"}),
        ("--out", {"required": True, "help": "results folder"}),
        ("--sanity", {"default": None, "help": "folder of the sanity study's <task>.csv files"}),
        ("--sensitivity", {"default": None, "help": "folder of the sensitivity study's <task>.csv files"}),
        ("--latency", {"default": None}),
        ("--samples", {"default": None}),
        ("--response-maps", {"default": None}),
        ("--history", {"default": None}),
    )
    return parser


def _configure_logging(verbose: bool, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.log)
    if getattr(args, "threads", None):
        _setup_threads(args.threads)
    try:
        return args.func(args) or 0
    except UserError as err:
        log.error("%s", err)  # one line, on stderr and in the stage's log
        return 2
