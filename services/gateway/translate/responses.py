"""Whole (non-streamed) OpenAI answers as Ollama answers, usage included; Ollama token counts and error bodies.

OpenAI `usage.prompt_tokens` / `completion_tokens` / `prompt_tokens_details.cached_tokens`
become Ollama `prompt_eval_count` / `eval_count` / `prompt_eval_cached_count`. Durations are the
gateway's own measure when the caller passes the call's `Times` (see `durations`), and absent otherwise.
"""

from __future__ import annotations

import array
import base64
import sys

import msgspec

from switchyard_gateway.services.gateway.edge.errors import from_status
from switchyard_gateway.services.gateway.translate.overflow import OVERFLOW_CODE, openai_overflow, overflow_of
from switchyard_gateway.services.gateway.translate.prefill import after_prefill
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, OllamaChat, OllamaEmbed, OllamaEmbedding, OllamaFunction, OllamaGenerate, OllamaMessage,
    OllamaToolCall, Reply, Times, Timings, TokenCounts, TranslationError, Usage, decode_counts, decode_embeddings,
    decode_usage, done_reason, encode, error_message, now_ns, ollama_time, tool_arguments, whole_reply,
)


def durations(times: Times | None, timings: Timings | None = None, now: int | None = None) -> dict[str, int]:
    """Ollama's four durations of a whole answer, in nanoseconds, from the gateway's clock: `total_duration`
    since the call arrived, `load_duration` until the answering upstream was asked (routing, quota, waiting
    for a slot, earlier attempts), and the upstream's time as `prompt_eval_duration` + `eval_duration`, split
    as the upstream's own `timings` say (llama.cpp) or, without them, all of it `eval_duration` (a whole
    answer shows no first token to split at; a `prompt_eval_duration` of 0 is left out, as Ollama leaves out
    durations it has none of). Empty without `times`."""
    if times is None:
        return {}
    now = now_ns() if now is None else now
    upstream = max(1, now - times.sent_ns)
    prompt = (_reported_ns(timings.prompt_ms, upstream - 1) if timings is not None else None) or 0
    output = upstream - prompt
    predicted = _reported_ns(timings.predicted_ms, output) if timings is not None else None
    if predicted is not None:
        output = max(1, predicted)
    return {"total_duration": max(1, now - times.arrived_ns), "load_duration": max(0, times.sent_ns - times.arrived_ns),
            **({"prompt_eval_duration": prompt} if prompt else {}), "eval_duration": output}


def _reported_ns(ms: object, most: int) -> int | None:
    """Milliseconds an upstream says it spent, in nanoseconds from 0 to `most` (what the gateway measured); None
    when it is no number. 1e308 or -1e308 were an OverflowError, and a 500."""
    if type(ms) not in (int, float) or ms != ms:    # NaN is unequal to itself
        return None
    return int(min(max(ms * 1_000_000, 0), most))   # type: ignore[operator]


def _reply(data: bytes) -> Reply:
    return whole_reply(data)


def _counts(usage: Usage | None) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, cached prompt) tokens of an OpenAI `usage`; None where it says nothing."""
    if usage is None:
        return None, None, None
    prompt = usage.prompt_tokens
    completion = usage.completion_tokens
    if completion is None and type(usage.total_tokens) is int and type(prompt or 0) is int:
        completion = max(0, usage.total_tokens - (prompt or 0))
    return prompt, completion, usage.cached_tokens or None


def _shown_counts(usage: Usage | None, times: Times | None) -> tuple[int | None, int | None, int | None]:
    """The counts a translated answer shows: the gateway's estimate when the relay made one (the upstream reported
    none it believed: the log records the estimate), else the upstream's."""
    if times is not None and times.estimate is not None:
        return times.estimate.prompt, times.estimate.completion, None
    return _counts(usage)


def usage_counts(usage: Usage) -> TokenCounts:
    """The token counts of an OpenAI `usage` block (a whole answer's or a stream's usage chunk)."""
    prompt, completion, cached = _counts(usage)
    return TokenCounts(prompt or 0, completion or 0, cached or 0)


def _first(reply: Reply) -> Choice:
    return next((c for c in reply.choices or () if c.index == 0), Choice())


def openai_chat_to_ollama(data: bytes, model: str, times: Times | None = None, *, prefill: str | None = None) -> bytes:
    """A chat.completion as an /api/chat reply (`stream: false`); its text begins after `prefill`, the final
    assistant message the upstream was asked to continue, when the upstream repeats it (translate/prefill.py)."""
    reply = _reply(data)
    choice = _first(reply)
    message = choice.message
    said = ((message.content or "") + (message.refusal or "") if message else "") or choice.text or ""  # refusal: text
    content = after_prefill(said, prefill) or ""
    out = OllamaMessage(role="assistant", content=content)
    if message is not None:
        out.thinking = message.thought or None
        if message.tool_calls:
            out.tool_calls = [
                OllamaToolCall(OllamaFunction(c.function.name or "", tool_arguments(c.function.arguments)), c.id)
                for c in message.tool_calls if c.function is not None
            ]
    prompt, completion, cached = _shown_counts(reply.usage, times)
    return encode(OllamaChat(
        model=model, created_at=ollama_time(reply.created), message=out, done=True,
        done_reason=done_reason(choice.finish_reason), prompt_eval_count=prompt, prompt_eval_cached_count=cached,
        eval_count=completion, **durations(times, reply.timings),
    ))


def openai_completion_to_ollama_generate(data: bytes, model: str, times: Times | None = None) -> bytes:
    """A text_completion (or a chat.completion, which /api/generate is sent as) as an /api/generate reply."""
    reply = _reply(data)
    choice = _first(reply)
    message = choice.message
    text = choice.text if choice.text is not None else (message.content if message else None) or ""
    thinking = message.thought if message else None
    prompt, completion, cached = _shown_counts(reply.usage, times)
    return encode(OllamaGenerate(
        model=model, created_at=ollama_time(reply.created), response=text, thinking=thinking or None,
        done=True, done_reason=done_reason(choice.finish_reason), prompt_eval_count=prompt,
        prompt_eval_cached_count=cached, eval_count=completion, **durations(times, reply.timings),
    ))


def _vectors(data: bytes) -> tuple[list[msgspec.Raw], int | None]:
    try:
        reply = decode_embeddings(data)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise TranslationError(f"The upstream answer is not an OpenAI embedding list: {exc}") from None
    items = sorted(reply.data, key=lambda item: item.index)
    vectors = [_as_float_list(item.embedding) for item in items]
    return vectors, reply.usage.prompt_tokens if reply.usage else None


_decode_vector = msgspec.json.Decoder(list[float]).decode
_decode_text = msgspec.json.Decoder(str).decode


def _as_float_list(raw: msgspec.Raw) -> msgspec.Raw:
    """A vector as a JSON float list, kept as written; a base64 one (little-endian float32) is decoded. A vector
    that is neither (nested lists, objects, base64 that is not, or not whole float32s) is no answer: a
    TranslationError, where a 500 was, or the junk was passed on."""
    text = bytes(raw)
    try:
        if not text.startswith(b'"'):
            _decode_vector(text)
            return raw
        floats = array.array("f", base64.b64decode(_decode_text(text), validate=True))
    except (msgspec.MsgspecError, ValueError) as exc:      # binascii.Error, and a length not whole float32s
        raise TranslationError(f"The upstream answer holds an embedding that is not a vector: {exc}") from None
    if sys.byteorder == "big":
        floats.byteswap()
    return msgspec.Raw(encode(floats.tolist()))


def openai_embeddings_to_ollama_embed(data: bytes, model: str, times: Times | None = None) -> bytes:
    """An OpenAI embedding list as an /api/embed reply: `{"model", "embeddings": [[...]], "prompt_eval_count"}`,
    with the total and load durations measured."""
    vectors, prompt = _vectors(data)
    if times is not None and times.estimate is not None:    # the upstream's count not believed: the log's estimate
        prompt = times.estimate.prompt
    measured = durations(times)
    return encode(OllamaEmbed(model=model, embeddings=vectors, total_duration=measured.get("total_duration"),
                              load_duration=measured.get("load_duration"), prompt_eval_count=prompt))


def openai_embeddings_to_ollama_embeddings(data: bytes, _model: str = "", _times: Times | None = None) -> bytes:
    """An OpenAI embedding list as a legacy /api/embeddings reply: `{"embedding": [...]}` (the first vector)."""
    vectors, _ = _vectors(data)
    return encode(OllamaEmbedding(vectors[0] if vectors else msgspec.Raw(b"[]")))


def ollama_usage(data: bytes) -> TokenCounts | None:
    """The tokens of a whole /api/chat, /api/generate or /api/embed reply; None without counts."""
    try:
        return decode_counts(data).tokens
    except (msgspec.MsgspecError, RecursionError):
        return None


def openai_usage(data: bytes) -> TokenCounts | None:
    """The tokens of a whole OpenAI answer (completion or embeddings); None when it has no usage."""
    try:
        usage = decode_usage(data).usage
    except (msgspec.MsgspecError, RecursionError):
        return None
    if usage is None or (usage.prompt_tokens is None and usage.completion_tokens is None
                         and usage.total_tokens is None):           # `"usage": {}` or all null reports nothing
        return None
    return usage_counts(usage)


def ollama_error(message: str) -> bytes:
    """An Ollama error body: `{"error": "<message>"}`."""
    return encode({"error": message})


def ollama_error_line(message: str) -> bytes:
    """The NDJSON line that ends an Ollama stream with an error (what Ollama sends when a stream fails)."""
    return encode({"error": message}) + b"\n"


def openai_error_to_ollama(data: bytes, _status: int = 0) -> bytes:
    """An OpenAI-style error body (`{"error": {"message", ...}}`, or anything else) as an Ollama error body."""
    try:
        body = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return ollama_error(data.decode(errors="replace").strip() or "upstream error")
    if isinstance(body, dict) and "error" in body:
        return ollama_error(error_message(body["error"]))
    if isinstance(body, dict) and "message" in body:
        return ollama_error(str(body["message"]))
    return ollama_error(data.decode(errors="replace"))


def openai_error_body(data: bytes, status: int = 400, prompt_param: str = "messages") -> bytes:
    """An upstream's error answer on the OpenAI door: relayed as is when it is OpenAI's
    `{"error": {"message", "type", "param", "code"}}`; one that only looks like it (a message alone, vLLM's integer
    `code`) with those filled in (`_as_openai`), else its message wrapped in that shape. A prompt longer than the
    model's context, in any server's words, is said as OpenAI says it (`context_length_exceeded`, `param` the
    request's `prompt_param`)."""
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error")
        overflow = overflow_of(inner if inner is not None else body, status)
        if overflow is not None and not (isinstance(inner, dict) and inner.get("code") == OVERFLOW_CODE):
            return encode({"error": openai_overflow(overflow, prompt_param)})
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return data if _is_openai(inner) else encode({**body, "error": _as_openai(inner, status)})
        message = error_message(inner) if inner is not None else str(body.get("message") or body.get("detail") or "")
    else:
        message = data.decode(errors="replace").strip()
        overflow = overflow_of(message, status)
        if overflow is not None:
            return encode({"error": openai_overflow(overflow, prompt_param)})
    return encode({"error": {"message": message or "upstream error", "type": "upstream_error", "param": None,
                             "code": "upstream_error"}})


def _is_openai(error: dict) -> bool:
    kind, param, code = error.get("type"), error.get("param", False), error.get("code", False)
    return isinstance(kind, str) and (param is None or isinstance(param, str)) \
        and (code is None or isinstance(code, str))


def _as_openai(error: dict, status: int) -> dict:
    """An error object with OpenAI's members as its SDKs read them: `type` a string (the status's, when it has
    none), `param` a string or null, `code` a string (an integer written as one) or null; the rest kept."""
    kind, param, code = error.get("type"), error.get("param"), error.get("code")
    if type(code) is int:
        code = str(code)
    shaped = {"message": error["message"],
              "type": kind if isinstance(kind, str) and kind else from_status(status, "").kind,
              "param": param if isinstance(param, str) else None, "code": code if isinstance(code, str) else None}
    shaped.update((key, value) for key, value in error.items() if key not in shaped)
    return shaped
