"""The code stays linted and formatted (ruff, configured in pyproject.toml), the workflow lint-free."""

import subprocess

from conftest import REPO

PYTHON = ["src", "tests", "benchmarks"]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", *PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_formatted():
    result = _run("ruff", "format", "--check", *PYTHON)
    assert result.returncode == 0, f"run `ruff format {' '.join(PYTHON)}`:\n{result.stdout}{result.stderr}"


def test_snakemake_lint_is_clean():
    result = _run("snakemake", "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
