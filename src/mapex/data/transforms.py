"""Box-aware image transforms: a resize once per image, then augmentation of whole batches as tensors.

:func:`fit_to_size` runs once per image when it is decoded (torchvision transforms v2 on
``tv_tensors``). A :class:`BatchTransform` then turns a batch of those uint8 images into the
normalised float batch, drawing each image's crop offset and flip at once for the whole batch:
per-sample transform pipelines cost more than the network's forward pass on a small CPU.

Boxes are XYXY positions on a continuous axis, which matches our half-open pixel boxes: a
horizontal flip maps ``[x0, x1)`` to ``[W - x1, W - x0)``, a resize by ``f`` maps it to
``[f·x0, f·x1)`` and a shift by ``d`` to ``[x0 + d, x1 + d)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fit_to_size(image: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resize uint8 ``[3,h,w]`` to ``size``×``size`` (squashing non-square images) with its ``[k,4]`` boxes.

    The boxes are moved with the pixels, not clamped: the decoder clamps every image's boxes at once
    with :func:`keep_visible_boxes` (per image, that call was a third of a job's decoding time). An
    image already ``size``×``size`` is returned as it is, as ``v2.Resize`` would, without its
    per-call cost (another third on Tiny-ImageNet, whose images are all 64×64).
    """
    if tuple(image.shape[-2:]) == (size, size):
        return image, boxes
    canvas = tv_tensors.BoundingBoxes(
        boxes, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=tuple(image.shape[-2:])
    )
    resized, resized_boxes = v2.Resize((size, size))(tv_tensors.Image(image), canvas)
    return resized.as_subclass(Tensor), resized_boxes.as_subclass(Tensor)


def box_owners(boxes: list[Tensor]) -> Tensor:
    """For per-image boxes ``boxes``, the image of each row of ``torch.cat(boxes)``."""
    return torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor([len(b) for b in boxes], dtype=torch.long))


def keep_visible_boxes(boxes: Tensor, owners: Tensor, images: int, height: int, width: int) -> list[Tensor]:
    """Clamp boxes to the image and drop those left empty, keeping at least one box per image.

    ``boxes`` ``[K,4]`` of all ``images`` images together, ``owners[j]`` the image of box ``j``;
    returns each image's boxes. If a crop moved every box of an image out of view, its clamped
    (zero-area) boxes are kept instead of none: each sample then still has ``k >= 1`` boxes for
    geometry code, and a zero-area box gives every feature-map unit foreground weight 0, which is
    the truth (no object in view): the image contributes a background response only.
    """
    limit = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    clamped = torch.minimum(boxes.clamp(min=0), limit)
    visible = (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
    any_visible = torch.bincount(owners[visible], minlength=images) > 0
    kept = visible | ~any_visible[owners]
    counts = torch.bincount(owners[kept], minlength=images)
    return list(clamped[kept].split(counts.tolist()))


@dataclass(frozen=True)
class BatchTransform:
    """uint8 ``[B,3,size,size]`` images and their boxes -> normalised float images and boxes.

    With ``padding > 0``: each image is cropped at a random offset from its zero-padded copy
    (``padding`` pixels each side) and, with ``flip``, mirrored with probability 1/2; the draws come
    from the generator seeded with the batch's seed, so they are a function of that seed alone.
    Augmented output is channels-last (the CPU models' memory format; 3 bytes a pixel to move
    while cropping); without augmentation the output keeps the input's memory format.
    """

    size: int
    padding: int = 0
    flip: bool = False

    def __call__(
        self, images: Tensor, boxes: list[Tensor] | None, seed: int, share: tuple[int, int, int] | None = None
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``share`` = ``(rank, world, batch)``: ``images`` are images ``rank, rank + world, ...`` of a
        batch of ``batch`` images, and get the draws those images get when the whole batch is transformed.
        ``boxes`` None: images only (returned boxes None). The draws are made on the CPU whatever
        ``images``' device, so a batch's pixels are the same on every device."""
        if self.padding or self.flip:
            rank, world, count = share or (0, 1, len(images))
            images, boxes = self._augment(
                images, boxes, torch.Generator().manual_seed(seed), count, slice(rank, None, world)
            )
        images = F.to_dtype(images, torch.float32, scale=True)
        mean, std = _normalisers(images.device)
        return images.sub_(mean).div_(std), boxes

    def _augment(
        self, images: Tensor, boxes: list[Tensor] | None, generator: torch.Generator, count: int, mine: slice
    ) -> tuple[Tensor, list[Tensor] | None]:
        offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=generator)
        flipped = torch.rand(count, generator=generator) < 0.5 if self.flip else torch.zeros(count, dtype=torch.bool)
        offsets, flipped = offsets[mine], flipped[mine]
        if boxes is not None:
            boxes = self._crop_boxes(boxes, offsets, flipped)
        return self._crop_images(images, offsets, flipped), boxes

    def _crop_images(self, images: Tensor, offsets: Tensor, flipped: Tensor) -> Tensor:
        """Each image's window of its zero-padded copy, mirrored where ``flipped``; channels-last throughout.

        One gather of pixels for the whole batch (as fast as a copy per image on the CPU, and one
        kernel instead of one per image on a GPU); the pixel positions are worked out on the CPU,
        where the draws are, and sent in one copy."""
        count, pad, size = len(images), self.padding, self.size
        side = size + 2 * pad
        padded = images.new_zeros(count, side, side, 3)
        padded[:, pad : pad + size, pad : pad + size] = images.permute(0, 2, 3, 1)
        steps = torch.arange(size)
        rows = (torch.arange(count)[:, None] * side + offsets[:, 1, None] + steps) * side  # [B,S]: row starts
        columns = torch.where(flipped[:, None], steps.flip(0), steps) + offsets[:, 0, None]  # [B,S]
        rows, columns = torch.stack([rows, columns]).to(images.device, non_blocking=True)
        pixels = rows[:, :, None] + columns[:, None, :]  # [B,S,S]: positions in ``padded``'s pixels
        cropped = padded.view(-1, 3).index_select(0, pixels.view(-1))
        return cropped.view(count, size, size, 3).permute(0, 3, 1, 2)

    def _crop_boxes(self, boxes: list[Tensor], offsets: Tensor, flipped: Tensor) -> list[Tensor]:
        owners = box_owners(boxes)
        shift = (self.padding - offsets[owners]).to(torch.float32).repeat(1, 2)
        moved = torch.cat(boxes) + shift
        mirrored = torch.stack([self.size - moved[:, 2], moved[:, 1], self.size - moved[:, 0], moved[:, 3]], dim=1)
        moved = torch.where(flipped[owners, None], mirrored, moved)
        return keep_visible_boxes(moved, owners, len(boxes), self.size, self.size)


@functools.cache
def _normalisers(device: torch.device) -> tuple[Tensor, Tensor]:
    """The mean and std as ``[3,1,1]`` tensors on ``device``, made once: torchvision's ``normalize``
    builds them per call, a blocking host-to-device copy on a GPU. The same operations (``sub_``,
    ``div_``) as it, so the same bits."""
    return tuple(
        torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)
        for values in (IMAGENET_MEAN, IMAGENET_STD)
    )


def unnormalise(images: Tensor) -> Tensor:
    """Normalised images ``[B,3,H,W]`` back to RGB in [0, 1], for display."""
    mean, std = _normalisers(images.device)
    return (images * std + mean).clamp(0, 1)


def train_transform(size: int, padding: int) -> BatchTransform:
    """Random crop with zero padding of ``padding`` pixels each side, random horizontal flip, normalisation."""
    return BatchTransform(size, padding=padding, flip=True)


def eval_transform(size: int) -> BatchTransform:
    """Normalisation only (images are already ``size``×``size``: see :func:`fit_to_size`)."""
    return BatchTransform(size)
