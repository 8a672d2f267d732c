"""The ``mapex`` command: one subcommand per pipeline stage.

Each subcommand's options are the keyword arguments of its function in :mod:`mapex.stages`, which
does the work. Snakemake rules and dvc.yaml stages call these subcommands and nothing else, so the
two orchestrators run exactly the same code. A :class:`~mapex.io.UserError` (bad input) ends the
command with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mapex import distributed, stages
from mapex.io import UserError

log = logging.getLogger("mapex")

Option = tuple[str, dict]
PARAMS: Option = ("--params", {"default": "params.yaml", "help": "params file (default: params.yaml)"})
DATA: Option = ("--data", {"required": True, "help": "fetched dataset folder"})
OUT: Option = ("--out", {"required": True, "help": "output file"})
MODEL: Option = ("--model", {"required": True, "help": "model file"})
SEED: Option = ("--seed", {"type": int, "required": True})
TASK: Option = ("--task", {"default": None, "help": "task name from data.tasks (default: the first)"})
CRITERION: Option = ("--criterion", {"required": True, "help": "a row: a registered criterion or a key of variants"})
RESTART: Option = ("--restart", {"action": "store_true", "help": "discard a checkpoint left by an earlier run"})
HISTORY: Option = ("--history", {"required": True, "help": "per-epoch history CSV to write"})
METRICS: Option = ("--metrics", {"required": True, "help": "evaluation JSON to write"})
RUNS: Option = ("--runs", {"required": True, "help": "folder of evaluation files"})
TRAIN_SEED: Option = (
    "--train-seed",
    {"type": int, "default": None, "help": "train.seed of a further baseline (sanity.extra_baseline_seeds)"},
)
THREADS: Option = ("--threads", {"type": int, "default": None, "help": "CPU threads for torch (default: all)"})
ON_MODEL = (PARAMS, DATA, MODEL, OUT, THREADS)
"""The options of a stage that works on the baseline model and the dataset."""
STUDY_FOLDER = "folder of the {} study's <task>.csv files"
ONNX_HELP = "also export the first task's first-seed models here and time them under ONNX Runtime"


def build_parser() -> argparse.ArgumentParser:
    from mapex.data.registry import FORMATS

    parser = argparse.ArgumentParser(prog="mapex", description="Task-driven CNN pruning (Map-EX) pipeline stages.")
    parser.add_argument("--log", help="also append log lines to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(sub, "fetch", stages.fetch, PARAMS, ("--out", {"required": True, "help": "dataset folder to create"}))
    data = sub.add_parser("data", help="Dataset tools.", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _add(
        data_sub,
        "check",
        stages.data_check,
        ("path", {"help": "dataset root folder"}),
        ("--format", {"required": True, "choices": list(FORMATS)}),
        ("--problems", {"help": 'JSON policy per problem kind, e.g. \'{"no-box": "error"}\''}),
        ("--json", {"help": "also write the summary as JSON to this file"}),
    )
    _add(sub, "train", stages.train, PARAMS, DATA, OUT, THREADS, RESTART, HISTORY, METRICS, TRAIN_SEED)
    _add(sub, "scores", stages.scores, *ON_MODEL, SEED, TASK, CRITERION)
    ratio = ("--ratio", {"type": float, "required": True})
    scores = ("--scores", {"default": None, "help": "the row's scores file (none for the unpruned row)"})
    _add(sub, "run", stages.run, *ON_MODEL, SEED, TASK, CRITERION, RESTART, ratio, scores, HISTORY, METRICS)
    _add(sub, "sanity", stages.sanity, *ON_MODEL, TASK, TRAIN_SEED)
    for name, stage in (("sensitivity", stages.sensitivity), ("diagnose", stages.diagnose)):
        _add(sub, name, stage, *ON_MODEL, TASK)
    _add(sub, "samples", stages.samples, *ON_MODEL)
    _add(sub, "response-maps", stages.response_maps, *ON_MODEL)
    models = ("--models", {"required": True, "help": "folder of fine-tuned models"})
    _add(sub, "latency", stages.latency, *ON_MODEL, RUNS, models, ("--onnx", {"default": None, "help": ONNX_HELP}))
    _add(sub, "export", stages.export, PARAMS, MODEL, OUT)
    _add(
        sub,
        "report",
        stages.report,
        PARAMS,
        RUNS,
        ("--out", {"required": True, "help": "results folder"}),
        ("--sanity", {"default": None, "help": STUDY_FOLDER.format("sanity")}),
        ("--sensitivity", {"default": None, "help": STUDY_FOLDER.format("sensitivity")}),
        *((f"--{name}", {"default": None}) for name in ("latency", "samples", "response-maps", "history")),
    )
    return parser


def _add(sub, name: str, stage: Callable, *options: Option) -> argparse.ArgumentParser:
    """A subcommand running ``stage``, its help the stage's docstring; its options are the stage's arguments."""
    summary = " ".join(stage.__doc__.split("\n\n")[0].split())
    parser = sub.add_parser(name, help=summary, description=summary)
    parser.set_defaults(stage=stage)
    for flag, kwargs in options:
        parser.add_argument(flag, **kwargs)
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
    """Run one subcommand; a stage whose params ask for ``nproc`` > 1 starts again under torchrun."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    _configure_logging(args.pop("verbose"), args.pop("log"))
    threads = args.pop("threads", None)
    if threads:
        import torch

        # A stage's threads are shared by the processes torchrun started on this node.
        torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    stage = args.pop("stage")
    for key in ("command", "data_command"):
        args.pop(key, None)
    try:
        nproc = stages.processes(stage.__name__, args.get("params"))
        if nproc > 1 and not distributed.launched():
            return distributed.relaunch(nproc, argv)
        return stage(**args) or 0
    except UserError as err:
        log.error("%s", err)  # one line, on stderr and in the stage's log
        return 2
