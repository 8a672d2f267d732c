"""Every dataset format by name: how a stage reads one split, and how ``mapex data check`` reads them all.

The params schema's ``data.format`` enum, the CLI's ``--format`` choices and the list in
``docs/datasets.md`` are this registry's keys (tests/test_data.py checks the three). Adding a
format: a function that parses its layout into :class:`~mapex.data.formats.RawDataset` records,
added to ``formats.PARSERS`` (this registry picks it up), or a reader of its own with one line here,
as Tiny-ImageNet has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapex.data.formats import PARSERS, ProblemLog, read_formatted, validate_index
from mapex.data.tiny_imagenet import read_tiny_imagenet
from mapex.data.types import BoxIndex
from mapex.io import UserError


@dataclass(frozen=True)
class Format:
    """How to read a format.

    ``read(root, split, problems, label_rule)`` gives one split (``train`` or :attr:`test_split`),
    recording what the policy skips in ``problems``; ``read_all(root, problems, **reader_kwargs)``
    gives every image, for the data check. :attr:`checks_problems` is false for a reader that
    applies no per-image policy when a stage reads it (``data.problems`` is then refused).
    """

    read: Callable[[Path, str, ProblemLog, str], BoxIndex]
    read_all: Callable[..., BoxIndex]
    test_split: str = "test"
    checks_problems: bool = True


def _parsed(name: str) -> Format:
    """A format parsed by :func:`~mapex.data.formats.read_formatted` (its checks and splits)."""
    return Format(
        read=lambda root, split, problems, label_rule: read_formatted(
            root, name, split, problems=problems, label_rule=label_rule
        ),
        read_all=lambda root, problems, **kwargs: read_formatted(root, name, "all", problems=problems, **kwargs),
    )


def _tiny_imagenet_split(root: Path, split: str, problems: ProblemLog, label_rule: str) -> BoxIndex:
    """The layout is checked (a broken one raises); images are decoded later, by the loader."""
    return read_tiny_imagenet(root, split)


def _tiny_imagenet_all(root: Path, problems: ProblemLog, **kwargs: Any) -> BoxIndex:
    """Train and val, given the per-image checks of the other formats."""
    if not root.is_dir():
        problems.report("missing-dataset", root, "no such folder")
        return BoxIndex(classes=[], samples=[])
    train, val = read_tiny_imagenet(root, "train"), read_tiny_imagenet(root, "val")
    both = BoxIndex(classes=train.classes, samples=train.samples + val.samples, names=train.names)
    return validate_index(both, problems, **kwargs)


FORMATS: dict[str, Format] = {
    # Tiny-ImageNet's own val split is this project's test split.
    "tiny-imagenet": Format(_tiny_imagenet_split, _tiny_imagenet_all, test_split="val", checks_problems=False),
    **{name: _parsed(name) for name in PARSERS},
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"unknown dataset format '{name}'; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]
