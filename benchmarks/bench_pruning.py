"""Does pruning pay off in CPU latency? MAC reduction against measured speedup (target >= 0.6).

    python benchmarks/bench_pruning.py                          # ratios 0.3 0.5 0.7, batch 64
    python benchmarks/bench_pruning.py --round-to 8

ResNet-18 (torchvision stem, random weights, 20-class head) at 64x64, pruned with the ``l1``
criterion (local ranking, first conv and classifier exempt). Latency is what the evaluation
reports: ``mapex.evaluate.measure_latency`` (eval and inference mode, channels-last on the CPU),
batch 64, torch's default thread count (or ``--threads``), warm-up runs, then the median of
``--reps`` runs, the unpruned and the pruned model measured alternately in the same process so
that load from other processes hits both alike. PASS when speedup / (MAC reduction factor) >= 0.6.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torchvision
from torch import nn

from mapex.criteria import get_criterion
from mapex.evaluate import measure_latency
from mapex.prune import PruneReport, prune_model

TARGET = 0.6


def build(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=20).eval()


def pruned_copy(
    model: nn.Module, ratio: float, example: torch.Tensor, round_to: int | None
) -> tuple[nn.Module, PruneReport]:
    pruned = copy.deepcopy(model)
    criterion = get_criterion("l1")
    criterion.compute(pruned)
    return pruned, prune_model(pruned, criterion, ratio, example, round_to=round_to)


def interleaved_medians(models: list[nn.Module], batch: int, size: int, warmup: int, reps: int) -> list[float]:
    """Median latency (ms) of each model, single runs alternating between them."""
    cpu = torch.device("cpu")
    for model in models:
        measure_latency(model, batch, size, cpu, warmup=warmup, reps=1)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(reps):
        for model, record in zip(models, times):
            record.append(measure_latency(model, batch, size, cpu, warmup=0, reps=1))
    return [statistics.median(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--round-to", type=int, default=None, help="kept channels rounded to a multiple")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    example = torch.randn(1, 3, args.size, args.size)
    model = build(args.seed)
    print(f"ResNet-18, {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"round_to={args.round_to}, median of {args.reps}")
    header = f"{'ratio':>5} {'MMACs before':>12} {'MMACs after':>11} {'MAC x':>6} " \
             f"{'ms before':>9} {'ms after':>8} {'speedup':>7} {'spd/MACx':>8}  result"
    print(header)
    print("-" * len(header))
    for ratio in args.ratios:
        pruned, report = pruned_copy(model, ratio, example, args.round_to)
        before, after = interleaved_medians([copy.deepcopy(model), pruned], args.batch, args.size, args.warmup,
                                            args.reps)
        mac_factor = report.macs_before / report.macs_after
        speedup = before / after
        efficiency = speedup / mac_factor
        verdict = "PASS" if efficiency >= TARGET else "FAIL"
        print(f"{ratio:>5.2f} {report.macs_before / 1e6:>12.1f} {report.macs_after / 1e6:>11.1f} {mac_factor:>6.2f} "
              f"{before:>9.1f} {after:>8.1f} {speedup:>7.2f} {efficiency:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
