"""Atomic outputs: a stage that dies mid-write leaves no output a later stage would trust."""

import subprocess
import sys

import pytest
import torch

from mapex.io import UserError, atomic_path, autocast, cpu_has_bfloat16, pick_device, read_json, write_json, write_rows


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


class _CreatesFile:
    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_torch_runs_no_code_from_the_file(tmp_path):
    import torch

    from mapex.io import load_torch

    torch.save({"x": _CreatesFile(tmp_path / "pwned")}, tmp_path / "crafted.pt")
    with pytest.raises(UserError, match=r"crafted.pt: refers to the Python object .*open.*not loaded") as error:
        load_torch(tmp_path / "crafted.pt")
    assert not (tmp_path / "pwned").exists()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty or truncated"),
        (b"epochs: 3\n", "not a torch file"),
        (b"PK\x03\x04" + bytes(64), "not a torch file"),
    ],
)
def test_load_torch_names_a_file_that_is_no_torch_file(tmp_path, content, message):
    from mapex.io import load_torch

    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        load_torch(tmp_path / "bad.pt")
    assert str(error.value).startswith(f"{tmp_path / 'bad.pt'}: ") and "\n" not in str(error.value)


def test_load_torch_reads_tensors_and_plain_values(tmp_path):
    import torch

    from mapex.io import load_torch, save_torch

    save_torch(tmp_path / "ok.pt", {"w": torch.ones(2), "meta": {"arch": "x", "ratio": 0.5, "kept": [1, 2]}})
    loaded = load_torch(tmp_path / "ok.pt")
    assert torch.equal(loaded["w"], torch.ones(2)) and loaded["meta"]["kept"] == [1, 2]


@pytest.mark.parametrize(
    "flags, native", [("fpu sse avx2 avx512f", False), ("avx512f avx512_bf16", True), ("amx_bf16", True)]
)
def test_bfloat16_units_are_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr("mapex.io.cpu_info", lambda key: flags if key == "flags" else "")
    cpu_has_bfloat16.cache_clear()
    try:
        assert cpu_has_bfloat16() is native
    finally:
        cpu_has_bfloat16.cache_clear()  # the next call reads this machine's flags again


@pytest.mark.parametrize("native", [False, True])
def test_amp_autocasts_the_cpu_only_where_it_computes_in_bfloat16(monkeypatch, native):
    monkeypatch.setattr("mapex.io.cpu_has_bfloat16", lambda: native)
    cpu = torch.device("cpu")
    with autocast(cpu, enabled=True):
        assert torch.is_autocast_enabled("cpu") is native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, enabled=False):
        assert not torch.is_autocast_enabled("cpu")


def test_write_rows_writes_what_pandas_writes(tmp_path):
    import pandas as pd

    rows = [
        {"epoch": 1, "loss": 1.0474787346522014, "val_top1": None, "seconds": 4.460088795000047},
        {"epoch": 2, "loss": 1.6879163932454287e-06, "val_top1": 0.76, "seconds": 3.0},
    ]
    write_rows(tmp_path / "h.csv", rows)
    assert (tmp_path / "h.csv").read_text() == pd.DataFrame(rows).to_csv(index=False)
    assert (tmp_path / "h.csv").read_text().splitlines()[1] == "1,1.0474787346522014,,4.460088795000047"
