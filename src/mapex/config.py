"""Reading and validating params.yaml: one schema for Snakemake, DVC and the CLI."""

from __future__ import annotations

import copy
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
    schema = load_schema()
    errors = sorted(StrictValidator(schema).iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        error = errors[0]
        raise UserError(f"{source}: {_location(error)}: {error.message}")
    params = with_defaults(params, schema)
    _check_beyond_schema(params, source)
    return params


def _check_beyond_schema(params: dict[str, Any], source: str) -> None:
    """What the schema cannot say: task names are unique, every row resolves to a criterion and options,
    no further baseline of the sanity check is the pipeline's own, and no epoch trains above the image size."""
    from mapex.pipeline import check_rows, task_names

    names = task_names(params)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise UserError(f"{source}: data.tasks: task name '{duplicated[0]}' is used twice")
    seed = params["train"]["seed"]
    if seed in params["sanity"]["extra_baseline_seeds"]:
        raise UserError(f"{source}: sanity.extra_baseline_seeds: {seed} is train.seed, the pipeline's own baseline")
    size = params["data"]["image_size"]
    for section in ("train", "finetune"):
        larger = [value for value in params[section]["epoch_sizes"] if value > size]
        if larger:
            raise UserError(f"{source}: {section}.epoch_sizes: {larger[0]} px is larger than data.image_size {size}")
    try:
        check_rows(params)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def with_train_seed(params: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """``params`` for the baseline trained with ``train.seed`` = ``seed`` (its own validation carve-out);
    ``params`` itself when ``seed`` is None."""
    if seed is None:
        return params
    return {**params, "train": {**params["train"], "seed": seed}}


def with_defaults(params: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``params`` with the schema's ``default`` for every absent optional key, at any depth.

    The schema is the one source of defaults: Snakemake's ``validate`` fills the same ones into
    its ``config``.
    """
    root = schema or load_schema()
    return _filled(params, root, root)


def _filled(instance: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    filled = dict(instance)
    for part in (schema, *schema.get("allOf", [])):
        for key, subschema in _resolved(part, root).get("properties", {}).items():
            if key not in filled and "default" in subschema:
                filled[key] = copy.deepcopy(subschema["default"])
            if isinstance(filled.get(key), dict):
                filled[key] = _filled(filled[key], _resolved(subschema, root), root)
    return filled


def _resolved(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` itself, or the ``#/$defs/<name>`` it refers to."""
    reference = schema.get("$ref", "")
    return root["$defs"][reference.removeprefix("#/$defs/")] if reference.startswith("#/$defs/") else schema


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
