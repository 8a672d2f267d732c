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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mapex.io import UserError
from mapex.pipeline import ratio_tag

log = logging.getLogger("mapex")
CHECKPOINT_ROOT = Path("work/checkpoints")


# ----------------------------------------------------------------------------- shared helpers
def _params(args: argparse.Namespace) -> dict[str, Any]:
    from mapex.config import load_params

    return load_params(args.params)


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _device(params: dict[str, Any]):
    from mapex.io import pick_device

    device = pick_device(params["device"])
    log.info("device: %s", device)
    return device


@dataclass
class TaskData:
    """The indexes every stage derives from params the same way."""

    source_classes: list[str]
    source_train: Any
    source_val: Any
    source_test: Any
    task_train: Any
    task_val: Any
    task_test: Any
    skipped: dict[str, int]  # dataset problems skipped by policy, per kind (both splits)

    @property
    def task_class_indices(self) -> list[int]:
        return [self.source_classes.index(c) for c in self.task_test.classes]


def _test_split_name(fmt: str) -> str:
    return "val" if fmt == "tiny-imagenet" else "test"


def _read_split(root: Path, data_params: dict[str, Any], split: str, problems):
    """One split of the dataset; problems the policy skips are recorded in ``problems``."""
    from mapex import data

    if data_params["format"] == "tiny-imagenet":
        return data.read_dataset(root, "tiny-imagenet", split)
    from mapex.data.formats import read_formatted

    return read_formatted(root, data_params["format"], split, problems=problems, label_rule=data_params["label_rule"])


def _skipped_per_kind(problems) -> dict[str, int]:
    """Log each skipped sample once (a reader may see it for both splits) and count them per kind."""
    unique = {(p.kind, p.file): p.detail for p in problems.problems}
    for (kind, file), detail in sorted(unique.items()):
        log.warning("skipped %s: %s (%s)", file, kind, detail)
    counts: dict[str, int] = {}
    for kind, _ in unique:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _capped(index, cap: int | None, seed: int):
    from mapex.data import balanced_subset

    if cap is None:
        return index
    return balanced_subset(index, min(cap, min(index.class_counts().values())), seed)


def load_task_data(params: dict[str, Any], data_dir: str | Path) -> TaskData:
    """Source splits (all classes) and task splits (the configured subset), from one recipe.

    The validation carve-out is made once on the source training images and then restricted to
    the task classes, so no task validation image was seen by the baseline's training.
    """
    from mapex.data import select_classes, stratified_split
    from mapex.data.check import require_images

    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found (run `mapex fetch` first)")
    dp = params["data"]
    seed = params["train"]["seed"]
    from mapex.data.formats import ProblemLog, ProblemPolicy

    problems = ProblemLog(policy=ProblemPolicy.from_dict(dp["problems"]))
    train_all = _capped(_read_split(root, dp, "train", problems), dp["max_per_class"], seed)
    test = _capped(_read_split(root, dp, _test_split_name(dp["format"]), problems), dp["max_test_per_class"], seed)
    source_train, source_val = stratified_split(train_all, dp["val_fraction"], seed)
    task = dp["task_classes"]
    splits = TaskData(
        source_classes=list(train_all.classes),
        source_train=source_train,
        source_val=source_val,
        source_test=test,
        task_train=select_classes(source_train, task),
        task_val=select_classes(source_val, task),
        task_test=select_classes(test, task),
        skipped=_skipped_per_kind(problems),
    )
    require_images({"training": source_train, "validation": source_val, "test": test,
                    "task training": splits.task_train, "task validation": splits.task_val,
                    "task test": splits.task_test})
    return splits


def _loader(params: dict[str, Any], index, train: bool, batch_size: int, seed: int):
    from mapex.data import make_loader

    return make_loader(
        index,
        size=params["data"]["image_size"],
        train=train,
        batch_size=batch_size,
        seed=seed,
        num_workers=params["workers"],
        cache=True,
    )


def _input_size(params: dict[str, Any]) -> tuple[int, int]:
    size = params["data"]["image_size"]
    return (size, size)


def _train_config(section: dict[str, Any], seed: int):
    from mapex.train import TrainConfig

    keys = ("epochs", "batch_size", "lr", "weight_decay", "momentum", "label_smoothing", "max_steps_per_epoch")
    return TrainConfig(**{k: section[k] for k in keys}, seed=seed)


def _checkpoint_dir(out: Path) -> Path:
    """Resume state lives apart from the outputs, so neither Snakemake nor DVC deletes it before a rerun."""
    return CHECKPOINT_ROOT / Path(out).with_suffix("").as_posix().replace("/", "__")


def _fit(params, model, section, seed, train_index, val_index, checkpoint_dir: Path, source: str, restart=False):
    """Train with one params section (``train`` or ``finetune``); the best epoch is chosen on validation.

    ``source`` fingerprints what ``model`` starts from: a checkpoint of another start is not resumed."""
    from mapex.identity import data_fingerprint
    from mapex.train import fit

    config = _train_config(section, seed)
    train_loader = _loader(params, train_index, True, config.batch_size, seed)
    val_loader = _loader(params, val_index, False, config.batch_size, seed)
    return fit(model, train_loader, val_loader, config, checkpoint_dir, _device(params),
               identity={"data": data_fingerprint(params), "source": source}, restart=restart)


def _fit_and_save(params, model, section, seed, train_index, val_index, out: Path, history: Path, meta,
                  source: str, restart: bool) -> dict:
    import shutil

    import pandas as pd

    from mapex.io import write_text
    from mapex.prune import save_pruned

    ckpt = _checkpoint_dir(out)
    result = _fit(params, model, section, seed, train_index, val_index, ckpt, source, restart)
    model.load_state_dict(result.best_state)
    model.to("cpu")
    write_text(history, pd.DataFrame(result.history).to_csv(index=False))
    save_pruned(model, out, {**meta, "best_epoch": result.best_epoch, "seed": seed})
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"best_epoch": result.best_epoch, "history": result.history}


def _load_model(path: str | Path, params: dict[str, Any], **expect):
    """``(model, meta)`` of a model file made from these params' model and data (and ``expect``)."""
    from mapex.prune import load_pruned

    return load_pruned(path, expect={**_identity(params), **expect})


def _identity(params: dict[str, Any]) -> dict[str, Any]:
    """What every model and scores file made under ``params`` carries in its meta."""
    from mapex.identity import data_fingerprint

    return {"arch": params["model"]["arch"], "stem": params["model"]["stem"], "data": data_fingerprint(params)}


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
    from mapex.evaluate import evaluate_model
    from mapex.identity import fingerprint
    from mapex.io import seed_everything, write_json
    from mapex.models import build_model

    params = _params(args)
    task = load_task_data(params, args.data)
    mp = params["model"]
    seed = params["train"]["seed"]
    seed_everything(seed)  # the initial weights too
    model = build_model(mp["arch"], len(task.source_classes), stem=mp["stem"], pretrained=mp["pretrained"])
    meta = {**_identity(params), "classes": task.source_classes, "stage": "baseline"}
    fitted = _fit_and_save(params, model, params["train"], seed, task.source_train, task.source_val,
                           Path(args.out), Path(args.history), meta, fingerprint(mp), args.restart)
    test_loader = _loader(params, task.source_test, False, params["train"]["batch_size"], seed)
    metrics = evaluate_model(model, test_loader, _device(params), _input_size(params),
                             latency_batches=tuple(params["evaluate"]["latency_batches"]),
                             latency_reps=params["evaluate"]["latency_reps"])
    metrics.update(best_epoch=fitted["best_epoch"], n_classes=len(task.source_classes), skipped_samples=task.skipped,
                   val_top1=max(h["val_top1"] for h in fitted["history"]))
    write_json(args.metrics, metrics)


def _task_model(params: dict[str, Any], task: TaskData, model_path: str | Path):
    """The baseline restricted to the task's classes (its logits are the baseline's task logits)."""
    from mapex.models import restrict_classes

    model, _ = _load_model(model_path, params, stage="baseline")
    return restrict_classes(model, task.task_class_indices)


def _score_batches(params: dict[str, Any], index, seed: int):
    return _loader(params, index, False, params["statistics"]["batch_size"], seed)


def _compute_scores(params, model, criterion_name: str, index, seed: int) -> dict:
    criterion = _make_criterion(params, criterion_name, seed)
    if criterion.needs_data:
        batches = _score_batches(params, index, seed)
        model.to(_device(params))
    else:
        batches = None
    return criterion.compute(model, batches, _input_size(params))


def _make_criterion(params, name: str, seed: int, scores=None):
    from mapex.criteria import get_criterion

    kwargs: dict[str, Any] = {"scores": scores}
    if name in ("map-ex", "map"):
        kwargs["score"] = params["statistics"]["score"]
    if name == "random":
        kwargs["seed"] = seed
    return get_criterion(name, **kwargs)


def cmd_scores(args: argparse.Namespace) -> None:
    from mapex.data import balanced_subset
    from mapex.identity import file_fingerprint
    from mapex.prune import save_scores

    params = _params(args)
    task = load_task_data(params, args.data)
    n = args.n_per_class or params["statistics"]["samples_per_class"]
    samples = balanced_subset(task.task_train, n, args.seed)
    model = _task_model(params, task, args.model)
    started = time.perf_counter()
    scores = _compute_scores(params, model, args.criterion, samples, args.seed)
    meta = {
        **_identity(params),
        "baseline": file_fingerprint(args.model),
        "num_classes": len(task.task_test.classes),
        "criterion": args.criterion,
        "score": params["statistics"]["score"],
        "n_per_class": n,
        "n_images": len(samples.samples),
        "seed": args.seed,
        "seconds": time.perf_counter() - started,
    }
    save_scores(args.out, scores, meta)


def _prune_task_model(params, model, criterion_name: str, scores: dict, ratio: float, seed: int):
    import torch

    from mapex.prune import prune_model

    criterion = _make_criterion(params, criterion_name, seed, scores=scores)
    example = torch.zeros(1, 3, *_input_size(params))
    return prune_model(model, criterion, ratio, example, global_pruning=params["prune"]["global"])


def cmd_prune(args: argparse.Namespace) -> None:
    from mapex.identity import file_fingerprint
    from mapex.prune import load_scores, save_pruned

    params = _params(args)
    task = load_task_data(params, args.data)
    model = _task_model(params, task, args.model)
    if args.criterion == "none":
        report = None
    elif args.scores is None:
        raise UserError(f"prune --criterion {args.criterion} needs --scores (a file written by `mapex scores`)")
    else:
        scores, _ = load_scores(args.scores, expect={
            **_identity(params), "baseline": file_fingerprint(args.model), "num_classes": len(task.task_test.classes),
            "criterion": args.criterion, "score": params["statistics"]["score"]})
        report = _prune_task_model(params, model, args.criterion, scores, args.ratio, args.seed)
    meta = {
        **_identity(params),
        "stage": "pruned",
        "classes": task.task_test.classes,
        "criterion": args.criterion,
        "ratio": args.ratio,
        "seed": args.seed,
        "prune": report.to_dict() if report else None,
    }
    save_pruned(model, args.out, meta)


def cmd_finetune(args: argparse.Namespace) -> None:
    from mapex.identity import file_fingerprint

    params = _params(args)
    task = load_task_data(params, args.data)
    model, meta = _load_model(args.model, params, stage="pruned")
    source = file_fingerprint(args.model)
    _fit_and_save(params, model, params["finetune"], args.seed, task.task_train, task.task_val,
                  Path(args.out), Path(args.history), {**meta, "stage": "finetuned", "pruned": source},
                  source, args.restart)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mapex.evaluate import accuracy, evaluate_model, file_size
    from mapex.identity import file_fingerprint
    from mapex.io import write_json

    params = _params(args)
    task = load_task_data(params, args.data)
    device = _device(params)
    loader = _loader(params, task.task_test, False, params["finetune"]["batch_size"], 0)
    pruned, _ = _load_model(args.pruned, params, stage="pruned")
    before = accuracy(pruned.to(device), loader, device)
    model, meta = _load_model(args.model, params, stage="finetuned", pruned=file_fingerprint(args.pruned))
    metrics = evaluate_model(model, loader, device, _input_size(params),
                             latency_batches=tuple(params["evaluate"]["latency_batches"]),
                             latency_reps=params["evaluate"]["latency_reps"])
    prune_report = meta.get("prune") or {}
    metrics.update(
        criterion=meta["criterion"],
        ratio=meta["ratio"],
        seed=meta["seed"],
        arch=meta["arch"],
        size_bytes=file_size(args.model),
        top1_before_finetune=before["top1"],
        best_epoch=meta.get("best_epoch"),
        params_removed=prune_report.get("params_removed", 0.0),
        macs_removed=prune_report.get("macs_removed", 0.0),
        filters_before=prune_report.get("filters_before", {}),
        filters_after=prune_report.get("filters_after", {}),
    )
    write_json(args.out, metrics)


def _metrics_for_dvc(table) -> dict[str, dict[str, float]]:
    """``dvc metrics show`` view of the summary: mean test top-1, MACs and speedup per criterion and ratio."""
    columns = [c for c in ("top1_pct_mean", "macs_m_mean", "speedup_cpu_b64_mean") if c in table]
    return {
        f"{row['criterion']}/r{ratio_tag(row['ratio'])}": {c: round(float(row[c]), 4) for c in columns}
        for _, row in table.iterrows()
    }


def cmd_report(args: argparse.Namespace) -> None:
    from mapex import report
    from mapex.io import write_json

    params = _params(args)
    runs = report.load_runs(run_paths(params, Path(args.runs)))
    out = Path(args.out)
    table = report.write_tables(runs, out / "tables" / "summary.csv", out / "tables" / "summary.md")
    write_json(out / "tables" / "summary.json", _metrics_for_dvc(table))
    figures = out / "figures"
    report.plot_accuracy_vs_ratio(runs, figures / "accuracy_vs_ratio")
    report.plot_accuracy_vs_macs(runs, figures / "accuracy_vs_macs")
    report.plot_filters_per_layer(runs, figures / "filters_per_layer")
    if args.samples:
        report.plot_samples_study(Path(args.samples), figures / "samples_study")
    if args.response_maps:
        report.plot_response_maps(Path(args.response_maps), figures / "response_maps")
    if args.history:
        report.plot_training_curves([Path(args.history)], figures / "training_curves")


def cmd_samples(args: argparse.Namespace) -> None:
    """Pruning in multiple samples: scores from N images per class against scores from all of them,
    and test top-1 of the model pruned with them, before and after the usual fine-tuning."""
    import copy
    import shutil

    import pandas as pd

    from mapex.data import balanced_subset
    from mapex.evaluate import accuracy
    from mapex.identity import file_fingerprint
    from mapex.io import write_text
    from mapex.statistics import rank_correlation

    params = _params(args)
    study = params["samples_study"]
    task = load_task_data(params, args.data)
    model = _task_model(params, task, args.model)
    baseline = file_fingerprint(args.model)
    device = _device(params)
    test_loader = _loader(params, task.task_test, False, params["statistics"]["batch_size"], 0)
    checkpoints = _checkpoint_dir(Path(args.out))  # a killed study resumes its fine-tuning runs
    reference = _compute_scores(params, model, study["criterion"], task.task_train, seed=0)
    rows = []
    for seed in study["seeds"]:
        for n in study["n_per_class"]:
            subset = balanced_subset(task.task_train, n, seed)
            scores = _compute_scores(params, model, study["criterion"], subset, seed)
            pruned = copy.deepcopy(model).cpu()
            _prune_task_model(params, pruned, study["criterion"], scores, study["ratio"], seed)
            before = accuracy(pruned.to(device), test_loader, device)["top1"]
            _fit(params, pruned, params["finetune"], seed, task.task_train, task.task_val, checkpoints / f"n{n}_s{seed}",
                 source=baseline)
            rows.append({"criterion": study["criterion"], "n_per_class": n, "seed": seed,
                         "spearman": rank_correlation(scores, reference), "top1_before_finetune": before,
                         "top1": accuracy(pruned, test_loader, device)["top1"]})
            log.info("samples study: N=%d seed=%d -> %s", n, seed, rows[-1])
    write_text(args.out, pd.DataFrame(rows).to_csv(index=False))
    shutil.rmtree(checkpoints, ignore_errors=True)


def cmd_response_maps(args: argparse.Namespace) -> None:
    """Mean responses of the top- and bottom-scored Map-EX filters of a few layers, for the figure."""
    import numpy as np

    from mapex.data import balanced_subset
    from mapex.statistics import response_maps

    params = _params(args)
    task = load_task_data(params, args.data)
    model = _task_model(params, task, args.model)
    seed = params["seeds"][0]
    samples = balanced_subset(task.task_train, params["statistics"]["samples_per_class"], seed)
    scores = _compute_scores(params, model, "map-ex", samples, seed)
    layers = _display_layers(list(scores))
    images, labels, boxes = next(iter(_loader(params, task.task_test, False, params["response_maps"]["images"], 0)))
    maps, titles = response_maps(model, images, scores, layers)
    box_rows = [[i, *box.tolist()] for i, image_boxes in enumerate(boxes) for box in image_boxes]
    _save_npz(
        args.out,
        images=_unnormalise(images).numpy(),
        boxes=np.asarray(box_rows, dtype=np.float32).reshape(-1, 5),
        maps=maps.numpy(),
        panel_titles=np.asarray(titles),
        image_titles=np.asarray([task.task_test.names.get(task.task_test.classes[int(y)], task.task_test.classes[int(y)])
                                 for y in labels]),
    )


def _display_layers(conv_names: list[str]) -> list[str]:
    """Two conv layers to show: at a third and two thirds of the network's depth."""
    return list(dict.fromkeys([conv_names[len(conv_names) // 3], conv_names[(2 * len(conv_names)) // 3]]))


def _unnormalise(images):
    from mapex.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    import torch

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def _save_npz(path, **arrays) -> None:
    import numpy as np

    from mapex.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def run_paths(params: dict[str, Any], runs_dir: Path) -> list[Path]:
    """Every evaluation file the params ask for: the unpruned runs, then criterion x ratio x seed."""
    from mapex.pipeline import run_ids

    return [runs_dir / f"{run}.json" for run in run_ids(params)]


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
RESTART = ("--restart", {"action": "store_true", "help": "discard a checkpoint left by an earlier run"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mapex", description="Task-driven CNN pruning (Map-EX) pipeline stages.")
    parser.add_argument("--log", help="also append log lines to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(sub, "fetch", cmd_fetch, "Download (or copy) the dataset archive, verify its sha256, extract atomically.",
         PARAMS, ("--out", {"required": True, "help": "dataset folder to create"}))

    data = sub.add_parser("data", help="Dataset tools.", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _add(data_sub, "check", cmd_data_check, "Validate a box-labelled dataset and print a summary of it.",
         ("path", {"help": "dataset root folder"}),
         ("--format", {"required": True, "choices": ["tiny-imagenet", "voc", "coco", "yolo", "csv"]}),
         ("--problems", {"help": 'JSON policy per problem kind, e.g. \'{"no-box": "error"}\''}),
         ("--json", {"help": "also write the summary as JSON to this file"}))

    _add(sub, "train", cmd_train, "Train the baseline on all source classes; evaluate it on the test split.",
         PARAMS, DATA, OUT, THREADS, RESTART, ("--metrics", {"required": True}), ("--history", {"required": True}))
    _add(sub, "scores", cmd_scores, "Per-filter scores of one criterion over N task samples per class.",
         PARAMS, DATA, MODEL, OUT, SEED, THREADS, ("--criterion", {"required": True}),
         ("--n-per-class", {"type": int, "default": None, "help": "default: statistics.samples_per_class"}))
    _add(sub, "prune", cmd_prune, "Physically prune the task model by a criterion's scores.",
         PARAMS, DATA, MODEL, OUT, SEED, THREADS, ("--criterion", {"required": True}),
         ("--ratio", {"type": float, "required": True}), ("--scores", {"default": None}))
    _add(sub, "finetune", cmd_finetune, "Fine-tune a (pruned) task model; best epoch chosen on validation.",
         PARAMS, DATA, MODEL, OUT, SEED, THREADS, RESTART, ("--history", {"required": True}))
    _add(sub, "evaluate", cmd_evaluate, "Test top-1, params, MACs, size and latency of a fine-tuned model.",
         PARAMS, DATA, MODEL, OUT, THREADS, ("--pruned", {"required": True, "help": "the model before fine-tuning"}))
    _add(sub, "samples", cmd_samples, "Pruning in multiple samples: score rank correlation and accuracy against N.",
         PARAMS, DATA, MODEL, OUT, THREADS)
    _add(sub, "response-maps", cmd_response_maps, "Response maps of the top/bottom Map-EX filters on a few test images.",
         PARAMS, DATA, MODEL, OUT, THREADS)
    _add(sub, "report", cmd_report, "Tables and figures from the evaluation files the params ask for.",
         PARAMS, ("--runs", {"required": True, "help": "folder of evaluation files"}),
         ("--out", {"required": True, "help": "results folder"}),
         ("--samples", {"default": None}), ("--response-maps", {"default": None}), ("--history", {"default": None}))
    return parser


def _configure_logging(verbose: bool, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


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
