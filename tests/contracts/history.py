"""Build the corpus of stored events from the git history of libs/contracts.

For every revision that changed an event type's shape, this imports that revision's contract modules
(extracted into a scratch folder) and encodes what its code wrote: one event with the required fields
only and one with every field set. Each shape becomes `corpus/<type>/<date>-<commit>.jsonl`; a file
once written is never rewritten (the corpus only grows).

    python -m tests.contracts.history          # from the repository root
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import uuid
from datetime import UTC, datetime, time
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
NAMESPACE = uuid.UUID("5f1c8a57-37d4-4a8e-9d0c-2b1f6a7e0c11")
PACKAGES = ("switchyard_gateway.contracts", "libs.contracts")     # how contracts were imported, newest first


def revisions() -> list[tuple[str, str]]:
    """(commit, day) of every commit that touched libs/contracts, oldest first."""
    out = subprocess.run(["git", "log", "--reverse", "--format=%H %cs", "--", "libs/contracts"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]  # type: ignore[misc]


def load(commit: str, scratch: Path) -> ModuleType:
    """That revision's codec module, imported from a package of its own (`rev_<commit>.contracts`)."""
    package = f"rev_{commit[:12]}"
    archive = subprocess.run(["git", "archive", commit, "libs/contracts"], cwd=REPO, check=True,
                             capture_output=True).stdout
    target = scratch / package / "contracts"
    target.mkdir(parents=True)
    (scratch / package / "__init__.py").write_text("")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                source = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                for old in PACKAGES:
                    source = source.replace(old, f"{package}.contracts")
                (target / Path(member.name).name).write_text(source)
    if str(scratch) not in sys.path:
        sys.path.insert(0, str(scratch))
    return importlib.import_module(f"{package}.contracts.codec")


def _value(kind: Any, name: str, at: datetime) -> Any:
    """A value of a field's type, unlike its default, so that the encoded event shows the field's type."""
    t = msgspec.inspect
    if isinstance(kind, t.Metadata):                # an annotated type (`Instant`): its value is the inner type's
        return _value(kind.type, name, at)
    if isinstance(kind, t.UnionType):
        return _value(next(k for k in kind.types if not isinstance(k, t.NoneType)), name, at)
    if isinstance(kind, t.LiteralType):
        return sorted(kind.values)[-1]
    if isinstance(kind, t.StrType):
        return f"{name}-1"
    if isinstance(kind, t.BoolType):
        return True
    if isinstance(kind, t.IntType):
        return 7
    if isinstance(kind, t.FloatType):
        return 12.5
    if isinstance(kind, t.DateTimeType):
        return at
    if isinstance(kind, t.UUIDType):
        return uuid.uuid5(NAMESPACE, name)
    if isinstance(kind, t.BytesType):
        return f"{name}-1".encode()
    if isinstance(kind, t.DictType):
        return {f"{name}-key": _value(kind.value_type, name, at)}
    if isinstance(kind, (t.VarTupleType, t.ListType)):
        return (_value(kind.item_type, name, at), f"{name}-2") if isinstance(kind.item_type, t.StrType) \
            else (_value(kind.item_type, name, at),)
    if isinstance(kind, t.StructType):
        return kind.cls(**{f.name: _value(f.type, f.name, at) for f in kind.fields})
    raise TypeError(f"no sample value for {kind!r} ({name})")


def samples(cls: type, commit: str, day: str) -> list[Any]:
    """The event with its required fields only, then with every field set, as that revision built them."""
    info = msgspec.inspect.type_info(cls)
    at = datetime.combine(datetime.fromisoformat(day).date(), time(12, 0), UTC)
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    made = []
    for variant in ("minimal", "full"):
        fields = {f.name: _value(f.type, f.name, at) for f in info.fields  # type: ignore[attr-defined]
                  if (f.required or variant == "full") and f.name not in ("event_id", "occurred_at")}
        made.append(cls(event_id=uuid.uuid5(NAMESPACE, f"{tag}/{commit}/{variant}"), occurred_at=at, **fields))
    return made


def shape(cls: type) -> str:
    """What a reader sees of a type: its fields, their types, defaults and enums (no prose)."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("title", "description", "format")}
        return [strip(v) for v in node] if isinstance(node, list) else node
    return msgspec.json.encode(strip(msgspec.json.schema(cls))).decode()


def build() -> list[Path]:
    written: list[Path] = []
    seen: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="contracts-history-") as scratch:
        for commit, day in revisions():
            codec = load(commit, Path(scratch))
            for tag, cls in codec.EVENT_TYPES.items():
                if seen.get(tag) == shape(cls):
                    continue
                seen[tag] = shape(cls)
                path = CORPUS / tag / f"{day}-{commit[:7]}.jsonl"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"".join(codec.encode(e) + b"\n" for e in samples(cls, commit, day)))
                    written.append(path)
    return written


if __name__ == "__main__":
    for path in build():
        print(path.relative_to(REPO))
