"""Paired comparison of the fine-tuning schedules on *validation* top-1 (never test).

Run from a tree where `snakemake --cores all` has finished with the default params (one-cycle):

    python docs/measurements/2026-11-26-finetune-schedule/compare.py jobs > jobs.txt
    xargs -P 2 -I{} sh -c "{}" < jobs.txt         # 36 cosine runs, about 24 s each per core
    python docs/measurements/2026-11-26-finetune-schedule/compare.py

The cosine runs use params.yaml with `finetune.schedule: cosine` (written to /tmp/sched/cosine.yaml);
everything else (scores, baseline, seeds, budget) is the default run's.
"""

import json
import random
import statistics
import sys

import yaml

OUT = "/tmp/sched"
TASKS, ROWS, RATIOS, SEEDS = ("balls-bugs", "nature"), ("l1", "map-ex", "random"), ("0.5", "0.7"), (0, 1, 2)
CELLS = [(t, r, q, s) for t in TASKS for r in ROWS for q in RATIOS for s in SEEDS]


def jobs() -> None:
    params = yaml.safe_load(open("params.yaml"))
    params["finetune"]["schedule"] = "cosine"
    yaml.safe_dump(params, open(f"{OUT}/cosine.yaml", "w"), sort_keys=False)
    for task, row, ratio, seed in CELLS:
        tag = f"{OUT}/{task}_{row}_r{ratio}_s{seed}"
        print(
            f"mapex --log {tag}.log run --params {OUT}/cosine.yaml --data work/data/tiny-imagenet-20"
            f" --model work/baseline/model.pt --task {task} --criterion {row} --ratio {ratio} --seed {seed}"
            f" --scores work/scores/{task}/{row}/s{seed}.pt --out {tag}.pt --history {tag}.csv"
            f" --metrics {tag}.json --threads 1"
        )


def compare() -> None:
    pairs = []
    for task, row, ratio, seed in CELLS:
        cosine = json.load(open(f"{OUT}/{task}_{row}_r{ratio}_s{seed}.json"))
        onecycle = json.load(open(f"results/runs/{task}/{row}/r{ratio}/s{seed}.json"))
        pairs.append((row, ratio, 100 * (cosine["val_top1"] - onecycle["val_top1"])))
    differences = [d for _, _, d in pairs]
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(differences, k=len(differences))) for _ in range(4000))
    print(
        f"val top-1, cosine - onecycle: {statistics.mean(differences):+.2f} points,"
        f" 95% CI [{means[100]:+.2f}, {means[3899]:+.2f}] (bootstrap over the {len(differences)} paired runs)"
    )
    for ratio in RATIOS:
        print(f"  ratio {ratio}: {statistics.mean(d for _, q, d in pairs if q == ratio):+.2f}")
    for row in ROWS:
        print(f"  row {row}: {statistics.mean(d for r, _, d in pairs if r == row):+.2f}")


if __name__ == "__main__":
    jobs() if sys.argv[1:] == ["jobs"] else compare()
