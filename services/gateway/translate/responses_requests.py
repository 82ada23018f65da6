"""Responses requests as chat requests: the `/v1/chat/completions` body every kind of endpoint is sent.

| Responses | OpenAI chat |
|---|---|
| `instructions` | a first `system` message |
| `input` as a string | one `user` message |
| `message` items, role `user` / `system` / `developer` / `assistant` | messages (`developer` as `system`, which every server takes) |
| `input_text`, `output_text`, `refusal` parts | text (one string when a message is text alone) |
| `input_image` (a URL or data URL, `detail`) | an `image_url` part |
| `input_file`, plain text in `file_data` | text: its `filename`, a blank line, its text |
| `function_call` items (a namespace's function by its own name) | `tool_calls` of an assistant message (the one just before, when there is one) |
| `function_call_output` items | `tool` messages (`tool_call_id`: its `call_id`); their images a user message after them |
| `reasoning` items | dropped |
| `tools` (flat: `name`, `description`, `parameters`, `strict`) | `tools` (`function: {...}`) |
| a `namespace` tool's functions | `tools`, each under its own name, the namespace's description before its own |
| `tool_choice` `{"type": "function", "name"}` | `{"type": "function", "function": {"name"}}` (a mode as it is) |
| `parallel_tool_calls` | the same, with tools |
| `text.format` `json_object` / `json_schema` | `response_format` (`json_schema: {name, schema, description, strict}`) |
| `max_output_tokens` | `max_tokens`; `max_completion_tokens` to OpenAI itself (its reasoning models refuse the other) |
| `temperature`, `top_p`, `user` | the same |
| `reasoning.effort` | `reasoning_effort`, to OpenAI itself only (no `reasoning`: nothing) |
| `stream` | `stream` with `stream_options.include_usage` |
| `include: ["message.output_text.logprobs"]`, `top_logprobs` | `logprobs: true`, `top_logprobs` |
| the answer's `output_text` `logprobs` (and each text delta's) | from `logprobs.content` (`bytes` written when absent) |
| the answer's first `reasoning` item (`reasoning_text`) | from `reasoning_content` or `reasoning` |
| the answer's `function_call` items, `namespace` when a namespace holds the function | from `tool_calls` |
| the answer's `output_tokens_details.reasoning_tokens` | from `completion_tokens_details.reasoning_tokens` |
"""

from __future__ import annotations

from typing import Any

from switchyard_gateway.services.gateway.translate.anthropic_requests import user_content
from switchyard_gateway.services.gateway.translate.anthropic_wire import encode
from switchyard_gateway.services.gateway.translate.responses_wire import (
    ContentPart, InputItem, ResponsesRequest, file_text, offered, wants_logprobs,
)


def chat_body(request: ResponsesRequest, upstream_model: str, *, hosted: bool, ceiling: int | None = None) -> bytes:
    """The /v1/chat/completions body for a Responses request (`hosted`: the endpoint is OpenAI itself); its output
    held to `ceiling` tokens when that is lower than what it asks."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        shown: list[dict[str, Any]] = []          # images the function outputs just read hold
        for item in request.input or ():
            if shown and item.type != "function_call_output":
                messages.append({"role": "user", "content": shown})
                shown = []
            _add_item(messages, item, shown)
        if shown:
            messages.append({"role": "user", "content": shown})
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    limit = request.max_output_tokens
    if ceiling is not None and (limit is None or ceiling < limit):
        limit = ceiling
    if limit is not None:
        out["max_completion_tokens" if hosted else "max_tokens"] = limit
    if request.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            out[name] = value
    if hosted and request.reasoning is not None and request.reasoning.effort is not None:
        out["reasoning_effort"] = request.reasoning.effort
    if wants_logprobs(request):
        out["logprobs"] = True
        if request.top_logprobs:
            out["top_logprobs"] = request.top_logprobs
    _tools(request, out)
    answer_format = request.text.format if request.text is not None else None
    if answer_format is not None and answer_format.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif answer_format is not None and answer_format.type == "json_schema":
        schema = {"name": answer_format.name, "schema": answer_format.schema}
        for name in ("description", "strict"):
            if getattr(answer_format, name) is not None:
                schema[name] = getattr(answer_format, name)
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return encode(out)


def _tools(request: ResponsesRequest, out: dict[str, Any]) -> None:
    if not request.tools:
        return
    functions = []
    for _, tool, group in offered(request.tools):
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or {"type": "object",
                                                                                         "properties": {}}}
        description = "\n\n".join(text for text in (group.description if group else None, tool.description) if text)
        if description:
            function["description"] = description
        if tool.strict is not None:
            function["strict"] = tool.strict
        functions.append({"type": "function", "function": function})
    out["tools"] = functions
    choice = request.tool_choice
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif choice is not None:
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if request.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = request.parallel_tool_calls


def _add_item(messages: list[dict[str, Any]], item: InputItem, shown: list[dict[str, Any]]) -> None:
    """One input item appended as chat messages; a function call joins the assistant message just before it; a
    function output's images (a `tool` message holds text alone) are added to `shown`, which the caller sends as a
    user message after the run of outputs."""
    if item.type == "message":
        role = "system" if item.role == "developer" else item.role
        content = item.content
        if isinstance(content, list):
            parts = [_part(part) for part in content]
            content = user_content(parts) if role == "user" else "".join(part.get("text", "") for part in parts)
        messages.append({"role": role, "content": content})
    elif item.type == "function_call":
        call = {"id": item.call_id, "type": "function",
                "function": {"name": item.name, "arguments": item.arguments or "{}"}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if not last["content"]:
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif item.type == "function_call_output":
        output = item.output
        text = output if isinstance(output, str) else "".join(
            (file_text(part) or "") if part.type == "input_file" else part.text or ""
            for part in output or () if part.type != "input_image")
        if isinstance(output, list):
            shown.extend(_part(part) for part in output if part.type == "input_image")
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text})


def _part(part: ContentPart) -> dict[str, Any]:
    if part.type == "input_image":
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail in ("low", "high", "auto"):
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if part.type == "input_file":
        return {"type": "text", "text": file_text(part) or ""}
    return {"type": "text", "text": (part.refusal if part.type == "refusal" else part.text) or ""}
