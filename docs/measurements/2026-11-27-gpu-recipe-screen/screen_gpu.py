"""Screen baseline recipes on a GPU, in one process (#11, fifth round; see README.md beside this file).

    python screen_gpu.py --params params.yaml --data work/data/tiny-imagenet-20 --out screen.csv \
        --seeds 0 1 2 --device cuda

Each candidate is the params file with the `train` / `model` keys of CANDIDATES changed, trained
with the project's own `experiment.fit_model` (the best epoch chosen on validation), then scored on
the source test split. Decoded images are memoised across trainings of the same split (the same
bytes the project decodes; only the decoding is shared). One CSV row per training, appended as it ends.
"""

import argparse
import csv
import tempfile
import time
from pathlib import Path

import mapex.data.dataset as dataset
from mapex import experiment
from mapex.config import load_params, with_train_seed
from mapex.evaluate import accuracy
from mapex.io import seed_everything
from mapex.models import build_model

CANDIDATES = {
    "p48x15": {},  # the default at 45e5ab3: 6 epochs at 48 px, 9 at 64 (≈ 13.2 64-px epochs on the CPU)
    "p48x15z8": {"crop_padding": 8, "norm_weight_decay": 0.0, "zero_init_residual": True},  # + round 2's `all`
    "p48x16": {"epochs": 16, "epoch_sizes": [48] * 9},  # 9 at 48, 7 at 64 (≈ 13.3)
    "p32x17": {"epochs": 17, "epoch_sizes": [32] * 4 + [48] * 6},  # 4 at 32, 6 at 48, 7 at 64 (≈ 12.6)
}

_decoded = {}
_load_all = dataset._load_all


def memoised_load_all(samples, size):
    key = (tuple(str(sample.image) for sample in samples), size)
    if key not in _decoded:
        _decoded[key] = _load_all(samples, size)
    pixels, boxes = _decoded[key]
    return pixels.clone(), boxes


dataset._load_all = memoised_load_all


def candidate_params(params: dict, change: dict) -> dict:
    model_keys = {"zero_init_residual"}
    train = {**params["train"], **{k: v for k, v in change.items() if k not in model_keys}}
    model = {**params["model"], **{k: v for k, v in change.items() if k in model_keys}}
    return {**params, "train": train, "model": model}


def train_and_test(params: dict, data: str, device) -> dict:
    _, task = experiment.load_task(params, data)
    seed, model_params = params["train"]["seed"], params["model"]
    seed_everything(seed)
    model = build_model(
        model_params["arch"],
        len(task.source_classes),
        stem=model_params["stem"],
        pretrained=False,
        zero_init_residual=model_params["zero_init_residual"],
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as checkpoints:
        result = experiment.fit_model(
            params, model, params["train"], seed, task.source_train, task.source_val, Path(checkpoints), device
        )
    seconds = time.perf_counter() - started
    test = accuracy(model, experiment.loader(params, task.source_test, False, 128, seed, on=device), device, False)
    best = result.history[result.best_epoch - 1]
    return {
        "best_epoch": result.best_epoch,
        "val_top1": round(100 * best["val_top1"], 2),
        "test_top1": round(100 * test["top1"], 2),
        "fit_seconds": round(seconds, 1),
        "epoch_seconds": round(sum(row["seconds"] for row in result.history), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (a dry run)")
    args = parser.parse_args()
    base = load_params(args.params)
    base = {**base, "device": args.device, "amp": True, "workers": 0}
    fields = ["candidate", "seed", "best_epoch", "val_top1", "test_top1", "fit_seconds", "epoch_seconds"]
    with open(args.out, "w", newline="") as out:
        writer = csv.DictWriter(out, fields)
        writer.writeheader()
        for seed in args.seeds:
            for name in args.candidates:
                params = candidate_params(with_train_seed(base, seed), CANDIDATES[name])
                params["train"]["max_steps_per_epoch"] = args.max_steps
                row = {"candidate": name, "seed": seed, **train_and_test(params, args.data, experiment.device(params))}
                writer.writerow(row)
                out.flush()
                print(row, flush=True)


if __name__ == "__main__":
    main()
