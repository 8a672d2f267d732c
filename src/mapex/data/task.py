"""The data recipe every stage derives from params the same way: source splits and one task's splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapex.data.formats import ProblemLog, ProblemPolicy
from mapex.data.registry import get_format
from mapex.data.splits import balanced_subset, select_classes, stratified_split
from mapex.data.types import BoxIndex
from mapex.io import UserError

log = logging.getLogger("mapex")


@dataclass
class TaskData:
    """The source splits (all classes) and the splits of one lightweight task (a class subset)."""

    source_classes: list[str]
    source_train: BoxIndex
    source_val: BoxIndex
    source_test: BoxIndex
    task_train: BoxIndex
    task_val: BoxIndex
    task_test: BoxIndex
    skipped: dict[str, int]  # dataset problems skipped by policy, per kind (both splits)

    @property
    def task_class_indices(self) -> list[int]:
        return [self.source_classes.index(c) for c in self.task_test.classes]


def load_task_data(params: dict[str, Any], data_dir: str | Path, task_classes: list[str] | None = None) -> TaskData:
    """Source splits and the splits of the task made of ``task_classes`` (default: the first task).

    The validation carve-out is made once on the source training images and then restricted to
    the task classes, so no task validation image was seen by the baseline's training. Every
    split, the test split included, must have images: an empty one stops the stage at once.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found (run `mapex fetch` first)")
    dp = params["data"]
    seed = params["train"]["seed"]
    problems = ProblemLog(policy=ProblemPolicy.from_dict(dp["problems"]))
    fmt = get_format(dp["format"])
    if dp["problems"] and not fmt.checks_problems:
        raise UserError(
            f"data.problems: the {dp['format']} reader checks the layout, not each image; remove the key "
            f"(`mapex data check --format {dp['format']}` lists per-image problems)"
        )
    train_all = _capped(fmt.read(root, "train", problems, dp["label_rule"]), dp["max_per_class"], seed)
    test = _capped(fmt.read(root, fmt.test_split, problems, dp["label_rule"]), dp["max_test_per_class"], seed)
    source_train, source_val = stratified_split(train_all, dp["val_fraction"], seed)
    classes = task_classes if task_classes is not None else dp["tasks"][0]["classes"]
    data = TaskData(
        source_classes=list(train_all.classes),
        source_train=source_train,
        source_val=source_val,
        source_test=test,
        task_train=select_classes(source_train, classes),
        task_val=select_classes(source_val, classes),
        task_test=select_classes(test, classes),
        skipped=_skipped_per_kind(problems),
    )
    _check_not_empty(data, root)
    return data


def _check_not_empty(data: TaskData, root: Path) -> None:
    for split in ("source_train", "source_val", "source_test", "task_train", "task_val", "task_test"):
        if not getattr(data, split).samples:
            raise UserError(
                f"{root}: the {split.replace('_', ' ')} split has no image "
                "(check data.val_fraction, data.max_per_class and the dataset's splits)"
            )


def _skipped_per_kind(problems: ProblemLog) -> dict[str, int]:
    """Log each skipped sample once (a reader may see it for both splits) and count them per kind."""
    unique = {(p.kind, p.file): p.detail for p in problems.problems}
    for (kind, file), detail in sorted(unique.items()):
        log.warning("skipped %s: %s (%s)", file, kind, detail)
    counts: dict[str, int] = {}
    for kind, _ in unique:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _capped(index: BoxIndex, cap: int | None, seed: int) -> BoxIndex:
    if cap is None:
        return index
    return balanced_subset(index, min(cap, min(index.class_counts().values())), seed)
