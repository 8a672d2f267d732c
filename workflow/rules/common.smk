# Setup shared by every rule: the params file, its validation, the paths and the run list.
import json
import os

from snakemake.utils import validate

from mapex.config import load_params
from mapex.io import pick_device
from mapex.pipeline import UNPRUNED, row, run_ids, task_names


configfile: "params.yaml"


# The CLI reads the params file itself, so every rule passes it the file given with --configfile
# (else params.yaml), and `config` is exactly that file, not a merge of the two.
PARAMS = os.path.relpath(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params.yaml"
# A cluster profile says `config: [gpu_jobs=1]`: its submit host has no GPU to detect.
GPU_JOBS = config.get("gpu_jobs")
config.clear()
# Validated (one line naming a bad key), with keys sorted so that Snakemake's params trigger
# reacts to changed values, not to the order of keys in the file.
config.update(json.loads(json.dumps(load_params(PARAMS), sort_keys=True)))
validate(config, "../schemas/params.schema.yaml")

DATA = f"work/data/{config['data']['name']}"
BASELINE = "work/baseline/model.pt"
SCORES = "work/scores/{task}/{criterion}/s{seed}.pt"
# The sanity check's further baselines (sanity.extra_baseline_seeds), one per train.seed.
EXTRA_BASELINE = "work/baselines/seed{train_seed}/model.pt"
EXTRA_BASELINE_RESULTS = "results/baselines/seed{train_seed}"
EXTRA_SANITY = "results/sanity/seed{train_seed}/{task}.csv"
# The params a baseline's training depends on: the pipeline's own and each further one.
TRAINING_PARAMS = {"data": config["data"], "model": config["model"], "train": config["train"]}
# The params a sanity job's results depend on; of its section, not the list of further baselines,
# so that adding one runs only that baseline's jobs.
SANITY_PARAMS = {
    "data": config["data"],
    "statistics": config["statistics"],
    "criterion_options": config["criterion_options"],
    "variants": config["variants"],
    "global_pruning": config["prune"]["global"],
    "round_to": config["prune"]["round_to"],
    "sanity": {key: value for key, value in config["sanity"].items() if key != "extra_baseline_seeds"},
    "seeds": config["seeds"],
}
TASKS = task_names(config)
FIRST_SEED = config["seeds"][0]
# Jobs that compute on the device ask for this much of the `gpu` resource (times `nproc` for the
# baseline and the runs), which the default profile caps at 1: one job at a time on a local GPU or
# MPS device. On a CPU they ask for none, so `--cores` alone decides how many single-threaded jobs
# run side by side. The SLURM profile sets `gpu_jobs=1`: every device job gets its GPUs there.
GPU = int(
    GPU_JOBS
    if GPU_JOBS is not None
    else config["device"] != "cpu" and (config["device"] != "auto" or pick_device().type != "cpu")
)


def scores_of(wildcards):
    """A run's scores file; the unpruned reference has none."""
    if wildcards.criterion == UNPRUNED:
        return []
    return SCORES.format(task=wildcards.task, criterion=wildcards.criterion, seed=wildcards.seed)


def scoring_params(wildcards):
    """What a row's scores depend on (its criterion and options): editing another row reruns nothing here."""
    spec = row(config, wildcards.criterion)
    return {"criterion": spec.criterion, "options": spec.options}


def pruning_params(wildcards):
    """What a run's pruning depends on besides its scores; the unpruned reference depends on none of it."""
    if wildcards.criterion == UNPRUNED:
        return {}
    spec = row(config, wildcards.criterion)
    return {**scoring_params(wildcards), "global": spec.global_ranking, "round_to": config["prune"]["round_to"]}


def extra_sanity_files():
    """The sanity check's CSVs on the further baselines: one per task and extra train.seed."""
    return expand(EXTRA_SANITY, task=TASKS, train_seed=config["sanity"]["extra_baseline_seeds"])


def scores_option(wildcards, input):
    return f"--scores {input.scores}" if input.scores else ""


def score_files():
    """Every pruned run's scores file: one per task, row and seed."""
    return expand(SCORES, task=TASKS, criterion=config["prune"]["criteria"], seed=config["seeds"])


def run_files(folder, suffix):
    return [f"{folder}/{run}{suffix}" for run in run_ids(config)]


wildcard_constraints:
    task="[a-z0-9][a-z0-9-]*",
    criterion="[a-z0-9][a-z0-9-]*",
    ratio="[0-9.]+",
    seed="[0-9]+",
    train_seed="[0-9]+",
