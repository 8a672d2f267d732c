import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO / "data" / "tiny-imagenet-20.tar.gz"
ARCHIVE_SHA256 = "7a68c0f51ad5d8abc162dd98fe03c2ad3ab68834e9a68c1704d885ec22129aad"

# Subprocesses (snakemake, dvc, mapex) must come from the same environment as the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    """The embedded archive, extracted once per test session."""
    from mapex.data import fetch

    return fetch(str(ARCHIVE), ARCHIVE_SHA256, tmp_path_factory.mktemp("data") / "tiny-imagenet-20")
