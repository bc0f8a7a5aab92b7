"""Config validation against workflow/schemas/config.schema.yaml, with defaults filled in.

Snakemake's own `validate()` prints the whole failing instance and schema; this module reports the
first problem in one line that names the config key, then fills in the schema's defaults.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from .errors import FairDiffError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = sub["default"] if not isinstance(sub["default"], (dict, list)) \
                        else type(sub["default"])(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _message(error) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = _key(error)
        keys = ", ".join(f"'{k}'" for k in extra)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"config key {keys} under '{where}' is not a known setting{hint}"
    if error.validator == "required":
        return f"config '{_key(error)}': {error.message}"
    return f"config key '{_key(error)}': {error.message}"


def _validator(schema: dict):
    return _with_defaults(jsonschema.validators.validator_for(schema))(schema)


def _check_arms(config: dict) -> None:
    """`methods` names registered arms (method.ARMS owns the list, the schema only the type)."""
    from .method import ARMS

    for i, name in enumerate(config.get("methods", [])):
        if name not in ARMS:
            raise FairDiffError(f"config key 'methods.{i}': '{name}' is not an arm; expected one "
                                f"of {list(ARMS)} (fairdiffusion.method.ARMS)")


def validate(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate `config` in place, filling defaults; raise FairDiffError naming the bad key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(config))
    if error is not None:
        raise FairDiffError(_message(error))
    _check_arms(config)
    fair_bayes = config.get("fair_bayes", {})
    if "group_attribute" in fair_bayes and fair_bayes["group_attribute"] is None:
        # the schema's null: the primary endpoint's attribute (one owner for that default)
        fair_bayes["group_attribute"] = config["study"]["attribute"]
    return config


def section_defaults(values: dict | None, *keys: str, schema_path: str | Path = SCHEMA) -> dict:
    """A copy of one config section (keys e.g. "fair_bayes", or "evaluate", "classifier")
    validated with the schema's defaults filled in, for callers handed that section alone (a CLI
    run by hand, tests, bench scripts); errors name the full key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    sub = schema
    for key in keys:
        sub = sub["properties"][key]
    section = copy.deepcopy(dict(values or {}))
    error = jsonschema.exceptions.best_match(
        _validator({**sub, "$defs": schema.get("$defs", {})}).iter_errors(section))
    if error is not None:
        error.path.extendleft(reversed(keys))
        raise FairDiffError(_message(error))
    return section

