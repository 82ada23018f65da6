"""Routing contracts: endpoint probes, circuit-breaker transitions, discovered models and warm-ups (router service).

`ProbeCompleted` and `CircuitChanged` live on the `ROUTING` stream (they age out
after a day: health, not accounting). `EndpointModelsDiscovered` and `ModelWarmed`
are registry facts (the registry records them when the router reports a changed
model set or a warm-up), so they live on `REGISTRY` and in the log like every
other registry event.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import Event, Instant

CircuitState = Literal["closed", "open", "half_open"]


class ModelFacts(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a server itself says of one model it serves, read at probe time (never guessed from the name).

    `capabilities` uses Ollama's words (`completion`, `tools`, `vision`, `embedding`, `insert`, `thinking`);
    empty, like the other fields left out, when the server does not say.
    """

    model: str                              # as the server names it (`:latest` dropped)
    capabilities: tuple[str, ...] = ()
    architecture: str = ""                  # `general.architecture` (llama, qwen2, ...)
    context_length: int = 0                 # the context the model was trained for, 0 when unknown


class ProbeCompleted(Event, frozen=True, tag=s.PROBE_COMPLETED):
    """An unbilled health probe of an endpoint finished (`/api/tags` + `/api/ps`, or `/v1/models`).

    Model names are normalised (`x:latest` is `x`). `loaded` is what Ollama's `/api/ps` reports;
    OpenAI-style servers serve only what they hold in memory, so for them it equals `models`.
    """

    endpoint_id: str
    ok: bool
    latency_ms: float = 0.0
    error: str = ""                 # why it failed, for a person ("" when ok); never a credential
    status: int = 0                 # HTTP status of the failing call, 0 when none came
    models: tuple[str, ...] = ()    # advertised
    loaded: tuple[str, ...] = ()    # in memory now
    version: str = ""               # server version when it says (Ollama /api/version)
    prober: str = ""                # the router instance that probed
    facts: tuple[ModelFacts, ...] = ()   # what the server says of its models (Ollama /api/show, llama.cpp /props)

    @property
    def identifier(self) -> str:
        return self.endpoint_id


class CircuitChanged(Event, frozen=True, tag=s.CIRCUIT_CHANGED):
    """An endpoint's circuit breaker moved between closed, open and half-open.

    `retry_at` (open only) is when it turns half-open; a gateway that hears nothing
    more by then treats it as half-open itself. `trial_calls` bounds the concurrent
    trial calls each gateway lets through while half-open.
    """

    endpoint_id: str
    state: CircuitState
    previous: CircuitState
    reason: str                     # consecutive_failures | error_ratio | cool_down | trial_failed |
                                    # trials_succeeded | probe_failed | reset
    failures: int = 0               # consecutive failures when it opened
    calls: int = 0                  # calls in the error-ratio window
    error_ratio: float = 0.0        # failed share of those calls
    retry_at: Instant | None = None
    trial_calls: int = 0
    router: str = ""                # the router instance that decided

    @property
    def identifier(self) -> str:
        return self.endpoint_id


class EndpointModelsDiscovered(Event, frozen=True, tag=s.ENDPOINT_MODELS_DISCOVERED):
    """A probe found an endpoint advertising a different set of models (names normalised, sorted).

    An endpoint registered without a model list serves exactly these; one with a list keeps it.
    """

    endpoint_id: str
    models: tuple[str, ...] = ()

    @property
    def identifier(self) -> str:
        return self.endpoint_id


class ModelWarmed(Event, frozen=True, tag=s.MODEL_WARMED):
    """An unbilled warm-up call reached a model on an endpoint, so that the model is loaded before calls need it.

    Ollama is sent an empty generate (or a one-word embed) with a `keep_alive`, other servers a one-token
    call. No tenant pays for it and no usage is recorded: this fact is the record. `trigger` says who
    asked: `admin` (the warm-up API), `start` (an endpoint marked `warm_on_start` first probed healthy)
    or `test` (the model test API).
    """

    model_id: str
    endpoint_id: str
    ok: bool
    duration_ms: float = 0.0        # the warm-up call, as the router timed it
    upstream_model: str = ""        # the name the endpoint knows the model by
    status: int = 0                 # HTTP status of the call, 0 when none came
    error: str = ""                 # why it failed, for a person ("" when ok); never a credential
    trigger: str = "admin"          # admin | start | test
    router: str = ""                # the router instance that made the call

    @property
    def identifier(self) -> str:
        return self.model_id


# The events this module defines; `codec` joins them with the others.
EVENT_CLASSES: tuple[type[Event], ...] = (ProbeCompleted, CircuitChanged, EndpointModelsDiscovered, ModelWarmed)
# Routing events that are registry facts: recorded in the log and published on REGISTRY.
REGISTRY_EVENT_CLASSES: tuple[type[Event], ...] = (EndpointModelsDiscovered, ModelWarmed)
