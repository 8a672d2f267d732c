"""Box-aware image transforms (torchvision transforms v2).

Each pipeline takes ``(tv_tensors.Image uint8, tv_tensors.BoundingBoxes XYXY)`` and returns the
normalised float image with its boxes in the new image's pixels. torchvision treats XYXY
coordinates as continuous positions, which matches our half-open pixel boxes: a horizontal flip
maps ``[x0, x1)`` to ``[W - x1, W - x0)`` and a resize by ``f`` maps it to ``[f·x0, f·x1)``.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class KeepVisibleBoxes(v2.Transform):
    """Clamp boxes to the image and drop those left empty, keeping at least one box.

    If a crop moved every box out of view, the clamped (zero-area) boxes are kept instead of none:
    each sample then still has ``k >= 1`` boxes for collation and geometry code, and a zero-area
    box gives every feature-map unit foreground weight 0, which is the truth (no object in view):
    the image contributes a background response only.
    """

    _transformed_types = (tv_tensors.BoundingBoxes,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.canvas_size
        boxes = inpt.as_subclass(torch.Tensor)
        clamped = boxes.clamp(min=torch.zeros(4, dtype=boxes.dtype), max=torch.tensor([width, height, width, height], dtype=boxes.dtype))
        visible = (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
        kept = clamped[visible] if visible.any() else clamped
        return tv_tensors.wrap(kept, like=inpt)


def train_transform(size: int) -> v2.Transform:
    """Resize to ``size``×``size``, random crop with zero padding of ``size // 8``, random horizontal flip.

    The resize squashes non-square images (boxes scale with them) so every batch stacks.
    """
    return v2.Compose(
        [
            v2.Resize((size, size)),
            v2.RandomCrop(size, padding=size // 8),
            v2.RandomHorizontalFlip(),
            *_finish(),
        ]
    )


def eval_transform(size: int) -> v2.Transform:
    """Resize to ``size``×``size`` (a no-op for images already that size, squashing non-square ones) and normalise."""
    return v2.Compose([v2.Resize((size, size)), *_finish()])


def _finish() -> list[v2.Transform]:
    return [
        KeepVisibleBoxes(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
