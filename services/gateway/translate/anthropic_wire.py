"""Anthropic's Messages API on the wire: the request, the answer, the stream events and the error body, as msgspec types.

Requests are read strictly enough to refuse what cannot be served (a missing `max_tokens`, an unknown
content block, a PDF document, a server tool, MCP servers, a container) and what Anthropic refuses (a
`thinking`, `service_tier`, `cache_control` or `metadata` not of its form, a `tool_use` without `input`) with a
400 before anything is reserved; unknown fields are ignored, as the API grows, except inside `metadata`, which
Anthropic closes. Answers and events are written with these types, so the documented schema is the one the
code writes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# --- the request ------------------------------------------------------------------------------------

class CacheControl(msgspec.Struct):
    """A prompt-cache breakpoint: checked as Anthropic checks it, not sent upstream (the servers cache as they do)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class Base64ImageSource(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]    # Anthropic's four
    data: str


class UrlImageSource(msgspec.Struct, tag_field="type", tag="url"):
    url: Annotated[str, Meta(pattern=r"^(?i:https?)://")]     # the upstream fetches it: never a file:// or other scheme


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str
    cache_control: CacheControl | None = None


class ImageBlock(msgspec.Struct, tag_field="type", tag="image"):
    source: Base64ImageSource | UrlImageSource
    cache_control: CacheControl | None = None


class PlainTextSource(msgspec.Struct, tag_field="type", tag="text"):
    media_type: Literal["text/plain"]
    data: str


class ContentSource(msgspec.Struct, tag_field="type", tag="content"):
    content: str | list[TextBlock | ImageBlock]


class PdfSource(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: Literal["application/pdf"]
    data: str


class UrlPdfSource(msgspec.Struct, tag_field="type", tag="url"):
    url: str


class FileSource(msgspec.Struct, tag_field="type", tag="file"):
    file_id: str


class Citations(msgspec.Struct):
    enabled: bool = False


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document"):
    """A document given to read. Plain text (`text` or `content` sources) is sent on as text, after its title and
    context; a PDF, a URL or a file needs a reader no upstream has, and is refused by the door, as are citations."""

    source: PlainTextSource | ContentSource | PdfSource | UrlPdfSource | FileSource
    title: str | None = None
    context: str | None = None
    citations: Citations | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False
    cache_control: CacheControl | None = None


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    """Reasoning an earlier answer carried: accepted in the history, not sent upstream."""

    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str = ""


InputBlock = (TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
              | RedactedThinkingBlock)


class InputMessage(msgspec.Struct):
    """A turn of the conversation. A `system` one is an instruction given partway through (text only, checked by the
    door), sent on where it stands as a system message."""

    role: Literal["user", "assistant", "system"]
    content: str | list[InputBlock]


class ToolDefinition(msgspec.Struct):
    """A client tool. `type` is absent or `custom`; Anthropic's server tools (web search, bash, ...) are not served.
    `input_schema` is required of a client tool (an object schema), which the door checks once it knows the tool is
    one (a server tool has none, and is refused for what it is)."""

    name: Annotated[str, Meta(min_length=1)]
    input_schema: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    description: str | None = None
    type: str | None = None
    cache_control: CacheControl | None = None


class ToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None                       # with `tool`: the tool to call
    disable_parallel_tool_use: bool | None = None


class Metadata(msgspec.Struct, forbid_unknown_fields=True):
    """Closed, as Anthropic's is (a key it does not know is a 400 there too)."""

    user_id: Annotated[str, Meta(max_length=256)] | None = None


class JsonOutputFormat(msgspec.Struct):
    """Structured outputs: the answer's text is JSON of `schema` (Anthropic's `output_config.format`)."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct):
    format: JsonOutputFormat | None = None
    # a hint to Anthropic's own models, not sent on; checked, as Anthropic checks it
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class ThinkingEnabled(msgspec.Struct, tag_field="type", tag="enabled"):
    budget_tokens: Annotated[int, Meta(ge=1024)]       # and below `max_tokens` (anthropic_door.read_request)


class ThinkingDisabled(msgspec.Struct, tag_field="type", tag="disabled"):
    pass


class ThinkingAdaptive(msgspec.Struct, tag_field="type", tag="adaptive"):
    pass


Thinking = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/messages/count_tokens`. `thinking` is checked; only an Ollama endpoint is told it (`think`, see
    anthropic_requests.py): no other server has a standard field for it."""

    model: str
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl | None = None
    output_config: OutputConfig | None = None           # its format's schema is counted as prompt, as servers bill it
    output_format: JsonOutputFormat | None = None       # the same, as its beta named it


class MessagesRequest(CountTokensRequest, kw_only=True):
    """`POST /v1/messages`. `max_tokens` is required, as in Anthropic's API."""

    max_tokens: Annotated[int, Meta(ge=1)]
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None     # checked; every call is served alike
    # Read only to be refused when given (see `anthropic_door.UNSERVED`): dropping them would change what the answer
    # must be.
    mcp_servers: Any = None
    container: Any = None
    thread: Any = None                  # a message thread kept by the server (refused: nothing is kept)


# --- the answer -------------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class TextContent(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ToolUseContent(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ThinkingContent(msgspec.Struct, tag_field="type", tag="thinking"):
    """The upstream's reasoning. `signature` is empty: no upstream signs its reasoning, and a client sending the
    block back has it dropped (`ThinkingBlock`), not checked."""

    thinking: str
    signature: str = ""


ContentBlock = TextContent | ToolUseContent | ThinkingContent


class MessagesUsage(msgspec.Struct, omit_defaults=True):
    """`input_tokens` excludes what the upstream read from its prompt cache (`cache_read_input_tokens`)."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None = None


class MessagesResponse(msgspec.Struct, kw_only=True):
    """A whole answer (`stream: false`), and the `message` of a stream's `message_start` (content still empty)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessagesUsage


class CountTokensResponse(msgspec.Struct):
    input_tokens: int


# --- stream events ----------------------------------------------------------------------------------

class TextDelta(msgspec.Struct, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(msgspec.Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ThinkingDelta(msgspec.Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class SignatureDelta(msgspec.Struct, tag_field="type", tag="signature_delta"):
    """A thinking block's signature, right before its `content_block_stop` (empty: see `ThinkingContent`)."""

    signature: str = ""


class MessageStartEvent(msgspec.Struct, tag_field="type", tag="message_start"):
    message: MessagesResponse


class ContentBlockStartEvent(msgspec.Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentBlock


class PingEvent(msgspec.Struct, tag_field="type", tag="ping"):
    pass


class ContentBlockDeltaEvent(msgspec.Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta


class ContentBlockStopEvent(msgspec.Struct, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDelta(msgspec.Struct):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(msgspec.Struct, omit_defaults=True):
    """Totals for the whole call (they replace, not add to, what `message_start` said)."""

    output_tokens: int
    input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(msgspec.Struct, tag_field="type", tag="message_delta"):
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(msgspec.Struct, tag_field="type", tag="message_stop"):
    pass


# --- errors -----------------------------------------------------------------------------------------

class ErrorObject(msgspec.Struct, omit_defaults=True):
    """`type` is one of Anthropic's error types; a quota or rate-limit refusal adds its figures."""

    type: str
    message: str
    quota_type: str | None = None
    limit_type: str | None = None
    limit: float | None = None
    used: float | None = None
    reset_time: str | None = None
    suggested_models: list[str] | None = None


class ErrorResponse(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True):
    """Every error on the Anthropic door, as a body and as a stream's `error` event. A body leaves with the
    request's id as `request_id`, added at the edge (edge/headers.py, `AnthropicAnswers`); an event has none."""

    error: ErrorObject
    request_id: str | None = None


StreamEvent = (MessageStartEvent | ContentBlockStartEvent | PingEvent | ContentBlockDeltaEvent | ContentBlockStopEvent
               | MessageDeltaEvent | MessageStopEvent | ErrorResponse)

decode_messages_request = msgspec.json.Decoder(MessagesRequest).decode
decode_count_tokens_request = msgspec.json.Decoder(CountTokensRequest).decode
encode = msgspec.json.Encoder().encode


def sse(event: msgspec.Struct) -> bytes:
    """One server-sent event of a tagged event type (Anthropic's, or the Responses door's): the `event:` line names
    the type, `data:` carries the JSON."""
    return b"event: " + type(event).__struct_config__.tag.encode() + b"\ndata: " + encode(event) + b"\n\n"
