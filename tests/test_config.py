"""params.yaml: the schema is the one source of defaults, for the CLI and for Snakemake alike."""

import copy
from typing import Any

import yaml
from snakemake.utils import validate

from conftest import REPO
from mapex.config import load_schema, validate_params

SCHEMA = REPO / "workflow/schemas/params.schema.yaml"


def _without_defaulted_keys(params: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``params`` less every key the schema gives a default for (at any depth)."""
    kept = {}
    for key, value in params.items():
        subschema = schema.get("properties", {}).get(key, {})
        if "default" in subschema:
            continue
        kept[key] = _without_defaulted_keys(value, subschema) if isinstance(value, dict) else value
    return kept


def test_defaults_come_from_the_schema_for_the_cli_and_snakemake_alike():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    sparse = _without_defaulted_keys(params, load_schema())
    assert "round_to" not in sparse["prune"] and "label_rule" not in sparse["data"]
    ours = validate_params(copy.deepcopy(sparse))
    snakemake = copy.deepcopy(sparse)
    validate(snakemake, str(SCHEMA), set_default=True)
    assert ours == snakemake
    schema = load_schema()["properties"]
    assert ours["prune"]["round_to"] == schema["prune"]["properties"]["round_to"]["default"]
    assert ours["data"]["max_per_class"] is schema["data"]["properties"]["max_per_class"]["default"]
    assert ours["model"]["stem"] == schema["model"]["properties"]["stem"]["default"]
    assert ours["train"]["schedule"] == ours["finetune"]["schedule"] == "onecycle"  # through $ref and allOf


def test_the_schedules_are_the_trainers_own():
    from mapex.train import SCHEDULES

    assert load_schema()["$defs"]["fit"]["properties"]["schedule"]["enum"] == list(SCHEDULES)
