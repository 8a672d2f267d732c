"""Datasets with boxes: fetching archives, reading formats, splits, box-aware transforms, loaders.

The loader and the transforms (which need torchvision) load on first use, so that ``mapex data
check`` and the CLI's parser (which lists :data:`mapex.data.registry.FORMATS`) do not import it.
"""

from __future__ import annotations

import importlib
from typing import Any

from mapex.data.fetch import fetch
from mapex.data.splits import balanced_subset, select_classes, stratified_split
from mapex.data.tiny_imagenet import read_tiny_imagenet
from mapex.data.types import BoxIndex, BoxSample

_ON_FIRST_USE = {
    "BoxDataset": "dataset",
    "make_loader": "dataset",
    "eval_transform": "transforms",
    "train_transform": "transforms",
}

__all__ = [
    "BoxIndex",
    "BoxSample",
    "balanced_subset",
    "fetch",
    "read_tiny_imagenet",
    "select_classes",
    "stratified_split",
    *_ON_FIRST_USE,
]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'mapex.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"mapex.data.{_ON_FIRST_USE[name]}"), name)
