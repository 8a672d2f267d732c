"""Physical pruning of mapex.prune on a plain net and on torchvision ResNet-18, VGG-16-BN, MobileNetV2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from mapex.criteria import get_criterion
from mapex.io import UserError
from mapex.models import build_model
from mapex.prune import PruneReport, default_exempt, kept_count, load_pruned, prune_model, save_pruned

NUM_CLASSES = 20
INPUT = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.stem, self.conv1, self.conv2):
            x = torch.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "plain":
        return PlainNet().eval()
    return getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).eval()


def permuted_scores(model: nn.Module, seed: int = 1) -> dict[str, Tensor]:
    """Distinct scores per conv, in a seeded random order (ties would make top-k ambiguous)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randperm(m.out_channels, generator=generator).float()
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


def top_k(scores: Tensor, k: int) -> list[int]:
    return sorted(scores.topk(k).indices.tolist())


# --------------------------------------------------------------------------- which filters go


def test_plain_net_keeps_the_top_scored_filters_and_their_weights() -> None:
    model = build("plain")
    scores = permuted_scores(model)
    conv1_before, conv2_before = model.conv1.weight.detach().clone(), model.conv2.weight.detach().clone()
    report = prune_model(model, get_criterion("random", scores=scores), 0.25, INPUT[:1])

    kept1, kept2 = top_k(scores["conv1"], 12), top_k(scores["conv2"], 12)
    assert report.kept["conv1"] == kept1 and report.kept["conv2"] == kept2
    assert report.kept["stem"] == list(range(8)) and report.exempt == ["stem", "fc"]
    assert torch.equal(model.conv1.weight, conv1_before[kept1])
    assert torch.equal(model.conv2.weight, conv2_before[kept2][:, kept1])
    assert model.fc.in_features == 12 and model(INPUT).shape == (2, NUM_CLASSES)


@pytest.fixture(scope="module")
def pruned_vgg() -> tuple[nn.Module, dict[str, Tensor], object]:
    model = build("vgg16_bn")
    scores = permuted_scores(model)
    report = prune_model(model, get_criterion("l1", scores=scores), 0.5, INPUT)
    return model, scores, report


def test_vgg_keeps_the_top_scored_filters_of_each_layer(pruned_vgg) -> None:
    model, scores, report = pruned_vgg
    for name, before in report.filters_before.items():
        if name == "features.0":
            assert report.kept[name] == list(range(64))
        else:
            assert report.kept[name] == top_k(scores[name], before // 2), name
            assert model.get_submodule(name).out_channels == before // 2


def test_pruned_vgg_runs_with_first_conv_and_classifier_whole(pruned_vgg) -> None:
    model, _, report = pruned_vgg
    assert report.exempt == ["features.0", "classifier.6"]
    assert model.features[0].out_channels == 64
    assert model.classifier[6].out_features == NUM_CLASSES and model.classifier[6].in_features == 4096
    assert model.classifier[0].in_features == 256 * 7 * 7
    assert model(INPUT).shape == (2, NUM_CLASSES)


@pytest.fixture(scope="module")
def pruned_resnet() -> tuple[nn.Module, nn.Module, object]:
    original = build("resnet18")
    model = build("resnet18")
    criterion = get_criterion("l1")
    criterion.compute(model)
    report = prune_model(model, criterion, 0.3, INPUT)
    return original, model, report


def test_resnet_coupled_filters_are_ranked_by_their_mean_score(pruned_resnet) -> None:
    original, _, report = pruned_resnet
    scores = get_criterion("l1").compute(original)
    coupled = ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    mean = sum(scores[name] for name in coupled) / len(coupled)
    for name in coupled:
        assert report.kept[name] == top_k(mean, 90)
    assert report.kept["layer3.1.conv1"] == top_k(scores["layer3.1.conv1"], 179)


def test_pruned_resnet_has_the_expected_widths(pruned_resnet) -> None:
    _, model, report = pruned_resnet
    coupled_to_stem = {"conv1", "layer1.0.conv2", "layer1.1.conv2"}  # the stem's residual path is exempt
    for name, before in report.filters_before.items():
        expected = before if name in coupled_to_stem else round(0.7 * before)
        assert model.get_submodule(name).out_channels == expected == report.filters_after[name], name
    assert model.fc.in_features == round(0.7 * 512) and model.fc.out_features == NUM_CLASSES
    assert model(INPUT).shape == (2, NUM_CLASSES)


def test_report_is_consistent_and_json_ready(pruned_resnet) -> None:
    _, model, report = pruned_resnet
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert all(len(report.kept[name]) == count for name, count in report.filters_after.items())
    record = json.loads(json.dumps(report.to_dict()))
    assert record["params_removed"] == pytest.approx(1 - report.params_after / report.params_before)
    assert 0.3 < record["macs_removed"] < 0.7 and record["criterion"] == "l1" and record["ratio"] == 0.3


def test_macs_are_counted_per_image() -> None:
    model = build("plain")
    report = prune_model(model, get_criterion("l1", scores=permuted_scores(model)), 0.0, INPUT)
    conv_macs = 64 * 64 * 9 * (3 * 8 + 8 * 16 + 16 * 16)
    assert conv_macs < report.macs_before < 1.1 * conv_macs
    assert report.macs_after == report.macs_before and report.params_after == report.params_before
    assert report.kept == {name: list(range(count)) for name, count in report.filters_before.items()}


def test_pruned_mobilenet_runs_at_half_width() -> None:
    model = build("mobilenet_v2")
    criterion = get_criterion("random", seed=0)
    criterion.compute(model)
    report = prune_model(model, criterion, 0.5, INPUT)
    assert report.exempt == ["features.0.0", "classifier.1"]
    assert model.features[0][0].out_channels == 32 and model.features[1].conv[0][0].out_channels == 32
    assert model.features[2].conv[0][0].out_channels == 48 and model.features[18][0].out_channels == 640
    expanded, depthwise = model.features[5].conv[0][0], model.features[5].conv[1][0]
    assert expanded.out_channels == depthwise.out_channels == depthwise.groups == 96
    assert report.kept["features.5.conv.0.0"] == report.kept["features.5.conv.1.0"]
    assert model(INPUT).shape == (2, NUM_CLASSES)


# --------------------------------------------------------------------------- options


def _uneven_scores(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """conv1's filters all alike; half of conv2's far below its mean and half far above it."""
    conv2 = torch.cat([torch.full((8,), 0.1), 1.9 + 0.01 * torch.arange(8.0)])[torch.randperm(16)]
    return {"stem": torch.rand(8), "conv1": scale * (1 + 0.01 * torch.rand(16)), "conv2": conv2}


def test_global_ranking_prunes_the_layer_whose_filters_stand_out_least() -> None:
    local_model, global_model = build("plain"), build("plain")
    scores = _uneven_scores()
    prune_model(local_model, get_criterion("l1", scores=scores), 0.25, INPUT)
    report = prune_model(global_model, get_criterion("l1", scores=scores), 0.25, INPUT, global_pruning=True)
    assert (local_model.conv1.out_channels, local_model.conv2.out_channels) == (12, 12)
    assert (global_model.conv1.out_channels, global_model.conv2.out_channels) == (16, 8)
    assert report.kept["conv2"] == top_k(scores["conv2"], 8) and report.global_pruning


def test_global_ranking_compares_layers_after_dividing_by_their_mean_magnitude() -> None:
    """A layer's scale alone (an L1 norm grows with fan-in) does not decide what it keeps."""
    torch.manual_seed(0)
    small, large = build("plain"), build("plain")
    scores = _uneven_scores()
    scaled = {**scores, "conv1": 1000 * scores["conv1"]}
    prune_model(small, get_criterion("l1", scores=scores), 0.25, INPUT, global_pruning=True)
    prune_model(large, get_criterion("l1", scores=scaled), 0.25, INPUT, global_pruning=True)
    assert (small.conv1.out_channels, small.conv2.out_channels) == (large.conv1.out_channels, large.conv2.out_channels)


def test_global_ranking_leaves_every_layer_its_best_filter() -> None:
    model = build("plain")
    scores = {"stem": torch.rand(8), "conv1": 1 + 0.01 * torch.rand(16), "conv2": torch.rand(16) ** 8}
    report = prune_model(model, get_criterion("l1", scores=scores), 0.95, INPUT, global_pruning=True)
    assert model.conv1.out_channels >= 1 and model.conv2.out_channels >= 1
    assert int(scores["conv2"].argmax()) in report.kept["conv2"]
    assert model(INPUT).shape == (2, NUM_CLASSES)


def test_round_to_gives_multiples() -> None:
    assert [kept_count(c, 0.3) for c in (64, 100, 3, 1)] == [45, 70, 2, 1]
    assert kept_count(100, 0.29) == 71  # int(100 * 0.71) would give 70
    assert [kept_count(c, 0.3, round_to=8) for c in (64, 128, 512, 8, 5)] == [48, 88, 360, 6, 4]
    assert kept_count(64, 0.95, round_to=8) == 8
    model = build("resnet18")
    report = prune_model(model, get_criterion("random", seed=0, scores=permuted_scores(model)), 0.3, INPUT, round_to=8)
    assert all(count % 8 == 0 for count in report.filters_after.values())
    assert model(INPUT).shape == (2, NUM_CLASSES)


def test_custom_exempt_layers_keep_their_filters() -> None:
    model = build("plain")
    report = prune_model(model, get_criterion("l1", scores=permuted_scores(model)), 0.5, INPUT, exempt=["conv1", "fc"])
    assert model.conv1.out_channels == 16 and model.stem.out_channels == 4 and model.conv2.out_channels == 8
    assert report.exempt == ["conv1", "fc"]
    with pytest.raises(UserError, match="'conv9' is not in the model"):
        prune_model(build("plain"), get_criterion("l1"), 0.5, INPUT, exempt=["conv9"])


def test_global_ranking_with_nothing_prunable_is_a_no_op() -> None:
    model = build("plain")
    everything = ["stem", "conv1", "conv2", "fc"]
    report = prune_model(model, get_criterion("l1"), 0.5, INPUT, global_pruning=True, exempt=everything)
    assert report.filters_after == report.filters_before and report.params_after == report.params_before


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio: float) -> None:
    with pytest.raises(UserError, match="ratio"):
        prune_model(build("plain"), get_criterion("l1"), ratio, INPUT)


def test_training_mode_and_batchnorm_statistics_survive_pruning() -> None:
    model = build("resnet18").train()
    running_mean = model.layer4[1].bn2.running_mean.clone()
    criterion = get_criterion("l1")
    criterion.compute(model)
    report = prune_model(model, criterion, 0.5, INPUT)
    assert model.training
    assert torch.equal(model.layer4[1].bn2.running_mean, running_mean[report.kept["layer4.1.conv2"]])


def test_default_exempt_finds_the_first_conv_and_the_classifier() -> None:
    assert default_exempt(build("plain"), INPUT) == ["stem", "fc"]


@pytest.mark.parametrize("arch, stem", [("resnet18", "imagenet"), ("mobilenet_v2", "small"), ("vgg16_bn", "small")])
def test_save_and_load_round_trip(tmp_path: Path, arch: str, stem: str) -> None:
    """The file holds weights only; the loaded model is rebuilt to the pruned shapes (depthwise groups
    included) and gives the same outputs; the stem is found from the model when meta lacks it."""
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES, stem=stem).eval()
    criterion = get_criterion("l1")
    criterion.compute(model)
    report = prune_model(model, criterion, 0.5, INPUT)
    save_pruned(model, tmp_path / "pruned.pt", {"arch": arch, "report": report.to_dict()})
    assert torch.load(tmp_path / "pruned.pt", weights_only=True)["format"] == "mapex-model/2"
    loaded, meta = load_pruned(tmp_path / "pruned.pt")
    assert meta["report"]["kept"] == report.kept
    assert (meta["stem"], meta["num_classes"]) == (stem, NUM_CLASSES)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(INPUT), model(INPUT))
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    assert all(p.requires_grad for p in loaded.parameters())


def test_save_refuses_a_model_that_could_not_be_rebuilt(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="match no stem of resnet34"):
        save_pruned(build("resnet18"), tmp_path / "m.pt", {"arch": "resnet34"})
    with pytest.raises(ValueError, match="needs meta\\['arch'\\]"):
        save_pruned(build("resnet18"), tmp_path / "m.pt", {})


def test_loading_something_else_is_a_user_error(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: not a model saved by mapex"):
        load_pruned(tmp_path / "other.pt")


def test_an_old_whole_module_file_is_not_unpickled(tmp_path: Path) -> None:
    torch.save({"model": build("resnet18"), "meta": {}}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="old.pt: a whole-module pickle .* delete it and rerun the stage"):
        load_pruned(tmp_path / "old.pt")


def test_weights_that_contradict_the_meta_are_named(tmp_path: Path) -> None:
    save_pruned(build_model("tiny-cnn", 4), tmp_path / "m.pt", {"arch": "tiny-cnn"})
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    saved["meta"]["arch"] = "tiny-resnet"
    torch.save(saved, tmp_path / "lies.pt")
    with pytest.raises(UserError, match="lies.pt: its weights do not fit a tiny-resnet"):
        load_pruned(tmp_path / "lies.pt")


def test_expected_identity_is_checked_key_by_key(tmp_path: Path) -> None:
    save_pruned(build_model("tiny-cnn", 4), tmp_path / "m.pt", {"arch": "tiny-cnn", "criterion": "l1"})
    assert load_pruned(tmp_path / "m.pt", expect={"arch": "tiny-cnn", "num_classes": 4})[1]["criterion"] == "l1"
    with pytest.raises(UserError, match="criterion is 'l1', expected 'map-ex'; it has no data"):
        load_pruned(tmp_path / "m.pt", expect={"criterion": "map-ex", "data": "abc"})


# --------------------------------------------------------------------------- round_to from params


def _ci_params(tmp_path: Path, **prune_edits) -> Path:
    """config/ci.yaml with ``prune`` edited; an edit to ``None`` removes the key."""
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/ci.yaml").read_text())
    params["prune"].update(prune_edits)
    params["prune"] = {key: value for key, value in params["prune"].items() if value is not None}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _pruned_by_params(params_path: Path) -> PruneReport:
    from mapex.config import load_params
    from mapex.experiment import prune_task_model
    from mapex.pipeline import row

    params = load_params(params_path)
    model = build("resnet18")
    return prune_task_model(params, model, row(params, "random"), permuted_scores(model), 0.3, seed=0)


def test_round_to_defaults_to_8_and_the_prune_stage_uses_it(tmp_path) -> None:
    report = _pruned_by_params(_ci_params(tmp_path, round_to=None))  # key left out: the default applies
    assert set(report.filters_after.values()) == {64, 48, 88, 176, 360}  # 0.7 x (64, 128, 256, 512), nearest 8
    exact = _pruned_by_params(_ci_params(tmp_path, round_to=1))
    assert set(exact.filters_after.values()) == {64, 45, 90, 179, 358}


def test_a_bad_round_to_is_named(tmp_path) -> None:
    from mapex.config import load_params

    with pytest.raises(UserError, match=r"prune.round_to: 0 is less than the minimum of 1"):
        load_params(_ci_params(tmp_path, round_to=0))
