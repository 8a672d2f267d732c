"""Reading and validating params.yaml: one schema for Snakemake, DVC and the CLI."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mapex.io import UserError

SCHEMA_FILE = "params.schema.yaml"


def _is_integer(checker: jsonschema.TypeChecker, instance: Any) -> bool:
    """JSON Schema counts ``1.0`` as an integer; YAML's ``1.0`` is a float, which range() and
    DataLoader refuse later, so only Python ints (not bools) are integers here."""
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def load_schema() -> dict[str, Any]:
    text = resources.files("mapex").joinpath("schemas", SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def _location(error: jsonschema.ValidationError) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(top level)"


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Check ``params`` against the schema; raise one UserError naming the key and the problem.

    The first error in document order is reported, so the message points at one key the user
    can fix (``prune.ratios[1]: 1.5 is greater than or equal to the maximum of 1``).
    """
    validator = StrictValidator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        error = errors[0]
        raise UserError(f"{source}: {_location(error)}: {error.message}")
    params = with_defaults(params)
    _check_names(params, source)
    return params


def _check_names(params: dict[str, Any], source: str) -> None:
    """What the schema cannot say: task names are unique, every row resolves to a criterion and options."""
    from mapex.pipeline import check_rows, task_names

    names = task_names(params)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise UserError(f"{source}: data.tasks: task name '{duplicated[0]}' is used twice")
    try:
        check_rows(params)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def with_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """Fill the optional keys the schema gives defaults for (the CLI relies on them)."""
    data = dict(params["data"])
    data.setdefault("label_rule", "largest")
    data.setdefault("problems", {})
    data.setdefault("max_per_class", None)
    data.setdefault("max_test_per_class", None)
    model = {"stem": "imagenet", "pretrained": False, **params["model"]}
    prune = {"round_to": 8, **params["prune"]}
    return {**params, "data": data, "model": model, "prune": prune}


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, train, ...)")
    return validate_params(params, str(path))
