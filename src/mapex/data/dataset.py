"""Dataset and loader over a :class:`BoxIndex`: batches of decoded RGB images with their transformed boxes.

Speed: every image is decoded and resized once (with ``cache=True``, all of them up front, into
one uint8 tensor: 3 bytes a pixel, about 110 MB for 9,000 64×64 images, shared by forked loader
workers), and augmentation and normalisation run on whole batches (:class:`BatchTransform`).
A dataset key is a whole batch, ``(positions, seed)``, so the loader fetches one key per batch.
On a GPU (``device``), the cached images and labels live on it and each batch is cropped,
flipped and normalised there, in the loading process: no workers, no pinned copies, no per-batch
transfer of the images. A training loop at 64 px is bound by the CPU that launches its kernels,
and worker batches (shared-memory tensors received and pinned by threads of that process) slowed
it by a third on an H100 (``benchmarks/bench_train.py``). Batches without boxes (``boxes=False``,
what training needs) spare the per-image box tensors.

Reproducibility: the sampler yields batch keys drawn from ``(loader seed, epoch)`` alone and a
batch's augmentation is a function of its key's seed alone (the global RNG is untouched). Batches
are therefore the same for the same seed and epoch whatever ``num_workers`` is and whichever
worker makes a batch, so no ``worker_init_fn`` is needed, and a run resumed at epoch ``e``
(``loader.sampler.set_epoch(e)``) sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image

from mapex.data.transforms import (
    BatchTransform,
    box_owners,
    eval_transform,
    fit_to_size,
    keep_visible_boxes,
    train_transform,
)
from mapex.data.types import BoxIndex, BoxSample
from mapex.io import UserError

BatchKey = tuple[list[int], int] | tuple[list[int], int, int, int]
"""``(positions, seed)`` of a whole batch, or ``(positions, seed, rank, world)`` for one process's share."""
Batch = tuple[Tensor, Tensor, list[Tensor]] | tuple[Tensor, Tensor]
"""``(images, labels, boxes)``, or ``(images, labels)`` from a dataset made with ``boxes=False``."""

DEVICE_SHARE = 0.25
"""The largest share of a GPU's free memory that cached images may take there (else they stay in RAM)."""


class BoxDataset(Dataset):
    """Batches ``(images float [B,3,S,S], labels long [B], boxes list of float [k,4])`` of an index.

    ``dataset[(positions, seed)]`` is the batch of those samples, boxes in the transformed
    images' pixels, ``S`` the transform's size; ``len(dataset)`` counts samples. ``cache=True``
    decodes every image here; otherwise each batch decodes its images (the same pixels, slower).
    ``boxes=False``: batches ``(images, labels)``. ``device``: where the cached images are kept and
    batches made (:attr:`device`; the CPU when they would take more than :data:`DEVICE_SHARE` of
    its free memory); boxes stay on the CPU.
    """

    def __init__(
        self,
        index: BoxIndex,
        transform: BatchTransform,
        cache: bool = False,
        boxes: bool = True,
        device: torch.device | None = None,
    ) -> None:
        self.index = index
        self.transform = transform
        self.with_boxes = boxes
        self.device = torch.device("cpu")
        self._labels = torch.tensor([sample.label for sample in index.samples], dtype=torch.long)
        self._cached = _load_all(index.samples, transform.size) if cache else None
        if self._cached is not None and device is not None and _fits_on(device, self._cached[0]):
            self.device, self._labels = device, self._labels.to(device)
            self._cached = (self._cached[0].to(device), self._cached[1])

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, key: BatchKey) -> Batch:
        positions, seed, rank, world = key if len(key) == 4 else (*key, 0, 1)
        mine = positions[rank::world]
        # From pageable memory: a staged copy that does not wait for the device's queue.
        chosen = torch.tensor(mine, dtype=torch.long).to(self.device, non_blocking=True)
        pixels, boxes = self._pixels_and_boxes(mine, chosen)
        # ``pixels`` is [B,S,S,3]: its [B,3,S,S] view is channels-last, the models' memory format.
        images, boxes = self.transform(
            pixels.permute(0, 3, 1, 2), boxes if self.with_boxes else None, seed, (rank, world, len(positions))
        )
        return (images, self._labels[chosen], boxes) if self.with_boxes else (images, self._labels[chosen])

    def _pixels_and_boxes(self, positions: list[int], chosen: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self._cached is None:
            return _load_all([self.index.samples[p] for p in positions], self.transform.size)
        pixels, boxes = self._cached
        return pixels[chosen], [boxes[p] for p in positions]


def _fits_on(device: torch.device, pixels: Tensor) -> bool:
    """Whether ``pixels`` should move to ``device``: not to the CPU (they are there), to CUDA if they
    take at most :data:`DEVICE_SHARE` of its free memory, to MPS (memory shared with the CPU) always."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return pixels.nbytes <= DEVICE_SHARE * free
    return device.type == "mps"


def _load_all(samples: list[BoxSample], size: int) -> tuple[Tensor, list[Tensor]]:
    """Decoded images as one uint8 ``[N,S,S,3]`` tensor (filled in place: no second copy), and each
    image's boxes clamped to it (:func:`keep_visible_boxes`, once for all images)."""
    pixels = torch.empty(len(samples), size, size, 3, dtype=torch.uint8)
    counts = [len(sample.boxes) for sample in samples]
    given = torch.tensor([box for sample in samples for box in sample.boxes], dtype=torch.float32).reshape(-1, 4)
    boxes = []
    for position, (sample, image_boxes) in enumerate(zip(samples, given.split(counts))):
        image, image_boxes = fit_to_size(_decode(sample.image), image_boxes, size)
        pixels[position] = image.permute(1, 2, 0)
        boxes.append(image_boxes)
    moved = torch.cat(boxes) if boxes else given
    return pixels, keep_visible_boxes(moved, box_owners(boxes), len(samples), size, size)


def _decode(path: Path) -> Tensor:
    """Decode to uint8 RGB ``[3,H,W]`` (some Tiny-ImageNet JPEGs are grayscale)."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: cannot decode image ({err})") from err


class SeededBatchSampler(Sampler[BatchKey]):
    """Yields batch keys ``(positions, seed)``; epoch ``e``'s batches and seeds depend on ``(seed, e)`` only.

    Each pass over the sampler is the next epoch; :meth:`set_epoch` picks the epoch of the next pass.
    In a world of several processes (``world`` > 1) the keys are ``(positions, seed, rank, world)``:
    every process goes through the same global batches and takes its share of each (the images
    ``rank, rank + world, ...``); a shuffled pass leaves out a last batch too small to give every
    process an image, so that all of them take the same number of steps.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last or (shuffle and world > 1 and size % batch_size < world)
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[BatchKey]:
        # A generator: the epoch advances when the pass starts, not when ``iter`` is called (a
        # multi-worker DataLoader calls it twice per pass).
        rng = random.Random(f"loader:{self.seed}:{self.epoch}")
        self.epoch += 1
        order = list(range(self.size))
        if self.shuffle:
            rng.shuffle(order)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch, seed = order[start : start + self.batch_size], rng.getrandbits(63)
            yield (batch, seed) if self.world == 1 else (batch, seed, self.rank, self.world)


def _already_batched(batch: Batch) -> Batch:
    return batch


def make_loader(
    index: BoxIndex,
    size: int,
    train: bool,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    cache: bool = False,
    rank: int = 0,
    world: int = 1,
    boxes: bool = True,
    device: torch.device | None = None,
    crop_padding: int = 4,
) -> DataLoader:
    """A loader of ``(images, labels, boxes)`` batches: shuffled and augmented if ``train``, else in index order.

    With ``world`` > 1, this process's share (``rank``) of each global batch of ``batch_size``.
    ``boxes=False``: ``(images, labels)`` batches. ``device`` (with ``cache``): batches made on it
    where the images fit (see :class:`BoxDataset`), in this process (``num_workers`` unused).
    ``crop_padding``: zero padding of the training crop, pixels each side."""
    transform = train_transform(size, crop_padding) if train else eval_transform(size)
    dataset = BoxDataset(index, transform, cache=cache, boxes=boxes, device=device)
    sampler = SeededBatchSampler(len(dataset), batch_size, train, seed, drop_last, rank, world)
    on_cpu = dataset.device.type == "cpu"
    num_workers = num_workers if on_cpu else 0
    return DataLoader(
        dataset,
        batch_size=None,  # the sampler's keys are whole batches
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_already_batched,
        persistent_workers=num_workers > 0,
        pin_memory=on_cpu and torch.cuda.is_available(),
        # Worker base seeds come from the loader's own generator, which keeps the global RNG untouched.
        generator=torch.Generator().manual_seed(seed),
    )
