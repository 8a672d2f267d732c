"""Does pruning pay off in CPU latency? Speedup against MAC reduction, measured as the pipeline measures it.

    python benchmarks/bench_pruning.py                  # ratios 0.3 0.5 0.7, round_to 8, batch 64
    python benchmarks/bench_pruning.py --round-to 1     # exact kept counts (45, 90, 179, 358 at 0.3)
    python benchmarks/bench_pruning.py --profile        # + per-op CPU time, unpruned vs the last ratio
    python benchmarks/bench_pruning.py --explain        # + the last ratio timed alone vs alternating

ResNet-18 (torchvision stem, random weights, 20-class head) at 64x64, pruned with the ``l1``
criterion (local ranking, first conv and classifier exempt, kept counts rounded to ``--round-to``).
MACs are the pipeline's ``count_macs_and_params`` (Torch-Pruning's counter); latencies come from
``interleaved_latency``, the code behind the pipeline's latency study: one forward pass of the
unpruned model's deployed copy (BN folded into the convs, channels-last, inference mode, as
``measure_latency`` times it), then one of the pruned model's, alternating, median of ``--reps``
after ``--warmup``, so that load from other processes hits both alike; batch 64, torch's default
thread count (or ``--threads``). PASS when speedup / MAC reduction factor reaches the target: 0.8
at ratios up to 0.5, 0.7 above.

``--explain`` answers why a pruned model measured alone can be slower than the same model measured
in a loop that alternates it with the unpruned one: per timed run it reports the minor page faults
(fresh memory the kernel maps and zeroes), involuntary context switches (threads preempted by other
processes) and process CPU time over wall time, for the model as the pipeline used to time it (BN
unfolded) and as it times it now, and the unfolded model alone with glibc's heap trimming switched
off (``mallopt``); each case runs in a fresh process, since the allocator's state depends on
history. Last, the cost of one page fault on this machine.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import mmap
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mapex.criteria import get_criterion
from mapex.evaluate import deployed_copy, interleaved_latency
from mapex.models import count_macs_and_params, example_input
from mapex.prune import prune_model

CPU = torch.device("cpu")


def macs_of(model: nn.Module, size: int) -> int:
    return count_macs_and_params(model, size)[0]


def target(ratio: float) -> float:
    return 0.8 if ratio <= 0.5 else 0.7


def build(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=20).eval()


def pruned_copy(model: nn.Module, ratio: float, size: int, round_to: int) -> nn.Module:
    pruned = copy.deepcopy(model)
    criterion = get_criterion("l1")
    criterion.compute(pruned)
    prune_model(pruned, criterion, ratio, torch.zeros(1, 3, size, size), round_to=round_to)
    return pruned


def speed_table(model: nn.Module, args: argparse.Namespace) -> dict[float, nn.Module]:
    """Print MAC reduction, speedup and their ratio per pruning ratio; return the pruned models."""
    print(
        f"ResNet-18, {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"round_to={args.round_to}, BN folded, median of {args.reps} alternating runs"
    )
    header = (
        f"{'ratio':>5} {'MMACs before':>12} {'MMACs after':>11} {'MAC x':>6} {'ms before':>9} "
        f"{'ms after':>8} {'speedup':>7} {'spd/MACx':>8} {'target':>6}  result"
    )
    print(header)
    print("-" * len(header))
    macs_before = macs_of(model, args.size)
    pruned_models = {}
    for ratio in args.ratios:
        pruned = pruned_models[ratio] = pruned_copy(model, ratio, args.size, args.round_to)
        macs_after = macs_of(pruned, args.size)
        before, after = interleaved_latency(model, pruned, args.batch, args.size, args.reps, args.warmup)
        mac_factor, speedup = macs_before / macs_after, before / after
        efficiency = speedup / mac_factor
        verdict = "PASS" if efficiency >= target(ratio) else "FAIL"
        print(
            f"{ratio:>5.2f} {macs_before / 1e6:>12.1f} {macs_after / 1e6:>11.1f} {mac_factor:>6.2f} "
            f"{before:>9.1f} {after:>8.1f} {speedup:>7.2f} {efficiency:>8.2f} {target(ratio):>6.2f}  {verdict}"
        )
    return pruned_models


def per_op_ms(model: nn.Module, args: argparse.Namespace) -> dict[tuple[str, str], float]:
    """Self CPU milliseconds per forward pass of the deployed copy, per (op, input shapes), by torch.profiler."""
    deployed = deployed_copy(model, CPU)
    inputs = example_input(deployed, args.batch, args.size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(args.warmup):
            deployed(inputs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            for _ in range(args.reps):
                deployed(inputs)
    events = profiler.key_averages(group_by_input_shape=True)
    return {(event.key, str(event.input_shapes)): event.self_cpu_time_total / 1000.0 / args.reps for event in events}


def _by_op(times: dict[tuple[str, str], float]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for (op, _), ms in times.items():
        totals[op] = totals.get(op, 0.0) + ms
    return totals


def profile_table(model: nn.Module, pruned: nn.Module, ratio: float, args: argparse.Namespace) -> None:
    """Per op, time before and after pruning; then the time of the ops whose shapes pruning left as they were."""
    shaped_before, shaped_after = per_op_ms(model, args), per_op_ms(pruned, args)
    before, after = _by_op(shaped_before), _by_op(shaped_after)
    total_before, total_after = sum(before.values()), sum(after.values())
    print(
        f"\nwhere the time goes at ratio {ratio} (self CPU ms per forward, torch.profiler; "
        f"MAC reduction {macs_of(model, args.size) / macs_of(pruned, args.size):.2f}x)"
    )
    print(f"{'op':<32} {'ms before':>9} {'ms after':>8} {'before/after':>12} {'share after':>11}")
    for op in sorted(after, key=after.get, reverse=True)[:10]:
        ms_before = before.get(op, 0.0)
        print(
            f"{op:<32} {ms_before:>9.2f} {after[op]:>8.2f} {ms_before / after[op]:>12.2f} "
            f"{after[op] / total_after:>10.0%}"
        )
    print(f"{'all ops':<32} {total_before:>9.2f} {total_after:>8.2f} {total_before / total_after:>12.2f}")
    unchanged = shaped_before.keys() & shaped_after.keys()
    unchanged_before = sum(shaped_before[key] for key in unchanged)
    unchanged_after = sum(shaped_after[key] for key in unchanged)
    print(
        f"{'ops of unchanged shapes':<32} {unchanged_before:>9.2f} {unchanged_after:>8.2f} "
        f"{unchanged_before / unchanged_after:>12.2f} {unchanged_after / total_after:>10.0%}"
    )
    for op, shapes in sorted(unchanged, key=shaped_after.get, reverse=True)[:5]:
        print(f"  {op:<30} {shaped_before[op, shapes]:>9.2f} {shaped_after[op, shapes]:>8.2f}   {shapes[:60]}")


@dataclass
class RunStats:
    """Medians over the timed forward passes of one model."""

    ms: float
    page_faults: float
    preempted: float
    cpu_over_wall: float


def _timed_forward(model: nn.Module, inputs: torch.Tensor) -> tuple[float, int, int, float]:
    before, cpu_before, started = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    with torch.inference_mode():
        model(inputs)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        wall * 1000.0,
        after.ru_minflt - before.ru_minflt,
        after.ru_nivcsw - before.ru_nivcsw,
        (time.process_time() - cpu_before) / wall,
    )


def pruned_run_stats(pruned: nn.Module, unpruned: nn.Module | None, inputs: torch.Tensor, runs: int) -> RunStats:
    """The pruned model's timed runs, alone or (given ``unpruned``) each after one unpruned run."""
    records = []
    for _ in range(runs):
        if unpruned is not None:
            _timed_forward(unpruned, inputs)
        records.append(_timed_forward(pruned, inputs))
    return RunStats(*(statistics.median(column) for column in zip(*records)))


def microseconds_per_page_fault(megabytes: int = 32, reps: int = 5) -> float:
    """Time to touch one fresh page of anonymous memory (fault, zero, map), median of ``reps`` mappings."""
    size, page = megabytes << 20, mmap.PAGESIZE
    times = []
    for _ in range(reps):
        with mmap.mmap(-1, size) as memory:
            started = time.perf_counter()
            for offset in range(0, size, page):
                memory[offset] = 1
            times.append((time.perf_counter() - started) * 1e6 / (size // page))
    return statistics.median(times)


def _disable_heap_trimming() -> None:
    """glibc: never give freed heap memory back to the kernel (and serve every size from the heap)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_mmap_threshold, 2**30)


EXPLAIN_CASES = {  # name: (BN folded, alternating with the unpruned model, glibc heap trimming on)
    "unfolded-alone": (False, False, True),
    "unfolded-alternating": (False, True, True),
    "unfolded-alone-no-trim": (False, False, False),
    "deployed-alone": (True, False, True),
    "deployed-alternating": (True, True, True),
}


def explain_case(case: str, args: argparse.Namespace) -> None:
    """One row of the explanation, in a process of its own: the allocator's state depends on history."""
    folded, alternating, trimming = EXPLAIN_CASES[case]
    if not trimming:
        _disable_heap_trimming()
    model = build(args.seed)
    pruned = pruned_copy(model, args.ratios[-1], args.size, args.round_to)
    if folded:
        model, pruned = deployed_copy(model, CPU), deployed_copy(pruned, CPU)
    else:
        model, pruned = (m.to(memory_format=torch.channels_last) for m in (model, pruned))
    inputs = example_input(model, args.batch, args.size).contiguous(memory_format=torch.channels_last)
    for _ in range(args.warmup):
        _timed_forward(model, inputs), _timed_forward(pruned, inputs)
    stats = pruned_run_stats(pruned, model if alternating else None, inputs, args.explain_runs)
    print(f"{case:<24} {stats.ms:>7.1f} {stats.page_faults:>11.0f} {stats.preempted:>9.1f} {stats.cpu_over_wall:>8.2f}")


def explain_table(args: argparse.Namespace) -> None:
    print(
        f"\nratio {args.ratios[-1]} model timed alone vs alternating with the unpruned one, one process per row "
        f"(medians of {args.explain_runs} runs after {args.warmup} warm-up runs of both models)"
    )
    print(f"{'case':<24} {'ms':>7} {'page faults':>11} {'preempted':>9} {'cpu/wall':>8}", flush=True)
    for case in EXPLAIN_CASES:
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--explain-case", case], check=True)
    print(f"one page fault costs {microseconds_per_page_fault():.2f} us here (32 MiB of fresh pages touched)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--round-to", type=int, default=8, help="kept channels rounded to a multiple (1: exact)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="per-op table, unpruned vs the last ratio")
    parser.add_argument("--explain", action="store_true", help="the last ratio alone vs alternating")
    parser.add_argument("--explain-runs", type=int, default=15)
    parser.add_argument("--explain-case", choices=EXPLAIN_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.explain_case:
        explain_case(args.explain_case, args)
        return

    model = build(args.seed)
    pruned_models = speed_table(model, args)
    ratio = args.ratios[-1]
    if args.profile:
        profile_table(model, pruned_models[ratio], ratio, args)
    if args.explain:
        explain_table(args)


if __name__ == "__main__":
    main()
