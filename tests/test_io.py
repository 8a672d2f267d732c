"""Atomic outputs: a stage that dies mid-write leaves no output a later stage would trust."""
import subprocess
import sys

import pytest

from mapex.io import UserError, atomic_path, pick_device, read_json, write_json


def test_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    target = tmp_path / "scores.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_output(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"top1": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError("killed")
    assert read_json(target) == {"top1": 0.5}


def test_sigkill_during_a_write_leaves_no_output(tmp_path):
    target = tmp_path / "scores.pt"
    code = (
        "import os, signal, sys\n"
        "from mapex.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code])
    assert result.returncode == -9
    assert not target.exists()


def test_folders_are_replaced_whole(tmp_path):
    target = tmp_path / "dataset"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"


def test_read_json_names_the_missing_file(tmp_path):
    with pytest.raises(UserError, match="nowhere.json: file not found"):
        read_json(tmp_path / "nowhere.json")


def test_auto_device_is_the_cpu_without_accelerators():
    import torch

    if torch.cuda.is_available():
        assert pick_device().type == "cuda"
    else:
        assert pick_device().type in ("cpu", "mps")
    assert pick_device("cpu").type == "cpu"
