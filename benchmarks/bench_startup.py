"""Where a pipeline job's fixed cost goes: start-up (imports), task index, image decoding.

    python benchmarks/bench_startup.py --data work/data/tiny-imagenet-20 [--params params.yaml] [--repeats 5]

Every Snakemake rule and DVC stage is one ``mapex`` process, so each of the default run's jobs pays
these costs once. Measured side by side, alternating, in fresh subprocesses (median of
``--repeats``): a plain ``python -c "import torch, torchvision"`` (the floor: any program that builds
a torchvision model pays it), then the imports a ``mapex run`` job makes; and, in this process, the
task index of the first task (``load_task_data``: reading the annotation files, the splits) and the
decoding of its train, validation and test images into the loaders' uint8 cache. Printed: each
time, the ratio of ``mapex run``'s imports to the floor, and the share of a typical run job (the
``--job-seconds`` it took, measured by the rule's benchmark file) that is fixed cost.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

FLOOR = "import torch, torchvision"
RUN_IMPORTS = (
    "import mapex.cli, mapex.stages, mapex.experiment, mapex.prune, mapex.train, mapex.evaluate, "
    "mapex.data.task, mapex.data.dataset"
)


def import_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="fetched dataset folder")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--job-seconds", type=float, default=23.5, help="wall time of one run job, for the share")
    args = parser.parse_args()

    floor, imports = [], []
    for _ in range(args.repeats):
        floor.append(import_seconds(FLOOR))
        imports.append(import_seconds(RUN_IMPORTS))
    floor_s, imports_s = statistics.median(floor), statistics.median(imports)

    from mapex.config import load_params
    from mapex.data import BoxDataset, eval_transform
    from mapex.data.task import load_task_data
    from mapex.pipeline import task_classes, task_names

    params = load_params(args.params)
    started = time.perf_counter()
    task = load_task_data(params, args.data, task_classes(params, task_names(params)[0]))
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    for split in (task.task_train, task.task_val, task.task_test):
        BoxDataset(split, eval_transform(params["data"]["image_size"]), cache=True)  # decodes every image
    decode_s = time.perf_counter() - started
    images = len(task.task_train) + len(task.task_val) + len(task.task_test)

    fixed = imports_s + index_s + decode_s
    print(f"python + {FLOOR!r}: {floor_s:.2f} s (median of {args.repeats})")
    print(f"imports of a `mapex run` job: {imports_s:.2f} s = {imports_s / floor_s:.2f} x the floor")
    print(f"task index (load_task_data): {index_s:.2f} s")
    print(f"decoding the task's {images} images: {decode_s:.2f} s")
    print(
        f"fixed cost of a run job: {fixed:.2f} s, {100 * fixed / args.job_seconds:.0f} % of a {args.job_seconds} s job"
    )


if __name__ == "__main__":
    main()
