"""The OpenAI and Ollama wire shapes the translators read and write, with their codecs built once."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import msgspec


class TranslationError(ValueError):
    """A body could not be read as the API it claims to be (the proxy answers 400 for a request, 502 for a reply)."""


# --- OpenAI replies (read) ------------------------------------------------------------------------

class TokenCounts(NamedTuple):
    """A call's tokens as its upstream reported them; `cached` of the prompt tokens came from its prompt cache."""

    prompt: int
    completion: int
    cached: int = 0


MAX_REPORTED_TOKENS = 100_000_000      # one call's count past this is no model's: the report is not believed


def believable(counts: TokenCounts | None) -> TokenCounts | None:
    """An upstream's counts if they can be true (whole numbers from 0 to MAX_REPORTED_TOKENS; cached tokens no
    more than the prompt's), else None: the call's tokens are then estimated, as when none are reported. An
    upstream reporting -1000 tokens gave its tenant credit; a count as text or past int64 made a usage event
    the log could not take."""
    if counts is None:
        return None
    prompt, completion, cached = counts
    for value in counts:
        if type(value) is not int or not 0 <= value <= MAX_REPORTED_TOKENS:
            return None
    return counts if cached <= prompt else TokenCounts(prompt, completion, prompt)


class Usage(msgspec.Struct):
    # read as written, whatever their type: counts an upstream could not have (text, past int64) leave the answer
    # readable, and `believable` judges them (the call's tokens are then estimated)
    prompt_tokens: Any = None
    completion_tokens: Any = None
    total_tokens: Any = None
    prompt_tokens_details: Any = None       # {"cached_tokens": n} (OpenAI, vLLM, llama.cpp); read leniently
    completion_tokens_details: Any = None   # {"reasoning_tokens": n} (OpenAI, vLLM, DeepSeek); read leniently

    @property
    def cached_tokens(self) -> int:
        return cached_tokens(self.prompt_tokens_details)

    @property
    def reasoning_tokens(self) -> int:
        """`completion_tokens_details.reasoning_tokens`: of the completion tokens, those the model reasoned with; 0
        when absent or not a count."""
        return detail_count(self.completion_tokens_details, "reasoning_tokens")


def cached_tokens(prompt_tokens_details: Any) -> int:
    """`prompt_tokens_details.cached_tokens` of an OpenAI usage block; 0 when absent or not a count."""
    return detail_count(prompt_tokens_details, "cached_tokens")


def detail_count(details: Any, name: str) -> int:
    """The count `name` of an OpenAI usage block's details (`prompt_tokens_details`, `completion_tokens_details`);
    0 when absent or not a count."""
    count = details.get(name) if isinstance(details, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


class FunctionCall(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None            # JSON text, streamed in fragments


class ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionCall | None = None


class Message(msgspec.Struct):
    """A chat `message` or a streamed `delta`."""

    content: str | None = None
    reasoning_content: Any = None           # vLLM, DeepSeek (read as anything: see `thought`)
    reasoning: Any = None                   # newer vLLM, OpenRouter
    refusal: str | None = None              # OpenAI: the model declined, saying why (no content then)
    tool_calls: list[ToolCall] | None = None

    @property
    def thought(self) -> str:
        """The model's reasoning, under either name servers write it ("" when none). Reasoning not written as text
        is none: it is an extra beside the answer, which stands without it (a server writing it otherwise made
        every answer unreadable, and its endpoint's breaker open)."""
        first, second = self.reasoning_content, self.reasoning     # read inline: once per chunk of every stream
        if first is None and second is None:
            return ""
        return first if type(first) is str and first else second if type(second) is str else ""


def text_or_nothing(value: Any) -> str:
    """`value` when it is text, else ""."""
    return value if type(value) is str else ""


class TopLogprob(msgspec.Struct):
    """One of the likeliest tokens at a position of a chat answer, with its log probability."""

    token: str
    logprob: float | None                   # null: what llama.cpp's JSON writes for -inf (a token never sampled)
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A token of a chat answer's text, with its log probability and the likeliest alternatives."""

    top_logprobs: list[TopLogprob] = []


class _Logprobs(msgspec.Struct):
    content: list[TokenLogprob] | None = None


_decode_logprobs = msgspec.json.Decoder(_Logprobs).decode


def text_logprobs(raw: msgspec.Raw) -> list[TokenLogprob]:
    """The tokens of a choice's `logprobs.content` (asked with `logprobs: true`); none when the server sent none, or
    sent them in a form not OpenAI's (they are an extra: the answer stands without them)."""
    if not raw:
        return []
    try:
        return _decode_logprobs(raw).content or []
    except (msgspec.MsgspecError, RecursionError):
        return []


class Choice(msgspec.Struct):
    index: int = 0
    message: Message | None = None          # chat.completion
    delta: Message | None = None            # chat.completion.chunk
    text: str | None = None                 # text_completion (whole or chunk)
    finish_reason: str | None = None
    stop_reason: Any = None                 # vLLM: the stop string (or token id) that ended the answer
    logprobs: msgspec.Raw = msgspec.Raw(b"")    # read when a door asked for them (`text_logprobs`)


class Timings(msgspec.Struct):
    """What some servers (llama.cpp) say they spent on an answer: the prompt, then the output, in milliseconds;
    read as written, whatever their type (`durations` takes only numbers, and holds them to what was measured)."""

    prompt_ms: Any = None
    predicted_ms: Any = None


class Reply(msgspec.Struct):
    """A chat or text completion, whole or one streamed chunk; `error` when the server reports one."""

    created: Any = None                     # seconds, or milliseconds as some servers write it: see `ollama_time`
    choices: list[Choice] | None = None
    usage: Usage | None = None
    error: Any = None
    timings: Timings | None = None


class Times(NamedTuple):
    """When a call reached the gateway and when its answering attempt was sent upstream (`now_ns` clock); and, for a
    whole answer that reported no believable counts, the gateway's `estimate` (what the log records), which a
    translated answer shows in their place."""

    arrived_ns: int
    sent_ns: int
    estimate: TokenCounts | None = None


class UsageOnly(msgspec.Struct):
    usage: Usage | None = None


class EmbeddingItem(msgspec.Struct):
    index: int = 0
    embedding: msgspec.Raw = msgspec.Raw(b"[]")   # a float list or a base64 string, kept as sent


class EmbeddingsReply(msgspec.Struct):
    data: list[EmbeddingItem] = []
    usage: Usage | None = None


# --- Ollama (written) -----------------------------------------------------------------------------

class OllamaFunction(msgspec.Struct):
    name: str
    arguments: Any


class OllamaToolCall(msgspec.Struct, omit_defaults=True):
    function: OllamaFunction
    id: str | None = None                   # the upstream's id for the call, which a tool result names


class OllamaMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    thinking: str | None = None             # written as text (`text_or_nothing` of what an upstream said)
    tool_calls: list[OllamaToolCall] | None = None


class OllamaChat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One /api/chat line or reply; the statistics are absent when not known."""

    model: str
    created_at: str | datetime              # RFC 3339; a datetime (UTC) is written so by the encoder
    message: OllamaMessage
    done_reason: str | None = None
    done: bool                              # required, so `false` is written too
    total_duration: int | None = None       # nanoseconds
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_cached_count: int | None = None     # of prompt_eval_count, read from the prompt cache
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaGenerate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One /api/generate line or reply."""

    model: str
    created_at: str | datetime
    response: str
    thinking: str | None = None
    done_reason: str | None = None
    done: bool
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_cached_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaEmbed(msgspec.Struct, omit_defaults=True):
    model: str
    embeddings: list[msgspec.Raw]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbedding(msgspec.Struct):
    embedding: msgspec.Raw


class OllamaCounts(msgspec.Struct):
    """The token counts of an Ollama reply (a whole one, or the last line of a stream)."""

    prompt_eval_count: int | None = None
    eval_count: int | None = None
    prompt_eval_cached_count: int | None = None     # newer Ollama: the prompt tokens it read from its cache
    done: bool = False
    error: Any = None

    @property
    def tokens(self) -> TokenCounts | None:
        if self.prompt_eval_count is None and self.eval_count is None:
            return None
        cached = max(0, self.prompt_eval_cached_count or 0)
        return TokenCounts(self.prompt_eval_count or 0, self.eval_count or 0, cached)


decode_reply = msgspec.json.Decoder(Reply).decode


def whole_reply(data: bytes) -> Reply:
    """A whole chat or text completion, for a door to translate; TranslationError (the endpoint answered something
    unreadable: its failure, and the call moves on) for one that is not, or that holds no choice to translate (`{}`
    was an empty answer, recorded as served)."""
    try:
        reply = decode_reply(data)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise TranslationError(f"The upstream answer is not an OpenAI completion: {exc}") from None
    if not reply.choices:
        raise TranslationError("The upstream answer is not an OpenAI completion: it holds no choices")
    return reply
decode_embeddings = msgspec.json.Decoder(EmbeddingsReply).decode
decode_usage = msgspec.json.Decoder(UsageOnly).decode
decode_counts = msgspec.json.Decoder(OllamaCounts).decode
decode_any = msgspec.json.Decoder().decode
encode = msgspec.json.Encoder().encode


def _as_written(literal: str) -> msgspec.Raw:
    return msgspec.Raw(literal)


def request_decoder(kind: Any = Any) -> Callable[[bytes], Any]:
    """A decoder for a client's body the gateway rewrites (a model name, an output ceiling, a translation): every
    float it does not read is kept as the client wrote it and encoded back byte for byte. JSON allows numbers past
    float64's range (`1e400`); read as floats they would fail the rewrite after the call was accepted, while the
    same body sent untouched passes on."""
    return msgspec.json.Decoder(kind, float_hook=_as_written).decode


LATEST_SECONDS = 100_000_000_000        # a Unix time in seconds past this (the year 5138) was written in ms, µs or ns


def ollama_time(created: Any = None) -> str:
    """An Ollama `created_at` (RFC 3339, UTC) from an OpenAI `created`: a Unix time in seconds, or in milliseconds
    as mistral.rs, Qwen's Bailian and web-llm write it (microseconds and nanoseconds too: a time past
    LATEST_SECONDS is divided by 1000 until it is not); now, the moment the gateway read the answer, when none is
    given or it names no moment (not a number, 0 or less, more than nanoseconds could be), which datetime refused
    with a 500."""
    if type(created) in (int, float) and 0 < created < 10**19:
        seconds = created
        while seconds > LATEST_SECONDS:
            seconds /= 1000
        moment = datetime.fromtimestamp(seconds, UTC)
    else:
        moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


written_at = partial(datetime.now, UTC)     # a streamed line's `created_at`: now, formatted by the encoder


def done_reason(finish_reason: str | None) -> str:
    """Ollama's `done_reason` for an OpenAI `finish_reason`: `length` stays, everything else is `stop`."""
    return "length" if finish_reason == "length" else "stop"


def error_message(error: Any) -> str:
    """The text of an OpenAI-style `error` member (an object with `message`, or a plain string)."""
    if isinstance(error, dict):
        return str(error.get("message") or error.get("error") or error)
    return str(error)


def tool_arguments(text: str | None) -> Any:
    """Ollama wants tool arguments as an object; OpenAI sends them as JSON text."""
    if not text:
        return {}
    try:
        value = decode_any(text)
    except (msgspec.DecodeError, RecursionError):
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}


def now_ns() -> int:
    """The clock of every measured duration: the same as `time.perf_counter()`, in nanoseconds."""
    return time.perf_counter_ns()
