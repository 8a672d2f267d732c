"""Seconds of the baseline's first epochs, with and without flushing denormals (a diagnosis, not a benchmark).

    python docs/measurements/2026-11-27-cpu-default-run-validate-last/denormals_epochs.py {flush,keep} EPOCHS

Run from the repository root after `mapex fetch --out work/data/tiny-imagenet-20`; it trains the
default baseline (two threads) and stops after EPOCHS epochs, printing each epoch's seconds and loss.
"""

import sys
import time
from pathlib import Path

import torch

from mapex import experiment, train
from mapex.config import load_params
from mapex.io import seed_everything
from mapex.models import build_model

mode, stop = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(2)
torch.set_flush_denormal(mode == "flush")
config = load_params("params.yaml")
_, task = experiment.load_task(config, "work/data/tiny-imagenet-20")
seed_everything(0)
model = build_model("resnet18", len(task.source_classes), stem="imagenet", pretrained=False, zero_init_residual=False)
original = train._train_one_epoch


def timed(*args, **kwargs):
    started = time.perf_counter()
    result = original(*args, **kwargs)
    epoch = args[7]
    print(f"{mode} epoch {epoch} {time.perf_counter() - started:.1f} s loss {float(result[0]):.4f}", flush=True)
    if epoch == stop:
        raise SystemExit(0)
    return result


train._train_one_epoch = timed
checkpoints = Path(f"work/denormals-{mode}")
experiment.fit_model(
    config,
    model,
    config["train"],
    0,
    task.source_train,
    task.source_val,
    checkpoints,
    torch.device("cpu"),
    restart=True,
)
