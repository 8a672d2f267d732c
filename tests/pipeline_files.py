"""A tiny dataset, params and the files every stage writes (baseline, scores, pruned, fine-tuned),
made once through the CLI in-process, for the tests that feed the CLI bad versions of them."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml
from PIL import Image

from mapex.cli import main

from conftest import REPO

CLASSES = ("ant", "bee", "cat")


@dataclass
class Pipeline:
    """Paths (relative to ``root``, which the CLI must run in) of one small run's files."""

    root: Path
    params: str = "params.yaml"
    data: str = "data"
    baseline: str = "base.pt"
    scores: str = "scores.pt"
    pruned: str = "pruned.pt"
    tuned: str = "tuned.pt"

    def commands(self) -> dict[str, list[str]]:
        """Every subcommand that reads a model, scores or checkpoint file, with valid arguments."""
        common = ["--params", self.params, "--data", self.data]
        return {
            "train": ["train", *common, "--out", "base2.pt", "--metrics", "m.json", "--history", "h.csv"],
            "scores": ["scores", *common, "--model", self.baseline, "--criterion", "l1", "--seed", "0",
                       "--out", "s2.pt"],
            "prune": ["prune", *common, "--model", self.baseline, "--scores", self.scores, "--criterion", "l1",
                      "--ratio", "0.5", "--seed", "0", "--out", "p2.pt"],
            "finetune": ["finetune", *common, "--model", self.pruned, "--seed", "0", "--out", "t2.pt",
                         "--history", "h2.csv"],
            "evaluate": ["evaluate", *common, "--model", self.tuned, "--pruned", self.pruned, "--out", "run.json"],
            "samples": ["samples", *common, "--model", self.baseline, "--out", "study.csv"],
            "response-maps": ["response-maps", *common, "--model", self.baseline, "--out", "maps.npz"],
        }

    @staticmethod
    def checkpoint_of(out: str) -> Path:
        """Where ``mapex train/finetune --out out`` keeps its resume checkpoint (relative to the root)."""
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
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    params["data"].update(format="csv", image_size=24, val_fraction=0.25, max_per_class=None,
                          max_test_per_class=None, task_classes=["ant", "cat"])
    params["model"] = {"arch": "tiny-cnn", "stem": "small", "pretrained": False}
    params["device"] = "cpu"
    for name in ("train", "finetune"):
        params[name].update(epochs=1, batch_size=8)
    params["statistics"].update(samples_per_class=2, batch_size=8)
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


def make_pipeline(root: Path) -> Pipeline:
    """Run train, scores, prune and finetune once in ``root``; the files they write stay there."""
    pipeline = Pipeline(root)
    write_csv_dataset(root / pipeline.data)
    (root / pipeline.params).write_text(yaml.safe_dump(tiny_params()))
    common = ["--params", pipeline.params, "--data", pipeline.data]
    with working_in(root):
        for argv in (
            ["train", *common, "--out", pipeline.baseline, "--metrics", "base.json", "--history", "base.csv"],
            ["scores", *common, "--model", pipeline.baseline, "--criterion", "l1", "--seed", "0",
             "--out", pipeline.scores],
            ["prune", *common, "--model", pipeline.baseline, "--scores", pipeline.scores, "--criterion", "l1",
             "--ratio", "0.5", "--seed", "0", "--out", pipeline.pruned],
            ["finetune", *common, "--model", pipeline.pruned, "--seed", "0", "--out", pipeline.tuned,
             "--history", "tuned.csv"],
        ):
            assert main(argv) == 0, argv
    return pipeline


def leave_checkpoint(pipeline: Pipeline, params: dict) -> Path:
    """A fine-tuning checkpoint of ``pipeline.pruned`` left behind, as by a killed ``finetune --out t2.pt``.

    Returns its path relative to the pipeline's root."""
    from mapex.cli import _fit, load_task_data
    from mapex.identity import file_fingerprint
    from mapex.prune import load_pruned

    model, _ = load_pruned(pipeline.root / pipeline.pruned)
    with working_in(pipeline.root):
        task = load_task_data(params, pipeline.data)
        _fit(params, model, params["finetune"], 0, task.task_train, task.task_val,
             pipeline.checkpoint_of("t2.pt").parent, file_fingerprint(pipeline.pruned))
    return pipeline.checkpoint_of("t2.pt")
