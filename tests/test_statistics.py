"""Activation taps and Map-EX filter scores: hand-worked cases and an independent naive reference."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from mapex.geometry import BoxBatch, batch_foreground_weights, effective_foreground_weights, receptive_fields
from mapex.io import UserError
from mapex.statistics import (
    ResponseAccumulator,
    Tap,
    activation_taps,
    effective_fields,
    filter_scores,
    rank_correlation,
    response_maps,
    tap_activations,
)


def scores_of(model: nn.Module, batches: list, method: str, score: str, **variant: str) -> dict[str, Tensor]:
    return filter_scores(model, batches, method=method, score=score, progress=False, **variant)


# --------------------------------------------------------------------------- hand-worked scores


def identity_conv(kernel: int) -> nn.Conv2d:
    """A 1-channel conv that copies its input (centre weight 1), so its receptive field is ``kernel``."""
    conv = nn.Conv2d(1, 1, kernel, padding=kernel // 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, kernel // 2, kernel // 2] = 1
    return conv


FOUR_BY_FOUR = torch.tensor(
    [
        [1.0, 2, 2, 2],
        [3, 4, 2, 2],
        [2, 2, -4, 0],
        [0, 0, 0, 0],
    ]
)
TOP_LEFT = torch.tensor([[0.0, 0, 2, 2]])  # pixels (0..1, 0..1)


def test_hand_worked_scores_with_relu():
    model = nn.Sequential(identity_conv(1), nn.ReLU())
    batches = [(FOUR_BY_FOUR[None, None], [TOP_LEFT])]
    # F = (1 + 2 + 3 + 4) / 4 = 2.5; the 12 background units after ReLU: six 2s, -4 -> 0, zeros: B = 12 / 12 = 1
    for method in ("map", "map-ex"):  # a 1x1 field: both methods give the same weights
        assert scores_of(model, batches, method, "fg")["0"].item() == pytest.approx(2.5)
        assert scores_of(model, batches, method, "diff")["0"].item() == pytest.approx(1.5)
        assert scores_of(model, batches, method, "ratio")["0"].item() == pytest.approx(2.5 / (1 + 1e-6))


def test_contrast_is_the_difference_over_the_sum():
    model = nn.Sequential(identity_conv(1), nn.ReLU())
    batches = [(FOUR_BY_FOUR[None, None], [TOP_LEFT])]
    # F = 2.5 and B = 1 as above
    contrast = scores_of(model, batches, "map", "contrast", tap="nonneg")["0"].item()
    assert contrast == pytest.approx((2.5 - 1) / (2.5 + 1 + 1e-6))
    dead = nn.Sequential(identity_conv(1), nn.ReLU())
    with torch.no_grad():
        dead[0].weight.zero_()
    assert scores_of(dead, batches, "map", "contrast", tap="nonneg")["0"].item() == 0.0  # 0 / epsilon


def test_means_skip_images_without_foreground_or_background():
    model = nn.Sequential(identity_conv(1), nn.ReLU())
    images = torch.stack([FOUR_BY_FOUR, torch.full((4, 4), 3.0), torch.full((4, 4), 7.0)])[:, None]
    everything = torch.tensor([[0.0, 0, 4, 4]])
    batches = [(images, [TOP_LEFT, torch.zeros(0, 4), everything])]
    # F: image 0 (2.5) and image 2 (7); image 1 has no box. B: image 0 (1) and image 1 (3); image 2 is all box.
    assert scores_of(model, batches, "map", "fg")["0"].item() == pytest.approx((2.5 + 7) / 2)
    assert scores_of(model, batches, "map", "diff")["0"].item() == pytest.approx((2.5 + 7) / 2 - (1 + 3) / 2)


def test_no_image_with_foreground_gives_zero_mean():
    model = nn.Sequential(identity_conv(1), nn.ReLU())
    batches = [(FOUR_BY_FOUR[None, None], [torch.zeros(0, 4)])]
    assert scores_of(model, batches, "map-ex", "fg")["0"].item() == 0.0
    # diff = 0 - mean of the ReLU map
    assert scores_of(model, batches, "map-ex", "diff")["0"].item() == pytest.approx(-22 / 16)


def test_hand_worked_map_ex_fractional_weights():
    # identity 3x3 conv: r = 3, c = 0. Per axis, the share of a unit's clipped field inside the box's
    # pixels {0, 1}: centre 0 -> [0, 1]: 2/2; 1 -> [0, 2]: 2/3; 2 -> [1, 3]: 1/3; 3 -> [2, 3]: 0.
    # One box, so w = wy * wx; Σ w = (1 + 2/3 + 1/3 + 0)^2 = 4 and Σ (1 - w) = 12.
    image = torch.zeros(4, 4)
    image[0, 0], image[1, 1], image[3, 3] = 4, 9, 6  # weights 1, 4/9 and 0
    model = nn.Sequential(identity_conv(3))
    batches = [(image[None, None], [TOP_LEFT])]
    # F = (1*4 + 4/9*9) / 4 = 2; B = (0*4 + 5/9*9 + 1*6) / 12 = 11/12
    assert scores_of(model, batches, "map-ex", "fg")["0"].item() == pytest.approx(2.0)
    assert scores_of(model, batches, "map-ex", "diff")["0"].item() == pytest.approx(2 - 11 / 12)
    # map: units whose centre + 0.5 is in [0, 2)^2 are the top-left 2x2: F = 13/4, B = 6/12
    assert scores_of(model, batches, "map", "diff")["0"].item() == pytest.approx(13 / 4 - 1 / 2)


# --------------------------------------------------------------------------- a naive reference


class SmallNet(nn.Module):
    """conv-BN-ReLU, max pool, conv-BN-ReLU, even-kernel strided conv, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2 = nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.conv3 = nn.Conv2d(5, 6, 2, stride=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.conv3(F.relu(self.bn2(self.conv2(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def consumed(self, x: Tensor) -> dict[str, Tensor]:
        """SPEC's feature maps, computed by hand: after BN + ReLU for conv1, conv2; raw for conv3."""
        a1 = F.relu(self.bn1(self.conv1(x)))
        a2 = F.relu(self.bn2(self.conv2(self.pool(a1))))
        return {"conv1": a1, "conv2": a2, "conv3": self.conv3(a2)}


# (jump, size, start) by hand: conv1 3x3 -> (1, 3, 0); pool 2 -> (2, 4, 0.5); conv2 -> (2, 8, 0.5);
# conv3 2x2 s2 -> (4, 8 + 1*2, 0.5 + 0.5*2) = (4, 10, 1.5)
HAND_GEOMETRY = {"conv1": (1, 3, 0.0), "conv2": (2, 8, 0.5), "conv3": (4, 10, 1.5)}


def random_small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    model = SmallNet()
    for bn in (model.bn1, model.bn2):  # non-trivial BN statistics, some channels mostly negative
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return model.eval()


def random_task(images: int, size: int = 16, seed: int = 1) -> tuple[Tensor, list[Tensor]]:
    """Images with 0 to 3 integer boxes each (overlaps, the border and a whole-image box included)."""
    generator = torch.Generator().manual_seed(seed)
    image_boxes = []
    for i in range(images):
        count = [0, 1, 2, 3, 1][i % 5]
        corner = torch.randint(0, size - 1, (count, 2), generator=generator)
        extent = torch.randint(1, size, (count, 2), generator=generator)
        image_boxes.append(torch.cat([corner, (corner + extent).clamp(max=size)], 1).float())
    image_boxes[-1] = torch.tensor([[0.0, 0, size, size]])
    return torch.randn(images, 3, size, size, generator=generator), image_boxes


def naive_weight(geometry: tuple, y: int, x: int, boxes: Tensor, size: int, method: str) -> float:
    """SPEC read literally: box x0..x1 covers pixels x0 … x1-1; a unit's field L … L+r-1 clipped."""
    jump, r, start = geometry
    cy, cx = start + y * jump, start + x * jump
    if method == "map":
        return float(any(x0 <= cx + 0.5 < x1 and y0 <= cy + 0.5 < y1 for x0, y0, x1, y1 in boxes.tolist()))
    rows = [p for p in range(int(cy - (r - 1) / 2), int(cy - (r - 1) / 2) + r) if 0 <= p < size]
    cols = [p for p in range(int(cx - (r - 1) / 2), int(cx - (r - 1) / 2) + r) if 0 <= p < size]
    covered = sum(
        any(x0 <= px <= x1 - 1 and y0 <= py <= y1 - 1 for x0, y0, x1, y1 in boxes.tolist())
        for py in rows
        for px in cols
    )
    return covered / (len(rows) * len(cols))


def naive_scores(
    model: SmallNet, images: Tensor, boxes: list[Tensor], method: str, score: str, tap: str = "consumed"
) -> dict:
    """Loops over images, units and pixels, straight from SPEC, in float64. SmallNet has no residual
    add, so its ``nonneg`` feature maps are the ReLU of the consumed ones."""
    with torch.no_grad():
        features = model.consumed(images)
    if tap == "nonneg":
        features = {name: F.relu(maps) for name, maps in features.items()}
    result = {}
    for name, maps in features.items():
        maps = maps.double()
        fg, bg = [], []
        for i in range(len(images)):
            h, w = maps.shape[2:]
            weights = torch.tensor(
                [
                    [naive_weight(HAND_GEOMETRY[name], y, x, boxes[i], images.shape[-1], method) for x in range(w)]
                    for y in range(h)
                ],
                dtype=torch.float64,
            )
            if weights.sum() > 0:
                fg.append((weights * maps[i]).sum(dim=(1, 2)) / weights.sum())
            if (1 - weights).sum() > 0:
                bg.append(((1 - weights) * maps[i]).sum(dim=(1, 2)) / (1 - weights).sum())
        channels = maps.shape[1]
        f = torch.stack(fg).mean(0) if fg else torch.zeros(channels, dtype=torch.float64)
        b = torch.stack(bg).mean(0) if bg else torch.zeros(channels, dtype=torch.float64)
        result[name] = {"diff": f - b, "ratio": f / (b + 1e-6), "fg": f, "contrast": (f - b) / (f + b + 1e-6)}[score]
    return result


def in_batches(images: Tensor, boxes: list[Tensor], size: int) -> list[tuple[Tensor, list[Tensor]]]:
    return [(images[i : i + size], boxes[i : i + size]) for i in range(0, len(images), size)]


def test_small_net_geometry_is_the_hand_one():
    from mapex.geometry import LayerGeometry, receptive_fields

    fields = receptive_fields(random_small_net(), (16, 16))
    assert fields == {name: LayerGeometry(*values) for name, values in HAND_GEOMETRY.items()}


@pytest.mark.parametrize("method", ["map", "map-ex"])
@pytest.mark.parametrize("tap", ["consumed", "nonneg"])
def test_agrees_with_naive_reference(method, tap):
    model = random_small_net()
    images, boxes = random_task(10)
    for score in ("diff", "ratio", "fg") + (("contrast",) if tap == "nonneg" else ()):
        expected = naive_scores(model, images, boxes, method, score, tap)
        got = scores_of(model, in_batches(images, boxes, 4), method, score, tap=tap)
        assert set(got) == set(expected)
        for name in expected:
            assert got[name].dtype == torch.float32 and got[name].shape == (model.get_submodule(name).out_channels,)
            torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-5, atol=1e-6)


def test_independent_of_batch_size():
    model = random_small_net(seed=3)
    images, boxes = random_task(7, seed=4)
    one = scores_of(model, in_batches(images, boxes, 1), "map-ex", "diff")
    seven = scores_of(model, in_batches(images, boxes, 7), "map-ex", "diff")
    three = scores_of(model, in_batches(images, boxes, 3), "map-ex", "diff")
    for name in one:
        torch.testing.assert_close(one[name], seven[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(one[name], three[name], rtol=1e-5, atol=1e-7)


def test_batches_with_labels_and_mode_restored():
    model = random_small_net().train()
    images, boxes = random_task(4)
    labels = torch.zeros(4, dtype=torch.long)
    running_mean = model.bn1.running_mean.clone()
    with_labels = filter_scores(model, iter([(images, labels, boxes)]), progress=False)
    assert model.training  # mode restored
    assert torch.equal(model.bn1.running_mean, running_mean)  # scored in eval mode: BN stats untouched
    model.eval()
    without = scores_of(model, [(images, boxes)], "map-ex", "diff")
    for name in without:
        assert torch.equal(with_labels[name], without[name])


def test_amp_is_ignored_on_a_cpu_without_bfloat16_units(monkeypatch):
    monkeypatch.setattr("mapex.io.cpu_has_bfloat16", lambda: False)
    model = random_small_net()
    images, boxes = random_task(3)
    plain = filter_scores(model, [(images, boxes)], progress=False)
    mixed = filter_scores(model, [(images, boxes)], amp=True, progress=False)
    for name in plain:
        assert torch.equal(plain[name], mixed[name])


def test_amp_on_a_bfloat16_cpu_scores_in_bfloat16_close_to_float32(monkeypatch):
    monkeypatch.setattr("mapex.io.cpu_has_bfloat16", lambda: True)  # elsewhere torch emulates it: slow, same numbers
    model = random_small_net()
    images, boxes = random_task(3)
    plain = filter_scores(model, [(images, boxes)], progress=False)
    mixed = filter_scores(model, [(images, boxes)], amp=True, progress=False)
    assert any(not torch.equal(plain[name], mixed[name]) for name in plain)  # the convs ran in bfloat16
    for name in plain:
        assert mixed[name].dtype == plain[name].dtype
        torch.testing.assert_close(mixed[name], plain[name], rtol=0.05, atol=0.02)


def test_bad_arguments_are_user_errors():
    model = random_small_net()
    images, boxes = random_task(2)
    with pytest.raises(UserError, match="score"):
        filter_scores(model, [(images, boxes)], score="mean", progress=False)
    with pytest.raises(UserError, match="method"):
        filter_scores(model, [(images, boxes)], method="box", progress=False)
    with pytest.raises(UserError, match="no batches"):
        filter_scores(model, [], progress=False)
    with pytest.raises(UserError, match="unknown tap 'signed'"):
        filter_scores(model, [(images, boxes)], tap="signed", progress=False)
    with pytest.raises(UserError, match="unknown field 'measured'"):
        filter_scores(model, [(images, boxes)], field="measured", progress=False)


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"score": "contrast"}, "score 'contrast' needs tap 'nonneg'"),
        ({"method": "map", "field": "effective"}, "field 'effective' applies to method 'map-ex' only"),
    ],
)
def test_variant_combinations_outside_the_spec_are_user_errors(variant, message):
    images, boxes = random_task(2)
    with pytest.raises(UserError, match=message):
        filter_scores(random_small_net(), [(images, boxes)], progress=False, **variant)


def test_accumulator_state_does_not_grow_with_images():
    model = random_small_net()
    images, boxes = random_task(6)
    from mapex.geometry import receptive_fields

    accumulator = ResponseAccumulator(receptive_fields(model, (16, 16)))
    sizes = []
    with torch.no_grad(), tap_activations(model, accumulator.add):
        for batch_images, batch_boxes in in_batches(images, boxes, 2):
            accumulator.start_batch(batch_boxes, (16, 16))
            model(batch_images)
            sizes.append(sum(s.response_sum.numel() + s.image_count.numel() for s in accumulator._sums.values()))
    assert sizes == [sizes[0]] * 3 and sizes[0] == 2 * (4 + 5 + 6) + 3 * 2


# --------------------------------------------------------------------------- activation taps


def test_resnet18_taps_follow_bn_and_relu_but_stop_at_the_add():
    model = torchvision.models.resnet18(num_classes=4)
    taps = activation_taps(model)
    assert len(taps) == 20
    assert taps["conv1"].module == "bn1" and isinstance(taps["conv1"].activation, nn.ReLU)
    assert not taps["conv1"].activation.inplace and model.relu.inplace  # a copy; the model is untouched
    assert taps["layer1.0.conv1"].module == "layer1.0.bn1" and isinstance(taps["layer1.0.conv1"].activation, nn.ReLU)
    assert taps["layer1.0.conv2"] == Tap("layer1.0.bn2", None)  # bn2 -> residual add
    assert taps["layer2.0.downsample.0"] == Tap("layer2.0.downsample.1", None)


def test_resnet18_tapped_activations_are_the_consumed_ones():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    seen: dict[str, Tensor] = {}
    with torch.no_grad():
        with tap_activations(model, lambda name, a: seen.__setitem__(name, a.clone())):
            model(x)
        stem = F.relu(model.bn1(model.conv1(x)))
        block_input = model.maxpool(stem)
        inner = model.layer1[0].relu(model.layer1[0].bn1(model.layer1[0].conv1(block_input)))
        second_bn = model.layer1[0].bn2(model.layer1[0].conv2(inner))
    assert len(seen) == 20
    torch.testing.assert_close(seen["conv1"], stem)
    torch.testing.assert_close(seen["layer1.0.conv2"], second_bn)  # not overwritten by the in-place add
    assert (seen["layer1.0.conv2"] < 0).any()  # no ReLU applied
    seen.clear()
    model(x)  # hooks are gone after the block
    assert not seen


class FunctionalActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(1, 1, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.a(x), 0.2)
        x = torch.relu(self.b(x))
        y = self.c(x)  # two users: the activation cannot be told apart
        x = self.d(y + y.sigmoid()).relu()
        return x


def test_functional_activations_and_shared_outputs():
    taps = activation_taps(FunctionalActivations())
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(taps["a"].read(x), torch.tensor([-0.2, 2.0]))
    assert torch.equal(taps["b"].read(x), torch.tensor([0.0, 2.0]))
    assert taps["c"] == Tap("c", None)
    assert taps["d"].module == "d" and torch.equal(taps["d"].read(x), torch.tensor([0.0, 2.0]))


@pytest.mark.parametrize("activation", [nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU])
def test_module_activations_are_applied(activation):
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), activation())
    tap = activation_taps(model)["0"]
    x = torch.linspace(-4, 8, 7)
    assert tap.module == "1" and torch.equal(tap.read(x), activation()(x))


def test_every_torchvision_conv_is_tapped_once_per_forward():
    for build in (torchvision.models.vgg16_bn, torchvision.models.mobilenet_v2):
        model = build(num_classes=3).eval()
        counts: Counter[str] = Counter()
        with torch.no_grad(), tap_activations(model, lambda name, _, seen=counts: seen.update([name])):
            model(torch.randn(1, 3, 32, 32))
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert counts == dict.fromkeys(convs, 1)


def test_filter_scores_on_resnet18_cover_every_filter():
    model = torchvision.models.resnet18(num_classes=4)
    images = torch.randn(3, 3, 32, 32)
    boxes = [torch.tensor([[4.0, 4, 20, 28]]), torch.tensor([[0.0, 0, 32, 16]]), torch.zeros(0, 4)]
    scores = scores_of(model, [(images, boxes)], "map-ex", "diff")
    modules = dict(model.named_modules())
    assert set(scores) == {n for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    for name, values in scores.items():
        assert values.shape == (modules[name].out_channels,) and torch.isfinite(values).all()


# --------------------------------------------------------------------------- rank correlation, response maps


def test_rank_correlation_is_spearman_with_ties_averaged_over_layers():
    import pandas as pd

    generator = torch.Generator().manual_seed(0)
    reference = {
        "a": torch.randint(0, 5, (40,), generator=generator).float(),
        "b": torch.randn(12, generator=generator),
    }
    scores = {"a": reference["a"] + torch.randint(0, 3, (40,), generator=generator), "b": -(reference["b"] ** 3)}
    expected = [
        pd.DataFrame({"s": scores[k].numpy(), "r": reference[k].numpy()}).corr(method="spearman").iloc[0, 1]
        for k in "ab"
    ]
    assert rank_correlation(scores, reference) == pytest.approx(sum(expected) / 2)
    assert rank_correlation(reference, reference) == pytest.approx(1.0)
    assert rank_correlation({"b": -reference["b"]}, {"b": reference["b"]}) == pytest.approx(-1.0)


def test_rank_correlation_leaves_out_constant_reference_layers_and_counts_constant_scores_as_zero():
    reference = {"flat": torch.ones(6), "ramp": torch.arange(6.0), "step": torch.tensor([0.0, 0, 0, 1, 1, 1])}
    scores = {"flat": torch.arange(6.0), "ramp": torch.arange(6.0).flip(0), "step": torch.zeros(6)}
    assert rank_correlation(scores, reference) == pytest.approx((-1.0 + 0.0) / 2)
    assert math.isnan(rank_correlation(scores, {"flat": reference["flat"]}))


def test_response_maps_show_the_top_and_bottom_filters_by_score():
    model = random_small_net()
    images, _ = random_task(3, size=16)
    consumed = model.consumed(images)
    scores = {name: activation.mean((0, 2, 3)) for name, activation in consumed.items()}
    maps, titles = response_maps(model, images, scores, ["conv1", "conv2"], fraction=0.25)
    assert maps.shape == (3, 4, 16, 16)
    assert titles == [
        "conv1\ntop 25% filters",
        "conv1\nbottom 25% filters",
        "conv2\ntop 25% filters",
        "conv2\nbottom 25% filters",
    ]
    best = int(scores["conv1"].argmax())
    assert torch.allclose(maps[:, 0], consumed["conv1"][:, best], atol=1e-5)  # 16x16 map: no resampling
    for top, bottom in ((0, 1), (2, 3)):
        assert maps[:, top].mean() > maps[:, bottom].mean()
    assert not model.training


# --------------------------------------------------------------------------- the nonneg tap


def test_resnet_nonneg_taps_read_the_block_output_after_its_relu():
    model = torchvision.models.resnet18(num_classes=4).eval()
    taps, consumed = activation_taps(model, tap="nonneg"), activation_taps(model)
    assert taps["layer1.0.conv2"] == Tap("layer1.0", F.relu)
    assert taps["layer2.0.conv2"] == taps["layer2.0.downsample.0"] == Tap("layer2.0", F.relu)
    for name in ("conv1", "layer1.0.conv1", "layer4.1.conv1"):  # consumed after a ReLU already
        assert taps[name] is not consumed[name] and taps[name].module == consumed[name].module
        assert isinstance(taps[name].activation, nn.ReLU)
    bottleneck = activation_taps(torchvision.models.resnet50(num_classes=4), tap="nonneg")
    assert bottleneck["layer1.0.conv3"] == bottleneck["layer1.0.downsample.0"] == Tap("layer1.0", F.relu)
    assert isinstance(bottleneck["layer1.0.conv2"].activation, nn.ReLU)

    x = torch.randn(2, 3, 32, 32)
    seen: dict[str, Tensor] = {}
    with torch.no_grad():
        with tap_activations(model, lambda name, a: seen.__setitem__(name, a.clone()), taps):
            model(x)
        block_output = model.layer1[0](model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    torch.testing.assert_close(seen["layer1.0.conv2"], block_output)  # relu(bn2(conv2(.)) + identity)
    assert (seen["layer1.0.conv2"] >= 0).all() and (seen["layer1.0.conv2"] > 0).any()


def test_mobilenet_v2_and_vgg16_bn_nonneg_taps():
    vgg = torchvision.models.vgg16_bn(num_classes=3)
    for name, tap in activation_taps(vgg, tap="nonneg").items():  # every conv: BN, then ReLU
        assert tap.module == activation_taps(vgg)[name].module and isinstance(tap.activation, nn.ReLU)
    mobilenet = torchvision.models.mobilenet_v2(num_classes=3).eval()
    taps = activation_taps(mobilenet, tap="nonneg")
    assert isinstance(taps["features.2.conv.0.0"].activation, nn.ReLU6)  # expansion: unchanged
    assert taps["features.2.conv.2"] == Tap("features.2.conv.3", F.relu)  # projection, no residual: relu(BN)
    assert taps["features.3.conv.2"] == Tap("features.3", F.relu)  # projection + residual: relu(x + BN)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        seen = {}
        with tap_activations(mobilenet, lambda name, a: seen.__setitem__(name, a.clone()), taps):
            mobilenet(x)
        block_input = mobilenet.features[:3](x)
        expected = F.relu(block_input + mobilenet.features[3].conv(block_input))
    torch.testing.assert_close(seen["features.3.conv.2"], expected)


class FlatResidual(nn.Module):
    """A residual add in the model's own forward: no submodule returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)) + x).mean(dim=(2, 3))


def test_nonneg_tap_of_an_add_no_submodule_returns_is_a_user_error():
    assert activation_taps(FlatResidual())["conv"] == Tap("bn", None)
    with pytest.raises(UserError, match="residual add after conv 'conv' is not the output of a submodule"):
        activation_taps(FlatResidual(), tap="nonneg")


def test_nonneg_scores_of_convs_feeding_one_block_output_are_equal():
    model = torchvision.models.resnet18(num_classes=4)
    images = torch.randn(3, 3, 32, 32)
    boxes = [torch.tensor([[4.0, 4, 20, 28]]), torch.tensor([[0.0, 0, 32, 16]]), torch.zeros(0, 4)]
    nonneg = scores_of(model, [(images, boxes)], "map-ex", "contrast", tap="nonneg")
    consumed = scores_of(model, [(images, boxes)], "map-ex", "diff")
    torch.testing.assert_close(nonneg["layer2.0.conv2"], nonneg["layer2.0.downsample.0"], rtol=0, atol=0)
    assert not torch.equal(consumed["layer2.0.conv2"], consumed["layer2.0.downsample.0"])
    assert all(bool((values.abs() <= 1).all()) for values in nonneg.values())  # a contrast of non-negatives


# --------------------------------------------------------------------------- the effective field


def constant_conv(kernel: int) -> nn.Conv2d:
    """A 1-channel conv with all weights 1: every pixel of its field counts the same."""
    conv = nn.Conv2d(1, 1, kernel, padding=kernel // 2, bias=False)
    nn.init.ones_(conv.weight)
    return conv


def test_effective_field_of_an_identity_conv_is_its_centre_pixel():
    # the identity conv's output depends on the centre pixel only: effective weights are map's centre rule,
    # where the theoretical 3x3 field gives fractional weights (test_hand_worked_map_ex_fractional_weights)
    image = torch.zeros(4, 4)
    image[0, 0], image[1, 1], image[3, 3] = 4, 9, 6
    batches = [(image[None, None], [TOP_LEFT])]
    model = nn.Sequential(identity_conv(3))
    effective = scores_of(model, batches, "map-ex", "diff", field="effective")["0"]
    assert effective.item() == pytest.approx(scores_of(model, batches, "map", "diff")["0"].item())
    assert effective.item() != pytest.approx(scores_of(model, batches, "map-ex", "diff")["0"].item())


def test_effective_field_of_a_constant_conv_is_its_theoretical_field():
    images, boxes = random_task(3, size=8)
    model = nn.Sequential(constant_conv(3))
    batches = [(images[:, :1], boxes)]
    theoretical = scores_of(model, batches, "map-ex", "diff")["0"]
    torch.testing.assert_close(scores_of(model, batches, "map-ex", "diff", field="effective")["0"], theoretical)


def test_a_layer_without_gradient_falls_back_to_its_theoretical_field():
    model = random_small_net()
    with torch.no_grad():
        model.bn1.bias.fill_(-100.0)  # every unit of conv1's ReLU output is 0: no gradient reaches the input
    images, _ = random_task(2)
    fields = effective_fields(model, images, activation_taps(model), receptive_fields(model, (16, 16)))
    torch.testing.assert_close(fields["conv1"].kernel, torch.full((3, 3), 1 / 9))  # conv1's 3x3 field
    assert fields["conv1"].first == (-1, -1)


def test_effective_scores_are_deterministic_and_leave_the_model_alone():
    model = random_small_net().train()
    images, boxes = random_task(6)
    running_mean = model.bn1.running_mean.clone()
    first = scores_of(model, in_batches(images, boxes, 3), "map-ex", "contrast", tap="nonneg", field="effective")
    again = scores_of(model, in_batches(images, boxes, 3), "map-ex", "contrast", tap="nonneg", field="effective")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert model.training and torch.equal(model.bn1.running_mean, running_mean)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_effective_weights_vary_across_resnet18_layer4_where_theoretical_ones_are_constant():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64)
    box = BoxBatch([torch.tensor([[4.0, 4, 20, 20]])], (64, 64))  # 16x16 pixels near the top-left corner
    layer4 = [name for name in activation_taps(model) if name.startswith("layer4")]
    geometries = receptive_fields(model, (64, 64))
    fields = effective_fields(model, images, {name: activation_taps(model)[name] for name in layer4}, geometries)
    for name in layer4:
        theoretical = batch_foreground_weights(geometries[name], (2, 2), box, "map-ex")[0]
        effective = effective_foreground_weights(fields[name], (2, 2), box)[0]
        assert torch.equal(theoretical, torch.full((2, 2), 256 / 4096))  # every field is the whole image
        assert effective.max() - effective.min() > 0.05, name
        assert effective.argmax() == 0, name  # the unit centred at the box's corner weighs it most


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "score, tap, field",
    [
        ("diff", "consumed", "theoretical"),
        ("contrast", "nonneg", "theoretical"),
        ("diff", "consumed", "effective"),
        ("contrast", "nonneg", "effective"),
    ],
)
def test_variants_on_cuda_agree_with_cpu(score, tap, field, monkeypatch):
    # TF32 convolutions round inputs to 10 bits: compare the code paths at float32 precision
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    images = torch.randn(6, 3, 64, 64)
    boxes = [torch.tensor([[4.0, 4, 40, 30]]), torch.tensor([[10.0, 20, 64, 64]]), torch.tensor([[0.0, 0, 20, 64]])] * 2
    batches = [(images[:4], boxes[:4]), (images[4:], boxes[4:])]
    cpu = scores_of(model, batches, "map-ex", score, tap=tap, field=field)
    cuda = scores_of(model.cuda(), batches, "map-ex", score, tap=tap, field=field)
    for name in cpu:  # float32 on both, summed in other orders: agreement to about 1e-3 of the layer's scale
        torch.testing.assert_close(cuda[name], cpu[name], rtol=0, atol=2e-3 * float(cpu[name].abs().max()) + 1e-6)
