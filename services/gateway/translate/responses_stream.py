"""Streams on the Responses door: an OpenAI chat stream written as the Responses API's event sequence.

    response.created, response.in_progress          the Response, in progress, no output yet
    response.output_item.added (reasoning)          when the upstream's reasoning comes (`reasoning_content` or
    response.content_part.added (reasoning_text)    `reasoning`), before the text it writes after it
    response.reasoning_text.delta ...
    response.reasoning_text.done, response.content_part.done
    response.output_item.done                       when text, a tool call or the end follows
    response.output_item.added (message)            when the first text comes
    response.content_part.added (output_text)
    response.output_text.delta ...
    response.output_text.done, response.content_part.done
    (a refusal: its own part, response.refusal.delta ... and response.refusal.done)
    response.output_item.done                       when reasoning, a tool call or the end follows
    response.output_item.added (function_call), response.function_call_arguments.delta (whole),
    response.function_call_arguments.done, response.output_item.done
                                                    each tool call, whole, at the end (a server may send more
                                                    of a call's arguments after text or reasoning)
    response.completed                              the final Response with its usage (response.incomplete
                                                    when the output limit or a content filter ended it)

Every event has an `event:` line and a `sequence_number`; each item its own `output_index`, one after another. A
tool call is written whole, as on the Anthropic door (anthropic_stream.py): its id and name may come after its first
piece, and parallel calls' pieces interleave; its arguments are the text the upstream wrote (`{}` when it wrote
none), as in a whole answer. An upstream error inside
the stream, a chunk the relay cannot read, or a cut (`failed`, through the door's `cut_event`) ends it with an
`error` event and `response.failed`, whose output holds what was written (an item cut short, `incomplete`) and whose
usage is what the usage event records: the upstream's counts if they came, else the gateway's estimate (`estimate_of`:
the prompt as the call's Ask counted it, the output from the bytes written so far). The relay shape is
`plans.Stream`'s: `usage` holds the upstream's counts, `content_events` the output estimate when none came, and the
final Response shows the relay's `estimate` then, with `reasoning_tokens` the upstream's
`completion_tokens_details.reasoning_tokens` when its counts are shown. A refusal (the model declining, saying why)
is a `refusal` part of the message, as OpenAI's own; the other doors, whose APIs have none, show it as text. The
Response of a stream that completed (or ended incomplete) is what `kept` is given to keep; a failed stream's never.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.anthropic_responses import stream_error_status
from switchyard_gateway.services.gateway.translate.anthropic_wire import sse
from switchyard_gateway.services.gateway.translate.responses_answers import (
    ending, finished, new_id, reasoning_item, usage_block,
)
from switchyard_gateway.services.gateway.translate.responses_wire import (
    ArgumentsDelta, ArgumentsDone, ContentPartAdded, ContentPartDone, ErrorEvent, FunctionCallItem, Logprob,
    OutputItem, OutputItemAdded, OutputItemDone, OutputMessage, OutputPart, OutputRefusal, OutputText,
    OutputTextDelta, OutputTextDone, ReasoningItem, ReasoningText, ReasoningTextDelta, ReasoningTextDone,
    RefusalDelta, RefusalDone, Response, ResponseCompleted, ResponseCreated, ResponseError, ResponseFailed,
    ResponseIncomplete, ResponseInProgress, ResponsesRequest, logprobs_of, namespaces,
)
from switchyard_gateway.services.gateway.translate.held_calls import HeldCalls
from switchyard_gateway.services.gateway.translate.sse import ChatStreamReader, estimated_output
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, TokenCounts, ToolCall, Usage, believable, text_logprobs,
)

# the Response error's `code` for the status an upstream's error stands for (the SDK's `ResponseError.code`)
_FAILED_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}


class OpenAIStreamToResponses(ChatStreamReader):
    """Translate an OpenAI chat stream (with its usage chunk) into the Responses API's events for `response`;
    `estimate_of(output_tokens)` gives the gateway's counts of a call whose upstream reported none (`ResponsesCall`),
    for the Response of a stream that fails."""

    __slots__ = ("_response", "_estimate_of", "_sequence", "_started", "_output", "_thinking", "_thought", "_message",
                 "_parts", "_part", "_pieces", "_calls", "_reasoning_tokens", "_logprobs", "_tokens",
                 "_request", "_kept")

    def __init__(self, response: Response, estimate_of: Callable[[int], TokenCounts] | None = None,
                 request: ResponsesRequest | None = None,
                 kept: Callable[[Response], Response] | None = None) -> None:
        super().__init__()
        self._kept = kept                         # takes the final Response's items to keep (`openai_to_response`)
        self._request = request                   # what it asked of log probabilities (none without it)
        self._response = response                 # `responses_answers.echoed`: in progress, no output
        self._estimate_of = estimate_of
        self._sequence = 0
        self._started = False
        self._output: list[OutputItem] = []       # the items written whole
        self._thinking: str | None = None         # the id of the reasoning item taking reasoning, while one is open
        self._thought: list[str] = []             # its text so far
        self._message: str | None = None          # the id of the message item taking text, while one is open
        self._parts: list[OutputPart] = []        # its parts written whole
        self._part: type[OutputPart] | None = None    # the kind of its part taking text: OutputText, OutputRefusal
        self._pieces: list[str] = []              # that part's text so far
        self._calls = HeldCalls()
        self._reasoning_tokens = 0                # of the output, the reasoning's, as the usage chunk says
        self._logprobs: list[Logprob] = []        # the log probabilities of the chunk being read (asked for)
        self._tokens: list[Logprob] = []          # those of the open text part so far

    def finish(self) -> bytes:
        out = self._flushed()
        if self.error is not None:
            return out
        incomplete = ending(self._finish)
        out += self._start() + self._close(incomplete is not None) + self._write_calls()
        counts, reasoning = self._spent()
        response = finished(self._response, self._output, counts, incomplete, reasoning)
        if self._kept is not None:
            response = self._kept(response)
        if incomplete is not None:
            return out + self._sse(ResponseIncomplete, response=response)
        return out + self._sse(ResponseCompleted, response=response)

    def failed(self, message: str, code: str = "server_error", status: int = 502) -> bytes:
        """The `error` event and `response.failed` that end the stream (the upstream failed, or was cut), with what
        was written and the usage counted so far."""
        self.error = message
        counts, reasoning = self._spent()
        response = msgspec.structs.replace(self._response, status="failed", output=self._output + self._open_item(),
                                           usage=usage_block(counts, reasoning),
                                           error=ResponseError(_FAILED_CODES.get(status, "server_error"), message))
        return (self._start() + self._sse(ErrorEvent, code=code, message=message, param=None)
                + self._sse(ResponseFailed, response=response))

    def _spent(self) -> tuple[TokenCounts, int]:
        """The counts the Response shows, and of its output the reasoning's: the relay's estimate when it made one,
        else the upstream's, else the gateway's estimate of what was written so far (what the usage event of a
        stream that failed records); the reasoning tokens only with the upstream's counts."""
        if self.estimate is not None:
            return self.estimate, 0
        reported = believable(self.usage)
        if reported is not None:
            return reported, self._reasoning_tokens
        output = estimated_output(self.written)
        return (self._estimate_of(output) if self._estimate_of is not None else TokenCounts(0, output)), 0

    def _usage(self, usage: Usage) -> None:
        super()._usage(usage)
        self._reasoning_tokens = usage.reasoning_tokens

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

    def _choice(self, choice: Choice) -> bytes:
        request = self._request
        self._logprobs = logprobs_of(text_logprobs(choice.logprobs), request) \
            if request is not None and choice.logprobs else []
        return super()._choice(choice)

    def _text(self, text: str) -> bytes:
        return self._piece(OutputText, text) if text else b""

    def _reasoning(self, text: str) -> bytes:
        """A piece of reasoning: the reasoning item's, opened first if need be."""
        out = self._open_reasoning() if self._thinking is None else b""
        self._thought.append(text)
        return out + self._sse(ReasoningTextDelta, item_id=self._thinking, output_index=len(self._output),
                               content_index=0, delta=text)

    def _open_reasoning(self) -> bytes:
        """A reasoning item and its one `reasoning_text` part begin (the message before it ends first; the tool
        calls kept so far stay kept, as a server may send more of their arguments after it)."""
        out = self._close()
        index, item_id = len(self._output), new_id("rs")
        self._thinking, self._thought = item_id, []
        return out + self._sse(OutputItemAdded, output_index=index,
                               item=ReasoningItem(id=item_id, content=[], status="in_progress")) \
            + self._sse(ContentPartAdded, item_id=item_id, output_index=index, content_index=0, part=ReasoningText(""))

    def _refusal(self, refusal: str) -> bytes:
        return self._piece(OutputRefusal, refusal)

    def _piece(self, kind: type[OutputPart], text: str) -> bytes:
        """A piece of the message's text or refusal: the message item and the part opened first if need be (the
        reasoning before it ends first)."""
        out = self._close() if self._message is None else b""
        index = len(self._output)
        if self._message is None:
            self._message, self._parts = new_id("msg"), []
            out += self._sse(OutputItemAdded, output_index=index,
                             item=OutputMessage(id=self._message, status="in_progress", content=[]))
        if self._part is not kind:
            out += self._end_part()
            self._part, self._pieces, self._tokens = kind, [], []
            out += self._sse(ContentPartAdded, item_id=self._message, output_index=index,
                             content_index=len(self._parts), part=kind(""))
        self._pieces.append(text)
        if kind is not OutputText:
            return out + self._sse(RefusalDelta, item_id=self._message, output_index=index,
                                   content_index=len(self._parts), delta=text)
        self._tokens += self._logprobs
        return out + self._sse(OutputTextDelta, item_id=self._message, output_index=index,
                               content_index=len(self._parts), delta=text, logprobs=self._logprobs)

    def _end_part(self) -> bytes:
        """The closing events of the message's open part."""
        kind, item_id = self._part, self._message
        if kind is None or item_id is None:
            return b""
        whole, index, content_index = "".join(self._pieces), len(self._output), len(self._parts)
        tokens = self._tokens
        self._part, self._pieces, self._tokens = None, [], []
        part = OutputText(whole, logprobs=tokens) if kind is OutputText else kind(whole)
        self._parts.append(part)
        if kind is OutputText:
            done = self._sse(OutputTextDone, item_id=item_id, output_index=index, content_index=content_index,
                             text=whole, logprobs=tokens)
        else:
            done = self._sse(RefusalDone, item_id=item_id, output_index=index, content_index=content_index,
                             refusal=whole)
        return done + self._sse(ContentPartDone, item_id=item_id, output_index=index, content_index=content_index,
                                part=part)

    def _close(self, incomplete: bool = False) -> bytes:
        """The open item's closing events, a reasoning item's or a message's; it is `incomplete` when the answer was
        cut short in it."""
        if self._thinking is not None:
            return self._close_reasoning(incomplete)
        item_id = self._message
        if item_id is None:
            return b""
        out = self._end_part()
        self._message = None
        item = OutputMessage(id=item_id, status="incomplete" if incomplete else "completed", content=self._parts)
        self._output.append(item)
        return out + self._sse(OutputItemDone, output_index=len(self._output) - 1, item=item)

    def _close_reasoning(self, incomplete: bool) -> bytes:
        item_id, whole, index = self._thinking, "".join(self._thought), len(self._output)
        assert item_id is not None
        self._thinking, self._thought = None, []
        out = self._sse(ReasoningTextDone, item_id=item_id, output_index=index, content_index=0, text=whole)
        out += self._sse(ContentPartDone, item_id=item_id, output_index=index, content_index=0,
                         part=ReasoningText(whole))
        item = reasoning_item(whole, "incomplete" if incomplete else "completed", item_id)
        self._output.append(item)
        return out + self._sse(OutputItemDone, output_index=index, item=item)

    def _open_item(self) -> list[OutputItem]:
        """The item open when the stream failed, as far as it came (`incomplete`); none if none is."""
        if self._thinking is not None:
            return [reasoning_item("".join(self._thought), "incomplete", self._thinking)]
        if self._message is None:
            return []
        open_part = [] if self._part is None else [OutputText("".join(self._pieces), logprobs=self._tokens)
                                                    if self._part is OutputText else self._part("".join(self._pieces))]
        parts = [*self._parts, *open_part]
        return [OutputMessage(id=self._message, status="incomplete", content=parts)]

    def _tool_call(self, call: ToolCall) -> bytes:
        """A piece of a tool call (`HeldCalls`), kept until the end."""
        function = call.function
        name, fragment = (function.name, function.arguments) if function is not None else (None, None)
        if self._calls.add(call.index, call.id, name, fragment):
            return self._close()                  # the text before the call ends here
        return b""

    def _write_calls(self) -> bytes:
        """Each tool call kept so far, in the order they began, as a whole item of its own."""
        out = b""
        grouped = namespaces(self._response.tools)
        for call in self._calls.taken():
            index, name, arguments = len(self._output), call.name, call.arguments or "{}"
            item = FunctionCallItem(id=new_id("fc"), call_id=call.id or new_id("call"), name=name, arguments="",
                                    status="in_progress", namespace=grouped.get(name))
            out += self._sse(OutputItemAdded, output_index=index, item=item)
            out += self._sse(ArgumentsDelta, item_id=item.id, output_index=index, delta=arguments)
            out += self._sse(ArgumentsDone, item_id=item.id, output_index=index, name=name, arguments=arguments)
            item = msgspec.structs.replace(item, arguments=arguments, status="completed")
            self._output.append(item)
            out += self._sse(OutputItemDone, output_index=index, item=item)
        return out


def _error_code(error: Any) -> str:
    """An upstream error's `code` (or `type`) as text, for the `error` event."""
    if isinstance(error, dict):
        for name in ("code", "type"):
            value = error.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    return "server_error"
