"""The studies: sanity check, per-layer sensitivity, latency per architecture, scratch rows."""

import pytest
import torch
import yaml

from conftest import REPO
from mapex import experiment, studies
from mapex.config import load_params
from mapex.criteria import get_criterion
from mapex.data.task import load_task_data
from mapex.models import build_model, reinitialise
from mapex.pipeline import Row, row
from mapex.prune import prunable_groups, prune_model


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_imagenet):
    """A small trained-ish setting: tiny-resnet on two classes of the embedded data, 6 val images per class."""
    params = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    params["model"] = {"arch": "tiny-resnet", "stem": "small", "pretrained": False}
    params["data"].update(max_per_class=15, max_test_per_class=4, image_size=32)
    params["sanity"] = {
        "criteria": ["l1", "bn-scale", "l1-global"],
        "ratios": [0.5],
        "random_draws": 3,
        "recalibrate_bn": 1,
        "extra_baseline_seeds": [],
    }
    params["sensitivity"] = {"criteria": ["l1", "random"], "fraction": 0.5, "recalibrate_bn": 1}
    params["prune"]["ratios"] = [0.5]
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    params = load_params(path)
    task = load_task_data(params, tiny_imagenet, params["data"]["tasks"][0]["classes"])
    torch.manual_seed(0)
    model = experiment.task_model(build_model("tiny-resnet", len(task.source_classes), stem="small"), task)
    return params, task, model


def _scores(params, model, names):
    return {
        name: experiment.compute_scores(params, model, row(params, name), None, 0, torch.device("cpu"))
        for name in names
    }


def test_sanity_has_top_bottom_and_random_cases_with_shared_random_draws(tiny_setup):
    params, task, model = tiny_setup
    scores = _scores(params, model, params["sanity"]["criteria"])
    table = studies.sanity_study(params, model, task, "t", scores, torch.device("cpu"))
    assert set(table["case"]) == {"top", "bottom", "random"}
    for name in params["sanity"]["criteria"]:
        cases = table[table["criterion"] == name]
        assert (cases["case"] == "random").sum() == params["sanity"]["random_draws"]
        assert cases["val_top1"].between(0, 1).all()
    # local rows prune to the same shapes, so they are compared with the very same random draws
    random = table[table["case"] == "random"].set_index(["criterion", "draw"])["val_top1"]
    assert list(random.loc["l1"]) == list(random.loc["bn-scale"])


def test_negated_scores_keep_the_bottom_scored_filters():
    model = build_model("tiny-cnn", 3)
    criterion = get_criterion("l1")
    scores = criterion.compute(model)
    bottom = get_criterion("l1", scores=studies.negated(scores))
    report = prune_model(model, bottom, 0.5, torch.zeros(1, 3, 32, 32))
    expected = sorted(scores["1.0"].argsort()[:8].tolist())  # the 8 lowest-L1 filters of the 16
    assert report.kept["1.0"] == expected


def test_keep_prunes_only_the_named_convs():
    model = build_model("tiny-resnet", 3, stem="small")
    criterion = get_criterion("l1")
    criterion.compute(model)
    example = torch.zeros(1, 3, 32, 32)
    group = prunable_groups(model, example)[-1]
    before = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    report = prune_model(model, criterion, 0.5, example, keep={name: before[name] // 2 for name in group})
    changed = {name for name in before if report.filters_after[name] != before[name]}
    assert changed == set(group)


@pytest.mark.parametrize("amp", [False, True])
def test_studies_validate_under_the_amp_autocast(tiny_setup, monkeypatch, amp):
    import mapex.evaluate

    params, task, model = tiny_setup
    monkeypatch.setattr("mapex.io.cpu_has_bfloat16", lambda: True)
    seen = []
    for name in ("accuracy", "recalibrate_batchnorm"):
        original = getattr(mapex.evaluate, name)

        def recording(*args, _original=original, **kwargs):
            seen.append(torch.is_autocast_enabled("cpu"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(mapex.evaluate, name, recording)
    evaluator = studies._Evaluator({**params, "amp": amp}, model, task, torch.device("cpu"), recalibrate_bn=1)
    assert 0 <= evaluator.accuracy(model) <= 1
    assert seen == [amp, amp]  # BN re-estimation, then validation


def test_sensitivity_prunes_one_group_at_a_time_for_every_row(tiny_setup):
    params, task, model = tiny_setup
    scores = _scores(params, model, params["sensitivity"]["criteria"])
    table = studies.sensitivity_study(params, model, task, "t", scores, torch.device("cpu"))
    groups = prunable_groups(model, torch.zeros(1, 3, 32, 32))
    assert len(table) == len(groups) * len(scores)
    assert set(table["layer"]) == {group[0] for group in groups}
    reference = table["val_top1"] + table["drop"]
    assert reference.nunique() == 1  # every drop is against the same unpruned validation top-1


def test_latency_is_measured_once_per_distinct_shape(tiny_setup, tmp_path):
    params, task, model = tiny_setup
    params = {**params, "evaluate": {"latency_batches": [2], "latency_reps": 1}}
    example = torch.zeros(1, 3, 32, 32)
    pruned = {}
    runs = []
    for name, ratio in (("l1", 0.5), ("bn-scale", 0.5), ("l1-global", 0.5)):
        copy = build_model("tiny-resnet", 2, stem="small")
        spec = row(params, name)
        criterion = experiment.make_criterion(spec, 0)
        criterion.compute(copy)
        report = prune_model(copy, criterion, ratio, example, global_pruning=spec.global_ranking, round_to=None)
        pruned[name] = copy
        runs.append(
            {
                "run": name,
                "task": "t",
                "seed": 0 if name != "l1-global" else 1,
                "criterion": name,
                "ratio": ratio,
                "filters_after": report.filters_after,
                "macs": report.macs_after,
                "params": report.params_after,
            }
        )
    loaded = []
    table = studies.latency_by_shape(
        params, runs, lambda run: loaded.append(run) or pruned[run], model, onnx_dir=tmp_path
    )
    shapes = {studies.shape_key(run["filters_after"]) for run in runs}
    assert len(table) == len(shapes) == len(loaded)
    local = table[table["rows"].str.contains("bn-scale")]
    assert local["rows"].iloc[0] == "bn-scale;l1"  # one latency for the two local rows of identical shape
    assert (table["speedup_cpu_b2"] > 0).all()
    # ONNX Runtime: the first task's first seed only (l1-global here ran on another seed)
    assert local["speedup_ort_b2"].iloc[0] > 0 and (tmp_path / "l1.onnx").is_file()
    assert table.loc[table["rows"] == "l1-global", "speedup_ort_b2"].isna().all()
    # one MAC counter: the reduction is the pruning report's own before/after ratio (the reference's
    # classifier differs from the copies' by a few MACs; a second counter would differ by about 1 %)
    assert table["mac_reduction"].iloc[0] == pytest.approx(report.macs_before / table["macs"].iloc[0], rel=1e-4)


def test_reinitialise_draws_fresh_weights_from_the_seed():
    first, second, other = (build_model("tiny-cnn", 3) for _ in range(3))
    for model, seed in ((first, 1), (second, 1), (other, 2)):
        reinitialise(model, seed)
    a, b, c = (m.state_dict() for m in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.0.weight"], c["0.0.weight"])


def test_scratch_rows_are_rows_with_the_flag(tmp_path):
    params = load_params(REPO / "config/full.yaml")
    spec = row(params, "l1-scratch")
    assert spec == Row("l1-scratch", "l1", {}, params["prune"]["global"], True)
