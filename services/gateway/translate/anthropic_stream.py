"""Streams on the Anthropic door: OpenAI server-sent events and Ollama NDJSON, each written as Anthropic's event sequence.

    message_start
    content_block_start (text, or tool_use)   ping after the first one
    content_block_delta (text_delta, or input_json_delta)...
    content_block_stop                         when the next block starts, or at the end
    ... one block per text run and per tool call ...
    message_delta (stop_reason, stop_sequence; usage: output_tokens, input_tokens)
    message_stop

Both translators share the relay's shape (see translate/stream.py): `feed(chunk)` gives the events
to send, `finish()` the closing ones once the upstream ended properly (`done`); `usage` holds the
upstream's counts, `content_events` the pieces relayed (the output estimate when no usage came); the client is
shown the relay's `estimate` when it believed no counts of the upstream's (what the log records), else them. Usage
arrives at the end of a chat stream, so `message_start` says 0 tokens and `message_delta` carries the
totals (the SDK takes them as final). An upstream error inside the stream becomes an `error` event.
"""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.anthropic_responses import (
    decode_ollama_line, error_event, message_id, ollama_tool_content, stop_reason, tool_use_id, usage_block,
)
from switchyard_gateway.services.gateway.translate.anthropic_wire import (
    ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent, InputJsonDelta, MessageDelta,
    MessageDeltaEvent, MessageDeltaUsage, MessagesResponse, MessagesUsage, MessageStartEvent, MessageStopEvent,
    PingEvent, StopReason, TextContent, TextDelta, ToolUseContent, encode, sse,
)
from switchyard_gateway.services.gateway.translate.responses import usage_counts
from switchyard_gateway.services.gateway.translate.sse import EventData, unfinished
from switchyard_gateway.services.gateway.translate.stream import says_done
from switchyard_gateway.services.gateway.translate.wire import (
    TokenCounts, ToolCall, believable, decode_reply, error_message,
)

_PING = sse(PingEvent())
_STOP = sse(MessageStopEvent())


class MessageEvents:
    """Write one message as events from text and tool-call pieces, opening and closing content blocks as they change."""

    __slots__ = ("model", "started", "pinged", "tool_called", "content_events", "_index", "_open", "_tools",
                 "_waiting")

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = self.pinged = self.tool_called = False
        self.content_events = 0
        self._index = -1                          # the last block opened
        self._open: object | None = None          # "text", or the key of the open tool call
        self._tools: dict[object, int] = {}       # tool call key -> its block index
        # Tool calls begun while another's block is open (an upstream may interleave parallel calls' arguments;
        # Anthropic's blocks come one after another): key -> (id, name, argument pieces), each written whole as
        # its own block once the open one closes.
        self._waiting: dict[object, tuple[str | None, str, list[str]]] = {}

    def start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message = MessagesResponse(id=message_id(), model=self.model, content=[], stop_reason=None,
                                   stop_sequence=None, usage=MessagesUsage(input_tokens=0, output_tokens=0))
        return sse(MessageStartEvent(message))

    def text(self, text: str) -> bytes:
        if not text:
            return b""
        self.content_events += 1
        out = b"" if self._open == "text" else self._open_block("text", TextContent(""))
        return out + sse(ContentBlockDeltaEvent(self._index, TextDelta(text)))

    def tool(self, key: object, call_id: str | None, name: str) -> bytes:
        """Open the tool_use block of tool call `key`: at once after text, else once the open tool call's block
        closes (its arguments may still be coming)."""
        self.tool_called = True
        if self._open is not None and self._open != "text":
            self._waiting[key] = (call_id, name, [])
            return b""
        return self._tool_block(key, call_id, name)

    def arguments(self, key: object, fragment: str) -> bytes:
        if not fragment:
            return b""
        waiting = self._waiting.get(key)
        if waiting is not None:
            self.content_events += 1
            waiting[2].append(fragment)
            return b""
        index = self._tools.get(key)
        if index is None:
            return b""
        self.content_events += 1
        return sse(ContentBlockDeltaEvent(index, InputJsonDelta(fragment)))

    def has_tool(self, key: object) -> bool:
        return key in self._tools or key in self._waiting

    def end(self, reason: StopReason, sequence: str | None, counts: TokenCounts | None) -> bytes:
        out = self.start() + self._close() + self._write_waiting()
        if not self.pinged:
            self.pinged = True
            out += _PING
        usage = usage_block(counts)
        totals = MessageDeltaUsage(output_tokens=usage.output_tokens if counts else self.content_events,
                                   input_tokens=usage.input_tokens if counts else None,
                                   cache_read_input_tokens=usage.cache_read_input_tokens)
        return out + sse(MessageDeltaEvent(MessageDelta(reason, sequence), totals)) + _STOP

    def _tool_block(self, key: object, call_id: str | None, name: str, waited: bool = False) -> bytes:
        out = self._open_block(key, ToolUseContent(call_id or tool_use_id(), name, {}), waited)
        self._tools[key] = self._index
        return out

    def _write_waiting(self) -> bytes:
        """Each tool call that waited for the open block, as a whole block of its own (the open one closed)."""
        out = b""
        while self._waiting:
            key = next(iter(self._waiting))
            call_id, name, pieces = self._waiting.pop(key)
            out += self._tool_block(key, call_id, name, waited=True)
            if pieces:
                out += sse(ContentBlockDeltaEvent(self._index, InputJsonDelta("".join(pieces))))
            out += self._close()
        return out

    def _open_block(self, key: object, block: TextContent | ToolUseContent, waited: bool = False) -> bytes:
        out = self.start() + self._close()
        if self._waiting and not waited:
            out += self._write_waiting()
        self._index += 1
        self._open = key
        out += sse(ContentBlockStartEvent(self._index, block))
        if not self.pinged:
            self.pinged = True
            out += _PING
        return out

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse(ContentBlockStopEvent(self._index))


class OpenAIStreamToAnthropic:
    """Translate an OpenAI chat stream (with its usage chunk) into Anthropic events."""

    __slots__ = ("events", "stop_sequences", "usage", "estimate", "done", "error", "_events", "_finish", "_matched")

    def __init__(self, model: str, stop_sequences: list[str] | None = None) -> None:
        self.events = MessageEvents(model)
        self.stop_sequences = stop_sequences
        self.usage: TokenCounts | None = None
        self.estimate: TokenCounts | None = None
        self.done = False
        self.error: str | None = None
        self._events = EventData()
        self._finish: str | None = None
        self._matched: Any = None

    @property
    def content_events(self) -> int:
        return self.events.content_events

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(payload) for payload in self._events.feed(chunk))

    def ended(self) -> bytes:
        out = b"".join(self._event(payload) for payload in self._events.flush())
        if not self.done and self._finish is not None and self.error is None:   # finished, without [DONE]
            self.done = True
        return out

    def finish(self) -> bytes:
        out = b"".join(self._event(payload) for payload in self._events.flush())
        if self.error is not None:
            return out
        reason, sequence = stop_reason(self._finish, self.events.tool_called, self._matched, self.stop_sequences)
        return out + self.events.end(reason, sequence, self.estimate or believable(self.usage))

    def _event(self, payload: bytes) -> bytes:
        if not payload or self.error is not None or self.done:
            return b""
        if payload == b"[DONE]":
            self.done = True
            return b""
        try:
            chunk = decode_reply(payload)
        except (msgspec.MsgspecError, RecursionError) as exc:     # what it said is lost: the stream fails here
            self.error = f"The upstream sent an event that is not an OpenAI chat chunk: {exc}"
            return self.events.start() + error_event(self.error)
        out = self.events.start()
        if chunk.error is not None:
            self.error = error_message(chunk.error)
            return out + error_event(self.error)
        if chunk.usage is not None:
            self.usage = usage_counts(chunk.usage)
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                out += self.events.text(delta.content or "")
                for call in delta.tool_calls or ():
                    out += self._tool_call(call)
            elif choice.text:
                out += self.events.text(choice.text)
            if choice.finish_reason:
                self._finish, self._matched = choice.finish_reason, choice.stop_reason
        return out

    def _tool_call(self, call: ToolCall) -> bytes:
        function = call.function
        out = b""
        if not self.events.has_tool(call.index):
            out = self.events.tool(call.index, call.id, (function.name if function else None) or "")
        return out + self.events.arguments(call.index, (function.arguments if function else None) or "")


class OllamaStreamToAnthropic:
    """Translate an Ollama /api/chat NDJSON stream into Anthropic events; tool calls come whole, one block each."""

    __slots__ = ("events", "usage", "estimate", "done", "error", "_buffer", "_finish", "_calls")

    def __init__(self, model: str) -> None:
        self.events = MessageEvents(model)
        self.usage: TokenCounts | None = None
        self.estimate: TokenCounts | None = None
        self.done = False
        self.error: str | None = None
        self._buffer = b""
        self._finish: str | None = None
        self._calls = 0

    @property
    def content_events(self) -> int:
        return self.events.content_events

    def feed(self, chunk: bytes) -> bytes:
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._buffer = unfinished(data)
            return b""
        complete, self._buffer = data[:end], data[end + 1:]
        return b"".join(self._line(line) for line in complete.split(b"\n"))

    def ended(self) -> bytes:
        out = self._line(self._buffer) if self._buffer.strip() else b""
        self._buffer = b""
        return out

    def finish(self) -> bytes:
        out = self.ended()
        if self.error is not None:
            return out
        reason, sequence = stop_reason(self._finish, self.events.tool_called)
        return out + self.events.end(reason, sequence, self.estimate or believable(self.usage))

    def _line(self, line: bytes) -> bytes:
        if not line.strip() or self.error is not None or self.done:
            return b""
        try:
            reply = decode_ollama_line(line)
        except (msgspec.MsgspecError, RecursionError) as exc:
            if says_done(line):            # counts of the wrong type on the last line: it ends all the same
                self.done, self._finish = True, "stop"
                return b""
            self.error = f"The upstream sent a line that is not an Ollama chat line: {exc}"
            return self.events.start() + error_event(self.error)
        out = self.events.start()
        if reply.error is not None:
            self.error = error_message(reply.error)
            return out + error_event(self.error)
        message = reply.message
        if message is not None:
            out += self.events.text(message.content)
            for call in message.tool_calls or ():
                block = ollama_tool_content(call)
                self._calls += 1
                out += self.events.tool(self._calls, block.id, block.name)
                out += self.events.arguments(self._calls, encode(block.input).decode())
        if reply.done:
            self.done = True
            self._finish = reply.done_reason
            self.usage = reply.counts
        return out
