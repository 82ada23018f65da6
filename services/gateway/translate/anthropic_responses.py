"""Whole answers and errors for the Anthropic door: OpenAI and Ollama chat answers as Anthropic messages, any error in Anthropic's shape.

Stop reasons: `length` → `max_tokens`; `tool_calls` (or any finish with tool calls made) → `tool_use`;
`content_filter` → `refusal`; a finish the upstream says a stop string caused (vLLM's `stop_reason`,
when it is one of the request's `stop_sequences`) → `stop_sequence` naming it; anything else → `end_turn`.
Usage: Anthropic's `input_tokens` leaves out what the prompt cache served, which is
`cache_read_input_tokens`; the usage event keeps the whole prompt count with `cached_tokens`.
The upstream's reasoning (`reasoning_content` or `reasoning` of an OpenAI message, `thinking` of an Ollama one) is a
`thinking` block before the text and tool calls, its `signature` empty.
"""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.contracts.events import random_hex
from switchyard_gateway.services.gateway.edge.errors import ANTHROPIC_TYPES, anthropic_type
from switchyard_gateway.services.gateway.translate.anthropic_wire import (
    ContentBlock, ErrorObject, ErrorResponse, MessagesResponse, MessagesUsage, StopReason, TextContent,
    ThinkingContent, ToolUseContent, encode, sse,
)
from switchyard_gateway.services.gateway.translate.overflow import anthropic_overflow, overflow_of
from switchyard_gateway.services.gateway.translate.prefill import after_prefill
from switchyard_gateway.services.gateway.translate.responses import usage_counts
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, TokenCounts, TranslationError, believable, decode_any, error_message, text_or_nothing, tool_arguments,
    whole_reply,
)


def message_id() -> str:
    return f"msg_{random_hex(12)}"        # from the process's pool of random bytes: no system call per id


def tool_use_id() -> str:
    return f"toolu_{random_hex(12)}"


def stop_reason(finish: str | None, tool_called: bool, matched: Any = None,
                stop_sequences: list[str] | None = None, refused: bool = False) -> tuple[StopReason, str | None]:
    """(stop_reason, stop_sequence) for an upstream's finish; `matched` is the stop string it reports, if any;
    `refused`: the model declined (an OpenAI `refusal`), which Anthropic's answer says as a content filter's."""
    if finish in ("tool_calls", "function_call") or (tool_called and finish in (None, "stop")):
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter" or refused:
        return "refusal", None
    if isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def usage_block(counts: TokenCounts | None) -> MessagesUsage:
    if counts is None:
        return MessagesUsage(input_tokens=0, output_tokens=0)
    prompt, completion, cached = counts
    return MessagesUsage(input_tokens=max(0, prompt - cached), output_tokens=completion,
                         cache_read_input_tokens=cached or None)


def openai_to_message(data: bytes, model: str, stop_sequences: list[str] | None = None,
                      estimate: TokenCounts | None = None, prefill: str | None = None, thinking: bool = True) -> bytes:
    """A chat.completion as an Anthropic message; its usage the gateway's `estimate` when the relay made one (it
    believed no counts of the upstream's), else the upstream's. Its text begins after `prefill`, the final assistant
    turn the upstream continued, when the upstream repeats that at its start (llama.cpp's llama-server does). The
    upstream's reasoning is a first `thinking` block when the request asked for thinking (`thinking`)."""
    reply = whole_reply(data)
    choice = next((c for c in reply.choices or () if c.index == 0), Choice())
    message = choice.message
    text = ((message.content or "") + (message.refusal or "") if message else "") or choice.text   # a refusal: text
    text = after_prefill(text, prefill)
    tools = [ToolUseContent(call.id or tool_use_id(), call.function.name or "", tool_arguments(call.function.arguments))
             for call in (message.tool_calls if message else None) or () if call.function is not None]
    thought = message.thought if message and thinking else ""
    content: list[ContentBlock] = [ThinkingContent(thought)] if thought else []
    content += [TextContent(text), *tools] if text else tools
    reason, sequence = stop_reason(choice.finish_reason, bool(tools), choice.stop_reason, stop_sequences,
                                   refused=bool(message and message.refusal))
    counts = believable(usage_counts(reply.usage)) if reply.usage is not None else None
    return encode(MessagesResponse(id=message_id(), model=model, content=content, stop_reason=reason,
                                   stop_sequence=sequence, usage=usage_block(estimate or counts)))


class _OllamaFunction(msgspec.Struct):
    name: str = ""
    arguments: Any = None


class _OllamaToolCall(msgspec.Struct):
    function: _OllamaFunction | None = None


class _OllamaMessage(msgspec.Struct):
    content: str = ""
    thinking: Any = None                    # the model's reasoning (Ollama's `think`), read as `text_or_nothing`
    tool_calls: list[_OllamaToolCall] | None = None


class OllamaChatLine(msgspec.Struct):
    """A whole /api/chat answer, or one line of its stream."""

    message: _OllamaMessage | None = None
    done: bool = False
    done_reason: str | None = None
    # read as written, whatever their type (a float, text): `believable` judges them, and the call's tokens are
    # estimated when it believes none (a count of 10.0 made a whole answer unreadable: 502)
    prompt_eval_count: Any = None
    eval_count: Any = None
    prompt_eval_cached_count: Any = None
    error: Any = None

    @property
    def counts(self) -> TokenCounts | None:
        prompt, output, cached = self.prompt_eval_count, self.eval_count, self.prompt_eval_cached_count
        if prompt is None and output is None:
            return None
        return TokenCounts(prompt if prompt is not None else 0, output if output is not None else 0,
                           cached if type(cached) is int and cached > 0 else 0)


decode_ollama_line = msgspec.json.Decoder(OllamaChatLine).decode


def ollama_tool_content(call: _OllamaToolCall) -> ToolUseContent:
    function = call.function or _OllamaFunction()
    arguments = function.arguments
    if isinstance(arguments, str):
        arguments = tool_arguments(arguments)
    return ToolUseContent(tool_use_id(), function.name, arguments if isinstance(arguments, dict) else {})


def ollama_to_message(data: bytes, model: str, estimate: TokenCounts | None = None, thinking: bool = True) -> bytes:
    """A whole /api/chat answer as an Anthropic message; its usage the gateway's `estimate` when the relay made
    one, else the upstream's; its `thinking` a first block when the request asked for thinking (`thinking`)."""
    try:
        reply = decode_ollama_line(data)
    except msgspec.MsgspecError as exc:
        raise TranslationError(f"The upstream answer is not an Ollama chat answer: {exc}") from None
    if reply.message is None:
        raise TranslationError("The upstream answer is not an Ollama chat answer: it holds no message")
    message = reply.message
    thought = text_or_nothing(message.thinking) if thinking else ""
    content: list[ContentBlock] = [ThinkingContent(thought)] if thought else []
    if message.content:
        content.append(TextContent(message.content))
    content.extend(ollama_tool_content(call) for call in message.tool_calls or ())
    reason, sequence = stop_reason(reply.done_reason, bool(message.tool_calls))
    return encode(MessagesResponse(id=message_id(), model=model, content=content, stop_reason=reason,
                                   stop_sequence=sequence,
                                   usage=usage_block(estimate or believable(reply.counts))))


# --- errors -----------------------------------------------------------------------------------------

def error_body(status: int, message: str) -> bytes:
    """An error in Anthropic's shape (the gateway's own errors: `GatewayError.render("anthropic")`)."""
    return encode(ErrorResponse(ErrorObject(type=anthropic_type(status), message=message)))


def upstream_error(data: bytes, status: int) -> bytes:
    """An upstream's error answer (OpenAI `{"error": {...}}`, Ollama `{"error": "..."}`, or text) in Anthropic's shape;
    a prompt longer than the model's context in Anthropic's words for it (`prompt is too long: N tokens > M maximum`)."""
    try:
        body = decode_any(data)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict) and "error" in body:
        said, message = body["error"], error_message(body["error"])
    elif isinstance(body, dict) and "message" in body:
        said = message = str(body["message"])
    else:
        said = message = data.decode(errors="replace").strip() or f"The upstream answered {status}"
    overflow = overflow_of(said, status)
    return error_body(status, anthropic_overflow(overflow) if overflow is not None else message)


def error_event(message: str, status: int = 502) -> bytes:
    """The `error` event that ends a stream which cannot go on."""
    return sse(ErrorResponse(ErrorObject(type=anthropic_type(status), message=message)))


_STATUS_OF_TYPE = {kind: status for status, kind in sorted(ANTHROPIC_TYPES.items(), reverse=True)}


def stream_error_status(error: Any) -> int:
    """The status an upstream's error inside its stream stands for, which picks the `error` event's type: its `code`
    when that is an HTTP error status (`{"error": {"code": 400, ...}}`, as vLLM writes its errors), else its `type` when
    that is one of Anthropic's error types (`invalid_request_error` is OpenAI's name too), else 502 (`api_error`)."""
    if not isinstance(error, dict):
        return 502
    code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    return _STATUS_OF_TYPE.get(error.get("type"), 502)
