"""The files docs/contracts holds, rendered from the code: one JSON Schema per contract, their index and the
AsyncAPI document; written by `switchyard events schema --write DIR`, compared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

from switchyard_gateway.contracts import asyncapi, schemas

SCHEMA_DIR = "schemas"
REGENERATE = "switchyard events schema --write docs/contracts"


def _json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def files() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    out = {f"{SCHEMA_DIR}/{c.filename}": _json(schemas.json_schema(name)) for name, c in schemas.CONTRACTS.items()}
    out["index.json"] = _json(schemas.index())
    out["asyncapi.yaml"] = asyncapi.text()
    return out


def write(directory: Path) -> list[str]:
    """Write every generated file under `directory` and remove schema files no contract has any more."""
    rendered = files()
    for relative, content in rendered.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    for stale in _stale(directory, rendered):
        stale.unlink()
    return sorted(rendered)


def differences(directory: Path) -> list[str]:
    """What differs between `directory` and the generated files: missing, changed or stale, one line each."""
    rendered = files()
    found = []
    for relative, content in rendered.items():
        path = directory / relative
        if not path.exists():
            found.append(f"missing: {relative}")
        elif path.read_text() != content:
            found.append(f"differs: {relative}")
    found += [f"stale: {p.relative_to(directory)}" for p in _stale(directory, rendered)]
    return found


def _stale(directory: Path, rendered: dict[str, str]) -> list[Path]:
    folder = directory / SCHEMA_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if f"{SCHEMA_DIR}/{p.name}" not in rendered)
