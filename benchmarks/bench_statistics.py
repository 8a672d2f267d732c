"""Time ``filter_scores`` against a plain forward pass over the same batches (target ratio <= 1.3).

    python benchmarks/bench_statistics.py                      # synthetic 64x64 images and boxes
    python benchmarks/bench_statistics.py --data DIR/tiny-imagenet-20 --images 250
    python benchmarks/bench_statistics.py --field effective --baseline theoretical   # the field's cost
    python benchmarks/bench_statistics.py --data DIR/tiny-imagenet-20 --images 2560 --batch-size 256 --device cuda --amp

``--baseline theoretical`` times the scoring against the same scoring with the theoretical
receptive field instead of a forward pass (``--field effective``: the cost of measuring the
effective fields and weighting under them). ``--amp``: both under the ``amp`` param's autocast.

ResNet-18 (torchvision, random weights, 20-class head) in eval mode. Both timings run in the same
process, interleaved, over the same pre-built batches; the scoring time includes tracing the model.
Wall-clock and process CPU times are both reported: on a shared machine the least disturbed
repeat (the minimum) is the fairest estimate, and ``--threads 1`` CPU time the least noisy one.
"""

from __future__ import annotations

import argparse
import statistics as stats
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from mapex.io import autocast
from mapex.models import device_of
from mapex.statistics import FIELDS, TAPS, filter_scores

Batch = tuple[torch.Tensor, list[torch.Tensor]]


def synthetic_batches(images: int, batch_size: int, size: int, seed: int) -> list[Batch]:
    """Random images, one random box each (at least 8 pixels a side), in input pixels."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for first in range(0, images, batch_size):
        count = min(batch_size, images - first)
        corner = torch.randint(0, size - 8, (count, 2), generator=generator).float()
        extent = torch.randint(8, size + 1, (count, 2), generator=generator).float()
        boxes = torch.cat([corner, (corner + extent).clamp(max=size)], dim=1)
        batches.append((torch.randn(count, 3, size, size, generator=generator), list(boxes[:, None, :])))
    return batches


def tiny_imagenet_batches(root: Path, images: int, batch_size: int, size: int, seed: int) -> list[Batch]:
    """About ``images`` training images, class-balanced, of an extracted Tiny-ImageNet folder, with their boxes."""
    from mapex.data import balanced_subset, make_loader, read_tiny_imagenet  # only needed with --data

    index = read_tiny_imagenet(root, "train")
    index = balanced_subset(index, per_class=max(1, images // len(index.classes)), seed=seed)
    loader = make_loader(index, size, train=False, batch_size=batch_size, seed=seed)
    return [(images_, boxes) for images_, _labels, boxes in loader]


def seconds(run: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CUDA work finished before each clock is read)."""
    synchronise()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    synchronise()
    return time.perf_counter() - wall, time.process_time() - cpu


def synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forward_only(model: torch.nn.Module, batches: list[Batch], amp: bool) -> None:
    model.eval()
    device = device_of(model)
    with torch.inference_mode(), autocast(device, amp):
        for images, _boxes in batches:
            model(images.to(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="extracted Tiny-ImageNet folder (default: synthetic images)")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="map-ex", choices=["map", "map-ex"])
    parser.add_argument("--field", default="theoretical", choices=FIELDS)
    parser.add_argument("--tap", default="consumed", choices=TAPS)
    parser.add_argument(
        "--baseline",
        default="forward",
        choices=["forward", "theoretical"],
        help="time against a forward pass, or against the scoring with the theoretical field",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, ...)")
    parser.add_argument("--amp", action="store_true", help="the amp param's autocast (bfloat16 where native) for both")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=20).to(args.device)
    if args.data:
        batches = tiny_imagenet_batches(args.data, args.images, args.batch_size, args.size, args.seed)
    else:
        batches = synthetic_batches(args.images, args.batch_size, args.size, args.seed)

    def scores(field: str) -> Callable[[], object]:
        return lambda: filter_scores(
            model, batches, method=args.method, amp=args.amp, progress=False, tap=args.tap, field=field
        )

    baseline = (lambda: forward_only(model, batches, args.amp)) if args.baseline == "forward" else scores("theoretical")
    forward_only(model, batches[:1], args.amp)  # warm-up: allocator, thread pool, oneDNN kernels
    rows = []
    for _ in range(args.repeats):
        rows.append((seconds(baseline), seconds(scores(args.field))))

    print(
        f"resnet18, {sum(len(b[0]) for b in batches)} images of {args.size}x{args.size}, "
        f"batch {args.batch_size}, method {args.method}, tap {args.tap}, field {args.field} "
        f"against {args.baseline}, {args.device}, amp {args.amp}, {torch.get_num_threads()} threads"
    )
    print_table(rows, *BASELINE_COLUMNS[args.baseline])
    images = sum(len(b[0]) for b in batches)
    baseline_s, scores_s = (stats.median(row[part][0] for row in rows) for part in (0, 1))
    print(f"images per second (median): {args.baseline} {images / baseline_s:,.0f}, scores {images / scores_s:,.0f}")


BASELINE_COLUMNS = {"forward": ("forward s", "fwd cpu s"), "theoretical": ("theor. s", "thr cpu s")}


def print_table(rows: list[tuple[tuple[float, float], tuple[float, float]]], wall: str, cpu: str) -> None:
    """One line per repeat, then the minimum and the median of each column (baseline, scoring, ratio)."""
    print(f"{'':>7} {wall:>10} {'scores s':>9} {'ratio':>6} {cpu:>10} {'scr cpu s':>10} {'ratio':>6}")

    def line(label: str, forward: tuple[float, float], scoring: tuple[float, float]) -> None:
        print(
            f"{label:>7} {forward[0]:>10.3f} {scoring[0]:>9.3f} {scoring[0] / forward[0]:>6.2f} "
            f"{forward[1]:>10.3f} {scoring[1]:>10.3f} {scoring[1] / forward[1]:>6.2f}"
        )

    for repeat, (forward, scoring) in enumerate(rows, 1):
        line(str(repeat), forward, scoring)
    for label, summary in (("min", min), ("median", stats.median)):
        columns = [summary(row[part][kind] for row in rows) for part in (0, 1) for kind in (0, 1)]
        line(label, (columns[0], columns[1]), (columns[2], columns[3]))


if __name__ == "__main__":
    main()
