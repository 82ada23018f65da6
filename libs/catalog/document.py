"""The registry as a document (`switchyard.yaml`): load, validate every problem with its path, turn into
registry commands, and export the registry back into the same shape.

    providers: [{id, kind, display_name}]
    endpoints: [{id, provider, base_url, api_key: "${ENV_VAR}", models, priority, weight,
                 max_concurrent, timeout_s, first_byte_timeout_s, warm_on_start}]
    models:    [{id, kind, aliases, context_length, input_price_per_1m, output_price_per_1m,
                 cached_input_price_per_1m, fallback, capabilities}]
    tenants:   [{id, display_name, all_models, fallback_on_quota,
                 models: [{model, enabled, default, priority, input_price_per_1m, output_price_per_1m,
                           cached_input_price_per_1m, fallback}]}]

Applying it upserts every resource, so applying the same document twice records nothing.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from switchyard_gateway.catalog import rules
from switchyard_gateway.catalog.references import Fallbacks, Names, cycles
from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.messages import Problem

SECTIONS = ("providers", "endpoints", "models", "tenants")
_PRICES = ("input_price_per_1m", "output_price_per_1m", "cached_input_price_per_1m")
# section -> key -> (python types accepted, required)
_NUM = (int, float)
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "providers": {"id": ((str,), True), "kind": ((str,), True), "display_name": ((str,), False)},
    "endpoints": {
        "id": ((str,), True), "provider": ((str,), True), "base_url": ((str,), True), "api_key": ((str,), False),
        "models": ((list,), False), "priority": ((int,), False), "weight": ((int,), False),
        "max_concurrent": ((int,), False), "timeout_s": (_NUM, False), "first_byte_timeout_s": (_NUM, False),
        "warm_on_start": ((bool,), False),
    },
    "models": {
        "id": ((str,), True), "kind": ((str,), False), "aliases": ((list,), False),
        "context_length": ((int,), False), "input_price_per_1m": (_NUM, False),
        "output_price_per_1m": (_NUM, False), "cached_input_price_per_1m": (_NUM, False),
        "fallback": ((str,), False), "capabilities": ((list,), False),
    },
    "tenants": {
        "id": ((str,), True), "display_name": ((str,), False), "all_models": ((bool,), False),
        "fallback_on_quota": ((bool,), False), "models": ((list,), False),
    },
    "tenants.models": {
        "model": ((str,), True), "enabled": ((bool,), False), "default": ((bool,), False),
        "priority": ((int,), False), "input_price_per_1m": (_NUM, False), "output_price_per_1m": (_NUM, False),
        "cached_input_price_per_1m": (_NUM, False), "fallback": ((str,), False),
    },
}


@dataclass
class Known:
    """Identifiers that already exist outside the document (the registry's, on import), and the fallbacks
    its chains already take."""

    providers: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)                   # model ids and aliases
    aliases: dict[str, str] = field(default_factory=dict)           # alias -> model id
    fallbacks: dict[str, str] = field(default_factory=dict)         # model id -> its own fallback
    assigned: dict[str, dict[str, str]] = field(default_factory=dict)   # tenant -> model id -> its fallback

    @classmethod
    def of(cls, catalog: Catalog) -> Known:
        return cls(set(catalog.providers), {*catalog.models, *catalog.aliases}, dict(catalog.aliases),
                   {mid: model.fallback_model for mid, model in catalog.models.items()},
                   {tid: {mid: a.fallback_model for mid, a in by.items()} for tid, by in catalog.assignments.items()})


MAX_DOCUMENT_BYTES = 16 * 1024 * 1024     # a registry document larger is refused unread (the import route: 5 MB)


def load(path: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Parse a YAML (or JSON) file; a syntax error is one problem at its line, and so is a file that is not
    UTF-8 text or is larger than MAX_DOCUMENT_BYTES (read no further: `/dev/zero` is a file too)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        return {}, [Problem(str(path), f"cannot read: {exc.strerror or exc}")]
    if len(data) > MAX_DOCUMENT_BYTES:
        return {}, [Problem(str(path), f"larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB: not a registry "
                                       "document")]
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        return {}, [Problem(str(path), f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})")]
    return parse(text)


MAX_EXPANDED_NODES = 1_000_000     # beyond the document's own nodes: what YAML aliases may add when read


class AliasBomb(yaml.YAMLError):
    """A document whose aliases would expand it far past its size (or into itself)."""


def decode_document(text: str) -> Any:
    """A document's data: as JSON when it reads as JSON (YAML 1.1 would read the `5e-05` of an exported price as
    a string), else as YAML. Raises yaml.YAMLError (AliasBomb for aliases that expand the document past
    MAX_EXPANDED_NODES more nodes than it holds: a few hundred bytes of nested aliases can stand for 10^9 items),
    or RecursionError for nesting too deep to read."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except ValueError:
            pass
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes the document stands for, each alias as a copy of what it names, and refuse it when they
    pass its own nodes by MAX_EXPANDED_NODES, or when an alias names a node it is inside."""
    sizes: dict[int, int] = {}          # id(node) -> nodes it expands to, once counted
    unique = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise AliasBomb("an alias names a node it is inside: the document would never end")
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
        unique += 1
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    if sizes[id(root)] > unique + MAX_EXPANDED_NODES:
        raise AliasBomb(f"its aliases expand it to {sizes[id(root)]:,} nodes, more than {MAX_EXPANDED_NODES:,} "
                        f"beyond the {unique:,} it holds")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """A key given twice in one mapping (`tenants:` twice) kept only the last, silently: refused, naming both."""
    seen: dict[object, yaml.Node] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value == "<<":       # merge keys may repeat
            continue
        first = seen.setdefault((key.tag, key.value), key)
        if first is not key:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key.value!r} is given twice in one mapping (first on line "
                f"{first.start_mark.line + 1}): only the last would count", key.start_mark)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise yaml.constructor.ConstructorError(
            None, None, f"the key {twice!r} is given twice in one object: only the last would count", None)
    return dict(pairs)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def checked(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Load and validate a document: (the document, []) or (None, every problem)."""
    doc, problems = load(path)
    if not problems:
        problems = validate(doc)
    return (None if problems else doc), problems


def parse(text: str) -> tuple[dict[str, Any], list[Problem]]:
    try:
        doc = decode_document(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
        return {}, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]
    except RecursionError:
        return {}, [Problem("(document)", "nested too deeply to read")]
    if doc is None:
        return {}, []
    if not isinstance(doc, dict):
        return {}, [Problem("(document)", "expected a mapping with providers, endpoints, models and tenants")]
    return doc, []


def validate(doc: dict[str, Any], known: Known | None = None) -> list[Problem]:
    """Every problem of a document, each at its path; an empty list means it can be applied."""
    known = known or Known()
    problems: list[Problem] = []

    def bad(path: str, message: str | None) -> None:
        if message:
            problems.append(Problem(path, message))

    for key in doc:
        if key not in SECTIONS:
            bad(str(key), f"unknown section '{key}' (expected {', '.join(SECTIONS)})")
    items = {name: _items(doc, name, problems) for name in SECTIONS}
    ids: dict[str, set[str]] = {}
    for name in SECTIONS:
        ids[name] = set()
        for path, item in items[name]:
            _check_fields(path, item, FIELDS[name], problems)
            _check_bounds(path, item, problems)
            ident = item.get("id")
            if not isinstance(ident, str):
                continue
            if ident in ids[name]:
                bad(f"{path}.id", f"duplicate identifier '{ident}' in {name}")
            ids[name].add(ident)
            bad(f"{path}.id", rules.model_name_problem(ident) if name == "models" else rules.identifier_problem(ident))

    providers = ids["providers"] | known.providers
    for path, item in items["providers"]:
        if "kind" in item and item["kind"] not in rules.PROVIDER_KINDS:
            bad(f"{path}.kind", f"'{item['kind']}' is not one of {', '.join(rules.PROVIDER_KINDS)}")
    for path, item in items["endpoints"]:
        if isinstance(item.get("provider"), str) and item["provider"] not in providers:
            bad(f"{path}.provider", f"provider '{item['provider']}' is not defined")
        if isinstance(item.get("base_url"), str):
            bad(f"{path}.base_url", rules.url_problem(item["base_url"]))
        bad(f"{path}.api_key", rules.credential_problem(item.get("api_key", "")))
        _names(f"{path}.models", item.get("models"), problems)     # a name listed twice is refused
        for key in ("weight", "max_concurrent"):
            if isinstance(item.get(key), int) and item[key] < 0:
                bad(f"{path}.{key}", f"{key} must be >= 0")
        for key in ("timeout_s", "first_byte_timeout_s"):
            if isinstance(item.get(key), _NUM) and item[key] <= 0:
                bad(f"{path}.{key}", f"{key} must be > 0")
    names = _model_names(items["models"], ids["models"], known, problems)
    fallbacks = Fallbacks(dict(known.fallbacks), {tid: dict(by) for tid, by in known.assigned.items()})
    starts: list[tuple[str, str | None, str]] = []        # where a fallback cycle is looked for
    for path, item in items["models"]:
        if "kind" in item and item["kind"] not in rules.MODEL_KINDS:
            bad(f"{path}.kind", f"'{item['kind']}' is not one of {', '.join(rules.MODEL_KINDS)}")
        for i, said in enumerate(item.get("capabilities") or () if isinstance(item.get("capabilities"), list) else ()):
            if said not in rules.MODEL_CAPABILITIES:
                bad(f"{path}.capabilities[{i}]", f"{said!r} is not one of {', '.join(rules.MODEL_CAPABILITIES)}")
            elif said in item["capabilities"][:i]:
                bad(f"{path}.capabilities[{i}]", f"'{said}' is named twice")
        _non_negative(path, item, ("context_length", *_PRICES), problems)
        _reference(f"{path}.fallback", item.get("fallback"), item.get("id"), names, problems)
        if isinstance(item.get("id"), str):
            fallback = item.get("fallback")
            fallbacks.models[item["id"]] = fallback if isinstance(fallback, str) else ""
            starts.append((f"{path}.fallback", None, item["id"]))
    tenant_starts: dict[str, list[tuple[str, str | None, str]]] = {}
    for path, item in items["tenants"]:
        seen: set[str] = set()
        assignments = item.get("models") if isinstance(item.get("models"), list) else []
        for j, assignment in enumerate(assignments):
            apath = f"{path}.models[{j}]"
            if not isinstance(assignment, dict):
                bad(apath, "expected a mapping with 'model'")
                continue
            _check_fields(apath, assignment, FIELDS["tenants.models"], problems)
            _check_bounds(apath, assignment, problems)
            model = assignment.get("model")
            if isinstance(model, str):
                if model in seen:
                    bad(f"{apath}.model", f"duplicate identifier: '{model}' is assigned twice")
                seen.add(model)
                _reference(f"{apath}.model", model, None, names, problems)
            _reference(f"{apath}.fallback", assignment.get("fallback"), model, names, problems)
            _non_negative(apath, assignment, _PRICES, problems)
            model_id = names.resolve(model) if isinstance(model, str) else None
            if model_id is not None and isinstance(item.get("id"), str):
                fallback = assignment.get("fallback")
                fallbacks.assigned.setdefault(item["id"], {})[model_id] = fallback if isinstance(fallback, str) else ""
                tenant_starts.setdefault(item["id"], []).append((f"{apath}.fallback", item["id"], model_id))
    every = list(starts)                # the registry's chains, then those of each tenant with fallbacks of its own
    for tenant_id in fallbacks.tenants_with_their_own():
        every += [*tenant_starts.get(tenant_id, []), *((path, tenant_id, mid) for path, _, mid in starts)]
    for path, message in cycles(every, names, fallbacks):
        bad(path, message)
    return problems


def _items(doc: dict[str, Any], name: str, problems: list[Problem]) -> list[tuple[str, dict[str, Any]]]:
    section = doc.get(name)
    if section is None:
        return []
    if not isinstance(section, list):
        problems.append(Problem(name, f"'{name}' must be a list"))
        return []
    found = []
    for i, item in enumerate(section):
        if isinstance(item, dict):
            found.append((f"{name}[{i}]", item))
        else:
            problems.append(Problem(f"{name}[{i}]", "expected a mapping"))
    return found


def _check_fields(path: str, item: dict[str, Any], spec: dict[str, tuple[tuple[type, ...], bool]],
                  problems: list[Problem]) -> None:
    for key, value in item.items():
        if key not in spec:
            problems.append(Problem(f"{path}.{key}", f"unknown key '{key}' (expected {', '.join(spec)})"))
            continue
        types, _ = spec[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            problems.append(Problem(f"{path}.{key}", f"expected {wanted}, got {type(value).__name__} {value!r}"))
    for key, (_, required) in spec.items():
        if required and key not in item:
            problems.append(Problem(f"{path}.{key}", f"'{key}' is required"))


def _check_bounds(path: str, item: dict[str, Any], problems: list[Problem]) -> None:
    oversized = rules.bounds_problem({("endpoint_id" if k == "id" else k): v for k, v in item.items()})
    if oversized is not None:
        key = "id" if oversized[0] == "endpoint_id" else oversized[0]
        problems.append(Problem(f"{path}.{key}", oversized[1]))


def _names(path: str, value: Any, problems: list[Problem]) -> list[tuple[int, str]]:
    """The valid names of a list, each once, with their index; a problem for each invalid or repeated one."""
    if not isinstance(value, list):
        return []
    names: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    for i, name in enumerate(value):
        problem = rules.model_name_problem(name)
        if not problem and name in first:
            problem = rules.repeated_problem(name, f"{path.rsplit('.', 1)[-1]}[{first[name]}]")
        if problem:
            problems.append(Problem(f"{path}[{i}]", problem))
        else:
            first[name] = i
            names.append((i, name))
    return names


def _model_names(items: list[tuple[str, dict[str, Any]]], ids: set[str], known: Known,
                 problems: list[Problem]) -> Names:
    """The model names the registry would hold after the document, with a problem for each alias, and each
    new model's id, that already names another model (the alias would not reach it, the new model would
    hide the other)."""
    known_ids = known.models - set(known.aliases)
    owners = {alias: owner for alias, owner in known.aliases.items() if owner not in ids}   # left as they are
    for path, item in items:
        own = item.get("id")
        for i, alias in _names(f"{path}.aliases", item.get("aliases"), problems):
            owner = alias if alias in ids or alias in known_ids else owners.get(alias)
            if alias == own or (owner is not None and owner != own):
                problems.append(Problem(f"{path}.aliases[{i}]", f"duplicate identifier: '{alias}' already names "
                                                                 f"model '{owner or alias}'"))
            elif isinstance(own, str):
                owners[alias] = own
    names = Names(known_ids | ids, owners)
    for path, item in items:
        own = item.get("id")
        if not isinstance(own, str) or own in known_ids:
            continue
        owner = owners.get(own)
        if owner is None and own.endswith(":latest"):
            owner = names.resolve(own.removesuffix(":latest"))
        if owner is not None and owner != own:
            problems.append(Problem(f"{path}.id", f"'{own}' already names model '{owner}'"))
    return names


def _non_negative(path: str, item: dict[str, Any], keys: tuple[str, ...], problems: list[Problem]) -> None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, _NUM) and not isinstance(value, bool) and value < 0:
            problems.append(Problem(f"{path}.{key}", f"{key} cannot be negative"))


def _reference(path: str, value: Any, own: Any, names: Names, problems: list[Problem]) -> None:
    """A name of a model the registry will hold (`own`: the model it is a fallback of, by any name)."""
    if not isinstance(value, str) or not value:
        return
    model_id = names.resolve(value)
    if value == own or (model_id is not None and isinstance(own, str) and model_id == names.resolve(own)):
        problems.append(Problem(path, f"a model cannot fall back to itself ('{value}')"))
    elif model_id is None:
        problems.append(Problem(path, f"model '{value}' is not defined"))


# --- document -> commands ----------------------------------------------------------------


def to_commands(doc: dict[str, Any]) -> list[m.Command]:
    """Upsert commands for a valid document, in an order where every reference is defined first."""
    commands: list[m.Command] = []
    for p in doc.get("providers") or []:
        commands.append(m.RegisterProvider(provider_id=p["id"], kind=p["kind"], display_name=p.get("display_name", "")))
    for model in _fallbacks_first(doc.get("models") or []):
        commands.append(m.RegisterModel(
            model_id=model["id"], kind=model.get("kind", "chat"), aliases=tuple(model.get("aliases") or ()),
            context_length=model.get("context_length", 0),
            input_price_per_1m=float(model.get("input_price_per_1m", 0.0)),
            output_price_per_1m=float(model.get("output_price_per_1m", 0.0)),
            cached_input_price_per_1m=_float_or_none(model.get("cached_input_price_per_1m")),
            fallback_model=model.get("fallback", ""), capabilities=tuple(model.get("capabilities") or ())))
    for e in doc.get("endpoints") or []:
        commands.append(m.RegisterEndpoint(
            endpoint_id=e["id"], provider_id=e["provider"], base_url=e["base_url"], api_key_ref=e.get("api_key", ""),
            models=tuple(e.get("models") or ()), priority=e.get("priority", 0), weight=e.get("weight", 1),
            max_concurrent=e.get("max_concurrent", 0), timeout_s=float(e.get("timeout_s", 300.0)),
            first_byte_timeout_s=_float_or_none(e.get("first_byte_timeout_s")),
            warm_on_start=e.get("warm_on_start", False)))
    for t in doc.get("tenants") or []:
        commands.append(m.CreateTenant(tenant_id=t["id"], display_name=t.get("display_name", ""),
                                       all_models=t.get("all_models", True),
                                       fallback_on_quota=t.get("fallback_on_quota", False)))
        for a in t.get("models") or []:
            commands.append(m.AssignModel(
                tenant_id=t["id"], model_id=a["model"], enabled=a.get("enabled", True),
                is_default=a.get("default", False), priority=a.get("priority", 0),
                input_price_per_1m=_float_or_none(a.get("input_price_per_1m")),
                output_price_per_1m=_float_or_none(a.get("output_price_per_1m")),
                cached_input_price_per_1m=_float_or_none(a.get("cached_input_price_per_1m")),
                fallback_model=a.get("fallback", "")))
    return commands


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _fallbacks_first(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models ordered so that each one's fallback (by id or alias) is registered before it."""
    names = {}
    for model in models:
        for name in (model["id"], *(model.get("aliases") or ())):
            names[name] = model["id"]
    by_id = {model["id"]: model for model in models}
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()

    def place(model_id: str, trail: tuple[str, ...]) -> None:
        if model_id in placed or model_id in trail:
            return
        fallback = names.get(by_id[model_id].get("fallback", ""))
        if fallback is not None:
            place(fallback, (*trail, model_id))
        placed.add(model_id)
        ordered.append(by_id[model_id])

    for model in models:
        place(model["id"], ())
    return ordered


# --- registry -> document ----------------------------------------------------------------


def export(catalog: Catalog) -> dict[str, Any]:
    """The registry as a document `to_commands` turns back into the same state (keys are not included)."""
    def compact(item: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if defaults.get(k, object()) != v}

    providers = [compact({"id": p.provider_id, "kind": p.kind, "display_name": p.display_name},
                         {"display_name": ""}) for _, p in sorted(catalog.providers.items())]
    endpoints = [compact({
        "id": e.endpoint_id, "provider": e.provider_id, "base_url": e.base_url, "api_key": e.api_key_ref,
        "models": list(e.models), "priority": e.priority, "weight": e.weight, "max_concurrent": e.max_concurrent,
        "timeout_s": e.timeout_s, "first_byte_timeout_s": e.first_byte_timeout_s, "warm_on_start": e.warm_on_start},
        {"api_key": "", "models": [], "priority": 0, "weight": 1, "max_concurrent": 0, "timeout_s": 300.0,
         "first_byte_timeout_s": None, "warm_on_start": False}) for _, e in sorted(catalog.registered.items())]
    models = [compact({
        "id": x.model_id, "kind": x.kind, "aliases": list(x.aliases), "context_length": x.context_length,
        "input_price_per_1m": x.input_price_per_1m, "output_price_per_1m": x.output_price_per_1m,
        "cached_input_price_per_1m": x.cached_input_price_per_1m,
        "fallback": x.fallback_model, "capabilities": list(x.capabilities)},
        {"kind": "chat", "aliases": [], "context_length": 0, "input_price_per_1m": 0.0, "output_price_per_1m": 0.0,
         "cached_input_price_per_1m": None, "fallback": "", "capabilities": []})
        for _, x in sorted(catalog.models.items())]
    tenants = []
    for tid, t in sorted(catalog.tenants.items()):
        tenant = compact({"id": tid, "display_name": t.display_name, "all_models": t.all_models,
                          "fallback_on_quota": t.fallback_on_quota},
                         {"display_name": "", "all_models": True, "fallback_on_quota": False})
        assigned = [compact({
            "model": a.model_id, "enabled": a.enabled, "default": a.is_default, "priority": a.priority,
            "input_price_per_1m": a.input_price_per_1m, "output_price_per_1m": a.output_price_per_1m,
            "cached_input_price_per_1m": a.cached_input_price_per_1m,
            "fallback": a.fallback_model}, {"enabled": True, "default": False, "priority": 0,
                                            "input_price_per_1m": None, "output_price_per_1m": None,
                                            "cached_input_price_per_1m": None, "fallback": ""})
            for _, a in sorted(catalog.assignments.get(tid, {}).items())]
        if assigned:
            tenant["models"] = assigned
        tenants.append(tenant)
    return {"providers": providers, "endpoints": endpoints, "models": models, "tenants": tenants}
