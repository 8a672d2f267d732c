"""Time ``filter_scores`` against a plain forward pass over the same batches (target ratio <= 1.3).

    python benchmarks/bench_statistics.py                      # synthetic 64x64 images and boxes
    python benchmarks/bench_statistics.py --data DIR/tiny-imagenet-20 --images 250

ResNet-18 (torchvision, random weights, 20-class head) in eval mode. Both timings run in the same
process, interleaved, over the same pre-built batches; the scoring time includes tracing the model.
"""
from __future__ import annotations

import argparse
import statistics as stats
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision

from mapex.statistics import filter_scores

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
    """The first ``images`` training images of an extracted Tiny-ImageNet folder, with their boxes."""
    from mapex.data import make_loader, read_tiny_imagenet  # only needed with --data

    index = read_tiny_imagenet(root, "train")
    index.samples = index.samples[:images]
    loader = make_loader(index, size, train=False, batch_size=batch_size, seed=seed)
    return [(images_, boxes) for images_, _labels, boxes in loader]


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def forward_only(model: torch.nn.Module, batches: list[Batch]) -> None:
    model.eval()
    with torch.inference_mode():
        for images, _boxes in batches:
            model(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="extracted Tiny-ImageNet folder (default: synthetic images)")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="map-ex", choices=["map", "map-ex"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=20)
    if args.data:
        batches = tiny_imagenet_batches(args.data, args.images, args.batch_size, args.size, args.seed)
    else:
        batches = synthetic_batches(args.images, args.batch_size, args.size, args.seed)

    forward_only(model, batches[:1])  # warm-up: allocator, thread pool, oneDNN kernels
    rows = []
    for _ in range(args.repeats):
        forward = seconds(lambda: forward_only(model, batches))
        scoring = seconds(lambda: filter_scores(model, batches, method=args.method, progress=False))
        rows.append((forward, scoring))

    print(f"resnet18, {sum(len(b[0]) for b in batches)} images of {args.size}x{args.size}, "
          f"batch {args.batch_size}, method {args.method}, {torch.get_num_threads()} threads")
    print(f"{'repeat':>6} {'forward s':>10} {'scores s':>10} {'ratio':>6}")
    for repeat, (forward, scoring) in enumerate(rows, 1):
        print(f"{repeat:>6} {forward:>10.3f} {scoring:>10.3f} {scoring / forward:>6.2f}")
    forward, scoring = stats.median(r[0] for r in rows), stats.median(r[1] for r in rows)
    print(f"{'median':>6} {forward:>10.3f} {scoring:>10.3f} {scoring / forward:>6.2f}")


if __name__ == "__main__":
    main()
