"""Dataset and loader over a :class:`BoxIndex`: decoded RGB images with their transformed boxes.

Reproducibility: the loader's sampler yields ``(position, seed)`` pairs drawn from
``(loader seed, epoch)`` alone, and the dataset runs each sample's random transform under its own
seed (restoring the global RNG afterwards, so it is untouched). Batches and augmentations are therefore the
same for the same seed and epoch whatever ``num_workers`` is and whichever worker gets a sample, so
no ``worker_init_fn`` is needed, and a run resumed at epoch ``e`` (``loader.sampler.set_epoch(e)``)
sees the batches an uninterrupted run would.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from mapex.data.transforms import eval_transform, train_transform
from mapex.data.types import BoxIndex
from mapex.io import UserError

Item = tuple[Tensor, int, Tensor]


class BoxDataset(Dataset):
    """Items ``(image float [3,H,W], label, boxes float [k,4])``, boxes in the transformed image's pixels.

    ``cache=True`` decodes every image once, here, into a list of uint8 tensors (3 bytes a pixel:
    about 120 MB for 10,000 64×64 images), so no epoch decodes again; forked loader workers share it.
    A key is a position, or a ``(position, seed)`` pair (as :class:`SeededSampler` yields) to make the
    sample's random transform a function of ``seed`` alone.
    """

    def __init__(self, index: BoxIndex, transform: Callable, cache: bool = False) -> None:
        self.index = index
        self.transform = transform
        self._decoded = [_decode(sample.image) for sample in index.samples] if cache else None

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        position, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.index.samples[position]
        image = tv_tensors.Image(self._decoded[position] if self._decoded is not None else _decode(sample.image))
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=tuple(image.shape[-2:]),
        )
        image, boxes = self._transform(image, boxes, seed)
        return image.as_subclass(Tensor), sample.label, boxes.as_subclass(Tensor)

    def _transform(self, image: Tensor, boxes: Tensor, seed: int | None) -> tuple[Tensor, Tensor]:
        if seed is None:
            return self.transform(image, boxes)
        # Transforms v2 draw from the global CPU generator: seed it for this sample, then restore it
        # (cheaper than torch.random.fork_rng, which also visits accelerator generators).
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.transform(image, boxes)
        finally:
            generator.set_state(saved)


def _decode(path: Path) -> Tensor:
    """Decode to uint8 RGB ``[3,H,W]`` (some Tiny-ImageNet JPEGs are grayscale)."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: cannot decode image ({err})") from err


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(position, augmentation seed)``; epoch ``e``'s order and seeds depend on ``(seed, e)`` only.

    Each pass over the sampler is the next epoch; :meth:`set_epoch` picks the epoch of the next pass.
    """

    def __init__(self, size: int, shuffle: bool, seed: int) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = random.Random(f"loader:{self.seed}:{self.epoch}")
        self.epoch += 1
        order = list(range(self.size))
        if self.shuffle:
            rng.shuffle(order)
        return iter([(position, rng.getrandbits(63)) for position in order])


def collate_boxes(batch: list[Item]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Stack images and labels; boxes stay a list (images have different numbers of boxes)."""
    images, labels, boxes = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), list(boxes)


def make_loader(
    index: BoxIndex,
    size: int,
    train: bool,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    cache: bool = False,
) -> DataLoader:
    """A loader of ``collate_boxes`` batches: shuffled and augmented if ``train``, else in index order."""
    dataset = BoxDataset(index, train_transform(size) if train else eval_transform(size), cache=cache)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), shuffle=train, seed=seed),
        num_workers=num_workers,
        collate_fn=collate_boxes,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # The loader draws a base seed per epoch; its own generator keeps the global RNG untouched.
        generator=torch.Generator().manual_seed(seed),
    )
