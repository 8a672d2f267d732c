"""Readers for users' own box-labelled datasets: Pascal VOC, COCO, YOLO and a boxes CSV.

Each format reader only *parses* its layout into :class:`RawImage` records (image path, boxes as
written, the dataset's own split if it has one). The steps that are the same for every format are
done once, after parsing: decoding each image, checking and clipping its boxes, choosing its class,
dropping duplicates and choosing the split.

Whatever is wrong with the input is a *problem* of one kind (:data:`DEFAULT_ACTIONS`), recorded in
a :class:`ProblemLog`. The :class:`ProblemPolicy` says per kind whether it stops the read
(``error``: :class:`~mapex.io.UserError` naming the file and kind) or is counted and the sample
dropped (``skip``; a box outside the image is clipped instead).

Image order, class order and the hold-out split are deterministic, so two reads of one dataset
with the same arguments give the same index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from mapex.data.splits import stratified_split
from mapex.data.types import Box, BoxIndex, BoxSample
from mapex.io import UserError

DEFAULT_ACTIONS: dict[str, str] = {
    "missing-dataset": "error",  # the dataset folder, or a folder its layout needs, is absent
    "missing-annotation": "error",  # an annotation file (or the class-name file) is absent
    "bad-annotation": "error",  # an annotation file or line cannot be parsed
    "missing-image": "skip",  # an annotated image file is absent
    "unreadable-image": "skip",  # the image file does not decode
    "duplicate-file": "skip",  # the same image bytes already in the index (listed twice, or a copy)
    "no-box": "skip",  # an image without any box
    "unknown-class": "skip",  # a box whose class is not in the dataset's class list
    "empty-box": "skip",  # a box of zero width or height
    "inverted-box": "skip",  # a box with x1 < x0 or y1 < y0
    "box-outside-image": "skip",  # a box reaching past the image border by more than the tolerance (clipped)
    "bad-box": "skip",  # a box mostly outside the image, or a coordinate beyond twice the image size
    "mixed-classes": "skip",  # label_rule "agree": boxes of more than one class in one image
}
"""Every problem kind, with its default action."""

ACTIONS = ("error", "skip")
SPLITS = ("train", "test", "all")
LABEL_RULES = ("largest", "agree")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
CSV_COLUMNS = ("image", "label", "x0", "y0", "x1", "y1")
BORDER_TOLERANCE_PX = 0.5
BORDER_TOLERANCE_FRACTION = 1e-3
"""A box may overshoot the border by the larger of these unreported (rounding in exports such as
YOLO's 6-decimal fractions); it is clipped all the same."""


# ---------------------------------------------------------------------------------------------
# Problems and the policy for them


@dataclass
class ProblemPolicy:
    """The action (``error`` or ``skip``) for each problem kind; kinds not given keep their default."""

    actions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, action in self.actions.items():
            if kind not in DEFAULT_ACTIONS:
                raise UserError(f"data.problems: unknown problem kind '{kind}'; known: {', '.join(DEFAULT_ACTIONS)}")
            if action not in ACTIONS:
                raise UserError(f"data.problems.{kind}: '{action}' is not one of {', '.join(ACTIONS)}")
        self.actions = {**DEFAULT_ACTIONS, **self.actions}

    @classmethod
    def from_dict(cls, overrides: Mapping[str, str] | None) -> ProblemPolicy:
        """The policy from ``data.problems`` of params.yaml (``None`` or ``{}``: all defaults)."""
        if overrides is not None and not isinstance(overrides, Mapping):
            raise UserError(f"data.problems: expected a mapping of problem kind to error|skip, got {overrides!r}")
        return cls(dict(overrides or {}))

    @classmethod
    def from_json(cls, text: str, source: str = "--problems") -> ProblemPolicy:
        """The policy from a JSON object such as ``{"no-box": "error"}`` (the CLI's ``--problems``)."""
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f'{source}: not valid JSON ({err}); e.g. \'{{"no-box": "error"}}\'') from err
        return cls.from_dict(overrides)


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    detail: str


@dataclass
class ProblemLog:
    """Collects problems; raises on the first one whose action is ``error`` unless ``raise_errors`` is off.

    ``raise_errors=False`` is for checking a dataset: every problem is recorded, and error-kind
    problems are then handled like skipped ones so the whole dataset can be looked at.
    """

    policy: ProblemPolicy = field(default_factory=ProblemPolicy)
    raise_errors: bool = True
    problems: list[Problem] = field(default_factory=list)

    def report(self, kind: str, file: Path, detail: str) -> None:
        self.problems.append(Problem(kind, str(file), detail))
        if self.raise_errors and self.is_error(kind):
            raise UserError(f"{file}: {kind}: {detail} (data.problems.{kind} is 'error')")

    def is_error(self, kind: str) -> bool:
        return self.policy.actions[kind] == "error"

    def counts(self) -> dict[str, int]:
        """Problems per kind, in :data:`DEFAULT_ACTIONS` order, kinds that occurred only."""
        counts = Counter(problem.kind for problem in self.problems)
        return {kind: counts[kind] for kind in DEFAULT_ACTIONS if counts[kind]}

    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if self.is_error(problem.kind)]


# ---------------------------------------------------------------------------------------------
# What a format reader returns


@dataclass(frozen=True)
class RawBox:
    """A box as the annotation writes it, before any check."""

    label: str | None  # class id; None when the annotation names no class of the class list
    written: str  # the class as the annotation writes it (for messages)
    coords: Box  # x0, y0, x1, y1 half-open; fractions of the image size when ``relative``
    relative: bool = False


@dataclass
class RawImage:
    file: Path
    boxes: list[RawBox]
    split: str | None = None  # "train" / "test" from the dataset's own split files


@dataclass
class RawDataset:
    images: list[RawImage]
    classes: list[str] | None = None  # declared class list; None: the sorted class ids found


# ---------------------------------------------------------------------------------------------
# Entry points


def read_formatted(
    root: Path,
    format: str,
    split: str,
    *,
    policy: ProblemPolicy | None = None,
    label_rule: str = "largest",
    test_fraction: float = 0.2,
    seed: int = 0,
    problems: ProblemLog | None = None,
) -> BoxIndex:
    """Index ``split`` (``train``, ``test`` or ``all``) of a ``voc``/``coco``/``yolo``/``csv`` dataset.

    Classes are the dataset's declared list (COCO categories, YOLO names) or else the sorted class
    names found, and do not depend on ``split``. Without split files in the dataset, ``test`` is a
    seeded stratified hold-out of ``test_fraction`` of every class and ``train`` the rest.
    Problems go to ``problems`` when given (its policy applies; do not pass ``policy`` too).
    """
    _check_arguments(format, split, label_rule, test_fraction)
    log = _problem_log(policy, problems)
    root = Path(root)
    if not root.is_dir():
        log.report("missing-dataset", root, "no such folder")
        return BoxIndex(classes=[], samples=[])
    raw = PARSERS[format](root, log)
    classes = raw.classes if raw.classes is not None else _found_classes(raw.images)
    tagged = _checked_samples(raw.images, classes, label_rule, log)
    return _split_of(tagged, classes, split, test_fraction, seed)


def validate_index(index: BoxIndex, problems: ProblemLog, label_rule: str = "largest") -> BoxIndex:
    """Run the per-image checks of :func:`read_formatted` on an index read by another reader."""
    images = []
    for sample in index.samples:
        class_id = index.classes[sample.label]
        images.append(RawImage(sample.image, [RawBox(class_id, class_id, box) for box in sample.boxes]))
    tagged = _checked_samples(images, index.classes, label_rule, problems)
    return BoxIndex(classes=list(index.classes), samples=[sample for sample, _ in tagged], names=dict(index.names))


def _check_arguments(format: str, split: str, label_rule: str, test_fraction: float) -> None:
    choices = (
        ("data.format", format, tuple(PARSERS)),
        ("split", split, SPLITS),
        ("data.label_rule", label_rule, LABEL_RULES),
    )
    for key, value, allowed in choices:
        if value not in allowed:
            raise UserError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"data.test_fraction: {test_fraction} must be between 0 and 1")


def _problem_log(policy: ProblemPolicy | None, problems: ProblemLog | None) -> ProblemLog:
    if problems is None:
        return ProblemLog(policy or ProblemPolicy())
    if policy is not None:
        raise ValueError("give the policy to the ProblemLog, not to read_formatted as well")
    return problems


def _found_classes(images: list[RawImage]) -> list[str]:
    return sorted({box.label for image in images for box in image.boxes if box.label is not None})


# ---------------------------------------------------------------------------------------------
# Checks shared by every format


def _checked_samples(
    images: list[RawImage], classes: list[str], label_rule: str, log: ProblemLog
) -> list[tuple[BoxSample, str | None]]:
    """The samples that pass every check, each with its split tag, in the readers' order.

    An image whose bytes equal those of an image already kept is a duplicate; so the first copy
    (in the reader's order: train before test) is the one kept.
    """
    label_of = {class_id: label for label, class_id in enumerate(classes)}
    kept_digests: dict[str, Path] = {}
    tagged = []
    for image in images:
        content = _read_image_bytes(image.file, log)
        if content is None:
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest in kept_digests:
            first = kept_digests[digest]
            detail = "listed twice" if first == image.file else f"same bytes as {first}, which is kept"
            log.report("duplicate-file", image.file, detail)
            continue
        size = _decoded_size(image.file, content, log)
        boxes = _checked_boxes(image, size, log) if size is not None else None
        sample = _labelled_sample(image.file, boxes, label_of, label_rule, log) if boxes else None
        if sample is not None:
            kept_digests[digest] = image.file
            tagged.append((sample, image.split))
    return tagged


def _read_image_bytes(file: Path, log: ProblemLog) -> bytes | None:
    if not file.is_file():
        log.report("missing-image", file, "no such file")
        return None
    return file.read_bytes()


def _decoded_size(file: Path, content: bytes, log: ProblemLog) -> tuple[int, int] | None:
    """``(width, height)`` of an image that decodes completely, else ``None`` (reported).

    The whole file is decoded (a truncated JPEG has an intact header); ``draft`` lets JPEGs decode
    at 1/8 scale, which still reads every byte but is several times faster.
    """
    try:
        with Image.open(io.BytesIO(content)) as image:
            size = image.size
            image.draft("RGB", (1, 1))
            image.load()
    except UnidentifiedImageError:
        log.report("unreadable-image", file, "not an image format PIL can identify")
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        log.report("unreadable-image", file, f"cannot decode ({err})")
        return None
    return size


def _checked_boxes(image: RawImage, size: tuple[int, int], log: ProblemLog) -> list[tuple[str, Box]] | None:
    """The image's boxes as ``(class id, clipped pixel box)``; ``None`` when the image must be dropped.

    A box of an unknown class, or an empty, inverted or bad one, drops the whole image: leaving the
    box out would count an object's pixels as background. A box a little past the border is
    clipped (reported beyond the border tolerance).
    """
    if not image.boxes:
        log.report("no-box", image.file, "the image has no box")
        return None
    checked = []
    usable = True
    for box in image.boxes:
        coords = _pixel_coords(box, size)
        fault = _box_fault(box, coords, size)
        if fault is not None:
            log.report(fault[0], image.file, fault[1])
            usable = False
            continue
        checked.append((box.label, _clipped(coords, size, image.file, log)))
    return checked if usable and checked else None


def _pixel_coords(box: RawBox, size: tuple[int, int]) -> Box:
    if not box.relative:
        return box.coords
    width, height = size
    x0, y0, x1, y1 = box.coords
    return (x0 * width, y0 * height, x1 * width, y1 * height)


def _box_fault(box: RawBox, coords: Box, size: tuple[int, int]) -> tuple[str, str] | None:
    """The kind and detail of a fault that makes the box unusable, or ``None``.

    ``bad-box``: a coordinate outside ``[-size, 2 * size]`` (an absurd value, not a rounding
    error) or less than half the box inside the image: clipping it would keep a box that does not
    say where the object is.
    """
    x0, y0, x1, y1 = coords
    width, height = size
    if box.label is None:
        return "unknown-class", f"class '{box.written}' is not in the class list"
    if x1 < x0 or y1 < y0:
        return "inverted-box", f"box {_format_box(coords)} has x1 < x0 or y1 < y0"
    if x1 == x0 or y1 == y0:
        return "empty-box", f"box {_format_box(coords)} has zero area"
    if not (-width <= x0 and x1 <= 2 * width and -height <= y0 and y1 <= 2 * height):
        return "bad-box", f"box {_format_box(coords)} has a coordinate beyond twice the {width}x{height} image"
    if _area(_clip(coords, size)) < 0.5 * _area(coords):
        return "bad-box", f"box {_format_box(coords)} lies mostly outside the {width}x{height} image"
    return None


def _clipped(coords: Box, size: tuple[int, int], file: Path, log: ProblemLog) -> Box:
    """The box clipped to the image; reported when it overshot by more than the border tolerance."""
    clipped = _clip(coords, size)
    overshoot_x = max(clipped[0] - coords[0], coords[2] - clipped[2])
    overshoot_y = max(clipped[1] - coords[1], coords[3] - clipped[3])
    width, height = size
    if overshoot_x > _tolerance(width) or overshoot_y > _tolerance(height):
        log.report("box-outside-image", file, f"box {_format_box(coords)} clipped to the {width}x{height} image")
    return clipped


def _clip(coords: Box, size: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = coords
    width, height = size
    return (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        max(min(x1, float(width)), 0.0),
        max(min(y1, float(height)), 0.0),
    )


def _tolerance(side: int) -> float:
    return max(BORDER_TOLERANCE_PX, BORDER_TOLERANCE_FRACTION * side)


def _format_box(coords: Box) -> str:
    return "(" + ", ".join(f"{value:g}" for value in coords) + ")"


def _labelled_sample(
    file: Path, boxes: list[tuple[str, Box]], label_of: dict[str, int], label_rule: str, log: ProblemLog
) -> BoxSample | None:
    """The image's class is that of its largest box (first in annotation order on a tie); all boxes
    of that class are its boxes. Under ``agree`` an image with boxes of several classes is dropped."""
    found = sorted({class_id for class_id, _ in boxes})
    if label_rule == "agree" and len(found) > 1:
        log.report("mixed-classes", file, f"boxes of classes {', '.join(found)}")
        return None
    chosen, _ = max(boxes, key=lambda box: _area(box[1]))
    chosen_boxes = tuple(coords for class_id, coords in boxes if class_id == chosen)
    return BoxSample(image=file, label=label_of[chosen], boxes=chosen_boxes)


def _area(coords: Box) -> float:
    x0, y0, x1, y1 = coords
    return (x1 - x0) * (y1 - y0)


def _split_of(
    tagged: list[tuple[BoxSample, str | None]], classes: list[str], split: str, test_fraction: float, seed: int
) -> BoxIndex:
    everything = BoxIndex(classes=list(classes), samples=[sample for sample, _ in tagged])
    if split == "all":
        return everything
    if any(tag is not None for _, tag in tagged):
        return BoxIndex(classes=list(classes), samples=[sample for sample, tag in tagged if tag == split])
    train, test = stratified_split(everything, test_fraction, seed)
    return train if split == "train" else test


def _numbers(values: Iterable[object], count: int) -> tuple[float, ...]:
    """Exactly ``count`` finite numbers parsed from ``values``; ``ValueError`` otherwise."""
    try:
        numbers = tuple(float(value) for value in values)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(f"not numbers: {values!r}") from err
    if len(numbers) != count or not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"expected {count} finite numbers: {values!r}")
    return numbers


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


# ---------------------------------------------------------------------------------------------
# Pascal VOC: Annotations/<id>.xml, JPEGImages/<filename>, ImageSets/Main/{train,val,trainval,test}.txt


def _read_voc(root: Path, log: ProblemLog) -> RawDataset:
    annotations = root / "Annotations"
    if not annotations.is_dir():
        log.report("missing-annotation", annotations, "Pascal VOC needs an Annotations/ folder of XML files")
        return RawDataset([])
    listed = _voc_listed_ids(root / "ImageSets" / "Main", log)
    if listed is None:
        listed = [(xml.stem, None) for xml in sorted(annotations.glob("*.xml"))]
    images = []
    for image_id, split in listed:
        image = _read_voc_xml(root, annotations / f"{image_id}.xml", log)
        if image is not None:
            image.split = split
            images.append(image)
    return RawDataset(images)


def _voc_listed_ids(main: Path, log: ProblemLog) -> list[tuple[str, str | None]] | None:
    """Image ids with their split from ImageSets/Main, or ``None`` when it has no train list.

    ``train`` is trainval.txt, else train.txt plus val.txt; ``test`` is test.txt. Without test.txt
    the listed training ids are tagged ``None`` (so the hold-out split applies to them).
    """
    trainval = main / "trainval.txt"
    train_and_val = [path for path in (main / "train.txt", main / "val.txt") if path.is_file()]
    train_files = [trainval] if trainval.is_file() else train_and_val
    if not train_files:
        return None
    test_file = main / "test.txt"
    has_test = test_file.is_file()
    tag = "train" if has_test else None
    listed = [(image_id, tag) for path in train_files for image_id in _first_words(path, log)]
    if has_test:
        listed += [(image_id, "test") for image_id in _first_words(test_file, log)]
    return listed


def _first_words(path: Path, log: ProblemLog) -> list[str]:
    return [line.split()[0] for line in (_text(path, log) or "").splitlines() if line.strip()]


def _text(path: Path, log: ProblemLog) -> str | None:
    """The file's text, or ``None`` when it is not UTF-8 (reported as a bad annotation)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        log.report("bad-annotation", path, f"not UTF-8 text ({err.reason} at byte {err.start})")
        return None


def _read_voc_xml(root: Path, xml: Path, log: ProblemLog) -> RawImage | None:
    if not xml.is_file():
        log.report("missing-annotation", xml, "listed in ImageSets/Main but there is no such file")
        return None
    try:
        tree = ElementTree.parse(xml).getroot()
        boxes = [_voc_box(element) for element in tree.findall("object")]
    except ElementTree.ParseError as err:
        log.report("bad-annotation", xml, f"not valid XML ({err})")
        return None
    except ValueError as err:
        log.report("bad-annotation", xml, str(err))
        return None
    filename = (tree.findtext("filename") or f"{xml.stem}.jpg").strip()
    return RawImage(root / "JPEGImages" / filename, boxes)


def _voc_box(element: ElementTree.Element) -> RawBox:
    """VOC corners are 1-based and inclusive: pixels ``xmin..xmax`` are ``[xmin-1, xmax)`` half-open."""
    name = (element.findtext("name") or "").strip()
    bndbox = element.find("bndbox")
    corners = [bndbox.findtext(tag) if bndbox is not None else None for tag in ("xmin", "ymin", "xmax", "ymax")]
    try:
        xmin, ymin, xmax, ymax = _numbers(corners, 4)
    except ValueError:
        raise ValueError(f"object '{name}' has no numeric bndbox xmin/ymin/xmax/ymax") from None
    return RawBox(name or None, name, (xmin - 1, ymin - 1, xmax, ymax))


# ---------------------------------------------------------------------------------------------
# ImageNet (ILSVRC-2012 CLS-LOC): train/<wnid>/*.JPEG, val/[<wnid>/]*.JPEG, and the bounding-box
# archives unpacked as boxes/train/<wnid>/<image>.xml and boxes/val/<image>.xml (VOC-style XML)

IMAGENET_SPLITS = {"train": "train", "val": "test"}
"""ImageNet's own splits, and the split each is here: its val set is the test split."""


def _read_imagenet(root: Path, log: ProblemLog) -> RawDataset:
    """Every image that has a box file (ILSVRC has boxes for a part of train and all of val)."""
    boxes_root = root / "boxes"
    if not boxes_root.is_dir():
        log.report(
            "missing-annotation", boxes_root, "ImageNet needs the bounding-box XML files under boxes/train, boxes/val"
        )
        return RawDataset([])
    images = []
    for own_split, split in IMAGENET_SPLITS.items():
        files = {path.stem: path for path in _image_files(root / own_split)} if (root / own_split).is_dir() else {}
        for xml in sorted((boxes_root / own_split).rglob("*.xml")):
            image = _read_voc_xml(root, xml, log)
            if image is not None:
                default = root / own_split / xml.parent.relative_to(boxes_root / own_split) / f"{xml.stem}.JPEG"
                images.append(RawImage(files.get(xml.stem, default), image.boxes, split))
    return RawDataset(images)


# ---------------------------------------------------------------------------------------------
# COCO: one instances *.json in annotations/ or the root; images in images/ or beside the json


def _read_coco(root: Path, log: ProblemLog) -> RawDataset:
    json_file = _coco_json(root, log)
    if json_file is None:
        return RawDataset([])
    try:
        content = json.loads(json_file.read_text())
        categories = {category["id"]: str(category["name"]) for category in content["categories"]}
        file_names = {image["id"]: _text_field(image["file_name"]) for image in content["images"]}
        annotations = [_object(annotation) for annotation in content.get("annotations", [])]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        log.report("bad-annotation", json_file, f"not a COCO instances file ({type(err).__name__}: {err})")
        return RawDataset([])
    image_dir = root / "images" if (root / "images").is_dir() else json_file.parent
    boxes, broken = _coco_boxes(annotations, categories, file_names, json_file, log)
    images = [
        RawImage(image_dir / name, boxes[image_id]) for image_id, name in file_names.items() if image_id not in broken
    ]
    return RawDataset(images, classes=list(dict.fromkeys(categories.values())))


def _text_field(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _object(value: object) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return value


def _coco_json(root: Path, log: ProblemLog) -> Path | None:
    """The single annotation file; several are ambiguous unless exactly one is named instances*."""
    candidates = sorted((root / "annotations").glob("*.json")) + sorted(root.glob("*.json"))
    instances = [path for path in candidates if path.name.startswith("instances")]
    if len(candidates) > 1 and len(instances) == 1:
        return instances[0]
    if len(candidates) > 1:
        raise UserError(f"{root}: several COCO annotation files ({', '.join(p.name for p in candidates)}); keep one")
    if not candidates:
        log.report("missing-annotation", root / "annotations", "no COCO *.json in annotations/ or the dataset root")
        return None
    return candidates[0]


def _coco_boxes(
    annotations: list[dict], categories: dict, file_names: dict, json_file: Path, log: ProblemLog
) -> tuple[dict[object, list[RawBox]], set[object]]:
    """Boxes per image id, and the ids with an unparsable annotation (reported; their images dropped)."""
    boxes: dict[object, list[RawBox]] = {image_id: [] for image_id in file_names}
    broken: set[object] = set()
    for annotation in annotations:
        image_id, name = annotation.get("image_id"), f"annotation {annotation.get('id')}"
        if not isinstance(image_id, Hashable) or image_id not in boxes:
            log.report("bad-annotation", json_file, f"{name} refers to unknown image_id {image_id}")
            continue
        try:
            x, y, width, height = _numbers(annotation.get("bbox") or (), 4)
        except ValueError:
            log.report("bad-annotation", json_file, f"{name} of {file_names[image_id]}: bbox is not [x, y, w, h]")
            broken.add(image_id)
            continue
        category = annotation.get("category_id")
        label = categories.get(category) if isinstance(category, Hashable) else None
        box = RawBox(label, f"category_id {category}", (x, y, x + width, y + height))
        boxes[image_id].append(box)
    return boxes, broken


# ---------------------------------------------------------------------------------------------
# YOLO: images/ + labels/ (flat, or images/{train,val,test} + labels/{train,val,test});
# class names from data.yaml (names: list or dict) or classes.txt


def _read_yolo(root: Path, log: ProblemLog) -> RawDataset:
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        log.report("missing-dataset", images_dir, "YOLO needs an images/ folder")
        return RawDataset([])
    if not labels_dir.is_dir():
        log.report("missing-annotation", labels_dir, "YOLO needs a labels/ folder")
        return RawDataset([])
    names = _yolo_names(root, log)
    images = []
    for folder, split in _yolo_split_folders(images_dir):
        images += _read_yolo_folder(images_dir / folder, labels_dir / folder, split, names, log)
    return RawDataset(images, classes=[names[index] for index in sorted(names)] if names is not None else None)


def _yolo_split_folders(images_dir: Path) -> list[tuple[str, str | None]]:
    """Subfolders with their split: with test/, train+val train; else train trains and val tests.

    A flat images/ (or a single split folder) has no split of its own (the hold-out applies).
    """
    present = [name for name in ("train", "val", "test") if (images_dir / name).is_dir()]
    if "test" in present and len(present) > 1:
        return [(name, "test" if name == "test" else "train") for name in present]
    if present == ["train", "val"]:
        return [("train", "train"), ("val", "test")]
    return [(name, None) for name in present] or [("", None)]


def _yolo_names(root: Path, log: ProblemLog) -> dict[int, str] | None:
    """Class names by index, or ``None`` (reported) when the dataset does not name its classes."""
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        return _yolo_yaml_names(data_yaml, log)
    for classes_txt in (root / "classes.txt", root / "labels" / "classes.txt"):
        if classes_txt.is_file():
            text = _text(classes_txt, log)
            return None if text is None else dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))
    log.report("missing-annotation", data_yaml, "YOLO needs class names: data.yaml with 'names:', or classes.txt")
    return None


def _yolo_yaml_names(data_yaml: Path, log: ProblemLog) -> dict[int, str] | None:
    text = _text(data_yaml, log)
    if text is None:
        return None
    try:
        names = yaml.safe_load(text)["names"]
        if isinstance(names, list):
            return {index: str(name) for index, name in enumerate(names)}
        if isinstance(names, dict):
            return {int(index): str(name) for index, name in names.items()}
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        pass
    log.report("bad-annotation", data_yaml, "no 'names:' list or {index: name} mapping")
    return None


def _read_yolo_folder(
    images: Path, labels: Path, split: str | None, names: dict[int, str] | None, log: ProblemLog
) -> list[RawImage]:
    """One RawImage per image (no label file: no box); a label file without an image is reported."""
    image_files = _image_files(images)
    read = [
        _read_yolo_labels(labels / file.relative_to(images).with_suffix(".txt"), names, log) for file in image_files
    ]
    _report_orphan_labels(labels, {file.relative_to(images).with_suffix("") for file in image_files}, images, log)
    return [RawImage(file, boxes, split) for file, boxes in zip(image_files, read) if boxes is not None]


def _report_orphan_labels(labels: Path, image_stems: set[Path], images: Path, log: ProblemLog) -> None:
    if not labels.is_dir():
        return
    for label_file in sorted(labels.rglob("*.txt")):
        if label_file.name != "classes.txt" and label_file.relative_to(labels).with_suffix("") not in image_stems:
            log.report("missing-image", label_file, f"no image named {label_file.stem}.* in {images}")


def _read_yolo_labels(label_file: Path, names: dict[int, str] | None, log: ProblemLog) -> list[RawBox] | None:
    """Boxes of one label file (``class cx cy w h``, normalised); ``None`` when a line is bad (reported)."""
    if not label_file.is_file():
        return []
    text = _text(label_file, log)
    if text is None:
        return None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_index = int(fields[0])
            cx, cy, width, height = _numbers(fields[1:], 4)
        except ValueError:
            log.report("bad-annotation", label_file, f"line {number}: expected 'class cx cy w h', got '{line.strip()}'")
            return None
        label = fields[0] if names is None else names.get(class_index)
        corners = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
        boxes.append(RawBox(label, fields[0], corners, relative=True))
    return boxes


# ---------------------------------------------------------------------------------------------
# CSV: boxes.csv (image,label,x0,y0,x1,y1; half-open pixels) + images/ (or image paths from the root)


def _read_csv(root: Path, log: ProblemLog) -> RawDataset:
    table = root / "boxes.csv"
    if not table.is_file():
        log.report("missing-annotation", table, f"the CSV format needs boxes.csv with columns {','.join(CSV_COLUMNS)}")
        return RawDataset([])
    image_dir = root / "images" if (root / "images").is_dir() else root
    text = _text(table, log)
    if text is None:
        return RawDataset([])
    rows = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [column for column in CSV_COLUMNS if column not in (rows.fieldnames or [])]
        if missing:
            detail = f"missing column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}"
            log.report("bad-annotation", table, detail)
            return RawDataset([])
        boxes, broken = _csv_boxes(rows, table, log)
    except csv.Error as err:
        log.report("bad-annotation", table, f"not a CSV table ({err})")
        return RawDataset([])
    listed = [RawImage(image_dir / name, image_boxes) for name, image_boxes in boxes.items() if name not in broken]
    named = boxes.keys() | broken
    unlisted = [
        RawImage(file, []) for file in _image_files(image_dir) if file.relative_to(image_dir).as_posix() not in named
    ]
    return RawDataset(listed + unlisted)


def _csv_boxes(
    rows: Iterable[dict[str, str | None]], table: Path, log: ProblemLog
) -> tuple[dict[str, list[RawBox]], set[str]]:
    """Boxes per image name in first-appearance order, and the images with a bad row (reported)."""
    boxes: dict[str, list[RawBox]] = {}
    broken: set[str] = set()
    for line, row in enumerate(rows, start=2):
        name = (row["image"] or "").strip()
        label = (row["label"] or "").strip()
        try:
            x0, y0, x1, y1 = _numbers([row[column] for column in CSV_COLUMNS[2:]], 4)
        except ValueError:
            log.report("bad-annotation", table, f"line {line} ({name}): x0,y0,x1,y1 are not four numbers")
            broken.add(name)
            continue
        boxes.setdefault(name, []).append(RawBox(label or None, label, (x0, y0, x1, y1)))
    return boxes, broken


PARSERS: dict[str, Callable[[Path, ProblemLog], RawDataset]] = {
    "voc": _read_voc,
    "coco": _read_coco,
    "yolo": _read_yolo,
    "csv": _read_csv,
    "imagenet": _read_imagenet,
}
"""The formats :func:`read_formatted` reads, each by its layout parser (``mapex.data.registry`` lists every format)."""
