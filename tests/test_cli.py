"""The CLI: subcommands, one-line errors for bad config, before any computation."""

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mapex.cli import main
from mapex.config import load_params
from mapex.data.task import load_task_data
from mapex.io import UserError
from mapex.prune import load_pruned
from pipeline_files import tiny_params, working_in, write_csv_dataset


def _params(tmp_path: Path, **edits) -> Path:
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    for dotted, value in edits.items():
        section, key = dotted.split("__")
        params.setdefault(section, {})[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_help_lists_every_stage():
    output = subprocess.run(["mapex", "--help"], capture_output=True, text=True, check=True).stdout
    for command in (
        "fetch",
        "data",
        "train",
        "scores",
        "run",
        "sanity",
        "sensitivity",
        "samples",
        "response-maps",
        "latency",
        "report",
    ):
        assert command in output
    module = subprocess.run(["python", "-m", "mapex", "--help"], capture_output=True, text=True, check=True).stdout
    assert "response-maps" in module


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"prune__criteria": ["map-ex", "magic"]}, "criterion 'magic' is neither a registered criterion"),
        ({"variants__l1": {"criterion": "l1"}}, "variants.l1: a variant may not take the name of a registered"),
        ({"variants__odd": {"criterion": "map-ex", "score": "median"}}, "odd: score 'median' is not one of diff"),
        ({"variants__odd": {"criterion": "l1", "score": "diff"}}, "odd: criterion 'l1' has no option 'score'"),
        (
            {"variants__odd": {"criterion": "map-ex", "score": "contrast", "tap": "consumed"}},
            "odd: score 'contrast' needs tap 'nonneg'",
        ),
        ({"prune__ratios": [0.5, 1.5]}, "prune.ratios[1]: 1.5 is greater than or equal to the maximum of 1"),
        ({"prune__ratios": [0.0]}, "prune.ratios[0]: 0.0 is less than or equal to the minimum of 0"),
        ({"train__epochs": 0}, "train.epochs: 0 is less than the minimum of 1"),
        ({"sanity__extra_baseline_seeds": [1, 0]}, "sanity.extra_baseline_seeds: 0 is train.seed"),
        ({"sanity__extra_baseline_seeds": [1, 1]}, "sanity.extra_baseline_seeds: [1, 1] has non-unique elements"),
        ({"finetune__epoch_sizes": [16, 80]}, "finetune.epoch_sizes: 80 px is larger than data.image_size"),
        ({"train__epoch_sizes": [0]}, "train.epoch_sizes[0]: 0 is less than the minimum of 1"),
    ],
)
def test_bad_values_name_the_key(tmp_path, edits, message):
    with pytest.raises(UserError, match=None) as error:
        load_params(_params(tmp_path, **edits))
    assert message in str(error.value)


def test_unknown_key_is_named(tmp_path):
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    params["prune"]["ratio"] = 0.5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"prune: Additional properties are not allowed \('ratio' was unexpected\)"):
        load_params(path)


def test_cli_error_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [
            "mapex",
            "train",
            "--params",
            str(_params(tmp_path, prune__ratios=[2])),
            "--data",
            "nowhere",
            "--out",
            "m.pt",
            "--metrics",
            "m.json",
            "--history",
            "h.csv",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "prune.ratios[0]: 2 is greater than or equal to the maximum of 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_missing_dataset_folder_is_named(tmp_path):
    params = load_params(_params(tmp_path))
    with pytest.raises(UserError, match="nowhere: dataset folder not found"):
        load_task_data(params, tmp_path / "nowhere")


def test_class_not_in_dataset_is_named(tmp_path, tiny_imagenet):
    params = load_params(_params(tmp_path, data__tasks=[{"name": "t", "classes": ["n04540053", "n99999999"]}]))
    with pytest.raises(UserError, match="n99999999"):
        load_task_data(params, tiny_imagenet)


def test_a_problem_policy_for_tiny_imagenet_is_refused_not_ignored(tmp_path, tiny_imagenet):
    params = load_params(_params(tmp_path, data__problems={"no-box": "error"}))
    with pytest.raises(UserError, match="data.problems: the tiny-imagenet reader checks the layout, not each image"):
        load_task_data(params, tiny_imagenet)


def test_a_task_name_used_twice_is_named(tmp_path):
    tasks = [{"name": "t", "classes": ["n04540053", "n02802426"]}, {"name": "t", "classes": ["n02165456", "n01855672"]}]
    with pytest.raises(UserError, match="data.tasks: task name 't' is used twice"):
        load_params(_params(tmp_path, data__tasks=tasks))


def test_fewer_samples_than_n_is_named(tmp_path, tiny_imagenet):
    params_file = _params(tmp_path, statistics__samples_per_class=1000)
    code = main(
        [
            "scores",
            "--params",
            str(params_file),
            "--data",
            str(tiny_imagenet),
            "--model",
            "unused.pt",
            "--criterion",
            "map-ex",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "s.pt"),
        ]
    )
    assert code == 2
    assert not (tmp_path / "s.pt").exists()


def test_task_splits_are_disjoint_and_test_is_the_val_folder(tmp_path, tiny_imagenet):
    params = load_params(_params(tmp_path))
    classes = params["data"]["tasks"][1]["classes"]
    task = load_task_data(params, tiny_imagenet, classes)
    train = {s.image for s in task.task_train.samples}
    val = {s.image for s in task.task_val.samples}
    test = {s.image for s in task.task_test.samples}
    assert not train & val and not (train | val) & test
    assert all("/val/" in str(path) for path in test)
    assert task.task_test.classes == classes
    assert [task.source_classes[i] for i in task.task_class_indices] == classes


def _run_cli(*args: str) -> None:
    assert main(list(args)) == 0, args


def _voc_archive(tmp_path: Path) -> tuple[Path, str]:
    """A small Pascal VOC dataset (3 classes, split files), packed as a user would: tar.gz + sha256."""
    import hashlib
    import tarfile

    from test_data_formats import make_voc

    images, sets = {}, {"trainval": [], "test": []}
    for c, name in enumerate(["cat", "dog", "bird"]):
        for i in range(14):
            image_id = f"{name}{i:02d}"
            images[image_id] = [(name, 4 + c, 5, 20 + c, 26)]
            sets["test" if i >= 10 else "trainval"].append(image_id)
    root = make_voc(tmp_path / "voc" / "myvoc", images, sets)
    (root / "JPEGImages" / "cat03.jpg").unlink()  # a missing image: skipped by default, and counted
    archive = tmp_path / "myvoc.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="myvoc")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def _tiny_params(tmp_path: Path, data: dict, **sections) -> Path:
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    params["data"].update(data)
    params["model"] = {"arch": "tiny-cnn", "stem": "imagenet", "pretrained": False}
    params["evaluate"] = {"latency_batches": [1, 4], "latency_reps": 1}
    for name, values in sections.items():
        params[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_voc_dataset_goes_through_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive, sha256 = _voc_archive(tmp_path)
    params = str(
        _tiny_params(
            tmp_path,
            {
                "name": "myvoc",
                "source": str(archive),
                "sha256": sha256,
                "format": "voc",
                "image_size": 32,
                "max_per_class": None,
                "max_test_per_class": None,
                "val_fraction": 0.2,
                "tasks": [{"name": "pets", "classes": ["cat", "bird"]}],
            },
            statistics={"samples_per_class": 4, "batch_size": 8},
        )
    )
    _run_cli("fetch", "--params", params, "--out", "data")
    _run_cli(
        "train",
        "--params",
        params,
        "--data",
        "data",
        "--out",
        "base.pt",
        "--metrics",
        "base.json",
        "--history",
        "base.csv",
    )
    _run_cli(
        "scores",
        "--params",
        params,
        "--data",
        "data",
        "--model",
        "base.pt",
        "--criterion",
        "map-ex",
        "--task",
        "pets",
        "--seed",
        "0",
        "--out",
        "scores.pt",
    )
    _run_cli(
        "run",
        "--params",
        params,
        "--data",
        "data",
        "--model",
        "base.pt",
        "--scores",
        "scores.pt",
        "--task",
        "pets",
        "--criterion",
        "map-ex",
        "--ratio",
        "0.5",
        "--seed",
        "0",
        "--out",
        "tuned.pt",
        "--history",
        "tuned.csv",
        "--metrics",
        "run.json",
    )
    import json

    baseline = json.loads((tmp_path / "base.json").read_text())
    run = json.loads((tmp_path / "run.json").read_text())
    assert baseline["n_classes"] == 3 and baseline["n"] == 12
    assert baseline["skipped_samples"] == {"missing-image": 1}
    assert run["n"] == 8 and run["criterion"] == "map-ex" and run["ratio"] == 0.5 and run["task"] == "pets"
    assert len(run["predictions"]["pred"]) == len(run["predictions"]["label"]) == 8
    assert run["params"] < baseline["params"] and 0 < run["macs_removed"] < 1


def test_samples_study_prunes_and_fine_tunes_at_every_n(tmp_path, monkeypatch, tiny_imagenet):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    params = str(
        _tiny_params(
            tmp_path, {"max_per_class": 20, "max_test_per_class": 5}, train={"epochs": 1}, finetune={"epochs": 1}
        )
    )
    _run_cli(
        "train",
        "--params",
        params,
        "--data",
        str(tiny_imagenet),
        "--out",
        "base.pt",
        "--metrics",
        "base.json",
        "--history",
        "base.csv",
    )
    _run_cli("samples", "--params", params, "--data", str(tiny_imagenet), "--model", "base.pt", "--out", "study.csv")
    study = pd.read_csv(tmp_path / "study.csv")
    ci = yaml.safe_load((REPO / "config/ci.yaml").read_text())["samples_study"]
    assert list(study["n_per_class"]) == ci["n_per_class"] * len(ci["seeds"])
    assert study["spearman"].between(-1, 1).all()
    for column in ("top1_before_finetune", "top1"):
        assert study[column].between(0, 1).all()
    assert not (tmp_path / "work/checkpoints").exists() or not any((tmp_path / "work/checkpoints").iterdir())


def _train_command(params: Path, data: Path, out: Path) -> list[str]:
    return [
        "mapex",
        "train",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        str(out / "model.pt"),
        "--metrics",
        str(out / "metrics.json"),
        "--history",
        str(out / "history.csv"),
    ]


def test_training_killed_with_sigkill_resumes_to_the_same_result(tmp_path, tiny_imagenet):
    """Kill a real training process after its first checkpoint; the rerun ends where an uninterrupted run does."""
    import json
    import signal
    import time

    import torch

    params = _tiny_params(
        tmp_path, {"max_per_class": 60, "max_test_per_class": 5}, train={"epochs": 6, "batch_size": 32, "lr": 0.05}
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    subprocess.run(_train_command(params, tiny_imagenet, whole), cwd=whole, check=True, capture_output=True)

    process = subprocess.Popen(
        _train_command(params, tiny_imagenet, killed), cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not list((killed / "work/checkpoints").rglob("last.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    assert not (killed / "model.pt").exists() and not (killed / "metrics.json").exists()

    subprocess.run(_train_command(params, tiny_imagenet, killed), cwd=killed, check=True, capture_output=True)
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    for key in ("top1", "top5", "val_top1", "best_epoch", "params", "macs"):
        assert first[key] == second[key], key
    weights = [load_pruned(d / "model.pt")[0].state_dict() for d in (whole, killed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_further_baseline_is_trained_and_checked_on_its_own_split(tmp_path, capsys):
    """``--train-seed`` (sanity.extra_baseline_seeds) trains with that train.seed, hence on its own
    validation carve-out; the sanity check on that baseline must be told so, or it stops with one
    line naming the model and writes nothing."""
    write_csv_dataset(tmp_path / "data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    model = ["--data", "data", "--model", "base1.pt"]
    with working_in(tmp_path):
        assert (
            main(
                [
                    "train",
                    "--data",
                    "data",
                    "--out",
                    "base1.pt",
                    "--metrics",
                    "m.json",
                    "--history",
                    "h.csv",
                    "--train-seed",
                    "1",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert main(["sanity", *model, "--out", "wrong.csv"]) == 2
        error = capsys.readouterr().err
        assert main(["sanity", *model, "--out", "s1.csv", "--train-seed", "1"]) == 0
    assert load_pruned(tmp_path / "base1.pt")[1]["seed"] == 1
    assert error.count("\n") == 1 and "base1.pt" in error and "Traceback" not in error
    assert not (tmp_path / "wrong.csv").exists() and (tmp_path / "s1.csv").stat().st_size > 0
