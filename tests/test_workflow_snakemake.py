"""End to end through Snakemake: the CI config's whole pipeline (fetch, baseline training, every
criterion, two ratios, fine-tuning, evaluation, tables and figures) on a small subset, in a copy of
the repository; a kill, a forced rerun, reruns after each param change against DVC's, a report.

The tree is built once per test run (``snakemake_tree`` in conftest.py); pytest-xdist
(``--dist loadfile``) runs this file and tests/test_workflow_dvc.py side by side on two workers.
"""

from pathlib import Path

import pytest
import yaml

from conftest import dry_run_jobs, dvc_stage_files, same_files
from mapex.pipeline import UNPRUNED, run_ids
from workflow_trees import assert_results_complete, kill_mid_run, results, run

pytestmark = pytest.mark.e2e


def test_snakemake_produces_every_table_and_figure(snakemake_tree):
    assert_results_complete(snakemake_tree)


def test_snakemake_killed_during_a_forced_rerun_loses_nothing(snakemake_tree):
    """SIGKILL of Snakemake and its job: the next plain run rebuilds the deleted run and the tables."""
    before = results(snakemake_tree)
    params = yaml.safe_load((snakemake_tree / "params.yaml").read_text())
    run_id = next(run_id for run_id in run_ids(params) if f"/{UNPRUNED}/" not in run_id)
    metrics = kill_mid_run(["snakemake", "--cores", "1", "--forcerun", f"results/runs/{run_id}.json"], snakemake_tree)
    assert metrics == snakemake_tree / f"results/runs/{run_id}.json" and not metrics.exists()
    run(["snakemake", "--unlock"], snakemake_tree)
    run(["snakemake", "--cores", "2"], snakemake_tree)
    assert results(snakemake_tree) == before
    assert (snakemake_tree / f"work/models/{run_id}.pt").exists()
    assert "Nothing to be done" in run(["snakemake", "-n"], snakemake_tree)


def test_after_snakemake_dvc_commit_then_repro_retrains_nothing(snakemake_tree):
    model = snakemake_tree / "work/baseline/model.pt"
    stamp = model.stat().st_mtime_ns
    run(["dvc", "commit", "-f"], snakemake_tree)
    output = run(["dvc", "repro"], snakemake_tree)
    assert "Running stage" not in output, output[-2000:]
    assert model.stat().st_mtime_ns == stamp


# One change per section (and per prune key) of params.yaml, each to another valid value.
PARAM_CHANGES = {
    "data.val_fraction": 0.25,
    "model.stem": "small",
    "device": "cpu",
    "workers": 1,
    "train.lr": 0.04,
    "finetune.lr": 0.02,
    "statistics.samples_per_class": 6,
    "criterion_options.map-ex.score": "fg",
    "variants.map-ex-contrast.field": "effective",
    "prune.round_to": 4,
    "prune.global": True,
    "sanity.random_draws": 3,
    "sanity.extra_baseline_seeds": [1, 2],
    "sensitivity.fraction": 0.4,
    "evaluate.latency_reps": 3,
    "samples_study.n_per_class": [1, 2],
    "response_maps.images": 3,
}
# DVC cannot name one row's options as a dependency: its scores and run stages depend on the whole of
# these sections, so a change reruns other rows' stages as well, where Snakemake reruns the rows it changes.
DVC_COARSER = ("criterion_options.", "variants.", "prune.global")


def test_snakemake_and_dvc_rerun_the_same_jobs_after_each_param_change(snakemake_tree):
    """The rerun triggers compared, not only the commands: after a change of one param, the jobs
    `snakemake -n` lists are the stages `dvc status` finds changed plus every stage downstream of them."""
    run(["dvc", "commit", "-f"], snakemake_tree)
    original = (snakemake_tree / "params.yaml").read_text()
    try:
        for key, value in PARAM_CHANGES.items():
            params = yaml.safe_load(original)
            *path, last = key.split(".")
            section = params
            for name in path:
                section = section[name]
            assert last in section and section[last] != value, key
            section[last] = value
            (snakemake_tree / "params.yaml").write_text(yaml.safe_dump(params))
            stages = dvc_stage_files(snakemake_tree)  # a change may add stages (another sanity baseline)
            snake = {
                _stage_of(job, stages)
                for job in dry_run_jobs(run(["snakemake", "-n"], snakemake_tree))
                if "output" in job
            }
            dvc = _with_downstream(_changed_stages(snakemake_tree), stages)
            if key.startswith(DVC_COARSER):
                # the other rows' scores and runs, and the latency table, which reads every run
                assert snake < dvc and {name.split("@")[0] for name in dvc - snake} <= {"scores", "run", "latency"}, key
            else:
                assert snake == dvc, (key, sorted(snake - dvc)[:3], sorted(dvc - snake)[:3])
    finally:
        (snakemake_tree / "params.yaml").write_text(original)
    assert "Nothing to be done" in run(["snakemake", "-n"], snakemake_tree)


def test_snakemake_report_bundles_the_figures(snakemake_tree):
    run(["snakemake", "--report", "results/report.html"], snakemake_tree)
    assert (snakemake_tree / "results/report.html").stat().st_size > 100_000


def test_adding_a_ratio_reruns_only_the_new_runs_and_the_report(snakemake_tree):
    params = yaml.safe_load((snakemake_tree / "params.yaml").read_text())
    params["prune"]["ratios"].append(0.45)
    (snakemake_tree / "params.yaml").write_text(yaml.safe_dump(params))  # in place; keys reordered too
    output = run(["snakemake", "-n"], snakemake_tree)
    stats = _job_counts(output)
    runs = len(params["prune"]["criteria"]) * len(params["data"]["tasks"]) * len(params["seeds"])
    assert stats == {"run": runs, "latency": 1, "report": 1, "default": 1}, stats


def _job_counts(dry_run_output: str) -> dict[str, int]:
    lines = dry_run_output.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _stage_of(job: dict[str, str], stages: dict[str, tuple[frozenset[str], frozenset[str]]]) -> str:
    outputs = set(job["output"].split(", "))
    return next(name for name, (_, outs) in stages.items() if same_files(outputs, outs))


def _changed_stages(root: Path) -> set[str]:
    import json

    return set(json.loads(run(["dvc", "status", "--json"], root).strip().splitlines()[-1]))


def _with_downstream(names: set[str], stages: dict[str, tuple[frozenset[str], frozenset[str]]]) -> set[str]:
    """``names`` and every stage that reads, directly or not, what one of them writes."""

    def reads(deps: frozenset[str], outs: frozenset[str]) -> bool:
        return any(dep == out or dep.startswith(f"{out}/") or out.startswith(f"{dep}/") for dep in deps for out in outs)

    reached = set(names)
    while more := {
        name
        for name, (deps, _) in stages.items()
        if name not in reached and any(reads(deps, stages[done][1]) for done in reached)
    }:
        reached |= more
    return reached
