"""Filter criteria of mapex.criteria on tiny nets with hand-checkable scores."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch_pruning as tp
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from mapex.criteria import CRITERIA, Criterion, criterion_from_params, criterion_options, get_criterion
from mapex.io import UserError

SIZE = (16, 16)
NUM_CLASSES = 3


class TinyNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, global average pool, linear."""

    def __init__(self, batchnorm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else lambda _: nn.Identity()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), norm(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1, stride=2), norm(6)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, one torchvision BasicBlock with a downsample, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.block = BasicBlock(8, 16, stride=2, downsample=downsample)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_batches(count: int = 2, size: int = 5, seed: int = 0) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    box = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    return [
        (
            torch.randn(size, 3, *SIZE, generator=generator),
            torch.randint(0, NUM_CLASSES, (size,), generator=generator),
            [box] * size,
        )
        for _ in range(count)
    ]


def seeded(model_class: type[nn.Module], **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return model_class(**kwargs).eval()


# --------------------------------------------------------------------------- every criterion


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_scores_every_filter_finitely(name: str) -> None:
    model = seeded(TinyNet).train()
    scores = get_criterion(name).compute(model, make_batches(), SIZE)
    assert set(scores) == {"conv1", "conv2"}
    assert scores["conv1"].shape == (4,) and scores["conv2"].shape == (6,)
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert model.training, "compute() must restore the model's mode"


def test_registry_holds_the_spec_criteria() -> None:
    assert set(CRITERIA) == {"map-ex", "map", "l1", "bn-scale", "apoz", "hrank", "taylor", "random"}
    assert {name for name, cls in CRITERIA.items() if cls.needs_data} == {"map-ex", "map", "apoz", "hrank", "taylor"}
    assert all(cls.name == name for name, cls in CRITERIA.items())


def test_unknown_criterion_names_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown criterion 'l3'.*bn-scale.*taylor"):
        get_criterion("l3")


def test_options_a_criterion_does_not_take_are_user_errors() -> None:
    assert get_criterion("random", seed=7).seed == 7 and get_criterion("map", score="fg").score == "fg"
    with pytest.raises(UserError, match="'l1' has no option seed; it takes scores"):
        get_criterion("l1", seed=1)


def test_each_criterion_takes_from_the_params_what_it_needs() -> None:
    """A row gives its options and the run's seed; only ``random`` draws from the seed."""
    assert criterion_from_params("random", {}, seed=7).seed == 7
    chosen = criterion_from_params("map-ex", {"score": "fg", "tap": "consumed", "field": "effective"}, seed=7)
    assert (chosen.score, chosen.field) == ("fg", "effective")
    assert isinstance(
        criterion_from_params("l1", {}, seed=7), CRITERIA["l1"]
    )  # no seed for a criterion that draws nothing
    with pytest.raises(UserError, match="'l1' has no option score"):
        criterion_from_params("l1", {"score": "fg"}, seed=7)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_declared_options_are_the_constructor_keywords_with_the_first_value_as_default(name: str) -> None:
    parameters = inspect.signature(CRITERIA[name]).parameters
    for option, allowed in criterion_options(name).items():
        assert parameters[option].default == allowed[0], (name, option)
        for value in allowed[1:]:  # every declared value is accepted (contrast only with the nonneg tap)
            needed = {"tap": "nonneg"} if value == "contrast" else {}
            assert getattr(get_criterion(name, **{option: value}, **needed), option) == value


def test_map_ex_and_map_declare_their_variants() -> None:
    assert criterion_options("map-ex") == {
        "score": ("diff", "ratio", "fg", "contrast"),
        "tap": ("consumed", "nonneg"),
        "field": ("theoretical", "effective"),
    }
    assert criterion_options("map") == {"score": ("diff", "ratio", "fg", "contrast"), "tap": ("consumed", "nonneg")}
    assert criterion_options("l1") == {} and criterion_options("random") == {}
    criterion_options("map-ex")["tap"] = ("changed",)  # a copy: the class's declaration is untouched
    assert criterion_options("map-ex")["tap"] == ("consumed", "nonneg")
    with pytest.raises(UserError, match="unknown criterion 'mapex'"):
        criterion_options("mapex")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("map-ex", {"tap": "signed"}, "criterion 'map-ex': unknown tap 'signed'; valid: consumed, nonneg"),
        (
            "map-ex",
            {"field": "measured"},
            "criterion 'map-ex': unknown field 'measured'; valid: theoretical, effective",
        ),
        ("map-ex", {"score": "contrast"}, "score 'contrast' needs tap 'nonneg'"),
        ("map", {"field": "effective"}, "criterion 'map' has no option field; it takes scores, score, tap"),
    ],
)
def test_bad_variant_options_are_one_line_user_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        get_criterion(name, **options)


def test_data_criterion_without_batches_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs data"):
        get_criterion("apoz").compute(seeded(TinyNet), None, SIZE)


def test_taylor_needs_labels() -> None:
    images, _, boxes = make_batches()[0]
    with pytest.raises(UserError, match="labelled"):
        get_criterion("taylor").compute(seeded(TinyNet), [(images, boxes)], SIZE)


# --------------------------------------------------------------------------- data-free criteria


def test_l1_is_the_sum_of_absolute_filter_weights() -> None:
    model = seeded(TinyNet)
    signs = torch.where(torch.rand(4, 3, 3, 3) > 0.5, 1.0, -1.0)
    with torch.no_grad():
        model.conv1.weight.copy_(signs * torch.arange(1.0, 5.0).view(4, 1, 1, 1))
    scores = get_criterion("l1").compute(model)
    assert torch.allclose(scores["conv1"], torch.tensor([27.0, 54.0, 81.0, 108.0]))


def test_bn_scale_is_the_absolute_gamma_of_the_following_batchnorm() -> None:
    model = seeded(TinyNet)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([-2.0, 0.5, 3.0, -1.0]))
    scores = get_criterion("bn-scale").compute(model)
    assert torch.equal(scores["conv1"], torch.tensor([2.0, 0.5, 3.0, 1.0]))
    assert torch.equal(scores["conv2"], model.bn2.weight.detach().abs())


def test_bn_scale_refuses_convs_without_batchnorm() -> None:
    with pytest.raises(UserError, match="no affine BatchNorm follows conv1, conv2"):
        get_criterion("bn-scale").compute(seeded(TinyNet, batchnorm=False))


def test_random_scores_follow_the_seed() -> None:
    model = seeded(TinyNet)
    first = get_criterion("random", seed=3).compute(model)
    again = get_criterion("random", seed=3).compute(model)
    other = get_criterion("random", seed=4).compute(model)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["conv2"], other["conv2"])


# --------------------------------------------------------------------------- data-driven criteria


def silence_filter(conv: nn.Conv2d, bn: nn.BatchNorm2d, channel: int, level: float) -> None:
    """Make ``channel``'s BN output the constant ``level`` (zero weights; BN stats are 0 and 1)."""
    with torch.no_grad():
        conv.weight[channel] = 0.0
        conv.bias[channel] = 0.0
        bn.bias[channel] = level


def test_apoz_gives_a_dead_filter_the_lowest_score() -> None:
    model = seeded(TinyNet)
    silence_filter(model.conv1, model.bn1, channel=2, level=-1.0)
    scores = get_criterion("apoz").compute(model, make_batches(), SIZE)["conv1"]
    assert scores[2] == 0.0
    assert scores.argmin() == 2 and (scores[[0, 1, 3]] > 0).all()


def test_apoz_counts_the_zeros_relu_would_make_where_no_relu_follows() -> None:
    model = seeded(TinyResNet)
    with torch.no_grad():  # block.conv2's consumed activation is bn2's output (it meets the residual add)
        model.block.bn2.bias[:2] = torch.tensor([100.0, -100.0])
    scores = get_criterion("apoz").compute(model, make_batches(), SIZE)["block.conv2"]
    assert scores[0] == 1.0 and scores[1] == 0.0


def test_hrank_is_the_mean_feature_map_rank() -> None:
    model = seeded(TinyNet)
    silence_filter(model.conv1, model.bn1, channel=0, level=1.0)  # all-ones map: rank 1
    silence_filter(model.conv1, model.bn1, channel=1, level=-1.0)  # zero after ReLU: rank 0
    scores = get_criterion("hrank").compute(model, make_batches(), SIZE)["conv1"]
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert (scores[2:] > 1.0).all()


def tiny_net_conv2(model: TinyNet, image: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and conv2's BN output, computed out of place."""
    z = model.bn2(model.conv2(torch.relu(model.bn1(model.conv1(image)))))
    return model.fc(torch.relu(z).mean(dim=(2, 3))), z


def tiny_resnet_block_conv2(model: TinyResNet, image: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and block.conv2's BN output, computed out of place (the block's own forward adds in place)."""
    block, stem = model.block, torch.relu(model.bn1(model.conv1(image)))
    z = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(stem)))))
    out = torch.relu(z + block.downsample(stem))
    return model.fc(out.mean(dim=(2, 3))), z


@pytest.mark.parametrize(
    "model_class, conv, forward",
    [(TinyNet, "conv2", tiny_net_conv2), (TinyResNet, "block.conv2", tiny_resnet_block_conv2)],
)
def test_taylor_matches_the_per_image_formula(model_class, conv, forward) -> None:
    model, batches = seeded(model_class), make_batches()
    scores = get_criterion("taylor").compute(model, batches, SIZE)[conv]
    expected, count = 0.0, 0
    for images, labels, _ in batches:
        for image, label in zip(images, labels):
            logits, z = forward(model, image[None])
            (gradient,) = torch.autograd.grad(nn.functional.cross_entropy(logits, label[None]), z)
            expected += (z * gradient).sum(dim=(0, 2, 3)).double().pow(2).detach()
            count += 1
    assert torch.allclose(scores.double(), expected / count, rtol=1e-4)


def test_taylor_scores_zero_for_a_filter_the_loss_never_sees() -> None:
    model = seeded(TinyNet)
    with torch.no_grad():
        model.conv2.weight[:, 1] = 0.0  # conv1's filter 1 feeds nothing
    scores = get_criterion("taylor").compute(model, make_batches(), SIZE)["conv1"]
    assert scores[1] == 0.0 and (scores[[0, 2, 3]] > 0).all()


class PassThrough(nn.Module):
    """1×1 conv where filter ``k`` copies input channel ``k``, ReLU, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["map-ex", "map"])
def test_map_ranks_the_filter_that_fires_inside_the_box_first(name: str) -> None:
    inside = torch.zeros(*SIZE)
    inside[4:12, 4:12] = 1.0
    images = torch.stack([inside, torch.full(SIZE, 0.5), 1.0 - inside])[None].repeat(4, 1, 1, 1)
    box = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    scores = get_criterion(name).compute(PassThrough(), [(images, [box] * 4)], SIZE)["conv"]
    assert torch.allclose(scores, torch.tensor([1.0, 0.0, -1.0]), atol=1e-6)


def test_map_ex_score_variant_reaches_statistics() -> None:
    inside = torch.zeros(*SIZE)
    inside[4:12, 4:12] = 1.0
    images = torch.stack([inside, torch.full(SIZE, 0.5), 1.0 - inside])[None]
    box = [torch.tensor([[4.0, 4.0, 12.0, 12.0]])]
    scores = get_criterion("map-ex", score="fg").compute(PassThrough(), [(images, box)], SIZE)["conv"]
    assert torch.allclose(scores, torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)
    with pytest.raises(UserError, match="score"):
        get_criterion("map-ex", score="median")


@pytest.mark.parametrize("name", ["map-ex", "map"])
def test_contrast_variant_reaches_statistics(name: str) -> None:
    inside = torch.zeros(*SIZE)
    inside[4:12, 4:12] = 1.0
    images = torch.stack([inside, torch.full(SIZE, 0.5), 1.0 - inside])[None]
    box = [torch.tensor([[4.0, 4.0, 12.0, 12.0]])]
    criterion = get_criterion(name, score="contrast", tap="nonneg")
    scores = criterion.compute(PassThrough(), [(images, box)], SIZE)["conv"]
    # F, B = (1, 0), (0.5, 0.5), (0, 1): all inside, no contrast, all outside
    assert torch.allclose(scores, torch.tensor([1.0, 0.0, -1.0]), atol=1e-5)


def test_nonneg_tap_and_effective_field_reach_statistics() -> None:
    model = seeded(TinyResNet)
    consumed = get_criterion("map-ex").compute(model, make_batches(), SIZE)
    nonneg = get_criterion("map-ex", tap="nonneg").compute(model, make_batches(), SIZE)
    # both convs that feed the block's add are scored on the block's output
    assert torch.equal(nonneg["block.conv2"], nonneg["block.downsample.0"])
    assert not torch.equal(consumed["block.conv2"], consumed["block.downsample.0"])
    assert torch.equal(nonneg["conv1"], consumed["conv1"])  # consumed after its ReLU already
    effective = get_criterion("map-ex", tap="nonneg", field="effective").compute(model, make_batches(), SIZE)
    assert not torch.equal(effective["block.conv2"], nonneg["block.conv2"])


# --------------------------------------------------------------------------- group scores


def resnet_groups(model: nn.Module) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, *SIZE))


def test_coupled_group_scores_are_the_mean_of_their_convs() -> None:
    model = seeded(TinyResNet)
    conv2_scores, downsample_scores = torch.arange(16.0), torch.linspace(5.0, -10.0, 16)
    criterion = get_criterion("l1", scores={"block.conv2": conv2_scores, "block.downsample.0": downsample_scores})
    criterion.bind(model)
    graph = resnet_groups(model)

    group = graph.get_pruning_group(model.block.conv2, tp.prune_conv_out_channels, list(range(16)))
    assert torch.allclose(criterion(group), (conv2_scores + downsample_scores) / 2)
    partial = graph.get_pruning_group(model.block.downsample[0], tp.prune_conv_out_channels, [3, 9])
    assert torch.allclose(criterion(partial), (conv2_scores[[3, 9]] + downsample_scores[[3, 9]]) / 2)


def test_group_of_a_single_conv_takes_its_scores() -> None:
    model = seeded(TinyResNet)
    criterion = get_criterion("l1")
    scores = criterion.compute(model)
    group = resnet_groups(model).get_pruning_group(model.block.conv1, tp.prune_conv_out_channels, list(range(16)))
    assert torch.equal(criterion(group), scores["block.conv1"])


def test_scores_of_another_model_are_refused() -> None:
    criterion = get_criterion("random", scores={"conv1": torch.zeros(5)})
    with pytest.raises(UserError, match="5 scores for 'conv1', which has 4 filters"):
        criterion.bind(seeded(TinyNet))


def test_a_group_without_scores_is_an_error() -> None:
    model = seeded(TinyNet)
    criterion = get_criterion("l1", scores={"conv1": torch.ones(4)})
    criterion.bind(model)
    group = resnet_groups(model).get_pruning_group(model.conv2, tp.prune_conv_out_channels, list(range(6)))
    with pytest.raises(UserError, match="no score for the group rooted at conv2"):
        criterion(group)


def test_precomputed_scores_are_kept_as_float_cpu_tensors() -> None:
    criterion = get_criterion("map-ex", scores={"conv1": torch.arange(4, dtype=torch.float64)})
    assert isinstance(criterion, Criterion)
    assert criterion.scores["conv1"].dtype == torch.float32
