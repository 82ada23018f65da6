"""The Responses door (`/v1/responses`): a call's request read and checked, and its plan for every endpoint kind.

| endpoint kind | upstream path | request | answer | stream |
|---|---|---|---|---|
| any (`ollama` through its `/v1`, as the OpenAI door reaches it) | `/v1/chat/completions` | `chat_body` | `openai_to_response` | `OpenAIStreamToResponses` |
| `openai` | `/v1/chat/completions` | `chat_body` (`max_completion_tokens`, `reasoning_effort`) | the same | the same |

The upstream's reasoning (`reasoning_content` or `reasoning`, Ollama's `/v1` included) is a `reasoning` item before
the message, whole or streamed (`response.reasoning_text.delta`), with `reasoning_tokens` in its usage when the
upstream says how many. A stream that fails ends with `response.failed` carrying the usage the call's usage event
records (`_estimate`, when the upstream sent no counts).

A Response is kept for a while when the gateway keeps Responses (`keep`: `SWITCHYARD_RESPONSES_STORE_TTL_S` above 0,
and the request did not say `store: false`; then it says `store: true`): its output items and itself are handed over
as it is made (`KeptOutput`), so that a later request may continue it (`previous_response_id`, echoed in the answer)
or name its items (`item_reference`). pipeline/stored_items.py resolves both before the request is read here: a
reference or a `previous_response_id` reaching this door was not resolved (the gateway keeps nothing), and is
refused. A request that would continue a stored conversation or prompt, or run in the background, is refused too
(400 naming the field).
Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` (the `/v1/` prefix's shape), an upstream's
passed on as the OpenAI door passes them on; inside a stream, an `error` event and `response.failed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from switchyard_gateway.quotas.tokens import PER_MESSAGE, TokenEstimator
from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest, estimated_tokens
from switchyard_gateway.services.gateway.translate.anthropic_door import TOOL_NAME
from switchyard_gateway.services.gateway.translate.anthropic_wire import encode
from switchyard_gateway.services.gateway.translate.asks import (
    IMAGE, IMAGE_SCHEMES, Ask, _Image, check_tokens, refusal, summed,
)
from switchyard_gateway.services.gateway.translate.overflow import OVERFLOW_CODE
from switchyard_gateway.services.gateway.translate.plans import Plan
from switchyard_gateway.services.gateway.translate.requests import CHAT_PATH
from switchyard_gateway.services.gateway.translate.responses import openai_error_body, openai_usage
from switchyard_gateway.services.gateway.translate.responses_answers import echoed, openai_to_response
from switchyard_gateway.services.gateway.translate.responses_requests import chat_body
from switchyard_gateway.services.gateway.translate.responses_stream import OpenAIStreamToResponses
from switchyard_gateway.services.gateway.translate.responses_wire import (
    ContentPart, InputItem, InputTokens, Response, ResponsesRequest, decode_responses_request, file_text, offered,
)
from switchyard_gateway.services.gateway.translate.wire import TokenCounts

RESPONSES = "openai.responses"
INPUT_TOKENS = "openai.responses.input_tokens"
RESPONSES_APIS = {"/v1/responses": RESPONSES, "/v1/responses/input_tokens": INPUT_TOKENS}
OUTPUT_LIMIT_FIELD = "max_output_tokens"
MAX_KEPT_BYTES = 1024 * 1024    # a Response whose items (JSON) are larger is not kept, and says `store: false`

# Request fields that ask for what the gateway does not keep or run: (field, why it cannot be served). A
# `previous_response_id` or a `conversation` reaches the door only when nothing is kept (SWITCHYARD_RESPONSES_STORE_TTL_S
# is 0)
UNSERVED = (
    ("previous_response_id", "this gateway keeps no responses to continue from (SWITCHYARD_RESPONSES_STORE_TTL_S is "
                             "0): send the conversation in `input`"),
    ("conversation", "this gateway keeps no conversations to continue (SWITCHYARD_RESPONSES_STORE_TTL_S is 0): send "
                     "the conversation in `input`"),
    ("prompt", "stored prompts are not served: send the prompt in `instructions` and `input`"),
    ("background", "background responses are not served: every response is answered while its request waits"),
)


class KeptOutput(list[tuple[str, bytes]]):
    """A Response's output items handed over to keep, (id, JSON) each as the Response carried them, with the
    Response itself as it was answered."""

    __slots__ = ("response",)

    def __init__(self, items: list[tuple[str, bytes]], response: Response) -> None:
        super().__init__(items)
        self.response = response


def read_request(body: bytes) -> ResponsesRequest:
    """The whole request, checked; BadRequest (400, `invalid_request_error`) naming the field that is wrong."""
    try:
        request = decode_responses_request(body)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise refusal(exc) from None
    given = {"previous_response_id": request.previous_response_id, "conversation": request.conversation,
             "prompt": request.prompt, "background": request.background or None}
    for field, why in UNSERVED:
        if given[field] not in (None, "", {}):
            raise BadRequest(f"Invalid '{field}': {why}", param=field, code="unsupported_parameter")
    _check_tools(request)
    if request.input is None:
        raise BadRequest("Missing required parameter: 'input'", param="input", code="missing_field")
    if isinstance(request.input, list):
        check_items(request.input)
    answer_format = request.text.format if request.text is not None else None
    if answer_format is not None and answer_format.type == "json_schema":
        for field in ("name", "schema"):
            if getattr(answer_format, field) is None:
                raise BadRequest(f"Missing required parameter: 'text.format.{field}'", param=f"text.format.{field}",
                                 code="missing_field")
        _check_name(answer_format.name, "text.format.name")
    return request


def _check_name(name: str | None, where: str) -> None:
    """A function's or a schema's name in the form OpenAI takes (TOOL_NAME), which servers check too: refused here,
    naming the field the client sent, rather than by the server naming a field of the chat body it was sent."""
    if name is None or not TOOL_NAME.fullmatch(name):
        raise BadRequest(f"Invalid '{where}': a name matches {TOOL_NAME.pattern}", param=where, code="invalid_value")


def _check_tools(request: ResponsesRequest) -> None:
    """Function tools, alone or grouped in namespaces of function tools, each function named once (a namespace's
    are offered under their own names) in TOOL_NAME's form; a `tool_choice` naming one of them."""
    for index, tool in enumerate(request.tools or ()):
        if tool.type == "namespace":
            _check_name(tool.name, f"tools[{index}].name")
            if not tool.tools:
                raise BadRequest(f"Missing required parameter: 'tools[{index}].tools' (a namespace's functions)",
                                 param=f"tools[{index}].tools", code="missing_field")
    names: set[str] = set()
    for where, tool, group in offered(request.tools):
        if tool.type != "function":
            served = "a namespace holds function tools" if group else "only function and namespace tools are"
            raise BadRequest(f"Invalid '{where}.type': '{tool.type}' tools are not served by this gateway; {served}",
                             param=f"{where}.type", code="unsupported_parameter")
        _check_name(tool.name, f"{where}.name")
        if tool.name in names:
            raise BadRequest(f"Invalid 'tools': the function '{tool.name}' is given twice", param="tools",
                             code="invalid_value")
        names.add(tool.name)
    choice = request.tool_choice
    if choice == "required" and not names:
        raise BadRequest("Invalid 'tool_choice': 'required' needs tools, and none are given", param="tool_choice",
                         code="invalid_value")
    if choice is None or isinstance(choice, str):
        return
    if choice.type != "function":
        raise BadRequest(f"Invalid 'tool_choice.type': '{choice.type}' is not served; only a function is",
                         param="tool_choice.type", code="unsupported_parameter")
    if choice.name not in names:
        raise BadRequest(f"Invalid 'tool_choice.name': no function named '{choice.name}' in tools",
                         param="tool_choice.name", code="invalid_value")


def check_items(items: list[InputItem], named: str = "input", whole: bool = True) -> None:
    """Each item whole, of a type served; images in user messages only (a chat's other roles take text); for a
    `whole` input (not items added to a conversation), each `function_call_output` answers a `function_call` before
    it, and something besides `reasoning` items is there for the model to read. A 400 names `<named>[N]...`."""
    if whole and all(item.type == "reasoning" for item in items):
        raise BadRequest("Invalid 'input': it holds no message or function call for the model to answer",
                         param="input", code="invalid_value")
    called: set[str] = set()
    for index, item in enumerate(items):
        where = f"{named}[{index}]"
        if item.type == "message":
            _need(item.role, f"{where}.role")
            _need(item.content, f"{where}.content")
            for number, part in enumerate(item.content if isinstance(item.content, list) else ()):
                _check_part(part, f"{where}.content[{number}]")
                if part.type == "reasoning_text":
                    raise BadRequest(f"Invalid '{where}.content[{number}].type': 'reasoning_text' is a part of a "
                                     "reasoning item, not of a message", param=f"{where}.content[{number}].type",
                                     code="invalid_value")
                if part.type == "input_image" and item.role != "user":
                    raise BadRequest(f"Invalid '{where}.content[{number}]': images are read in user messages only, "
                                     f"not in a {item.role} message", param=f"{where}.content[{number}]",
                                     code="invalid_value")
        elif item.type == "function_call":
            for field in ("call_id", "name", "arguments"):
                _need(getattr(item, field), f"{where}.{field}")
            _check_name(item.name, f"{where}.name")
            called.add(item.call_id)  # type: ignore[arg-type]
        elif item.type == "function_call_output":
            _need(item.call_id, f"{where}.call_id")
            _need(item.output, f"{where}.output")
            if whole and item.call_id not in called:
                raise BadRequest(f"Invalid '{where}.call_id': no function_call before it has the call_id "
                                 f"'{item.call_id}'", param=f"{where}.call_id", code="invalid_value")
            for number, part in enumerate(item.output if isinstance(item.output, list) else ()):
                if part.type not in ("input_text", "input_image", "input_file"):
                    raise BadRequest(f"Invalid '{where}.output[{number}].type': a function's output is text, "
                                     "images and files here", param=f"{where}.output[{number}].type",
                                     code="unsupported_parameter")
                _check_part(part, f"{where}.output[{number}]")
        elif item.type == "item_reference":
            raise BadRequest(f"Invalid '{where}.type': this item_reference was not resolved: the gateway keeps no "
                             "items (SWITCHYARD_RESPONSES_STORE_TTL_S is 0), or the reference's type is not written "
                             "as plain `item_reference`; send the item itself (a client that refers to earlier output "
                             "by id, as the AI SDK's Responses model does, sends it whole when the request says "
                             "`store: false`)", param=f"{where}.type", code="unsupported_parameter")
        elif item.type != "reasoning":
            raise BadRequest(f"Invalid '{where}.type': '{item.type}' items are not served; messages, function_call "
                             "and function_call_output items are", param=f"{where}.type", code="unsupported_parameter")


def _check_part(part: ContentPart, where: str) -> None:
    if part.type == "input_image":
        if part.image_url is None:
            raise BadRequest(f"Invalid '{where}': an image is given by `image_url` here (a file_id names a stored "
                             "file, and nothing is stored)", param=f"{where}.image_url", code="missing_field")
        if not part.image_url[:8].lower().startswith(IMAGE_SCHEMES):     # the upstream fetches it
            raise BadRequest(f"Invalid '{where}.image_url': an image is an http(s) URL or a data: URL",
                             param=f"{where}.image_url", code="invalid_value")
    elif part.type == "input_file":
        if part.file_data is None:
            raise BadRequest(f"Invalid '{where}': a file is given by `file_data` here (a file_id names a stored file "
                             "and a file_url one to fetch, and neither is read)", param=f"{where}.file_data",
                             code="missing_field")
        if file_text(part) is None:
            raise BadRequest(f"Invalid '{where}.file_data': only plain-text files are read (a data:text/... URL of "
                             "UTF-8 text, base64 or percent-encoded); PDFs and other files are not served by this "
                             "gateway",
                             param=f"{where}.file_data", code="unsupported_parameter")
    else:
        field = "refusal" if part.type == "refusal" else "text"
        _need(getattr(part, field), f"{where}.{field}")


def _need(value: object, where: str) -> None:
    if value is None:
        raise BadRequest(f"Missing required parameter: '{where}'", param=where, code="missing_field")


def _upstream_error(data: bytes, status: int) -> bytes:
    """An upstream's error in OpenAI's shape (`openai_error_body`), without its `param`: that names a field of the
    chat body the gateway sent, not of the request the client did (a prompt too long for the model names `input`)."""
    body = openai_error_body(data, status, "input")
    try:
        shaped = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    error = shaped.get("error") if isinstance(shaped, dict) else None
    if not isinstance(error, dict) or error.get("param") is None or error.get("code") == OVERFLOW_CODE:
        return body
    return encode({**shaped, "error": {**error, "param": None}})


class ResponsesCall:
    """One call through the Responses door: its checked request, its plans, and the stream relaying its answer."""

    __slots__ = ("request", "stream", "_keeper", "_keeps", "_previous", "_conversation", "_body", "_ask", "_ceiling")

    def __init__(self, request: InferenceRequest, body: bytes) -> None:
        self._body = body
        self.request = read_request(body)
        request.stream = bool(self.request.stream)
        self.stream: OpenAIStreamToResponses | None = None      # the last attempt's, once one streams
        self._ask: Ask | None = None              # what the call asks for, once the proxy asked (`ask`)
        self._ceiling: int | None = None          # the output limit the last attempt was sent with, if any
        self._keeps = False                       # whether its Response is to be kept (`keep`)
        self._previous: str | None = None         # the Response it continues, resolved before it came here
        self._conversation: str | None = None     # the conversation it is made in, resolved the same way
        self._keeper: Callable[[list[tuple[str, bytes]]], None] | None = None

    def keep(self, keeper: Callable[[list[tuple[str, bytes]]], None], previous: str | None = None,
             conversation: str | None = None) -> None:
        """The gateway keeps Responses: this call's output items, with its Response (`KeptOutput`), are handed to
        `keeper` as its Response is made (whole, or a stream's last event; never a failed stream's), unless its
        request says `store: false`; `previous` is the Response its request continued, `conversation` the
        conversation it is made in (its answer says so; the keeper adds its items to it)."""
        self._keeps, self._keeper, self._previous = self.request.store is not False, keeper, previous
        self._conversation = conversation

    def _kept(self, response: Response) -> Response:
        """The answered Response and its items (id, JSON) handed over to keep; the Response says `store: false` when
        its items are larger than MAX_KEPT_BYTES, and it is not kept."""
        items = [(item.id, encode(item)) for item in response.output]
        if sum(len(raw) for _, raw in items) > MAX_KEPT_BYTES:
            return msgspec.structs.replace(response, store=False)
        if self._keeper is not None:
            self._keeper(KeptOutput(items, response))
        return response

    def _request(self, body: bytes) -> ResponsesRequest:
        """The request a plan translates: the one read at the door, unless the body was rewritten since."""
        return self.request if body is self._body else read_request(body)

    def ask(self, limit: int, tokenizer: TokenEstimator | None) -> Ask:
        """What the call asks for: `max_output_tokens` (at most `limit`) and its prompt, everything the model reads
        (instructions, items, the tools offered and the schema an answer must follow)."""
        output = self.request.max_output_tokens
        check_tokens(output, OUTPUT_LIMIT_FIELD, limit)
        self._ask = Ask(output, 1, False, OUTPUT_LIMIT_FIELD, summed(self._texts), tokenizer, context=limit)
        return self._ask

    def input_tokens(self, count: Callable[[str], int], per_image: int) -> bytes:
        """The `input_tokens` answer: the prompt as `ask` counts it for the quota hold (`count(text)`, each image
        `per_image` tokens)."""
        return encode(InputTokens(summed(self._texts)(count, per_image)))

    def plan(self, endpoint_kind: str) -> Plan:
        hosted = endpoint_kind == "openai"
        return Plan(
            native=False,
            request=lambda body, model, ceiling=None: self._chat(body, model, ceiling, hosted),
            answer=lambda data, model, times: openai_to_response(
                data, echoed(self.request, model, self._keeps, self._previous, self._conversation), times.estimate, self.request,
                self._kept if self._keeps else None),
            error=_upstream_error, stream=self._relay, usage=openai_usage)

    def _chat(self, body: bytes, model: str, ceiling: int | None, hosted: bool) -> tuple[str, bytes]:
        self._ceiling = ceiling
        return CHAT_PATH, chat_body(self._request(body), model, hosted=hosted, ceiling=ceiling)

    def _relay(self, model: str, _times: object) -> OpenAIStreamToResponses:
        self.stream = OpenAIStreamToResponses(echoed(self.request, model, self._keeps, self._previous, self._conversation), self._estimate,
                                              self.request, self._kept if self._keeps else None)
        return self.stream

    def _estimate(self, output_tokens: int) -> TokenCounts:
        """The call's tokens as its usage event estimates them when the upstream reported none."""
        return TokenCounts(*estimated_tokens(self._ask, self._body, self._ceiling, output_tokens))

    def cut_event(self, message: str, status: int = 502) -> bytes | None:
        """What ends the stream the upstream cut (an `error` event and `response.failed`); None before one began."""
        return None if self.stream is None else self.stream.failed(message, code="stream_cut", status=status)

    def _texts(self) -> Iterable[str | int | _Image]:
        request = self.request
        yield PER_MESSAGE
        for text in (request.instructions, request.input if isinstance(request.input, str) else None):
            if text:
                yield PER_MESSAGE
                yield text
        for item in request.input if isinstance(request.input, list) else ():
            if item.type == "reasoning":                # not sent upstream
                continue
            yield PER_MESSAGE
            content = item.output if item.type == "function_call_output" else item.content
            if isinstance(content, str):
                yield content
            for part in content if isinstance(content, list) else ():
                yield IMAGE if part.type == "input_image" else file_text(part) or "" if part.type == "input_file" \
                    else part.text or part.refusal or ""
            for text in (item.call_id, item.name, item.arguments):
                if text:
                    yield text
        for tool in request.tools or ():
            yield encode(tool).decode()
        answer_format = request.text.format if request.text is not None else None
        if answer_format is not None and answer_format.schema is not None:
            yield encode(answer_format.schema).decode()
