"""Ollama-format request bodies rewritten for an endpoint: renamed for Ollama itself, translated for OpenAI-style servers.

/api/chat becomes /v1/chat/completions. /api/generate becomes a chat call too (a `system`
message and a `user` message), because Ollama applies the model's prompt template to it
and chat is what every OpenAI-style server serves; with `raw: true` or a `suffix` it
becomes /v1/completions, which takes the prompt as it is. /api/embed and /api/embeddings
become /v1/embeddings asking for floats. A stream (Ollama's default) always asks for the
usage chunk. Ollama options with an OpenAI twin are kept (`num_predict` -> `max_tokens`);
the ones without (`top_k`, `num_ctx`, `repeat_penalty`, `keep_alive`, `think`, ...) are dropped.
A `ceiling` (the output tokens the call's reservation granted) is written as
`options.num_predict` for Ollama and as `max_tokens` once translated, unless the
client asked for less.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.asks import OllamaFunction, OllamaMessage
from switchyard_gateway.services.gateway.translate.keep_alive import held
from switchyard_gateway.services.gateway.translate.prefill import ask_to_continue
from switchyard_gateway.services.gateway.translate.wire import TranslationError, encode, request_decoder

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"

# Ollama option -> OpenAI parameter, for those with the same meaning
_OPTIONS = {
    "num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
    "stop": "stop", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}
# the first bytes of a base64 image -> its media type (Ollama sends bare base64, OpenAI wants a data URL)
_IMAGE_TYPES = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


class _Common(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    options: dict[str, Any] | None = None
    format: Any = None


class _Chat(_Common):
    messages: list[OllamaMessage] = []
    tools: msgspec.Raw = msgspec.Raw()     # passed through as sent; empty when absent


class _Generate(_Common):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    images: list[str] | None = None
    raw: bool = False


class _Embed(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None
    prompt: str | None = None               # /api/embeddings spells it so
    dimensions: int | None = None


class _Model(msgspec.Struct):
    model: str = ""


_decode_chat = request_decoder(_Chat)
_decode_generate = request_decoder(_Generate)
_decode_embed = request_decoder(_Embed)
_decode_model = request_decoder(_Model)
_decode_object = request_decoder(dict[str, Any])


def _read(decode: Any, body: bytes) -> Any:
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise TranslationError(f"Invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise TranslationError(f"Malformed JSON in request body: {exc}") from None
    except RecursionError:
        raise TranslationError("The request body is nested too deeply to read") from None


def ollama_model(body: bytes) -> str:
    """The `model` an Ollama-format body names ("" when it names none)."""
    return _read(_decode_model, body).model


def ollama_set_model(body: bytes, upstream_model: str, ceiling: int | None = None) -> bytes:
    """The body for an Ollama endpoint: untouched, unless the endpoint knows the model by another name, the
    call's output must be held to a ceiling (`options.num_predict`), or its `keep_alive` is past the bounds a
    shared server keeps (keep_alive.py: held to them)."""
    data = _read(_decode_object, body)
    keep_alive = data.get("keep_alive")
    kept = held(keep_alive)
    if data.get("model") == upstream_model and ceiling is None and kept is keep_alive:
        return body
    data["model"] = upstream_model
    if kept is not keep_alive:
        data["keep_alive"] = kept
    if ceiling is not None:
        options = data.get("options")
        options = options if isinstance(options, dict) else {}
        asked = _whole(options.get("num_predict"))
        if asked is None or asked < 0 or asked > ceiling:
            options["num_predict"] = ceiling
        data["options"] = options
    return encode(data)


def ollama_chat_to_openai(body: bytes, upstream_model: str, ceiling: int | None = None, *,
                          continues: bool = False) -> bytes:
    """An /api/chat body as a /v1/chat/completions body; `continues`: the final assistant message is a prefill the
    server is asked to continue, as Ollama does (translate/prefill.py)."""
    req = _read(_decode_chat, body)
    out: dict[str, Any] = {"model": upstream_model, "messages": _messages(req.messages)}
    if _offers_tools(req.tools):
        out["tools"] = req.tools
    _common(req, out, chat=True, ceiling=ceiling)
    if continues:
        ask_to_continue(out)
    return encode(out)


def _offers_tools(tools: msgspec.Raw) -> bool:
    """Whether a chat's `tools` offers any: absent, `null` and `[]` (which llama-index sends with every chat) offer
    none, and are not sent on, since OpenAI refuses an empty `tools` (400, an array too short)."""
    text = bytes(tools).strip()
    return bool(text) and text != b"null" and not (text.startswith(b"[") and text[1:].strip() == b"]")


def ollama_generate_to_openai(body: bytes, upstream_model: str, ceiling: int | None = None) -> bytes:
    """An /api/generate body as a /v1/chat/completions body, or a /v1/completions one when raw or with a suffix
    (`ollama_generate_request` says which)."""
    return ollama_generate_request(body, upstream_model, ceiling)[1]


def ollama_generate_request(body: bytes, upstream_model: str, ceiling: int | None = None) -> tuple[str, bytes]:
    """(OpenAI path, body) for an /api/generate body."""
    req = _read(_decode_generate, body)
    if req.raw or req.suffix:
        out: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt}
        if req.suffix:
            out["suffix"] = req.suffix
        _common(req, out, chat=False, ceiling=ceiling)
        return COMPLETIONS_PATH, encode(out)
    messages: list[dict[str, Any]] = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": _content(req.prompt, req.images)})
    out = {"model": upstream_model, "messages": messages}
    _common(req, out, chat=True, ceiling=ceiling)
    return CHAT_PATH, encode(out)


def ollama_generate_path(body: bytes) -> str:
    """The OpenAI path `ollama_generate_to_openai` writes for: completions when raw or with a suffix, else chat."""
    req = _read(_decode_generate, body)
    return COMPLETIONS_PATH if req.raw or req.suffix else CHAT_PATH


def ollama_embed_to_openai(body: bytes, upstream_model: str, ceiling: int | None = None) -> bytes:
    """An /api/embed body (`input`; `prompt` when it has none) as a /v1/embeddings body asking for floats."""
    req = _read(_decode_embed, body)
    return _embeddings_body(req.input if req.input is not None else (req.prompt or ""), req, upstream_model)


def ollama_embeddings_to_openai(body: bytes, upstream_model: str, ceiling: int | None = None) -> bytes:
    """An /api/embeddings body as a /v1/embeddings body: its `prompt` alone, as Ollama reads it."""
    req = _read(_decode_embed, body)
    return _embeddings_body(req.prompt or "", req, upstream_model)


def _embeddings_body(text: str | list[str], req: _Embed, upstream_model: str) -> bytes:
    out: dict[str, Any] = {"model": upstream_model, "input": text, "encoding_format": "float"}
    if req.dimensions is not None:
        out["dimensions"] = req.dimensions
    return encode(out)


def _common(req: _Chat | _Generate, out: dict[str, Any], chat: bool, ceiling: int | None = None) -> None:
    """Stream flags, sampling options, the output ceiling and the answer format, shared by chat and generate."""
    for name, value in (req.options or {}).items():
        target = _OPTIONS.get(name)
        if target is None or value is None:
            continue
        if target in ("max_tokens", "seed"):    # integers, which Ollama reads from any number (truncated)
            value = _whole(value)
            if value is None or (target == "max_tokens" and value < 0):
                continue                   # -1 (no limit) and -2 (fill the context) have no OpenAI twin
        out[target] = value
    if ceiling is not None and (out.get("max_tokens") is None or out["max_tokens"] > ceiling):
        out["max_tokens"] = ceiling
    if chat and req.format:
        out["response_format"] = _response_format(req.format)
    if req.stream is False:
        out["stream"] = False
    else:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}


def _whole(value: Any) -> int | None:
    """An Ollama integer option as Ollama takes it: any number, truncated (a float kept as written, `5.0`, is 5);
    None for anything else."""
    if isinstance(value, msgspec.Raw):
        value = float(bytes(value))
    if type(value) is float:
        return int(value) if math.isfinite(value) else None
    return value if type(value) is int else None


def _response_format(fmt: Any) -> dict[str, Any]:
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return {"type": "json_object"}


def _content(text: str | None, images: list[str] | None) -> Any:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        url = f"data:{_media_type(image)};base64,{image}"      # the door took base64 alone, as Ollama does
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _media_type(image: str) -> str:
    return next((kind for prefix, kind in _IMAGE_TYPES if image.startswith(prefix)), "image/png")


def _messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI messages; tool calls get ids, and tool results the id of the call they answer."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []    # (call id, function name) not answered yet
    for number, m in enumerate(messages):
        if m.role == "tool":
            call_id = _answered_call(pending, m.tool_name) or f"call_{number}"
            out.append({"role": "tool", "content": m.content or "", "tool_call_id": call_id})
            continue
        message: dict[str, Any] = {"role": m.role, "content": _content(m.content, m.images)}
        if m.tool_calls:
            calls = []
            for i, call in enumerate(m.tool_calls):
                function = call.function or OllamaFunction()
                call_id = call.id or f"call_{number}_{i}"
                pending.append((call_id, function.name))
                arguments = function.arguments if function.arguments is not None else {}
                text = arguments if isinstance(arguments, str) else encode(arguments).decode()
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": function.name, "arguments": text}})
            message["tool_calls"] = calls
            if not m.content:
                message["content"] = None
        out.append(message)
    return out


def _answered_call(pending: list[tuple[str, str]], name: str | None) -> str | None:
    for i, (call_id, function) in enumerate(pending):
        if name is None or function == name:
            del pending[i]
            return call_id
    return pending.pop(0)[0] if pending else None
