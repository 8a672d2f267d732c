"""Fuzz: randomly spoiled inputs of every kind, fed to the CLI in-process, with a fixed seed.

Every input kind (params YAML; VOC, COCO, YOLO and CSV annotations; baseline, pruned model,
scores and checkpoint files) is spoiled at the byte level (cut, flipped, garbage) or the structure
level (a key removed, a value replaced by one of another type or an absurd one). The CLI may accept
a spoiled input that is still valid, but it must never raise: a refusal is one error line and a
non-zero exit.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mapex.cli import main
from pipeline_files import Pipeline, leave_checkpoint, make_pipeline, working_in
from test_data_formats import make_coco, make_csv, make_voc, make_yolo

SEED = 14
CASES_PER_KIND = {
    "params": 24,
    "voc": 14,
    "coco": 14,
    "yolo": 14,
    "csv": 14,
    "baseline": 20,
    "tuned": 16,
    "scores": 20,
    "checkpoint": 16,
}
ODD_VALUES: list[Any] = [None, "", "x", -1, 0, 1, 2.5, 1e30, float("nan"), True, [], {}, [1, "a"], {"k": 1}]


# --------------------------------------------------------------------------- spoilers
def spoil_bytes(data: bytes, rng: random.Random) -> bytes:
    """Cut, flip a few bytes, prepend or append garbage, or empty."""
    how = rng.choice(["cut", "flip", "prepend", "append", "empty"])
    if how == "cut":
        return data[: rng.randrange(len(data))]
    if how == "flip":
        spoiled = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            spoiled[rng.randrange(len(spoiled))] = rng.randrange(256)
        return bytes(spoiled)
    garbage = rng.randbytes(rng.randint(1, 64))
    return {"prepend": garbage + data, "append": data + garbage, "empty": b""}[how]


def spoil_structure(value: Any, rng: random.Random, odd: list[Any]) -> Any:
    """A deep copy of ``value`` with one leaf (or a dict key) replaced by an odd value, or removed."""
    spoiled = copy.deepcopy(value)
    parent, key = _random_slot(spoiled, rng)
    if parent is None:
        return rng.choice(odd)
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = rng.choice(odd)
    return spoiled


def _random_slot(value: Any, rng: random.Random) -> tuple[Any, Any]:
    """A random (container, key) pair in a tree of dicts and lists, descending at random depth."""
    parent, key = None, None
    while isinstance(value, (dict, list)) and value and (parent is None or rng.random() < 0.75):
        key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
        parent, value = value, value[key]
    return parent, key


def spoil_torch_file(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.5:
        path.write_bytes(spoil_bytes(path.read_bytes(), rng))
        return
    odd = ODD_VALUES + [torch.zeros(0), torch.randn(3), torch.full((2, 2), float("nan")), torch.zeros(5, 5, 5)]
    torch.save(spoil_structure(torch.load(path, weights_only=True), rng, odd), path)


def spoil_text_file(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.4:
        path.write_bytes(spoil_bytes(path.read_bytes(), rng))
        return
    text = path.read_text()
    tokens = ["-1e9", "nan", "<", ">", "{", "}", ",", ":", "'", '"', " ", "\n", "0", "99999", "-", "é", "\x00"]
    position = rng.randrange(len(text) + 1)
    path.write_text(text[:position] + rng.choice(tokens) * rng.randint(1, 3) + text[position + rng.randint(0, 4) :])


# --------------------------------------------------------------------------- running the CLI
def assert_clean_outcome(argv: list[str], capsys, label: str) -> bool:
    """Run the CLI; it must not raise, and a refusal must be exactly one error line. True if refused."""
    try:
        code = main(argv)
    except BaseException as err:  # noqa: BLE001 - the point: anything escaping main is a failure
        pytest.fail(f"{label}: {type(err).__name__}: {err}")
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    if code == 2:
        assert len(errors) == 1, f"{label}: {errors}"
    else:
        assert code in (0, 1) and not errors, f"{label}: exit {code}, {errors}"
    return code != 0


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Pipeline:
    pipeline = make_pipeline(tmp_path_factory.mktemp("fuzz"))
    checkpoint = leave_checkpoint(pipeline, pipeline.commands()["run"])
    shutil.copy(pipeline.root / checkpoint, pipeline.root / "checkpoint.pt")
    shutil.copy(pipeline.root / pipeline.tuned, pipeline.root / "tuned.pt")
    shutil.rmtree(pipeline.root / "work")
    return pipeline


def _file_cases(pipeline: Pipeline) -> dict[str, tuple[str, Callable[[str], list[str]]]]:
    """Input kind -> (the valid file, the command that reads a spoiled copy of it at a given path)."""
    commands = pipeline.commands()
    return {
        "baseline": (pipeline.baseline, lambda path: _with(commands["scores"], "--model", path)),
        "tuned": ("tuned.pt", lambda path: commands["latency"]),  # latency reads every run's model
        "scores": (pipeline.scores, lambda path: _with(commands["run"], "--scores", path)),
        "checkpoint": ("checkpoint.pt", lambda path: commands["run"]),
    }


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def test_spoiled_files_params_and_annotations_never_give_a_traceback(made: Pipeline, tmp_path: Path, capsys) -> None:
    rng = random.Random(SEED)
    root = tmp_path / "run"
    shutil.copytree(made.root, root)
    run = Pipeline(root)
    refused: dict[str, int] = {}
    with working_in(root):
        for kind, (valid, command) in _file_cases(run).items():
            for case in range(CASES_PER_KIND[kind]):
                shutil.rmtree("work", ignore_errors=True)
                target = {"checkpoint": str(run.checkpoint_of("t2.pt")), "tuned": run.tuned}.get(kind, "spoiled.pt")
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(valid, target)
                spoil_torch_file(Path(target), rng)
                refused[kind] = refused.get(kind, 0) + assert_clean_outcome(command(target), capsys, f"{kind} #{case}")
        refused["params"] = _fuzz_params(run, rng, capsys)
        for format in ("voc", "coco", "yolo", "csv"):
            refused[format] = _fuzz_annotations(tmp_path / format, format, rng, capsys)
    print(f"fuzz: {sum(CASES_PER_KIND.values())} cases, refused per kind {refused}")
    assert sum(refused.values()) >= sum(CASES_PER_KIND.values()) // 2  # most spoiled inputs are refused


def _fuzz_params(run: Pipeline, rng: random.Random, capsys) -> int:
    valid = yaml.safe_load(Path(run.params).read_text())
    odd = [value for value in ODD_VALUES if value != 1e30]  # no 1e30-pixel example image
    refused = 0
    for case in range(CASES_PER_KIND["params"]):
        path = Path("fuzz.yaml")
        if case % 3 == 0:
            path.write_text(yaml.safe_dump(valid))
            spoil_text_file(path, rng)
        else:
            path.write_text(yaml.safe_dump(spoil_structure(valid, rng, odd)))
        argv = _with(run.commands()["scores"], "--params", str(path))
        refused += assert_clean_outcome(argv, capsys, f"params #{case}: {path.read_bytes()[:200]!r}")
    return refused


def _dataset(root: Path, format: str) -> list[Path]:
    """A small valid dataset of ``format`` in ``root``, and its annotation files."""
    if format == "voc":
        make_voc(root, {f"{c}{i}": [(c, 2, 3, 20, 24)] for c in ("cat", "dog") for i in range(2)})
        return sorted((root / "Annotations").glob("*.xml"))
    if format == "coco":
        make_coco(
            root,
            {f"{c}{i}.jpg": [(k, [2.0, 3.0, 18.0, 20.0])] for k, c in ((1, "cat"), (2, "dog")) for i in range(2)},
            {1: "cat", 2: "dog"},
        )
        return [root / "annotations" / "instances_default.json"]
    if format == "yolo":
        make_yolo(root, {f"im{i}": [f"{i % 2} 0.5 0.5 0.4 0.6"] for i in range(4)})
        return [root / "data.yaml", *sorted((root / "labels").glob("*.txt"))]
    make_csv(root, [(f"{c}{i}.jpg", c, 1, 2, 20, 30) for c in ("cat", "dog") for i in range(2)])
    return [root / "boxes.csv"]


def _fuzz_annotations(folder: Path, format: str, rng: random.Random, capsys) -> int:
    refused = 0
    for case in range(CASES_PER_KIND[format]):
        root = folder / str(case)
        annotations = _dataset(root, format)
        spoiled = rng.choice(annotations)
        if format == "coco" and rng.random() < 0.5:
            content = json.loads(spoiled.read_text())
            spoiled.write_text(json.dumps(spoil_structure(content, rng, ODD_VALUES)))
        else:
            spoil_text_file(spoiled, rng)
        argv = ["data", "check", str(root), "--format", format]
        refused += assert_clean_outcome(argv, capsys, f"{format} #{case}: {spoiled.name}")
    return refused
