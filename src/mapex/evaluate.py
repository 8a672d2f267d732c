"""Metrics of one model: accuracy, parameters, MACs, file size and measured latency.

MACs (multiply-accumulates) are counted by ``torch.utils.flop_counter.FlopCounterMode``, which
counts 2 FLOPs per multiply-accumulate of convolutions and matrix products (bias additions,
BatchNorm, activations and pooling are not counted), so MACs = FLOPs / 2. For a conv that is
``C_out · C_in / groups · k_h · k_w · H_out · W_out`` per image.
"""
from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from mapex.io import UserError

InputSize = int | tuple[int, int]


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device, progress: bool = True,
             predictions: bool = False) -> dict[str, Any]:
    """Top-1 and top-k accuracy (k = min(5, number of classes)) over ``loader``, in eval mode.

    Batches are ``(images, labels, ...)``; returns ``{"top1", "top5", "n"}`` and, with
    ``predictions``, ``{"label": [...], "pred": [...]}`` per image in the loader's order (what the
    paired comparisons of the report resample).
    """
    model.to(device).eval()
    top1 = top5 = seen = 0
    labels_seen: list[int] = []
    predicted: list[int] = []
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = model(images)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        seen += len(labels)
        if predictions:
            labels_seen += labels.tolist()
            predicted += ranked[:, 0].tolist()
    if seen == 0:
        raise UserError("the evaluation loader yields no sample")
    result: dict[str, Any] = {"top1": top1 / seen, "top5": top5 / seen, "n": seen}
    if predictions:
        result["predictions"] = {"label": labels_seen, "pred": predicted}
    return result


def count_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(model: nn.Module, input_size: InputSize) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_size`` (H, W) (see module doc)."""
    flop_counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), flop_counter:
        model(_example_input(model, 1, input_size))
    return flop_counter.get_total_flops() // 2


def file_size(path: str | os.PathLike) -> int:
    """Size in bytes of a saved model file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path.stat().st_size


def measure_latency(model: nn.Module, batch: int, input_size: InputSize, device: torch.device,
                    warmup: int = 3, reps: int = 10) -> float:
    """Median wall-clock milliseconds of one forward pass of ``batch`` random images on ``device``.

    ``model`` must already be on ``device``. GPU work is synchronised before each clock read. On the
    CPU the model and input are put in channels-last layout: pruned layers have odd widths (19, 77,
    ...), which in the default layout cost memory-format conversions around every conv and hide
    the speedup that pruning really buys: ResNet-18 pruned at 0.7 gave 0.40 of its MAC reduction
    as speedup in NCHW and 0.55-0.58 here in channels-last (benchmarks/bench_pruning.py measures
    this function).
    """
    inputs = _example_input(model, batch, input_size).to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    times = []
    with _eval_mode(model), torch.inference_mode():
        for rep in range(warmup + reps):
            _synchronize(device)
            started = time.perf_counter()
            model(inputs)
            _synchronize(device)
            if rep >= warmup:
                times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def interleaved_latency(first: nn.Module, second: nn.Module, batch: int, input_size: InputSize,
                        reps: int, warmup: int = 3) -> tuple[float, float]:
    """CPU milliseconds of ``first`` and of ``second``, timed alternately in one loop (median of ``reps``).

    Alternating puts both models under the same machine state (clock, cache, other load), so
    their ratio is the speedup even where absolute times drift on a shared machine.
    """
    cpu = torch.device("cpu")
    models = [copy.deepcopy(first).to(cpu), copy.deepcopy(second).to(cpu)]
    times: list[list[float]] = [[], []]
    for rep in range(warmup + reps):
        for model, measured in zip(models, times):
            elapsed = measure_latency(model, batch, input_size, cpu, warmup=0, reps=1)
            if rep >= warmup:
                measured.append(elapsed)
    return statistics.median(times[0]), statistics.median(times[1])


def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, input_size: InputSize,
                   latency_batches: tuple[int, ...] = (1, 64), latency_reps: int = 10,
                   progress: bool = True) -> dict[str, Any]:
    """Accuracy on ``loader`` plus size and speed: the metrics every results table reports.

    Keys: ``top1``, ``top5``, ``n``, ``params``, ``macs``, ``latency_ms_cpu_b{B}`` for each ``B`` in
    ``latency_batches`` and, when CUDA is available, ``latency_ms_cuda_b{B}``; ``cpu_name``,
    ``cpu_threads`` and ``cuda_name`` (when available) say where the latencies were measured.
    ``model`` is left on ``device``.
    """
    metrics: dict[str, Any] = dict(accuracy(model, loader, device, progress))
    metrics.update(params=count_params(model), macs=count_macs(model, input_size))
    cpu_model = copy.deepcopy(model).to("cpu")
    metrics.update(cpu_name=_cpu_name(), cpu_threads=torch.get_num_threads())
    for batch in latency_batches:
        metrics[f"latency_ms_cpu_b{batch}"] = measure_latency(cpu_model, batch, input_size, torch.device("cpu"),
                                                              reps=latency_reps)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        cuda_model = copy.deepcopy(model).to(cuda)
        metrics["cuda_name"] = torch.cuda.get_device_name(cuda)
        for batch in latency_batches:
            metrics[f"latency_ms_cuda_b{batch}"] = measure_latency(cuda_model, batch, input_size, cuda,
                                                                   reps=latency_reps)
    return metrics


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put a model in eval mode for a block, then restore its previous train/eval flag."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def _example_input(model: nn.Module, batch: int, input_size: InputSize) -> torch.Tensor:
    """Seeded random images (a private generator: the global RNG is left alone) with the model's input channels."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)
    return images.to(parameter.device if parameter is not None else "cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what the platform module says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
