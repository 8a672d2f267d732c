"""Issue #14: no file is unpickled, every bad file is one line naming it, every file is checked
against what made it, params are checked whole and early, and the docs list the problem kinds
the code accepts."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from mapex.cli import main
from mapex.config import load_schema
from mapex.data.formats import DEFAULT_ACTIONS
from mapex.prune import load_scores, save_scores
from pipeline_files import Pipeline, leave_checkpoint, make_pipeline, tiny_params, working_in


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Pipeline:
    return make_pipeline(tmp_path_factory.mktemp("run"))


@pytest.fixture
def run(made: Pipeline, tmp_path: Path) -> Pipeline:
    """A private copy of the made files, to spoil."""
    shutil.copytree(made.root, tmp_path / "run")
    return Pipeline(tmp_path / "run")


def cli_error(pipeline: Pipeline, argv: list[str], capsys) -> str:
    """Run the CLI in the pipeline's folder; it must fail with exactly one error line: return it."""
    with working_in(pipeline.root):
        code = main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert code != 0, argv
    assert len(errors) == 1, errors
    return errors[0]


def with_arg(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


class CreatesFile:
    """Unpickling this creates the file ``path``: proof that loading ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _where_read(pipeline: Pipeline) -> list[tuple[str, str, str | Path]]:
    """(command, flag or 'checkpoint'/'models', where to put the file) for every .pt the CLI reads."""
    return [
        ("scores", "--model", "x.pt"),
        ("run", "--model", "x.pt"),
        ("run", "--scores", "x.pt"),
        ("sanity", "--model", "x.pt"),
        ("sensitivity", "--model", "x.pt"),
        ("samples", "--model", "x.pt"),
        ("diagnose", "--model", "x.pt"),
        ("response-maps", "--model", "x.pt"),
        ("latency", "--model", "x.pt"),
        ("latency", "models", pipeline.tuned),
        ("train", "checkpoint", pipeline.checkpoint_of("base2.pt")),
        ("run", "checkpoint", pipeline.checkpoint_of("t2.pt")),
        ("samples", "checkpoint", pipeline.checkpoint_of("study.csv").parent / "n1_s0" / "last.pt"),
    ]


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_pickle_runs_nowhere(run: Pipeline, writer: str, capsys) -> None:
    marker = run.root / "pwned"
    cases = _where_read(run)
    for command, flag, place in cases:
        target = run.root / place
        target.parent.mkdir(parents=True, exist_ok=True)
        kept = target.read_bytes() if target.is_file() else None
        payload = {"model": CreatesFile(marker), "meta": {}}
        if writer == "torch.save":
            torch.save(payload, target)
        else:
            target.write_bytes(pickle.dumps(payload))
        argv = run.commands()[command]
        error = cli_error(run, with_arg(argv, flag, str(place)) if flag.startswith("--") else argv, capsys)
        assert not marker.exists(), (command, flag)
        assert str(place) in error, error
        target.unlink()
        if kept is not None:
            target.write_bytes(kept)
    assert len(cases) == 13


def test_an_old_whole_module_file_says_how_to_regenerate_it(run: Pipeline, capsys) -> None:
    torch.save({"model": torch.nn.Linear(2, 2), "meta": {}}, run.root / "old.pt")
    error = cli_error(run, with_arg(run.commands()["run"], "--model", "old.pt"), capsys)
    assert "old.pt: a whole-module pickle" in error and "delete it and rerun the stage that wrote it" in error


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty or truncated"),
        (b"hello, world\n", "not a torch file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "not a torch file"),
        (pickle.dumps({"scores": {"conv": [1.0]}}), "not a torch file"),
    ],
)
def test_a_file_that_is_no_torch_file_is_named(run: Pipeline, content: bytes, message: str, capsys) -> None:
    (run.root / "bad.pt").write_bytes(content)
    error = cli_error(run, with_arg(run.commands()["run"], "--scores", "bad.pt"), capsys)
    assert "bad.pt: " in error and message in error


def test_a_truncated_model_is_named(run: Pipeline, capsys) -> None:
    data = (run.root / run.baseline).read_bytes()
    (run.root / "cut.pt").write_bytes(data[: len(data) // 2])
    error = cli_error(run, with_arg(run.commands()["run"], "--model", "cut.pt"), capsys)
    assert "cut.pt: " in error and "truncated" in error


def test_a_model_given_as_scores_and_scores_given_as_model_are_refused(run: Pipeline, capsys) -> None:
    error = cli_error(run, with_arg(run.commands()["run"], "--scores", run.baseline), capsys)
    assert f"{run.baseline}: not a scores file saved by mapex (it is a mapex-model/2 file)" in error
    error = cli_error(run, with_arg(run.commands()["scores"], "--model", run.scores), capsys)
    assert f"{run.scores}: not a model saved by mapex (it is a mapex-scores/1 file)" in error


def test_run_without_scores_says_so(run: Pipeline, capsys) -> None:
    argv = run.commands()["run"]
    at = argv.index("--scores")
    error = cli_error(run, argv[:at] + argv[at + 2 :], capsys)
    assert "criterion 'l1' needs --scores" in error


def test_scores_of_another_criterion_are_refused(run: Pipeline, capsys) -> None:
    error = cli_error(run, with_arg(run.commands()["run"], "--criterion", "random"), capsys)
    assert f"{run.scores}: made from something else (criterion is 'l1', expected 'random')" in error


def test_scores_of_another_architecture_are_refused(run: Pipeline, capsys) -> None:
    scores, meta = load_scores(run.root / run.scores)
    save_scores(run.root / "other.pt", scores, {**meta, "arch": "resnet34"})
    error = cli_error(run, with_arg(run.commands()["run"], "--scores", "other.pt"), capsys)
    assert "other.pt: made from something else (arch is 'resnet34', expected 'tiny-cnn')" in error


def test_scores_of_another_baseline_are_refused(run: Pipeline, capsys) -> None:
    (run.root / "longer.yaml").write_text(yaml.safe_dump(tiny_params(train={"epochs": 2})))
    other = with_arg(with_arg(run.commands()["train"], "--params", "longer.yaml"), "--out", "other-base.pt")
    with working_in(run.root):  # the same data and model settings, other weights
        assert main(other) == 0
    error = cli_error(run, with_arg(run.commands()["run"], "--model", "other-base.pt"), capsys)
    assert f"{run.scores}: made from something else (baseline is '" in error


def test_a_fine_tuned_model_given_as_the_baseline_is_refused(run: Pipeline, capsys) -> None:
    error = cli_error(run, with_arg(run.commands()["run"], "--model", run.tuned), capsys)
    assert f"{run.tuned}: made from something else (stage is 'finetuned', expected 'baseline')" in error


def test_a_model_made_from_other_data_is_refused(run: Pipeline, capsys) -> None:
    (run.root / "other.yaml").write_text(yaml.safe_dump(tiny_params(data={"max_per_class": 5})))
    error = cli_error(run, with_arg(run.commands()["scores"], "--params", "other.yaml"), capsys)
    assert f"{run.baseline}: made from something else (data is '" in error


def test_a_resume_on_changed_data_names_the_keys_and_the_file_to_delete(run: Pipeline, capsys) -> None:
    checkpoint = leave_checkpoint(run, run.commands()["run"])
    (run.root / run.params).write_text(yaml.safe_dump(tiny_params(data={"val_fraction": 0.5})))
    with working_in(run.root):  # the baseline and scores follow the new data settings, as a rerun makes them
        assert main(with_arg(run.commands()["train"], "--out", run.baseline)) == 0
        assert main(with_arg(run.commands()["scores"], "--out", run.scores)) == 0
    error = cli_error(run, run.commands()["run"], capsys)
    assert f"{checkpoint} was written for other inputs (" in error and "data: '" in error
    assert f"delete {checkpoint} to start over, or pass --restart" in error
    with working_in(run.root):
        assert main([*run.commands()["run"], "--restart"]) == 0


def test_a_truncated_checkpoint_names_the_file_to_delete(run: Pipeline, capsys) -> None:
    checkpoint = leave_checkpoint(run, run.commands()["run"])
    (run.root / checkpoint).write_bytes((run.root / checkpoint).read_bytes()[:1000])
    error = cli_error(run, run.commands()["run"], capsys)
    assert f"{checkpoint}: " in error and f"delete {checkpoint} to start over, or pass --restart" in error


def test_a_resume_after_the_architecture_changed_is_refused(run: Pipeline, capsys) -> None:
    leave_checkpoint(run, run.commands()["run"])
    error = cli_error(run, with_arg(run.commands()["run"], "--ratio", "0.25"), capsys)
    assert "was written for other inputs (" in error and "architecture: '" in error


@pytest.mark.parametrize("key, value", [("epochs", 1.0), ("batch_size", 8.0), ("epochs", True)])
def test_whole_numbers_must_be_integers(run: Pipeline, key: str, value, capsys) -> None:
    params = tiny_params()
    params["train"][key] = value
    (run.root / "floats.yaml").write_text(yaml.safe_dump(params))
    error = cli_error(run, with_arg(run.commands()["train"], "--params", "floats.yaml"), capsys)
    assert f"floats.yaml: train.{key}: {value} is not of type 'integer'" in error


def test_an_empty_test_split_stops_before_training(tmp_path: Path, capsys) -> None:
    from test_data_formats import make_voc

    images = {f"{name}{i}": [(name, 2, 2, 20, 20)] for name in ("ant", "cat") for i in range(6)}
    make_voc(tmp_path / "run" / "data", images, sets={"trainval": list(images), "test": []})
    run = Pipeline(tmp_path / "run")
    params = tiny_params(data={"format": "voc"})
    (run.root / run.params).write_text(yaml.safe_dump(params))
    error = cli_error(run, run.commands()["train"], capsys)
    assert "test split has no image" in error
    assert not (run.root / "work").exists()


def test_data_check_with_a_policy_that_is_not_json_is_one_line(run: Pipeline, capsys) -> None:
    error = cli_error(run, ["data", "check", run.data, "--format", "csv", "--problems", "notjson"], capsys)
    assert "--problems: not valid JSON" in error


def test_the_docs_schema_and_code_know_the_same_problem_kinds() -> None:
    text = (REPO / "docs" / "datasets.md").read_text().split("## Problems and what happens to them")[1]
    documented = re.findall(r"^\| `([a-z-]+)` \|", text, flags=re.MULTILINE)
    schema = load_schema()["properties"]["data"]["properties"]["problems"]["propertyNames"]["enum"]
    assert sorted(documented) == sorted(DEFAULT_ACTIONS) == sorted(schema)
    assert len(documented) == len(set(documented))
