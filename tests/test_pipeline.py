"""Snakemake and DVC must expand to the same commands for the same outputs, for every config."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, dry_run_jobs, dvc_stage_files, same_files
from mapex.config import load_params
from mapex.data.fetch import MARKER
from mapex.pipeline import ratio_tag, row, run_ids

CONFIGS = ["params.yaml", "config/ci.yaml"]


def _normalise(command: str) -> str:
    """Drop what legitimately differs: Snakemake's --threads and the params file's name."""
    command = re.sub(r"\s+--threads \d+", "", command)
    command = re.sub(r"--params \S+", "--params PARAMS", command)
    return " ".join(command.split())


def snakemake_commands(configfile: str) -> set[str]:
    result = subprocess.run(
        ["snakemake", "-n", "-p", "--forceall", "--configfile", configfile],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = (
        line.split(":", 1)[1].strip() for line in result.stdout.splitlines() if line.startswith("Shell command:")
    )
    return {_normalise(c) for c in commands if c != "None"}  # target rules have no command


def dvc_commands(configfile: str, tmp_path: Path) -> set[str]:
    from dvc.repo import Repo

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / configfile, tmp_path / "params.yaml")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        return {_normalise(stage.cmd) for stage in repo.index.stages}


@pytest.mark.parametrize("configfile", CONFIGS)
def test_snakemake_and_dvc_run_the_same_commands(configfile, tmp_path):
    snake = snakemake_commands(configfile)
    dvc = dvc_commands(configfile, tmp_path)
    assert snake == dvc, f"only Snakemake: {sorted(snake - dvc)[:3]}; only DVC: {sorted(dvc - snake)[:3]}"


@pytest.mark.parametrize("configfile", CONFIGS)
def test_every_rule_and_its_dvc_stage_make_and_read_thesame_files(configfile, tmp_path):
    """One DVC stage per job, with the same outputs and file deps."""
    jobs = [job for job in _dry_run_jobs("--configfile", configfile) if "output" in job]
    dvc_commands(configfile, tmp_path)  # the DVC project in tmp_path
    stages = dvc_stage_files(tmp_path)
    for job in jobs:
        outputs, inputs = (set(job.get(key, "").split(", ")) - {""} for key in ("output", "input"))
        matching = [name for name, (_, outs) in stages.items() if same_files(outputs, outs)]
        assert len(matching) == 1, f"rule {job['rule']} {sorted(outputs)[:2]}: DVC stages {matching}"
        deps = _marker_as_its_folder(stages[matching[0]][0])
        assert same_files(inputs, deps), (job["rule"], sorted(inputs)[:4], sorted(deps))
    assert len(stages) == len(jobs)


def _marker_as_its_folder(deps: frozenset[str]) -> frozenset[str]:
    """A DVC stage reads the fetched dataset through its marker where the rule reads the folder."""
    return frozenset(dep.removesuffix(f"/{MARKER}") for dep in deps)


@pytest.mark.parametrize("configfile", CONFIGS)
def test_dvc_stages_depend_on_the_fetch_marker_not_on_every_file_of_the_dataset(configfile, tmp_path):
    """So `dvc status` hashes the dataset's files once (fetch's output), not once per stage that reads it."""
    dvc_commands(configfile, tmp_path)
    stages = dvc_stage_files(tmp_path)
    folder = next(iter(stages["fetch"][1]))
    readers = {name for name, (deps, _) in stages.items() if f"{folder}/{MARKER}" in deps}
    assert {name for name, (deps, _) in stages.items() if folder in deps} == set()
    assert readers == {name for name in stages if name != "fetch"} - {"report"}, sorted(readers)[:5]


@pytest.mark.parametrize("configfile", CONFIGS)
def test_every_run_is_evaluated(configfile):
    params = load_params(REPO / configfile)
    commands = snakemake_commands(configfile)
    for run in run_ids(params):
        assert any(f"--metrics results/runs/{run}.json" in c for c in commands), run


def test_run_ids_cover_tasks_criteria_ratios_seeds_and_the_unpruned_reference():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prune"] = {"criteria": ["map-ex", "l1"], "ratios": [0.3, 0.5], "global": False}
    params["seeds"] = [0, 1]
    runs = run_ids(params)
    first, second = (task["name"] for task in params["data"]["tasks"][:2])
    assert runs[:2] == [f"{first}/none/r0/s0", f"{first}/none/r0/s1"]
    assert f"{first}/map-ex/r0.3/s1" in runs and f"{second}/l1/r0.5/s0" in runs
    assert len(runs) == len(params["data"]["tasks"]) * (2 + 2 * 2 * 2)


def test_rows_resolve_variants_options_and_global_ranking():
    params = load_params(REPO / "params.yaml")
    plain = row(params, "l1")
    assert (plain.criterion, plain.options, plain.global_ranking) == ("l1", {}, params["prune"]["global"])
    assert row(params, "map-ex").options == params["criterion_options"]["map-ex"]
    variant = row(params, "map-ex-global")
    assert variant.criterion == "map-ex" and variant.global_ranking
    assert variant.options == params["criterion_options"]["map-ex"]  # inherits the default variant's options
    contrast = row(params, "map-ex-contrast")
    assert contrast.options["score"] == "contrast" and not contrast.global_ranking


def test_schema_criteria_are_the_registered_ones_with_their_options():
    from mapex.config import load_schema
    from mapex.criteria import CRITERIA, criterion_options

    schema = load_schema()
    assert set(schema["$defs"]["criterion"]["enum"]) == set(CRITERIA)
    params = load_params(REPO / "config/full.yaml")
    for name, options in params["criterion_options"].items():
        assert set(options) == set(criterion_options(name)), name


def test_ratio_tag_matches_dvc_rendering():
    assert [ratio_tag(r) for r in (0.3, 0.5, 0.25, 0)] == ["0.3", "0.5", "0.25", "0"]


def _dry_run_with(tmp_path, edit) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    return subprocess.run(["snakemake", "-n", "--configfile", str(config)], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda p: p["prune"].update(ratios=[0.5, 1.5]),
            "prune.ratios[1]: 1.5 is greater than or equal to the maximum of 1",
        ),
        (lambda p: p["prune"]["criteria"].append("magic"), "criterion 'magic' is neither a registered criterion"),
        (lambda p: p["train"].update(epoch=3), "'epoch' was unexpected"),
    ],
)
def test_bad_params_stop_snakemake_before_any_work_naming_the_key(tmp_path, edit, expected):
    result = _dry_run_with(tmp_path, edit)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def _dry_run_jobs(*options: str) -> list[dict[str, str]]:
    output = subprocess.run(
        ["snakemake", "-n", "--forceall", *options], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return dry_run_jobs(output)


def test_on_a_cpu_device_jobs_hold_no_gpu_so_the_cores_run_them_side_by_side(tmp_path):
    """The default profile caps the `gpu` resource at 1 (one job at a time on a GPU); on a CPU,
    holding it would run every job alone on one core."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    jobs = [job for job in _dry_run_jobs("--configfile", str(config)) if job["rule"] in ("run", "scores", "sanity")]
    assert jobs
    for job in jobs:
        assert dict(item.split("=", 1) for item in job["resources"].split(", ")).get("gpu", "0") == "0", job


def test_slurm_profile_sends_gpu_rules_to_the_gpu_partition_with_their_threads():
    jobs = _dry_run_jobs("--workflow-profile", "workflow/profiles/slurm")
    assert jobs, "the dry run listed no job"
    gpu_rules = {"train_baseline", "scores", "run", "sanity", "sensitivity", "diagnose", "samples_study"}
    for job in jobs:
        resources = dict(item.split("=", 1) for item in job["resources"].split(", "))
        if job["rule"] in gpu_rules:
            assert (resources["slurm_partition"], resources["gpu"]) == ("gpu", "1"), job
            assert int(job["threads"]) == (8 if job["rule"] == "train_baseline" else 4), job
        elif job["rule"] == "latency":
            assert int(job["threads"]) == 8, job
        else:
            assert resources["slurm_partition"] == "cpu" and "gpu" not in resources, job


def test_slurm_profile_gives_the_baseline_and_the_runs_their_nproc_gpus(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["nproc"], params["finetune"]["nproc"] = 8, 2
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    jobs = _dry_run_jobs("--workflow-profile", "workflow/profiles/slurm", "--configfile", str(config))
    gpus = {job["rule"]: dict(item.split("=", 1) for item in job["resources"].split(", ")).get("gpu") for job in jobs}
    assert (gpus["train_baseline"], gpus["run"], gpus["scores"]) == ("8", "2", "1")


def test_the_report_reads_each_baselines_sanity_csvs_where_the_sanity_jobs_write_them():
    from mapex.pipeline import task_names
    from mapex.stages import _sanity_csvs

    params = load_params(REPO / "config/ci.yaml")
    jobs = _dry_run_jobs("--configfile", "config/ci.yaml")
    written = {path for job in jobs if job["rule"].startswith("sanity") for path in job["output"].split(", ")}
    per_baseline = _sanity_csvs(params, Path("results/sanity"), task_names(params))
    assert list(per_baseline) == ["seed 0", "seed 1"]
    assert {str(path) for paths in per_baseline.values() for path in paths} == written
