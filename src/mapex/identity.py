"""What made a file: the identity that scores, checkpoints and models carry, and its check.

Every file a stage writes for another stage holds, in its ``meta``, the keys that say what it was
made from (architecture, stem, number of classes, criterion, fingerprints of the baseline file and
of the data settings). A consumer states what it expects and :func:`check_identity` refuses a file
made from something else, in one line that names the file and every key that differs, instead of
silently pruning a ResNet-18 with ResNet-34 scores or resuming on other data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapex.io import UserError, load_torch

DIGITS = 16
"""Hex digits kept of a sha256: enough to tell files and settings apart, short enough to read."""


def fingerprint(value: Any) -> str:
    """A short stable digest of a JSON-able value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGITS]


def file_fingerprint(path: str | os.PathLike) -> str:
    """A short digest of a file's bytes: which baseline (or pruned model) a product was made from."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGITS]


def data_fingerprint(params: Mapping[str, Any]) -> str:
    """The data settings every stage's images depend on: the ``data`` section and the split seed."""
    return fingerprint({"data": params["data"], "split_seed": params["train"]["seed"]})


def same(a: Any, b: Any) -> bool:
    """Whether two identity values are equal as JSON (so ``1`` is not ``1.0`` nor ``True``).

    Safe for whatever a spoiled file holds (a tensor, a nested odd value): such a value is simply not
    equal to a plain one.
    """
    try:
        return fingerprint(a) == fingerprint(b)
    except (TypeError, ValueError):
        return False


def check_identity(meta: Mapping[str, Any], expected: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Raise one :class:`UserError` naming ``path`` and every key of ``expected`` that ``meta`` differs in."""
    differences = [
        f"{key} is {_short(meta[key])}, expected {_short(value)}" if key in meta else f"it has no {key}"
        for key, value in expected.items()
        if key not in meta or not same(meta[key], value)
    ]
    if differences:
        raise UserError(
            f"{path}: made from something else ({'; '.join(differences)}); "
            "regenerate it, or use the file made for these inputs"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_checked(
    path: str | os.PathLike, format: str, what: str, expect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A torch file of ``format`` (its ``format`` key) with a ``meta`` dict matching ``expect``.

    ``what`` names the kind of file in the error (``"a pruned model"``).
    """
    saved = load_torch(path)
    if not isinstance(saved, dict) or saved.get("format") != format or not isinstance(saved.get("meta"), dict):
        raise UserError(f"{path}: not {what} saved by mapex ({_found_format(saved)})")
    if expect:
        check_identity(saved["meta"], expect, path)
    return saved


def _found_format(saved: Any) -> str:
    if isinstance(saved, dict) and isinstance(saved.get("format"), str):
        return f"it is a {saved['format']} file"
    return f"it holds a {type(saved).__name__}" + (
        f" with keys {sorted(map(str, saved))[:6]}" if isinstance(saved, dict) else ""
    )
