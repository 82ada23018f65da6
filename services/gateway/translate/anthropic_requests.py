"""Anthropic Messages requests as chat requests: OpenAI `/v1/chat/completions` bodies, and Ollama `/api/chat` ones.

| Anthropic | OpenAI chat | Ollama `/api/chat` |
|---|---|---|
| `system` (text or text blocks) | a first `system` message | a first `system` message |
| a `system` turn among the messages | a `system` message where it stands | the same |
| text blocks | `content` (text, or parts beside images) | `content` |
| image block, base64 / URL | `image_url` part, data URL / the URL | `images` (base64; a URL cannot be sent) |
| plain-text `document` block (`text` / `content` source) | text: its title, context and text (a `content` source's images as image parts) | the same, in `content` (images in `images`) |
| assistant `tool_use` blocks | `tool_calls` (arguments as JSON text) | `tool_calls` (arguments as an object) |
| user `tool_result` blocks | `tool` messages (`tool_call_id`), before the user's other content | `tool` messages (`tool_name`) |
| a `tool_result`'s images / plain-text documents | image parts of the user's content after it / its text | `images` / its text |
| `tool_result` with `is_error` | its text after `Error: ` (`Error` when it has none) | the same |
| `thinking` blocks | dropped | dropped |
| `thinking` disabled / enabled or adaptive | not sent (no standard field) | `think: false` / not sent (the model's default; Ollama refuses `think: true` to a model that cannot think) |
| `tools` (`input_schema`) | `tools` (`function.parameters`) | `tools` |
| `tool_choice` auto / any / tool / none | `auto` / `required` / the function / `none` | all tools / all / only that tool / no tools |
| `disable_parallel_tool_use` | `parallel_tool_calls: false` | — |
| `max_tokens`, `stop_sequences` | `max_tokens`, `stop` | `options.num_predict`, `options.stop` |
| `temperature`, `top_p`, `top_k` | the same (`top_k` only to OpenAI-compatible servers) | `options` |
| `metadata.user_id` | `user` | — |
| `output_config.format` (or `output_format`) `json_schema` | `response_format` `json_schema` (`name: "output"`) | `format` (the schema) |
| `stream` | `stream` with `stream_options.include_usage` | `stream` |
| a final `assistant` turn (prefill) | continued: `continue_final_message` (not to `openai`) | continued as it is |
| the answer's first block, `thinking` | from `reasoning_content` or `reasoning` | from `message.thinking` |

A final assistant turn is what the answer continues, as Anthropic does (`prefill`). Each kind of server is asked so
its own way: an OpenAI-compatible one gets vLLM's `continue_final_message: true` with `add_generation_prompt: false`
(vLLM and llama.cpp's llama-server refuse the first without the second; TGI reads the first too; a llama-server too
old to know them continues a final assistant message by itself). A server may repeat the prefill at the start of its
answer (llama-server does in a whole answer, and in a stream without those fields), which the answer's translation
takes off. Ollama's `/api/chat` continues a final assistant message itself and answers the rest. OpenAI refuses
fields it does not know and has no way to continue a turn: an `openai` endpoint is sent the turn as it is, and
answers a new one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.anthropic_wire import (
    Base64ImageSource, ContentSource, CountTokensRequest, DocumentBlock, ImageBlock, InputMessage, MessagesRequest,
    PlainTextSource, TextBlock, ThinkingDisabled, ToolResultBlock, ToolUseBlock, encode,
)
from switchyard_gateway.services.gateway.translate.prefill import ask_to_continue
from switchyard_gateway.services.gateway.translate.wire import TranslationError


def system_text(system: str | list[TextBlock] | None) -> str:
    """The system prompt as one text."""
    if system is None or isinstance(system, str):
        return system or ""
    return "\n".join(block.text for block in system)


def prefill(request: MessagesRequest | CountTokensRequest) -> str | None:
    """The text a final assistant turn begins the answer with (Anthropic's prefill); None when the last turn is the
    user's."""
    last = request.messages[-1]
    if last.role != "assistant":
        return None
    content = last.content
    return content if isinstance(content, str) else "".join(b.text for b in content if isinstance(b, TextBlock))


def document_parts(block: DocumentBlock) -> tuple[str, list[ImageBlock]]:
    """A plain-text document as the text a model reads (its title, its context, then its text, a blank line
    between) and the images a `content` source holds; the door has refused every other source."""
    source = block.source
    if isinstance(source, PlainTextSource):
        body, images = source.data, []
    elif isinstance(source, ContentSource):
        content = source.content
        blocks = [TextBlock(content)] if isinstance(content, str) else content
        body = "\n".join(part.text for part in blocks if isinstance(part, TextBlock))
        images = [part for part in blocks if isinstance(part, ImageBlock)]
    else:
        raise TranslationError("only plain-text documents can be sent on")
    text = "\n\n".join(piece for piece in (block.title, block.context, body) if piece)
    return text, images


def answer_schema(request: CountTokensRequest) -> dict[str, Any] | None:
    """The JSON schema the answer's text must follow (structured outputs), if the request gives one."""
    config = request.output_config
    chosen = config.format if config is not None and config.format is not None else request.output_format
    return chosen.schema if chosen is not None else None


def openai_chat_body(request: MessagesRequest, upstream_model: str, *, top_k: bool,
                     output_field: str = "max_tokens", continues: bool = False) -> bytes:
    """The /v1/chat/completions body for a Messages request (`top_k`: whether the server takes that extension;
    `output_field`: the name it reads the output limit by, `max_completion_tokens` for OpenAI itself, whose
    reasoning models refuse `max_tokens`; `continues`: whether it takes `continue_final_message`)."""
    messages: list[dict[str, Any]] = []
    system = system_text(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        messages.extend(_openai_messages(message))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages, output_field: request.max_tokens}
    if request.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if request.stop_sequences:
        out["stop"] = request.stop_sequences
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            out[name] = value
    if top_k and request.top_k is not None:
        out["top_k"] = request.top_k
    if continues and messages and messages[-1]["role"] == "assistant":   # a prefill: continued, not answered
        ask_to_continue(out)
    if request.metadata is not None and request.metadata.user_id:
        out["user"] = request.metadata.user_id
    _openai_tools(request, out)
    schema = answer_schema(request)
    if schema is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    return encode(out)


def _openai_tools(request: MessagesRequest, out: dict[str, Any]) -> None:
    if not request.tools:
        return
    out["tools"] = [_function(tool.name, tool.description, tool.input_schema) for tool in request.tools]
    choice = request.tool_choice
    if choice is None:
        return
    if choice.type == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False


def _function(name: str, description: str | None, schema: dict[str, Any] | msgspec.UnsetType) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": schema or {"type": "object", "properties": {}}}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def _openai_messages(message: InputMessage) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results first (each its own `tool` message), then the rest."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif isinstance(block, DocumentBlock):
            text, images = document_parts(block)
            parts.append({"type": "text", "text": text})
            parts.extend({"type": "image_url", "image_url": {"url": _image_url(image)}} for image in images)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": encode(block.input).decode()}})
        elif isinstance(block, ToolResultBlock):
            text, images = _result_parts(block)
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
            parts.extend({"type": "image_url", "image_url": {"url": _image_url(image)}} for image in images)
    if message.role == "assistant":
        text = "".join(part["text"] for part in parts if part["type"] == "text")
        if not text and not calls:          # a turn of thinking blocks alone: nothing is left of it to send
            return out
        if text:
            reply: dict[str, Any] = {"role": "assistant", "content": text}
        else:
            reply = {"role": "assistant", "content": None}
        if calls:
            reply["tool_calls"] = calls
        out.append(reply)
    elif parts:                             # a user's turn, or a system one (text alone)
        out.append({"role": message.role, "content": user_content(parts)})
    return out


def user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text alone as one string (what every server takes); parts when there are images."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _image_url(block: ImageBlock) -> str:
    source = block.source
    if isinstance(source, Base64ImageSource):
        return f"data:{source.media_type};base64,{source.data}"
    return source.url


def _result_parts(block: ToolResultBlock) -> tuple[str, list[ImageBlock]]:
    """A tool result's text (a plain-text document's as `document_parts` gives it), and the images it carries. A
    result with `is_error` says so in its text (`Error: ...`, or `Error` alone), as a `tool` message has no other way
    to: else the model takes the failure for an answer."""
    content = block.content
    if content is None or isinstance(content, str):
        text, images = content or "", []
    else:
        texts: list[str] = []
        images = []
        for part in content:
            if isinstance(part, TextBlock):
                texts.append(part.text)
            elif isinstance(part, ImageBlock):
                images.append(part)
            else:
                document_text, document_images = document_parts(part)
                texts.append(document_text)
                images.extend(document_images)
        text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return text, images


# --- Ollama /api/chat -------------------------------------------------------------------------------

def ollama_chat_body(request: MessagesRequest, upstream_model: str) -> bytes:
    """The /api/chat body for a Messages request, `thinking` disabled as Ollama's `think: false`; TranslationError for
    an image given by URL (Ollama takes base64)."""
    messages: list[dict[str, Any]] = []
    system = system_text(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    names: dict[str, str] = {}               # tool_use id -> tool name, for the results that answer them
    for message in request.messages:
        messages.extend(_ollama_messages(message, names))
    options: dict[str, Any] = {"num_predict": request.max_tokens}
    if request.stop_sequences:
        options["stop"] = request.stop_sequences
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            options[name] = value
    out: dict[str, Any] = {"model": upstream_model, "messages": messages, "stream": request.stream,
                           "options": options}
    if isinstance(request.thinking, ThinkingDisabled):   # asked to think: the model's default, since Ollama refuses
        out["think"] = False                              # `think: true` (400) to a model that cannot
    tools = _ollama_tools(request)
    if tools:
        out["tools"] = tools
    schema = answer_schema(request)
    if schema is not None:
        out["format"] = schema
    return encode(out)


def _ollama_tools(request: MessagesRequest) -> list[dict[str, Any]]:
    """Ollama has no `tool_choice`: `none` offers no tools, `tool` only the one named."""
    choice = request.tool_choice
    if not request.tools or (choice is not None and choice.type == "none"):
        return []
    named = choice.name if choice is not None and choice.type == "tool" else None
    return [_function(tool.name, tool.description, tool.input_schema) for tool in request.tools
            if named is None or tool.name == named]


def _ollama_messages(message: InputMessage, names: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            images.append(_base64(block))
        elif isinstance(block, DocumentBlock):
            text, document_images = document_parts(block)
            texts.append(text)
            images.extend(_base64(image) for image in document_images)
        elif isinstance(block, ToolUseBlock):
            names[block.id] = block.name
            calls.append({"function": {"name": block.name, "arguments": block.input}})
        elif isinstance(block, ToolResultBlock):
            text, result_images = _result_parts(block)
            result: dict[str, Any] = {"role": "tool", "content": text}
            if block.tool_use_id in names:
                result["tool_name"] = names[block.tool_use_id]
            out.append(result)
            images.extend(_base64(image) for image in result_images)
    if texts or images or calls or (not out and message.role != "assistant"):   # thinking alone: nothing left
        reply: dict[str, Any] = {"role": message.role, "content": "\n".join(texts)}
        if images:
            reply["images"] = images
        if calls:
            reply["tool_calls"] = calls
        out.append(reply)
    return out


def _base64(block: ImageBlock) -> str:
    if isinstance(block.source, Base64ImageSource):
        return block.source.data
    raise TranslationError("Ollama endpoints take images as base64 data, not by URL: "
                           "send the image as a base64 source")
