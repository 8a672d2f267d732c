"""Data-parallel fitting (mapex.distributed): two CPU processes with gloo, as torchrun runs them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision.io import write_png

from mapex.data import BoxIndex, BoxSample, make_loader
from mapex.distributed import World
from mapex.prune import load_pruned
from mapex.train import TrainConfig, fit
from test_cli import _tiny_params, _train_command

CLASSES, IMAGES, SIDE, BATCH = 3, 30, 16, 8
CPU = torch.device("cpu")


def _index(folder: Path) -> BoxIndex:
    """Noise PNGs whose class shifts their brightness: learnable, and every crop and flip changes the input."""
    generator = torch.Generator().manual_seed(3)
    samples = []
    for k in range(IMAGES):
        pixels = torch.randint(0, 160, (3, SIDE, SIDE), dtype=torch.uint8, generator=generator) + 40 * (k % CLASSES)
        write_png(pixels.to(torch.uint8), str(folder / f"img{k}.png"))
        samples.append(BoxSample(folder / f"img{k}.png", k % CLASSES, ((2.0, 2.0, 12.0, 12.0),)))
    return BoxIndex([str(c) for c in range(CLASSES)], samples)


def _model() -> nn.Module:
    """No BatchNorm and no dropout: what one process computes is then the same sum, split in two."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES)
    )


def _fit(folder: Path, index: BoxIndex, world: World) -> dict:
    config = TrainConfig(epochs=3, batch_size=BATCH, lr=0.1, label_smoothing=0.0, seed=5)
    train = make_loader(index, SIDE, True, BATCH, seed=5, cache=True, rank=world.rank, world=world.size)
    val = make_loader(index, SIDE, False, BATCH, seed=5, cache=True, rank=world.rank, world=world.size)
    model = _model()
    result = fit(model, train, val, config, folder / "checkpoints", CPU, progress=False)
    return {"history": result.history, "weights": {k: v.tolist() for k, v in result.best_state.items()}}


def _worker(rank: int, folder: Path, index: BoxIndex) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=2)
    try:
        outcome = _fit(folder, index, World(rank, 2))
        (folder / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def test_two_processes_with_the_same_global_batch_fit_what_one_process_fits(tmp_path):
    """Same global batches, same augmentation draws: the two halves' gradients, averaged by DDP, are the
    whole batch's gradient up to the order of float additions. That order is the only difference, so
    losses agree to 1e-5 relative and weights to 1e-5 absolute after 12 steps (a batch composed or
    augmented differently moves the loss by more than 1e-2)."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    index = _index(tmp_path)
    single = _fit(one, index, World())
    mp.spawn(_worker, args=(two, index), nprocs=2)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    without_seconds = [[{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]] for r in ranks]
    assert without_seconds[0] == without_seconds[1]  # metrics summed over both processes
    for ours, theirs in zip(ranks[0]["history"], single["history"]):
        for key in ("train_loss", "val_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        for key in ("train_top1", "val_top1", "lr", "epoch"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    for name, weight in single["weights"].items():
        assert torch.allclose(torch.tensor(ranks[0]["weights"][name]), torch.tensor(weight), atol=1e-5), name
    saved = torch.load(two / "checkpoints/last.pt", weights_only=True)
    assert saved["meta"]["world_size"] == 2  # written once, by rank 0


def test_each_process_takes_every_worlds_share_of_the_same_augmented_batch(tmp_path):
    index = _index(tmp_path)
    whole = make_loader(index, SIDE, True, BATCH, seed=9, cache=True)
    shares = [make_loader(index, SIDE, True, BATCH, seed=9, cache=True, rank=r, world=2) for r in (0, 1)]
    for batch, first, second in zip(whole, *shares):
        assert torch.equal(first[0], batch[0][0::2]) and torch.equal(second[0], batch[0][1::2])
        assert torch.equal(first[1], batch[1][0::2]) and torch.equal(second[1], batch[1][1::2])
    assert len(shares[0]) == len(shares[1]) == len(whole)


def test_a_two_process_training_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, tiny_imagenet):
    """`mapex train` with train.nproc 2 starts itself under torchrun; kill the whole process group after the
    first checkpoint, resume with the same command, compare with an uninterrupted two-process run."""
    train = {"epochs": 3, "batch_size": 32, "lr": 0.05, "nproc": 2}
    params = _tiny_params(tmp_path, {"max_per_class": 24, "max_test_per_class": 5}, train=train)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(_train_command(params, tiny_imagenet, whole), cwd=whole, env=env, capture_output=True)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert finished.stderr.decode().count("2 processes (gloo)") == 1  # rank 1 logs warnings only

    process = subprocess.Popen(
        _train_command(params, tiny_imagenet, killed),
        cwd=killed,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((killed / "work/checkpoints").rglob("last.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher = psutil.Process(process.pid)
    launcher.suspend()
    for victim in [*launcher.children(recursive=True), launcher]:  # torchrun's processes are in sessions of their own
        victim.kill()
    process.wait()
    assert not (killed / "model.pt").exists(), "training finished before it could be killed"

    one_process = _tiny_params(killed, {"max_per_class": 24, "max_test_per_class": 5}, train={**train, "nproc": 1})
    refused = subprocess.run(_train_command(one_process, tiny_imagenet, killed), cwd=killed, capture_output=True)
    assert refused.returncode == 2 and "world_size: 2 -> 1" in refused.stderr.decode()

    resumed = subprocess.run(_train_command(params, tiny_imagenet, killed), cwd=killed, env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    for key in ("top1", "top5", "val_top1", "best_epoch", "params", "macs"):
        assert first[key] == second[key], key
    weights = [load_pruned(d / "model.pt")[0].state_dict() for d in (whole, killed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sync_batchnorm_on_the_cpu_is_refused_with_one_line(tmp_path, tiny_imagenet):
    train = {"epochs": 1, "batch_size": 32, "nproc": 2, "sync_batchnorm": True}
    params = _tiny_params(tmp_path, {"max_per_class": 10, "max_test_per_class": 5}, train=train)
    failed = subprocess.run(_train_command(params, tiny_imagenet, tmp_path), cwd=tmp_path, capture_output=True)
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.decode().splitlines() if " ERROR " in line]
    assert any("sync_batchnorm: true needs GPUs" in line for line in errors)
    assert "Traceback" not in failed.stderr.decode()
