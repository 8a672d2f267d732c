"""The per-layer diagnosis of mapex.diagnostics on a tiny net whose numbers can be worked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mapex.diagnostics import Variant, diagnose
from mapex.statistics import filter_scores

SIZE = 8


class WideField(nn.Module):
    """conv1 3x3 (fields of 3 pixels), conv2 15x15 (fields of 17 pixels: every unit sees the 8x8 image)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 5, 15, padding=7), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def wide_field_net() -> WideField:
    torch.manual_seed(0)
    model = WideField().eval()
    with torch.no_grad():
        model.bn1.bias[2] = -100.0  # conv1's filter 2 is dead: its ReLU output is 0 everywhere
    return model


def task() -> list[tuple[Tensor, list[Tensor]]]:
    generator = torch.Generator().manual_seed(1)
    boxes = [torch.tensor([[1.0, 2, 5, 6]]), torch.tensor([[0.0, 0, 3, 8]]), torch.tensor([[4.0, 4, 8, 8]])]
    return [(torch.randn(3, 3, SIZE, SIZE, generator=generator), boxes)] * 2


def test_diagnosis_per_layer():
    model, batches = wide_field_net(), task()
    variants = (Variant(), Variant(method="map", score="contrast", tap="nonneg"))
    table = diagnose(model, batches, variants=variants)
    assert list(table.index) == ["conv1", "conv2"] and table.index.name == "conv"
    assert table["filters"].tolist() == [4, 5]
    # conv1's 3-pixel fields never cover the image, and every box is partial: w varies in every image
    assert table.loc["conv1", "whole_image_units"] == 0.0 and table.loc["conv1", "constant_w_images"] == 0.0
    assert table.loc["conv2", "whole_image_units"] == 1.0 and table.loc["conv2", "constant_w_images"] == 1.0
    assert table.loc["conv1", "mostly_nonpositive"] == pytest.approx(1 / 4)  # the dead filter only
    for variant in variants:
        scores = filter_scores(
            model, batches, method=variant.method, score=variant.score, tap=variant.tap, progress=False
        )
        for name in ("conv1", "conv2"):
            assert table.loc[name, f"std {variant.label}"] == pytest.approx(float(scores[name].std()))
    # whole-image fields: F_i = B_i for every filter, so map-ex's diff scores are all 0
    assert table.loc["conv2", "std map-ex/diff/consumed/theoretical"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["conv1", "std map-ex/diff/consumed/theoretical"] > 0


def test_default_variants_cover_every_fix():
    table = diagnose(wide_field_net(), task())
    assert [c for c in table.columns if c.startswith("std ")] == [
        "std map-ex/diff/consumed/theoretical",
        "std map-ex/contrast/nonneg/theoretical",
        "std map-ex/contrast/nonneg/effective",
        "std map/diff/consumed",
        "std map/contrast/nonneg",
    ]
    assert table.notna().all().all()


def test_variant_labels_name_the_field_only_for_map_ex():
    assert Variant().label == "map-ex/diff/consumed/theoretical"
    assert Variant(method="map", score="contrast", tap="nonneg").label == "map/contrast/nonneg"
