"""Readers of users' datasets (VOC, COCO, YOLO, CSV, ImageNet), their problem handling, and ``check_dataset``.

Every dataset is built here in ``tmp_path`` from tiny noise JPEGs (distinct bytes per path, so only
the duplicate tests have duplicates).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mapex.data.check import check_dataset
from mapex.data.formats import DEFAULT_ACTIONS, ProblemLog, ProblemPolicy, read_formatted
from mapex.data.types import BoxIndex
from mapex.io import UserError


def write_image(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = random.Random(str(path)).randbytes(size[0] * size[1] * 3)
    Image.frombytes("RGB", size, noise).save(path, quality=90)
    return path


def problem_list(log: ProblemLog, with_detail: bool = False) -> list[tuple[str, ...]]:
    """(kind, file name[, detail]) of every problem logged."""
    return [(p.kind, Path(p.file).name, p.detail)[: 3 if with_detail else 2] for p in log.problems]


def by_name(index: BoxIndex) -> dict[str, tuple[str, tuple]]:
    """image file name -> (class, boxes)"""
    return {sample.image.name: (index.classes[sample.label], sample.boxes) for sample in index.samples}


# --- builders of valid datasets --------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, int, int, int, int]]) -> str:
    parts = [
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    ]
    return f"<annotation><filename>{filename}</filename>{''.join(parts)}</annotation>"


def make_voc(root: Path, images: dict[str, list], sets: dict[str, list[str]] | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    for image_id, objects in images.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects))
    for name, ids in (sets or {}).items():
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / f"{name}.txt").write_text("".join(f"{image_id}\n" for image_id in ids))
    return root


def make_csv(root: Path, rows: list[tuple], images: list[str] | None = None) -> Path:
    """boxes.csv of ``rows`` and an images/ folder holding ``images`` (default: every image named)."""
    for name in dict.fromkeys(row[0] for row in rows) if images is None else images:
        write_image(root / "images" / name)
    lines = ["image,label,x0,y0,x1,y1"] + [",".join(str(value) for value in row) for row in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root


def make_yolo(
    root: Path, labels: dict[str, list[str]], names_yaml: str = "names: [cat, dog]\n", folder: str = ""
) -> Path:
    """One image per entry of ``labels`` (file stem -> label lines) under images/``folder``."""
    for stem, lines in labels.items():
        write_image(root / "images" / folder / f"{stem}.jpg")
        label_file = root / "labels" / folder / f"{stem}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("".join(line + "\n" for line in lines))
    (root / "data.yaml").write_text(names_yaml)
    return root


def make_coco(root: Path, images: dict[str, list[tuple[int, list[float]]]], categories: dict[int, str]) -> Path:
    content: dict[str, list] = {"images": [], "annotations": []}
    content["categories"] = [{"id": category, "name": name} for category, name in categories.items()]
    for image_id, (file_name, boxes) in enumerate(images.items(), start=1):
        write_image(root / "images" / file_name)
        content["images"].append({"id": image_id, "file_name": file_name, "width": 32, "height": 32})
        for category, bbox in boxes:
            annotation_id = len(content["annotations"]) + 1
            content["annotations"].append(
                {"id": annotation_id, "image_id": image_id, "category_id": category, "bbox": bbox}
            )
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(content))
    return root


# --- valid datasets are read exactly ---------------------------------------------------------


def test_voc_boxes_become_half_open_and_split_files_are_used(tmp_path: Path) -> None:
    root = make_voc(
        tmp_path / "voc",
        {
            "a": [("cat", 1, 2, 10, 12)],
            "b": [("dog", 5, 5, 32, 32)],
            "c": [("cat", 1, 1, 4, 4), ("dog", 3, 3, 20, 20), ("dog", 21, 21, 24, 24)],
            "d": [("cat", 2, 2, 30, 30)],
        },
        sets={"train": ["a", "b"], "val": ["c"], "test": ["d"]},
    )
    train = read_formatted(root, "voc", "train")
    test = read_formatted(root, "voc", "test")
    assert train.classes == test.classes == ["cat", "dog"]
    assert by_name(train) == {
        "a.jpg": ("cat", ((0.0, 1.0, 10.0, 12.0),)),
        "b.jpg": ("dog", ((4.0, 4.0, 32.0, 32.0),)),
        "c.jpg": ("dog", ((2.0, 2.0, 20.0, 20.0), (20.0, 20.0, 24.0, 24.0))),  # largest box is a dog: all dog boxes
    }
    assert by_name(test) == {"d.jpg": ("cat", ((1.0, 1.0, 30.0, 30.0),))}


def make_imagenet(root: Path) -> Path:
    """A fake ILSVRC tree: two wnids, train images in class folders (one without a box file), a flat val."""
    train = {"n01": ["n01_1", "n01_2", "n01_3"], "n02": ["n02_1", "n02_2", "n02_3"]}
    for wnid, stems in train.items():
        for stem in stems:
            write_image(root / "train" / wnid / f"{stem}.JPEG")
            if stem != "n02_3":  # ILSVRC has boxes for part of train only
                xml = root / "boxes" / "train" / wnid / f"{stem}.xml"
                xml.parent.mkdir(parents=True, exist_ok=True)
                xml.write_text(voc_xml(stem, [(wnid, 3, 4, 20, 24)]))
    for stem, wnid in (("ILSVRC2012_val_00000001", "n02"), ("ILSVRC2012_val_00000002", "n01")):
        write_image(root / "val" / f"{stem}.JPEG")
        xml = root / "boxes" / "val" / f"{stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(voc_xml(stem, [(wnid, 1, 1, 32, 32), (wnid, 5, 5, 8, 8)]))
    return root


def test_imagenet_reads_the_boxed_images_train_and_val_as_test(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet")
    train = read_formatted(root, "imagenet", "train")
    test = read_formatted(root, "imagenet", "test")
    assert train.classes == test.classes == ["n01", "n02"]
    assert by_name(train) == {
        f"{stem}.JPEG": (stem[:3], ((2.0, 3.0, 20.0, 24.0),)) for stem in ("n01_1", "n01_2", "n01_3", "n02_1", "n02_2")
    }  # n02_3 has no box file: left out
    assert by_name(test) == {
        "ILSVRC2012_val_00000001.JPEG": ("n02", ((0.0, 0.0, 32.0, 32.0), (4.0, 4.0, 8.0, 8.0))),
        "ILSVRC2012_val_00000002.JPEG": ("n01", ((0.0, 0.0, 32.0, 32.0), (4.0, 4.0, 8.0, 8.0))),
    }


def test_imagenet_without_box_files_and_with_a_missing_image_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="boxes: missing-annotation"):
        read_formatted(tmp_path, "imagenet", "train")
    root = make_imagenet(tmp_path / "imagenet")
    (root / "train" / "n01" / "n01_2.JPEG").unlink()
    report = check_dataset(root, "imagenet")
    assert [(kind, file) for kind, file, _ in report.problems] == [("missing-image", "train/n01/n01_2.JPEG")]
    assert report.images_per_class == {"n01": 3, "n02": 3}


def test_without_split_files_the_holdout_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    images = {f"{name}{i}": [(name, 1, 1, 16, 16)] for name in ("cat", "dog") for i in range(5)}
    root = make_voc(tmp_path / "voc", images)
    train = read_formatted(root, "voc", "train", test_fraction=0.4, seed=3)
    test = read_formatted(root, "voc", "test", test_fraction=0.4, seed=3)
    assert [test.classes[s.label] for s in test.samples].count("cat") == 2
    assert [test.classes[s.label] for s in test.samples].count("dog") == 2
    assert set(by_name(train)).isdisjoint(by_name(test))
    assert len(train) + len(test) == 10
    assert by_name(read_formatted(root, "voc", "test", test_fraction=0.4, seed=3)) == by_name(test)


def test_coco_bbox_xywh_and_categories_by_name(tmp_path: Path) -> None:
    root = make_coco(
        tmp_path / "coco",
        {"x.jpg": [(3, [1.5, 2.0, 10.0, 4.0])], "y.jpg": [(7, [0, 0, 8, 8]), (3, [0, 0, 2, 2])]},
        categories={3: "bird", 7: "fish"},
    )
    index = read_formatted(root, "coco", "all")
    assert index.classes == ["bird", "fish"]
    assert by_name(index) == {"x.jpg": ("bird", ((1.5, 2.0, 11.5, 6.0),)), "y.jpg": ("fish", ((0.0, 0.0, 8.0, 8.0),))}


def test_yolo_denormalises_with_the_image_size_and_reads_dict_names(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo", {"p": ["1 0.5 0.5 0.5 0.25"]}, names_yaml="names:\n  0: cat\n  1: dog\n")
    write_image(root / "images" / "wide.jpg", size=(64, 32))
    (root / "labels" / "wide.txt").write_text("0 0.25 0.5 0.5 1.0\n")
    index = read_formatted(root, "yolo", "all")
    assert index.classes == ["cat", "dog"]
    assert by_name(index) == {
        "p.jpg": ("dog", ((8.0, 12.0, 24.0, 20.0),)),
        "wide.jpg": ("cat", ((0.0, 0.0, 32.0, 32.0),)),
    }


def test_yolo_split_folders_and_classes_txt(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo", {"t": ["0 0.5 0.5 0.5 0.5"]}, folder="train")
    make_yolo(root, {"v": ["1 0.5 0.5 0.5 0.5"]}, folder="val")
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    assert by_name(read_formatted(root, "yolo", "train")) == {"t.jpg": ("cat", ((8.0, 8.0, 24.0, 24.0),))}
    # without a test/ folder, val/ is the test split
    assert by_name(read_formatted(root, "yolo", "test")) == {"v.jpg": ("dog", ((8.0, 8.0, 24.0, 24.0),))}


def test_csv_boxes_are_taken_as_half_open_pixels(tmp_path: Path) -> None:
    rows = [("a.jpg", "cat", 0, 0, 32, 16), ("a.jpg", "cat", 4, 20, 8, 30), ("b.jpg", "dog", 1, 2, 3, 4)]
    root = make_csv(tmp_path / "csv", rows)
    index = read_formatted(root, "csv", "all")
    assert index.classes == ["cat", "dog"]
    assert by_name(index) == {
        "a.jpg": ("cat", ((0.0, 0.0, 32.0, 16.0), (4.0, 20.0, 8.0, 30.0))),
        "b.jpg": ("dog", ((1.0, 2.0, 3.0, 4.0),)),
    }


# --- label rules ------------------------------------------------------------------------------


def test_label_rules_largest_and_agree(tmp_path: Path) -> None:
    rows = [
        ("mix.jpg", "cat", 0, 0, 4, 4),
        ("mix.jpg", "dog", 0, 0, 20, 20),
        ("mix.jpg", "cat", 10, 10, 14, 14),
        ("one.jpg", "cat", 0, 0, 8, 8),
    ]
    root = make_csv(tmp_path / "csv", rows)
    largest = read_formatted(root, "csv", "all")
    assert by_name(largest)["mix.jpg"] == ("dog", ((0.0, 0.0, 20.0, 20.0),))
    log = ProblemLog()
    agree = read_formatted(root, "csv", "all", label_rule="agree", problems=log)
    assert set(by_name(agree)) == {"one.jpg"}
    assert problem_list(log) == [("mixed-classes", "mix.jpg")]
    with pytest.raises(UserError, match="data.label_rule: 'biggest'"):
        read_formatted(root, "csv", "all", label_rule="biggest")


# --- every problem kind: reported with its file, dropped under skip, raised under error -------


@dataclass
class Case:
    root: Path
    format: str
    bad: str  # name of the file the problem must name
    kwargs: dict[str, Any] = field(default_factory=dict)


def _csv_case(rows: list[tuple], bad: str, images: list[str] | None = None) -> Callable[[Path], Case]:
    return lambda tmp: Case(make_csv(tmp / "csv", [("good.jpg", "cat", 0, 0, 8, 8), *rows], images), "csv", bad)


def _unreadable(tmp: Path) -> Case:
    case = _csv_case([("broken.jpg", "cat", 0, 0, 8, 8)], "broken.jpg")(tmp)
    path = case.root / "images" / "broken.jpg"
    path.write_bytes(path.read_bytes()[:400])  # a header that promises more than there is
    return case


def _duplicate(tmp: Path) -> Case:
    case = _csv_case([("copy.jpg", "dog", 0, 0, 8, 8)], "copy.jpg")(tmp)
    (case.root / "images" / "copy.jpg").write_bytes((case.root / "images" / "good.jpg").read_bytes())
    return case


def _unknown_class(tmp: Path) -> Case:
    root = make_yolo(tmp / "yolo", {"good": ["0 0.5 0.5 0.5 0.5"], "odd": ["5 0.5 0.5 0.5 0.5"]})  # names: cat, dog
    return Case(root, "yolo", "odd.jpg")


def _mixed(tmp: Path) -> Case:
    case = _csv_case([("mix.jpg", "cat", 0, 0, 8, 8), ("mix.jpg", "dog", 8, 8, 16, 16)], "mix.jpg")(tmp)
    case.kwargs = {"label_rule": "agree"}
    return case


def _missing_annotation(tmp: Path) -> Case:
    case = _csv_case([], "boxes.csv")(tmp)
    (case.root / "boxes.csv").unlink()
    return case


CASES: dict[str, Callable[[Path], Case]] = {
    "missing-dataset": lambda tmp: Case(tmp / "nowhere", "voc", "nowhere"),
    "missing-annotation": _missing_annotation,
    "bad-annotation": _csv_case([("bad.jpg", "cat", 0, "zero", 8, 8)], "boxes.csv"),
    "missing-image": _csv_case([("gone.jpg", "cat", 0, 0, 8, 8)], "gone.jpg", images=["good.jpg"]),
    "unreadable-image": _unreadable,
    "duplicate-file": _duplicate,
    "no-box": _csv_case([], "extra.jpg", images=["good.jpg", "extra.jpg"]),
    "unknown-class": _unknown_class,
    "empty-box": _csv_case([("flat.jpg", "cat", 4, 4, 4, 9)], "flat.jpg"),
    "inverted-box": _csv_case([("upside.jpg", "cat", 9, 0, 4, 8)], "upside.jpg"),
    "box-outside-image": _csv_case([("edge.jpg", "cat", -3, 10, 12, 34)], "edge.jpg"),
    "bad-box": _csv_case([("far.jpg", "cat", 40, 40, 50, 50)], "far.jpg"),
    "mixed-classes": _mixed,
}


def test_every_problem_kind_has_a_case() -> None:
    assert set(CASES) == set(DEFAULT_ACTIONS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_problem_is_reported_and_skipped(kind: str, tmp_path: Path) -> None:
    case = CASES[kind](tmp_path)
    log = ProblemLog(ProblemPolicy({kind: "skip"}))
    index = read_formatted(case.root, case.format, "all", problems=log, **case.kwargs)
    assert problem_list(log) == [(kind, case.bad)]
    clipped_instead = kind == "box-outside-image"
    assert (case.bad in by_name(index)) == clipped_instead
    if kind not in ("missing-dataset", "missing-annotation"):
        assert "good.jpg" in by_name(index)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_problem_raises_under_error(kind: str, tmp_path: Path) -> None:
    case = CASES[kind](tmp_path)
    with pytest.raises(UserError, match=kind) as raised:
        read_formatted(case.root, case.format, "all", policy=ProblemPolicy({kind: "error"}), **case.kwargs)
    assert case.bad in str(raised.value)


def test_a_box_past_the_border_is_clipped_and_kept(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", [("edge.jpg", "cat", -3, 10, 12, 34)])
    log = ProblemLog()
    index = read_formatted(root, "csv", "all", problems=log)
    assert by_name(index) == {"edge.jpg": ("cat", ((0.0, 10.0, 12.0, 32.0),))}
    assert problem_list(log) == [("box-outside-image", "edge.jpg")]


def _yolo_line(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """A YOLO label line as exporters write it: centre and size as fractions rounded to 6 decimals."""
    x0, y0, x1, y1 = box
    fractions = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return "0 " + " ".join(f"{value:.6f}" for value in fractions)


def test_a_six_decimal_yolo_export_of_640x480_images_reports_nothing(tmp_path: Path) -> None:
    """Boxes that touch the border come back a few 1e-4 px past it after rounding: clipped, not reported."""
    rng = random.Random(5)
    boxes = {f"img{i}": (rng.randrange(0, 300), rng.randrange(0, 200), 640, 480) for i in range(4)}
    boxes["left"] = (0, 157, 333, 480)
    root = tmp_path / "yolo"
    for stem, box in boxes.items():
        write_image(root / "images" / f"{stem}.jpg", size=(640, 480))
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text(_yolo_line(box, 640, 480) + "\n")
    (root / "data.yaml").write_text("names: [cat]\n")
    raw = [[float(v) for v in (root / "labels" / f"{stem}.txt").read_text().split()[1:]] for stem in boxes]
    assert any((cy + h / 2) * 480 > 480 for _, cy, _, h in raw), "no rounded box overshoots: the test tests nothing"
    log = ProblemLog()
    index = read_formatted(root, "yolo", "all", problems=log)
    assert log.problems == []
    assert len(index) == len(boxes)
    for stem, box in boxes.items():
        (read,) = by_name(index)[f"{stem}.jpg"][1]
        assert read[2] <= 640 and read[3] <= 480
        assert all(abs(a - b) < 1e-3 for a, b in zip(read, box))


def test_a_voc_box_with_an_absurd_coordinate_is_a_bad_box_skipped_and_named(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    images = {
        "absurd": [("cat", 11, 21, 5000, 300)],
        "over": [("cat", 11, 21, 645, 300)],
        "good": [("cat", 11, 21, 640, 480)],
    }
    for image_id, objects in images.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", size=(640, 480))
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects))
    log = ProblemLog()
    index = read_formatted(root, "voc", "all", problems=log)
    assert sorted(by_name(index)) == ["good.jpg", "over.jpg"]
    assert by_name(index)["over.jpg"][1] == ((10.0, 20.0, 640.0, 300.0),)
    assert problem_list(log) == [("bad-box", "absurd.jpg"), ("box-outside-image", "over.jpg")]
    assert "beyond twice the 640x480 image" in log.problems[0].detail
    with pytest.raises(UserError, match="absurd.jpg: bad-box"):
        read_formatted(root, "voc", "all", policy=ProblemPolicy({"bad-box": "error"}))


def test_a_box_mostly_outside_the_image_is_a_bad_box(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", [("good.jpg", "cat", 0, 0, 8, 8), ("half.jpg", "cat", 20, 0, 50, 8)])
    log = ProblemLog()
    index = read_formatted(root, "csv", "all", problems=log)
    assert sorted(by_name(index)) == ["good.jpg"]
    assert problem_list(log, with_detail=True) == [
        ("bad-box", "half.jpg", "box (20, 0, 50, 8) lies mostly outside the 32x32 image")
    ]


def test_an_image_listed_in_train_and_test_is_kept_once_in_train(tmp_path: Path) -> None:
    images = {"a": [("cat", 1, 1, 9, 9)], "b": [("cat", 1, 1, 9, 9)]}
    root = make_voc(tmp_path / "voc", images, sets={"trainval": ["a", "b"], "test": ["a"]})
    log = ProblemLog()
    assert set(by_name(read_formatted(root, "voc", "train", problems=log))) == {"a.jpg", "b.jpg"}
    assert len(read_formatted(root, "voc", "test")) == 0
    assert problem_list(log, with_detail=True) == [("duplicate-file", "a.jpg", "listed twice")]


def test_coco_unknown_category_and_yolo_orphan_label_are_reported(tmp_path: Path) -> None:
    coco_images = {"ok.jpg": [(1, [0, 0, 4, 4])], "odd.jpg": [(9, [0, 0, 4, 4])]}
    coco = make_coco(tmp_path / "coco", coco_images, categories={1: "cat"})
    yolo = make_yolo(tmp_path / "yolo", {"ok": ["0 0.5 0.5 0.5 0.5"]})
    (yolo / "labels" / "lost.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    coco_log, yolo_log = ProblemLog(), ProblemLog()
    assert set(by_name(read_formatted(coco, "coco", "all", problems=coco_log))) == {"ok.jpg"}
    assert set(by_name(read_formatted(yolo, "yolo", "all", problems=yolo_log))) == {"ok.jpg"}
    unknown = ("unknown-class", "odd.jpg", "class 'category_id 9' is not in the class list")
    assert problem_list(coco_log, with_detail=True) == [unknown]
    assert problem_list(yolo_log) == [("missing-image", "lost.txt")]


def test_policy_from_dict_rejects_unknown_kinds_and_actions() -> None:
    assert ProblemPolicy.from_dict({"no-box": "error"}).actions == {**DEFAULT_ACTIONS, "no-box": "error"}
    assert ProblemPolicy.from_dict(None).actions == DEFAULT_ACTIONS
    with pytest.raises(UserError, match="unknown problem kind 'blurry'"):
        ProblemPolicy.from_dict({"blurry": "skip"})
    with pytest.raises(UserError, match="data.problems.no-box: 'ignore'"):
        ProblemPolicy.from_dict({"no-box": "ignore"})


# --- check_dataset ----------------------------------------------------------------------------


def test_check_dataset_summarises_a_known_dataset(tmp_path: Path) -> None:
    rows = [
        ("a.jpg", "cat", 0, 0, 16, 16),
        ("b.jpg", "dog", 0, 0, 8, 8),
        ("b.jpg", "dog", 8, 8, 16, 16),
        ("c.jpg", "cat", 0, 0, 32, 32),
        ("gone.jpg", "dog", 0, 0, 4, 4),
    ]
    root = make_csv(tmp_path / "csv", rows, images=["a.jpg", "b.jpg", "c.jpg", "empty.jpg"])
    report = check_dataset(root, "csv")
    assert report.classes == ["cat", "dog"]
    assert report.images_per_class == {"cat": 2, "dog": 1}
    assert report.boxes_per_image == {"min": 1.0, "mean": pytest.approx(4 / 3), "max": 2.0}
    assert report.box_area_fraction == {"min": 0.0625, "mean": pytest.approx((0.25 + 0.0625 * 2 + 1.0) / 4), "max": 1.0}
    assert report.problems == [
        ("missing-image", "images/gone.jpg", "no such file"),
        ("no-box", "images/empty.jpg", "the image has no box"),
    ]
    assert report.problem_counts == {"missing-image": 1, "no-box": 1}
    assert not report.has_errors
    assert json.loads(json.dumps(report.to_dict()))["images"] == 3
    text = report.format_text()
    assert "skip   missing-image      images/gone.jpg: no such file" in text
    assert "images           3 (cat 2, dog 1)" in text

    strict = check_dataset(root, "csv", policy=ProblemPolicy({"no-box": "error"}))  # records, does not raise
    assert strict.has_errors and strict.error_kinds == ["no-box"]
    assert "ERROR  no-box" in strict.format_text()


def test_check_dataset_reads_tiny_imagenet_train_and_val(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    wnids = ["n01", "n02"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tcat\nn02\tdog\n")
    for wnid in wnids:
        write_image(root / "train" / wnid / "images" / f"{wnid}_0.jpg")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.jpg\t0\t0\t15\t15\n")
    write_image(root / "val" / "images" / "val_0.jpg")
    (root / "val" / "val_annotations.txt").write_text("val_0.jpg\tn02\t0\t0\t40\t31\n")  # past the border
    report = check_dataset(root, "tiny-imagenet")
    assert report.images_per_class == {"n01": 1, "n02": 2}
    assert report.box_area_fraction["max"] == 1.0
    assert [(kind, file) for kind, file, _ in report.problems] == [("box-outside-image", "val/images/val_0.jpg")]


def test_the_imagenet_config_fetches_checks_and_splits_a_fake_ilsvrc_tree(tmp_path: Path) -> None:
    import hashlib
    import tarfile

    import yaml

    from mapex.cli import main
    from mapex.config import load_params
    from mapex.data.task import load_task_data

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "config/imagenet.yaml").read_text())
    wnids = sorted({wnid for task in params["data"]["tasks"] for wnid in task["classes"]})
    tree = tmp_path / "imagenet-fake"
    for wnid in wnids:
        for k in range(12):
            write_image(tree / "train" / wnid / f"{wnid}_{k}.JPEG")
            (tree / "boxes" / "train" / wnid).mkdir(parents=True, exist_ok=True)
            (tree / "boxes" / "train" / wnid / f"{wnid}_{k}.xml").write_text(
                voc_xml(f"{wnid}_{k}", [(wnid, 2, 2, 30, 30)])
            )
        for k in range(3):
            stem = f"ILSVRC2012_val_{wnid}{k}"
            write_image(tree / "val" / f"{stem}.JPEG")
            (tree / "boxes" / "val").mkdir(parents=True, exist_ok=True)
            (tree / "boxes" / "val" / f"{stem}.xml").write_text(voc_xml(stem, [(wnid, 1, 1, 16, 16)]))
    archive = tmp_path / "imagenet-fake.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname=tree.name)
    params["data"].update(source=str(archive), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    config = tmp_path / "imagenet.yaml"
    config.write_text(yaml.safe_dump(params))
    data = tmp_path / "work" / "data" / params["data"]["name"]

    assert main(["fetch", "--params", str(config), "--out", str(data)]) == 0
    assert main(["data", "check", str(data), "--format", "imagenet"]) == 0
    loaded = load_params(config)
    assert loaded["train"]["nproc"] == 8 and loaded["model"]["pretrained"] and loaded["data"]["image_size"] == 224
    task = load_task_data(loaded, data, loaded["data"]["tasks"][1]["classes"])
    assert task.source_classes == wnids
    assert task.task_test.classes == loaded["data"]["tasks"][1]["classes"]
    assert len(task.task_test) == 5 * 3 and {s.image.parent.name for s in task.task_test.samples} == {"val"}
    assert len(task.task_train) + len(task.task_val) == 5 * 12
