"""The end-to-end trees: copies of the repository with the CI config as params.yaml, run through
Snakemake or DVC (tests/test_workflow_snakemake.py, tests/test_workflow_dvc.py), and what the
tests read from them."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml

from conftest import REPO
from mapex.pipeline import run_ids

CI_CONFIG = "config/ci.yaml"
FIGURES = [
    "accuracy_vs_ratio",
    "accuracy_vs_macs",
    "paired_differences",
    "sanity_check",
    "layer_sensitivity",
    "filters_per_layer",
    "response_maps",
    "samples_study",
    "training_curves",
]
ONE_BASELINE = {"extra_baseline_seeds": []}
"""The trees run the sanity check on the one baseline: a further one costs a training and a sanity
job per task in each tree and a data walk per stage in every `dvc status`. That the further
baselines' rules and stages run the same commands on the same files, and rerun alike, is checked
by tests/test_pipeline.py and the param changes of tests/test_workflow_snakemake.py; that the
commands do their work, by tests/test_cli.py."""
TABLES = ["summary", "comparisons", "sanity", "sanity_baselines", "latency"]


def copy_repo(dest: Path) -> Path:
    """The repository's files as a fresh clone would have them, with the CI config as params.yaml.

    Both orchestrators then read the same params.yaml, as they do for a user.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to(source.readlink())
        elif source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    shutil.copy(dest / CI_CONFIG, dest / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return _commit_all(dest, "copy")


def _commit_all(root: Path, message: str) -> Path:
    for command in (
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", message],
    ):
        subprocess.run(command, cwd=root, check=True)
    return root


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def assert_results_complete(root: Path) -> pd.DataFrame:
    params = yaml.safe_load((root / "params.yaml").read_text())
    table = pd.read_csv(root / "results/tables/summary.csv")
    assert set(table["criterion"]) == {"none", *params["prune"]["criteria"]}
    assert set(table["task"]) == {"pooled", *(task["name"] for task in params["data"]["tasks"])}
    markdown = (root / "results/tables/summary.md").read_text()
    for criterion in params["prune"]["criteria"]:
        assert criterion in markdown
    for name in TABLES:
        assert (root / "results/tables" / f"{name}.md").stat().st_size > 100, name
    sanity = pd.read_csv(root / "results/tables/sanity.csv")
    assert set(sanity["criterion"]) == set(params["sanity"]["criteria"])
    over_baselines = pd.read_csv(root / "results/tables/sanity_baselines.csv")
    seeds = [params["train"]["seed"], *params["sanity"]["extra_baseline_seeds"]]
    assert [f"seed {seed}" for seed in seeds] == [c for c in over_baselines.columns if c.startswith("seed ")]
    assert set(over_baselines["criterion"]) == set(params["sanity"]["criteria"])
    assert (over_baselines["n_baselines"] == len(seeds)).all()
    assert over_baselines["low"].notna().all() if len(seeds) > 1 else over_baselines["low"].isna().all()
    for figure in FIGURES:
        for suffix in (".png", ".pdf"):
            assert (root / "results/figures" / f"{figure}{suffix}").stat().st_size > 1000, figure
    return table


def snakemake_build(root: Path) -> Path:
    with_params(copy_repo(root), sanity=ONE_BASELINE)
    run(["snakemake", "--cores", "2"], root)
    shutil.copytree(root / "results/runs", snapshot(root) / "runs")
    shutil.copy(root / "results/tables/summary.csv", snapshot(root) / "summary.csv")
    return root


def snapshot(root: Path) -> Path:
    """The run files and the summary table right after the build (the tree changes as its tests run)."""
    return root.parent / f"{root.name}-snapshot"


def run_files(runs: Path, params: dict) -> dict[str, dict | None]:
    """Each run file of the study ``params`` describes under ``runs`` (a ``results/runs`` folder; None
    where there is none) by run id, without its ``env`` (machine and thread count: Snakemake gives
    each job its ``threads``, DVC leaves torch its default)."""
    files = {run_id: runs / f"{run_id}.json" for run_id in run_ids(params)}
    return {
        run_id: {key: value for key, value in json.loads(path.read_text()).items() if key != "env"}
        if path.is_file()
        else None
        for run_id, path in files.items()
    }


def with_params(root: Path, **sections: dict) -> Path:
    """Update keys of sections of the tree's params.yaml (``prune={"ratios": [0.3]}``) and commit it."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return _commit_all(root, "params")


def results(root: Path) -> dict[str, str]:
    """What a killed and resumed pipeline must reproduce exactly: every run's file and the tables."""
    files = [
        *(root / "results/runs").rglob("*.json"),
        *(root / "results/tables" / f"{name}.csv" for name in ("summary", "comparisons", "sanity")),
    ]
    return {str(path.relative_to(root)): path.read_text() for path in sorted(files)}


def kill_mid_run(command: list[str], cwd: Path) -> Path:
    """Start an orchestrator; once it has a `mapex run` job under way, SIGKILL it and every process
    under it (no clean-up can run). Returns the results file of the job that was killed."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orchestrator = psutil.Process(process.pid)
    deadline = time.monotonic() + 600
    while (job := _mapex_run_under(orchestrator)) is None:
        assert process.poll() is None, f"{' '.join(command)} ended before a run job started"
        assert time.monotonic() < deadline, f"{' '.join(command)} started no run job"
        time.sleep(0.05)
    time.sleep(1.0)  # into the job: past start-up, before its outputs are written
    orchestrator.suspend()
    for victim in [*orchestrator.children(recursive=True), orchestrator]:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    return cwd / job[job.index("--metrics") + 1]


def _mapex_run_under(orchestrator: psutil.Process) -> list[str] | None:
    """The command line of a `mapex run` process under the orchestrator (not its shell), if any."""
    for child in orchestrator.children(recursive=True):
        try:
            command = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if "run" in command and "--metrics" in command:
            return command
    return None
