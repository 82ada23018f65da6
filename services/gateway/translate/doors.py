"""The front doors, OpenAI (`/v1/*`, `/v1/responses`), Ollama (`/api/*`) and Anthropic (`/v1/messages`): how a call through each reaches each kind of endpoint.

A door gives, per endpoint kind, a `Plan` (services/gateway/translate/plans.py): the
upstream path and body, how a whole answer and its usage are read and
translated, and the stream relay to use. It also renders the gateway's own
errors the way its clients read them. The Anthropic door's request, plans and
errors live in `anthropic_door.py` and `anthropic_responses.py`; the Responses door's (OpenAI's Responses API,
translated to chat completions) in `responses_door.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.edge.errors import GatewayError, UpstreamError, shape_for, stream_error
from switchyard_gateway.services.gateway.translate.anthropic_door import ANTHROPIC_APIS, AnthropicCall
from switchyard_gateway.services.gateway.translate.asks import Ask
from switchyard_gateway.services.gateway.translate.responses_door import RESPONSES_APIS, ResponsesCall
from switchyard_gateway.services.gateway.translate.sse import SseTap
from switchyard_gateway.services.gateway.translate.plans import (
    CHAT_PATH, OLLAMA_APIS, OpenAIStreamToOllama, Plan, conform_embeddings, embedding_options, ollama_chat_to_openai,
    ollama_plan, openai_chat_to_ollama, openai_error_body, openai_usage,
)
from switchyard_gateway.services.gateway.translate.wire import Times
from switchyard_gateway.services.gateway.pipeline.upstream import upstream_body

OPENAI_APIS = {
    "/v1/chat/completions": "openai.chat",
    "/v1/completions": "openai.completions",
    "/v1/embeddings": "openai.embeddings",
}

# an upstream's error on the OpenAI door; a prompt too long for the model's context is said to be the field's fault
_ERRORS: dict[str, Callable[[bytes, int], bytes]] = {
    "openai.chat": openai_error_body,
    "openai.completions": lambda data, status: openai_error_body(data, status, "prompt"),
    "openai.embeddings": lambda data, status: openai_error_body(data, status, "input"),
}

APIS = {**OPENAI_APIS, **OLLAMA_APIS, **ANTHROPIC_APIS, **RESPONSES_APIS}
_STREAMING_OLLAMA = frozenset({"ollama.chat", "ollama.generate"})


class Door:
    """One call's front door."""

    __slots__ = ("api", "path", "ollama", "anthropic", "responses", "shape", "_plans", "_request", "_body")

    def __init__(self, path: str, request: InferenceRequest, body: bytes) -> None:
        self.path, self.api = path, APIS[path]
        self.ollama = self.api.startswith("ollama.")
        self.shape = shape_for(path)            # how this door's clients read errors (edge/errors.py)
        self._request, self._body = request, body
        self._plans: dict[str, Plan] = {}
        if self.ollama:
            request.stream = self.api in _STREAMING_OLLAMA and request.stream is not False
        self.anthropic = AnthropicCall(self.api, request, body) if path in ANTHROPIC_APIS else None
        self.responses = ResponsesCall(request, body) if path in RESPONSES_APIS else None

    def ask(self, limit: int, tokenizer: TokenEstimator | None) -> Ask:
        """What the call asks for, its bounds that depend on the model checked (`limit`: its context length,
        else the configured maximum): a 400 naming the field otherwise."""
        translated = self.anthropic or self.responses
        if translated is not None:
            return translated.ask(limit, tokenizer)
        return self._request.ask(limit, tokenizer)  # type: ignore[attr-defined]

    def plan(self, endpoint_kind: str) -> Plan:
        plan = self._plans.get(endpoint_kind)
        if plan is None:
            translated = self.anthropic or self.responses
            if translated is not None:
                plan = translated.plan(endpoint_kind)
            else:
                plan = self._ollama_plan(endpoint_kind) if self.ollama else self._openai_plan(endpoint_kind)
            self._plans[endpoint_kind] = plan
        return plan

    def _ollama_plan(self, endpoint_kind: str) -> Plan:
        """Ollama calls as `ollama_plan` has them; an embedding's `dimensions` held through an OpenAI-speaking
        endpoint as Ollama holds it (the vector cut to its first `dimensions` values and renormalised; a shorter
        one is the endpoint's failure), since such a server may ignore the field it is passed."""
        plan = ollama_plan(self.api, endpoint_kind)
        if plan.native:
            return plan
        if self.api == "ollama.chat" and endpoint_kind != "openai":
            return self._continued(plan)
        dimensions = getattr(self._request, "dimensions", None)
        if dimensions is None or plan.answer is None:
            return plan
        translate = plan.answer

        def answer(data: bytes, model: str, times: Times) -> bytes:
            return translate(conform_embeddings(data, encoding_format=None, dimensions=dimensions), model, times)
        return plan._replace(answer=answer)

    def _continued(self, plan: Plan) -> Plan:
        """An /api/chat ending with an assistant message to an OpenAI-compatible endpoint: the message continued,
        as Ollama continues it, and a repeat of it at the answer's start taken off (translate/prefill.py). OpenAI
        itself cannot continue one: an `openai` endpoint answers a new turn."""
        prefill = self._request.prefill()  # type: ignore[attr-defined]
        if prefill is None:
            return plan
        return plan._replace(
            request=lambda body, upstream_model, ceiling=None: (
                CHAT_PATH, ollama_chat_to_openai(body, upstream_model, ceiling, continues=True)),
            answer=lambda data, model, times: openai_chat_to_ollama(data, model, times, prefill=prefill),
            stream=lambda model, times: OpenAIStreamToOllama(model, "chat", times, prefill=prefill))

    def _openai_plan(self, endpoint_kind: str) -> Plan:
        """OpenAI calls go to every kind of endpoint through the OpenAI API (Ollama serves it under /v1)."""
        request, path = self._request, self.path
        answer: Callable[[bytes, str, Times], bytes] | None = None
        if self.api == "openai.embeddings":
            encoding_format, dimensions = embedding_options(self._body)
            if encoding_format or dimensions:
                def answer(data: bytes, _model: str, _times: Times) -> bytes:
                    return conform_embeddings(data, encoding_format=encoding_format, dimensions=dimensions)
        keep_usage = bool(request.stream_options and request.stream_options.include_usage)
        return Plan(
            native=True,
            request=lambda body, upstream_model, ceiling=None: (
                path, upstream_body(body, request, upstream_model, ceiling, endpoint_kind)),
            answer=answer, error=_ERRORS[self.api], stream=lambda _model, _times: SseTap(keep_usage=keep_usage),
            usage=openai_usage,
        )

    @property
    def stream_content_type(self) -> str:
        return "application/x-ndjson" if self.ollama else "text/event-stream"

    def error_body(self, error: GatewayError) -> bytes:
        """The gateway's own error as this door's clients read it."""
        return error.render(self.shape)

    def cut_event(self, message: str, status: int = 502) -> bytes:
        """What ends a stream the upstream cut after bytes reached the client; `status` 504 when it went silent
        longer than its endpoint's timeout (Anthropic's `timeout_error`, where a cut is an `api_error`)."""
        ended = self.responses.cut_event(message, status) if self.responses is not None else None
        if ended is not None:
            return ended
        return stream_error(self.shape, UpstreamError(message, code="stream_cut", status=status))
