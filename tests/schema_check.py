"""A small JSON Schema validator for the keywords bnfold's schemas use (tests only; no dependency).

Keywords: type, properties, required, additionalProperties, items, enum, const, anyOf, oneOf, $ref
(``#/$defs/...``). Anything else in a schema is an error here, so a schema cannot silently use a
keyword this validator would ignore. Returns the list of problems (empty: valid).
"""

from __future__ import annotations

from typing import Any

KNOWN = {"$schema", "title", "description", "$defs", "type", "properties", "required", "additionalProperties",
         "items", "enum", "const", "anyOf", "oneOf", "$ref"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def validate(value: Any, schema: dict, root: dict | None = None, where: str = "$") -> list[str]:
    root = root or schema
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError(f"{where}: schema keywords this validator does not know: {sorted(unknown)}")
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return validate(value, node, root, where)
    problems: list[str] = []
    types = schema.get("type")
    if types is not None and not any(_is_type(value, t) for t in ([types] if isinstance(types, str) else types)):
        return [f"{where}: expected {types}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not one of {schema['enum']}")
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = sum(not validate(value, option, root, where) for option in schema[key])
            if matches == 0 or (key == "oneOf" and matches > 1):
                problems.append(f"{where}: {matches} of the {key} alternatives match")
    if isinstance(value, dict):
        problems += [f"{where}: missing {name!r}" for name in schema.get("required", ()) if name not in value]
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], root, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: unexpected {name!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += validate(item, schema["additionalProperties"], root, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], root, f"{where}[{i}]")
    return problems
