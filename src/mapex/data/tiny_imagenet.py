"""Reader for the Tiny-ImageNet folder layout (the 200-class original or the embedded 20-class cut).

Layout: ``wnids.txt``, ``words.txt`` (id TAB names), ``train/<wnid>/<wnid>_boxes.txt`` with
``train/<wnid>/images/``, and ``val/val_annotations.txt`` with ``val/images/``. Box corners in the
files are inclusive pixels; they are read as half-open boxes (``+1`` on ``x1``, ``y1``).
"""

from __future__ import annotations

from pathlib import Path

from mapex.data.types import BoxIndex, BoxSample
from mapex.io import UserError

SPLITS = ("train", "val")

Row = tuple[Path, str, list[str], Path]
"""(image path, wnid, the four inclusive corner fields, annotation file it came from)."""


def read_tiny_imagenet(root: Path, split: str) -> BoxIndex:
    """Index ``split`` (``train``, or ``val``, which this project uses as its test split).

    Classes are the wnids in ``wnids.txt`` order; samples keep the order of the annotation files.
    """
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"tiny-imagenet split '{split}' unknown; expected one of {', '.join(SPLITS)}")
    classes = _read_lines(root / "wnids.txt")
    labels = {wnid: label for label, wnid in enumerate(classes)}
    rows = _train_rows(root, classes) if split == "train" else _val_rows(root)
    samples = [_sample(image, wnid, corners, labels, source) for image, wnid, corners, source in rows]
    _check_images_exist(samples)
    return BoxIndex(classes=classes, samples=samples, names=_read_names(root / "words.txt", classes))


def _train_rows(root: Path, classes: list[str]) -> list[Row]:
    rows: list[Row] = []
    for wnid in classes:
        boxes_file = root / "train" / wnid / f"{wnid}_boxes.txt"
        for fields in _read_table(boxes_file, columns=5):
            rows.append((root / "train" / wnid / "images" / fields[0], wnid, fields[1:], boxes_file))
    return rows


def _val_rows(root: Path) -> list[Row]:
    annotations = root / "val" / "val_annotations.txt"
    return [
        (root / "val" / "images" / fields[0], fields[1], fields[2:], annotations)
        for fields in _read_table(annotations, columns=6)
    ]


def _sample(image: Path, wnid: str, corners: list[str], labels: dict[str, int], source: Path) -> BoxSample:
    if wnid not in labels:
        raise UserError(f"{source}: class '{wnid}' of {image.name} is not in wnids.txt")
    try:
        x0, y0, x1, y1 = (float(value) for value in corners)
    except ValueError as err:
        raise UserError(f"{source}: bad box for {image.name}: {' '.join(corners)}") from err
    return BoxSample(image=image, label=labels[wnid], boxes=((x0, y0, x1 + 1, y1 + 1),))


def _check_images_exist(samples: list[BoxSample]) -> None:
    missing = [str(sample.image) for sample in samples if not sample.image.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"missing image files: {shown}")


def _read_names(words: Path, classes: list[str]) -> dict[str, str]:
    """Readable names of ``classes`` (``words.txt`` of the full set lists every ImageNet synset)."""
    wanted = set(classes)
    names = {fields[0]: fields[1] for fields in _read_table(words, columns=2) if fields[0] in wanted}
    return {wnid: names.get(wnid, wnid) for wnid in classes}


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path.read_text()


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Tab-separated rows with exactly ``columns`` fields (blank lines skipped)."""
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != columns:
            raise UserError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected {columns}")
        rows.append(fields)
    return rows
