"""The data core: fetch, the Tiny-ImageNet reader, splits, box-aware transforms, dataset and loader."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import zipfile
from hashlib import sha256
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from conftest import ARCHIVE, ARCHIVE_SHA256, REPO
from mapex.data import (
    BoxDataset,
    BoxIndex,
    BoxSample,
    balanced_subset,
    eval_transform,
    fetch,
    make_loader,
    read_tiny_imagenet,
    select_classes,
    stratified_split,
    train_transform,
)
from mapex.data.dataset import _fits_on
from mapex.data.fetch import MARKER
from mapex.data.formats import ProblemLog, ProblemPolicy
from mapex.data.registry import FORMATS, get_format
from mapex.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, fit_to_size, keep_visible_boxes
from mapex.io import UserError

# ---------------------------------------------------------------- fetch


def digest(path: Path) -> str:
    return sha256(path.read_bytes()).hexdigest()


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return path


def truncated_copy(path: Path, out: Path) -> Path:
    out.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return out


# Incompressible payloads, so half an archive really cuts a member short.
PAYLOAD = {
    "top/a.txt": b"alpha",
    "top/sub/b.bin": torch.randint(0, 256, (50_000,), dtype=torch.uint8).numpy().tobytes(),
}


def only_sources_left(folder: Path, sources: set[str]) -> bool:
    """Nothing but the archives the test made: no dest, no temporary file or folder."""
    return {entry.name for entry in folder.iterdir()} == sources


def test_fetch_tar_with_single_top_folder_becomes_dest(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "d.tar.gz", PAYLOAD)
    dest = fetch(str(archive), digest(archive), tmp_path / "out" / "ds")
    assert dest == tmp_path / "out" / "ds"
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert (dest / "sub" / "b.bin").read_bytes() == PAYLOAD["top/sub/b.bin"]
    assert (dest / MARKER).read_text().strip() == digest(archive)
    assert only_sources_left(tmp_path / "out", {"ds"})


def test_fetch_zip_without_top_folder_keeps_all_entries(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "d.zip", {"a.txt": b"1", "b/c.txt": b"2"})
    dest = fetch(archive.as_uri(), digest(archive).upper(), tmp_path / "ds")
    assert (dest / "a.txt").read_text() == "1" and (dest / "b" / "c.txt").read_text() == "2"


def test_fetch_is_idempotent_and_refetches_a_new_archive(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "d.tgz", {"top/a.txt": b"old"})
    checksum = digest(archive)
    dest = fetch(str(archive), checksum, tmp_path / "ds")
    archive.unlink()  # a second call with the same checksum must not need the source at all
    assert fetch(str(archive), checksum, dest) == dest and (dest / "a.txt").read_text() == "old"
    newer = make_tar(tmp_path / "new.tgz", {"top/a.txt": b"new"})
    fetch(str(newer), digest(newer), dest)
    assert (dest / "a.txt").read_text() == "new"
    assert only_sources_left(tmp_path, {"ds", "new.tgz"})


def test_fetch_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "d.tar.gz", PAYLOAD)
    (tmp_path / "ds").mkdir()
    with pytest.raises(UserError, match="was not made by fetch"):
        fetch(str(archive), digest(archive), tmp_path / "ds")


def test_fetch_missing_source_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.tar.gz: archive not found"):
        fetch(str(tmp_path / "nope.tar.gz"), "0" * 64, tmp_path / "ds")
    assert only_sources_left(tmp_path, set())


def test_fetch_checksum_mismatch_shows_both_and_leaves_nothing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "d.tar.gz", PAYLOAD)
    with pytest.raises(UserError) as err:
        fetch(str(archive), "ab" * 32, tmp_path / "ds")
    message = str(err.value)
    assert "d.tar.gz" in message and "ab" * 32 in message and digest(archive) in message
    assert only_sources_left(tmp_path, {"d.tar.gz"})


@pytest.mark.parametrize("make, name", [(make_tar, "d.tar.gz"), (make_zip, "d.zip")])
def test_fetch_truncated_archive_is_a_one_line_error(tmp_path: Path, make, name: str) -> None:
    whole = make(tmp_path / f"whole-{name}", PAYLOAD)
    cut = truncated_copy(whole, tmp_path / name)
    with pytest.raises(UserError, match=f"{name}: corrupt or truncated archive") as err:
        fetch(str(cut), digest(cut), tmp_path / "ds")
    assert "\n" not in str(err.value)
    assert only_sources_left(tmp_path, {f"whole-{name}", name})


def test_fetch_refuses_unsafe_tar_members(tmp_path: Path) -> None:
    (tmp_path / "inner").mkdir()
    archive = make_tar(tmp_path / "inner" / "evil.tar", {"top/ok.txt": b"x", "../escaped.txt": b"boom"})
    with pytest.raises(UserError, match="unsafe archive member"):
        fetch(str(archive), digest(archive), tmp_path / "inner" / "ds")
    assert not (tmp_path / "escaped.txt").exists()
    assert only_sources_left(tmp_path / "inner", {"evil.tar"})


def test_fetch_rejects_unknown_archive_type(tmp_path: Path) -> None:
    (tmp_path / "d.rar").write_bytes(b"x")
    with pytest.raises(UserError, match=r"d.rar: unknown archive type .*\.tar\.gz"):
        fetch(str(tmp_path / "d.rar"), "0" * 64, tmp_path / "ds")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    """Serve ``tmp_path/served`` over HTTP on localhost; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_over_http(http_root, tmp_path: Path) -> None:
    served, base = http_root
    archive = make_tar(served / "d.tar.gz", PAYLOAD)
    dest = fetch(f"{base}/d.tar.gz", digest(archive), tmp_path / "out" / "ds")
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert only_sources_left(tmp_path / "out", {"ds"})
    with pytest.raises(UserError, match="missing.tar.gz: download failed"):
        fetch(f"{base}/missing.tar.gz", digest(archive), tmp_path / "out" / "other")
    assert only_sources_left(tmp_path / "out", {"ds"})


def test_embedded_archive_fetches_from_a_file_url(tmp_path: Path, tiny_imagenet: Path) -> None:
    dest = fetch(ARCHIVE.as_uri(), ARCHIVE_SHA256, tmp_path / "ti")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "train", "val", "wnids.txt", "words.txt"]
    # and from a plain path (the session fixture): the same files
    assert sorted(p.name for p in tiny_imagenet.iterdir()) == sorted(p.name for p in dest.iterdir())


# ---------------------------------------------------------------- Tiny-ImageNet reader


def test_tiny_imagenet_train_and_val_on_the_embedded_archive(tiny_imagenet: Path) -> None:
    train = read_tiny_imagenet(tiny_imagenet, "train")
    val = read_tiny_imagenet(tiny_imagenet, "val")
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()
    assert train.classes == wnids == val.classes and len(wnids) == 20
    assert set(train.class_counts().values()) == {500} and len(train) == 10_000
    assert set(val.class_counts().values()) == {50} and len(val) == 1_000
    assert train.names["n04540053"] == "volleyball" and train.names["n04118538"] == "rugby ball"
    assert all(sample.image.is_file() for sample in train.samples[::997] + val.samples[::97])


@pytest.mark.parametrize(
    "split, image, wnid, box",
    [
        # lines read from the archive: inclusive corners, so x1 and y1 gain 1
        ("train", "n01855672_0.JPEG", "n01855672", (9, 7, 63, 61)),  # 9 7 62 60
        ("train", "n04540053_1.JPEG", "n04540053", (11, 2, 25, 16)),  # 11 2 24 15
        ("val", "val_7.JPEG", "n02823428", (5, 0, 58, 64)),  # 5 0 57 63
        ("val", "val_26.JPEG", "n04540053", (36, 0, 45, 7)),  # 36 0 44 6
    ],
)
def test_tiny_imagenet_boxes_become_half_open(tiny_imagenet: Path, split: str, image: str, wnid: str, box) -> None:
    index = read_tiny_imagenet(tiny_imagenet, split)
    (sample,) = [s for s in index.samples if s.image.name == image]
    assert index.classes[sample.label] == wnid
    assert sample.boxes == (tuple(float(v) for v in box),)


def write_tiny_layout(root: Path) -> Path:
    """A two-class Tiny-ImageNet folder with 32×32 JPEGs (one grayscale), 3 train and 1 val image per class."""
    wnids = ["n001", "n002"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n000\tother\nn001\tcat, tabby\nn002\tdog\n")
    annotations = []
    for label, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        lines = []
        for k in range(3):
            channels = 1 if (label, k) == (0, 0) else 3
            write_jpeg(
                torch.full((channels, 32, 32), 40 * k + 100 * label, dtype=torch.uint8),
                str(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"),
            )
            lines.append(f"{wnid}_{k}.JPEG\t{k}\t1\t{20 + k}\t30")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
        write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(root / "val" / "images" / f"val_{label}.JPEG"))
        annotations.append(f"val_{label}.JPEG\t{wnid}\t0\t0\t31\t31")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


@pytest.fixture
def tiny_layout(tmp_path: Path) -> Path:
    return write_tiny_layout(tmp_path / "tiny")


def test_tiny_imagenet_reads_a_synthetic_layout(tiny_layout: Path) -> None:
    train = read_tiny_imagenet(tiny_layout, "train")
    assert train.names == {"n001": "cat, tabby", "n002": "dog"}
    assert [s.boxes for s in train.samples[:2]] == [((0.0, 1.0, 21.0, 31.0),), ((1.0, 1.0, 22.0, 31.0),)]
    assert [s.label for s in read_tiny_imagenet(tiny_layout, "val").samples] == [0, 1]


@pytest.mark.parametrize(
    "remove, split, message",
    [
        ("wnids.txt", "train", "wnids.txt: file not found"),
        ("train/n002/n002_boxes.txt", "train", "n002_boxes.txt: file not found"),
        ("train/n001/images/n001_2.JPEG", "train", "missing image files: .*n001_2.JPEG"),
        ("val/val_annotations.txt", "val", "val_annotations.txt: file not found"),
        ("val/images/val_1.JPEG", "val", "missing image files: .*val_1.JPEG"),
    ],
)
def test_tiny_imagenet_missing_files_are_named(tiny_layout: Path, remove: str, split: str, message: str) -> None:
    (tiny_layout / remove).unlink()
    with pytest.raises(UserError, match=message):
        read_tiny_imagenet(tiny_layout, split)


def test_tiny_imagenet_rejects_bad_lines_and_splits(tiny_layout: Path) -> None:
    (tiny_layout / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="class 'n999' of val_0.JPEG is not in wnids.txt"):
        read_tiny_imagenet(tiny_layout, "val")
    (tiny_layout / "train" / "n001" / "n001_boxes.txt").write_text("n001_0.JPEG\t1\t2\n")
    with pytest.raises(UserError, match="n001_boxes.txt: line 1 has 3 tab-separated fields, expected 5"):
        read_tiny_imagenet(tiny_layout, "train")
    with pytest.raises(UserError, match="split 'test' unknown"):
        read_tiny_imagenet(tiny_layout, "test")


def test_every_format_is_in_the_schema_the_cli_and_the_docs_from_the_one_registry() -> None:
    from mapex.cli import build_parser
    from mapex.config import load_schema

    schema = load_schema()["properties"]["data"]["properties"]["format"]["enum"]
    check = build_parser()._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0]
    cli = next(action.choices for action in check.choices["check"]._actions if action.dest == "format")
    docs = (REPO / "docs/datasets.md").read_text()
    assert schema == list(cli) == list(FORMATS)
    assert f"# {' | '.join(FORMATS)}" in docs


def test_a_registered_format_reads_a_split_and_refuses_an_unknown_name(tiny_layout: Path) -> None:
    tiny = get_format("tiny-imagenet")
    index = tiny.read(tiny_layout, "train", ProblemLog(ProblemPolicy()), "largest")
    assert len(index) == 6 and tiny.test_split == "val"
    assert get_format("coco").test_split == "test"
    with pytest.raises(UserError, match="unknown dataset format 'kitti'; expected one of tiny-imagenet, voc, coco"):
        get_format("kitti")


# ---------------------------------------------------------------- splits


def synthetic_index(sizes: dict[str, int]) -> BoxIndex:
    """Samples interleaved across classes, image names ``<class>-<k>``."""
    classes = list(sizes)
    samples = [
        BoxSample(Path(f"{class_id}-{k}.jpg"), label, ((0.0, 0.0, 1.0, 1.0),))
        for k in range(max(sizes.values()))
        for label, class_id in enumerate(classes)
        if k < sizes[class_id]
    ]
    return BoxIndex(classes, samples, {c: c.upper() for c in classes})


def names(index: BoxIndex) -> list[str]:
    return [sample.image.name for sample in index.samples]


def test_select_classes_relabels_in_the_given_order() -> None:
    index = synthetic_index({"a": 2, "b": 3, "c": 1})
    chosen = select_classes(index, ["c", "a"])
    assert chosen.classes == ["c", "a"] and chosen.names == {"c": "C", "a": "A"}
    assert [(s.image.name, s.label) for s in chosen.samples] == [("a-0.jpg", 1), ("c-0.jpg", 0), ("a-1.jpg", 1)]
    with pytest.raises(UserError, match=r"unknown class id 'z'; valid ids \(3\) include a, b, c"):
        select_classes(index, ["a", "z"])
    with pytest.raises(UserError, match="listed more than once: a"):
        select_classes(index, ["a", "b", "a"])


def test_stratified_split_is_per_class_deterministic_and_disjoint() -> None:
    index = synthetic_index({"a": 10, "b": 20, "c": 7})
    train, val = stratified_split(index, 0.3, seed=1)
    assert val.class_counts() == {"a": 3, "b": 6, "c": 2}
    assert train.class_counts() == {"a": 7, "b": 14, "c": 5}
    assert sorted(names(train) + names(val)) == sorted(names(index))
    assert names(val) == [n for n in names(index) if n in set(names(val))]  # index order kept
    assert names(stratified_split(index, 0.3, seed=1)[1]) == names(val)
    assert names(stratified_split(index, 0.3, seed=2)[1]) != names(val)
    with pytest.raises(UserError, match="val_fraction 1.0"):
        stratified_split(index, 1.0, seed=1)


def test_split_does_not_depend_on_the_other_classes() -> None:
    index = synthetic_index({"a": 10, "b": 20, "c": 7})
    _, val_then_select = stratified_split(index, 0.25, seed=3)
    _, select_then_val = stratified_split(select_classes(index, ["c", "b"]), 0.25, seed=3)
    assert sorted(names(select_classes(val_then_select, ["c", "b"]))) == sorted(names(select_then_val))


def test_balanced_subset_is_balanced_seeded_and_nested() -> None:
    index = synthetic_index({"a": 10, "b": 20, "c": 7})
    small, large = balanced_subset(index, 3, seed=0), balanced_subset(index, 6, seed=0)
    assert small.class_counts() == {"a": 3, "b": 3, "c": 3} and large.class_counts() == {"a": 6, "b": 6, "c": 6}
    assert set(names(small)) < set(names(large))
    assert names(balanced_subset(index, 3, seed=0)) == names(small) != names(balanced_subset(index, 3, seed=1))
    with pytest.raises(UserError, match="class 'c' has 7 samples, fewer than per_class=8"):
        balanced_subset(index, 8, seed=0)


# ---------------------------------------------------------------- transforms


def drawn(height: int, width: int, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A black uint8 ``[3,H,W]`` image with a white rectangle over the half-open ``box``, and that box ``[1,4]``."""
    x0, y0, x1, y1 = box
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[:, y0:y1, x0:x1] = 255
    return image, torch.tensor([box], dtype=torch.float32)


def drawn_batch(size: int, boxes: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`drawn` images stacked channels-last, as the dataset hands them to a transform."""
    images, box_list = zip(*(drawn(size, size, box) for box in boxes))
    return torch.stack(images).contiguous(memory_format=torch.channels_last), list(box_list)


def white_pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Mask of the pixels more than half white, after undoing the ImageNet normalisation."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (normalised * std + mean).mean(0) > 0.5


def box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    assert box.tolist() == [x0, y0, x1, y1], "box corners must stay whole pixels"
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def assert_boxes_on_drawn_pixels(images: torch.Tensor, boxes: list[torch.Tensor]) -> None:
    for k, (image, image_boxes) in enumerate(zip(images, boxes)):
        assert len(image_boxes) == 1, k
        assert torch.equal(white_pixels(image), box_mask(image_boxes[0], *image.shape[-2:])), k


def test_fit_to_size_doubles_boxes_onto_the_drawn_pixels() -> None:
    out, out_boxes = fit_to_size(*drawn(16, 16, (3, 5, 9, 16)), 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and out_boxes.tolist() == [[6, 10, 18, 32]]
    assert torch.equal(out[0] > 127, box_mask(out_boxes[0], 32, 32))


def test_fit_to_size_squashes_and_moves_boxes_with_the_pixels() -> None:
    image, _ = drawn(20, 40, (0, 0, 1, 1))
    out, out_boxes = fit_to_size(image, torch.tensor([[10.0, 5.0, 30.0, 15.0], [-4.0, 2.5, 50.0, 25.0]]), 32)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out_boxes, torch.tensor([[8.0, 8.0, 24.0, 24.0], [-3.2, 4.0, 40.0, 40.0]]))


def test_fit_to_size_returns_an_image_of_the_size_as_it_is() -> None:
    image, boxes = drawn(16, 16, (3, 5, 9, 16))
    out, out_boxes = fit_to_size(image, boxes, 16)
    assert out is image and out_boxes is boxes


def test_decoded_boxes_are_clamped_to_their_image_and_emptied_ones_dropped(tmp_path: Path) -> None:
    """Boxes reaching past the image (annotation noise), before and after the squash to 16x16."""
    given = {(16, 16): ((-2.0, 1.5, 20.0, 4.0), (3, 5, 9, 16), (16, 0, 20, 4)), (8, 32): ((30, 2, 40, 12),)}
    samples = []
    for k, ((height, width), boxes) in enumerate(given.items()):
        path = tmp_path / f"img{k}.png"
        write_png(drawn(height, width, (0, 0, 1, 1))[0], str(path))
        samples.append(BoxSample(path, k, boxes))
    dataset = BoxDataset(BoxIndex(["a", "b"], samples), eval_transform(16), cache=True)
    _, _, boxes = dataset[([0, 1], 0)]
    assert [b.tolist() for b in boxes] == [[[0, 1.5, 16, 4], [3, 5, 9, 16]], [[15, 4, 16, 16]]]


def test_eval_transform_only_normalises() -> None:
    images, boxes = drawn_batch(16, [(3, 5, 9, 16), (0, 0, 16, 4)])
    out, out_boxes = eval_transform(16)(images, boxes, seed=1)
    expected = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    assert torch.allclose(out, expected, atol=1e-6) and all(map(torch.equal, out_boxes, boxes))


TRAIN_BOXES = [(20, 12, 41, 30), (0, 0, 7, 64), (58, 50, 64, 64), (0, 0, 64, 64)]


def test_train_transform_boxes_cover_exactly_the_visible_drawn_pixels() -> None:
    transform = train_transform(64, 4)
    seen = set()
    for seed in range(25):
        out, out_boxes = transform(*drawn_batch(64, TRAIN_BOXES), seed=seed)
        assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last)  # the CPU models' format: no copy
        assert_boxes_on_drawn_pixels(out, out_boxes)
        seen.update(tuple(boxes[0].tolist()) for boxes in out_boxes[:1])
    assert len(seen) > 10  # crops and flips do vary


def test_train_transform_flips_half_the_images_onto_their_mirror() -> None:
    transform = BatchTransform(16, padding=0, flip=True)
    images, boxes = drawn_batch(16, [(3, 4, 10, 15)] * 64)
    out, out_boxes = transform(images, boxes, seed=0)
    flipped = [b.tolist() == [[16 - 10, 4, 16 - 3, 15]] for b in out_boxes]
    assert all(b.tolist() == [[3, 4, 10, 15]] for b, flip in zip(out_boxes, flipped) if not flip)
    assert 16 < sum(flipped) < 48
    assert_boxes_on_drawn_pixels(out, out_boxes)


def test_train_transform_depends_on_the_seed_only() -> None:
    transform = train_transform(64, 4)
    rng_before = torch.get_rng_state()
    first = transform(*drawn_batch(64, TRAIN_BOXES), seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.manual_seed(99)
    again = transform(*drawn_batch(64, TRAIN_BOXES), seed=3)
    other = transform(*drawn_batch(64, TRAIN_BOXES), seed=4)
    assert torch.equal(first[0], again[0]) and all(map(torch.equal, first[1], again[1]))
    assert not torch.equal(first[0], other[0])


def test_keep_visible_boxes_drops_emptied_boxes_but_never_all() -> None:
    boxes = torch.tensor([[-5, 2, -1, 6], [8, 8, 14, 12], [-5, 2, -1, 6]], dtype=torch.float32)
    kept = keep_visible_boxes(boxes, owners=torch.tensor([0, 0, 1]), images=2, height=10, width=10)
    assert kept[0].tolist() == [[8, 8, 10, 10]]
    assert kept[1].tolist() == [[0, 2, 0, 6]]  # zero area: no foreground in view


# ---------------------------------------------------------------- dataset and loader


def test_box_dataset_batches_are_rgb_float_with_boxes(tiny_layout: Path) -> None:
    index = read_tiny_imagenet(tiny_layout, "train")
    dataset = BoxDataset(index, eval_transform(64))
    images, labels, boxes = dataset[([0, 1], 0)]  # the first is a grayscale JPEG
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32 and type(images) is torch.Tensor
    assert labels.tolist() == [0, 0] and labels.dtype == torch.long
    assert boxes[0].tolist() == [[0.0, 2.0, 42.0, 62.0]] and type(boxes[0]) is torch.Tensor
    cached = BoxDataset(index, train_transform(64, 4), cache=True)
    uncached = BoxDataset(index, train_transform(64, 4))
    everything = (list(range(len(index))), 5)
    assert same_batches([cached[everything]], [uncached[everything]])


def test_box_dataset_names_an_undecodable_image(tiny_layout: Path) -> None:
    index = read_tiny_imagenet(tiny_layout, "val")
    index.samples[1].image.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="val_1.JPEG: cannot decode image"):
        BoxDataset(index, eval_transform(32), cache=True)


def epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    return list(loader)


def same_batches(first, second) -> bool:
    return len(first) == len(second) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and all(map(torch.equal, a[2], b[2]))
        for a, b in zip(first, second)
    )


@pytest.fixture
def noisy_index(tmp_path: Path) -> BoxIndex:
    """12 noise JPEGs (so every crop and flip shows), 3 classes, one box each."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for k in range(12):
        path = tmp_path / f"img{k}.jpg"
        write_jpeg(torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8, generator=generator), str(path))
        samples.append(BoxSample(path, k % 3, ((k, 2.0, k + 10, 20.0),)))
    return BoxIndex(["a", "b", "c"], samples)


def test_loader_same_seed_same_batches_any_workers(noisy_index: BoxIndex) -> None:
    reference = make_loader(noisy_index, 24, train=True, batch_size=5, seed=7)
    first, second = epoch(reference), epoch(reference)
    assert [len(b[1]) for b in first] == [5, 5, 2] and not same_batches(first, second)
    rng_before = torch.get_rng_state()
    again = make_loader(noisy_index, 24, train=True, batch_size=5, seed=7, cache=True)
    assert same_batches(epoch(again), first) and same_batches(epoch(again), second)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    workers = make_loader(noisy_index, 24, train=True, batch_size=5, seed=7, num_workers=2)
    assert same_batches(epoch(workers), first)
    resumed = make_loader(noisy_index, 24, train=True, batch_size=5, seed=7)
    resumed.sampler.set_epoch(1)
    assert same_batches(epoch(resumed), second)
    assert not same_batches(epoch(make_loader(noisy_index, 24, train=True, batch_size=5, seed=8)), first)


def test_eval_loader_keeps_index_order_and_drop_last(noisy_index: BoxIndex) -> None:
    loader = make_loader(noisy_index, 24, train=False, batch_size=5, seed=0, drop_last=True)
    batches = epoch(loader)
    assert len(loader) == 2 and [b[1].tolist() for b in batches] == [[0, 1, 2, 0, 1], [2, 0, 1, 2, 0]]
    assert batches[0][2][3].tolist() == [[3.0, 2.0, 13.0, 20.0]]


@pytest.mark.parametrize("train", [False, True])
def test_loader_resizes_images_of_any_size_and_boxes_stay_on_their_pixels(tmp_path: Path, train: bool) -> None:
    """PNGs (lossless) of three sizes, squashed to 24x24 at decode; every box still frames its white pixels."""
    drawings = {(24, 24): (2, 3, 10, 20), (24, 48): (8, 4, 40, 20), (12, 12): (2, 2, 8, 10)}
    samples = []
    for k, ((height, width), box) in enumerate(drawings.items()):
        path = tmp_path / f"img{k}.png"
        write_png(drawn(height, width, box)[0], str(path))
        samples.append(BoxSample(path, k, (box,)))
    loader = make_loader(BoxIndex(["a", "b", "c"], samples), 24, train=train, batch_size=3, seed=0, cache=True)
    for _ in range(5 if train else 1):
        ((images, labels, boxes),) = epoch(loader)
        assert images.shape == (3, 3, 24, 24)
        assert_boxes_on_drawn_pixels(images, boxes)
    if not train:
        assert [b.tolist() for b in boxes] == [[[2, 3, 10, 20]], [[4, 4, 20, 20]], [[4, 4, 16, 20]]]


def test_a_loader_without_boxes_gives_the_same_images_and_labels(noisy_index: BoxIndex) -> None:
    with_boxes = epoch(make_loader(noisy_index, 24, train=True, batch_size=5, seed=7, cache=True))
    without = epoch(make_loader(noisy_index, 24, train=True, batch_size=5, seed=7, cache=True, boxes=False))
    assert all(len(batch) == 2 for batch in without)
    assert same_batches([(*batch, []) for batch in without], [(*batch[:2], []) for batch in with_boxes])


@pytest.mark.parametrize("crop_padding, unmoved", [(0, True), (8, False)])
def test_the_training_crop_pads_by_crop_padding(noisy_index: BoxIndex, crop_padding: int, unmoved: bool) -> None:
    """Without padding a training image is its evaluation image or that image's mirror."""
    originals = torch.cat([batch[0] for batch in make_loader(noisy_index, 24, False, 12, 0, boxes=False)])
    candidates = torch.cat([originals, originals.flip(3)])
    train = make_loader(noisy_index, 24, True, 12, 0, boxes=False, crop_padding=crop_padding)
    images = torch.cat([batch[0] for batch in train])
    found = [any(torch.equal(image, candidate) for candidate in candidates) for image in images]
    assert all(found) if unmoved else not all(found)


def test_cached_images_stay_on_the_cpu_unless_they_fit_a_quarter_of_the_gpus_free_memory(monkeypatch) -> None:
    pixels = torch.zeros(10, 8, 8, 3, dtype=torch.uint8)  # 1,920 bytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * 1920, 10**9))
    assert _fits_on(torch.device("cuda"), pixels)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * 1920 - 1, 10**9))
    assert not _fits_on(torch.device("cuda"), pixels)
    assert not _fits_on(torch.device("cpu"), pixels)


def test_a_loader_on_the_cpu_device_keeps_its_workers(noisy_index: BoxIndex) -> None:
    loader = make_loader(
        noisy_index, 24, train=True, batch_size=5, seed=7, cache=True, num_workers=2, device=torch.device("cpu")
    )
    assert loader.dataset.device.type == "cpu" and loader.num_workers == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("train", [True, False])
def test_batches_made_on_the_gpu_are_those_made_on_the_cpu(noisy_index: BoxIndex, train: bool) -> None:
    """Cached on the GPU, the batches come from there, with no workers, and hold the CPU's pixels and labels."""
    on_cpu = make_loader(noisy_index, 24, train=train, batch_size=5, seed=7, cache=True, boxes=False)
    on_gpu = make_loader(
        noisy_index,
        24,
        train=train,
        batch_size=5,
        seed=7,
        cache=True,
        boxes=False,
        num_workers=2,
        device=torch.device("cuda"),
    )
    assert on_gpu.dataset.device.type == "cuda" and on_gpu.num_workers == 0
    for _ in range(2):
        gpu_batches = epoch(on_gpu)
        assert all(images.is_cuda and labels.is_cuda for images, labels in gpu_batches)
        cpu_batches = [(images.cpu(), labels.cpu(), []) for images, labels in gpu_batches]
        assert same_batches(cpu_batches, [(*batch, []) for batch in epoch(on_cpu)])
