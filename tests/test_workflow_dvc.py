"""End to end through DVC: `dvc repro` from scratch gives the numbers Snakemake gives; a kill,
`dvc exp run`, push and pull, and an added ratio rerun only what they should.

DVC runs the CI config with fewer rows (``DVC_ROWS``) than Snakemake: that every row's stage runs
the command and reads and writes the files of its Snakemake rule is checked for every row of both
configs by tests/test_pipeline.py; here, that what DVC computes is Snakemake's, byte for byte.
Runs beside tests/test_workflow_snakemake.py under pytest-xdist (``--dist loadfile``); the one test
that needs the Snakemake tree reads its files as they were right after its build.
"""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_trees import (
    ONE_BASELINE,
    assert_results_complete,
    copy_repo,
    kill_mid_run,
    results,
    run,
    run_files,
    snapshot,
    with_params,
)

pytestmark = pytest.mark.e2e
DVC_ROWS = {"criteria": ["map-ex", "l1-global"], "ratios": [0.3]}  # and the unpruned row


@pytest.fixture(scope="module")
def dvc_tree(tmp_path_factory) -> Path:
    root = with_params(copy_repo(tmp_path_factory.mktemp("dvc")), prune=DVC_ROWS, sanity=ONE_BASELINE)
    run(["dvc", "repro"], root)
    return root


def test_dvc_repro_produces_the_same_numbers(dvc_tree, snakemake_tree):
    params = yaml.safe_load((dvc_tree / "params.yaml").read_text())
    dvc_runs = run_files(dvc_tree / "results/runs", params)
    assert len(dvc_runs) == 2 * len(DVC_ROWS["criteria"]) + 2  # two tasks, one ratio, and the unpruned row
    assert None not in dvc_runs.values()
    assert dvc_runs == run_files(snapshot(snakemake_tree) / "runs", params)
    dvc = assert_results_complete(dvc_tree).set_index(["task", "criterion", "ratio"])
    snake = pd.read_csv(snapshot(snakemake_tree) / "summary.csv").set_index(["task", "criterion", "ratio"])
    columns = ["top1_pct_mean", "top1_pct_low", "top1_pct_high", "params_m_mean", "macs_m_mean"]
    pd.testing.assert_frame_equal(dvc[columns].sort_index(), snake.loc[dvc.index, columns].sort_index())


def test_dvc_repro_killed_mid_stage_loses_nothing(dvc_tree):
    """SIGKILL of `dvc repro` and its stage: the next plain `dvc repro` rebuilds it."""
    before = results(dvc_tree)
    stages = run(["dvc", "stage", "list", "--name-only"], dvc_tree).split()
    stage = next(name for name in stages if name.startswith("run@"))
    metrics = kill_mid_run(["dvc", "repro", "--force", "--single-item", stage], dvc_tree)
    assert not metrics.exists()
    run(["dvc", "repro"], dvc_tree)
    assert results(dvc_tree) == before
    assert "up to date" in run(["dvc", "status"], dvc_tree)


def test_after_dvc_repro_snakemake_finds_nothing_to_do(dvc_tree):
    output = run(["snakemake", "-n"], dvc_tree)
    assert "Nothing to be done" in output, output[-3000:]


def test_dvc_push_and_pull_round_trip_the_models(dvc_tree):
    import hashlib

    model = dvc_tree / "work/baseline/model.pt"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    run(["dvc", "push"], dvc_tree)
    shutil.rmtree(dvc_tree / ".dvc/cache")
    model.unlink()
    run(["dvc", "pull"], dvc_tree)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    assert "up to date" in run(["dvc", "status"], dvc_tree)


def test_dvc_exp_run_sets_a_param_and_reruns_only_what_reads_it(dvc_tree):
    import re

    reps = yaml.safe_load((dvc_tree / "params.yaml").read_text())["evaluate"]["latency_reps"] + 1
    output = run(["dvc", "exp", "run", "-S", f"evaluate.latency_reps={reps}"], dvc_tree)
    assert set(re.findall(r"Running stage '([a-z_]+)", output)) == {"latency", "report"}, output[-3000:]
    assert yaml.safe_load((dvc_tree / "params.yaml").read_text())["evaluate"]["latency_reps"] == reps
    assert run(["dvc", "exp", "list", "--name-only"], dvc_tree).split(), "no experiment recorded"
    assert_results_complete(dvc_tree)


def test_adding_a_ratio_under_dvc_reruns_only_the_new_stages(dvc_tree):
    import json

    params = yaml.safe_load((dvc_tree / "params.yaml").read_text())
    params["prune"]["ratios"].append(0.45)
    (dvc_tree / "params.yaml").write_text(yaml.safe_dump(params))
    changed = json.loads(run(["dvc", "status", "--json"], dvc_tree).strip().splitlines()[-1])
    runs = len(params["prune"]["criteria"]) * len(params["data"]["tasks"]) * len(params["seeds"])
    new_runs = [name for name in changed if name.startswith("run@")]
    assert len(new_runs) == runs and all("-0.45-" in name for name in new_runs), sorted(changed)
    # the report's params changed; the latency table depends on the runs' folders, which change only
    # once the new runs have written into them, so `dvc repro` reaches it then, not `dvc status` now
    others = sorted({name.split("@")[0] for name in changed if not name.startswith("run@")})
    assert others == ["report"], sorted(changed)
