"""Several processes, one model: data-parallel training with ``torch.distributed`` (DDP) under torchrun.

``train.nproc`` / ``finetune.nproc`` (params) ask for that many processes on this node for the
baseline / each fine-tuning. ``mapex train`` and ``mapex run`` then start themselves again under
``torchrun --standalone --nproc-per-node N`` (torch's own launcher, :mod:`torch.distributed.run`),
so Snakemake and DVC run the same command whatever N is. Started by a torchrun of the user's (for
several nodes: ``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint
HOST:PORT -m mapex train ...``), a stage joins that group instead; docs/cluster.md has the commands.

What is shared and what is not:

- every process reads the same params, data and checkpoint, and holds the whole model;
- each global batch (``batch_size`` of the params: the same images, in the same order, with the
  same augmentation as one process would draw) is split across the processes, image ``k`` of it
  going to rank ``k mod N``; DDP averages the gradients; validation is split the same way and its
  sums are added across ranks;
- BatchNorm: plain by default (statistics of each process's share of the batch); with
  ``sync_batchnorm: true``, SyncBatchNorm (statistics of the whole global batch, as one process
  computes them; GPUs only, a torch restriction);
- rank 0 alone writes checkpoints, the history, the model and the metrics (atomically, as always);
  the others wait for it at the end of every epoch;
- a checkpoint records the world size; resuming it under another world size is refused with a
  one-line error (the shards, and so the BatchNorm statistics and the summation order, would
  differ from the run it continues): finish with the same N, or pass ``--restart``.

Backends: nccl on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mapex.io import UserError

log = logging.getLogger("mapex")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one fit: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def launched() -> bool:
    """Whether a torchrun started this process (it sets ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ


def current() -> World:
    """The group this process belongs to, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def start(device: torch.device) -> World:
    """Join the process group torchrun set up (nccl on a GPU, gloo on the CPU); a world of one without torchrun."""
    if not launched() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    world = current()
    if not world.main:
        log.setLevel(logging.WARNING)  # one copy of the progress lines: rank 0's
    log.info("%d processes (%s)", world.size, dist.get_backend())
    return world


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def summed(values: Sequence[float | Tensor], device: torch.device) -> list[float]:
    """``values`` (numbers or one-element tensors on ``device``) added element-wise over every process, as floats."""
    if current().size == 1:
        return [float(value) for value in values]
    tensor = torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device) for value in values])
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if current().size > 1:
        dist.barrier()


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``mapex <argv>`` in ``nproc`` processes on this node under torchrun; its exit status.

    A process that fails has already logged its one-line error; torchrun's own summary of the
    failure (a traceback of the launcher) is left out.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    log.info("starting %d processes under torchrun", nproc)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "mapex", *argv]))
    except ChildFailedError as err:
        failures = err.failures
        codes = sorted({failure.exitcode for failure in failures.values()})
        log.error("%d of %d processes failed (exit status %s); see their lines above", len(failures), nproc, codes)
        return max(codes) if codes and max(codes) > 0 else 1
    return 0


def check_sync_batchnorm(sync: bool, device: torch.device) -> None:
    if sync and device.type != "cuda":
        raise UserError("sync_batchnorm: true needs GPUs (torch's SyncBatchNorm runs on CUDA only); set it to false")
