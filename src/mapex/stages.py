"""One function per pipeline stage: the work behind each ``mapex`` subcommand.

Each stage reads the params file and its input files, calls the domain modules (data, models,
criteria, prune, train, evaluate, studies, report) and writes its outputs atomically. Its keyword
arguments are the subcommand's options (``mapex.cli`` maps one onto the other), so a stage can
also be called from Python. Snakemake rules and dvc.yaml stages call the subcommands and nothing
else, so the two orchestrators run exactly the same code.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from mapex import distributed
from mapex.config import load_params, with_train_seed
from mapex.io import UserError, read_json, write_json, write_rows, write_text

log = logging.getLogger("mapex")

FITTING = {"train": "train", "run": "finetune"}
"""The stages that fit a model, with the params section (and its ``nproc``) they fit with."""


def processes(stage_name: str, params: str) -> int:
    """How many processes the stage asks for: its section's ``nproc`` (:mod:`mapex.distributed`), else 1."""

    section = FITTING.get(stage_name)
    return load_params(params)[section]["nproc"] if section else 1


def fetch(params: str, out: str) -> None:
    """Download (or copy) the dataset archive, verify its sha256, extract it atomically."""
    from mapex.data import fetch as fetch_archive

    data = load_params(params)["data"]
    root = fetch_archive(data["source"], data["sha256"], Path(out))
    log.info("dataset ready at %s", root)


def data_check(path: str, format: str, problems: str | None, json: str | None) -> int:
    """Print what the dataset holds and what is wrong with it; 1 if the policy makes any problem an error."""
    from mapex.data.check import check_dataset
    from mapex.data.formats import ProblemPolicy

    policy = ProblemPolicy.from_json(problems) if problems else None
    report = check_dataset(Path(path), format, policy=policy)
    print(report.format_text())
    if json:
        write_json(json, report.to_dict())
    return 1 if report.has_errors else 0


def train(params: str, data: str, out: str, metrics: str, history: str, restart: bool, train_seed: int | None) -> None:
    """Train the baseline on all source classes; evaluate it on the source test split."""
    from mapex import experiment
    from mapex.evaluate import evaluate_model
    from mapex.identity import fingerprint
    from mapex.io import seed_everything
    from mapex.models import build_model

    config = with_train_seed(load_params(params), train_seed)
    _, task = experiment.load_task(config, data)
    model_params, seed = config["model"], config["train"]["seed"]
    seed_everything(seed)  # the initial weights too
    model = build_model(
        model_params["arch"],
        len(task.source_classes),
        stem=model_params["stem"],
        pretrained=model_params["pretrained"],
        zero_init_residual=model_params["zero_init_residual"],
    )
    on = experiment.device(config)
    world = distributed.start(on)
    result = experiment.fit_model(
        config,
        model,
        config["train"],
        seed,
        task.source_train,
        task.source_val,
        experiment.checkpoint_dir(out),
        on,
        source=fingerprint(model_params),
        restart=restart,
    )
    distributed.stop()
    if not world.main:
        return  # rank 0 writes the model and evaluates it
    meta = {**experiment.model_identity(config), "classes": task.source_classes, "stage": "baseline", "seed": seed}
    save_fitted(model, result, Path(out), Path(history), meta)
    test_loader = experiment.loader(config, task.source_test, False, config["train"]["batch_size"], seed)
    evaluation = evaluate_model(
        model,
        test_loader,
        on,
        experiment.input_size(config),
        latency_batches=tuple(config["evaluate"]["latency_batches"]),
        latency_reps=config["evaluate"]["latency_reps"],
    )
    evaluation.update(
        best_epoch=result.best_epoch,
        n_classes=len(task.source_classes),
        skipped_samples=task.skipped,
        val_top1=result.history[result.best_epoch - 1]["val_top1"],
        env=experiment.environment(on),
    )
    write_json(metrics, evaluation)


def scores(params: str, data: str, model: str, out: str, seed: int, task: str | None, criterion: str) -> None:
    """Per-filter scores of one row over N task samples per class."""
    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.pipeline import row
    from mapex.prune import save_scores

    config = load_params(params)
    spec = row(config, criterion)
    task_name, task_data = experiment.load_task(config, data, task)
    n = config["statistics"]["samples_per_class"]
    samples = balanced_subset(task_data.task_train, n, seed)
    task_model = experiment.load_task_model(config, task_data, model)
    started = time.perf_counter()
    computed = experiment.compute_scores(config, task_model, spec, samples, seed, experiment.device(config))
    meta = {
        **experiment.scores_identity(config, model, task_data, task_name, criterion, spec),
        "base_criterion": spec.criterion,
        "n_per_class": n,
        "n_images": len(samples.samples),
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    save_scores(out, computed, meta)


def run(
    params: str,
    data: str,
    model: str,
    out: str,
    seed: int,
    task: str | None,
    criterion: str,
    ratio: float,
    scores: str | None,
    history: str,
    metrics: str,
    restart: bool,
) -> None:
    """Prune the task model by a row's scores (the unpruned row: keep it whole), fine-tune it, evaluate it
    on the task's test split: one process, so the data and the model load once."""
    from mapex import experiment
    from mapex.evaluate import accuracy, file_size
    from mapex.identity import file_fingerprint, fingerprint
    from mapex.models import count_macs_and_params, reinitialise
    from mapex.pipeline import UNPRUNED, row
    from mapex.prune import load_scores

    config = load_params(params)
    spec = row(config, criterion)
    task_name, task_data = experiment.load_task(config, data, task)
    task_model = experiment.load_task_model(config, task_data, model)
    on = experiment.device(config)
    world = distributed.start(on)  # before any tensor goes to a GPU: each process to its own
    report = None
    if spec.criterion != UNPRUNED:
        if scores is None:
            raise UserError(f"criterion '{criterion}' needs --scores")
        expect = experiment.scores_identity(config, model, task_data, task_name, criterion, spec)
        computed, _ = load_scores(scores, expect=expect)
        report = experiment.prune_task_model(config, task_model, spec, computed, ratio, seed)
    if spec.scratch:
        reinitialise(task_model, seed)
    test_loader = experiment.loader(config, task_data.task_test, False, config["finetune"]["batch_size"], 0)
    before = accuracy(task_model.to(on), test_loader, on)
    source = fingerprint([file_fingerprint(model), scores and file_fingerprint(scores), ratio])
    result = experiment.fit_model(
        config,
        task_model,
        config["finetune"],
        seed,
        task_data.task_train,
        task_data.task_val,
        experiment.checkpoint_dir(out),
        on,
        source=source,
        restart=restart,
    )
    distributed.stop()
    if not world.main:
        return  # rank 0 writes the model and evaluates it
    meta = {
        **experiment.model_identity(config),
        "classes": task_data.task_test.classes,
        "task": task_name,
        "criterion": criterion,
        "ratio": ratio,
        "seed": seed,
        "stage": "finetuned",
    }
    save_fitted(task_model, result, Path(out), Path(history), meta)
    after = accuracy(task_model.to(on), test_loader, on, predictions=True)
    pruning = report.to_dict() if report else {}
    counted = (report.macs_after, report.params_after) if report else None
    macs, n_params = counted or count_macs_and_params(task_model, experiment.input_size(config))
    record = {
        **after,
        **{key: meta[key] for key in ("task", "criterion", "ratio", "seed", "arch")},
        "base_criterion": spec.criterion,
        "options": spec.options,
        "global": spec.global_ranking,
        "scratch": spec.scratch,
        "val_top1": result.history[result.best_epoch - 1]["val_top1"],
        "best_epoch": result.best_epoch,
        "top1_before_finetune": before["top1"],
        "size_bytes": file_size(out),
        "params": n_params,
        "macs": macs,
        "params_removed": pruning.get("params_removed", 0.0),
        "macs_removed": pruning.get("macs_removed", 0.0),
        "filters_before": pruning.get("filters_before", {}),
        "filters_after": pruning.get("filters_after", {}),
        "env": experiment.environment(on),
    }
    write_json(metrics, record)


def save_fitted(model, result, out: Path, history: Path, meta: dict[str, Any]) -> None:
    """The best epoch's model and the per-epoch history; the resume checkpoints are then dropped."""
    from mapex.experiment import checkpoint_dir
    from mapex.prune import save_pruned

    model.load_state_dict(result.best_state)
    model.to("cpu")
    write_rows(history, result.history)
    save_pruned(model, out, {**meta, "best_epoch": result.best_epoch})
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def sanity(params: str, data: str, model: str, out: str, task: str | None, train_seed: int | None) -> None:
    """Sanity check: top- vs bottom-scored vs random filters kept, before fine-tuning."""
    from mapex import studies

    config = with_train_seed(load_params(params), train_seed)
    _write_csv(out, studies.scored_study(config, data, model, task, "sanity", studies.sanity_study))


def sensitivity(params: str, data: str, model: str, out: str, task: str | None) -> None:
    """Per-layer sensitivity: one group pruned at a time, per criterion."""
    from mapex import studies

    _write_csv(
        out, studies.scored_study(load_params(params), data, model, task, "sensitivity", studies.sensitivity_study)
    )


def diagnose(params: str, data: str, model: str, out: str, task: str | None) -> None:
    """Per conv layer: whole-image receptive fields, constant Map-EX weights, score spread per variant."""
    from mapex import experiment
    from mapex.data import balanced_subset
    from mapex.diagnostics import diagnose as diagnose_layers

    config = load_params(params)
    _, task_data = experiment.load_task(config, data, task)
    task_model = experiment.load_task_model(config, task_data, model).to(experiment.device(config))
    seed = config["seeds"][0]
    samples = balanced_subset(task_data.task_train, config["statistics"]["samples_per_class"], seed)
    batches = experiment.loader(config, samples, False, config["statistics"]["batch_size"], seed)
    _write_csv(out, diagnose_layers(task_model, batches, experiment.input_size(config)).reset_index())


def samples(params: str, data: str, model: str, out: str) -> None:
    """Pruning in multiple samples (on the first task): rank correlation and accuracy against N."""
    from mapex import experiment, studies

    config = load_params(params)
    _, task_data = experiment.load_task(config, data)
    checkpoints = experiment.checkpoint_dir(out)  # a killed study resumes its fine-tuning runs
    task_model = experiment.load_task_model(config, task_data, model)
    _write_csv(out, studies.samples_study(config, task_model, task_data, experiment.device(config), checkpoints))
    shutil.rmtree(checkpoints, ignore_errors=True)


def response_maps(params: str, data: str, model: str, out: str) -> None:
    """Mean responses of the top- and bottom-scored Map-EX filters of two layers, for the figure."""
    import numpy as np

    from mapex import experiment, studies
    from mapex.io import atomic_path

    config = load_params(params)
    _, task_data = experiment.load_task(config, data)
    arrays = studies.response_map_arrays(config, task_data, experiment.load_task_model(config, task_data, model))
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def latency(params: str, data: str, model: str, out: str, runs: str, models: str, onnx: str | None) -> None:
    """CPU latency of every distinct pruned architecture of the study, against the unpruned model."""
    from mapex import experiment, studies
    from mapex.pipeline import run_ids
    from mapex.prune import load_pruned

    config = load_params(params)
    _, task_data = experiment.load_task(config, data)
    records = [{**read_json(Path(runs) / f"{run}.json"), "run": run} for run in run_ids(config)]
    expect = {**experiment.model_identity(config), "stage": "finetuned"}
    table = studies.latency_by_shape(
        config,
        records,
        lambda run: load_pruned(Path(models) / f"{run}.pt", expect=expect)[0],
        experiment.load_task_model(config, task_data, model),
        Path(onnx) if onnx else None,
    )
    _write_csv(out, table)


def export(params: str, model: str, out: str) -> None:
    """Export a (pruned) model to ONNX, batch axis dynamic."""
    from mapex import experiment
    from mapex.export import export_onnx
    from mapex.prune import load_pruned

    loaded, _ = load_pruned(model)
    export_onnx(loaded, out, experiment.input_size(load_params(params)))


def report(
    params: str,
    runs: str,
    out: str,
    sanity: str | None,
    sensitivity: str | None,
    latency: str | None,
    samples: str | None,
    response_maps: str | None,
    history: str | None,
) -> None:
    """Tables and figures from the evaluation files the params ask for."""
    from mapex.pipeline import FOCUS, run_ids, task_names
    from mapex.report import build_report

    config = load_params(params)
    tasks = task_names(config)
    build_report(
        [Path(runs) / f"{run}.json" for run in run_ids(config)],
        Path(out),
        focus_row=FOCUS,
        sanity_csvs=_sanity_csvs(config, Path(sanity), tasks) if sanity else None,
        sensitivity_csvs=[Path(sensitivity) / f"{task}.csv" for task in tasks] if sensitivity else [],
        latency_csv=latency,
        samples_csv=samples,
        response_maps=response_maps,
        history=[history] if history else None,
    )


def _sanity_csvs(config: dict[str, Any], folder: Path, tasks: list[str]) -> dict[str, list[Path]]:
    """The sanity check's CSVs per baseline: the pipeline's own in ``folder``, each further one
    (``sanity.extra_baseline_seeds``) in ``folder/seed<train.seed>``."""
    folders = {config["train"]["seed"]: folder}
    folders.update({seed: folder / f"seed{seed}" for seed in config["sanity"]["extra_baseline_seeds"]})
    return {f"seed {seed}": [path / f"{task}.csv" for task in tasks] for seed, path in folders.items()}


def _write_csv(path: str | Path, table) -> None:
    write_text(path, table.to_csv(index=False))
