"""Time the project's training loop against a plain loop of the same work (target ratio <= 1.15).

    python benchmarks/bench_train.py --data work/data/tiny-imagenet-20
    python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --steps 400 --block 20 --device cuda
    python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --device cuda --amp --workers 8

Project: ``mapex.data.make_loader`` as the pipeline's training makes it (cached, augmented batches
without boxes; on a GPU, kept and made there, in the training process) feeding the epoch loop that
``mapex.train.fit`` runs (``_train_one_epoch``: SGD with Nesterov momentum, one-cycle schedule,
label smoothing, channels-last on the CPU, the loss checks and running metrics). Plain: about 60
lines below: the same images decoded once into a uint8 tensor (on the device), per batch a random
zero-padded crop (``crop_padding``, 4 px) and horizontal flip per image, normalisation, and the same
model (torchvision ResNet-18, ImageNet stem), batch size, optimiser, schedule and loss (#11's
reference recipe: ``TrainConfig``'s defaults but ``batch_size``). The two loops
run in ONE process, in alternating blocks of ``--block`` steps (the first block of each is a
warm-up, not counted), so that load from other processes hits both alike. Printed: each block's
seconds per step (wall clock and process CPU time), the median of each loop, the ratio
project/plain of the median wall times (the verdict; also the median of the rounds' own ratios and
the ratio of CPU times, less disturbed by other processes), and the plain loop's time for
one 9,000-image epoch (extrapolated from its median step), by which the project's wall times are
normalised, and both loops' images per second. ``--amp`` runs both under the autocast of the
``amp`` param (bfloat16 on CUDA and on a CPU with bfloat16 units); ``--workers`` is the project
loader's ``workers`` param, used where its batches are made on the CPU (the plain loop needs none:
its images are on the device).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.io import ImageReadMode, decode_image

from mapex.data import balanced_subset, make_loader, read_tiny_imagenet
from mapex.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mapex.io import autocast, pick_device
from mapex.models import build_model
from mapex.train import TrainConfig, _make_optimizer, _make_scheduler, _memory_format, _train_one_epoch

TARGET = 1.15
EPOCH_IMAGES = 9000


class PlainLoop:
    """A plain training loop: uint8 images on the device, augmented per batch as tensors."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        total_steps: int,
        device: torch.device,
        seed: int,
        amp: bool,
        zero_init_residual: bool = False,
    ) -> None:
        self.images, self.labels, self.device, self.amp = images.to(device), labels.to(device), device, amp
        self.batch_size, self.pad = config.batch_size, config.crop_padding
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        torch.manual_seed(seed)
        self.model = torchvision.models.resnet18(
            num_classes=int(labels.max()) + 1, zero_init_residual=zero_init_residual
        )
        self.model.to(device, memory_format=_memory_format(device)).train()
        weights = [p for p in self.model.parameters() if p.ndim > 1]
        flat = [p for p in self.model.parameters() if p.ndim <= 1]
        flat_decay = config.weight_decay if config.norm_weight_decay is None else config.norm_weight_decay
        self.optimizer = torch.optim.SGD(
            [{"params": weights, "weight_decay": config.weight_decay}, {"params": flat, "weight_decay": flat_decay}],
            lr=config.lr,
            momentum=config.momentum,
            nesterov=True,
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=config.lr, total_steps=total_steps)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.order = torch.randperm(len(images), device=device)
        self.next = 0
        self.size: int | None = None  # side of the batches when not the images' own (train.epoch_sizes)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.next + self.batch_size > len(self.order):
            self.order, self.next = torch.randperm(len(self.images), device=self.device), 0
        chosen = self.order[self.next : self.next + self.batch_size]
        self.next += self.batch_size
        padded = nn.functional.pad(self.images[chosen], [self.pad] * 4)
        size, count = self.images.shape[-1], len(chosen)
        offsets = torch.randint(0, 2 * self.pad + 1, (count, 2)).tolist()
        crops = torch.stack([padded[k, :, y : y + size, x : x + size] for k, (x, y) in enumerate(offsets)])
        flip = torch.rand(count, device=self.device) < 0.5
        crops = torch.where(flip[:, None, None, None], crops.flip(3), crops)
        images = (crops.float() / 255 - self.mean) / self.std
        if self.size not in (None, size):
            images = nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return images.contiguous(memory_format=_memory_format(self.device)), self.labels[chosen]

    def steps(self, count: int) -> None:
        for _ in range(count):
            images, labels = self.batch()
            with autocast(self.device, self.amp, training=True):
                loss = self.criterion(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        loss.item()


class ProjectLoop:
    """``mapex.train``'s epoch loop over a ``mapex.data`` loader, ``count`` steps at a time."""

    def __init__(
        self,
        index,
        size: int,
        config: TrainConfig,
        total_steps: int,
        device: torch.device,
        seed: int,
        amp: bool,
        workers: int,
    ) -> None:
        self.loader = make_loader(
            index,
            size,
            train=True,
            batch_size=config.batch_size,
            seed=seed,
            cache=True,
            num_workers=workers,
            boxes=False,
            device=device,
            crop_padding=config.crop_padding,
        )
        torch.manual_seed(seed)
        self.model = build_model("resnet18", len(index.classes), stem="imagenet")
        self.model.to(device, memory_format=_memory_format(device))
        self.optimizer = _make_optimizer(self.model, config)
        self.scheduler = _make_scheduler(self.optimizer, config, total_steps)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.device, self.epoch, self.amp = device, 0, amp

    def steps(self, count: int) -> None:
        """``count`` steps, in passes over the loader (a new epoch each, as in training) of at most its length."""
        while count > 0:
            chunk = min(count, len(self.loader))
            self.epoch += 1
            _train_one_epoch(
                self.model,
                self.loader,
                self.optimizer,
                self.scheduler,
                self.criterion,
                chunk,
                self.device,
                self.epoch,
                Path("unused-checkpoint"),
                progress=False,
                amp=self.amp,
            )
            count -= chunk


def decode_all(index, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    resize = torchvision.transforms.v2.Resize((size, size))
    images = torch.stack([resize(decode_image(str(s.image), mode=ImageReadMode.RGB)) for s in index.samples])
    return images, torch.tensor([s.label for s in index.samples])


Timing = tuple[float, float]  # wall-clock and process CPU seconds per step


def seconds_per_step(loop: Callable[[int], None], steps: int, device: torch.device) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    loop(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="extracted Tiny-ImageNet folder")
    parser.add_argument("--images", type=int, default=2560, help="training images used (class-balanced)")
    parser.add_argument("--steps", type=int, default=160, help="timed steps of both loops together")
    parser.add_argument("--block", type=int, default=10, help="steps per alternating block")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", action="store_true", help="both loops under the amp autocast (bfloat16 where native)")
    parser.add_argument("--workers", type=int, default=0, help="the project loader's worker processes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    index = read_tiny_imagenet(args.data, "train")
    index = balanced_subset(index, per_class=max(1, args.images // len(index.classes)), seed=args.seed)
    config = TrainConfig(batch_size=args.batch_size)
    rounds = max(1, args.steps // (2 * args.block))
    total_steps = (rounds + 1) * args.block
    project = ProjectLoop(index, args.size, config, total_steps, device, args.seed, args.amp, args.workers)
    plain = PlainLoop(*decode_all(index, args.size), config, total_steps, device, args.seed, args.amp)
    loops = {"project": project.steps, "plain": plain.steps}
    for loop in loops.values():
        seconds_per_step(loop, args.block, device)  # warm-up: allocator, thread pool, oneDNN kernels
    print(
        f"resnet18 (imagenet stem), {len(index)} images of {args.size}x{args.size}, batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads, amp {args.amp}, project batches made on "
        f"{project.loader.dataset.device} ({project.loader.num_workers} workers), "
        f"{rounds} rounds of {args.block} steps each"
    )
    times = alternate(loops, rounds, args.block, device)
    steps_taken = (project.scheduler.last_epoch, plain.scheduler.last_epoch)
    if steps_taken != (total_steps, total_steps):
        raise SystemExit(f"the loops took {steps_taken} optimiser steps (project, plain), not {total_steps} each")
    summarise(times, args.batch_size)


def alternate(
    loops: dict[str, Callable[[int], None]], rounds: int, block: int, device: torch.device
) -> dict[str, list[Timing]]:
    """``rounds`` blocks of each loop, the order swapped every round; prints each round as it ends."""
    times: dict[str, list[Timing]] = {name: [] for name in loops}
    print(
        f"{'round':>6} {'project s/step':>15} {'plain s/step':>13} {'ratio':>6}   "
        f"{'project cpu s':>14} {'plain cpu s':>12} {'ratio':>6}"
    )
    for round_ in range(1, rounds + 1):
        for name in list(loops) if round_ % 2 else list(reversed(loops)):
            times[name].append(seconds_per_step(loops[name], block, device))
        print_row(str(round_), times["project"][-1], times["plain"][-1])
    return times


def print_row(label: str, project: Timing, plain: Timing) -> None:
    print(
        f"{label:>6} {project[0]:>15.4f} {plain[0]:>13.4f} {project[0] / plain[0]:>6.3f}   "
        f"{project[1]:>14.4f} {plain[1]:>12.4f} {project[1] / plain[1]:>6.3f}",
        flush=True,
    )


def summarise(times: dict[str, list[Timing]], batch_size: int) -> None:
    """Medians, the ratio project/plain (of the median wall times: the verdict) and the plain epoch time."""
    project, plain = (
        [statistics.median(t[kind] for t in times[name]) for kind in (0, 1)] for name in ("project", "plain")
    )
    print_row("median", project, plain)
    paired = statistics.median(p[0] / q[0] for p, q in zip(times["project"], times["plain"]))
    ratio = project[0] / plain[0]
    print(
        f"ratio project/plain: {ratio:.3f} ({'PASS' if ratio <= TARGET else 'FAIL'}, target <= {TARGET}); "
        f"median of the rounds' ratios {paired:.3f}, of CPU times {project[1] / plain[1]:.3f}"
    )
    print(
        f"plain loop, one {EPOCH_IMAGES:,}-image epoch: {plain[0] * EPOCH_IMAGES / batch_size:.1f} s "
        f"({EPOCH_IMAGES / batch_size:.1f} steps of {plain[0]:.4f} s)"
    )
    print(f"images per second: project {batch_size / project[0]:,.0f}, plain {batch_size / plain[0]:,.0f}")


if __name__ == "__main__":
    main()
