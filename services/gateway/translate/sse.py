"""Watch an OpenAI event stream as it is relayed: find usage, measure what the model wrote, drop what was not asked."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from switchyard_gateway.http1 import AnswerTooLarge, ResponseCut
from switchyard_gateway.services.gateway.translate.responses import usage_counts
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, TokenCounts, ToolCall, Usage, cached_tokens, decode_reply, error_message,
)

_decode = msgspec.json.Decoder().decode
MAX_EVENT_BYTES = 8 * 1024 * 1024       # one streamed event or line, kept until its end comes


def unfinished(data: bytes) -> bytes:
    """`data`, an event or line whose end has not come yet, to keep for the next chunk; AnswerTooLarge (a cut
    stream, to the relay) past MAX_EVENT_BYTES: an endpoint that never ends one would take the worker's memory."""
    if len(data) > MAX_EVENT_BYTES:
        raise AnswerTooLarge(f"the upstream sent more than {MAX_EVENT_BYTES} bytes of one event without its end")
    return data


class EventData:
    """Split a server-sent-event byte stream, however it is chunked, into the data of each whole event."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event `chunk` completes (b"" for an event with no data line: a comment, `retry:`)."""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = unfinished(data)
            return []
        complete, self._buffer = data[:end], data[end + 2:]
        return [_data(event) for event in complete.split(b"\n\n")]

    def flush(self) -> list[bytes]:
        """The data of a last event the stream ended without its blank line."""
        rest, self._buffer = self._buffer, b""
        return [_data(rest)] if rest.strip() else []


class ChatStreamReader:
    """What every translating door's relay of an OpenAI chat stream shares (`plans.Stream`): the data of each whole
    event, however the stream is chunked, given to `_event` (the door's own, which gives the bytes to send); a body
    that ends cleanly once a choice's finish came (`_finish`), without `[DONE]`, is whole; `content_events`, the
    output estimate when no usage came, is `estimated_output` of the bytes the model wrote (`written`)."""

    __slots__ = ("usage", "estimate", "done", "error", "written", "_events", "_finish")

    def __init__(self) -> None:
        self.usage: TokenCounts | None = None
        self.estimate: TokenCounts | None = None    # the gateway's counts, when the upstream sent none (relay)
        self.done = False
        self.error: str | None = None
        self.written = 0
        self._events = EventData()
        self._finish: str | None = None             # the finish_reason of the answer, once it came

    @property
    def content_events(self) -> int:
        return estimated_output(self.written)

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(payload) for payload in self._events.feed(chunk))

    def ended(self) -> bytes:
        out = self._flushed()
        if not self.done and self._finish is not None and self.error is None:     # finished, without [DONE]
            self.done = True
        return out

    def _flushed(self) -> bytes:
        """The bytes of a last event the stream ended without its blank line."""
        return b"".join(self._event(payload) for payload in self._events.flush())

    def _event(self, payload: bytes) -> bytes:
        """One event's data: nothing for a comment, or past `[DONE]` or an error; a chunk that cannot be read or that
        holds the upstream's `error` ends the stream (`_failed`); else its usage and the bytes the model wrote are
        taken, and the door writes its first choice (`_choice`), after what `_begun` writes first."""
        if not payload or self.done or self.error is not None:
            return b""
        if payload == b"[DONE]":
            self.done = True
            return b""
        try:
            chunk = decode_reply(payload)
        except (msgspec.MsgspecError, RecursionError) as exc:     # what it said is lost: the stream fails here
            return self._failed(f"The upstream sent an event that is not an OpenAI chat chunk: {exc}", None)
        if chunk.error is not None:
            return self._failed(error_message(chunk.error), chunk.error)
        if chunk.usage is not None:
            self._usage(chunk.usage)
        self.written += written_in(payload)
        out = self._begun()
        for choice in chunk.choices or ():
            if choice.index == 0:
                out += self._choice(choice)
                if choice.finish_reason:
                    self._finish = choice.finish_reason
        return out

    def _begun(self) -> bytes:
        """What the door writes before its first readable chunk's content (its stream's opening events)."""
        return b""

    def _usage(self, usage: Usage) -> None:
        """The stream's usage chunk: its counts are the call's."""
        self.usage = usage_counts(usage)

    def _choice(self, choice: Choice) -> bytes:
        """A choice's reasoning (`reasoning_content` or `reasoning`) through the door's `_reasoning`, its text
        through `_text`, a refusal through `_refusal`, each piece of a tool call through `_tool_call`."""
        delta = choice.delta
        if delta is None:
            return self._text(choice.text or "")
        out = self._reasoning(delta.thought) if delta.thought else b""
        out += self._text(delta.content or "")
        if delta.refusal:
            out += self._refusal(delta.refusal)
        for call in delta.tool_calls or ():
            out += self._tool_call(call)
        return out

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _reasoning(self, text: str) -> bytes:
        """A piece of the model's reasoning, which the model wrote before its text in the same chunk: dropped
        unless the door's API has a place for it (its bytes are counted in `written` all the same)."""
        return b""

    def _refusal(self, refusal: str) -> bytes:
        """The model declining, saying why: text, where the door's API has no refusal of its own."""
        return self._text(refusal)

    def _tool_call(self, call: ToolCall) -> bytes:
        raise NotImplementedError

    def _failed(self, message: str, error: Any) -> bytes:
        """The stream's end in the door's format: the upstream's `error` member (None: its chunk was unreadable)."""
        raise NotImplementedError


def _data(event: bytes) -> bytes:
    return b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))


class SseTap:
    """Feed raw upstream chunks in, get the bytes to forward out (whole events only).

    `usage` is the `TokenCounts` of the stream's usage chunk, if any; that chunk is
    forwarded only when `keep_usage` (the client asked for it). `written` counts the
    bytes the model wrote (`written_in`); `content_events`, the output token estimate
    when the upstream reports no usage, is `estimated_output` of them. `done` is set by
    the `[DONE]` event; `error` by an event holding an `error` (relayed as it came).
    """

    __slots__ = ("keep_usage", "usage", "written", "done", "estimate", "error", "_buffer", "_finished",
                 "_first", "_held", "_seen")

    def __init__(self, keep_usage: bool) -> None:
        self.keep_usage = keep_usage
        self.usage: TokenCounts | None = None
        self.written = 0
        self.done = False
        self.estimate: TokenCounts | None = None    # the gateway's counts, when the upstream sent none (relay)
        self.error: str | None = None
        self._buffer = b""
        self._finished = False      # a choice's finish_reason came: a body ending cleanly after it is whole
        self._first = b""           # the first event, whose id, created and model a usage chunk of ours repeats
        self._held = False          # [DONE] held back: the client asked for usage and the upstream sent none
        self._seen = False          # an event came: the answer is an event stream

    @property
    def content_events(self) -> int:
        return estimated_output(self.written)

    def feed(self, chunk: bytes) -> bytes:
        if self.done:                       # past [DONE]: nothing more is the answer (nor billed)
            return b""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:                  # CRLF line ends (the format allows them): relayed as LF
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = unfinished(data)
            return b""
        complete, self._buffer = data[: end + 2], data[end + 2:]
        if not self._seen:
            self._seen = _is_event_stream(complete)
        if self.keep_usage and not self._first:
            self._first = complete[:complete.find(b"\n\n")]
        if not self._finished and _FINISHED.search(complete) is not None:
            self._finished = True
        if self.error is None and b'"error"' in complete:      # a key, never text: quotes in text are escaped
            self.error = _error_in(complete)
        marker = _first_marker(complete)
        if marker < 0:
            self.written += written_in(complete)
            return complete if self.keep_usage else _without_null_usage(complete)
        # Only the events from the first that may carry usage or end the stream are read one by one (a stream
        # that arrives whole would otherwise be split event by event).
        start = complete.rfind(b"\n\n", 0, marker) + 2 if marker else 0
        if start < 2:
            start = 0
        head = complete[:start]
        self.written += written_in(head)
        kept = head + self._inspect(complete[start:])
        return kept if self.keep_usage else _without_null_usage(kept)

    def _inspect(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if self.done:
                break
            payload = event[6:] if event.startswith(b"data: ") and b"\n" not in event else _data(event)
            if payload.strip() == b"[DONE]":
                self.done = True
                if self.keep_usage and self.usage is None:     # the usage chunk asked for comes first (finish)
                    self._held = True
                else:
                    kept.append(event)
                continue
            if b'"usage"' in payload:
                try:
                    message = _decode(payload)
                except (msgspec.DecodeError, RecursionError):
                    message = None
                if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                    self.usage = _counts(message["usage"])
                    if not message.get("choices"):
                        if self.keep_usage:
                            kept.append(event)
                        continue
            self.written += written_in(payload)
            kept.append(event)
        return b"".join(e + b"\n\n" for e in kept)

    def ended(self) -> bytes:
        """The body ended: a last event without its blank line is whole; a stream whose answer finished (a
        finish_reason came) but that sent no `[DONE]` is whole too, and the client gets the `[DONE]`."""
        rest = self._buffer.rstrip(b"\r\n")
        out = b""
        if rest.strip():
            self._buffer = b""
            out = self.feed(rest + b"\n\n")
        if not self.done and self._finished:
            self.done = True
            if self.keep_usage and self.usage is None:
                self._held = True
            else:
                out += b"data: [DONE]\n\n"
        return out

    def finish(self) -> bytes:
        """Whatever incomplete event is left at the end of the stream; and a [DONE] held back, after the usage
        chunk the client asked for, of the gateway's `estimate` (the upstream sent none)."""
        rest, self._buffer = self._buffer, b""
        if _data(rest.strip()).strip() == b"[DONE]":
            self.done = True
        if not self._held:
            return rest
        self._held = False
        return rest + self._usage_chunk() + b"data: [DONE]\n\n"

    def _usage_chunk(self) -> bytes:
        counts = self.estimate
        if counts is None:
            return b""
        try:
            first = _decode(_data(self._first)) if self._first else {}
        except (msgspec.DecodeError, RecursionError):
            first = {}
        first = first if isinstance(first, dict) else {}
        chunk = {key: first[key] for key in ("id", "object", "created", "model", "system_fingerprint") if key in first}
        chunk.update(choices=[], usage={"prompt_tokens": counts.prompt, "completion_tokens": counts.completion,
                                        "total_tokens": counts.prompt + counts.completion})
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def _error_in(events: bytes) -> str | None:
    """The message of the first event holding an `error`, if one does."""
    for event in events.split(b"\n\n"):
        if b'"error"' not in event:
            continue
        try:
            message = _decode(_data(event))
        except (msgspec.DecodeError, RecursionError):
            continue
        if isinstance(message, dict) and message.get("error") is not None:
            return error_message(message["error"])
    return None


_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")


def _is_event_stream(events: bytes) -> bool:
    """Whether the first event of an answer is one (True), or there is none yet (False); ResponseCut for an answer
    that is no event stream (a page of HTML, a whole JSON answer from a server that does not stream), which was
    relayed as it came, with a cut event after it, and is now the endpoint's failure before any byte is sent."""
    first = events.lstrip(b"\n")
    if not first:
        return False
    if not first.startswith(_FIELDS):
        raise ResponseCut("the upstream's answer is not an event stream")
    return True


_MARKERS = (b'"usage":{', b'"usage": {', b"[DONE]")
_FINISHED = re.compile(rb'"finish_reason": ?"')       # a choice's finish_reason came (not null)


def _first_marker(events: bytes) -> int:
    """Where the first usage object or `[DONE]` is in `events`, or -1."""
    if b'"usage"' not in events and b"[DONE]" not in events:        # most events: a third of the finds below
        return -1
    found = [at for at in (events.find(marker) for marker in _MARKERS) if at >= 0]
    return min(found) if found else -1


# a text the model wrote, as a key of a chunk's delta (chat), choice (completions) or tool call holds it: quotes inside
# a JSON text are escaped, so `"content":"` is never inside one
_TEXTS = re.compile(rb'"(?:content|text|re(?:fusal|asoning(?:_content)?)|thinking|arguments|name)": ?'
                    rb'"([^"\\]*(?:\\.[^"\\]*)*)"')


_KEYED_TEXTS = re.compile(rb'"(content|text|refusal|reasoning_content|reasoning|thinking|arguments|name)": ?'
                          rb'"([^"\\]*(?:\\.[^"\\]*)*)"')


def written_in(events: bytes) -> int:
    """The bytes the model wrote in whole events or lines (as JSON writes them): its text, reasoning and tool calls
    (an Ollama line's arguments are an object, not text: its reader adds them). Counting the events that carried
    `"content":"` counted tool calls and reasoning as nothing (an answer of tool calls alone was billed no output)
    and an empty role chunk as a token; counting the chunks that carried text billed a chunk of 200 words a token.

    A server that writes its reasoning under both names (vLLM keeps the old `reasoning_content` beside `reasoning`,
    the same text) has it counted once: `reasoning` counts only for what it holds beyond `reasoning_content`."""
    if b'"reasoning"' not in events:
        return sum(map(len, _TEXTS.findall(events)))
    sizes = {b"reasoning": 0, b"reasoning_content": 0, b"": 0}
    for key, text in _KEYED_TEXTS.findall(events):
        sizes[key if key in sizes else b""] += len(text)
    return sizes[b""] + max(sizes[b"reasoning"], sizes[b"reasoning_content"])


def estimated_output(written: int) -> int:
    """The output tokens of a stream whose upstream reported none, from the bytes the model wrote (`written_in`): a
    token per 4, rounded up. Every door's stream relay estimates so (`content_events`)."""
    return (written + 3) // 4


def _counts(usage: dict) -> TokenCounts | None:
    """The counts of a usage chunk; None when it reports none (all null), and whatever it says otherwise, for
    `believable` to judge (a count as text must not raise here)."""
    prompt, completion, total = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    if prompt is None and completion is None and total is None:
        return None
    prompt = prompt or 0
    if completion is None:
        completion = total - prompt if type(total) is int and type(prompt) is int else total
    return TokenCounts(prompt, completion, cached_tokens(usage.get("prompt_tokens_details")))


def _without_null_usage(events: bytes) -> bytes:
    """Drop the `"usage":null` a server adds to every chunk once usage was asked for, when the client did not ask."""
    if b'"usage":null' not in events:
        return events
    return events.replace(b',"usage":null', b"").replace(b'"usage":null,', b"")
