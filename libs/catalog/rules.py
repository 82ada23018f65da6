"""What a valid registry value looks like: identifiers, model names, URLs, credential references, users, and
how long or large any field may be.

Each check returns a sentence describing the problem, or None; the registry turns
it into an error reply, `switchyard config validate` into one line of its report.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Container, Mapping, Sequence
from urllib.parse import urlsplit

IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{1,49}\Z")
MODEL_NAME_MAX = 512            # characters; an escaped id still fits a NATS subject with room to spare
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}\Z")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
PASSWORD_MIN, PASSWORD_MAX = 8, 1024      # characters; the upper bound keeps hashing cheap to refuse
DISPLAY_NAME_MAX = 200
PROVIDER_KINDS = ("ollama", "openai-compatible", "openai")
MODEL_KINDS = ("chat", "embedding")
MODEL_CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking")   # Ollama's words
# the longest text each field may hold (characters), and the most items each list may hold
TEXT_BOUNDS = {
    "display_name": DISPLAY_NAME_MAX, "name": 200, "base_url": 2048, "api_key_ref": 256, "api_key": 256, "secret": 512,
    "template": 64, "fallback_model": MODEL_NAME_MAX, "fallback": MODEL_NAME_MAX, "model_id": MODEL_NAME_MAX,
    "tenant_id": 50, "provider_id": 50, "endpoint_id": 50, "key_id": 64, "timezone": 64,   # identifiers: 2-50
}
LIST_BOUNDS = {"models": 10_000, "aliases": 100}
# the largest value each number may hold, so that no sum of them overflows a counter or a price
NUMBER_BOUNDS = {
    "priority": 1_000_000, "weight": 1_000_000, "max_concurrent": 1_000_000, "context_length": 100_000_000,
    "timeout_s": 86_400, "first_byte_timeout_s": 86_400, "input_price_per_1m": 1_000_000,
    "output_price_per_1m": 1_000_000, "cached_input_price_per_1m": 1_000_000,
}


def identifier_problem(value: object) -> str | None:
    if isinstance(value, str) and IDENTIFIER.match(value):
        return None
    return (f"'{value}' is not a valid identifier: use 2-50 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit")


def model_name_problem(value: object) -> str | None:
    """Any name a model server may advertise (`llama3.2`, `org/model:q4`, `/models/x.gguf`) is accepted;
    refused are non-strings, the empty name, absurd lengths, control and other invisible format
    characters (line breaks, NUL, bidirectional overrides) and white space at either end."""
    if not isinstance(value, str):
        return f"{_shown(value)} is not a valid model name: it must be a string"
    if not value:
        return "a model name cannot be empty"
    if len(value) > MODEL_NAME_MAX:
        return f"{_shown(value)} is not a valid model name: longer than {MODEL_NAME_MAX} characters"
    hidden = next((ch for ch in value if unicodedata.category(ch).startswith("C")), None)
    if hidden is not None:
        return (f"{_shown(value)} is not a valid model name: it contains the control or format character "
                f"U+{ord(hidden):04X}")
    if value != value.strip():
        return f"{_shown(value)} is not a valid model name: white space at its start or end"
    return None


def _shown(value: object, limit: int = 60) -> str:
    """A value quoted for an error message: escaped, and cut short when long."""
    text = repr(value) if isinstance(value, str) else f"'{value}'"
    return text if len(text) <= limit else text[:limit] + "...'"


def url_problem(value: object) -> str | None:
    """An http(s) URL with a host and, if given, a port in 1-65535; nothing a request line cannot carry
    (spaces, control characters), no user or password (credentials are `${ENV_VAR}` references, kept out
    of events and listings) and no query or fragment (calls append their own path to it, and a query would
    be stored in events). A sentence about a query says nothing of what it holds."""
    if not isinstance(value, str):
        return f"'{value}' is not an http(s) URL"
    if any(char.isspace() or unicodedata.category(char)[0] == "C" for char in value):
        return "the URL holds a space or a control character: percent-encode it"
    try:
        parts = urlsplit(value)
    except ValueError as exc:                  # an unclosed IPv6 bracket
        return f"the URL cannot be read: {exc}"
    if parts.username is not None or parts.password is not None:
        return ("a URL must not carry a user or password: give the upstream's key as api_key_ref "
                "(an environment reference like ${OPENAI_API_KEY})")
    if "?" in value or "#" in value:
        return ("a URL must not carry a query string or fragment ('?' or '#'): calls append their own path to it; "
                "give the upstream's key as api_key_ref (an environment reference like ${OPENAI_API_KEY})")
    if parts.scheme not in ("http", "https"):
        return f"'{value}' is not an http(s) URL: the scheme must be http or https"
    if not parts.hostname:
        return f"'{value}' has no host"
    try:
        port = parts.port
    except ValueError:
        return f"'{value}' has a port outside 1-65535"
    if port is not None and not 0 < port < 65536:
        return f"'{value}' has a port outside 1-65535"
    return None


OWN_SETTINGS = "SWITCHYARD_"     # the prefix of Switchyard's own settings, which no endpoint's reference may name


def credential_problem(value: object) -> str | None:
    """Credentials are only ever named, as `${ENV_VAR}`; the secret itself is refused, and so is a name of
    Switchyard's own settings (`${SWITCHYARD_JWT_SECRET}` would send the gateway's signing secret, or its
    database's password, to whatever URL the endpoint names)."""
    if value in ("", None):
        return None
    if isinstance(value, str) and ENV_REF.match(value):
        if own_setting(value[2:-1]):
            return (f"{value} names one of Switchyard's own settings, which are never sent to an upstream; "
                    f"name a variable holding the upstream's key, like ${{OPENAI_API_KEY}}")
        return None
    return ("credentials must be given as an environment reference like ${OPENAI_API_KEY}, "
            "never as the secret itself")


def own_setting(name: str) -> bool:
    """Whether an environment variable's name is one of Switchyard's own settings (any letter case)."""
    return name.upper().startswith(OWN_SETTINGS)


def read_credential(api_key_ref: str) -> str | None:
    """The secret a `${VAR}` reference names, from this process's environment; None when unset, and never one of
    Switchyard's own settings (the registry refuses such a reference; one recorded before it did is not read)."""
    name = api_key_ref[2:-1]
    if not api_key_ref or own_setting(name):
        return None
    return os.environ.get(name) or None


def bounds_problem(fields: dict[str, object]) -> tuple[str, str] | None:
    """(field, sentence) for the first field too long, with too many items or too large; None when all fit."""
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > TEXT_BOUNDS.get(name, len(value)):
            return name, f"{name} is longer than {TEXT_BOUNDS[name]} characters"
        if isinstance(value, list | tuple) and len(value) > LIST_BOUNDS.get(name, len(value)):
            return name, f"{name} has more than {LIST_BOUNDS[name]} items"
        if isinstance(value, int | float) and not isinstance(value, bool) and name in NUMBER_BOUNDS \
                and not -NUMBER_BOUNDS[name] <= value <= NUMBER_BOUNDS[name]:
            return name, f"{name} must be between -{NUMBER_BOUNDS[name]} and {NUMBER_BOUNDS[name]}"
    return None


def duplicate(values: Sequence[object], field: str) -> tuple[int, str] | None:
    """(index, sentence) for the first item of a list that an earlier one already holds; None when none repeats."""
    first: dict[object, int] = {}
    for i, value in enumerate(values):
        if value in first:
            return i, repeated_problem(value, f"{field}[{first[value]}]")
        first[value] = i
    return None


def repeated_problem(value: object, first: str) -> str:
    return f"{_shown(value)} is listed twice (first at {first}): each may be listed once"


def fallback_cycle(start: str, fallback_of: Callable[[str], str],
                   resolve: Callable[[str], str | None]) -> list[str] | None:
    """The models a fallback chain goes through from `start` back to it (`[a, b, a]`); None when the chain
    ends, names an unknown model, or runs into a loop that `start` is not on (that loop is not start's).
    `fallback_of(model_id)` is the name a model falls back to first ('' for none)."""
    trail, seen = [start], {start}
    name = fallback_of(start)
    while name:
        model_id = resolve(name)
        if model_id is None:
            return None
        trail.append(model_id)
        if model_id == start:
            return trail
        if model_id in seen:
            return None
        seen.add(model_id)
        name = fallback_of(model_id)
    return None


def cycle_problem(cycle: list[str], tenant_id: str | None = None) -> str:
    whose = f" for tenant '{tenant_id}'" if tenant_id is not None else ""
    return (f"fallback cycle{whose}: {' -> '.join(_shown(name, 80) for name in cycle)}; a fallback chain must end "
            "at a model without a fallback")


def normalise_model(name: str) -> str:
    """A model name as discovery records it: Ollama's default `:latest` tag dropped."""
    return name[:-7] if name.endswith(":latest") else name


def guess_kind(name: str) -> str:
    """The kind of a discovered model, from its name (an admin can correct it)."""
    return "embedding" if "embed" in name.lower() else "chat"


def username_problem(value: object) -> str | None:
    if isinstance(value, str) and USERNAME.match(value):
        return None
    return (f"{_shown(value)} is not a valid username: use 1-64 of letters, digits, '.', '_', '@', '+' and '-', "
            "starting with a letter or digit")


def password_problem(value: object) -> str | None:
    """Long enough to resist guessing, short enough to hash cheaply; anything printable otherwise."""
    if not isinstance(value, str):
        return "the password must be a string"
    if len(value) < PASSWORD_MIN:
        return f"the password must be at least {PASSWORD_MIN} characters"
    if len(value) > PASSWORD_MAX:
        return f"the password must be at most {PASSWORD_MAX} characters"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "the password cannot contain control characters"
    return None


def display_name_problem(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > DISPLAY_NAME_MAX:
        return f"a display name is a string of at most {DISPLAY_NAME_MAX} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        return "a display name cannot contain control or format characters"
    if value and not value.strip():             # shown in lists and the console as nothing at all
        return "a display name cannot be white space alone: leave it empty for none"
    return None


def resolve_model_name(name: str, ids: Container[str], aliases: Mapping[str, str]) -> str | None:
    """A model id from a name: the id itself, an alias of it, or either with `:latest` (the same model); None
    when no model answers to it. The registry's catalog and a document's checks resolve names with this."""
    while True:
        if name in ids:
            return name
        if name in aliases:
            return aliases[name]
        base = name.removesuffix(":latest")
        if base == name:
            return None
        name = base
