"""What a valid registry value looks like: identifiers, model names, URLs, credential references.

Each check returns a sentence describing the problem, or None; the registry turns
it into an error reply, `switchyard config validate` into one line of its report.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{1,49}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
PROVIDER_KINDS = ("ollama", "openai-compatible", "openai")
MODEL_KINDS = ("chat", "embedding")


def identifier_problem(value: object) -> str | None:
    if isinstance(value, str) and IDENTIFIER.match(value):
        return None
    return (f"'{value}' is not a valid identifier: use 2-50 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit")


def model_name_problem(value: object) -> str | None:
    if isinstance(value, str) and MODEL_NAME.match(value):
        return None
    return f"'{value}' is not a valid model name"


def url_problem(value: object) -> str | None:
    """An http(s) URL with a host and, if given, a port in 1-65535."""
    if not isinstance(value, str):
        return f"'{value}' is not an http(s) URL"
    parts = urlsplit(value)
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


def credential_problem(value: object) -> str | None:
    """Credentials are only ever named, as `${ENV_VAR}`; the secret itself is refused."""
    if value in ("", None) or (isinstance(value, str) and ENV_REF.match(value)):
        return None
    return ("credentials must be given as an environment reference like ${OPENAI_API_KEY}, "
            "never as the secret itself")


def normalise_model(name: str) -> str:
    """A model name as discovery records it: Ollama's default `:latest` tag dropped."""
    return name[:-7] if name.endswith(":latest") else name


def guess_kind(name: str) -> str:
    """The kind of a discovered model, from its name (an admin can correct it)."""
    return "embedding" if "embed" in name.lower() else "chat"
