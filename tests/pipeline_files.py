"""A tiny dataset, params and the files every stage writes (baseline, scores, fine-tuned models,
evaluation files), made once through the CLI in-process, for the tests that feed the CLI bad
versions of them."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import yaml
from PIL import Image

from conftest import REPO
from mapex.cli import main

CLASSES = ("ant", "bee", "cat")
TASK = "ac"
TUNED = f"models/{TASK}/l1/r0.5/s0.pt"
UNPRUNED = f"models/{TASK}/none/r0/s0.pt"


@dataclass
class Pipeline:
    """Paths (relative to ``root``, which the CLI must run in) of one small run's files."""

    root: Path
    params: str = "params.yaml"
    data: str = "data"
    baseline: str = "base.pt"
    scores: str = "scores.pt"
    tuned: str = TUNED

    def commands(self) -> dict[str, list[str]]:
        """Every subcommand that reads a model, scores or checkpoint file, with valid arguments."""
        common = ["--params", self.params, "--data", self.data]
        model = [*common, "--model", self.baseline]
        return {
            "train": ["train", *common, "--out", "base2.pt", "--metrics", "m.json", "--history", "h.csv"],
            "scores": ["scores", *model, "--criterion", "l1", "--seed", "0", "--out", "s2.pt"],
            "run": [
                "run",
                *model,
                "--scores",
                self.scores,
                "--criterion",
                "l1",
                "--ratio",
                "0.5",
                "--seed",
                "0",
                "--out",
                "t2.pt",
                "--history",
                "h2.csv",
                "--metrics",
                "run.json",
            ],
            "sanity": ["sanity", *model, "--out", "sanity.csv"],
            "diagnose": ["diagnose", *model, "--out", "diagnosis.csv"],
            "sensitivity": ["sensitivity", *model, "--out", "sensitivity.csv"],
            "samples": ["samples", *model, "--out", "study.csv"],
            "response-maps": ["response-maps", *model, "--out", "maps.npz"],
            "latency": ["latency", *model, "--runs", "runs", "--models", "models", "--out", "latency.csv"],
        }

    @staticmethod
    def checkpoint_of(out: str) -> Path:
        """Where ``mapex train/run --out out`` keeps its resume checkpoint (relative to the root)."""
        return Path("work/checkpoints") / Path(out).with_suffix("").as_posix().replace("/", "__") / "last.pt"


def write_csv_dataset(root: Path, per_class: int = 8, size: int = 24) -> Path:
    """``per_class`` noise images of each class with one box each, in the CSV layout."""
    rows = ["image,label,x0,y0,x1,y1"]
    for label in CLASSES:
        for i in range(per_class):
            name = f"{label}{i}.png"
            path = root / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = random.Random(name).randbytes(size * size * 3)
            Image.frombytes("RGB", (size, size), noise).save(path)
            rows.append(f"{name},{label},{i % 4},{i % 3},{size - 2},{size - 1}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_params(**sections: dict) -> dict:
    """config/ci.yaml cut down to a tiny CNN, one task, one l1 row at ratio 0.5, one epoch."""
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    params["data"].update(
        format="csv",
        image_size=24,
        val_fraction=0.25,
        max_per_class=None,
        max_test_per_class=None,
        tasks=[{"name": TASK, "classes": ["ant", "cat"]}],
    )
    params["model"] = {"arch": "tiny-cnn", "stem": "small", "pretrained": False}
    params["device"] = "cpu"
    for name in ("train", "finetune"):
        params[name].update(epochs=1, batch_size=8)
    params["statistics"].update(samples_per_class=2, batch_size=8)
    params["prune"].update(criteria=["l1"], ratios=[0.5])
    params["sanity"].update(criteria=["l1"], random_draws=1)
    params["sensitivity"].update(criteria=["l1"])
    params["evaluate"] = {"latency_batches": [1], "latency_reps": 1}
    params["samples_study"].update(n_per_class=[1], criterion="l1")
    for name, values in sections.items():
        params[name].update(values)
    return params


@contextlib.contextmanager
def working_in(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_argv(pipeline: Pipeline, out: str, criterion: str = "l1", ratio: str = "0.5") -> list[str]:
    """``mapex run`` of one row into ``out`` (its evaluation file beside it under runs/)."""
    scores = ["--scores", pipeline.scores] if criterion != "none" else []
    metrics = (
        Path("runs") / Path(out).relative_to("models").with_suffix(".json")
        if out.startswith("models")
        else Path("run.json")
    )
    return [
        "run",
        "--params",
        pipeline.params,
        "--data",
        pipeline.data,
        "--model",
        pipeline.baseline,
        *scores,
        "--criterion",
        criterion,
        "--ratio",
        ratio,
        "--seed",
        "0",
        "--out",
        out,
        "--history",
        "h.csv",
        "--metrics",
        str(metrics),
    ]


def make_pipeline(root: Path) -> Pipeline:
    """Run train, scores and both rows' runs once in ``root``; the files they write stay there."""
    pipeline = Pipeline(root)
    write_csv_dataset(root / pipeline.data)
    (root / pipeline.params).write_text(yaml.safe_dump(tiny_params()))
    common = ["--params", pipeline.params, "--data", pipeline.data]
    with working_in(root):
        for argv in (
            ["train", *common, "--out", pipeline.baseline, "--metrics", "base.json", "--history", "base.csv"],
            [
                "scores",
                *common,
                "--model",
                pipeline.baseline,
                "--criterion",
                "l1",
                "--seed",
                "0",
                "--out",
                pipeline.scores,
            ],
            run_argv(pipeline, TUNED),
            run_argv(pipeline, UNPRUNED, criterion="none", ratio="0"),
        ):
            assert main(argv) == 0, argv
    return pipeline


def leave_checkpoint(pipeline: Pipeline, argv: list[str]) -> Path:
    """Run ``argv`` (a ``train`` or ``run``) but stop it after its last epoch, before it saves its
    model: as a killed stage, it leaves its checkpoint. Returns the checkpoint's path (relative)."""
    with working_in(pipeline.root), mock.patch("mapex.stages.save_fitted", side_effect=RuntimeError("killed")):
        with pytest.raises(RuntimeError, match="killed"):
            main(argv)
    checkpoint = pipeline.checkpoint_of(argv[argv.index("--out") + 1])
    assert (pipeline.root / checkpoint).is_file()
    return checkpoint
