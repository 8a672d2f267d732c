"""Why Map-EX scores may rank filters by noise: a per-layer diagnosis (issue #10).

Per conv layer it reports what the SPEC's variants are meant to fix: how many units see the
whole image (there the theoretical ``map-ex`` weight is constant and ``F_i = B_i``), how many
filters' consumed activation is mostly ``<= 0`` (a signed tap before a residual add), and how
much the scores of each variant spread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from mapex.geometry import BoxBatch, LayerGeometry, batch_foreground_weights, receptive_fields, whole_image_units
from mapex.models import device_of, eval_mode
from mapex.statistics import filter_scores, tap_activations

CONSTANT_TOLERANCE = 1e-6  # an image's weights count as constant when max - min is below this


@dataclass(frozen=True)
class Variant:
    """One variant of the response criteria (see :func:`mapex.statistics.check_variant`)."""

    method: str = "map-ex"
    score: str = "diff"
    tap: str = "consumed"
    field: str = "theoretical"

    @property
    def label(self) -> str:
        parts = (self.method, self.score, self.tap) + ((self.field,) if self.method == "map-ex" else ())
        return "/".join(parts)


DEFAULT_VARIANTS = (
    Variant(),
    Variant(score="contrast", tap="nonneg"),
    Variant(score="contrast", tap="nonneg", field="effective"),
    Variant(method="map"),
    Variant(method="map", score="contrast", tap="nonneg"),
)


def diagnose(
    model: nn.Module,
    batches: Iterable[Sequence[Any]],
    input_size: tuple[int, int] | None = None,
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
) -> pd.DataFrame:
    """One row per conv layer (index ``conv``, in graph order) with the columns

    - ``filters``: output filters;
    - ``whole_image_units``: fraction of the layer's units whose clipped theoretical receptive
      field is the whole image (of the first batch's size);
    - ``constant_w_images``: fraction of the images whose theoretical ``map-ex`` weight is the
      same for every unit of the layer (there ``F_i = B_i`` whatever the filter);
    - ``mostly_nonpositive``: fraction of filters whose consumed activation is ``<= 0`` on more
      than half of its units over all images;
    - ``std <variant label>``: the standard deviation of the layer's scores under each variant.

    ``batches`` yield ``(images, boxes)`` or ``(images, labels, boxes)`` and must be re-iterable
    (a list or a DataLoader): they are read once, then once per variant.
    """
    rows = _layer_statistics(model, batches, input_size)
    for variant in variants:
        scores = filter_scores(
            model,
            batches,
            method=variant.method,
            score=variant.score,
            input_size=input_size,
            progress=False,
            tap=variant.tap,
            field=variant.field,
        )
        for name, values in scores.items():
            rows[name][f"std {variant.label}"] = float(values.std())
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("conv")


def _layer_statistics(
    model: nn.Module, batches: Iterable[Sequence[Any]], input_size: tuple[int, int] | None
) -> dict[str, dict[str, float]]:
    counts = _LayerCounts()
    geometries: dict[str, LayerGeometry] | None = None
    device = device_of(model)
    with eval_mode(model), torch.inference_mode(), tap_activations(model, counts.add):
        for batch in batches:
            images = batch[0].to(device)
            if geometries is None:
                geometries = receptive_fields(model, input_size or tuple(images.shape[-2:]))
            counts.start_batch(BoxBatch(batch[-1], tuple(images.shape[-2:]), device), geometries)
            model(images)
    return counts.rows()


class _LayerCounts:
    """Running counts per conv, fed by :func:`mapex.statistics.tap_activations`."""

    def __init__(self) -> None:
        self._boxes: BoxBatch | None = None
        self._geometries: dict[str, LayerGeometry] = {}
        self._nonpositive: dict[str, Tensor] = {}
        self._units: dict[str, int] = {}
        self._constant_images: dict[str, int] = {}
        self._images: dict[str, int] = {}
        self._whole_image: dict[str, float] = {}

    def start_batch(self, boxes: BoxBatch, geometries: dict[str, LayerGeometry]) -> None:
        self._boxes, self._geometries = boxes, geometries

    def add(self, name: str, activation: Tensor) -> None:
        batch, _, height, width = activation.shape
        nonpositive = (activation <= 0).sum(dim=(0, 2, 3)).cpu()
        self._nonpositive[name] = self._nonpositive.get(name, 0) + nonpositive
        self._units[name] = self._units.get(name, 0) + batch * height * width
        weights = batch_foreground_weights(self._geometries[name], (height, width), self._boxes, "map-ex").flatten(1)
        constant = (weights.amax(1) - weights.amin(1)) < CONSTANT_TOLERANCE
        self._constant_images[name] = self._constant_images.get(name, 0) + int(constant.sum())
        self._images[name] = self._images.get(name, 0) + batch
        if name not in self._whole_image:
            whole = whole_image_units(self._geometries[name], (height, width), self._boxes.image_hw)
            self._whole_image[name] = float(whole.float().mean())

    def rows(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "filters": len(nonpositive),
                "whole_image_units": self._whole_image[name],
                "constant_w_images": self._constant_images[name] / self._images[name],
                "mostly_nonpositive": float((nonpositive > self._units[name] / 2).float().mean()),
            }
            for name, nonpositive in self._nonpositive.items()
        }
