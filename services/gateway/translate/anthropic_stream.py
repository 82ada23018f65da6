"""Streams on the Anthropic door: OpenAI server-sent events and Ollama NDJSON, each written as Anthropic's event sequence.

    message_start
    content_block_start (thinking)             the upstream's reasoning, when it writes any; ping after the first
    content_block_delta (thinking_delta)...    block's start
    content_block_delta (signature_delta)      empty: no upstream signs its reasoning
    content_block_stop                         when text, a tool call or the end follows
    content_block_start (text)
    content_block_delta (text_delta)...
    content_block_stop                         when reasoning, a tool call or the end follows
    content_block_start (tool_use), content_block_delta (one input_json_delta), content_block_stop
                                               a tool call, whole, once text or reasoning follows it or at the end
    ... one block per run of reasoning or text and per tool call, indices one after another ...
    message_delta (stop_reason, stop_sequence; usage: output_tokens, input_tokens)
    message_stop

Both translators share the relay's shape (see translate/stream.py): `feed(chunk)` gives the events
to send, `finish()` the closing ones once the upstream ended properly (`done`); `usage` holds the
upstream's counts, `content_events` the output estimate when no usage came (`sse.estimated_output` of the bytes the
model wrote, as on the OpenAI door); the client is shown the relay's `estimate` when it believed no counts of the
upstream's (what the log records), else them. As Anthropic's own streams do, `message_start` says the prompt's
input tokens (the gateway's, `AnthropicCall.prompt_tokens`: the upstream reports its own only at the end) and
`message_delta` the final input and output totals, which replace them (Anthropic's usage there is cumulative; the
SDK takes it as final). An upstream error inside the stream becomes an `error` event. Reasoning (`reasoning_content`
or `reasoning` of an OpenAI delta, `thinking` of an Ollama line) is counted in the output estimate as text is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.anthropic_responses import (
    decode_ollama_line, error_event, message_id, ollama_tool_content, stop_reason, stream_error_status, tool_use_id,
    usage_block,
)
from switchyard_gateway.services.gateway.translate.anthropic_wire import (
    ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent, InputJsonDelta, MessageDelta,
    MessageDeltaEvent, MessageDeltaUsage, MessagesResponse, MessagesUsage, MessageStartEvent, MessageStopEvent,
    PingEvent, SignatureDelta, StopReason, TextContent, TextDelta, ThinkingContent, ThinkingDelta, ToolUseContent,
    encode, sse,
)
from switchyard_gateway.services.gateway.translate.prefill import PrefillEcho
from switchyard_gateway.services.gateway.translate.held_calls import HeldCalls
from switchyard_gateway.services.gateway.translate.sse import ChatStreamReader, estimated_output, unfinished, written_in
from switchyard_gateway.services.gateway.translate.stream import says_done
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, TokenCounts, ToolCall, believable, error_message, text_or_nothing, tool_arguments,
)

_PING = sse(PingEvent())
_STOP = sse(MessageStopEvent())


class MessageEvents:
    """Write one message as events from reasoning, text and tool-call pieces: reasoning and text as they come, each
    tool call whole.

    A tool call's id, name and argument pieces are kept until the end (text or reasoning that comes meanwhile is
    written as it comes: a server may send more of a call's arguments after it). Its block is then written at once:
    `content_block_start` with the final id and name, one `input_json_delta` holding its arguments as a JSON object
    (`wire.tool_arguments`, as a whole answer reads them: text that is no JSON object is `{"arguments": ...}`; none
    when there are none) and `content_block_stop`. So a client never sees arguments it cannot parse, nor a name that
    came after the call's first piece go missing, and parallel calls whose pieces interleave each keep theirs. A
    thinking block ends with an empty `signature_delta` before its `content_block_stop`, as Anthropic's do; it is
    written only when the request asked for thinking (`enabled` or `adaptive`), as Anthropic's are.
    """

    __slots__ = ("model", "input_tokens", "shows_thinking", "started", "pinged", "tool_called", "_index", "_open",
                 "_calls")

    def __init__(self, model: str, input_tokens: int = 0, thinking: bool = True) -> None:
        self.model = model
        self.shows_thinking = thinking            # the request asked for thinking: reasoning is shown as blocks
        self.input_tokens = input_tokens          # the prompt as the gateway counted it, for `message_start`
        self.started = self.pinged = self.tool_called = False
        self._index = -1                          # the last block opened
        self._open: type[TextContent | ThinkingContent] | None = None   # the kind of block `_index`, while open
        self._calls = HeldCalls()

    def start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message = MessagesResponse(id=message_id(), model=self.model, content=[], stop_reason=None,
                                   stop_sequence=None,
                                   usage=MessagesUsage(input_tokens=self.input_tokens, output_tokens=0))
        return sse(MessageStartEvent(message))

    def text(self, text: str) -> bytes:
        if not text:
            return b""
        return self._run(TextContent) + sse(ContentBlockDeltaEvent(self._index, TextDelta(text)))

    def thinking(self, text: str) -> bytes:
        """A piece of the upstream's reasoning (none unless the request asked for thinking, as Anthropic's)."""
        if not text or not self.shows_thinking:
            return b""
        return self._run(ThinkingContent) + sse(ContentBlockDeltaEvent(self._index, ThinkingDelta(text)))

    def _run(self, kind: type[TextContent | ThinkingContent]) -> bytes:
        """The events before a piece of text or reasoning: a block of its kind opened unless one is open. The tool
        calls kept so far stay kept: a server may send more of a call's arguments after it (reasoning or text
        between two pieces of one call cut the call short when it was written here)."""
        out = self.start()
        if self._open is not kind:
            out += self._open_block(TextContent("") if kind is TextContent else ThinkingContent(""))
            self._open = kind
        return out

    def call(self, key: object, call_id: str | None, name: str | None, fragment: str | None) -> bytes:
        """A piece of tool call `key`: its id, its name, a piece of its arguments (any of them empty). The first id
        and the first name given are the call's. A piece naming another id than the one the upstream gave the call
        of this key begins a new call (a server may number the calls after a text run from 0 again)."""
        self.tool_called = True
        if self._calls.add(key, call_id, name, fragment):
            return self.start() + self._close()   # the text before the call ends here
        return b""

    def end(self, reason: StopReason, sequence: str | None, counts: TokenCounts | None, written: int) -> bytes:
        """The closing events; their totals `counts` (the relay's estimate or the upstream's), else the prompt as
        counted and the output estimated from the `written` bytes."""
        out = self.start() + self._close() + self._write_calls()
        if not self.pinged:
            self.pinged = True
            out += _PING
        usage = usage_block(counts or TokenCounts(self.input_tokens, estimated_output(written)))
        totals = MessageDeltaUsage(output_tokens=usage.output_tokens, input_tokens=usage.input_tokens,
                                   cache_read_input_tokens=usage.cache_read_input_tokens)
        return out + sse(MessageDeltaEvent(MessageDelta(reason, sequence), totals)) + _STOP

    def _write_calls(self) -> bytes:
        """Each tool call kept so far, in the order they began, as a whole block of its own."""
        out = b""
        for call in self._calls.taken():
            out += self._open_block(ToolUseContent(call.id or tool_use_id(), call.name, {}))
            arguments = tool_arguments(call.arguments)
            if arguments:
                out += sse(ContentBlockDeltaEvent(self._index, InputJsonDelta(encode(arguments).decode())))
            out += sse(ContentBlockStopEvent(self._index))
        return out

    def _open_block(self, block: TextContent | ThinkingContent | ToolUseContent) -> bytes:
        out = self._close()
        self._index += 1
        out += sse(ContentBlockStartEvent(self._index, block))
        if not self.pinged:
            self.pinged = True
            out += _PING
        return out

    def _close(self) -> bytes:
        """The open text or thinking block's end (a thinking block's with its empty signature first)."""
        kind, self._open = self._open, None
        if kind is None:
            return b""
        signed = sse(ContentBlockDeltaEvent(self._index, SignatureDelta())) if kind is ThinkingContent else b""
        return signed + sse(ContentBlockStopEvent(self._index))


class OpenAIStreamToAnthropic(ChatStreamReader):
    """Translate an OpenAI chat stream (with its usage chunk) into Anthropic events.

    `prefill`, the text of a final assistant turn the upstream was asked to continue, is taken off the start of the
    answer when the upstream repeats it there (llama.cpp's llama-server does; vLLM does not): Anthropic's answer
    begins after it. Text that only begins like it is held until it differs, then relayed.
    """

    __slots__ = ("events", "stop_sequences", "_matched", "_prefill", "_refused")

    def __init__(self, model: str, stop_sequences: list[str] | None = None, input_tokens: int = 0,
                 prefill: str | None = None, thinking: bool = True) -> None:
        super().__init__()
        self.events = MessageEvents(model, input_tokens, thinking)
        self.stop_sequences = stop_sequences
        self._matched: Any = None
        self._prefill = PrefillEcho(prefill) if prefill else None   # a repeat of it is taken off the answer
        self._refused = False                     # the model declined: its reason, as text, and stop_reason refusal

    def finish(self) -> bytes:
        out = self._flushed()
        if self.error is not None:
            return out
        reason, sequence = stop_reason(self._finish, self.events.tool_called, self._matched, self.stop_sequences,
                                       self._refused)
        return out + self._unheld() + self.events.end(reason, sequence, self.estimate or believable(self.usage),
                                                       self.written)

    def _begun(self) -> bytes:
        return self.events.start()

    def _failed(self, message: str, error: Any) -> bytes:
        self.error = message
        return self.events.start() + error_event(message, stream_error_status(error))

    def _choice(self, choice: Choice) -> bytes:
        if choice.finish_reason:
            self._matched = choice.stop_reason
        return super()._choice(choice)

    def _text(self, text: str) -> bytes:
        """The answer's text, less a repeat of the prefill at its start."""
        prefill = self._prefill
        if prefill is not None:
            shown = prefill.text(text)
            if prefill.over:
                self._prefill = None
            if shown is None:
                return b""
            text = shown
        return self.events.text(text)

    def _reasoning(self, text: str) -> bytes:
        """A piece of reasoning: a thinking block. It is not the answer's text: a repeat of the prefill after it is
        still taken off."""
        return self.events.thinking(text)

    def _unheld(self) -> bytes:
        """Text held as the start of a repeat that never came whole (a tool call or the end came first): the
        answer's after all."""
        if self._prefill is None:
            return b""
        held, self._prefill = self._prefill.unheld(), None
        return self.events.text(held)

    def _refusal(self, refusal: str) -> bytes:
        self._refused = True
        return self._text(refusal)

    def _tool_call(self, call: ToolCall) -> bytes:
        function = call.function
        return self._unheld() + self.events.call(call.index, call.id, function.name if function else None,
                                function.arguments if function else None)


class OllamaStreamToAnthropic:
    """Translate an Ollama /api/chat NDJSON stream into Anthropic events; tool calls come whole, one block each."""

    __slots__ = ("events", "usage", "estimate", "done", "error", "written", "_buffer", "_finish", "_calls")

    def __init__(self, model: str, input_tokens: int = 0, thinking: bool = True) -> None:
        self.events = MessageEvents(model, input_tokens, thinking)
        self.usage: TokenCounts | None = None
        self.estimate: TokenCounts | None = None
        self.done = False
        self.error: str | None = None
        self.written = 0                          # bytes the model wrote (`sse.written_in`, arguments as JSON)
        self._buffer = b""
        self._finish: str | None = None
        self._calls = 0

    @property
    def content_events(self) -> int:
        return estimated_output(self.written)

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
        return out + self.events.end(reason, sequence, self.estimate or believable(self.usage), self.written)

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
            return out + error_event(self.error, stream_error_status(reply.error))
        self.written += written_in(line)
        message = reply.message
        if message is not None:
            out += self.events.thinking(text_or_nothing(message.thinking)) + self.events.text(message.content)
            for call in message.tool_calls or ():
                block = ollama_tool_content(call)
                self._calls += 1
                arguments = encode(block.input)           # an object on the line, which `written_in` leaves out
                self.written += len(arguments)
                out += self.events.call(self._calls, block.id, block.name, arguments.decode())
        if reply.done:
            self.done = True
            self._finish = reply.done_reason
            self.usage = reply.counts
        return out
