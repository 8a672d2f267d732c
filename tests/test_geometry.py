"""Receptive-field geometry (SPEC recurrence) and box -> unit foreground weights, against hand-worked values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from mapex.geometry import (
    BoxBatch,
    EffectiveField,
    LayerGeometry,
    batch_foreground_weights,
    effective_foreground_weights,
    field_box_map,
    foreground_weights,
    node_geometries,
    receptive_fields,
    whole_image_units,
)
from mapex.io import UserError


def G(jump: float, size: int, start: float) -> LayerGeometry:
    return LayerGeometry(jump=jump, size=size, start=start)


def conv_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


# --------------------------------------------------------------------------- receptive fields


def test_vgg_like_stack():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),  # 0: r = 1 + 2 = 3
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),  # 2: r = 3 + 2 = 5
        nn.MaxPool2d(2),  # r = 5 + 1 = 6, j = 2, c = 0 + (1/2 - 0) * 1 = 0.5
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),  # 5: r = 6 + 2*2 = 10, c = 0.5 + (1 - 1) * 2 = 0.5
        nn.Conv2d(4, 4, 3, padding=1),  # 7: r = 14
        nn.MaxPool2d(2, 2),  # r = 14 + 2 = 16, j = 4, c = 0.5 + 0.5 * 2 = 1.5
        nn.Conv2d(4, 4, 3, padding=1),  # 9: r = 16 + 2*4 = 24
    )
    assert receptive_fields(model, (32, 32)) == {
        "0": G(1, 3, 0.0),
        "2": G(1, 5, 0.0),
        "5": G(2, 10, 0.5),
        "7": G(2, 14, 0.5),
        "9": G(4, 24, 1.5),
    }


def test_torchvision_vgg16_bn_first_convs():
    model = torchvision.models.vgg16_bn(num_classes=5)
    fields = receptive_fields(model, (224, 224))
    assert set(fields) == conv_names(model)
    assert fields["features.0"] == G(1, 3, 0.0)
    assert fields["features.3"] == G(1, 5, 0.0)
    assert fields["features.7"] == G(2, 10, 0.5)  # after the first 2x2 max pool
    assert fields["features.10"] == G(2, 14, 0.5)
    assert fields["features.14"] == G(4, 24, 1.5)  # after the second
    # the usual VGG-16 figure: the last conv sees 196 pixels, units 16 apart
    assert fields["features.40"] == G(16, 196, 7.5)


def test_torchvision_resnet18_stem_and_blocks():
    model = torchvision.models.resnet18(num_classes=7)
    fields = receptive_fields(model, (64, 64))
    assert set(fields) == conv_names(model)
    # conv1 7x7 s2 p3: j = 2, r = 1 + 6 = 7, c = 0 + (3 - 3) * 1 = 0
    assert fields["conv1"] == G(2, 7, 0.0)
    # maxpool 3x3 s2 p1: j = 4, r = 7 + 2*2 = 11, c = 0 + (1 - 1) * 2 = 0
    # layer1.0.conv1 3x3 s1 p1: r = 11 + 2*4 = 19; conv2: 27; merge with the identity (r 11): 27
    assert fields["layer1.0.conv1"] == G(4, 19, 0.0)
    assert fields["layer1.0.conv2"] == G(4, 27, 0.0)
    assert fields["layer1.1.conv1"] == G(4, 35, 0.0)
    # layer1 ends at r = 43; layer2.0.conv1 3x3 s2 p1: j = 8, r = 43 + 2*4 = 51, c = 0 + (1 - 1) * 4 = 0
    assert fields["layer2.0.conv1"] == G(8, 51, 0.0)
    # the 1x1 s2 shortcut keeps r = 43; conv2: 51 + 2*8 = 67; the add takes the larger, 67
    assert fields["layer2.0.downsample.0"] == G(8, 43, 0.0)
    assert fields["layer2.0.conv2"] == G(8, 67, 0.0)
    assert fields["layer2.1.conv1"] == G(8, 83, 0.0)


def test_torchvision_mobilenet_v2_every_conv():
    model = torchvision.models.mobilenet_v2(num_classes=3)
    fields = receptive_fields(model, (96, 96))
    assert set(fields) == conv_names(model)
    assert fields["features.0.0"] == G(2, 3, 0.0)  # 3x3 s2 p1
    assert fields["features.1.conv.0.0"] == G(2, 7, 0.0)  # depthwise 3x3: 3 + 2*2
    assert fields["features.1.conv.1"] == G(2, 7, 0.0)  # 1x1 keeps it
    assert fields["features.2.conv.1.0"] == G(4, 11, 0.0)  # depthwise 3x3 s2
    assert fields["features.18.0"].jump == 32


class TwoPaths(nn.Module):
    """``main`` (2x2 s2: c = 0.5, r = 2) + ``side`` (5x5 s2 p2: c = 0, r = 5), then a 1x1 conv."""

    def __init__(self, concat: bool = False) -> None:
        super().__init__()
        self.concat = concat
        self.main = nn.Conv2d(1, 2, 2, stride=2)
        self.side = nn.Conv2d(1, 2, 5, stride=2, padding=2)
        self.head = nn.Conv2d(4 if concat else 2, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.main(x), self.side(x)
        return self.head(torch.cat([a, b], dim=1) if self.concat else a + F.relu(b))


@pytest.mark.parametrize("concat", [False, True])
def test_merge_takes_largest_field_and_main_path_centre(concat):
    fields = receptive_fields(TwoPaths(concat), (16, 16))
    assert fields["main"] == G(2, 2, 0.5)
    assert fields["side"] == G(2, 5, 0.0)
    assert fields["head"] == G(2, 5, 0.5)  # largest r (side), jump and centre of the first argument (main)


class FunctionalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv1(x), 2)  # r = 3 + 1 = 4, j = 2, c = 0.5
        return self.conv2(x).flatten(1)  # r = 4 + 2*2 = 8


def test_functional_pool_and_dilation():
    assert receptive_fields(FunctionalPool(), (8, 8))["conv2"] == G(2, 8, 0.5)
    dilated = nn.Sequential(nn.Conv2d(1, 1, 3, padding=2, dilation=2))  # r = 1 + 2*2 = 5, c = 2 - 2 = 0
    assert receptive_fields(dilated, (8, 8))["0"] == G(1, 5, 0.0)
    same = nn.Sequential(nn.Conv2d(1, 1, 4, padding="same"))  # PyTorch pads 1 before: c = 1.5 - 1 = 0.5
    assert receptive_fields(same, (8, 8))["0"] == G(1, 4, 0.5)


def test_non_square_window_is_refused():
    with pytest.raises(UserError, match="square"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, (1, 3))), (8, 8))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_gives_clear_error():
    with pytest.raises(UserError, match="cannot trace DataDependent"):
        receptive_fields(DataDependent(), (8, 8))


# --------------------------------------------------------------------------- foreground weights

# A 3x3 conv, stride 2, padding 1 on an 8x8 image: j = 2, r = 3, c = 0; 4x4 units centred at
# 0, 2, 4, 6 whose fields span pixels [-1, 1] (clipped to [0, 1]), [1, 3], [3, 5], [5, 7].
STRIDE2 = G(2, 3, 0.0)
IMAGE = (8, 8)


def boxes(*rows: tuple[float, float, float, float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_conv_geometry_used_below_is_the_traced_one():
    assert receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1)), IMAGE)["0"] == STRIDE2


def test_map_uses_unit_centre_plus_half():
    # box: x pixels 2..5, y pixels 2..4. Centres + 0.5 = 0.5, 2.5, 4.5, 6.5: inside [2, 6) x [2, 5) for 1, 2.
    expected = torch.tensor(
        [
            [0, 0, 0, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(foreground_weights(STRIDE2, (4, 4), boxes((2, 2, 6, 5)), IMAGE, "map"), expected)


def test_map_ex_counts_covered_field_pixels():
    # per axis, covered pixels of each unit's field: x (box 2..5): [0,1]->0, [1,3]->2, [3,5]->3, [5,7]->1
    #                                                y (box 2..4): 0, 2, 2, 0; each field is 3x3 = 9 pixels
    expected = (
        torch.tensor(
            [
                [0, 0, 0, 0],
                [0, 4, 6, 2],
                [0, 4, 6, 2],
                [0, 0, 0, 0],
            ],
            dtype=torch.float32,
        )
        / 9
    )
    weights = foreground_weights(STRIDE2, (4, 4), boxes((2, 2, 6, 5)), IMAGE, "map-ex")
    torch.testing.assert_close(weights, expected)


def test_map_ex_takes_union_of_overlapping_boxes():
    two = foreground_weights(STRIDE2, (4, 4), boxes((2, 2, 6, 5), (4, 2, 8, 5)), IMAGE, "map-ex")
    one = foreground_weights(STRIDE2, (4, 4), boxes((2, 2, 8, 5)), IMAGE, "map-ex")
    torch.testing.assert_close(two, one)  # overlap counted once, not twice
    assert two[1, 3] == pytest.approx(6 / 9)  # field x 5..7 fully covered, y 2 of 3 rows
    assert two.max() <= 1


def test_map_ex_clips_fields_at_the_border():
    # only pixel (0, 0) is foreground; unit (0, 0)'s field [-1, 1]^2 is clipped to 2x2 pixels
    weights = foreground_weights(STRIDE2, (4, 4), boxes((0, 0, 1, 1)), IMAGE, "map-ex")
    expected = torch.zeros(4, 4)
    expected[0, 0] = 1 / 4
    torch.testing.assert_close(weights, expected)
    full = foreground_weights(STRIDE2, (4, 4), boxes((0, 0, 8, 8)), IMAGE, "map-ex")
    assert torch.equal(full, torch.ones(4, 4))  # every clipped field is fully covered


def test_even_kernel_half_integer_centres():
    # 2x2 conv, stride 2: j = 2, r = 2, c = 0.5; unit x covers pixels 2x, 2x+1
    geometry = receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 2, stride=2)), IMAGE)["0"]
    assert geometry == G(2, 2, 0.5)
    box = boxes((1, 0, 3, 8))  # x pixels 1, 2; every row
    expected_map_ex = torch.tensor([[0.5, 0.5, 0, 0]]).expand(4, 4)
    torch.testing.assert_close(foreground_weights(geometry, (4, 4), box, IMAGE, "map-ex"), expected_map_ex)
    # centre + 0.5 = 1, 3, 5, 7: only 1 lies in [1, 3)
    expected_map = torch.tensor([[1.0, 0, 0, 0]]).expand(4, 4)
    assert torch.equal(foreground_weights(geometry, (4, 4), box, IMAGE, "map"), expected_map)


def test_non_integer_boxes_use_pixel_centres():
    # pixel p is inside when p + 0.5 lies in [x0, x1): [1.4, 2.6) holds pixels 1 and 2, [1.6, 2.4) none
    same = foreground_weights(STRIDE2, (4, 4), boxes((1.4, 0, 2.6, 8)), IMAGE, "map-ex")
    torch.testing.assert_close(same, foreground_weights(STRIDE2, (4, 4), boxes((1, 0, 3, 8)), IMAGE, "map-ex"))
    empty = foreground_weights(STRIDE2, (4, 4), boxes((1.6, 0, 2.4, 8)), IMAGE, "map-ex")
    assert torch.equal(empty, torch.zeros(4, 4))


@pytest.mark.parametrize("method", ["map", "map-ex"])
def test_no_boxes_give_zero_weights(method):
    assert torch.equal(foreground_weights(STRIDE2, (4, 4), boxes(), IMAGE, method), torch.zeros(4, 4))


@pytest.mark.parametrize("method", ["map", "map-ex"])
def test_batch_weights_equal_single_image_weights(method):
    per_image = [boxes(), boxes((2, 2, 6, 5)), boxes((0, 0, 1, 1), (5, 1, 8, 7), (3, 3, 4.5, 6))]
    batch = batch_foreground_weights(STRIDE2, (4, 4), BoxBatch(per_image, IMAGE), method)
    assert batch.shape == (3, 4, 4)
    for image_boxes, weights in zip(per_image, batch):
        assert torch.equal(weights, foreground_weights(STRIDE2, (4, 4), image_boxes, IMAGE, method))


def test_unknown_method_is_refused():
    with pytest.raises(UserError, match="map-ex"):
        foreground_weights(STRIDE2, (4, 4), boxes(), IMAGE, "mapx")


def test_node_geometries_give_the_merged_geometry_of_a_residual_add():
    model = torchvision.models.resnet18(num_classes=3)
    fields = receptive_fields(model, (64, 64))
    by_name = {node.name: geometry for node, geometry in node_geometries(model).items()}
    # layer2.0's add merges conv2 (r = 67) with the downsample (r = 43): the largest field, conv2's centre
    assert fields["layer2.0.downsample.0"].size < fields["layer2.0.conv2"].size
    assert by_name["add_2"] == fields["layer2.0.conv2"]
    assert by_name["fc"] is None and by_name["flatten"] is None


# --------------------------------------------------------------------------- effective receptive fields


def test_effective_field_is_cropped_to_its_support_and_normalised():
    sensitivity = torch.zeros(8, 8)
    sensitivity[3:6, 2:4] = torch.arange(1.0, 7.0).reshape(3, 2)
    field = EffectiveField.from_map(sensitivity, unit=(1, 1), jump=2)
    torch.testing.assert_close(field.kernel, torch.arange(1.0, 7.0).reshape(3, 2) / 21)
    assert field.first == (3 - 2, 2 - 2) and field.jump == 2  # unit (0, 0)'s window: one jump up-left
    with pytest.raises(UserError, match="no input pixel"):
        EffectiveField.from_map(torch.zeros(8, 8), unit=(1, 1), jump=2)
    with pytest.raises(UserError, match="integer jump"):
        EffectiveField.from_map(sensitivity, unit=(1, 1), jump=1.5)


def naive_effective_weights(field: EffectiveField, feature_hw: tuple[int, int], mask: Tensor) -> Tensor:
    """SPEC read literally: w_u = Σ_p K(p - c_u) box(p) / Σ_p K(p - c_u) inimage(p), one unit at a time."""
    height, width = mask.shape
    weights = torch.zeros(feature_hw, dtype=torch.float64)
    for y in range(feature_hw[0]):
        for x in range(feature_hw[1]):
            covered = in_image = 0.0
            for i in range(field.kernel.shape[0]):
                for j in range(field.kernel.shape[1]):
                    py, px = field.first[0] + y * field.jump + i, field.first[1] + x * field.jump + j
                    if 0 <= py < height and 0 <= px < width:
                        in_image += float(field.kernel[i, j])
                        covered += float(field.kernel[i, j]) * float(mask[py, px])
            weights[y, x] = covered / in_image if in_image > 0 else 0.0
    return weights


def test_effective_weights_agree_with_the_naive_sum():
    generator = torch.Generator().manual_seed(0)
    kernel = torch.rand(5, 7, generator=generator)
    field = EffectiveField(kernel / kernel.sum(), first=(-3, -2), jump=2)  # reaches outside on every side
    per_image = [boxes((2, 1, 6, 5)), boxes(), boxes((0, 0, 3, 3), (5, 4, 8, 8))]
    batch = BoxBatch(per_image, IMAGE)
    weights = effective_foreground_weights(field, (4, 4), batch)
    assert weights.shape == (3, 4, 4)
    for image, mask in enumerate(batch.mask):
        torch.testing.assert_close(weights[image].double(), naive_effective_weights(field, (4, 4), mask))


def test_a_uniform_kernel_over_the_theoretical_field_gives_the_theoretical_weights():
    # 3x3 fields, stride 2, on 8x8: unit (2, 2) is centred at pixel 4, its field 3..5 lies inside the image,
    # so the kernel shifted to any other unit is that unit's field; clipping becomes the in-image renormalisation.
    field = EffectiveField.from_map(field_box_map(STRIDE2, (2, 2), IMAGE), (2, 2), STRIDE2.jump)
    assert field.kernel.shape == (3, 3) and field.first == (-1, -1)
    per_image = [boxes((2, 2, 6, 5)), boxes((0, 0, 1, 1)), boxes((1.4, 0, 2.6, 8), (5, 5, 8, 8))]
    batch = BoxBatch(per_image, IMAGE)
    theoretical = batch_foreground_weights(STRIDE2, (4, 4), batch, "map-ex")
    torch.testing.assert_close(effective_foreground_weights(field, (4, 4), batch), theoretical)


def test_whole_image_units_of_resnet18_at_64_pixels():
    model = torchvision.models.resnet18(num_classes=3)
    fields = receptive_fields(model, (64, 64))
    # conv1: 7-pixel fields; layer3.0.conv2 on (r = 147 or more): every unit sees the whole image
    assert not whole_image_units(fields["conv1"], (32, 32), (64, 64)).any()
    assert whole_image_units(fields["layer3.0.conv2"], (4, 4), (64, 64)).all()
    assert whole_image_units(fields["layer4.1.conv2"], (2, 2), (64, 64)).all()
    # STRIDE2 on a 2x2 image: unit 0's field [-1, 1] covers both pixels, unit 1's [1, 3] only one
    assert whole_image_units(STRIDE2, (2, 2), (2, 2)).tolist() == [[True, False], [False, False]]
