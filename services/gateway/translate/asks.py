"""What a call asks for, read once per door and checked before anything is reserved: types, signs and bounds.

Each API has a request struct (a subclass of the pipeline's `InferenceRequest`) whose
fields carry their static bounds (`msgspec.Meta`): a wrong type, a negative count or a
value out of the API's range is refused while decoding, with the field's path as `param`.
`request.ask(limit, tokenizer)` then checks the bounds that depend on the model (output
tokens and context sizes at most its `context_length`, else the configured maximum)
and returns the call's `Ask`: the output tokens asked per choice, how many choices,
and its prompt, counted lazily with the reservation's tokenizer. The prompt is everything the
model reads, as servers bill it: the messages, and beside them the tools offered, the tool calls
made and the schema an answer must follow (read as raw JSON, counted as written), and each image
as the tokenizer's `image_tokens` (images are not decoded: each counts the same). A content part the
gateway cannot count (audio, a file) makes the prompt held the whole context: the most any server can bill
for it, so no caller gets past a limit with one (a usage record that must estimate, the upstream having
reported nothing, takes what was counted; a refusal says why it was held so, `Ask.explained`). A part of a
type OpenAI does not have is a 400 naming it.

A door that reads its own request (Anthropic's) builds its `Ask` itself and checks its own field
names with `check_tokens` (a required `max_tokens`: `check_tokens(v, "max_tokens", limit, required=True)`)
and `refusal` (msgspec's error as a 400 naming the field).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import msgspec

from switchyard_gateway.kit.natsio import field_path
from switchyard_gateway.quotas.tokens import IMAGE_TOKENS, PER_MESSAGE, TokenEstimator
from switchyard_gateway.services.gateway.edge.errors import BadRequest, GatewayError
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.keep_alive import keep_alive_seconds, unloads
from switchyard_gateway.services.gateway.translate.ollama_checks import (
    check_images, check_raw, check_tools, truncated, whole,
)
from switchyard_gateway.services.gateway.translate.wire import ollama_time

MAX_CHOICES = 128                         # OpenAI's bound on `n`
MAX_DIMENSIONS = 65_536                   # no embedding model comes near it
MAX_INPUTS = 2048                         # texts (or token arrays) in one embeddings or completions call

Choices = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**32)]
Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Prompt = str | Annotated[list[str | TokenId | list[TokenId]], msgspec.Meta(max_length=MAX_INPUTS)]
MAX_STOPS = 64      # OpenAI's own servers take 4; vLLM, llama.cpp and Ollama more, and the door fronts them too
Stops = str | Annotated[list[str], msgspec.Meta(max_length=MAX_STOPS)]        # a text, or a list of texts


Count = Callable[[str], int]                # tokens in one text
PromptCounter = Callable[[Count, int], int]  # a call's prompt tokens, given `count` and the tokens of one image


class _Image:
    """What a prompt's texts yield for an image: counted as the tokenizer's `image_tokens`."""

    __slots__ = ()


IMAGE = _Image()
COUNTED_PARTS = ("text", "image_url", "refusal")      # the OpenAI content parts a prompt's count covers
# OpenAI's chat content parts (a `refusal` is an assistant's) and the media vLLM's server takes beside them; another
# type is a 400 naming it (a `bogus` or `Text` was held at the whole context, as a part the gateway could not count)
PartType = Literal["text", "image_url", "input_audio", "file", "refusal", "video_url", "audio_url", "image_embeds"]
REQUEST_LIMITS = frozenset({"requests", "rpm", "key_rpm"})     # the limits of requests, not tokens (quotas.plan)


class Ask:
    """What one call asks for: output tokens per choice (None: not given), choices, whether it is an
    embedding (no output), the field its client names the output limit by, and its prompt tokens
    (`prompt(count, per_image)` counts them with the `count` and the tokens per image it is given).
    `uncounted` names a part that cannot be counted (None: there is none), `context` the most its prompt can be."""

    __slots__ = ("output", "choices", "embedding", "field", "largest", "context", "_counted", "_tokenizer",
                 "_prompt", "_uncounted")

    def __init__(self, output: int | None, choices: int, embedding: bool, field: str,
                 prompt: PromptCounter, tokenizer: TokenEstimator | None, largest: int | None = None,
                 context: int | None = None, uncounted: Callable[[], str | None] | None = None) -> None:
        self.output, self.choices, self.embedding, self.field = output, choices, embedding, field
        self.largest = largest if largest is not None else output    # the largest output limit the body names
        self.context = context
        self._counted, self._tokenizer, self._uncounted = prompt, tokenizer, uncounted
        self._prompt: int | None = None

    def counted_tokens(self) -> int:
        """The prompt's tokens as far as they can be counted (at least 1), counted once with the reservation's
        tokenizer: the estimate a usage record takes when the upstream reported none."""
        if self._prompt is None:
            tokenizer = self._tokenizer
            if tokenizer is None:
                self._prompt = max(1, self._counted(_rough, IMAGE_TOKENS))
            else:
                self._prompt = max(1, self._counted(tokenizer.counter(), tokenizer.image_tokens))
        return self._prompt

    def count_whole(self) -> None:
        """Count the prompt exactly however long it is (the loop's count holds a long call's tail at a token a
        byte): for a large body, run in a thread before the reservation, which then reads this count."""
        tokenizer = self._tokenizer
        if tokenizer is not None and tokenizer.exact:
            self._prompt = max(1, self._counted(tokenizer.whole_counter(), tokenizer.image_tokens))

    def prompt_tokens(self) -> int:
        """The prompt tokens to hold: those counted, or the whole context when a part cannot be counted."""
        counted = self.counted_tokens()
        if self._uncounted is not None and self.context is not None and self._uncounted():
            return max(counted, self.context)
        return counted

    def explained(self, error: GatewayError) -> GatewayError:
        """A refusal of this call's hold, saying when its prompt was held at the model's whole context for a part
        that cannot be counted: a 402 whose numbers show room left is otherwise read as the gateway's mistake.
        A refusal of requests (not tokens) is the same with or without it."""
        context = self.context
        where = self._uncounted() if self._uncounted is not None and context is not None else None
        limited = error.details.get("quota_type") or error.details.get("limit_type")
        if where is None or context is None or limited in REQUEST_LIMITS or self.counted_tokens() >= context:
            return error
        error.args = (f"{error.message}: the prompt holds a content part the gateway cannot count ({where}), held "
                      f"as the model's whole context ({self.context} tokens)",)
        return error


def summed(texts: Callable[[], Iterable[str | int | _Image]]) -> PromptCounter:
    """A prompt counter for texts, token counts and images: texts counted, numbers (token ids, formatting) as
    they are, each `IMAGE` as the tokens per image."""
    return lambda count, per_image: sum(
        count(item) if isinstance(item, str) else per_image if item is IMAGE else item  # type: ignore[misc]
        for item in texts())


def raw_text(raw: msgspec.Raw) -> str:
    """A field kept as raw JSON, as text to count ("" when absent or null)."""
    text = bytes(raw)
    return "" if not text or text == b"null" else text.decode()


def _rough(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def check_tokens(value: int | None, param: str, limit: int, *, minimum: int = 1, required: bool = False) -> None:
    """A token count the client gave: present if required, at least `minimum`, at most `limit` (400 naming it)."""
    if value is None:
        if required:
            raise BadRequest(f"Missing required field '{param}'", param=param, code="missing_field")
        return
    if value < minimum:
        raise BadRequest(f"Invalid '{param}': {value} is below the minimum of {minimum}", param=param,
                         code="invalid_value")
    if value > limit:
        raise BadRequest(f"Invalid '{param}': {value} is above this model's maximum of {limit}", param=param,
                         code="invalid_value")


# --- OpenAI ---------------------------------------------------------------------------------------


class ImageUrl(msgspec.Struct):
    url: str = ""


IMAGE_SCHEMES = ("https://", "http://", "data:")     # what an upstream may be asked to fetch or read for an image


class ContentPart(msgspec.Struct):
    type: PartType = "text"
    text: str | None = None
    refusal: str | None = None
    image_url: ImageUrl | str | None = None


class ChatMessage(msgspec.Struct):
    role: Literal["developer", "system", "user", "assistant", "tool", "function"]     # OpenAI's, which refuses others
    content: str | list[ContentPart] | None = None
    tool_calls: msgspec.Raw = msgspec.Raw()       # the calls an assistant made: read back by the model


class OpenAICall(InferenceRequest):
    """What every OpenAI call shares: `stream` may be null, as OpenAI's API has it, meaning false (it was a 400).

    The fields declared here and below and never read are declared for their types (and OpenAI's bounds), checked in
    the same decode: a field of the wrong type is a 400 naming it, not the upstream's 400 after quota was held."""

    stream: bool | None = False                   # type: ignore[assignment]  # false once read
    user: str | None = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = False


class Sampling(OpenAICall):
    """Sampling fields OpenAI's chat and text completions share, with OpenAI's ranges."""

    stop: Stops | None = None

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Seed | None = None
    n: Choices | None = None


class ToolChoice(msgspec.Struct):
    """A tool the model must call: `{"type": "function", "function": {"name": ...}}` or another kind, kept unread."""

    type: str


class OpenAIChat(Sampling):
    messages: list[ChatMessage] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    logprobs: bool | None = None
    tools: msgspec.Raw = msgspec.Raw()            # counted as prompt, never parsed
    functions: msgspec.Raw = msgspec.Raw()        # the older name of tools
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: msgspec.Raw = msgspec.Raw()  # counted as prompt; its `type` checked by `ask`
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        if not self.messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages", code="missing_field")
        for name, raw in (("tools", self.tools), ("functions", self.functions)):
            if raw and bytes(raw)[:1] != b"[" and bytes(raw) != b"null":     # a list of them, as OpenAI takes it
                raise BadRequest(f"Invalid '{name}': expected an array", param=name, code="invalid_type")
        check_tokens(self.max_tokens, "max_tokens", limit)
        check_tokens(self.max_completion_tokens, "max_completion_tokens", limit)
        if self.response_format:
            _check_format(self.response_format)
        field = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        asked = [v for v in (self.max_completion_tokens, self.max_tokens) if v is not None]
        self._check_images()
        return Ask(min(asked) if asked else None, self.n or 1, False, field, summed(self._texts), tokenizer,
                   max(asked) if asked else None, context=limit, uncounted=self._uncounted_part)

    def _check_images(self) -> None:
        """An image is given by an http(s) or data: URL: the upstream fetches it, so a `file://` (or any other
        scheme) would ask it to read its own disk. 400 naming the part."""
        for index, message in enumerate(self.messages or ()):
            if not isinstance(message.content, list):
                continue
            for number, part in enumerate(message.content):
                if part.type != "image_url":
                    continue
                image = part.image_url
                url = image.url if isinstance(image, ImageUrl) else image or ""
                if not url[:8].lower().startswith(IMAGE_SCHEMES):       # a scheme is read in any case
                    where = f"messages[{index}].content[{number}].image_url.url"
                    raise BadRequest(f"Invalid '{where}': an image is an http(s) URL or a data: URL", param=where,
                                     code="invalid_value")

    def _uncounted_part(self) -> str | None:
        """The first part that cannot be counted (audio, a file), named with its type; None when there is none."""
        for index, message in enumerate(self.messages or ()):
            if isinstance(message.content, list):
                for number, part in enumerate(message.content):
                    if part.type not in COUNTED_PARTS:
                        return f"messages[{index}].content[{number}], {part.type}"
        return None

    def _texts(self) -> Iterable[str | int | _Image]:
        yield PER_MESSAGE
        for message in self.messages or ():
            yield PER_MESSAGE
            content = message.content
            if isinstance(content, str):
                yield content
            elif content:
                for part in content:
                    kind = part.type
                    if kind == "text":
                        yield part.text or ""
                    elif kind == "image_url":
                        yield IMAGE
                    elif kind == "refusal":                     # an assistant's, read back as prompt
                        yield part.refusal or ""
            yield raw_text(message.tool_calls)
        for raw in (self.tools, self.functions, self.response_format):
            yield raw_text(raw)


class _Format(msgspec.Struct):
    """A chat's `response_format`, read only to refuse one no server takes: OpenAI's types, and vLLM's
    `structural_tag`."""

    type: Literal["text", "json_object", "json_schema", "structural_tag"]


class _Formatted(msgspec.Struct):
    response_format: _Format | None = None


_decode_format = msgspec.json.Decoder(_Formatted).decode


def _check_format(raw: msgspec.Raw) -> None:
    """400 naming `response_format` (or its `type`) for one that is no object with a type a server takes."""
    try:
        _decode_format(b'{"response_format":' + bytes(raw) + b"}")
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise refusal(exc) from None


class OpenAICompletion(Sampling):
    prompt: Prompt | None = None
    suffix: str | None = None
    max_tokens: int | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    echo: bool | None = None

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        if self.prompt is None:
            raise BadRequest("Missing required field 'prompt'", param="prompt", code="missing_field")
        prompts = prompt_count(self.prompt, "prompt")
        check_tokens(self.max_tokens, "max_tokens", limit, minimum=0)
        n = self.n or 1
        if self.best_of is not None and self.best_of < n:
            raise BadRequest(f"Invalid 'best_of': {self.best_of} is below 'n' ({n})", param="best_of",
                             code="invalid_value")
        if self.best_of is not None and self.best_of > 1 and self.stream:
            raise BadRequest("Invalid 'best_of': it cannot be used with 'stream'", param="best_of",
                             code="invalid_value")
        # each prompt of a list is answered on its own, with `n` (or `best_of`) choices and the suffix each
        return Ask(self.max_tokens, max(n, self.best_of or 1) * prompts, False, "max_tokens",
                   summed(lambda: (*_inputs(self.prompt), *(self.suffix or "" for _ in range(prompts)))), tokenizer)


class OpenAIEmbeddings(OpenAICall):
    input: Prompt | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    encoding_format: Literal["float", "base64"] | None = None

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        if self.input is None or self.input == [] or self.input == "":
            raise BadRequest("'input' must be a non-empty string or list", param="input", code="missing_field")
        if self.stream:          # no embedding streams: sent on, the upstream's whole answer read as a cut stream
            raise BadRequest("Invalid 'stream': embeddings are not streamed", param="stream", code="invalid_value")
        prompt_count(self.input, "input", empty_texts=False)
        return Ask(None, 1, True, "", summed(lambda: _inputs(self.input)), tokenizer)


def prompt_count(value: str | list[Any], param: str, empty_texts: bool = True) -> int:
    """How many prompts a completions `prompt` (or embeddings `input`) holds, as OpenAI reads it: a text or one
    array of token ids is one, a list of texts or of token id arrays one each. An empty list, an empty token
    array, a list mixing those kinds (or, unless `empty_texts`, an empty text) is a 400 naming `param`."""
    if isinstance(value, str):
        if not value and not empty_texts:
            raise BadRequest(f"Invalid '{param}': an empty text", param=param, code="invalid_value")
        return 1
    if not value:
        raise BadRequest(f"Invalid '{param}': an empty list", param=param, code="invalid_value")
    kinds = {type(item) for item in value}
    if len(kinds) > 1:
        raise BadRequest(f"Invalid '{param}': a list of texts, of token ids or of token id arrays, not a mix of "
                         f"them", param=param, code="invalid_value")
    if int in kinds:
        return 1
    if any(not item for item in value) and (list in kinds or not empty_texts):
        raise BadRequest(f"Invalid '{param}': an empty {'token id array' if list in kinds else 'text'} in the "
                         f"list", param=param, code="invalid_value")
    return len(value)


def _inputs(value: Any) -> Iterable[str | int]:
    """Texts as they are, token ids as one token each (token arrays: their length)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, int):
                yield 1
            else:
                yield len(item)


# --- Ollama ---------------------------------------------------------------------------------------


OutputCount, ContextSize, Candidates = whole(-2), whole(1), whole(0)     # Ollama's integer options
OllamaSeed = whole(-(2**63), 2**63 - 1)


class OllamaOptions(msgspec.Struct):
    """The options with a type, a count or a range the gateway checks; the others pass through unread. Integer
    options take any number, truncated, as Ollama takes them (`whole`)."""

    num_predict: OutputCount | None = None       # -1: no limit, -2: fill the context
    num_ctx: ContextSize | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0)] | None = None
    top_k: Candidates | None = None
    top_p: Unit | None = None
    seed: OllamaSeed | None = None
    stop: str | list[str] | None = None          # Ollama's is a list; a text is taken, as OpenAI takes it

    def __post_init__(self) -> None:
        self.num_predict, self.num_ctx = truncated(self.num_predict), truncated(self.num_ctx)
        self.top_k, self.seed = truncated(self.top_k), truncated(self.seed)


Think = bool | Literal["high", "medium", "low", "max"]     # Ollama's levels ("max": 0.32's)


class OllamaCall(InferenceRequest):
    """The fields every Ollama call shares; the types match what translation reads, so a body read here
    always translates."""

    stream: bool | None = None                    # type: ignore[assignment]  # null or absent: Ollama streams
    options: OllamaOptions | None = None
    format: msgspec.Raw = msgspec.Raw()           # "json" or a schema the answer must follow: counted as prompt
    keep_alive: msgspec.Raw = msgspec.Raw()       # how long the server keeps the model loaded: see keep_alive.py

    def load_answer(self) -> bytes | None:
        """Ollama's answer to a request that only loads or unloads the model (a generate with no prompt, a chat
        with no message, an embed with no input; `keep_alive` 0 unloads), which generates nothing; None for any
        other request. The gateway answers it itself: an OpenAI-compatible server has nothing to load and would
        generate an answer (billed) or refuse an empty input (after quota was held), and no tenant of a shared
        server should unload its models."""
        return None

    def _load_reply(self, **fields: Any) -> bytes:
        unload = unloads(self._keep_alive())
        return msgspec.json.encode({"model": self.model, "created_at": ollama_time(), **fields,
                                    "done_reason": "unload" if unload else "load", "done": True})

    def _keep_alive(self) -> float | None:
        """The call's `keep_alive` in seconds (None: not given); 400 naming it for one Ollama would refuse."""
        raw = bytes(self.keep_alive)
        try:
            return keep_alive_seconds(msgspec.json.decode(raw)) if raw else None
        except (msgspec.MsgspecError, ValueError) as exc:
            raise BadRequest(f"Invalid 'keep_alive': {exc}", param="keep_alive", code="invalid_value") from None

    def _output(self, limit: int) -> int | None:
        """The output limit the options name (None: none), each count checked; `format` checked too."""
        answer_format = bytes(self.format).strip()
        if answer_format and answer_format not in (b"null", b'""', b'"json"') and not answer_format.startswith(b"{"):
            raise BadRequest("Invalid 'format': it is \"json\" or a JSON schema (an object), as Ollama reads it",
                             param="format", code="invalid_value")
        self._keep_alive()
        options = self.options
        if options is None:
            return None
        if options.num_predict is not None and options.num_predict >= 0:
            check_tokens(options.num_predict, "options.num_predict", limit, minimum=0)
        check_tokens(options.num_ctx, "options.num_ctx", limit)
        num_predict = options.num_predict
        return num_predict if num_predict is not None and num_predict >= 0 else None


class OllamaFunction(msgspec.Struct):
    name: str = ""
    arguments: Any = None


class OllamaToolCall(msgspec.Struct):
    function: OllamaFunction | None = None
    id: str | None = None


OLLAMA_ROLES = frozenset({"system", "user", "assistant", "tool"})


class OllamaMessage(msgspec.Struct):
    role: str = "user"                  # one of OLLAMA_ROLES in any case, as Ollama lowercases it
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None

    def __post_init__(self) -> None:
        self.role = self.role.lower()


class OllamaGenerating(OllamaCall):
    """The fields a chat and a generate share beside every call's, with Ollama's types and ranges."""

    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


class OllamaChat(OllamaGenerating):
    messages: list[OllamaMessage] = []
    tools: msgspec.Raw = msgspec.Raw()            # a list of objects, checked as one; counted as prompt

    def load_answer(self) -> bytes | None:
        return None if self.messages else self._load_reply(message={"role": "assistant", "content": ""})

    def prefill(self) -> str | None:
        """The text of a final assistant message (without tool calls): what Ollama continues rather than answers
        (translate/prefill.py); None when the chat ends otherwise."""
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant" or last.tool_calls or not last.content:
            return None
        return last.content

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        for number, message in enumerate(self.messages):
            if message.role not in OLLAMA_ROLES:
                where = f"messages[{number}].role"
                raise BadRequest(f"Invalid '{where}': {message.role!r} is none of system, user, assistant and tool",
                                 param=where, code="invalid_value")
            check_images(message.images, f"messages[{number}].images")
        check_tools(self.tools)
        return Ask(self._output(limit), 1, False, "options.num_predict", summed(self._texts), tokenizer)

    def _texts(self) -> Iterable[str | int | _Image]:
        yield PER_MESSAGE
        for message in self.messages:
            yield PER_MESSAGE
            if message.content:
                yield message.content
            for _ in message.images or ():
                yield IMAGE
            for call in message.tool_calls or ():
                arguments = call.function.arguments if call.function is not None else None
                if arguments is not None:
                    yield arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()
        yield raw_text(self.tools)
        yield raw_text(self.format)


class OllamaGenerate(OllamaGenerating):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    template: str | None = None                   # rendered around the prompt by Ollama, and billed with it
    images: list[str] | None = None
    raw: bool = False
    context: Annotated[list[TokenId], msgspec.Meta(max_length=10_000_000)] | None = None   # earlier tokens

    def load_answer(self) -> bytes | None:
        return None if self.prompt else self._load_reply(response="")

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        check_raw(self.raw, self.system, self.template, self.context)
        check_images(self.images, "images")
        return Ask(self._output(limit), 1, False, "options.num_predict", summed(self._texts), tokenizer)

    def _texts(self) -> Iterable[str | int | _Image]:
        for text in (self.system, self.prompt, self.suffix, self.template):
            if text:
                yield text
        for _ in self.images or ():
            yield IMAGE
        if self.context:
            yield len(self.context)
        yield raw_text(self.format)


class OllamaEmbed(OllamaCall):
    input: str | Annotated[list[str], msgspec.Meta(max_length=MAX_INPUTS)] | None = None
    prompt: str | None = None                     # not Ollama's, but read when `input` is absent
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    truncate: bool | None = None                  # checked only: the upstream truncates (or refuses) itself

    def load_answer(self) -> bytes | None:
        embedded = self.input if self.input is not None else self.prompt
        return None if embedded else msgspec.json.encode({"model": self.model, "embeddings": []})

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        self._output(limit)
        return Ask(None, 1, True, "", summed(lambda: _inputs(self.input if self.input is not None else self.prompt)),
                   tokenizer)


class OllamaEmbeddings(OllamaCall):
    """/api/embeddings, the older route: Ollama embeds `prompt` and nothing else (an `input` is ignored, here as
    there, so what is counted is what is embedded)."""

    prompt: str | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] | None = None

    def load_answer(self) -> bytes | None:
        return None if self.prompt else b'{"embedding":[]}'

    def ask(self, limit: int, tokenizer: TokenEstimator | None = None) -> Ask:
        self._output(limit)
        return Ask(None, 1, True, "", summed(lambda: _inputs(self.prompt or "")), tokenizer)


# --- reading a body -------------------------------------------------------------------------------


REQUESTS: dict[str, type[InferenceRequest]] = {
    "openai.chat": OpenAIChat, "openai.completions": OpenAICompletion, "openai.embeddings": OpenAIEmbeddings,
    "ollama.chat": OllamaChat, "ollama.generate": OllamaGenerate, "ollama.embed": OllamaEmbed,
    "ollama.embeddings": OllamaEmbeddings,
    # the Anthropic and Responses doors read and check their whole requests themselves (anthropic_door.py,
    # responses_door.py): the routed fields here
    "anthropic.messages": InferenceRequest, "anthropic.count_tokens": InferenceRequest,
    "openai.responses": OpenAICall, "openai.responses.input_tokens": OpenAICall,
}
TRANSLATED = frozenset({"anthropic.messages", "anthropic.count_tokens", "openai.responses",
                        "openai.responses.input_tokens"})
_DECODERS = {api: msgspec.json.Decoder(kind).decode for api, kind in REQUESTS.items()}


def read_request(api: str, body: bytes) -> Any:
    """The request struct of an API's body (`ask(limit, tokenizer)` gives its Ask); 400 naming the field for a
    wrong type or a value out of range, for a body that is not UTF-8 (`check_utf8`), for malformed JSON, for JSON
    nested too deeply to read, and for a key spelled as a field the gateway reads but in other letter case
    (`spelled_as_read`). Every door reads its body here first, Anthropic's included."""
    check_utf8(body)
    try:
        request = _DECODERS[api](body)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise refusal(exc, body) from None
    if not request.model:
        raise BadRequest("Missing required field 'model'", param="model", code="missing_field")
    fields = _FIELDS.get(api)
    if fields is not None:
        try:
            spelled_as_read(body, *fields)
        except (msgspec.MsgspecError, RecursionError) as exc:
            raise refusal(exc) from None
    return request


def _lone_surrogate(body: bytes) -> bool:
    """Whether a body msgspec found truncated is whole JSON after all, one of its strings escaping a lone surrogate
    (Python's reader takes those; the error path alone pays for the second read)."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def check_utf8(body: bytes) -> None:
    """JSON is UTF-8 (RFC 8259); 400 `invalid_json` for a body that is not. msgspec checks only the texts it reads:
    a byte that is no UTF-8 in a key or a field it skips went upstream as it was, or failed a rewrite of the body
    (500) after the call was accepted. An ASCII body, most of them, is checked in a few nanoseconds."""
    if body.isascii():
        return
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Malformed JSON in request body: not UTF-8 at byte {exc.start}", code="invalid_json") \
            from None


# fields declared only for their types (OpenAICall): their keys in another case are a client's own (`User`), passed on
TYPED_ONLY = frozenset({"user", "store", "metadata", "modalities", "parallel_tool_calls", "tool_choice", "echo"})


def _folded(kind: type[msgspec.Struct]) -> dict[str, str]:
    return {field.encode_name.casefold(): field.encode_name for field in msgspec.structs.fields(kind)
            if field.encode_name not in TYPED_ONLY}


# the fields read at the top of a body and in each of its messages, by their case-folded names; the translating
# doors are left out (TRANSLATED): their upstream bodies are written by the gateway, never passed on
_FIELDS: dict[str, tuple[dict[str, str], dict[str, str] | None]] = {
    api: (_folded(kind), _folded(OllamaMessage) if api == "ollama.chat" else _folded(ChatMessage)
          if api == "openai.chat" else None)
    for api, kind in REQUESTS.items() if api not in TRANSLATED
}
_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_items = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode


def spelled_as_read(body: bytes, top: dict[str, str], message: dict[str, str] | None) -> None:
    """Refuse (400 naming it) a key that differs from a field the gateway reads only in letter case (`Model`,
    `MAX_TOKENS`, a message's `Content`), at the top of the body or in a message. Ollama's server reads JSON
    keys without regard to case, the later one winning: such a key would be read there, and not here, as the
    model, the output limit or the prompt, past the tenant's models and its quota."""
    keys = _decode_keys(body)
    _no_other_case(keys, top, "")
    messages = keys.get("messages")
    if message is not None and messages is not None and bytes(messages) != b"null":     # else read as a list
        for index, item in enumerate(_decode_items(messages)):
            _no_other_case(item, message, f"messages[{index}].")


def _no_other_case(keys: dict[str, Any], fields: dict[str, str], prefix: str) -> None:
    for key in keys:
        read_as = fields.get(key.casefold())
        if read_as is not None and read_as != key:
            raise BadRequest(f"Unknown field '{prefix}{key}': field names are case-sensitive (the gateway reads "
                             f"'{prefix}{read_as}', some servers read this one as it)", param=f"{prefix}{key}",
                             code="invalid_field")


def refusal(exc: msgspec.MsgspecError | RecursionError, body: bytes | None = None) -> BadRequest:
    """The 400 for a body msgspec could not read: the field named (`param`) when it is one field's fault. Given the
    `body`, a string escaping half a UTF-16 surrogate pair (`"\\ud800"`, which is no character) is said to be
    that, where msgspec says the input was truncated."""
    if isinstance(exc, RecursionError):
        return BadRequest("The request body is nested too deeply to read", code="json_too_deep")
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        if body is not None and text == "Input data was truncated" and _lone_surrogate(body):
            text = "a string escapes half of a UTF-16 surrogate pair (\\ud800-\\udfff alone), which is no character"
        return BadRequest(f"Malformed JSON in request body: {text}", code="invalid_json")
    param = field_path(text)
    if param is not None and "[...]" in param:          # msgspec's name for any value of an object: the object is named
        param = param.partition("[...]")[0]
    if "missing required field" in text:                # the field itself is named, not the object lacking it
        return BadRequest(f"Missing required field '{param}'", param=param, code="missing_field")
    if param is None:
        return BadRequest(f"Invalid request: {text}")
    said = text.rpartition(" - at `")[0]
    if " - at `key` in `" in text:                      # one of the object's keys is wrong: the object is named
        said = f"a key: {said}"
    return BadRequest(f"Invalid '{param}': {said}", param=param, code="invalid_value")
