"""Streams on the Responses door: an OpenAI chat stream written as the Responses API's event sequence.

    response.created, response.in_progress          the Response, in progress, no output yet
    response.output_item.added (message)            when the first text comes
    response.content_part.added (output_text)
    response.output_text.delta ...
    response.output_text.done, response.content_part.done
    (a refusal: its own part, response.refusal.delta ... and response.refusal.done)
    response.output_item.done                       when a tool call or the end follows
    response.output_item.added (function_call), response.function_call_arguments.delta (whole),
    response.function_call_arguments.done, response.output_item.done
                                                    a tool call, whole, once text follows it or at the end
    response.completed                              the final Response with its usage (response.incomplete
                                                    when the output limit or a content filter ended it)

Every event has an `event:` line and a `sequence_number`. A tool call is written whole, as on the Anthropic door
(anthropic_stream.py): its id and name may come after its first piece, and parallel calls' pieces interleave; its
arguments are the text the upstream wrote (`{}` when it wrote none), as in a whole answer. An upstream error inside
the stream, a chunk the relay cannot read, or a cut (`failed`, through the door's `cut_event`) ends it with an
`error` event and `response.failed`, whose output holds what was written (a message cut short, `incomplete`). The
relay shape is `plans.Stream`'s: `usage` holds the upstream's counts, `content_events` the output estimate when
none came, and the final Response shows the relay's `estimate` then. A refusal (the model declining, saying why) is
a `refusal` part of the message, as OpenAI's own; the other doors, whose APIs have none, show it as text.
"""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.anthropic_responses import stream_error_status
from switchyard_gateway.services.gateway.translate.anthropic_wire import sse
from switchyard_gateway.services.gateway.translate.responses_answers import ending, finished, new_id
from switchyard_gateway.services.gateway.translate.responses_wire import (
    ArgumentsDelta, ArgumentsDone, ContentPartAdded, ContentPartDone, ErrorEvent, FunctionCallItem, OutputItem,
    OutputItemAdded, OutputItemDone, OutputMessage, OutputPart, OutputRefusal, OutputText, OutputTextDelta,
    OutputTextDone, RefusalDelta, RefusalDone, Response, ResponseCompleted, ResponseCreated, ResponseError,
    ResponseFailed, ResponseIncomplete, ResponseInProgress,
)
from switchyard_gateway.services.gateway.translate.sse import ChatStreamReader, estimated_output
from switchyard_gateway.services.gateway.translate.wire import TokenCounts, ToolCall, believable

# the Response error's `code` for the status an upstream's error stands for (the SDK's `ResponseError.code`)
_FAILED_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}


class OpenAIStreamToResponses(ChatStreamReader):
    """Translate an OpenAI chat stream (with its usage chunk) into the Responses API's events for `response`."""

    __slots__ = ("_response", "_sequence", "_started", "_output", "_message", "_parts", "_part", "_pieces", "_calls",
                 "_called")

    def __init__(self, response: Response) -> None:
        super().__init__()
        self._response = response                 # `responses_answers.echoed`: in progress, no output
        self._sequence = 0
        self._started = False
        self._output: list[OutputItem] = []       # the items written whole
        self._message: str | None = None          # the id of the message item taking text, while one is open
        self._parts: list[OutputPart] = []        # its parts written whole
        self._part: type[OutputPart] | None = None    # the kind of its part taking text: OutputText, OutputRefusal
        self._pieces: list[str] = []              # that part's text so far
        self._calls: dict[object, list] = {}      # tool call key -> [id, name, argument pieces], not written yet
        self._called: dict[object, str] = {}      # tool call key -> the id the upstream gave it ("": none), written

    def finish(self) -> bytes:
        out = self._flushed()
        if self.error is not None:
            return out
        incomplete = ending(self._finish)
        out += self._start() + self._close(incomplete is not None) + self._write_calls()
        counts = self.estimate or believable(self.usage) or TokenCounts(0, estimated_output(self.written))
        response = finished(self._response, self._output, counts, incomplete)
        if incomplete is not None:
            return out + self._sse(ResponseIncomplete, response=response)
        return out + self._sse(ResponseCompleted, response=response)

    def failed(self, message: str, code: str = "server_error", status: int = 502) -> bytes:
        """The `error` event and `response.failed` that end the stream (the upstream failed, or was cut)."""
        self.error = message
        cut = self._output + self._open_message()
        response = msgspec.structs.replace(self._response, status="failed", output=cut,
                                           error=ResponseError(_FAILED_CODES.get(status, "server_error"), message))
        return (self._start() + self._sse(ErrorEvent, code=code, message=message, param=None)
                + self._sse(ResponseFailed, response=response))

    def _begun(self) -> bytes:
        return self._start()

    def _failed(self, message: str, error: Any) -> bytes:
        return self.failed(message, _error_code(error), stream_error_status(error))

    def _sse(self, kind: type[msgspec.Struct], **fields: Any) -> bytes:
        self._sequence += 1
        return sse(kind(**fields, sequence_number=self._sequence - 1))

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._sse(ResponseCreated, response=self._response) + self._sse(ResponseInProgress,
                                                                                response=self._response)

    def _text(self, text: str) -> bytes:
        return self._piece(OutputText, text) if text else b""

    def _refusal(self, refusal: str) -> bytes:
        return self._piece(OutputRefusal, refusal)

    def _piece(self, kind: type[OutputPart], text: str) -> bytes:
        """A piece of the message's text or refusal: the message item and the part opened first if need be."""
        out = self._write_calls()
        index = len(self._output)
        if self._message is None:
            self._message, self._parts = new_id("msg"), []
            out += self._sse(OutputItemAdded, output_index=index,
                             item=OutputMessage(id=self._message, status="in_progress", content=[]))
        if self._part is not kind:
            out += self._end_part()
            self._part, self._pieces = kind, []
            out += self._sse(ContentPartAdded, item_id=self._message, output_index=index,
                             content_index=len(self._parts), part=kind(""))
        self._pieces.append(text)
        return out + self._sse(OutputTextDelta if kind is OutputText else RefusalDelta, item_id=self._message,
                               output_index=index, content_index=len(self._parts), delta=text)

    def _end_part(self) -> bytes:
        """The closing events of the message's open part."""
        kind, item_id = self._part, self._message
        if kind is None or item_id is None:
            return b""
        whole, index, content_index = "".join(self._pieces), len(self._output), len(self._parts)
        self._part, self._pieces = None, []
        part = kind(whole)
        self._parts.append(part)
        if kind is OutputText:
            done = self._sse(OutputTextDone, item_id=item_id, output_index=index, content_index=content_index,
                             text=whole)
        else:
            done = self._sse(RefusalDone, item_id=item_id, output_index=index, content_index=content_index,
                             refusal=whole)
        return done + self._sse(ContentPartDone, item_id=item_id, output_index=index, content_index=content_index,
                                part=part)

    def _close(self, incomplete: bool = False) -> bytes:
        """The open message item's closing events; it is `incomplete` when the answer was cut short in it."""
        item_id = self._message
        if item_id is None:
            return b""
        out = self._end_part()
        self._message = None
        item = OutputMessage(id=item_id, status="incomplete" if incomplete else "completed", content=self._parts)
        self._output.append(item)
        return out + self._sse(OutputItemDone, output_index=len(self._output) - 1, item=item)

    def _open_message(self) -> list[OutputItem]:
        """The message item open when the stream failed, as far as it came (`incomplete`); none if none is."""
        if self._message is None:
            return []
        parts = [*self._parts, *([self._part("".join(self._pieces))] if self._part is not None else [])]
        return [OutputMessage(id=self._message, status="incomplete", content=parts)]

    def _tool_call(self, call: ToolCall) -> bytes:
        """A piece of a tool call: its id, name and a piece of its arguments (any of them empty). The first id and
        name given are the call's; a piece naming another id than a written call of its index begins a new call."""
        function = call.function
        key, call_id = call.index, call.id
        written = self._called.get(key)
        if written is not None and not (written and call_id and call_id != written):
            return b""                            # its item is written and done
        out = b""
        pending = self._calls.get(key)
        if pending is None:
            self._called.pop(key, None)
            pending = self._calls[key] = ["", "", []]
            out = self._close()                   # the text before the call ends here
        pending[0] = pending[0] or call_id or ""
        pending[1] = pending[1] or (function.name if function else None) or ""
        if function is not None and function.arguments:
            pending[2].append(function.arguments)
        return out

    def _write_calls(self) -> bytes:
        """Each tool call kept so far, in the order they began, as a whole item of its own."""
        out = b""
        for key, (call_id, name, pieces) in self._calls.items():
            index, arguments = len(self._output), "".join(pieces) or "{}"
            item = FunctionCallItem(id=new_id("fc"), call_id=call_id or new_id("call"), name=name, arguments="",
                                    status="in_progress")
            out += self._sse(OutputItemAdded, output_index=index, item=item)
            out += self._sse(ArgumentsDelta, item_id=item.id, output_index=index, delta=arguments)
            out += self._sse(ArgumentsDone, item_id=item.id, output_index=index, name=name, arguments=arguments)
            item = msgspec.structs.replace(item, arguments=arguments, status="completed")
            self._output.append(item)
            out += self._sse(OutputItemDone, output_index=index, item=item)
            self._called[key] = call_id
        self._calls.clear()
        return out


def _error_code(error: Any) -> str:
    """An upstream error's `code` (or `type`) as text, for the `error` event."""
    if isinstance(error, dict):
        for name in ("code", "type"):
            value = error.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    return "server_error"
