"""The CLI: subcommands, one-line errors for bad config, before any computation."""
import subprocess
from pathlib import Path

import pytest
import yaml

from mapex.cli import load_task_data, main
from mapex.config import load_params
from mapex.io import UserError

from conftest import REPO


def _params(tmp_path: Path, **edits) -> Path:
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    for dotted, value in edits.items():
        section, key = dotted.split("__")
        params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_help_lists_every_stage():
    output = subprocess.run(["mapex", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("fetch", "data", "train", "scores", "prune", "finetune", "evaluate", "samples",
                    "response-maps", "report"):
        assert command in output
    module = subprocess.run(["python", "-m", "mapex", "--help"], capture_output=True, text=True, check=True).stdout
    assert "response-maps" in module


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"prune__criteria": ["map-ex", "magic"]}, "prune.criteria[1]: 'magic' is not one of"),
        ({"prune__ratios": [0.5, 1.5]}, "prune.ratios[1]: 1.5 is greater than or equal to the maximum of 1"),
        ({"prune__ratios": [0.0]}, "prune.ratios[0]: 0.0 is less than or equal to the minimum of 0"),
        ({"train__epochs": 0}, "train.epochs: 0 is less than the minimum of 1"),
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
    result = subprocess.run(["mapex", "train", "--params", str(_params(tmp_path, prune__ratios=[2])),
                             "--data", "nowhere", "--out", "m.pt", "--metrics", "m.json", "--history", "h.csv"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "prune.ratios[0]: 2 is greater than or equal to the maximum of 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_missing_dataset_folder_is_named(tmp_path):
    params = load_params(_params(tmp_path))
    with pytest.raises(UserError, match="nowhere: dataset folder not found"):
        load_task_data(params, tmp_path / "nowhere")


def test_class_not_in_dataset_is_named(tmp_path, tiny_imagenet):
    params = load_params(_params(tmp_path, data__task_classes=["n04540053", "n99999999"]))
    with pytest.raises(UserError, match="n99999999"):
        load_task_data(params, tiny_imagenet)


def test_fewer_samples_than_n_is_named(tmp_path, tiny_imagenet):
    params_file = _params(tmp_path, statistics__samples_per_class=1000)
    code = main(["scores", "--params", str(params_file), "--data", str(tiny_imagenet), "--model", "unused.pt",
                 "--criterion", "map-ex", "--seed", "0", "--out", str(tmp_path / "s.pt")])
    assert code == 2
    assert not (tmp_path / "s.pt").exists()


def test_task_splits_are_disjoint_and_test_is_the_val_folder(tmp_path, tiny_imagenet):
    params = load_params(_params(tmp_path))
    task = load_task_data(params, tiny_imagenet)
    train = {s.image for s in task.task_train.samples}
    val = {s.image for s in task.task_val.samples}
    test = {s.image for s in task.task_test.samples}
    assert not train & val and not (train | val) & test
    assert all("/val/" in str(path) for path in test)
    assert task.task_test.classes == params["data"]["task_classes"]
    assert [task.source_classes[i] for i in task.task_class_indices] == params["data"]["task_classes"]
