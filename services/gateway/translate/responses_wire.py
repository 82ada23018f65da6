"""OpenAI's Responses API on the wire: the request, the Response object, and the stream events, as msgspec types.

The request is read strictly enough to refuse what the gateway does not keep or serve (a stored prompt or
conversation to continue from, a background run, a hosted tool) and every number out of OpenAI's range, with a
400 naming the field before anything is reserved; fields it does not know are ignored, as OpenAI's chat door
ignores them. An input item is read as one struct whatever its `type` (a message may leave its `type` out), and
checked by the door (responses_door.py). Answers and events are written with these types, so the documented
schema is the one the code writes; shapes follow the `openai` SDK's `openai.types.responses` models.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_to_bytes
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# --- the request ------------------------------------------------------------------------------------

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]


class ContentPart(msgspec.Struct, kw_only=True):
    """A part of a message's content: `input_text`, `input_image` (by URL or data URL; a stored `file_id` cannot
    be read), `input_file` (a plain-text file as a `data:text/...;base64,` URL in `file_data`, read as text; a stored
    `file_id` or a `file_url` cannot be read), and an assistant's `output_text` or `refusal` sent back; or of a
    `reasoning` item sent back, its `reasoning_text` (as this door writes them)."""

    type: Literal["input_text", "input_image", "input_file", "output_text", "refusal", "reasoning_text"]
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None
    refusal: str | None = None


# a data URL of text (the media type in any case): its parameters, then `;base64` or not, then the data
_TEXT_FILE = re.compile(r"data:text/[a-z0-9.+-]+((?:;[a-z0-9=.+-]+)*?)(;base64)?,", re.ASCII | re.IGNORECASE)
_SPACE = re.compile(rb"\s+")


def file_text(part: ContentPart) -> str | None:
    """A plain-text `input_file` as the text a model reads (its name, a blank line, its text), or None when it is no
    UTF-8 text in a data URL (the door refuses it); base64 may be wrapped in lines, and data that is not base64 is
    percent-decoded, as data URLs are written."""
    data = part.file_data or ""
    opened = _TEXT_FILE.match(data[:256])
    if opened is None:
        return None
    try:
        if opened.group(2):
            text = base64.b64decode(_SPACE.sub(b"", data[opened.end():].encode()), validate=True).decode()
        else:
            text = unquote_to_bytes(data[opened.end():]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return f"{part.filename}\n\n{text}" if part.filename else text


class InputItem(msgspec.Struct, kw_only=True):
    """One item of `input`: a `message` (its `type` may be left out), a `function_call` the model made (a namespaced
    function's by its own name), a `function_call_output` answering one, or a `reasoning` item of an earlier answer
    (not sent upstream)."""

    type: str = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    id: str | None = None
    status: str | None = None


class FunctionTool(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A function tool in Responses' flat shape, or a `namespace` grouping function tools under its name (`tools`);
    another `type` (a hosted tool) is refused by the door."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[FunctionTool] | None = None       # a namespace's functions


def offered(tools: list[FunctionTool] | None) -> Iterator[tuple[str, FunctionTool, FunctionTool | None]]:
    """Each tool as the model is offered it, with where the request gives it (`tools[4]`, `tools[4].tools[0]`) and
    the namespace holding it, if one does: a namespace's functions are offered one by one, under their own names."""
    for index, tool in enumerate(tools or ()):
        if tool.type == "namespace" and tool.tools is not None:
            for number, inner in enumerate(tool.tools):
                yield f"tools[{index}].tools[{number}]", inner, tool
        else:
            yield f"tools[{index}]", tool, None


def namespaces(tools: list[FunctionTool] | None) -> dict[str, str]:
    """The namespace of each function a namespace holds, by the function's name: what a call to it is answered
    with (`FunctionCallItem.namespace`)."""
    return {tool.name: group.name for _, tool, group in offered(tools)
            if group is not None and tool.name is not None and group.name is not None}


class NamedToolChoice(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`{"type": "function", "name": ...}`; another `type` (a hosted tool, `allowed_tools`) is refused."""

    type: str
    name: str | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Sent on as `reasoning_effort` to OpenAI itself; other servers are not asked to reason."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/responses`. `prompt` and `background: true` are read only to be refused: no prompt is stored, and
    nothing runs later. A `previous_response_id` or a `conversation` is replaced by the items of the kept Response or
    conversation it names before the request is read (pipeline/stored_items.py); one that reaches the door is refused
    (the gateway keeps nothing)."""

    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None          # at most the model's context: checked by the call's Ask
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Unit | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    include: list[str] | None = None              # `message.output_text.logprobs` is served; the rest ask of
                                                  # what is never made here (hosted tools, encrypted reasoning)
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None           # checked: it limits hosted tools' calls,
                                                                       # and hosted tools are refused
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool | None = None
    user: str | None = None
    metadata: Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
                        Meta(max_length=16)] | None = None
    store: bool | None = None                     # false: the answer's items are not kept
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    prompt: Any = None


decode_responses_request = msgspec.json.Decoder(ResponsesRequest).decode


# --- the answer -------------------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class LogprobAlternative(msgspec.Struct):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(LogprobAlternative):
    """A token of the text, its log probability, and the likeliest tokens at its position (`top_logprobs`)."""

    top_logprobs: list[LogprobAlternative] = []


class InputTokens(msgspec.Struct):
    """`POST /v1/responses/input_tokens`: a Responses request's prompt, counted as its quota hold counts it."""

    input_tokens: int
    object: Literal["response.input_tokens"] = "response.input_tokens"


class ResponseDeleted(msgspec.Struct):
    """`DELETE /v1/responses/{id}`: the kept Response is gone."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct):
    """`GET /v1/responses/{id}/input_items`: a page of the items a kept Response was made from, each with its `id`
    (input messages with `input_text` parts, the earlier Responses' output items as they were answered)."""

    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Logprob] = []            # asked with `include: ["message.output_text.logprobs"]` or `top_logprobs`


class OutputRefusal(msgspec.Struct, tag_field="type", tag="refusal"):
    """The model declined (an OpenAI chat answer's `refusal`), saying why."""

    refusal: str


OutputPart = OutputText | OutputRefusal


class OutputMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputPart]


class FunctionCallItem(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True, omit_defaults=True):
    """A call the model made; `namespace` names the namespace tool holding the function, when one does."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    namespace: str | None = None


class ReasoningText(msgspec.Struct, tag_field="type", tag="reasoning_text"):
    """The upstream's reasoning, as it wrote it."""

    text: str


class ReasoningItem(msgspec.Struct, tag_field="type", tag="reasoning", kw_only=True):
    """The upstream's reasoning (`reasoning_content` or `reasoning`): one `reasoning_text` part, no summary."""

    id: str
    summary: list[Any] = []
    content: list[ReasoningText]
    status: ItemStatus


OutputItem = OutputMessage | FunctionCallItem | ReasoningItem


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    """`input_tokens` is the whole prompt, what the upstream's prompt cache served included (`cached_tokens`)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ResponseConversation(msgspec.Struct):
    """The conversation a Response was made in: its input and output items were added to it."""

    id: str


class Response(msgspec.Struct, kw_only=True):
    """A whole answer, and the `response` of each lifecycle event of a stream; the request's settings echoed."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None       # the kept Response it continues
    conversation: ResponseConversation | None = None   # the conversation it was made in
    temperature: float | None = None
    text: TextConfig
    tool_choice: ToolChoice
    tools: list[FunctionTool]
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str]
    background: bool = False
    store: bool = False                           # whether it is kept (`previous_response_id`, `item_reference`,
                                                  # `GET /v1/responses/{id}`)
    reasoning: ReasoningConfig | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None


# --- stream events ----------------------------------------------------------------------------------

class _Lifecycle(msgspec.Struct, tag_field="type"):
    """An event carrying the Response as it stands (`response.created`, `.in_progress`, `.completed`, ...)."""

    response: Response
    sequence_number: int


class _ItemEvent(msgspec.Struct, tag_field="type"):
    output_index: int
    item: OutputItem
    sequence_number: int


class _PartEvent(msgspec.Struct, tag_field="type"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputPart | ReasoningText
    sequence_number: int


class ResponseCreated(_Lifecycle, tag="response.created"):
    """The stream's first event: the Response, in progress."""


class ResponseInProgress(_Lifecycle, tag="response.in_progress"):
    """Right after `response.created`."""


class ResponseCompleted(_Lifecycle, tag="response.completed"):
    """The stream's last event: the whole Response, with its usage."""


class ResponseIncomplete(_Lifecycle, tag="response.incomplete"):
    """The last event of an answer the output limit or a content filter cut short."""


class ResponseFailed(_Lifecycle, tag="response.failed"):
    """The last event of a stream that failed, after its `error` event."""


class OutputItemAdded(_ItemEvent, tag="response.output_item.added"):
    """An item begins (a message with no content yet, a function call without its arguments)."""


class OutputItemDone(_ItemEvent, tag="response.output_item.done"):
    """An item, whole."""


class ContentPartAdded(_PartEvent, tag="response.content_part.added"):
    """A message's `output_text` or `refusal` part, or a reasoning item's `reasoning_text`, begins, empty."""


class ContentPartDone(_PartEvent, tag="response.content_part.done"):
    """A message's `output_text` or `refusal` part, or a reasoning item's `reasoning_text`, whole."""


class _ContentEvent(msgspec.Struct, tag_field="type", kw_only=True):
    """An event about one part of an item: a message's text or refusal, a reasoning item's text."""

    item_id: str
    output_index: int
    content_index: int
    sequence_number: int


class _TextEvent(_ContentEvent, kw_only=True):
    logprobs: list[Logprob] = []


class OutputTextDelta(_TextEvent, tag="response.output_text.delta", kw_only=True):
    """A piece of a message's text."""

    delta: str


class OutputTextDone(_TextEvent, tag="response.output_text.done", kw_only=True):
    """A message's text, whole."""

    text: str


class RefusalDelta(_ContentEvent, tag="response.refusal.delta", kw_only=True):
    """A piece of a refusal."""

    delta: str


class RefusalDone(_ContentEvent, tag="response.refusal.done", kw_only=True):
    """A refusal, whole."""

    refusal: str


class ReasoningTextDelta(_ContentEvent, tag="response.reasoning_text.delta", kw_only=True):
    """A piece of a reasoning item's text."""

    delta: str


class ReasoningTextDone(_ContentEvent, tag="response.reasoning_text.done", kw_only=True):
    """A reasoning item's text, whole."""

    text: str


class _ArgumentsEvent(msgspec.Struct, tag_field="type", kw_only=True):
    item_id: str
    output_index: int
    sequence_number: int


class ArgumentsDelta(_ArgumentsEvent, tag="response.function_call_arguments.delta", kw_only=True):
    """A function call's arguments (written whole: one delta per call)."""

    delta: str


class ArgumentsDone(_ArgumentsEvent, tag="response.function_call_arguments.done", kw_only=True):
    """A function call's name and arguments, whole."""

    name: str
    arguments: str


class ErrorEvent(msgspec.Struct, tag_field="type", tag="error"):
    """What failed inside a stream (the SDK's `ResponseErrorEvent`); `response.failed` follows it."""

    code: str | None
    message: str
    param: str | None
    sequence_number: int


StreamEvent = (ResponseCreated | ResponseInProgress | OutputItemAdded | ContentPartAdded | OutputTextDelta
               | OutputTextDone | RefusalDelta | RefusalDone | ReasoningTextDelta | ReasoningTextDone
               | ContentPartDone | ArgumentsDelta | ArgumentsDone | OutputItemDone
               | ResponseCompleted | ResponseIncomplete | ResponseFailed | ErrorEvent)


LOGPROBS = "message.output_text.logprobs"
UNLIKELY = -9999.0          # the log probability OpenAI writes for one of minus infinity (a server's null)


def wants_logprobs(request: ResponsesRequest) -> bool:
    """Whether the answer's text carries its tokens' log probabilities: asked by `include` or by `top_logprobs`."""
    return request.top_logprobs is not None or LOGPROBS in (request.include or ())


def logprobs_of(tokens: list, request: ResponsesRequest) -> list[Logprob]:
    """A chat answer's token log probabilities (`wire.TokenLogprob`) as the Responses API writes them, when the
    request asked for them (none else: a server may send them unasked), each with at most the alternatives asked
    for; each token's UTF-8 bytes when the server gave none, or gave what are no bytes."""
    if not tokens or not wants_logprobs(request):
        return []
    most = request.top_logprobs or 0

    def utf8(entry: Any) -> list[int]:
        given = entry.bytes
        if given is not None and all(type(b) is int and 0 <= b <= 255 for b in given):
            return given
        return list(entry.token.encode("utf-8", "surrogatepass"))

    def value(entry: Any) -> float:
        return entry.logprob if entry.logprob is not None else UNLIKELY

    return [Logprob(token=t.token, bytes=utf8(t), logprob=value(t),
                    top_logprobs=[LogprobAlternative(token=a.token, bytes=utf8(a), logprob=value(a))
                                  for a in t.top_logprobs[:most]]) for t in tokens]
