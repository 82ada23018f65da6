"""The requests and answers of the two front doors as msgspec Structs: what the OpenAPI document shows for them.

They describe what the gateway accepts and returns on the OpenAI (`/v1/*`) and Ollama (`/api/*`) routes;
fields it passes through untouched are listed as the official APIs name them. No field forbids unknown
members: a newer client's extra fields are passed on, as the gateway does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ModelName = Annotated[str, Meta(min_length=1, description="A model id or alias the caller's tenant may use",
                                examples=["llama3.2"])]
Json = dict[str, Any]


# --- OpenAI ---------------------------------------------------------------------------------------


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None           # JSON text


class ToolCall(msgspec.Struct, omit_defaults=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCall | None = None
    index: int | None = None               # in stream deltas


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Json] | None = None     # text, or content parts (text, image_url, input_audio)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct, omit_defaults=True):
    """POST /v1/chat/completions; everything but `model`, `stream` and `stream_options` goes upstream as sent."""

    model: ModelName
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[Json] | None = None
    tool_choice: str | Json | None = None
    response_format: Json | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct, omit_defaults=True):
    """POST /v1/completions."""

    model: ModelName
    prompt: str | list[Any]                # text, texts, or token ids
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    suffix: str | None = None
    echo: bool | None = None
    seed: int | None = None


class EmbeddingRequest(msgspec.Struct, omit_defaults=True):
    """POST /v1/embeddings; `encoding_format` and `dimensions` are honoured even where the upstream ignores them."""

    model: ModelName
    input: str | list[Any]                 # text, texts, or token ids
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class PromptTokensDetails(msgspec.Struct, omit_defaults=True):
    cached_tokens: int | None = None


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class AnswerMessage(msgspec.Struct, omit_defaults=True):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class ChatChoice(msgspec.Struct, omit_defaults=True):
    index: int
    message: AnswerMessage
    finish_reason: str | None = None
    logprobs: Json | None = None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    """A whole chat answer (`stream: false`); streamed answers are `text/event-stream` chunks of the same fields."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChunkDelta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class ChunkChoice(msgspec.Struct, omit_defaults=True):
    index: int
    delta: ChunkDelta | None = None        # chat
    text: str | None = None                # text completion
    finish_reason: str | None = None
    logprobs: Json | None = None


class CompletionChunk(msgspec.Struct, omit_defaults=True):
    """One event of a streamed chat or text completion (`data: {...}`); `data: [DONE]` ends the stream, and the
    usage chunk (`choices: []`) comes before it when `stream_options.include_usage` asks for it."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TextChoice(msgspec.Struct, omit_defaults=True):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Json | None = None


class Completion(msgspec.Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class Embedding(msgspec.Struct, omit_defaults=True):
    object: str
    index: int
    embedding: list[float] | str           # floats, or base64 little-endian float32


class EmbeddingList(msgspec.Struct, omit_defaults=True):
    object: str
    data: list[Embedding]
    model: str
    usage: Usage | None = None


class Model(msgspec.Struct):
    """OpenAI's model object."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[Model]


class OpenAIErrorDetail(msgspec.Struct):
    """OpenAI's error object; a quota refusal adds `quota_type`, `limit`, `used`, `reset_time` and
    `suggested_models`, a rate limit `limit_type`, `limit`, `used` and `reset_time`."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    error: OpenAIErrorDetail


# --- Ollama -----------------------------------------------------------------------------------------


class OllamaToolFunction(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: Json


class OllamaToolCall(msgspec.Struct, omit_defaults=True):
    function: OllamaToolFunction
    id: str | None = None                  # the call's id, which a tool result names


class OllamaMessage(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None        # base64
    tool_calls: list[OllamaToolCall] | None = None
    thinking: str | None = None


class OllamaChatRequest(msgspec.Struct, omit_defaults=True):
    """POST /api/chat (streams NDJSON unless `stream` is false)."""

    model: ModelName
    messages: list[OllamaMessage] = []
    stream: bool = True
    format: str | Json | None = None
    options: Json | None = None
    tools: list[Json] | None = None
    keep_alive: str | int | None = None
    think: bool | Literal["high", "medium", "low", "max"] | None = None


class OllamaGenerateRequest(msgspec.Struct, omit_defaults=True):
    """POST /api/generate (streams NDJSON unless `stream` is false)."""

    model: ModelName
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    images: list[str] | None = None
    stream: bool = True
    raw: bool | None = None
    format: str | Json | None = None
    options: Json | None = None
    keep_alive: str | int | None = None
    think: bool | Literal["high", "medium", "low", "max"] | None = None


class OllamaEmbedRequest(msgspec.Struct, omit_defaults=True):
    """POST /api/embed."""

    model: ModelName
    input: str | list[str]
    truncate: bool | None = None
    options: Json | None = None
    keep_alive: str | int | None = None


class OllamaEmbeddingsRequest(msgspec.Struct, omit_defaults=True):
    """POST /api/embeddings (the older single-vector form)."""

    model: ModelName
    prompt: str
    options: Json | None = None


class OllamaStats(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What a finished Ollama answer says of its work: token counts and nanosecond durations."""

    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaChatResponse(OllamaStats, kw_only=True):
    model: str
    created_at: str
    message: OllamaMessage


class OllamaGenerateResponse(OllamaStats, kw_only=True):
    model: str
    created_at: str
    response: str
    thinking: str | None = None
    context: list[int] | None = None


class OllamaEmbedResponse(msgspec.Struct, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingsResponse(msgspec.Struct):
    embedding: list[float]


class OllamaDetails(msgspec.Struct):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class OllamaModelEntry(msgspec.Struct, omit_defaults=True):
    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails
    modified_at: str | None = None
    expires_at: str | None = None          # /api/ps
    size_vram: int | None = None           # /api/ps
    context_length: int | None = None      # /api/ps


class OllamaModelList(msgspec.Struct):
    """GET /api/tags and GET /api/ps."""

    models: list[OllamaModelEntry]


class OllamaShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""                         # the older spelling of `model`


class OllamaShowResponse(msgspec.Struct):
    """POST /api/show: `capabilities` and `model_info["general.architecture"]` as the serving upstreams report them
    (`unknown` when none does); `switchyard` holds the registry's view of the model."""

    license: str
    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: Json
    capabilities: list[Literal["completion", "tools", "insert", "vision", "embedding", "thinking"]]
    modified_at: str
    switchyard: Json


class OllamaVersion(msgspec.Struct):
    version: str


class OllamaError(msgspec.Struct):
    """Ollama's error shape: `{"error": "<message>"}` (a quota refusal adds its detail fields beside it)."""

    error: str
