"""End to end: the CI config through Snakemake and through `dvc repro`, and the two side by side.

These run the real pipeline (fetch, baseline training, every criterion, two ratios, fine-tuning,
evaluation, tables and figures) on a small subset, each in its own copy of the repository.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from conftest import REPO, dry_run_jobs, dvc_stage_files, same_files
from mapex.pipeline import UNPRUNED, run_ids

pytestmark = pytest.mark.e2e
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
TABLES = ["summary", "comparisons", "sanity", "latency"]


def _copy_repo(dest: Path) -> Path:
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
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "copy"],
    ):
        subprocess.run(command, cwd=dest, check=True)
    return dest


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _assert_results_complete(root: Path) -> pd.DataFrame:
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
    for figure in FIGURES:
        for suffix in (".png", ".pdf"):
            assert (root / "results/figures" / f"{figure}{suffix}").stat().st_size > 1000, figure
    return table


@pytest.fixture(scope="module")
def snakemake_tree(tmp_path_factory) -> Path:
    root = _copy_repo(tmp_path_factory.mktemp("snakemake"))
    _run(["snakemake", "--cores", "2"], root)
    return root


@pytest.fixture(scope="module")
def dvc_tree(tmp_path_factory) -> Path:
    root = _copy_repo(tmp_path_factory.mktemp("dvc"))
    _run(["dvc", "repro"], root)
    return root


def test_snakemake_produces_every_table_and_figure(snakemake_tree):
    _assert_results_complete(snakemake_tree)


def test_dvc_repro_produces_the_same_numbers(snakemake_tree, dvc_tree):
    snake = _assert_results_complete(snakemake_tree).set_index(["task", "criterion", "ratio"])
    dvc = _assert_results_complete(dvc_tree).set_index(["task", "criterion", "ratio"])
    columns = ["top1_pct_mean", "top1_pct_low", "top1_pct_high", "params_m_mean", "macs_m_mean"]
    pd.testing.assert_frame_equal(snake[columns].sort_index(), dvc[columns].sort_index())


def test_snakemake_killed_during_a_forced_rerun_loses_nothing(snakemake_tree):
    """SIGKILL of Snakemake and its job: the next plain run rebuilds the deleted run and the tables."""
    before = _results(snakemake_tree)
    params = yaml.safe_load((snakemake_tree / "params.yaml").read_text())
    run = next(run for run in run_ids(params) if f"/{UNPRUNED}/" not in run)
    metrics = _kill_mid_run(["snakemake", "--cores", "1", "--forcerun", f"results/runs/{run}.json"], snakemake_tree)
    assert metrics == snakemake_tree / f"results/runs/{run}.json" and not metrics.exists()
    _run(["snakemake", "--unlock"], snakemake_tree)
    _run(["snakemake", "--cores", "2"], snakemake_tree)
    assert _results(snakemake_tree) == before
    assert (snakemake_tree / f"work/models/{run}.pt").exists()
    assert "Nothing to be done" in _run(["snakemake", "-n"], snakemake_tree)


def test_dvc_repro_killed_mid_stage_loses_nothing(dvc_tree):
    """SIGKILL of `dvc repro` and its stage: the next plain `dvc repro` rebuilds it."""
    before = _results(dvc_tree)
    stages = _run(["dvc", "stage", "list", "--name-only"], dvc_tree).split()
    stage = next(name for name in stages if name.startswith("run@"))
    metrics = _kill_mid_run(["dvc", "repro", "--force", "--single-item", stage], dvc_tree)
    assert not metrics.exists()
    _run(["dvc", "repro"], dvc_tree)
    assert _results(dvc_tree) == before
    assert "up to date" in _run(["dvc", "status"], dvc_tree)


def test_after_snakemake_dvc_commit_then_repro_retrains_nothing(snakemake_tree):
    model = snakemake_tree / "work/baseline/model.pt"
    stamp = model.stat().st_mtime_ns
    _run(["dvc", "commit", "-f"], snakemake_tree)
    output = _run(["dvc", "repro"], snakemake_tree)
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
    _run(["dvc", "commit", "-f"], snakemake_tree)
    stages = dvc_stage_files(snakemake_tree)
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
            snake = {
                _stage_of(job, stages)
                for job in dry_run_jobs(_run(["snakemake", "-n"], snakemake_tree))
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
    assert "Nothing to be done" in _run(["snakemake", "-n"], snakemake_tree)


def test_after_dvc_repro_snakemake_finds_nothing_to_do(dvc_tree):
    output = _run(["snakemake", "-n"], dvc_tree)
    assert "Nothing to be done" in output, output[-3000:]


def test_dvc_push_and_pull_round_trip_the_models(dvc_tree):
    import hashlib

    model = dvc_tree / "work/baseline/model.pt"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    _run(["dvc", "push"], dvc_tree)
    shutil.rmtree(dvc_tree / ".dvc/cache")
    model.unlink()
    _run(["dvc", "pull"], dvc_tree)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    assert "up to date" in _run(["dvc", "status"], dvc_tree)


def test_snakemake_report_bundles_the_figures(snakemake_tree):
    _run(["snakemake", "--report", "results/report.html"], snakemake_tree)
    assert (snakemake_tree / "results/report.html").stat().st_size > 100_000


def test_dvc_exp_run_sets_a_param_and_reruns_only_what_reads_it(dvc_tree):
    import re

    reps = yaml.safe_load((dvc_tree / "params.yaml").read_text())["evaluate"]["latency_reps"] + 1
    output = _run(["dvc", "exp", "run", "-S", f"evaluate.latency_reps={reps}"], dvc_tree)
    assert set(re.findall(r"Running stage '([a-z_]+)", output)) == {"latency", "report"}, output[-3000:]
    assert yaml.safe_load((dvc_tree / "params.yaml").read_text())["evaluate"]["latency_reps"] == reps
    assert _run(["dvc", "exp", "list", "--name-only"], dvc_tree).split(), "no experiment recorded"
    _assert_results_complete(dvc_tree)


def test_adding_a_ratio_under_dvc_reruns_only_the_new_stages(dvc_tree):
    import json

    params = yaml.safe_load((dvc_tree / "params.yaml").read_text())
    params["prune"]["ratios"].append(0.45)
    (dvc_tree / "params.yaml").write_text(yaml.safe_dump(params))
    changed = json.loads(_run(["dvc", "status", "--json"], dvc_tree).strip().splitlines()[-1])
    runs = len(params["prune"]["criteria"]) * len(params["data"]["tasks"]) * len(params["seeds"])
    new_runs = [name for name in changed if name.startswith("run@")]
    assert len(new_runs) == runs and all("-0.45-" in name for name in new_runs), sorted(changed)
    # the report's params changed; the latency table depends on the runs' folders, which change only
    # once the new runs have written into them, so `dvc repro` reaches it then, not `dvc status` now
    others = sorted({name.split("@")[0] for name in changed if not name.startswith("run@")})
    assert others == ["report"], sorted(changed)


def test_adding_a_ratio_reruns_only_the_new_runs_and_the_report(snakemake_tree):
    params = yaml.safe_load((snakemake_tree / "params.yaml").read_text())
    params["prune"]["ratios"].append(0.45)
    (snakemake_tree / "params.yaml").write_text(yaml.safe_dump(params))  # in place; keys reordered too
    output = _run(["snakemake", "-n"], snakemake_tree)
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


def _results(root: Path) -> dict[str, str]:
    """What a killed and resumed pipeline must reproduce exactly: every run's file and the tables."""
    files = [
        *(root / "results/runs").rglob("*.json"),
        *(root / "results/tables" / f"{name}.csv" for name in ("summary", "comparisons", "sanity")),
    ]
    return {str(path.relative_to(root)): path.read_text() for path in sorted(files)}


def _kill_mid_run(command: list[str], cwd: Path) -> Path:
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


def _stage_of(job: dict[str, str], stages: dict[str, tuple[frozenset[str], frozenset[str]]]) -> str:
    outputs = set(job["output"].split(", "))
    return next(name for name, (_, outs) in stages.items() if same_files(outputs, outs))


def _changed_stages(root: Path) -> set[str]:
    import json

    return set(json.loads(_run(["dvc", "status", "--json"], root).strip().splitlines()[-1]))


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
