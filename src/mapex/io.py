"""Files, devices, seeds and user-facing errors: the plumbing every stage shares.

Every file the project writes goes through :func:`atomic_path`, so a killed stage never leaves a
half-written output that a later stage (or Snakemake/DVC) would trust.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class UserError(Exception):
    """A problem with the user's input (file, key, value); printed as one line, no traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and folders: whatever the caller creates at the temporary path replaces
    ``path`` in one ``os.replace``. On any exception the temporary is removed and ``path``
    is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            _remove(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """``rows`` (dicts with the first row's keys) as CSV, as pandas' ``to_csv(index=False)`` writes them
    (``None`` as an empty cell), without importing pandas: short jobs write their history this way."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike) -> Any:
    """Load a file written by :func:`save_torch` onto the CPU, tensors and plain containers only.

    ``weights_only=True``: a crafted file cannot run code while being read. Anything that is not
    such a file (empty, truncated, text, an image, a plain pickle, a whole-module pickle) is a
    one-line :class:`UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: {_unsafe_content(str(err))}") from err
    except EOFError as err:
        raise UserError(f"{path}: empty or truncated, not a torch file") from err
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a torch file written by mapex, or truncated ({_first_line(err)})") from err


OLD_FORMAT_MODULES = ("torch.", "torchvision.", "mapex.", "torch_pruning.")
"""Classes a whole-module pickle of an older mapex refers to (its models, not user code)."""


def _unsafe_content(message: str) -> str:
    """Why the weights-only unpickler refused a file, in one line."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found is None:
        return "not a torch file written by mapex (unreadable as tensors only)"
    name = found.group(1)
    if name.startswith(OLD_FORMAT_MODULES):
        return (
            f"a whole-module pickle ({name}) as older mapex versions wrote; it is not loaded, since "
            "unpickling can run code: delete it and rerun the stage that wrote it"
        )
    return f"refers to the Python object {name}, which loading would have to run; not loaded"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text[:160]


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks ``cuda``, then ``mps``, then the CPU; anything else is taken as asked."""
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device '{requested}' asked for, but no CUDA device is available")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool, training: bool = False) -> contextlib.AbstractContextManager:
    """Mixed precision (the ``amp`` param): bfloat16 autocast on CUDA, and on a CPU with bfloat16
    arithmetic units (:func:`cpu_has_bfloat16`), where it is nearly twice float32's speed; float16
    where the GPU has no bfloat16, for inference only (training in float16 would need loss scaling).
    Off elsewhere: an emulated bfloat16 would be slower than float32."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext() if training else torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_has_bfloat16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_bfloat16() -> bool:
    """Whether this x86 CPU computes in bfloat16 natively (AVX-512 BF16 or AMX; the kernels oneDNN uses).

    Read once per process: :func:`autocast` asks at every training step."""
    return bool(set(cpu_info("flags").split()) & {"avx512_bf16", "amx_bf16"})


def cpu_info(key: str) -> str:
    """A field of the first processor in /proc/cpuinfo (e.g. ``model name``, ``flags``); '' where there is none."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the core
        pass
