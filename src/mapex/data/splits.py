"""Class selection, stratified validation splits and class-balanced samples of a :class:`BoxIndex`.

Randomness is per class: each class's samples are shuffled by a generator seeded from
``(purpose, seed, class id)``. So a class's split or subset does not depend on which other classes
are in the index (selecting classes before or after splitting gives the same samples), and
``balanced_subset`` with a larger ``per_class`` contains the one with a smaller ``per_class``
(the "multiple samples" study compares nested sample sets).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from mapex.data.types import BoxIndex, BoxSample
from mapex.io import UserError


def select_classes(index: BoxIndex, class_ids: list[str]) -> BoxIndex:
    """Keep the samples of ``class_ids`` and relabel them ``0..k-1`` in the given order."""
    _check_class_ids(index, class_ids)
    new_label = {index.classes.index(class_id): label for label, class_id in enumerate(class_ids)}
    samples = [replace(sample, label=new_label[sample.label]) for sample in index.samples if sample.label in new_label]
    names = {class_id: index.names[class_id] for class_id in class_ids if class_id in index.names}
    return BoxIndex(classes=list(class_ids), samples=samples, names=names)


def stratified_split(index: BoxIndex, val_fraction: float, seed: int) -> tuple[BoxIndex, BoxIndex]:
    """Split into (train, val) with ``round(n * val_fraction)`` validation samples from each class.

    Both parts keep the index's sample order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction {val_fraction} must be in [0, 1)")
    val_positions: set[int] = set()
    for positions in _shuffled_by_class(index, "split", seed).values():
        val_positions.update(positions[: round(len(positions) * val_fraction)])
    return _subset(index, lambda position: position not in val_positions), _subset(index, val_positions.__contains__)


def balanced_subset(index: BoxIndex, per_class: int, seed: int) -> BoxIndex:
    """``per_class`` seeded random samples of every class (in the index's sample order)."""
    if per_class < 1:
        raise UserError(f"per_class {per_class} must be at least 1")
    chosen: set[int] = set()
    for label, positions in _shuffled_by_class(index, "subset", seed).items():
        if len(positions) < per_class:
            raise UserError(
                f"class '{index.classes[label]}' has {len(positions)} samples, fewer than per_class={per_class}"
            )
        chosen.update(positions[:per_class])
    return _subset(index, chosen.__contains__)


def _check_class_ids(index: BoxIndex, class_ids: list[str]) -> None:
    known = set(index.classes)
    for class_id in class_ids:
        if class_id not in known:
            examples = ", ".join(index.classes[:5]) + (", ..." if len(index.classes) > 5 else "")
            raise UserError(f"unknown class id '{class_id}'; valid ids ({len(index.classes)}) include {examples}")
    duplicates = sorted({class_id for class_id in class_ids if class_ids.count(class_id) > 1})
    if duplicates:
        raise UserError(f"class ids listed more than once: {', '.join(duplicates)}")


def _shuffled_by_class(index: BoxIndex, purpose: str, seed: int) -> dict[int, list[int]]:
    """Sample positions of each label, shuffled by a generator of (purpose, seed, class id) alone."""
    by_label: dict[int, list[int]] = {label: [] for label in range(len(index.classes))}
    for position, sample in enumerate(index.samples):
        by_label[sample.label].append(position)
    for label, positions in by_label.items():
        random.Random(f"{purpose}:{seed}:{index.classes[label]}").shuffle(positions)
    return by_label


def _subset(index: BoxIndex, keep_position: Callable[[int], bool]) -> BoxIndex:
    samples: list[BoxSample] = [sample for position, sample in enumerate(index.samples) if keep_position(position)]
    return BoxIndex(classes=list(index.classes), samples=samples, names=dict(index.names))
