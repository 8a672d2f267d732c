"""``mapex data check``: what a dataset holds and what is wrong with it, before any training.

The check reads the dataset with the same readers as training does (:mod:`mapex.data.registry`),
but with a :class:`~mapex.data.formats.ProblemLog` that records every problem instead of stopping
at the first one; the report says which of them the policy makes errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from PIL import Image

from mapex.data.formats import ProblemLog, ProblemPolicy
from mapex.data.registry import get_format
from mapex.data.types import BoxIndex

Stats = dict[str, float | None]
"""``min``, ``mean``, ``max`` of a quantity (``None`` each when there is nothing to measure)."""


@dataclass
class CheckReport:
    root: str
    format: str
    classes: list[str]
    images_per_class: dict[str, int]
    boxes_per_image: Stats
    box_area_fraction: Stats  # per box: box area / image area
    problems: list[tuple[str, str, str]]  # (kind, file relative to root, detail)
    problem_counts: dict[str, int]
    error_kinds: list[str]  # kinds that occurred and whose policy is "error"

    @property
    def has_errors(self) -> bool:
        """True when the policy makes one of the problems found an error (the CLI then fails)."""
        return bool(self.error_kinds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "format": self.format,
            "classes": list(self.classes),
            "images": sum(self.images_per_class.values()),
            "images_per_class": dict(self.images_per_class),
            "boxes_per_image": dict(self.boxes_per_image),
            "box_area_fraction": dict(self.box_area_fraction),
            "problems": [{"kind": kind, "file": file, "detail": detail} for kind, file, detail in self.problems],
            "problem_counts": dict(self.problem_counts),
            "error_kinds": list(self.error_kinds),
        }

    def format_text(self) -> str:
        per_class = ", ".join(f"{name} {count}" for name, count in self.images_per_class.items())
        lines = [
            f"dataset          {self.root} ({self.format})",
            f"classes          {len(self.classes)}",
            f"images           {sum(self.images_per_class.values())} ({per_class})",
            f"boxes per image  {_format_stats(self.boxes_per_image, '.2f')}",
            f"box area/image   {_format_stats(self.box_area_fraction, '.3f')}",
            f"problems         {len(self.problems)}" + _format_counts(self.problem_counts),
        ]
        for kind, file, detail in self.problems:
            action = "ERROR" if kind in self.error_kinds else "skip"
            lines.append(f"  {action:5}  {kind:18} {file}: {detail}")
        if self.has_errors:
            lines.append(f"errors: {', '.join(self.error_kinds)} (set data.problems.<kind>: skip to accept them)")
        return "\n".join(lines)


def check_dataset(root: Path, format: str, policy: ProblemPolicy | None = None, **reader_kwargs: Any) -> CheckReport:
    """Read all of ``root`` (every split) recording every problem; ``reader_kwargs`` go to the reader.

    ``format`` is a name in :data:`mapex.data.registry.FORMATS`.
    """
    root = Path(root)
    log = ProblemLog(policy or ProblemPolicy(), raise_errors=False)
    index = get_format(format).read_all(root, log, **reader_kwargs)
    return _report(root, format, index, log)


def _report(root: Path, format: str, index: BoxIndex, log: ProblemLog) -> CheckReport:
    counts = log.counts()
    return CheckReport(
        root=str(root),
        format=format,
        classes=list(index.classes),
        images_per_class=index.class_counts(),
        boxes_per_image=_stats([len(sample.boxes) for sample in index.samples]),
        box_area_fraction=_stats(_box_area_fractions(index)),
        problems=[(problem.kind, _relative(problem.file, root), problem.detail) for problem in log.problems],
        problem_counts=counts,
        error_kinds=[kind for kind in counts if log.is_error(kind)],
    )


def _box_area_fractions(index: BoxIndex) -> list[float]:
    fractions = []
    for sample in index.samples:
        with Image.open(sample.image) as image:  # the header only: the readers decoded it already
            width, height = image.size
        fractions += [(x1 - x0) * (y1 - y0) / (width * height) for x0, y0, x1, y1 in sample.boxes]
    return fractions


def _stats(values: list[float] | list[int]) -> Stats:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": float(min(values)), "mean": float(mean(values)), "max": float(max(values))}


def _relative(file: str, root: Path) -> str:
    path = Path(file)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else file


def _format_stats(stats: Stats, spec: str) -> str:
    if stats["mean"] is None:
        return "-"
    return f"min {stats['min']:{spec}}, mean {stats['mean']:{spec}}, max {stats['max']:{spec}}"


def _format_counts(counts: dict[str, int]) -> str:
    return (" (" + ", ".join(f"{kind} {count}" for kind, count in counts.items()) + ")") if counts else ""
