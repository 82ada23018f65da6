"""The OpenAI-style routes (/v1/...), as vLLM and OpenAI itself serve them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from switchyard_gateway.simulator import synth
from switchyard_gateway.simulator.tools import Function, Tool, arguments, chosen_tool, cut_at_stop, offered_tokens
from switchyard_gateway.simulator.config import SimConfig
from switchyard_gateway.simulator.replies import (
    SSE,
    SSE_DONE,
    TEXT,
    Rejected,
    Reply,
    StreamReply,
    decode_request,
    json_reply,
    openai_error,
    per_token,
    sse_event,
)

OWNED_BY = "switchyard-simulator"


class ContentPart(msgspec.Struct):
    type: str = "text"
    text: str = ""


class ChatMessage(msgspec.Struct):
    role: str = "user"
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: str | list[str | int | list[int]] = ""
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


_chat = msgspec.json.Decoder(ChatRequest)
_completion = msgspec.json.Decoder(CompletionRequest)
_embedding = msgspec.json.Decoder(EmbeddingRequest)


def _known(cfg: SimConfig, model: str) -> None:
    if not cfg.has_model(model):
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise Rejected(openai_error(404, message, "invalid_request_error", "model_not_found"))


def _prompt_tokens(req: ChatRequest, prompt: str, cfg: SimConfig) -> int:
    """What a chat's prompt is billed: its text, the tools offered and each `image_url` part's `image_tokens`."""
    images = sum(1 for m in req.messages if isinstance(m.content, list) for p in m.content if p.type == "image_url")
    return synth.count_tokens(prompt) + offered_tokens(req.tools) + images * cfg.image_tokens


def message_text(messages: list[ChatMessage]) -> str:
    """Every message's text, one per line; the prompt a reply is derived from."""
    parts = []
    for m in messages:
        if isinstance(m.content, str):
            parts.append(m.content)
        elif m.content:
            parts.extend(p.text for p in m.content if p.text)
    return "\n".join(parts)


def prompt_texts(prompt: str | list[str | int | list[int]]) -> list[str]:
    """One text per prompt; token arrays become their numbers, one word each."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [" ".join(map(str, prompt))]
    return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt if p != ""]


def _usage(prompt: int, completion: int, cfg: SimConfig) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if cfg.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cfg.cached_tokens, prompt)}
    return usage


def _head(reply_id: str, object_type: str, model: str) -> dict[str, object]:
    return {"id": reply_id, "object": object_type, "created": int(time.time()), "model": model}


def _finish(n: int, cfg: SimConfig) -> str:
    return "length" if n < cfg.tokens else "stop"


def chat_completions(body: bytes, cfg: SimConfig, serial: int) -> Reply | StreamReply:
    """POST /v1/chat/completions."""
    req = decode_request("/v1/chat/completions", body, _chat)
    _known(cfg, req.model)
    prompt = message_text(req.messages)
    head = _head(f"chatcmpl-{serial:024x}", "chat.completion.chunk" if req.stream else "chat.completion", req.model)
    tool = chosen_tool(req.tools, req.tool_choice, req.messages[-1].role if req.messages else None) \
        if cfg.call_tools else None
    if tool is not None:
        return _tool_call(req, cfg, head, prompt, tool, serial)
    cap = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    n = synth.completion_tokens(cfg.tokens, cap)
    tokens, stopped_by = cut_at_stop(synth.reply_tokens(req.model, prompt, n), req.stop)
    finish, stop_reason = ("stop", stopped_by) if stopped_by else (_finish(n, cfg), None)
    n = len(tokens)
    usage = _usage(_prompt_tokens(req, prompt, cfg), n, cfg)
    if not req.stream:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
        return json_reply({**head, "choices": [choice], "usage": usage})
    payload = _chunk(req, head)
    chunks = [sse_event(payload({"role": "assistant", "content": ""}))]
    chunks += per_token(lambda t: payload({"content": t}), tokens, b"data: ", b"\n\n")
    chunks.append(sse_event(payload({}, finish, stop_reason)))
    if req.stream_options and req.stream_options.include_usage:
        chunks.append(sse_event({**head, "choices": [], "usage": usage}))
    chunks.append(SSE_DONE)
    return StreamReply(SSE, chunks)


def _chunk(req: ChatRequest, head: dict[str, object]) -> Callable[..., dict[str, Any]]:
    """A stream's chunk for a delta (with `"usage": null` once usage was asked for, as vLLM writes)."""
    extra = {"usage": None} if req.stream_options and req.stream_options.include_usage else {}

    def payload(delta: dict[str, Any], finish: str | None = None, stop_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return {**head, "choices": [choice], **extra}

    return payload


def _tool_call(req: ChatRequest, cfg: SimConfig, head: dict[str, object], prompt: str, tool: Function,
               serial: int) -> Reply | StreamReply:
    """A reply that calls `tool`: whole, or streamed as the id and name first, then the arguments in pieces."""
    text = msgspec.json.encode(arguments(req.model, tool)).decode()
    call_id = f"call_{serial:024x}"
    usage = _usage(_prompt_tokens(req, prompt, cfg), synth.count_tokens(text), cfg)
    if not req.stream:
        call = {"id": call_id, "type": "function", "function": {"name": tool.name, "arguments": text}}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return json_reply({**head, "choices": [choice], "usage": usage})
    payload = _chunk(req, head)
    start = {"index": 0, "id": call_id, "type": "function", "function": {"name": tool.name, "arguments": ""}}
    chunks = [sse_event(payload({"role": "assistant", "content": None, "tool_calls": [start]}))]
    third = max(1, len(text) // 3)
    for at in range(0, len(text), third):
        piece = {"index": 0, "function": {"arguments": text[at:at + third]}}
        chunks.append(sse_event(payload({"tool_calls": [piece]})))
    chunks.append(sse_event(payload({}, "tool_calls")))
    if req.stream_options and req.stream_options.include_usage:
        chunks.append(sse_event({**head, "choices": [], "usage": usage}))
    chunks.append(SSE_DONE)
    return StreamReply(SSE, chunks)


def completions(body: bytes, cfg: SimConfig, serial: int) -> Reply | StreamReply:
    """POST /v1/completions; a list of prompts gets one choice per prompt."""
    req = decode_request("/v1/completions", body, _completion)
    _known(cfg, req.model)
    n = synth.completion_tokens(cfg.tokens, req.max_tokens)
    prompts = prompt_texts(req.prompt) or [""]
    replies = [synth.reply_tokens(req.model, p, n) for p in prompts]
    usage = _usage(sum(synth.count_tokens(p) for p in prompts), n * len(prompts), cfg)
    head = _head(f"cmpl-{serial:024x}", "text_completion", req.model)
    finish = _finish(n, cfg)
    if not req.stream:
        choices = [
            {"index": i, "text": "".join(toks), "logprobs": None, "finish_reason": finish}
            for i, toks in enumerate(replies)
        ]
        return json_reply({**head, "choices": choices, "usage": usage})
    with_usage = bool(req.stream_options and req.stream_options.include_usage)
    extra = {"usage": None} if with_usage else {}

    def payload(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], **extra}

    chunks: list[bytes] = []
    for i, toks in enumerate(replies):
        chunks += per_token(lambda t, i=i: payload(i, t), toks, b"data: ", b"\n\n")
        chunks.append(sse_event(payload(i, "", finish)))
    if with_usage:
        chunks.append(sse_event({**head, "choices": [], "usage": usage}))
    chunks.append(SSE_DONE)
    return StreamReply(SSE, chunks)


def embeddings(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """POST /v1/embeddings: unit vectors, as float lists or base64 float32 bytes."""
    req = decode_request("/v1/embeddings", body, _embedding)
    _known(cfg, req.model)
    texts = prompt_texts(req.input)
    if not texts:
        raise Rejected(openai_error(400, "'input' must not be empty"))
    dims = req.dimensions if req.dimensions is not None else cfg.embedding_dims
    if not 1 <= dims <= cfg.embedding_dims:
        raise Rejected(openai_error(400, f"'dimensions' must be in 1..{cfg.embedding_dims}"))
    as_base64 = req.encoding_format == "base64"
    data = []
    for i, text in enumerate(texts):
        vector = synth.embed(req.model, text, dims)
        value = vector.base64() if as_base64 else vector.json()
        data.append({"object": "embedding", "index": i, "embedding": value})
    prompt = sum(synth.count_tokens(t) for t in texts)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return json_reply({"object": "list", "data": data, "model": req.model, "usage": usage})


def models(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /v1/models: every advertised model."""
    data = [
        {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": OWNED_BY}
        for m in cfg.models
    ]
    return json_reply({"object": "list", "data": data})


def health(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /health: vLLM's liveness answer, an empty 200."""
    return Reply(200, b"", TEXT)


ROUTES = {
    "/v1/chat/completions": ("POST", chat_completions),
    "/v1/completions": ("POST", completions),
    "/v1/embeddings": ("POST", embeddings),
    "/v1/models": ("GET", models),
    "/health": ("GET", health),
}
