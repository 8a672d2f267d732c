"""Datasets with boxes: fetching archives, reading formats, splits, box-aware transforms, loaders."""

from __future__ import annotations

from pathlib import Path

from mapex.data.dataset import BoxDataset, make_loader
from mapex.data.fetch import fetch
from mapex.data.splits import balanced_subset, select_classes, stratified_split
from mapex.data.tiny_imagenet import read_tiny_imagenet
from mapex.data.transforms import eval_transform, train_transform
from mapex.data.types import BoxIndex, BoxSample
from mapex.io import UserError

FORMATS = ("tiny-imagenet", "voc", "coco", "yolo", "csv")


def read_dataset(root: Path, format: str, split: str) -> BoxIndex:
    """Read ``split`` of the dataset at ``root`` in ``format`` (one of :data:`FORMATS`)."""
    if format == "tiny-imagenet":
        return read_tiny_imagenet(root, split)
    if format in FORMATS:
        from mapex.data.formats import read_formatted  # the other readers load only when asked for

        return read_formatted(root, format, split)
    raise UserError(f"unknown dataset format '{format}'; expected one of {', '.join(FORMATS)}")


__all__ = [
    "FORMATS",
    "BoxDataset",
    "BoxIndex",
    "BoxSample",
    "balanced_subset",
    "eval_transform",
    "fetch",
    "make_loader",
    "read_dataset",
    "read_tiny_imagenet",
    "select_classes",
    "stratified_split",
    "train_transform",
]
