"""The Ollama-style routes (/api/...), streaming newline-delimited JSON by default."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from switchyard_gateway.simulator import synth
from switchyard_gateway.simulator.config import SimConfig, bare_name
from switchyard_gateway.simulator.tools import Tool, arguments, chosen_tool, cut_at_stop, offered_tokens
from switchyard_gateway.simulator.replies import (
    NDJSON,
    TEXT,
    Rejected,
    Reply,
    StreamReply,
    decode_request,
    json_reply,
    ndjson_line,
    ollama_error,
    per_token,
)

VERSION = "0.5.7"
MODIFIED_AT = "2025-01-01T00:00:00Z"
_NS_PER_MS = 1_000_000


class Options(msgspec.Struct):
    num_predict: int | None = None
    stop: str | list[str] | None = None


class Message(msgspec.Struct):
    role: str = "user"
    content: str = ""
    images: list[str] | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[Message] = []
    stream: bool | None = None
    options: Options | None = None
    tools: list[Tool] | None = None


class GenerateRequest(msgspec.Struct):
    model: str
    prompt: str = ""
    system: str = ""
    stream: bool | None = None
    options: Options | None = None
    images: list[str] | None = None


class EmbedRequest(msgspec.Struct):
    model: str
    input: str | list[str] = ""
    dimensions: int | None = None


class LegacyEmbeddingRequest(msgspec.Struct):
    model: str
    prompt: str = ""


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the older spelling of `model`


_chat = msgspec.json.Decoder(ChatRequest)
_generate = msgspec.json.Decoder(GenerateRequest)
_embed = msgspec.json.Decoder(EmbedRequest)
_legacy_embed = msgspec.json.Decoder(LegacyEmbeddingRequest)
_show = msgspec.json.Decoder(ShowRequest)


def _known(cfg: SimConfig, model: str) -> None:
    if not cfg.has_model(model):
        raise Rejected(ollama_error(404, f'model "{model}" not found, try pulling it first'))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timings(cfg: SimConfig, prompt_tokens: int, n: int) -> dict[str, int]:
    """Ollama's counts and nanosecond durations, consistent with the knobs."""
    load = _NS_PER_MS
    prompt_eval = prompt_tokens * 100_000
    per_token_ns = int(max(cfg.token_interval_ms, 1.0) * _NS_PER_MS)
    eval_ns = n * per_token_ns
    timings = {
        "total_duration": int(cfg.latency_ms * _NS_PER_MS) + load + prompt_eval + eval_ns,
        "load_duration": load,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_eval,
        "eval_count": n,
        "eval_duration": eval_ns,
    }
    if cfg.cached_tokens:               # what newer Ollama reports on /api/chat and /api/generate
        timings["prompt_eval_cached_count"] = min(cfg.cached_tokens, prompt_tokens)
    return timings


def _generation(
    cfg: SimConfig, model: str, prompt: str, options: Options | None, offered: int = 0
) -> tuple[tuple[str, ...], dict[str, Any]]:
    cap = options.num_predict if options else None
    n = synth.completion_tokens(cfg.tokens, cap)
    tokens, stopped_by = cut_at_stop(synth.reply_tokens(model, prompt, n), options.stop if options else None)
    done = {"done": True, "done_reason": "length" if n < cfg.tokens and not stopped_by else "stop"}
    done.update(_timings(cfg, synth.count_tokens(prompt) + offered, len(tokens)))
    return tokens, done


def chat(body: bytes, cfg: SimConfig, serial: int) -> Reply | StreamReply:
    """POST /api/chat."""
    req = decode_request("/api/chat", body, _chat)
    _known(cfg, req.model)
    prompt = "\n".join(m.content for m in req.messages if m.content)
    offered = offered_tokens(req.tools) + sum(len(m.images or ()) for m in req.messages) * cfg.image_tokens
    head = {"model": req.model, "created_at": _now()}
    tool = chosen_tool(req.tools, None, req.messages[-1].role if req.messages else None) if cfg.call_tools else None
    if tool is not None:
        args = arguments(req.model, tool)
        done = {"done": True, "done_reason": "stop",
                **_timings(cfg, synth.count_tokens(prompt) + offered,
                           synth.count_tokens(msgspec.json.encode(args).decode()))}
        message = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": tool.name,
                                                                                     "arguments": args}}]}
        if req.stream is False:
            return json_reply({**head, "message": message, **done})
        return StreamReply(NDJSON, [ndjson_line({**head, "message": message, "done": False}),
                                    ndjson_line({**head, "message": {"role": "assistant", "content": ""}, **done})])
    tokens, done = _generation(cfg, req.model, prompt, req.options, offered)
    if req.stream is False:
        message = {"role": "assistant", "content": "".join(tokens)}
        return json_reply({**head, "message": message, **done})
    message = {"role": "assistant"}
    chunks = per_token(
        lambda t: {**head, "message": {**message, "content": t}, "done": False}, tokens, b"", b"\n"
    )
    chunks.append(ndjson_line({**head, "message": {"role": "assistant", "content": ""}, **done}))
    return StreamReply(NDJSON, chunks)


def generate(body: bytes, cfg: SimConfig, serial: int) -> Reply | StreamReply:
    """POST /api/generate."""
    req = decode_request("/api/generate", body, _generate)
    _known(cfg, req.model)
    prompt = f"{req.system}\n{req.prompt}" if req.system else req.prompt
    tokens, done = _generation(cfg, req.model, prompt, req.options, len(req.images or ()) * cfg.image_tokens)
    head = {"model": req.model, "created_at": _now()}
    done["context"] = list(range(1, done["prompt_eval_count"] + done["eval_count"] + 1))
    if req.stream is False:
        return json_reply({**head, "response": "".join(tokens), **done})
    chunks = per_token(lambda t: {**head, "response": t, "done": False}, tokens, b"", b"\n")
    chunks.append(ndjson_line({**head, "response": "", **done}))
    return StreamReply(NDJSON, chunks)


def embed(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """POST /api/embed: one unit vector per input."""
    req = decode_request("/api/embed", body, _embed)
    _known(cfg, req.model)
    texts = [req.input] if isinstance(req.input, str) else req.input
    dims = req.dimensions if req.dimensions is not None else cfg.embedding_dims
    if not 1 <= dims <= cfg.embedding_dims:
        raise Rejected(ollama_error(400, f"dimensions must be in 1..{cfg.embedding_dims}"))
    vectors = [synth.embed(req.model, t, dims).json() for t in texts]
    count = sum(synth.count_tokens(t) for t in texts)
    timings = _timings(cfg, count, 0)
    return json_reply(
        {
            "model": req.model,
            "embeddings": vectors,
            "total_duration": timings["total_duration"],
            "load_duration": timings["load_duration"],
            "prompt_eval_count": count,
        }
    )


def legacy_embeddings(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """POST /api/embeddings: the older single-prompt form."""
    req = decode_request("/api/embeddings", body, _legacy_embed)
    _known(cfg, req.model)
    vector = synth.embed(req.model, req.prompt, cfg.embedding_dims)
    return json_reply({"embedding": vector.json()})


def _tagged(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def describe(model: str, cfg: SimConfig) -> dict[str, Any]:
    """The entry /api/tags gives for one model; sizes and digests derive from its name."""
    digest = hashlib.sha256(bare_name(model).encode()).hexdigest()
    letters = re.match(r"[a-z]+", model.lower())
    family = letters.group() if letters else "llama"
    embedding = "embed" in model
    return {
        "name": _tagged(model),
        "model": _tagged(model),
        "modified_at": MODIFIED_AT,
        "size": 100_000_000 + int(digest[:8], 16) % 4_000_000_000,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "137M" if embedding else "3.2B",
            "quantization_level": "F16" if embedding else "Q4_K_M",
        },
    }


def tags(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /api/tags: every advertised model."""
    return json_reply({"models": [describe(m, cfg) for m in cfg.models]})


def ps(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /api/ps: the loaded models, kept for five more minutes."""
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    running = []
    for m in cfg.loaded_models:
        entry = describe(m, cfg)
        del entry["modified_at"]
        running.append({**entry, "expires_at": expires, "size_vram": entry["size"]})
    return json_reply({"models": running})


def root(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /: Ollama's liveness answer."""
    return Reply(200, b"Ollama is running", TEXT)


def version(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """GET /api/version."""
    return json_reply({"version": VERSION})


def show(body: bytes, cfg: SimConfig, serial: int) -> Reply:
    """POST /api/show: a model's modelfile, parameters, details and model_info."""
    req = decode_request("/api/show", body, _show)
    model = req.model or req.name
    if not cfg.has_model(model):
        raise Rejected(ollama_error(404, f"model '{model}' not found"))
    entry = describe(model, cfg)
    family = entry["details"]["family"]
    embedding = "embed" in model
    return json_reply(
        {
            "license": "",
            "modelfile": f"# Modelfile of the switchyard simulator\nFROM {_tagged(model)}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": entry["details"],
            "model_info": {
                "general.architecture": family,
                "general.parameter_count": 137_000_000 if embedding else 3_200_000_000,
                f"{family}.context_length": 8192 if embedding else 131_072,
                f"{family}.embedding_length": cfg.embedding_dims,
            },
            "capabilities": ["embedding"] if embedding else ["completion", "tools"],
            "modified_at": MODIFIED_AT,
        }
    )


ROUTES = {
    "/": ("GET", root),
    "/api/chat": ("POST", chat),
    "/api/generate": ("POST", generate),
    "/api/embed": ("POST", embed),
    "/api/embeddings": ("POST", legacy_embeddings),
    "/api/tags": ("GET", tags),
    "/api/ps": ("GET", ps),
    "/api/version": ("GET", version),
    "/api/show": ("POST", show),
}
