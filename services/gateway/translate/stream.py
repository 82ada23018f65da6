"""Streams on the Ollama front door: OpenAI server-sent events translated to Ollama NDJSON, and native NDJSON watched as it is relayed.

Both classes share one shape, so the proxy relays either the same way: `feed(chunk)`
returns the bytes to send (whole lines only, possibly none), `finish()` what is left at
the end; `done` tells whether the upstream ended its stream properly (without it the
stream was cut: send `ollama_error_line(...)` instead of `finish()`), `usage` is
the `TokenCounts` once reported, `content_events` the output estimate when no usage
came (`sse.estimated_output` of the bytes the model wrote, as on the OpenAI door; a
native Ollama stream writes a line per token, so there it counts the lines), `error`
holds an error the upstream sent inside the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from switchyard_gateway.services.gateway.translate.held_calls import HeldCalls
from switchyard_gateway.services.gateway.translate.prefill import PrefillEcho
from switchyard_gateway.services.gateway.translate.responses import ollama_error_line
from switchyard_gateway.http1 import ResponseCut
from switchyard_gateway.services.gateway.translate.sse import ChatStreamReader, unfinished
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, OllamaChat, OllamaFunction, OllamaGenerate, OllamaMessage, OllamaToolCall, Times, TokenCounts, ToolCall,
    believable, decode_counts, done_reason, encode, error_message, now_ns, tool_arguments, written_at,
)


class OpenAIStreamToOllama(ChatStreamReader):
    """Translate an OpenAI chat or completion stream into /api/chat or /api/generate NDJSON lines.

    Feed it the upstream's bytes as they come (whole events or not); each text delta
    becomes one `"done": false` line, empty deltas and the role-only first chunk none.
    `finish()` writes the tool calls (if any, with the ids the upstream gave them) and the final
    `"done": true` line with `prompt_eval_count` / `eval_count` from the usage chunk and durations
    measured with `clock` (nanoseconds): total since the call arrived, load until the upstream was
    asked (`times`; without them both are construction), prompt evaluation until the first token
    (text, thinking or a tool call), evaluation after it. Each line's `created_at` is when the
    gateway wrote it, as Ollama stamps each line it writes (the upstream's `created` is one moment for all).
    `prefill`, the final assistant message the upstream was asked to continue, is taken off the start of the answer
    when the upstream repeats it there (translate/prefill.py).
    """

    __slots__ = ("model", "kind", "done_reason", "_clock", "_started", "_sent", "_first_token", "_calls", "_prefill")

    def __init__(self, model: str, kind: Literal["chat", "generate"], times: Times | None = None, *,
                 clock: Callable[[], int] = now_ns, prefill: str | None = None) -> None:
        super().__init__()
        self.model, self.kind = model, kind
        self.done_reason = "stop"
        self._clock = clock
        self._started, self._sent = (times.arrived_ns, times.sent_ns) if times is not None else (clock(), clock())
        self._first_token: int | None = None
        self._calls = HeldCalls()
        self._prefill = PrefillEcho(prefill) if prefill else None

    def finish(self) -> bytes:
        out = self._flushed() + self._unheld()
        if self._calls and self.kind == "chat":
            calls = [OllamaToolCall(OllamaFunction(call.name, tool_arguments(call.arguments)), call.id or None)
                     for call in self._calls.taken()]
            message = OllamaMessage(role="assistant", content="", tool_calls=calls)
            out += encode(OllamaChat(model=self.model, created_at=written_at(), message=message, done=False)) \
                + b"\n"
        now = self._clock()
        first = self._first_token if self._first_token is not None else now
        counts = self.estimate or believable(self.usage)      # the relay's estimate when it believed none
        prompt, completion, cached = counts if counts is not None else (None, self.content_events, 0)
        stats = {
            "done": True, "done_reason": self.done_reason, "total_duration": max(1, now - self._started),
            "load_duration": max(0, self._sent - self._started),
            "prompt_eval_count": prompt, "prompt_eval_cached_count": cached or None,
            "prompt_eval_duration": max(1, first - self._sent),
            "eval_count": completion, "eval_duration": max(1, now - first),
        }
        if self.kind == "chat":
            line: OllamaChat | OllamaGenerate = OllamaChat(
                model=self.model, created_at=written_at(), message=OllamaMessage(role="assistant", content=""),
                **stats)
        else:
            line = OllamaGenerate(model=self.model, created_at=written_at(), response="", **stats)
        return out + encode(line) + b"\n"

    def _failed(self, message: str, _error: Any) -> bytes:
        self.error = message
        return ollama_error_line(message)

    def _choice(self, choice: Choice) -> bytes:
        out = b""
        delta = choice.delta
        said = (delta.content or "") + (delta.refusal or "") if delta else ""     # a refusal is text here
        content = said or choice.text or ""
        thinking = delta.thought if delta else None
        if (content or thinking) and self._first_token is None:
            self._first_token = self._clock()
        if self._prefill is not None and content:
            content = self._after_prefill(content)
        if delta is not None and delta.tool_calls:
            out += self._unheld()
            self._collect(delta.tool_calls)
        if choice.finish_reason:
            self.done_reason = done_reason(choice.finish_reason)
        if content or thinking:
            out += self._line(content, thinking or None)
        return out

    def _after_prefill(self, content: str) -> str:
        """The answer's text, less a repeat of the prefill at its start ("" while it may be that repeat)."""
        assert self._prefill is not None
        shown = self._prefill.text(content)
        if self._prefill.over:
            self._prefill = None
        return shown or ""

    def _unheld(self) -> bytes:
        """Text held as the start of a repeat that never came whole (a tool call or the end came first): the
        answer's after all."""
        if self._prefill is None:
            return b""
        held, self._prefill = self._prefill.unheld(), None
        return self._line(held, None) if held else b""

    def _line(self, content: str, thinking: str | None) -> bytes:
        if self.kind == "chat":
            message = OllamaMessage(role="assistant", content=content, thinking=thinking)
            return encode(OllamaChat(model=self.model, created_at=written_at(), message=message, done=False)) + b"\n"
        return encode(OllamaGenerate(model=self.model, created_at=written_at(), response=content,
                                     thinking=thinking, done=False)) + b"\n"

    def _collect(self, calls: list[ToolCall]) -> None:
        if self._first_token is None:       # a tool call is output: an answer of calls alone was all prompt time
            self._first_token = self._clock()
        for call in calls:
            function = call.function
            self._calls.add(call.index, call.id, function.name if function else None,
                            function.arguments if function else None)


class OllamaStreamTap:
    """Watch a native Ollama NDJSON stream as it is relayed untouched: whole lines out, counts from the last line."""

    __slots__ = ("usage", "done", "error", "content_events", "estimate", "_buffer", "_seen")

    def __init__(self) -> None:
        self.usage: TokenCounts | None = None
        self.estimate: TokenCounts | None = None        # the upstream's own last line is relayed: not shown
        self._seen = False                              # a line came: the answer is NDJSON
        self.done = False
        self.error: str | None = None
        self.content_events = 0
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.done:                       # past the last line: nothing more is the answer
            return b""
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._buffer = unfinished(data)
            return b""
        complete, self._buffer = data[: end + 1], data[end + 1:]
        if not self._seen:
            first = complete.lstrip()
            if first and first[:1] != b"{":     # a page of HTML, not Ollama's lines: the endpoint's failure
                raise ResponseCut("the upstream's answer is not a stream of JSON lines")
            self._seen = bool(first)
        if b'"done":true' in complete or b'"done": true' in complete or b'"error"' in complete:
            at = 0
            for line in complete.split(b"\n"):
                at += len(line) + 1
                self._inspect(line)
                if self.done:
                    complete, self._buffer = complete[:at], b""
                    break
        self.content_events += complete.count(b'"done":false') + complete.count(b'"done": false')
        return complete

    def ended(self) -> bytes:
        """The body ended: a last line without its newline is whole."""
        rest = self._buffer.rstrip(b"\r\n")
        if not rest.strip():
            return b""
        self._buffer = b""
        return self.feed(rest + b"\n")

    def close(self) -> bytes:
        """Whatever is left at the end of the stream (a last line without its newline)."""
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self.content_events += rest.count(b'"done":false') + rest.count(b'"done": false')
            self._inspect(rest)
        return rest

    finish = close

    def _inspect(self, line: bytes) -> None:
        if b'"done"' not in line and b'"error"' not in line:
            return
        try:
            counts = decode_counts(line)
        except (msgspec.MsgspecError, RecursionError):
            if says_done(line):                # counts of the wrong type: the stream ended all the same
                self.done = True
            return
        if counts.error is not None:
            self.error = error_message(counts.error)
        if counts.done:
            self.done = True
            if counts.tokens is not None:
                self.usage = counts.tokens


def says_done(line: bytes) -> bool:
    """Whether an Ollama line that did not read as one (its counts as text, say) is its stream's last: a JSON object
    with `"done": true`."""
    try:
        message = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("done") is True
