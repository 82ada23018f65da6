"""Whether a contract's current JSON Schema may stand in for an earlier one of the same version.

Within a version a contract may only grow: a new field with a default. Anything else needs a new
version (`.v2`) and, for an event, an upcast. What counts as breaking depends on who reads:

- everything: a field removed, its type changed, a field that is new and required, a field that
  became required, a default changed (a reader fills a missing field with it), an enum value or a
  union member removed (old messages carry it);
- events, replies and errors (others read them, with the closed enums of the version they know):
  also an enum value or a union member added. A request is read by its own service, so it may
  accept more.
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]
_MISSING = object()


def breaking_changes(old: Schema, new: Schema, *, strict: bool) -> list[str]:
    """Every change from `old` to `new` that breaks a reader or a writer, one sentence each.

    `strict`: readers other than the owner exist (events, replies), so additions to enums and unions
    break too. Both schemas are self-contained (`$defs` inside, as `schemas.json_schema` makes them).
    """
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))    # as stored: tuples are lists
    found: list[str] = []
    _compare("", old, new, old.get("$defs", {}), new.get("$defs", {}), strict, found)
    return found


def _resolve(schema: Schema, defs: Schema) -> Schema:
    while isinstance(schema, dict) and "$ref" in schema:
        extra = {k: v for k, v in schema.items() if k not in ("$ref", "$schema", "$id", "$defs", "title",
                                                                 "description")}
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]], **extra}
    return schema


def _types(schema: Schema, defs: Schema) -> frozenset[str]:
    """The JSON types a schema admits (a union's members' types together)."""
    schema = _resolve(schema, defs)
    if "anyOf" in schema or "oneOf" in schema:
        return frozenset().union(*(_types(s, defs) for s in schema.get("anyOf", schema.get("oneOf", []))))
    if "enum" in schema:
        return frozenset(_json_type(v) for v in schema["enum"])
    declared = schema.get("type")
    if declared is None:
        return frozenset({"any"})
    return frozenset([declared] if isinstance(declared, str) else declared)


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}.get(
        type(value), "object")


def _variants(schema: Schema, defs: Schema) -> dict[str, Schema]:
    """A union's members keyed so that the same member matches across versions: a tagged struct by its
    tag, anything else by its JSON types."""
    members = schema.get("anyOf", schema.get("oneOf", [schema]))
    keyed: dict[str, Schema] = {}
    for member in members:
        resolved = _resolve(member, defs)
        tag = next((f"{k}={p['enum'][0]}" for k, p in resolved.get("properties", {}).items()
                    if isinstance(p, dict) and len(p.get("enum", ())) == 1 and k in resolved.get("required", ())),
                   None)
        keyed[tag or "|".join(sorted(_types(resolved, defs)))] = member
    return keyed


def _compare(path: str, old: Schema, new: Schema, old_defs: Schema, new_defs: Schema, strict: bool,
             found: list[str]) -> None:
    old, new = _resolve(old, old_defs), _resolve(new, new_defs)
    where = path or "the message"
    if "anyOf" in old or "oneOf" in old or "anyOf" in new or "oneOf" in new:
        old_v, new_v = _variants(old, old_defs), _variants(new, new_defs)
        for key in old_v.keys() - new_v.keys():
            found.append(f"{where}: {key} is no longer accepted")
        if strict:
            found += [f"{where}: {key} added (readers of this version do not know it)"
                      for key in new_v.keys() - old_v.keys()]
        for key in old_v.keys() & new_v.keys():
            _compare(path, old_v[key], new_v[key], old_defs, new_defs, strict, found)
        return
    old_t, new_t = _types(old, old_defs), _types(new, new_defs)
    if old_t != new_t and (strict or not old_t <= new_t):
        found.append(f"{where}: type changed from {'|'.join(sorted(old_t))} to {'|'.join(sorted(new_t))}")
        return
    if "enum" in old and "enum" in new:
        removed = [v for v in old["enum"] if v not in new["enum"]]
        added = [v for v in new["enum"] if v not in old["enum"]]
        found += [f"{where}: value {v!r} removed" for v in removed]
        if strict:
            found += [f"{where}: value {v!r} added (readers of this version do not know it)" for v in added]
    if "properties" in old or "properties" in new:
        _compare_fields(path, old, new, old_defs, new_defs, strict, found)
    for key in ("items", "additionalProperties"):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            _compare(f"{path}[]" if key == "items" else f"{path}{{}}", old[key], new[key],
                     old_defs, new_defs, strict, found)
    old_p, new_p = old.get("prefixItems", []), new.get("prefixItems", [])
    if len(old_p) != len(new_p):
        found.append(f"{where}: array of {len(old_p)} items became one of {len(new_p)}")
    for i, (o, n) in enumerate(zip(old_p, new_p)):
        _compare(f"{path}[{i}]", o, n, old_defs, new_defs, strict, found)


def _compare_fields(path: str, old: Schema, new: Schema, old_defs: Schema, new_defs: Schema, strict: bool,
                    found: list[str]) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
    prefix = f"{path}." if path else ""
    for name in old_props.keys() - new_props.keys():
        found.append(f"field {prefix}{name} removed")
    for name in new_props.keys() - old_props.keys():
        if name in new_req:
            found.append(f"field {prefix}{name} added as required (give it a default)")
    for name in old_props.keys() & new_props.keys():
        if name in new_req and name not in old_req:
            found.append(f"field {prefix}{name} became required")
        before = old_props[name].get("default", _MISSING) if isinstance(old_props[name], dict) else _MISSING
        after = new_props[name].get("default", _MISSING) if isinstance(new_props[name], dict) else _MISSING
        if before is not _MISSING and after is not _MISSING and before != after:
            found.append(f"field {prefix}{name}: default changed from {before!r} to {after!r}")
        _compare(f"{prefix}{name}", old_props[name], new_props[name], old_defs, new_defs, strict, found)
