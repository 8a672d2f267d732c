"""The box-labelled index that every dataset reader returns and every later stage consumes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxSample:
    """One image with its class label and boxes (``x0, y0, x1, y1``, half-open, original pixels)."""

    image: Path
    label: int
    boxes: tuple[Box, ...]


@dataclass
class BoxIndex:
    """A labelled image list: ``classes[label]`` is the class id; ``names`` maps id -> readable name."""

    classes: list[str]
    samples: list[BoxSample]
    names: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> dict[str, int]:
        """Samples per class id, in ``classes`` order (classes without samples count 0)."""
        counts = Counter(sample.label for sample in self.samples)
        return {class_id: counts[label] for label, class_id in enumerate(self.classes)}
