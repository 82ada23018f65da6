"""Provider templates: the usual settings of well-known model servers, applied with customisations."""

from __future__ import annotations

import msgspec

from switchyard_gateway.contracts.events import ProviderKind


class Template(msgspec.Struct, frozen=True):
    """What applying a template registers unless the caller says otherwise.

    An empty `models` means "whatever the server advertises": probes discover them.
    """

    name: str
    kind: ProviderKind
    display_name: str
    description: str
    base_url: str
    api_key_ref: str = ""
    models: tuple[str, ...] = ()
    timeout_s: float = 300.0


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("ollama-local", "ollama", "Ollama", "An Ollama server on this machine (/api/tags, /api/ps).",
             "http://127.0.0.1:11434"),
    Template("vllm", "openai-compatible", "vLLM", "A vLLM OpenAI-compatible server.",
             "http://127.0.0.1:8000", api_key_ref="${VLLM_API_KEY}"),
    Template("llama-cpp", "openai-compatible", "llama.cpp server", "llama.cpp's llama-server.",
             "http://127.0.0.1:8080"),
    Template("lm-studio", "openai-compatible", "LM Studio", "LM Studio's local server.",
             "http://127.0.0.1:1234"),
    Template("litellm", "openai-compatible", "LiteLLM proxy", "A LiteLLM proxy in front of other providers.",
             "http://127.0.0.1:4000", api_key_ref="${LITELLM_MASTER_KEY}"),
    Template("openai", "openai", "OpenAI", "The OpenAI API; set OPENAI_API_KEY in the gateway's and router's "
             "environment.", "https://api.openai.com/v1", api_key_ref="${OPENAI_API_KEY}",
             models=("gpt-4o-mini", "gpt-4o", "text-embedding-3-small"), timeout_s=120.0),
)}


def template_view(template: Template) -> dict[str, object]:
    """A template as the admin API shows it."""
    return msgspec.to_builtins(template)
