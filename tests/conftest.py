import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO / "data" / "tiny-imagenet-20.tar.gz"
ARCHIVE_SHA256 = "7a68c0f51ad5d8abc162dd98fe03c2ad3ab68834e9a68c1704d885ec22129aad"

# Subprocesses (snakemake, dvc, mapex) must come from the same environment as the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
os.environ.setdefault("MPLBACKEND", "Agg")


def dry_run_jobs(output: str) -> list[dict[str, str]]:
    """Each job of a Snakemake dry run's listing: {"rule", and its fields: "input", "output", "reason", ...}."""
    jobs = []
    for block in output.split("\nrule ")[1:]:
        lines = block.split("\nShell command:")[0].splitlines()
        fields = dict(line.strip().split(": ", 1) for line in lines[1:] if ": " in line)
        jobs.append({"rule": block.split(":", 1)[0], **fields})
    return jobs


def same_files(files: set[str], tracked: frozenset[str]) -> bool:
    """Every file is a tracked path or under one, and every tracked path is or holds one of the files
    (DVC may track as a whole the folder that holds a rule's files)."""

    def covers(path: str, file: str) -> bool:
        return file == path or file.startswith(f"{path}/")

    return all(any(covers(path, file) for path in tracked) for file in files) and all(
        any(covers(path, file) for file in files) for path in tracked
    )


def dvc_stage_files(root: Path) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Each DVC stage of ``root`` by name: (its file deps, its outputs: outs, metrics and plots)."""
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.name: (
                frozenset(dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)),
                frozenset(out.def_path for out in stage.outs),
            )
            for stage in repo.index.stages
        }


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    """The embedded archive, extracted once per test session."""
    from mapex.data import fetch

    return fetch(str(ARCHIVE), ARCHIVE_SHA256, tmp_path_factory.mktemp("data") / "tiny-imagenet-20")


@pytest.fixture(scope="session")
def snakemake_tree(tmp_path_factory, worker_id) -> Path:
    """The CI config's pipeline run by Snakemake in a copy of the repository, once per test run.

    Under pytest-xdist the workers share it: whichever asks first builds it, under a file lock, in
    the run's folder above every worker's own (tests/test_workflow_snakemake.py and the DVC
    comparison in tests/test_workflow_dvc.py use it).
    """
    from filelock import FileLock

    from workflow_trees import snakemake_build, snapshot

    if worker_id == "master":  # no xdist
        return snakemake_build(tmp_path_factory.mktemp("snakemake"))
    shared = tmp_path_factory.getbasetemp().parent
    root = shared / "snakemake"
    with FileLock(shared / "snakemake.lock"):
        if not (snapshot(root) / "summary.csv").is_file():
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(snapshot(root), ignore_errors=True)
            root.mkdir()
            snakemake_build(root)
    return root
