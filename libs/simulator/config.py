"""The simulator's knobs: one frozen `SimConfig`, validated, changed by partial updates."""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

FailureKind = Literal["http_500", "http_429", "refuse", "hang", "cut", "cut_end"]
FAILURE_KINDS: tuple[str, ...] = ("http_500", "http_429", "refuse", "hang", "cut", "cut_end")

MAX_EMBEDDING_DIMS = 65_536
MAX_TOKENS = 1_000_000


class ConfigError(ValueError):
    """A knob was unknown, of the wrong type, or out of range."""


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulated upstream behaves; every field is a knob.

    `failure_rate` is the share of upstream calls (any route but /_sim/) that fail the
    `failure_kind` way; the choice is a pure function of `seed` and the call's serial number
    (counted from start or the last reset), so runs repeat.
    `refuse` acts on the listener, not on calls: any `failure_rate` above 0 closes it.
    `failure_paths` limits failures to some routes, e.g. ("/v1/chat/completions",) to fail the
    inference calls while the model-list probes keep answering.
    """

    models: tuple[str, ...] = ("llama3.2", "nomic-embed-text")
    loaded: tuple[str, ...] | None = None  # None: every advertised model is loaded
    latency_ms: float = 0.0  # before the reply's first byte
    token_interval_ms: float = 0.0  # between streamed chunks
    end_delay_ms: float = 0.0  # a streamed reply: between its last event and the end of its body
    tokens: int = 16  # completion tokens per reply, before max_tokens caps it
    embedding_dims: int = 768
    failure_rate: float = 0.0
    failure_kind: FailureKind = "http_500"
    retry_after_s: int = 1  # the Retry-After header of http_429 failures
    failure_paths: tuple[str, ...] = ()  # only these routes fail (e.g. inference, not health probes); () = all
    cached_tokens: int = 0  # prompt tokens reported as read from a prompt cache (at most the prompt's); 0 = none
    api_key: str | None = None  # when set, every call but /_sim/ needs `Authorization: Bearer <api_key>` (else 401)
    call_tools: bool = False  # a chat offering tools is answered with a call to one (simulator/tools.py)
    image_tokens: int = 0  # prompt tokens billed for each image a call sends (a vision model's); 0 = none
    seed: int = 0

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """The models /api/ps reports."""
        return self.models if self.loaded is None else self.loaded

    def has_model(self, name: str) -> bool:
        """Whether `name` is advertised; like Ollama, "x" and "x:latest" are one model."""
        if name in self.models:
            return True
        wanted = bare_name(name)
        return any(bare_name(m) == wanted for m in self.models)

    @property
    def refusing(self) -> bool:
        """Whether the listener should be closed."""
        return self.failure_kind == "refuse" and self.failure_rate > 0

    def with_changes(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with `changes` applied; raises ConfigError on an unknown or bad knob."""
        unknown = sorted(set(changes) - set(self.__struct_fields__))
        if unknown:
            raise ConfigError(f"unknown knob(s): {', '.join(unknown)}")
        merged = {**msgspec.to_builtins(self), **changes}
        return config_from_builtins(merged)


def bare_name(model: str) -> str:
    """A model name without Ollama's default ":latest" tag."""
    return model[:-7] if model.endswith(":latest") else model


def config_from_builtins(data: dict[str, Any]) -> SimConfig:
    """Build a SimConfig from JSON-like data; raises ConfigError when it does not fit."""
    try:
        return msgspec.convert(data, SimConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _problems(cfg: SimConfig) -> list[str]:
    problems = []
    if not cfg.models or any(not m for m in cfg.models):
        problems.append("models must name at least one model, none empty")
    if cfg.loaded is not None and set(cfg.loaded) - set(cfg.models):
        problems.append("loaded models must be among the advertised models")
    if not all(0 <= delay < math.inf for delay in (cfg.latency_ms, cfg.token_interval_ms, cfg.end_delay_ms)):
        problems.append("latency_ms, token_interval_ms and end_delay_ms must be finite and >= 0")   # nan too
    if not 0 <= cfg.tokens <= MAX_TOKENS:
        problems.append(f"tokens must be in 0..{MAX_TOKENS}")
    if not 0 <= cfg.cached_tokens <= MAX_TOKENS:
        problems.append(f"cached_tokens must be in 0..{MAX_TOKENS}")
    if not 0 <= cfg.image_tokens <= MAX_TOKENS:
        problems.append(f"image_tokens must be in 0..{MAX_TOKENS}")
    if not 1 <= cfg.embedding_dims <= MAX_EMBEDDING_DIMS:
        problems.append(f"embedding_dims must be in 1..{MAX_EMBEDDING_DIMS}")
    if not 0.0 <= cfg.failure_rate <= 1.0:
        problems.append("failure_rate must be in 0..1")
    if cfg.failure_kind not in FAILURE_KINDS:
        problems.append(f"failure_kind must be one of {', '.join(FAILURE_KINDS)}")
    if not 0 <= cfg.retry_after_s < math.inf:
        problems.append("retry_after_s must be finite and >= 0")
    return problems
