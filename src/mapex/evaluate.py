"""Metrics of one model: accuracy, parameters, MACs, file size and measured latency.

MACs and parameters come from :func:`mapex.models.count_macs_and_params` (Torch-Pruning's
counter), the one count every table, the pruning report and the latency table use.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.fx.experimental import optimization as fx_optimization
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mapex.io import UserError
from mapex.models import InputSize, count_macs_and_params, eval_mode, example_input, random_images

if TYPE_CHECKING:
    import onnxruntime


@torch.inference_mode()
def accuracy(
    model: nn.Module, loader: DataLoader, device: torch.device, progress: bool = True, predictions: bool = False
) -> dict[str, Any]:
    """Top-1 and top-k accuracy (k = min(5, number of classes)) over ``loader``, in eval mode.

    Batches are ``(images, labels, ...)``; returns ``{"top1", "top5", "n"}`` and, with
    ``predictions``, ``{"label": [...], "pred": [...]}`` per image in the loader's order (what the
    paired comparisons of the report resample).
    """
    model.to(device).eval()
    top1 = torch.zeros((), dtype=torch.int64, device=device)  # the sums stay on the device: no copy per batch
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    labels_seen: list[Tensor] = []
    predicted: list[Tensor] = []
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = model(images)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        seen += len(labels)
        if predictions:
            labels_seen.append(labels)
            predicted.append(ranked[:, 0])
    if seen == 0:
        raise UserError("the evaluation loader yields no sample")
    result: dict[str, Any] = {"top1": top1.item() / seen, "top5": top5.item() / seen, "n": seen}
    if predictions:
        result["predictions"] = {"label": torch.cat(labels_seen).tolist(), "pred": torch.cat(predicted).tolist()}
    return result


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], device: torch.device) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (``(images, ...)``) as a
    plain average over them; weights are unchanged and the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    model.train()
    try:
        for batch in batches:
            model(batch[0].to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


def file_size(path: str | os.PathLike) -> int:
    """Size in bytes of a saved model file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path.stat().st_size


def deployed_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as a deployment runs it: an eval-mode copy on ``device`` with every BatchNorm that
    follows a conv folded into that conv's weights (``torch.fx.experimental.optimization.fuse``),
    in channels-last layout on the CPU. ``model`` itself is left untouched.

    Folding matters for pruned models: BatchNorm is a memory-bound pass over every activation, so
    its cost does not shrink with the MACs and it hides part of the speedup pruning buys. It also
    halves the large stem activations that glibc otherwise hands back to the kernel after every
    pass and faults in again on the next (ResNet-18, batch 64: 8160 page faults, 38 instead of
    27 ms at ratio 0.7; ``benchmarks/bench_pruning.py --explain``). Channels-last avoids a
    memory-format conversion around every conv of odd width on the CPU.
    """
    with eval_mode(model):
        fused = fx_optimization.fuse(model)  # traces and fuses a deep copy
    fused.eval().to(device)
    if device.type == "cpu":
        fused.to(memory_format=torch.channels_last)
    return fused


def measure_latency(
    model: nn.Module, batch: int, input_size: InputSize, device: torch.device, warmup: int = 3, reps: int = 10
) -> float:
    """Median wall-clock milliseconds of one forward pass of ``batch`` random images on ``device``,
    timed on the :func:`deployed_copy` of ``model`` (BN folded, channels-last on the CPU) in
    inference mode. GPU work is synchronised before each clock read.

    benchmarks/bench_pruning.py measures this function on ResNet-18 pruned at 0.3/0.5/0.7.
    """
    forward_pass = _deployed_forward_pass(model, batch, input_size, device)
    return _median_ms(forward_pass, warmup, reps, lambda: _synchronize(device))


def _deployed_forward_pass(
    model: nn.Module, batch: int, input_size: InputSize, device: torch.device
) -> Callable[[], Any]:
    """One inference-mode forward pass of ``model``'s :func:`deployed_copy` on ``batch`` random images."""
    deployed = deployed_copy(model, device)
    inputs = example_input(deployed, batch, input_size)
    if device.type == "cpu":
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def forward_pass() -> Any:
        with torch.inference_mode():
            return deployed(inputs)

    return forward_pass


def ort_session(model: nn.Module, input_size: InputSize) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session (CPUExecutionProvider, torch's CPU thread count, default graph
    optimisations, which fold BatchNorm themselves) of ``model`` exported by
    :func:`mapex.export.export_onnx`."""
    import onnxruntime

    from mapex.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", input_size)
        return onnxruntime.InferenceSession(str(path), ort_options(), providers=["CPUExecutionProvider"])


def ort_options() -> onnxruntime.SessionOptions:
    """ONNX Runtime session options: torch's CPU thread count inside ops, one thread across them."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options


def measure_latency_ort(
    session: onnxruntime.InferenceSession, batch: int, input_size: InputSize, warmup: int = 3, reps: int = 10
) -> float:
    """Median wall-clock milliseconds of one run of an :func:`ort_session` on ``batch`` random images."""
    model_input = session.get_inputs()[0]
    images = random_images(batch, model_input.shape[1], input_size)
    feed = {model_input.name: images.numpy()}
    return _median_ms(lambda: session.run(None, feed), warmup, reps)


def _median_ms(run: Callable[[], Any], warmup: int, reps: int, synchronize: Callable[[], None] = lambda: None) -> float:
    """Median wall-clock milliseconds of ``reps`` calls of ``run`` after ``warmup`` untimed ones."""
    times = []
    for rep in range(warmup + reps):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        if rep >= warmup:
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def interleaved_latency(
    first: nn.Module, second: nn.Module, batch: int, input_size: InputSize, reps: int, warmup: int = 3
) -> tuple[float, float]:
    """CPU milliseconds of ``first`` and of ``second`` (their :func:`deployed_copy`, as
    :func:`measure_latency` times them), timed alternately in one loop (median of ``reps``).

    Alternating puts both models under the same machine state (clock, cache, other load), so
    their ratio is the speedup even where absolute times drift on a shared machine.
    """
    cpu = torch.device("cpu")
    forward_passes = [_deployed_forward_pass(model, batch, input_size, cpu) for model in (first, second)]
    return _alternating_medians(forward_passes, reps, warmup)


def interleaved_latency_ort(
    first: onnxruntime.InferenceSession,
    second: onnxruntime.InferenceSession,
    batch: int,
    input_size: InputSize,
    reps: int,
    warmup: int = 3,
) -> tuple[float, float]:
    """Like :func:`interleaved_latency`, for two :func:`ort_session` runs."""
    runs = []
    for session in (first, second):
        model_input = session.get_inputs()[0]
        feed = {model_input.name: random_images(batch, model_input.shape[1], input_size).numpy()}
        runs.append(lambda session=session, feed=feed: session.run(None, feed))
    return _alternating_medians(runs, reps, warmup)


def _alternating_medians(runs: list[Callable[[], Any]], reps: int, warmup: int) -> tuple[float, float]:
    """Median milliseconds of each of two callables, called alternately ``warmup + reps`` times."""
    times: list[list[float]] = [[], []]
    for rep in range(warmup + reps):
        for run, measured in zip(runs, times):
            elapsed = _median_ms(run, warmup=0, reps=1)
            if rep >= warmup:
                measured.append(elapsed)
    return statistics.median(times[0]), statistics.median(times[1])


def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    input_size: InputSize,
    latency_batches: tuple[int, ...] = (1, 64),
    latency_reps: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy on ``loader`` plus size and speed: the metrics every results table reports.

    Keys: ``top1``, ``top5``, ``n``, ``params``, ``macs``, ``latency_ms_cpu_b{B}`` (PyTorch) and
    ``latency_ms_ort_b{B}`` (ONNX Runtime, CPU) for each ``B`` in ``latency_batches`` and, when CUDA
    is available, ``latency_ms_cuda_b{B}``; ``cpu_name``, ``cpu_threads`` and ``cuda_name`` (when
    available) say where the latencies were measured. Accuracy is measured on ``model`` as given,
    latency on its :func:`deployed_copy`. ``model`` is left on ``device``.
    """
    metrics: dict[str, Any] = dict(accuracy(model, loader, device, progress))
    macs, params = count_macs_and_params(model, input_size)
    metrics.update(params=params, macs=macs)
    cpu = torch.device("cpu")
    metrics.update(cpu_name=_cpu_name(), cpu_threads=torch.get_num_threads())
    session = ort_session(model, input_size)
    for batch in latency_batches:
        metrics[f"latency_ms_cpu_b{batch}"] = measure_latency(model, batch, input_size, cpu, reps=latency_reps)
        metrics[f"latency_ms_ort_b{batch}"] = measure_latency_ort(session, batch, input_size, reps=latency_reps)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        metrics["cuda_name"] = torch.cuda.get_device_name(cuda)
        for batch in latency_batches:
            metrics[f"latency_ms_cuda_b{batch}"] = measure_latency(model, batch, input_size, cuda, reps=latency_reps)
    return metrics


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what the platform module says."""
    from mapex.io import cpu_info

    return cpu_info("model name") or platform.processor() or platform.machine()
