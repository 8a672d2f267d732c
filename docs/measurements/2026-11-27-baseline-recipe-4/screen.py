"""Screening trainings for #11, fourth round: progressive resizing. env MAPEX_SIZES: comma-separated
image sizes of the first training epochs (the rest at data.image_size); each training batch is
resized (bilinear, antialiased) after the crop and flip. Validation always at full size.
Then runs `mapex` with argv."""
import os
import sys

import torch
from torch.nn import functional as F

import mapex.train as train

SIZES = [int(s) for s in os.environ["MAPEX_SIZES"].split(",")]
_current = {"size": None}
_train_one_epoch = train._train_one_epoch
_on_device = train._on_device


def train_one_epoch(*args, **kwargs):
    epoch = args[7]
    _current["size"] = SIZES[epoch - 1] if epoch <= len(SIZES) else None
    try:
        return _train_one_epoch(*args, **kwargs)
    finally:
        _current["size"] = None


def on_device(batch, device):
    images, labels = _on_device(batch, device)
    size = _current["size"]
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


train._train_one_epoch = train_one_epoch
train._on_device = on_device

from mapex.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
