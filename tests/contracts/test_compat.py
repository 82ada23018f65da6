"""Compatibility, enforced: every event any released version wrote still decodes, field for field, and no
contract lost a field or changed a type since the last release without taking a new version."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import msgspec
import pytest

from switchyard_gateway.contracts import codec, compat, schemas
from switchyard_gateway.contracts.events import event_type

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
RELEASED = HERE / "released"
CORPUS_FILES = sorted(CORPUS.glob("*/*.jsonl"))
RELEASED_FILES = sorted(RELEASED.glob("*/*.json"))
RULES = "docs/contracts/README.md"


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_events_of_every_version_decode_field_for_field(path: Path) -> None:
    for line in _lines(path):
        stored = json.loads(line)
        assert stored["type"] == path.parent.name
        event = codec.decode_event(line)
        now = msgspec.json.decode(codec.encode(event))        # what the current code reads, written back
        expected = codec.UPCASTS[stored["type"]](dict(stored)) if stored["type"] in codec.UPCASTS else stored
        lost = {k: v for k, v in expected.items() if k not in now}
        assert not lost, f"{path.name}: fields the current code drops: {sorted(lost)}"
        changed = {k: (v, now[k]) for k, v in expected.items() if k != "type" and now[k] != v}
        assert not changed, f"{path.name}: values read differently: {changed}"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_batch_of_stored_events_decodes_as_one_message(path: Path) -> None:
    lines = _lines(path)
    batch = b"[" + b",".join(lines) + b"]"
    assert [event.event_id for event in codec.decode_events(batch)] == \
           [codec.decode_event(line).event_id for line in lines]


def test_the_corpus_covers_every_event_type_in_its_current_shape() -> None:
    shapes: dict[str, set[frozenset[str]]] = {}
    for path in CORPUS_FILES:
        for line in _lines(path):
            shapes.setdefault(path.parent.name, set()).add(frozenset(json.loads(line)))
    for tag, cls in codec.EVENT_TYPES.items():
        current = frozenset({"type", *(f.name for f in msgspec.structs.fields(cls))})
        assert current in shapes.get(tag, set()), (
            f"tests/contracts/corpus has no {tag} event of its current shape: commit the change to libs/contracts, "
            "then run `python -m tests.contracts.history` and commit the corpus file it writes")
    assert set(shapes) <= set(codec.EVENT_TYPES) | set(codec.UPCASTS), "a corpus type the code cannot read"


def test_a_release_snapshot_exists() -> None:
    assert RELEASED_FILES, f"no released schemas under {RELEASED}"
    assert {p.stem for p in RELEASED_FILES} >= set(codec.EVENT_TYPES), "an event type released with no snapshot"


@pytest.mark.parametrize("path", RELEASED_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_contract_broke_since_its_release(path: Path) -> None:
    released = json.loads(path.read_text())
    name = path.stem
    if name not in schemas.CONTRACTS:
        assert name in codec.UPCASTS, (
            f"{name} was released and is gone: keep it readable with an upcast in codec.UPCASTS ({RULES})")
        return
    contract = schemas.CONTRACTS[name]
    changes = compat.breaking_changes(released, schemas.json_schema(name), strict=contract.kind != "request")
    assert not changes, (
        f"{name} changed incompatibly since release {path.parent.name}:\n  " + "\n  ".join(changes)
        + f"\nWithin a version only optional fields with defaults may be added; publish a new version "
          f"(`.v2`, with an upcast for events) instead ({RULES}).")


# --- the rules themselves, on hostile edits of real schemas -------------------------------------------------


def _edit(name: str, edit) -> tuple[dict, dict]:
    old = schemas.json_schema(name)
    new = copy.deepcopy(old)
    edit(new["$defs"])
    return old, new


def _usage(defs: dict) -> dict:
    return defs["UsageRecorded"]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: _usage(d)["properties"].pop("cache_hit"), "field cache_hit removed"),
    (lambda d: _usage(d)["properties"].update(status={"type": "string"}), "status: type changed"),
    (lambda d: _usage(d)["properties"].update(ttfb_ms={"type": "number"}), "ttfb_ms: null is no longer accepted"),
    (lambda d: (_usage(d)["properties"].update(region={"type": "string"}), _usage(d)["required"].append("region")),
     "field region added as required"),
    (lambda d: _usage(d)["required"].append("cached_tokens"), "field cached_tokens became required"),
    (lambda d: _usage(d)["properties"]["stream"].update(default=True), "field stream: default changed"),
    (lambda d: _usage(d)["properties"]["outcome"]["enum"].remove("cancelled"), "value 'cancelled' removed"),
    (lambda d: _usage(d)["properties"]["outcome"]["enum"].append("abandoned"), "value 'abandoned' added"),
])
def test_breaking_edits_of_an_event_are_caught(edit, expected: str) -> None:
    old, new = _edit("usage.recorded.v2", edit)
    assert any(expected in change for change in compat.breaking_changes(old, new, strict=True))


def test_a_nested_struct_is_checked_too() -> None:
    old, new = _edit("limits.set.v1", lambda d: d["Limits"]["properties"].pop("rpm"))
    assert compat.breaking_changes(old, new, strict=True) == ["field limits.rpm removed"]


def test_an_optional_field_with_a_default_is_a_compatible_addition() -> None:
    old, new = _edit("usage.recorded.v2",
                     lambda d: _usage(d)["properties"].update(region={"type": "string", "default": ""}))
    assert compat.breaking_changes(old, new, strict=True) == []


def test_a_request_may_accept_more_but_not_less() -> None:
    def more(defs: dict) -> None:
        defs["RegistryQuery"]["properties"]["resource"]["enum"].append("audits")

    def less(defs: dict) -> None:
        defs["RegistryQuery"]["properties"]["resource"]["enum"].remove("keys")

    assert compat.breaking_changes(*_edit("registry.query.v1.request", more), strict=False) == []
    assert compat.breaking_changes(*_edit("registry.query.v1.request", less), strict=False) == \
           ["resource: value 'keys' removed"]


def test_a_command_dropped_from_a_tagged_union_is_caught() -> None:
    old = schemas.json_schema("registry.command.v1.request")
    new = copy.deepcopy(old)
    new["anyOf"] = [ref for ref in new["anyOf"] if not ref["$ref"].endswith("/RevokeKey")]
    assert compat.breaking_changes(old, new, strict=False) == ["the message: command=revoke_key is no longer accepted"]


def test_a_v2_with_an_upcast_keeps_the_v1_corpus_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a breaking change must look like: v1 payloads stay readable through an upcast to the new version."""
    v1 = _lines(sorted((CORPUS / "usage.recorded.v1").glob("*.jsonl"))[0])[1]
    renamed = json.loads(v1) | {"type": "usage.recorded.v0"}

    def upcast(raw: dict) -> dict:
        return {**raw, "type": "usage.recorded.v2"}

    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(json.dumps(renamed))
    monkeypatch.setitem(codec.UPCASTS, "usage.recorded.v0", upcast)
    assert event_type(codec.decode_event(json.dumps(renamed))) == "usage.recorded.v2"
