"""The folders import only what docs/architecture.md's map says they may: the layering is checked, not hoped for."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "switchyard_gateway"

# Each unit (a package folder of libs/, a service, the CLI) and what it may import of the project. A new
# folder needs a line here and in docs/architecture.md's map.
MAY_IMPORT: dict[str, set[str]] = {
    "libs/contracts": set(),
    "libs/http1": set(),
    "libs/resp": set(),
    "libs/simulator": set(),
    "libs/catalog": {"libs/contracts"},
    "libs/kit": {"libs/contracts", "libs/http1", "libs/resp"},
    "libs/events": {"libs/contracts", "libs/kit"},
    "libs/quotas": {"libs/catalog", "libs/contracts", "libs/resp"},
    "libs/subscribe": {"libs/contracts", "libs/events", "libs/kit"},
}
SERVICE_MAY_IMPORT = {"libs/contracts", "libs/catalog", "libs/quotas", "libs/kit", "libs/events", "libs/http1",
                      "libs/resp"}


def _unit(path: Path) -> str:
    """The unit a source file belongs to: `libs/<package or module>`, `services/<name>` or `cli`."""
    top, *rest = path.relative_to(REPO).parts
    if top == "libs":
        return f"libs/{rest[0].removesuffix('.py')}" if rest[0] != "__init__.py" else "libs"
    return f"services/{rest[0]}" if top == "services" else "cli"


def _target(module: str) -> str | None:
    """The unit an imported module belongs to (None: not the project's)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return "libs"
    if parts[1] == "services":
        return f"services/{parts[2]}" if len(parts) > 2 else "services"
    return "cli" if parts[1] == "cli" else f"libs/{parts[1]}"


def _imports() -> dict[str, set[str]]:
    """unit -> the other units it imports (from `import` and `from ... import ...`, names that are modules too)."""
    found: dict[str, set[str]] = defaultdict(set)
    for top in ("libs", "services", "cli"):
        for path in (REPO / top).rglob("*.py"):
            unit = _unit(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                             if node.module == PACKAGE else [])
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    target = _target(name)
                    if target is not None and target not in (unit, "libs"):
                        found[unit].add(target)
    return found


def test_libs_never_import_services_or_the_cli() -> None:
    upward = {unit: sorted(t for t in targets if not t.startswith("libs/"))
              for unit, targets in _imports().items() if unit.startswith("libs")}
    assert not {u: t for u, t in upward.items() if t}, f"libs import upwards: {upward}"


def test_each_libs_package_imports_only_what_the_map_allows() -> None:
    imports = _imports()
    units = {_unit(p) for p in (REPO / "libs").rglob("*.py")} - {"libs"}
    unknown = sorted(units - MAY_IMPORT.keys())
    assert not unknown, f"new libs folders need a line in MAY_IMPORT and in docs/architecture.md's map: {unknown}"
    wrong = {u: sorted(imports.get(u, set()) - allowed) for u, allowed in MAY_IMPORT.items()}
    assert not {u: w for u, w in wrong.items() if w}, f"imports the map does not allow: {wrong}"


def test_services_import_libs_only_never_each_other() -> None:
    wrong = {unit: sorted(targets - SERVICE_MAY_IMPORT - MAY_IMPORT.keys())
             for unit, targets in _imports().items() if unit.startswith("services/")}
    assert not {u: w for u, w in wrong.items() if w}, f"services importing other services or the CLI: {wrong}"


def test_only_the_cli_imports_services() -> None:
    importers = {unit for unit, targets in _imports().items()
                 if any(t.startswith("services/") for t in targets) and not unit.startswith("services/")}
    assert importers <= {"cli"}, f"only the composition root (cli/) may import services: {sorted(importers)}"
