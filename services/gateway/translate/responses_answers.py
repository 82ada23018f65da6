"""Whole answers on the Responses door: a chat.completion as a Response object, the request's settings echoed.

A finish of `length` makes the Response `incomplete` (`incomplete_details.reason: max_output_tokens`), one of
`content_filter` incomplete for that reason; anything else is `completed`. The upstream's reasoning
(`reasoning_content` or `reasoning`) becomes a first `reasoning` item with one `reasoning_text` part; text one
`message` item with an `output_text` part (and a `refusal` part when the model declined, saying why); each tool call a
`function_call` item (`call_id`: the upstream's id for the call, which a `function_call_output` names; `namespace`
when a namespace tool holds the function). Usage:
`input_tokens` is the whole prompt, with what the prompt cache served as `input_tokens_details.cached_tokens` (the
usage event's `cached_tokens`), and `output_tokens_details.reasoning_tokens` the upstream's
`completion_tokens_details.reasoning_tokens` (0 when it reports none); the gateway's estimate when the relay made one
(it believed no counts of the upstream's), with no reasoning tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from switchyard_gateway.contracts.events import random_hex
from switchyard_gateway.services.gateway.translate.anthropic_wire import encode
from switchyard_gateway.services.gateway.translate.responses import usage_counts
from switchyard_gateway.services.gateway.translate.responses_wire import (
    FunctionCallItem, IncompleteDetails, InputTokensDetails, ItemStatus, OutputItem, OutputMessage, OutputPart,
    OutputRefusal, OutputText, OutputTokensDetails, ReasoningItem, ReasoningText, Response, ResponseConversation,
    ResponsesRequest,
    ResponseUsage, TextConfig, TextFormat, logprobs_of, namespaces,
)
from switchyard_gateway.services.gateway.translate.wire import (
    Choice, TokenCounts, believable, text_logprobs, whole_reply,
)


def new_id(prefix: str) -> str:
    """An id of OpenAI's form: `resp_…`, `msg_…`, `rs_…`, `fc_…`, `call_…` (32 hexadecimal digits, from the
    process's pool of random bytes: no system call per id)."""
    return f"{prefix}_{random_hex(16)}"


def echoed(request: ResponsesRequest, model: str, store: bool = False, previous: str | None = None,
           conversation: str | None = None) -> Response:
    """A new Response (`in_progress`, no output yet) carrying the settings of the request it answers, as OpenAI's
    echo them: the SDK's model requires `tools`, `tool_choice` and `parallel_tool_calls`; `store` says whether it
    will be kept (the door's `ResponsesCall.keep`), whatever the request asked; `previous` the Response it continues
    (the request's `previous_response_id`, taken out of it once resolved), `conversation` the conversation it is made
    in (the request's `conversation`, taken out the same way)."""
    return Response(store=store, previous_response_id=previous,
        conversation=ResponseConversation(conversation) if conversation is not None else None,
        id=new_id("resp"), created_at=int(time.time()), status="in_progress", model=model, output=[],
        instructions=request.instructions, max_output_tokens=request.max_output_tokens,
        parallel_tool_calls=request.parallel_tool_calls is not False, temperature=request.temperature,
        top_p=request.top_p, tool_choice=request.tool_choice or "auto", tools=list(request.tools or ()),
        text=request.text or TextConfig(format=TextFormat(type="text")), user=request.user,
        metadata=request.metadata or {}, reasoning=request.reasoning, top_logprobs=request.top_logprobs,
        max_tool_calls=request.max_tool_calls)


def usage_block(counts: TokenCounts | None, reasoning: int = 0) -> ResponseUsage:
    """The Response's usage; `reasoning` of the output tokens were the model's reasoning (at most all of them)."""
    prompt, completion, cached = counts or TokenCounts(0, 0)
    return ResponseUsage(input_tokens=prompt, input_tokens_details=InputTokensDetails(cached_tokens=cached),
                         output_tokens=completion,
                         output_tokens_details=OutputTokensDetails(reasoning_tokens=min(reasoning, completion)),
                         total_tokens=prompt + completion)


def ending(finish: str | None) -> IncompleteDetails | None:
    """Why an answer that finished so is incomplete; None when it is complete."""
    if finish == "length":
        return IncompleteDetails("max_output_tokens")
    if finish == "content_filter":
        return IncompleteDetails("content_filter")
    return None


def finished(response: Response, output: list[OutputItem], counts: TokenCounts | None,
             incomplete: IncompleteDetails | None, reasoning: int = 0) -> Response:
    """`response` with its output and usage, `completed` or `incomplete`."""
    return msgspec.structs.replace(response, status="incomplete" if incomplete else "completed", output=output,
                                   usage=usage_block(counts, reasoning), incomplete_details=incomplete)


def reasoning_item(text: str, status: ItemStatus, item_id: str | None = None) -> ReasoningItem:
    """The upstream's reasoning as a `reasoning` item of one `reasoning_text` part."""
    return ReasoningItem(id=item_id or new_id("rs"), content=[ReasoningText(text)], status=status)


def openai_to_response(data: bytes, response: Response, estimate: TokenCounts | None = None,
                       request: ResponsesRequest | None = None,
                       kept: Callable[[Response], Response] | None = None) -> bytes:
    """A chat.completion as the Response begun as `response` (`echoed`); its usage the gateway's `estimate` when
    the relay made one, else the upstream's; `kept` takes the finished Response's items to keep, and gives the
    Response as it is answered (`store` false when they are not kept)."""
    reply = whole_reply(data)
    choice = next((c for c in reply.choices or () if c.index == 0), Choice())
    message = choice.message
    text = (message.content if message else None) or choice.text
    incomplete = ending(choice.finish_reason)
    output: list[OutputItem] = []
    tokens = text_logprobs(choice.logprobs) if request is not None and choice.logprobs else []
    parts: list[OutputPart] = [OutputText(text, logprobs=logprobs_of(tokens, request))] if text else []
    if message is not None and message.refusal:
        parts.append(OutputRefusal(message.refusal))
    if parts:
        output.append(OutputMessage(id=new_id("msg"), status="incomplete" if incomplete else "completed",
                                    content=parts))
    grouped = namespaces(response.tools)
    for call in (message.tool_calls if message else None) or ():
        if call.function is not None:
            name = call.function.name or ""
            output.append(FunctionCallItem(id=new_id("fc"), call_id=call.id or new_id("call"), name=name,
                                           arguments=call.function.arguments or "{}", status="completed",
                                           namespace=grouped.get(name)))
    if message is not None and message.thought:          # cut short in it when nothing follows it
        output.insert(0, reasoning_item(message.thought, "incomplete" if incomplete and not output else "completed"))
    usage = reply.usage
    counts = believable(usage_counts(usage)) if usage is not None else None
    reasoning = usage.reasoning_tokens if usage is not None and counts is not None and estimate is None else 0
    answered = finished(response, output, estimate or counts, incomplete, reasoning)
    return encode(kept(answered) if kept is not None else answered)
