"""The baseline's budget spent by the plain loop: its test top-1 and wall time beside `mapex train`'s.

    python benchmarks/bench_baseline.py --data work/data/tiny-imagenet-20 --threads 2 \
        --baseline results/baseline

Is the baseline's accuracy the project's or the recipe's? ``bench_train.py``'s plain loop (the same
model, optimiser, schedule, loss, batch and augmentation kind, without the project's code; the
recipe's keys from ``--params``: crop padding, weight decay of the 1-D parameters, zero-initialised
residual blocks, the image sizes of the first epochs) trains
here on exactly the images ``mapex train`` trains on (the source training split after the
validation images are carved out, from ``--params``), for ``train.epochs`` epochs, with the same
seed and the ``amp`` param, and is then evaluated on the source test split. Printed: the plain
loop's test top-1 and wall time (training only), and, with ``--baseline`` (the folder of `mapex
train`'s ``metrics.json`` and ``history.csv``, e.g. ``results/baseline``), the project baseline's
test top-1 and training time (its history's ``seconds``) and the ratio of the two training times.
With ``--with-validation-images`` the plain loop trains on all of the source's training images
(the validation carve-out too), as a 60-line loop without a validation split would.
The two runs differ in their random draws (batch order, crops), so read the accuracies to about
±1.5 points (the binomial standard error on 1,000 test images, before seed-to-seed variation).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from bench_train import PlainLoop, decode_all
from mapex import experiment
from mapex.config import load_params
from mapex.io import autocast, pick_device, read_json


@torch.inference_mode()
def plain_top1(loop: PlainLoop, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    loop.model.eval()
    hits = 0
    for start in range(0, len(images), batch_size):
        batch = (images[start : start + batch_size].to(loop.device).float() / 255 - loop.mean) / loop.std
        with autocast(loop.device, loop.amp):
            predicted = loop.model(batch).argmax(dim=1).cpu()
        hits += int((predicted == labels[start : start + batch_size]).sum())
    return hits / len(images)


def project_baseline(folder: Path) -> tuple[float, float]:
    """Test top-1 and training seconds (the history's per-epoch ``seconds``) of a `mapex train` run."""
    top1 = read_json(folder / "metrics.json")["top1"]
    with (folder / "history.csv").open() as rows:
        seconds = sum(float(row["seconds"]) for row in csv.DictReader(rows))
    return top1, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="fetched dataset folder")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--baseline", type=Path, help="folder of mapex train's metrics.json and history.csv")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--with-validation-images",
        action="store_true",
        help="train the plain loop on the validation images too (all of the source's training images)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    _, task = experiment.load_task(params, args.data)
    seed, size = params["train"]["seed"], params["data"]["image_size"]
    config = experiment.train_config(params["train"], seed, params["amp"])
    device = pick_device(params["device"])
    train_images, train_labels = decode_all(task.source_train, size)
    if args.with_validation_images:
        val_images, val_labels = decode_all(task.source_val, size)
        train_images, train_labels = torch.cat([train_images, val_images]), torch.cat([train_labels, val_labels])
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    zero_init = params["model"]["zero_init_residual"]
    loop = PlainLoop(train_images, train_labels, config, total_steps, device, seed, params["amp"], zero_init)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        loop.size = config.epoch_sizes[epoch] if epoch < len(config.epoch_sizes) else None
        loop.steps(steps_per_epoch)
    seconds = time.perf_counter() - started
    top1 = plain_top1(loop, *decode_all(task.source_test, size), config.batch_size)
    print(
        f"plain loop: {config.epochs} epochs of {len(train_images):,} images ({steps_per_epoch} steps of "
        f"{config.batch_size}), {device}, {torch.get_num_threads()} threads, amp {params['amp']}: "
        f"test top-1 {top1:.3f} on {len(task.source_test):,} images, {seconds:.0f} s training"
    )
    if args.baseline:
        project_top1, project_seconds = project_baseline(args.baseline)
        print(
            f"mapex train ({args.baseline}): test top-1 {project_top1:.3f}, {project_seconds:.0f} s training "
            f"(validation included); ratio of training times project/plain {project_seconds / seconds:.2f}"
        )


if __name__ == "__main__":
    main()
