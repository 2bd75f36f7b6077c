"""Grammars (`response_format` / `parameters.grammar`): validation.rs' checks and a schema-valid answer.

TGI (db931fcf) router/src/validation.rs:348-409: a `json` grammar (alias `json_object`,
lib.rs:236-247) whose value is a string is parsed again as JSON; any other non-object value is
`ValidationError::Grammar` ("grammar is not supported"); the schema must pass the draft 2020-12
meta-schema and must have a top-level `properties` field ("Grammar must have a 'properties'
field"), else `InvalidGrammar`; `json_schema` checks `value.schema` the same way; `regex` passes.
Real TGI then constrains decoding with outlines-core; the double answers a sample object that
satisfies the schema instead.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from .errors import validation_error


def schema_of(grammar: dict | None) -> dict | None:
    """The validated JSON schema of a grammar (None for none or a regex); raises like validation.rs."""
    if grammar is None or grammar["type"] == "regex":
        return None
    value = grammar["value"]
    if grammar["type"] == "json_schema":
        schema = value["schema"]
    elif isinstance(value, str):
        try:
            schema = json.loads(value)
        except ValueError as e:
            raise validation_error(f"grammar is not valid: {e}") from None
    elif isinstance(value, dict):
        schema = value
    else:
        raise validation_error("grammar is not supported")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise validation_error(f"grammar is not valid: {e.message}") from None
    if not isinstance(schema, dict) or "properties" not in schema:
        raise validation_error("grammar is not valid: Grammar must have a 'properties' field")
    return schema


def sample(schema: Any) -> Any:
    """A value valid against the (simple) schema: what a grammar-constrained model would produce."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return sample(schema[key][0])
    t = schema.get("type")
    if isinstance(t, list):
        t = t[0]
    if t == "object" or "properties" in schema:
        return {k: sample(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        n = schema.get("minItems", 1)
        return [sample(schema.get("items", {"type": "string"})) for _ in range(n)]
    return {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True, "null": None}.get(t, "x")


def answer_text(grammar: dict | None) -> str | None:
    schema = schema_of(grammar)
    return None if schema is None else json.dumps(sample(schema))

