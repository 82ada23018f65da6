"""The Anthropic front door (`/v1/messages`): a call's request read and checked, and its plan per endpoint kind.

| endpoint kind | upstream path | request | answer | stream |
|---|---|---|---|---|
| `ollama` | `/api/chat` | `ollama_chat_body` | `ollama_to_message` | `OllamaStreamToAnthropic` |
| `openai-compatible` (and any other) | `/v1/chat/completions` | `openai_chat_body` (with `top_k`; a prefill with `continue_final_message`) | `openai_to_message` (a repeated prefill taken off) | `OpenAIStreamToAnthropic` (the same) |
| `openai` | `/v1/chat/completions` | `openai_chat_body` (no `top_k` nor `continue_final_message`, which OpenAI refuses; `max_completion_tokens`) | `openai_to_message` | `OpenAIStreamToAnthropic` |

A final assistant turn (a prefill) is continued, not answered: see anthropic_requests.py for what each kind is sent.
A stream's `message_start` says the prompt's tokens as the call's `Ask` counted them for its quota hold, else at
four bytes a token (`AnthropicCall.prompt_tokens`).

Errors from upstreams are rewritten into Anthropic's shape with their status kept. `/v1/messages/count_tokens`
is answered by the gateway itself with its tokenizer (see `count_input_tokens`), reaching no endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import msgspec

from switchyard_gateway.quotas.tokens import IMAGE_TOKENS, PER_MESSAGE, TokenEstimator
from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.anthropic_requests import (
    answer_schema, document_parts, ollama_chat_body, openai_chat_body, prefill, system_text,
)
from switchyard_gateway.services.gateway.translate.anthropic_responses import (
    ollama_to_message, openai_to_message, upstream_error,
)
from switchyard_gateway.services.gateway.translate.anthropic_stream import (
    OllamaStreamToAnthropic, OpenAIStreamToAnthropic,
)
from switchyard_gateway.services.gateway.translate.asks import Ask, check_tokens, refusal
from switchyard_gateway.services.gateway.translate.anthropic_wire import (
    ContentSource, CountTokensRequest, CountTokensResponse, DocumentBlock, FileSource, ImageBlock, InputMessage,
    MessagesRequest, PdfSource, PlainTextSource, TextBlock, ThinkingAdaptive, ThinkingEnabled, ToolDefinition,
    ToolResultBlock, ToolUseBlock, UrlPdfSource, decode_count_tokens_request, decode_messages_request, encode,
)
from switchyard_gateway.services.gateway.translate.plans import Plan
from switchyard_gateway.services.gateway.translate.requests import CHAT_PATH
from switchyard_gateway.services.gateway.translate.responses import ollama_usage, openai_usage

MESSAGES = "anthropic.messages"
COUNT_TOKENS = "anthropic.count_tokens"
ANTHROPIC_APIS = {"/v1/messages": MESSAGES, "/v1/messages/count_tokens": COUNT_TOKENS}
OUTPUT_LIMIT_FIELD = "max_tokens"      # the request field that bounds the answer (required by the API)


def read_request(api: str, body: bytes) -> MessagesRequest | CountTokensRequest:
    """The whole request, checked; BadRequest (400, `invalid_request_error`) naming what is wrong."""
    decode = decode_messages_request if api == MESSAGES else decode_count_tokens_request
    try:
        request = decode(body)
    except msgspec.ValidationError as exc:
        if "missing required field `max_tokens`" in str(exc):
            raise BadRequest("max_tokens: Field required", param="max_tokens", code="missing_field") from None
        raise refusal(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise refusal(exc) from None
    _check_tools(request.tools or ())
    choice = request.tool_choice
    if choice is not None and choice.type in ("any", "tool") and not request.tools:
        raise BadRequest(f"tool_choice: '{choice.type}' may only be given with tools, and none are",
                         param="tool_choice")
    if choice is not None and choice.type == "tool" and not any(t.name == choice.name for t in request.tools or ()):
        raise BadRequest(f"tool_choice: no tool named '{choice.name}' in tools", param="tool_choice")
    if isinstance(request, MessagesRequest):
        _refuse_unserved(request)
        thinking = request.thinking
        if isinstance(thinking, ThinkingEnabled) and thinking.budget_tokens >= request.max_tokens:
            raise BadRequest(f"thinking.budget_tokens: must be less than max_tokens ({thinking.budget_tokens} is not "
                             f"less than {request.max_tokens})", param="thinking.budget_tokens")
    config = request.output_config
    if request.output_format is not None and config is not None and config.format is not None \
            and request.output_format != config.format:
        raise BadRequest("output_format: give the answer's format once, as output_config.format",
                         param="output_format")
    _check_conversation(request.messages)
    if isinstance(request.system, list):
        for index, block in enumerate(request.system):
            _check_text(block.text, f"system.{index}")
    return request


TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")


def _check_tools(tools: Sequence[ToolDefinition]) -> None:
    """Client tools only, each with a name of TOOL_NAME's form given once and an object schema for its input."""
    names: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise BadRequest(f"tools: the server tool '{tool.type}' ('{tool.name}') is not served; "
                             "only client tools with an input_schema are", param="tools")
        if not TOOL_NAME.fullmatch(tool.name):
            raise BadRequest(f"tools.{index}.name: must match {TOOL_NAME.pattern}", param=f"tools.{index}.name")
        if tool.name in names:
            raise BadRequest(f"tools: tool names must be unique ('{tool.name}' is given twice)", param="tools")
        names.add(tool.name)
        if tool.input_schema is msgspec.UNSET:
            raise BadRequest(f"tools.{index}.input_schema: Field required", param=f"tools.{index}.input_schema",
                             code="missing_field")
        if tool.input_schema.get("type") != "object":
            raise BadRequest(f"tools.{index}.input_schema.type: Input should be 'object'",
                             param=f"tools.{index}.input_schema.type")

# Request fields the door does not serve and may not drop, since the answer would not be what they ask for:
# (field, what it asks for). Other fields it does not know are ignored: newer clients send fields it has never
# seen, and refusing those would break them.
UNSERVED = (
    ("mcp_servers", "MCP connectors"),
    ("container", "code execution containers"),
)


def _refuse_unserved(request: MessagesRequest) -> None:
    """BadRequest naming the first field of `UNSERVED` the request gives (null or empty is not given); a `thread`
    (a conversation the server keeps between turns) in the words Anthropic refuses one it cannot thread with, which
    its SDK's tool runner reads to send every turn whole from then on."""
    given = {"mcp_servers": request.mcp_servers, "container": request.container}
    for field, what in UNSERVED:
        if given[field] not in (None, "", [], {}):
            raise BadRequest(f"{field}: {what} are not served by this gateway", param=field)
    if request.thread is not None and request.thread is not False:
        raise BadRequest("thread: message threads are not served by this gateway, which keeps no conversation: send "
                         "the whole conversation in `messages`", param="thread",
                         details={"details": {"error_code": "thread_unsupported_request", "unsupported": ["thread"]}})


def _check_conversation(messages: list[InputMessage]) -> None:
    """What Anthropic refuses in a conversation, refused here too (400) rather than sent on broken, in the one pass
    that reads it: no message; an empty content; text that is empty or whitespace only in a user or system turn;
    a system turn (an instruction given partway through) opening the conversation or holding anything but text; a
    final assistant turn ending in whitespace; a `tool_use` outside an assistant turn, or with an id its turn gave
    before; a turn of `tool_use` blocks not answered, each, by a `tool_result` in the user turn right after it (the
    last turn too: the answer would need the results); a `tool_result` outside a user turn, after the turn's other
    content, or answering no `tool_use` of the turn before it.

    Two of Anthropic's rules are kept narrower, for answers this door wrote itself and a client sends back as they
    were: a local model's text before its tool call may be whitespace only (the door relays it as a text block), and
    an upstream's tool-call ids may repeat from one answer to the next (`call_0`), which Anthropic's never do. So
    an assistant turn's text is not held to the text rules, and ids are unique within a turn, where a
    `tool_result` names its `tool_use`."""
    if not messages:
        raise BadRequest("messages: at least one message is required", param="messages")
    called: list[str] = []             # the ids of the turn before's tool_use blocks, each answered by this turn
    for index, message in enumerate(messages):
        content = message.content
        if not content:
            raise BadRequest(f"messages.{index}: all messages must have non-empty content", param=f"messages.{index}")
        if message.role == "system" and index == 0:
            raise BadRequest("messages.0: the conversation may not open with a `system` role message: give it as "
                             "the top-level `system`", param="messages.0")
        user = message.role != "assistant"           # a user's or a system turn: its text is held to the rules
        if isinstance(content, str) and user:
            _check_text(content, f"messages.{index}")
        calls: list[str] = []
        answered: set[str] = set()
        others = False                 # content other than tool_result blocks seen in this turn
        for number, block in enumerate(content if isinstance(content, list) else ()):
            where = f"messages.{index}.content.{number}"
            if isinstance(block, ToolResultBlock):
                if message.role != "user":
                    raise BadRequest(f"{where}: tool_result blocks may only be in user messages", param=where)
                if others:
                    raise BadRequest(f"{where}: tool_result blocks must come FIRST in the content array, before "
                                     "any other content", param=where)
                if block.tool_use_id not in called:
                    raise BadRequest(f"{where}: tool_result answers tool_use id '{block.tool_use_id}', which the "
                                     f"message before it does not hold", param=where)
                answered.add(block.tool_use_id)
                for part, result in enumerate(block.content if isinstance(block.content, list) else ()):
                    if isinstance(result, TextBlock):
                        _check_text(result.text, f"{where}.content.{part}")
                    elif isinstance(result, DocumentBlock):
                        _check_document(result, f"{where}.content.{part}")
                continue
            others = True
            if message.role == "system" and not isinstance(block, TextBlock):
                raise BadRequest(f"{where}: system messages may only hold text blocks", param=where)
            if isinstance(block, TextBlock):
                if user:
                    _check_text(block.text, where)
            elif isinstance(block, DocumentBlock):
                if message.role != "user":
                    raise BadRequest(f"{where}: document blocks may only be in user messages", param=where)
                _check_document(block, where)
            elif isinstance(block, ToolUseBlock):
                if message.role != "assistant":
                    raise BadRequest(f"{where}: tool_use blocks may only be in assistant messages", param=where)
                if block.id in calls:
                    raise BadRequest(f"{where}: `tool_use` ids must be unique", param=where)
                calls.append(block.id)
        _check_answered(called, answered, index - 1)
        called = calls
    _check_answered(called, set(), len(messages) - 1)
    _check_final_turn(messages[-1], len(messages) - 1)


# a document source that needs a reader no upstream has -> what the refusal calls it
_UNREAD_DOCUMENTS = {PdfSource: "PDF documents", UrlPdfSource: "documents by URL", FileSource: "`file` sources"}


def _check_document(block: DocumentBlock, where: str) -> None:
    """A document is served as the text it holds: plain text (a `text` or `content` source) that is not empty, with no
    citations asked for (the answer would need citation blocks); anything else is a 400 naming the field."""
    source = block.source
    unread = _UNREAD_DOCUMENTS.get(type(source))
    if unread is not None:
        raise BadRequest(f"{where}.source: {unread} are not served by this gateway; plain-text documents are (a "
                         "`text` or `content` source)", param=f"{where}.source")
    if block.citations is not None and block.citations.enabled:
        raise BadRequest(f"{where}.citations: citations are not served by this gateway", param=f"{where}.citations")
    if isinstance(source, PlainTextSource):
        _check_text(source.data, f"{where}.source.data")
    elif isinstance(source, ContentSource):
        content = source.content
        if not content:
            raise BadRequest(f"{where}.source.content: a document must have non-empty content",
                             param=f"{where}.source.content")
        if isinstance(content, str):
            _check_text(content, f"{where}.source.content")
        for part, piece in enumerate(content if isinstance(content, list) else ()):
            if isinstance(piece, TextBlock):
                _check_text(piece.text, f"{where}.source.content.{part}")


def _check_text(text: str, where: str) -> None:
    """Text is refused empty or whitespace only (`isspace` stops at the first other character: no copy, no scan of
    a long text)."""
    if not text:
        raise BadRequest(f"{where}: text content blocks must be non-empty", param=where)
    if text.isspace():
        raise BadRequest(f"{where}: text content blocks must contain non-whitespace text", param=where)


def _check_answered(called: list[str], answered: set[str], index: int) -> None:
    """BadRequest naming the `tool_use` ids of message `index` that the message after it (`answered`) leaves
    without a `tool_result`, in Anthropic's words."""
    missing = [call for call in called if call not in answered]
    if missing:
        raise BadRequest(f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately "
                         f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` "
                         f"block in the next message.", param=f"messages.{index}")


def _check_final_turn(message: InputMessage, index: int) -> None:
    """A final assistant turn (what the answer continues) may not end in whitespace."""
    if message.role != "assistant":
        return
    content = message.content
    last = content if isinstance(content, str) else content[-1]
    text = last if isinstance(last, str) else last.text if isinstance(last, TextBlock) else ""
    if text[-1:].isspace():
        raise BadRequest(f"messages.{index}: final assistant content cannot end with trailing whitespace",
                         param=f"messages.{index}")


class AnthropicCall:
    """One call through the Anthropic door: its checked request and its plans (built once per endpoint kind)."""

    __slots__ = ("api", "request", "_body", "_counted", "_per_image")

    def __init__(self, api: str, request: InferenceRequest, body: bytes) -> None:
        self.api, self._body = api, body
        self.request = read_request(api, body)
        self._counted: int | None = None          # the prompt's tokens, once the call's Ask counted them
        self._per_image = IMAGE_TOKENS
        request.stream = isinstance(self.request, MessagesRequest) and self.request.stream

    def _messages(self, body: bytes, ceiling: int | None = None) -> MessagesRequest:
        """The request a plan translates: the one read at the door, unless the body was rewritten since; its
        `max_tokens` held to `ceiling` when that is lower."""
        request = self.request if body is self._body else read_request(MESSAGES, body)
        assert isinstance(request, MessagesRequest)
        if ceiling is not None and ceiling < request.max_tokens:
            return msgspec.structs.replace(request, max_tokens=ceiling)
        return request

    def ask(self, limit: int, tokenizer: TokenEstimator | None) -> Ask:
        """What the call asks for: its required `max_tokens` (at most `limit`), its prompt counted as
        `count_tokens` counts it."""
        request = self.request
        assert isinstance(request, MessagesRequest)
        check_tokens(request.max_tokens, OUTPUT_LIMIT_FIELD, limit, required=True)
        if tokenizer is not None:
            self._per_image = tokenizer.image_tokens

        def counted(count: Callable[[str], int], per_image: int) -> int:
            self._counted = max(1, count_input_tokens(request, count, per_image))
            return self._counted
        return Ask(request.max_tokens, 1, False, OUTPUT_LIMIT_FIELD, counted, tokenizer)

    def prompt_tokens(self) -> int:
        """The prompt's tokens for a stream's `message_start`: as the call's `Ask` counted them, when it did (for
        its quota hold, or whole for a large body), else four bytes a token of its texts (each image as the
        tokenizer holds one). The tokenizer's pass a call no limit holds never makes (about 50 µs a KB, on the
        event loop) is not made for it; its `message_delta` has the final counts."""
        if self._counted is not None:
            return self._counted
        return max(1, count_input_tokens(self.request, _four_bytes, self._per_image))

    def plan(self, endpoint_kind: str) -> Plan:
        """`request(body, model, ceiling)` holds `max_tokens` to the reservation's ceiling when one is given. The
        upstream's reasoning is shown as thinking blocks only when the request asked for thinking, as Anthropic's
        answers have them."""
        shows = isinstance(self.request.thinking, (ThinkingEnabled, ThinkingAdaptive))
        if endpoint_kind == "ollama":
            return Plan(
                native=False,
                request=lambda body, model, ceiling=None: (
                    "/api/chat", ollama_chat_body(self._messages(body, ceiling), model)),
                answer=lambda data, model, times: ollama_to_message(data, model, times.estimate, shows),
                error=upstream_error,
                stream=lambda model, _times: OllamaStreamToAnthropic(model, self.prompt_tokens(), shows),
                usage=ollama_usage)
        request = self.request
        stop = request.stop_sequences if isinstance(request, MessagesRequest) else None
        hosted = endpoint_kind == "openai"
        field = "max_completion_tokens" if hosted else "max_tokens"
        echoed = None if hosted else prefill(request)     # a prefill an OpenAI-compatible server may repeat
        return Plan(
            native=False,
            request=lambda body, model, ceiling=None: (
                CHAT_PATH, openai_chat_body(self._messages(body, ceiling), model, top_k=not hosted, output_field=field,
                                            continues=not hosted)),
            answer=lambda data, model, times: openai_to_message(data, model, stop, times.estimate, echoed, shows),
            error=upstream_error,
            stream=lambda model, _times: OpenAIStreamToAnthropic(model, stop, self.prompt_tokens(), echoed, shows),
            usage=openai_usage)

    def count_tokens(self, count: Callable[[str], int], per_image: int = IMAGE_TOKENS) -> bytes:
        """The `count_tokens` answer: `{"input_tokens": N}`, each image `per_image` tokens."""
        return encode(CountTokensResponse(count_input_tokens(self.request, count, per_image)))


def _four_bytes(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def count_input_tokens(request: CountTokensRequest, count: Callable[[str], int], per_image: int = IMAGE_TOKENS) -> int:
    """Prompt tokens as the gateway's tokenizer counts them (`count(text)`), with the chat framing the
    reservation estimate adds (`PER_MESSAGE` per message and once for the reply); each image `per_image`,
    each tool its name, description and schema as JSON, and the schema the answer must follow (structured outputs)
    as JSON."""
    total = PER_MESSAGE
    system = system_text(request.system)
    if system:
        total += PER_MESSAGE + count(system)
    for message in request.messages:
        total += PER_MESSAGE
        blocks = [TextBlock(message.content)] if isinstance(message.content, str) else message.content
        for block in blocks:
            if isinstance(block, TextBlock):
                total += count(block.text)
            elif isinstance(block, ImageBlock):
                total += per_image
            elif isinstance(block, DocumentBlock):                # as sent on: its title, context and text
                text, images = document_parts(block)
                total += count(text) + per_image * len(images)
            elif isinstance(block, ToolUseBlock):                 # its id is sent on as the call's id
                total += count(block.id) + count(block.name) + count(encode(block.input).decode())
            elif isinstance(block, ToolResultBlock):
                total += count(block.tool_use_id)
                content = block.content
                parts = [TextBlock(content)] if isinstance(content, str) else content or []
                for part in parts:
                    if isinstance(part, DocumentBlock):
                        text, images = document_parts(part)
                        total += count(text) + per_image * len(images)
                    else:
                        total += count(part.text) if isinstance(part, TextBlock) else per_image
    for tool in request.tools or ():
        total += count(tool.name) + count(tool.description or "") + count(encode(tool.input_schema).decode())
    schema = answer_schema(request)
    if schema is not None:
        total += count(encode(schema).decode())
    return total
